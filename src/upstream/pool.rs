//! The route's pool of upstream connections, shared by all its sessions.
//!
//! An exchange leases one connection (an idle one that still works, or a new one) and gives it
//! back when the ACK is in. A semaphore with `max_connections` permits bounds the exchanges in
//! flight; since a new connection is only opened when no idle one to the chosen target is
//! left, and an idle one elsewhere is closed first when the limit is reached, the connections
//! open never exceed `max_connections` either. Tokio's semaphore is fair, so waiting exchanges
//! are served first-in first-out.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::conn::UpstreamConn;
use super::health::Target;

/// An open connection owned by the pool, busy or idle. The busy/idle gauges are computed when
/// `/metrics` is scraped ([`Pool::refresh_gauges`]), not kept up to date per exchange: four
/// updates of counters shared by every core, on every exchange, for a figure read every 15 s.
pub(super) struct PooledConn {
    pub(super) conn: UpstreamConn,
    pub(super) target: Arc<Target>,
    idle_since: Instant,
    /// The session thread whose runtime drives its socket ([`crate::cores`]).
    home: usize,
}

impl PooledConn {
    pub(super) fn new(conn: UpstreamConn, target: Arc<Target>) -> Self {
        target.pooled.fetch_add(1, Ordering::AcqRel);
        Self {
            conn,
            target,
            idle_since: Instant::now(),
            home: crate::cores::current(),
        }
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        self.target.pooled.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Idle connections and the exchange limit.
pub(super) struct Pool {
    idle: Mutex<Vec<PooledConn>>,
    /// `None`: no limit.
    limit: Option<Semaphore>,
    max: usize,
}

impl Pool {
    pub(super) fn new(max_connections: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            limit: (max_connections > 0).then(|| Semaphore::new(max_connections)),
            max: max_connections,
        }
    }

    /// The exchange limit, if there is one. Tokio's semaphore is fair: a permit given back
    /// goes to the longest waiting exchange, and `try_acquire` cannot jump the queue.
    pub(super) fn limit(&self) -> Option<&Semaphore> {
        self.limit.as_ref()
    }

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

    /// Before opening a connection: when the pool is at its limit, closes the idle connection
    /// that waited longest (it goes to another target, or it would have been taken).
    pub(super) fn make_room(&self) {
        if self.max == 0 {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        // Exchanges holding a permit, this one included (it has no connection yet).
        let in_flight = self
            .limit
            .as_ref()
            .map_or(0, |s| self.max - s.available_permits());
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

    /// Returns a connection after a successful exchange.
    pub(super) fn put_idle(&self, mut c: PooledConn) {
        c.idle_since = Instant::now();
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(c);
        }
    }

    /// Sets each target's busy and idle gauges from the pool as it is now.
    pub(super) fn refresh_gauges(&self, targets: &[Arc<Target>]) {
        let Ok(idle) = self.idle.lock() else {
            return;
        };
        for t in targets {
            let waiting = idle.iter().filter(|c| Arc::ptr_eq(&c.target, t)).count();
            let open = t.pooled.load(Ordering::Acquire);
            t.metrics.idle.set(waiting as i64);
            t.metrics.busy.set(open.saturating_sub(waiting) as i64);
        }
    }

    /// Closes idle connections older than `max_idle`.
    pub(super) fn reap(&self, max_idle: std::time::Duration) {
        let now = Instant::now();
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|c| now.duration_since(c.idle_since) < max_idle);
        }
    }
}
