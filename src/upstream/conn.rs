//! One open connection to the engine: it frames its own writes, owns the ACK deadline and
//! correlates the answer with the message (MSA-2 = MSH-10), so a caller only ever sees the ACK
//! of the message it sent, or a failure.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Decoder;

use super::UpstreamError;
use crate::audit::TlsSession;
use crate::hl7::{AckCode, parse_ack};
use crate::label::{Label, PartnerRefusal, Side};
use crate::mllp::{Frame, MllpCodec, MllpError};
use crate::timer::Deadline;
use crate::tls::ClientIdentity;

/// The engine's acknowledgment of the message just sent.
pub struct Ack {
    /// The ACK exactly as the engine wrote it, without framing.
    pub bytes: Bytes,
    /// Its MSA-1.
    pub code: AckCode,
    /// The target that answered.
    pub target: Arc<str>,
}

/// The bytes to one target: plain TCP to an engine, or TLS to a partner (`upstream.tls`).
pub enum Wire {
    /// Plain MLLP.
    Plain(TcpStream),
    /// MLLP over TLS.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Wire {
    /// Reads what has arrived without waiting; `WouldBlock` when nothing has.
    fn try_read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Wire::Plain(tcp) => tcp.try_read_buf(buf),
            Wire::Tls(tls) => {
                // One poll with a waker that does nothing: Pending means nothing is readable.
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut chunk = [0u8; 1024];
                let mut rb = ReadBuf::new(&mut chunk);
                match Pin::new(tls.as_mut()).poll_read(&mut cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        buf.extend_from_slice(rb.filled());
                        Ok(rb.filled().len())
                    }
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Wire::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Wire::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Wire::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Wire::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Wire::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Wire::Plain(s) => s.is_write_vectored(),
            Wire::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(s) => Pin::new(s).poll_flush(cx),
            Wire::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Wire::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What a TLS connection to a partner negotiated, for the audit record.
fn negotiated(tls: &TlsStream<TcpStream>) -> (ClientIdentity, &'static str, &'static str) {
    let conn = tls.get_ref().1;
    let peer = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(ClientIdentity::from_der)
        .unwrap_or_default();
    let version = conn
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("?");
    let suite = conn
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or("?");
    (peer, version, suite)
}

/// Writes the audit record of a partner connection just established: who, over what, and
/// whether the handshake resumed an earlier session (a ticket the partner issued).
pub fn audit_established(
    audit: &crate::audit::AuditLog,
    route: &str,
    target: &str,
    tls: &TlsStream<TcpStream>,
) {
    let (peer, version, suite) = negotiated(tls);
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    audit.upstream_session(
        route,
        target,
        TlsSession {
            peer: &peer,
            version,
            suite,
        },
        resumed,
    );
}

/// One open connection to the engine, carrying one exchange at a time.
pub struct UpstreamConn {
    stream: Wire,
    /// Exchanges completed; the connection is closed after `messages_per_connection`.
    pub(super) exchanges: u64,
    /// Whether we presented a client certificate (TLS): an alert on the first answer is then
    /// about that certificate.
    presented: bool,
    target: Arc<str>,
    buf: BytesMut,
    codec: MllpCodec,
    /// The framed message being written; kept so a warm connection does not allocate.
    out: BytesMut,
    /// MSH-10 of the last message this connection delivered: an answer naming it again is
    /// the engine repeating its previous ACK, not a wrong answer to the current message.
    last_control_id: Vec<u8>,
    duplicates: IntCounter,
    /// The ACK deadline's timer, kept across exchanges (a new one after an exchange was
    /// abandoned half-way).
    ack_timer: Deadline,
}

/// Messages up to this size are copied into the connection's write buffer with their framing
/// (one write call, the common case); larger ones are written in place ([`UpstreamConn`]).
/// Above a few KiB the copy costs more than the vectored write's extra slices: at 16 KiB it
/// was 12% of the proxy's instructions per message, and it grew the buffer each pooled
/// connection keeps to the largest message it carried.
const COPY_LIMIT: usize = 4 * 1024;

/// What the next frame read from the engine turned out to be.
enum Answer {
    Ack(Ack),
    /// A repeat of the previous exchange's ACK: dropped and counted.
    Stale,
}

impl UpstreamConn {
    /// Wraps a connected stream to `target`; answers over `max_ack_bytes` are protocol failures.
    pub(super) fn new(
        stream: Wire,
        target: Arc<str>,
        max_ack_bytes: usize,
        duplicates: IntCounter,
        presented: bool,
    ) -> Self {
        Self {
            stream,
            exchanges: 0,
            presented,
            target,
            buf: BytesMut::with_capacity(4096),
            codec: MllpCodec::new(max_ack_bytes),
            out: BytesMut::with_capacity(4096),
            last_control_id: Vec::new(),
            duplicates,
            ack_timer: Deadline::default(),
        }
    }

    /// The TLS session, on a partner connection.
    pub fn tls(&self) -> Option<&TlsStream<TcpStream>> {
        match &self.stream {
            Wire::Tls(tls) => Some(tls),
            Wire::Plain(_) => None,
        }
    }

    /// The target this connection reached.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Whether the idle connection can carry another exchange: the engine has not closed it and
    /// has not sent an unsolicited frame. Bytes outside frames, such as a line feed some engines
    /// write after the end block, are dropped, and so is a repeat of the previous ACK.
    pub fn check_idle(&mut self) -> Result<(), UpstreamError> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => match self.classify(frame, b"")? {
                    Answer::Stale => continue,
                    Answer::Ack(_) => return Err(self.unsolicited()),
                },
                Ok(None) if self.codec.in_frame() => return Err(self.unsolicited()),
                Ok(None) => {}
                Err(e) => return Err(self.closed(false, e.to_string())),
            }
            self.codec.take_discarded();
            self.buf.reserve(1024);
            match self.stream.try_read_buf(&mut self.buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Ok(0) => return Err(self.closed(false, "engine closed the idle connection".into())),
                Ok(_) => {}
                Err(e) => return Err(self.closed(false, e.to_string())),
            }
        }
    }

    /// Writes `msg` framed and reads the ACK whose MSA-2 is `control_id`, all within
    /// `ack_timeout`. An empty `control_id` (validation off, no MSH-10) takes the first ACK.
    pub async fn exchange(
        &mut self,
        msg: &[u8],
        control_id: &[u8],
        ack_timeout: Duration,
    ) -> Result<Ack, UpstreamError> {
        let deadline = Instant::now() + ack_timeout;
        // Taken out for the exchange, which borrows the connection whole.
        let mut timer = std::mem::take(&mut self.ack_timer);
        let answer = tokio::select! {
            biased;
            r = self.exchange_inner(msg, control_id) => Some(r),
            _ = timer.until(deadline) => None,
        };
        self.ack_timer = timer;
        match answer {
            Some(Ok(ack)) => {
                self.exchanges += 1;
                self.last_control_id.clear();
                self.last_control_id.extend_from_slice(control_id);
                Ok(ack)
            }
            Some(Err(e)) => Err(e),
            None => Err(UpstreamError::Timeout {
                target: self.target.to_string(),
                timeout: ack_timeout,
            }),
        }
    }

    /// Writes `msg` framed, expecting no answer (an acknowledgment from the sender).
    pub async fn send_only(&mut self, msg: &[u8], timeout: Duration) -> Result<(), UpstreamError> {
        match tokio::time::timeout(timeout, self.write_framed(msg)).await {
            Ok(Ok(())) => {
                self.exchanges += 1;
                Ok(())
            }
            Ok(Err(e)) => Err(self.closed(false, e.to_string())),
            Err(_) => Err(UpstreamError::Timeout {
                target: self.target.to_string(),
                timeout,
            }),
        }
    }

    /// Writes `msg` in its MLLP frame. A small message is framed into one buffer and written in
    /// one call; a larger one is written from where it is (start block, message, end block in
    /// one vectored write), so that a multi-megabyte result is not copied once more and no
    /// pooled connection keeps a buffer of its size.
    async fn write_framed(&mut self, msg: &[u8]) -> std::io::Result<()> {
        if msg.len() <= COPY_LIMIT {
            self.out.clear();
            MllpCodec::write_frame(msg, &mut self.out);
            return self.stream.write_all(&self.out).await;
        }
        let (start, end) = MllpCodec::frame_ends();
        let mut parts = [IoSlice::new(start), IoSlice::new(msg), IoSlice::new(end)];
        let mut rest: &mut [IoSlice<'_>] = &mut parts;
        while !rest.is_empty() {
            let n = self.stream.write_vectored(rest).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut rest, n);
        }
        Ok(())
    }

    async fn exchange_inner(
        &mut self,
        msg: &[u8],
        control_id: &[u8],
    ) -> Result<Ack, UpstreamError> {
        if let Err(e) = self.write_framed(msg).await {
            return Err(self.closed(false, e.to_string()));
        }
        let mut answered = false;
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => match self.classify(frame, control_id)? {
                    Answer::Ack(ack) => return Ok(ack),
                    Answer::Stale => continue,
                },
                Ok(None) => {}
                Err(e) => return Err(self.closed(answered, e.to_string())),
            }
            self.buf.reserve(4096);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => {
                    let detail = match self.codec.decode_eof(&mut self.buf) {
                        Err(MllpError::TruncatedFrame { received }) => {
                            format!("closed inside the answer frame after {received} bytes")
                        }
                        _ => "closed without answering".to_string(),
                    };
                    return Err(self.closed(answered, detail));
                }
                Ok(_) => answered = true,
                Err(e) => return Err(self.read_failed(answered, &e)),
            }
        }
    }

    /// A failed read. On a TLS connection's first exchange, an alert from the partner is its
    /// verdict on the handshake (TLS 1.3 servers check our certificate after we consider the
    /// handshake done): it refused the connection, and nothing was delivered.
    fn read_failed(&self, answered: bool, e: &std::io::Error) -> UpstreamError {
        if matches!(self.stream, Wire::Tls(_)) && self.exchanges == 0 && !answered {
            let reason = PartnerRefusal::of(e, self.presented);
            if matches!(
                reason,
                PartnerRefusal::ClientCertRequired | PartnerRefusal::ClientCertRefused
            ) {
                return UpstreamError::Tls {
                    target: self.target.to_string(),
                    reason,
                    detail: e.to_string(),
                };
            }
        }
        self.closed(answered, e.to_string())
    }

    /// Correlates a frame from the engine with the message in flight (`control_id`; empty when
    /// none is, as on an idle connection).
    fn classify(&self, frame: Frame, control_id: &[u8]) -> Result<Answer, UpstreamError> {
        let Frame::Message(bytes) = frame else {
            return Err(self.protocol("answer larger than the message limit"));
        };
        let Some(info) = parse_ack(&bytes) else {
            return Err(self.protocol("answer is not an acknowledgment (no MSH/MSA)"));
        };
        let last = &self.last_control_id;
        if !last.is_empty() && info.control_id == &last[..] && control_id != &last[..] {
            self.duplicates.inc();
            tracing::debug!(side = Side::Upstream.label(), engine = %self.target, "repeated ACK of the previous message dropped");
            return Ok(Answer::Stale);
        }
        // Without a readable MSH-10 (validation off) there is nothing to correlate against.
        if !control_id.is_empty() && info.control_id != control_id {
            return Err(self.protocol("ACK MSA-2 does not match the message's MSH-10"));
        }
        let code = info.code;
        Ok(Answer::Ack(Ack {
            bytes,
            code,
            target: self.target.clone(),
        }))
    }

    fn unsolicited(&self) -> UpstreamError {
        self.protocol("unsolicited frame (late or second ACK) on an idle connection")
    }

    fn protocol(&self, detail: &'static str) -> UpstreamError {
        UpstreamError::Protocol {
            target: self.target.to_string(),
            detail,
        }
    }

    fn closed(&self, answered: bool, detail: String) -> UpstreamError {
        UpstreamError::Closed {
            target: self.target.to_string(),
            answered,
            detail,
        }
    }
}
