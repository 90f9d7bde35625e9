//! Admission: the places a route's limits count (open connections, connections still in their
//! handshake, connections per source address), taken at accept and given back on drop. The
//! listener takes them; a session holds them (its handshake place until the handshake ends).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The connections one route's limits count: open ones, those still in their handshake, and
/// open ones per source address. Kept across reloads, so a changed limit counts the
/// connections already open.
#[derive(Default)]
pub struct Gate {
    open: AtomicUsize,
    pending: AtomicUsize,
    sources: Mutex<HashMap<IpAddr, usize>>,
}

/// Which count of a [`Gate`] a [`Held`] place is in.
#[derive(Clone, Copy)]
pub(crate) enum Counter {
    /// Connections open (`limits.max_connections`).
    Open,
    /// Connections still in their TLS handshake (`limits.max_pending_handshakes`).
    Pending,
}

/// A place in one count of a [`Gate`], given back on drop.
pub struct Held {
    gate: Arc<Gate>,
    counter: Counter,
}

impl Gate {
    fn count(&self, c: Counter) -> &AtomicUsize {
        match c {
            Counter::Open => &self.open,
            Counter::Pending => &self.pending,
        }
    }

    /// Takes a place for `ip` (every source is counted, so that a limit set by a reload
    /// counts the connections already open), or `None` when it has `max` (0: no limit).
    pub(crate) fn enter_source(this: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceGuard> {
        // ::ffff:10.1.2.3 and 10.1.2.3 are one sender.
        let ip = ip.to_canonical();
        let mut open = this.sources.lock().ok()?;
        let n = open.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceGuard {
            gate: this.clone(),
            ip,
        })
    }
}

impl Held {
    /// A place in `counter`, or `None` when it holds `max` (0: no limit) already.
    pub(crate) fn take(gate: &Arc<Gate>, counter: Counter, max: usize) -> Option<Held> {
        let count = gate.count(counter);
        let mut n = count.load(Ordering::Relaxed);
        loop {
            if max > 0 && n >= max {
                return None;
            }
            match count.compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    return Some(Held {
                        gate: gate.clone(),
                        counter,
                    });
                }
                Err(now) => n = now,
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gate.count(self.counter).fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection's place in its source's count, given back on drop.
pub(crate) struct SourceGuard {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        if let Ok(mut open) = self.gate.sources.lock()
            && let Some(n) = open.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}
