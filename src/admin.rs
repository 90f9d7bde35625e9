//! The admin HTTP server (hyper 1): `/metrics`, `/status`, `/healthz`, `/readyz`; and, with
//! `admin.health_listen`, a second plain listener serving only `/healthz` and `/readyz` (what
//! kubelet probes and balancer health checks can reach when the admin port asks for a client
//! certificate).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::context::RouteContext;
use crate::metrics::Metrics;
use crate::status::{self, ReloadStatus, RouteStatus, Status};
use crate::upstream::Upstream;

/// What the admin endpoints report; routes keep it current as they reload.
pub struct AdminState {
    /// Scraped on `/metrics`.
    pub metrics: Metrics,
    /// True once every listener is bound; false again while draining.
    pub ready: AtomicBool,
    /// Each route: its pool's gauges are read at scrape time, and `/status` shows it.
    routes: Mutex<Vec<RouteView>>,
    /// The last reload of the configuration file, for `/status`.
    last_reload: Mutex<Option<ReloadStatus>>,
    /// `admin.ready_requires_upstream`: `/readyz` needs a target up on every route.
    pub ready_requires_upstream: AtomicBool,
    /// The audit trail, whose dropped records `/metrics` reports.
    audit: AuditLog,
}

impl AdminState {
    /// Not ready yet, with no routes.
    pub fn new(metrics: Metrics, ready_requires_upstream: bool, audit: AuditLog) -> Self {
        Self {
            audit,
            metrics,
            ready: AtomicBool::new(false),
            routes: Mutex::new(Vec::new()),
            last_reload: Mutex::new(None),
            ready_requires_upstream: AtomicBool::new(ready_requires_upstream),
        }
    }

    /// Sets (or with `None` removes) route `name`: where it listens and the context its
    /// sessions use, followed as reloads publish new ones.
    pub fn set_route(&self, name: &str, view: Option<RouteView>) {
        let Ok(mut all) = self.routes.lock() else {
            return;
        };
        match (all.iter().position(|r| r.name == name), view) {
            (Some(i), Some(v)) => all[i] = v,
            (None, Some(v)) => all.push(v),
            (Some(i), None) => {
                all.remove(i);
            }
            (None, None) => {}
        }
    }

    /// Notes a reload of the configuration file: `Ok` applied, `Err` refused and why.
    pub fn reloaded(&self, result: Result<(), String>) {
        if let Ok(mut last) = self.last_reload.lock() {
            *last = Some(ReloadStatus {
                result: if result.is_ok() { "applied" } else { "refused" }.into(),
                at: status::rfc3339(SystemTime::now()),
                error: result.err(),
            });
        }
    }

    fn contexts(&self) -> Vec<(String, SocketAddr, Arc<RouteContext>)> {
        self.routes
            .lock()
            .map(|all| {
                all.iter()
                    .map(|r| (r.name.clone(), r.addr, r.ctx.borrow().clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.contexts()
            .into_iter()
            .map(|(_, _, ctx)| ctx.upstream.clone())
            .collect()
    }

    /// What `/status` shows now.
    pub fn status(&self) -> Status {
        Status {
            schema: status::SCHEMA.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            generated: status::rfc3339(SystemTime::now()),
            ready: self.is_ready(),
            last_reload: self.last_reload.lock().ok().and_then(|l| l.clone()),
            routes: self
                .contexts()
                .iter()
                .map(|(name, addr, ctx)| RouteStatus::of(name, *addr, ctx))
                .collect(),
        }
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && (!self.ready_requires_upstream.load(Ordering::Acquire)
                || self.upstreams().iter().all(|u| u.any_up()))
    }
}

/// A route as the admin endpoints see it.
pub struct RouteView {
    /// Its name.
    pub name: String,
    /// The address its listener is bound to.
    pub addr: SocketAddr,
    /// The context in service, as the route publishes it.
    pub ctx: watch::Receiver<Arc<RouteContext>>,
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// `/metrics`, `/status`, `/healthz`, `/readyz` (`admin.listen`).
    All,
    /// `/healthz` and `/readyz` only (`admin.health_listen`): no metrics without TLS.
    Health,
}

/// Serves admin requests until `shutdown`; returns the listener (a reload that keeps the
/// address serves on with other settings) and what lets open requests finish.
///
/// At most `max_connections` admin connections are open at once; more are closed at accept,
/// so a flood of scrapes cannot take the descriptors the MLLP side needs. With `tls`, each
/// connection completes a TLS handshake (mutual with a client CA) within 10 s first.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    endpoints: Endpoints,
    max_connections: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> (TcpListener, Draining) {
    let graceful = GracefulShutdown::new();
    let limit = Arc::new(Semaphore::new(max_connections));
    let acceptor = tls.map(TlsAcceptor::from);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::debug!("admin max_connections reached; connection closed");
            drop(tcp);
            continue;
        };
        let state = state.clone();
        let svc = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(&state, endpoints, &req)) }
        });
        let builder = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .clone();
        match &acceptor {
            None => {
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(tcp), svc));
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "admin connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                let accept = acceptor.accept(tcp);
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _permit = permit;
                    let tls = match tokio::time::timeout(Duration::from_secs(10), accept).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "admin TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = watcher.watch(builder.serve_connection(TokioIo::new(tls), svc));
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "admin connection ended with an error");
                    }
                });
            }
        }
    }
    (listener, Draining(graceful))
}

/// The admin connections still open when [`serve`] stopped.
pub struct Draining(GracefulShutdown);

impl Draining {
    /// Lets open requests finish, 5 s at most.
    pub async fn finish(self) {
        if tokio::time::timeout(Duration::from_secs(5), self.0.shutdown())
            .await
            .is_err()
        {
            tracing::debug!("admin connections still open after 5s; closing");
        }
    }
}

fn handle(
    state: &AdminState,
    endpoints: Endpoints,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/metrics" if endpoints == Endpoints::All => metrics(state, req),
        "/status" if endpoints == Endpoints::All => {
            let body = serde_json::to_vec_pretty(&state.status()).unwrap_or_default();
            let mut r = Response::new(Full::new(Bytes::from(body)));
            if let Ok(v) = "application/json".parse() {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/metrics`: the gauges read at scrape time brought up to date, then the registry, gzipped
/// for a client that accepts it (Prometheus asks for gzip; at 200 routes the text is about
/// ten times its compressed size).
fn metrics(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    for u in state.upstreams() {
        u.refresh_gauges();
    }
    state.metrics.audit_dropped(state.audit.records_dropped());
    let sinks = state.audit.syslog_stats();
    let sinks: Vec<_> = sinks
        .iter()
        .map(|s| crate::metrics::SinkFigures {
            name: &s.name,
            up: s.up,
            sent: s.sent,
            dropped: s.dropped,
            not_after: s.not_after,
        })
        .collect();
    state.metrics.audit_syslog(&sinks);
    let text = state.metrics.encode();
    let compressed = accepts_gzip(req.headers())
        .then(|| gzipped(text.as_bytes()))
        .flatten();
    let mut r = match compressed {
        Some(z) => {
            let mut r = Response::new(Full::new(Bytes::from(z)));
            r.headers_mut().insert(
                hyper::header::CONTENT_ENCODING,
                hyper::header::HeaderValue::from_static("gzip"),
            );
            r
        }
        None => Response::new(Full::new(Bytes::from(text))),
    };
    let headers = r.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    headers.insert(
        hyper::header::VARY,
        hyper::header::HeaderValue::from_static("Accept-Encoding"),
    );
    r
}

/// Whether `Accept-Encoding` accepts gzip: listed with a weight above zero, or not listed and
/// `*` is (RFC 9110, 12.5.3).
fn accepts_gzip(headers: &hyper::HeaderMap) -> bool {
    let (mut gzip, mut any) = (None, None);
    let items = headers
        .get_all(hyper::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for item in items {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or("");
        let weight = parts
            .find_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
            .map_or(1.0, |q| q.trim().parse::<f32>().unwrap_or(0.0));
        if coding.eq_ignore_ascii_case("gzip") {
            gzip = Some(weight);
        } else if coding == "*" {
            any = Some(weight);
        }
    }
    gzip.or(any).is_some_and(|w| w > 0.0)
}

/// `body` compressed with gzip at its fastest level (a scrape is compressed once per scrape
/// and thrown away; the fastest level keeps it about a tenth of the text all the same), or
/// `None` if compression failed, when the text is sent as is.
fn gzipped(body: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 8),
        flate2::Compression::fast(),
    );
    z.write_all(body).ok()?;
    z.finish().ok()
}

#[cfg(test)]
mod tests {
    use super::accepts_gzip;

    fn with(value: &str) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        if let Ok(v) = value.parse() {
            h.insert(hyper::header::ACCEPT_ENCODING, v);
        }
        h
    }

    #[test]
    fn gzip_only_for_a_client_that_accepts_it() {
        // What Prometheus sends, and what curl --compressed sends.
        assert!(accepts_gzip(&with("gzip")));
        assert!(accepts_gzip(&with("deflate, gzip")));
        assert!(accepts_gzip(&with("br;q=1.0, GZIP;q=0.5, *;q=0.1")));
        assert!(accepts_gzip(&with("*")));
        assert!(!accepts_gzip(&hyper::HeaderMap::new()));
        assert!(!accepts_gzip(&with("identity")));
        assert!(!accepts_gzip(&with("gzip;q=0")));
        assert!(!accepts_gzip(&with("gzip; q=0.0, br")));
        assert!(!accepts_gzip(&with("x-gzip-ish")));
        assert!(!accepts_gzip(&with("gzip;q=0, *")));
    }
}
