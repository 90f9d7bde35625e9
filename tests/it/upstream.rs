//! The engine side: one pool of connections per route shared by all senders, target health
//! (passive and active), failover and round robin, the queue, and readiness.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mllp_proxy::client::{MllpClient, http_get};

use crate::support::*;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_senders_share_a_single_connection_engine() {
    // An engine that serves one connection at a time, 16 concurrent senders x 100 messages and
    // max_connections 1: every message AA, each sender's messages reach the engine in order,
    // and the engine never saw a second connection.
    sixteen_senders_one_connection(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_senders_share_a_single_connection_engine_on_session_threads() {
    // The same as the binary runs it: sessions on the session threads, where a limited pool's
    // route keeps all its sessions on one of them.
    sixteen_senders_one_connection(true).await;
}

async fn sixteen_senders_one_connection(on_session_threads: bool) {
    let mut h = Harness::new()
        .single_engine()
        .edit(|cfg| cfg.routes[0].upstream.max_connections = 1);
    if on_session_threads {
        h = h.session_threads(2);
    }
    let World {
        pki, engine, proxy, ..
    } = h.start().await;
    send_concurrently(&pki, proxy.routes()[0].1, "ONE", 16, 100).await;
    assert_eq!(
        engine.refused(),
        0,
        "a second connection reached the engine"
    );
    assert_eq!(engine.connections(), 1);
    assert_each_sender_in_order(&engine, 16, 100);
    let busy = format!(
        "mllp_proxy_upstream_connections{{route=\"test\",state=\"idle\",target=\"{}\"}}",
        engine.target()
    );
    assert_eq!(metric(&proxy, &busy).await, 1.0);
}

/// `senders` concurrent senders through the route at `addr`, `messages` each, control IDs
/// `{prefix}-{sender}-{n}`: every one answered AA.
async fn send_concurrently(
    pki: &Pki,
    addr: std::net::SocketAddr,
    prefix: &str,
    senders: usize,
    messages: usize,
) {
    let tasks: Vec<_> = (0..senders)
        .map(|s| {
            let target = pki.target(addr, ClientCert::Good);
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let mut c = MllpClient::connect(&target, T).await.expect("connect");
                for i in 0..messages {
                    let id = format!("{prefix}-{s}-{i}");
                    let ack = c.exchange(&adt(&id), T).await.expect("ACK");
                    assert_eq!(msa(&ack), ("AA".into(), id));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("sender");
    }
}

/// The engine received every sender's messages, each sender's in order.
fn assert_each_sender_in_order(engine: &Engine, senders: usize, messages: usize) {
    let mut per_sender: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for id in engine.received_ids() {
        let (sender, i) = id.rsplit_once('-').expect("id");
        per_sender
            .entry(sender.to_string())
            .or_default()
            .push(i.parse().expect("n"));
    }
    assert_eq!(per_sender.len(), senders);
    for (sender, seq) in per_sender {
        assert_eq!(seq, (0..messages).collect::<Vec<_>>(), "{sender}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_split_over_the_session_threads_stays_within_max_connections() {
    // max_connections 8 on two session threads: a share of 4 per thread. 32 senders x 50
    // messages (more than the pool, so exchanges queue): every message AA and in order per
    // sender, never more than 8 engine connections at once, and more than one share's 4 in
    // use (the route's sessions run on both threads).
    let World {
        pki, engine, proxy, ..
    } = Harness::new()
        .engine(Behaviour::Delay(Duration::from_millis(1)))
        .edit(|cfg| cfg.routes[0].upstream.max_connections = 8)
        .session_threads(2)
        .start()
        .await;
    send_concurrently(&pki, proxy.routes()[0].1, "SPLIT", 32, 50).await;
    let peak = engine.peak();
    assert!(peak <= 8, "{peak} engine connections at once");
    assert!(peak > 4, "only {peak} engine connections at once");
    assert_each_sender_in_order(&engine, 32, 50);
    let waited = "mllp_proxy_upstream_queue_seconds_count{route=\"test\"}";
    assert!(metric(&proxy, waited).await >= 1600.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_queued_behind_a_slow_share_takes_the_other_shares_free_connection() {
    // max_connections 8 on two session threads: a share of 4 per thread, senders placed on
    // the threads in turn. Senders 0, 2, 4, 6 (one thread) hold their share with 3 s
    // exchanges, senders 1, 3, 5, 7 (the other) theirs with 300 ms ones. Sender 8 lands on
    // the first thread, finds every share busy and queues there: it must not wait the 3 s for
    // its own share, but take the other share's connection when that comes free.
    let slow_or_fast =
        Behaviour::DelayByPrefix("SLOW", Duration::from_secs(3), Duration::from_millis(300));
    let World {
        pki, engine, proxy, ..
    } = Harness::new()
        .engine(slow_or_fast)
        .edit(|cfg| {
            cfg.routes[0].upstream.max_connections = 8;
            cfg.routes[0].upstream.ack_timeout = Duration::from_secs(10);
        })
        .session_threads(2)
        .start()
        .await;
    let mut clients = Vec::new();
    for _ in 0..9 {
        // One after another, so the route places them on alternate threads.
        let target = pki.target(proxy.routes()[0].1, ClientCert::Good);
        clients.push(MllpClient::connect(&target, T).await.expect("connect"));
    }
    let last = clients.pop().expect("nine clients");
    let mut holding = Vec::new();
    for (s, mut c) in clients.into_iter().enumerate() {
        let id = if s % 2 == 0 {
            format!("SLOW-{s}")
        } else {
            format!("FAST-{s}")
        };
        holding.push(tokio::spawn(async move {
            let ack = c.exchange(&adt(&id), T).await.expect("ACK");
            assert_eq!(msa(&ack), ("AA".into(), id));
        }));
    }
    // Every share busy: all eight exchanges are at the engine.
    assert!(eventually(T, || async { engine.received().len() == 8 }).await);
    let started = Instant::now();
    let mut last = last;
    let ack = last.exchange(&adt("FAST-8"), T).await.expect("ACK");
    let took = started.elapsed();
    assert_eq!(msa(&ack), ("AA".into(), "FAST-8".into()));
    assert!(took < Duration::from_millis(1500), "waited {took:?}");
    for h in holding {
        h.await.expect("sender");
    }
    assert!(
        engine.peak() <= 8,
        "{} engine connections at once",
        engine.peak()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_primary_costs_only_the_first_session_and_is_used_again_once_back() {
    // Primary drops SYNs, secondary is fine: of 20 sessions opened one after another only the
    // first waits connect_timeout (1 s), all get AA from the secondary. When the primary
    // comes back it is used again once its back-off (about 1 s) has passed.
    let (listener, held, primary) = black_hole().await;
    let World {
        pki,
        engine: secondary,
        proxy,
        ..
    } = Harness::new()
        .target_before(primary)
        .edit(|cfg| cfg.routes[0].upstream.connect_timeout = Duration::from_secs(1))
        .start()
        .await;
    let started = Instant::now();
    for i in 0..20 {
        let mut c = connect(&pki, &proxy, ClientCert::Good).await;
        let id = format!("FO-{i}");
        let ack = c.exchange(&adt(&id), T).await.expect("ACK");
        assert_eq!(msa(&ack), ("AA".into(), id));
        c.close().await;
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(secondary.received().len(), 20);

    drop((listener, held));
    let recovered = Engine::start_on(primary, Behaviour::Ack).await;
    // Past the primary's first back-off (1 s, jittered to 1.2 s at most): time is what this
    // waits for.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut c = connect(&pki, &proxy, ClientCert::Good).await;
    let ack = c.exchange(&adt("FO-back"), T).await.expect("ACK");
    assert_eq!(msa(&ack), ("AA".into(), "FO-back".into()));
    assert_eq!(recovered.received_ids(), vec!["FO-back".to_string()]);
    let up = format!("mllp_proxy_upstream_up{{route=\"test\",target=\"{primary}\"}}");
    assert_eq!(metric(&proxy, &up).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_report_each_target_before_any_message_without_competing_with_the_pool() {
    // With probes on, upstream_up is 1 for a live target and 0 for a dead one before any
    // message is sent. A single-connection engine then carries traffic while probes keep
    // running every 100 ms: it never sees a second connection.
    let dead = dead_addr();
    let World {
        pki,
        engine: live,
        proxy,
        ..
    } = Harness::new()
        .single_engine()
        .target_after(dead)
        .edit(|cfg| {
            cfg.routes[0].upstream.health_check_interval = Some(Duration::from_millis(100));
            cfg.routes[0].upstream.max_connections = 1;
        })
        .start()
        .await;
    let up = |t: &str| format!("mllp_proxy_upstream_up{{route=\"test\",target=\"{t}\"}}");
    assert!(metric_reaches(&proxy, &up(&live.target()), 1.0).await);
    assert_eq!(metric(&proxy, &up(&dead.to_string())).await, 0.0);
    let check = |t: &str, r: &str| {
        format!(
            "mllp_proxy_upstream_health_checks_total{{result=\"{r}\",route=\"test\",target=\"{t}\"}}"
        )
    };
    assert!(metric(&proxy, &check(&live.target(), "success")).await >= 1.0);
    assert!(metric_reaches(&proxy, &check(&dead.to_string(), "failure"), 1.0).await);
    assert_eq!(live.received().len(), 0, "no message was sent yet");

    let mut c = connect(&pki, &proxy, ClientCert::Good).await;
    let until = Instant::now() + Duration::from_millis(800);
    let mut i = 0;
    while Instant::now() < until {
        let id = format!("HC-{i}");
        let ack = c.exchange(&adt(&id), T).await.expect("ACK");
        assert_eq!(msa(&ack), ("AA".into(), id));
        i += 1;
        // Spaced out over the health interval: the probes between messages are the subject.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        live.refused(),
        0,
        "a probe competed with the pooled connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_that_waits_past_queue_timeout_is_closed_or_naked_and_never_forwarded() {
    // One pooled connection, held 1 s by a slow ACK; a second sender's message waits 200 ms
    // (queue_timeout) and fails with kind "queue": closed without answer, or AR in nak mode.
    // The engine never sees it.
    for mode in ["close", "nak"] {
        let World {
            pki, engine, proxy, ..
        } = Harness::new()
            .engine(Behaviour::Delay(Duration::from_secs(1)))
            .route_yaml(&format!("    on_upstream_failure: {mode}\n"))
            .edit(|cfg| {
                cfg.routes[0].upstream.max_connections = 1;
                cfg.routes[0].upstream.queue_timeout = Duration::from_millis(200);
            })
            .start()
            .await;
        let mut first = connect(&pki, &proxy, ClientCert::Good).await;
        let mut second = connect(&pki, &proxy, ClientCert::Good).await;
        first.send(&adt("Q-1")).await.expect("send");
        let held = eventually(T, || async {
            engine.received_ids().contains(&"Q-1".to_string())
        });
        assert!(held.await, "Q-1 did not reach the engine");
        let started = Instant::now();
        let answer = second.exchange(&adt("Q-2"), T).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_millis(800),
            "{mode}: {waited:?}"
        );
        match mode {
            "close" => assert!(answer.is_err(), "{answer:?}"),
            _ => assert_eq!(msa(&answer.expect("AR")), ("AR".into(), "Q-2".into())),
        }
        let ack = first.recv().await.expect("first ACK");
        assert_eq!(msa(&ack), ("AA".into(), "Q-1".into()));
        assert_eq!(engine.received_ids(), vec!["Q-1".to_string()], "{mode}");
        let queue = "mllp_proxy_upstream_exchanges_failed_total{kind=\"queue\",route=\"test\"}";
        assert_eq!(metric(&proxy, queue).await, 1.0, "{mode}");
        let waited = "mllp_proxy_upstream_queue_seconds_count{route=\"test\"}";
        assert_eq!(metric(&proxy, waited).await, 2.0, "{mode}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_connections_over_the_targets() {
    // Ten messages from one sender with balance: round_robin go to both engines in turn, over
    // one pooled connection each.
    // A second engine beside the harness's own.
    let b = Engine::start(Behaviour::Ack).await;
    let World {
        pki,
        engine: a,
        proxy,
        ..
    } = Harness::new()
        .target_after(b.target())
        .edit(|cfg| cfg.routes[0].upstream.balance = mllp_proxy::config::Balance::RoundRobin)
        .start()
        .await;
    let mut c = connect(&pki, &proxy, ClientCert::Good).await;
    for i in 0..10 {
        let id = format!("RR-{i}");
        let ack = c.exchange(&adt(&id), T).await.expect("ACK");
        assert_eq!(msa(&ack), ("AA".into(), id));
    }
    assert_eq!((a.received().len(), b.received().len()), (5, 5));
    assert_eq!((a.connections(), b.connections()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_drops_idle_connections_after_a_second_loses_no_message() {
    // The engine closes a connection idle for 1 s; the sender pauses 1.2 s between messages.
    // The pool notices the closed connection before reuse and opens a new one.
    let World {
        pki, engine, proxy, ..
    } = Harness::new()
        .engine(Behaviour::AckCloseWhenIdle(Duration::from_secs(1)))
        .start()
        .await;
    let mut c = connect(&pki, &proxy, ClientCert::Good).await;
    for i in 0..3 {
        let id = format!("IDLE-{i}");
        let ack = c.exchange(&adt(&id), T).await.expect("ACK");
        assert_eq!(msa(&ack), ("AA".into(), id));
        // Idle past the engine's own idle close: time is the thing tested.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    assert_eq!(engine.received().len(), 3);
    assert_eq!(engine.connections(), 3);
    // (No `queue` kind: a pool without a limit never queues.)
    for k in ["connect", "timeout", "closed", "protocol"] {
        let s =
            format!("mllp_proxy_upstream_exchanges_failed_total{{kind=\"{k}\",route=\"test\"}}");
        assert_eq!(metric(&proxy, &s).await, 0.0, "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_can_require_an_engine_target_up() {
    // With admin.ready_requires_upstream, /readyz is 503 while the only target is down and 200
    // once a probe finds the engine; /healthz is 200 throughout.
    let world = Harness::new()
        .engine_down()
        .edit(|cfg| {
            cfg.admin.ready_requires_upstream = true;
            cfg.routes[0].upstream.health_check_interval = Some(Duration::from_millis(100));
        })
        .start()
        .await;
    let (proxy, addr) = (&world.proxy, &world.config.routes[0].upstream.targets[0]);
    let probed = format!(
        "mllp_proxy_upstream_health_checks_total{{result=\"failure\",route=\"test\",target=\"{addr}\"}}"
    );
    assert!(eventually(T, || async { scrape(proxy, &probed).await >= Some(1.0) }).await);
    let ready = http_get(proxy.admin(), "/readyz").await;
    assert!(
        ready.as_ref().is_err_and(|e| e.to_string().contains("503")),
        "{ready:?}"
    );
    assert!(http_get(proxy.admin(), "/healthz").await.is_ok());
    let _engine = Engine::start_on(addr.parse().expect("addr"), Behaviour::Ack).await;
    assert!(
        eventually(T, || async {
            http_get(proxy.admin(), "/readyz").await.is_ok()
        })
        .await,
        "ready once the engine is up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_dies_behind_an_idle_pooled_connection_reads_down_within_two_seconds() {
    // The pool holds an idle connection to the engine, so the interval's probe skips it; the
    // engine then dies and no message follows. The idle watch sees the connection close and
    // probes at once: upstream_up reads 0 long before idle_timeout (60 s) plus the interval.
    let World {
        pki, engine, proxy, ..
    } = Harness::new()
        .edit(|c| c.routes[0].upstream.health_check_interval = Some(Duration::from_secs(10)))
        .start()
        .await;
    let target = engine.target();
    let up = format!("mllp_proxy_upstream_up{{route=\"test\",target=\"{target}\"}}");
    let idle = format!(
        "mllp_proxy_upstream_connections{{route=\"test\",state=\"idle\",target=\"{target}\"}}"
    );
    let mut client = connect(&pki, &proxy, ClientCert::Good).await;
    let ack = client.exchange(&adt("I-1"), T).await.expect("ACK");
    assert_eq!(msa(&ack).0, "AA");
    assert!(metric_reaches(&proxy, &idle, 1.0).await);
    assert_eq!(metric(&proxy, &up).await, 1.0);
    drop(engine);
    let died = Instant::now();
    let down = eventually(Duration::from_secs(2), || async {
        scrape(&proxy, &up).await == Some(0.0)
    });
    assert!(
        down.await,
        "still up {:?} after the engine died",
        died.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_series_exist_while_the_pool_has_a_limit_and_count_after_a_reload() {
    // A pool without a limit never queues: its route has no queue series. A reload that sets
    // max_connections creates them at zero, and they count that route's waits from then on;
    // one that takes the limit away removes them again.
    let World {
        pki, engine, proxy, ..
    } = Harness::new().route_yaml("").start_live().await;
    let waited = "mllp_proxy_upstream_queue_seconds_count{route=\"test\"}";
    let waiting = "mllp_proxy_upstream_queue_waiting{route=\"test\"}";
    let queue_failed = "mllp_proxy_upstream_exchanges_failed_total{kind=\"queue\",route=\"test\"}";
    let scrape = || async { http_get(proxy.admin(), "/metrics").await.expect("scrape") };
    let has = |text: &str, s: &str| mllp_proxy::metrics::sample_value(text, s).is_some();
    let mut c = connect(&pki, &proxy, ClientCert::Good).await;
    assert_eq!(msa(&c.exchange(&adt("Q-0"), T).await.expect("ACK")).0, "AA");
    let text = scrape().await;
    assert!(!has(&text, waited) && !has(&text, waiting) && !has(&text, queue_failed));

    let unlimited = std::fs::read_to_string(pki.path("proxy.yaml")).expect("read");
    let limited = unlimited.replace(
        "      ack_timeout: 2s\n",
        "      ack_timeout: 2s\n      max_connections: 1\n",
    );
    assert_ne!(limited, unlimited);
    std::fs::write(pki.path("proxy.yaml"), &limited).expect("write");
    assert_applied(proxy.reload().await);
    let text = scrape().await;
    for s in [waited, waiting, queue_failed] {
        assert_eq!(
            mllp_proxy::metrics::sample_value(&text, s),
            Some(0.0),
            "{s}"
        );
    }
    for i in 1..4 {
        let ack = c.exchange(&adt(&format!("Q-{i}")), T).await.expect("ACK");
        assert_eq!(msa(&ack).0, "AA");
    }
    assert_eq!(
        metric(&proxy, waited).await,
        3.0,
        "each leased exchange is timed"
    );

    std::fs::write(pki.path("proxy.yaml"), &unlimited).expect("write");
    assert_applied(proxy.reload().await);
    assert_eq!(msa(&c.exchange(&adt("Q-4"), T).await.expect("ACK")).0, "AA");
    let text = scrape().await;
    assert!(!has(&text, waited) && !has(&text, waiting) && !has(&text, queue_failed));
    assert_eq!(engine.received_ids().len(), 5);
}
