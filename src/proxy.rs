//! Assembling a running proxy from a [`Config`]: load TLS, bind every listener and the admin
//! server, start the routes ([`crate::route`]) and the reload control ([`crate::reload`]);
//! stop and drain.
//!
//! Binding happens before anything is spawned, so a port that is taken fails start-up with its
//! key named, and tests can configure port 0 and read back the bound addresses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::AdminState;
use crate::audit::AuditLog;
use crate::config::{Config, RouteConfig};
use crate::cores::Cores;
use crate::metrics::Metrics;
use crate::reload::{
    Addrs, Control, State, admin_tls, bind_admin, bind_health, bind_route, serve_admin,
    serve_health,
};
use crate::route::{self, RouteSpec, Shared};
use crate::tls::TlsError;

pub use crate::reload::{BindError, Reload, ReloadError, ReloadHook};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// TLS material of a route failed to load.
    #[error("routes[{index}].{source}")]
    Tls {
        /// Index of the route.
        index: usize,
        /// What failed.
        source: TlsError,
    },
    /// The admin server's TLS material failed to load.
    #[error("{0}")]
    AdminTls(TlsError),
    /// A listen address could not be bound.
    #[error("{0}")]
    Bind(#[from] BindError),
}

/// The file a configuration came from, and its content as read then.
pub struct Source {
    /// Re-read on [`RunningProxy::reload`] and every `config_reload_interval`.
    pub path: PathBuf,
    /// What the poll compares the file with ([`Config::load_with_text`]).
    pub text: String,
}

/// How a proxy is started beyond its configuration.
#[derive(Default)]
pub struct Options {
    /// The file the configuration came from. Without it a reload re-reads the TLS files
    /// only.
    pub source: Option<Source>,
    /// Runs each session on one of these session threads.
    pub cores: Option<Arc<Cores>>,
    /// Called with a reloaded configuration before it is applied.
    pub on_reload: Option<ReloadHook>,
    /// Where audit records go (none without it).
    pub audit: AuditLog,
}

/// A started proxy: its bound addresses and the handles to reload and stop it.
pub struct RunningProxy {
    control: Arc<Control>,
    metrics: Metrics,
    admin_state: Arc<AdminState>,
    stop_accepting: CancellationToken,
    sessions: TaskTracker,
    background: TaskTracker,
}

/// Loads, binds and spawns everything described by `config`; sessions run on this runtime.
pub async fn start(config: Config, metrics: Metrics) -> Result<RunningProxy, StartError> {
    start_with(config, metrics, Options::default()).await
}

/// [`start`], with the configuration's file, session threads and reload hook of `options`.
pub async fn start_with(
    config: Config,
    metrics: Metrics,
    options: Options,
) -> Result<RunningProxy, StartError> {
    let routes = bind_routes(&config.routes, config.audit.messages)?;
    let admin_tls = admin_tls(&config.admin).map_err(StartError::AdminTls)?;
    let admin_listener = bind_admin(&config.admin)?;
    let health_listener = config.admin.health_listen.map(bind_health).transpose()?;

    let admin_state = Arc::new(AdminState::new(
        metrics.clone(),
        config.admin.ready_requires_upstream,
        options.audit.clone(),
    ));
    let shared = Arc::new(Shared {
        metrics: metrics.clone(),
        threads: options.cores.as_ref().map_or(1, |c| c.threads()),
        cores: options.cores,
        sessions: TaskTracker::new(),
        background: TaskTracker::new(),
        stop: CancellationToken::new(),
        admin: admin_state.clone(),
        audit: options.audit,
    });
    let mut running = Vec::with_capacity(routes.len());
    for spec in routes {
        let name = spec.cfg.name.clone();
        if let Some(handle) = route::start(spec, &shared) {
            running.push((name, handle));
        }
    }
    shared
        .background
        .spawn(crate::memory::release_after_bursts(shared.stop.clone()));
    let admin = serve_admin(admin_listener, &config.admin, admin_tls, &admin_state);
    let health = health_listener.map(|l| serve_health(l, &admin_state));
    admin_state.ready.store(true, Ordering::Release);
    tracing::info!(admin = %admin.addr, "admin listening (/metrics, /healthz, /readyz)");
    if let Some(h) = &health {
        tracing::info!(health = %h.addr, "health listening (/healthz, /readyz; plain HTTP)");
    }

    let (path, text) = options.source.map(|s| (s.path, s.text)).unzip();
    let control = Arc::new(Control {
        path,
        hook: options.on_reload,
        addrs: Mutex::new(Addrs::default()),
        state: tokio::sync::Mutex::new(State {
            config,
            text,
            routes: running,
            admin,
            health,
            last_error: None,
        }),
        shared: shared.clone(),
    });
    control.publish_addrs(&*control.state.lock().await);
    if control.path.is_some() {
        shared.background.spawn(control.clone().poll());
    }
    Ok(RunningProxy {
        control,
        metrics,
        admin_state,
        stop_accepting: shared.stop.clone(),
        sessions: shared.sessions.clone(),
        background: shared.background.clone(),
    })
}

impl RunningProxy {
    /// The metrics of this proxy.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// `(route name, bound address)` in configuration order.
    pub fn routes(&self) -> Vec<(String, SocketAddr)> {
        self.control.addrs().routes
    }

    /// The bound address of the route named `name`.
    pub fn route_addr(&self, name: &str) -> Option<SocketAddr> {
        let addrs = self.control.addrs();
        addrs
            .routes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// The bound admin address.
    pub fn admin(&self) -> SocketAddr {
        self.control
            .addrs()
            .admin
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The bound address of `admin.health_listen`, if configured.
    pub fn health(&self) -> Option<SocketAddr> {
        self.control.addrs().health
    }

    /// Reloads the whole configuration now (what SIGHUP does), whether or not the file
    /// changed, and with it every route's TLS material.
    pub async fn reload(&self) -> Reload {
        self.control.reload(true).await
    }

    /// What SIGTERM does, with `shutdown` as configured now (a reload may have changed it):
    /// `/readyz` answers 503 at once while the listeners keep accepting and serving for
    /// `shutdown.delay` (lame duck: balancers and Kubernetes endpoints stop sending before
    /// anything is refused), then [`RunningProxy::shutdown`] with `shutdown.drain_timeout`.
    /// Returns whether every session ended within the drain.
    pub async fn stop(self) -> bool {
        self.admin_state.ready.store(false, Ordering::Release);
        let settings = self.control.state.lock().await.config.shutdown.clone();
        if !settings.delay.is_zero() {
            tracing::info!(delay = ?settings.delay, "shutting down: /readyz answers 503; still accepting until shutdown.delay has passed");
            tokio::time::sleep(settings.delay).await;
        }
        self.shutdown(settings.drain_timeout).await
    }

    /// Stops accepting, lets sessions finish their current exchange for up to `drain`, then
    /// stops the admin server. Returns whether every session ended within `drain`.
    pub async fn shutdown(self, drain: Duration) -> bool {
        self.admin_state.ready.store(false, Ordering::Release);
        // One reload at a time: none is half applied when the routes stop.
        let mut state = self.control.state.lock().await;
        self.stop_accepting.cancel();
        self.sessions.close();
        let open = self.sessions.len();
        tracing::info!(sessions = open, drain_timeout = ?drain, "shutting down: listeners stop accepting; draining sessions");
        let drained = tokio::time::timeout(drain, self.sessions.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                sessions = self.sessions.len(),
                "drain_timeout reached with sessions still open; closing them"
            );
        }
        state.routes.clear();
        if let Some(health) = state.health.take() {
            health.stop().await;
        }
        state.admin.stop.cancel();
        if let Ok((_, draining)) = (&mut state.admin.task).await {
            draining.finish().await;
        }
        self.background.close();
        let _ = tokio::time::timeout(Duration::from_secs(6), self.background.wait()).await;
        drained
    }
}

/// Every route's TLS material loaded and listener bound, before anything is spawned: a bad
/// certificate or a taken port fails start-up with its key named.
fn bind_routes(routes: &[RouteConfig], audit_messages: bool) -> Result<Vec<RouteSpec>, StartError> {
    let mut prepared = Vec::with_capacity(routes.len());
    for (index, route) in routes.iter().enumerate() {
        let spec = RouteSpec::load(index, route, None, audit_messages)
            .map_err(|source| StartError::Tls { index, source })?;
        prepared.push(RouteSpec {
            listener: Some(bind_route(index, route)?),
            ..spec
        });
    }
    Ok(prepared)
}
