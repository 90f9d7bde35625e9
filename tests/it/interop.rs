//! Interop with third-party HL7 software: python-hl7's asyncio MLLP client (over mutual TLS)
//! and hl7apy's MLLP server as the engine, both installed by .ci/run into a virtualenv.
//!
//! Without the peers these tests say so and pass, unless MLLP_PROXY_REQUIRE_INTEROP=1 (as in
//! CI), where a missing peer is a failure.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mllp_proxy::cli::MllpClient;

use crate::support::*;

/// The Python with `hl7` and `hl7apy`, or `None` (after saying why) when it is not set up.
fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("MLLP_PROXY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/interop-venv/bin/python")
        });
    let usable = Command::new(&candidate)
        .args(["-c", "import hl7, hl7apy"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if usable {
        return Some(candidate);
    }
    let msg = format!(
        "python with hl7 and hl7apy not found at {} (run .ci/run, or set MLLP_PROXY_PYTHON)",
        candidate.display()
    );
    if std::env::var("MLLP_PROXY_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

fn peers_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/peers.py")
}

/// Kills the child when the test ends, however it ends.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_hl7_client_through_proxy_to_hl7apy_engine() {
    // python-hl7 sends 25 messages over mTLS; hl7apy's server (which closes after every
    // message) is the engine; every ACK comes back AA with the matching control ID.
    let Some(py) = python() else { return };
    let mut engine = Reaper(
        Command::new(&py)
            .arg(peers_script())
            .arg("engine")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start hl7apy engine"),
    );
    let stdout = engine.0.stdout.take().expect("engine stdout");
    let port: u16 = BufReader::new(stdout)
        .lines()
        .next()
        .expect("engine printed its port")
        .expect("read port")
        .trim()
        .parse()
        .expect("port number");

    let pki = Pki::new();
    let proxy = start_proxy(pki.config(&[format!("127.0.0.1:{port}")], "")).await;
    let addr = proxy.routes[0].1;
    let out = tokio::task::spawn_blocking({
        let py = py.clone();
        let (ca, cert, key) = (
            pki.path("ca.crt"),
            pki.path("client.crt"),
            pki.path("client.key"),
        );
        move || {
            Command::new(py)
                .arg(peers_script())
                .args(["client", "127.0.0.1", &addr.port().to_string()])
                .args([&ca, &cert, &key])
                .arg("25")
                .output()
                .expect("run python-hl7 client")
        }
    })
    .await
    .expect("client task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python-hl7 client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("acknowledged 25/25"), "{stdout}");
    assert_eq!(
        metric(&proxy, "mllp_proxy_acks_total{code=\"AA\",route=\"test\"}").await,
        25.0
    );
    if let Some(stdin) = engine.0.stdin.as_mut() {
        let _ = stdin.write_all(b"\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_naks_parse_in_python_hl7_and_hl7apy() {
    // NAKs written by the proxy (unsupported message type → AR 200; missing MSH-10 → AE 101)
    // parse in both libraries, which read back MSA-1, MSA-2 and the ERR code.
    let Some(py) = python() else { return };
    let pki = Pki::new();
    let engine = Engine::start(Behaviour::Ack).await;
    let proxy = start_proxy(pki.config(
        &[engine.target()],
        "    validation:\n      message_types: [\"ADT^*\"]\n",
    ))
    .await;
    let mut client = MllpClient::connect(
        &pki.target(proxy.routes[0].1, ClientCert::Good),
        Duration::from_secs(5),
    )
    .await
    .expect("connect");
    let orm = b"MSH|^~\\&|OE|WARD|LAB|HOSP|20261126||ORM^O01^ORM_O01|ORD-77|P|2.5.1\rPID|1||X\r";
    let no_id = b"MSH|^~\\&|OE|WARD|LAB|HOSP|20261126||ADT^A01^ADT_A01||P|2.5.1\rPID|1||X\r";
    for (msg, want) in [(&orm[..], "AR ORD-77 200"), (&no_id[..], "AE  101")] {
        let nak = client
            .exchange(msg, Duration::from_secs(5))
            .await
            .expect("NAK");
        let file = pki.path("nak.hl7");
        std::fs::write(&file, &nak).expect("write NAK");
        let out = Command::new(&py)
            .arg(peers_script())
            .arg("parse-nak")
            .arg(&file)
            .output()
            .expect("run parser");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&format!("python-hl7 {want}")), "{stdout}");
        assert!(stdout.contains(&format!("hl7apy {want}")), "{stdout}");
    }
    assert!(engine.received().is_empty());
}
