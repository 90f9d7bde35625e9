//! One sender's connection: handshake → identity → read frame → validate → forward → await
//! ACK → relay, in order, one message at a time.
//!
//! The session only stops between exchanges: once a message is written to the engine, its ACK
//! (or the failure) is dealt with before anything else, shutdown included.
//!
//! - this file: [`serve`] and the frame loop, reading the route's shared [`RouteContext`];
//! - [`handshake`]: the TLS handshake, the allow-list, and waiting for bytes without a buffer;
//! - [`exchange`]: one message, from validation to the answer written;
//! - [`report`]: the one place that counts, logs and audits how an exchange ended.

mod exchange;
mod handshake;
mod report;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::{CancellationToken, ReusableBoxFuture, WaitForCancellationFuture};

pub use handshake::ReadReady;

use crate::admission::Held;
use crate::audit;
pub use crate::context::RouteContext;
use crate::label::{Label, Offboarded, Side};
use crate::live::Live;
use crate::mllp::{Frame, MllpCodec, MllpError};
use crate::timer::Deadline;
use crate::tls::ClientIdentity;
use crate::upstream::UpstreamError;

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
    #[error("reading from the sender failed: {detail}")]
    ReadFailed {
        /// What the socket or TLS said, kept for the distinction (reset, TLS alert, …).
        kind: std::io::ErrorKind,
        /// In words, for the log.
        detail: String,
    },
    #[error("writing the answer failed: {0}")]
    WriteFailed(String),
    #[error("sender did not read its answer within frame_timeout")]
    NotReading,
    #[error("oversize message whose header could not be read")]
    OversizeUnreadable,
    #[error("upstream failed, connection closed without ACK: {0}")]
    Upstream(UpstreamError),
    #[error("client no longer admitted after a reload ({0})")]
    Offboarded(Offboarded),
}

impl SessionEnd {
    fn read_failed(e: &std::io::Error) -> Self {
        SessionEnd::ReadFailed {
            kind: e.kind(),
            detail: handshake::io_detail(e),
        }
    }

    /// The codec refused what arrived (its own error: the bytes themselves are invalid).
    fn codec_failed(e: &MllpError) -> Self {
        SessionEnd::ReadFailed {
            kind: std::io::ErrorKind::InvalidData,
            detail: e.to_string(),
        }
    }

    fn side(&self) -> Side {
        match self {
            SessionEnd::Upstream(_) => Side::Upstream,
            SessionEnd::Shutdown | SessionEnd::Offboarded(_) => Side::Proxy,
            _ => Side::Sender,
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
            SessionEnd::ReadFailed { .. } => "read_failed",
            SessionEnd::WriteFailed(_) => "write_failed",
            SessionEnd::NotReading => "sender_not_reading",
            SessionEnd::OversizeUnreadable => "oversize_unreadable",
            SessionEnd::Upstream(_) => "upstream_failure",
            SessionEnd::Offboarded(reason) => reason.label(),
        }
    }

    /// Routine ends are logged at debug; the rest need an operator's eye. An upstream failure
    /// was logged where it was handled, with its control ID, and an offboarding where the
    /// reload was taken up.
    fn routine(&self) -> bool {
        matches!(
            self,
            SessionEnd::SenderClosed
                | SessionEnd::Idle
                | SessionEnd::Shutdown
                | SessionEnd::Upstream(_)
                | SessionEnd::Offboarded(_)
        )
    }
}

/// A log event of one session: its route, peer and connection as fields (the caller adds
/// `client` once the handshake has shown it). Fields, not a span: the registry kept each
/// session span's memory after its connection closed, and entering it on every poll cost
/// instructions on every message. One target for the whole folder, so that filters and
/// dashboards do not depend on which file an event is written in.
macro_rules! session_event {
    ($level:ident, $who:expr, $($fields:tt)+) => {
        tracing::$level!(target: "mllp_proxy::session", route = %$who.route, peer = %$who.peer, conn = $who.conn, $($fields)+)
    };
}
use session_event;

/// Serves one accepted TCP connection until the sender leaves, a limit ends it or `shutdown`;
/// `updates` brings the route's reloaded contexts.
pub async fn serve(
    ctx: Arc<RouteContext>,
    updates: watch::Receiver<Arc<RouteContext>>,
    tcp: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    handshake_permit: Option<Held>,
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
    // Before the handshake: a sender's host that vanishes mid-handshake or while idle frees its
    // slot after the probes, not after idle_timeout, and balancers see traffic on idle flows.
    if let Some(Err(e)) = ctx.cfg.limits.tcp_keepalive.map(|k| k.apply(&tcp)) {
        session_event!(debug, who, error = %e, "TCP keepalive not set");
    }
    let Some(listener_tls) = ctx.tls.as_ref() else {
        // A plain listener (an egress route fed by a local engine): no handshake, no
        // identity; the audit trail has the peer address.
        drop(handshake_permit);
        ctx.audit.session_started(who, None);
        let registered = ctx.sessions.register(conn_id, None, peer);
        // Boxed: the TLS path's future, held by every idle session, keeps its size.
        let live = registered.live().clone();
        return Box::pin(converse_plain(&ctx, updates, tcp, who, live, shutdown)).await;
    };
    let server = listener_tls.config.clone();
    let Some(mut tls) = handshake::accept(&ctx, server, tcp, who, handshake_permit).await else {
        return;
    };
    let Some((identity, shown)) = handshake::admit(&ctx, &mut tls, who).await else {
        return;
    };
    let (version, suite) = handshake::negotiated(&tls);
    let negotiated = audit::TlsSession {
        peer: &identity,
        version,
        suite,
    };
    ctx.audit.session_started(who, Some(negotiated));
    let registered = ctx
        .sessions
        .register(conn_id, Some(identity.to_string()), peer);
    let started = Instant::now();
    let mut session = Session::new(ctx.clone(), who, &shown, registered.live().clone());
    session.follow(updates, Some(&identity));
    // A token of its own: every check and wait on the route's token would take the one
    // mutex all sessions share, several times per message.
    let shutdown = shutdown.child_token();
    let end = session.run(&mut tls, &shutdown).await;
    ended(&ctx, &session, started, &end);
    // close_notify, bounded: a sender that stopped reading must not hold the task.
    let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
}

/// A plain listener's session: no handshake, no identity.
async fn converse_plain(
    ctx: &Arc<RouteContext>,
    updates: watch::Receiver<Arc<RouteContext>>,
    mut tcp: TcpStream,
    who: audit::Who<'_>,
    live: Arc<Live>,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let mut session = Session::new(ctx.clone(), who, "(plain)", live);
    session.follow(updates, None);
    let shutdown = shutdown.child_token();
    let end = session.run(&mut tcp, &shutdown).await;
    ended(ctx, &session, started, &end);
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.shutdown()).await;
}

/// A session's end, audited and logged.
fn ended(ctx: &RouteContext, session: &Session<'_>, started: Instant, end: &SessionEnd) {
    let (who, shown) = (session.who, session.client);
    ctx.audit
        .session_ended(who, session.messages, started.elapsed(), end.label());
    if end.routine() {
        session_event!(debug, who, client = %shown, side = end.side().label(), reason = %end, "session ended");
    } else if let Some(suppressed) = ctx.events.session.admit() {
        session_event!(warn, who, client = %shown, side = end.side().label(), reason = %end, suppressed, "session ended");
    }
}

/// The per-connection state after the handshake; generic over the stream for tests.
struct Session<'a> {
    /// The route's context in service for this session: replaced between exchanges when a
    /// reload publishes another.
    ctx: Arc<RouteContext>,
    /// The route's reloads, with the client they are checked against.
    updates: Option<Updates<'a>>,
    /// The connection, for audit records and log lines.
    who: audit::Who<'a>,
    /// The client certificate's identity, escaped, for log lines.
    client: &'a str,
    /// The fields every message record of this session shares, written once.
    prefix: Option<audit::Prefix>,
    codec: MllpCodec,
    /// Bytes read and not yet framed; no allocation while the session is idle.
    buf: BytesMut,
    /// The framed length of this sender's last message larger than a read buffer: what a
    /// frame that outgrows the buffer is given at once (see [`read_more`]).
    large: usize,
    /// Frames received, for the audit record of the session's end.
    messages: u64,
    /// Its entry in the route's open sessions (`/status`).
    live: Arc<Live>,
    /// The idle deadline's timer, kept across messages.
    idle: Deadline,
    /// The answer's write deadline (`frame_timeout`), likewise.
    write: Deadline,
    /// The wait for a pooled engine connection (`queue_timeout`), likewise.
    queue: Deadline,
}

impl<'a> Session<'a> {
    fn new(ctx: Arc<RouteContext>, who: audit::Who<'a>, client: &'a str, live: Arc<Live>) -> Self {
        Self {
            updates: None,
            who,
            client,
            // Not made for a route without message records (a reload that turns them on
            // finds none and writes the fields per record).
            prefix: ctx.audit_messages.then(|| ctx.audit.prefix(who)).flatten(),
            codec: MllpCodec::new(ctx.cfg.validation.max_message_bytes),
            buf: BytesMut::new(),
            large: 0,
            messages: 0,
            live,
            idle: Deadline::default(),
            write: Deadline::default(),
            queue: Deadline::default(),
            ctx,
        }
    }

    /// Takes up the route's reloads from now on, for the client `identity`.
    fn follow(
        &mut self,
        rx: watch::Receiver<Arc<RouteContext>>,
        identity: Option<&'a ClientIdentity>,
    ) {
        self.updates = Some(Updates {
            wait: ReusableBoxFuture::new(next_reload(rx.clone())),
            rx,
            identity,
            verified_at: rustls_pki_types::UnixTime::now(),
        });
    }

    /// Whether a reload has published a context this session has not taken up.
    fn reloaded(&self) -> bool {
        self.updates
            .as_ref()
            .is_some_and(|u| u.rx.has_changed().unwrap_or(false))
    }

    /// The wait for the next reload; pending forever without updates.
    async fn reloaded_while_idle(updates: &mut Option<Updates<'a>>) {
        match updates {
            Some(u) => {
                let rx = (&mut u.wait).await;
                u.wait.set(next_reload(rx));
            }
            None => std::future::pending::<()>().await,
        }
    }

    /// Takes up the context a reload published, between exchanges: the session ends when its
    /// client is no longer admitted (out of `allowed_clients`, or its certificate no longer
    /// verifies under reloaded TLS material); otherwise its next exchange runs under the new
    /// settings.
    fn take_reload<S: ReadReady>(&mut self, stream: &S) -> Result<(), SessionEnd> {
        let Some(u) = self.updates.as_mut() else {
            return Ok(());
        };
        let new = u.rx.borrow_and_update().clone();
        let changed_tls = match (&new.tls, &self.ctx.tls) {
            (Some(new), Some(old)) if !Arc::ptr_eq(&new.config, &old.config) => Some(new),
            _ => None,
        };
        // A plain session under a route now TLS (or the reverse) was admitted by a listener
        // the configuration no longer has: it carries nothing more.
        let refused = if new.tls.is_some() != self.ctx.tls.is_some() {
            Some(Offboarded::Transport)
        } else if u.identity.is_some_and(|id| !new.allow.admits(id)) {
            Some(Offboarded::NotAllowed)
        } else if let Some(tls) = changed_tls
            && let Some(chain) = stream.peer_chain()
            && crate::tls::no_longer_verifies(&*tls.verifier, chain, u.verified_at).is_some()
        {
            Some(Offboarded::Revoked)
        } else {
            None
        };
        if let Some(reason) = refused {
            new.metrics.closed_on_reload(reason);
            session_event!(warn, self.who, client = %self.client, side = Side::Proxy.label(), reason = reason.label(), "client no longer admitted after a reload; session closed");
            return Err(SessionEnd::Offboarded(reason));
        }
        self.codec.set_max_len(new.cfg.validation.max_message_bytes);
        self.ctx = new;
        Ok(())
    }

    async fn run<S>(&mut self, stream: &mut S, shutdown: &CancellationToken) -> SessionEnd
    where
        S: AsyncRead + AsyncWrite + ReadReady + Unpin,
    {
        // One wait for the shutdown, registered once for the session: made anew at every
        // wait between messages, it took the token's lock twice per message.
        let mut stopping = std::pin::pin!(shutdown.cancelled());
        loop {
            if self.reloaded()
                && let Err(end) = self.take_reload(stream)
            {
                return end;
            }
            let frame = match self.next_frame(stream, shutdown, stopping.as_mut()).await {
                Ok(f) => f,
                Err(end) => return end,
            };
            // A frame that arrived together with a reload's wake-up is handled under the
            // context published before it was read, not the one it replaced.
            if self.reloaded()
                && let Err(end) = self.take_reload(stream)
            {
                return end;
            }
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
        mut stopping: Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> Result<Frame, SessionEnd>
    where
        S: AsyncRead + ReadReady + Unpin,
    {
        // Copied: a reload taken up while idle replaces the context, and its limits apply
        // from the next frame.
        let (idle_timeout, frame_timeout) = {
            let limits = &self.ctx.cfg.limits;
            (limits.idle_timeout, limits.frame_timeout)
        };
        // Counted from the end of the last frame: bytes outside frames do not keep a
        // connection alive, only finished frames do.
        let idle_deadline = Instant::now() + idle_timeout;
        let mut frame_deadline: Option<Instant> = None;
        loop {
            if !self.codec.in_frame() && shutdown.is_cancelled() {
                return Err(SessionEnd::Shutdown);
            }
            let decoded = self.codec.decode(&mut self.buf);
            self.count_discarded();
            match decoded {
                Ok(Some(frame)) => {
                    if let Frame::Message(m) = &frame
                        && m.len() > crate::memory::READ_BUFFER
                    {
                        self.large = m.len() + 3;
                    }
                    return Ok(frame);
                }
                Ok(None) => {}
                Err(e) => return Err(SessionEnd::codec_failed(&e)),
            }
            let idle = self.idle_without_buffer();
            let read = read_more(&mut self.buf, idle, self.large, stream);
            let n = if self.codec.in_frame() {
                let deadline =
                    *frame_deadline.get_or_insert_with(|| Instant::now() + frame_timeout);
                match tokio::time::timeout_at(deadline, read).await {
                    Ok(r) => r,
                    Err(_) => return Err(SessionEnd::FrameTimeout),
                }
            } else {
                frame_deadline = None;
                let waited = tokio::select! {
                    biased;
                    r = read => Some(r),
                    _ = self.idle.until(idle_deadline) => return Err(SessionEnd::Idle),
                    _ = stopping.as_mut() => return Err(SessionEnd::Shutdown),
                    _ = Self::reloaded_while_idle(&mut self.updates) => None,
                };
                match waited {
                    Some(r) => r,
                    None => {
                        // Idle between frames: the reload is taken up now, not at the
                        // sender's next message.
                        self.take_reload(stream)?;
                        continue;
                    }
                }
            };
            match n {
                Ok(0) => return self.sender_closed(),
                Ok(_) => {}
                // Many MLLP clients close the TCP connection without a TLS close_notify. Between
                // frames that is an ordinary goodbye, not an error worth a warning.
                Err(e)
                    if e.kind() == std::io::ErrorKind::UnexpectedEof && !self.codec.in_frame() =>
                {
                    return Err(SessionEnd::SenderClosed);
                }
                Err(e) => return Err(SessionEnd::read_failed(&e)),
            }
        }
    }

    /// Whether the session waits between frames with nothing buffered; then the buffer is
    /// given back (the frame just decoded owns its bytes) and taken again once the sender has
    /// sent something: an idle session holds no buffer.
    fn idle_without_buffer(&mut self) -> bool {
        let idle = self.buf.is_empty() && !self.codec.in_frame();
        if idle && self.buf.capacity() > 0 {
            crate::memory::give_back(std::mem::take(&mut self.buf));
        }
        idle
    }

    /// The sender closed: its last frame, a goodbye between frames, or a frame cut short.
    fn sender_closed(&mut self) -> Result<Frame, SessionEnd> {
        let last = self.codec.decode_eof(&mut self.buf);
        self.count_discarded();
        match last {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => Err(SessionEnd::SenderClosed),
            Err(MllpError::TruncatedFrame { received }) => {
                Err(SessionEnd::TruncatedFrame(received))
            }
            Err(e) => Err(SessionEnd::codec_failed(&e)),
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
                side = Side::Sender.label(),
                bytes = n,
                "discarded bytes outside MLLP frames"
            );
        }
    }
}

/// Waits for the next reload on a receiver of its own and hands the receiver back for the
/// wait after; pending forever once the route is gone (its sessions then end through
/// `shutdown`). Kept in [`Updates::wait`], made anew only after a reload: created at every
/// wait between messages, it registered with the route's notifier once per message.
async fn next_reload(
    mut rx: watch::Receiver<Arc<RouteContext>>,
) -> watch::Receiver<Arc<RouteContext>> {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
    rx
}

/// What a session checks a reload against.
struct Updates<'a> {
    rx: watch::Receiver<Arc<RouteContext>>,
    /// The wait for the next reload while idle, on a receiver of its own.
    wait: ReusableBoxFuture<'static, watch::Receiver<Arc<RouteContext>>>,
    /// `None` on a plain listener.
    identity: Option<&'a ClientIdentity>,
    /// When the handshake verified the client's certificate: a reloaded verifier judges the
    /// certificate as of then.
    verified_at: rustls_pki_types::UnixTime,
}

/// Reads what the sender sent next into `buf`; when `idle`, first waits for bytes without a
/// buffer, then takes one. A frame that outgrows the buffer is given room for `large` bytes
/// (the sender's last large message) at once.
async fn read_more<S>(
    buf: &mut BytesMut,
    idle: bool,
    large: usize,
    stream: &mut S,
) -> std::io::Result<usize>
where
    S: AsyncRead + ReadReady + Unpin,
{
    if idle {
        std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await?;
        *buf = crate::memory::take_buffer();
    } else if buf.capacity() - buf.len() < 4096 {
        // Chunks of at least 8 KiB keep syscalls few; the codec bounds the total. Growing by
        // doubling copies a message of 8 MiB up to twice over; senders of large messages
        // mostly send them alike, so the frame gets the last one's size in one step (and a
        // read buffer more, so that its last bytes do not find the room short and double
        // it), and doubles only beyond it. What that can cost is bounded by a message this
        // session has already held. A large buffer another frame left is taken first.
        let room = crate::memory::READ_BUFFER;
        let more = (large + room).saturating_sub(buf.len()).max(room);
        match crate::memory::take_large(buf.len() + more) {
            Some(mut kept) => {
                // The codec's scan index counts from the buffer's start: all of it moves.
                kept.extend_from_slice(buf);
                *buf = kept;
            }
            None => buf.reserve(more),
        }
    }
    stream.read_buf(buf).await
}
