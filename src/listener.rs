//! The accept loop of one route: connection limit, back-off on accept errors, and spawning each
//! session into the shared task tracker so shutdown can wait for them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::RouteMetrics;
use crate::session::{self, RouteContext};

/// Connection ids are process-wide so log lines of different routes never collide.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Binds `addr` with an accept queue of `backlog` connections. The standard library's 128 is
/// too short for a burst of reconnecting senders: overflowing SYNs are dropped and those senders
/// wait a second or more for their retransmission.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std and tokio do: a restarted proxy can bind while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Accepts connections until `shutdown`; never returns early on accept errors.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<RouteContext>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(ctx.cfg.limits.max_connections));
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically EMFILE/ENFILE: sleeping lets sessions end and free descriptors.
                tracing::error!(side = "proxy", route = %ctx.cfg.name, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(5);
        ctx.metrics.connections_accepted.inc();
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            ctx.metrics.connections_rejected.inc();
            tracing::warn!(route = %ctx.cfg.name, peer = %peer, limit = ctx.cfg.limits.max_connections, "max_connections reached; connection closed");
            drop(tcp);
            continue;
        };
        let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let _active = ActiveGuard::new(&ctx.metrics);
            session::serve(ctx.clone(), tcp, peer, id, shutdown).await;
        });
    }
    tracing::info!(route = %ctx.cfg.name, "listener stopped accepting");
}

/// Keeps `connections_active` right however the session ends (including a panic).
struct ActiveGuard(RouteMetrics);

impl ActiveGuard {
    fn new(m: &RouteMetrics) -> Self {
        m.connections_active.inc();
        Self(m.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.connections_active.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use super::*;

    /// How many connects to a listener that never accepts complete within 300 ms each.
    fn completed_connects(listener: &TcpListener, tries: usize) -> usize {
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        for _ in 0..tries {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
        held.len()
    }

    #[tokio::test]
    async fn the_backlog_holds_a_burst_that_overflows_the_default_of_128() {
        // A burst of 300 connects lands in the kernel's queue with listen_backlog 1024; with the
        // old fixed 128 the queue overflows and connects stall (the control half of the test).
        let big = bind("127.0.0.1:0".parse().unwrap(), 1024).unwrap();
        assert_eq!(completed_connects(&big, 300), 300);
        let small = bind("127.0.0.1:0".parse().unwrap(), 128).unwrap();
        let n = completed_connects(&small, 300);
        assert!((128..300).contains(&n), "{n}");
    }
}
