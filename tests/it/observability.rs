//! Metrics over HTTP with exact values, health and readiness through the lifecycle, and logs
//! that never carry patient data.

use std::net::SocketAddr;
use std::time::Duration;

use mllp_proxy::client::{ClientTarget, MllpClient, http_get};
use mllp_proxy::mllp::MllpCodec;

use crate::support::*;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_exact_values_after_a_known_scenario() {
    // 10 forwarded, 2 refused by the type allow-list, 1 handshake without a certificate:
    // scraped over HTTP, every counter is exact, and promtool accepts the exposition.
    let World {
        pki, engine, proxy, ..
    } = Harness::new()
        .route_yaml("    validation:\n      message_types: [\"ADT^*\"]\n")
        .start()
        .await;
    let mut client = connect(&pki, &proxy, ClientCert::Good).await;
    for i in 0..10 {
        client
            .exchange(&adt(&format!("M-{i}")), T)
            .await
            .expect("ACK");
    }
    for i in 0..2 {
        let orm = format!("MSH|^~\\&|OE|W|LAB|H|20261126||ORM^O01|O-{i}|P|2.5.1\rPID|1\r");
        let nak = client.exchange(orm.as_bytes(), T).await.expect("NAK");
        assert_eq!(msa(&nak).0, "AR");
    }
    client.close().await;
    if let Ok(mut c) =
        MllpClient::connect(&pki.target(proxy.routes()[0].1, ClientCert::None), T).await
    {
        let _ = c.exchange(&adt("NOCERT"), T).await;
    }
    let r = "route=\"test\"";
    let sample =
        format!("mllp_proxy_tls_handshake_failures_total{{reason=\"no_client_cert\",{r}}}");
    assert!(metric_reaches(&proxy, &sample, 1.0).await);
    let sample = format!("mllp_proxy_connections_active{{{r}}}");
    assert!(metric_reaches(&proxy, &sample, 0.0).await);
    let expect = expected_after_scenario(&engine.target());
    for (sample, want) in &expect {
        assert_eq!(metric(&proxy, sample).await, *want, "{sample}");
    }
    // A reason no message was refused for has no series yet.
    let segment = format!("mllp_proxy_messages_rejected_total{{reason=\"segment\",{r}}}");
    assert_eq!(scrape(&proxy, &segment).await, None);
    // Nor a route without allowed_clients a count of clients it denied.
    let denied = format!("mllp_proxy_clients_denied_total{{{r}}}");
    assert_eq!(scrape(&proxy, &denied).await, None);
    // The expiry gauge is the certificate's notAfter.
    let not_after = not_after(&pki.path("server.crt"));
    let sample = format!("mllp_proxy_certificate_expiry_timestamp_seconds{{role=\"server\",{r}}}");
    assert_eq!(metric(&proxy, &sample).await, not_after as f64);

    let body = http_get(proxy.admin(), "/metrics").await.expect("scrape");
    assert!(body.contains("process_resident_memory_bytes"));
    assert_promtool_accepts(&pki, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_follow_the_lifecycle() {
    // /healthz and /readyz answer 200 when running, /readyz turns 503 while draining (an
    // exchange is in flight), unknown paths are 404.
    let World {
        pki, engine, proxy, ..
    } = Harness::new()
        .engine(Behaviour::Delay(Duration::from_millis(1500)))
        .start()
        .await;
    let admin = proxy.admin();
    assert_eq!(http_get(admin, "/healthz").await.expect("healthz"), "ok\n");
    assert_eq!(http_get(admin, "/readyz").await.expect("readyz"), "ready\n");
    let missing = http_get(admin, "/nope").await.expect_err("404");
    assert!(missing.0.contains("HTTP 404"), "{missing}");

    let mut client = connect(&pki, &proxy, ClientCert::Good).await;
    client.send(&adt("DRAIN-1")).await.expect("send");
    assert!(eventually(T, || async { engine.received().len() == 1 }).await);
    let drained = tokio::spawn(proxy.shutdown(T));
    assert!(
        eventually(T, || async {
            http_get(admin, "/readyz")
                .await
                .is_err_and(|e| e.0.contains("HTTP 503"))
        })
        .await
    );
    assert_eq!(
        http_get(admin, "/healthz")
            .await
            .expect("healthz while draining"),
        "ok\n"
    );
    let ack = client.recv().await.expect("in-flight ACK relayed");
    assert_eq!(msa(&ack).1, "DRAIN-1");
    assert!(
        drained.await.expect("shutdown task"),
        "drained within the timeout"
    );
}

/// The series and values of [`metrics_have_exact_values_after_a_known_scenario`]: 10
/// forwarded, 2 refused by type, a handshake without a certificate, on route `test`.
fn expected_after_scenario(engine: &str) -> Vec<(String, f64)> {
    let r = "route=\"test\"";
    vec![
        (format!("mllp_proxy_connections_accepted_total{{{r}}}"), 2.0),
        (format!("mllp_proxy_messages_received_total{{{r}}}"), 12.0),
        (format!("mllp_proxy_messages_forwarded_total{{{r}}}"), 10.0),
        (
            format!("mllp_proxy_messages_rejected_total{{reason=\"message_type\",{r}}}"),
            2.0,
        ),
        (format!("mllp_proxy_acks_total{{code=\"AA\",{r}}}"), 10.0),
        (format!("mllp_proxy_acks_total{{code=\"AE\",{r}}}"), 0.0),
        (
            format!("mllp_proxy_upstream_ack_seconds_count{{{r}}}"),
            10.0,
        ),
        (format!("mllp_proxy_message_bytes_count{{{r}}}"), 12.0),
        (
            format!("mllp_proxy_upstream_up{{{r},target=\"{}\"}}", engine),
            1.0,
        ),
        (
            format!(
                "mllp_proxy_upstream_failures_total{{kind=\"connect\",{r},target=\"{}\"}}",
                engine
            ),
            0.0,
        ),
        (
            format!("mllp_proxy_tls_reloads_total{{result=\"success\",{r}}}"),
            0.0,
        ),
        ("mllp_proxy_build_info{version=\"0.1.0\"}".to_string(), 1.0),
    ]
}

/// `promtool check metrics` accepts the exposition `body` (when promtool is installed).
fn assert_promtool_accepts(pki: &Pki, body: &str) {
    if let Some(promtool) = promtool() {
        let file = pki.path("metrics.txt");
        std::fs::write(&file, body).expect("write");
        let out = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(&file).expect("open"))
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Distinctive names, an MRN, a result and a birth date: none may reach a log or a metric.
const PHI: [&str; 4] = ["QUIXOTEFAKENAME", "MRN-8675309", "Z9Z9RESULT", "1919-12-31"];

/// Sends messages carrying `patient` down every path — forwarded, NAKed by type, by segment,
/// oversize, without MSH, an engine silent then answering the wrong control ID, a frame cut
/// short — then scrapes `/metrics` at `admin`.
async fn every_path(
    target: &ClientTarget,
    engine: &Engine,
    patient: &str,
    admin: SocketAddr,
) -> String {
    let msg = |kind: &str, id: &str, tail: &str| {
        format!("MSH|^~\\&|A|B|C|D|20261126||{kind}|{id}|P|2.5.1\r{patient}{tail}").into_bytes()
    };
    let mut c = MllpClient::connect(target, T).await.expect("connect");
    let ok = c
        .exchange(&msg("ADT^A01", "PHI-1", ""), T)
        .await
        .expect("forwarded");
    assert_eq!(msa(&ok).0, "AA");
    let nak = c
        .exchange(&msg("ORM^O01", "PHI-2", ""), T)
        .await
        .expect("NAK type");
    assert_eq!(msa(&nak).0, "AR");
    let nak = c
        .exchange(&msg("ADT^A01", "PHI-3", &format!("nte|{}\r", PHI[0])), T)
        .await
        .expect("NAK segment");
    assert_eq!(msa(&nak).0, "AE");
    let big = msg(
        "ADT^A01",
        "PHI-4",
        &format!("NTE|1||{}\r", PHI[2].repeat(400)),
    );
    let nak = c.exchange(&big, T).await.expect("NAK oversize");
    assert_eq!(msa(&nak).0, "AE");
    let nak = c.exchange(patient.as_bytes(), T).await.expect("NAK no MSH");
    assert_eq!(msa(&nak).0, "AE");
    engine.set(Behaviour::Silent);
    let nak = c
        .exchange(&msg("ADT^A01", "PHI-5", ""), T)
        .await
        .expect("NAK upstream");
    assert_eq!(msa(&nak).0, "AR");
    engine.set(Behaviour::WrongControlId);
    let nak = c
        .exchange(&msg("ADT^A01", "PHI-6", ""), T)
        .await
        .expect("NAK protocol");
    assert_eq!(msa(&nak).0, "AR");
    let mut half = MllpCodec::frame(&msg("ADT^A01", "PHI-7", "")).to_vec();
    half.truncate(half.len() - 10);
    c.send_raw(&half).await.expect("half a frame");
    c.close().await;
    // Scraped once the session (its cut frame included) has ended.
    let ended = || async {
        let body = http_get(admin, "/metrics").await.unwrap_or_default();
        mllp_proxy::metrics::sample_value(&body, "mllp_proxy_connections_active{route=\"test\"}")
            == Some(0.0)
    };
    assert!(eventually(T, ended).await, "the session did not end");
    http_get(admin, "/metrics").await.expect("scrape")
}

#[test]
fn no_patient_data_reaches_the_logs_even_at_trace_level() {
    // Distinctive names, MRNs and results travel every path — forwarded, NAKed, upstream
    // failure, oversize, cut mid-frame — with RUST_LOG=trace and JSON logs. None of them
    // appears in any log line or in /metrics, and every line is JSON without a duplicate key.
    let patient = format!(
        "PID|1||{}^^^H^MR||{}^ALONSO||{}\rOBX|1|ST|X||{}\r",
        PHI[1],
        PHI[0],
        PHI[3].replace('-', ""),
        PHI[2]
    );
    let patient = patient.replace("19191231", PHI[3]);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pki = Pki::new();
    let engine = rt.block_on(Engine::start(Behaviour::Ack));
    let extra = "    on_upstream_failure: nak\n    validation:\n      message_types: [\"ADT^*\", \"ORU^*\"]\n      max_message_bytes: 4096\n";
    let yaml = pki
        .config_yaml(&[engine.target()], extra)
        .replace("ack_timeout: 2s", "ack_timeout: 300ms")
        .replace("admin:\n", "logging:\n  format: json\nadmin:\n");
    let config = pki.path("phi.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let mut proxy = ProxyProcess::spawn(&config, "trace");
    let target = pki.target(proxy.addr, ClientCert::Good);
    let admin = proxy.admin;
    let metrics = rt.block_on(every_path(&target, &engine, &patient, admin));
    assert_eq!(proxy.terminate().code(), Some(0));
    let lines = proxy.log_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"target\":\"audit\"") && l.contains("\"ack\":\"AA\"")),
        "audit records were logged"
    );
    assert!(
        lines.iter().any(|l| l.contains("TRACE")),
        "trace lines were logged"
    );
    assert!(
        strict_json(r#"{"target":"engine","n":{"target":1,"x":2},"target":"module"}"#).is_err()
    );
    assert!(strict_json(r#"{"target":"engine","n":{"target":1}}"#).is_ok());
    for line in &lines {
        if let Err(e) = strict_json(line) {
            panic!("not a strict JSON line ({e}): {line}");
        }
        for phi in PHI {
            assert!(
                !line.contains(phi),
                "patient data {phi} in log line: {line}"
            );
        }
    }
    for phi in PHI {
        assert!(!metrics.contains(phi), "patient data {phi} in /metrics");
    }
}
