//! The size of a scrape: the series each kind of route has, held so that they cannot grow
//! unnoticed (a gateway carries hundreds of routes, each multiplied by its replicas in
//! Prometheus), and `/metrics` gzipped for Prometheus, which asks for it.

use std::collections::BTreeMap;
use std::io::Read;

use mllp_proxy::config::Config;
use mllp_proxy::metrics::{Metrics, samples};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::egress::MUTUAL;
use crate::support::*;

/// Series per route with one target, by kind of route; docs/metrics.md lists them. A change
/// here is a change to every gateway's Prometheus: say so in docs/metrics.md.
const SERIES_PER_ROUTE: &[(&str, usize)] = &[
    // Mutual TLS in, plain MLLP to the engine: the sidecar as it ships.
    ("ingress", 40),
    // The same with allowed_clients, behind a load balancer (proxy_protocol) and with a
    // limited pool (max_connections: its queue): every series a route can have.
    ("balanced", 52),
    // Plain MLLP in and out (a listener on a trusted segment).
    ("plain", 36),
    // Plain MLLP in, mutual TLS to a partner (upstream.tls).
    ("egress", 42),
];

/// A configuration with one route of each kind, each with its own engine target.
fn every_kind(pki: &Pki, engine: &str) -> Config {
    let tls = "    tls: { certificate: server.crt, private_key: server.key, client_ca: ca.crt }";
    let upstream = format!("targets: [\"{engine}\"], health_check_interval: 5s");
    let partner = MUTUAL.replace("\n        ", ", ").trim().to_string();
    let yaml = format!(
        r#"
admin: {{ listen: "127.0.0.1:0" }}
routes:
  - name: ingress
    listen: "127.0.0.1:0"
{tls}
    upstream: {{ {upstream} }}
  - name: balanced
    listen: "127.0.0.1:0"
{tls}
    allowed_clients: [{{ cn: lab-01 }}]
    proxy_protocol: {{ trusted: ["127.0.0.2/32"] }}
    upstream: {{ {upstream}, max_connections: 8 }}
  - name: plain
    listen: "127.0.0.1:0"
    plaintext: true
    upstream: {{ {upstream} }}
  - name: egress
    listen: "127.0.0.1:0"
    plaintext: true
    upstream: {{ {upstream}, tls: {{ {partner} }} }}
"#
    );
    Config::from_yaml(&yaml, pki.dir.path()).expect("config of every kind")
}

/// A proxy with [`every_kind`] of route in front of `engine`.
async fn start_every_kind(pki: &Pki, engine: &Engine) -> mllp_proxy::proxy::RunningProxy {
    mllp_proxy::proxy::start(
        every_kind(pki, &engine.target()),
        Metrics::new().expect("metrics"),
    )
    .await
    .expect("proxy starts")
}

/// Series per value of label `route` in a scrape.
fn per_route(text: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in samples(text) {
        let route = s
            .labels
            .trim_matches(['{', '}'])
            .split(',')
            .find_map(|p| p.strip_prefix("route=\""))
            .map(|v| v.trim_end_matches('"').to_string());
        if let Some(route) = route {
            *out.entry(route).or_insert(0) += 1;
        }
    }
    out
}

#[tokio::test]
async fn each_kind_of_route_has_the_series_it_can_move_and_no_more() {
    let pki = Pki::new();
    let engine = Engine::start(Behaviour::Ack).await;
    let proxy = start_every_kind(&pki, &engine).await;
    let text = mllp_proxy::client::http_get(proxy.admin(), "/metrics")
        .await
        .expect("scrape");
    let counted = per_route(&text);
    let want: BTreeMap<String, usize> = SERIES_PER_ROUTE
        .iter()
        .map(|(r, n)| (r.to_string(), *n))
        .collect();
    assert_eq!(counted, want, "series per route changed:\n{text}");
    assert!(
        want.values().all(|n| *n <= 60),
        "the budget is 60 per route"
    );
    // What each kind can move is there at zero from the start; what it cannot, is not.
    let has = |series: &str| mllp_proxy::metrics::sample_value(&text, series).is_some();
    assert!(has(
        "mllp_proxy_proxy_protocol_total{result=\"proxied\",route=\"balanced\"}"
    ));
    assert!(!text.contains("mllp_proxy_proxy_protocol_total{result=\"proxied\",route=\"ingress\""));
    assert!(has("mllp_proxy_clients_denied_total{route=\"balanced\"}"));
    assert!(!has("mllp_proxy_clients_denied_total{route=\"ingress\"}"));
    assert!(has("mllp_proxy_upstream_queue_waiting{route=\"balanced\"}"));
    assert!(!has("mllp_proxy_upstream_queue_waiting{route=\"ingress\"}"));
    assert!(has(
        "mllp_proxy_upstream_exchanges_failed_total{kind=\"tls\",route=\"egress\"}"
    ));
    assert!(!has(
        "mllp_proxy_upstream_exchanges_failed_total{kind=\"tls\",route=\"ingress\"}"
    ));
    assert!(has(
        "mllp_proxy_tls_reloads_total{result=\"failure\",route=\"ingress\"}"
    ));
    assert!(!has(
        "mllp_proxy_tls_reloads_total{result=\"failure\",route=\"plain\"}"
    ));
    // A refusal's reason appears with the first refusal.
    let no_cert =
        "mllp_proxy_tls_handshake_failures_total{reason=\"no_client_cert\",route=\"ingress\"}";
    assert!(!has(no_cert));
    let ingress = proxy.routes()[0].1;
    let timeout = std::time::Duration::from_secs(5);
    let target = pki.target(ingress, ClientCert::None);
    if let Ok(mut c) = mllp_proxy::client::MllpClient::connect(&target, timeout).await {
        let _ = c.exchange(&adt("NOCERT-1"), timeout).await;
    }
    assert!(metric_reaches(&proxy, no_cert, 1.0).await);
    proxy.stop().await;
}

/// `GET /metrics` with `Accept-Encoding: encoding`: the response's headers and body.
async fn get_metrics(proxy: &mllp_proxy::proxy::RunningProxy, encoding: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(proxy.admin()).await.expect("admin");
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: {encoding}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    (head, raw[split + 4..].to_vec())
}

/// The series names (`name{labels}`) of a scrape, values left out (they move between scrapes).
fn names(text: &str) -> Vec<String> {
    samples(text)
        .filter(|s| !s.name.starts_with("process_"))
        .map(|s| format!("{}{}", s.name, s.labels))
        .collect()
}

#[tokio::test]
async fn prometheus_gets_the_scrape_gzipped_and_others_plain() {
    let pki = Pki::new();
    let engine = Engine::start(Behaviour::Ack).await;
    let proxy = start_every_kind(&pki, &engine).await;
    // What Prometheus 2.x sends.
    let (head, body) = get_metrics(&proxy, "gzip").await;
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("vary: accept-encoding"), "{head}");
    let mut text = String::new();
    flate2::read::GzDecoder::new(body.as_slice())
        .read_to_string(&mut text)
        .expect("a gzip body");
    let (plain_head, plain) = get_metrics(&proxy, "identity").await;
    assert!(!plain_head.contains("content-encoding"), "{plain_head}");
    let plain = String::from_utf8(plain).expect("text");
    assert_eq!(names(&text), names(&plain));
    assert!(
        body.len() * 5 < plain.len(),
        "gzip {} bytes of {}",
        body.len(),
        plain.len()
    );
    proxy.stop().await;
}
