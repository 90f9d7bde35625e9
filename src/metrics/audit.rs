//! The audit trail's own series, synced from the writer's and the syslog collectors' counts
//! at each scrape (the writer thread and the collectors hold no metric handles).

use prometheus::core::Collector;

use super::{Metrics, remove_series};
use crate::label::{AuditSink, CertRole, Label};

/// A syslog collector's figures, as the audit trail counts them.
pub struct SinkFigures<'a> {
    /// `audit.syslog[].name`: the `sink` label.
    pub name: &'a str,
    /// Whether it takes records.
    pub up: bool,
    /// Records sent to it.
    pub sent: u64,
    /// Records dropped past its `queue_bytes`.
    pub dropped: u64,
    /// notAfter of our client certificate and of its earliest CA (Unix seconds).
    pub not_after: (Option<i64>, Option<i64>),
}

impl Metrics {
    /// Brings `audit_records_dropped_total` up to the writer's own counts (in the order of
    /// [`AuditSink::ALL`]), before a scrape.
    pub fn audit_dropped(&self, dropped: [u64; 2]) {
        for (sink, dropped) in AuditSink::ALL.iter().zip(dropped) {
            let c = self.audit_dropped.with_label_values(&[sink.label()]);
            c.inc_by(dropped.saturating_sub(c.get()));
        }
    }

    /// Sets the syslog collectors' series from their own figures, before a scrape; the
    /// series of collectors no longer configured are removed.
    pub fn audit_syslog(&self, sinks: &[SinkFigures<'_>]) {
        let gone: Vec<String> = self
            .audit_up
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .flat_map(|m| m.get_label())
            .filter(|l| l.name() == "sink" && !sinks.iter().any(|s| s.name == l.value()))
            .map(|l| l.value().to_string())
            .collect();
        for name in gone {
            let _ = self.audit_sent.remove_label_values(&[&name]);
            let _ = self.audit_up.remove_label_values(&[&name]);
            let _ = self.audit_dropped.remove_label_values(&[&name]);
            remove_series(
                &self.conn.certificate_expiry,
                &[("route", &format!("audit:{name}"))],
            );
        }
        for s in sinks {
            let sink = [s.name];
            let c = self.audit_sent.with_label_values(&sink);
            c.inc_by(s.sent.saturating_sub(c.get()));
            let c = self.audit_dropped.with_label_values(&sink);
            c.inc_by(s.dropped.saturating_sub(c.get()));
            self.audit_up.with_label_values(&sink).set(i64::from(s.up));
            let route = format!("audit:{}", s.name);
            for (role, at) in [
                (CertRole::SyslogClient, s.not_after.0),
                (CertRole::SyslogCa, s.not_after.1),
            ] {
                if let Some(at) = at {
                    self.conn
                        .certificate_expiry
                        .with_label_values(&[&route, role.label()])
                        .set(at as f64);
                }
            }
        }
    }
}
