//! Egress routes: plain MLLP from a local engine in, mutual TLS to a partner out. Two proxies
//! (egress here, ingress at the partner) make a tunnel; every refusal of the partner's TLS is
//! an upstream failure of kind `tls` with nothing delivered.

use std::net::SocketAddr;
use std::time::Duration;

use mllp_proxy::client::{ClientTarget, MllpClient, http_get};
use mllp_proxy::config::{AdminTlsConfig, Config};
use mllp_proxy::metrics::Metrics;
use mllp_proxy::proxy::RunningProxy;

use crate::support::*;

const T: Duration = Duration::from_secs(5);

/// An egress route's YAML: plain on loopback, to `targets` over TLS with `tls` (the keys of
/// `upstream.tls`, one per line, indented eight spaces) and `extra` route keys.
pub fn egress_yaml(targets: &[String], tls: &str, extra: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        r#"
admin:
  listen: "127.0.0.1:0"
routes:
  - name: egress
    listen: "127.0.0.1:0"
    plaintext: true
    upstream:
      targets: [{}]
      connect_timeout: 2s
      ack_timeout: 3s
      health_check_interval: 0
      tls:
{tls}
{extra}"#,
        targets.join(", ")
    )
}

/// Our client certificate and the partner's CA from the test PKI.
pub const MUTUAL: &str =
    "        ca: ca.crt\n        certificate: client.crt\n        private_key: client.key";

pub async fn start_egress(pki: &Pki, yaml: &str) -> RunningProxy {
    let cfg = Config::from_yaml(yaml, pki.dir.path()).expect("egress config");
    mllp_proxy::proxy::start(cfg, Metrics::new().expect("metrics"))
        .await
        .expect("egress starts")
}

/// A plain MLLP sender's target (the local engine's side of an egress route).
pub fn plain(addr: SocketAddr) -> ClientTarget {
    ClientTarget {
        addr: addr.to_string(),
        tls: None,
    }
}

/// A stand-in partner: the test engine behind TLS with `cert` (`NAME.crt`/`.key` of the PKI),
/// requiring a client certificate from the test CA when `mutual`.
async fn partner(pki: &Pki, cert: &str, mutual: bool) -> Engine {
    let tls = AdminTlsConfig {
        certificate: pki.path(&format!("{cert}.crt")),
        private_key: pki.path(&format!("{cert}.key")),
        client_ca: mutual.then(|| pki.path("ca.crt")),
    };
    let config = mllp_proxy::tls::admin_server_config(&tls).expect("partner TLS");
    Engine::start_tls(Behaviour::Ack, config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_sender_reaches_the_engine_through_egress_and_ingress_on_one_tls_connection() {
    let World {
        pki,
        engine,
        proxy: ingress,
        ..
    } = Harness::new().start().await;
    let to = ingress.routes()[0].1.to_string();
    let egress = start_egress(&pki, &egress_yaml(std::slice::from_ref(&to), MUTUAL, "")).await;
    let mut senders = Vec::new();
    for s in 0..2 {
        let mut c = MllpClient::connect(&plain(egress.routes()[0].1), T)
            .await
            .expect("plain connect");
        for i in 0..10 {
            let id = format!("E{s}-{i}");
            let ack = c
                .exchange(&adt(&id), T)
                .await
                .expect("ACK through the tunnel");
            assert_eq!(msa(&ack), ("AA".into(), id));
        }
        senders.push(c);
    }
    // Each message once at the engine, in order.
    let ids: Vec<String> = engine.received_ids();
    let want: Vec<String> = (0..2)
        .flat_map(|s| (0..10).map(move |i| format!("E{s}-{i}")))
        .collect();
    assert_eq!(ids, want);
    // The egress pool reuses its TLS connection: the ingress accepted one.
    let accepted = "mllp_proxy_connections_accepted_total{route=\"test\"}";
    assert_eq!(metric(&ingress, accepted).await, 1.0);
    let aa = "mllp_proxy_acks_total{code=\"AA\",route=\"egress\"}";
    assert_eq!(metric(&egress, aa).await, 20.0);
    let ok = format!(
        "mllp_proxy_upstream_tls_handshake_failures_total{{reason=\"unknown_ca\",route=\"egress\",target=\"{to}\"}}"
    );
    assert_eq!(scrape(&egress, &ok).await, None, "no refusal, no series");
    // Expiry gauges of our client certificate and of the partner's CA.
    for role in ["client", "upstream_ca"] {
        let g = format!(
            "mllp_proxy_certificate_expiry_timestamp_seconds{{role=\"{role}\",route=\"egress\"}}"
        );
        assert!(metric(&egress, &g).await > 1.7e9, "{role}");
    }
}

/// Sends one message through `egress` (whose `on_upstream_failure` is `nak`) and expects the
/// proxy's AR: nothing reached the partner, and `reason` was counted once.
async fn refused(egress: &RunningProxy, partner: &Engine, reason: &str) {
    let mut c = MllpClient::connect(&plain(egress.routes()[0].1), T)
        .await
        .expect("plain connect");
    let answer = c
        .exchange(&adt("REFUSED"), T)
        .await
        .expect("the proxy's NAK");
    assert_eq!(msa(&answer).0, "AR", "{reason}");
    assert!(
        partner.received_ids().is_empty(),
        "{reason}: the partner got the message"
    );
    let sample = format!(
        "mllp_proxy_upstream_tls_handshake_failures_total{{reason=\"{reason}\",route=\"egress\",target=\"{}\"}}",
        partner.target()
    );
    assert_eq!(metric(egress, &sample).await, 1.0, "{reason}");
    let kind = format!(
        "mllp_proxy_upstream_failures_total{{kind=\"tls\",route=\"egress\",target=\"{}\"}}",
        partner.target()
    );
    assert_eq!(metric(egress, &kind).await, 1.0, "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_of_the_partners_tls_is_counted_by_reason_with_nothing_delivered() {
    let pki = Pki::new();
    pki.issue_server_valid_for("expired-server", "localhost", Some(-1));
    pki.issue_server_with("revoked-server", |p| {
        p.serial_number = Some(rcgen::SerialNumber::from(9191u64));
    });
    let (crl, _) = pki.crl(&[9191], 1);
    std::fs::write(pki.path("partner.crl"), crl).expect("write CRL");
    let nak = "    on_upstream_failure: nak\n";
    let cases: [(&str, bool, String, &str); 6] = [
        (
            "server",
            true,
            format!("{MUTUAL}\n        server_name: wrong.example"),
            "name_mismatch",
        ),
        (
            "server",
            true,
            MUTUAL.replace("ca: ca.crt", "ca: other-ca.crt"),
            "unknown_ca",
        ),
        ("expired-server", true, MUTUAL.to_string(), "expired"),
        (
            "server",
            true,
            format!("{MUTUAL}\n        allowed_servers: [{{cn: partner.example}}]"),
            "not_allowed",
        ),
        (
            "server",
            true,
            "        ca: ca.crt".to_string(),
            "client_cert_required",
        ),
        (
            "revoked-server",
            true,
            format!("{MUTUAL}\n        crl: [partner.crl]"),
            "revoked",
        ),
    ];
    for (cert, mutual, tls, reason) in cases {
        let partner = partner(&pki, cert, mutual).await;
        let egress = start_egress(&pki, &egress_yaml(&[partner.target()], &tls, nak)).await;
        refused(&egress, &partner, reason).await;
        egress.shutdown(Duration::from_secs(1)).await;
    }
}

#[test]
fn a_route_without_tls_must_say_plaintext() {
    let pki = Pki::new();
    let yaml =
        egress_yaml(&["127.0.0.1:9".into()], MUTUAL, "").replace("    plaintext: true\n", "");
    let e = Config::from_yaml(&yaml, pki.dir.path()).expect_err("a route without tls");
    assert!(e.to_string().contains("routes[0].tls: required"), "{e}");
    assert!(e.to_string().contains("plaintext: true"), "{e}");
    let both = pki.config_yaml(&["127.0.0.1:9".into()], "    plaintext: true\n");
    let e = Config::from_yaml(&both, pki.dir.path()).expect_err("plaintext and tls");
    assert!(e.to_string().contains("routes[0].plaintext"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_of_every_size_reach_the_partner_whole_over_tls() {
    // Over 4 KiB a message is written to the partner in place (start block, message, end
    // block as one vectored write through rustls), below it framed in one buffer: each
    // arrives byte for byte, the small ones between keeping their framing.
    let pki = Pki::new();
    let partner = partner(&pki, "server", true).await;
    let extra = "    validation: { max_message_bytes: 2097152 }\n";
    let egress = start_egress(&pki, &egress_yaml(&[partner.target()], MUTUAL, extra)).await;
    let mut c = MllpClient::connect(&plain(egress.routes()[0].1), T)
        .await
        .expect("plain connect");
    crate::core::documents_arrive_whole(&mut c, &partner, &[3_000, 16_000, 70_000, 1_500_000])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_per_connection_one_opens_a_connection_per_message() {
    let World {
        pki, engine, proxy, ..
    } = Harness::new().route_yaml("").start_live().await;
    let mut c = connect(&pki, &proxy, ClientCert::Good).await;
    assert_eq!(msa(&c.exchange(&adt("K-0"), T).await.expect("ACK")).0, "AA");
    assert_eq!(msa(&c.exchange(&adt("K-1"), T).await.expect("ACK")).0, "AA");
    assert_eq!(engine.connections(), 1, "pooled by default");
    let yaml = std::fs::read_to_string(pki.path("proxy.yaml")).expect("read");
    let yaml = yaml.replace(
        "      ack_timeout: 2s\n",
        "      ack_timeout: 2s\n      messages_per_connection: 1\n",
    );
    std::fs::write(pki.path("proxy.yaml"), yaml).expect("write");
    assert_applied(proxy.reload().await);
    for i in 2..6 {
        let id = format!("K-{i}");
        assert_eq!(msa(&c.exchange(&adt(&id), T).await.expect("ACK")).0, "AA");
    }
    assert!(
        eventually(T, || async { engine.connections() == 5 }).await,
        "one fresh connection per message: {}",
        engine.connections()
    );
    assert_eq!(engine.received_ids().len(), 6);
}

/// `n` plain senders exchanging through `addr` until `until`, as real MLLP senders do: a
/// message whose connection closed without an ACK is sent again on a new connection. Each
/// returns (messages acknowledged AA, resends); anything but AA for the message is a panic.
fn senders(
    addr: SocketAddr,
    n: usize,
    until: tokio::time::Instant,
) -> Vec<tokio::task::JoinHandle<(usize, usize)>> {
    (0..n)
        .map(|s| {
            tokio::spawn(async move {
                let mut c = MllpClient::connect(&plain(addr), T).await.expect("connect");
                let (mut i, mut resends) = (0, 0);
                while tokio::time::Instant::now() < until {
                    let id = format!("S{s}-{i}");
                    match c.exchange(&adt(&id), T).await {
                        Ok(ack) => assert_eq!(msa(&ack), ("AA".into(), id)),
                        Err(_) if resends < 3 => {
                            resends += 1;
                            c = MllpClient::connect(&plain(addr), T)
                                .await
                                .expect("reconnect");
                            continue;
                        }
                        Err(e) => panic!("{id}: {e}"),
                    }
                    i += 1;
                }
                (i, resends)
            })
        })
        .collect()
}

/// Waits for `running` senders: (messages acknowledged, resends).
async fn finished(running: Vec<tokio::task::JoinHandle<(usize, usize)>>) -> (usize, usize) {
    let mut total = (0, 0);
    for s in running {
        let (acked, resends) = s.await.expect("sender");
        total = (total.0 + acked, total.1 + resends);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_certificate_rotates_under_load_and_loses_nothing() {
    let h = Harness::new().route_yaml("    allowed_clients: [{cn: lab-sender}, {cn: egress-2}]\n");
    for ext in ["crt", "key"] {
        std::fs::copy(
            h.pki.path(&format!("client.{ext}")),
            h.pki.path(&format!("ours.{ext}")),
        )
        .expect("copy");
    }
    let World {
        pki,
        engine,
        proxy: ingress,
        ..
    } = h.start_live().await;
    let tls = "        ca: ca.crt\n        certificate: ours.crt\n        private_key: ours.key\n        reload_interval: 200ms";
    let egress = start_egress(
        &pki,
        &egress_yaml(&[ingress.routes()[0].1.to_string()], tls, ""),
    )
    .await;
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let running = senders(egress.routes()[0].1, 2, until);
    // A second of traffic before the rotation: the load over time is what this is about.
    tokio::time::sleep(Duration::from_secs(1)).await;

    pki.issue_client("rotated", "egress-2", &[], &[], false, false);
    replace_file(
        &pki.path("ours.key"),
        &std::fs::read(pki.path("rotated.key")).expect("key"),
    );
    replace_file(
        &pki.path("ours.crt"),
        &std::fs::read(pki.path("rotated.crt")).expect("crt"),
    );
    let reloaded = "mllp_proxy_tls_reloads_total{result=\"success\",route=\"egress\"}";
    assert!(
        metric_reaches(&egress, reloaded, 1.0).await,
        "our new certificate not loaded"
    );
    // The partner offboards the old identity: its sessions close after their exchange, and the
    // egress reconnects presenting the new certificate.
    let yaml = std::fs::read_to_string(pki.path("proxy.yaml")).expect("read");
    let yaml = yaml.replace("[{cn: lab-sender}, {cn: egress-2}]", "[{cn: egress-2}]");
    std::fs::write(pki.path("proxy.yaml"), yaml).expect("write");
    assert_applied(ingress.reload().await);

    let (acked, resends) = finished(running).await;
    assert!(acked > 20, "{acked}");
    let received = engine.received_ids().len();
    assert!(
        (acked..=acked + resends).contains(&received),
        "{received} for {acked} (+{resends} resends)"
    );
    // New material retires the egress pool, so the old identity's connections end at our
    // side after their exchange (the partner's offboarding may or may not catch one still in
    // flight). Either way the partner never had to refuse the old identity, and a message sent
    // now goes over a connection presenting the new certificate, which alone is allowed.
    assert_eq!(
        metric(&ingress, "mllp_proxy_clients_denied_total{route=\"test\"}").await,
        0.0
    );
    let mut c = MllpClient::connect(&plain(egress.routes()[0].1), T)
        .await
        .expect("plain connect");
    let ack = c.exchange(&adt("AFTER-ROTATION"), T).await.expect("ACK");
    assert_eq!(msa(&ack), ("AA".into(), "AFTER-ROTATION".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_stopping_mid_run_fails_over_to_the_next_and_loses_nothing() {
    let World {
        pki,
        engine: engine_a,
        proxy: partner_a,
        ..
    } = Harness::new().start().await;
    let engine_b = Engine::start(Behaviour::Ack).await;
    let partner_b = start_proxy(pki.config(&[engine_b.target()], "")).await;
    let targets = [
        partner_a.routes()[0].1.to_string(),
        partner_b.routes()[0].1.to_string(),
    ];
    let egress = start_egress(&pki, &egress_yaml(&targets, MUTUAL, "")).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let running = senders(egress.routes()[0].1, 4, until);
    // A second of traffic before the partner stops: the load over time is what this is about.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = engine_a.received_ids().len();
    assert!(
        before > 0 && engine_b.received_ids().is_empty(),
        "failover: a first"
    );
    assert!(
        partner_a.shutdown(Duration::from_secs(2)).await,
        "a drained"
    );
    let (acked, resends) = finished(running).await;
    let (at_a, at_b) = (engine_a.received_ids().len(), engine_b.received_ids().len());
    assert!(at_b > 0, "b took over");
    let received = at_a + at_b;
    assert!(
        (acked..=acked + resends).contains(&received),
        "{received} for {acked} (+{resends} resends)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partners_tls_session_and_the_plain_senders_are_audited() {
    let World {
        pki,
        engine: _engine,
        proxy: ingress,
        ..
    } = Harness::new().start().await;
    let to = ingress.routes()[0].1.to_string();
    let cfg = Config::from_yaml(
        &egress_yaml(std::slice::from_ref(&to), MUTUAL, ""),
        pki.dir.path(),
    )
    .expect("egress config");
    let file = pki.path("egress-audit.jsonl");
    let (egress, _writer) = start_audited(cfg, &file).await;
    let mut c = MllpClient::connect(&plain(egress.routes()[0].1), T)
        .await
        .expect("connect");
    assert_eq!(
        msa(&c.exchange(&adt("AUD-1"), T).await.expect("ACK")).0,
        "AA"
    );
    let find = |event| audited_in(&file, event);
    let upstream = find("upstream_session").await;
    assert_eq!(upstream["route"], "egress");
    assert_eq!(upstream["engine"], to.as_str());
    assert!(
        upstream["subject"]
            .as_str()
            .is_some_and(|s| s.contains("CN=localhost")),
        "{upstream}"
    );
    assert!(
        upstream["issuer"]
            .as_str()
            .is_some_and(|s| s.contains("test CA")),
        "{upstream}"
    );
    assert!(
        upstream["serial"].as_str().is_some_and(|s| !s.is_empty()),
        "{upstream}"
    );
    assert_eq!(upstream["tls_version"], "TLSv1_3");
    let started = find("session_start").await;
    assert_eq!(started["transport"], "plain");
    assert!(
        started["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:"))
    );
    let message = find("message").await;
    assert_eq!(message["control_id"], "AUD-1");
    assert_eq!(message["engine"], to.as_str());
}

#[test]
fn the_shipped_egress_example_is_a_valid_configuration() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/egress.yaml");
    let cfg = Config::load(&path).expect("examples/egress.yaml");
    let route = &cfg.routes[0];
    assert!(route.tls.is_none() && route.listen.ip().is_loopback());
    let tls = route.upstream.tls.as_ref().expect("upstream.tls");
    assert_eq!(tls.server_name.as_deref(), Some("mllp.lab-partner.example"));
    assert!(tls.client.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_probe_completes_a_handshake_so_an_expired_partner_is_down_before_traffic() {
    let pki = Pki::new();
    pki.issue_server_valid_for("expired-server", "localhost", Some(-1));
    let good = partner(&pki, "server", true).await;
    let expired = partner(&pki, "expired-server", true).await;
    let yaml = egress_yaml(&[good.target(), expired.target()], MUTUAL, "")
        .replace("health_check_interval: 0", "health_check_interval: 1s");
    let egress = start_egress(&pki, &yaml).await;
    let up = |t: &str| format!("mllp_proxy_upstream_up{{route=\"egress\",target=\"{t}\"}}");
    assert!(metric_reaches(&egress, &up(&good.target()), 1.0).await);
    let refused = format!(
        "mllp_proxy_upstream_tls_handshake_failures_total{{reason=\"expired\",route=\"egress\",target=\"{}\"}}",
        expired.target()
    );
    // Probed every second: counted once or more by now.
    let counted = eventually(T, || async {
        scrape(&egress, &refused).await.is_some_and(|n| n >= 1.0)
    });
    assert!(counted.await, "the probe did not refuse it");
    assert_eq!(metric(&egress, &up(&expired.target())).await, 0.0);
    assert!(good.received_ids().is_empty() && expired.received_ids().is_empty());
}

#[test]
fn check_warns_about_a_plain_listener_that_is_not_on_loopback() {
    let pki = Pki::new();
    let yaml = egress_yaml(&["127.0.0.1:9".into()], MUTUAL, "").replace(
        "    listen: \"127.0.0.1:0\"\n    plaintext",
        "    listen: \"0.0.0.0:0\"\n    plaintext",
    );
    let path = pki.path("egress.yaml");
    std::fs::write(&path, yaml).expect("write");
    let out = std::process::Command::new(binary())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("plain MLLP (plaintext: true)"), "{stdout}");
    assert!(
        stdout.contains("upstream.tls: partner verified against"),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: routes[0].listen: a plain listener on 0.0.0.0:0"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_egress_route_holds_one_partner_session_and_reads_down_without_a_flap() {
    // The partner is a second mllp-proxy with its audit trail; the egress is the binary, its
    // probes every second and idle_timeout 2 s. Without traffic, the probe's connection is
    // kept as the health signal: one session in the partner's trail, not one per interval.
    // When the partner then stops accepting our certificate, it closes that session; the
    // idle watch probes at once, the partner's access_denied alert marks the target down in
    // one line (no "up" first), and no upstream_session record is written for the refusal.
    let partner = Harness::new().audit().start_live().await;
    let pki = &partner.pki;
    let to = partner.proxy.routes()[0].1.to_string();
    let yaml = egress_yaml(std::slice::from_ref(&to), MUTUAL, "")
        .replace(
            "health_check_interval: 0",
            "health_check_interval: 1s\n      idle_timeout: 2s",
        )
        .replace(
            "admin:",
            "logging:\n  format: json\naudit:\n  file: egress-audit.jsonl\nadmin:",
        );
    std::fs::write(pki.path("egress.yaml"), yaml).expect("write");
    let mut egress = ProxyProcess::spawn(&pki.path("egress.yaml"), "info");
    let up = format!("mllp_proxy_upstream_up{{route=\"egress\",target=\"{to}\"}}");
    let read_up = || async {
        let body = http_get(egress.admin, "/metrics").await.unwrap_or_default();
        mllp_proxy::metrics::sample_value(&body, &up)
    };
    assert!(eventually(T, || async { read_up().await == Some(1.0) }).await);
    // Twenty probe intervals without a message: time is the subject.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let sessions = partner.audit_records();
    let sessions: Vec<_> = sessions
        .iter()
        .filter(|r| r["event"] == "session_start")
        .collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");

    let offboarded = format!(
        "{}    allowed_clients:\n      - cn: billing-sender\n",
        partner.yaml()
    );
    std::fs::write(pki.path("proxy.yaml"), offboarded).expect("write");
    assert_applied(partner.proxy.reload().await);
    let down = eventually(Duration::from_secs(3), || async {
        read_up().await == Some(0.0)
    });
    assert!(down.await, "the partner's refusal did not mark it down");
    // A few more refused probes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused = partner.audited("handshake_refused", 2).await;
    assert!(refused.len() >= 2, "{refused:?}");
    assert!(refused.iter().all(|r| r["reason"] == "not_allowed"));
    let log = egress.log_lines();
    let said = |m: &str| log.iter().filter(|l| l.contains(m)).count();
    assert_eq!(
        (
            said("\"partner target up\""),
            said("\"partner target down\"")
        ),
        (1, 1),
        "{log:#?}"
    );
    assert!(!log.iter().any(|l| l.contains("engine target")));
    let down_line = log.iter().find(|l| l.contains("partner target down"));
    assert!(
        down_line.is_some_and(|l| l.contains("\"route\":\"egress\"") && l.contains("AccessDenied")),
        "{down_line:?}"
    );
    let audit = std::fs::read_to_string(pki.path("egress-audit.jsonl")).unwrap_or_default();
    let upstream_sessions = audit.lines().filter(|l| l.contains("upstream_session"));
    assert_eq!(upstream_sessions.count(), 1, "{audit}");
    assert!(egress.terminate().success());
}
