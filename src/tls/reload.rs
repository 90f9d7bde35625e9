//! Reloading TLS material without a restart.
//!
//! Files are compared by content, not modification time: Kubernetes updates a mounted secret by
//! swapping a symlink, which leaves the files' own times unchanged. Material that fails to load is
//! refused and the previous configuration stays in service.

use std::sync::Arc;

use rustls::ServerConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{TlsMaterial, read_files};
use crate::config::TlsConfig;
use crate::label::CertRole;
use crate::metrics::RouteMetrics;

/// The server configuration currently in service; each handshake takes the latest.
pub type TlsWatch = watch::Receiver<Arc<ServerConfig>>;

/// Watches one route's files and publishes new material.
pub struct TlsReloader {
    /// `routes[N]`, prefixed to errors.
    key: String,
    cfg: TlsConfig,
    tx: watch::Sender<Arc<ServerConfig>>,
    in_service: Vec<Vec<u8>>,
    last_failed: Option<Vec<Vec<u8>>>,
    metrics: RouteMetrics,
}

/// What one reload attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The files are what is in service.
    Unchanged,
    /// New material is in service.
    Reloaded,
    /// The files changed but were refused; the old material stays.
    Failed,
}

impl TlsReloader {
    /// Starts from material already loaded (and checked) at start-up.
    /// `key` is the route's configuration key (`routes[0]`), so errors name the key as `check`
    /// does.
    pub fn new(
        key: String,
        cfg: TlsConfig,
        material: TlsMaterial,
        metrics: RouteMetrics,
    ) -> (Self, TlsWatch) {
        metrics.set_expiry(CertRole::Server, material.expiry.server_not_after);
        metrics.set_expiry(CertRole::ClientCa, material.expiry.client_ca_not_after);
        let (tx, rx) = watch::channel(material.server_config);
        let reloader = Self {
            key,
            cfg,
            tx,
            in_service: material.fingerprint,
            last_failed: None,
            metrics,
        };
        (reloader, rx)
    }

    /// Compares the files with the material in service and loads them if they differ.
    /// `force` retries content that failed before (SIGHUP).
    pub fn reload(&mut self, force: bool) -> ReloadOutcome {
        let route = self.metrics.route.clone();
        let files = match read_files(&self.cfg) {
            Ok(f) => f,
            Err(e) => {
                // A file missing mid-swap is common on Kubernetes; the next poll retries.
                tracing::error!(side = "proxy", route = %route, error = %format!("{}.{e}", self.key), "TLS reload refused; previous material stays in service");
                self.metrics.reloaded(false);
                return ReloadOutcome::Failed;
            }
        };
        if files == self.in_service {
            return ReloadOutcome::Unchanged;
        }
        if !force && self.last_failed.as_ref() == Some(&files) {
            return ReloadOutcome::Failed;
        }
        match TlsMaterial::from_contents(&self.cfg, files.clone()) {
            Ok(material) => {
                self.metrics
                    .set_expiry(CertRole::Server, material.expiry.server_not_after);
                self.metrics
                    .set_expiry(CertRole::ClientCa, material.expiry.client_ca_not_after);
                self.metrics.reloaded(true);
                tracing::info!(route = %route, subject = %material.server_subject, "TLS material reloaded");
                self.in_service = files;
                self.last_failed = None;
                self.tx.send_replace(material.server_config);
                ReloadOutcome::Reloaded
            }
            Err(e) => {
                tracing::error!(side = "proxy", route = %route, error = %format!("{}.{e}", self.key), "TLS reload refused; previous material stays in service");
                self.metrics.reloaded(false);
                self.last_failed = Some(files);
                ReloadOutcome::Failed
            }
        }
    }

    /// Polls every `reload_interval` and reloads at once when `hup` changes, until `shutdown`.
    pub async fn run(mut self, mut hup: watch::Receiver<u64>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.cfg.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut hup_alive = true;
        loop {
            let force = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => false,
                changed = hup.changed(), if hup_alive => {
                    if changed.is_err() {
                        // The signal source is gone; keep polling.
                        hup_alive = false;
                        continue;
                    }
                    true
                }
            };
            // The reads are a few kilobytes every reload_interval: not worth a blocking thread.
            let outcome = self.reload(force);
            if force && outcome == ReloadOutcome::Unchanged {
                tracing::info!(route = %self.metrics.route, "SIGHUP: TLS material unchanged");
            }
        }
    }
}
