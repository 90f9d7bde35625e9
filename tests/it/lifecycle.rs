//! The process as a supervisor runs it: the lame-duck period after SIGTERM, exit statuses,
//! systemd's notify protocol, the plain health listener beside a mutual-TLS admin port, and TCP
//! keepalive on sender and engine sockets.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use mllp_proxy::client::{MllpClient, http_get};
use mllp_proxy::config::{AdminTlsConfig, Keepalive};

use crate::support::*;

const T: Duration = Duration::from_secs(10);

/// The sender's answer to one message on a new mutual-TLS connection, or `None`.
async fn one_message(pki: &Pki, addr: SocketAddr, id: &str) -> Option<(String, String)> {
    let target = pki.target(addr, ClientCert::Good);
    let mut c = MllpClient::connect(&target, Duration::from_secs(2))
        .await
        .ok()?;
    let ack = c.exchange(&adt(id), Duration::from_secs(2)).await.ok()?;
    Some(msa(&ack))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readyz_503_at_once_and_keeps_serving_for_the_delay() {
    // shutdown.delay 2s: after SIGTERM /readyz is 503 within 100 ms, a sender connecting 1 s
    // later is still served, one connecting after the delay is refused, and the exit is 0.
    let BinaryWorld {
        pki,
        engine,
        mut proxy,
        ..
    } = Harness::new().shutdown("2s", "5s").spawn_json().await;
    let admin = proxy.admin;
    assert_eq!(http_get(admin, "/readyz").await.expect("ready"), "ready\n");
    proxy.signal("-TERM");
    let signalled = Instant::now();
    let not_ready = eventually(T, || async {
        http_get(admin, "/readyz")
            .await
            .is_err_and(|e| e.0.contains("HTTP 503"))
    })
    .await;
    let flipped = signalled.elapsed();
    assert!(
        not_ready && flipped < Duration::from_millis(100),
        "{flipped:?}"
    );
    // One second into the delay, then past it: time is the subject.
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(signalled.elapsed())).await;
    let during = one_message(&pki, proxy.addr, "LAME-1").await;
    assert_eq!(
        during,
        Some(("AA".into(), "LAME-1".into())),
        "refused during the delay"
    );
    tokio::time::sleep(Duration::from_millis(2300).saturating_sub(signalled.elapsed())).await;
    assert_eq!(
        one_message(&pki, proxy.addr, "LAME-2").await,
        None,
        "served after the delay"
    );
    assert_eq!(engine.received_ids(), ["LAME-1"]);
    assert_eq!(proxy.wait_exit().code(), Some(0));
    let lines = proxy.log_lines();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("removed from the configuration")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("shutting down")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_times_out_exits_75_and_a_bad_configuration_78() {
    // An engine that never answers holds an exchange past drain_timeout (1 s): the sessions are
    // cut and the status says so. A configuration that fails at start exits 78 (EX_CONFIG),
    // whether the YAML or a certificate file is at fault.
    let BinaryWorld {
        pki,
        engine,
        mut proxy,
        ..
    } = Harness::new()
        .engine(Behaviour::Silent)
        .shutdown("0s", "1s")
        .spawn_json()
        .await;
    let mut c = MllpClient::connect(&pki.target(proxy.addr, ClientCert::Good), T)
        .await
        .expect("connect");
    c.send(&adt("HELD-1")).await.expect("send");
    assert!(eventually(T, || async { engine.received_ids() == ["HELD-1"] }).await);
    assert_eq!(proxy.terminate().code(), Some(75));

    let yaml = pki.path("proxy.yaml");
    let text = std::fs::read_to_string(&yaml).expect("config");
    for (broken, why) in [
        (
            text.replace("routes:", "no_such_key: 1\nroutes:"),
            "unknown key",
        ),
        (
            text.replace("server.crt", "missing.crt"),
            "missing certificate",
        ),
    ] {
        std::fs::write(pki.path("broken.yaml"), broken).expect("write");
        let out = std::process::Command::new(binary())
            .args(["run", "-c"])
            .arg(pki.path("broken.yaml"))
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(78),
            "{why}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The next datagram on `socket` (5 s at most), as text.
fn next_notification(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let n = socket.recv(&mut buf).expect("a notification within 5 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_after_the_listeners_reloading_around_sighup_and_stopping() {
    // With NOTIFY_SOCKET set (Type=notify): READY=1 once the route's listener accepts,
    // RELOADING=1 with MONOTONIC_USEC then READY=1 around SIGHUP, STOPPING=1 at SIGTERM.
    let h = Harness::new();
    let socket_path = h.pki.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    let engine = Engine::start(Behaviour::Ack).await;
    let yaml = format!(
        "logging:\n  format: json\n{}",
        h.pki.config_yaml(&[engine.target()], "")
    );
    std::fs::write(h.pki.path("proxy.yaml"), yaml).expect("config");
    let mut proxy = ProxyProcess::spawn_env(
        &h.pki.path("proxy.yaml"),
        "info",
        &[("NOTIFY_SOCKET", &socket_path)],
    );
    assert_eq!(next_notification(&socket), "READY=1\n");
    // READY=1 came after the bind: the route accepts and serves.
    let served = one_message(&h.pki, proxy.addr, "NOTIFY-1").await;
    assert_eq!(served, Some(("AA".into(), "NOTIFY-1".into())));
    proxy.hup();
    let reloading = next_notification(&socket);
    let lines: Vec<&str> = reloading.lines().collect();
    assert_eq!(lines.first(), Some(&"RELOADING=1"), "{reloading}");
    assert!(
        lines.get(1).is_some_and(|l| l
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|v| v.parse::<u64>().is_ok())),
        "{reloading}"
    );
    assert_eq!(next_notification(&socket), "READY=1\n");
    proxy.signal("-TERM");
    assert_eq!(next_notification(&socket), "STOPPING=1\n");
    assert_eq!(proxy.wait_exit().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_listener_answers_probes_in_plain_http_beside_a_mutual_tls_admin_port() {
    // admin.tls asks scrapers for a client certificate; admin.health_listen serves /healthz
    // and /readyz in plain HTTP (what a kubelet probe or an NLB health check can do), never
    // /metrics, and its /readyz turns 503 at SIGTERM like the admin port's.
    let World { proxy, .. } = Harness::new()
        .edit(|cfg| {
            let dir = cfg.routes[0]
                .tls
                .as_ref()
                .map(|t| t.client_ca.clone())
                .expect("tls");
            let at = |n: &str| dir.with_file_name(n);
            cfg.admin.tls = Some(AdminTlsConfig {
                certificate: at("server.crt"),
                private_key: at("server.key"),
                client_ca: Some(at("ca.crt")),
            });
            cfg.admin.health_listen = Some("127.0.0.1:0".parse().expect("addr"));
            cfg.shutdown.delay = Duration::from_secs(2);
        })
        .start()
        .await;
    let health = proxy.health().expect("health listener bound");
    assert!(
        http_get(proxy.admin(), "/readyz").await.is_err(),
        "the admin port spoke plain HTTP"
    );
    assert_eq!(http_get(health, "/healthz").await.expect("healthz"), "ok\n");
    assert_eq!(
        http_get(health, "/readyz").await.expect("readyz"),
        "ready\n"
    );
    let metrics = http_get(health, "/metrics").await.expect_err("no metrics");
    assert!(metrics.0.contains("HTTP 404"), "{metrics}");
    let stopping = tokio::spawn(proxy.stop());
    let not_ready = eventually(T, || async {
        http_get(health, "/readyz")
            .await
            .is_err_and(|e| e.0.contains("HTTP 503"))
    });
    assert!(not_ready.await);
    assert!(stopping.await.expect("stop"), "drained");
}

/// The keepalive timer `ss` shows for the established TCP socket from `local` to `peer`
/// (either may be `None`: any), in seconds.
fn keepalive_timer(local: Option<SocketAddr>, peer: Option<SocketAddr>) -> Option<f64> {
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .output()
        .expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (l, p) = (cols.get(2)?.parse().ok()?, cols.get(3)?.parse().ok()?);
            if local.is_some_and(|a| a != l) || peer.is_some_and(|a| a != p) {
                return None;
            }
            // The remaining time's number; not its unit: on some kernels (seen: 6.18 under
            // Firecracker) `ss` writes seconds below 10 as `6.920ms` and the rest as `10sec`.
            let timer = line.split("timer:(keepalive,").nth(1)?;
            let number: String = timer
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            number.parse().ok()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_and_engine_sockets_carry_the_configured_keepalive() {
    // limits.tcp_keepalive.time 7s on the sender's session, upstream.tcp_keepalive.time 11s on
    // the pooled engine connection: `ss -o` shows each socket's keepalive timer counting down
    // from its own setting.
    let World {
        pki, engine, proxy, ..
    } = Harness::new()
        .edit(|cfg| {
            let r = &mut cfg.routes[0];
            let ka = |s, i, n| {
                Some(Keepalive {
                    time: Duration::from_secs(s),
                    interval: Duration::from_secs(i),
                    retries: n,
                })
            };
            r.limits.tcp_keepalive = ka(7, 3, 4);
            r.upstream.tcp_keepalive = ka(11, 2, 5);
        })
        .start()
        .await;
    let route = proxy.routes()[0].1;
    let mut client = connect(&pki, &proxy, ClientCert::Good).await;
    let ack = client.exchange(&adt("KA-1"), T).await.expect("ACK");
    assert_eq!(msa(&ack).1, "KA-1");
    let engine_addr: SocketAddr = engine.target().parse().expect("engine addr");
    // `ss` shows one timer per socket: until the peer has acknowledged the last bytes, the
    // retransmission timer stands where the keepalive timer will.
    let (mut session, mut pooled) = (None, None);
    let found = eventually(T, || {
        session = keepalive_timer(Some(route), None);
        pooled = keepalive_timer(None, Some(engine_addr));
        std::future::ready(session.is_some() && pooled.is_some())
    });
    assert!(
        found.await,
        "no keepalive timers: session {session:?}, engine {pooled:?}"
    );
    let (session, pooled) = (session.unwrap_or_default(), pooled.unwrap_or_default());
    assert!((5.0..=7.0).contains(&session), "session timer {session}");
    assert!(
        (9.0..=11.0).contains(&pooled),
        "engine connection timer {pooled}"
    );
}
