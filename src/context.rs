//! What a route's sessions share, published by the route ([`crate::route`]) whenever a reload
//! or a TLS poll changes any of it: the configuration, the listener's TLS, the allow-list and
//! validator, the engine, and the counters kept across reloads. A module of its own so that
//! the route, its listener and its sessions all read it without importing one another.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::danger::ClientCertVerifier;

use crate::admission::Gate;
use crate::audit::AuditLog;
use crate::config::RouteConfig;
use crate::hl7;
use crate::live::Sessions;
use crate::logsafe::RouteEvents;
use crate::metrics::RouteMetrics;
use crate::tls::AllowList;
use crate::upstream::Upstream;

/// Everything a session of one route needs, shared by all its sessions. A reload publishes
/// a new one ([`crate::route`]); sessions take it up between exchanges.
#[derive(Clone)]
pub struct RouteContext {
    /// The route's validated configuration.
    pub cfg: RouteConfig,
    /// The listener's TLS in service; `None` on a plain listener.
    pub tls: Option<ListenerTls>,
    /// `allowed_clients`.
    pub allow: Arc<AllowList>,
    /// The validation rules.
    pub validator: hl7::Validator,
    /// The engine: its pooled connections and targets.
    pub upstream: Arc<Upstream>,
    /// Metric handles bound to this route.
    pub metrics: RouteMetrics,
    /// Log lines of peer-triggered events, rate-limited (kept across reloads).
    pub events: Arc<RouteEvents>,
    /// The connections the route's limits count (kept across reloads).
    pub gate: Arc<Gate>,
    /// The sessions open now, for `/status` (kept across reloads).
    pub sessions: Arc<Sessions>,
    /// `audit.messages`: one audit record per message, and control IDs in log lines.
    pub audit_messages: bool,
    /// Where the audit records of the route's sessions go.
    pub audit: AuditLog,
}

impl RouteContext {
    /// The context of `cfg`, with its allow-list and validator built from it. The rate limits
    /// of log events and the connection counts are the route's own, kept across reloads: they
    /// carry on from `previous` (the context this one replaces), or start afresh.
    pub fn new(
        cfg: RouteConfig,
        tls: Option<ListenerTls>,
        upstream: Arc<Upstream>,
        metrics: RouteMetrics,
        audit: (AuditLog, bool),
        previous: Option<&RouteContext>,
    ) -> Self {
        let (events, gate, sessions) = match previous {
            Some(p) => (p.events.clone(), p.gate.clone(), p.sessions.clone()),
            None => (
                Arc::new(RouteEvents::new(&metrics)),
                Arc::default(),
                Arc::default(),
            ),
        };
        let (audit, audit_messages) = audit;
        Self {
            audit,
            allow: Arc::new(AllowList::new(cfg.allowed_clients.clone())),
            validator: hl7::Validator::new(&cfg.validation),
            tls,
            upstream,
            metrics,
            events,
            gate,
            sessions,
            audit_messages,
            cfg,
        }
    }
}

/// A listener's TLS configuration in service.
#[derive(Clone)]
pub struct ListenerTls {
    /// What new handshakes use.
    pub config: Arc<ServerConfig>,
    /// Its client verifier, to check open sessions again when the material changes.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// The server certificate's subject, for `/status`.
    pub subject: Arc<str>,
    /// Lifetimes of the server certificate and the client CA, for `/status`.
    pub expiry: crate::tls::Expiry,
}

impl ListenerTls {
    /// The configuration and verifier of loaded material.
    pub fn of(material: &crate::tls::TlsMaterial) -> Self {
        Self {
            config: material.server_config.clone(),
            verifier: material.verifier.clone(),
            subject: material.server_subject.clone(),
            expiry: material.expiry,
        }
    }
}

/// The largest answer accepted from the engine for a route whose messages are at most
/// `max_message_bytes`: an engine may echo the message in its ACK; anything larger is not an
/// ACK.
pub fn max_ack_bytes(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_add(64 * 1024)
}
