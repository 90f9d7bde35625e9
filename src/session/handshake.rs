//! A session's start: the TLS handshake under `handshake_timeout`, the client's admission by
//! `allowed_clients`, and waiting for a sender's bytes without holding a buffer.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{RouteContext, session_event};
use crate::audit;
use crate::label::{HandshakeReason, Label, Side};
use crate::logsafe::escape_str;
use crate::tls::{ClientIdentity, HANDSHAKE, HandshakeScope};

/// Waits for a sender's next bytes without holding a read buffer, so that an idle session
/// (thousands of them are an interface's normal state) keeps no buffer of its own.
pub trait ReadReady {
    /// Ready when a read would find something (or fail): plaintext already decrypted, the peer's
    /// close, or bytes on the socket. A spurious ready only costs an early buffer.
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;

    /// The client's verified certificate chain, leaf first, to check it again after a
    /// reload.
    fn peer_chain(&self) -> Option<&[CertificateDer<'static>]> {
        None
    }
}

impl ReadReady for TcpStream {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

impl ReadReady for TlsStream<TcpStream> {
    fn peer_chain(&self) -> Option<&[CertificateDer<'static>]> {
        self.get_ref().1.peer_certificates()
    }

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

/// The TLS handshake under `handshake_timeout`; a failure is counted, logged and audited here.
/// A function of its own so that the stream is one local of the session's future: moved
/// through several locals of one `async` body, each move kept a slot of its own.
pub(super) async fn accept(
    ctx: &RouteContext,
    server: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    who: audit::Who<'_>,
    handshake_permit: Option<crate::admission::Held>,
) -> Option<TlsStream<TcpStream>> {
    let deadline = tokio::time::Instant::now() + ctx.cfg.limits.handshake_timeout;
    // A TCP connect that closes before a byte: load-balancer health checks and port probes
    // do this every few seconds. Counted, neither audited nor worth a line; anything that
    // sent a byte and was refused is audited.
    if let Ok(Ok(0) | Err(_)) = tokio::time::timeout_at(deadline, tcp.peek(&mut [0u8; 1])).await {
        drop(handshake_permit);
        ctx.metrics.handshake_failed(HandshakeReason::Eof);
        session_event!(
            debug,
            who,
            side = Side::Sender.label(),
            reason = HandshakeReason::Eof.label(),
            "connection closed before its first TLS byte"
        );
        return None;
    }
    let acceptor = TlsAcceptor::from(server);
    let scope = Arc::new(HandshakeScope {
        allow: ctx.allow.clone(),
        ..Default::default()
    });
    let handshake = HANDSHAKE
        .scope(
            scope.clone(),
            tokio::time::timeout_at(deadline, acceptor.accept(tcp)),
        )
        .await;
    // No longer a pending handshake, whatever the outcome.
    drop(handshake_permit);
    let presented = scope.presented.lock().ok().and_then(|p| p.clone());
    if scope.denied.load(std::sync::atomic::Ordering::Acquire) {
        // Verified, but outside `allowed_clients`: the sender got an `access_denied` alert.
        denied(ctx, who, &presented.unwrap_or_default());
        return None;
    }
    let (reason, error) = match handshake {
        Ok(Ok(tls)) => return Some(tls),
        Ok(Err(e)) => (HandshakeReason::of(&e), io_detail(&e)),
        Err(_) => (
            HandshakeReason::Timeout,
            "not completed within handshake_timeout".into(),
        ),
    };
    ctx.metrics.handshake_failed(reason);
    ctx.audit.handshake_refused(
        who,
        reason.label(),
        presented
            .as_ref()
            .map_or(audit::Presented::Nothing, audit::Presented::Unverified),
    );
    if reason == HandshakeReason::Eof {
        // Closed mid-handshake: as common as the probes above, and audited already.
        session_event!(
            debug,
            who,
            side = Side::Sender.label(),
            reason = reason.label(),
            "TLS handshake failed"
        );
    } else if let Some(suppressed) = ctx.events.handshake.admit() {
        session_event!(warn, who, side = Side::Sender.label(), reason = reason.label(), error = %error, suppressed, "TLS handshake failed");
    }
    None
}

/// The verified client's identity and its escaped form for log lines, if `allowed_clients`
/// admits it; otherwise the refusal is counted, logged, audited and the connection closed.
pub(super) async fn admit(
    ctx: &RouteContext,
    tls: &mut TlsStream<TcpStream>,
    who: audit::Who<'_>,
) -> Option<(ClientIdentity, String)> {
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(ClientIdentity::from_der)
        .unwrap_or_default();
    let shown = escape_str(&identity.to_string());
    if ctx.allow.admits(&identity) {
        return Some((identity, shown));
    }
    // The verifier refuses these in the handshake; this holds if it ever did not.
    denied(ctx, who, &identity);
    let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
    None
}

/// A verified client outside `allowed_clients`: counted, audited with every identity its
/// certificate carries, and logged (rate-limited).
fn denied(ctx: &RouteContext, who: audit::Who<'_>, identity: &ClientIdentity) {
    ctx.metrics.client_denied();
    ctx.audit
        .handshake_refused(who, "not_allowed", audit::Presented::Verified(identity));
    if let Some(suppressed) = ctx.events.denied.admit() {
        let (shown, identities) = (
            escape_str(&identity.to_string()),
            escape_str(&identity.names()),
        );
        session_event!(warn, who, client = %shown, identities = %identities, side = Side::Sender.label(), suppressed, "client certificate verified but not in allowed_clients; connection refused");
    }
}

/// The negotiated protocol version and cipher suite, for the session's audit record.
pub(super) fn negotiated(tls: &TlsStream<TcpStream>) -> (&'static str, &'static str) {
    let conn = tls.get_ref().1;
    (
        conn.protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("?"),
        conn.negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("?"),
    )
}

/// An I/O error in words, without the documentation links some TLS errors carry.
pub(super) fn io_detail(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return "connection closed without TLS close_notify".into();
    }
    let text = e.to_string();
    match text.split_once(": http") {
        Some((head, _)) => head.to_string(),
        None => text,
    }
}
