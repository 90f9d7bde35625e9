//! The [`Harness`] builder: a PKI, a stand-in engine and a proxy in front of it, in-process on
//! port 0 or the binary; what it starts ([`World`], [`BinaryWorld`]) and its helpers.

use super::*;

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
    /// Keys added to the route's `tls` section.
    tls: String,
    /// Targets tried after the engine.
    after: Vec<String>,
    /// The engine takes one connection at a time ([`Engine::start_single`]).
    single: bool,
    /// Sessions run on this many session threads, as the binary runs them.
    threads: Option<usize>,
    /// `upstream.health_check_interval` (off when `None`).
    health: Option<String>,
    /// Keys added to the `admin` section (indented two spaces).
    admin: String,
}

/// A change to the validated configuration, made before the proxy starts.
type ConfigEdit = Box<dyn FnOnce(&mut Config)>;

/// What [`Harness::start`] made; destructure it into the names the test uses.
pub struct World {
    pub pki: Pki,
    pub engine: Engine,
    pub proxy: RunningProxy,
    /// The configuration the proxy was started with (its targets, say).
    pub config: Config,
    /// Keeps the audit writer's thread for as long as the world lives ([`Harness::audit`]).
    pub _audit_writer: Option<mllp_proxy::audit::WriterGuard>,
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
            tls: String::new(),
            after: Vec::new(),
            single: false,
            threads: None,
            health: None,
            admin: String::new(),
        }
    }

    /// Health checks every `interval` (`1s`): they are off otherwise.
    pub fn health_checks(mut self, interval: &str) -> Self {
        self.health = Some(interval.to_string());
        self
    }

    /// Keys added to the `admin` section (indented two spaces: `  tls:\n    …`).
    pub fn admin_yaml(mut self, keys: &str) -> Self {
        self.admin.push_str(keys);
        self
    }

    /// A target tried after the engine.
    pub fn target_after(mut self, target: impl ToString) -> Self {
        self.after.push(target.to_string());
        self
    }

    /// The engine accepts one connection at a time (a single-connection legacy engine).
    pub fn single_engine(mut self) -> Self {
        self.single = true;
        self
    }

    /// The in-process proxy runs its sessions on `n` session threads, as the binary does.
    pub fn session_threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// YAML keys added to the route's `tls` section (indented six spaces:
    /// `"      crl: [clients.crl]\n"`).
    pub fn tls_yaml(mut self, keys: &str) -> Self {
        self.tls.push_str(keys);
        self
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
    pub async fn start(mut self) -> World {
        let (engine, yaml) = self.engine_and_yaml("").await;
        let mut cfg = Config::from_yaml(&yaml, self.pki.dir.path()).expect("test config");
        for edit in std::mem::take(&mut self.edits) {
            edit(&mut cfg);
        }
        let options = mllp_proxy::proxy::Options {
            cores: self
                .threads
                .map(|n| mllp_proxy::cores::Cores::start(n).expect("session threads")),
            ..Default::default()
        };
        self.world(engine, cfg, options).await
    }

    /// The proxy on `cfg` with `options`, its audit trail in `audit.jsonl` with
    /// [`Harness::audit`], in front of `engine`.
    async fn world(
        self,
        engine: Engine,
        cfg: Config,
        mut options: mllp_proxy::proxy::Options,
    ) -> World {
        let config = cfg.clone();
        let mut guard = None;
        if self.audit {
            let (audit, g) = audit_log(&self.pki.path("audit.jsonl"));
            options.audit = audit;
            guard = Some(g);
        }
        let proxy = start_options(cfg, options).await;
        World {
            pki: self.pki,
            engine,
            proxy,
            config,
            _audit_writer: guard,
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
        self.world(engine, cfg, options).await
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
        let engine = match self.single {
            true => Engine::start_single(self.behaviour).await,
            false => Engine::start(self.behaviour).await,
        };
        let mut targets = self.before.clone();
        targets.push(if self.engine_down {
            unused_addr().await.to_string()
        } else {
            engine.target()
        });
        targets.extend(self.after.iter().cloned());
        let mut yaml = self
            .pki
            .config_yaml_tls(&targets, &self.tls, &self.extra)
            .replace("admin:\n", &format!("{}{top}admin:\n", self.top));
        if let Some(interval) = &self.health {
            yaml = yaml.replace(
                "health_check_interval: 0\n",
                &format!("health_check_interval: {interval}\n"),
            );
        }
        yaml = yaml.replace(
            "admin:\n  listen: \"127.0.0.1:0\"\n",
            &format!("admin:\n  listen: \"127.0.0.1:0\"\n{}", self.admin),
        );
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

/// Starts a proxy in-process on `config`, its audit records written as JSON to `file`; the
/// guard keeps the writer's thread for as long as it is held.
pub async fn start_audited(
    config: Config,
    file: &Path,
) -> (RunningProxy, mllp_proxy::audit::WriterGuard) {
    let (audit, guard) = audit_log(file);
    let options = mllp_proxy::proxy::Options {
        audit,
        ..Default::default()
    };
    (start_options(config, options).await, guard)
}

/// An audit log writing JSON records to `file`, and the guard of its writer thread.
fn audit_log(file: &Path) -> (mllp_proxy::audit::AuditLog, mllp_proxy::audit::WriterGuard) {
    let (writer, guard) =
        mllp_proxy::audit::LineWriter::start(Some(file), mllp_proxy::audit::Reopen::default())
            .expect("audit writer");
    (mllp_proxy::audit::AuditLog::new(writer, true), guard)
}

/// Starts a proxy in-process on `config` with `options`.
async fn start_options(config: Config, options: mllp_proxy::proxy::Options) -> RunningProxy {
    mllp_proxy::proxy::start_with(config, Metrics::new().expect("metrics"), options)
        .await
        .expect("proxy starts")
}

/// The first audit record of `event` in the JSON audit `file`, once written (10 s at most).
pub async fn audited_in(file: &Path, event: &str) -> serde_json::Value {
    let first = || {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["event"] == event)
    };
    assert!(
        eventually(Duration::from_secs(10), || async { first().is_some() }).await,
        "no {event} record"
    );
    first().unwrap_or_default()
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
    start_options(config, mllp_proxy::proxy::Options::default()).await
}

/// Connects a client to the proxy's only route.
pub async fn connect(pki: &Pki, proxy: &RunningProxy, which: ClientCert) -> MllpClient {
    let addr = proxy.routes()[0].1;
    MllpClient::connect(&pki.target(addr, which), Duration::from_secs(5))
        .await
        .expect("client connects")
}
