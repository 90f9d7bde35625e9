//! `mllp-proxy demo`: a self-contained round trip on the example configuration and the example
//! certificates, both compiled into the binary so the demo runs from any folder.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::client::{ClientError, ClientTarget, MllpClient};
use crate::config::Config;
use crate::hl7::{AckCode, Header, parse_ack};
use crate::metrics::Metrics;
use crate::shutdown::{Signal, Signals};

const EXAMPLE_CONFIG: &str = include_str!("../../examples/mllp-proxy.yaml");
const EXAMPLE_FILES: &[(&str, &str)] = &[
    ("ca.crt", include_str!("../../certs-example/ca.crt")),
    ("server.crt", include_str!("../../certs-example/server.crt")),
    ("server.key", include_str!("../../certs-example/server.key")),
    ("client.crt", include_str!("../../certs-example/client.crt")),
    ("client.key", include_str!("../../certs-example/client.key")),
];

/// Synthetic messages: made-up patients, no real data.
const MESSAGES: &[&str] = &[
    "MSH|^~\\&|ADT_SYS|GENHOSP|LAB_ENGINE|GENHOSP|20261126083000||ADT^A01^ADT_A01|DEMO-0001|P|2.5.1\rEVN|A01|20261126083000\rPID|1||MRN-100231^^^GENHOSP^MR||TESTPATIENT^ALICE^Q||19800214|F|||12 EXAMPLE ST^^SPRINGFIELD^ST^00001\rPV1|1|I|WARD3^301^A||||1234^DEMO^DOCTOR\r",
    "MSH|^~\\&|ADT_SYS|GENHOSP|LAB_ENGINE|GENHOSP|20261126083500||ADT^A08^ADT_A01|DEMO-0002|P|2.5.1\rEVN|A08|20261126083500\rPID|1||MRN-100231^^^GENHOSP^MR||TESTPATIENT^ALICE^Q||19800214|F\rPV1|1|I|WARD3^302^B\r",
    "MSH|^~\\&|LIS|GENHOSP|LAB_ENGINE|GENHOSP|20261126091200||ORU^R01^ORU_R01|DEMO-0003|P|2.5.1\rPID|1||MRN-100231^^^GENHOSP^MR||TESTPATIENT^ALICE^Q||19800214|F\rOBR|1|ORD-5501|FIL-7781|24331-1^Lipid panel^LN|||20261126080000\rOBX|1|NM|2093-3^Cholesterol^LN||182|mg/dL|<200|N|||F\rOBX|2|NM|2571-8^Triglyceride^LN||141|mg/dL|<150|N|||F\r",
    "MSH|^~\\&|LIS|GENHOSP|LAB_ENGINE|GENHOSP|20261126091500||ORU^R01^ORU_R01|DEMO-0004|P|2.5.1\rPID|1||MRN-100877^^^GENHOSP^MR||SAMPLE^BOB||19721103|M\rOBR|1|ORD-5502|FIL-7782|58410-2^CBC panel^LN|||20261126081000\rOBX|1|NM|718-7^Hemoglobin^LN||14.1|g/dL|13.5-17.5|N|||F\r",
    "MSH|^~\\&|ADT_SYS|GENHOSP|LAB_ENGINE|GENHOSP|20261126170000||ADT^A03^ADT_A03|DEMO-0005|P|2.5.1\rEVN|A03|20261126170000\rPID|1||MRN-100231^^^GENHOSP^MR||TESTPATIENT^ALICE^Q||19800214|F\rPV1|1|I|WARD3^302^B\r",
];

/// Runs the demo; `Ok(true)` when every message got AA.
pub async fn run(once: bool) -> Result<bool, ClientError> {
    let dir = std::env::temp_dir().join(format!("mllp-proxy-demo-{}", std::process::id()));
    let result = run_in(&dir, once).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: &Path, once: bool) -> Result<bool, ClientError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| ClientError(format!("{what}: {e}"));
    let certs = dir.join("certs-example");
    let examples = dir.join("examples");
    std::fs::create_dir_all(&certs).map_err(|e| fail("temporary folder", &e))?;
    std::fs::create_dir_all(&examples).map_err(|e| fail("temporary folder", &e))?;
    for (name, text) in EXAMPLE_FILES {
        std::fs::write(certs.join(name), text).map_err(|e| fail("temporary folder", &e))?;
    }
    let mut config = Config::from_yaml(EXAMPLE_CONFIG, &examples)
        .map_err(|e| fail("example configuration", &e))?;

    let engine = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| fail("stand-in engine", &e))?;
    let engine_addr = engine
        .local_addr()
        .map_err(|e| fail("stand-in engine", &e))?;
    let stop_engine = CancellationToken::new();
    tokio::spawn(super::ack_server::serve(
        engine,
        std::sync::Arc::new(super::ack_server::Engine::plain()),
        stop_engine.clone(),
    ));

    let loopback = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    config.admin.listen = loopback(0);
    for route in &mut config.routes {
        route.listen = loopback(0);
        route.upstream.targets = vec![engine_addr.to_string()];
    }
    let drain = config.shutdown.drain_timeout;
    let metrics = Metrics::new().map_err(|e| fail("metrics", &e))?;
    let proxy = crate::proxy::start(config, metrics)
        .await
        .map_err(|e| fail("proxy", &e))?;
    let (route, proxy_addr) = proxy.routes()[0].clone();

    println!("mllp-proxy demo (example certificates: NOT FOR PRODUCTION)");
    println!("  stand-in engine (plain MLLP)  {engine_addr}");
    println!("  proxy route {route:<17} {proxy_addr}  (mutual TLS)");
    println!(
        "  admin                         http://{}/metrics",
        proxy.admin()
    );
    println!();

    let target = client_target(&certs, proxy_addr)?;
    let all_ok = send_messages(&target).await?;
    print_metrics(proxy.admin()).await;
    println!();
    println!(
        "{}",
        if all_ok {
            "every message was acknowledged (AA)"
        } else {
            "SOME MESSAGES WERE NOT ACKNOWLEDGED"
        }
    );

    if !once {
        let certs_hint = certs.display();
        println!();
        println!("the proxy stays up; try it from another terminal (while this one runs):");
        println!(
            "  printf 'MSH|^~\\\\&|ADT_SYS|GENHOSP|LAB|GENHOSP|20261126||ADT^A01|MY-1|P|2.5.1\\nPID|1||X\\n' | \\\n    cargo run --release -- send --to {proxy_addr} --server-name localhost \\\n    --ca {certs_hint}/ca.crt --cert {certs_hint}/client.crt --key {certs_hint}/client.key"
        );
        println!(
            "  curl -s http://{}/metrics | grep ^mllp_proxy",
            proxy.admin()
        );
        println!("press Ctrl-C to stop");
        let mut signals = Signals::new().map_err(|e| fail("signals", &e))?;
        while signals.next().await != Signal::Terminate {}
    }
    proxy.shutdown(drain).await;
    stop_engine.cancel();
    Ok(all_ok)
}

/// Sends the sample messages over one connection and prints each ACK; `true` when every one
/// was answered AA with its own control ID.
async fn send_messages(target: &ClientTarget) -> Result<bool, ClientError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| ClientError(format!("{what}: {e}"));
    let mut client = MllpClient::connect(target, Duration::from_secs(10)).await?;
    let mut all_ok = true;
    for msg in MESSAGES {
        let header = Header::parse(msg.as_bytes()).map_err(|e| fail("demo message", &e))?;
        let kind = String::from_utf8_lossy(header.message_type).into_owned();
        let id = String::from_utf8_lossy(header.control_id).into_owned();
        let started = Instant::now();
        let answer = client
            .exchange(msg.as_bytes(), Duration::from_secs(10))
            .await?;
        let took = readable(started.elapsed());
        match parse_ack(&answer) {
            Some(ack) => {
                let ok = ack.code == AckCode::AA && ack.control_id == header.control_id;
                all_ok &= ok;
                println!(
                    "  sent {kind:<18} {id}  ->  ACK {} {}  ({took}){}",
                    ack.code,
                    String::from_utf8_lossy(ack.control_id),
                    if ok { "" } else { "  UNEXPECTED" }
                );
            }
            None => {
                all_ok = false;
                println!("  sent {kind:<18} {id}  ->  answer without MSA");
            }
        }
    }
    client.close().await;
    Ok(all_ok)
}

/// Prints the metrics a first-time user should look at.
async fn print_metrics(admin: std::net::SocketAddr) {
    println!();
    println!("metrics (from http://{admin}/metrics):");
    match crate::client::http_get(admin, "/metrics").await {
        Ok(body) => {
            for line in body.lines().filter(|l| {
                !l.starts_with('#')
                    && (l.starts_with("mllp_proxy_messages_")
                        || l.starts_with("mllp_proxy_acks_total")
                        || l.starts_with("mllp_proxy_connections_accepted")
                        || l.starts_with("mllp_proxy_upstream_up")
                        || l.starts_with("mllp_proxy_upstream_ack_seconds_count")
                        || l.starts_with("mllp_proxy_certificate_expiry"))
            }) {
                println!("  {line}");
            }
        }
        Err(e) => println!("  (scrape failed: {e})"),
    }
}

fn client_target(certs: &Path, addr: std::net::SocketAddr) -> Result<ClientTarget, ClientError> {
    let file = |n: &str| -> PathBuf { certs.join(n) };
    let tls = super::TlsArgs {
        ca: Some(file("ca.crt")),
        cert: Some(file("client.crt")),
        key: Some(file("client.key")),
        server_name: Some("localhost".into()),
    };
    tls.target(&addr.to_string())
}
/// A round-trip time as a person reads it: microseconds below a millisecond.
fn readable(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1000 {
        format!("{us} µs")
    } else {
        format!("{:.1} ms", us as f64 / 1000.0)
    }
}
