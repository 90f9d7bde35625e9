//! Reloading TLS material without a restart, the same way for a listener's `tls` and a
//! partner's `upstream.tls`: one [`Watcher`], generic over the [`Material`] it builds.
//!
//! Files are compared by content, not modification time: Kubernetes updates a mounted secret by
//! swapping a symlink, which leaves the files' own times unchanged. Material that fails to load is
//! refused and the previous material stays in service. The route's task ([`crate::route`])
//! polls and publishes; this only decides.

use super::TlsError;
use crate::label::{Label, Side};
use crate::metrics::RouteMetrics;

/// TLS material built all-or-nothing from a set of files.
pub trait Material: Sized {
    /// The configuration section it is built from.
    type Config: Clone + PartialEq;
    /// The files' contents, in a struct that names each (compared on every poll).
    type Contents: Clone + PartialEq;
    /// What the log calls it: `TLS` (a listener's) or `upstream TLS` (a partner's).
    const WHAT: &'static str;

    /// Reads every file of `cfg`.
    fn read(cfg: &Self::Config) -> Result<Self::Contents, TlsError>;
    /// Builds the material from the files' contents.
    fn build(cfg: &Self::Config, contents: Self::Contents) -> Result<Self, TlsError>;
    /// The contents it was built from.
    fn contents(&self) -> &Self::Contents;
    /// Sets the certificate-expiry gauges of its certificates.
    fn set_expiry(&self, metrics: &RouteMetrics);
    /// The subject of the certificate we present, for the log line of a reload.
    fn subject(&self) -> Option<&str> {
        None
    }
}

/// What one poll of the files did.
pub enum ReloadOutcome<M> {
    /// The files are what is in service.
    Unchanged,
    /// New material, to be put in service.
    Reloaded(M),
    /// The files changed but were refused; the old material stays.
    Failed,
}

/// The files of one TLS section of a route and the content of those in service.
pub struct Watcher<M: Material> {
    /// `routes[N]`, prefixed to errors.
    key: String,
    cfg: M::Config,
    in_service: M::Contents,
    /// Content refused before: not retried (nor logged again) until it changes, or on SIGHUP.
    last_failed: Option<M::Contents>,
    metrics: RouteMetrics,
}

impl<M: Material> Watcher<M> {
    /// Starts from `material`, already loaded (and checked) from `cfg`. `key` is the route's
    /// configuration key (`routes[0]`), so errors name the key as `check` does.
    pub fn new(key: String, cfg: M::Config, material: &M, metrics: RouteMetrics) -> Self {
        material.set_expiry(&metrics);
        Self {
            key,
            cfg,
            in_service: material.contents().clone(),
            last_failed: None,
            metrics,
        }
    }

    /// The section these files come from.
    pub fn config(&self) -> &M::Config {
        &self.cfg
    }

    /// Puts `material` (loaded from `cfg` by a configuration reload) in service when it or its
    /// settings differ from what is; `None` when nothing changed.
    pub fn replace(&mut self, key: String, cfg: M::Config, material: M) -> Option<M> {
        self.key = key;
        let same = cfg == self.cfg && *material.contents() == self.in_service;
        self.cfg = cfg;
        if same {
            return None;
        }
        self.accepted(&material);
        Some(material)
    }

    /// Compares the files with the material in service and loads them if they differ.
    /// `force` retries content that failed before (SIGHUP).
    pub fn reload(&mut self, force: bool) -> ReloadOutcome<M> {
        let contents = match M::read(&self.cfg) {
            Ok(c) => c,
            Err(e) => {
                // A file missing mid-swap is common on Kubernetes; the next poll retries.
                self.refused(&e);
                return ReloadOutcome::Failed;
            }
        };
        if contents == self.in_service {
            return ReloadOutcome::Unchanged;
        }
        if !force && self.last_failed.as_ref() == Some(&contents) {
            return ReloadOutcome::Failed;
        }
        match M::build(&self.cfg, contents.clone()) {
            Ok(material) => {
                self.accepted(&material);
                ReloadOutcome::Reloaded(material)
            }
            Err(e) => {
                self.refused(&e);
                self.last_failed = Some(contents);
                ReloadOutcome::Failed
            }
        }
    }

    fn refused(&self, e: &TlsError) {
        tracing::error!(side = Side::Proxy.label(), route = %self.metrics.route, error = %format!("{}.{e}", self.key), "{} reload refused; previous material stays in service", M::WHAT);
        self.metrics.reloaded(false);
    }

    fn accepted(&mut self, material: &M) {
        material.set_expiry(&self.metrics);
        self.metrics.reloaded(true);
        match material.subject() {
            Some(subject) => {
                tracing::info!(route = %self.metrics.route, subject = %subject, "{} material reloaded", M::WHAT)
            }
            None => tracing::info!(route = %self.metrics.route, "{} material reloaded", M::WHAT),
        }
        self.in_service = material.contents().clone();
        self.last_failed = None;
    }
}
