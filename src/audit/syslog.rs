//! The audit trail to syslog collectors (`audit.syslog`): RFC 5424 records over TLS (RFC 5425),
//! plain TCP (RFC 6587 octet counting) or UDP (RFC 5426).
//!
//! Never on the data path: the writer thread hands each batch of records to every collector's
//! [`Outbox`] (bounded in bytes; records past the bound are dropped and counted), and each
//! collector has a thread of its own that connects, reconnects with back-off and jitter, and
//! sends in order. A collector that is down, slow or refuses TLS delays nothing but itself.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::atna;
use crate::config::{SyslogConfig, SyslogFormat, SyslogTransport};
use crate::tls::PartnerTls;

/// Bound on one connect (and TLS handshake), and on one batch's write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Records sent in one write.
const BATCH: usize = 256;
/// The back-off between connection attempts: 1 s doubling to 30 s, ±20%.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A connection the collector closes this soon after it was made was refused, not used; the
/// first write waits this long.
const REFUSAL_WINDOW: Duration = Duration::from_secs(1);
/// How long a stopping collector may still send what it holds.
const STOP_FLUSH: Duration = Duration::from_secs(2);

/// One collector: its settings, what it holds, and how it fares.
pub struct Collector {
    cfg: SyslogConfig,
    /// The HOSTNAME field: `hostname`, or the machine's, read once.
    host: String,
    /// The collector's TLS (transport `tls`): loaded when the collector was configured, and
    /// again when its files change (polled every `tls.reload_interval`).
    partner: Mutex<Option<Arc<PartnerTls>>>,
    outbox: Mutex<Outbox>,
    wake: tokio::sync::Notify,
    stop: CancellationToken,
    /// Records written to the collector's connection (or datagrams sent).
    pub sent: AtomicU64,
    /// Records dropped past `queue_bytes`.
    pub dropped: AtomicU64,
    /// Whether the last connection attempt or write succeeded.
    pub up: AtomicBool,
    /// Whether its sending thread has ended.
    finished: AtomicBool,
}

/// Records waiting for a collector, oldest first.
#[derive(Default)]
struct Outbox {
    records: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Collector {
    /// A collector for `cfg`, its TLS material loaded (an error names the key and file), and
    /// its sending thread started.
    pub fn start(cfg: &SyslogConfig) -> Result<Arc<Collector>, String> {
        let partner = match &cfg.tls {
            Some(t) => Some(Arc::new(
                PartnerTls::load(t).map_err(|e| format!("audit.syslog {}: {e}", cfg.name))?,
            )),
            None => None,
        };
        let collector = Arc::new(Collector {
            host: if cfg.hostname.is_empty() {
                hostname()
            } else {
                cfg.hostname.clone()
            },
            cfg: cfg.clone(),
            partner: Mutex::new(partner),
            outbox: Mutex::new(Outbox::default()),
            wake: tokio::sync::Notify::new(),
            stop: CancellationToken::new(),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            up: AtomicBool::new(false),
            finished: AtomicBool::new(false),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("audit.syslog {}: {e}", cfg.name))?;
        let c = collector.clone();
        std::thread::Builder::new()
            .name(format!("syslog-{}", cfg.name))
            .spawn(move || {
                runtime.block_on(c.clone().run());
                c.finished.store(true, Ordering::Release);
            })
            .map_err(|e| format!("audit.syslog {}: {e}", cfg.name))?;
        Ok(collector)
    }

    /// The collector's name (its metrics' `sink` label).
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// notAfter (Unix seconds) of our client certificate and of the collector's earliest CA.
    pub fn not_after(&self) -> (Option<i64>, Option<i64>) {
        match self.partner() {
            Some(p) => (p.client_not_after, Some(p.ca_not_after)),
            None => (None, None),
        }
    }

    fn partner(&self) -> Option<Arc<PartnerTls>> {
        self.partner.lock().ok().and_then(|p| p.clone())
    }

    /// Whether the collector's TLS files now hold other material than the collector uses
    /// (read again on a reload, SIGHUP included, whose configuration is otherwise the same).
    pub fn tls_changed(&self) -> bool {
        use crate::tls::Material;
        match (self.partner(), &self.cfg.tls) {
            (Some(p), Some(cfg)) => PartnerTls::read(cfg).is_ok_and(|now| &now != p.contents()),
            _ => false,
        }
    }

    /// Loads the collector's TLS files again when they changed (cert-manager renewed our
    /// certificate): `true` when new material is in service, for the next connection. Files
    /// that do not load keep the material in service, with a warning.
    fn renew_tls(&self) -> bool {
        let Some(cfg) = &self.cfg.tls else {
            return false;
        };
        if !self.tls_changed() {
            return false;
        }
        match PartnerTls::load(cfg) {
            Ok(p) => {
                if let Ok(mut slot) = self.partner.lock() {
                    *slot = Some(Arc::new(p));
                }
                tracing::info!(sink = %self.cfg.name, "audit collector TLS material reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(sink = %self.cfg.name, error = %e, "audit collector TLS reload refused; previous material stays in service");
                false
            }
        }
    }

    /// Takes the records of `lines` (each ending in `\n`), as many as `queue_bytes` holds.
    pub fn offer(&self, lines: &[u8]) {
        if lines.is_empty() {
            return;
        }
        let Ok(mut out) = self.outbox.lock() else {
            return;
        };
        let mut dropped = 0;
        for line in lines.split_inclusive(|&b| b == b'\n') {
            if out.bytes + line.len() > self.cfg.queue_bytes {
                dropped += 1;
                continue;
            }
            out.bytes += line.len();
            out.records.push_back(line.to_vec());
        }
        drop(out);
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        self.wake.notify_one();
    }

    /// Stops the sending thread after it has sent what it holds (or [`STOP_FLUSH`] passed).
    pub fn stop(&self) {
        self.stop.cancel();
        self.wake.notify_one();
    }

    /// Stops the sending thread and waits for it (at most [`STOP_FLUSH`] and a little): at
    /// exit, the last records (`application_stop`) reach the collector before the process
    /// ends.
    pub fn stop_and_wait(&self) {
        self.stop();
        let deadline = std::time::Instant::now() + STOP_FLUSH + Duration::from_millis(500);
        while !self.finished.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    async fn run(self: Arc<Self>) {
        let mut conn: Option<Conn> = None;
        let mut failures = 0u32;
        let mut dropped_seen = 0;
        let mut flush_until = None;
        let mut connected_at = tokio::time::Instant::now();
        let mut sessions = atna::Sessions::default();
        let poll_every = self.cfg.tls.as_ref().map(|t| t.policy.reload_interval);
        let mut next_poll = poll_every.map(|every| tokio::time::Instant::now() + every);
        loop {
            // Connected before the first record, so that a collector that refuses us shows
            // (`audit_sink_up` 0, a warning) at once; and a connection the collector closed
            // (a restart) is replaced before a write into it would be lost.
            if next_poll.is_some_and(|at| tokio::time::Instant::now() >= at) {
                next_poll = poll_every.map(|every| tokio::time::Instant::now() + every);
                if self.renew_tls() {
                    // The next connection presents the renewed material.
                    conn = None;
                }
            }
            if conn.as_mut().is_some_and(Conn::closed) {
                conn = None;
                if connected_at.elapsed() < REFUSAL_WINDOW {
                    // Under TLS 1.3 a collector refuses our certificate after our side of the
                    // handshake completed: a failure, not a connection that came and went.
                    let why = "the collector closed the connection right after the handshake (does it accept our certificate, audit.syslog[].tls.certificate?)";
                    self.down(&mut failures, why).await;
                    continue;
                }
            }
            if conn.is_none() && !self.stop.is_cancelled() {
                match self.connect().await {
                    Ok(c) => {
                        conn = Some(c);
                        connected_at = tokio::time::Instant::now();
                    }
                    Err(e) => {
                        self.down(&mut failures, &e).await;
                        continue;
                    }
                }
            }
            if conn.is_some() && connected_at.elapsed() >= REFUSAL_WINDOW {
                // Connected, and not refused: up.
                self.reachable(&mut failures);
            }
            let batch = self.take();
            if batch.is_empty() {
                if self.stop.is_cancelled() {
                    return;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = self.stop.cancelled() => {}
                    // A look at the connection now and then: a collector that went away
                    // while nothing was sent is noticed, and `up` tells the truth.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            if self.stop.is_cancelled() {
                let until =
                    *flush_until.get_or_insert_with(|| tokio::time::Instant::now() + STOP_FLUSH);
                if tokio::time::Instant::now() >= until {
                    return;
                }
            }
            let Some(c) = conn.as_mut() else {
                // Stopping while the collector is down: what it holds is not sent.
                return;
            };
            let young = REFUSAL_WINDOW.saturating_sub(connected_at.elapsed());
            if !young.is_zero() {
                // Nothing is written before the collector had its chance to refuse us: what
                // a refused connection took would be lost.
                self.put_back(batch);
                tokio::time::sleep(young).await;
                continue;
            }
            let frames = self.frames(&batch, &mut sessions);
            match tokio::time::timeout(IO_TIMEOUT, c.send(&frames)).await {
                Ok(Ok(())) => {
                    let sent = batch.len() as u64 - frames.skipped;
                    self.sent.fetch_add(sent, Ordering::Relaxed);
                    self.reachable(&mut failures);
                    let dropped = self.dropped.load(Ordering::Relaxed);
                    if dropped > dropped_seen {
                        tracing::warn!(sink = %self.cfg.name, dropped = dropped - dropped_seen, queue_bytes = self.cfg.queue_bytes, "audit records dropped while the collector was unreachable: more than queue_bytes were waiting");
                        dropped_seen = dropped;
                    }
                }
                Ok(Err(e)) => {
                    conn = None;
                    self.put_back(batch);
                    self.down(&mut failures, &e.to_string()).await;
                }
                Err(_) => {
                    conn = None;
                    self.put_back(batch);
                    self.down(&mut failures, "write timed out").await;
                }
            }
        }
    }

    /// Up to [`BATCH`] records from the front of the outbox.
    fn take(&self) -> Vec<Vec<u8>> {
        let Ok(mut out) = self.outbox.lock() else {
            return Vec::new();
        };
        let n = out.records.len().min(BATCH);
        let batch: Vec<Vec<u8>> = out.records.drain(..n).collect();
        out.bytes -= batch.iter().map(Vec::len).sum::<usize>();
        batch
    }

    /// A batch not sent goes back to the front, in order.
    fn put_back(&self, batch: Vec<Vec<u8>>) {
        if let Ok(mut out) = self.outbox.lock() {
            for r in batch.into_iter().rev() {
                out.bytes += r.len();
                out.records.push_front(r);
            }
        }
    }

    /// Notes that the collector takes records (after an outage: logged).
    fn reachable(&self, failures: &mut u32) {
        self.up.store(true, Ordering::Relaxed);
        if *failures > 0 {
            tracing::info!(sink = %self.cfg.name, address = %self.cfg.address, "audit collector reachable again; sending the records held");
            *failures = 0;
        }
    }

    /// Notes a failure (logged once per outage) and waits out the back-off.
    async fn down(&self, failures: &mut u32, why: &str) {
        self.up.store(false, Ordering::Relaxed);
        *failures = failures.saturating_add(1);
        if *failures == 1 {
            tracing::warn!(sink = %self.cfg.name, address = %self.cfg.address, error = %why, "audit collector unreachable; records are held (up to queue_bytes) and sent when it is back");
        }
        let doublings = failures.saturating_sub(1).min(5);
        let pause = FIRST_BACKOFF
            .saturating_mul(1 << doublings)
            .min(MAX_BACKOFF)
            .mul_f64(jitter());
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = self.stop.cancelled() => {}
        }
    }

    async fn connect(&self) -> Result<Conn, String> {
        let addr = &self.cfg.address;
        if self.cfg.transport == SyslogTransport::Udp {
            let local = if addr.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let socket = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
            socket.connect(addr).await.map_err(|e| e.to_string())?;
            return Ok(Conn::Udp(socket));
        }
        let tcp = match tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("connect timed out after {IO_TIMEOUT:?}")),
        };
        let _ = tcp.set_nodelay(true);
        match self.partner() {
            None => Ok(Conn::Tcp(tcp)),
            Some(p) => crate::tls::establish_tls(tcp, addr, &p, IO_TIMEOUT)
                .await
                .map(Conn::Tls)
                .map_err(|r| format!("TLS: {} ({})", r.reason.words(), r.detail)),
        }
    }

    /// The batch as the transport sends it: octet-counted frames (stream), or one datagram
    /// per record, each cut to `max_message_bytes`.
    fn frames(&self, batch: &[Vec<u8>], sessions: &mut atna::Sessions) -> Frames {
        let stream = self.cfg.transport != SyslogTransport::Udp;
        let mut frames = Frames::default();
        for record in batch {
            let Some(mut msg) = format_record(&self.cfg, &self.host, record, sessions) else {
                // An ATNA collector gets the records an ATNA event covers.
                frames.skipped += 1;
                continue;
            };
            cut(&mut msg, self.cfg.max_message_bytes);
            if stream {
                let _ = write!(frames.stream, "{} ", msg.len());
                frames.stream.extend_from_slice(&msg);
            } else {
                frames.datagrams.push(msg);
            }
        }
        frames
    }
}

/// A batch ready to send.
#[derive(Default)]
struct Frames {
    stream: Vec<u8>,
    datagrams: Vec<Vec<u8>>,
    /// Records with no message in the collector's format.
    skipped: u64,
}

/// A connection to a collector.
enum Conn {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Udp(UdpSocket),
}

impl Conn {
    /// Whether the collector closed or reset the connection (it never sends anything else).
    fn closed(&mut self) -> bool {
        let mut byte = [0u8; 64];
        match self {
            Conn::Tcp(s) => match s.try_read(&mut byte) {
                Ok(_) => true,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            },
            Conn::Tls(s) => {
                use tokio::io::AsyncRead;
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                let mut buf = tokio::io::ReadBuf::new(&mut byte);
                !matches!(
                    std::pin::Pin::new(s.as_mut()).poll_read(&mut cx, &mut buf),
                    std::task::Poll::Pending
                )
            }
            Conn::Udp(_) => false,
        }
    }

    async fn send(&mut self, frames: &Frames) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.write_all(&frames.stream).await?;
                s.flush().await
            }
            Conn::Tls(s) => {
                s.write_all(&frames.stream).await?;
                s.flush().await
            }
            Conn::Udp(s) => {
                for d in &frames.datagrams {
                    s.send(d).await?;
                }
                Ok(())
            }
        }
    }
}

/// Cuts `msg` to at most `max` bytes, on a UTF-8 character boundary.
fn cut(msg: &mut Vec<u8>, max: usize) {
    if msg.len() <= max {
        return;
    }
    let mut end = max;
    while end > 0 && (msg[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    msg.truncate(end);
}

/// A factor in 0.8 … 1.2, so that replicas do not retry in step.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    0.8 + 0.4 * ((r >> 11) as f64 / (1u64 << 53) as f64)
}

/// The machine's host name, for the HOSTNAME field.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| (33..=126).contains(&b)))
        .unwrap_or_else(|| "-".into())
}

/// One audit record line (the log's text or JSON form) as an RFC 5424 message; `None` when
/// the collector's format has no message for it (`atna`).
fn format_record(
    cfg: &SyslogConfig,
    host: &str,
    line: &[u8],
    sessions: &mut atna::Sessions,
) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(line);
    let record = Parsed::of(text.trim_end());
    let event = record.get("event").unwrap_or("audit");
    let pri = u16::from(cfg.facility) * 8 + u16::from(cfg.severity_of(event));
    let timestamp = record.timestamp.as_deref().unwrap_or("-");
    if cfg.format == SyslogFormat::Atna {
        sessions.follow(&record.fields);
        let pri = u16::from(cfg.facility) * 8 + u16::from(atna::severity(&record.fields));
        let source = atna::Source {
            host,
            messages: cfg.atna_messages,
        };
        let xml = atna::message(timestamp, &record.fields, &source, sessions)?;
        let head = format!(
            "<{pri}>1 {timestamp} {host} mllp-proxy {} IHE+RFC-3881 - ",
            std::process::id()
        );
        let mut out = head.into_bytes();
        atna::body(&mut out, &xml);
        return Some(out);
    }
    let msgid: String = event
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect();
    // Header, the fields twice (structured data and MSG), and their quoting.
    let mut out = String::with_capacity(96 + 2 * line.len());
    let _ = std::fmt::Write::write_fmt(
        &mut out,
        format_args!(
            "<{pri}>1 {timestamp} {host} mllp-proxy {} {} [{}",
            std::process::id(),
            if msgid.is_empty() { "-" } else { &msgid },
            cfg.sd_id
        ),
    );
    let plain_name = |k: &str| {
        k.len() <= 32
            && k.bytes()
                .all(|b| b.is_ascii_graphic() && !b"=]\"".contains(&b))
    };
    for (k, v) in &record.fields {
        out.push(' ');
        if plain_name(k) {
            out.push_str(k);
        } else {
            let name = k
                .chars()
                .filter(|c| c.is_ascii_graphic() && !"=]\"".contains(*c));
            out.extend(name.take(32));
        }
        out.push_str("=\"");
        if v.bytes().any(|b| matches!(b, b'"' | b'\\' | b']')) {
            for c in v.chars() {
                if matches!(c, '"' | '\\' | ']') {
                    out.push('\\');
                }
                out.push(c);
            }
        } else {
            out.push_str(v);
        }
        out.push('"');
    }
    out.push_str("] ");
    match cfg.format {
        SyslogFormat::Json => out.push_str(&record.json()),
        SyslogFormat::Rfc5424 | SyslogFormat::Atna => out.push_str(&record.logfmt()),
    }
    Some(out.into_bytes())
}

/// An audit record's timestamp and fields, in their order.
struct Parsed<'a> {
    timestamp: Option<Cow<'a, str>>,
    fields: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// A text record's fields as the audit trail wrote them: already logfmt.
    body: Option<&'a str>,
}

impl<'a> Parsed<'a> {
    /// Reads a record in either of the log's formats; a text one without copying its values.
    fn of(line: &'a str) -> Parsed<'a> {
        if line.starts_with('{') {
            return Parsed::json_line(line);
        }
        // `TIMESTAMP  INFO audit: key=value …`
        let (head, body) = line.split_once(" audit: ").unwrap_or(("", line));
        let timestamp = head.split_whitespace().next().map(Cow::Borrowed);
        Parsed {
            timestamp,
            fields: logfmt_fields(body),
            body: Some(body),
        }
    }

    fn json_line(line: &str) -> Parsed<'a> {
        let fields: Vec<(String, serde_json::Value)> = serde_json::from_str::<OrderedObject>(line)
            .map(|o| o.0)
            .unwrap_or_default();
        let mut timestamp = None;
        let mut out = Vec::new();
        for (k, v) in fields {
            let text = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            match k.as_str() {
                "timestamp" => timestamp = Some(Cow::Owned(text)),
                "level" | "target" => {}
                _ => out.push((Cow::Owned(k), Cow::Owned(text))),
            }
        }
        Parsed {
            timestamp,
            fields: out,
            body: None,
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// The fields as logfmt: a text record's as written; else quoted where a value has a
    /// space, `=`, `"` or nothing.
    fn logfmt(&self) -> Cow<'a, str> {
        if let Some(body) = self.body {
            return Cow::Borrowed(body);
        }
        let mut out = String::new();
        for (k, v) in &self.fields {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(k);
            out.push('=');
            if v.is_empty() || v.contains([' ', '=', '"', ',']) {
                out.push('"');
                out.push_str(&v.replace('\\', "\\\\").replace('"', "\\\""));
                out.push('"');
            } else {
                out.push_str(v);
            }
        }
        Cow::Owned(out)
    }

    /// The fields as one JSON object, in order.
    fn json(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::Value::from(k.as_ref()).to_string());
            out.push(':');
            out.push_str(&serde_json::Value::from(v.as_ref()).to_string());
        }
        out.push('}');
        out
    }
}

/// `key=value` pairs of a logfmt line; a quoted value may hold spaces and `\"` (copied only
/// then).
fn logfmt_fields(body: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    let mut out = Vec::with_capacity(16);
    let mut rest = body.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = Cow::Borrowed(key.trim());
        let (value, next) = match after.strip_prefix('"') {
            Some(q) => {
                let end = closing_quote(q);
                let raw = &q[..end];
                let value = if raw.contains('\\') {
                    let mut v = String::with_capacity(raw.len());
                    let mut chars = raw.chars();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => v.extend(chars.next()),
                            _ => v.push(c),
                        }
                    }
                    Cow::Owned(v)
                } else {
                    Cow::Borrowed(raw)
                };
                (value, &q[(end + 1).min(q.len())..])
            }
            None => {
                let end = after.find(' ').unwrap_or(after.len());
                (Cow::Borrowed(&after[..end]), &after[end..])
            }
        };
        out.push((key, value));
        rest = next.trim_start();
    }
    out
}

/// Where the quoted value that `q` starts (after its opening quote) ends: the first `"` not
/// escaped by a backslash, or the end.
fn closing_quote(q: &str) -> usize {
    let bytes = q.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    q.len()
}

/// A JSON object's members in their order (serde_json's map sorts them).
struct OrderedObject(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<OrderedObject, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = m.next_entry::<String, serde_json::Value>()? {
                    out.push(kv);
                }
                Ok(OrderedObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(format: SyslogFormat) -> SyslogConfig {
        SyslogConfig {
            name: "siem".into(),
            address: "127.0.0.1:6514".into(),
            transport: SyslogTransport::Tcp,
            format,
            facility: 10,
            severity: vec![],
            hostname: "proxy-1".into(),
            sd_id: "mllp-proxy@32473".into(),
            queue_bytes: 1 << 20,
            max_message_bytes: 65536,
            tls: None,
            atna_messages: false,
        }
    }

    #[test]
    fn a_text_record_becomes_rfc5424_with_its_fields_as_structured_data() {
        let line = br#"2026-12-07T12:29:08.982396Z  INFO audit: event="handshake_refused" route="lab" peer=127.0.0.1:54442 conn=6 subject="O=General Hospital, CN=billing] \"x\"""#;
        let out = String::from_utf8(
            format_record(
                &cfg(SyslogFormat::Rfc5424),
                "proxy-1",
                line,
                &mut Default::default(),
            )
            .unwrap(),
        )
        .unwrap();
        let pid = std::process::id();
        assert_eq!(
            out,
            format!(
                r#"<84>1 2026-12-07T12:29:08.982396Z proxy-1 mllp-proxy {pid} handshake_refused [mllp-proxy@32473 event="handshake_refused" route="lab" peer="127.0.0.1:54442" conn="6" subject="O=General Hospital, CN=billing\] \"x\""] event="handshake_refused" route="lab" peer=127.0.0.1:54442 conn=6 subject="O=General Hospital, CN=billing] \"x\"""#
            )
        );
    }

    #[test]
    fn a_json_record_keeps_its_field_order_and_its_severity_is_notice() {
        let line = br#"{"timestamp":"2026-12-07T12:00:00.000001Z","level":"INFO","event":"message","route":"lab","conn":7,"ack":"AA"}"#;
        let out = String::from_utf8(
            format_record(
                &cfg(SyslogFormat::Json),
                "proxy-1",
                line,
                &mut Default::default(),
            )
            .unwrap(),
        )
        .unwrap();
        let pid = std::process::id();
        assert_eq!(
            out,
            format!(
                r#"<85>1 2026-12-07T12:00:00.000001Z proxy-1 mllp-proxy {pid} message [mllp-proxy@32473 event="message" route="lab" conn="7" ack="AA"] {{"event":"message","route":"lab","conn":"7","ack":"AA"}}"#
            )
        );
    }

    #[test]
    fn a_long_record_is_cut_on_a_character_boundary() {
        let mut msg = "aé".repeat(10).into_bytes();
        cut(&mut msg, 4);
        assert_eq!(
            msg,
            "aé"
                .as_bytes()
                .iter()
                .chain(b"a")
                .copied()
                .collect::<Vec<_>>()
        );
    }
}
