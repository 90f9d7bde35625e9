//! The findings of the security review: limits before any TLS work, bounded logs under a
//! flood, the audit trail, and escaped peer-controlled values.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mllp_proxy::client::{MllpClient, http_get};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

const T: Duration = Duration::from_secs(10);

/// A TCP connection to `to` from source address `from` that never starts TLS.
async fn idle_from(from: &str, to: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(format!("{from}:0").parse().ok()?).ok()?;
    tokio::time::timeout(Duration::from_secs(2), socket.connect(to))
        .await
        .ok()?
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_hundred_idle_connections_from_one_address_do_not_lock_out_another() {
    // 1,100 TCP connections from 127.0.0.2 that never start TLS: 64 are held as pending
    // handshakes, the rest closed at accept (per_source). A sender from 127.0.0.1 meanwhile
    // gets its AA within a second.
    let World {
        pki,
        engine: _engine,
        proxy,
        ..
    } = Harness::new().start().await;
    let addr = proxy.routes()[0].1;
    let mut held = Vec::new();
    for _ in 0..1100 {
        if let Some(s) = idle_from("127.0.0.2", addr).await {
            held.push(s);
        }
    }
    assert!(held.len() >= 1000, "{} connected", held.len());
    let started = Instant::now();
    let mut c = MllpClient::connect(&pki.target(addr, ClientCert::Good), T)
        .await
        .expect("the good sender connects");
    let ack = c.exchange(&adt("GOOD-1"), T).await.expect("ACK");
    assert_eq!(msa(&ack), ("AA".into(), "GOOD-1".into()));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let per_source = "mllp_proxy_connections_rejected_total{reason=\"per_source\",route=\"test\"}";
    assert!(metric_reaches(&proxy, per_source, 1036.0).await);
    assert_eq!(
        metric(&proxy, "mllp_proxy_connections_active{route=\"test\"}").await,
        65.0
    );
}

#[test]
fn a_flood_of_failed_handshakes_writes_a_bounded_number_of_lines() {
    // 5,000 plaintext connections to the TLS port, one after another: every one is counted
    // as a failed handshake, but the log gets a burst of 20 lines and 2 a second after that;
    // the rest are counted as suppressed, and the next line says how many.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let BinaryWorld {
        pki: _pki,
        engine: _engine,
        proxy,
        ..
    } = rt.block_on(Harness::new().spawn_json());
    let plain = || {
        let mut s = std::net::TcpStream::connect(proxy.addr).expect("connect");
        let _ = s.write_all(b"\x0bMSH|^~\\&|plain MLLP on a TLS port\x1c\r");
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.read(&mut [0u8; 512]);
    };
    let started = Instant::now();
    for _ in 0..4999 {
        plain();
    }
    // An optimised build gets through the flood in under half a second; one more failure after
    // a pause is the "next line" that must say how many were held back.
    std::thread::sleep(Duration::from_millis(600));
    plain();
    let took = started.elapsed();
    // The proxy counts a failure just after its side of the connection is gone, so the last
    // one may still be on its way when the sender sees the close.
    let failures = "mllp_proxy_tls_handshake_failures_total{reason=\"not_tls\",route=\"test\"}";
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let metrics = rt
            .block_on(http_get(proxy.admin, "/metrics"))
            .expect("metrics");
        if sample_value(&metrics, failures) >= 5000.0 || Instant::now() > deadline {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let value = |sample: &str| sample_value(&metrics, sample);
    assert_eq!(value(failures), 5000.0);
    let suppressed =
        value("mllp_proxy_log_events_suppressed_total{event=\"handshake_failure\",route=\"test\"}");
    // The last line is written by the writer thread within its batch: wait until every
    // failure is either a line or counted as suppressed.
    let logged = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains("TLS handshake failed"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while logged(&proxy.log_lines()) + (suppressed as usize) < 5000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = proxy.log_lines();
    let logged = logged(&lines);
    let bound = 20 + (2.0 * took.as_secs_f64()).ceil() as usize + 1;
    assert!(logged <= bound, "{logged} lines in {took:?}");
    assert_eq!(suppressed as usize + logged, 5000);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"suppressed\":") && !l.contains("\"suppressed\":0")),
        "a line reports what was held back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_leaves_an_audit_record_of_who_sent_what_and_what_became_of_it() {
    // One session, three messages: AA from the engine, AE from the proxy (no MSH-12), AR from
    // the engine. The audit trail holds the session's start (subject, serial, issuer,
    // identity, TLS version and suite), a record per message and the session's end, read from
    // the proxy this test started.
    let harness = Harness::new().engine(Behaviour::RejectId("AUD-3")).audit();
    (harness.pki).issue_client_serial("audited", "audited-sender", 0x4711);
    let world = harness.start().await;
    let addr = world.proxy.routes()[0].1;
    let mut c = MllpClient::connect(&world.pki.target_named(addr, "audited"), T)
        .await
        .expect("connect");
    let ack = c.exchange(&adt("AUD-1"), T).await.expect("AA");
    assert_eq!(msa(&ack).0, "AA");
    let no_version = b"MSH|^~\\&|A|B|C|D|20261126||ADT^A01|AUD-2|P|\rPID|1||X\r";
    assert_eq!(msa(&c.exchange(no_version, T).await.expect("AE")).0, "AE");
    assert_eq!(
        msa(&c.exchange(&adt("AUD-3"), T).await.expect("AR")).0,
        "AR"
    );
    c.close().await;

    let s = &world.audited("session_start", 1).await[0];
    assert_eq!(s["level"], "INFO");
    let has = |v: &Value, key: &str, part: &str| v[key].as_str().is_some_and(|x| x.contains(part));
    assert!(
        has(s, "subject", "CN=audited-sender") && has(s, "issuer", "CN=test CA"),
        "{s}"
    );
    assert_eq!(
        (s["serial"].as_str(), s["identity"].as_str()),
        (Some("47:11"), Some("cn:audited-sender"))
    );
    assert_eq!(s["tls_version"], "TLSv1_3");
    assert!(has(s, "cipher_suite", "TLS13_"), "{s}");
    // Route, peer and connection are in the record itself, not only in the log's span (which
    // a level above info filters away).
    assert_eq!(s["route"], "test");
    assert!(
        has(s, "peer", "127.0.0.1:") && s["conn"].as_u64().is_some(),
        "{s}"
    );

    let m = world.audited("message", 3).await;
    let pair = |r: &Value, k: &str| {
        (
            r["control_id"].as_str().map(String::from),
            r[k].as_str().map(String::from),
        )
    };
    assert_eq!(
        pair(&m[0], "ack"),
        (Some("AUD-1".into()), Some("AA".into()))
    );
    assert_eq!(m[0]["message_type"], "ADT^A01^ADT_A01");
    assert_eq!(m[0]["engine"], world.engine.target());
    assert!(m[0]["bytes"].as_u64().is_some_and(|b| b > 50) && m[0]["latency_us"].is_u64());
    assert_eq!(
        pair(&m[1], "nak"),
        (Some("AUD-2".into()), Some("required_field".into()))
    );
    assert_eq!(m[1]["err_code"], 101);
    assert_eq!(
        pair(&m[2], "ack"),
        (Some("AUD-3".into()), Some("AR".into()))
    );

    let end = &world.audited("session_end", 1).await[0];
    assert_eq!(
        (end["messages"].as_u64(), end["reason"].as_str()),
        (Some(3), Some("sender_closed"))
    );
    assert!(end["duration_ms"].as_u64().is_some());
    for r in world.audit_records() {
        assert_eq!(r["route"], "test", "{r}");
        assert!(r["peer"].is_string() && r["target"] == "audit", "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_certificate_is_audited_with_its_names_as_presented() {
    // Another CA's certificate does not verify: its record says so, with the names it
    // presented only in `presented_*` fields, never in the fields of a verified identity.
    let world = Harness::new().audit().start().await;
    let addr = world.proxy.routes()[0].1;
    if let Ok(mut r) = MllpClient::connect(&world.pki.target(addr, ClientCert::OtherCa), T).await {
        let _ = r.check_admitted(Duration::from_millis(300)).await;
    }
    let refused = world.audited("handshake_refused", 1).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    let r = &refused[0];
    assert_eq!(
        (r["reason"].as_str(), r["verified"].as_str()),
        (Some("unknown_ca"), Some("false"))
    );
    let has = |key: &str, part: &str| r[key].as_str().is_some_and(|x| x.contains(part));
    assert!(has("presented_issuer", "CN=other CA"), "{r}");
    assert!(has("presented_subject", "CN=lab-sender"), "{r}");
    assert!(
        r.get("subject").is_none() && r.get("issuer").is_none(),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_id_with_an_escape_sequence_is_logged_escaped() {
    // MSH-10 holding ESC and then LF: the message is refused (a control character), and the
    // log line and audit record show the control ID with \x1B, never the raw escape. (The
    // header ends at the LF, a segment break to the reader; escape() writes LF as \x0A.)
    let BinaryWorld {
        pki,
        engine: _engine,
        proxy,
        ..
    } = Harness::new().spawn_json().await;
    let mut c = MllpClient::connect(&pki.target(proxy.addr, ClientCert::Good), T)
        .await
        .expect("connect");
    let msg = b"MSH|^~\\&|A|B|C|D|20261126||ADT^A01|INJ\x1b[31mRED\nX|P|2.5.1\rPID|1||X\r";
    let nak = c.exchange(msg, T).await.expect("NAK");
    assert_eq!(msa(&nak).0, "AE");
    let logged = || {
        proxy
            .log_lines()
            .iter()
            .filter(|l| l.contains("INJ"))
            .count()
    };
    assert!(
        eventually(T, || async { logged() >= 2 }).await,
        "{:?}",
        proxy.log_lines()
    );
    let lines = proxy.log_lines();
    let mentions: Vec<&String> = lines.iter().filter(|l| l.contains("INJ")).collect();
    assert!(mentions.len() >= 2, "{lines:?}");
    for l in &mentions {
        assert!(l.contains(r#""control_id":"INJ\\x1B[31mRED""#), "{l}");
        assert!(!l.contains('\x1b') && !l.contains(r"\u001b"), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_beyond_the_cap_are_refused_while_senders_are_served() {
    // admin.max_connections 4: ten idle admin connections, six closed at accept; a sender's
    // message is acknowledged meanwhile; once the idle ones close, /metrics answers again.
    let World {
        pki,
        engine: _engine,
        proxy,
        ..
    } = Harness::new()
        .edit(|cfg| cfg.admin.max_connections = 4)
        .start()
        .await;
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(TcpStream::connect(proxy.admin()).await.expect("connect"));
    }
    let mut closed = 0;
    for s in &mut idle {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::io::AsyncReadExt::read(s, &mut b),
        )
        .await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 6);
    let mut c = connect(&pki, &proxy, ClientCert::Good).await;
    let ack = c.exchange(&adt("ADM-1"), T).await.expect("ACK");
    assert_eq!(msa(&ack), ("AA".into(), "ADM-1".into()));
    assert!(
        http_get(proxy.admin(), "/healthz").await.is_err(),
        "the cap holds"
    );
    drop(idle);
    assert!(
        eventually(T, || async {
            http_get(proxy.admin(), "/healthz").await.is_ok()
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_scraped_over_mutual_tls() {
    // admin.tls with a client CA: curl with a client certificate gets /metrics over HTTPS;
    // without one, or over plain HTTP, it gets nothing.
    let World {
        pki,
        engine: _engine,
        proxy,
        ..
    } = Harness::new()
        .edit(|cfg| {
            let ca = cfg.routes[0]
                .tls
                .as_ref()
                .map(|t| t.client_ca.clone())
                .expect("tls");
            cfg.admin.tls = Some(mllp_proxy::config::AdminTlsConfig {
                certificate: ca.with_file_name("server.crt"),
                private_key: ca.with_file_name("server.key"),
                client_ca: Some(ca),
            });
        })
        .start()
        .await;
    let url = format!("https://localhost:{}/metrics", proxy.admin().port());
    let p = |n: &str| pki.path(n).to_string_lossy().into_owned();
    let curl = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-s", "--max-time", "5"])
                .args(args)
                .output()
                .expect("curl")
        })
    };
    let resolve = format!("localhost:{}:127.0.0.1", proxy.admin().port());
    let with_cert = curl(vec![
        "--resolve".into(),
        resolve.clone(),
        "--cacert".into(),
        p("ca.crt"),
        "--cert".into(),
        p("client.crt"),
        "--key".into(),
        p("client.key"),
        url.clone(),
    ])
    .await
    .expect("curl task");
    let body = String::from_utf8_lossy(&with_cert.stdout);
    assert!(body.contains("mllp_proxy_build_info"), "{body}");
    let without = curl(vec![
        "--resolve".into(),
        resolve,
        "--cacert".into(),
        p("ca.crt"),
        url,
    ])
    .await
    .expect("curl task");
    assert!(!String::from_utf8_lossy(&without.stdout).contains("mllp_proxy"));
    assert!(
        http_get(proxy.admin(), "/metrics").await.is_err(),
        "no plain HTTP"
    );
}

/// Connects over TLS with `config` and returns the connection once the handshake is done.
async fn tls_connect(
    config: &std::sync::Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .expect("handshake")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_has_its_client_certificate_verified_afresh_no_resumption() {
    // A resumed session skips the client certificate's verification (chain, expiry, CRL), so
    // the proxy offers none: a client that keeps sessions (as Java senders do) gets a full
    // handshake every time, in TLS 1.3 (tickets) and TLS 1.2 (session IDs).
    use bytes::BytesMut;
    use mllp_proxy::mllp::{Frame, MllpCodec};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::codec::Decoder;
    let World {
        pki,
        engine: _engine,
        proxy,
        ..
    } = Harness::new().start().await;
    let addr = proxy.routes()[0].1;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(pki.path("ca.crt")).expect("ca.crt") {
        roots.add(ca.expect("CA PEM")).expect("CA");
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(pki.path("client.crt"))
        .expect("client.crt")
        .map(|c| c.expect("client PEM"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(pki.path("client.key")).expect("client.key");
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let config = rustls::ClientConfig::builder_with_provider(mllp_proxy::tls::provider())
            .with_protocol_versions(&[version])
            .expect("version")
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .expect("client certificate");
        let config = std::sync::Arc::new(config);
        for attempt in 0..2 {
            let mut tls = tls_connect(&config, addr).await;
            assert_eq!(
                tls.get_ref().1.handshake_kind(),
                Some(rustls::HandshakeKind::Full),
                "{version:?}, connection {attempt}"
            );
            // One exchange, so that any ticket the proxy sent after the handshake is taken in.
            let msg = adt(&format!("RESUME{attempt}"));
            tls.write_all(&MllpCodec::frame(&msg)).await.expect("send");
            let (mut codec, mut buf) = (MllpCodec::new(1 << 20), BytesMut::new());
            let answer = loop {
                if let Some(Frame::Message(answer)) = codec.decode(&mut buf).expect("MLLP") {
                    break answer;
                }
                assert!(
                    tls.read_buf(&mut buf).await.expect("read") > 0,
                    "closed before the ACK"
                );
            };
            assert_eq!(msa(&answer).0, "AA");
            let _ = tls.shutdown().await;
        }
    }
}
