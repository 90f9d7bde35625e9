//! The tool commands as a user runs them: `check`, `send`, `ack-server`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use crate::support::*;

fn run(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("run mllp-proxy")
}

/// `run` off the async workers, for tests that also serve a proxy in-process.
async fn run_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(binary())
            .args(&args)
            .output()
            .expect("run mllp-proxy")
    })
    .await
    .expect("task")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn check_accepts_a_good_configuration_and_names_the_key_of_a_bad_one() {
    // `check` exits 0 with a summary on a good file, and 1 naming the key on each kind of error.
    let pki = Pki::new();
    let good = pki.path("good.yaml");
    std::fs::write(&good, pki.config_yaml(&["127.0.0.1:2576".into()], "")).expect("write");
    let out = run(&["check", "-c", good.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("configuration OK"), "{}", text(&out));
    assert!(text(&out).contains("route test"), "{}", text(&out));

    let cases = [
        (
            "client_ca: ca.crt",
            "client_ca: ca.crt\n      clientca: x",
            "routes[0].tls",
        ),
        (
            "private_key: server.key",
            "private_key: client.key",
            "routes[0].tls.private_key",
        ),
        (
            "client_ca: ca.crt",
            "client_ca: missing.crt",
            "routes[0].tls.client_ca",
        ),
        (
            "certificate: server.crt",
            "certificate: server.key",
            "routes[0].tls.certificate",
        ),
        (
            "ack_timeout: 2s",
            "ack_timeout: 2 seconds",
            "routes[0].upstream.ack_timeout",
        ),
    ];
    for (from, to, key) in cases {
        let bad = pki.path("bad.yaml");
        std::fs::write(
            &bad,
            pki.config_yaml(&["127.0.0.1:2576".into()], "")
                .replace(from, to),
        )
        .expect("write");
        let out = run(&["check", "-c", bad.to_str().expect("utf-8 path")]);
        assert_eq!(out.status.code(), Some(1), "{to}: {}", text(&out));
        assert!(
            text(&out).contains(key),
            "{to}: expected {key} in: {}",
            text(&out)
        );
    }
}

#[test]
fn check_warns_about_a_certificate_expiring_soon() {
    // A server certificate with 10 days left: still OK, with a warning that names the key.
    let pki = Pki::new();
    pki.issue_server_valid_for("server", "localhost", Some(10));
    let file = pki.path("soon.yaml");
    std::fs::write(&file, pki.config_yaml(&["127.0.0.1:2576".into()], "")).expect("write");
    let out = run(&["check", "-c", file.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: routes[0].tls.certificate: certificate expires in"),
        "{stderr}"
    );
}

#[test]
fn check_warns_about_a_crl_past_its_next_update() {
    // An overdue CRL still loads (it still revokes what it lists), with a warning naming it.
    let pki = Pki::new();
    std::fs::write(pki.path("old.crl"), pki.crl_due_in(&[1], 1, -2).0).expect("write");
    let file = pki.path("crl.yaml");
    let yaml = pki.config_yaml(&["127.0.0.1:2576".into()], "").replace(
        "client_ca: ca.crt",
        "client_ca: ca.crt\n      crl: [old.crl]",
    );
    std::fs::write(&file, yaml).expect("write");
    let out = run(&["check", "-c", file.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: routes[0].tls.crl[0]:"),
        "{stderr}"
    );
    assert!(stderr.contains("past its next update"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("CRLs: 1"),
        "{}",
        text(&out)
    );
}

#[test]
fn send_and_ack_server_round_trip_with_the_message_log() {
    // ack-server records each message and the ACK it wrote; send prints MSA-1 MSA-2 per message
    // from a file holding two messages separated by a blank line.
    let pki = Pki::new();
    let log = pki.path("engine.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = Command::new(binary())
        .args(["ack-server", "--listen", &listen, "--log"])
        .arg(&log)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ack-server");
    let mut lines = BufReader::new(server.stderr.take().expect("stderr")).lines();
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("ack-server listening"))));

    let file = pki.path("two.hl7");
    std::fs::write(
        &file,
        "MSH|^~\\&|A|B|C|D|20261126||ADT^A01|SEND-1|P|2.5.1\nPID|1||X\n\nMSH|^~\\&|A|B|C|D|20261126||ADT^A08|SEND-2|P|2.5.1\nPID|1||Y\n",
    )
    .expect("write");
    let out = run(&["send", "--to", &listen, file.to_str().expect("utf-8 path")]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "AA SEND-1\nAA SEND-2\n"
    );
    // One JSON record per message: its control ID and the exact ACK written, in full.
    let logged = std::fs::read_to_string(&log).expect("log written");
    let records: Vec<serde_json::Value> = logged
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON record"))
        .collect();
    assert_eq!(records.len(), 2, "{logged}");
    for (r, id) in records.iter().zip(["SEND-1", "SEND-2"]) {
        assert_eq!(r["control_id"], id, "{r}");
        assert_eq!(r["fault"], "none", "{r}");
        assert_eq!(r["ack_complete"], true, "{r}");
        let ack = r["ack"].as_str().expect("ack text");
        assert!(ack.contains(&format!("\rMSA|AA|{id}")), "{ack:?}");
        assert!(ack.contains(r["ack_id"].as_str().expect("ack_id")), "{r}");
    }
    assert_ne!(records[0]["ack_id"], records[1]["ack_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_exits_non_zero_on_a_nak_or_a_missing_ack() {
    // Through the proxy over mTLS: a NAKed message and an engine that never answers both make
    // `send` exit 1, printing what it got.
    let pki = Pki::new();
    let engine = Engine::start(Behaviour::Ack).await;
    let mut cfg = pki.config(
        &[engine.target()],
        "    validation:\n      message_types: [\"ADT^*\"]\n",
    );
    cfg.routes[0].upstream.ack_timeout = std::time::Duration::from_millis(300);
    let proxy = start_proxy(cfg).await;
    let to = proxy.routes[0].1.to_string();
    // `send` over mTLS with a file holding `message`.
    let send_args = |message: &str| -> Vec<String> {
        let file = pki.path("message.hl7");
        std::fs::write(&file, message).expect("write");
        let p = |n: &str| pki.path(n).to_string_lossy().into_owned();
        let mut args: Vec<String> = ["send", "--to", &to, "--server-name", "localhost"]
            .map(String::from)
            .to_vec();
        for (flag, name) in [
            ("--ca", "ca.crt"),
            ("--cert", "client.crt"),
            ("--key", "client.key"),
        ] {
            args.extend([flag.to_string(), p(name)]);
        }
        args.push(file.to_string_lossy().into_owned());
        args
    };
    let out = run_async(send_args(
        "MSH|^~\\&|A|B|C|D|20261126||ORM^O01|ORM-1|P|2.5.1\nPID|1||X\n",
    ))
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "AR ORM-1\n");

    engine.set(Behaviour::Silent);
    let out = run_async(send_args(
        "MSH|^~\\&|A|B|C|D|20261126||ADT^A01|ADT-1|P|2.5.1\nPID|1||X\n",
    ))
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no ACK for message ADT-1"),
        "{}",
        text(&out)
    );
}
