//! The legacy engine side: reaching a target ([`Upstream`]) and exchanging messages over one
//! connection ([`UpstreamConn`]).

mod conn;

use std::time::Duration;

use tokio::net::TcpStream;

pub use conn::{Ack, UpstreamConn};

use crate::config::UpstreamConfig;
use crate::metrics::RouteMetrics;

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
                        tracing::debug!(engine = %target, error = %e, "TCP_NODELAY not set");
                    }
                    self.metrics.set_upstream_up(target, true);
                    return Ok(UpstreamConn::new(
                        stream,
                        target.clone(),
                        self.max_ack_bytes,
                        self.metrics.upstream_duplicate_acks.clone(),
                    ));
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("connect timed out after {:?}", self.cfg.connect_timeout),
            };
            // Counted per target here; logged once by whoever handles the exchange's failure,
            // and not at all when the next target takes over.
            tracing::debug!(side = "upstream", engine = %target, reason = %reason, "upstream connect failed");
            self.metrics.upstream_failed(target, "connect");
            reasons.push(format!("{target}: {reason}"));
        }
        Err(UpstreamError::Connect(reasons.join("; ")))
    }
}
