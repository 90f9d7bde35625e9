//! The audit trail, and the non-blocking writer that carries it (and the log) off the data path.
//!
//! Records look like info events of target `audit` in the log's format (text or JSON), written
//! by [`Record`] rather than the general formatter (it was a seventh of the CPU per message).
//! With `audit.file` they go to that file instead, appended, and the file is reopened on SIGHUP
//! for logrotate. Either way a line is appended to the writer thread's bounded queue
//! (`audit/writer.rs`): a session never waits for a disk or a pipe. Records carry who (peer address,
//! certificate subject, serial, issuer), what (control ID, message type, size), the outcome
//! (ACK code, or the NAK's reason and ERR code), which engine and how long — never segment
//! content; every peer-controlled value is escaped and bounded ([`crate::logsafe`]).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod atna;
mod rfc5424;
mod syslog;
mod writer;

use writer::Queue;
pub use writer::{LineBuf, LineWriter, Reopen, WriterGuard};

use crate::hl7::{AckCode, RejectReason};
#[cfg(doc)]
use crate::label::AuditSink;
use crate::label::{FailureKind, Label};
use crate::logsafe::{Plain, escape, escape_str};
use crate::tls::ClientIdentity;

/// A syslog collector's figures, for `/metrics`.
pub struct SinkStats {
    /// `audit.syslog[].name`.
    pub name: String,
    /// Whether its last connect or write succeeded.
    pub up: bool,
    /// Records sent to it.
    pub sent: u64,
    /// Records dropped past its `queue_bytes`.
    pub dropped: u64,
    /// notAfter (Unix seconds) of our client certificate and of the collector's earliest CA.
    pub not_after: (Option<i64>, Option<i64>),
}

/// The tracing target of audit records.
pub const TARGET: &str = "audit";

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

/// The TLS side of a connection: the peer's certificate and what was negotiated.
#[derive(Clone, Copy)]
pub struct TlsSession<'a> {
    /// The peer's verified certificate.
    pub peer: &'a ClientIdentity,
    /// `TLSv1_3`, …
    pub version: &'a str,
    /// The negotiated suite.
    pub suite: &'a str,
}

/// Where audit records go: the writer thread's queue, and whether they are written as JSON or
/// as the text log's lines (a reload may change it). Made by the binary and passed in like
/// [`crate::metrics::Metrics`]: a proxy started without one (`AuditLog::default()`, a
/// library user that asked for no audit trail) writes none, and a test reads the records of
/// the proxy it started.
#[derive(Clone, Default)]
pub struct AuditLog(Option<Arc<Sink>>);

struct Sink {
    writer: LineWriter,
    json: AtomicBool,
}

impl AuditLog {
    /// Records go to `writer`'s thread, as JSON or as the text log's lines.
    pub fn new(writer: LineWriter, json: bool) -> Self {
        Self(Some(Arc::new(Sink {
            writer,
            json: AtomicBool::new(json),
        })))
    }

    /// Writes records as JSON or as the text log's lines from now on (a reloaded log format).
    pub fn set_json(&self, json: bool) {
        if let Some(sink) = &self.0 {
            sink.json.store(json, Ordering::Relaxed);
        }
    }

    /// Audit records dropped so far because their destination fell behind, per sink in the
    /// order of `label::AuditSink::ALL` (the log, the audit file).
    pub fn records_dropped(&self) -> [u64; 2] {
        self.0
            .as_ref()
            .map_or([0; 2], |s| s.writer.queue.records_dropped())
    }

    /// Each syslog collector's name, whether it is up, records sent and records dropped.
    pub fn syslog_stats(&self) -> Vec<SinkStats> {
        let Some(sink) = &self.0 else {
            return Vec::new();
        };
        let Ok(collectors) = sink.writer.queue.collectors.lock() else {
            return Vec::new();
        };
        collectors
            .iter()
            .map(|c| SinkStats {
                not_after: c.not_after(),
                name: c.name().to_string(),
                up: c.up.load(Ordering::Relaxed),
                sent: c.sent.load(Ordering::Relaxed),
                dropped: c.dropped.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The shared fields of `who`'s message records; `None` when no records are written.
    pub fn prefix(&self, who: Who<'_>) -> Option<Prefix> {
        let sink = self.0.as_ref()?;
        let mut r = Record {
            line: Vec::with_capacity(96),
            json: sink.json.load(Ordering::Relaxed),
            queue: None,
        };
        r.who("message", who);
        Some(Prefix {
            json: r.json,
            fields: r.line.into_boxed_slice(),
        })
    }

    /// A session admitted after its handshake: who, and over what TLS (`None`: a plain listener,
    /// recorded with the peer address alone).
    pub fn session_started(&self, who: Who<'_>, tls: Option<TlsSession<'_>>) {
        let Some(mut r) = self.record("session_start", who) else {
            return;
        };
        match tls {
            Some(t) => {
                r.certificate(t.peer);
                r.text("identity", &escape_str(&t.peer.to_string()));
                r.label("tls_version", t.version);
                r.label("cipher_suite", t.suite);
            }
            None => r.label("transport", "plain"),
        }
        r.send();
    }

    /// A pooled connection to a partner established over TLS (`upstream.tls`): which target, the
    /// partner's certificate and what was negotiated.
    pub fn upstream_session(&self, route: &str, target: &str, tls: TlsSession<'_>, resumed: bool) {
        let Some(mut r) = self.start("upstream_session", route) else {
            return;
        };
        r.label("engine", target);
        r.certificate(tls.peer);
        r.label("tls_version", tls.version);
        r.label("cipher_suite", tls.suite);
        r.label("handshake", if resumed { "resumed" } else { "full" });
        r.send();
    }

    /// A route's pooled connections to its partner retired (`reason`): `idle` closed at once,
    /// `busy` closing as their exchanges end.
    pub fn upstream_retired(&self, route: &str, reason: &str, idle: usize, busy: usize) {
        let Some(mut r) = self.start("upstream_retired", route) else {
            return;
        };
        r.label("reason", reason);
        r.number("idle_closed", idle as u64);
        r.number("busy_closing", busy as u64);
        r.send();
    }

    /// The proxy started serving (`true`) or is stopping: for an audit repository, the
    /// application's activity (IHE ATNA: Application Start, Application Stop).
    pub fn application(&self, started: bool) {
        let Some(mut r) = self.begin() else {
            return;
        };
        let event = if started {
            "application_start"
        } else {
            "application_stop"
        };
        r.label("event", event);
        r.label("version", env!("CARGO_PKG_VERSION"));
        r.number("pid", u64::from(std::process::id()));
        r.send();
    }

    /// A reload of the configuration file, applied or refused (`error`: why, with the key
    /// and line): a change of the node's configuration, for the audit trail.
    pub fn configuration_reload(&self, error: Option<&str>) {
        let Some(mut r) = self.begin() else {
            return;
        };
        r.label("event", "configuration_reload");
        r.label(
            "result",
            if error.is_none() {
                "applied"
            } else {
                "refused"
            },
        );
        if let Some(e) = error {
            r.text("error", &escape_str(e));
        }
        r.send();
    }

    /// A session's end: how many messages, how long, why.
    pub fn session_ended(&self, who: Who<'_>, messages: u64, duration: Duration, reason: &str) {
        let Some(mut r) = self.record("session_end", who) else {
            return;
        };
        r.number("messages", messages);
        r.number("duration_ms", duration.as_millis() as u64);
        r.label("reason", reason);
        r.send();
    }

    /// A handshake the proxy refused, with the certificate presented, if any. Written for every
    /// refusal, whatever the log's rate limit lets through: the audit trail is the record of who
    /// tried, and a flood of junk must not hide one stolen certificate's attempt.
    pub fn handshake_refused(&self, who: Who<'_>, reason: &str, presented: Presented<'_>) {
        let Some(mut r) = self.record("handshake_refused", who) else {
            return;
        };
        r.label("reason", reason);
        match presented {
            Presented::Verified(c) => {
                r.label("verified", "true");
                r.certificate(c);
                r.text("identities", &escape_str(&c.names()));
            }
            Presented::Unverified(c) => {
                r.label("verified", "false");
                r.text("presented_subject", &escape_str(&c.subject));
                r.text("presented_serial", &escape_str(&c.serial));
                r.text("presented_issuer", &escape_str(&c.issuer));
                r.text("presented_identities", &escape_str(&c.names()));
            }
            Presented::Nothing => r.label("verified", "false"),
        }
        r.send();
    }

    /// One record per message. `prefix` is the session's [`Prefix`], when it has one.
    pub fn message(
        &self,
        who: Who<'_>,
        prefix: Option<&Prefix>,
        control_id: &[u8],
        message_type: &[u8],
        bytes: usize,
        outcome: Outcome<'_>,
    ) {
        let Some(mut r) = self.begin() else {
            return;
        };
        match prefix {
            Some(p) if p.json == r.json => r.line.extend_from_slice(&p.fields),
            // No prefix, or one of the other format (the log format was reloaded).
            _ => r.who("message", who),
        }
        r.escaped("control_id", control_id);
        r.escaped("message_type", message_type);
        r.number("bytes", bytes as u64);
        let answer = |a: Option<AckCode>| a.map_or("none", AckCode::label);
        match outcome {
            Outcome::Relayed {
                ack,
                engine,
                latency,
            } => {
                r.word("ack", ack);
                r.label("engine", engine);
                r.number("latency_us", latency.as_micros() as u64);
            }
            Outcome::Refused {
                reason,
                err,
                answer: sent,
            } => {
                r.word("nak", reason);
                r.number("err_code", u64::from(err));
                r.label("answer", answer(sent));
            }
            Outcome::Failed {
                kind,
                engine,
                answer: sent,
            } => {
                r.word("upstream_failure", kind);
                if let Some(engine) = engine {
                    r.label("engine", engine);
                }
                r.label("answer", answer(sent));
            }
            Outcome::Forwarded { engine } => {
                r.label("engine", engine);
                r.label("forwarded", "acknowledgment");
            }
        }
        r.send();
    }

    fn record(&self, event: &str, who: Who<'_>) -> Option<Record<'_>> {
        let mut r = self.begin()?;
        r.who(event, who);
        Some(r)
    }

    /// A record of `event` on `route`, not about one sender's connection.
    fn start(&self, event: &str, route: &str) -> Option<Record<'_>> {
        let mut r = self.begin()?;
        r.label("event", event);
        r.label("route", route);
        Some(r)
    }

    /// The timestamp and level, in this thread's buffer.
    fn begin(&self) -> Option<Record<'_>> {
        let sink = self.0.as_ref()?;
        let json = sink.json.load(Ordering::Relaxed);
        let mut line = SCRATCH.take();
        line.clear();
        if json {
            line.extend_from_slice(b"{\"timestamp\":\"");
        }
        push_timestamp(&mut line, std::time::SystemTime::now());
        if json {
            line.extend_from_slice(b"\",\"level\":\"INFO\"");
        } else {
            line.extend_from_slice(b"  INFO audit:");
        }
        Some(Record {
            line,
            json,
            queue: Some(&sink.writer.queue),
        })
    }
}

/// The certificate of a refused handshake, and whether it verified.
#[derive(Clone, Copy)]
pub enum Presented<'a> {
    /// None was presented (or it could not be parsed).
    Nothing,
    /// Presented but not verified (unknown CA, revoked, expired, …): its names are the
    /// peer's claim, written as `presented_*` so that nobody can plant a real sender's
    /// identity in the fields of a verified one.
    Unverified(&'a ClientIdentity),
    /// Verified, but refused for another reason (not in `allowed_clients`).
    Verified(&'a ClientIdentity),
}

/// What became of one message.
pub enum Outcome<'a> {
    /// The engine's ACK was relayed.
    Relayed {
        /// Its MSA-1.
        ack: AckCode,
        /// The engine target that answered.
        engine: &'a str,
        /// Forward to ACK.
        latency: Duration,
    },
    /// The proxy refused it with a NAK (or, for an acknowledgment, silently).
    Refused {
        /// The metric reason label.
        reason: RejectReason,
        /// The ERR code (HL7 table 0357).
        err: u16,
        /// The MSA-1 of the NAK sent (AE, AR, CE or CR); `None` when nothing was sent.
        answer: Option<AckCode>,
    },
    /// The engine gave no ACK; the sender got none (or the proxy's AR/CR).
    Failed {
        /// The failure kind label.
        kind: FailureKind,
        /// The engine target, if one was reached.
        engine: Option<&'a str>,
        /// The MSA-1 of the NAK sent; `None` when the connection was closed without one.
        answer: Option<AckCode>,
    },
    /// An acknowledgment from the sender, passed on.
    Forwarded {
        /// The engine target.
        engine: &'a str,
    },
}

/// The fields a session's message records share (event, route, peer, connection), written
/// once per session instead of once per message: they were a third of a record's cost.
pub struct Prefix {
    json: bool,
    fields: Box<[u8]>,
}

thread_local! {
    /// The buffer records are written into, kept per thread: a record allocates nothing.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// One audit line, written the way the log's formatter writes an info event of target `audit`
/// (same timestamp, level, field syntax), without going through it: a record per message is
/// on every exchange's path, and the general formatter is several times the cost.
struct Record<'a> {
    line: Vec<u8>,
    json: bool,
    /// Where [`Record::send`] queues the line (`None`: building a [`Prefix`]).
    queue: Option<&'a Queue>,
}

impl Record<'_> {
    /// The event, then which connection: route, peer address, connection id.
    fn who(&mut self, event: &str, who: Who<'_>) {
        self.label("event", event);
        self.label("route", who.route);
        // An address has no character that needs escaping or quoting.
        self.key("peer");
        let quote = if self.json { "\"" } else { "" };
        self.line.extend_from_slice(quote.as_bytes());
        push_peer(&mut self.line, who.peer);
        self.line.extend_from_slice(quote.as_bytes());
        self.number("conn", who.conn);
    }

    /// A certificate's subject, serial and issuer.
    fn certificate(&mut self, id: &ClientIdentity) {
        self.text("subject", &escape_str(&id.subject));
        self.text("serial", &escape_str(&id.serial));
        self.text("issuer", &escape_str(&id.issuer));
    }

    /// A word of a closed label set: quoted in text, as tracing writes a `&str`, and copied
    /// without a scan (the `labels!` macro checks each word when compiling).
    fn word(&mut self, key: &str, value: impl Label) {
        self.key(key);
        self.line.push(b'"');
        self.line.extend_from_slice(value.label().as_bytes());
        self.line.push(b'"');
    }

    /// A name from a bounded set: quoted in text, as tracing writes a `&str`.
    fn label(&mut self, key: &str, value: &str) {
        self.key(key);
        self.line.push(b'"');
        self.quoted(value.as_bytes());
        self.line.push(b'"');
    }

    /// An already escaped value: bare in text when logfmt allows (as the log's formatter
    /// writes a `Display` value), quoted when it has a space, `=`, `"` or `,`.
    fn text(&mut self, key: &str, value: &str) {
        if self.json || crate::logsafe::needs_quotes(value) {
            self.label(key, value);
        } else {
            self.key(key);
            self.line.extend_from_slice(value.as_bytes());
        }
    }

    /// A peer's value, escaped ([`escape`]); copied as it is when there is nothing to escape
    /// (the usual control ID or message type), read once to know that.
    fn escaped(&mut self, key: &str, value: &[u8]) {
        match crate::logsafe::classify(value) {
            Plain::Bare if !self.json => {
                self.key(key);
                self.line.extend_from_slice(value);
            }
            Plain::Bare | Plain::Quoted => {
                self.key(key);
                self.line.push(b'"');
                self.quoted(value);
                self.line.push(b'"');
            }
            Plain::No => self.text(key, &escape(value)),
        }
    }

    fn number(&mut self, key: &str, value: u64) {
        self.key(key);
        push_digits(&mut self.line, value, 1);
    }

    fn key(&mut self, key: &str) {
        if self.json {
            self.line.extend_from_slice(b",\"");
            self.line.extend_from_slice(key.as_bytes());
            self.line.extend_from_slice(b"\":");
        } else {
            self.line.push(b' ');
            self.line.extend_from_slice(key.as_bytes());
            self.line.push(b'=');
        }
    }

    /// Inside quotes: `"` and `\` escaped (values are escaped for control characters already).
    fn quoted(&mut self, value: &[u8]) {
        if memchr::memchr2(b'"', b'\\', value).is_none() {
            self.line.extend_from_slice(value);
            return;
        }
        // Byte by byte is safe for UTF-8: no byte of a multi-byte character is `"` or `\`.
        for &b in value {
            if matches!(b, b'"' | b'\\') {
                self.line.push(b'\\');
            }
            self.line.push(b);
        }
    }

    fn send(mut self) {
        if self.json {
            self.line.extend_from_slice(b",\"target\":\"audit\"}");
        }
        self.line.push(b'\n');
        if let Some(queue) = self.queue {
            queue.push(&self.line, true);
        }
        SCRATCH.set(self.line);
    }
}

/// `at` as the log writes it (tracing-subscriber's `SystemTime`: RFC 3339 in UTC with
/// microseconds, `2026-11-26T15:56:33.297320Z`), without the formatting machinery: a record per
/// message spent more on its timestamp than on anything else it writes.
fn push_timestamp(line: &mut Vec<u8>, at: std::time::SystemTime) {
    thread_local! {
        // The second's part (`2026-11-26T15:56:33.`) changes once a second; at a thousand
        // records a second it was made a thousand times.
        static SECOND: std::cell::RefCell<(u64, Vec<u8>)> =
            const { std::cell::RefCell::new((u64::MAX, Vec::new())) };
    }
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with_borrow_mut(|(cached, prefix)| {
        if *cached != secs {
            prefix.clear();
            push_second(prefix, secs);
            *cached = secs;
        }
        line.extend_from_slice(prefix);
    });
    push_digits(line, u64::from(since.subsec_micros()), 6);
    line.push(b'Z');
}

/// The timestamp up to its fraction of a second: `2026-11-26T15:56:33.`.
pub(crate) fn push_second(line: &mut Vec<u8>, secs: u64) {
    let (year, month, day) = civil_date(secs / 86_400);
    let in_day = secs % 86_400;
    push_digits(line, year, 4);
    line.push(b'-');
    push_digits(line, month, 2);
    line.push(b'-');
    push_digits(line, day, 2);
    line.push(b'T');
    push_digits(line, in_day / 3600, 2);
    line.push(b':');
    push_digits(line, in_day / 60 % 60, 2);
    line.push(b':');
    push_digits(line, in_day % 60, 2);
    line.push(b'.');
}

/// The proleptic Gregorian (year, month, day) of a day counted from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// `peer` as `Display` writes it; an IPv4 address by hand, since `Display` goes through the
/// formatting machinery once per octet.
fn push_peer(line: &mut Vec<u8>, peer: SocketAddr) {
    match peer {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    line.push(b'.');
                }
                push_digits(line, u64::from(octet), 1);
            }
            line.push(b':');
            push_digits(line, u64::from(v4.port()), 1);
        }
        v6 => {
            let _ = write!(line, "{v6}");
        }
    }
}

/// `value` in decimal, zero-padded to at least `width` digits.
fn push_digits(line: &mut Vec<u8>, mut value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    while value > 0 || digits.len() - at < width {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
    }
    line.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

    fn stamp(secs: u64, micros: u32) -> String {
        let mut s = Vec::new();
        push_timestamp(
            &mut s,
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(u64::from(micros)),
        );
        String::from_utf8(s).unwrap()
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        // Expected values from Python's datetime.
        assert_eq!(stamp(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(stamp(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        // The same second again (its part kept from the call before), then the next.
        assert_eq!(stamp(951_782_400, 999_999), "2000-02-29T00:00:00.999999Z");
        assert_eq!(stamp(951_782_401, 0), "2000-02-29T00:00:01.000000Z");
        assert_eq!(stamp(951_868_799, 999_999), "2000-02-29T23:59:59.999999Z");
        assert_eq!(stamp(1_709_164_800, 120), "2024-02-29T00:00:00.000120Z");
        assert_eq!(stamp(1_798_761_599, 297_320), "2026-12-31T23:59:59.297320Z");
        assert_eq!(stamp(1_798_761_600, 0), "2027-01-01T00:00:00.000000Z");
        assert_eq!(stamp(4_102_531_199, 1), "2100-01-01T23:59:59.000001Z");
    }

    #[test]
    fn timestamps_match_the_logs_formatter() {
        // Taken between two of tracing-subscriber's own: same shape, in order.
        let mut before = String::new();
        let _ = SystemTime.format_time(&mut Writer::new(&mut before));
        let mine = {
            let mut s = Vec::new();
            push_timestamp(&mut s, std::time::SystemTime::now());
            String::from_utf8(s).unwrap()
        };
        let mut after = String::new();
        let _ = SystemTime.format_time(&mut Writer::new(&mut after));
        assert_eq!(mine.len(), before.len(), "{mine} {before}");
        assert!(before <= mine && mine <= after, "{before} {mine} {after}");
    }

    #[test]
    fn peers_read_as_their_display() {
        for peer in [
            "0.0.0.0:0",
            "127.0.0.1:2575",
            "10.20.255.9:65535",
            "[::1]:2575",
            "[::ffff:10.0.0.1]:443",
            "[fe80::1%3]:1",
        ] {
            let peer: SocketAddr = peer.parse().unwrap();
            let mut out = Vec::new();
            push_peer(&mut out, peer);
            assert_eq!(String::from_utf8(out).unwrap(), peer.to_string());
        }
    }

    #[test]
    fn fields_are_written_as_the_logs_formatter_writes_them_in_both_formats() {
        let who = Who {
            route: "lab",
            peer: "10.1.2.3:4000".parse().unwrap(),
            conn: 7,
        };
        let line = |json: bool| {
            let mut r = Record {
                line: Vec::new(),
                json,
                queue: None,
            };
            r.who("message", who);
            r.escaped("control_id", b"C1");
            r.escaped("message_type", b"ORU R01");
            r.escaped("odd", b"a\"\x1b");
            r.number("bytes", 1024);
            r.label("ack", "AA");
            String::from_utf8(r.line).unwrap()
        };
        assert_eq!(
            line(false),
            r#" event="message" route="lab" peer=10.1.2.3:4000 conn=7 control_id=C1 message_type="ORU R01" odd="a\"\\x1B" bytes=1024 ack="AA""#
        );
        assert_eq!(
            line(true),
            r#","event":"message","route":"lab","peer":"10.1.2.3:4000","conn":7,"control_id":"C1","message_type":"ORU R01","odd":"a\"\\x1B","bytes":1024,"ack":"AA""#
        );
    }

    #[test]
    fn numbers_are_decimal() {
        for (v, w, s) in [
            (0, 1, "0"),
            (7, 1, "7"),
            (42, 4, "0042"),
            (u64::MAX, 1, "18446744073709551615"),
        ] {
            let mut out = Vec::new();
            push_digits(&mut out, v, w);
            assert_eq!(out, s.as_bytes());
        }
    }
}
