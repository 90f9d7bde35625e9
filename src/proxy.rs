//! Assembling a running proxy from a [`Config`]: load TLS, bind every listener and the admin
//! server, start the routes ([`crate::route`]), reload the whole configuration on request or
//! when its file changes, and drain on shutdown.
//!
//! Binding happens before anything is spawned, so a port that is taken fails start-up with its
//! key named, and tests can configure port 0 and read back the bound addresses. A reload is
//! the same in two steps: everything that can fail (the file's validation, every route's TLS
//! material, new listeners, the admin server's TLS, the logging set-up) is done first, and
//! only a configuration that passed all of it is applied; otherwise nothing changes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState, Draining, Endpoints};
use crate::config::{AdminConfig, Config, RouteConfig};
use crate::cores::Cores;
use crate::listener;
use crate::metrics::Metrics;
use crate::route::{self, Command, RouteHandle, RouteSpec, Shared};
use crate::tls::TlsError;

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

/// Applies the parts of a reloaded configuration the library does not own (the binary's
/// logging and audit file); an error refuses the reload whole.
pub type ReloadHook = Box<dyn Fn(&Config) -> Result<(), String> + Send + Sync>;

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
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The new configuration is in service.
    Applied,
    /// The file is the configuration in service (polling only: SIGHUP always applies).
    Unchanged,
    /// The file was refused for this reason; the running configuration stays.
    Refused(String),
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

/// The configuration in service and what reloads it; one reload at a time.
struct Control {
    path: Option<PathBuf>,
    shared: Arc<Shared>,
    hook: Option<ReloadHook>,
    state: tokio::sync::Mutex<State>,
    /// The bound addresses, readable without waiting for a reload.
    addrs: Mutex<Addrs>,
}

struct State {
    config: Config,
    /// The file's content in service, compared by the poll.
    text: Option<String>,
    routes: Vec<(String, RouteHandle)>,
    admin: AdminServer,
    /// The plain health listener (`admin.health_listen`).
    health: Option<AdminServer>,
    /// The last refusal logged, so that a poll retrying the same file logs it once.
    last_error: Option<String>,
}

#[derive(Clone, Default)]
struct Addrs {
    routes: Vec<(String, SocketAddr)>,
    admin: Option<SocketAddr>,
    health: Option<SocketAddr>,
}

/// The admin server's accept loop; stopping it gives its listener back.
struct AdminServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<(TcpListener, Draining)>,
}

impl AdminServer {
    /// Stops accepting, closes the listener and lets open requests finish (5 s at most).
    async fn stop(mut self) {
        self.stop.cancel();
        if let Ok((listener, draining)) = (&mut self.task).await {
            drop(listener);
            draining.finish().await;
        }
    }
}

/// A configuration with all that can fail done.
struct Prepared {
    config: Config,
    text: String,
    routes: Vec<RouteSpec>,
    admin_tls: Option<Arc<rustls::ServerConfig>>,
    admin_listener: Option<TcpListener>,
    /// `admin.health_listen` on a new address (`None`: unchanged, or none configured).
    health_listener: Option<TcpListener>,
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
    ));
    let shared = Arc::new(Shared {
        metrics: metrics.clone(),
        threads: options.cores.as_ref().map_or(1, |c| c.threads()),
        cores: options.cores,
        sessions: TaskTracker::new(),
        background: TaskTracker::new(),
        stop: CancellationToken::new(),
        admin: admin_state.clone(),
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

impl Control {
    fn addrs(&self) -> Addrs {
        self.addrs.lock().map(|a| a.clone()).unwrap_or_default()
    }

    fn publish_addrs(&self, state: &State) {
        if let Ok(mut addrs) = self.addrs.lock() {
            addrs.routes = state
                .routes
                .iter()
                .map(|(n, h)| (n.clone(), h.addr))
                .collect();
            addrs.admin = Some(state.admin.addr);
            addrs.health = state.health.as_ref().map(|h| h.addr);
        }
    }

    /// Re-reads the file every `config_reload_interval` (0: never) and reloads it when its
    /// content changed, until shutdown. Content, not modification time: a Kubernetes
    /// ConfigMap is updated by swapping a symlink.
    async fn poll(self: Arc<Self>) {
        loop {
            let every = self.state.lock().await.config.config_reload_interval;
            // Zero turns polling off; a reload may turn it on again.
            let wait = if every.is_zero() {
                Duration::from_secs(1)
            } else {
                every
            };
            tokio::select! {
                _ = self.shared.stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if !every.is_zero() {
                self.reload(false).await;
            }
        }
    }

    /// Reloads the file; `force` (SIGHUP) also when its content is the one in service.
    async fn reload(&self, force: bool) -> Reload {
        let mut state = self.state.lock().await;
        if self.shared.stop.is_cancelled() {
            return Reload::Unchanged;
        }
        let Some(path) = self.path.as_deref() else {
            // A configuration given in code: the TLS files are all that can change.
            for (_, route) in &state.routes {
                let _ = route.commands.send(Command::ReloadTls).await;
            }
            return Reload::Unchanged;
        };
        let prepared = match std::fs::read_to_string(path) {
            Ok(text) if !force && state.text.as_deref() == Some(text.as_str()) => {
                // Back to the file in service: a refusal seen again is news again.
                state.last_error = None;
                return Reload::Unchanged;
            }
            Ok(text) => self.prepare(&state, path, text),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        };
        match prepared {
            Ok(prepared) => {
                self.apply(&mut state, prepared).await;
                state.last_error = None;
                self.shared.metrics.config_reloaded(true);
                Reload::Applied
            }
            Err(error) => {
                self.shared.metrics.config_reloaded(false);
                if state.last_error.as_ref() != Some(&error) {
                    tracing::error!(side = "proxy", error = %error, "configuration reload refused; the running configuration stays in service");
                    state.last_error = Some(error.clone());
                }
                if force {
                    // SIGHUP still reloads the TLS material of the configuration in service.
                    for (_, route) in &state.routes {
                        let _ = route.commands.send(Command::ReloadTls).await;
                    }
                }
                Reload::Refused(error)
            }
        }
    }

    /// Everything of a reload that can fail, with nothing yet changed: the file's validation,
    /// each route's TLS material, listeners on new addresses, the admin server's TLS and the
    /// hook's own checks.
    fn prepare(&self, state: &State, path: &Path, text: String) -> Result<Prepared, String> {
        let config = Config::from_file_text(path, &text).map_err(|e| e.to_string())?;
        let in_file = |e: String| format!("{}: {e}", path.display());
        let mut routes = Vec::with_capacity(config.routes.len());
        for (index, cfg) in config.routes.iter().enumerate() {
            let running = state.config.routes.iter().find(|r| r.name == cfg.name);
            let listener = match running {
                Some(r) if r.listen == cfg.listen => None,
                _ => Some(bind_route(index, cfg).map_err(|e| in_file(e.to_string()))?),
            };
            let spec = RouteSpec::load(index, cfg, listener, config.audit.messages)
                .map_err(|e| in_file(format!("routes[{index}].{e}")))?;
            routes.push(spec);
        }
        let admin_tls = admin_tls(&config.admin).map_err(|e| in_file(e.to_string()))?;
        let admin_listener = match state.config.admin.listen == config.admin.listen {
            true => None,
            false => Some(bind_admin(&config.admin).map_err(|e| in_file(e.to_string()))?),
        };
        let health_listener = match config.admin.health_listen {
            Some(addr) if state.config.admin.health_listen != Some(addr) => {
                Some(bind_health(addr).map_err(|e| in_file(e.to_string()))?)
            }
            _ => None,
        };
        if let Some(hook) = &self.hook {
            hook(&config).map_err(in_file)?;
        }
        Ok(Prepared {
            config,
            text,
            routes,
            admin_tls,
            admin_listener,
            health_listener,
        })
    }

    /// Puts a prepared configuration in service: routes kept are updated, new ones start,
    /// removed ones drain; the admin server restarts on its settings.
    async fn apply(&self, state: &mut State, prepared: Prepared) {
        let mut old = std::mem::take(&mut state.routes);
        let (mut added, mut changed) = (Vec::new(), Vec::new());
        for spec in prepared.routes {
            let name = spec.cfg.name.clone();
            let Some(at) = old.iter().position(|(n, _)| *n == name) else {
                if let Some(handle) = route::start(spec, &self.shared) {
                    added.push(name.clone());
                    state.routes.push((name, handle));
                }
                continue;
            };
            let (name, mut handle) = old.remove(at);
            if state
                .config
                .routes
                .iter()
                .any(|r| r.name == name && *r != spec.cfg)
            {
                changed.push(name.clone());
            }
            let moved = spec.listener.as_ref().and_then(|l| l.local_addr().ok());
            let (done, applied) = oneshot::channel();
            if handle
                .commands
                .send(Command::Apply(Box::new(spec), done))
                .await
                .is_ok()
            {
                let _ = applied.await;
            }
            handle.addr = moved.unwrap_or(handle.addr);
            state.routes.push((name, handle));
        }
        let mut removed = Vec::with_capacity(old.len());
        for (name, handle) in old {
            // Answered once the route's listener is closed: its address is free when the
            // reload returns.
            let (done, stopped) = oneshot::channel();
            if handle.commands.send(Command::Remove(done)).await.is_ok() {
                let _ = stopped.await;
            }
            removed.push(name);
        }
        self.restart_admin(
            state,
            &prepared.config.admin,
            prepared.admin_tls,
            prepared.admin_listener,
        )
        .await;
        if state.config.admin.health_listen != prepared.config.admin.health_listen {
            if let Some(old) = state.health.take() {
                old.stop().await;
            }
            state.health = prepared
                .health_listener
                .map(|l| serve_health(l, &self.shared.admin));
        }
        tracing::info!(
            routes = state.routes.len(),
            added = %added.join(","),
            changed = %changed.join(","),
            removed = %removed.join(","),
            "configuration reloaded"
        );
        state.config = prepared.config;
        state.text = Some(prepared.text);
        self.publish_addrs(state);
    }

    /// Serves the admin endpoints on their reloaded settings (and certificate): the old accept
    /// loop stops and hands over its listener unless the address changed; open scrapes finish.
    async fn restart_admin(
        &self,
        state: &mut State,
        cfg: &AdminConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
        listener: Option<TcpListener>,
    ) {
        let admin = &self.shared.admin;
        admin
            .ready_requires_upstream
            .store(cfg.ready_requires_upstream, Ordering::Release);
        state.admin.stop.cancel();
        let Ok((old, draining)) = (&mut state.admin.task).await else {
            return;
        };
        tokio::spawn(draining.finish());
        let listener = listener.unwrap_or(old);
        state.admin = serve_admin(listener, cfg, tls, admin);
    }
}

fn serve_admin(
    listener: TcpListener,
    cfg: &AdminConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: &Arc<AdminState>,
) -> AdminServer {
    let addr = listener.local_addr().unwrap_or(cfg.listen);
    let stop = CancellationToken::new();
    let task = tokio::spawn(admin::serve(
        listener,
        state.clone(),
        Endpoints::All,
        cfg.max_connections,
        tls,
        stop.clone(),
    ));
    AdminServer { addr, stop, task }
}

/// The plain health listener (`admin.health_listen`): `/healthz` and `/readyz` only.
fn serve_health(listener: TcpListener, state: &Arc<AdminState>) -> AdminServer {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let stop = CancellationToken::new();
    // Probes come one at a time per prober; a handful of connections is plenty.
    let task = tokio::spawn(admin::serve(
        listener,
        state.clone(),
        Endpoints::Health,
        16,
        None,
        stop.clone(),
    ));
    AdminServer { addr, stop, task }
}

fn bind_health(addr: SocketAddr) -> Result<TcpListener, StartError> {
    listener::bind(addr, 128).map_err(|source| StartError::Bind {
        key: "admin.health_listen".into(),
        addr,
        source,
    })
}

fn admin_tls(admin: &AdminConfig) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    admin
        .tls
        .as_ref()
        .map(crate::tls::admin_server_config)
        .transpose()
}

fn bind_admin(admin: &AdminConfig) -> Result<TcpListener, StartError> {
    // The standard backlog: scrapes come a few at a time.
    listener::bind(admin.listen, 1024).map_err(|source| StartError::Bind {
        key: "admin.listen".into(),
        addr: admin.listen,
        source,
    })
}

fn bind_route(index: usize, route: &RouteConfig) -> Result<TcpListener, StartError> {
    listener::bind(route.listen, route.limits.listen_backlog).map_err(|source| StartError::Bind {
        key: format!("routes[{index}].listen"),
        addr: route.listen,
        source,
    })
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
