//! Prometheus metrics: one [`Metrics`] value owns the registry and typed handles, and is passed
//! to whoever records. There are no globals, so tests can run several proxies in one process.
//!
//! Label values come from bounded sets only: route names and target addresses from the
//! configuration, and the closed sets of [`crate::label`] (each series created at zero from its
//! `ALL` list); never identities, control IDs or message content.

use std::collections::HashMap;

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
    TextEncoder,
};

pub use crate::scrape::{Sample, sample_value, samples};

use crate::hl7::{AckCode, RejectReason};
use crate::label::{
    AuditSink, CertRole, ConnState, FailureKind, HandshakeReason, Label, LogEvent, Offboarded,
    PartnerRefusal, ProxyResult, Refusal, Verdict,
};

mod audit;
mod families;

pub use audit::SinkFigures;

use families::{ConnectionFamilies, MessageFamilies, Reg, UpstreamFamilies};

/// All metrics of one proxy process.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    conn: ConnectionFamilies,
    msg: MessageFamilies,
    up: UpstreamFamilies,
    build_info: IntGaugeVec,
    config_reloads: IntCounterVec,
    config_last_success: Gauge,
    /// Synced from the writer's own counts at each scrape ([`Metrics::audit_dropped`]): the
    /// writer thread holds no metric handles.
    audit_dropped: IntCounterVec,
    /// The syslog collectors', synced the same way ([`Metrics::audit_syslog`]).
    audit_sent: IntCounterVec,
    audit_up: IntGaugeVec,
}

/// What a route is configured with, which decides the series it has: a series exists only
/// where it can move (docs/metrics.md lists them per kind of route).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteShape {
    /// A TLS listener (`tls`): handshakes, its certificates, TLS reloads.
    pub tls: bool,
    /// `allowed_clients` is set: verified clients can be denied.
    pub allowed_clients: bool,
    /// `proxy_protocol` is set.
    pub proxy_protocol: bool,
    /// `upstream.tls`: a partner whose TLS can refuse us (an egress route).
    pub partner: bool,
    /// `upstream.max_connections` is set: exchanges can wait for a pooled connection (a pool
    /// without a limit never queues).
    pub queue: bool,
}

impl RouteShape {
    /// The shape of route `cfg`.
    pub fn of(cfg: &crate::config::RouteConfig) -> Self {
        Self {
            tls: cfg.tls.is_some(),
            allowed_clients: !cfg.allowed_clients.is_empty(),
            proxy_protocol: cfg.proxy_protocol.is_some(),
            partner: cfg.upstream.tls.is_some(),
            queue: cfg.upstream.max_connections > 0,
        }
    }
}

/// A counter whose series is created by its first event: the breakdowns of refusals by reason,
/// whose values are many and whose alerts read rates over minutes (one uncounted first event
/// does not move them), so that a quiet route does not carry a dozen zeros for each.
#[derive(Clone)]
pub struct LazyCounter {
    family: IntCounterVec,
    labels: [String; 2],
}

impl LazyCounter {
    /// Counts one event.
    pub fn inc(&self) {
        let [a, b] = &self.labels;
        self.family
            .with_label_values(&[a.as_str(), b.as_str()])
            .inc();
    }
}

/// Handles of one route, bound once so the per-message path does no label lookups.
#[derive(Clone)]
pub struct RouteMetrics {
    /// The route name (label value).
    pub route: String,
    /// Connections accepted (before the TLS handshake).
    pub connections_accepted: IntCounter,
    /// Sender connections open now.
    pub connections_active: IntGauge,
    /// Frames received from senders.
    pub messages_received: IntCounter,
    /// Messages written to the engine.
    pub messages_forwarded: IntCounter,
    /// Forward-to-ACK latency.
    pub upstream_ack_seconds: Histogram,
    /// Sizes of received messages.
    pub message_bytes: Histogram,
    /// Bytes outside frames, discarded.
    pub discarded_bytes: IntCounter,
    /// Repeats of an already relayed ACK, dropped.
    pub upstream_duplicate_acks: IntCounter,
    /// `acks_total` of AA, AE and AR, in the order of `AckCode::ALL`: counted for every
    /// relayed ACK, so bound once rather than looked up by label each time. The other codes
    /// (enhanced mode's CA, CE, CR and malformed ones) are rare and appear with their first.
    acks: [IntCounter; 3],
    all: Metrics,
}

/// The series of a limited pool's queue, bound once; a route whose pool has no limit never
/// queues and has none ([`RouteShape::queue`]).
#[derive(Clone)]
pub struct QueueMetrics {
    /// Exchanges waiting for a pooled connection.
    pub waiting: IntGauge,
    /// Time exchanges waited for a pooled connection.
    pub seconds: Histogram,
}

/// Handles of one upstream target, bound once.
#[derive(Clone)]
pub struct TargetMetrics {
    /// `upstream_up`.
    pub up: IntGauge,
    /// `upstream_connections{state="busy"}`.
    pub busy: IntGauge,
    /// `upstream_connections{state="idle"}`.
    pub idle: IntGauge,
    /// `upstream_health_checks_total{result="success"}`.
    pub checks_passed: IntCounter,
    /// `upstream_health_checks_total{result="failure"}`.
    pub checks_failed: IntCounter,
}

/// Failed to create or register a metric (a programming error, reported at start-up).
#[derive(Debug, thiserror::Error)]
#[error("metrics registry: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Creates and registers every metric, plus `process_*` on Linux.
    pub fn new() -> Result<Self, MetricsError> {
        let reg = Reg(Registry::new());
        let m = Metrics {
            conn: ConnectionFamilies::new(&reg)?,
            msg: MessageFamilies::new(&reg)?,
            up: UpstreamFamilies::new(&reg)?,
            build_info: reg.gauge(
                "mllp_proxy_build_info",
                "Build information; always 1.",
                &["version"],
            )?,
            config_reloads: reg.counter(
                "mllp_proxy_config_reloads_total",
                "Reloads of the configuration file, by result (a refused file leaves the running configuration in service).",
                &["result"],
            )?,
            config_last_success: {
                let g = Gauge::new(
                    "mllp_proxy_config_last_reload_success_timestamp_seconds",
                    "When the configuration in service was loaded (start-up or the last accepted reload), as a Unix timestamp.",
                )?;
                reg.0.register(Box::new(g.clone()))?;
                g
            },
            audit_dropped: reg.counter(
                "mllp_proxy_audit_records_dropped_total",
                "Audit records dropped: the log or the audit file fell 32 MiB behind, or a syslog collector (sink: its name) was unreachable past its queue_bytes.",
                &["sink"],
            )?,
            audit_sent: reg.counter(
                "mllp_proxy_audit_records_sent_total",
                "Audit records sent to a syslog collector (sink: its name).",
                &["sink"],
            )?,
            audit_up: reg.gauge(
                "mllp_proxy_audit_sink_up",
                "1 while a syslog collector (sink: its name) is reachable: its last connect or write succeeded.",
                &["sink"],
            )?,
            registry: reg.0,
        };
        zero::<Verdict>(&m.config_reloads, &[]);
        zero::<AuditSink>(&m.audit_dropped, &[]);
        m.config_last_success.set(unix_now());
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// Handles bound to one route's label, its series created at zero as far as they can move
    /// on a route of `shape` ([`RouteMetrics::reshape`]), so `rate()` and alerts see a series
    /// before its first event.
    pub fn route(&self, route: &str, shape: RouteShape) -> RouteMetrics {
        let r = [route];
        let m = RouteMetrics {
            route: route.to_string(),
            connections_accepted: self.conn.accepted.with_label_values(&r),
            connections_active: self.conn.active.with_label_values(&r),
            messages_received: self.msg.received.with_label_values(&r),
            messages_forwarded: self.msg.forwarded.with_label_values(&r),
            upstream_ack_seconds: self.up.ack_seconds.with_label_values(&r),
            message_bytes: self.msg.bytes.with_label_values(&r),
            discarded_bytes: self.msg.discarded_bytes.with_label_values(&r),
            upstream_duplicate_acks: self.up.duplicate_acks.with_label_values(&r),
            acks: [AckCode::AA, AckCode::AE, AckCode::AR]
                .map(|c| self.msg.acks.with_label_values(&[route, c.label()])),
            all: self.clone(),
        };
        let by_shape = [FailureKind::Tls, FailureKind::Queue];
        for kind in FailureKind::ALL.iter().filter(|k| !by_shape.contains(k)) {
            self.up
                .exchanges_failed
                .with_label_values(&[route, kind.label()]);
        }
        m.reshape(None, shape);
        m
    }

    /// Counts a reload of the configuration file; an accepted one is the configuration now in
    /// service.
    pub fn config_reloaded(&self, ok: bool) {
        self.config_reloads
            .with_label_values(&[Verdict::of(ok).label()])
            .inc();
        if ok {
            self.config_last_success.set(unix_now());
        }
    }

    /// Removes every series of a route that is no longer configured.
    pub fn remove_route(&self, route: &str) {
        self.remove_where(&[("route", route)]);
    }

    /// Removes every series of a target a route no longer has.
    pub fn remove_target(&self, route: &str, target: &str) {
        self.remove_where(&[("route", route), ("target", target)]);
    }

    fn remove_where(&self, labels: &[(&str, &str)]) {
        let (c, m, u) = (&self.conn, &self.msg, &self.up);
        for family in [
            &c.accepted,
            &c.rejected,
            &c.handshake_failures,
            &c.clients_denied,
            &c.tls_reloads,
            &c.log_events_suppressed,
            &c.proxy_protocol,
            &c.closed_on_reload,
            &m.received,
            &m.rejected,
            &m.forwarded,
            &m.acks,
            &m.discarded_bytes,
            &u.failures,
            &u.tls_failures,
            &u.exchanges_failed,
            &u.duplicate_acks,
            &u.health_checks,
        ] {
            remove_series(family, labels);
        }
        for family in [&c.active, &u.connections, &u.queue_waiting, &u.up] {
            remove_series(family, labels);
        }
        remove_series(&c.certificate_expiry, labels);
        for family in [&m.bytes, &u.queue_seconds, &u.ack_seconds] {
            remove_series(family, labels);
        }
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on a metric family that breaks the format, which the
        // fixed definitions above cannot produce; an empty scrape is the bounded answer.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Removes the series of `family` that carry every one of `labels`.
fn remove_series<T: MetricVecBuilder>(family: &MetricVec<T>, labels: &[(&str, &str)]) {
    for mf in family.collect() {
        for metric in mf.get_metric() {
            let series: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if labels.iter().all(|(k, v)| series.get(k) == Some(v)) {
                let _ = family.remove(&series);
            }
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Creates the series of every value of `L` (the last label) under `prefix`, at zero.
fn zero<L: Label>(family: &IntCounterVec, prefix: &[&str]) {
    for value in L::ALL {
        let mut labels = prefix.to_vec();
        labels.push(value.label());
        family.with_label_values(&labels);
    }
}

impl RouteMetrics {
    /// Creates at zero the series a route of shape `to` can move and, after a reload from
    /// shape `from`, removes those of what the reload took away (a listener that became plain,
    /// `proxy_protocol`, `allowed_clients` or `upstream.tls` removed). Only a change walks the
    /// families, so start-up and reloads stay linear in the number of routes.
    pub fn reshape(&self, from: Option<RouteShape>, to: RouteShape) {
        let (all, r) = (&self.all, self.route.as_str());
        let dropped = |had: fn(&RouteShape) -> bool| from.as_ref().is_some_and(had) && !had(&to);
        let create = |on: bool, family: &IntCounterVec, values: &[&str]| {
            for v in values.iter().filter(|_| on) {
                family.with_label_values(&[r, v]);
            }
        };
        let verdicts: Vec<&str> = Verdict::ALL.iter().map(|v| v.label()).collect();
        create(to.tls || to.partner, &all.conn.tls_reloads, &verdicts);
        let admitted = [ProxyResult::Proxied.label(), ProxyResult::Local.label()];
        create(to.proxy_protocol, &all.conn.proxy_protocol, &admitted);
        let tls_kind = FailureKind::Tls.label();
        create(to.partner, &all.up.exchanges_failed, &[tls_kind]);
        let queue_kind = FailureKind::Queue.label();
        create(to.queue, &all.up.exchanges_failed, &[queue_kind]);
        if to.queue {
            self.queue();
        }
        if to.allowed_clients {
            all.conn.clients_denied.with_label_values(&[r]);
        }
        let route = [("route", r)];
        if dropped(|s| s.tls || s.partner) {
            remove_series(&all.conn.tls_reloads, &route);
        }
        if dropped(|s| s.tls) {
            remove_series(&all.conn.handshake_failures, &route);
            self.remove_roles(&[CertRole::Server, CertRole::ClientCa]);
        }
        if dropped(|s| s.proxy_protocol) {
            remove_series(&all.conn.proxy_protocol, &route);
        }
        if dropped(|s| s.allowed_clients) {
            remove_series(&all.conn.clients_denied, &route);
        }
        if dropped(|s| s.partner) {
            remove_series(&all.up.tls_failures, &route);
            remove_series(&all.up.exchanges_failed, &[route[0], ("kind", tls_kind)]);
            remove_series(&all.up.failures, &[route[0], ("kind", tls_kind)]);
            self.remove_roles(&[CertRole::Client, CertRole::UpstreamCa]);
        }
        if dropped(|s| s.queue) {
            remove_series(&all.up.queue_waiting, &route);
            remove_series(&all.up.queue_seconds, &route);
            remove_series(&all.up.exchanges_failed, &[route[0], ("kind", queue_kind)]);
            remove_series(&all.up.failures, &[route[0], ("kind", queue_kind)]);
        }
    }

    /// The series of the route's pool queue, created at zero (a pool with a limit).
    pub fn queue(&self) -> QueueMetrics {
        let r = [self.route.as_str()];
        QueueMetrics {
            waiting: self.all.up.queue_waiting.with_label_values(&r),
            seconds: self.all.up.queue_seconds.with_label_values(&r),
        }
    }

    fn remove_roles(&self, roles: &[CertRole]) {
        for role in roles {
            let labels = [self.route.as_str(), role.label()];
            let _ = self
                .all
                .conn
                .certificate_expiry
                .remove_label_values(&labels);
        }
    }

    /// The suppression counter of one kind of peer-triggered log event.
    pub fn suppressed(&self, event: LogEvent) -> LazyCounter {
        LazyCounter {
            family: self.all.conn.log_events_suppressed.clone(),
            labels: [self.route.clone(), event.label().to_string()],
        }
    }

    /// Counts a verified client refused by `allowed_clients`.
    pub fn client_denied(&self) {
        self.all
            .conn
            .clients_denied
            .with_label_values(&[&self.route])
            .inc();
    }

    /// Counts a connection refused at accept.
    pub fn refused(&self, reason: Refusal) {
        self.all
            .conn
            .rejected
            .with_label_values(&[&self.route, reason.label()])
            .inc();
    }

    /// Counts what a route behind a load balancer made of a connection's PROXY header.
    pub fn proxy_protocol(&self, result: ProxyResult) {
        self.all
            .conn
            .proxy_protocol
            .with_label_values(&[&self.route, result.label()])
            .inc();
    }

    /// Counts a TLS handshake failure.
    pub fn handshake_failed(&self, reason: HandshakeReason) {
        self.all
            .conn
            .handshake_failures
            .with_label_values(&[&self.route, reason.label()])
            .inc();
    }

    /// Counts a message the proxy refused.
    pub fn rejected(&self, reason: RejectReason) {
        self.all
            .msg
            .rejected
            .with_label_values(&[&self.route, reason.label()])
            .inc();
    }

    /// Counts a relayed upstream acknowledgment.
    pub fn ack(&self, code: AckCode) {
        match self.acks.get(code as usize) {
            Some(bound) => bound.inc(),
            None => self
                .all
                .msg
                .acks
                .with_label_values(&[&self.route, code.label()])
                .inc(),
        }
    }

    /// Counts an exchange that ended without an engine ACK.
    pub fn exchange_failed(&self, kind: FailureKind) {
        self.all
            .up
            .exchanges_failed
            .with_label_values(&[&self.route, kind.label()])
            .inc();
    }

    /// Handles of one target, its series created at zero (and `upstream_up` 0 until known):
    /// the `connect` failures, which the down alerts count one by one, and the `tls` ones with
    /// [`RouteMetrics::partner`]; the other kinds appear with their first (each is counted at
    /// zero in `upstream_exchanges_failed_total` too).
    pub fn target(&self, target: &str) -> TargetMetrics {
        let up = &self.all.up;
        up.failures
            .with_label_values(&[&self.route, target, FailureKind::Connect.label()]);
        let with = |family: &IntGaugeVec, state: ConnState| {
            family.with_label_values(&[&self.route, target, state.label()])
        };
        let checks = |v: Verdict| {
            up.health_checks
                .with_label_values(&[&self.route, target, v.label()])
        };
        let t = TargetMetrics {
            up: up.up.with_label_values(&[&self.route, target]),
            busy: with(&up.connections, ConnState::Busy),
            idle: with(&up.connections, ConnState::Idle),
            checks_passed: checks(Verdict::Success),
            checks_failed: checks(Verdict::Failure),
        };
        t.up.set(0);
        t
    }

    /// Creates the `tls` failures of a target of a route with `upstream.tls`, at zero (the
    /// refusals by reason appear with their first event).
    pub fn partner(&self, target: &str) {
        let labels = [self.route.as_str(), target, FailureKind::Tls.label()];
        self.all.up.failures.with_label_values(&labels);
    }

    /// Counts a partner's TLS refusal.
    pub fn partner_refused(&self, target: &str, reason: PartnerRefusal) {
        self.all
            .up
            .tls_failures
            .with_label_values(&[&self.route, target, reason.label()])
            .inc();
    }

    /// Counts a failure of one target.
    pub fn upstream_failed(&self, target: &str, kind: FailureKind) {
        self.all
            .up
            .failures
            .with_label_values(&[&self.route, target, kind.label()])
            .inc();
    }

    /// Records a certificate's notAfter.
    pub fn set_expiry(&self, role: CertRole, not_after_unix: i64) {
        self.all
            .conn
            .certificate_expiry
            .with_label_values(&[&self.route, role.label()])
            .set(not_after_unix as f64);
    }

    /// Counts a session closed because a reload no longer admits its client.
    pub fn closed_on_reload(&self, reason: Offboarded) {
        self.all
            .conn
            .closed_on_reload
            .with_label_values(&[&self.route, reason.label()])
            .inc();
    }

    /// Counts a TLS reload attempt.
    pub fn reloaded(&self, ok: bool) {
        self.all
            .conn
            .tls_reloads
            .with_label_values(&[&self.route, Verdict::of(ok).label()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::label::assert_well_formed;

    /// Every value of `L` has its series under route `lab` in `text`, at zero.
    fn all_at_zero<L: Label>(text: &str, name: &str, key: &str) {
        for v in L::ALL {
            let series = format!("{name}{{{key}=\"{}\",route=\"lab\"}} 0", v.label());
            assert!(text.contains(&series), "{series} missing");
        }
    }

    /// The series of route `lab` in a scrape, by name, as `name{labels}`.
    fn series_of(text: &str) -> Vec<String> {
        samples(text)
            .filter(|s| s.has("route", "lab"))
            .map(|s| format!("{}{}", s.name, s.labels))
            .collect()
    }

    #[test]
    fn every_label_set_is_well_formed_and_only_what_can_move_is_pre_created() {
        assert_well_formed::<AckCode>();
        assert_well_formed::<RejectReason>();
        assert_well_formed::<HandshakeReason>();
        assert_well_formed::<FailureKind>();
        assert_well_formed::<Refusal>();
        assert_well_formed::<LogEvent>();
        assert_well_formed::<Verdict>();
        assert_well_formed::<ConnState>();
        assert_well_formed::<CertRole>();
        assert_well_formed::<ProxyResult>();
        let m = Metrics::new().unwrap();
        let r = m.route(
            "lab",
            RouteShape {
                tls: true,
                ..Default::default()
            },
        );
        let _t = r.target("engine:2575");
        let text = m.encode();
        for code in AckCode::ALL {
            let series = format!("mllp_proxy_acks_total{{code=\"{code}\",route=\"lab\"}} 0");
            let common = matches!(code, AckCode::AA | AckCode::AE | AckCode::AR);
            assert_eq!(text.contains(&series), common, "{series}");
        }
        all_at_zero::<Verdict>(&text, "mllp_proxy_tls_reloads_total", "result");
        for kind in FailureKind::ALL {
            let series = format!(
                "mllp_proxy_upstream_failures_total{{kind=\"{kind}\",route=\"lab\",target=\"engine:2575\"}} 0"
            );
            let want = *kind == FailureKind::Connect;
            assert_eq!(text.contains(&series), want, "{series}");
            let series = format!(
                "mllp_proxy_upstream_exchanges_failed_total{{kind=\"{kind}\",route=\"lab\"}} 0"
            );
            // Partner TLS and the pool's queue have theirs on routes that have them.
            assert_eq!(
                text.contains(&series),
                !matches!(kind, FailureKind::Tls | FailureKind::Queue),
                "{series}"
            );
        }
        for state in ConnState::ALL {
            let series = format!(
                "mllp_proxy_upstream_connections{{route=\"lab\",state=\"{state}\",target=\"engine:2575\"}} 0"
            );
            assert!(text.contains(&series), "{series}");
        }
        assert!(text.contains("mllp_proxy_upstream_up{route=\"lab\",target=\"engine:2575\"} 0"));
        assert!(text.contains("mllp_proxy_build_info{version="));
        // Breakdowns of refusals appear with their first event; what the route cannot do
        // (PROXY protocol, a partner, allowed_clients, a queue without a pool limit) has no
        // series.
        for absent in [
            "mllp_proxy_tls_handshake_failures_total",
            "mllp_proxy_messages_rejected_total",
            "mllp_proxy_connections_rejected_total",
            "mllp_proxy_log_events_suppressed_total",
            "mllp_proxy_sessions_closed_on_reload_total",
            "mllp_proxy_proxy_protocol_total",
            "mllp_proxy_clients_denied_total",
            "mllp_proxy_upstream_tls_handshake_failures_total",
            "mllp_proxy_upstream_queue_waiting",
            "mllp_proxy_upstream_queue_seconds",
        ] {
            assert!(!text.contains(absent), "{absent} before any event");
        }
        r.handshake_failed(HandshakeReason::UnknownCa);
        r.rejected(RejectReason::Segment);
        let text = m.encode();
        let unknown_ca =
            "mllp_proxy_tls_handshake_failures_total{reason=\"unknown_ca\",route=\"lab\"}";
        assert_eq!(sample_value(&text, unknown_ca), Some(1.0));
        let segment = "mllp_proxy_messages_rejected_total{reason=\"segment\",route=\"lab\"}";
        assert_eq!(sample_value(&text, segment), Some(1.0));
    }

    #[test]
    fn a_reload_adds_and_removes_the_series_of_what_it_changed() {
        let m = Metrics::new().unwrap();
        let plain = RouteShape::default();
        let r = m.route("lab", plain);
        let before = series_of(&m.encode());
        let all = RouteShape {
            tls: true,
            allowed_clients: true,
            proxy_protocol: true,
            partner: true,
            queue: true,
        };
        r.reshape(Some(plain), all);
        r.partner("p:1");
        r.handshake_failed(HandshakeReason::Eof);
        r.proxy_protocol(ProxyResult::Untrusted);
        r.partner_refused("p:1", PartnerRefusal::UnknownCa);
        let text = m.encode();
        for added in [
            "mllp_proxy_tls_reloads_total{result=\"failure\",route=\"lab\"}",
            "mllp_proxy_clients_denied_total{route=\"lab\"}",
            "mllp_proxy_proxy_protocol_total{result=\"local\",route=\"lab\"}",
            "mllp_proxy_upstream_exchanges_failed_total{kind=\"tls\",route=\"lab\"}",
            "mllp_proxy_upstream_failures_total{kind=\"tls\",route=\"lab\",target=\"p:1\"}",
            "mllp_proxy_upstream_exchanges_failed_total{kind=\"queue\",route=\"lab\"}",
            "mllp_proxy_upstream_queue_waiting{route=\"lab\"}",
            "mllp_proxy_upstream_queue_seconds_count{route=\"lab\"}",
        ] {
            assert_eq!(sample_value(&text, added), Some(0.0), "{added}");
        }
        r.reshape(Some(all), plain);
        assert_eq!(series_of(&m.encode()), before);
    }

    #[test]
    fn a_scrape_reads_back_as_samples() {
        let m = Metrics::new().unwrap();
        let r = m.route("lab", RouteShape::default());
        r.ack(AckCode::AA);
        r.ack(AckCode::AA);
        let text = m.encode();
        let aa = "mllp_proxy_acks_total{code=\"AA\",route=\"lab\"}";
        assert_eq!(sample_value(&text, aa), Some(2.0));
        assert_eq!(
            sample_value(&text, "mllp_proxy_acks_total{code=\"AA\"}"),
            None
        );
        assert_eq!(sample_value(&text, "mllp_proxy_acks_total"), None);
        let sum: f64 = samples(&text)
            .filter(|s| s.name == "mllp_proxy_acks_total" && s.has("route", "lab"))
            .map(|s| s.value)
            .sum();
        assert_eq!(sum, 2.0);
        assert!(samples(&text).all(|s| !s.has("route", "la")));
    }

    #[test]
    fn ack_handles_are_indexed_by_discriminant() {
        for (i, code) in AckCode::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i);
        }
        let m = Metrics::new().unwrap();
        m.route("lab", RouteShape::default()).ack(AckCode::CE);
        assert!(
            m.encode()
                .contains("mllp_proxy_acks_total{code=\"CE\",route=\"lab\"} 1")
        );
    }
}
