//! One exchange: validate the message, then refuse it, or forward it and relay the engine's
//! answer. Every way it ends goes through [`Session::report`].

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::report::{Outcome, control_id};
use super::{Session, SessionEnd, handshake};
use crate::config::FailureMode;
use crate::hl7::{self, Header, NakReason};
use crate::mllp::{Frame, MllpCodec};
use crate::upstream::{QueueCause, UpstreamError};

impl Session<'_> {
    /// One exchange: refuse, or forward and relay. `Err` ends the session.
    pub(super) async fn handle<S>(
        &mut self,
        stream: &mut S,
        frame: Frame,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.ctx.metrics.messages_received.inc();
        self.messages += 1;
        let msg = match frame {
            Frame::Message(msg) => msg,
            Frame::Oversize { head, len } => {
                self.live.received(self.messages, Instant::now());
                return self.refuse_oversize(stream, &head, len).await;
            }
        };
        self.ctx.metrics.message_bytes.observe(msg.len() as f64);
        crate::memory::large_message(msg.len());
        let checked = match self.ctx.validator.check(&msg) {
            Ok(checked) => checked,
            Err(rejection) => {
                self.live.received(self.messages, Instant::now());
                return self.refuse(stream, &msg, rejection.reason).await;
            }
        };
        let (forward, header) = (checked.bytes, checked.header);
        let started = Instant::now();
        self.live.received(self.messages, started);
        if header.is_some_and(|h| h.is_ack()) {
            return self
                .forward_acknowledgment(stream, &forward, header.as_ref(), shutdown)
                .await;
        }
        self.live.in_flight(true);
        let exchanged = self
            .ctx
            .upstream
            .exchange(
                &forward,
                control_id(header.as_ref()),
                shutdown,
                &mut self.queue,
            )
            .await;
        self.live.in_flight(false);
        match exchanged {
            Ok(ack) => {
                let latency = started.elapsed();
                let outcome = Outcome::Relayed { ack: &ack, latency };
                self.count(header.as_ref(), forward.len(), &outcome);
                // The sender's ACK before its audit record: the record is bookkeeping, not on
                // the sender's latency path.
                let replied = self.reply(stream, &ack.bytes).await;
                self.record(header.as_ref(), forward.len(), &outcome);
                replied
            }
            Err(e) => {
                self.upstream_failed(stream, e, header.as_ref(), forward.len())
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
        self.ctx.metrics.message_bytes.observe(len as f64);
        // Only a complete MSH segment in the kept head is trusted for the NAK.
        let header = head
            .contains(&b'\r')
            .then(|| Header::parse(head).ok())
            .flatten()
            .filter(|h| !h.is_ack());
        let reason = NakReason::Content {
            code: 207,
            text: "message exceeds the size limit of this route",
        };
        let nak = header.as_ref().map(|h| hl7::build_nak(Some(h), reason));
        let answer = nak.as_ref().map(|(_, code)| *code);
        self.report(header.as_ref(), len, Outcome::Oversize { answer });
        match nak {
            Some((nak, _)) => self.reply(stream, &nak).await,
            None => Err(SessionEnd::OversizeUnreadable),
        }
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
        // An acknowledgment is never answered, not even with a NAK.
        let nak =
            (!header.is_some_and(|h| h.is_ack())).then(|| hl7::build_nak(header.as_ref(), reason));
        let answer = nak.as_ref().map(|(_, code)| *code);
        self.report(
            header.as_ref(),
            msg.len(),
            Outcome::Refused { reason, answer },
        );
        match nak {
            Some((nak, _)) => self.reply(stream, &nak).await,
            None => Ok(()),
        }
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
        let sent = self
            .ctx
            .upstream
            .send_only(msg, shutdown, &mut self.queue)
            .await;
        match sent {
            Ok(engine) => {
                self.report(header, msg.len(), Outcome::Forwarded { engine: &engine });
                Ok(())
            }
            // Never answered: the failure only closes the sender's connection in `close` mode.
            Err(e) => self.upstream_failed(stream, e, None, msg.len()).await,
        }
    }

    /// Applies `on_upstream_failure` after an exchange ended without the engine's ACK: close
    /// without ACK, or answer AR/CR.
    async fn upstream_failed<S>(
        &mut self,
        stream: &mut S,
        e: UpstreamError,
        header: Option<&Header<'_>>,
        bytes: usize,
    ) -> Result<(), SessionEnd>
    where
        S: AsyncWrite + Unpin,
    {
        // Shutting down while queued: close, so the sender resends to a replica that is up.
        let stopping = matches!(e, UpstreamError::Queue(QueueCause::Stopping));
        let nak = (self.ctx.cfg.on_upstream_failure == FailureMode::Nak && !stopping)
            .then_some(header)
            .flatten()
            .map(|h| hl7::build_nak(Some(h), NakReason::UpstreamFailed));
        let answer = nak.as_ref().map(|(_, code)| *code);
        self.report(header, bytes, Outcome::Failed { error: &e, answer });
        match nak {
            Some((nak, _)) => self.reply(stream, &nak).await,
            None => Err(SessionEnd::Upstream(e)),
        }
    }

    /// Writes one framed answer to the sender, bounded by `frame_timeout`.
    async fn reply<S>(&mut self, stream: &mut S, msg: &[u8]) -> Result<(), SessionEnd>
    where
        S: AsyncWrite + Unpin,
    {
        // The thread's buffer, not the session's: an idle session holds none, and an answer
        // costs no allocation. A session whose write waits keeps it; the next one on the
        // thread then starts an empty one.
        let mut out = REPLY.take();
        out.clear();
        MllpCodec::write_frame(msg, &mut out);
        let write = async {
            stream.write_all(&out).await?;
            stream.flush().await
        };
        let (timer, limit) = (&mut self.write, self.ctx.cfg.limits.frame_timeout);
        // Biased: an answer the socket takes at once never arms the timer, nor reads the
        // clock for its deadline (the block's body runs when it is first polled).
        let written = tokio::select! {
            biased;
            r = write => r.map_err(|e| SessionEnd::WriteFailed(handshake::io_detail(&e))),
            _ = async { timer.until(Instant::now() + limit).await } => Err(SessionEnd::NotReading),
        };
        if out.capacity() <= REPLY_KEPT {
            REPLY.set(out);
        }
        written
    }
}

/// Answers up to this size (an ACK or NAK is a few hundred bytes) leave their buffer to the
/// thread's next answer; a larger one is freed, so a thread holds at most this much.
const REPLY_KEPT: usize = 16 * 1024;

thread_local! {
    static REPLY: std::cell::Cell<BytesMut> = std::cell::Cell::new(BytesMut::new());
}
