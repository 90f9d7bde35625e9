//! Incident response through a reload: a partner revoked or no longer allowed gets no further
//! message, a session of a transport the route no longer has is closed after its exchange, and
//! every refused handshake leaves its audit record whatever the log's rate limit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mllp_proxy::client::MllpClient;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::egress::{MUTUAL, egress_yaml, plain};
use crate::interop::Reaper;
use crate::support::*;
use crate::tunnel::{start_stunnel_as, stunnel};

const T: Duration = Duration::from_secs(10);

/// An egress route (the binary, JSON logs, `on_upstream_failure: nak`) to stunnel presenting
/// the PKI's `partner` certificate (serial 7777) in front of the test engine.
struct Partnered {
    pki: Pki,
    engine: Engine,
    _stunnel: Reaper,
    front: SocketAddr,
    proxy: ProxyProcess,
}

impl Partnered {
    /// Starts it all with `crl: [partner.crl]` (revoking nothing yet) and `tls_extra` lines
    /// in `upstream.tls`; `None` when stunnel is missing (and allowed to be).
    async fn start(tls_extra: &str) -> Option<Partnered> {
        let stunnel = stunnel()?;
        let pki = Pki::new();
        pki.issue_server_with("partner", |p| {
            p.serial_number = Some(rcgen::SerialNumber::from(7777u64));
        });
        std::fs::write(pki.path("partner.crl"), pki.crl(&[], 1).0).expect("write CRL");
        let engine = Engine::start(Behaviour::Ack).await;
        let (stunnel, front) = start_stunnel_as(&stunnel, &pki, "partner", &engine.target()).await;
        std::fs::write(pki.path("egress.yaml"), Self::yaml(front, tls_extra)).expect("config");
        let proxy = ProxyProcess::spawn(&pki.path("egress.yaml"), "info");
        Some(Partnered {
            pki,
            engine,
            _stunnel: stunnel,
            front,
            proxy,
        })
    }

    fn yaml(front: SocketAddr, tls_extra: &str) -> String {
        let tls = format!("{MUTUAL}\n        crl: [partner.crl]\n{tls_extra}");
        let nak = "    on_upstream_failure: nak\n";
        format!(
            "logging:\n  format: json\n{}",
            egress_yaml(&[front.to_string()], &tls, nak)
        )
    }

    /// A scraped sample of the proxy's `/metrics` (`None` while it is absent).
    async fn sample(&self, sample: &str) -> Option<f64> {
        let body = mllp_proxy::client::http_get(self.proxy.admin, "/metrics")
            .await
            .ok()?;
        mllp_proxy::metrics::sample_value(&body, sample)
    }

    /// With a sender at work, `revoke` changes the partner's trust and SIGHUP is sent: from the
    /// exchange in flight on, nothing more reaches the partner; it is down with `reason`, and
    /// the sender gets the proxy's AR.
    async fn cut_by(&self, reason: &str, revoke: impl FnOnce(&Pki)) {
        let stop = CancellationToken::new();
        let (answers, sender) = steady_sender(self.proxy.addr, stop.clone());
        assert!(eventually(T, || async { count(&answers, "AA") >= 3 }).await);
        revoke(&self.pki);
        self.proxy.hup();
        let cut = eventually(T, || async { count(&answers, "AR") >= 3 }).await;
        assert!(
            cut,
            "still delivering after the reload: {:?}",
            answers.lock().expect("lock")
        );
        let retired = eventually(T, || async {
            self.proxy
                .log_lines()
                .iter()
                .any(|l| l.contains("\"event\":\"upstream_retired\""))
        })
        .await;
        assert!(
            retired,
            "no retirement audited: {:#?}",
            self.proxy.log_lines()
        );
        stop.cancel();
        sender.await.expect("sender");
        let answers = answers.lock().expect("lock").clone();
        let codes: Vec<&str> = answers.iter().map(|(_, c)| c.as_str()).collect();
        let delivered = codes.iter().take_while(|c| **c == "AA").count();
        assert!(
            codes[delivered..].iter().all(|c| *c == "AR"),
            "a message reached the partner after it was cut off: {codes:?}"
        );
        let acked: Vec<String> = answers[..delivered]
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(
            self.engine.received_ids(),
            acked,
            "the partner got exactly what it acked"
        );
        let target = format!("route=\"egress\",target=\"{}\"", self.front);
        let up = format!("mllp_proxy_upstream_up{{{target}}}");
        assert_eq!(self.sample(&up).await, Some(0.0));
        let refused = format!(
            "mllp_proxy_upstream_tls_handshake_failures_total{{reason=\"{reason}\",{target}}}"
        );
        assert!(
            self.sample(&refused).await >= Some(1.0),
            "{reason} not counted"
        );
    }
}

/// Each control ID sent, with the MSA-1 of its answer.
type Answers = Arc<Mutex<Vec<(String, String)>>>;

/// A plain sender to `addr`: one message every 200 ms until `stop`; each control ID with the
/// MSA-1 of its answer (`none`: no answer, and the sender stops).
fn steady_sender(
    addr: SocketAddr,
    stop: CancellationToken,
) -> (Answers, tokio::task::JoinHandle<()>) {
    let answers = Arc::new(Mutex::new(Vec::new()));
    let got = answers.clone();
    let task = tokio::spawn(async move {
        let mut c = MllpClient::connect(&plain(addr), T).await.expect("connect");
        for i in 0.. {
            if stop.is_cancelled() {
                return;
            }
            let id = format!("STEADY-{i}");
            let code = match c.exchange(&adt(&id), T).await {
                Ok(answer) => msa(&answer).0,
                Err(_) => "none".to_string(),
            };
            let done = code == "none";
            got.lock().expect("lock").push((id, code));
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (answers, task)
}

fn count(answers: &Mutex<Vec<(String, String)>>, code: &str) -> usize {
    let answers = answers.lock().expect("lock");
    answers.iter().filter(|(_, c)| c == code).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_revoked_by_a_reissued_crl_gets_no_further_message() {
    // Egress to stunnel; the partner's certificate is revoked by a re-issued CRL and SIGHUP:
    // the pooled connection verified before is retired, not reused.
    let Some(p) = Partnered::start("").await else {
        return;
    };
    p.cut_by("revoked", |pki| {
        replace_file(&pki.path("partner.crl"), pki.crl(&[7777], 2).0.as_bytes());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_no_longer_in_allowed_servers_gets_no_further_message() {
    // The same with the configuration narrowed: `allowed_servers` no longer names the
    // partner's certificate.
    let allowed = |cn: &str| format!("        allowed_servers: [{{ cn: {cn} }}]\n");
    let Some(p) = Partnered::start(&allowed("localhost")).await else {
        return;
    };
    let narrowed = Partnered::yaml(p.front, &allowed("another-partner"));
    p.cut_by("not_allowed", |pki| {
        replace_file(&pki.path("egress.yaml"), narrowed.as_bytes());
    })
    .await;
}

/// A route on `listen` to `engine`, plain or with the test PKI's TLS files (and `tls_keys`
/// more of its `tls` section), logging JSON.
fn route_yaml(engine: &str, listen: &str, tls: bool) -> String {
    route_yaml_tls(engine, listen, tls.then_some(""))
}

/// [`route_yaml`] with these keys added to the `tls` section (`None`: plain).
fn route_yaml_tls(engine: &str, listen: &str, tls_keys: Option<&str>) -> String {
    let transport = match tls_keys {
        Some(keys) => format!(
            "    tls:\n      certificate: server.crt\n      private_key: server.key\n      client_ca: ca.crt\n{keys}"
        ),
        None => "    plaintext: true\n".to_string(),
    };
    format!(
        "logging:\n  format: json\nadmin:\n  listen: \"127.0.0.1:0\"\nroutes:\n  - name: test\n    listen: \"{listen}\"\n{transport}    upstream:\n      targets: [\"{engine}\"]\n      ack_timeout: 5s\n      health_check_interval: 0\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_session_open_when_its_route_turns_tls_gets_its_ack_then_is_closed() {
    // A plain sender's message is at the engine (which answers after 1 s) when a reload makes
    // the route TLS on the same address: the ACK is relayed, then the session is closed with
    // reason `transport`; a mutual-TLS sender is served on the same port.
    let pki = Pki::new();
    let engine = Engine::start(Behaviour::Delay(Duration::from_secs(1))).await;
    let config = pki.path("proxy.yaml");
    std::fs::write(&config, route_yaml(&engine.target(), "127.0.0.1:0", false)).expect("config");
    let proxy = ProxyProcess::spawn(&config, "info");
    let mut c = MllpClient::connect(&plain(proxy.addr), T)
        .await
        .expect("plain connect");
    let in_flight = tokio::spawn(async move {
        let answer = c.exchange(&adt("PLAIN-1"), T).await;
        (c, answer)
    });
    assert!(eventually(T, || async { engine.received_ids() == ["PLAIN-1"] }).await);
    replace_file(
        &config,
        route_yaml(&engine.target(), "127.0.0.1:0", true).as_bytes(),
    );
    proxy.hup();
    let (mut c, answer) = in_flight.await.expect("sender");
    assert_eq!(
        msa(&answer.expect("the in-flight ACK")),
        ("AA".into(), "PLAIN-1".into())
    );
    assert!(
        c.exchange(&adt("PLAIN-2"), T).await.is_err(),
        "the plain session still carries messages"
    );
    assert_eq!(engine.received_ids(), ["PLAIN-1"]);
    let closed = "mllp_proxy_sessions_closed_on_reload_total{reason=\"transport\",route=\"test\"}";
    let counted = eventually(T, || async {
        let body = mllp_proxy::client::http_get(proxy.admin, "/metrics")
            .await
            .unwrap_or_default();
        mllp_proxy::metrics::sample_value(&body, closed) == Some(1.0)
    });
    assert!(counted.await, "{closed}");
    let audited = eventually(T, || async {
        proxy.log_lines().iter().any(|l| {
            l.contains("\"event\":\"session_end\"") && l.contains("\"reason\":\"transport\"")
        })
    });
    assert!(audited.await, "{:#?}", proxy.log_lines());
    let mut tls = connect_tls(&pki, proxy.addr).await;
    let ack = tls.exchange(&adt("TLS-1"), T).await.expect("ACK over TLS");
    assert_eq!(msa(&ack), ("AA".into(), "TLS-1".into()));
}

async fn connect_tls(pki: &Pki, addr: SocketAddr) -> MllpClient {
    MllpClient::connect(&pki.target(addr, ClientCert::Good), T)
        .await
        .expect("TLS connect")
}

/// Runs the binary on `config` in a network namespace of its own, where `0.0.0.0` reaches
/// nothing but that namespace's loopback; returns it and its log lines.
fn spawn_isolated(config: &Path) -> (Reaper, Arc<Mutex<Vec<String>>>) {
    use std::io::BufRead;
    let mut child = Command::new("unshare")
        .args([
            "--net",
            "sh",
            "-c",
            "ip link set lo up 2>/dev/null; exec \"$0\" run -c \"$1\"",
        ])
        .arg(binary())
        .arg(config)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("unshare (util-linux)");
    let stderr = child.stderr.take().expect("stderr");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().expect("lock").push(line);
        }
    });
    (Reaper(child), lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_made_plain_on_a_wildcard_address_by_reload_warns_as_at_start() {
    // A TLS route on 0.0.0.0 (in a network namespace of its own) is made plain by SIGHUP, on
    // the same address: the warning the start gives for a plain listener beyond loopback.
    let pki = Pki::new();
    let config = pki.path("proxy.yaml");
    std::fs::write(&config, route_yaml("127.0.0.1:9", "0.0.0.0:0", true)).expect("config");
    let (child, lines) = spawn_isolated(&config);
    let has = |text: &str| lines.lock().expect("lock").iter().any(|l| l.contains(text));
    assert!(
        eventually(T, || async { has("mllp-proxy ready") }).await,
        "{lines:?}"
    );
    let warning = "plain listener (plaintext: true) on an address that is not loopback";
    assert!(!has(warning), "warned before the route was plain");
    replace_file(
        &config,
        route_yaml("127.0.0.1:9", "0.0.0.0:0", false).as_bytes(),
    );
    let _ = Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status();
    assert!(eventually(T, || async { has(warning) }).await, "{lines:#?}");
}

/// The JSON records of the audit file at `path`.
fn audit_records(path: &PathBuf) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A TLS route to `engine` with the CRL `clients.crl`, audit records in `audit.jsonl`, and
/// no per-source or pending-handshake limit (every junk connection must reach its handshake,
/// none refused at accept while the proxy catches up); the file's path.
fn audited_crl_config(pki: &Pki, engine: &Engine) -> PathBuf {
    let tls = Some("      crl: [clients.crl]\n");
    let route = route_yaml_tls(&engine.target(), "127.0.0.1:0", tls);
    let limits = "    limits: { max_connections_per_source: 0, max_pending_handshakes: 0 }\n";
    let path = pki.path("proxy.yaml");
    std::fs::write(
        &path,
        format!("audit:\n  file: audit.jsonl\n{route}{limits}"),
    )
    .expect("config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_handshake_is_audited_past_the_logs_rate_limit() {
    // 200 connections that speak no TLS, then a revoked certificate and another CA's: every
    // refusal is in the audit file (the log's warnings are rate-limited), and an unverified
    // certificate's names are only in `presented_*` fields, next to `verified: false`.
    let pki = Pki::new();
    pki.issue_client_serial("revoked", "stolen-sender", 4242);
    std::fs::write(pki.path("clients.crl"), pki.crl(&[4242], 1).0).expect("write CRL");
    let engine = Engine::start(Behaviour::Ack).await;
    let proxy = ProxyProcess::spawn(&audited_crl_config(&pki, &engine), "info");
    for _ in 0..200 {
        let mut junk = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        let _ = junk.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
    }
    for name in ["revoked", "other"] {
        if let Ok(mut c) = MllpClient::connect(&pki.target_named(proxy.addr, name), T).await {
            assert!(
                c.exchange(&adt("REFUSED"), T).await.is_err(),
                "{name} was served"
            );
        }
    }
    let file = pki.path("audit.jsonl");
    let refused = |reason: &str| {
        audit_records(&file)
            .into_iter()
            .filter(|r| r["event"] == "handshake_refused" && r["reason"] == reason)
            .collect::<Vec<_>>()
    };
    let all_in = eventually(T, || async {
        refused("not_tls").len() == 200
            && refused("revoked").len() == 1
            && refused("unknown_ca").len() == 1
    });
    assert!(all_in.await, "{:#?}", audit_records(&file));
    let revoked = &refused("revoked")[0];
    assert_eq!(revoked["verified"], "false");
    assert!(
        revoked["presented_subject"]
            .as_str()
            .is_some_and(|s| s.contains("stolen-sender")),
        "{revoked}"
    );
    assert!(
        revoked["presented_serial"].is_string() && revoked["presented_issuer"].is_string(),
        "{revoked}"
    );
    for field in ["subject", "serial", "issuer"] {
        assert!(
            revoked.get(field).is_none(),
            "an unverified name in `{field}`: {revoked}"
        );
    }
    let other = &refused("unknown_ca")[0];
    assert!(
        other["presented_issuer"]
            .as_str()
            .is_some_and(|s| s.contains("other CA")),
        "{other}"
    );
    let warned = proxy
        .log_lines()
        .iter()
        .filter(|l| l.contains("TLS handshake failed"))
        .count();
    assert!(
        warned < 100,
        "the log was not rate-limited ({warned} lines): the test proves nothing"
    );
    assert!(engine.received_ids().is_empty());
}
