//! Reloading TLS material without a restart.
//!
//! Files are compared by content, not modification time: Kubernetes updates a mounted secret by
//! swapping a symlink, which leaves the files' own times unchanged. Material that fails to load is
//! refused and the previous configuration stays in service. The route's task
//! ([`crate::route`]) polls and publishes; this only decides.

use super::{TlsMaterial, read_files};
use crate::config::TlsConfig;
use crate::label::CertRole;
use crate::metrics::RouteMetrics;

/// The TLS files of one route and the content of those in service.
pub struct TlsFiles {
    /// `routes[N]`, prefixed to errors.
    key: String,
    cfg: TlsConfig,
    in_service: Vec<Vec<u8>>,
    last_failed: Option<Vec<Vec<u8>>>,
    metrics: RouteMetrics,
}

/// What one reload attempt did.
pub enum ReloadOutcome {
    /// The files are what is in service.
    Unchanged,
    /// New material, to be put in service.
    Reloaded(TlsMaterial),
    /// The files changed but were refused; the old material stays.
    Failed,
}

impl TlsFiles {
    /// Starts from `material`, already loaded (and checked) from `cfg`. `key` is the route's
    /// configuration key (`routes[0]`), so errors name the key as `check` does.
    pub fn new(key: String, cfg: TlsConfig, material: &TlsMaterial, metrics: RouteMetrics) -> Self {
        set_expiry(&metrics, material);
        Self {
            key,
            cfg,
            in_service: material.fingerprint.clone(),
            last_failed: None,
            metrics,
        }
    }

    /// The `tls` section these files come from.
    pub fn config(&self) -> &TlsConfig {
        &self.cfg
    }

    /// Puts `material` (loaded from `cfg` by a configuration reload) in service when it differs
    /// from what is; `None` when nothing changed.
    pub fn replace(
        &mut self,
        key: String,
        cfg: TlsConfig,
        material: TlsMaterial,
    ) -> Option<TlsMaterial> {
        self.key = key;
        let same = cfg == self.cfg && material.fingerprint == self.in_service;
        self.cfg = cfg;
        if same {
            return None;
        }
        self.accepted(&material);
        Some(material)
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
                self.accepted(&material);
                ReloadOutcome::Reloaded(material)
            }
            Err(e) => {
                tracing::error!(side = "proxy", route = %route, error = %format!("{}.{e}", self.key), "TLS reload refused; previous material stays in service");
                self.metrics.reloaded(false);
                self.last_failed = Some(files);
                ReloadOutcome::Failed
            }
        }
    }

    fn accepted(&mut self, material: &TlsMaterial) {
        set_expiry(&self.metrics, material);
        self.metrics.reloaded(true);
        tracing::info!(route = %self.metrics.route, subject = %material.server_subject, "TLS material reloaded");
        self.in_service = material.fingerprint.clone();
        self.last_failed = None;
    }
}

fn set_expiry(metrics: &RouteMetrics, material: &TlsMaterial) {
    metrics.set_expiry(CertRole::Server, material.expiry.server_not_after);
    metrics.set_expiry(CertRole::ClientCa, material.expiry.client_ca_not_after);
}
