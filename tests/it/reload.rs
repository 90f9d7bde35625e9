//! The whole configuration reloaded live: senders onboarded and offboarded, routes added,
//! moved and removed, engines changed, refused files, the file's own polling, and the binary
//! on SIGHUP.

use std::time::Duration;

use mllp_proxy::client::{ClientTarget, MllpClient, http_get};
use mllp_proxy::config::ConfigError;
use mllp_proxy::proxy::{Reload, ReloadError};

use crate::support::*;

const T: Duration = Duration::from_secs(5);

/// Rewrites the live configuration with `from` replaced by `to` (which must occur).
fn rewrite(world: &World, from: &str, to: &str) -> String {
    let yaml = std::fs::read_to_string(world.pki.path("proxy.yaml")).expect("read config");
    assert!(yaml.contains(from), "{from:?} not in the configuration");
    let yaml = yaml.replacen(from, to, 1);
    std::fs::write(world.pki.path("proxy.yaml"), &yaml).expect("write config");
    yaml
}

/// Whether the proxy closes `client`'s connection within `within` (the read ends without an
/// answer).
async fn closed_within(client: &mut MllpClient, within: Duration) -> bool {
    matches!(
        tokio::time::timeout(within, client.recv()).await,
        Ok(Err(_))
    )
}

async fn admitted(world: &World, addr: std::net::SocketAddr, cert: &str) -> bool {
    let Ok(mut c) = MllpClient::connect(&world.pki.target_named(addr, cert), T).await else {
        return false;
    };
    c.check_admitted(Duration::from_millis(300)).await.is_ok()
        && c.exchange(&adt("PROBE"), T).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_added_is_admitted_and_one_removed_is_closed_after_a_reload() {
    let world = Harness::new()
        .route_yaml("    allowed_clients: [{cn: billing-01}]\n")
        .start_live()
        .await;
    let addr = world.proxy.routes()[0].1;
    assert!(
        !admitted(&world, addr, "client").await,
        "lab-sender is not yet onboarded"
    );

    rewrite(
        &world,
        "[{cn: billing-01}]",
        "[{cn: billing-01}, {cn: lab-sender}]",
    );
    assert_applied(world.proxy.reload().await);
    let mut open = MllpClient::connect(&world.pki.target(addr, ClientCert::Good), T)
        .await
        .expect("connect");
    let (code, _) = msa(&open.exchange(&adt("ON-1"), T).await.expect("AA"));
    assert_eq!(code, "AA");

    // Offboarded: the idle session is closed at once, a new one is refused.
    rewrite(&world, ", {cn: lab-sender}]", "]");
    assert_applied(world.proxy.reload().await);
    assert!(
        closed_within(&mut open, T).await,
        "offboarded session still open"
    );
    assert!(!admitted(&world, addr, "client").await);
    let p = &world.proxy;
    let closed =
        "mllp_proxy_sessions_closed_on_reload_total{reason=\"not_allowed\",route=\"test\"}";
    assert_eq!(metric(p, closed).await, 1.0);
    let revoked = "mllp_proxy_sessions_closed_on_reload_total{reason=\"revoked\",route=\"test\"}";
    assert_eq!(count(p, revoked).await, 0.0);
    let ok = "mllp_proxy_config_reloads_total{result=\"success\"}";
    assert_eq!(metric(p, ok).await, 2.0);
    assert_eq!(world.engine.received_ids(), vec!["ON-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_never_cuts_an_exchange_in_flight() {
    let world = Harness::new()
        .engine(Behaviour::Delay(Duration::from_millis(800)))
        .route_yaml("    allowed_clients: [{cn: lab-sender}]\n")
        .start_live()
        .await;
    let addr = world.proxy.routes()[0].1;
    let mut client = MllpClient::connect(&world.pki.target(addr, ClientCert::Good), T)
        .await
        .expect("connect");
    client.send(&adt("IN-FLIGHT")).await.expect("send");
    let at_engine = eventually(T, || async { world.engine.received_ids() == ["IN-FLIGHT"] });
    assert!(at_engine.await, "the message did not reach the engine");
    // Offboarded while the engine holds the message: its ACK still comes back.
    rewrite(&world, "[{cn: lab-sender}]", "[{cn: billing-01}]");
    assert_applied(world.proxy.reload().await);
    let ack = client.recv().await.expect("the engine's ACK is relayed");
    assert_eq!(msa(&ack), ("AA".into(), "IN-FLIGHT".into()));
    assert!(
        closed_within(&mut client, T).await,
        "closed after its exchange"
    );
    assert_eq!(world.engine.received_ids(), vec!["IN-FLIGHT"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_reloaded_alone_closes_the_revoked_senders_session_only() {
    let h = Harness::new();
    h.pki.issue_client_serial("revokable", "lab-sender", 4242);
    let (empty, _) = h.pki.crl(&[], 1);
    std::fs::write(h.pki.path("clients.crl"), empty).expect("write CRL");
    let yaml_tls = "client_ca: ca.crt\n      crl: [clients.crl]\n      reload_interval: 200ms";
    let world = live_with_tls(h, yaml_tls).await;
    let addr = world.proxy.routes()[0].1;
    let mut revokable = MllpClient::connect(&world.pki.target_named(addr, "revokable"), T)
        .await
        .expect("connect");
    let mut good = MllpClient::connect(&world.pki.target(addr, ClientCert::Good), T)
        .await
        .expect("connect");
    for (c, id) in [(&mut revokable, "R-1"), (&mut good, "G-1")] {
        assert_eq!(msa(&c.exchange(&adt(id), T).await.expect("ACK")).0, "AA");
    }
    // Only the CRL file changes; no SIGHUP: the TLS poll reloads it.
    let (pem, _) = world.pki.crl(&[4242], 2);
    replace_file(&world.pki.path("clients.crl"), pem.as_bytes());
    assert!(
        closed_within(&mut revokable, T).await,
        "revoked session still open"
    );
    let revoked = "mllp_proxy_sessions_closed_on_reload_total{reason=\"revoked\",route=\"test\"}";
    assert_eq!(metric(&world.proxy, revoked).await, 1.0);
    assert_eq!(
        msa(&good.exchange(&adt("G-2"), T).await.expect("ACK")).0,
        "AA"
    );
    assert!(!admitted(&world, addr, "revokable").await);
}

/// Starts `h` live with `tls` in place of the route's `client_ca: ca.crt` line.
async fn live_with_tls(h: Harness, tls: &str) -> World {
    let world = h.start_live().await;
    let _ = rewrite(&world, "client_ca: ca.crt", tls);
    assert_applied(world.proxy.reload().await);
    world
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_file_leaves_the_running_configuration_in_service() {
    let world = Harness::new().start_live().await;
    let p = &world.proxy;
    let mut client = world.client().await;
    let stamp = "mllp_proxy_config_last_reload_success_timestamp_seconds";
    let started = metric(p, stamp).await;
    assert!(started > 1.7e9, "{started}");

    rewrite(&world, "ack_timeout: 2s", "ack_timeout: 2");
    let Reload::Refused(ReloadError::Config(ConfigError::InFile {
        path, line, key, ..
    })) = p.reload().await
    else {
        panic!("a bad duration was not refused as an invalid value");
    };
    assert_eq!(key, "routes[0].upstream.ack_timeout");
    assert!(
        path.ends_with("proxy.yaml") && line.is_some(),
        "{path:?} {line:?}"
    );
    rewrite(&world, "ack_timeout: 2", "ack_timeout: 2s");

    rewrite(
        &world,
        "certificate: server.crt",
        "certificate: missing.crt",
    );
    let Reload::Refused(ReloadError::Tls { index, source, .. }) = p.reload().await else {
        panic!("a missing certificate was not refused as the route's TLS");
    };
    assert_eq!(index, 0);
    assert_eq!(source.key(), "tls.certificate");
    assert!(source.to_string().contains("missing.crt"), "{source}");
    rewrite(
        &world,
        "certificate: missing.crt",
        "certificate: server.crt",
    );

    let held = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let busy = held.local_addr().expect("addr");
    rewrite(
        &world,
        "listen: \"127.0.0.1:0\"\n    tls",
        &format!("listen: \"{busy}\"\n    tls"),
    );
    let Reload::Refused(ReloadError::Bind { source, .. }) = p.reload().await else {
        panic!("a taken address was not refused as a bind");
    };
    assert_eq!(
        (source.key.as_str(), source.addr),
        ("routes[0].listen", busy)
    );

    let fail = "mllp_proxy_config_reloads_total{result=\"failure\"}";
    assert_eq!(metric(p, fail).await, 3.0);
    assert_eq!(
        metric(p, "mllp_proxy_config_reloads_total{result=\"success\"}").await,
        0.0
    );
    assert_eq!(metric(p, stamp).await, started);
    // The session opened before any of it, and new ones, are served as before.
    assert_eq!(
        msa(&client.exchange(&adt("STILL"), T).await.expect("ACK")).0,
        "AA"
    );
    assert_eq!(
        msa(&world
            .client()
            .await
            .exchange(&adt("NEW"), T)
            .await
            .expect("ACK"))
        .0,
        "AA"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_added_moved_and_removed_without_a_restart() {
    let world = Harness::new().start_live().await;
    let p = &world.proxy;
    let first = p.routes()[0].1;
    let yaml0 = world.yaml();
    let route = yaml0[yaml0.find("  - name: test").expect("route")..].to_string();
    let second = route.replace("name: test", "name: second");
    let yaml = format!("{}{second}", yaml0);
    std::fs::write(world.pki.path("proxy.yaml"), &yaml).expect("write");
    assert_applied(p.reload().await);
    let added = p.route_addr("second").expect("second route bound");
    assert_ne!(added, first);
    let target = world.pki.target(added, ClientCert::Good);
    let mut on_second = MllpClient::connect(&target, T).await.expect("connect");
    assert_eq!(
        msa(&on_second.exchange(&adt("TWO"), T).await.expect("ACK")).0,
        "AA"
    );
    let sample = "mllp_proxy_messages_received_total{route=\"second\"}";
    assert_eq!(metric(p, sample).await, 1.0);

    // `test` moves to another port: the old one stops accepting and its session drains.
    let mut on_old = world.client().await;
    let moved = unused_addr().await;
    let at = "listen: \"127.0.0.1:0\"\n    tls";
    let yaml = yaml.replacen(at, &format!("listen: \"{moved}\"\n    tls"), 1);
    std::fs::write(world.pki.path("proxy.yaml"), &yaml).expect("write");
    assert_applied(p.reload().await);
    assert_eq!(p.route_addr("test"), Some(moved));
    assert!(
        closed_within(&mut on_old, T).await,
        "a session of the old listener drains"
    );
    assert!(tokio::net::TcpStream::connect(first).await.is_err());
    let target = world.pki.target(moved, ClientCert::Good);
    let mut on_new = MllpClient::connect(&target, T).await.expect("connect");
    assert_eq!(
        msa(&on_new.exchange(&adt("MOVED"), T).await.expect("ACK")).0,
        "AA"
    );

    // `second` is removed: it stops accepting, drains, and its series leave /metrics.
    let yaml = yaml.replace(&second, "");
    std::fs::write(world.pki.path("proxy.yaml"), &yaml).expect("write");
    assert_applied(p.reload().await);
    assert!(p.route_addr("second").is_none());
    assert!(closed_within(&mut on_second, T).await);
    assert!(tokio::net::TcpStream::connect(added).await.is_err());
    assert_eq!(scrape(p, sample).await, None);
    let body = http_get(p.admin(), "/metrics").await.expect("scrape");
    assert!(
        !body.contains("route=\"second\""),
        "series of a removed route remain"
    );
    assert_eq!(
        msa(&on_new.exchange(&adt("STAYS"), T).await.expect("ACK")).0,
        "AA"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_session_takes_the_new_engine_at_its_next_exchange() {
    let world = Harness::new().start_live().await;
    let other = Engine::start(Behaviour::Ack).await;
    let p = &world.proxy;
    let mut client = world.client().await;
    assert_eq!(
        msa(&client.exchange(&adt("OLD"), T).await.expect("ACK")).0,
        "AA"
    );
    let old_target = world.engine.target();
    rewrite(&world, &old_target, &other.target());
    assert_applied(p.reload().await);
    assert_eq!(
        msa(&client.exchange(&adt("NEW"), T).await.expect("ACK")).0,
        "AA"
    );
    assert_eq!(world.engine.received_ids(), vec!["OLD"]);
    assert_eq!(other.received_ids(), vec!["NEW"]);
    let body = http_get(p.admin(), "/metrics").await.expect("scrape");
    assert!(
        !body.contains(&old_target),
        "series of a removed target remain"
    );
    let up = format!(
        "mllp_proxy_upstream_up{{route=\"test\",target=\"{}\"}}",
        other.target()
    );
    assert_eq!(metric(p, &up).await, 1.0);
    // The old engine's pooled connection was closed: it sees its one connection end.
    assert!(
        eventually(T, || async {
            world.engine.connections() == 1 && world.engine.peak() == 1
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_server_moves_and_the_poll_follows_a_configmap_symlink_swap() {
    let world = Harness::new()
        .top_yaml("config_reload_interval: 200ms\n")
        .start_live()
        .await;
    let p = &world.proxy;
    // Kubernetes mounts a ConfigMap as proxy.yaml -> ..data/proxy.yaml, ..data -> ..v1, and
    // updates it by pointing ..data at a new folder.
    let dir = world.pki.dir.path();
    let swap_in = |version: &str, yaml: &str| {
        let folder = dir.join(version);
        std::fs::create_dir_all(&folder).expect("mkdir");
        std::fs::write(folder.join("proxy.yaml"), yaml).expect("write");
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(version, &tmp).expect("symlink");
        std::fs::rename(&tmp, dir.join("..data")).expect("swap");
    };
    let yaml0 = world.yaml();
    swap_in("..v1", &yaml0);
    std::fs::remove_file(world.pki.path("proxy.yaml")).expect("rm");
    std::os::unix::fs::symlink("..data/proxy.yaml", world.pki.path("proxy.yaml")).expect("link");

    let old_admin = p.admin();
    let moved = unused_addr().await;
    let yaml = yaml0.replacen(
        "listen: \"127.0.0.1:0\"",
        &format!("listen: \"{moved}\""),
        1,
    );
    assert!(
        yaml.contains(&format!("admin:\n  listen: \"{moved}\"")),
        "{yaml}"
    );
    swap_in("..v2", &yaml);
    let ok = "mllp_proxy_config_reloads_total{result=\"success\"}";
    assert!(
        eventually(T, || async { p.admin() == moved }).await,
        "the poll missed the swap"
    );
    assert_eq!(metric(p, ok).await, 1.0);
    assert!(
        http_get(old_admin, "/metrics").await.is_err(),
        "the old admin address still serves"
    );
    assert_eq!(
        msa(&world
            .client()
            .await
            .exchange(&adt("A"), T)
            .await
            .expect("ACK"))
        .0,
        "AA"
    );
    // Unchanged content is not reloaded again: a wait longer than the poll interval is what
    // this checks.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(metric(p, ok).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_log_level_format_and_audit_file_and_audits_the_offboarded_session() {
    use std::os::unix::fs::PermissionsExt;
    let BinaryWorld {
        pki,
        engine: _engine,
        proxy,
        ..
    } = Harness::new()
        .route_yaml("    allowed_clients: [{cn: lab-sender}]\n")
        .spawn_with("text", "")
        .await;
    let path = pki.path("proxy.yaml");
    let yaml = std::fs::read_to_string(&path).expect("read");
    let edit = |from: &str, to: &str| {
        let now = std::fs::read_to_string(&path).expect("read");
        assert!(now.contains(from), "{from:?}");
        std::fs::write(&path, now.replacen(from, to, 1)).expect("write");
    };
    let mut client = MllpClient::connect(&pki.target(proxy.addr, ClientCert::Good), T)
        .await
        .expect("connect");
    assert_eq!(
        msa(&client.exchange(&adt("H-1"), T).await.expect("ACK")).0,
        "AA"
    );

    // One SIGHUP: JSON at level warn, and lab-sender offboarded.
    edit(
        "logging:\n  format: text\n",
        "logging:\n  format: json\n  level: warn\n",
    );
    edit("[{cn: lab-sender}]", "[{cn: billing-01}]");
    assert!(yaml != std::fs::read_to_string(&path).expect("read"));
    proxy.hup();
    assert!(
        closed_within(&mut client, T).await,
        "offboarded session still open"
    );
    assert_offboarding_logged(&proxy);
    // Level warn: the reload's own info line is not written.
    assert!(
        !proxy
            .log_lines()
            .iter()
            .any(|l| l.contains("configuration reloaded")),
        "an info line at level warn"
    );

    // A second: level info again, audit records into a file created rw-r-----.
    edit("  level: warn\n", "  level: info\n");
    edit("admin:\n", "audit:\n  file: audit.jsonl\nadmin:\n");
    proxy.hup();
    let reloaded = json_lines(&proxy, 1, |v| v["message"] == "configuration reloaded");
    assert_eq!(reloaded.len(), 1, "{:?}", proxy.log_lines());
    let audit = pki.path("audit.jsonl");
    let mode = std::fs::metadata(&audit)
        .expect("audit file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    edit("[{cn: billing-01}]", "[{cn: lab-sender}]");
    proxy.hup();
    assert!(
        served_again(&pki, proxy.addr, "H-2").await,
        "lab-sender not onboarded again"
    );
    let written = eventually(T, || async {
        std::fs::read_to_string(&audit).is_ok_and(|t| t.contains("\"control_id\":\"H-2\""))
    })
    .await;
    assert!(written, "the message's record is not in the audit file");
    assert!(
        !proxy.log_lines().iter().any(|l| l.contains("\"H-2\"")),
        "the record went into the log too"
    );
}

/// The warning and the audit record of a session closed because its client left
/// `allowed_clients`, in `proxy`'s JSON log.
fn assert_offboarding_logged(proxy: &ProxyProcess) {
    let warned = json_lines(proxy, 1, |v| {
        v["message"] == "client no longer admitted after a reload; session closed"
    });
    assert_eq!(warned.len(), 1, "{:?}", proxy.log_lines());
    assert_eq!(warned[0]["reason"], "not_allowed");
    let ended = json_lines(proxy, 1, |v| v["event"] == "session_end");
    assert_eq!(ended.len(), 1, "{:?}", proxy.log_lines());
    assert_eq!(ended[0]["reason"], "not_allowed");
    assert_eq!(ended[0]["messages"], 1);
}

/// Whether a new session with the good certificate gets `id` acknowledged within 10 s (a
/// reload that admits it again may still be on its way).
async fn served_again(pki: &Pki, addr: std::net::SocketAddr, id: &str) -> bool {
    eventually(T, || async {
        let Ok(mut c) = MllpClient::connect(&pki.target(addr, ClientCert::Good), T).await else {
            return false;
        };
        c.exchange(&adt(id), T).await.is_ok()
    })
    .await
}

/// The configuration `a` with what a reload can change changed: the allow-list, the pool (a
/// new one each time), timeouts and the validation limit.
fn other_settings(a: &str) -> String {
    a.replace(
        "[{cn: lab-sender}]",
        "[{cn: billing-01}, {cn: lab-sender}]\n    validation: { max_message_bytes: 65536 }",
    )
    .replace(
        "ack_timeout: 2s",
        "ack_timeout: 3s\n      max_connections: 2",
    )
}

/// Sender `s`: one message after another for 30 s, each of which must get its AA; how many.
fn steady_sender(target: ClientTarget, s: usize) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut c = MllpClient::connect(&target, T).await.expect("connect");
        let (mut acked, mut i) = (0u32, 0u32);
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < until {
            i += 1;
            let id = format!("L{s}-{i}");
            let ack = c
                .exchange(&adt(&id), T)
                .await
                .expect("every message answered");
            assert_eq!(msa(&ack), ("AA".into(), id));
            acked += 1;
        }
        c.close().await;
        acked
    })
}

/// Open descriptors and resident memory (KiB) of process `pid`.
fn usage(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (fds, rss)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_every_100ms_for_30s_under_load_loses_nothing_and_leaks_nothing() {
    let BinaryWorld {
        pki, engine, proxy, ..
    } = Harness::new()
        .route_yaml("    allowed_clients: [{cn: lab-sender}]\n")
        .spawn_with("text", "")
        .await;
    let path = pki.path("proxy.yaml");
    let a = std::fs::read_to_string(&path).expect("read");
    let b = other_settings(&a);
    assert_ne!(a, b);
    let pid = proxy.child.id();
    let senders: Vec<_> = (0..4)
        .map(|s| steady_sender(pki.target(proxy.addr, ClientCert::Good), s))
        .collect();
    // Time is what this test is about: the senders settle for 2 s before the reference
    // reading, the reloads come every 100 ms, and the readings after wait 2 s for closes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (fds_before, rss_before) = usage(pid);
    let mut reloads = 0;
    let until = std::time::Instant::now() + Duration::from_secs(27);
    while std::time::Instant::now() < until {
        reloads += 1;
        std::fs::write(&path, if reloads % 2 == 0 { &a } else { &b }).expect("write");
        proxy.hup();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut acked = 0;
    for s in senders {
        acked += s.await.expect("sender");
    }
    assert_eq!(
        engine.received_ids().len(),
        acked as usize,
        "every message once"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (fds_after, rss_after) = usage(pid);
    let lines = proxy.log_lines();
    let applied = lines
        .iter()
        .filter(|l| l.contains("configuration reloaded"))
        .count();
    assert!(
        applied * 10 >= reloads * 9,
        "{applied} of {reloads} reloads applied"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("refused") || l.contains("panicked")),
        "{:?}",
        lines
            .iter()
            .filter(|l| l.contains("refused"))
            .take(3)
            .collect::<Vec<_>>()
    );
    // Senders gone: descriptors back where they were with four sessions open, less theirs.
    assert!(
        fds_after <= fds_before,
        "descriptors {fds_before} -> {fds_after}"
    );
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS {rss_before} KiB -> {rss_after} KiB after {reloads} reloads"
    );
    eprintln!(
        "{reloads} reloads ({applied} applied), {acked} messages, fds {fds_before} -> {fds_after}, RSS {rss_before} -> {rss_after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_limit_counts_the_connections_already_open() {
    let world = Harness::new()
        .route_yaml("    limits: { max_connections: 1 }\n")
        .start_live()
        .await;
    let p = &world.proxy;
    let addr = p.routes()[0].1;
    let limited = "mllp_proxy_connections_rejected_total{reason=\"limit\",route=\"test\"}";
    let mut first = world.client().await;
    assert_eq!(
        msa(&first.exchange(&adt("L-1"), T).await.expect("ACK")).0,
        "AA"
    );
    assert!(
        !admitted(&world, addr, "client").await,
        "a second connection over the limit"
    );
    assert_eq!(metric(p, limited).await, 1.0);

    rewrite(&world, "max_connections: 1 }", "max_connections: 2 }");
    assert_applied(p.reload().await);
    let mut second = world.client().await;
    assert_eq!(
        msa(&second.exchange(&adt("L-2"), T).await.expect("ACK")).0,
        "AA"
    );
    // The session opened before the reload counts: two open, a third is refused.
    assert!(
        !admitted(&world, addr, "client").await,
        "a third connection over the limit"
    );
    assert_eq!(metric(p, limited).await, 2.0);

    // Lowered below what is open: nobody is closed, nobody new gets in.
    rewrite(&world, "max_connections: 2 }", "max_connections: 1 }");
    assert_applied(p.reload().await);
    assert!(!admitted(&world, addr, "client").await);
    for (c, id) in [(&mut first, "L-3"), (&mut second, "L-4")] {
        assert_eq!(msa(&c.exchange(&adt(id), T).await.expect("ACK")).0, "AA");
    }
}
