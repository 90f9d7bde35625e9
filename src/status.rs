//! `GET /status`: what the proxy is doing right now, as JSON for `mllp-proxy status` and for
//! people: per route its listener, the sessions open (identity, peer, since when, messages,
//! the last one's time, an exchange in flight), its targets (up or down and why, pooled
//! connections, the queue) and its certificates; and the last configuration reload.
//!
//! Nothing from message content, and no control ID: a session shows counts and times only.
//! The schema is versioned ([`SCHEMA`]); fields are only ever added within a version.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::context::RouteContext;
use crate::label::{CertRole, Label};

/// The schema of `/status`: a client refuses another.
pub const SCHEMA: &str = "mllp-proxy/status/v1";

/// The whole document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// [`SCHEMA`].
    pub schema: String,
    /// The proxy's version.
    pub version: String,
    /// When this was taken (RFC 3339, UTC).
    pub generated: String,
    /// What `/readyz` says.
    pub ready: bool,
    /// The last reload of the configuration file, if there was one since start.
    pub last_reload: Option<ReloadStatus>,
    /// Every route, in configuration order.
    pub routes: Vec<RouteStatus>,
}

/// The last reload of the configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// `applied` or `refused`.
    pub result: String,
    /// When (RFC 3339).
    pub at: String,
    /// Why it was refused: the key, file and line, as the log says.
    pub error: Option<String>,
}

/// One route.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteStatus {
    /// Its name.
    pub name: String,
    /// The address its listener is bound to.
    pub listen: String,
    /// `tls` (mutual TLS) or `plain` (an egress route's local side).
    pub transport: String,
    /// `plain` (an engine) or `tls` (a partner, `upstream.tls`).
    pub upstream_transport: String,
    /// The sessions open now, oldest first.
    pub sessions: Vec<SessionStatus>,
    /// Its targets, in configuration order.
    pub targets: Vec<TargetStatus>,
    /// Exchanges waiting for a pooled connection now.
    pub queued: i64,
    /// The certificates it loaded.
    pub certificates: Vec<CertificateStatus>,
}

/// One open session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionStatus {
    /// The connection id of its log lines and audit records.
    pub conn: u64,
    /// The client certificate's identity; `null` on a plain listener.
    pub identity: Option<String>,
    /// The sender's address.
    pub peer: String,
    /// When it was admitted (RFC 3339).
    pub connected: String,
    /// Frames received.
    pub messages: u64,
    /// When the last one arrived (RFC 3339); `null` before the first.
    pub last_message: Option<String>,
    /// Whether a message is with the engine now.
    pub in_flight: bool,
}

/// One target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetStatus {
    /// `host:port` as configured.
    pub target: String,
    /// Whether the last connect, probe or exchange succeeded.
    pub up: bool,
    /// Since when it has been up or down (RFC 3339).
    pub since: String,
    /// Why it is down, when it is.
    pub reason: Option<String>,
    /// Pooled connections carrying an exchange.
    pub busy: usize,
    /// Pooled connections waiting for one.
    pub idle: usize,
}

/// One certificate the route loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// `server`, `client_ca`, `client` or `upstream_ca`, as in the expiry metric.
    pub role: String,
    /// Its subject, for the route's own certificates.
    pub subject: Option<String>,
    /// Its notAfter (RFC 3339); the earliest one of a CA bundle.
    pub not_after: String,
    /// Days until then (negative: expired).
    pub days_left: f64,
}

impl RouteStatus {
    /// Route `name`, bound to `listen`, under the context in service.
    pub fn of(name: &str, listen: SocketAddr, ctx: &RouteContext) -> Self {
        let now = SystemTime::now();
        let sessions = ctx
            .sessions
            .list()
            .iter()
            .map(|l| {
                let s = l.snapshot();
                SessionStatus {
                    conn: l.conn,
                    identity: l.identity.as_deref().map(str::to_string),
                    peer: l.peer.to_string(),
                    connected: rfc3339(l.since),
                    messages: s.messages,
                    last_message: s.last_message.map(rfc3339),
                    in_flight: s.in_flight,
                }
            })
            .collect();
        let targets = ctx
            .upstream
            .target_states()
            .into_iter()
            .map(|t| TargetStatus {
                target: t.addr.to_string(),
                up: t.health.up,
                since: rfc3339(t.health.since),
                reason: t.health.reason.map(String::from),
                busy: t.busy,
                idle: t.idle,
            })
            .collect();
        let mut certificates = Vec::new();
        let mut cert = |role: CertRole, subject: Option<&str>, not_after: i64| {
            let at = UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64);
            let left = not_after as f64 - unix(now);
            certificates.push(CertificateStatus {
                role: role.label().to_string(),
                subject: subject.map(str::to_string),
                not_after: rfc3339(at),
                days_left: (left / 86_400.0 * 10.0).round() / 10.0,
            });
        };
        if let Some(tls) = &ctx.tls {
            cert(
                CertRole::Server,
                Some(&tls.subject),
                tls.expiry.server_not_after,
            );
            cert(CertRole::ClientCa, None, tls.expiry.client_ca_not_after);
        }
        let partner = ctx.upstream.partner();
        if let Some(p) = &partner {
            if let Some(t) = p.client_not_after {
                cert(CertRole::Client, p.client_subject.as_deref(), t);
            }
            cert(CertRole::UpstreamCa, None, p.ca_not_after);
        }
        let word = |tls: bool| if tls { "tls" } else { "plain" }.to_string();
        RouteStatus {
            name: name.to_string(),
            listen: listen.to_string(),
            transport: word(ctx.tls.is_some()),
            upstream_transport: word(partner.is_some()),
            sessions,
            targets,
            queued: ctx.upstream.queued(),
            certificates,
        }
    }
}

/// Seconds since the Unix epoch.
fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `t` as RFC 3339 in UTC, to the second.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut line = Vec::with_capacity(24);
    crate::audit::push_second(&mut line, secs);
    // `push_second` ends with the fraction's dot.
    line.pop();
    line.push(b'Z');
    String::from_utf8_lossy(&line).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_645_672);
        assert_eq!(rfc3339(t), "2026-12-07T12:14:32Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
