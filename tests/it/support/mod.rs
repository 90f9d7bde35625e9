//! Test support, split by job: [`pki`] (certificates made with rcgen per test), [`engine`]
//! (the stand-in engine, messages), [`harness`] (a proxy in front of it, in-process on port 0
//! or the binary) and [`processes`] (the binary and third-party tools); waiting on a condition
//! and reading scrapes and logs are here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mllp_proxy::cli::TlsArgs;
use mllp_proxy::cli::ack_server;
use mllp_proxy::client::{ClientTarget, MllpClient};
use mllp_proxy::config::Config;
use mllp_proxy::metrics::Metrics;
use mllp_proxy::proxy::RunningProxy;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

mod engine;
mod harness;
mod pki;
mod processes;

pub use engine::*;
pub use harness::*;
pub use pki::*;
pub use processes::*;

/// Scrapes `/metrics` over HTTP: the value of the series `name{labels}`, `None` when absent.
pub async fn scrape(proxy: &RunningProxy, sample: &str) -> Option<f64> {
    let body = mllp_proxy::client::http_get(proxy.admin(), "/metrics")
        .await
        .expect("scrape");
    mllp_proxy::metrics::sample_value(&body, sample)
}

/// [`scrape`] of a series the proxy must have written (they are created at zero).
pub async fn metric(proxy: &RunningProxy, sample: &str) -> f64 {
    scrape(proxy, sample)
        .await
        .unwrap_or_else(|| panic!("no series {sample} in the scrape"))
}

/// The value of a refusal's breakdown series (`reason=…`), which exists from its first event
/// (docs/metrics.md): 0 while absent.
pub async fn count(proxy: &RunningProxy, sample: &str) -> f64 {
    scrape(proxy, sample).await.unwrap_or(0.0)
}

/// Polls `check` until it is true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The subject CN of the certificate a new TLS handshake with `addr` is served.
pub async fn served_cn(pki: &Pki, addr: SocketAddr) -> String {
    let target = pki.target(addr, ClientCert::Good);
    let (config, name) = target.tls.expect("tls");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("handshake");
    let der = tls.get_ref().1.peer_certificates().expect("server chain")[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("x509");
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Writes `bytes` to `path` by renaming a temporary file over it, as a careful operator does.
pub fn replace_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Whether the breakdown series `sample` ([`count`]: 0 while absent) reaches `want` within 10 s.
pub async fn count_reaches(proxy: &RunningProxy, sample: &str, want: f64) -> bool {
    eventually(Duration::from_secs(10), || async {
        count(proxy, sample).await == want
    })
    .await
}

/// Whether the scraped `sample` reaches `want` within 10 s.
pub async fn metric_reaches(proxy: &RunningProxy, sample: &str, want: f64) -> bool {
    eventually(Duration::from_secs(10), || async {
        scrape(proxy, sample).await == Some(want)
    })
    .await
}

/// notAfter (Unix seconds) of the first certificate in a PEM file.
pub fn not_after(pem_file: &Path) -> i64 {
    let pem = std::fs::read(pem_file).expect("read certificate");
    let (_, der) = x509_parser::pem::parse_x509_pem(&pem).expect("pem");
    der.parse_x509()
        .expect("x509")
        .validity()
        .not_after
        .timestamp()
}

/// Parses `text` as JSON, refusing an object that holds a key twice (serde_json and jq quietly
/// keep the last one; strict parsers reject the line).
pub fn strict_json(text: &str) -> Result<(), String> {
    use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};

    struct Strict;
    impl<'de> Deserialize<'de> for Strict {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(StrictVisitor)
        }
    }
    struct StrictVisitor;
    impl<'de> Visitor<'de> for StrictVisitor {
        type Value = Strict;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key.clone()) {
                    return Err(A::Error::custom(format!("duplicate key {key:?}")));
                }
                map.next_value::<Strict>()?;
            }
            Ok(Strict)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
            while seq.next_element::<Strict>()?.is_some() {}
            Ok(Strict)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
            Ok(Strict)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
            Ok(Strict)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
            Ok(Strict)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Strict, E> {
            Ok(Strict)
        }
        fn visit_str<E>(self, _: &str) -> Result<Strict, E> {
            Ok(Strict)
        }
        fn visit_unit<E>(self) -> Result<Strict, E> {
            Ok(Strict)
        }
    }
    serde_json::from_str::<Strict>(text)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A listener whose accept queue is full and never drained: connects to it hang, like a host
/// that drops SYNs. The held connections must live as long as the listener.
pub async fn black_hole() -> (TcpListener, Vec<TcpStream>, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(1).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut held = Vec::new();
    // Linux queues backlog + 1 connections; the rest have their SYNs dropped.
    while let Ok(Ok(s)) =
        tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await
    {
        held.push(s);
        assert!(held.len() < 10, "the accept queue never filled");
    }
    (listener, held, addr)
}

/// The value of one series (`name{labels}`) in a scrape the test holds; absent fails the test.
pub fn sample_value(metrics: &str, sample: &str) -> f64 {
    mllp_proxy::metrics::sample_value(metrics, sample)
        .unwrap_or_else(|| panic!("no series {sample} in the scrape"))
}

/// The JSON log lines of `proxy` that satisfy `keep`, parsed, once at least `n` exist.
pub fn json_lines(
    proxy: &ProxyProcess,
    n: usize,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let found: Vec<serde_json::Value> = proxy
            .log_lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v| keep(v))
            .collect();
        if found.len() >= n || std::time::Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
