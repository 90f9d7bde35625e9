//! Egress with third-party peers: python-hl7's plain MLLP client through an egress and an
//! ingress proxy to hl7apy's and python-hl7's servers; stunnel as the partner's TLS
//! terminator; node-hl7-server as an engine that must get one message per connection.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mllp_proxy::client::MllpClient;
use mllp_proxy::config::Config;

use crate::egress::{MUTUAL, egress_yaml, plain, start_egress};
use crate::interop::{Reaper, python};
use crate::support::*;

const T: Duration = Duration::from_secs(10);

fn skip<T>(why: &str) -> Option<T> {
    if std::env::var("MLLP_PROXY_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
        panic!("{why} (tests/run.sh installs it)");
    }
    eprintln!("SKIPPED: {why}");
    None
}

fn interop(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(file)
}

/// Starts `peers.py ROLE LOG` and reads the port it prints.
fn python_engine(py: &Path, role: &str, log: &Path) -> (Reaper, u16) {
    let mut child = Command::new(py)
        .arg(interop("peers.py"))
        .args([role, &log.display().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python engine");
    let stdout = child.stdout.take().expect("stdout");
    let port = BufReader::new(stdout)
        .lines()
        .next()
        .expect("engine printed its port")
        .expect("read")
        .trim()
        .parse()
        .expect("port");
    (Reaper(child), port)
}

/// `control ID -> ACK` from JSON lines, and the control IDs in order.
fn acks(text: &str) -> (HashMap<String, String>, Vec<String>) {
    let mut map = HashMap::new();
    let mut order = Vec::new();
    for line in text.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        let id = v["control_id"].as_str().expect("control_id").to_string();
        let ack = v["ack"].as_str().expect("ack").to_string();
        order.push(id.clone());
        map.insert(id, ack);
    }
    (map, order)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_hl7_through_egress_and_ingress_gets_the_engines_own_acks() {
    let Some(py) = python() else { return };
    for role in ["engine", "hl7-engine"] {
        let pki = Pki::new();
        let log = pki.path("engine.jsonl");
        let (_engine, port) = python_engine(&py, role, &log);
        let ingress = start_proxy(pki.config(&[format!("127.0.0.1:{port}")], "")).await;
        let to = ingress.routes()[0].1.to_string();
        let egress = start_egress(&pki, &egress_yaml(&[to], MUTUAL, "")).await;
        let at = egress.routes()[0].1;
        let runs: Vec<_> = ["A", "B"]
            .into_iter()
            .map(|prefix| {
                let py = py.clone();
                tokio::task::spawn_blocking(move || {
                    Command::new(py)
                        .arg(interop("peers.py"))
                        .args([
                            "plain-client",
                            "127.0.0.1",
                            &at.port().to_string(),
                            "10",
                            prefix,
                        ])
                        .output()
                        .expect("run python-hl7 client")
                })
            })
            .collect();
        let mut seen = HashMap::new();
        for run in runs {
            let out = run.await.expect("client");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{role}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            seen.extend(acks(&stdout).0);
        }
        let (written, order) = acks(&std::fs::read_to_string(&log).expect("engine log"));
        assert_eq!(seen.len(), 20, "{role}");
        // Every ACK the senders got is, byte for byte, the one the engine wrote.
        for (id, ack) in &seen {
            assert_eq!(Some(ack), written.get(id), "{role}: {id}");
            assert!(ack.contains("|AA|"), "{role}: {ack}");
        }
        // Each message once at the engine, and each sender's in its order.
        assert_eq!(order.len(), 20, "{role}: {order:?}");
        for prefix in ["A", "B"] {
            let mine: Vec<&String> = order.iter().filter(|i| i.starts_with(prefix)).collect();
            let mut sorted = mine.clone();
            sorted.sort();
            assert_eq!(mine, sorted, "{role}: {prefix} out of order");
        }
    }
}

/// stunnel 4/5, or `None` after saying why.
pub fn stunnel() -> Option<PathBuf> {
    required_tool("stunnel4", "-version", "stunnel4")
        .or_else(|| required_tool("stunnel", "-version", "stunnel4"))
}

/// stunnel in server mode on a free loopback port, presenting the test PKI's `server`
/// certificate and requiring a client certificate from the test CA, in front of `to`; returns
/// it (stopped when dropped) and its address.
async fn start_stunnel(stunnel: &Path, pki: &Pki, to: &str) -> (Reaper, std::net::SocketAddr) {
    start_stunnel_as(stunnel, pki, "server", to).await
}

/// [`start_stunnel`] presenting `NAME.crt` of the test PKI.
pub async fn start_stunnel_as(
    stunnel: &Path,
    pki: &Pki,
    cert: &str,
    to: &str,
) -> (Reaper, std::net::SocketAddr) {
    let conf = pki.path("stunnel.conf");
    let (child, front) = spawn_listening(false, T, |port| {
        let text = format!(
            "foreground = yes\npid =\n[mllp]\naccept = 127.0.0.1:{port}\nconnect = {to}\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
            pki.path(&format!("{cert}.crt")).display(),
            pki.path(&format!("{cert}.key")).display(),
            pki.path("ca.crt").display()
        );
        std::fs::write(&conf, text).expect("stunnel.conf");
        Command::new(stunnel)
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start stunnel")
    });
    (Reaper(child), front)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_to_stunnel_requiring_a_client_certificate_in_front_of_python_hl7() {
    let Some(py) = python() else { return };
    let Some(stunnel) = stunnel() else { return };
    let pki = Pki::new();
    let log = pki.path("engine.jsonl");
    let (_engine, port) = python_engine(&py, "hl7-engine", &log);
    let (_stunnel, front) = start_stunnel(&stunnel, &pki, &format!("127.0.0.1:{port}")).await;
    let egress = start_egress(&pki, &egress_yaml(&[front.to_string()], MUTUAL, "")).await;
    let mut c = MllpClient::connect(&plain(egress.routes()[0].1), T)
        .await
        .expect("connect");
    for i in 0..10 {
        let id = format!("ST-{i}");
        let ack = c.exchange(&adt(&id), T).await.expect("ACK through stunnel");
        assert_eq!(msa(&ack), ("AA".into(), id));
    }
    let (written, order) = acks(&std::fs::read_to_string(&log).expect("engine log"));
    assert_eq!(order.len(), 10);
    assert_eq!(written.len(), 10);

    // Without our certificate stunnel refuses the handshake: kind tls, nothing delivered.
    let nak = "    on_upstream_failure: nak\n";
    let bare = start_egress(
        &pki,
        &egress_yaml(&[front.to_string()], "        ca: ca.crt", nak),
    )
    .await;
    let mut c = MllpClient::connect(&plain(bare.routes()[0].1), T)
        .await
        .expect("connect");
    let answer = c
        .exchange(&adt("NO-CERT"), T)
        .await
        .expect("the proxy's NAK");
    assert_eq!(msa(&answer).0, "AR");
    let refused = format!(
        "mllp_proxy_upstream_tls_handshake_failures_total{{reason=\"client_cert_required\",route=\"egress\",target=\"{front}\"}}"
    );
    assert_eq!(metric(&bare, &refused).await, 1.0);
    assert_eq!(
        acks(&std::fs::read_to_string(&log).expect("log")).1.len(),
        10
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_hl7_server_gets_each_message_once_with_one_message_per_connection() {
    let Some(node) = required_tool("node", "--version", "nodejs") else {
        return;
    };
    if !interop("node_modules/node-hl7-server/package.json").exists() {
        let _: Option<()> = skip("node-hl7-server not installed in tests/interop/node_modules");
        return;
    }
    // Port 0: a port picked here and released before node bound it could be handed to
    // another test's engine meanwhile, and these messages would reach that engine.
    let mut child = Command::new(node)
        .arg(interop("node-server.cjs"))
        .arg("0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start node-hl7-server");
    let stdout = child.stdout.take().expect("stdout");
    let _server = Reaper(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = rx.recv_timeout(T).expect("node started");
    let port: u16 = started
        .strip_prefix("LISTENING ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("node-hl7-server did not listen: {started}"));
    let target = format!("127.0.0.1:{port}");
    assert!(
        eventually(T, || async {
            tokio::net::TcpStream::connect(&target).await.is_ok()
        })
        .await
    );
    let pki = Pki::new();
    let route = "    validation: { mode: lenient }\n";
    let mut cfg = pki.config(std::slice::from_ref(&target), route);
    cfg.routes[0].upstream.messages_per_connection = 1;
    let proxy = start_proxy(cfg).await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(connect(&pki, &proxy, ClientCert::Good).await);
    }
    for i in 0..10 {
        for (s, c) in clients.iter_mut().enumerate() {
            let id = format!("N{s}-{i}");
            let ack = c.exchange(&adt(&id), T).await.expect("ACK");
            assert_eq!(msa(&ack), ("AA".into(), id));
        }
    }
    let mut received: Vec<String> = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        if let Some(id) = line.strip_prefix("RECEIVED ") {
            received.push(id.to_string());
        }
    }
    received.sort();
    let mut want: Vec<String> = (0..2)
        .flat_map(|s| (0..10).map(move |i| format!("N{s}-{i}")))
        .collect();
    want.sort();
    assert_eq!(received, want, "each message received once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_reconnect_to_a_partner_that_issues_tickets_resumes_its_session() {
    let Some(stunnel) = stunnel() else { return };
    let pki = Pki::new();
    let engine = Engine::start(Behaviour::Ack).await;
    let (_stunnel, front) = start_stunnel(&stunnel, &pki, &engine.target()).await;
    // Pooled connections closed after 200 ms idle; the partner's identity narrowed, so the
    // check must hold on a resumed session too.
    let tls = format!(
        "{MUTUAL}\n        server_name: localhost\n        allowed_servers: [{{dns: localhost}}]"
    );
    let yaml = egress_yaml(&[front.to_string()], &tls, "");
    let mut cfg = Config::from_yaml(&yaml, pki.dir.path()).expect("egress config");
    cfg.routes[0].upstream.idle_timeout = Duration::from_millis(200);
    let file = pki.path("egress-audit.jsonl");
    let (egress, _writer) = start_audited(cfg, &file).await;
    for id in ["R-1", "R-2"] {
        let mut c = MllpClient::connect(&plain(egress.routes()[0].1), T)
            .await
            .expect("connect");
        assert_eq!(
            msa(&c.exchange(&adt(id), T).await.expect("ACK")),
            ("AA".into(), id.into())
        );
        c.close().await;
        // Long enough for the pooled connection to be closed as idle: time is the subject.
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    let sessions = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "upstream_session")
            .collect()
    };
    assert!(eventually(T, || async { sessions().len() >= 2 }).await);
    let sessions = sessions();
    let kinds: Vec<&str> = sessions
        .iter()
        .filter_map(|v| v["handshake"].as_str())
        .collect();
    assert_eq!(kinds, ["full", "resumed"], "{sessions:?}");
    assert_eq!(engine.received_ids(), ["R-1", "R-2"]);
}
