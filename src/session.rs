//! One sender's connection: handshake → identity → read frame → validate → forward → await
//! ACK → relay, in order, one message at a time.
//!
//! The session only stops between exchanges: once a message is written to the engine, its ACK
//! (or the failure) is dealt with before anything else, shutdown included.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use crate::audit;
use crate::config::{FailureMode, RouteConfig};
use crate::hl7::{self, Header, NakReason};
use crate::logsafe::{RouteEvents, escape, escape_str};
use crate::metrics::RouteMetrics;
use crate::mllp::{Frame, MllpCodec, MllpError};
use crate::timer::Deadline;
use crate::tls::{AllowList, ClientIdentity, PRESENTED, TlsWatch, handshake_failure_reason};
use crate::upstream::{Upstream, UpstreamError};

/// Everything a session of one route needs, shared by all its sessions.
pub struct RouteContext {
    /// The route's validated configuration.
    pub cfg: RouteConfig,
    /// The TLS configuration in service (replaced on reload).
    pub tls: TlsWatch,
    /// `allowed_clients`.
    pub allow: AllowList,
    /// The validation rules.
    pub validator: hl7::Validator,
    /// The engine: its pooled connections and targets.
    pub upstream: Arc<Upstream>,
    /// Metric handles bound to this route.
    pub metrics: RouteMetrics,
    /// Log lines of peer-triggered events, rate-limited.
    pub events: RouteEvents,
    /// `audit.messages`: one audit record per message.
    pub audit_messages: bool,
}

/// Why a session ended; `side` says who caused it.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("sender closed the connection")]
    SenderClosed,
    #[error("idle timeout")]
    Idle,
    #[error("shutting down")]
    Shutdown,
    #[error("frame not completed within frame_timeout")]
    FrameTimeout,
    #[error("connection closed inside a frame after {0} bytes")]
    TruncatedFrame(usize),
    #[error("reading from the sender failed: {0}")]
    ReadFailed(String),
    #[error("writing the answer failed: {0}")]
    WriteFailed(String),
    #[error("sender did not read its answer within frame_timeout")]
    NotReading,
    #[error("oversize message whose header could not be read")]
    OversizeUnreadable,
    #[error("upstream failed, connection closed without ACK: {0}")]
    Upstream(UpstreamError),
}

impl SessionEnd {
    fn side(&self) -> &'static str {
        match self {
            SessionEnd::Upstream(_) => "upstream",
            SessionEnd::Shutdown => "proxy",
            _ => "sender",
        }
    }

    /// The bounded word for the audit record.
    fn label(&self) -> &'static str {
        match self {
            SessionEnd::SenderClosed => "sender_closed",
            SessionEnd::Idle => "idle_timeout",
            SessionEnd::Shutdown => "shutdown",
            SessionEnd::FrameTimeout => "frame_timeout",
            SessionEnd::TruncatedFrame(_) => "truncated_frame",
            SessionEnd::ReadFailed(_) => "read_failed",
            SessionEnd::WriteFailed(_) => "write_failed",
            SessionEnd::NotReading => "sender_not_reading",
            SessionEnd::OversizeUnreadable => "oversize_unreadable",
            SessionEnd::Upstream(_) => "upstream_failure",
        }
    }

    /// Routine ends are logged at debug; the rest need an operator's eye. An upstream failure
    /// was logged where it was handled, with its control ID.
    fn routine(&self) -> bool {
        matches!(
            self,
            SessionEnd::SenderClosed
                | SessionEnd::Idle
                | SessionEnd::Shutdown
                | SessionEnd::Upstream(_)
        )
    }
}

/// Waits for a sender's next bytes without holding a read buffer, so that an idle session
/// (thousands of them are an interface's normal state) keeps no buffer of its own.
pub trait ReadReady {
    /// Ready when a read would find something (or fail): plaintext already decrypted, the peer's
    /// close, or bytes on the socket. A spurious ready only costs an early buffer.
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;
}

impl ReadReady for TlsStream<TcpStream> {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let (tcp, conn) = self.get_mut();
        // Records already read from the socket but not yet decrypted count as readable; an
        // error is sticky in rustls and surfaces in the read that follows.
        match conn.process_new_packets() {
            Ok(io) if io.plaintext_bytes_to_read() == 0 && !io.peer_has_closed() => {
                tcp.poll_read_ready(cx)
            }
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// An I/O error in words, without the documentation links some TLS errors carry.
fn io_detail(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return "connection closed without TLS close_notify".into();
    }
    let text = e.to_string();
    match text.split_once(": http") {
        Some((head, _)) => head.to_string(),
        None => text,
    }
}

/// A log event of one session: its route, peer and connection as fields (the caller adds
/// `client` once the handshake has shown it). Fields, not a span: at the default level the
/// registry kept each session span's memory after its connection closed (30 MB after a burst
/// of 9,000 connections, which `malloc_trim` could not return), and entering the span on every
/// poll of the task cost about 500 instructions per message.
macro_rules! session_event {
    ($level:ident, $who:expr, $($fields:tt)+) => {
        tracing::$level!(route = %$who.route, peer = %$who.peer, conn = $who.conn, $($fields)+)
    };
}

/// Serves one accepted TCP connection until the sender leaves, a limit ends it or `shutdown`.
pub async fn serve(
    ctx: Arc<RouteContext>,
    tcp: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    handshake_permit: Option<OwnedSemaphorePermit>,
    shutdown: CancellationToken,
) {
    let who = audit::Who {
        route: &ctx.cfg.name,
        peer,
        conn: conn_id,
    };
    if let Err(e) = tcp.set_nodelay(true) {
        session_event!(debug, who, error = %e, "TCP_NODELAY not set");
    }
    let Some(mut tls) = handshake(&ctx, tcp, who, handshake_permit).await else {
        return;
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(ClientIdentity::from_der)
        .unwrap_or_default();
    let shown = escape_str(&identity.to_string());
    if !ctx.allow.admits(&identity) {
        ctx.metrics.clients_denied.inc();
        if let Some(suppressed) = ctx.events.denied.admit() {
            session_event!(warn, who, client = %shown, side = "sender", suppressed, "client certificate verified but not in allowed_clients; connection refused");
            audit::handshake_refused(who, "not_allowed", Some(&identity));
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
        return;
    }
    let (version, suite) = {
        let conn = tls.get_ref().1;
        (
            conn.protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("?"),
            conn.negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or("?"),
        )
    };
    audit::session_started(who, &identity, version, suite);
    let started = Instant::now();
    let mut session = Session::new(&ctx, who, &shown);
    // A token of its own: every check and wait on the route's token would take the one
    // mutex all sessions share, several times per message.
    let shutdown = shutdown.child_token();
    let end = session.run(&mut tls, &shutdown).await;
    audit::session_ended(who, session.messages, started.elapsed(), end.label());
    if end.routine() {
        session_event!(debug, who, client = %shown, side = end.side(), reason = %end, "session ended");
    } else if let Some(suppressed) = ctx.events.session.admit() {
        session_event!(warn, who, client = %shown, side = end.side(), reason = %end, suppressed, "session ended");
    }
    // close_notify, bounded: a sender that stopped reading must not hold the task.
    let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
}

/// The TLS handshake under `handshake_timeout`; a failure is counted, logged and audited here.
/// A function of its own so that the stream is one local of the session's future: moved
/// through several locals of one `async` body, each move kept a slot of its own (1,216 bytes
/// each, 4.8 KB of every idle connection's task).
async fn handshake(
    ctx: &RouteContext,
    tcp: TcpStream,
    who: audit::Who<'_>,
    handshake_permit: Option<OwnedSemaphorePermit>,
) -> Option<TlsStream<TcpStream>> {
    let acceptor = TlsAcceptor::from(ctx.tls.borrow().clone());
    let presented = Arc::new(std::sync::Mutex::new(None));
    let handshake = PRESENTED
        .scope(
            presented.clone(),
            tokio::time::timeout(ctx.cfg.limits.handshake_timeout, acceptor.accept(tcp)),
        )
        .await;
    // No longer a pending handshake, whatever the outcome.
    drop(handshake_permit);
    let (reason, error): (&str, String) = match handshake {
        Ok(Ok(tls)) => return Some(tls),
        Ok(Err(e)) => (handshake_failure_reason(&e), io_detail(&e)),
        Err(_) => ("timeout", "not completed within handshake_timeout".into()),
    };
    ctx.metrics.handshake_failed(reason);
    if reason == "eof" {
        // A TCP connect that closes before a byte: load-balancer health checks and port probes
        // do this every few seconds. Counted, not worth a line.
        session_event!(debug, who, side = "sender", reason, "TLS handshake failed");
    } else if let Some(suppressed) = ctx.events.handshake.admit() {
        let presented = presented.lock().ok().and_then(|p| p.clone());
        session_event!(warn, who, side = "sender", reason, error = %error, suppressed, "TLS handshake failed");
        audit::handshake_refused(who, reason, presented.as_ref());
    }
    None
}

/// The per-connection state after the handshake; generic over the stream for tests.
struct Session<'a> {
    ctx: &'a RouteContext,
    /// The connection, for audit records and log lines.
    who: audit::Who<'a>,
    /// The client certificate's identity, escaped, for log lines.
    client: &'a str,
    codec: MllpCodec,
    /// Bytes read and not yet framed; no allocation while the session is idle.
    buf: BytesMut,
    /// Frames received, for the audit record of the session's end.
    messages: u64,
    /// The idle deadline's timer, kept across messages.
    idle: Deadline,
    /// The answer's write deadline (`frame_timeout`), likewise.
    write: Deadline,
    /// The wait for a pooled engine connection (`queue_timeout`), likewise.
    queue: Deadline,
}

impl<'a> Session<'a> {
    fn new(ctx: &'a RouteContext, who: audit::Who<'a>, client: &'a str) -> Self {
        Self {
            ctx,
            who,
            client,
            codec: MllpCodec::new(ctx.cfg.validation.max_message_bytes),
            buf: BytesMut::new(),
            messages: 0,
            idle: Deadline::default(),
            write: Deadline::default(),
            queue: Deadline::default(),
        }
    }

    async fn run<S>(&mut self, stream: &mut S, shutdown: &CancellationToken) -> SessionEnd
    where
        S: AsyncRead + AsyncWrite + ReadReady + Unpin,
    {
        loop {
            let frame = match self.next_frame(stream, shutdown).await {
                Ok(f) => f,
                Err(end) => return end,
            };
            if let Err(end) = self.handle(stream, frame, shutdown).await {
                return end;
            }
        }
    }

    /// The next frame, under `idle_timeout` between frames and `frame_timeout` within one.
    async fn next_frame<S>(
        &mut self,
        stream: &mut S,
        shutdown: &CancellationToken,
    ) -> Result<Frame, SessionEnd>
    where
        S: AsyncRead + ReadReady + Unpin,
    {
        let limits = &self.ctx.cfg.limits;
        // Counted from the end of the last frame: bytes outside frames do not keep a
        // connection alive, only finished frames do.
        let idle_deadline = Instant::now() + limits.idle_timeout;
        let mut frame_deadline: Option<Instant> = None;
        loop {
            if !self.codec.in_frame() && shutdown.is_cancelled() {
                return Err(SessionEnd::Shutdown);
            }
            let decoded = self.codec.decode(&mut self.buf);
            self.count_discarded();
            match decoded {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(e) => return Err(SessionEnd::ReadFailed(e.to_string())),
            }
            // Between frames with nothing buffered, the buffer is given back (the frame just
            // decoded owns its bytes) and taken again once the sender has sent something.
            let idle = self.buf.is_empty() && !self.codec.in_frame();
            if idle && self.buf.capacity() > 0 {
                crate::memory::give_back(std::mem::take(&mut self.buf));
            }
            let (buf, stream, idle_timer) = (&mut self.buf, &mut *stream, &mut self.idle);
            let read = async move {
                if idle {
                    std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await?;
                    *buf = crate::memory::take_buffer();
                } else if buf.capacity() - buf.len() < 4096 {
                    // Chunks of at least 8 KiB keep syscalls few; the codec bounds the total.
                    buf.reserve(crate::memory::READ_BUFFER);
                }
                stream.read_buf(buf).await
            };
            let n = if self.codec.in_frame() {
                let deadline =
                    *frame_deadline.get_or_insert_with(|| Instant::now() + limits.frame_timeout);
                match tokio::time::timeout_at(deadline, read).await {
                    Ok(r) => r,
                    Err(_) => return Err(SessionEnd::FrameTimeout),
                }
            } else {
                frame_deadline = None;
                tokio::select! {
                    biased;
                    r = read => r,
                    _ = idle_timer.until(idle_deadline) => return Err(SessionEnd::Idle),
                    _ = shutdown.cancelled() => return Err(SessionEnd::Shutdown),
                }
            };
            match n {
                Ok(0) => {
                    let last = self.codec.decode_eof(&mut self.buf);
                    self.count_discarded();
                    return match last {
                        Ok(Some(frame)) => Ok(frame),
                        Ok(None) => Err(SessionEnd::SenderClosed),
                        Err(MllpError::TruncatedFrame { received }) => {
                            Err(SessionEnd::TruncatedFrame(received))
                        }
                        Err(e) => Err(SessionEnd::ReadFailed(e.to_string())),
                    };
                }
                Ok(_) => {}
                // Many MLLP clients close the TCP connection without a TLS close_notify. Between
                // frames that is an ordinary goodbye, not an error worth a warning.
                Err(e)
                    if e.kind() == std::io::ErrorKind::UnexpectedEof && !self.codec.in_frame() =>
                {
                    return Err(SessionEnd::SenderClosed);
                }
                Err(e) => return Err(SessionEnd::ReadFailed(io_detail(&e))),
            }
        }
    }

    fn count_discarded(&mut self) {
        let n = self.codec.take_discarded();
        if n > 0 {
            self.ctx.metrics.discarded_bytes.inc_by(n);
            session_event!(
                debug,
                self.who,
                client = %self.client,
                side = "sender",
                bytes = n,
                "discarded bytes outside MLLP frames"
            );
        }
    }

    /// One exchange: refuse, or forward and relay. `Err` ends the session.
    async fn handle<S>(
        &mut self,
        stream: &mut S,
        frame: Frame,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let m = &self.ctx.metrics;
        m.messages_received.inc();
        self.messages += 1;
        let msg = match frame {
            Frame::Message(msg) => msg,
            Frame::Oversize { head, len } => return self.refuse_oversize(stream, &head, len).await,
        };
        m.message_bytes.observe(msg.len() as f64);
        let checked = match self.ctx.validator.check(&msg) {
            Ok(checked) => checked,
            Err(rejection) => return self.refuse(stream, &msg, rejection.reason).await,
        };
        let (forward, header) = (checked.bytes, checked.header);
        if header.is_some_and(|h| h.is_ack()) {
            return self
                .forward_acknowledgment(stream, &forward, header.as_ref(), shutdown)
                .await;
        }
        let control_id = control_id(header.as_ref());
        let started = Instant::now();
        match self
            .ctx
            .upstream
            .exchange(&forward, control_id, shutdown, &mut self.queue)
            .await
        {
            Ok(ack) => {
                let elapsed = started.elapsed();
                m.messages_forwarded.inc();
                m.upstream_ack_seconds.observe(elapsed.as_secs_f64());
                m.ack(ack.code);
                // The sender's ACK first: the record is bookkeeping, not on its latency path.
                let replied = self.reply(stream, &ack.bytes).await;
                if self.ctx.audit_messages {
                    let outcome = audit::Outcome::Relayed {
                        ack: ack.code.as_str(),
                        engine: &ack.target,
                        latency: elapsed,
                    };
                    audit::message(
                        self.who,
                        control_id,
                        message_type(header.as_ref()),
                        forward.len(),
                        outcome,
                    );
                }
                replied
            }
            Err(e) => {
                if e.kind() == "protocol" {
                    // Written and answered, though not with its ACK.
                    m.messages_forwarded.inc();
                }
                self.upstream_failed(stream, e, header.as_ref(), shutdown)
                    .await
            }
        }
    }

    /// A message over `max_message_bytes`: AE 207 when its header could be read, else the
    /// connection is closed (there is nothing to address a NAK to).
    async fn refuse_oversize<S>(
        &mut self,
        stream: &mut S,
        head: &[u8],
        len: usize,
    ) -> Result<(), SessionEnd>
    where
        S: AsyncWrite + Unpin,
    {
        let m = &self.ctx.metrics;
        m.message_bytes.observe(len as f64);
        m.rejected("too_large");
        // Only a complete MSH segment in the kept head is trusted for the NAK.
        let header = head
            .contains(&b'\r')
            .then(|| Header::parse(head).ok())
            .flatten()
            .filter(|h| !h.is_ack());
        if let Some(suppressed) = self.ctx.events.refused.admit() {
            session_event!(
                warn,
                self.who,
                client = %self.client,
                side = "sender",
                bytes = len,
                limit = self.ctx.cfg.validation.max_message_bytes,
                suppressed,
                "message over max_message_bytes refused"
            );
            let outcome = audit::Outcome::Refused {
                reason: "too_large",
                err: 207,
            };
            audit::message(
                self.who,
                control_id(header.as_ref()),
                message_type(header.as_ref()),
                len,
                outcome,
            );
        }
        let Some(h) = header else {
            return Err(SessionEnd::OversizeUnreadable);
        };
        let nak = hl7::build_nak(
            Some(&h),
            NakReason::Content {
                code: 207,
                text: "message exceeds the size limit of this route",
            },
        );
        self.reply(stream, &nak).await
    }

    /// A message validation refused: NAKed, unless it is itself an acknowledgment.
    async fn refuse<S>(
        &mut self,
        stream: &mut S,
        msg: &[u8],
        reason: NakReason,
    ) -> Result<(), SessionEnd>
    where
        S: AsyncWrite + Unpin,
    {
        let header = Header::parse(msg).ok();
        self.ctx.metrics.rejected(reason.label());
        let is_ack = header.is_some_and(|h| h.is_ack());
        // A sender can repeat a refused message at will: the lines are rate-limited.
        if let Some(suppressed) = self.ctx.events.refused.admit() {
            let id = escape(control_id(header.as_ref()));
            if is_ack {
                session_event!(debug, self.who, client = %self.client, side = "sender", reason = reason.label(), control_id = %id, suppressed, "acknowledgment refused; not answered");
            } else {
                session_event!(info, self.who, client = %self.client, side = "sender", reason = reason.label(), control_id = %id, bytes = msg.len(), suppressed, "message refused with NAK");
            }
            let outcome = audit::Outcome::Refused {
                reason: reason.label(),
                err: reason.err_code(),
            };
            audit::message(
                self.who,
                control_id(header.as_ref()),
                message_type(header.as_ref()),
                msg.len(),
                outcome,
            );
        }
        if is_ack {
            // An acknowledgment is never answered, not even with a NAK.
            return Ok(());
        }
        let nak = hl7::build_nak(header.as_ref(), reason);
        self.reply(stream, &nak).await
    }

    /// An acknowledgment from the sender (to a message of the engine's) is passed on; the engine
    /// does not answer it, so waiting for an answer would stall the sender.
    async fn forward_acknowledgment<S>(
        &mut self,
        stream: &mut S,
        msg: &[u8],
        header: Option<&Header<'_>>,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd>
    where
        S: AsyncWrite + Unpin,
    {
        match self
            .ctx
            .upstream
            .send_only(msg, shutdown, &mut self.queue)
            .await
        {
            Ok(engine) => {
                self.ctx.metrics.messages_forwarded.inc();
                if self.ctx.audit_messages {
                    let outcome = audit::Outcome::Forwarded { engine: &engine };
                    audit::message(
                        self.who,
                        control_id(header),
                        message_type(header),
                        msg.len(),
                        outcome,
                    );
                }
                Ok(())
            }
            // Never answered: the failure only closes the sender's connection in `close` mode.
            Err(e) => self.upstream_failed(stream, e, None, shutdown).await,
        }
    }

    /// Applies `on_upstream_failure` after an exchange ended without the engine's ACK: close
    /// without ACK, or answer AR/CR. The one log line of the failure is written here.
    async fn upstream_failed<S>(
        &mut self,
        stream: &mut S,
        e: UpstreamError,
        header: Option<&Header<'_>>,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd>
    where
        S: AsyncWrite + Unpin,
    {
        let m = &self.ctx.metrics;
        // Connect failures were counted per target as each was tried.
        if let Some(target) = e.target() {
            m.upstream_failed(target, e.kind());
        }
        m.exchange_failed(e.kind());
        // Shutting down while queued: close, so the sender resends to a replica that is up.
        let stopping = matches!(&e, UpstreamError::Queue(_)) && shutdown.is_cancelled();
        let nak =
            self.ctx.cfg.on_upstream_failure == FailureMode::Nak && header.is_some() && !stopping;
        session_event!(
            warn,
            self.who,
            client = %self.client,
            side = "upstream",
            kind = e.kind(),
            engine = e.target().unwrap_or("none"),
            control_id = %escape(control_id(header)),
            answer = if nak { "AR" } else { "none (connection closed)" },
            error = %e,
            "upstream failure; message not acknowledged by the engine"
        );
        if self.ctx.audit_messages {
            let outcome = audit::Outcome::Failed {
                kind: e.kind(),
                engine: e.target(),
                answer: if nak { "AR" } else { "none" },
            };
            audit::message(
                self.who,
                control_id(header),
                message_type(header),
                0,
                outcome,
            );
        }
        if !nak {
            return Err(SessionEnd::Upstream(e));
        }
        m.rejected(NakReason::UpstreamFailed.label());
        let nak = hl7::build_nak(header, NakReason::UpstreamFailed);
        self.reply(stream, &nak).await
    }

    /// Writes one framed answer to the sender, bounded by `frame_timeout`.
    async fn reply<S>(&mut self, stream: &mut S, msg: &[u8]) -> Result<(), SessionEnd>
    where
        S: AsyncWrite + Unpin,
    {
        // Allocated per answer rather than kept: an idle session holds no buffer.
        let mut out = BytesMut::with_capacity(msg.len() + 3);
        MllpCodec::write_frame(msg, &mut out);
        let write = async {
            stream.write_all(&out).await?;
            stream.flush().await
        };
        let (timer, limit) = (&mut self.write, self.ctx.cfg.limits.frame_timeout);
        // Biased: an answer the socket takes at once never arms the timer, nor reads the
        // clock for its deadline (the block's body runs when it is first polled).
        tokio::select! {
            biased;
            r = write => r.map_err(|e| SessionEnd::WriteFailed(io_detail(&e))),
            _ = async { timer.until(Instant::now() + limit).await } => Err(SessionEnd::NotReading),
        }
    }
}

/// MSH-10, or nothing when MSH could not be read.
fn control_id<'a>(header: Option<&Header<'a>>) -> &'a [u8] {
    header.map_or(&[][..], |h| h.control_id)
}

/// MSH-9, or nothing when MSH could not be read.
fn message_type<'a>(header: Option<&Header<'a>>) -> &'a [u8] {
    header.map_or(&[][..], |h| h.message_type)
}

#[cfg(test)]
mod tests {
    //! Time-dependent session logic on an in-memory stream with a paused clock: exact, instant.

    use std::path::Path;

    use tokio::io::DuplexStream;
    use tokio::sync::watch;

    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;

    fn context() -> RouteContext {
        let yaml = r#"
routes:
  - name: t
    listen: "127.0.0.1:0"
    tls: { certificate: c, private_key: k, client_ca: ca }
    upstream: { targets: ["127.0.0.1:9"] }
    limits: { idle_timeout: 15m, frame_timeout: 60s }
"#;
        let cfg = Config::from_yaml(yaml, Path::new("/"))
            .unwrap()
            .routes
            .remove(0);
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let (_tx, tls) = watch::channel(Arc::new(server));
        let metrics = Metrics::new().unwrap().route("t");
        RouteContext {
            tls,
            events: RouteEvents::new(&metrics),
            audit_messages: true,
            allow: AllowList::default(),
            validator: hl7::Validator::new(&cfg.validation),
            upstream: Arc::new(Upstream::new(
                cfg.upstream.clone(),
                1,
                1 << 20,
                metrics.clone(),
            )),
            metrics,
            cfg,
        }
    }

    impl ReadReady for DuplexStream {
        fn poll_read_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_sessions_future_holds_the_tls_stream_once() {
        // Every open connection's task is this future, idle ones included. It was 7.4 KB
        // when the stream moved through four locals of one body, each kept a slot.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let ctx = Arc::new(context());
        let session = serve(ctx, tcp, peer, 1, None, CancellationToken::new());
        let size = std::mem::size_of_val(&session);
        let stream = std::mem::size_of::<TlsStream<TcpStream>>();
        // 3.7 KB now (the stream, the session, one exchange in flight); 7.4 KB before.
        assert!(size < 4 * stream, "{size} bytes, the stream alone {stream}");
    }

    async fn run_session(
        ctx: &RouteContext,
        server: &mut DuplexStream,
        stop: &CancellationToken,
    ) -> (SessionEnd, Duration) {
        let started = Instant::now();
        let who = audit::Who {
            route: "t",
            peer: "127.0.0.1:1".parse().unwrap(),
            conn: 1,
        };
        let end = Session::new(ctx, who, "").run(server, stop).await;
        (end, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_sender_is_closed_exactly_at_idle_timeout() {
        // Nothing is ever sent: the session ends at idle_timeout (15 min), not a moment later.
        let ctx = context();
        let (_client, mut server) = tokio::io::duplex(1024);
        let (end, took) = run_session(&ctx, &mut server, &CancellationToken::new()).await;
        assert!(matches!(end, SessionEnd::Idle), "{end}");
        assert_eq!(took, Duration::from_secs(15 * 60));
    }

    #[tokio::test(start_paused = true)]
    async fn junk_outside_frames_does_not_keep_a_connection_alive() {
        // A byte every second between frames never completes a frame: the session still ends
        // at idle_timeout counted from the handshake, not from the last byte.
        let ctx = context();
        let (mut client, mut server) = tokio::io::duplex(1024);
        let junk = tokio::spawn(async move {
            for _ in 0..(20 * 60) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if client.write_all(b"x").await.is_err() {
                    return;
                }
            }
        });
        let (end, took) = run_session(&ctx, &mut server, &CancellationToken::new()).await;
        assert!(matches!(end, SessionEnd::Idle), "{end}");
        assert_eq!(took, Duration::from_secs(15 * 60));
        drop(server);
        junk.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_kept_alive_by_trickling_bytes_still_ends_at_frame_timeout() {
        // A byte every 10 s never lets a read time out, yet the frame deadline counts from its start.
        let ctx = context();
        let (mut client, mut server) = tokio::io::duplex(1024);
        let trickle = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            client.write_all(b"\x0bMSH|").await.unwrap();
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if client.write_all(b"x").await.is_err() {
                    return;
                }
            }
        });
        let (end, took) = run_session(&ctx, &mut server, &CancellationToken::new()).await;
        assert!(matches!(end, SessionEnd::FrameTimeout), "{end}");
        // 5 s idle before the frame started, then exactly frame_timeout.
        assert_eq!(took, Duration::from_secs(65));
        drop(server);
        trickle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_closes_an_idle_session_at_once_but_waits_for_a_started_frame() {
        // Shutdown never cuts a message in the middle: only a session between frames stops at once.
        let ctx = context();
        let (_client, mut server) = tokio::io::duplex(1024);
        let stop = CancellationToken::new();
        stop.cancel();
        let (end, took) = run_session(&ctx, &mut server, &stop).await;
        assert!(matches!(end, SessionEnd::Shutdown), "{end}");
        assert_eq!(took, Duration::ZERO);

        // Inside a frame the session keeps reading until the frame ends or times out.
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"\x0bMSH|half a frame").await.unwrap();
        let stop = CancellationToken::new();
        let session = async { run_session(&ctx, &mut server, &stop).await };
        let cancel_later = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop.cancel();
        };
        let ((end, took), ()) = tokio::join!(session, cancel_later);
        assert!(matches!(end, SessionEnd::FrameTimeout), "{end}");
        assert_eq!(took, Duration::from_secs(60));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sender_closing_between_frames_is_routine_and_inside_one_is_not() {
        // EOF between frames is a goodbye; EOF inside a frame is a sender fault worth a warning.
        let ctx = context();
        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        let (end, _) = run_session(&ctx, &mut server, &CancellationToken::new()).await;
        assert!(
            matches!(end, SessionEnd::SenderClosed) && end.routine(),
            "{end}"
        );

        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"\x0bMSH|cut").await.unwrap();
        drop(client);
        let (end, _) = run_session(&ctx, &mut server, &CancellationToken::new()).await;
        assert!(
            matches!(end, SessionEnd::TruncatedFrame(_)) && !end.routine(),
            "{end}"
        );
        assert_eq!(end.side(), "sender");
    }
}
