//! Connecting to the legacy engine: targets in order under `connect_timeout`, one exchange at a
//! time under `ack_timeout`, and noticing an engine that closed an idle connection.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use crate::config::UpstreamConfig;
use crate::metrics::RouteMetrics;
use crate::mllp::{Frame, MllpCodec, MllpError};

/// An upstream failure, by kind (the `kind` metric label).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No target accepted a connection.
    #[error("no upstream target reachable ({0})")]
    Connect(String),
    /// The engine did not answer within `ack_timeout`.
    #[error("{target}: no ACK within {timeout:?}")]
    Timeout {
        /// The target that was silent.
        target: String,
        /// The configured `ack_timeout`.
        timeout: Duration,
    },
    /// The engine closed the connection (or it broke) before a whole ACK arrived.
    #[error("{target}: connection closed before the ACK ({detail})")]
    Closed {
        /// The target that closed.
        target: String,
        /// Whether any byte of an answer had arrived: a reused connection that closed
        /// before answering anything is retried once.
        answered: bool,
        /// What happened, for the log.
        detail: String,
    },
    /// The engine answered something other than the ACK of the message.
    #[error("{target}: {detail}")]
    Protocol {
        /// The target that answered wrongly.
        target: String,
        /// What was wrong (no MSA, wrong MSA-2, oversize answer).
        detail: &'static str,
    },
}

impl UpstreamError {
    /// The bounded `kind` label: connect, timeout, closed or protocol.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Closed { .. } => "closed",
            UpstreamError::Protocol { .. } => "protocol",
        }
    }

    /// The target label, if one target is to blame.
    pub fn target(&self) -> Option<&str> {
        match self {
            UpstreamError::Connect(_) => None,
            UpstreamError::Timeout { target, .. }
            | UpstreamError::Closed { target, .. }
            | UpstreamError::Protocol { target, .. } => Some(target),
        }
    }
}

/// How to reach one route's engine.
#[derive(Clone)]
pub struct Upstream {
    cfg: UpstreamConfig,
    max_ack_bytes: usize,
    metrics: RouteMetrics,
}

/// One open connection to the engine.
pub struct UpstreamConn {
    stream: TcpStream,
    target: String,
    buf: BytesMut,
    codec: MllpCodec,
}

impl Upstream {
    /// An upstream for `cfg`; answers larger than `max_ack_bytes` are protocol failures.
    pub fn new(cfg: UpstreamConfig, max_ack_bytes: usize, metrics: RouteMetrics) -> Self {
        Self {
            cfg,
            max_ack_bytes,
            metrics,
        }
    }

    /// The configured `ack_timeout`.
    pub fn ack_timeout(&self) -> Duration {
        self.cfg.ack_timeout
    }

    /// Connects to the first target that accepts, in configuration order.
    pub async fn connect(&self) -> Result<UpstreamConn, UpstreamError> {
        let mut reasons = Vec::new();
        for target in &self.cfg.targets {
            let reason = match tokio::time::timeout(
                self.cfg.connect_timeout,
                TcpStream::connect(target.as_str()),
            )
            .await
            {
                Ok(Ok(stream)) => {
                    // Small request/response exchanges: Nagle would add up to 40 ms per ACK.
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(target = %target, error = %e, "TCP_NODELAY not set");
                    }
                    self.metrics.set_upstream_up(target, true);
                    return Ok(UpstreamConn {
                        stream,
                        target: target.clone(),
                        buf: BytesMut::with_capacity(4096),
                        codec: MllpCodec::new(self.max_ack_bytes),
                    });
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("connect timed out after {:?}", self.cfg.connect_timeout),
            };
            tracing::warn!(side = "upstream", target = %target, reason = %reason, "upstream connect failed");
            self.metrics.upstream_failed(target, "connect");
            reasons.push(format!("{target}: {reason}"));
        }
        Err(UpstreamError::Connect(reasons.join("; ")))
    }
}

impl UpstreamConn {
    /// The target this connection reached.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Whether the idle connection can carry another exchange: the engine has not closed it and
    /// has not sent a frame unasked (a late or second ACK: a protocol failure). Bytes outside
    /// frames, such as a line feed some engines write after the end block, are dropped.
    pub fn check_idle(&mut self) -> Result<(), UpstreamError> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(_)) => return Err(self.unsolicited()),
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

    fn unsolicited(&self) -> UpstreamError {
        UpstreamError::Protocol {
            target: self.target.clone(),
            detail: "unsolicited frame (late or second ACK) on an idle connection",
        }
    }

    /// Writes one framed message and reads exactly one answer frame under `ack_timeout`.
    pub async fn exchange(
        &mut self,
        framed: &[u8],
        ack_timeout: Duration,
    ) -> Result<Bytes, UpstreamError> {
        match tokio::time::timeout(ack_timeout, self.exchange_inner(framed)).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout {
                target: self.target.clone(),
                timeout: ack_timeout,
            }),
        }
    }

    /// Writes one framed message that expects no answer (an acknowledgment from the sender).
    pub async fn send_only(
        &mut self,
        framed: &[u8],
        timeout: Duration,
    ) -> Result<(), UpstreamError> {
        match tokio::time::timeout(timeout, self.stream.write_all(framed)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.closed(false, e.to_string())),
            Err(_) => Err(UpstreamError::Timeout {
                target: self.target.clone(),
                timeout,
            }),
        }
    }

    async fn exchange_inner(&mut self, framed: &[u8]) -> Result<Bytes, UpstreamError> {
        if let Err(e) = self.stream.write_all(framed).await {
            return Err(self.closed(false, e.to_string()));
        }
        let mut answered = false;
        loop {
            let decoded = self.codec.decode(&mut self.buf);
            match decoded {
                Ok(Some(Frame::Message(ack))) => return Ok(ack),
                Ok(Some(Frame::Oversize { .. })) => {
                    return Err(UpstreamError::Protocol {
                        target: self.target.clone(),
                        detail: "answer larger than the message limit",
                    });
                }
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

    fn closed(&self, answered: bool, detail: String) -> UpstreamError {
        UpstreamError::Closed {
            target: self.target.clone(),
            answered,
            detail,
        }
    }
}
