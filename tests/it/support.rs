//! Test support: certificates made with rcgen per test, `ack-server`'s stand-in engine, the
//! [`Harness`] that starts a proxy in front of it (in-process on port 0, or the binary).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mllp_proxy::cli::TlsArgs;
use mllp_proxy::cli::ack_server;
use mllp_proxy::client::{ClientTarget, MllpClient};
use mllp_proxy::config::Config;
use mllp_proxy::metrics::Metrics;
use mllp_proxy::proxy::RunningProxy;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A test PKI in a temporary folder: a CA, a server certificate for localhost/127.0.0.1 and
/// client certificates (good, from another CA, expired).
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    other_ca: CertifiedIssuer<'static, KeyPair>,
}

/// Which client certificate a test connects with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    Good,
    None,
    OtherCa,
    Expired,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca =
            CertifiedIssuer::self_signed(ca_params("test CA"), KeyPair::generate().expect("key"))
                .expect("ca");
        let other_ca =
            CertifiedIssuer::self_signed(ca_params("other CA"), KeyPair::generate().expect("key"))
                .expect("ca");
        let pki = Pki { dir, ca, other_ca };
        std::fs::write(pki.path("ca.crt"), pki.ca.pem()).expect("write");
        std::fs::write(pki.path("other-ca.crt"), pki.other_ca.pem()).expect("write");
        pki.issue_server("server", "localhost");
        pki.issue_client(
            "client",
            "lab-sender",
            &["lab.example.org"],
            &["spiffe://hospital.test/lab"],
            false,
            false,
        );
        pki.issue_client(
            "other",
            "lab-sender",
            &["lab.example.org"],
            &[],
            true,
            false,
        );
        pki.issue_client(
            "expired",
            "lab-sender",
            &["lab.example.org"],
            &[],
            false,
            true,
        );
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `NAME.crt` and `NAME.key`: a server certificate for `cn`, localhost and 127.0.0.1.
    pub fn issue_server(&self, name: &str, cn: &str) {
        self.issue_server_valid_for(name, cn, None);
    }

    /// Like [`Pki::issue_server`], expiring `days` from now when given.
    pub fn issue_server_valid_for(&self, name: &str, cn: &str, days: Option<i64>) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        if let Some(days) = days {
            p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        }
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &self.ca).expect("sign");
        std::fs::write(self.path(&format!("{name}.crt")), cert.pem()).expect("write");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write");
    }

    /// Writes `NAME.crt` and `NAME.key`: a server certificate for localhost and 127.0.0.1 from
    /// the test CA, shaped by `edit`.
    pub fn issue_server_with(&self, name: &str, edit: impl FnOnce(&mut CertificateParams)) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        p.distinguished_name.push(DnType::CommonName, "localhost");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        edit(&mut p);
        let cert = p.signed_by(&key, &self.ca).expect("sign");
        std::fs::write(self.path(&format!("{name}.crt")), cert.pem()).expect("write");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write");
    }

    /// Writes `NAME.crt` and `NAME.key`: a client certificate from the test CA, shaped by `edit`.
    pub fn issue_client_with(&self, name: &str, edit: impl FnOnce(&mut CertificateParams)) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        edit(&mut p);
        let cert = p.signed_by(&key, &self.ca).expect("sign");
        std::fs::write(self.path(&format!("{name}.crt")), cert.pem()).expect("write");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write");
    }

    /// Writes `NAME.crt` and `NAME.key`: a client certificate with subject `cn` and `serial`
    /// (for CRLs).
    pub fn issue_client_serial(&self, name: &str, cn: &str, serial: u64) {
        self.issue_client_with(name, |p| {
            p.serial_number = Some(rcgen::SerialNumber::from(serial));
            p.distinguished_name.push(DnType::CommonName, cn);
        });
    }

    /// A CRL from the test CA revoking `serials`: (PEM, DER).
    pub fn crl(&self, serials: &[u64], number: u64) -> (String, Vec<u8>) {
        self.crl_due_in(serials, number, 7)
    }

    /// Like [`Pki::crl`], with its next update `days` from now (negative: overdue).
    pub fn crl_due_in(&self, serials: &[u64], number: u64, days: i64) -> (String, Vec<u8>) {
        self.crl_signed(&self.ca, serials, number, days)
    }

    /// A CRL issued by the other CA: for senders of the test CA, its revocation status is
    /// unknown.
    pub fn crl_of_other_ca(&self) -> (String, Vec<u8>) {
        self.crl_signed(&self.other_ca, &[], 1, 7)
    }

    fn crl_signed(
        &self,
        issuer: &CertifiedIssuer<'static, KeyPair>,
        serials: &[u64],
        number: u64,
        days: i64,
    ) -> (String, Vec<u8>) {
        let now = time::OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::days(10),
            next_update: now + time::Duration::days(days),
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: now - time::Duration::minutes(5),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(issuer).expect("CRL");
        (crl.pem().expect("CRL PEM"), crl.der().to_vec())
    }

    /// A TLS target presenting the client certificate `NAME.crt`.
    pub fn target_named(&self, addr: SocketAddr, name: &str) -> ClientTarget {
        TlsArgs {
            ca: Some(self.path("ca.crt")),
            cert: Some(self.path(&format!("{name}.crt"))),
            key: Some(self.path(&format!("{name}.key"))),
            server_name: Some("localhost".into()),
        }
        .target(&addr.to_string())
        .expect("client target")
    }

    /// Writes `NAME.crt` and `NAME.key`: a client certificate.
    pub fn issue_client(
        &self,
        name: &str,
        cn: &str,
        dns: &[&str],
        uris: &[&str],
        other_ca: bool,
        expired: bool,
    ) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>())
            .expect("params");
        for u in uris {
            p.subject_alt_names
                .push(SanType::URI(u.to_string().try_into().expect("uri")));
        }
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let issuer = if other_ca { &self.other_ca } else { &self.ca };
        let cert = p.signed_by(&key, issuer).expect("sign");
        std::fs::write(self.path(&format!("{name}.crt")), cert.pem()).expect("write");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write");
    }

    /// The client-side TLS target for `addr` with the given certificate.
    pub fn target(&self, addr: SocketAddr, which: ClientCert) -> ClientTarget {
        let name = match which {
            ClientCert::Good => Some("client"),
            ClientCert::None => None,
            ClientCert::OtherCa => Some("other"),
            ClientCert::Expired => Some("expired"),
        };
        TlsArgs {
            ca: Some(self.path("ca.crt")),
            cert: name.map(|n| self.path(&format!("{n}.crt"))),
            key: name.map(|n| self.path(&format!("{n}.key"))),
            server_name: Some("localhost".into()),
        }
        .target(&addr.to_string())
        .expect("client target")
    }

    /// A route configuration YAML forwarding to `targets`, with `extra` appended to the route.
    /// Health probes are off: tests that count the engine's connections would see them; the
    /// health tests turn them on.
    pub fn config_yaml(&self, targets: &[String], extra: &str) -> String {
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        format!(
            r#"
admin:
  listen: "127.0.0.1:0"
shutdown:
  drain_timeout: 10s
routes:
  - name: test
    listen: "127.0.0.1:0"
    tls:
      certificate: server.crt
      private_key: server.key
      client_ca: ca.crt
    upstream:
      targets: [{}]
      connect_timeout: 1s
      ack_timeout: 2s
      health_check_interval: 0
{extra}"#,
            targets.join(", ")
        )
    }

    /// The validated configuration of [`Pki::config_yaml`].
    pub fn config(&self, targets: &[String], extra: &str) -> Config {
        Config::from_yaml(&self.config_yaml(targets, extra), self.dir.path()).expect("test config")
    }
}

/// A test's set-up in one builder: a test PKI, a stand-in engine, and a proxy in front of it
/// on loopback port 0; `Harness::new().engine(b).route_yaml(y).edit(f).start().await`.
pub struct Harness {
    /// The PKI, there before the start so a test can issue certificates or write files.
    pub pki: Pki,
    behaviour: Behaviour,
    /// Targets listed before the engine's (a down or black-holed primary).
    before: Vec<String>,
    extra: String,
    top: String,
    edits: Vec<ConfigEdit>,
    /// The engine is started but not listed: its only target is an address nobody listens on.
    engine_down: bool,
    /// `shutdown.delay` and `shutdown.drain_timeout`, when not the defaults of
    /// [`Pki::config_yaml`] (no delay, 10 s).
    shutdown: Option<(String, String)>,
    /// The in-process proxy writes its audit trail (JSON) to `audit.jsonl` in the PKI folder.
    audit: bool,
}

/// A change to the validated configuration, made before the proxy starts.
type ConfigEdit = Box<dyn FnOnce(&mut Config)>;

/// What [`Harness::start`] made; destructure it into the names the test uses.
pub struct World {
    pub pki: Pki,
    pub engine: Engine,
    pub proxy: RunningProxy,
    /// Keeps the audit writer's thread for as long as the world lives ([`Harness::audit`]).
    pub audit: Option<mllp_proxy::audit::WriterGuard>,
}

impl Harness {
    /// A fresh PKI and an engine that answers AA.
    pub fn new() -> Self {
        Self {
            pki: Pki::new(),
            behaviour: Behaviour::Ack,
            before: Vec::new(),
            extra: String::new(),
            top: String::new(),
            edits: Vec::new(),
            engine_down: false,
            shutdown: None,
            audit: false,
        }
    }

    /// The in-process proxy writes its audit records, as JSON, where [`World::audit_records`]
    /// reads them.
    pub fn audit(mut self) -> Self {
        self.audit = true;
        self
    }

    /// `shutdown.delay` (lame duck) and `shutdown.drain_timeout`, as written in YAML.
    pub fn shutdown(mut self, delay: &str, drain_timeout: &str) -> Self {
        self.shutdown = Some((delay.to_string(), drain_timeout.to_string()));
        self
    }

    /// The engine's behaviour.
    pub fn engine(mut self, b: Behaviour) -> Self {
        self.behaviour = b;
        self
    }

    /// An engine that is down: the route's target is a loopback port nobody listens on.
    pub fn engine_down(mut self) -> Self {
        self.engine_down = true;
        self
    }

    /// A target tried before the engine.
    pub fn target_before(mut self, target: impl ToString) -> Self {
        self.before.push(target.to_string());
        self
    }

    /// YAML appended to the route (indented four spaces, as in [`Pki::config_yaml`]).
    pub fn route_yaml(mut self, extra: &str) -> Self {
        self.extra.push_str(extra);
        self
    }

    /// Top-level YAML (`audit:`, `shutdown:`) before the `admin:` section.
    pub fn top_yaml(mut self, yaml: &str) -> Self {
        self.top.push_str(yaml);
        self
    }

    /// A change to the validated configuration before the proxy starts.
    pub fn edit(mut self, f: impl FnOnce(&mut Config) + 'static) -> Self {
        self.edits.push(Box::new(f));
        self
    }

    /// Starts the engine and the proxy in-process.
    pub async fn start(self) -> World {
        let (engine, yaml) = self.engine_and_yaml("").await;
        let mut cfg = Config::from_yaml(&yaml, self.pki.dir.path()).expect("test config");
        for edit in self.edits {
            edit(&mut cfg);
        }
        let (audit, guard) = match self.audit {
            true => {
                let (writer, guard) = mllp_proxy::audit::LineWriter::start(
                    Some(&self.pki.path("audit.jsonl")),
                    mllp_proxy::audit::Reopen::default(),
                )
                .expect("audit writer");
                (mllp_proxy::audit::AuditLog::new(writer, true), Some(guard))
            }
            false => (mllp_proxy::audit::AuditLog::default(), None),
        };
        let options = mllp_proxy::proxy::Options {
            audit,
            ..Default::default()
        };
        let proxy = mllp_proxy::proxy::start_with(cfg, Metrics::new().expect("metrics"), options)
            .await
            .expect("proxy starts");
        World {
            pki: self.pki,
            engine,
            proxy,
            audit: guard,
        }
    }

    /// Starts the engine and the proxy in-process on the file `proxy.yaml`, which
    /// [`RunningProxy::reload`] and the poll re-read (configuration edits do not apply: the
    /// file is the configuration).
    pub async fn start_live(self) -> World {
        assert!(
            self.edits.is_empty(),
            "a live configuration is its file: use route_yaml"
        );
        let (engine, yaml) = self.engine_and_yaml("").await;
        let path = self.pki.path("proxy.yaml");
        std::fs::write(&path, &yaml).expect("write config");
        let (cfg, text) = Config::load_with_text(&path).expect("test config");
        let options = mllp_proxy::proxy::Options {
            source: Some(mllp_proxy::proxy::Source { path, text }),
            ..Default::default()
        };
        let proxy = mllp_proxy::proxy::start_with(cfg, Metrics::new().expect("metrics"), options)
            .await
            .expect("proxy starts");
        World {
            pki: self.pki,
            engine,
            proxy,
            audit: None,
        }
    }

    /// Starts the engine and the proxy binary with JSON logs at level info (configuration
    /// edits do not apply: the binary reads the YAML).
    pub async fn spawn_json(self) -> BinaryWorld {
        self.spawn("json").await
    }

    /// Starts the engine and the proxy binary logging in `format` (`json` or `text`).
    pub async fn spawn(self, format: &str) -> BinaryWorld {
        self.spawn_with(format, "info").await
    }

    /// [`Harness::spawn`] with `RUST_LOG=rust_log` (empty: the file's `logging.level`).
    pub async fn spawn_with(self, format: &str, rust_log: &str) -> BinaryWorld {
        assert!(
            self.edits.is_empty(),
            "the binary reads YAML: use route_yaml"
        );
        let logging = format!("logging:\n  format: {format}\n");
        let (engine, yaml) = self.engine_and_yaml(&logging).await;
        let config_path = self.pki.path("proxy.yaml");
        std::fs::write(&config_path, yaml).expect("write config");
        let proxy = ProxyProcess::spawn(&config_path, rust_log);
        BinaryWorld {
            pki: self.pki,
            engine,
            proxy,
        }
    }

    /// Starts the engine, and writes the configuration in front of it (or of a port nobody
    /// listens on, with [`Harness::engine_down`]), with `top` YAML before `admin:`.
    async fn engine_and_yaml(&self, top: &str) -> (Engine, String) {
        let engine = Engine::start(self.behaviour).await;
        let mut targets = self.before.clone();
        targets.push(if self.engine_down {
            unused_addr().await.to_string()
        } else {
            engine.target()
        });
        let mut yaml = self
            .pki
            .config_yaml(&targets, &self.extra)
            .replace("admin:\n", &format!("{}{top}admin:\n", self.top));
        if let Some((delay, drain)) = &self.shutdown {
            yaml = yaml.replace(
                "shutdown:\n  drain_timeout: 10s\n",
                &format!("shutdown:\n  delay: {delay}\n  drain_timeout: {drain}\n"),
            );
        }
        (engine, yaml)
    }
}

/// What [`Harness::spawn`] made: the proxy is the binary, its log captured.
pub struct BinaryWorld {
    pub pki: Pki,
    pub engine: Engine,
    pub proxy: ProxyProcess,
}

impl World {
    /// The live configuration file's content ([`Harness::start_live`]).
    pub fn yaml(&self) -> String {
        std::fs::read_to_string(self.pki.path("proxy.yaml")).expect("read config")
    }

    /// The audit records written so far ([`Harness::audit`]), each a JSON object.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.pki.path("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The audit records of `event`, once `count` of them are written (10 s at most).
    pub async fn audited(&self, event: &str, count: usize) -> Vec<serde_json::Value> {
        let of = || -> Vec<serde_json::Value> {
            let all = self.audit_records();
            all.into_iter().filter(|r| r["event"] == event).collect()
        };
        eventually(Duration::from_secs(10), || async { of().len() >= count }).await;
        of()
    }

    /// A connected sender with the good client certificate.
    pub async fn client(&self) -> MllpClient {
        connect(&self.pki, &self.proxy, ClientCert::Good).await
    }
}

/// Panics with the refusal's reason unless `reload` applied the configuration.
pub fn assert_applied(reload: mllp_proxy::proxy::Reload) {
    match reload {
        mllp_proxy::proxy::Reload::Applied => {}
        mllp_proxy::proxy::Reload::Refused(why) => panic!("reload refused: {why}"),
        other => panic!("reload not applied: {other:?}"),
    }
}

/// Starts a proxy in-process on loopback port 0.
pub async fn start_proxy(config: Config) -> RunningProxy {
    mllp_proxy::proxy::start(config, Metrics::new().expect("metrics"))
        .await
        .expect("proxy starts")
}

/// Connects a client to the proxy's only route.
pub async fn connect(pki: &Pki, proxy: &RunningProxy, which: ClientCert) -> MllpClient {
    let addr = proxy.routes()[0].1;
    MllpClient::connect(&pki.target(addr, which), Duration::from_secs(5))
        .await
        .expect("client connects")
}

/// What the stand-in engine does with each message: `ack-server`'s own engine behaviours.
pub use mllp_proxy::cli::ack_server::Behaviour;

/// The stand-in legacy engine of `ack-server`, on plain MLLP on a loopback port, keeping what
/// it receives; stopped when dropped.
pub struct Engine {
    pub addr: SocketAddr,
    engine: Arc<ack_server::Engine>,
    stop: CancellationToken,
}

impl Engine {
    pub async fn start(b: Behaviour) -> Engine {
        Self::start_with("127.0.0.1:0".parse().expect("addr"), b, false).await
    }

    pub async fn start_on(addr: SocketAddr, b: Behaviour) -> Engine {
        Self::start_with(addr, b, false).await
    }

    /// An engine that serves one connection at a time, like a lab system's single listener
    /// thread: a second connection while one is open is counted and closed at once.
    pub async fn start_single(b: Behaviour) -> Engine {
        Self::start_with("127.0.0.1:0".parse().expect("addr"), b, true).await
    }

    /// The engine behind TLS with `config`: a partner that egress routes connect to.
    pub async fn start_tls(b: Behaviour, config: Arc<rustls::ServerConfig>) -> Engine {
        let engine = ack_server::Engine::scripted(b, false).with_tls(config);
        Self::serve(engine, "127.0.0.1:0".parse().expect("addr")).await
    }

    async fn start_with(addr: SocketAddr, b: Behaviour, single: bool) -> Engine {
        Self::serve(ack_server::Engine::scripted(b, single), addr).await
    }

    async fn serve(engine: ack_server::Engine, addr: SocketAddr) -> Engine {
        let listener = TcpListener::bind(addr).await.expect("engine binds");
        let addr = listener.local_addr().expect("addr");
        let engine = Arc::new(engine);
        let stop = CancellationToken::new();
        tokio::spawn(ack_server::serve(listener, engine.clone(), stop.clone()));
        Engine { addr, engine, stop }
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    pub fn set(&self, b: Behaviour) {
        self.engine.set_behaviour(b);
    }

    pub fn received(&self) -> Vec<Bytes> {
        self.engine.received()
    }

    /// The MSH-10 of each received message, in order.
    pub fn received_ids(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|m| {
                String::from_utf8_lossy(m)
                    .split('|')
                    .nth(9)
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }

    pub fn connections(&self) -> usize {
        self.engine.connections() as usize
    }

    /// Connections refused because another was open (single-connection engines).
    pub fn refused(&self) -> usize {
        self.engine.refused()
    }

    /// The most connections that were open at once.
    pub fn peak(&self) -> usize {
        self.engine.peak()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A free loopback port with nothing listening on it (for "connection refused").
pub async fn unused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// A valid ADT^A01 with control ID `id` and a made-up patient.
pub fn adt(id: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|ADT|WARD|LAB|HOSP|20261126120000||ADT^A01^ADT_A01|{id}|P|2.5.1\rEVN|A01|20261126120000\rPID|1||MRN{id}^^^HOSP^MR||DOE^JANE||19800101|F\r"
    )
    .into_bytes()
}

/// MSA-1 and MSA-2 of an answer, as strings.
pub fn msa(answer: &[u8]) -> (String, String) {
    let info = mllp_proxy::hl7::parse_ack(answer).expect("answer is an acknowledgment");
    (
        info.code.to_string(),
        String::from_utf8_lossy(info.control_id).into_owned(),
    )
}

/// Scrapes `/metrics` over HTTP: the value of the series `name{labels}`, `None` when absent.
pub async fn scrape(proxy: &RunningProxy, sample: &str) -> Option<f64> {
    let body = mllp_proxy::client::http_get(proxy.admin(), "/metrics")
        .await
        .expect("scrape");
    mllp_proxy::metrics::sample_value(&body, sample)
}

/// [`scrape`] of a series the proxy must have written (they are created at zero).
pub async fn metric(proxy: &RunningProxy, sample: &str) -> f64 {
    scrape(proxy, sample)
        .await
        .unwrap_or_else(|| panic!("no series {sample} in the scrape"))
}

/// Polls `check` until it is true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The binary under test.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mllp-proxy"))
}

/// The proxy binary running as a child process, its log lines collected.
pub struct ProxyProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl ProxyProcess {
    /// Runs `mllp-proxy run -c CONFIG` (logging in JSON or text) with `RUST_LOG=rust_log`,
    /// which must let info lines through: the addresses are read from them.
    pub fn spawn(config: &Path, rust_log: &str) -> ProxyProcess {
        Self::spawn_env(config, rust_log, &[])
    }

    /// [`ProxyProcess::spawn`] with more environment variables (`NOTIFY_SOCKET`, …).
    pub fn spawn_env(config: &Path, rust_log: &str, env: &[(&str, &Path)]) -> ProxyProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(binary())
            .args(["run", "-c"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn mllp-proxy");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("mllp-proxy ready") {
                    let _ = tx.send(());
                }
                sink.lock().expect("lock").push(line);
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("proxy became ready");
        let lines = log.lock().expect("lock").clone();
        let field = |msg: &str, name: &str| -> SocketAddr {
            let line = lines.iter().find(|l| l.contains(msg)).expect("log line");
            let (json, text) = (format!("\"{name}\":\""), format!(" {name}="));
            let (at, end) = match line.find(&json) {
                Some(at) => (at + json.len(), '"'),
                None => (line.find(&text).expect("field") + text.len(), ' '),
            };
            let len = line[at..].find(end).unwrap_or(line.len() - at);
            line[at..at + len].parse().expect("address")
        };
        let addr = field("route listening", "listen");
        let admin = field("admin listening", "admin");
        ProxyProcess {
            child,
            addr,
            admin,
            log,
        }
    }

    /// Sends SIGTERM and waits (15 s at most) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        self.wait_exit()
    }

    /// Sends a signal (`-TERM`, `-HUP`) without waiting for anything.
    pub fn signal(&self, which: &str) {
        let _ = std::process::Command::new("kill")
            .args([which, &self.child.id().to_string()])
            .status();
    }

    /// Waits (15 s at most) for the exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("proxy did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGHUP: reload the configuration.
    pub fn hup(&self) {
        let _ = std::process::Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status();
    }

    /// Every log line so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("lock").clone()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool`, or `None` after saying so (a failure when MLLP_PROXY_REQUIRE_INTEROP=1).
pub fn promtool() -> Option<PathBuf> {
    required_tool("promtool", "--version", "prometheus")
}

/// The command `name` if `name ARG` runs, or `None` after saying so; a failure when
/// MLLP_PROXY_REQUIRE_INTEROP=1 (tests/run.sh installs `package`, a Debian package).
pub fn required_tool(name: &str, arg: &str, package: &str) -> Option<PathBuf> {
    let ok = std::process::Command::new(name)
        .arg(arg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(PathBuf::from(name));
    }
    if std::env::var("MLLP_PROXY_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
        panic!("{name} not found (Debian package {package}; tests/run.sh installs it)");
    }
    eprintln!("SKIPPED: {name} not found (Debian package {package})");
    None
}

/// The subject CN of the certificate a new TLS handshake with `addr` is served.
pub async fn served_cn(pki: &Pki, addr: SocketAddr) -> String {
    let target = pki.target(addr, ClientCert::Good);
    let (config, name) = target.tls.expect("tls");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("handshake");
    let der = tls.get_ref().1.peer_certificates().expect("server chain")[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("x509");
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Writes `bytes` to `path` by renaming a temporary file over it, as a careful operator does.
pub fn replace_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Whether the scraped `sample` reaches `want` within 10 s.
pub async fn metric_reaches(proxy: &RunningProxy, sample: &str, want: f64) -> bool {
    eventually(Duration::from_secs(10), || async {
        scrape(proxy, sample).await == Some(want)
    })
    .await
}

/// notAfter (Unix seconds) of the first certificate in a PEM file.
pub fn not_after(pem_file: &Path) -> i64 {
    let pem = std::fs::read(pem_file).expect("read certificate");
    let (_, der) = x509_parser::pem::parse_x509_pem(&pem).expect("pem");
    der.parse_x509()
        .expect("x509")
        .validity()
        .not_after
        .timestamp()
}

/// Parses `text` as JSON, refusing an object that holds a key twice (serde_json and jq quietly
/// keep the last one; strict parsers reject the line).
pub fn strict_json(text: &str) -> Result<(), String> {
    use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};

    struct Strict;
    impl<'de> Deserialize<'de> for Strict {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(StrictVisitor)
        }
    }
    struct StrictVisitor;
    impl<'de> Visitor<'de> for StrictVisitor {
        type Value = Strict;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key.clone()) {
                    return Err(A::Error::custom(format!("duplicate key {key:?}")));
                }
                map.next_value::<Strict>()?;
            }
            Ok(Strict)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
            while seq.next_element::<Strict>()?.is_some() {}
            Ok(Strict)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
            Ok(Strict)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
            Ok(Strict)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
            Ok(Strict)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Strict, E> {
            Ok(Strict)
        }
        fn visit_str<E>(self, _: &str) -> Result<Strict, E> {
            Ok(Strict)
        }
        fn visit_unit<E>(self) -> Result<Strict, E> {
            Ok(Strict)
        }
    }
    serde_json::from_str::<Strict>(text)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A listener whose accept queue is full and never drained: connects to it hang, like a host
/// that drops SYNs. The held connections must live as long as the listener.
pub async fn black_hole() -> (TcpListener, Vec<TcpStream>, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(1).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut held = Vec::new();
    // Linux queues backlog + 1 connections; the rest have their SYNs dropped.
    while let Ok(Ok(s)) =
        tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await
    {
        held.push(s);
        assert!(held.len() < 10, "the accept queue never filled");
    }
    (listener, held, addr)
}

/// The value of one series (`name{labels}`) in a scrape the test holds; absent fails the test.
pub fn sample_value(metrics: &str, sample: &str) -> f64 {
    mllp_proxy::metrics::sample_value(metrics, sample)
        .unwrap_or_else(|| panic!("no series {sample} in the scrape"))
}

/// The JSON log lines of `proxy` that satisfy `keep`, parsed, once at least `n` exist.
pub fn json_lines(
    proxy: &ProxyProcess,
    n: usize,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let found: Vec<serde_json::Value> = proxy
            .log_lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v| keep(v))
            .collect();
        if found.len() >= n || std::time::Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
