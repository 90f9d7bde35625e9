//! The accept loop of one route: the limits applied before any TLS work, back-off on accept
//! errors, and spawning each session into the shared task tracker so shutdown can wait for them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cores::Placement;
use crate::label::{Label, ProxyResult, Refusal};
use crate::metrics::RouteMetrics;
use crate::proxy_protocol::{self, Source};
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
///
/// Every limit is applied here, right after accept and before any TLS work, so a peer that
/// opens connections and never finishes a handshake costs a descriptor and nothing more:
/// `max_connections` (all sessions), `max_connections_per_source` (one IP address, sessions
/// and handshakes together) and `max_pending_handshakes` (all sources).
///
/// With `placement`, each session runs on a session thread's runtime instead of this one.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<RouteContext>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    placement: Option<Placement>,
) {
    let limits = &ctx.cfg.limits;
    let total = Arc::new(Semaphore::new(limits.max_connections));
    let pending = (limits.max_pending_handshakes > 0)
        .then(|| Arc::new(Semaphore::new(limits.max_pending_handshakes)));
    let sources = Arc::new(Sources::new(limits.max_connections_per_source));
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
        let balancer = ctx.cfg.proxy_protocol.as_ref();
        if balancer.is_some_and(|b| !b.trusts(peer.ip())) {
            refused(&ctx, peer, ProxyResult::Untrusted.label());
            ctx.metrics.proxy_protocol(ProxyResult::Untrusted);
            drop(tcp);
            continue;
        }
        // Behind a balancer every connection comes from the balancer: the per-source limit
        // applies to the sender its header names, once the header is read.
        let per_source = balancer.is_none().then_some(&sources);
        let admitted = admit(&ctx, &total, pending.as_ref(), per_source, peer);
        let (permit, source, handshake) = match admitted {
            Ok(a) => a,
            Err(reason) => {
                refused(&ctx, peer, reason.label());
                drop(tcp);
                continue;
            }
        };
        let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let sources = sources.clone();
        let run = async move |mut tcp: TcpStream| {
            let _permit = permit;
            let _active = ActiveGuard::new(&ctx.metrics);
            let (peer, _source) = match source {
                Some(source) => (peer, source),
                None => match behind_balancer(&ctx, &mut tcp, peer, &sources).await {
                    Some(sender) => sender,
                    None => return,
                },
            };
            session::serve(ctx.clone(), tcp, peer, id, handshake, shutdown).await;
        };
        spawn(&tracker, placement.as_ref(), tcp, peer, run);
    }
    tracing::info!(route = %ctx.cfg.name, "listener stopped accepting");
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
    sources: &Arc<Sources>,
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
    let Some(source) = Sources::enter(sources, peer.ip()) else {
        ctx.metrics.refused(Refusal::PerSource);
        refused(ctx, peer, Refusal::PerSource.label());
        return None;
    };
    Some((peer, source))
}

/// The permits a new connection needs, or the limit it hit (counted). Without `sources` the
/// per-source place is taken later (behind a balancer, for the sender its header names).
#[allow(clippy::type_complexity)]
fn admit(
    ctx: &RouteContext,
    total: &Arc<Semaphore>,
    pending: Option<&Arc<Semaphore>>,
    sources: Option<&Arc<Sources>>,
    peer: SocketAddr,
) -> Result<
    (
        OwnedSemaphorePermit,
        Option<SourceGuard>,
        Option<OwnedSemaphorePermit>,
    ),
    Refusal,
> {
    let m = &ctx.metrics;
    let refuse = |reason| {
        m.refused(reason);
        Err(reason)
    };
    let Ok(permit) = total.clone().try_acquire_owned() else {
        return refuse(Refusal::Limit);
    };
    let source = match sources {
        None => None,
        Some(sources) => match Sources::enter(sources, peer.ip()) {
            Some(source) => Some(source),
            None => return refuse(Refusal::PerSource),
        },
    };
    let handshake = match pending {
        None => None,
        Some(p) => match p.clone().try_acquire_owned() {
            Ok(h) => Some(h),
            Err(_) => return refuse(Refusal::PendingHandshakes),
        },
    };
    Ok((permit, source, handshake))
}

/// Open connections per source address.
struct Sources {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`Sources`], given back on drop.
struct SourceGuard {
    sources: Arc<Sources>,
    ip: Option<IpAddr>,
}

impl Sources {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a place for `ip`, or `None` when it already has `max` connections.
    fn enter(this: &Arc<Self>, ip: IpAddr) -> Option<SourceGuard> {
        if this.max == 0 {
            return Some(SourceGuard {
                sources: this.clone(),
                ip: None,
            });
        }
        // ::ffff:10.1.2.3 and 10.1.2.3 are one sender.
        let ip = ip.to_canonical();
        let mut open = this.open.lock().ok()?;
        let n = open.entry(ip).or_insert(0);
        if *n >= this.max {
            return None;
        }
        *n += 1;
        Some(SourceGuard {
            sources: this.clone(),
            ip: Some(ip),
        })
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        if let Ok(mut open) = self.sources.open.lock()
            && let Some(n) = open.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }
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
