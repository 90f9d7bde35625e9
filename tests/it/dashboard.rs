//! The Grafana dashboard as provisioned: no import-time inputs, every panel on the datasource
//! variable, and every expression answered by a real Prometheus scraping a running proxy.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mllp_proxy::client::http_get;

use crate::alerts::keep_sending;
use crate::support::*;

fn dashboard() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/mllp-proxy.json");
    let text = std::fs::read_to_string(path).expect("dashboard");
    serde_json::from_str(&text).expect("dashboard JSON")
}

/// Every query panel with the row it sits under.
fn panels(d: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let mut row = String::new();
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            row = p["title"].as_str().unwrap_or("").to_string();
        } else {
            out.push((row.clone(), p.clone()));
        }
    }
    out
}

#[test]
fn the_dashboard_needs_no_import_step_and_every_panel_uses_the_datasource_variable() {
    let d = dashboard();
    assert!(
        d.get("__inputs").is_none(),
        "__inputs: only a UI import fills it in"
    );
    assert!(!d.to_string().contains("DS_PROMETHEUS"));
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(
        vars,
        ["datasource", "job", "namespace", "instance", "route"]
    );
    assert_eq!(d["templating"]["list"][0]["type"], "datasource");
    let rows: Vec<&str> = d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert_eq!(
        rows,
        [
            "Traffic and ACK codes",
            "Upstream health and latency",
            "TLS, handshakes and certificates",
            "Reloads and refusals"
        ]
    );
    for (_, p) in panels(&d) {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for t in p["targets"].as_array().expect("targets") {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            let expr = t["expr"].as_str().expect("expr");
            assert!(expr.contains("job=~\"$job\""), "{}: {expr}", p["title"]);
        }
    }
}

/// A Prometheus server on loopback, killed when dropped.
struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `admin` every second as job `mllp-proxy`.
    async fn scraping(admin: std::net::SocketAddr) -> Option<Prometheus> {
        let binary = required_tool("prometheus", "--version", "prometheus")?;
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: mllp-proxy\n    static_configs:\n      - targets: [\"{admin}\"]\n"
            ),
        )
        .expect("write config");
        let (child, addr) = spawn_listening(false, Duration::from_secs(30), |port| {
            Command::new(&binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start prometheus")
        });
        Some(Prometheus {
            child,
            addr,
            _dir: dir,
        })
    }

    /// The JSON answer of an instant query.
    async fn query(&self, q: &str) -> serde_json::Value {
        let path = format!("/api/v1/query?query={}", encode(q));
        let body = http_get(self.addr, &path)
            .await
            .unwrap_or_else(|e| panic!("{q}: {e}"));
        serde_json::from_str(&body).expect("Prometheus JSON")
    }
}

/// `q` percent-encoded for a query string.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_runs_on_a_real_prometheus_and_the_traffic_panels_have_data() {
    // A pool limit, so that the queue panels have their series (a route without one never
    // queues and has none).
    let world = Harness::new()
        .health_checks("1s")
        .route_yaml("    validation:\n      message_types: [\"ADT^*\"]\n")
        .edit(|cfg| cfg.routes[0].upstream.max_connections = 8)
        .start()
        .await;
    // One NAK (an order where only ADT is allowed): the NAK panel's series exists from it.
    let mut c = connect(&world.pki, &world.proxy, ClientCert::Good).await;
    let bad = b"MSH|^~\\&|A|B|C|D|20261126||ORM^O01|NAK-1|P|2.5.1\rPID|1\r";
    let nak = c.exchange(bad, Duration::from_secs(10)).await.expect("NAK");
    assert_eq!(msa(&nak).0, "AR");
    c.close().await;
    let sending = keep_sending(
        world
            .pki
            .target(world.proxy.routes()[0].1, ClientCert::Good),
        Duration::from_millis(100),
    );
    let Some(prometheus) = Prometheus::scraping(world.proxy.admin()).await else {
        return;
    };
    let scraped = eventually(Duration::from_secs(30), || async {
        let q = "count_over_time(mllp_proxy_acks_total{code=\"AA\"}[1m])";
        let answer = http_get(
            prometheus.addr,
            &format!("/api/v1/query?query={}", encode(q)),
        )
        .await
        .unwrap_or_default();
        // Four scrapes of a series: rates over 15 s have points to work with.
        serde_json::from_str::<serde_json::Value>(&answer).is_ok_and(|v| {
            v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|n| n.parse::<f64>().ok())
                .is_some_and(|n| n >= 4.0)
        })
    });
    assert!(scraped.await, "Prometheus did not scrape the proxy");
    let d = dashboard();
    // The variables' queries, as Grafana runs label_values: each finds the proxy.
    for label in ["job", "instance", "route"] {
        let v = prometheus
            .query(&format!(
                "count by ({label}) (mllp_proxy_messages_received_total)"
            ))
            .await;
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        assert!(!result.is_empty(), "variable {label}: {v}");
    }
    for (row, p) in panels(&d) {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            let q = expr
                .replace("$job", "mllp-proxy")
                .replace("$namespace", ".*")
                .replace("$instance", ".*")
                .replace("$route", ".*")
                .replace("$__rate_interval", "15s");
            let v = prometheus.query(&q).await;
            assert_eq!(v["status"], "success", "{}: {q}: {v}", p["title"]);
            let with_data = row == "Traffic and ACK codes" || row == "Upstream health and latency";
            let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
            assert!(
                !with_data || !result.is_empty(),
                "{} returned no data: {q}",
                p["title"]
            );
        }
    }
    sending.cancel();
}
