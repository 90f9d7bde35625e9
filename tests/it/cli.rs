//! The tool commands as a user runs them: `check`, `send`, `ack-server`.

use std::io::{BufRead, BufReader};
use std::path::Path;
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
        (
            "client_ca: ca.crt",
            "client_ca: ca.crt\n      cipher_suites: [TLS13_AES_256_GCM_SHA384, TLS_RSA_WITH_RC4]",
            "routes[0].tls.cipher_suites[1]: unknown cipher suite `TLS_RSA_WITH_RC4`; this build offers TLS13_",
        ),
        (
            "client_ca: ca.crt",
            "client_ca: ca.crt\n      groups: [ffdhe1024]",
            "routes[0].tls.groups[0]: unknown key exchange group",
        ),
        (
            "admin:\n",
            "audit: { file: /nonexistent/dir/audit.log }\nadmin:\n",
            "audit.file: /nonexistent/dir/audit.log: its directory does not exist",
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
        if to == "private_key: client.key" {
            assert!(
                text(&out).contains("the private key does not belong to the certificate"),
                "{}",
                text(&out)
            );
        }
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
    let tls = "      crl: [old.crl]\n";
    let yaml = pki.config_yaml_tls(&["127.0.0.1:2576".into()], tls, "");
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
    let World {
        pki, engine, proxy, ..
    } = Harness::new()
        .route_yaml("    validation:\n      message_types: [\"ADT^*\"]\n")
        .edit(|cfg| cfg.routes[0].upstream.ack_timeout = std::time::Duration::from_millis(300))
        .start()
        .await;
    let to = proxy.routes()[0].1.to_string();
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
    // The refusal's reasons are printed under it, without --show.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "AR ORM-1\n  MSA-3: message type not accepted on this route\n  ERR: 200 message type not accepted on this route\n"
    );

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

/// `send` to `to` with a 2 s timeout of the file `two.hl7` of the PKI folder, over TLS with the
/// PKI's `CERT.crt` when `cert` is given.
fn send_args(pki: &Pki, to: String, cert: Option<&str>) -> Vec<String> {
    let p = |n: &str| pki.path(n).to_string_lossy().into_owned();
    let mut a = vec![
        "send".to_string(),
        "--to".into(),
        to,
        "--timeout".into(),
        "2s".into(),
    ];
    if let Some(cert) = cert {
        a.extend([
            "--server-name".into(),
            "localhost".into(),
            "--ca".into(),
            p("ca.crt"),
        ]);
        a.extend([
            "--cert".into(),
            p(&format!("{cert}.crt")),
            "--key".into(),
            p(&format!("{cert}.key")),
        ]);
    }
    a.push(p("two.hl7"));
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_tells_each_kind_of_failure_apart() {
    // Each way a first connection goes wrong gets its own message from `send`: a certificate
    // outside allowed_clients, a certificate from another CA, plain MLLP to the TLS port, a
    // connection over the proxy's limits, TLS to a plain port, and an engine outage behind the
    // proxy (with the count of messages not sent).
    let pki = Pki::new();
    let engine = Engine::start(Behaviour::Ack).await;
    let denied = start_proxy(pki.config(
        &[engine.target()],
        "    allowed_clients:\n      - cn: somebody-else\n",
    ))
    .await;
    let dead = start_proxy(pki.config(&[dead_addr().to_string()], "")).await;
    let full = start_proxy(pki.config(
        &[engine.target()],
        "    limits:\n      max_connections_per_source: 1\n",
    ))
    .await;
    // One connection from this address already open: the next is closed at accept.
    let _held = tokio::net::TcpStream::connect(full.routes()[0].1)
        .await
        .expect("connect");
    let open = "mllp_proxy_connections_accepted_total{route=\"test\"}";
    assert!(
        metric_reaches(&full, open, 1.0).await,
        "the held connection was not accepted"
    );
    let file = pki.path("two.hl7");
    std::fs::write(
        &file,
        "MSH|^~\\&|A|B|C|D|20261126||ADT^A01|TWO-1|P|2.5.1\nPID|1||X\n\nMSH|^~\\&|A|B|C|D|20261126||ADT^A01|TWO-2|P|2.5.1\nPID|1||Y\n",
    )
    .expect("write");
    let args = |to: String, cert: Option<&str>| send_args(&pki, to, cert);
    let cases = [
        (
            args(denied.routes()[0].1.to_string(), Some("client")),
            "the server did not accept your client certificate: access denied (it verified, but none of its identities is in the route's allowed_clients)",
        ),
        (
            args(denied.routes()[0].1.to_string(), Some("other")),
            "the server did not accept your client certificate: unknown CA",
        ),
        (
            args(denied.routes()[0].1.to_string(), None),
            "answered bytes that are not MLLP (a TLS alert?) and closed the connection: if this port expects TLS, pass --ca, --cert and --key",
        ),
        (
            args(full.routes()[0].1.to_string(), Some("client")),
            "closed the connection during the TLS handshake: is this port TLS (1.2 or 1.3)? (mllp-proxy also closes connections over its limits at once",
        ),
        (
            args(engine.target(), Some("client")),
            "accepted the connection but did not answer the TLS handshake within 2s: is this port TLS?",
        ),
        (
            args(dead.routes()[0].1.to_string(), Some("client")),
            "no ACK for message TWO-1: 127.0.0.1",
        ),
    ];
    for (args, expected) in cases {
        let out = run_async(args.clone()).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(expected), "{args:?}: {}", text(&out));
    }
    let out = run_async(args(dead.routes()[0].1.to_string(), Some("client"))).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("closed the connection after the message was sent, without an ACK"),
        "{stderr}"
    );
    assert!(stderr.contains("1 later message(s) not sent"), "{stderr}");
}

#[test]
fn the_readme_by_hand_block_prints_what_the_readme_says() {
    // The README's "Trying it by hand" block, run as written (the binary under test, free
    // ports instead of 2575/2576/9575): its output is exactly the `# ` lines under the commands.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).expect("README");
    let block = readme
        .split("Trying it by hand")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|rest| rest.split("\n```").next())
        .expect("the by-hand block");
    let expected: Vec<&str> = block.lines().filter_map(|l| l.strip_prefix("# ")).collect();
    assert!(expected.len() >= 2, "{block}");

    let dir = tempfile::tempdir().expect("tempdir");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
            .to_string()
    };
    let ports = [("2575", free()), ("2576", free()), ("9575", free())];
    let certs = repo.join("certs-example").display().to_string();
    let mut config = std::fs::read_to_string(repo.join("examples/mllp-proxy.yaml"))
        .expect("example config")
        .replace("../certs-example", &certs);
    let mut script = block
        .lines()
        .filter(|l| !l.starts_with("cargo build"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("target/release/mllp-proxy", &binary().display().to_string())
        .replace(
            "/tmp/engine.log",
            &dir.path().join("engine.log").display().to_string(),
        )
        .replace(
            "examples/mllp-proxy.yaml",
            &dir.path().join("proxy.yaml").display().to_string(),
        );
    for (from, to) in &ports {
        config = config.replace(&format!(":{from}\""), &format!(":{to}\""));
        script = script.replace(&format!(":{from}"), &format!(":{to}"));
    }
    std::fs::write(dir.path().join("proxy.yaml"), config).expect("write config");
    let out = Command::new("timeout")
        .args(["60", "bash", "-c"])
        .arg(format!(
            "set -e\ntrap 'kill $(jobs -p) 2>/dev/null; true' EXIT\n{script}\nwait"
        ))
        .current_dir(repo)
        .output()
        .expect("run the block");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let printed: Vec<&str> = stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(printed, expected, "{}", text(&out));
}

#[test]
fn check_client_cert_says_whether_a_sender_would_be_admitted_and_as_whom() {
    // The dry run of on-boarding: the route's own verifier and allow-list, no connection.
    let pki = Pki::new();
    pki.issue_client("billing", "billing-sender", &[], &[], false, false);
    let yaml = pki.config_yaml(
        &["127.0.0.1:9".into()],
        "    allowed_clients:\n      - cn: lab-sender\n",
    );
    std::fs::write(pki.path("proxy.yaml"), yaml).expect("write");
    let check = |cert: &str| {
        let config = pki.path("proxy.yaml");
        let cert = pki.path(cert);
        let out = run(&[
            "check",
            "-c",
            &config.to_string_lossy(),
            "--client-cert",
            &cert.to_string_lossy(),
        ]);
        (out.status.code(), text(&out))
    };
    let (code, out) = check("client.crt");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("--client-cert: admitted as uri:spiffe://hospital.test/lab (its identities: cn:lab-sender,dns:lab.example.org,uri:spiffe://hospital.test/lab)"),
        "{out}"
    );
    let (code, out) = check("billing.crt");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("--client-cert: refused with access_denied: verified, but none of its identities (cn:billing-sender) is in allowed_clients (cn=lab-sender)"),
        "{out}"
    );
    assert!(
        out.contains("error: --client-cert: no route admits"),
        "{out}"
    );
    let (code, out) = check("other.crt");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("--client-cert: refused in the handshake: not issued by a CA in tls.client_ca (issuer: CN=other CA;"),
        "{out}"
    );
}
