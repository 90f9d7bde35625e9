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

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::conn::UpstreamConn;
use super::health::Target;

/// An open connection owned by the pool, busy or idle; the gauges follow it.
pub(super) struct PooledConn {
    pub(super) conn: UpstreamConn,
    pub(super) target: Arc<Target>,
    busy: bool,
    idle_since: Instant,
}

impl PooledConn {
    pub(super) fn new(conn: UpstreamConn, target: Arc<Target>) -> Self {
        target.pooled.fetch_add(1, Ordering::AcqRel);
        target.metrics.busy.inc();
        Self {
            conn,
            target,
            busy: true,
            idle_since: Instant::now(),
        }
    }

    fn set_busy(&mut self, busy: bool) {
        if self.busy == busy {
            return;
        }
        let m = &self.target.metrics;
        if busy {
            m.idle.dec();
            m.busy.inc();
        } else {
            m.busy.dec();
            m.idle.inc();
            self.idle_since = Instant::now();
        }
        self.busy = busy;
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        self.target.pooled.fetch_sub(1, Ordering::AcqRel);
        if self.busy {
            self.target.metrics.busy.dec();
        } else {
            self.target.metrics.idle.dec();
        }
    }
}

/// Idle connections and the exchange limit.
pub(super) struct Pool {
    idle: Mutex<Vec<PooledConn>>,
    /// `None`: no limit.
    limit: Option<Arc<Semaphore>>,
    max: usize,
}

impl Pool {
    pub(super) fn new(max_connections: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            limit: (max_connections > 0).then(|| Arc::new(Semaphore::new(max_connections))),
            max: max_connections,
        }
    }

    /// Waits (in arrival order) for the right to run one exchange.
    pub(super) async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        match &self.limit {
            // The semaphore is never closed, so acquiring only ends with a permit.
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        }
    }

    /// Whether a permit is free right now (so an exchange will not queue).
    pub(super) fn would_wait(&self) -> bool {
        self.limit
            .as_ref()
            .is_some_and(|s| s.available_permits() == 0)
    }

    /// The most recently used idle connection to `target`, marked busy.
    pub(super) fn take_idle(&self, target: &Target) -> Option<PooledConn> {
        let mut idle = self.idle.lock().ok()?;
        let at = idle
            .iter()
            .rposition(|c| std::ptr::eq(Arc::as_ptr(&c.target), target))?;
        let mut c = idle.remove(at);
        c.set_busy(true);
        Some(c)
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
        c.set_busy(false);
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(c);
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
