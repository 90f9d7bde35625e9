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

use crate::admin::{AdminState, RouteView};
use crate::audit::AuditLog;
use crate::config::RouteConfig;
use crate::context::{ListenerTls, RouteContext, max_ack_bytes};
use crate::cores::Cores;
use crate::listener;
use crate::metrics::{Metrics, RouteMetrics};
use crate::tls::{PartnerFiles, PartnerTls, ReloadOutcome, TlsError, TlsFiles, TlsMaterial};
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
    /// The audit trail every route's sessions and engine write to.
    pub(crate) audit: AuditLog,
}

/// A route's configuration with everything that can fail already done: its TLS material
/// loaded and, when its address is new, its listener bound.
pub(crate) struct RouteSpec {
    /// `routes[N]`, for errors of later TLS polls.
    pub(crate) key: String,
    pub(crate) cfg: RouteConfig,
    /// The listener's TLS material (`None` on a plain listener).
    pub(crate) material: Option<TlsMaterial>,
    /// The partner's (`upstream.tls`).
    pub(crate) partner: Option<PartnerTls>,
    /// A listener on a new address, replacing the route's current one.
    pub(crate) listener: Option<TcpListener>,
    /// `audit.messages`.
    pub(crate) audit_messages: bool,
}

impl RouteSpec {
    /// Route `index` of a configuration with its TLS material loaded; errors are named
    /// `routes[N].…` by the caller.
    pub(crate) fn load(
        index: usize,
        cfg: &RouteConfig,
        listener: Option<TcpListener>,
        audit_messages: bool,
    ) -> Result<Self, TlsError> {
        let material = cfg.tls.as_ref().map(TlsMaterial::load).transpose()?;
        let partner = cfg
            .upstream
            .tls
            .as_ref()
            .map(PartnerTls::load)
            .transpose()?;
        Ok(RouteSpec {
            key: format!("routes[{index}]"),
            cfg: cfg.clone(),
            material,
            partner,
            listener,
            audit_messages,
        })
    }
}

/// What a route's task is asked to do.
pub(crate) enum Command {
    /// Serve this configuration from now on; answers once it is published.
    Apply(Box<RouteSpec>, oneshot::Sender<()>),
    /// Compare the TLS files with the material in service, retrying content refused before
    /// (SIGHUP with a configuration file that could not be reloaded).
    ReloadTls,
    /// The route left the configuration: stop accepting (answers once its listener is
    /// closed), drain its sessions, and end the route's task.
    Remove(oneshot::Sender<()>),
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
    /// The listener's TLS files (none on a plain listener).
    tls: Option<Box<TlsFiles>>,
    /// The partner's TLS files (`upstream.tls`).
    partner: Option<Box<PartnerFiles>>,
    metrics: RouteMetrics,
    /// The accept loop in service and, through child tokens, the sessions it accepted.
    listening: CancellationToken,
    /// The accept loop's task: awaited when it stops, so that its address is free when a
    /// reload that moved or removed the route returns.
    accepting: Option<tokio::task::JoinHandle<()>>,
    /// The engine's maintenance (idle reaping, health checks).
    maintaining: CancellationToken,
}

/// Starts route `spec` (whose listener is bound) and returns its handle.
pub(crate) fn start(spec: RouteSpec, shared: &Arc<Shared>) -> Option<RouteHandle> {
    let listener = spec.listener?;
    let (key, cfg, material, partner) = (spec.key, spec.cfg, spec.material, spec.partner);
    let audit_messages = spec.audit_messages;
    let addr = listener.local_addr().unwrap_or(cfg.listen);
    let metrics = shared
        .metrics
        .route(&cfg.name, crate::metrics::RouteShape::of(&cfg));
    let tls = cfg
        .tls
        .clone()
        .zip(material.as_ref())
        .map(|(tls_cfg, m)| Box::new(TlsFiles::new(key.clone(), tls_cfg, m, metrics.clone())));
    let partner_files = cfg
        .upstream
        .tls
        .clone()
        .zip(partner.as_ref())
        .map(|(c, m)| Box::new(PartnerFiles::new(key.clone(), c, m, metrics.clone())));
    let upstream = Arc::new(Upstream::new(
        cfg.upstream.clone(),
        shared.threads,
        max_ack_bytes(cfg.validation.max_message_bytes),
        metrics.clone(),
        partner.map(Arc::new),
        shared.audit.clone(),
    ));
    let ctx = RouteContext::new(
        cfg,
        material.as_ref().map(ListenerTls::of),
        upstream.clone(),
        metrics.clone(),
        (shared.audit.clone(), audit_messages),
        None,
    );
    let (tx, _) = watch::channel(Arc::new(ctx));
    let mut route = Route {
        name: metrics.route.clone(),
        ctx: tx,
        tls,
        partner: partner_files,
        metrics,
        listening: shared.stop.child_token(),
        accepting: None,
        maintaining: shared.stop.child_token(),
    };
    route.maintain(upstream, shared);
    route.listen(listener, addr, shared);
    let (commands, rx) = mpsc::channel(4);
    shared.background.spawn(route.run(rx, shared.clone()));
    Some(RouteHandle { addr, commands })
}

impl Route {
    /// Polls the listener's and the partner's TLS files, each every `reload_interval`, and
    /// carries out commands, until shutdown or until the route is removed (its handle
    /// dropped).
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, shared: Arc<Shared>) {
        let mut every = self.poll_interval();
        let mut tick = poll_every(every);
        loop {
            tokio::select! {
                // First: at shutdown nothing else is done, and the route is not "removed".
                biased;
                _ = shared.stop.cancelled() => return,
                _ = tick.tick() => self.poll_tls(false, &shared),
                command = commands.recv() => match command {
                    // Boxed, as is `apply`: their futures are several KiB that every
                    // route's task would otherwise carry for its whole life.
                    None => return Box::pin(self.remove(&shared)).await,
                    Some(Command::Remove(done)) => {
                        Box::pin(self.remove(&shared)).await;
                        let _ = done.send(());
                        return;
                    }
                    Some(Command::ReloadTls) => self.poll_tls(true, &shared),
                    Some(Command::Apply(spec, done)) => {
                        Box::pin(self.apply(*spec, &shared)).await;
                        let _ = done.send(());
                    }
                },
            }
            // A new timer only when a reload changed an interval.
            if self.poll_interval() != every {
                every = self.poll_interval();
                tick = poll_every(every);
            }
        }
    }

    /// How often the TLS files are polled: the shorter of the listener's and the partner's
    /// `reload_interval` (polling the other's files a little more often costs a few reads).
    fn poll_interval(&self) -> Option<Duration> {
        let listener = self.tls.as_ref().map(|t| t.config().policy.reload_interval);
        let partner = self
            .partner
            .as_ref()
            .map(|p| p.config().policy.reload_interval);
        listener.into_iter().chain(partner).min()
    }

    /// Puts a reloaded configuration in service. The engine's pool is kept when its targets
    /// and limit are; otherwise a new one replaces it and the old one closes its connections
    /// as their exchanges end. A new listener replaces the old one, whose sessions drain.
    async fn apply(&mut self, spec: RouteSpec, shared: &Arc<Shared>) {
        let current = self.ctx.borrow().clone();
        let RouteSpec {
            key,
            cfg,
            material,
            partner,
            listener,
            audit_messages,
        } = spec;
        let partner = self.take_partner(&key, &cfg, partner, &current);
        let upstream = self.next_upstream(&cfg, partner, &current, shared);
        let tls = match (cfg.tls.clone(), material) {
            (Some(tls_cfg), Some(m)) => match &mut self.tls {
                Some(files) => match files.replace(key, tls_cfg, m) {
                    Some(m) => Some(ListenerTls::of(&m)),
                    None => current.tls.clone(),
                },
                None => {
                    let tls = ListenerTls::of(&m);
                    let files = TlsFiles::new(key, tls_cfg, &m, self.metrics.clone());
                    self.tls = Some(Box::new(files));
                    Some(tls)
                }
            },
            _ => {
                self.tls = None;
                None
            }
        };
        let ctx = RouteContext::new(
            cfg,
            tls,
            upstream,
            self.metrics.clone(),
            (shared.audit.clone(), audit_messages),
            Some(&current),
        );
        self.metrics.reshape(
            Some(crate::metrics::RouteShape::of(&current.cfg)),
            crate::metrics::RouteShape::of(&ctx.cfg),
        );
        let became_plain = ctx.tls.is_none() && current.tls.is_some();
        self.ctx.send_replace(Arc::new(ctx));
        if became_plain && listener.is_none() {
            // Same address, now plain: warned as at start (a new listener warns in `listen`).
            let listen = self.ctx.borrow().cfg.listen;
            warn_if_plain_exposed(&self.name, listen);
        }
        if let Some(listener) = listener {
            let addr = listener
                .local_addr()
                .unwrap_or(self.ctx.borrow().cfg.listen);
            self.stop_accepting().await;
            self.listening = shared.stop.child_token();
            self.listen(listener, addr, shared);
        }
    }

    /// Stops the accept loop (its sessions drain) and waits until its listener is closed.
    async fn stop_accepting(&mut self) {
        self.listening.cancel();
        if let Some(task) = self.accepting.take() {
            let _ = task.await;
        }
    }

    /// The partner material a reload brings: `None` without `upstream.tls`, the current
    /// material when the files and settings are unchanged.
    fn take_partner(
        &mut self,
        key: &str,
        cfg: &RouteConfig,
        loaded: Option<PartnerTls>,
        current: &RouteContext,
    ) -> Option<Arc<PartnerTls>> {
        let (Some(section), Some(loaded)) = (cfg.upstream.tls.clone(), loaded) else {
            self.partner = None;
            return None;
        };
        match &mut self.partner {
            Some(files) => match files.replace(key.to_string(), section, loaded) {
                Some(new) => Some(Arc::new(new)),
                None => current.upstream.partner(),
            },
            None => {
                self.partner = Some(Box::new(PartnerFiles::new(
                    key.to_string(),
                    section,
                    &loaded,
                    self.metrics.clone(),
                )));
                Some(Arc::new(loaded))
            }
        }
    }

    /// The engine for `cfg`: the current one when nothing of it changed, the current pool
    /// with other settings or material, or a new pool (the old one retired).
    fn next_upstream(
        &mut self,
        cfg: &RouteConfig,
        partner: Option<Arc<PartnerTls>>,
        current: &RouteContext,
        shared: &Arc<Shared>,
    ) -> Arc<Upstream> {
        let max_ack = max_ack_bytes(cfg.validation.max_message_bytes);
        let old = &current.upstream;
        let same_partner = match (&partner, old.partner()) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, &b),
            (None, None) => true,
            _ => false,
        };
        let upstream = if cfg.upstream == current.cfg.upstream
            && same_partner
            && cfg.validation.max_message_bytes == current.cfg.validation.max_message_bytes
        {
            old.clone()
        } else if old.keeps_pool(&cfg.upstream) {
            Arc::new(old.reconfigured(cfg.upstream.clone(), max_ack, partner))
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
                partner,
                shared.audit.clone(),
            ))
        };
        if !Arc::ptr_eq(&upstream, old) {
            self.maintaining.cancel();
            self.maintaining = shared.stop.child_token();
            self.maintain(upstream.clone(), shared);
        }
        upstream
    }

    /// A poll of the route's TLS files, the listener's and the partner's (or a SIGHUP, `force`,
    /// which also retries content refused before). New listener material goes to new
    /// handshakes; new partner material retires the pool ([`Upstream::reconfigured`]).
    fn poll_tls(&mut self, force: bool, shared: &Arc<Shared>) {
        let listener = self.tls.as_mut().map(|w| w.reload(force));
        let partner = self.partner.as_mut().map(|w| w.reload(force));
        let current = self.ctx.borrow().clone();
        let mut next = RouteContext::clone(&current);
        let mut changed = false;
        if let Some(ReloadOutcome::Reloaded(material)) = listener {
            next.tls = Some(ListenerTls::of(&material));
            changed = true;
        }
        if let Some(ReloadOutcome::Reloaded(material)) = partner {
            let upstream = Arc::new(current.upstream.reconfigured(
                current.cfg.upstream.clone(),
                max_ack_bytes(current.cfg.validation.max_message_bytes),
                Some(Arc::new(material)),
            ));
            self.maintaining.cancel();
            self.maintaining = shared.stop.child_token();
            self.maintain(upstream.clone(), shared);
            next.upstream = upstream;
            changed = true;
        }
        if changed {
            self.publish(next);
        } else if force && (self.tls.is_some() || self.partner.is_some()) {
            tracing::info!(route = %self.name, "SIGHUP: TLS material unchanged");
        }
    }

    fn publish(&self, ctx: RouteContext) {
        self.ctx.send_replace(Arc::new(ctx));
    }

    /// The route left the configuration: it stops accepting, its sessions drain as at
    /// shutdown, its engine's idle connections close and its series leave `/metrics`.
    async fn remove(mut self, shared: &Shared) {
        if shared.stop.is_cancelled() {
            tracing::info!(route = %self.name, "shutting down: route stops accepting; draining its sessions");
        } else {
            tracing::info!(route = %self.name, "route removed from the configuration; draining its sessions");
        }
        self.stop_accepting().await;
        self.maintaining.cancel();
        self.ctx.borrow().upstream.retire();
        shared.admin.set_route(&self.name, None);
        shared.metrics.remove_route(&self.name);
    }

    fn maintain(&mut self, upstream: Arc<Upstream>, shared: &Shared) {
        shared
            .background
            .spawn(upstream.maintain(self.maintaining.clone()));
    }

    fn listen(&mut self, listener: TcpListener, addr: SocketAddr, shared: &Shared) {
        let view = RouteView {
            name: self.name.clone(),
            addr,
            ctx: self.ctx.subscribe(),
        };
        shared.admin.set_route(&self.name, Some(view));
        let ctx = self.ctx.borrow().clone();
        if ctx.tls.is_none() {
            warn_if_plain_exposed(&self.name, addr);
        }
        tracing::info!(
            route = %self.name,
            listen = %addr,
            upstream = %ctx.cfg.upstream.targets.join(","),
            validation = %format!("{:?}", ctx.validator.mode()).to_lowercase(),
            "route listening"
        );
        self.accepting = Some(shared.background.spawn(listener::serve(
            listener,
            self.ctx.subscribe(),
            shared.sessions.clone(),
            self.listening.clone(),
            shared.cores.clone(),
        )));
    }
}

/// A plain listener (`plaintext: true`) reachable from beyond this host deserves a warning,
/// at start and when a reload makes a route plain.
fn warn_if_plain_exposed(route: &str, addr: SocketAddr) {
    if !addr.ip().is_loopback() {
        tracing::warn!(route = %route, listen = %addr, "plain listener (plaintext: true) on an address that is not loopback: anyone who can reach it can send through this route");
    }
}

/// The TLS poll's timer; its first tick is one interval away (start-up loaded the files).
/// Without files to poll, it ticks hourly and the poll finds nothing to do.
fn poll_every(every: Option<Duration>) -> tokio::time::Interval {
    let every = every.unwrap_or(Duration::from_secs(3600));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}
