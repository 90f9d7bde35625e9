//! `mllp-proxy demo`: a self-contained round trip on the example configuration and the example
//! certificates, both compiled into the binary so the demo runs from any folder.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
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

/// Where the demo keeps its files (certificates, the audit trail) while it runs.
pub fn folder() -> PathBuf {
    std::env::temp_dir().join(format!("mllp-proxy-demo-{}", std::process::id()))
}

/// Runs the demo; `Ok(true)` when every message got AA. With `tunnel`, the sender speaks plain
/// MLLP to an egress route, which forwards over mutual TLS to the ingress route. Audit records
/// go to `audit` (in [`folder`]), summarised at the end.
pub async fn run(
    once: bool,
    tunnel: bool,
    audit: &Path,
    log: AuditLog,
) -> Result<bool, ClientError> {
    let dir = folder();
    let result = run_in(&dir, once, tunnel, audit, log).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn fail(what: &str, e: &dyn std::fmt::Display) -> ClientError {
    ClientError(format!("{what}: {e}"))
}

async fn run_in(
    dir: &Path,
    once: bool,
    tunnel: bool,
    audit: &Path,
    log: AuditLog,
) -> Result<bool, ClientError> {
    let (certs, examples) = (dir.join("certs-example"), dir.join("examples"));
    write_examples(&certs, &examples)?;
    let stop_engine = CancellationToken::new();
    let engine_addr = start_engine(stop_engine.clone()).await?;
    let mut config = Config::from_yaml(EXAMPLE_CONFIG, &examples)
        .map_err(|e| fail("example configuration", &e))?;
    let loopback = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    config.admin.listen = loopback(0);
    for route in &mut config.routes {
        route.listen = loopback(0);
        route.upstream.targets = vec![engine_addr.to_string()];
    }
    let drain = config.shutdown.drain_timeout;
    let ingress = start(config, log.clone()).await?;
    let (route, ingress_addr) = ingress.routes()[0].clone();

    println!("mllp-proxy demo (example certificates: NOT FOR PRODUCTION)");
    println!("  stand-in engine (plain MLLP)   {engine_addr}");
    println!("  ingress route {route:<16} {ingress_addr}  (mutual TLS)");
    let egress = match tunnel {
        false => None,
        true => Some(start_egress(&examples, ingress_addr, log.clone()).await?),
    };
    let (target, admins) = match &egress {
        None => (client_target(&certs, ingress_addr)?, vec![ingress.admin()]),
        Some(e) => {
            let addr = e.routes()[0].1;
            println!(
                "  egress route {:<17} {addr}  (plain MLLP in, mutual TLS to the ingress route)",
                "to-lab"
            );
            (plain_target(addr), vec![e.admin(), ingress.admin()])
        }
    };
    println!(
        "  admin                          http://{}/metrics",
        admins[0]
    );
    println!();

    let all_ok = send_messages(&target).await?;
    for admin in &admins {
        print_metrics(*admin).await;
    }
    summarise_audit(audit, once).await;
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
        stay_up(&certs, ingress_addr, egress.as_ref(), admins[0]).await?;
    }
    if let Some(e) = egress {
        e.shutdown(drain).await;
    }
    ingress.shutdown(drain).await;
    stop_engine.cancel();
    Ok(all_ok)
}

/// The example certificates into `certs`, and the folder the example configuration's
/// relative paths are read from.
fn write_examples(certs: &Path, examples: &Path) -> Result<(), ClientError> {
    std::fs::create_dir_all(certs).map_err(|e| fail("temporary folder", &e))?;
    std::fs::create_dir_all(examples).map_err(|e| fail("temporary folder", &e))?;
    for (name, text) in EXAMPLE_FILES {
        std::fs::write(certs.join(name), text).map_err(|e| fail("temporary folder", &e))?;
    }
    Ok(())
}

/// `ack-server`'s engine on a loopback port, until `stop`; its address.
async fn start_engine(stop: CancellationToken) -> Result<std::net::SocketAddr, ClientError> {
    let engine = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| fail("stand-in engine", &e))?;
    let addr = engine
        .local_addr()
        .map_err(|e| fail("stand-in engine", &e))?;
    tokio::spawn(super::ack_server::serve(
        engine,
        std::sync::Arc::new(super::ack_server::Engine::plain()),
        stop,
    ));
    Ok(addr)
}

async fn start(config: Config, audit: AuditLog) -> Result<crate::proxy::RunningProxy, ClientError> {
    let metrics = Metrics::new().map_err(|e| fail("metrics", &e))?;
    let options = crate::proxy::Options {
        audit,
        ..Default::default()
    };
    crate::proxy::start_with(config, metrics, options)
        .await
        .map_err(|e| fail("proxy", &e))
}

/// The egress half: a plain listener whose engine is the partner's ingress route at `to`,
/// reached over mutual TLS with the example client certificate.
async fn start_egress(
    examples: &Path,
    to: std::net::SocketAddr,
    audit: AuditLog,
) -> Result<crate::proxy::RunningProxy, ClientError> {
    let yaml = format!(
        r#"
admin: {{ listen: "127.0.0.1:0" }}
routes:
  - name: to-lab
    listen: "127.0.0.1:0"
    plaintext: true
    upstream:
      targets: ["{to}"]
      tls:
        ca: ../certs-example/ca.crt
        certificate: ../certs-example/client.crt
        private_key: ../certs-example/client.key
        server_name: localhost
"#
    );
    let config =
        Config::from_yaml(&yaml, examples).map_err(|e| fail("egress configuration", &e))?;
    start(config, audit).await
}

/// Keeps the proxies up for the person at the terminal, until Ctrl-C.
async fn stay_up(
    certs: &Path,
    ingress: std::net::SocketAddr,
    egress: Option<&crate::proxy::RunningProxy>,
    admin: std::net::SocketAddr,
) -> Result<(), ClientError> {
    let c = certs.display();
    println!();
    println!("the proxy stays up; try it from another terminal (while this one runs):");
    let message = "printf 'MSH|^~\\&|ADT_SYS|GENHOSP|LAB|GENHOSP|20261126||ADT^A01|MY-1|P|2.5.1\nPID|1||X\n' | \\\n";
    match egress {
        None => println!(
            "  {message}    cargo run --release -- send --to {ingress} --server-name localhost \\\n    --ca {c}/ca.crt --cert {c}/client.crt --key {c}/client.key"
        ),
        Some(e) => println!(
            "  {message}    cargo run --release -- send --to {}     # plain MLLP, as a local engine",
            e.routes()[0].1
        ),
    }
    println!("  curl -s http://{admin}/metrics | grep ^mllp_proxy");
    println!("press Ctrl-C to stop");
    let mut signals = Signals::new().map_err(|e| fail("signals", &e))?;
    while signals.next().await != Signal::Terminate {}
    Ok(())
}

/// Counts the audit records written so far by event, instead of printing them whole.
async fn summarise_audit(audit: &Path, once: bool) {
    // The writer thread writes in batches, at most 50 ms apart.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let text = std::fs::read_to_string(audit).unwrap_or_default();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for line in text.lines() {
        let Some(event) = line
            .split_once("event=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(e, _)| e.to_string())
        else {
            continue;
        };
        match counts.iter_mut().find(|(e, _)| *e == event) {
            Some((_, n)) => *n += 1,
            None => counts.push((event, 1)),
        }
    }
    let list: Vec<String> = counts.iter().map(|(e, n)| format!("{n} {e}")).collect();
    println!();
    println!("audit trail: {}", list.join(", "));
    println!("  (who sent which control ID, with the certificate and the ACK: docs/operations.md)");
    if !once {
        println!("  written to {} while the demo runs", audit.display());
    }
}

/// Sends the sample messages over one connection and prints each ACK; `true` when every one
/// was answered AA with its own control ID.
async fn send_messages(target: &ClientTarget) -> Result<bool, ClientError> {
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
            // The series a first-time user should look at, those that are not zero.
            let shown = crate::metrics::samples(&body).filter(|s| {
                s.value != 0.0
                    && [
                        "mllp_proxy_messages_",
                        "mllp_proxy_acks_total",
                        "mllp_proxy_connections_accepted",
                        "mllp_proxy_upstream_up",
                        "mllp_proxy_upstream_ack_seconds_count",
                        "mllp_proxy_upstream_tls_handshake_failures_total",
                    ]
                    .iter()
                    .any(|p| s.name.starts_with(p))
            });
            for s in shown {
                println!("  {}{} {}", s.name, s.labels, s.value);
            }
        }
        Err(e) => println!("  (scrape failed: {e})"),
    }
}

fn plain_target(addr: std::net::SocketAddr) -> ClientTarget {
    ClientTarget {
        addr: addr.to_string(),
        tls: None,
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
