//! The audit trail, and the non-blocking writer that carries it (and the log) off the data path.
//!
//! Records look like info events of target `audit` in the log's format (text or JSON), written
//! by [`Record`] rather than the general formatter (it was a seventh of the CPU per message). With `audit.file` they go to that file instead, appended, and the file
//! is reopened on SIGHUP for logrotate. Either way a line is handed to a writer thread through
//! a channel: a session never waits for a disk or a pipe. Records carry who (peer address,
//! certificate subject, serial, issuer), what (control ID, message type, size), the outcome
//! (ACK code, or the NAK's reason and ERR code), which engine and how long — never segment
//! content; every peer-controlled value is escaped and bounded ([`crate::logsafe`]).

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

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
    let Some(mut r) = Record::new("session_start", who) else {
        return;
    };
    r.text("subject", &escape_str(&id.subject));
    r.text("serial", &escape_str(&id.serial));
    r.text("issuer", &escape_str(&id.issuer));
    r.text("identity", &escape_str(&id.to_string()));
    r.label("tls_version", tls_version);
    r.label("cipher_suite", cipher_suite);
    r.send();
}

/// A session's end: how many messages, how long, why.
pub fn session_ended(who: Who<'_>, messages: u64, duration: Duration, reason: &str) {
    let Some(mut r) = Record::new("session_end", who) else {
        return;
    };
    r.number("messages", messages);
    r.number("duration_ms", duration.as_millis() as u64);
    r.label("reason", reason);
    r.send();
}

/// A handshake the proxy refused, with the certificate presented, if any.
pub fn handshake_refused(who: Who<'_>, reason: &str, presented: Option<&ClientIdentity>) {
    let Some(mut r) = Record::new("handshake_refused", who) else {
        return;
    };
    r.label("reason", reason);
    if let Some(c) = presented {
        r.text("subject", &escape_str(&c.subject));
        r.text("serial", &escape_str(&c.serial));
        r.text("issuer", &escape_str(&c.issuer));
    }
    r.send();
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
    let Some(mut r) = Record::new("message", who) else {
        return;
    };
    r.text("control_id", &escape(control_id));
    r.text("message_type", &escape(message_type));
    r.number("bytes", bytes as u64);
    match outcome {
        Outcome::Relayed {
            ack,
            engine,
            latency,
        } => {
            r.label("ack", ack);
            r.label("engine", engine);
            r.number("latency_us", latency.as_micros() as u64);
        }
        Outcome::Refused { reason, err } => {
            r.label("nak", reason);
            r.number("err_code", u64::from(err));
        }
        Outcome::Failed {
            kind,
            engine,
            answer,
        } => {
            r.label("upstream_failure", kind);
            if let Some(engine) = engine {
                r.label("engine", engine);
            }
            r.label("answer", answer);
        }
        Outcome::Forwarded { engine } => {
            r.label("engine", engine);
            r.label("forwarded", "acknowledgment");
        }
    }
    r.send();
}

/// Where records go, set once by the binary ([`install`]); without it (a library user that did
/// not ask for an audit trail) records are not written.
static SINK: OnceLock<(LineWriter, bool)> = OnceLock::new();

/// Sends audit records to `writer` (the log's, or `audit.file`'s), as JSON or as the text log's
/// lines. The first call wins.
pub fn install(writer: LineWriter, json: bool) {
    let _ = SINK.set((writer, json));
}

/// One audit line, written the way the log's formatter writes an info event of target `audit`
/// (same timestamp, level, field syntax), without going through it: a record per message is
/// on every exchange's path, and the general formatter cost 3 µs of CPU per message.
struct Record {
    line: String,
    json: bool,
    tx: &'static mpsc::Sender<Line>,
}

impl Record {
    fn new(event: &str, who: Who<'_>) -> Option<Record> {
        let (writer, json) = SINK.get()?;
        let mut line = String::with_capacity(320);
        let _ = if *json {
            line.push_str("{\"timestamp\":\"");
            SystemTime.format_time(&mut Writer::new(&mut line))
        } else {
            SystemTime.format_time(&mut Writer::new(&mut line))
        };
        let mut r = Record {
            line,
            json: *json,
            tx: &writer.tx,
        };
        if r.json {
            r.line.push_str("\",\"level\":\"INFO\"");
        } else {
            r.line.push_str("  INFO audit:");
        }
        r.label("event", event);
        r.label("route", who.route);
        r.text("peer", &who.peer.to_string());
        r.number("conn", who.conn);
        Some(r)
    }

    /// A name from a bounded set: quoted in text, as tracing writes a `&str`.
    fn label(&mut self, key: &str, value: &str) {
        self.key(key);
        self.line.push('"');
        self.quoted(value);
        self.line.push('"');
    }

    /// An already escaped value: bare in text, as tracing writes a `Display` value.
    fn text(&mut self, key: &str, value: &str) {
        self.key(key);
        if self.json {
            self.line.push('"');
            self.quoted(value);
            self.line.push('"');
        } else {
            self.line.push_str(value);
        }
    }

    fn number(&mut self, key: &str, value: u64) {
        self.key(key);
        let _ = write!(self.line, "{value}");
    }

    fn key(&mut self, key: &str) {
        if self.json {
            let _ = write!(self.line, ",\"{key}\":");
        } else {
            let _ = write!(self.line, " {key}=");
        }
    }

    /// Inside quotes: `"` and `\` escaped (values are escaped for control characters already).
    fn quoted(&mut self, value: &str) {
        for c in value.chars() {
            if matches!(c, '"' | '\\') {
                self.line.push('\\');
            }
            self.line.push(c);
        }
    }

    fn send(mut self) {
        if self.json {
            self.line.push_str(",\"target\":\"audit\"}");
        }
        self.line.push('\n');
        let _ = self.tx.send(Line::Text(self.line.into_bytes()));
    }
}
