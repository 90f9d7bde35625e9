//! Certificates and identity: hot reload (polling, symlink swaps, SIGHUP), refusal of broken
//! material, CRLs, allow-lists per identity kind, and third-party TLS clients.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mllp_proxy::client::MllpClient;
use rcgen::{DnType, SanType};

use crate::support::*;

const T: Duration = Duration::from_secs(10);

/// A harness whose route reads its certificate and key from `secret/`, laid out like a
/// mounted Kubernetes secret (`server.crt -> ..data/server.crt`, `..data -> ..v1`), polled
/// every 200 ms.
fn kubernetes_style_secret() -> Harness {
    let h = Harness::new().tls_yaml("      reload_interval: 200ms\n");
    let secret = h.pki.path("secret");
    std::fs::create_dir_all(secret.join("..v1")).expect("mkdir");
    for f in ["server.crt", "server.key"] {
        std::fs::copy(h.pki.path(f), secret.join("..v1").join(f)).expect("copy");
        symlink(Path::new("..data").join(f), secret.join(f)).expect("symlink");
    }
    symlink("..v1", secret.join("..data")).expect("symlink");
    h.edit(|cfg| {
        let tls = cfg.routes[0].tls.as_mut().expect("tls");
        let in_secret = |p: &Path| {
            p.with_file_name("secret")
                .join(p.file_name().unwrap_or_default())
        };
        tls.certificate = in_secret(&tls.certificate);
        tls.private_key = in_secret(&tls.private_key);
    })
}

/// Swaps the secret to a new version holding `NAME.crt`/`NAME.key`, the way the kubelet does.
fn swap_secret(pki: &Pki, version: &str, name: &str) {
    let secret = pki.path("secret");
    let dir = secret.join(version);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::copy(pki.path(&format!("{name}.crt")), dir.join("server.crt")).expect("copy");
    std::fs::copy(pki.path(&format!("{name}.key")), dir.join("server.key")).expect("copy");
    symlink(version, secret.join("..data_tmp")).expect("symlink");
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).expect("atomic swap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_through_a_symlink_swap_leaves_open_sessions_untouched() {
    // The secret is swapped like Kubernetes does: new handshakes get the new certificate and
    // its expiry; a session opened before keeps working.
    let World {
        pki,
        engine: _engine,
        proxy,
        ..
    } = kubernetes_style_secret().start().await;
    let addr = proxy.routes()[0].1;
    assert_eq!(served_cn(&pki, addr).await, "localhost");
    let mut old_session = connect(&pki, &proxy, ClientCert::Good).await;
    old_session.exchange(&adt("OLD-1"), T).await.expect("ACK");

    pki.issue_server_valid_for("rotated", "rotated-server", Some(400));
    swap_secret(&pki, "..v2", "rotated");
    assert!(
        metric_reaches(
            &proxy,
            "mllp_proxy_tls_reloads_total{result=\"success\",route=\"test\"}",
            1.0
        )
        .await
    );
    assert_eq!(served_cn(&pki, addr).await, "rotated-server");
    let ack = old_session
        .exchange(&adt("OLD-2"), T)
        .await
        .expect("old session still served");
    assert_eq!(msa(&ack).1, "OLD-2");

    let not_after = not_after(&pki.path("rotated.crt"));
    let sample = "mllp_proxy_certificate_expiry_timestamp_seconds{role=\"server\",route=\"test\"}";
    assert_eq!(metric(&proxy, sample).await, not_after as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_replacement_is_refused_and_the_old_certificate_stays() {
    // A key that does not fit the new certificate, then a truncated certificate: both are
    // refused and counted; handshakes keep getting the old certificate.
    let World {
        pki,
        engine: _engine,
        proxy,
        ..
    } = Harness::new()
        .tls_yaml("      reload_interval: 200ms\n")
        .start()
        .await;
    let addr = proxy.routes()[0].1;

    pki.issue_server_valid_for("rotated", "rotated-server", None);
    replace_file(
        &pki.path("server.crt"),
        &std::fs::read(pki.path("rotated.crt")).expect("read"),
    );
    assert!(
        metric_reaches(
            &proxy,
            "mllp_proxy_tls_reloads_total{result=\"failure\",route=\"test\"}",
            1.0
        )
        .await
    );
    assert_eq!(served_cn(&pki, addr).await, "localhost");

    let pem = std::fs::read(pki.path("rotated.crt")).expect("read");
    replace_file(&pki.path("server.crt"), &pem[..pem.len() / 2]);
    assert!(
        metric_reaches(
            &proxy,
            "mllp_proxy_tls_reloads_total{result=\"failure\",route=\"test\"}",
            2.0
        )
        .await
    );
    assert_eq!(served_cn(&pki, addr).await, "localhost");

    // Fixing the pair completes the rotation.
    replace_file(
        &pki.path("server.key"),
        &std::fs::read(pki.path("rotated.key")).expect("read"),
    );
    replace_file(&pki.path("server.crt"), &pem);
    assert!(
        eventually(T, || async {
            served_cn(&pki, addr).await == "rotated-server"
        })
        .await
    );
    assert_eq!(
        metric(
            &proxy,
            "mllp_proxy_tls_reloads_total{result=\"success\",route=\"test\"}"
        )
        .await,
        1.0
    );
}

#[test]
fn sighup_reloads_at_once() {
    // reload_interval is an hour; SIGHUP makes the binary load the new certificate now.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pki = Pki::new();
    let tls = "      reload_interval: 1h\n";
    let yaml = format!(
        "logging:\n  format: json\n{}",
        pki.config_yaml_tls(&["127.0.0.1:9".into()], tls, "")
    );
    let config = pki.path("hup.yaml");
    std::fs::write(&config, yaml).expect("write");
    let mut proxy = ProxyProcess::spawn(&config, "info");
    assert_eq!(rt.block_on(served_cn(&pki, proxy.addr)), "localhost");
    pki.issue_server_valid_for("rotated", "rotated-server", None);
    std::fs::copy(pki.path("rotated.key"), pki.path("server.key")).expect("copy");
    std::fs::copy(pki.path("rotated.crt"), pki.path("server.crt")).expect("copy");
    let status = Command::new("kill")
        .args(["-HUP", &proxy.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let addr = proxy.addr;
    assert!(rt.block_on(eventually(Duration::from_secs(3), || async {
        served_cn(&pki, addr).await == "rotated-server"
    })));
    // Log lines reach stderr through the writer thread, a few milliseconds later.
    assert!(rt.block_on(eventually(Duration::from_secs(3), || async {
        proxy
            .log_lines()
            .iter()
            .any(|l| l.contains("TLS material reloaded"))
    })));
    assert_eq!(proxy.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_is_refused_until_a_new_crl_lets_it_in() {
    // The CRL (PEM) revokes the client's serial: refused at the handshake with reason
    // "revoked". A new CRL (DER) without it is reloaded and the client gets in.
    let h = Harness::new().tls_yaml("      crl: [clients.crl]\n      reload_interval: 200ms\n");
    h.pki
        .issue_client_serial("revokable", "revokable-sender", 4242);
    let (pem, _) = h.pki.crl(&[4242], 1);
    std::fs::write(h.pki.path("clients.crl"), pem).expect("write CRL");
    let World {
        pki,
        engine: _engine,
        proxy,
        ..
    } = h.start().await;
    let target = pki.target_named(proxy.routes()[0].1, "revokable");
    let refused = match MllpClient::connect(&target, T).await {
        Err(_) => true,
        Ok(mut c) => c.exchange(&adt("REV-1"), T).await.is_err(),
    };
    assert!(refused, "revoked client got through");
    assert!(
        metric_reaches(
            &proxy,
            "mllp_proxy_tls_handshake_failures_total{reason=\"revoked\",route=\"test\"}",
            1.0
        )
        .await
    );
    // Other clients of the same CA are not affected.
    let mut good = connect(&pki, &proxy, ClientCert::Good).await;
    good.exchange(&adt("GOOD-1"), T)
        .await
        .expect("unrevoked client served");

    let (_, der) = pki.crl(&[], 2);
    replace_file(&pki.path("clients.crl"), &der);
    assert!(
        metric_reaches(
            &proxy,
            "mllp_proxy_tls_reloads_total{result=\"success\",route=\"test\"}",
            1.0
        )
        .await
    );
    let mut client = MllpClient::connect(&target, T).await.expect("connect");
    let ack = client
        .exchange(&adt("REV-2"), T)
        .await
        .expect("served after the CRL swap");
    assert_eq!(msa(&ack).1, "REV-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_lists_match_each_identity_kind() {
    // For cn, dns (exact and *.), uri and email: a matching client is served, a verified
    // client that does not match is refused before any message and counted.
    let cases = [
        ("cn: lab-sender", true),
        ("cn: billing-sender", false),
        ("dns: lab.hospital.test", true),
        ("dns: \"*.hospital.test\"", true),
        ("dns: \"*.test\"", false),
        ("dns: billing.hospital.test", false),
        ("uri: spiffe://hospital.test/lab", true),
        ("uri: spiffe://hospital.test/billing", false),
        ("email: lab@hospital.test", true),
        ("email: billing@hospital.test", false),
    ];
    for (entry, admitted) in cases {
        let h = Harness::new().route_yaml(&format!("    allowed_clients:\n      - {entry}\n"));
        h.pki.issue_client_with("id", |p| {
            p.distinguished_name.push(DnType::CommonName, "lab-sender");
            p.subject_alt_names = vec![
                SanType::DnsName("lab.hospital.test".try_into().expect("dns")),
                SanType::URI("spiffe://hospital.test/lab".try_into().expect("uri")),
                SanType::Rfc822Name("lab@hospital.test".try_into().expect("email")),
            ];
        });
        let World {
            pki, engine, proxy, ..
        } = h.start().await;
        let target = pki.target_named(proxy.routes()[0].1, "id");
        let before = engine.received().len();
        let served = match MllpClient::connect(&target, T).await {
            Err(_) => false,
            Ok(mut c) => c.exchange(&adt("ID-1"), T).await.is_ok(),
        };
        assert_eq!(served, admitted, "{entry}");
        // Counted by the proxy just after its alert went out: the sender may see it first.
        let denied = "mllp_proxy_clients_denied_total{route=\"test\"}";
        let want = if admitted { 0.0 } else { 1.0 };
        assert!(metric_reaches(&proxy, denied, want).await, "{entry}");
        assert_eq!(
            engine.received().len(),
            before + usize::from(admitted),
            "{entry}"
        );
    }
}

/// Runs `openssl s_client` with `args`, sending one framed message; returns its stdout.
fn s_client(addr: std::net::SocketAddr, pki: &Pki, args: &[&str]) -> Option<String> {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
            "-quiet",
            "-no_ign_eof",
        ])
        .arg("-CAfile")
        .arg(pki.path("ca.crt"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take()?;
        let _ = stdin.write_all(&mllp_proxy::mllp::MllpCodec::frame(&adt("OSSL-1")));
        // Keep stdin open briefly so the ACK can arrive before s_client sees EOF and quits.
        std::thread::sleep(Duration::from_millis(700));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok()?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_is_served_only_with_a_good_certificate_and_tls_1_2_or_1_3() {
    // A third-party TLS client: TLS 1.3 and 1.2 with a good certificate get the engine's ACK;
    // TLS 1.1, no certificate, another CA's certificate and a revoked one get nothing.
    let h = Harness::new().tls_yaml("      crl: [clients.crl]\n");
    h.pki.issue_client_serial("revoked", "revoked-sender", 777);
    std::fs::write(h.pki.path("clients.crl"), h.pki.crl(&[777], 1).0).expect("write CRL");
    let World {
        pki,
        engine: _engine,
        proxy,
        ..
    } = h.start().await;
    let addr = proxy.routes()[0].1;
    let p = |n: &str| pki.path(n).to_string_lossy().into_owned();
    let good = [
        "-cert".to_string(),
        p("client.crt"),
        "-key".into(),
        p("client.key"),
    ];
    let other = [
        "-cert".to_string(),
        p("other.crt"),
        "-key".into(),
        p("other.key"),
    ];
    let revoked = [
        "-cert".to_string(),
        p("revoked.crt"),
        "-key".into(),
        p("revoked.key"),
    ];
    let with = |v: &str, cert: &[String]| -> Vec<String> {
        let mut a = vec![v.to_string()];
        a.extend_from_slice(cert);
        a
    };
    let cases: Vec<(&str, Vec<String>, bool)> = vec![
        ("TLS 1.3, good certificate", with("-tls1_3", &good), true),
        ("TLS 1.2, good certificate", with("-tls1_2", &good), true),
        ("TLS 1.1", with("-tls1_1", &good), false),
        ("no certificate", with("-tls1_3", &[]), false),
        ("another CA", with("-tls1_3", &other), false),
        ("revoked", with("-tls1_2", &revoked), false),
    ];
    let Some(_) = s_client(addr, &pki, &["-tls1_3"]) else {
        if std::env::var("MLLP_PROXY_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
            panic!("openssl not found");
        }
        eprintln!("SKIPPED: openssl not found");
        return;
    };
    for (what, args, served) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out =
            tokio::task::block_in_place(|| s_client(addr, &pki, &args)).expect("openssl runs");
        assert_eq!(out.contains("MSA|AA|OSSL-1"), served, "{what}: {out:?}");
    }
}

/// The `tls:` keys of a profile block of docs/security.md (`# profile: NAME`).
fn security_profile(name: &str) -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/security.md"))
            .expect("docs/security.md");
    let block = doc
        .split(&format!("# profile: {name}\n"))
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("profile block");
    block
        .lines()
        .filter(|l| !l.trim_start().starts_with("tls:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_profiles_of_the_security_guide_admit_only_their_suites_and_groups() {
    // Each ready-made policy of docs/security.md, as written there, under openssl s_client:
    // an allowed suite and group get the engine's ACK; a suite or group left out, or TLS 1.2
    // under "modern", fails the handshake.
    // (profile, s_client options that must connect, options that must fail)
    type Options<'a> = &'a [&'a [&'a str]];
    let cases: [(&str, Options, Options); 3] = [
        (
            "modern",
            &[&["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"]],
            &[&["-tls1_2"]],
        ),
        (
            "intermediate",
            &[
                &["-tls1_3", "-groups", "X25519"],
                &["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"],
            ],
            &[&["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"]],
        ),
        (
            "nist-bsi",
            &[
                &[
                    "-tls1_3",
                    "-ciphersuites",
                    "TLS_AES_256_GCM_SHA384",
                    "-groups",
                    "P-384",
                ],
                &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"],
            ],
            &[
                &["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
                &["-tls1_3", "-groups", "X25519"],
                &["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"],
            ],
        ),
    ];
    let cert = ["-cert", "client.crt", "-key", "client.key"];
    for (profile, admitted, refused) in cases {
        let World {
            pki,
            engine: _engine,
            proxy,
            ..
        } = Harness::new()
            .tls_yaml(&security_profile(profile))
            .start()
            .await;
        let addr = proxy.routes()[0].1;
        let run = |extra: &[&str]| {
            let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
            for (i, a) in cert.iter().enumerate() {
                args.push(if i % 2 == 1 {
                    pki.path(a).to_string_lossy().into_owned()
                } else {
                    a.to_string()
                });
            }
            args
        };
        for extra in admitted {
            let args = run(extra);
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = tokio::task::block_in_place(|| s_client(addr, &pki, &a)).unwrap_or_default();
            assert!(out.contains("MSA|AA|OSSL-1"), "{profile} {extra:?}: {out}");
        }
        for extra in refused {
            let args = run(extra);
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = tokio::task::block_in_place(|| s_client(addr, &pki, &a)).unwrap_or_default();
            assert!(
                !out.contains("MSA|"),
                "{profile} {extra:?} was served: {out}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_settings_decide_unknown_status_and_overdue_crls() {
    // A CRL that does not cover the sender's CA (status unknown) admits it by default and
    // refuses it with unknown_status: deny; an overdue CRL of its CA admits it by default and
    // refuses it with expired_crl: deny.
    for (crl, revocation, admitted) in [
        ("other.crl", "{}", true),
        ("other.crl", "{ unknown_status: deny }", false),
        ("overdue.crl", "{}", true),
        ("overdue.crl", "{ expired_crl: deny }", false),
    ] {
        let tls = format!("      crl: [{crl}]\n      revocation: {revocation}\n");
        let h = Harness::new().tls_yaml(&tls);
        std::fs::write(h.pki.path("other.crl"), h.pki.crl_of_other_ca().0).expect("write");
        std::fs::write(h.pki.path("overdue.crl"), h.pki.crl_due_in(&[], 2, -1).0).expect("write");
        let World {
            pki,
            engine: _engine,
            proxy,
            ..
        } = h.start().await;
        let target = pki.target(proxy.routes()[0].1, ClientCert::Good);
        let outcome = match MllpClient::connect(&target, T).await {
            Ok(mut c) => c.exchange(&adt("REV-1"), T).await.map(|a| msa(&a).0),
            Err(e) => Err(e),
        };
        assert_eq!(
            outcome.is_ok_and(|code| code == "AA"),
            admitted,
            "{crl} {revocation}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_outside_allowed_clients_is_told_access_denied_in_the_handshake() {
    // Python's ssl module (OpenSSL) as the vendor's client: refused by allowed_clients, it
    // reports the proxy's access_denied alert instead of a clean handshake and then EOF, and
    // the refusal's audit record names every identity the certificate carries.
    let world = Harness::new()
        .audit()
        .route_yaml("    allowed_clients:\n      - cn: billing-sender\n")
        .start()
        .await;
    let script = r#"
import socket, ssl, sys
port, ca, cert, key = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as raw:
    try:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"\x0bMSH|^~\\&|A|B|C|D|20260101||ADT^A01|X1|P|2.5\r\x1c\r")
            print("answered", s.recv(100))
    except ssl.SSLError as e:
        print("refused", e.reason)
"#;
    let port = world.proxy.routes()[0].1.port().to_string();
    let out = Command::new("python3")
        .args(["-c", script, &port])
        .args([
            world.pki.path("ca.crt"),
            world.pki.path("client.crt"),
            world.pki.path("client.key"),
        ])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("refused TLSV1_ALERT_ACCESS_DENIED"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = world.audited("handshake_refused", 1).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["reason"], "not_allowed");
    assert_eq!(refused[0]["verified"], "true");
    assert_eq!(
        refused[0]["identities"],
        "cn:lab-sender,dns:lab.example.org,uri:spiffe://hospital.test/lab"
    );
    let denied = "mllp_proxy_clients_denied_total{route=\"test\"}";
    assert_eq!(metric(&world.proxy, denied).await, 1.0);
    assert!(world.engine.received().is_empty());
}

/// MSA-1 of one exchange with `addr` as the client `NAME.crt`; `None` when refused.
async fn answer_as(pki: &Pki, addr: std::net::SocketAddr, name: &str, id: &str) -> Option<String> {
    let mut client = MllpClient::connect(&pki.target_named(addr, name), T)
        .await
        .ok()?;
    let ack = client.exchange(&adt(id), T).await.ok()?;
    Some(msa(&ack).0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_on_the_same_files_share_them_yet_each_admits_only_its_own_senders() {
    // A gateway's routes present one certificate, which the proxy builds once for all of them
    // (src/tls/shared.rs). Each route still admits only its own senders, before and after a
    // renewal that reaches every route.
    let World {
        pki, engine, proxy, ..
    } = Harness::new()
        .tls_yaml("      reload_interval: 200ms\n")
        .route_yaml("    allowed_clients: [{ cn: lab-sender }]\n")
        .edit(|cfg| {
            let mut billing = cfg.routes[0].clone();
            billing.name = "billing".into();
            billing.allowed_clients = vec![mllp_proxy::config::ClientMatcher::Cn(
                "billing-sender".into(),
            )];
            cfg.routes.push(billing);
        })
        .start()
        .await;
    pki.issue_client("billing", "billing-sender", &[], &[], false, false);
    let addr = |name: &str| {
        proxy
            .routes()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
            .expect("route")
    };
    let (lab, billing) = (addr("test"), addr("billing"));
    let both_ways = |round: &'static str| {
        let pki = &pki;
        async move {
            [
                answer_as(pki, lab, "client", &format!("LAB-{round}")).await,
                answer_as(pki, lab, "billing", &format!("X-{round}")).await,
                answer_as(pki, billing, "billing", &format!("BILL-{round}")).await,
                answer_as(pki, billing, "client", &format!("Y-{round}")).await,
            ]
        }
    };
    let aa = || Some("AA".to_string());
    assert_eq!(both_ways("1").await, [aa(), None, aa(), None]);

    pki.issue_server_valid_for("renewed", "renewed-server", Some(400));
    for f in ["crt", "key"] {
        let pem = std::fs::read(pki.path(&format!("renewed.{f}"))).expect("read");
        replace_file(&pki.path(&format!("server.{f}")), &pem);
    }
    let renewed = not_after(&pki.path("renewed.crt")) as f64;
    for route in ["test", "billing"] {
        let expiry = format!(
            "mllp_proxy_certificate_expiry_timestamp_seconds{{role=\"server\",route=\"{route}\"}}"
        );
        assert!(metric_reaches(&proxy, &expiry, renewed).await, "{route}");
    }
    assert_eq!(served_cn(&pki, lab).await, "renewed-server");
    assert_eq!(both_ways("2").await, [aa(), None, aa(), None]);

    for route in ["test", "billing"] {
        let denied = format!("mllp_proxy_clients_denied_total{{route=\"{route}\"}}");
        assert_eq!(metric(&proxy, &denied).await, 2.0, "{route}");
    }
    let mut ids = engine.received_ids();
    ids.sort();
    assert_eq!(ids, ["BILL-1", "BILL-2", "LAB-1", "LAB-2"]);
}
