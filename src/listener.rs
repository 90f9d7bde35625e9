//! The accept loop of one route: connection limit, back-off on accept errors, and spawning each
//! session into the shared task tracker so shutdown can wait for them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::RouteMetrics;
use crate::session::{self, RouteContext};

/// Connection ids are process-wide so log lines of different routes never collide.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

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
