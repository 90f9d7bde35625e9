//! Interop with third-party HL7 software: python-hl7's asyncio MLLP client (over mutual TLS)
//! and hl7apy's MLLP server as the engine, both installed by .ci/run into a virtualenv.
//!
//! Without the peers these tests say so and pass, unless MLLP_PROXY_REQUIRE_INTEROP=1 (as in
//! CI), where a missing peer is a failure.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// The Python with `hl7` and `hl7apy`, or `None` (after saying why) when it is not set up.
pub fn python() -> Option<PathBuf> {
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
pub struct Reaper(pub Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_hl7_clients_through_proxy_to_hl7apy_engine() {
    // python-hl7 sends 25 messages over mTLS; hl7apy's server (which closes after every
    // message) is the engine; every ACK comes back AA with the matching control ID. Then three
    // python-hl7 clients at once share a pool of one engine connection, reopened after each
    // message because hl7apy closes it: all 75 acknowledged.
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
    for (clients, max_connections) in [(1, 0), (3, 1)] {
        let mut cfg = pki.config(&[format!("127.0.0.1:{port}")], "");
        cfg.routes[0].upstream.max_connections = max_connections;
        let proxy = start_proxy(cfg).await;
        let addr = proxy.routes()[0].1;
        let runs: Vec<_> = (0..clients)
            .map(|_| {
                let py = py.clone();
                let (ca, cert, key) = (
                    pki.path("ca.crt"),
                    pki.path("client.crt"),
                    pki.path("client.key"),
                );
                tokio::task::spawn_blocking(move || {
                    Command::new(py)
                        .arg(peers_script())
                        .args(["client", "127.0.0.1", &addr.port().to_string()])
                        .args([&ca, &cert, &key])
                        .arg("25")
                        .output()
                        .expect("run python-hl7 client")
                })
            })
            .collect();
        for run in runs {
            let out = run.await.expect("client task");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "python-hl7 client failed: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout.contains("acknowledged 25/25"), "{stdout}");
        }
        assert_eq!(
            metric(&proxy, "mllp_proxy_acks_total{code=\"AA\",route=\"test\"}").await,
            25.0 * clients as f64
        );
    }
    if let Some(stdin) = engine.0.stdin.as_mut() {
        let _ = stdin.write_all(b"\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_naks_parse_in_python_hl7_and_hl7apy() {
    // NAKs written by the proxy (AR 200, AE 101, their enhanced-mode CR/CE forms, and the
    // pre-2.5 ERR-1 form) parse in both libraries, which read back MSA-1, MSA-2 and the code.
    let Some(py) = python() else { return };
    let World {
        pki, engine, proxy, ..
    } = Harness::new()
        .route_yaml("    validation:\n      message_types: [\"ADT^*\"]\n")
        .start()
        .await;
    let mut client = connect(&pki, &proxy, ClientCert::Good).await;
    let cases: [(&[u8], &str); 5] = [
        (
            b"MSH|^~\\&|OE|WARD|LAB|HOSP|20261126||ORM^O01^ORM_O01|ORD-77|P|2.5.1\rPID|1||X\r",
            "AR ORD-77 200",
        ),
        (
            b"MSH|^~\\&|OE|WARD|LAB|HOSP|20261126||ADT^A01^ADT_A01||P|2.5.1\rPID|1||X\r",
            "AE  101",
        ),
        // Enhanced mode (MSH-15 set): commit codes.
        (
            b"MSH|^~\\&|OE|WARD|LAB|HOSP|20261126||ORM^O01|ENH-1|P|2.5.1|||AL|NE\rPID|1||X\r",
            "CR ENH-1 200",
        ),
        (
            b"MSH|^~\\&|OE|WARD|LAB|HOSP|20261126||ADT^A01|ENH-2|P|2.5.1|||AL|NE\rpid|1||X\r",
            "CE ENH-2 100",
        ),
        // v2.3: the ERR-1 form.
        (
            b"MSH|^~\\&|OE|WARD|LAB|HOSP|20261126||ORM^O01|OLD-1|P|2.3\rPID|1||X\r",
            "AR OLD-1 200",
        ),
    ];
    for (msg, want) in cases {
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

/// `node`, with node-hl7-client installed in tests/interop, or `None` after saying why.
fn node_client() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let ok = dir
        .join("node_modules/node-hl7-client/package.json")
        .exists()
        && Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if ok {
        return Some(dir.join("node-client.cjs"));
    }
    let msg = "node and node-hl7-client not found (run tests/run.sh: npm ci in tests/interop)";
    if std::env::var("MLLP_PROXY_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_hl7_client_is_served_by_a_lenient_route_and_told_why_by_a_strict_one() {
    // node-hl7-client sends over mutual TLS. It trims the final segment terminator: a lenient
    // route re-terminates and the engine ACKs all 25 (AA); a strict route answers each with
    // AE (ERR 100) and the sender's own control ID, and forwards nothing.
    let Some(script) = node_client() else { return };
    let pki = Pki::new();
    for (mode, expected, forwarded) in [("lenient", "AA", 25), ("strict", "AE", 0)] {
        let engine = Engine::start(Behaviour::Ack).await;
        let extra = format!("    validation:\n      mode: {mode}\n");
        let proxy = start_proxy(pki.config(&[engine.target()], &extra)).await;
        let port = proxy.routes()[0].1.port().to_string();
        let (ca, cert, key) = (
            pki.path("ca.crt"),
            pki.path("client.crt"),
            pki.path("client.key"),
        );
        let script = script.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("node")
                .arg(script)
                .args(["127.0.0.1", &port])
                .args([&ca, &cert, &key])
                .args(["25", expected])
                .output()
                .expect("run node-hl7-client")
        })
        .await
        .expect("client task");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("{expected} for 25/25")),
            "{mode}: {stdout}"
        );
        assert_eq!(engine.received().len(), forwarded, "{mode}");
    }
}

/// A peer handed a port that another test took in the meantime cannot bind it, while a
/// connect to the port succeeds (the other test's server answers). The launcher notices the
/// peer does not hold the port and starts it again on another.
#[test]
fn a_peer_that_cannot_bind_its_port_is_started_again_on_another() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("addr").port();
    let mut given = Vec::new();
    let (mut child, addr) = spawn_listening(false, Duration::from_secs(10), |port| {
        let port = if given.is_empty() { taken_port } else { port };
        given.push(port);
        let listen = "import socket, sys, time\ns = socket.socket()\ns.bind(('127.0.0.1', int(sys.argv[1])))\ns.listen()\ntime.sleep(60)";
        Command::new("python3")
            .args(["-c", listen, &port.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .expect("python3")
    });
    let _ = child.kill();
    let _ = child.wait();
    let port = addr.port();
    assert_eq!(given.len(), 2, "{given:?}");
    assert_eq!(given[0], taken_port);
    assert_eq!(port, given[1]);
    assert_ne!(port, taken_port);
    assert!(!listens(std::process::id(), port, false));
    assert!(listens(std::process::id(), taken_port, false));
}
