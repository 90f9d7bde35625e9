//! One route while the proxy runs: its listener, its TLS material, its engine, and the
//! [`RouteContext`] its sessions share, published again whenever a reload or a TLS poll
//! changes any of them.
//!
//! Everything that changes a route happens in its one task, in order: a configuration reload
//! ([`RouteSpec`], prepared by [`crate::proxy`] so that applying it cannot fail), a TLS poll,
//! and the route's removal. Sessions take up a published context between exchanges
//! ([`crate::session`]); nothing here waits for them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::AdminState;
use crate::config::RouteConfig;
use crate::cores::Cores;
use crate::hl7;
use crate::listener::{self, Gate};
use crate::logsafe::RouteEvents;
use crate::metrics::{Metrics, RouteMetrics};
use crate::session::{RouteContext, max_ack_bytes};
use crate::tls::{AllowList, ReloadOutcome, TlsFiles, TlsMaterial};
use crate::upstream::Upstream;

/// What the whole proxy lends each route.
pub(crate) struct Shared {
    pub(crate) metrics: Metrics,
    pub(crate) cores: Option<Arc<Cores>>,
    /// Session threads the pools are split over.
    pub(crate) threads: usize,
    /// Every session of every route, for the drain at shutdown.
    pub(crate) sessions: TaskTracker,
    /// Accept loops, pool maintenance and the routes' own tasks.
    pub(crate) background: TaskTracker,
    /// Cancelled at shutdown: every listener stops accepting and every session drains.
    pub(crate) stop: CancellationToken,
    pub(crate) admin: Arc<AdminState>,
}

/// A route's configuration with everything that can fail already done: its TLS material
/// loaded and, when its address is new, its listener bound.
pub(crate) struct RouteSpec {
    /// `routes[N]`, for errors of later TLS polls.
    pub(crate) key: String,
    pub(crate) cfg: RouteConfig,
    pub(crate) material: TlsMaterial,
    /// A listener on a new address, replacing the route's current one.
    pub(crate) listener: Option<TcpListener>,
    /// `audit.messages`.
    pub(crate) audit_messages: bool,
}

/// What a route's task is asked to do.
pub(crate) enum Command {
    /// Serve this configuration from now on; answers once it is published.
    Apply(Box<RouteSpec>, oneshot::Sender<()>),
    /// Compare the TLS files with the material in service, retrying content refused before
    /// (SIGHUP with a configuration file that could not be reloaded).
    ReloadTls,
}

/// A running route as the proxy sees it: where it listens and how to reach its task. Dropping
/// it removes the route: the listener stops and its sessions drain.
pub(crate) struct RouteHandle {
    pub(crate) addr: SocketAddr,
    pub(crate) commands: mpsc::Sender<Command>,
}

/// The state the route's task owns.
struct Route {
    name: String,
    ctx: watch::Sender<Arc<RouteContext>>,
    tls: TlsFiles,
    metrics: RouteMetrics,
    /// The accept loop in service and, through child tokens, the sessions it accepted.
    listening: CancellationToken,
    /// The engine's maintenance (idle reaping, health checks).
    maintaining: CancellationToken,
}

/// Starts route `spec` (whose listener is bound) and returns its handle.
pub(crate) fn start(spec: RouteSpec, shared: &Arc<Shared>) -> Option<RouteHandle> {
    let RouteSpec {
        key,
        cfg,
        material,
        listener,
        audit_messages,
    } = spec;
    let listener = listener?;
    let addr = listener.local_addr().unwrap_or(cfg.listen);
    let metrics = shared.metrics.route(&cfg.name);
    let tls = TlsFiles::new(key, cfg.tls.clone(), &material, metrics.clone());
    let upstream = Arc::new(Upstream::new(
        cfg.upstream.clone(),
        shared.threads,
        max_ack_bytes(cfg.validation.max_message_bytes),
        metrics.clone(),
    ));
    let ctx = RouteContext {
        tls: material.server_config.clone(),
        verifier: material.verifier.clone(),
        allow: AllowList::new(cfg.allowed_clients.clone()),
        validator: hl7::Validator::new(&cfg.validation),
        upstream: upstream.clone(),
        events: Arc::new(RouteEvents::new(&metrics)),
        gate: Arc::new(Gate::default()),
        metrics: metrics.clone(),
        audit_messages,
        cfg,
    };
    let (tx, _) = watch::channel(Arc::new(ctx));
    let mut route = Route {
        name: metrics.route.clone(),
        ctx: tx,
        tls,
        metrics,
        listening: shared.stop.child_token(),
        maintaining: shared.stop.child_token(),
    };
    route.maintain(upstream, shared);
    route.listen(listener, addr, shared);
    let (commands, rx) = mpsc::channel(4);
    shared.background.spawn(route.run(rx, shared.clone()));
    Some(RouteHandle { addr, commands })
}

impl Route {
    /// Polls the TLS files every `reload_interval` and carries out commands, until shutdown or
    /// until the route is removed (its handle dropped).
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, shared: Arc<Shared>) {
        let mut every = self.tls.config().reload_interval;
        let mut tick = poll_every(every);
        loop {
            tokio::select! {
                _ = shared.stop.cancelled() => return,
                _ = tick.tick() => self.reload_tls(false),
                command = commands.recv() => match command {
                    None => return self.remove(&shared),
                    Some(Command::ReloadTls) => self.reload_tls(true),
                    Some(Command::Apply(spec, done)) => {
                        self.apply(*spec, &shared);
                        let _ = done.send(());
                    }
                },
            }
            if self.tls.config().reload_interval != every {
                every = self.tls.config().reload_interval;
                tick = poll_every(every);
            }
        }
    }

    /// Puts a reloaded configuration in service. The engine's pool is kept when its targets
    /// and limit are; otherwise a new one replaces it and the old one closes its connections
    /// as their exchanges end. A new listener replaces the old one, whose sessions drain.
    fn apply(&mut self, spec: RouteSpec, shared: &Arc<Shared>) {
        let current = self.ctx.borrow().clone();
        let cfg = spec.cfg;
        let max_ack = max_ack_bytes(cfg.validation.max_message_bytes);
        let old = &current.upstream;
        let upstream = if cfg.upstream == current.cfg.upstream
            && cfg.validation.max_message_bytes == current.cfg.validation.max_message_bytes
        {
            old.clone()
        } else if old.keeps_pool(&cfg.upstream) {
            Arc::new(old.reconfigured(cfg.upstream.clone(), max_ack))
        } else {
            old.retire();
            for gone in old.config().targets.iter() {
                if !cfg.upstream.targets.contains(gone) {
                    shared.metrics.remove_target(&self.name, gone);
                }
            }
            Arc::new(Upstream::new(
                cfg.upstream.clone(),
                shared.threads,
                max_ack,
                self.metrics.clone(),
            ))
        };
        if !Arc::ptr_eq(&upstream, old) {
            self.maintaining.cancel();
            self.maintaining = shared.stop.child_token();
            self.maintain(upstream.clone(), shared);
        }
        let (tls, verifier) = match self.tls.replace(spec.key, cfg.tls.clone(), spec.material) {
            Some(m) => (m.server_config, m.verifier),
            None => (current.tls.clone(), current.verifier.clone()),
        };
        let ctx = RouteContext {
            tls,
            verifier,
            allow: AllowList::new(cfg.allowed_clients.clone()),
            validator: hl7::Validator::new(&cfg.validation),
            upstream,
            events: current.events.clone(),
            gate: current.gate.clone(),
            metrics: self.metrics.clone(),
            audit_messages: spec.audit_messages,
            cfg,
        };
        self.ctx.send_replace(Arc::new(ctx));
        if let Some(listener) = spec.listener {
            let addr = listener
                .local_addr()
                .unwrap_or(self.ctx.borrow().cfg.listen);
            self.listening.cancel();
            self.listening = shared.stop.child_token();
            self.listen(listener, addr, shared);
        }
    }

    /// A TLS poll (or a SIGHUP whose configuration could not be reloaded).
    fn reload_tls(&mut self, force: bool) {
        match self.tls.reload(force) {
            ReloadOutcome::Reloaded(material) => {
                let current = self.ctx.borrow().clone();
                let ctx = RouteContext {
                    tls: material.server_config,
                    verifier: material.verifier,
                    allow: current.allow.clone(),
                    validator: current.validator.clone(),
                    upstream: current.upstream.clone(),
                    metrics: current.metrics.clone(),
                    events: current.events.clone(),
                    gate: current.gate.clone(),
                    audit_messages: current.audit_messages,
                    cfg: current.cfg.clone(),
                };
                self.ctx.send_replace(Arc::new(ctx));
            }
            ReloadOutcome::Unchanged if force => {
                tracing::info!(route = %self.name, "SIGHUP: TLS material unchanged");
            }
            ReloadOutcome::Unchanged | ReloadOutcome::Failed => {}
        }
    }

    /// The route left the configuration: it stops accepting, its sessions drain as at
    /// shutdown, its engine's idle connections close and its series leave `/metrics`.
    fn remove(self, shared: &Shared) {
        tracing::info!(route = %self.name, "route removed from the configuration; draining its sessions");
        self.listening.cancel();
        self.maintaining.cancel();
        self.ctx.borrow().upstream.retire();
        shared.admin.set_upstream(&self.name, None);
        shared.metrics.remove_route(&self.name);
    }

    fn maintain(&mut self, upstream: Arc<Upstream>, shared: &Shared) {
        shared
            .admin
            .set_upstream(&self.name, Some(upstream.clone()));
        shared
            .background
            .spawn(upstream.maintain(self.maintaining.clone()));
    }

    fn listen(&mut self, listener: TcpListener, addr: SocketAddr, shared: &Shared) {
        let ctx = self.ctx.borrow().clone();
        tracing::info!(
            route = %self.name,
            listen = %addr,
            upstream = %ctx.cfg.upstream.targets.join(","),
            validation = %format!("{:?}", ctx.validator.mode()).to_lowercase(),
            "route listening"
        );
        shared.background.spawn(listener::serve(
            listener,
            self.ctx.subscribe(),
            shared.sessions.clone(),
            self.listening.clone(),
            shared.cores.clone(),
        ));
    }
}

/// The TLS poll's timer; its first tick is one interval away (start-up loaded the files).
fn poll_every(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}
