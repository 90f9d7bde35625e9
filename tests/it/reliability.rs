//! Delivery under the failures the fault soak (`bench/soak.sh`) cannot produce: a target that
//! drops SYNs, a sender that pipelines, a sender that stops reading, certificate reloads and
//! SIGTERM under load.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mllp_proxy::client::{MllpClient, http_get};
use mllp_proxy::mllp::MllpCodec;

use crate::support::*;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_drops_syns_costs_one_connect_timeout_and_never_an_ack() {
    // A primary that drops SYNs: the message waits connect_timeout, then the secondary answers
    // AA. Alone, it gets the sender an AR (nak mode) once connect_timeout has passed, counted
    // as an exchange that failed on connect.
    let (_listener, _held, dead) = black_hole().await;
    let dead = dead.to_string();
    let World {
        pki,
        engine: _engine,
        proxy,
        ..
    } = Harness::new()
        .target_before(&dead)
        .edit(|cfg| cfg.routes[0].upstream.connect_timeout = Duration::from_millis(500))
        .start()
        .await;
    let mut client = connect(&pki, &proxy, ClientCert::Good).await;
    let started = Instant::now();
    let ack = client.exchange(&adt("SYN-1"), T).await.expect("ACK");
    let took = started.elapsed();
    assert_eq!(msa(&ack), ("AA".into(), "SYN-1".into()));
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let failed = format!(
        "mllp_proxy_upstream_failures_total{{kind=\"connect\",route=\"test\",target=\"{dead}\"}}"
    );
    assert_eq!(metric(&proxy, &failed).await, 1.0);
    let exchanges = "mllp_proxy_upstream_exchanges_failed_total{kind=\"connect\",route=\"test\"}";
    assert_eq!(
        metric(&proxy, exchanges).await,
        0.0,
        "failover is no failure"
    );

    let mut cfg = pki.config(
        std::slice::from_ref(&dead),
        "    on_upstream_failure: nak\n",
    );
    cfg.routes[0].upstream.connect_timeout = Duration::from_millis(500);
    let proxy = start_proxy(cfg).await;
    let mut client = connect(&pki, &proxy, ClientCert::Good).await;
    let started = Instant::now();
    let nak = client.exchange(&adt("SYN-2"), T).await.expect("NAK");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(msa(&nak), ("AR".into(), "SYN-2".into()));
    assert_eq!(metric(&proxy, exchanges).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelining_sender_gets_every_ack_in_order() {
    // Ten messages in one write: each is forwarded only after the previous one's ACK, and the
    // ten ACKs come back in the order sent.
    let World {
        pki, engine, proxy, ..
    } = Harness::new().start().await;
    let mut client = connect(&pki, &proxy, ClientCert::Good).await;
    let ids: Vec<String> = (0..10).map(|i| format!("PIPE-{i}")).collect();
    let mut burst = Vec::new();
    for id in &ids {
        burst.extend_from_slice(&MllpCodec::frame(&adt(id)));
    }
    client.send_raw(&burst).await.expect("send");
    for id in &ids {
        let ack = tokio::time::timeout(T, client.recv())
            .await
            .expect("in time")
            .expect("ACK");
        assert_eq!(msa(&ack), ("AA".into(), id.clone()));
    }
    assert_eq!(engine.received_ids(), ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_stops_reading_is_closed_at_frame_timeout_and_others_carry_on() {
    // The engine's ACKs are 256 KiB; a sender pipelines 40 messages and never reads, so the
    // proxy's write to it blocks. That session is closed frame_timeout later, while another
    // sender's messages are acknowledged all along.
    let World {
        pki,
        engine: _engine,
        proxy,
        ..
    } = Harness::new()
        .engine(Behaviour::AckPadded(256 * 1024))
        .edit(|cfg| cfg.routes[0].limits.frame_timeout = Duration::from_secs(1))
        .start()
        .await;
    let mut stuck = connect(&pki, &proxy, ClientCert::Good).await;
    let mut burst = Vec::new();
    for i in 0..40 {
        burst.extend_from_slice(&MllpCodec::frame(&adt(&format!("STUCK-{i}"))));
    }
    stuck.send_raw(&burst).await.expect("send");
    let mut good = connect(&pki, &proxy, ClientCert::Good).await;
    let active = "mllp_proxy_connections_active{route=\"test\"}";
    let started = Instant::now();
    let mut i = 0;
    while metric(&proxy, active).await > 1.0 {
        assert!(started.elapsed() < T, "the stuck session was never closed");
        let id = format!("GOOD-{i}");
        let ack = good.exchange(&adt(&id), T).await.expect("ACK");
        assert_eq!(msa(&ack), ("AA".into(), id));
        i += 1;
    }
    assert!(i > 0, "the good sender was served meanwhile");
    let id = "GOOD-last".to_string();
    let ack = good.exchange(&adt(&id), T).await.expect("ACK");
    assert_eq!(msa(&ack), ("AA".into(), id));
}

fn signal(proxy: &ProxyProcess, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &proxy.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn certificate_reloads_every_second_under_load_refuse_no_sender_and_drop_no_session() {
    // Four senders send without pause, each opening a new connection every 20 messages, while
    // the server certificate is replaced and SIGHUP sent every second, five times: every
    // message is acknowledged, no handshake fails, every reload succeeds.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let BinaryWorld {
        pki,
        engine: _engine,
        proxy,
        ..
    } = rt.block_on(Harness::new().spawn_json());
    let (addr, admin) = (proxy.addr, proxy.admin);
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|s| {
            let target = pki.target(addr, ClientCert::Good);
            let stop = stop.clone();
            rt.spawn(async move {
                let mut sent = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let mut client = MllpClient::connect(&target, T)
                        .await
                        .map_err(|e| format!("sender {s} connect: {e}"))?;
                    for _ in 0..20 {
                        let id = format!("HUP-{s}-{sent}");
                        let ack = client
                            .exchange(&adt(&id), T)
                            .await
                            .map_err(|e| format!("{id}: {e}"))?;
                        if msa(&ack) != ("AA".into(), id.clone()) {
                            return Err(format!("{id}: {:?}", msa(&ack)));
                        }
                        sent += 1;
                    }
                    client.close().await;
                }
                Ok::<usize, String>(sent)
            })
        })
        .collect();
    // A rotation a second under load for five seconds: time is the workload here.
    for i in 0..5 {
        std::thread::sleep(Duration::from_secs(1));
        pki.issue_server("server", &format!("proxy rotation {i}"));
        signal(&proxy, "-HUP");
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for s in senders {
        total += rt.block_on(s).expect("sender task").expect("no failure");
    }
    assert!(total > 100, "{total} messages");
    let metrics = rt.block_on(http_get(admin, "/metrics")).expect("metrics");
    let value = |sample: &str| sample_value(&metrics, sample);
    assert_eq!(
        value("mllp_proxy_tls_reloads_total{result=\"success\",route=\"test\"}"),
        5.0
    );
    assert_eq!(
        value("mllp_proxy_tls_reloads_total{result=\"failure\",route=\"test\"}"),
        0.0
    );
    let handshake_failures: f64 = mllp_proxy::metrics::samples(&metrics)
        .filter(|s| s.name == "mllp_proxy_tls_handshake_failures_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(handshake_failures, 0.0);
    assert_eq!(
        value("mllp_proxy_acks_total{code=\"AA\",route=\"test\"}"),
        total as f64
    );
}

#[test]
fn sigterm_under_load_relays_every_forwarded_message_and_fabricates_nothing() {
    // Eight senders keep sending to an engine that takes 300 ms per ACK; SIGTERM arrives in the
    // middle. Every message the engine received is acknowledged to its sender with the engine's
    // AA; every other attempt ends with the connection closed and no answer; exit status 0.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let harness = Harness::new().engine(Behaviour::Delay(Duration::from_millis(300)));
    let BinaryWorld {
        pki,
        engine,
        mut proxy,
        ..
    } = rt.block_on(harness.spawn_json());
    let addr = proxy.addr;
    let senders: Vec<_> = (0..8)
        .map(|s| {
            let target = pki.target(addr, ClientCert::Good);
            rt.spawn(async move {
                let mut acked = Vec::new();
                let Ok(mut client) = MllpClient::connect(&target, T).await else {
                    return Ok(acked);
                };
                for i in 0.. {
                    let id = format!("TERM-{s}-{i}");
                    match client.exchange(&adt(&id), T).await {
                        Ok(ack) if msa(&ack) == ("AA".into(), id.clone()) => acked.push(id),
                        Ok(ack) => return Err(format!("{id}: {:?}", msa(&ack))),
                        Err(_) => break,
                    }
                }
                Ok::<Vec<String>, String>(acked)
            })
        })
        .collect();
    // A second of traffic, then SIGTERM in the middle of it: the timing is what is tested.
    std::thread::sleep(Duration::from_millis(1000));
    signal(&proxy, "-TERM");
    let mut acked = BTreeSet::new();
    for s in senders {
        acked.extend(rt.block_on(s).expect("sender task").expect("only AA"));
    }
    let status = proxy.terminate();
    assert!(status.success(), "exit status {status:?}");
    let received: BTreeSet<String> = engine.received_ids().into_iter().collect();
    assert!(
        acked.len() >= 8,
        "{} acknowledged before SIGTERM",
        acked.len()
    );
    assert_eq!(
        acked, received,
        "every forwarded message relayed, nothing else"
    );
}

#[test]
fn sigterm_with_exchanges_queued_relays_the_one_in_flight_and_answers_the_queued_none() {
    // One pooled connection, an engine taking 1.5 s per ACK (within ack_timeout), nak mode: one
    // message in flight and three queued behind it, then SIGTERM: the exchange in flight gets
    // the engine's AA; the three queued messages were never forwarded and get no answer at all
    // (not even the AR of nak mode), so their senders resend elsewhere. Exit status 0.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pki = Pki::new();
    let engine = rt.block_on(Engine::start(Behaviour::Delay(Duration::from_millis(1500))));
    let yaml = pki
        .config_yaml(&[engine.target()], "    on_upstream_failure: nak\n")
        .replace("admin:\n", "logging:\n  format: json\nadmin:\n")
        .replace(
            "      health_check_interval: 0\n",
            "      health_check_interval: 0\n      max_connections: 1\n",
        );
    let config_path = pki.path("proxy.yaml");
    std::fs::write(&config_path, yaml).expect("write config");
    let mut proxy = ProxyProcess::spawn(&config_path, "info");
    let (addr, admin) = (proxy.addr, proxy.admin);
    let send = |s: usize| {
        let target = pki.target(addr, ClientCert::Good);
        rt.spawn(async move {
            let mut client = MllpClient::connect(&target, T).await.expect("connect");
            let id = format!("QT-{s}");
            client.exchange(&adt(&id), T).await.map(|ack| msa(&ack))
        })
    };
    // The first message in flight at the engine, then three queued behind it.
    let mut senders = vec![send(0)];
    assert!(rt.block_on(eventually(T, || async { engine.received().len() == 1 })));
    senders.extend((1..4).map(send));
    let queued = || async {
        http_get(admin, "/metrics").await.is_ok_and(|m| {
            sample_value(&m, "mllp_proxy_upstream_queue_waiting{route=\"test\"}") == 3.0
        })
    };
    assert!(rt.block_on(eventually(T, queued)), "three exchanges queued");
    signal(&proxy, "-TERM");
    let outcomes: Vec<_> = senders
        .into_iter()
        .map(|s| rt.block_on(s).expect("sender task"))
        .collect();
    let status = proxy.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(
        outcomes[0].as_ref().ok(),
        Some(&("AA".to_string(), "QT-0".to_string()))
    );
    for (s, outcome) in outcomes.iter().enumerate().skip(1) {
        assert!(outcome.is_err(), "queued sender {s} got {outcome:?}");
    }
    assert_eq!(engine.received_ids(), vec!["QT-0".to_string()]);
}
