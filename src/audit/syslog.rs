//! The audit trail to syslog collectors (`audit.syslog`): RFC 5424 records over TLS (RFC 5425),
//! plain TCP (RFC 6587 octet counting) or UDP (RFC 5426).
//!
//! Never on the data path: the writer thread hands each batch of records to every collector's
//! [`Outbox`] (bounded in bytes; records past the bound are dropped and counted), and each
//! collector has a thread of its own that connects, reconnects with back-off and jitter, and
//! sends in order. A collector that is down, slow or refuses TLS delays nothing but itself.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::atna;
use super::rfc5424::{cut, format_record};
use crate::config::{SyslogConfig, SyslogTransport};
use crate::tls::PartnerTls;

/// Bound on one connect (and TLS handshake), and on one batch's write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Records sent in one write.
const BATCH: usize = 256;
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
        let mut link = Link::new(&self.cfg);
        let mut dropped_seen = 0;
        let mut flush_until = None;
        let mut sessions = atna::Sessions::default();
        loop {
            if !self.keep_connected(&mut link).await {
                continue;
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
            if link.conn.is_none() {
                // Stopping while the collector is down: what it holds is not sent.
                return;
            }
            let young = REFUSAL_WINDOW.saturating_sub(link.connected_at.elapsed());
            if !young.is_zero() {
                // Nothing is written before the collector had its chance to refuse us: what
                // a refused connection took would be lost.
                self.put_back(batch);
                tokio::time::sleep(young).await;
                continue;
            }
            if self.send(&mut link, batch, &mut sessions).await {
                let dropped = self.dropped.load(Ordering::Relaxed);
                if dropped > dropped_seen {
                    tracing::warn!(sink = %self.cfg.name, dropped = dropped - dropped_seen, queue_bytes = self.cfg.queue_bytes, "audit records dropped while the collector was unreachable: more than queue_bytes were waiting");
                    dropped_seen = dropped;
                }
            }
        }
    }

    /// Keeps `link` connected: renewed TLS material polled for, a connection the collector
    /// closed (a restart, or a refusal of our certificate) replaced, one made before the first
    /// record so that a collector that refuses us shows (`audit_sink_up` 0, a warning) at once.
    /// `false`: not connected now (the back-off was waited out).
    async fn keep_connected(&self, link: &mut Link) -> bool {
        if link
            .next_poll
            .is_some_and(|at| tokio::time::Instant::now() >= at)
        {
            link.next_poll = link.poll_every.map(|e| tokio::time::Instant::now() + e);
            if self.renew_tls() {
                // The next connection presents the renewed material.
                link.conn = None;
            }
        }
        if link.conn.as_mut().is_some_and(Conn::closed) {
            link.conn = None;
            if link.connected_at.elapsed() < REFUSAL_WINDOW {
                // Under TLS 1.3 a collector refuses our certificate after our side of the
                // handshake completed: a failure, not a connection that came and went.
                let why = "the collector closed the connection right after the handshake (does it accept our certificate, audit.syslog[].tls.certificate?)";
                self.down(&mut link.failures, why).await;
                return false;
            }
        }
        if link.conn.is_none() && !self.stop.is_cancelled() {
            match self.connect().await {
                Ok(c) => {
                    link.conn = Some(c);
                    link.connected_at = tokio::time::Instant::now();
                }
                Err(e) => {
                    self.down(&mut link.failures, &e).await;
                    return false;
                }
            }
        }
        if link.conn.is_some() && link.connected_at.elapsed() >= REFUSAL_WINDOW {
            // Connected, and not refused: up.
            self.reachable(&mut link.failures);
        }
        true
    }

    /// Writes `batch`; on failure it goes back to the front of the outbox and the link is
    /// dropped. `true` when it was written.
    async fn send(
        &self,
        link: &mut Link,
        batch: Vec<Vec<u8>>,
        sessions: &mut atna::Sessions,
    ) -> bool {
        let Some(c) = link.conn.as_mut() else {
            self.put_back(batch);
            return false;
        };
        let frames = self.frames(&batch, sessions);
        let why = match tokio::time::timeout(IO_TIMEOUT, c.send(&frames)).await {
            Ok(Ok(())) => {
                let sent = batch.len() as u64 - frames.skipped;
                self.sent.fetch_add(sent, Ordering::Relaxed);
                self.reachable(&mut link.failures);
                return true;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "write timed out".to_string(),
        };
        link.conn = None;
        self.put_back(batch);
        self.down(&mut link.failures, &why).await;
        false
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
        let pause = crate::timer::backoff(*failures, crate::timer::jitter());
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

/// A collector's connection and what is known of it.
struct Link {
    conn: Option<Conn>,
    /// Consecutive failures: the back-off, and one warning per outage.
    failures: u32,
    connected_at: tokio::time::Instant,
    /// `tls.reload_interval`, when the collector has TLS files to poll.
    poll_every: Option<Duration>,
    next_poll: Option<tokio::time::Instant>,
}

impl Link {
    fn new(cfg: &SyslogConfig) -> Link {
        let poll_every = cfg.tls.as_ref().map(|t| t.policy.reload_interval);
        let now = tokio::time::Instant::now();
        Link {
            conn: None,
            failures: 0,
            connected_at: now,
            poll_every,
            next_poll: poll_every.map(|e| now + e),
        }
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

/// The machine's host name, for the HOSTNAME field.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| (33..=126).contains(&b)))
        .unwrap_or_else(|| "-".into())
}
