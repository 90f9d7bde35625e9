//! The legacy engine side of a route: a pool of connections shared by all its sessions
//! ([`pool`]), the health of each target ([`health`]), and one exchange over one connection
//! ([`conn`]). Sessions only call [`Upstream::exchange`] and [`Upstream::send_only`].

mod conn;
mod health;
mod pool;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use conn::{Ack, UpstreamConn, Wire};

use crate::audit::AuditLog;
use crate::config::{Balance, UpstreamConfig};
use crate::label::{FailureKind, Label, PartnerRefusal, Side};
use crate::metrics::{QueueMetrics, RouteMetrics};
use crate::timer::Deadline;
use crate::tls::PartnerTls;
pub use health::Health;
use health::{Probe, Target};
use pool::{Lease, Pool, PooledConn, Shard};

/// One target as `/status` shows it.
pub struct TargetState {
    /// `host:port` as configured.
    pub addr: Arc<str>,
    /// Up or down, why, since when.
    pub health: Health,
    /// Pooled connections carrying an exchange now.
    pub busy: usize,
    /// Pooled connections waiting for one.
    pub idle: usize,
}

/// How often idle pooled connections are checked for an engine or partner that closed them.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Why an exchange got no pooled connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueCause {
    /// None became free within `queue_timeout`.
    Timeout(Duration),
    /// The pool was closed (its route is stopping).
    Closed,
    /// The proxy is shutting down; the sender should resend to a replica that is up.
    Stopping,
}

impl std::fmt::Display for QueueCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueCause::Timeout(t) => write!(
                f,
                "no upstream connection free within queue_timeout ({t:?}); message not forwarded"
            ),
            QueueCause::Closed => f.write_str("upstream pool closed; message not forwarded"),
            QueueCause::Stopping => f.write_str(
                "proxy stopping while waiting for an upstream connection; message not forwarded",
            ),
        }
    }
}

/// An upstream failure; [`UpstreamError::kind`] is its metric label.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No target accepted a connection.
    #[error("no upstream target reachable ({0})")]
    Connect(String),
    /// The engine did not answer within `ack_timeout`.
    #[error("{target}: no ACK within {timeout:?}")]
    Timeout {
        /// The target that was silent.
        target: String,
        /// The configured `ack_timeout`.
        timeout: Duration,
    },
    /// The engine closed the connection (or it broke) before a whole ACK arrived.
    #[error("{target}: connection closed before the ACK ({detail})")]
    Closed {
        /// The target that closed.
        target: String,
        /// Whether any byte of an answer had arrived: a reused connection that closed
        /// before answering anything is retried once.
        answered: bool,
        /// What happened, for the log.
        detail: String,
    },
    /// The engine answered something other than the ACK of the message.
    #[error("{target}: {detail}")]
    Protocol {
        /// The target that answered wrongly.
        target: String,
        /// What was wrong (no MSA, wrong MSA-2, oversize answer).
        detail: &'static str,
    },
    /// No pooled connection became free within `queue_timeout` (or the proxy is stopping):
    /// the message was never forwarded.
    #[error("{0}")]
    Queue(QueueCause),
    /// The partner's TLS (`upstream.tls`) refused the connection: nothing was delivered.
    #[error("{target}: TLS: {} ({detail})", reason.words())]
    Tls {
        /// The target that refused.
        target: String,
        /// Why.
        reason: PartnerRefusal,
        /// What rustls said.
        detail: String,
    },
}

impl UpstreamError {
    /// The bounded `kind` label.
    pub fn kind(&self) -> FailureKind {
        match self {
            UpstreamError::Connect(_) => FailureKind::Connect,
            UpstreamError::Timeout { .. } => FailureKind::Timeout,
            UpstreamError::Closed { .. } => FailureKind::Closed,
            UpstreamError::Protocol { .. } => FailureKind::Protocol,
            UpstreamError::Queue(_) => FailureKind::Queue,
            UpstreamError::Tls { .. } => FailureKind::Tls,
        }
    }

    /// The target label, if one target is to blame.
    pub fn target(&self) -> Option<&str> {
        match self {
            UpstreamError::Connect(_) | UpstreamError::Queue(_) => None,
            UpstreamError::Timeout { target, .. }
            | UpstreamError::Closed { target, .. }
            | UpstreamError::Protocol { target, .. }
            | UpstreamError::Tls { target, .. } => Some(target),
        }
    }
}

/// One route's engine: its targets, their health and the shared connection pool.
pub struct Upstream {
    cfg: UpstreamConfig,
    /// `upstream.tls` material in service: new connections use it, open ones keep theirs.
    partner: Option<Arc<PartnerTls>>,
    max_ack_bytes: usize,
    metrics: RouteMetrics,
    targets: Vec<Arc<Target>>,
    /// Shared with the upstream a reload makes when it keeps targets and limit.
    pool: Arc<Pool>,
    /// Rotation of `balance: round_robin`.
    next: AtomicUsize,
    /// The pool generation of `partner`: connections this upstream opens carry it.
    generation: u64,
    /// Where the partner connections' audit records go.
    audit: AuditLog,
    /// The queue's series, with a limit (`max_connections`); without one nothing queues.
    queue: Option<QueueMetrics>,
}

impl Upstream {
    /// An upstream for `cfg`, whose sessions run on `threads` session threads; answers larger
    /// than `max_ack_bytes` are protocol failures.
    pub fn new(
        cfg: UpstreamConfig,
        threads: usize,
        max_ack_bytes: usize,
        metrics: RouteMetrics,
        partner: Option<Arc<PartnerTls>>,
        audit: AuditLog,
    ) -> Self {
        let targets = cfg
            .targets
            .iter()
            .map(|t| {
                if partner.is_some() {
                    metrics.partner(t);
                }
                let route: Arc<str> = metrics.route.as_str().into();
                Arc::new(Target::new(t, route, partner.is_some(), metrics.target(t)))
            })
            .collect();
        Self {
            partner,
            queue: (cfg.max_connections > 0).then(|| metrics.queue()),
            pool: Arc::new(Pool::new(cfg.max_connections, threads)),
            cfg,
            max_ack_bytes,
            metrics,
            targets,
            next: AtomicUsize::new(0),
            generation: 0,
            audit,
        }
    }

    /// The settings in service.
    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    /// The partner's TLS material in service (`upstream.tls`).
    pub fn partner(&self) -> Option<Arc<PartnerTls>> {
        self.partner.clone()
    }

    /// Whether a reload to `cfg` keeps this pool (its open connections and the targets'
    /// health): the same targets and the same limit.
    pub fn keeps_pool(&self, cfg: &UpstreamConfig) -> bool {
        self.cfg.targets == cfg.targets && self.cfg.max_connections == cfg.max_connections
    }

    /// This upstream with other settings (timeouts, balance, health checks), sharing its pool
    /// and targets ([`Upstream::keeps_pool`]). When `partner` is other material than this
    /// upstream's (new files, CRLs, `ca`, `allowed_servers`, …), the pool's connections are
    /// retired ([`Pool::renew`]): none verified under the old material carries another
    /// message, as a revoked sender's session ends after its exchange.
    pub fn reconfigured(
        &self,
        cfg: UpstreamConfig,
        max_ack_bytes: usize,
        partner: Option<Arc<PartnerTls>>,
    ) -> Self {
        if partner.is_some() {
            for t in &cfg.targets {
                self.metrics.partner(t);
            }
        }
        for t in &self.targets {
            t.set_partner(partner.is_some());
        }
        let same_partner = match (&partner, &self.partner) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let generation = if same_partner {
            self.generation
        } else {
            let (generation, idle_closed) = self.pool.renew();
            let busy = self
                .targets
                .iter()
                .map(|t| t.pooled.load(Ordering::Acquire))
                .sum::<usize>();
            tracing::info!(route = %self.metrics.route, idle_closed, busy_closing = busy, "upstream TLS material or settings changed: pooled connections retired; the next exchange handshakes under the new material");
            self.audit.upstream_retired(
                &self.metrics.route,
                "partner_tls_changed",
                idle_closed,
                busy,
            );
            generation
        };
        Self {
            partner,
            cfg,
            max_ack_bytes,
            metrics: self.metrics.clone(),
            targets: self.targets.clone(),
            pool: self.pool.clone(),
            next: AtomicUsize::new(0),
            generation,
            audit: self.audit.clone(),
            queue: self.queue.clone(),
        }
    }

    /// A reload replaced this upstream: its idle connections are closed now, and each busy
    /// one when its exchange ends, so the engine never sees the old pool linger.
    pub fn retire(&self) {
        self.pool.retire();
    }

    /// Whether the route's sessions may be spread over the session threads; if not, they all
    /// run on one, where the few pooled connections pass between them cheaply.
    pub fn spread_sessions(&self) -> bool {
        self.pool.spread()
    }

    /// Brings the pool's busy/idle gauges up to date (before a scrape).
    pub fn refresh_gauges(&self) {
        self.pool.refresh_gauges(&self.targets);
    }

    /// Each target's health and pooled connections, for `/status`.
    pub fn target_states(&self) -> Vec<TargetState> {
        let connections = self.pool.connections(&self.targets);
        self.targets
            .iter()
            .zip(connections)
            .map(|(t, (busy, idle))| TargetState {
                addr: t.addr.clone(),
                health: t.health(),
                busy,
                idle,
            })
            .collect()
    }

    /// Exchanges waiting for a pooled connection now.
    pub fn queued(&self) -> i64 {
        self.queue.as_ref().map_or(0, |q| q.waiting.get())
    }

    /// Whether any target is up (for `admin.ready_requires_upstream`).
    pub fn any_up(&self) -> bool {
        self.targets.iter().any(|t| t.is_up())
    }

    /// Forwards `msg` over a pooled connection and returns its ACK (MSA-2 = `control_id`).
    /// A reused connection that closes without a single answer byte is the engine having
    /// dropped it: the message is retried once on another connection.
    /// `queue_timer` times a wait for a pooled connection (one per session, kept across its
    /// exchanges).
    pub async fn exchange(
        &self,
        msg: &[u8],
        control_id: &[u8],
        shutdown: &CancellationToken,
        queue_timer: &mut Deadline,
    ) -> Result<Ack, UpstreamError> {
        let lease = self.lease(shutdown, queue_timer).await?;
        let shard = lease.shard;
        let (mut c, reused) = self.connection(shard, true).await?;
        let timeout = self.cfg.ack_timeout;
        let mut result = c.conn.exchange(msg, control_id, timeout).await;
        if reused
            && matches!(
                result,
                Err(UpstreamError::Closed {
                    answered: false,
                    ..
                })
            )
        {
            tracing::debug!(side = Side::Upstream.label(), engine = %c.target.addr, "reused upstream connection was closed; retrying on another");
            drop(c);
            // On a new connection: when the engine closed one pooled connection, it may well
            // have closed the others too (a restart), and only one retry is allowed.
            c = self.connection(shard, false).await?.0;
            result = c.conn.exchange(msg, control_id, timeout).await;
        }
        match &result {
            Ok(_) => {
                // A completed exchange is the best health check there is.
                c.target.mark_up();
                self.audit_accepted(&mut c);
                self.give_back(shard, c);
            }
            Err(UpstreamError::Tls { reason, .. }) => {
                self.metrics.partner_refused(&c.target.addr, *reason);
                self.metrics
                    .upstream_failed(&c.target.addr, FailureKind::Tls);
                c.target.mark_down(reason.words());
            }
            Err(_) => {}
        }
        drop(lease);
        if self.cfg.max_connections == 1 && self.queued() > 0 {
            // A single-connection engine is the bottleneck: let the exchange waiting for the
            // connection just given back run before this task spends its turn relaying the ACK.
            // (With a larger pool the CPU is the bottleneck, and the extra turn costs more than
            // it saves.)
            tokio::task::yield_now().await;
        }
        result
    }

    /// Writes `msg` (an acknowledgment from the sender), expecting no answer; returns the
    /// target it went to.
    pub async fn send_only(
        &self,
        msg: &[u8],
        shutdown: &CancellationToken,
        queue_timer: &mut Deadline,
    ) -> Result<Arc<str>, UpstreamError> {
        let lease = self.lease(shutdown, queue_timer).await?;
        let (mut c, _) = self.connection(lease.shard, true).await?;
        c.conn.send_only(msg, self.cfg.ack_timeout).await?;
        self.audit_accepted(&mut c);
        let target = c.target.addr.clone();
        self.give_back(lease.shard, c);
        Ok(target)
    }

    /// Writes the `upstream_session` record of a new partner connection once the partner has
    /// shown it accepts our certificate (it answered, or took a message): under TLS 1.3 our
    /// handshake completes before the partner has checked it, and a refused connection is no
    /// session.
    fn audit_accepted(&self, c: &mut PooledConn) {
        if c.audited {
            return;
        }
        c.audited = true;
        if let Some(tls) = c.conn.tls() {
            conn::audit_established(&self.audit, &self.metrics.route, &c.target.addr, tls);
        }
    }

    /// Keeps a connection after an exchange, unless it has carried `messages_per_connection`
    /// (engines that mishandle a second message on a connection get a fresh one each time).
    fn give_back(&self, shard: &Shard, c: PooledConn) {
        if !self.spent(&c) {
            self.pool.put_idle(shard, c);
        }
    }

    /// Whether `c` has carried its `messages_per_connection`.
    fn spent(&self, c: &PooledConn) -> bool {
        let limit = self.cfg.messages_per_connection;
        limit > 0 && c.conn.exchanges >= limit
    }

    /// Waits first-in first-out for the right to one exchange, within `queue_timeout`.
    async fn lease(
        &self,
        shutdown: &CancellationToken,
        queue_timer: &mut Deadline,
    ) -> Result<Lease<'_>, UpstreamError> {
        // A free connection: nothing to time or to watch.
        let shard = match self.pool.try_lease() {
            Ok(lease) => {
                if let Some(q) = &self.queue {
                    q.seconds.observe(0.0);
                }
                return Ok(lease);
            }
            Err(shard) => shard,
        };
        // Only a pool with a limit (and so with `queue`) has no free connection.
        let q = self.queue.as_ref();
        let started = Instant::now();
        q.inspect(|q| q.waiting.inc());
        let waited = tokio::select! {
            biased;
            lease = self.pool.wait(shard) => lease.ok_or(UpstreamError::Queue(QueueCause::Closed)),
            _ = queue_timer.until(started + self.cfg.queue_timeout) => {
                Err(UpstreamError::Queue(QueueCause::Timeout(self.cfg.queue_timeout)))
            }
            _ = shutdown.cancelled() => Err(UpstreamError::Queue(QueueCause::Stopping)),
        };
        q.inspect(|q| {
            q.waiting.dec();
            q.seconds.observe(started.elapsed().as_secs_f64());
        });
        waited
    }

    /// An idle connection to the preferred target that still works (with `reuse`), or a new one;
    /// the targets are tried in the order `balance` gives.
    async fn connection(
        &self,
        shard: &Shard,
        reuse: bool,
    ) -> Result<(PooledConn, bool), UpstreamError> {
        let (first, all_down) = self.first_candidate();
        let n = self.targets.len();
        let mut reasons = Vec::new();
        let mut refused = None;
        for k in 0..n {
            let target = &self.targets[(first + k) % n];
            if !all_down && !target.eligible() {
                continue;
            }
            if reuse && let Some(c) = self.idle_connection(shard, target) {
                return Ok((c, true));
            }
            shard.make_room();
            let partner = self.partner.as_deref();
            match target
                .connect(
                    self.cfg.connect_timeout,
                    !all_down,
                    partner,
                    self.cfg.tcp_keepalive,
                )
                .await
            {
                Ok(Some(wire)) => return Ok((self.pooled(wire, target), false)),
                Ok(None) => {
                    reasons.push(format!("{}: down, another connect in flight", target.addr))
                }
                Err(failure) => {
                    // Counted per target here; logged once by whoever handles the exchange's
                    // failure, and not at all when the next target takes over.
                    let kind = match failure.refused {
                        Some(reason) => {
                            self.metrics.partner_refused(&target.addr, reason);
                            refused = Some((target.addr.to_string(), reason));
                            FailureKind::Tls
                        }
                        None => {
                            refused = None;
                            FailureKind::Connect
                        }
                    };
                    self.metrics.upstream_failed(&target.addr, kind);
                    reasons.push(format!("{}: {}", target.addr, failure.reason));
                }
            }
        }
        // The last target tried refused at TLS: the failure is of kind `tls`.
        if let Some((target, reason)) = refused {
            return Err(UpstreamError::Tls {
                target,
                reason,
                detail: reasons.join("; "),
            });
        }
        Err(UpstreamError::Connect(reasons.join("; ")))
    }

    /// A new connection to `target`, owned by the pool.
    fn pooled(&self, wire: Wire, target: &Arc<Target>) -> PooledConn {
        let conn = UpstreamConn::new(
            wire,
            target.addr.clone(),
            self.max_ack_bytes,
            self.metrics.upstream_duplicate_acks.clone(),
            self.partner
                .as_ref()
                .is_some_and(|p| p.client_not_after.is_some()),
        );
        PooledConn::new(conn, target.clone(), self.generation)
    }

    /// The most recently used idle connection to `target` that can carry another exchange;
    /// the others found on the way are closed.
    fn idle_connection(&self, shard: &Shard, target: &Target) -> Option<PooledConn> {
        while let Some(mut c) = shard.take_idle(target) {
            if self.spent(&c) || c.generation != self.generation {
                // Pooled before a reload lowered messages_per_connection, or verified under
                // partner material this upstream does not use.
                continue;
            }
            match c.conn.check_idle() {
                Ok(()) => return Some(c),
                Err(e) if e.kind() == FailureKind::Protocol => self.discarded(target, &e),
                Err(e) => {
                    tracing::debug!(side = Side::Upstream.label(), engine = %target.addr, error = %e, "engine closed the idle connection; reconnecting");
                }
            }
        }
        None
    }

    /// An idle connection that the engine wrote to unasked is closed: counted and logged.
    fn discarded(&self, target: &Target, e: &UpstreamError) {
        self.metrics
            .upstream_failed(&target.addr, FailureKind::Protocol);
        tracing::warn!(route = %self.metrics.route, side = Side::Upstream.label(), engine = %target.addr, error = %e, "upstream connection discarded");
    }

    /// Where the walk over the targets starts, and whether all are down. A target may be used
    /// while it is up or past its back-off; the walk goes in configuration order (`failover`)
    /// or starts one eligible target further each time (`round_robin`). When none is eligible,
    /// all are down, and each may be tried by one exchange at a time (a single-target route
    /// must notice its engine's return at once, not after a back-off).
    fn first_candidate(&self) -> (usize, bool) {
        let all_down = !self.targets.iter().any(|t| t.eligible());
        if self.cfg.balance != Balance::RoundRobin {
            return (0, all_down);
        }
        let eligible = |t: &&Arc<Target>| all_down || t.eligible();
        let count = self.targets.iter().filter(eligible).count().max(1);
        let skip = self.next.fetch_add(1, Ordering::Relaxed) % count;
        let first = self
            .targets
            .iter()
            .enumerate()
            .filter(|(_, t)| eligible(t))
            .nth(skip)
            .map_or(0, |(i, _)| i);
        (first, all_down)
    }

    /// Closes idle connections past `idle_timeout` (except, on an egress route with health
    /// checks, the newest one to each partner: [`Pool::reap`]), watches idle connections every [`WATCH_EVERY`], and
    /// probes targets every `health_check_interval`, until `shutdown`. The first probe runs at
    /// once, so `upstream_up` is right from start-up; an idle connection the engine or
    /// partner closed or reset gets its target probed at once, so `upstream_up` follows a dead
    /// engine within about a second whether messages flow or not.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let every = (self.cfg.idle_timeout / 2).clamp(Duration::from_millis(100), WATCH_EVERY);
        let mut watch = tokio::time::interval(every);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probe = self.cfg.health_check_interval.map(tokio::time::interval);
        loop {
            // Nothing pooled, nothing to watch: a route without traffic waits instead of
            // waking every second (200 quiet routes: 200 wake-ups a second).
            let pooled = self.pool.has_idle();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.pool.until_idle(), if !pooled => watch.reset(),
                _ = watch.tick(), if pooled => {
                    // A partner's newest idle connection is its health signal while probes
                    // are on ([`Probe::Passed`]).
                    let keep_newest = self.partner.is_some() && probe.is_some();
                    self.pool.reap(self.cfg.idle_timeout, keep_newest);
                    let lost = self.pool.watch_idle(|t, e| self.discarded(t, e));
                    if probe.is_some() {
                        for target in lost {
                            self.spawn_probe(target);
                        }
                    }
                }
                _ = async { probe.as_mut()?.tick().await; Some(()) }, if probe.is_some() => {
                    for target in &self.targets {
                        self.spawn_probe(target.clone());
                    }
                }
            }
        }
    }

    /// Probes `target` on a task of its own: a black-holed target must not delay the others. A
    /// partner's probe connection is kept in the pool.
    fn spawn_probe(self: &Arc<Self>, target: Arc<Target>) {
        let up = self.clone();
        tokio::spawn(async move {
            let (timeout, partner) = (up.cfg.connect_timeout, up.partner.as_deref());
            match target.probe(timeout, partner, up.cfg.tcp_keepalive).await {
                Probe::Passed(Some(wire)) => {
                    let mut c = up.pooled(wire, &target);
                    up.audit_accepted(&mut c);
                    up.pool.adopt(c);
                }
                Probe::Failed(Some(reason)) => up.metrics.partner_refused(&target.addr, reason),
                Probe::Passed(None) | Probe::Failed(None) | Probe::Skipped => {}
            }
        });
    }
}
