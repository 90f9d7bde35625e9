//! The admin HTTP server (hyper 1): `/metrics`, `/healthz`, `/readyz`; and, with
//! `admin.health_listen`, a second plain listener serving only `/healthz` and `/readyz` (what
//! kubelet probes and balancer health checks can reach when the admin port asks for a client
//! certificate).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// What the admin endpoints report; routes keep it current as they reload.
pub struct AdminState {
    /// Scraped on `/metrics`.
    pub metrics: Metrics,
    /// True once every listener is bound; false again while draining.
    pub ready: AtomicBool,
    /// Each route's engine: its pool's gauges are read at scrape time.
    upstreams: Mutex<Vec<(String, Arc<Upstream>)>>,
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
            upstreams: Mutex::new(Vec::new()),
            ready_requires_upstream: AtomicBool::new(ready_requires_upstream),
        }
    }

    /// Sets (or with `None` removes) the engine of `route`.
    pub fn set_upstream(&self, route: &str, upstream: Option<Arc<Upstream>>) {
        let Ok(mut all) = self.upstreams.lock() else {
            return;
        };
        all.retain(|(r, _)| r != route);
        if let Some(u) = upstream {
            all.push((route.to_string(), u));
        }
    }

    fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.upstreams
            .lock()
            .map(|all| all.iter().map(|(_, u)| u.clone()).collect())
            .unwrap_or_default()
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && (!self.ready_requires_upstream.load(Ordering::Acquire)
                || self.upstreams().iter().all(|u| u.any_up()))
    }
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// `/metrics`, `/healthz`, `/readyz` (`admin.listen`).
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
        "/metrics" if endpoints == Endpoints::All => {
            for u in state.upstreams() {
                u.refresh_gauges();
            }
            state.metrics.audit_dropped(state.audit.records_dropped());
            let mut r = Response::new(Full::new(Bytes::from(state.metrics.encode())));
            if let Ok(v) = "text/plain; version=0.0.4; charset=utf-8".parse() {
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
