//! The audit trail sent to a real collector: rsyslog with its GnuTLS driver (mutual TLS,
//! x509/name), plain TCP and UDP, started on loopback by the test.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mllp_proxy::client::{MllpClient, http_get};

use crate::support::*;

const T: Duration = Duration::from_secs(10);

/// rsyslogd listening on 127.0.0.1:`port`, writing each record's raw message to `out`;
/// stopped when dropped.
struct Rsyslog {
    child: Option<Child>,
    conf: PathBuf,
    out: PathBuf,
    port: u16,
    udp: bool,
    _dir: tempfile::TempDir,
}

impl Rsyslog {
    /// `transport`: `tls` (mutual, the client's name must be `peer`), `tcp` or `udp`.
    async fn start(pki: &Pki, transport: &str, peer: &str) -> Option<Rsyslog> {
        required_tool("rsyslogd", "-v", "rsyslog")?;
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out.log");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).expect("mkdir");
        let p = |n: &str| pki.path(n).display().to_string();
        let input = |port: u16| match transport {
            "tls" => format!(
                "global(DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{}\" DefaultNetstreamDriverCertFile=\"{}\" DefaultNetstreamDriverKeyFile=\"{}\")\nmodule(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"x509/name\" PermittedPeer=[\"{peer}\"])\ninput(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")\n",
                p("ca.crt"),
                p("server.crt"),
                p("server.key")
            ),
            "tcp" => format!(
                "module(load=\"imtcp\")\ninput(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")\n"
            ),
            _ => format!(
                "module(load=\"imudp\")\ninput(type=\"imudp\" port=\"{port}\" address=\"127.0.0.1\")\n"
            ),
        };
        let mut r = Rsyslog {
            child: None,
            conf: dir.path().join("rsyslog.conf"),
            out,
            port: 0,
            udp: transport == "udp",
            _dir: dir,
        };
        let (child, addr) = spawn_listening(r.udp, T, |port| {
            std::fs::write(
                &r.conf,
                format!(
                    "global(workDirectory=\"{}\")\n{}template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n*.* action(type=\"omfile\" file=\"{}\" template=\"raw\")\n",
                    work.display(),
                    input(port),
                    r.out.display()
                ),
            )
            .expect("write rsyslog.conf");
            r.spawn()
        });
        (r.child, r.port) = (Some(child), addr.port());
        Some(r)
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// rsyslogd in the foreground on the written configuration.
    fn spawn(&self) -> Child {
        let pid = self.conf.with_file_name("rsyslogd.pid");
        Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(&self.conf)
            .arg("-i")
            .arg(&pid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rsyslogd")
    }

    /// Starts rsyslogd again after [`Rsyslog::stop`], on its port, and waits until it listens.
    fn run(&mut self) {
        let mut child = self.spawn();
        assert!(
            comes_to_listen(&mut child, self.port, self.udp, T),
            "rsyslogd did not listen again on port {}",
            self.port
        );
        self.child = Some(child);
    }

    /// Stops rsyslogd (SIGTERM: it closes its connections) and waits for it.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// The records written so far, one line each.
    fn records(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An RFC 5424 message: PRI, TIMESTAMP, MSGID, the structured data's parameters in order.
type Syslog5424 = (u8, String, String, Vec<(String, String)>);

fn rfc5424(line: &str) -> Option<Syslog5424> {
    let (pri, rest) = line.strip_prefix('<')?.split_once(">1 ")?;
    let mut head = rest.splitn(6, ' ');
    let timestamp = head.next()?.to_string();
    let (_host, _app, _procid) = (head.next()?, head.next()?, head.next()?);
    let msgid = head.next()?.to_string();
    let sd = head.next()?.strip_prefix('[')?;
    let (_sd_id, mut params) = sd.split_once(' ')?;
    let mut fields = Vec::new();
    loop {
        let (name, rest) = params.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => value.push(chars.next()?.1),
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                _ => value.push(c),
            }
        }
        fields.push((name.trim().to_string(), value));
        params = &rest[end?..];
        if params.starts_with(']') {
            break;
        }
    }
    Some((pri.parse().ok()?, timestamp, msgid, fields))
}

/// The proxy binary with JSON logs, its audit trail in `audit.jsonl` and sent to `syslog`
/// (the YAML of one `audit.syslog` entry, indented four spaces).
fn proxy_with(pki: &Pki, engine: &Engine, syslog: &str, tls: &str) -> ProxyProcess {
    let yaml = pki.config_yaml_tls(&[engine.target()], tls, "").replace(
        "admin:",
        &format!(
            "logging:\n  format: json\naudit:\n  file: audit.jsonl\n  syslog:\n{syslog}admin:"
        ),
    );
    std::fs::write(pki.path("proxy.yaml"), yaml).expect("write config");
    ProxyProcess::spawn(&pki.path("proxy.yaml"), "info")
}

fn tls_collector(name: &str, address: &str, ca: &str, server_name: &str) -> String {
    format!(
        "    - name: {name}\n      address: \"{address}\"\n      tls:\n        ca: {ca}\n        certificate: client.crt\n        private_key: client.key\n        server_name: {server_name}\n        reload_interval: 300ms\n"
    )
}

/// The audit file's records, each a JSON object.
fn audit_file(pki: &Pki) -> Vec<serde_json::Value> {
    std::fs::read_to_string(pki.path("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn scrape_binary(proxy: &ProxyProcess, sample: &str) -> Option<f64> {
    let body = http_get(proxy.admin, "/metrics").await.ok()?;
    mllp_proxy::metrics::sample_value(&body, sample)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_over_mutual_tls_receives_every_audit_record_the_file_has_in_order() {
    let pki = Pki::new();
    for (i, n) in ["lab", "pharmacy", "radiology", "billing"]
        .iter()
        .enumerate()
    {
        pki.issue_client_serial(&format!("s-{n}"), &format!("{n}-sender"), 100 + i as u64);
    }
    pki.issue_client_serial("revoked", "stolen-sender", 4242);
    std::fs::write(pki.path("clients.crl"), pki.crl(&[4242], 1).0).expect("write CRL");
    let Some(collector) = Rsyslog::start(&pki, "tls", "lab.example.org").await else {
        return;
    };
    let engine = Engine::start(Behaviour::Ack).await;
    let syslog = tls_collector("siem", &collector.address(), "ca.crt", "localhost");
    let mut proxy = proxy_with(&pki, &engine, &syslog, "      crl: [clients.crl]\n");
    let route = proxy.addr;
    for n in ["lab", "pharmacy", "radiology", "billing"] {
        let mut c = MllpClient::connect(&pki.target_named(route, &format!("s-{n}")), T)
            .await
            .expect("connect");
        let ack = c.exchange(&adt(&format!("SYS-{n}")), T).await.expect("ACK");
        assert_eq!(msa(&ack).0, "AA");
        c.close().await;
    }
    let refused = [
        pki.target(route, ClientCert::None),
        pki.target(route, ClientCert::OtherCa),
        pki.target_named(route, "revoked"),
    ];
    for target in refused {
        if let Ok(mut c) = MllpClient::connect(&target, T).await {
            let _ = c.exchange(&adt("NOPE"), T).await;
        }
    }
    // Every record the file has, the collector has: same order, same fields, same time.
    let complete = eventually(T, || async {
        let file = audit_file(&pki).len();
        file >= 15 && collector.records().len() == file
    });
    assert!(
        complete.await,
        "file {} records, collector {}",
        audit_file(&pki).len(),
        collector.records().len()
    );
    let file = audit_file(&pki);
    let received = collector.records();
    for (want, got) in file.iter().zip(&received) {
        assert_same_record(want, got);
    }
    let sent = "mllp_proxy_audit_records_sent_total{sink=\"siem\"}";
    assert_eq!(scrape_binary(&proxy, sent).await, Some(file.len() as f64));
    let up = "mllp_proxy_audit_sink_up{sink=\"siem\"}";
    assert_eq!(scrape_binary(&proxy, up).await, Some(1.0));

    // Our certificate toward the collector, in the expiry gauge; a renewed one (as cert-manager
    // writes it) is taken at the next poll of the files, without a reload.
    let expiry = "mllp_proxy_certificate_expiry_timestamp_seconds{role=\"syslog_client\",route=\"audit:siem\"}";
    let was = not_after(&pki.path("client.crt")) as f64;
    assert_eq!(scrape_binary(&proxy, expiry).await, Some(was));
    pki.issue_client_with("client", |p| {
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "lab-sender");
        p.subject_alt_names = vec![rcgen::SanType::DnsName(
            "lab.example.org".try_into().expect("dns"),
        )];
        p.not_after = rcgen::date_time_ymd(2031, 1, 1);
    });
    let renewed = not_after(&pki.path("client.crt")) as f64;
    assert_ne!(renewed, was);
    let taken = eventually(T, || async {
        scrape_binary(&proxy, expiry).await == Some(renewed)
    });
    assert!(taken.await, "{:?}", scrape_binary(&proxy, expiry).await);
    assert!(proxy.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_for_ten_seconds_delays_no_exchange_and_every_record_is_sent_or_counted() {
    // A sender keeps sending while the collector is stopped for 10 s. No exchange waits for
    // it; what was held arrives once it is back, and past a small queue_bytes the records
    // dropped are counted exactly: sent + dropped = written.
    let pki = Pki::new();
    let Some(mut collector) = Rsyslog::start(&pki, "tls", "lab.example.org").await else {
        return;
    };
    let engine = Engine::start(Behaviour::Ack).await;
    let syslog = tls_collector("siem", &collector.address(), "ca.crt", "localhost")
        + "      queue_bytes: 20000\n";
    let mut proxy = proxy_with(&pki, &engine, &syslog, "");
    let mut client = MllpClient::connect(&pki.target(proxy.addr, ClientCert::Good), T)
        .await
        .expect("connect");
    let (mut slowest, mut n) = (Duration::ZERO, 0);
    let before = send_for(Duration::from_secs(2), &mut client, &mut slowest, &mut n).await;
    // Stopped only once it holds every record: TCP syslog has no acknowledgement, so records
    // written in the moment rsyslog shuts down (read by no one before it closes) are lost
    // while counted as sent, a limit docs/operations.md states. The outage itself is what
    // this test holds.
    let all = settled(&pki, &proxy, &collector, Duration::from_secs(20)).await;
    assert!(all.0, "before the outage: {}", all.1);
    collector.stop();
    let during = send_for(Duration::from_secs(10), &mut client, &mut slowest, &mut n).await;
    collector.run();
    let after = send_for(Duration::from_secs(2), &mut client, &mut slowest, &mut n).await;
    // Reported, not asserted (a timing): the bound asserted below is that nothing waits.
    eprintln!("p99 of exchanges: before {before:?}, collector down {during:?}, after {after:?}");
    client.close().await;
    // A blocking sink would have held an exchange for its 10 s connect timeout at least.
    assert!(
        slowest < Duration::from_secs(1),
        "slowest exchange {slowest:?}"
    );
    let all = settled(&pki, &proxy, &collector, Duration::from_secs(20)).await;
    assert!(all.0, "after the outage: {}", all.1);
    let dropped = "mllp_proxy_audit_records_dropped_total{sink=\"siem\"}";
    let d = scrape_binary(&proxy, dropped).await;
    assert!(
        d.unwrap_or(0.0) > 0.0,
        "the outage overflowed no queue: {d:?}"
    );
    let said = |m: &str| proxy.log_lines().iter().filter(|l| l.contains(m)).count();
    let dropped_line = "audit records dropped while the collector was unreachable";
    assert!(eventually(T, || async { said(dropped_line) == 1 }).await);
    assert_eq!(said("audit collector unreachable"), 1);
    assert!(proxy.terminate().success());
}

/// Waits (at most `within`) until every record the audit file has was sent to the collector
/// `siem` or counted as dropped, and the collector wrote each one sent: whether it happened,
/// and the counts last seen.
async fn settled(
    pki: &Pki,
    proxy: &ProxyProcess,
    collector: &Rsyslog,
    within: Duration,
) -> (bool, String) {
    let sent = "mllp_proxy_audit_records_sent_total{sink=\"siem\"}";
    let dropped = "mllp_proxy_audit_records_dropped_total{sink=\"siem\"}";
    let deadline = Instant::now() + within;
    loop {
        let written = audit_file(pki).len() as f64;
        let (s, d) = (
            scrape_binary(proxy, sent).await,
            scrape_binary(proxy, dropped).await,
        );
        let received = collector.records().len() as f64;
        let all = s
            .zip(d)
            .is_some_and(|(s, d)| s + d == written && received == s);
        if all || Instant::now() >= deadline {
            let seen = format!("written {written}, sent {s:?}, dropped {d:?}, received {received}");
            return (all, seen);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_of_the_wrong_name_or_ca_is_refused_and_plain_tcp_and_udp_collectors_receive() {
    let pki = Pki::new();
    let Some(tls) = Rsyslog::start(&pki, "tls", "lab.example.org").await else {
        return;
    };
    let Some(tcp) = Rsyslog::start(&pki, "tcp", "").await else {
        return;
    };
    let Some(udp) = Rsyslog::start(&pki, "udp", "").await else {
        return;
    };
    let engine = Engine::start(Behaviour::Ack).await;
    let syslog = tls_collector("wrong-name", &tls.address(), "ca.crt", "siem.example")
        + &tls_collector("wrong-ca", &tls.address(), "other-ca.crt", "localhost")
        + &format!(
            "    - name: plain\n      address: \"{}\"\n      transport: tcp\n      format: json\n",
            tcp.address()
        )
        + &format!(
            "    - name: datagram\n      address: \"{}\"\n      transport: udp\n",
            udp.address()
        );
    let mut proxy = proxy_with(&pki, &engine, &syslog, "");
    let mut client = MllpClient::connect(&pki.target(proxy.addr, ClientCert::Good), T)
        .await
        .expect("connect");
    let ack = client.exchange(&adt("FOUR-1"), T).await.expect("ACK");
    assert_eq!(msa(&ack).0, "AA");
    client.close().await;
    let up = |sink: &str| format!("mllp_proxy_audit_sink_up{{sink=\"{sink}\"}}");
    let both = eventually(T, || async {
        tcp.records().len() == 4 && udp.records().len() == 4
    });
    assert!(
        both.await,
        "tcp {:?} udp {:?}",
        tcp.records(),
        udp.records()
    );
    // The proxy's start, then the session's three records.
    assert!(
        tcp.records()[2].contains(r#"] {"event":"message","#),
        "{:?}",
        tcp.records()
    );
    assert!(rfc5424(&udp.records()[2]).is_some_and(|r| r.2 == "message"));
    for sink in ["plain", "datagram"] {
        assert_eq!(scrape_binary(&proxy, &up(sink)).await, Some(1.0), "{sink}");
    }
    for sink in ["wrong-name", "wrong-ca"] {
        assert_eq!(scrape_binary(&proxy, &up(sink)).await, Some(0.0), "{sink}");
    }
    assert!(tls.records().is_empty(), "{:?}", tls.records());
    let log = proxy.log_lines();
    let refused = |sink: &str, why: &str| {
        log.iter().any(|l| {
            l.contains("audit collector unreachable") && l.contains(sink) && l.contains(why)
        })
    };
    assert!(refused("wrong-name", "not valid for the name"), "{log:#?}");
    assert!(refused("wrong-ca", "not issued by"), "{log:#?}");
    assert!(proxy.terminate().success());
}

/// Sends a message every 20 ms for `d`, noting the slowest exchange.
async fn send_for(
    d: Duration,
    client: &mut MllpClient,
    slowest: &mut Duration,
    n: &mut usize,
) -> Duration {
    let until = Instant::now() + d;
    let mut took = Vec::new();
    while Instant::now() < until {
        *n += 1;
        let started = Instant::now();
        let ack = client.exchange(&adt(&format!("OUT-{n}")), T).await;
        took.push(started.elapsed());
        *slowest = (*slowest).max(started.elapsed());
        assert_eq!(msa(&ack.expect("ACK")).0, "AA");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    took.sort();
    // The 99th percentile of this phase's exchanges.
    took.get(took.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default()
}

/// `xmllint --xpath EXPR` on `xml`: the result as text.
fn xpath(xml: &str, expr: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("m.xml");
    std::fs::write(&file, xml).expect("write");
    let out = Command::new("xmllint")
        .args(["--xpath", expr])
        .arg(&file)
        .output()
        .expect("xmllint");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atna_collector_gets_dicom_audit_messages_for_start_stop_refusals_reloads_and_messages()
{
    if required_tool("xmllint", "--version", "libxml2-utils").is_none() {
        return;
    }
    let pki = Pki::new();
    let Some(collector) = Rsyslog::start(&pki, "tcp", "").await else {
        return;
    };
    let engine = Engine::start(Behaviour::Ack).await;
    let syslog = format!(
        "    - name: arr\n      address: \"{}\"\n      transport: tcp\n      format: atna\n      atna_messages: true\n",
        collector.address()
    );
    let mut proxy = proxy_with(&pki, &engine, &syslog, "");
    // A message whose PID-3 must never reach the repository, a refused handshake, a
    // configuration reload refused and one applied, then the stop.
    let mut c = MllpClient::connect(&pki.target(proxy.addr, ClientCert::Good), T)
        .await
        .expect("connect");
    let msg = b"MSH|^~\\&|LAB|GH|EHR|GH|20261207||ADT^A01|ATNA-1|P|2.5.1\rPID|1||PHI-MRN-733911^^^GH||DOE^JANE\r";
    assert_eq!(msa(&c.exchange(msg, T).await.expect("ACK")).0, "AA");
    c.close().await;
    if let Ok(mut c) = MllpClient::connect(&pki.target(proxy.addr, ClientCert::OtherCa), T).await {
        let _ = c.exchange(&adt("NOPE"), T).await;
    }
    refuse_then_apply_a_reload(&pki, &proxy).await;
    assert!(proxy.terminate().success());
    let arrived = eventually(T, || async {
        collector.records().iter().any(|l| l.contains("110121"))
    });
    assert!(arrived.await, "{:#?}", collector.records());
    let records = collector.records();
    let kinds: Vec<String> = records.iter().map(|line| atna_kind(line)).collect();
    assert_eq!(
        kinds,
        [
            "110100/110120/0",
            "110107//0",
            "110113/110126/4",
            "110113/110131/4",
            "110113/110131/0",
            "110100/110121/0",
        ],
        "{records:#?}"
    );
    let import = &records[1];
    assert!(import.starts_with("<85>1 "), "authpriv.notice: {import}");
    assert!(
        import.contains(r#"ParticipantObjectID="ATNA-1""#),
        "{import}"
    );
    assert!(
        import.contains(r#"UserID="uri:spiffe://hospital.test/lab""#),
        "{import}"
    );
    assert!(
        records[2].starts_with("<84>1 "),
        "authpriv.warning: {}",
        records[2]
    );
}

/// Checks one ATNA record as a repository receives it (ITI-20 header, no patient data,
/// well-formed, top-level elements in the schema's order) and returns
/// `EventID/EventTypeCode/EventOutcomeIndicator`.
fn atna_kind(line: &str) -> String {
    assert!(
        line.contains(" IHE+RFC-3881 - \u{feff}<AuditMessage>"),
        "{line}"
    );
    assert!(
        !line.contains("PHI-MRN") && !line.contains("DOE"),
        "patient data: {line}"
    );
    let xml = line.split_once('\u{feff}').map(|(_, x)| x).unwrap_or("");
    let check = Command::new("xmllint")
        .args(["--noout", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(xml.as_bytes())?;
            child.wait_with_output()
        })
        .expect("xmllint");
    assert!(check.status.success(), "not well-formed: {xml}");
    // The schema's order: EventIdentification, ActiveParticipant+, AuditSourceIdentification,
    // ParticipantObjectIdentification*.
    let count: usize = xpath(xml, "count(/AuditMessage/*)").parse().unwrap_or(0);
    let names: Vec<String> = (1..=count)
        .map(|i| xpath(xml, &format!("name(/AuditMessage/*[{i}])")))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let rank = |n: &str| match n {
        "EventIdentification" => 0,
        "ActiveParticipant" => 1,
        "AuditSourceIdentification" => 2,
        _ => 3,
    };
    assert!(
        names.windows(2).all(|w| rank(w[0]) <= rank(w[1])),
        "{names:?}"
    );
    assert_eq!(names.first(), Some(&"EventIdentification"), "{names:?}");
    assert!(names.contains(&"AuditSourceIdentification"), "{names:?}");
    let id = xpath(
        xml,
        "string(/AuditMessage/EventIdentification/EventID/@csd-code)",
    );
    let kind = xpath(
        xml,
        "string(/AuditMessage/EventIdentification/EventTypeCode/@csd-code)",
    );
    let outcome = xpath(
        xml,
        "string(/AuditMessage/EventIdentification/@EventOutcomeIndicator)",
    );
    format!("{id}/{kind}/{outcome}")
}

/// `got`, a record as rsyslog wrote it, is RFC 5424 with `want`'s (a JSON audit record's)
/// timestamp, event and fields, and its severity.
fn assert_same_record(want: &serde_json::Value, got: &str) {
    let (pri, timestamp, msgid, fields) =
        rfc5424(got).unwrap_or_else(|| panic!("not RFC 5424: {got}"));
    assert_eq!(timestamp, want["timestamp"].as_str().unwrap_or(""), "{got}");
    assert_eq!(msgid, want["event"].as_str().unwrap_or(""), "{got}");
    let refused = want["event"] == "handshake_refused";
    assert_eq!(
        pri,
        if refused { 84 } else { 85 },
        "authpriv, warning or notice: {got}"
    );
    let want: BTreeMap<String, String> = want
        .as_object()
        .expect("object")
        .iter()
        .filter(|(k, _)| !["timestamp", "level", "target"].contains(&k.as_str()))
        .map(|(k, v)| {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            (k.clone(), text)
        })
        .collect();
    let got: BTreeMap<String, String> = fields.into_iter().collect();
    assert_eq!(got, want);
}

/// Edits the configuration file into one the proxy refuses, then into one it applies, with a
/// SIGHUP each time, waiting for each reload's audit record.
async fn refuse_then_apply_a_reload(pki: &Pki, proxy: &ProxyProcess) {
    let yaml = std::fs::read_to_string(pki.path("proxy.yaml")).expect("read");
    std::fs::write(
        pki.path("proxy.yaml"),
        yaml.replace("drain_timeout: 10s", "drain_timeout: x"),
    )
    .expect("write");
    proxy.hup();
    let refused = eventually(T, || async {
        audit_file(pki)
            .iter()
            .any(|r| r["event"] == "configuration_reload")
    });
    assert!(refused.await);
    std::fs::write(
        pki.path("proxy.yaml"),
        yaml.replace("drain_timeout: 10s", "drain_timeout: 9s"),
    )
    .expect("write");
    proxy.hup();
    let applied = eventually(T, || async {
        audit_file(pki).iter().any(|r| r["result"] == "applied")
    });
    assert!(applied.await);
}
