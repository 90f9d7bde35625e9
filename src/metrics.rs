//! Prometheus metrics: one [`Metrics`] value owns the registry and typed handles, and is passed
//! to whoever records. There are no globals, so tests can run several proxies in one process.
//!
//! Label values come from bounded sets only (route names from the configuration, target
//! addresses from the configuration, fixed reason and code words); never identities, control IDs
//! or message content.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::hl7::AckCode;

/// Buckets for exchange latency: 100 µs to 60 s, roughly ×2.5 per step.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Buckets for message sizes: 128 B to 64 MiB.
const BYTES_BUCKETS: &[f64] = &[
    128.0,
    512.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

/// Reasons of `messages_rejected_total` (see `NakReason::label` and `session`).
pub const REJECT_REASONS: &[&str] = &[
    "segment",
    "required_field",
    "data_type",
    "too_large",
    "content",
    "message_type",
    "processing_id",
    "version",
    "unsupported",
    "upstream",
];
/// Reasons of `tls_handshake_failures_total` (see `tls::handshake_failure_reason`).
pub const HANDSHAKE_REASONS: &[&str] = &[
    "timeout",
    "no_client_cert",
    "expired",
    "unknown_ca",
    "revoked",
    "bad_certificate",
    "incompatible",
    "not_tls",
    "alert",
    "protocol",
    "eof",
    "io",
];
/// Events of `log_events_suppressed_total` (see `logsafe::RouteEvents`).
pub const LOG_EVENTS: &[&str] = &[
    "handshake_failure",
    "connection_rejected",
    "client_denied",
    "message_refused",
    "session_error",
];
/// Kinds of `upstream_failures_total` (failures of one target).
pub const UPSTREAM_FAILURE_KINDS: &[&str] = &["connect", "timeout", "closed", "protocol"];
/// Kinds of `upstream_exchanges_failed_total`: a target's failures, and `queue` (no pooled
/// connection within `queue_timeout`, which no target is to blame for).
pub const EXCHANGE_FAILURE_KINDS: &[&str] = &["connect", "timeout", "closed", "protocol", "queue"];

/// All metrics of one proxy process.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Connections accepted (before the TLS handshake).
    pub connections_accepted: IntCounterVec,
    /// Connections open now.
    pub connections_active: IntGaugeVec,
    /// Connections closed at accept, before any TLS work, by the limit that refused them.
    pub connections_rejected: IntCounterVec,
    /// Log lines of peer-triggered events held back by rate limiting.
    pub log_events_suppressed: IntCounterVec,
    /// Failed TLS handshakes by reason.
    pub tls_handshake_failures: IntCounterVec,
    /// Verified clients refused by `allowed_clients`.
    pub clients_denied: IntCounterVec,
    /// Frames received from senders.
    pub messages_received: IntCounterVec,
    /// Messages refused by the proxy (NAKed or, when no NAK was possible, dropped) by reason.
    pub messages_rejected: IntCounterVec,
    /// Messages written to the upstream.
    pub messages_forwarded: IntCounterVec,
    /// Upstream acknowledgments relayed, by MSA-1 code.
    pub acks: IntCounterVec,
    /// Upstream failures by target and kind.
    pub upstream_failures: IntCounterVec,
    /// Exchanges that ended without an engine ACK, by kind: what senders experienced.
    pub upstream_exchanges_failed: IntCounterVec,
    /// Repeats of an already relayed ACK, dropped.
    pub upstream_duplicate_acks: IntCounterVec,
    /// Pooled upstream connections by state (busy, idle).
    pub upstream_connections: IntGaugeVec,
    /// Exchanges waiting for a pooled connection.
    pub upstream_queue_waiting: IntGaugeVec,
    /// Time exchanges waited for a pooled connection.
    pub upstream_queue_seconds: HistogramVec,
    /// Active TCP probes of targets, by result.
    pub upstream_health_checks: IntCounterVec,
    /// 1 while the last attempt to reach a target succeeded.
    pub upstream_up: IntGaugeVec,
    /// Forward-to-ACK latency.
    pub upstream_ack_seconds: HistogramVec,
    /// Sizes of received messages.
    pub message_bytes: HistogramVec,
    /// Bytes outside frames, discarded.
    pub discarded_bytes: IntCounterVec,
    /// notAfter of the server certificate and of the earliest client CA.
    pub certificate_expiry: GaugeVec,
    /// TLS material reloads by result.
    pub tls_reloads: IntCounterVec,
    build_info: IntGaugeVec,
}

/// Handles of one route, bound once so the per-message path does no label lookups.
#[derive(Clone)]
pub struct RouteMetrics {
    /// The route name (label value).
    pub route: String,
    /// See [`Metrics::connections_accepted`].
    pub connections_accepted: IntCounter,
    /// See [`Metrics::connections_active`].
    pub connections_active: IntGauge,
    /// `connections_rejected_total` per reason: `limit`, `per_source`, `pending_handshakes`.
    pub rejected_limit: IntCounter,
    /// See [`RouteMetrics::rejected_limit`].
    pub rejected_per_source: IntCounter,
    /// See [`RouteMetrics::rejected_limit`].
    pub rejected_pending: IntCounter,
    /// See [`Metrics::clients_denied`].
    pub clients_denied: IntCounter,
    /// See [`Metrics::messages_received`].
    pub messages_received: IntCounter,
    /// See [`Metrics::messages_forwarded`].
    pub messages_forwarded: IntCounter,
    /// See [`Metrics::upstream_ack_seconds`].
    pub upstream_ack_seconds: Histogram,
    /// See [`Metrics::message_bytes`].
    pub message_bytes: Histogram,
    /// See [`Metrics::discarded_bytes`].
    pub discarded_bytes: IntCounter,
    /// See [`Metrics::upstream_duplicate_acks`].
    pub upstream_duplicate_acks: IntCounter,
    /// See [`Metrics::upstream_queue_waiting`].
    pub upstream_queue_waiting: IntGauge,
    /// See [`Metrics::upstream_queue_seconds`].
    pub upstream_queue_seconds: Histogram,
    /// `acks_total` per MSA-1 code, indexed by `AckCode as usize`: counted for every relayed
    /// ACK, so bound once rather than looked up by label each time.
    acks: [IntCounter; 7],
    all: Metrics,
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
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, MetricsError> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, MetricsError> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let histogram =
            |name: &str, help: &str, buckets: &[f64]| -> Result<HistogramVec, MetricsError> {
                let h = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                    &["route"],
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let certificate_expiry = GaugeVec::new(
            Opts::new(
                "mllp_proxy_certificate_expiry_timestamp_seconds",
                "notAfter of the server certificate and of the earliest-expiring client CA, as a Unix timestamp.",
            ),
            &["route", "role"],
        )?;
        registry.register(Box::new(certificate_expiry.clone()))?;

        let m = Metrics {
            connections_accepted: counter(
                "mllp_proxy_connections_accepted_total",
                "TCP connections accepted.",
                &["route"],
            )?,
            connections_active: gauge(
                "mllp_proxy_connections_active",
                "Sender connections open now.",
                &["route"],
            )?,
            connections_rejected: counter(
                "mllp_proxy_connections_rejected_total",
                "Connections closed at accept, before any TLS work, by reason (limit, per_source, pending_handshakes).",
                &["route", "reason"],
            )?,
            log_events_suppressed: counter(
                "mllp_proxy_log_events_suppressed_total",
                "Log lines of peer-triggered events held back by rate limiting (the events are still counted).",
                &["route", "event"],
            )?,
            tls_handshake_failures: counter(
                "mllp_proxy_tls_handshake_failures_total",
                "TLS handshakes that failed, by reason.",
                &["route", "reason"],
            )?,
            clients_denied: counter(
                "mllp_proxy_clients_denied_total",
                "Verified clients refused by allowed_clients.",
                &["route"],
            )?,
            messages_received: counter(
                "mllp_proxy_messages_received_total",
                "Messages received from senders.",
                &["route"],
            )?,
            messages_rejected: counter(
                "mllp_proxy_messages_rejected_total",
                "Messages refused by the proxy, by reason.",
                &["route", "reason"],
            )?,
            messages_forwarded: counter(
                "mllp_proxy_messages_forwarded_total",
                "Messages written to the upstream engine.",
                &["route"],
            )?,
            acks: counter(
                "mllp_proxy_acks_total",
                "Upstream acknowledgments relayed to senders, by MSA-1 code.",
                &["route", "code"],
            )?,
            upstream_failures: counter(
                "mllp_proxy_upstream_failures_total",
                "Upstream failures by target and kind.",
                &["route", "target", "kind"],
            )?,
            upstream_exchanges_failed: counter(
                "mllp_proxy_upstream_exchanges_failed_total",
                "Exchanges that ended without an ACK from the engine (the sender got none, or an AR from the proxy), by kind of the last failure.",
                &["route", "kind"],
            )?,
            upstream_duplicate_acks: counter(
                "mllp_proxy_upstream_duplicate_acks_total",
                "Repeats of the previous message's ACK on the same upstream connection, dropped.",
                &["route"],
            )?,
            upstream_connections: gauge(
                "mllp_proxy_upstream_connections",
                "Pooled connections to the engine, by target and state (busy, idle).",
                &["route", "target", "state"],
            )?,
            upstream_queue_waiting: gauge(
                "mllp_proxy_upstream_queue_waiting",
                "Exchanges waiting for a pooled upstream connection.",
                &["route"],
            )?,
            upstream_queue_seconds: histogram(
                "mllp_proxy_upstream_queue_seconds",
                "Time an exchange waited for a pooled upstream connection.",
                SECONDS_BUCKETS,
            )?,
            upstream_health_checks: counter(
                "mllp_proxy_upstream_health_checks_total",
                "Active TCP connect probes of targets, by result.",
                &["route", "target", "result"],
            )?,
            upstream_up: gauge(
                "mllp_proxy_upstream_up",
                "1 if the last attempt to reach the target succeeded.",
                &["route", "target"],
            )?,
            upstream_ack_seconds: histogram(
                "mllp_proxy_upstream_ack_seconds",
                "Time from forwarding a message to receiving the engine's ACK.",
                SECONDS_BUCKETS,
            )?,
            message_bytes: histogram(
                "mllp_proxy_message_bytes",
                "Size of received messages in bytes.",
                BYTES_BUCKETS,
            )?,
            discarded_bytes: counter(
                "mllp_proxy_discarded_bytes_total",
                "Bytes received outside MLLP frames and discarded.",
                &["route"],
            )?,
            certificate_expiry,
            tls_reloads: counter(
                "mllp_proxy_tls_reloads_total",
                "Reloads of TLS material, by result.",
                &["route", "result"],
            )?,
            build_info: gauge(
                "mllp_proxy_build_info",
                "Build information; always 1.",
                &["version"],
            )?,
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// Handles bound to one route's label. Every series of the route's bounded label sets is
    /// created at zero, so `rate()` and alerts see a series before its first event.
    pub fn route(&self, route: &str) -> RouteMetrics {
        let r = [route];
        for reason in REJECT_REASONS {
            self.messages_rejected.with_label_values(&[route, reason]);
        }
        for reason in HANDSHAKE_REASONS {
            self.tls_handshake_failures
                .with_label_values(&[route, reason]);
        }
        for result in ["success", "failure"] {
            self.tls_reloads.with_label_values(&[route, result]);
        }
        for event in LOG_EVENTS {
            self.log_events_suppressed
                .with_label_values(&[route, event]);
        }
        for kind in EXCHANGE_FAILURE_KINDS {
            self.upstream_exchanges_failed
                .with_label_values(&[route, kind]);
        }
        RouteMetrics {
            route: route.to_string(),
            connections_accepted: self.connections_accepted.with_label_values(&r),
            connections_active: self.connections_active.with_label_values(&r),
            rejected_limit: self
                .connections_rejected
                .with_label_values(&[route, "limit"]),
            rejected_per_source: self
                .connections_rejected
                .with_label_values(&[route, "per_source"]),
            rejected_pending: self
                .connections_rejected
                .with_label_values(&[route, "pending_handshakes"]),
            clients_denied: self.clients_denied.with_label_values(&r),
            messages_received: self.messages_received.with_label_values(&r),
            messages_forwarded: self.messages_forwarded.with_label_values(&r),
            upstream_ack_seconds: self.upstream_ack_seconds.with_label_values(&r),
            message_bytes: self.message_bytes.with_label_values(&r),
            discarded_bytes: self.discarded_bytes.with_label_values(&r),
            upstream_duplicate_acks: self.upstream_duplicate_acks.with_label_values(&r),
            upstream_queue_waiting: self.upstream_queue_waiting.with_label_values(&r),
            upstream_queue_seconds: self.upstream_queue_seconds.with_label_values(&r),
            acks: AckCode::ALL.map(|c| self.acks.with_label_values(&[route, c.as_str()])),
            all: self.clone(),
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

impl RouteMetrics {
    /// The suppression counter of one kind of peer-triggered log event.
    pub fn suppressed(&self, event: &str) -> IntCounter {
        self.all
            .log_events_suppressed
            .with_label_values(&[&self.route, event])
    }

    /// Counts a TLS handshake failure.
    pub fn handshake_failed(&self, reason: &'static str) {
        self.all
            .tls_handshake_failures
            .with_label_values(&[&self.route, reason])
            .inc();
    }

    /// Counts a message the proxy refused.
    pub fn rejected(&self, reason: &'static str) {
        self.all
            .messages_rejected
            .with_label_values(&[&self.route, reason])
            .inc();
    }

    /// Counts a relayed upstream acknowledgment.
    pub fn ack(&self, code: AckCode) {
        self.acks[code as usize].inc();
    }

    /// Counts an exchange that ended without an engine ACK.
    pub fn exchange_failed(&self, kind: &'static str) {
        self.all
            .upstream_exchanges_failed
            .with_label_values(&[&self.route, kind])
            .inc();
    }

    /// Handles of one target, its series created at zero (and `upstream_up` 0 until known).
    pub fn target(&self, target: &str) -> TargetMetrics {
        for kind in UPSTREAM_FAILURE_KINDS {
            self.all
                .upstream_failures
                .with_label_values(&[&self.route, target, kind]);
        }
        let m = &self.all;
        let labels = |x: &str| [self.route.clone(), target.to_string(), x.to_string()];
        let t = TargetMetrics {
            up: m.upstream_up.with_label_values(&[&self.route, target]),
            busy: m.upstream_connections.with_label_values(&labels("busy")),
            idle: m.upstream_connections.with_label_values(&labels("idle")),
            checks_passed: m
                .upstream_health_checks
                .with_label_values(&labels("success")),
            checks_failed: m
                .upstream_health_checks
                .with_label_values(&labels("failure")),
        };
        t.up.set(0);
        t
    }

    /// Counts a failure of one target.
    pub fn upstream_failed(&self, target: &str, kind: &'static str) {
        self.all
            .upstream_failures
            .with_label_values(&[&self.route, target, kind])
            .inc();
    }

    /// Records a certificate's notAfter for `role` (`server`, `client_ca`).
    pub fn set_expiry(&self, role: &'static str, not_after_unix: i64) {
        self.all
            .certificate_expiry
            .with_label_values(&[&self.route, role])
            .set(not_after_unix as f64);
    }

    /// Counts a TLS reload attempt.
    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.all
            .tls_reloads
            .with_label_values(&[&self.route, result])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::NakReason;

    #[test]
    fn every_reject_label_is_pre_created() {
        for r in [
            NakReason::Content {
                code: 100,
                text: "",
            },
            NakReason::Content {
                code: 101,
                text: "",
            },
            NakReason::Content {
                code: 102,
                text: "",
            },
            NakReason::Content {
                code: 207,
                text: "",
            },
            NakReason::Content { code: 1, text: "" },
            NakReason::Unsupported {
                code: 200,
                text: "",
            },
            NakReason::Unsupported {
                code: 202,
                text: "",
            },
            NakReason::Unsupported {
                code: 203,
                text: "",
            },
            NakReason::Unsupported { code: 1, text: "" },
            NakReason::UpstreamFailed,
        ] {
            assert!(REJECT_REASONS.contains(&r.label()), "{}", r.label());
        }
    }

    #[test]
    fn ack_handles_are_indexed_by_discriminant() {
        for (i, code) in AckCode::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i);
        }
        let m = Metrics::new().unwrap();
        m.route("lab").ack(AckCode::CE);
        assert!(
            m.encode()
                .contains("mllp_proxy_acks_total{code=\"CE\",route=\"lab\"} 1")
        );
    }

    #[test]
    fn route_series_exist_at_zero() {
        let m = Metrics::new().unwrap();
        let r = m.route("lab");
        let _t = r.target("engine:2575");
        let text = m.encode();
        assert!(text.contains("mllp_proxy_acks_total{code=\"CR\",route=\"lab\"} 0"));
        assert!(text.contains("mllp_proxy_tls_reloads_total{result=\"failure\",route=\"lab\"} 0"));
        assert!(text.contains(
            "mllp_proxy_upstream_failures_total{kind=\"timeout\",route=\"lab\",target=\"engine:2575\"} 0"
        ));
        assert!(text.contains("mllp_proxy_upstream_up{route=\"lab\",target=\"engine:2575\"} 0"));
        assert!(text.contains("mllp_proxy_build_info{version="));
    }
}
