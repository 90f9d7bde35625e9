//! The audit trail, and the non-blocking writer that carries it (and the log) off the data path.
//!
//! Records are tracing events with target `audit` at level info, so they come out in the log's
//! format (text or JSON). With `audit.file` they go to that file instead, appended, and the file
//! is reopened on SIGHUP for logrotate. Either way a line is handed to a writer thread through
//! a channel: a session never waits for a disk or a pipe. Records carry who (peer address,
//! certificate subject, serial, issuer), what (control ID, message type, size), the outcome
//! (ACK code, or the NAK's reason and ERR code), which engine and how long — never segment
//! content; every peer-controlled value is escaped and bounded ([`crate::logsafe`]).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

use crate::logsafe::{escape, escape_str};
use crate::tls::ClientIdentity;

/// The tracing target of audit records.
pub const TARGET: &str = "audit";

/// The writer thread's pause between batches: the most a line waits before it is written.
const BATCH_PAUSE: Duration = Duration::from_millis(5);

/// Where a [`LineWriter`] thread writes.
pub enum Sink {
    /// Standard error (the log).
    Stderr,
    /// A file, appended to and reopened when asked.
    File(PathBuf),
}

/// A `MakeWriter` that hands each formatted line to a writer thread.
#[derive(Clone)]
pub struct LineWriter {
    tx: mpsc::Sender<Line>,
}

/// Stops the writer thread after writing everything queued (call before the process exits).
pub struct WriterGuard {
    tx: mpsc::Sender<Line>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Asks a file writer to reopen its file (SIGHUP, after logrotate moved it).
#[derive(Clone, Default)]
pub struct Reopen(Arc<AtomicBool>);

enum Line {
    Text(Vec<u8>),
    Stop,
}

impl Reopen {
    /// Reopen before the next write.
    pub fn request(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl LineWriter {
    /// Starts the writer thread for `sink`. A file that cannot be opened is an error at start.
    pub fn start(sink: Sink, reopen: Reopen) -> std::io::Result<(LineWriter, WriterGuard)> {
        let (tx, rx) = mpsc::channel::<Line>();
        let open = |p: &PathBuf| -> std::io::Result<Box<dyn Write + Send>> {
            Ok(Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ))
        };
        let mut out: Box<dyn Write + Send> = match &sink {
            Sink::Stderr => Box::new(std::io::stderr()),
            Sink::File(p) => open(p)?,
        };
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                let mut buf = std::io::BufWriter::with_capacity(64 * 1024, Vec::new());
                while let Ok(first) = rx.recv() {
                    let mut stop = false;
                    let mut next = Some(first);
                    // Write what is queued as one batch, then flush: one syscall per burst.
                    while let Some(line) = next {
                        match line {
                            Line::Text(t) => {
                                let _ = buf.write_all(&t);
                            }
                            Line::Stop => stop = true,
                        }
                        next = rx.try_recv().ok();
                    }
                    if let Sink::File(p) = &sink
                        && reopen.0.swap(false, Ordering::AcqRel)
                    {
                        match open(p) {
                            Ok(f) => out = f,
                            Err(e) => eprintln!("audit file {} not reopened: {e}", p.display()),
                        }
                    }
                    if let Ok(bytes) = buf.into_inner() {
                        let _ = out.write_all(&bytes);
                        let _ = out.flush();
                    }
                    buf = std::io::BufWriter::with_capacity(64 * 1024, Vec::new());
                    if stop {
                        return;
                    }
                    // Gather for a moment before the next batch: a sender only wakes this
                    // thread (a futex call) when it is parked in recv, so at a high message
                    // rate one wake and one write serve hundreds of lines.
                    std::thread::sleep(BATCH_PAUSE);
                }
            })?;
        Ok((
            LineWriter { tx: tx.clone() },
            WriterGuard {
                tx,
                thread: Some(thread),
            },
        ))
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(Line::Stop);
        if let Some(t) = self.thread.take() {
            // Bounded: a blocked disk must not hold the exit forever.
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// One formatted line, sent when tracing drops the writer.
pub struct LineBuf {
    buf: Vec<u8>,
    tx: mpsc::Sender<Line>,
}

impl Write for LineBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuf {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let _ = self.tx.send(Line::Text(std::mem::take(&mut self.buf)));
        }
    }
}

impl<'a> MakeWriter<'a> for LineWriter {
    type Writer = LineBuf;

    fn make_writer(&'a self) -> LineBuf {
        LineBuf {
            buf: Vec::with_capacity(256),
            tx: self.tx.clone(),
        }
    }
}

/// Which connection a record is about. Written into every record: the session span that
/// carries the same fields is filtered away when `logging.level` is above info.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    /// The route name.
    pub route: &'a str,
    /// The sender's address.
    pub peer: SocketAddr,
    /// The connection id (as in the log's session span).
    pub conn: u64,
}

/// A session admitted after its handshake: who, and over what TLS.
pub fn session_started(who: Who<'_>, id: &ClientIdentity, tls_version: &str, cipher_suite: &str) {
    tracing::info!(
        target: TARGET,
        event = "session_start",
        route = who.route,
        peer = %who.peer,
        conn = who.conn,
        subject = %escape_str(&id.subject),
        serial = %escape_str(&id.serial),
        issuer = %escape_str(&id.issuer),
        identity = %escape_str(&id.to_string()),
        tls_version,
        cipher_suite,
    );
}

/// A session's end: how many messages, how long, why.
pub fn session_ended(who: Who<'_>, messages: u64, duration: Duration, reason: &str) {
    tracing::info!(
        target: TARGET,
        event = "session_end",
        route = who.route,
        peer = %who.peer,
        conn = who.conn,
        messages,
        duration_ms = duration.as_millis() as u64,
        reason,
    );
}

/// A handshake the proxy refused, with the certificate presented, if any.
pub fn handshake_refused(who: Who<'_>, reason: &str, presented: Option<&ClientIdentity>) {
    let field = |f: fn(&ClientIdentity) -> &str| presented.map(|c| escape_str(f(c)));
    tracing::info!(
        target: TARGET,
        event = "handshake_refused",
        route = who.route,
        peer = %who.peer,
        conn = who.conn,
        reason,
        subject = field(|c| &c.subject).as_deref(),
        serial = field(|c| &c.serial).as_deref(),
        issuer = field(|c| &c.issuer).as_deref(),
    );
}

/// What became of one message.
pub enum Outcome<'a> {
    /// The engine's ACK was relayed.
    Relayed {
        /// Its MSA-1.
        ack: &'a str,
        /// The engine target that answered.
        engine: &'a str,
        /// Forward to ACK.
        latency: Duration,
    },
    /// The proxy refused it with a NAK (or, for an acknowledgment, silently).
    Refused {
        /// The metric reason label.
        reason: &'a str,
        /// The ERR code (HL7 table 0357).
        err: u16,
    },
    /// The engine gave no ACK; the sender got none (or the proxy's AR).
    Failed {
        /// The failure kind label.
        kind: &'a str,
        /// The engine target, if one was reached.
        engine: Option<&'a str>,
        /// What the sender got: `none` or `AR`/`CR`.
        answer: &'a str,
    },
    /// An acknowledgment from the sender, passed on.
    Forwarded {
        /// The engine target.
        engine: &'a str,
    },
}

/// One record per message.
pub fn message(
    who: Who<'_>,
    control_id: &[u8],
    message_type: &[u8],
    bytes: usize,
    outcome: Outcome<'_>,
) {
    // One record shape; the fields of the other outcomes are `None`, and absent from the line.
    let (mut ack, mut engine, mut latency_us, mut nak, mut err_code) =
        (None, None, None, None, None);
    let (mut upstream_failure, mut answer, mut forwarded) = (None, None, None);
    match outcome {
        Outcome::Relayed {
            ack: code,
            engine: target,
            latency,
        } => {
            (ack, engine) = (Some(code), Some(target));
            latency_us = Some(latency.as_micros() as u64);
        }
        Outcome::Refused { reason, err } => (nak, err_code) = (Some(reason), Some(err)),
        Outcome::Failed {
            kind,
            engine: target,
            answer: sent,
        } => (upstream_failure, engine, answer) = (Some(kind), target, Some(sent)),
        Outcome::Forwarded { engine: target } => {
            (forwarded, engine) = (Some("acknowledgment"), Some(target));
        }
    }
    tracing::info!(
        target: TARGET,
        event = "message",
        route = who.route,
        peer = %who.peer,
        conn = who.conn,
        control_id = %escape(control_id),
        message_type = %escape(message_type),
        bytes,
        ack,
        engine,
        latency_us,
        nak,
        err_code,
        upstream_failure,
        answer,
        forwarded,
    );
}
