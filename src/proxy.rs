//! Assembling a running proxy from a [`Config`]: load TLS, bind every listener and the admin
//! server, spawn the accept loops and reloaders, and drain on shutdown.
//!
//! Binding happens here, before anything is spawned, so a port that is taken fails start-up
//! with its key named, and tests can configure port 0 and read back the bound addresses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cores::Cores;

use crate::admin::{self, AdminState};
use crate::config::{AdminConfig, Config, RouteConfig};
use crate::listener;
use crate::metrics::Metrics;
use crate::session::RouteContext;
use crate::tls::{TlsError, TlsMaterial};

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
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        /// The configuration key.
        key: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A started proxy: its bound addresses and the handles to reload and stop it.
pub struct RunningProxy {
    /// `(route name, bound address)` in configuration order.
    pub routes: Vec<(String, SocketAddr)>,
    /// The bound admin address.
    pub admin: SocketAddr,
    metrics: Metrics,
    admin_state: Arc<AdminState>,
    stop_accepting: CancellationToken,
    stop_admin: CancellationToken,
    sessions: TaskTracker,
    background: TaskTracker,
    hup: watch::Sender<u64>,
}

/// Loads, binds and spawns everything described by `config`; sessions run on this runtime.
pub async fn start(config: Config, metrics: Metrics) -> Result<RunningProxy, StartError> {
    start_on(config, metrics, None).await
}

/// [`start`], with each session on one of `cores`' session threads when given.
pub async fn start_on(
    config: Config,
    metrics: Metrics,
    cores: Option<Arc<Cores>>,
) -> Result<RunningProxy, StartError> {
    let stop_accepting = CancellationToken::new();
    let stop_admin = CancellationToken::new();
    let sessions = TaskTracker::new();
    let background = TaskTracker::new();
    let (hup, hup_rx) = watch::channel(0u64);

    let prepared = bind_routes(config.routes)?;
    let (admin_listener, admin_tls) = bind_admin(&config.admin).await?;
    let admin_addr = local_addr(&admin_listener, config.admin.listen);

    let threads = cores.as_ref().map_or(1, |c| c.threads());
    let mut routes = Vec::with_capacity(prepared.len());
    let mut upstreams = Vec::with_capacity(prepared.len());
    for (index, (route, material, listener)) in prepared.into_iter().enumerate() {
        let addr = local_addr(&listener, route.listen);
        let (ctx, reloader) = RouteContext::build(
            index,
            route,
            material,
            &metrics,
            threads,
            config.audit.messages,
        );
        routes.push((ctx.cfg.name.clone(), addr));
        upstreams.push(ctx.upstream.clone());
        background.spawn(reloader.run(hup_rx.clone(), stop_accepting.clone()));
        spawn_route(
            ctx,
            listener,
            addr,
            cores.as_ref(),
            &sessions,
            &background,
            &stop_accepting,
        );
    }

    background.spawn(crate::memory::release_after_bursts(stop_accepting.clone()));

    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        ready: false.into(),
        upstreams,
        ready_requires_upstream: config.admin.ready_requires_upstream,
    });
    background.spawn(admin::serve(
        admin_listener,
        admin_state.clone(),
        config.admin.max_connections,
        admin_tls,
        stop_admin.clone(),
    ));
    admin_state.ready.store(true, Ordering::Release);
    tracing::info!(admin = %admin_addr, "admin listening (/metrics, /healthz, /readyz)");

    Ok(RunningProxy {
        routes,
        admin: admin_addr,
        metrics,
        admin_state,
        stop_accepting,
        stop_admin,
        sessions,
        background,
        hup,
    })
}

impl RunningProxy {
    /// The metrics of this proxy.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The bound address of the route named `name`.
    pub fn route_addr(&self, name: &str) -> Option<SocketAddr> {
        self.routes.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Reloads TLS material of every route now (what SIGHUP does).
    pub fn reload_tls(&self) {
        self.hup.send_modify(|n| *n += 1);
    }

    /// Stops accepting, lets sessions finish their current exchange for up to `drain`, then
    /// stops the admin server. Returns whether every session ended within `drain`.
    pub async fn shutdown(self, drain: Duration) -> bool {
        self.admin_state.ready.store(false, Ordering::Release);
        self.stop_accepting.cancel();
        self.sessions.close();
        let open = self.sessions.len();
        if open > 0 {
            tracing::info!(sessions = open, drain_timeout = ?drain, "draining sessions");
        }
        let drained = tokio::time::timeout(drain, self.sessions.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                sessions = self.sessions.len(),
                "drain_timeout reached with sessions still open; closing them"
            );
        }
        self.stop_admin.cancel();
        self.background.close();
        let _ = tokio::time::timeout(Duration::from_secs(6), self.background.wait()).await;
        drained
    }
}

/// Spawns a route's pool maintenance and accept loop.
fn spawn_route(
    ctx: Arc<RouteContext>,
    listener: TcpListener,
    addr: SocketAddr,
    cores: Option<&Arc<Cores>>,
    sessions: &TaskTracker,
    background: &TaskTracker,
    stop_accepting: &CancellationToken,
) {
    tracing::info!(
        route = %ctx.cfg.name,
        listen = %addr,
        upstream = %ctx.cfg.upstream.targets.join(","),
        validation = %format!("{:?}", ctx.validator.mode()).to_lowercase(),
        "route listening"
    );
    background.spawn(ctx.upstream.clone().maintain(stop_accepting.clone()));
    // A small pool's few connections pass between all the route's sessions: those share
    // one thread (see `cores`).
    let placement = cores.map(|c| c.placement(ctx.upstream.spread_sessions()));
    background.spawn(listener::serve(
        listener,
        ctx,
        sessions.clone(),
        stop_accepting.clone(),
        placement,
    ));
}

/// The admin listener bound and its TLS configuration loaded, if any.
async fn bind_admin(
    admin: &AdminConfig,
) -> Result<(TcpListener, Option<Arc<rustls::ServerConfig>>), StartError> {
    let tls = match &admin.tls {
        Some(t) => Some(crate::tls::admin_server_config(t).map_err(StartError::AdminTls)?),
        None => None,
    };
    let listener = TcpListener::bind(admin.listen)
        .await
        .map_err(|source| StartError::Bind {
            key: "admin.listen".into(),
            addr: admin.listen,
            source,
        })?;
    Ok((listener, tls))
}

/// Every route's TLS material loaded and listener bound, before anything is spawned: a bad
/// certificate or a taken port fails start-up with its key named.
fn bind_routes(
    routes: Vec<RouteConfig>,
) -> Result<Vec<(RouteConfig, TlsMaterial, TcpListener)>, StartError> {
    let mut prepared = Vec::with_capacity(routes.len());
    for (index, route) in routes.into_iter().enumerate() {
        let material =
            TlsMaterial::load(&route.tls).map_err(|source| StartError::Tls { index, source })?;
        let listener =
            listener::bind(route.listen, route.limits.listen_backlog).map_err(|source| {
                StartError::Bind {
                    key: format!("routes[{index}].listen"),
                    addr: route.listen,
                    source,
                }
            })?;
        prepared.push((route, material, listener));
    }
    Ok(prepared)
}

fn local_addr(listener: &TcpListener, configured: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(configured)
}
