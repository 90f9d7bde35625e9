//! The accept loop of one route: the limits applied before any TLS work, back-off on accept
//! errors, and spawning each session into the shared task tracker so shutdown can wait for them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Counter, Gate, Held, SourceGuard};
use crate::context::RouteContext;
use crate::cores::{Cores, Placement};
use crate::label::{Label, ProxyResult, Refusal, Side};
use crate::metrics::RouteMetrics;
use crate::proxy_protocol::{self, Source};
use crate::session;

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

/// Accepts connections until `shutdown`; never returns early on accept errors. Each accepted
/// connection is served under the route's context in service at that moment (`route`), and
/// its session follows the route's reloads.
///
/// Every limit is applied here, right after accept and before any TLS work, so a peer that
/// opens connections and never finishes a handshake costs a descriptor and nothing more:
/// `max_connections` (all sessions), `max_connections_per_source` (one IP address, sessions
/// and handshakes together) and `max_pending_handshakes` (all sources). They are read from the
/// configuration in service at each accept and count every connection of the route, whichever
/// listener took it, so a reload applies them at once.
///
/// With `cores`, each session runs on a session thread's runtime instead of this one.
pub async fn serve(
    listener: TcpListener,
    mut route: watch::Receiver<Arc<RouteContext>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    cores: Option<Arc<Cores>>,
) {
    let placements = cores.map(|c| [c.placement(false), c.placement(true)]);
    let mut backoff = Duration::from_millis(5);
    let name = route.borrow().cfg.name.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically EMFILE/ENFILE: sleeping lets sessions end and free descriptors.
                tracing::error!(side = Side::Proxy.label(), route = %name, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(5);
        let ctx = route.borrow_and_update().clone();
        ctx.metrics.connections_accepted.inc();
        let balancer = ctx.cfg.proxy_protocol.as_ref();
        if balancer.is_some_and(|b| !b.trusts(peer.ip())) {
            refused(&ctx, peer, ProxyResult::Untrusted.label());
            ctx.metrics.proxy_protocol(ProxyResult::Untrusted);
            drop(tcp);
            continue;
        }
        // Behind a balancer every connection comes from the balancer: the per-source limit
        // applies to the sender its header names, once the header is read.
        let admitted = admit(&ctx, peer, balancer.is_none());
        let (open, source, handshake) = match admitted {
            Ok(a) => a,
            Err(reason) => {
                refused(&ctx, peer, reason.label());
                drop(tcp);
                continue;
            }
        };
        let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
        let placement = placements.as_ref().map(|[one, spread]| {
            if ctx.upstream.spread_sessions() {
                spread
            } else {
                one
            }
        });
        let updates = route.clone();
        let shutdown = shutdown.clone();
        let run = async move |mut tcp: TcpStream| {
            let _open = open;
            let _active = ActiveGuard::new(&ctx.metrics);
            let (peer, _source) = match source {
                Some(source) => (peer, source),
                None => match behind_balancer(&ctx, &mut tcp, peer).await {
                    Some(sender) => sender,
                    None => return,
                },
            };
            session::serve(ctx, updates, tcp, peer, id, handshake, shutdown).await;
        };
        spawn(&tracker, placement, tcp, peer, run);
    }
    tracing::info!(route = %name, "listener stopped accepting");
}

/// Runs `run` on the accepted `tcp`: on this runtime, or on the session thread `placement`
/// picks, the socket moving to that thread's own I/O driver.
fn spawn<F, Fut>(
    tracker: &TaskTracker,
    placement: Option<&Placement>,
    tcp: TcpStream,
    peer: SocketAddr,
    run: F,
) where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(placement) = placement else {
        tracker.spawn(run(tcp));
        return;
    };
    match tcp.into_std() {
        Ok(std) => {
            tracker.spawn_on(
                async move {
                    match TcpStream::from_std(std) {
                        Ok(tcp) => run(tcp).await,
                        Err(e) => tracing::warn!(peer = %peer, error = %e, "connection not registered with its session thread"),
                    }
                },
                placement.next(),
            );
        }
        Err(e) => {
            tracing::warn!(peer = %peer, error = %e, "connection not handed to a session thread")
        }
    }
}

/// A connection closed before any TLS work, in one rate-limited line.
fn refused(ctx: &RouteContext, peer: SocketAddr, reason: &'static str) {
    if let Some(suppressed) = ctx.events.rejected.admit() {
        tracing::warn!(route = %ctx.cfg.name, peer = %peer, reason, suppressed, "connection refused at accept");
    }
}

/// Reads the PROXY header of a connection from the trusted `balancer` within
/// `header_timeout`, and takes the per-source place of the sender it names; `None` (counted
/// and logged) when the connection is refused.
async fn behind_balancer(
    ctx: &RouteContext,
    tcp: &mut TcpStream,
    balancer: SocketAddr,
) -> Option<(SocketAddr, SourceGuard)> {
    let timeout = ctx.cfg.proxy_protocol.as_ref()?.header_timeout;
    let read = tokio::time::timeout(timeout, proxy_protocol::read(tcp)).await;
    let (result, peer) = match read {
        Ok(Ok(Source::Proxied(sender))) => (ProxyResult::Proxied, Some(sender)),
        Ok(Ok(Source::Local)) => (ProxyResult::Local, Some(balancer)),
        Ok(Err(refusal)) => (refusal, None),
        Err(_) => (ProxyResult::Timeout, None),
    };
    ctx.metrics.proxy_protocol(result);
    let Some(peer) = peer else {
        refused(ctx, balancer, result.label());
        return None;
    };
    let max = ctx.cfg.limits.max_connections_per_source;
    let Some(source) = Gate::enter_source(&ctx.gate, peer.ip(), max) else {
        ctx.metrics.refused(Refusal::PerSource);
        refused(ctx, peer, Refusal::PerSource.label());
        return None;
    };
    Some((peer, source))
}

/// The places a new connection needs, or the limit it hit (counted). Without `per_source`
/// the per-source place is taken later (behind a balancer, for the sender its header names).
fn admit(
    ctx: &RouteContext,
    peer: SocketAddr,
    per_source: bool,
) -> Result<(Held, Option<SourceGuard>, Option<Held>), Refusal> {
    let (limits, gate) = (&ctx.cfg.limits, &ctx.gate);
    let refuse = |reason| {
        ctx.metrics.refused(reason);
        Err(reason)
    };
    let Some(open) = Held::take(gate, Counter::Open, limits.max_connections) else {
        return refuse(Refusal::Limit);
    };
    let source = match per_source {
        false => None,
        true => match Gate::enter_source(gate, peer.ip(), limits.max_connections_per_source) {
            Some(source) => Some(source),
            None => return refuse(Refusal::PerSource),
        },
    };
    let Some(handshake) = Held::take(gate, Counter::Pending, limits.max_pending_handshakes) else {
        return refuse(Refusal::PendingHandshakes);
    };
    Ok((open, source, Some(handshake)))
}

/// Keeps `connections_active` (and the process-wide count `memory` watches) right however the
/// session ends (including a panic).
// Only the gauge: a clone of all the route's metrics took 392 bytes of every connection's task.
struct ActiveGuard(IntGauge, crate::memory::OpenConnection);

impl ActiveGuard {
    fn new(m: &RouteMetrics) -> Self {
        m.connections_active.inc();
        Self(
            m.connections_active.clone(),
            crate::memory::OpenConnection::new(),
        )
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
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
