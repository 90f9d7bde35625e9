//! The writer thread that carries log lines and audit records off the data path: lines are
//! appended to a locked batch by whoever formatted them, and written in batches.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

use super::syslog::Collector;
use crate::config::SyslogConfig;

/// The writer thread's pause between batches: the most a line waits before it is written.
/// Shorter pauses wake the thread so often that its wake-ups land on a busy sender's messages
/// and lengthen their latency. A stop writes everything queued, within one pause.
const BATCH_PAUSE: Duration = Duration::from_millis(50);

/// A `MakeWriter` that hands each formatted line to the writer thread.
#[derive(Clone)]
pub struct LineWriter {
    pub(super) queue: Arc<Queue>,
}

/// The syslog collectors in service, shared by the writer thread and reloads.
pub(super) type Collectors = Mutex<Vec<Arc<Collector>>>;

/// Stops the writer thread after writing everything queued (call before the process exits).
pub struct WriterGuard {
    queue: Arc<Queue>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Asks the writer to reopen the audit file (SIGHUP, after logrotate moved it).
#[derive(Clone, Default)]
pub struct Reopen(Arc<AtomicBool>);

/// Lines on their way to the writer thread: appended under a lock by whoever formatted them,
/// taken as one batch. A line costs a copy, not an allocation and a channel message (which
/// was a tenth of a message record's cost).
#[derive(Default)]
pub(super) struct Queue {
    pending: Mutex<Pending>,
    ready: Condvar,
    /// Where audit records also go (`audit.syslog`).
    pub(super) collectors: Collectors,
}

#[derive(Default)]
struct Pending {
    /// Log lines, and audit records while there is no audit file, in order.
    log: Vec<u8>,
    /// Audit records bound for the audit file.
    records: Vec<u8>,
    /// Audit records bound for the syslog collectors, when there are any.
    syslog: Vec<u8>,
    to_syslog: bool,
    /// Audit file changes: the records before `.0` go to the file in service before it.
    switches: Vec<(usize, Option<AuditFile>)>,
    /// Whether audit records go to a file.
    to_file: bool,
    /// Lines dropped because the writer fell [`MAX_PENDING`] behind.
    dropped: u64,
    /// Audit records among them, since start: into the log, into the audit file.
    records_dropped: [u64; 2],
    /// The writer waits for a line (then the next one wakes it).
    parked: bool,
    stop: bool,
}

/// The most either batch holds before lines are dropped: a stderr or disk that stopped taking
/// writes must not grow the proxy's memory without bound.
const MAX_PENDING: usize = 32 << 20;

/// The audit file, open.
struct AuditFile {
    path: PathBuf,
    file: std::fs::File,
}

impl Reopen {
    /// Reopen before the next write.
    pub fn request(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding it cannot leave the buffers half-written: keep logging.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Audit records dropped since start: into the log, into the audit file.
    pub(super) fn records_dropped(&self) -> [u64; 2] {
        self.lock().records_dropped
    }

    /// Queues one line (or several, each ending in `\n`).
    pub(super) fn push(&self, line: &[u8], audit: bool) {
        let mut p = self.lock();
        let p = &mut *p;
        let to = if audit && p.to_file {
            &mut p.records
        } else {
            &mut p.log
        };
        if to.len() + line.len() > MAX_PENDING {
            p.dropped += 1;
            if audit {
                p.records_dropped[usize::from(p.to_file)] += 1;
            }
        } else {
            to.extend_from_slice(line);
        }
        if audit && p.to_syslog && p.syslog.len() + line.len() <= MAX_PENDING {
            p.syslog.extend_from_slice(line);
        }
        self.wake(p);
    }

    /// Wakes the writer if it waits: once per batch, not once per line.
    fn wake(&self, p: &mut Pending) {
        if p.parked {
            p.parked = false;
            self.ready.notify_one();
        }
    }
}

impl LineWriter {
    /// Starts the writer thread: log lines go to standard error, audit records to
    /// `audit_file` (appended) or, without one, into the log. A file that cannot be opened is
    /// an error at start.
    pub fn start(
        audit_file: Option<&Path>,
        reopen: Reopen,
    ) -> std::io::Result<(LineWriter, WriterGuard)> {
        let audit = audit_file.map(AuditFile::open).transpose()?;
        let queue = Arc::new(Queue::default());
        queue.lock().to_file = audit.is_some();
        let thread = {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || write_lines(&queue, audit, &reopen))?
        };
        Ok((
            LineWriter {
                queue: queue.clone(),
            },
            WriterGuard {
                queue,
                thread: Some(thread),
            },
        ))
    }

    /// Sends audit records to these syslog collectors too, from the next record on; the
    /// collectors in service before are stopped once they have sent what they hold. The
    /// collectors' TLS material is loaded here, so that a reload naming a file that cannot
    /// be read is refused.
    pub fn syslog_to(&self, collectors: &[SyslogConfig]) -> Result<(), String> {
        self.restart_syslog(collectors)
    }

    /// Whether a collector's TLS files changed since it loaded them.
    pub fn syslog_tls_changed(&self) -> bool {
        self.queue
            .collectors
            .lock()
            .is_ok_and(|c| c.iter().any(|c| c.tls_changed()))
    }

    fn restart_syslog(&self, collectors: &[SyslogConfig]) -> Result<(), String> {
        let started = collectors
            .iter()
            .map(Collector::start)
            .collect::<Result<Vec<_>, String>>()?;
        self.queue.lock().to_syslog = !started.is_empty();
        let old = match self.queue.collectors.lock() {
            Ok(mut c) => std::mem::replace(&mut *c, started),
            Err(_) => Vec::new(),
        };
        for c in old {
            c.stop();
        }
        Ok(())
    }

    /// Sends audit records to `file` (appended), or into the log, from the next record on.
    /// The file is opened here, so that a reload naming one that cannot be is refused.
    pub fn audit_to(&self, file: Option<&Path>) -> std::io::Result<()> {
        let audit = file.map(AuditFile::open).transpose()?;
        let mut p = self.queue.lock();
        p.to_file = audit.is_some();
        let at = p.records.len();
        p.switches.push((at, audit));
        self.queue.wake(&mut p);
        Ok(())
    }
}

impl AuditFile {
    fn open(path: &Path) -> std::io::Result<AuditFile> {
        Ok(AuditFile {
            path: path.to_path_buf(),
            file: open_private(path)?,
        })
    }
}

/// What the writer thread takes from the queue at once.
#[derive(Default)]
struct Batch {
    log: Vec<u8>,
    records: Vec<u8>,
    syslog: Vec<u8>,
    switches: Vec<(usize, Option<AuditFile>)>,
    dropped: u64,
    stop: bool,
}

impl Batch {
    /// Waits for lines, then takes them all, leaving this batch's emptied buffers in their
    /// place (no allocation in steady state).
    fn take(&mut self, queue: &Queue) {
        let mut p = queue.lock();
        while p.log.is_empty()
            && p.records.is_empty()
            && p.syslog.is_empty()
            && p.switches.is_empty()
            && !p.stop
        {
            p.parked = true;
            p = queue.ready.wait(p).unwrap_or_else(PoisonError::into_inner);
        }
        std::mem::swap(&mut p.log, &mut self.log);
        std::mem::swap(&mut p.records, &mut self.records);
        std::mem::swap(&mut p.syslog, &mut self.syslog);
        std::mem::swap(&mut p.switches, &mut self.switches);
        self.dropped = std::mem::take(&mut p.dropped);
        self.stop = p.stop;
    }
}

/// The writer thread: each batch of queued lines written with one call per destination.
fn write_lines(queue: &Queue, mut audit: Option<AuditFile>, reopen: &Reopen) {
    let mut batch = Batch::default();
    loop {
        batch.take(queue);
        if let Some(a) = &mut audit
            && reopen.0.swap(false, Ordering::AcqRel)
        {
            match open_private(&a.path) {
                Ok(f) => a.file = f,
                Err(e) => eprintln!("audit file {} not reopened: {e}", a.path.display()),
            }
        }
        let mut from = 0;
        for (at, to) in batch.switches.drain(..) {
            write_records(&mut audit, &batch.records[from..at]);
            (from, audit) = (at, to);
        }
        write_records(&mut audit, &batch.records[from..]);
        if !batch.syslog.is_empty()
            && let Ok(collectors) = queue.collectors.lock()
        {
            for c in collectors.iter() {
                c.offer(&batch.syslog);
            }
        }
        let mut err = std::io::stderr();
        let _ = err.write_all(&batch.log);
        if batch.dropped > 0 {
            let _ = writeln!(
                err,
                "{} log lines or audit records dropped: their destination did not keep up",
                batch.dropped
            );
        }
        let _ = err.flush();
        for buf in [&mut batch.log, &mut batch.records, &mut batch.syslog] {
            buf.clear();
            if buf.capacity() > 1 << 20 {
                buf.shrink_to(64 * 1024);
            }
        }
        if batch.stop {
            let collectors = queue
                .collectors
                .lock()
                .map(|c| c.clone())
                .unwrap_or_default();
            for c in &collectors {
                c.stop();
            }
            for c in &collectors {
                c.stop_and_wait();
            }
            return;
        }
        // Gather for a moment before the next batch: a line only wakes this thread (a futex
        // call) when it waits, so at a high message rate one wake and one write serve
        // hundreds of lines.
        std::thread::sleep(BATCH_PAUSE);
    }
}

/// Appends the batch's records to the audit file.
fn write_records(audit: &mut Option<AuditFile>, records: &[u8]) {
    if let Some(a) = audit
        && !records.is_empty()
    {
        let _ = a.file.write_all(records);
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        {
            let mut p = self.queue.lock();
            p.stop = true;
            self.queue.wake(&mut p);
        }
        if let Some(t) = self.thread.take() {
            // Bounded: a blocked disk or collector must not hold the exit forever (the
            // collectors' own flush is bounded too).
            let deadline = std::time::Instant::now() + Duration::from_secs(4);
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Opens `path` for appending, created `rw-r-----`: the audit trail names every sending
/// system, certificate serial and control ID, which is no business of other local users. A
/// file found with wider permissions is narrowed to the same.
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    const MODE: u32 = 0o640;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(MODE)
        .open(path)?;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o777 & !MODE != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(
            mode & !0o777 | (mode & MODE),
        ))?;
    }
    Ok(file)
}

/// One formatted log line, queued when tracing drops the writer.
pub struct LineBuf<'a> {
    buf: Vec<u8>,
    queue: &'a Queue,
}

impl Write for LineBuf<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuf<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.queue.push(&self.buf, false);
        }
    }
}

impl<'a> MakeWriter<'a> for LineWriter {
    type Writer = LineBuf<'a>;

    fn make_writer(&'a self) -> LineBuf<'a> {
        LineBuf {
            buf: Vec::with_capacity(256),
            queue: &self.queue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_follow_the_audit_file_they_were_queued_for_and_the_queue_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("a.log"), dir.path().join("b.log"));
        let (writer, guard) = LineWriter::start(Some(&first), Reopen::default()).unwrap();
        writer.queue.push(b"one\n", true);
        writer.audit_to(Some(&second)).unwrap();
        writer.queue.push(b"two\n", true);
        writer.audit_to(None).unwrap();
        // Into the log now: neither file has it.
        writer.queue.push(b"three\n", true);
        drop(guard);
        assert_eq!(std::fs::read(&first).unwrap(), b"one\n");
        assert_eq!(std::fs::read(&second).unwrap(), b"two\n");

        let queue = Queue::default();
        queue.lock().to_file = true;
        let line = vec![b'x'; 1 << 20];
        for _ in 0..(MAX_PENDING >> 20) + 3 {
            queue.push(&line, true);
        }
        let p = queue.lock();
        assert!(p.records.len() <= MAX_PENDING);
        assert_eq!(p.dropped, 3);
    }
}
