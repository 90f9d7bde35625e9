//! Reloading the whole configuration: [`Control`] holds the configuration in service and
//! reloads it on SIGHUP ([`crate::proxy::RunningProxy::reload`]) and when its file changes,
//! in two steps. [`Control::prepare`] does everything that can fail (the file's validation,
//! every route's TLS material, listeners on new addresses, the admin server's TLS, the
//! binary's audit file) with nothing changed; only a configuration that passed all of it is
//! applied ([`Control::apply`]); otherwise a [`ReloadError`] names what refused it and the
//! running configuration stays.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState, Draining, Endpoints};
use crate::config::{AdminConfig, Config, ConfigError, RouteConfig};
use crate::label::{Label, Side};
use crate::listener;
use crate::route::{self, Command, RouteHandle, RouteSpec, Shared};
use crate::tls::TlsError;

/// Applies the parts of a reloaded configuration the library does not own (the binary's
/// logging and audit file); an error refuses the reload whole.
pub type ReloadHook = Box<dyn Fn(&Config) -> Result<(), String> + Send + Sync>;

/// What a reload did.
#[derive(Debug)]
pub enum Reload {
    /// The new configuration is in service.
    Applied,
    /// The file is the configuration in service (polling only: SIGHUP always applies).
    Unchanged,
    /// The file was refused; the running configuration stays.
    Refused(ReloadError),
}

/// Why a reload was refused. Every variant names the file and what in it is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML did not parse, or a value did not validate (the key path and line named).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A route's TLS material failed to load.
    #[error("{}: routes[{index}].{source}", path.display())]
    Tls {
        /// The configuration file.
        path: PathBuf,
        /// Which route.
        index: usize,
        /// What failed.
        #[source]
        source: TlsError,
    },
    /// A new listen address could not be bound (taken, or not this host's).
    #[error("{}: {source}", path.display())]
    Bind {
        /// The configuration file.
        path: PathBuf,
        /// The key, address and OS error.
        #[source]
        source: BindError,
    },
    /// The admin server's TLS material failed to load.
    #[error("{}: {source}", path.display())]
    Admin {
        /// The configuration file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: TlsError,
    },
    /// The binary's own set-up refused it: the audit file could not be opened.
    #[error("{}: {reason}", path.display())]
    AuditFile {
        /// The configuration file.
        path: PathBuf,
        /// `audit.file`, the file and the OS error, in words.
        reason: String,
    },
}

/// A listen address that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("{key}: cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The configuration key (`routes[0].listen`, `admin.listen`, `admin.health_listen`).
    pub key: String,
    /// The address.
    pub addr: SocketAddr,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// The configuration in service and what reloads it; one reload at a time.
pub(crate) struct Control {
    pub(crate) path: Option<PathBuf>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) hook: Option<ReloadHook>,
    pub(crate) state: tokio::sync::Mutex<State>,
    /// The bound addresses, readable without waiting for a reload.
    pub(crate) addrs: Mutex<Addrs>,
}

pub(crate) struct State {
    pub(crate) config: Config,
    /// The file's content in service, compared by the poll.
    pub(crate) text: Option<String>,
    pub(crate) routes: Vec<(String, RouteHandle)>,
    pub(crate) admin: AdminServer,
    /// The plain health listener (`admin.health_listen`).
    pub(crate) health: Option<AdminServer>,
    /// The last refusal logged, so that a poll retrying the same file logs it once.
    pub(crate) last_error: Option<String>,
}

#[derive(Clone, Default)]
pub(crate) struct Addrs {
    pub(crate) routes: Vec<(String, SocketAddr)>,
    pub(crate) admin: Option<SocketAddr>,
    pub(crate) health: Option<SocketAddr>,
}

/// The admin server's accept loop; stopping it gives its listener back.
pub(crate) struct AdminServer {
    pub(crate) addr: SocketAddr,
    pub(crate) stop: CancellationToken,
    pub(crate) task: JoinHandle<(TcpListener, Draining)>,
}

impl AdminServer {
    /// Stops accepting, closes the listener and lets open requests finish (5 s at most).
    pub(crate) async fn stop(mut self) {
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

impl Control {
    pub(crate) fn addrs(&self) -> Addrs {
        self.addrs.lock().map(|a| a.clone()).unwrap_or_default()
    }

    pub(crate) fn publish_addrs(&self, state: &State) {
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
    pub(crate) async fn poll(self: Arc<Self>) {
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
    pub(crate) async fn reload(&self, force: bool) -> Reload {
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
            Err(source) => Err(ReloadError::Read {
                path: path.to_path_buf(),
                source,
            }),
        };
        match prepared {
            Ok(prepared) => {
                self.apply(&mut state, prepared).await;
                state.last_error = None;
                self.shared.metrics.config_reloaded(true);
                self.shared.admin.reloaded(Ok(()));
                self.shared.audit.configuration_reload(None);
                Reload::Applied
            }
            Err(error) => {
                self.shared.metrics.config_reloaded(false);
                let text = error.to_string();
                self.shared.admin.reloaded(Err(text.clone()));
                if state.last_error.as_ref() != Some(&text) {
                    // Once per distinct refusal, like the log line: the poll retries a refused
                    // file every config_reload_interval.
                    self.shared.audit.configuration_reload(Some(&text));
                    tracing::error!(side = Side::Proxy.label(), error = %text, "configuration reload refused; the running configuration stays in service");
                    state.last_error = Some(text);
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
    fn prepare(&self, state: &State, path: &Path, text: String) -> Result<Prepared, ReloadError> {
        let config = Config::from_file_text(path, &text)?;
        let file = || path.to_path_buf();
        let bind = |source| ReloadError::Bind {
            path: file(),
            source,
        };
        let mut routes = Vec::with_capacity(config.routes.len());
        for (index, cfg) in config.routes.iter().enumerate() {
            let running = state.config.routes.iter().find(|r| r.name == cfg.name);
            let listener = match running {
                Some(r) if r.listen == cfg.listen => None,
                _ => Some(bind_route(index, cfg).map_err(bind)?),
            };
            let spec =
                RouteSpec::load(index, cfg, listener, config.audit.messages).map_err(|source| {
                    ReloadError::Tls {
                        path: file(),
                        index,
                        source,
                    }
                })?;
            routes.push(spec);
        }
        let admin_tls = admin_tls(&config.admin).map_err(|source| ReloadError::Admin {
            path: file(),
            source,
        })?;
        let admin_listener = match state.config.admin.listen == config.admin.listen {
            true => None,
            false => Some(bind_admin(&config.admin).map_err(bind)?),
        };
        let health_listener = match config.admin.health_listen {
            Some(addr) if state.config.admin.health_listen != Some(addr) => {
                Some(bind_health(addr).map_err(bind)?)
            }
            _ => None,
        };
        if let Some(hook) = &self.hook {
            hook(&config).map_err(|reason| ReloadError::AuditFile {
                path: file(),
                reason,
            })?;
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

pub(crate) fn serve_admin(
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
pub(crate) fn serve_health(listener: TcpListener, state: &Arc<AdminState>) -> AdminServer {
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

pub(crate) fn bind_health(addr: SocketAddr) -> Result<TcpListener, BindError> {
    listener::bind(addr, 128).map_err(|source| BindError {
        key: "admin.health_listen".into(),
        addr,
        source,
    })
}

pub(crate) fn admin_tls(
    admin: &AdminConfig,
) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    admin
        .tls
        .as_ref()
        .map(crate::tls::admin_server_config)
        .transpose()
}

pub(crate) fn bind_admin(admin: &AdminConfig) -> Result<TcpListener, BindError> {
    // The standard backlog: scrapes come a few at a time.
    listener::bind(admin.listen, 1024).map_err(|source| BindError {
        key: "admin.listen".into(),
        addr: admin.listen,
        source,
    })
}

pub(crate) fn bind_route(index: usize, route: &RouteConfig) -> Result<TcpListener, BindError> {
    listener::bind(route.listen, route.limits.listen_backlog).map_err(|source| BindError {
        key: format!("routes[{index}].listen"),
        addr: route.listen,
        source,
    })
}
