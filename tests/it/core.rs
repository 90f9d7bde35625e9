//! The core promises: delivery in order, identity at the door, upstream failures never turning
//! into a positive ACK, framing quirks, and a clean drain on SIGTERM.

use std::process::Command;
use std::time::Duration;

use mllp_proxy::client::MllpClient;
use mllp_proxy::mllp::MllpCodec;

use crate::support::*;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_messages_over_one_connection_arrive_identical_and_in_order() {
    // One sender, 1,000 messages: the engine sees each byte-identical and in order, and every
    // ACK the sender gets carries the matching MSA-2.
    let World {
        pki, engine, proxy, ..
    } = Harness::new().start().await;
    let mut client = connect(&pki, &proxy, ClientCert::Good).await;
    let sent: Vec<Vec<u8>> = (0..1000).map(|i| adt(&format!("ONE-{i:04}"))).collect();
    for (i, msg) in sent.iter().enumerate() {
        let ack = client.exchange(msg, T).await.expect("ACK");
        assert_eq!(msa(&ack), ("AA".into(), format!("ONE-{i:04}")));
    }
    let received = engine.received();
    assert_eq!(received.len(), 1000);
    for (got, want) in received.iter().zip(&sent) {
        assert_eq!(got.as_ref(), want.as_slice());
    }
    assert_eq!(
        metric(
            &proxy,
            "mllp_proxy_messages_forwarded_total{route=\"test\"}"
        )
        .await,
        1000.0
    );
    assert_eq!(
        metric(&proxy, "mllp_proxy_acks_total{code=\"AA\",route=\"test\"}").await,
        1000.0
    );
    // One upstream connection carried everything: connections are kept, not made per message.
    assert_eq!(engine.connections(), 1);
}

/// An ORU^R01 carrying a document of `len` base64 bytes in OBX-5 (ED), as results with PDFs do.
pub(crate) fn oru_with_document(id: &str, len: usize) -> Vec<u8> {
    let doc: String = (0..len).map(|i| (b'A' + (i % 26) as u8) as char).collect();
    format!(
        "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261126120000||ORU^R01^ORU_R01|{id}|P|2.5.1\rPID|1||MRN1^^^HOSP^MR||DOE^JANE\rOBR|1|||PDF^Report\rOBX|1|ED|PDF^Report||^application^pdf^Base64^{doc}||||||F\r"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_documents_arrive_byte_identical_between_small_messages() {
    // Messages above the size the proxy frames by copying (4 KiB) are written in place: each
    // arrives whole, and the small ones around them keep their framing. 3,000 is copied,
    // 16,000 (a result with text) is the first written in place.
    let World {
        pki, engine, proxy, ..
    } = Harness::new()
        .route_yaml("    validation: { max_message_bytes: 4194304 }\n")
        .start()
        .await;
    let mut client = connect(&pki, &proxy, ClientCert::Good).await;
    let sizes = [3_000, 16_000, 70_000, 1 << 20, 3 << 20, 100];
    documents_arrive_whole(&mut client, &engine, &sizes).await;
}

/// Sends a result with a document of each size, each followed by an ADT, one at a time; each
/// is answered AA, and `engine` received every message byte for byte, in order.
pub(crate) async fn documents_arrive_whole(
    client: &mut MllpClient,
    engine: &Engine,
    sizes: &[usize],
) {
    let mut sent = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        sent.push(oru_with_document(&format!("DOC-{i}"), len));
        sent.push(adt(&format!("SMALL-{i}")));
    }
    for msg in &sent {
        let ack = client.exchange(msg, T).await.expect("ACK");
        assert_eq!(msa(&ack).0, "AA");
    }
    let received = engine.received();
    assert_eq!(received.len(), sent.len());
    for (got, want) in received.iter().zip(&sent) {
        assert!(
            got.as_ref() == want.as_slice(),
            "{} bytes differ",
            want.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_senders_are_each_served_in_order() {
    // 20 senders × 50 messages at once: per connection, order and correlation hold.
    let World {
        pki, engine, proxy, ..
    } = Harness::new().start().await;
    let mut tasks = Vec::new();
    for c in 0..20 {
        let target = pki.target(proxy.routes()[0].1, ClientCert::Good);
        tasks.push(tokio::spawn(async move {
            let mut client = MllpClient::connect(&target, T).await.expect("connect");
            for i in 0..50 {
                let id = format!("C{c:02}-{i:03}");
                let ack = client.exchange(&adt(&id), T).await.expect("ACK");
                assert_eq!(msa(&ack), ("AA".into(), id));
            }
            client.close().await;
        }));
    }
    // The admin server keeps answering while every sender is busy.
    let mut scrapes = 0;
    while !tasks.iter().all(|t| t.is_finished()) {
        let started = std::time::Instant::now();
        let body = mllp_proxy::client::http_get(proxy.admin(), "/metrics")
            .await
            .expect("scrape under load");
        assert!(body.contains("mllp_proxy_messages_received_total"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "scrape took {:?}",
            started.elapsed()
        );
        scrapes += 1;
        // Scrapes spread over the load: the interval is the workload, not a wait.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(scrapes > 0);
    for t in tasks {
        t.await.expect("sender task");
    }
    let received = engine.received_ids();
    assert_eq!(received.len(), 1000);
    for c in 0..20 {
        let prefix = format!("C{c:02}-");
        let ids: Vec<String> = received
            .iter()
            .filter(|id| id.starts_with(&prefix))
            .cloned()
            .collect();
        let want: Vec<String> = (0..50).map(|i| format!("C{c:02}-{i:03}")).collect();
        assert_eq!(ids, want, "sender {c}");
    }
    assert!(metric_reaches(&proxy, "mllp_proxy_connections_active{route=\"test\"}", 0.0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_valid_certificate_are_refused_before_any_message_is_read() {
    // No certificate, a certificate from another CA, an expired one: the handshake fails, the
    // sender gets no answer, and the engine sees nothing.
    let World {
        pki, engine, proxy, ..
    } = Harness::new().start().await;
    for (which, reason) in [
        (ClientCert::None, "no_client_cert"),
        (ClientCert::OtherCa, "unknown_ca"),
        (ClientCert::Expired, "expired"),
    ] {
        let target = pki.target(proxy.routes()[0].1, which);
        // With TLS 1.3 the client finishes its side first and learns of the refusal on read.
        let outcome = match MllpClient::connect(&target, T).await {
            Err(_) => None,
            Ok(mut c) => Some(c.exchange(&adt("REFUSED-1"), T).await),
        };
        assert!(
            matches!(outcome, None | Some(Err(_))),
            "{which:?} got an answer: {outcome:?}"
        );
        let sample = format!(
            "mllp_proxy_tls_handshake_failures_total{{reason=\"{reason}\",route=\"test\"}}"
        );
        assert!(metric_reaches(&proxy, &sample, 1.0).await, "{sample}");
    }
    assert!(engine.received().is_empty());
    assert_eq!(
        metric(&proxy, "mllp_proxy_messages_received_total{route=\"test\"}").await,
        0.0
    );
}

/// Sends one message through a proxy whose engine misbehaves as `bad`, in `mode`, and checks
/// the sender never sees a positive ACK; then the engine recovers and delivery resumes.
async fn upstream_failure_case(bad: Behaviour, mode: &str) {
    let ack_timeout = match bad {
        Behaviour::Silent => Duration::from_millis(500),
        _ => Duration::from_secs(5),
    };
    let World {
        pki, engine, proxy, ..
    } = Harness::new()
        .engine(bad)
        .route_yaml(&format!("    on_upstream_failure: {mode}\n"))
        // Short only where the test waits it out: on a loaded machine an engine that closes
        // or answers wrongly could otherwise miss a short deadline and fail as a timeout.
        .edit(move |cfg| cfg.routes[0].upstream.ack_timeout = ack_timeout)
        .start()
        .await;
    let mut client = connect(&pki, &proxy, ClientCert::Good).await;
    let answer = client.exchange(&adt("FAIL-1"), T).await;
    match mode {
        "close" => assert!(
            answer.is_err(),
            "{bad:?}: expected the connection closed, got {answer:?}"
        ),
        _ => {
            let answer = answer.expect("a NAK");
            assert_eq!(msa(&answer), ("AR".into(), "FAIL-1".into()), "{bad:?}");
        }
    }
    // Once the engine behaves, the next message is delivered.
    engine.set(Behaviour::Ack);
    let mut client = if mode == "close" {
        connect(&pki, &proxy, ClientCert::Good).await
    } else {
        client
    };
    let ack = client
        .exchange(&adt("FAIL-2"), T)
        .await
        .expect("delivered after recovery");
    assert_eq!(msa(&ack), ("AA".into(), "FAIL-2".into()));
    let kind = match bad {
        Behaviour::Silent => "timeout",
        Behaviour::CloseAfterRead => "closed",
        _ => "protocol",
    };
    let sample = format!(
        "mllp_proxy_upstream_failures_total{{kind=\"{kind}\",route=\"test\",target=\"{}\"}}",
        engine.target()
    );
    assert_eq!(metric(&proxy, &sample).await, 1.0, "{sample}");
    assert_eq!(
        metric(&proxy, "mllp_proxy_acks_total{code=\"AA\",route=\"test\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_engine_never_yields_a_positive_ack() {
    // The engine accepts but never answers: ack_timeout, then close (or AR in nak mode).
    upstream_failure_case(Behaviour::Silent, "close").await;
    upstream_failure_case(Behaviour::Silent, "nak").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_closing_after_reading_never_yields_a_positive_ack() {
    // The engine reads the message and closes without answering.
    upstream_failure_case(Behaviour::CloseAfterRead, "close").await;
    upstream_failure_case(Behaviour::CloseAfterRead, "nak").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_with_wrong_control_id_or_garbage_is_dropped() {
    // An ACK whose MSA-2 is not the message's MSH-10, or an answer that is not an ACK.
    upstream_failure_case(Behaviour::WrongControlId, "close").await;
    upstream_failure_case(Behaviour::WrongControlId, "nak").await;
    upstream_failure_case(Behaviour::Garbage, "nak").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_refusing_connections_then_coming_back() {
    // Nothing listens on the target: close mode closes, nak mode answers AR; when the engine
    // starts on that port, the next message is delivered.
    for mode in ["close", "nak"] {
        let World {
            pki, proxy, config, ..
        } = Harness::new()
            .engine_down()
            .route_yaml(&format!("    on_upstream_failure: {mode}\n"))
            .start()
            .await;
        let addr: std::net::SocketAddr =
            config.routes[0].upstream.targets[0].parse().expect("addr");
        let mut client = connect(&pki, &proxy, ClientCert::Good).await;
        let answer = client.exchange(&adt("DOWN-1"), T).await;
        if mode == "close" {
            assert!(answer.is_err(), "{answer:?}");
            client = connect(&pki, &proxy, ClientCert::Good).await;
        } else {
            let nak = answer.expect("NAK");
            assert_eq!(msa(&nak), ("AR".into(), "DOWN-1".into()));
            assert!(String::from_utf8_lossy(&nak).contains("upstream engine failed"));
        }
        let sample = format!("mllp_proxy_upstream_up{{route=\"test\",target=\"{addr}\"}}");
        assert_eq!(metric(&proxy, &sample).await, 0.0);
        let engine = Engine::start_on(addr, Behaviour::Ack).await;
        let ack = client.exchange(&adt("DOWN-2"), T).await.expect("delivered");
        assert_eq!(msa(&ack), ("AA".into(), "DOWN-2".into()));
        assert_eq!(engine.received().len(), 1);
        assert_eq!(metric(&proxy, &sample).await, 1.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_target_takes_over_when_the_first_is_down() {
    // Targets are tried in order: the first refuses, the second delivers.
    let World {
        pki, engine, proxy, ..
    } = Harness::new().target_before(dead_addr()).start().await;
    let mut client = connect(&pki, &proxy, ClientCert::Good).await;
    let ack = client.exchange(&adt("FO-1"), T).await.expect("ACK");
    assert_eq!(msa(&ack), ("AA".into(), "FO-1".into()));
    assert_eq!(engine.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_that_closes_after_every_ack_does_not_fail_the_next_message() {
    // A quirky engine closes after each ACK: the proxy notices before reuse and reconnects.
    let World {
        pki, engine, proxy, ..
    } = Harness::new()
        .engine(Behaviour::CloseAfterAck)
        .start()
        .await;
    let mut client = connect(&pki, &proxy, ClientCert::Good).await;
    for i in 0..20 {
        let id = format!("Q-{i}");
        let ack = client.exchange(&adt(&id), T).await.expect("ACK");
        assert_eq!(msa(&ack), ("AA".into(), id));
    }
    assert_eq!(engine.received().len(), 20);
    assert_eq!(engine.connections(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_closed_before_answering_is_retried_once_on_a_new_one() {
    // The engine reads a message on a kept connection and closes it without a byte of answer
    // (the race of an engine closing idle connections). The proxy resends it once on a fresh
    // connection; the sender gets the engine's AA. The engine sees that message twice, as
    // documented in docs/behaviour.md.
    let World {
        pki, engine, proxy, ..
    } = Harness::new()
        .engine(Behaviour::CloseOnSecondMessage)
        .start()
        .await;
    let mut client = connect(&pki, &proxy, ClientCert::Good).await;
    for id in ["R-1", "R-2", "R-3"] {
        let ack = client.exchange(&adt(id), T).await.expect("ACK");
        assert_eq!(msa(&ack), ("AA".into(), id.into()));
    }
    assert_eq!(engine.received_ids(), ["R-1", "R-2", "R-2", "R-3", "R-3"]);
    assert_eq!(engine.connections(), 3);
    let closed = format!(
        "mllp_proxy_upstream_failures_total{{kind=\"closed\",route=\"test\",target=\"{}\"}}",
        engine.target()
    );
    assert_eq!(
        count(&proxy, &closed).await,
        0.0,
        "a retried close is not a failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_bytes_and_repeated_acks_are_dropped_and_an_unsolicited_ack_replaces_the_connection()
{
    // An engine that writes a line feed after each frame keeps its connection. One that repeats
    // its ACK a few ms later keeps it too, whether the repeat arrives while the connection is
    // idle or while the next message waits for its ACK: the repeat is dropped and counted. One
    // that sends an ACK naming another message has the connection replaced before the next
    // message (a protocol failure). No sender message fails in any case.
    let idle = Duration::from_millis(200);
    let busy = Duration::ZERO;
    for (quirk, pause, connections, protocol_failures, repeats) in [
        (Behaviour::AckThenLineFeed, idle, 1, 0.0, 0.0),
        (Behaviour::AckTwice, idle, 1, 0.0, 5.0),
        (Behaviour::AckTwice, busy, 1, 0.0, 5.0),
        (Behaviour::AckThenOther, idle, 5, 5.0, 0.0),
    ] {
        let World {
            pki, engine, proxy, ..
        } = Harness::new().engine(quirk).start().await;
        let mut client = connect(&pki, &proxy, ClientCert::Good).await;
        for i in 0..5 {
            let id = format!("S-{i}");
            let ack = client.exchange(&adt(&id), T).await.expect("ACK");
            assert_eq!(msa(&ack), ("AA".into(), id), "{quirk:?} {pause:?}");
            // The pause between messages is the quirk's trigger: time is the subject.
            tokio::time::sleep(pause).await;
        }
        assert_eq!(engine.received().len(), 5, "{quirk:?} {pause:?}");
        assert_eq!(engine.connections(), connections, "{quirk:?} {pause:?}");
        let sample = format!(
            "mllp_proxy_upstream_failures_total{{kind=\"protocol\",route=\"test\",target=\"{}\"}}",
            engine.target()
        );
        assert!(
            count_reaches(&proxy, &sample, protocol_failures).await,
            "{quirk:?} {pause:?}: {:?}",
            scrape(&proxy, &sample).await
        );
        // The last repeat arrives while the connection is idle: the idle watch reads it
        // within a second.
        let sample = "mllp_proxy_upstream_duplicate_acks_total{route=\"test\"}";
        assert!(
            metric_reaches(&proxy, sample, repeats).await,
            "{quirk:?} {pause:?}: {:?}",
            scrape(&proxy, sample).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_quirks_are_absorbed() {
    // A frame split byte by byte, two frames in one write, garbage between frames, and an
    // oversize frame (NAKed, and the connection still usable afterwards).
    let World {
        pki, engine, proxy, ..
    } = Harness::new()
        .edit(|cfg| cfg.routes[0].validation.max_message_bytes = 2048)
        .start()
        .await;
    let mut client = connect(&pki, &proxy, ClientCert::Good).await;

    let wire = MllpCodec::frame(&adt("SPLIT-1"));
    for b in wire.iter() {
        client.send_raw(&[*b]).await.expect("write");
    }
    assert_eq!(
        msa(&client.recv().await.expect("ACK")),
        ("AA".into(), "SPLIT-1".into())
    );

    let mut two = MllpCodec::frame(&adt("TWO-1")).to_vec();
    two.extend_from_slice(&MllpCodec::frame(&adt("TWO-2")));
    client.send_raw(&two).await.expect("write");
    assert_eq!(msa(&client.recv().await.expect("ACK")).1, "TWO-1");
    assert_eq!(msa(&client.recv().await.expect("ACK")).1, "TWO-2");

    let mut noisy = b"\r\n  noise \x00\xff".to_vec();
    noisy.extend_from_slice(&MllpCodec::frame(&adt("NOISY-1")));
    noisy.extend_from_slice(b"\n\n");
    client.send_raw(&noisy).await.expect("write");
    assert_eq!(msa(&client.recv().await.expect("ACK")).1, "NOISY-1");

    let mut big = adt("BIG-1");
    big.extend_from_slice(b"NTE|1||");
    big.extend(std::iter::repeat_n(b'x', 10_000));
    big.push(b'\r');
    let nak = client.exchange(&big, T).await.expect("NAK for oversize");
    assert_eq!(msa(&nak), ("AE".into(), "BIG-1".into()));

    let ack = client
        .exchange(&adt("AFTER-1"), T)
        .await
        .expect("still usable");
    assert_eq!(msa(&ack), ("AA".into(), "AFTER-1".into()));

    assert_eq!(
        engine.received_ids(),
        ["SPLIT-1", "TWO-1", "TWO-2", "NOISY-1", "AFTER-1"]
    );
    assert_eq!(
        metric(
            &proxy,
            "mllp_proxy_messages_rejected_total{reason=\"too_large\",route=\"test\"}"
        )
        .await,
        1.0
    );
    assert!(metric(&proxy, "mllp_proxy_discarded_bytes_total{route=\"test\"}").await >= 13.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_without_a_readable_header_closes_the_connection() {
    // Not even MSH in the first bytes: there is nobody to address a NAK to, so the connection
    // is closed and the sender resends (or its operator looks).
    let World {
        pki, engine, proxy, ..
    } = Harness::new()
        .edit(|cfg| cfg.routes[0].validation.max_message_bytes = 1024)
        .start()
        .await;
    let mut client = connect(&pki, &proxy, ClientCert::Good).await;
    let answer = client.exchange(&vec![b'z'; 100_000], T).await;
    assert!(answer.is_err(), "{answer:?}");
    assert!(engine.received().is_empty());
}

#[test]
fn sigterm_during_an_in_flight_exchange_still_relays_the_ack() {
    // The real binary: SIGTERM arrives while the engine is still working on a message. The ACK
    // still reaches the sender, then the process exits 0.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pki = Pki::new();
    let engine = rt.block_on(Engine::start(Behaviour::Delay(Duration::from_millis(1500))));
    let yaml = pki
        .config_yaml(&[engine.target()], "")
        .replace("admin:\n", "logging:\n  format: json\nadmin:\n");
    let config_path = pki.path("proxy.yaml");
    std::fs::write(&config_path, yaml).expect("write config");
    let mut proxy = ProxyProcess::spawn(&config_path, "info");
    let pid = proxy.child.id().to_string();
    let addr = proxy.addr;
    let outcome = rt.block_on(async {
        let mut client = MllpClient::connect(&pki.target(addr, ClientCert::Good), T)
            .await
            .expect("connect");
        client.send(&adt("TERM-1")).await.expect("send");
        assert!(
            eventually(T, || async { engine.received().len() == 1 }).await,
            "engine got the message"
        );
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        client.recv().await
    });
    let ack = outcome.expect("ACK relayed despite SIGTERM");
    assert_eq!(msa(&ack), ("AA".into(), "TERM-1".into()));
    let status = proxy.terminate();
    assert!(status.success(), "exit status {status:?}");
}
