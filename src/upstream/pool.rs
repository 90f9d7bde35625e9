//! The route's pool of upstream connections, shared by all its sessions.
//!
//! An exchange leases one connection (an idle one that still works, or a new one) and gives it
//! back when the ACK is in. A semaphore with `max_connections` permits bounds the exchanges in
//! flight; since a new connection is only opened when no idle one to the chosen target is
//! left, and an idle one elsewhere is closed first when the limit is reached, the connections
//! open never exceed `max_connections` either. Tokio's semaphore is fair, so waiting exchanges
//! are served first-in first-out.
//!
//! A pool large enough to give every session thread [`MIN_SHARE`] connections is split into
//! one share per thread ([`Shard`]), each with its own permits, idle list and queue, and the
//! route's sessions are spread over the threads. A connection then passes only between
//! sessions of one thread: handing it to a session of the other thread woke that thread
//! around every exchange (more CPU per message than the limit saved), and keeping all the
//! sessions on one thread capped the route at one core. An exchange that finds its own share busy
//! takes a free permit of another share if one has no queue; only when every share is busy
//! does it wait, first-in first-out among its thread's sessions. A share that gives a permit
//! back with nobody queued for it nudges the oldest exchange queued on another share, which
//! takes that permit: a share held by slow exchanges cannot keep a message waiting while the
//! route has a free connection. Smaller pools stay whole.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::UpstreamError;
use super::conn::UpstreamConn;
use super::health::Target;
use crate::label::FailureKind;

/// The fewest connections a session thread's share of a limited pool may have: with fewer,
/// one slow exchange would leave that thread's sessions queued while the others' connections
/// sit free.
pub(super) const MIN_SHARE: usize = 4;

/// An open connection owned by the pool, busy or idle. The busy/idle gauges are computed when
/// `/metrics` is scraped ([`Pool::refresh_gauges`]), not kept up to date per exchange: four
/// updates of counters shared by every core, on every exchange, for a figure read every 15 s.
pub(super) struct PooledConn {
    /// Boxed: a connection moves in and out of the pool on every exchange, and moving its
    /// few hundred bytes (streams, buffers, codec) cost more than the pool's lookup.
    pub(super) conn: Box<UpstreamConn>,
    pub(super) target: Arc<Target>,
    idle_since: Instant,
    /// The session thread whose runtime drives its socket ([`crate::cores`]).
    home: usize,
    /// The pool's generation it was opened (and its partner verified) under: one from before
    /// the last [`Pool::renew`] is closed instead of pooled again.
    pub(super) generation: u64,
    /// Whether its `upstream_session` record is written (a partner's, once it accepted us).
    pub(super) audited: bool,
}

impl PooledConn {
    /// `generation`: the pool's, when the upstream whose material opened it was made.
    pub(super) fn new(conn: UpstreamConn, target: Arc<Target>, generation: u64) -> Self {
        target.pooled.fetch_add(1, Ordering::AcqRel);
        Self {
            conn: Box::new(conn),
            target,
            idle_since: Instant::now(),
            home: crate::cores::current(),
            generation,
            audited: false,
        }
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        self.target.pooled.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The route's connections: one share, or one per session thread.
pub(super) struct Pool {
    shards: Vec<Shard>,
    /// Replaced by a reload: connections given back are closed instead of kept.
    retired: AtomicBool,
    /// Bumped when the partner's TLS material changes ([`Pool::renew`]): connections of an
    /// earlier generation were verified under material no longer in service.
    generation: AtomicU64,
    /// Set while the route's maintenance waits for the pool's first idle connection
    /// ([`Pool::until_idle`]) instead of ticking: a route without traffic costs no wake-ups.
    sleeping: AtomicBool,
    /// Wakes that wait.
    became_idle: Notify,
}

/// Idle connections and the exchange limit of one share of the pool.
pub(super) struct Shard {
    idle: Mutex<Vec<PooledConn>>,
    /// `None`: no limit.
    limit: Option<Semaphore>,
    max: usize,
    /// Exchanges queued for this share's permits.
    queued: AtomicUsize,
    /// Tells this share's oldest queued exchange that another share has a permit free.
    nudge: Notify,
}

/// The right to one exchange on a share of the pool (a permit of its limit, if it has one).
pub(super) struct Lease<'a> {
    pub(super) shard: &'a Shard,
    pool: &'a Pool,
    permit: Option<SemaphorePermit<'a>>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        drop(permit);
        // Nobody queued here: the permit would sit free while another share's exchanges
        // queue. Its oldest one is nudged to take it (at full speed every share has a queue,
        // so this costs one load per exchange).
        if self.pool.shards.len() > 1 && self.shard.queued.load(Ordering::Acquire) == 0 {
            let waiting =
                self.pool.shards.iter().find(|s| {
                    !std::ptr::eq(*s, self.shard) && s.queued.load(Ordering::Acquire) > 0
                });
            if let Some(other) = waiting {
                other.nudge.notify_one();
            }
        }
    }
}

/// Counts an exchange in its share's queue while it waits (also when the wait is abandoned).
struct Queued<'a>(&'a Shard);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    /// A pool of at most `max_connections` (0: no limit), split over `threads` session threads
    /// when each share gets at least [`MIN_SHARE`].
    pub(super) fn new(max_connections: usize, threads: usize) -> Self {
        let threads = threads.max(1);
        let n = if max_connections >= MIN_SHARE * threads {
            threads
        } else {
            1
        };
        let shards = (0..n)
            .map(|i| {
                // The remainder goes to the first shares: 9 over 2 threads is 5 and 4.
                let max = max_connections / n + usize::from(i < max_connections % n);
                Shard {
                    idle: Mutex::new(Vec::new()),
                    limit: (max > 0).then(|| Semaphore::new(max)),
                    max,
                    queued: AtomicUsize::new(0),
                    nudge: Notify::new(),
                }
            })
            .collect();
        Self {
            shards,
            retired: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            sleeping: AtomicBool::new(false),
            became_idle: Notify::new(),
        }
    }

    /// Whether any share holds an idle connection.
    pub(super) fn has_idle(&self) -> bool {
        self.shards
            .iter()
            .any(|s| s.idle.lock().is_ok_and(|i| !i.is_empty()))
    }

    /// Returns once the pool holds an idle connection (at once if it does).
    pub(super) async fn until_idle(&self) {
        loop {
            let woken = self.became_idle.notified();
            // Set before looking: a connection put back after the look sees the flag and
            // wakes this wait (SeqCst on both sides; the idle lists are read under their lock).
            self.sleeping.store(true, Ordering::SeqCst);
            if self.has_idle() {
                self.sleeping.store(false, Ordering::SeqCst);
                return;
            }
            woken.await;
        }
    }

    /// After a connection became idle: wakes [`Pool::until_idle`] if it waits. One load per
    /// exchange while it does not.
    fn idle_now(&self) {
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            self.became_idle.notify_one();
        }
    }

    /// The partner's TLS material changed: idle connections are closed now, busy ones when
    /// their exchange ends, and the next exchange handshakes under the new material. Returns
    /// the new generation and how many idle connections were closed.
    pub(super) fn renew(&self) -> (u64, usize) {
        // Bumped before the idle lists are emptied: a connection given back in between is
        // checked against the new generation under the same lock ([`Shard::put_idle`]).
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let mut closed = 0;
        for shard in &self.shards {
            if let Ok(mut idle) = shard.idle.lock() {
                closed += idle.len();
                idle.clear();
            }
        }
        (generation, closed)
    }

    /// Closes the idle connections and, from now on, every connection given back.
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        for shard in &self.shards {
            if let Ok(mut idle) = shard.idle.lock() {
                idle.clear();
            }
        }
    }

    /// Returns a connection after a successful exchange, unless the pool is retired or the
    /// connection is of an earlier generation (then it is closed).
    pub(super) fn put_idle(&self, shard: &Shard, c: PooledConn) {
        if !self.retired.load(Ordering::Acquire) {
            shard.put_idle(c, &self.generation);
            self.idle_now();
        }
    }

    /// Whether the route's sessions may run on every session thread: the pool has no limit or
    /// is split per thread. Otherwise they share one, so its connections pass between them
    /// without waking another thread.
    pub(super) fn spread(&self) -> bool {
        self.shards.len() > 1 || self.shards.iter().all(|s| s.limit.is_none())
    }

    /// A free lease: on this thread's share, else on another's that has a permit free and no
    /// queue. `Err` with this thread's share when every share is busy.
    pub(super) fn try_lease(&self) -> Result<Lease<'_>, &Shard> {
        let n = self.shards.len();
        let own = crate::cores::current() % n;
        for k in 0..n {
            let shard = &self.shards[(own + k) % n];
            let Some(limit) = &shard.limit else {
                return Ok(Lease {
                    shard,
                    pool: self,
                    permit: None,
                });
            };
            // Tokio's semaphore is fair: `try_acquire` cannot jump a share's queue.
            if let Ok(p) = limit.try_acquire() {
                return Ok(Lease {
                    shard,
                    pool: self,
                    permit: Some(p),
                });
            }
        }
        Err(&self.shards[own])
    }

    /// Waits first-in first-out in `own`'s queue (which has a limit: [`Pool::try_lease`]
    /// found every share busy), or until another share gives back a permit nobody queued for.
    pub(super) async fn wait<'a>(&'a self, own: &'a Shard) -> Option<Lease<'a>> {
        let limit = own.limit.as_ref()?;
        if self.shards.len() == 1 {
            // Nobody to nudge or be nudged by.
            let permit = limit.acquire().await.ok()?;
            return Some(Lease {
                shard: own,
                pool: self,
                permit: Some(permit),
            });
        }
        own.queued.fetch_add(1, Ordering::AcqRel);
        let _queued = Queued(own);
        let mut mine = std::pin::pin!(limit.acquire());
        loop {
            tokio::select! {
                biased;
                // The semaphore is never closed, so acquiring only ends with a permit.
                // A nudge that arrives with this permit is not lost: tokio hands a
                // notification whose `Notified` is dropped unreceived to the next waiter.
                p = &mut mine => {
                    return Some(Lease { shard: own, pool: self, permit: Some(p.ok()?) });
                }
                _ = own.nudge.notified() => {
                    // Still in this share's queue; the free permit may already be taken.
                    if let Ok(lease) = self.try_lease() {
                        return Some(lease);
                    }
                }
            }
        }
    }

    /// Each target's connections as (busy, idle), from the pool as it is now.
    pub(super) fn connections(&self, targets: &[Arc<Target>]) -> Vec<(usize, usize)> {
        let mut waiting = vec![0usize; targets.len()];
        for shard in &self.shards {
            let Ok(idle) = shard.idle.lock() else {
                continue;
            };
            for c in idle.iter() {
                if let Some(i) = targets.iter().position(|t| Arc::ptr_eq(&c.target, t)) {
                    waiting[i] += 1;
                }
            }
        }
        targets
            .iter()
            .zip(waiting)
            .map(|(t, idle)| {
                let open = t.pooled.load(Ordering::Acquire);
                (open.saturating_sub(idle), idle)
            })
            .collect()
    }

    /// Sets each target's busy and idle gauges from the pool as it is now.
    pub(super) fn refresh_gauges(&self, targets: &[Arc<Target>]) {
        for (t, (busy, idle)) in targets.iter().zip(self.connections(targets)) {
            t.metrics.idle.set(idle as i64);
            t.metrics.busy.set(busy as i64);
        }
    }

    /// Closes idle connections older than `max_idle`; with `keep_newest`, except the newest
    /// one to each target (on an egress route it is the partner's health signal, and a new
    /// one would be a new session in the partner's audit trail).
    pub(super) fn reap(&self, max_idle: std::time::Duration, keep_newest: bool) {
        let now = Instant::now();
        for shard in &self.shards {
            let Ok(mut idle) = shard.idle.lock() else {
                continue;
            };
            let mut kept: Vec<*const Target> = Vec::new();
            // Newest last: given back connections are pushed.
            for i in (0..idle.len()).rev() {
                let target = Arc::as_ptr(&idle[i].target);
                let newest = keep_newest && !kept.contains(&target);
                if newest {
                    kept.push(target);
                } else if now.duration_since(idle[i].idle_since) >= max_idle {
                    drop(idle.remove(i));
                }
            }
        }
    }

    /// Drops each idle connection that its engine or partner closed, reset, or wrote to
    /// unasked (a protocol failure, counted by `failed`); returns the targets that closed or
    /// reset one, for a probe now. Reading an idle socket that has nothing is a load of its
    /// readiness, not a system call.
    pub(super) fn watch_idle(&self, failed: impl Fn(&Target, &UpstreamError)) -> Vec<Arc<Target>> {
        let mut lost: Vec<Arc<Target>> = Vec::new();
        for shard in &self.shards {
            if let Ok(mut idle) = shard.idle.lock() {
                idle.retain_mut(|c| match c.conn.check_idle() {
                    Ok(()) => true,
                    Err(e) if e.kind() == FailureKind::Protocol => {
                        failed(&c.target, &e);
                        false
                    }
                    Err(e) => {
                        tracing::debug!(target_addr = %c.target.addr, error = %e, "idle upstream connection lost; checking its target now");
                        if !lost.iter().any(|t| Arc::ptr_eq(t, &c.target)) {
                            lost.push(c.target.clone());
                        }
                        false
                    }
                });
            }
        }
        lost
    }

    /// Takes a connection opened outside an exchange (a partner's probe) as idle, if its
    /// share has room under the limit and the pool is in service.
    pub(super) fn adopt(&self, c: PooledConn) {
        if self.retired.load(Ordering::Acquire) {
            return;
        }
        let shard = &self.shards[crate::cores::current() % self.shards.len()];
        let in_flight = shard
            .limit
            .as_ref()
            .map_or(0, |l| shard.max - l.available_permits());
        let room = shard.limit.is_none()
            || shard
                .idle
                .lock()
                .is_ok_and(|i| i.len() + in_flight < shard.max);
        if room {
            shard.put_idle(c, &self.generation);
            self.idle_now();
        }
    }
}

impl Shard {
    /// The most recently used idle connection to `target`.
    pub(super) fn take_idle(&self, target: &Target) -> Option<PooledConn> {
        let mut idle = self.idle.lock().ok()?;
        let to_target = |c: &PooledConn| std::ptr::eq(Arc::as_ptr(&c.target), target);
        // One whose socket this thread's runtime drives, if there is one: another thread's
        // would be woken through that thread.
        let here = crate::cores::current();
        let at = idle
            .iter()
            .rposition(|c| to_target(c) && c.home == here)
            .or_else(|| idle.iter().rposition(to_target))?;
        Some(idle.remove(at))
    }

    /// Before opening a connection: when the share is at its limit, closes the idle connection
    /// that waited longest (it goes to another target, or it would have been taken).
    pub(super) fn make_room(&self) {
        let Some(limit) = &self.limit else {
            return;
        };
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        // Exchanges holding a permit, this one included (it has no connection yet).
        let in_flight = self.max - limit.available_permits();
        if idle.len() + in_flight > self.max && !idle.is_empty() {
            let oldest = idle
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.idle_since)
                .map(|(i, _)| i);
            if let Some(i) = oldest {
                drop(idle.remove(i));
            }
        }
    }

    /// Returns a connection after a successful exchange, unless `generation` moved past
    /// its own (read under the idle list's lock, so [`Pool::renew`] cannot miss it).
    pub(super) fn put_idle(&self, mut c: PooledConn, generation: &AtomicU64) {
        c.idle_since = Instant::now();
        if let Ok(mut idle) = self.idle.lock()
            && c.generation == generation.load(Ordering::Acquire)
        {
            idle.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(p: &Pool) -> Vec<usize> {
        p.shards.iter().map(|s| s.max).collect()
    }

    #[test]
    fn a_pool_is_split_per_thread_only_when_every_share_gets_min_share() {
        assert_eq!(shares(&Pool::new(8, 2)), vec![4, 4]);
        assert_eq!(shares(&Pool::new(9, 2)), vec![5, 4]);
        assert_eq!(shares(&Pool::new(7, 2)), vec![7]);
        assert_eq!(shares(&Pool::new(1, 2)), vec![1]);
        assert_eq!(shares(&Pool::new(8, 1)), vec![8]);
        assert_eq!(shares(&Pool::new(16, 4)), vec![4, 4, 4, 4]);
        assert!(Pool::new(8, 2).spread());
        assert!(!Pool::new(7, 2).spread());
        assert!(!Pool::new(1, 1).spread());
        // No limit: one share, spread.
        assert_eq!(shares(&Pool::new(0, 2)), vec![0]);
        assert!(Pool::new(0, 2).spread());
    }
}
