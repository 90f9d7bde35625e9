//! The metric families: their names, help texts, labels and buckets.

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use super::MetricsError;

/// Buckets of the engine's ACK time, ×5 apart: a local engine answers in about a millisecond,
/// a busy one in tens to hundreds; 2.5 s and 10 s are where senders' own timeouts start to bite.
/// Operators read the median and p99 from them, and the share above 500 ms or 2.5 s.
const ACK_BUCKETS: &[f64] = &[0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0];

/// Buckets of the wait for a pooled connection: none at all is the normal case; the alert reads
/// p99 above 1 s.
const QUEUE_BUCKETS: &[f64] = &[0.01, 0.1, 1.0, 10.0];

/// Buckets of message sizes, ×16 apart: orders and admissions (under 4 KiB), results with text
/// (under 64 KiB), embedded documents (up to 1 MiB, the default `max_message_bytes`) and the
/// larger ones of routes that raise it (to 16 MiB, and above).
const BYTES_BUCKETS: &[f64] = &[4096.0, 65536.0, 1_048_576.0, 16_777_216.0];

/// Connections, TLS and the log's rate limiting.
#[derive(Clone)]
pub(super) struct ConnectionFamilies {
    pub(super) accepted: IntCounterVec,
    pub(super) active: IntGaugeVec,
    pub(super) rejected: IntCounterVec,
    pub(super) handshake_failures: IntCounterVec,
    pub(super) clients_denied: IntCounterVec,
    pub(super) certificate_expiry: GaugeVec,
    pub(super) tls_reloads: IntCounterVec,
    pub(super) log_events_suppressed: IntCounterVec,
    pub(super) proxy_protocol: IntCounterVec,
    pub(super) closed_on_reload: IntCounterVec,
}

/// Messages and the proxy's answers.
#[derive(Clone)]
pub(super) struct MessageFamilies {
    pub(super) received: IntCounterVec,
    pub(super) rejected: IntCounterVec,
    pub(super) forwarded: IntCounterVec,
    pub(super) acks: IntCounterVec,
    pub(super) bytes: HistogramVec,
    pub(super) discarded_bytes: IntCounterVec,
}

/// The engine side: failures, the pool and target health.
#[derive(Clone)]
pub(super) struct UpstreamFamilies {
    pub(super) failures: IntCounterVec,
    pub(super) tls_failures: IntCounterVec,
    pub(super) exchanges_failed: IntCounterVec,
    pub(super) duplicate_acks: IntCounterVec,
    pub(super) connections: IntGaugeVec,
    pub(super) queue_waiting: IntGaugeVec,
    pub(super) queue_seconds: HistogramVec,
    pub(super) health_checks: IntCounterVec,
    pub(super) up: IntGaugeVec,
    pub(super) ack_seconds: HistogramVec,
}

/// Registers metric families in one registry.
pub(super) struct Reg(pub(super) Registry);

impl Reg {
    pub(super) fn counter(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, MetricsError> {
        let c = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.0.register(Box::new(c.clone()))?;
        Ok(c)
    }

    pub(super) fn gauge(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, MetricsError> {
        let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
        self.0.register(Box::new(g.clone()))?;
        Ok(g)
    }

    pub(super) fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> Result<HistogramVec, MetricsError> {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        let h = HistogramVec::new(opts, &["route"])?;
        self.0.register(Box::new(h.clone()))?;
        Ok(h)
    }
}

impl ConnectionFamilies {
    pub(super) fn new(reg: &Reg) -> Result<Self, MetricsError> {
        let certificate_expiry = GaugeVec::new(
            Opts::new(
                "mllp_proxy_certificate_expiry_timestamp_seconds",
                "notAfter of the server certificate and of the earliest-expiring client CA, as a Unix timestamp.",
            ),
            &["route", "role"],
        )?;
        reg.0.register(Box::new(certificate_expiry.clone()))?;
        Ok(Self {
            accepted: reg.counter(
                "mllp_proxy_connections_accepted_total",
                "TCP connections accepted.",
                &["route"],
            )?,
            active: reg.gauge(
                "mllp_proxy_connections_active",
                "Sender connections open now.",
                &["route"],
            )?,
            rejected: reg.counter(
                "mllp_proxy_connections_rejected_total",
                "Connections closed at accept, before any TLS work, by reason (limit, per_source, pending_handshakes).",
                &["route", "reason"],
            )?,
            handshake_failures: reg.counter(
                "mllp_proxy_tls_handshake_failures_total",
                "TLS handshakes that failed, by reason.",
                &["route", "reason"],
            )?,
            clients_denied: reg.counter(
                "mllp_proxy_clients_denied_total",
                "Verified clients refused by allowed_clients.",
                &["route"],
            )?,
            certificate_expiry,
            tls_reloads: reg.counter(
                "mllp_proxy_tls_reloads_total",
                "Reloads of TLS material, by result.",
                &["route", "result"],
            )?,
            log_events_suppressed: reg.counter(
                "mllp_proxy_log_events_suppressed_total",
                "Log lines of peer-triggered events held back by rate limiting (the events are still counted).",
                &["route", "event"],
            )?,
            proxy_protocol: reg.counter(
                "mllp_proxy_proxy_protocol_total",
                "Connections of routes behind a load balancer, by what their PROXY header gave (proxied, local) or why they were refused before TLS.",
                &["route", "result"],
            )?,
            closed_on_reload: reg.counter(
                "mllp_proxy_sessions_closed_on_reload_total",
                "Open sessions closed after a reload because their client is no longer admitted, by reason.",
                &["route", "reason"],
            )?,
        })
    }
}

impl MessageFamilies {
    pub(super) fn new(reg: &Reg) -> Result<Self, MetricsError> {
        Ok(Self {
            received: reg.counter(
                "mllp_proxy_messages_received_total",
                "Messages received from senders.",
                &["route"],
            )?,
            rejected: reg.counter(
                "mllp_proxy_messages_rejected_total",
                "Messages refused by the proxy, by reason.",
                &["route", "reason"],
            )?,
            forwarded: reg.counter(
                "mllp_proxy_messages_forwarded_total",
                "Messages written to the upstream engine.",
                &["route"],
            )?,
            acks: reg.counter(
                "mllp_proxy_acks_total",
                "Upstream acknowledgments relayed to senders, by MSA-1 code.",
                &["route", "code"],
            )?,
            bytes: reg.histogram(
                "mllp_proxy_message_bytes",
                "Size of received messages in bytes.",
                BYTES_BUCKETS,
            )?,
            discarded_bytes: reg.counter(
                "mllp_proxy_discarded_bytes_total",
                "Bytes received outside MLLP frames and discarded.",
                &["route"],
            )?,
        })
    }
}

impl UpstreamFamilies {
    pub(super) fn new(reg: &Reg) -> Result<Self, MetricsError> {
        Ok(Self {
            failures: reg.counter(
                "mllp_proxy_upstream_failures_total",
                "Upstream failures by target and kind.",
                &["route", "target", "kind"],
            )?,
            tls_failures: reg.counter(
                "mllp_proxy_upstream_tls_handshake_failures_total",
                "TLS connections to a partner (upstream.tls) not established, by target and reason; nothing was delivered on them.",
                &["route", "target", "reason"],
            )?,
            exchanges_failed: reg.counter(
                "mllp_proxy_upstream_exchanges_failed_total",
                "Exchanges that ended without an ACK from the engine (the sender got none, or an AR from the proxy), by kind of the last failure.",
                &["route", "kind"],
            )?,
            duplicate_acks: reg.counter(
                "mllp_proxy_upstream_duplicate_acks_total",
                "Repeats of the previous message's ACK on the same upstream connection, dropped.",
                &["route"],
            )?,
            connections: reg.gauge(
                "mllp_proxy_upstream_connections",
                "Pooled connections to the engine, by target and state (busy, idle).",
                &["route", "target", "state"],
            )?,
            queue_waiting: reg.gauge(
                "mllp_proxy_upstream_queue_waiting",
                "Exchanges waiting for a pooled upstream connection.",
                &["route"],
            )?,
            queue_seconds: reg.histogram(
                "mllp_proxy_upstream_queue_seconds",
                "Time an exchange waited for a pooled upstream connection.",
                QUEUE_BUCKETS,
            )?,
            health_checks: reg.counter(
                "mllp_proxy_upstream_health_checks_total",
                "Active TCP connect probes of targets, by result.",
                &["route", "target", "result"],
            )?,
            up: reg.gauge(
                "mllp_proxy_upstream_up",
                "1 if the last attempt to reach the target succeeded.",
                &["route", "target"],
            )?,
            ack_seconds: reg.histogram(
                "mllp_proxy_upstream_ack_seconds",
                "Time from forwarding a message to receiving the engine's ACK.",
                ACK_BUCKETS,
            )?,
        })
    }
}
