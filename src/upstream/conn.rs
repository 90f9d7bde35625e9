//! One open connection to the engine: it frames its own writes, owns the ACK deadline and
//! correlates the answer with the message (MSA-2 = MSH-10), so a caller only ever sees the ACK
//! of the message it sent, or a failure.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prometheus::IntCounter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use super::UpstreamError;
use crate::hl7::{AckCode, parse_ack};
use crate::mllp::{Frame, MllpCodec, MllpError};
use crate::timer::Deadline;

/// The engine's acknowledgment of the message just sent.
pub struct Ack {
    /// The ACK exactly as the engine wrote it, without framing.
    pub bytes: Bytes,
    /// Its MSA-1.
    pub code: AckCode,
    /// The target that answered.
    pub target: Arc<str>,
}

/// One open connection to the engine, carrying one exchange at a time.
pub struct UpstreamConn {
    stream: TcpStream,
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

/// What the next frame read from the engine turned out to be.
enum Answer {
    Ack(Ack),
    /// A repeat of the previous exchange's ACK: dropped and counted.
    Stale,
}

impl UpstreamConn {
    /// Wraps a connected stream to `target`; answers over `max_ack_bytes` are protocol failures.
    pub(super) fn new(
        stream: TcpStream,
        target: Arc<str>,
        max_ack_bytes: usize,
        duplicates: IntCounter,
    ) -> Self {
        Self {
            stream,
            target,
            buf: BytesMut::with_capacity(4096),
            codec: MllpCodec::new(max_ack_bytes),
            out: BytesMut::with_capacity(4096),
            last_control_id: Vec::new(),
            duplicates,
            ack_timer: Deadline::default(),
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
        self.out.clear();
        MllpCodec::write_frame(msg, &mut self.out);
        let deadline = Instant::now() + ack_timeout;
        // Taken out for the exchange, which borrows the connection whole.
        let mut timer = std::mem::take(&mut self.ack_timer);
        let answer = tokio::select! {
            biased;
            r = self.exchange_inner(control_id) => Some(r),
            _ = timer.until(deadline) => None,
        };
        self.ack_timer = timer;
        match answer {
            Some(Ok(ack)) => {
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
        self.out.clear();
        MllpCodec::write_frame(msg, &mut self.out);
        match tokio::time::timeout(timeout, self.stream.write_all(&self.out)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.closed(false, e.to_string())),
            Err(_) => Err(UpstreamError::Timeout {
                target: self.target.to_string(),
                timeout,
            }),
        }
    }

    async fn exchange_inner(&mut self, control_id: &[u8]) -> Result<Ack, UpstreamError> {
        if let Err(e) = self.stream.write_all(&self.out).await {
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
                Err(e) => return Err(self.closed(answered, e.to_string())),
            }
        }
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
            tracing::debug!(side = "upstream", engine = %self.target, "repeated ACK of the previous message dropped");
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
