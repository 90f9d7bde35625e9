//! The `mllp-proxy` binary: argument parsing, logging set-up and exit codes only.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand};
use mllp_proxy::audit::{AuditLog, LineWriter, Reopen, WriterGuard};
use mllp_proxy::cli;
use mllp_proxy::config::{Config, DEFAULT_CONFIG_PATH, LogFormat, LoggingConfig, SyslogConfig};
use mllp_proxy::cores::Cores;
use mllp_proxy::metrics::Metrics;
use mllp_proxy::proxy::{Options, ReloadHook, Source, StartError};
use mllp_proxy::shutdown::{Signal, Signals};
use sd_notify::NotifyState;
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, reload};

/// mTLS-terminating proxy for HL7 v2 over MLLP, in front of legacy engines.
#[derive(Debug, Parser)]
#[command(name = "mllp-proxy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the proxy.
    Run {
        /// Configuration file.
        #[arg(short, long, env = "MLLP_PROXY_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Validates the configuration and TLS material; exit 1 on error.
    Check {
        /// Configuration file.
        #[arg(short, long, env = "MLLP_PROXY_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// A sender's certificate (PEM chain): says per route whether it would be admitted,
        /// and as which identity, or why not; exit 1 when no route admits it.
        #[arg(long, value_name = "FILE")]
        client_cert: Option<PathBuf>,
    },
    /// Self-contained round trip on the example configuration and certificates.
    Demo {
        /// Exit after the round trip (status 0 only if every message got AA).
        #[arg(long)]
        once: bool,
        /// The whole interface both ways round: a plain sender, an egress route, mutual TLS,
        /// the ingress route, the engine.
        #[arg(long)]
        tunnel: bool,
    },
    /// Sends messages and prints each ACK's MSA-1 and MSA-2.
    Send(cli::send::SendArgs),
    /// Who is connected to each route, its targets' health and the last reload, from the
    /// admin server's /status.
    Status(cli::status::StatusArgs),
    /// A stand-in legacy engine: plain MLLP, AA to every message unless told to misbehave.
    AckServer(cli::ack_server::AckServerArgs),
    /// Load generator: throughput and latency percentiles.
    Bench(cli::bench::BenchArgs),
    /// Fault soak: resending senders through the proxy, then the delivery promises checked.
    Soak(cli::soak::SoakArgs),
}

fn main() -> ExitCode {
    let args = Cli::parse();
    mllp_proxy::memory::one_heap();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(dispatch(args.command))
}

async fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::Run { config } => run(config).await,
        Command::Check {
            config,
            client_cert,
        } => {
            let _logging = init_tracing(LogFormat::Text, "warn", None).ok();
            status(cli::check::run(&config, client_cert.as_deref()))
        }
        Command::Demo { once, tunnel } => {
            // The audit trail goes to a file the demo summarises, not between its lines.
            let folder = cli::demo::folder();
            let audit = folder.join("audit.log");
            let logging = std::fs::create_dir_all(&folder)
                .ok()
                .and_then(|()| init_tracing(LogFormat::Text, "warn", Some(&audit)).ok());
            let log = logging
                .as_ref()
                .map(|l| l.audit.clone())
                .unwrap_or_default();
            report(cli::demo::run(once, tunnel, &audit, log).await)
        }
        Command::Send(a) => {
            let _logging = init_tracing(LogFormat::Text, "warn", None).ok();
            report(cli::send::run(a).await)
        }
        Command::Status(a) => {
            let _logging = init_tracing(LogFormat::Text, "warn", None).ok();
            report(cli::status::run(a).await)
        }
        Command::AckServer(a) => {
            let _logging = init_tracing(LogFormat::Text, "info", None).ok();
            report(cli::ack_server::run(a).await.map(|()| true))
        }
        Command::Bench(a) => {
            let _logging = init_tracing(LogFormat::Text, "warn", None).ok();
            report(cli::bench::run(a).await.map(|_| true))
        }
        Command::Soak(a) => {
            let _logging = init_tracing(LogFormat::Text, "warn", None).ok();
            report(cli::soak::run(a).await)
        }
    }
}

/// `run` exit status: the configuration (or its TLS material, or the audit file) cannot be
/// used: restarting will not help (sysexits.h EX_CONFIG; `RestartPreventExitStatus=78`).
const EXIT_CONFIG: u8 = 78;
/// `run` exit status: the drain after SIGTERM timed out and open sessions were cut (their
/// messages in flight were not acknowledged, so senders resend them; sysexits.h EX_TEMPFAIL).
const EXIT_DRAIN_TIMEOUT: u8 = 75;

async fn run(path: PathBuf) -> ExitCode {
    let (config, text) = match Config::load_with_text(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let logging = match init_tracing(
        config.logging.format,
        &config.logging.level,
        config.audit.file.as_deref(),
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = logging.syslog_to(&config.audit.syslog) {
        tracing::error!(error = %e, "cannot start");
        return ExitCode::from(EXIT_CONFIG);
    }
    let signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let metrics = match Metrics::new() {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "cannot create metrics");
            return ExitCode::FAILURE;
        }
    };
    // A session thread per core: a sender's connection and its engine connection are then
    // driven by one thread, with no cross-thread wake-ups per message (see `cores`).
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = match Cores::start(threads) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the session threads");
            return ExitCode::FAILURE;
        }
    };
    let options = Options {
        source: Some(Source { path, text }),
        cores: Some(cores.clone()),
        on_reload: Some(logging.on_reload()),
        audit: logging.audit.clone(),
    };
    let proxy = match mllp_proxy::proxy::start_with(config, metrics, options).await {
        Ok(p) => p,
        Err(e) => {
            // Logging is set up by now: one line, in the configured format (JSON pipelines
            // must not receive a stray plain-text line).
            tracing::error!(error = %e, "cannot start");
            return match e {
                // A port taken may be free on the next try (an old process still stopping).
                StartError::Bind(_) => ExitCode::FAILURE,
                StartError::Tls { .. } | StartError::AdminTls(_) => ExitCode::from(EXIT_CONFIG),
            };
        }
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "mllp-proxy ready");
    systemd(&[NotifyState::Ready]);
    logging.audit.application(true);
    let status = serve(proxy, signals, &logging).await;
    logging.audit.application(false);
    status
}

/// Reloads on SIGHUP until SIGTERM/SIGINT, then stops: the exit status says whether the drain
/// finished.
async fn serve(
    proxy: mllp_proxy::proxy::RunningProxy,
    mut signals: Signals,
    logging: &Logging,
) -> ExitCode {
    while signals.next().await == Signal::Reload {
        tracing::info!(
            "SIGHUP: reloading the configuration and TLS material, reopening the audit file"
        );
        // systemd 253+ needs the monotonic time with RELOADING=1 to tell reloads apart.
        match NotifyState::monotonic_usec_now() {
            Ok(now) => systemd(&[NotifyState::Reloading, now]),
            Err(_) => systemd(&[NotifyState::Reloading]),
        }
        logging.reopen.request();
        proxy.reload().await;
        systemd(&[NotifyState::Ready]);
    }
    systemd(&[NotifyState::Stopping]);
    tracing::info!("SIGTERM/SIGINT: shutting down");
    let drained = proxy.stop().await;
    tracing::info!(drained, "stopped");
    if drained {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DRAIN_TIMEOUT)
    }
}

/// Tells systemd (`Type=notify`, `NOTIFY_SOCKET` set) how the service is; nothing without it.
fn systemd(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "systemd notification not sent (NOTIFY_SOCKET)");
    }
}

fn report<E: std::fmt::Display>(r: Result<bool, E>) -> ExitCode {
    match r {
        Ok(ok) => status(ok),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn status(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The log and audit writer, flushed when this is dropped at exit, and the handles a reload
/// changes the level and format through.
struct Logging {
    reopen: Reopen,
    /// Where audit records go, passed to the proxy (none when the writer could not start).
    audit: AuditLog,
    live: Option<Arc<LiveLogging>>,
    _guard: Option<WriterGuard>,
}

/// The subscriber's layers as a reload replaces them.
type Base = Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type FormatLayer = Box<dyn Layer<Base> + Send + Sync>;

/// What a reload may change in the logging set-up.
struct LiveLogging {
    writer: LineWriter,
    audit: AuditLog,
    filter: reload::Handle<EnvFilter, Registry>,
    format: reload::Handle<FormatLayer, Base>,
    /// `RUST_LOG` was set: it decides the level, whatever the file says.
    env_level: bool,
    ansi: bool,
    in_service: Mutex<InService>,
}

/// The logging settings in service, compared with a reloaded configuration's.
struct InService {
    logging: LoggingConfig,
    audit_file: Option<PathBuf>,
    syslog: Vec<SyslogConfig>,
}

impl Logging {
    /// Starts sending the audit trail to `collectors` (at start; reloads go through
    /// [`Logging::on_reload`]).
    fn syslog_to(&self, collectors: &[SyslogConfig]) -> Result<(), String> {
        let Some(live) = &self.live else {
            return Ok(());
        };
        live.writer.syslog_to(collectors)?;
        if let Ok(mut s) = live.in_service.lock() {
            s.syslog = collectors.to_vec();
        }
        Ok(())
    }

    /// The reload hook: the audit file first (the one step that can fail), then level and
    /// format.
    fn on_reload(&self) -> ReloadHook {
        let live = self.live.clone();
        Box::new(move |cfg: &Config| match &live {
            Some(live) => live.apply(cfg),
            None => Ok(()),
        })
    }
}

impl LiveLogging {
    fn apply(&self, cfg: &Config) -> Result<(), String> {
        let mut s = self
            .in_service
            .lock()
            .map_err(|_| "logging set-up unavailable".to_string())?;
        if cfg.audit.file != s.audit_file {
            self.writer
                .audit_to(cfg.audit.file.as_deref())
                .map_err(|e| match &cfg.audit.file {
                    Some(p) => format!("audit.file: {}: {e}", p.display()),
                    None => format!("audit.file: {e}"),
                })?;
            s.audit_file = cfg.audit.file.clone();
        }
        if cfg.audit.syslog != s.syslog || self.writer.syslog_tls_changed() {
            self.writer.syslog_to(&cfg.audit.syslog)?;
            s.syslog = cfg.audit.syslog.clone();
        }
        if cfg.logging.level != s.logging.level {
            if self.env_level {
                tracing::info!(level = %cfg.logging.level, "logging.level changed, but RUST_LOG decides the level");
            } else {
                let _ = self.filter.reload(EnvFilter::new(&cfg.logging.level));
            }
            s.logging.level = cfg.logging.level.clone();
        }
        if cfg.logging.format != s.logging.format {
            let _ = self
                .format
                .reload(format_layer(cfg.logging.format, &self.writer, self.ansi));
            self.audit.set_json(cfg.logging.format == LogFormat::Json);
            s.logging.format = cfg.logging.format;
        }
        Ok(())
    }
}

fn format_layer(format: LogFormat, writer: &LineWriter, ansi: bool) -> FormatLayer {
    match format {
        LogFormat::Text => Box::new(
            fmt::layer()
                .fmt_fields(mllp_proxy::logsafe::LogfmtFields)
                .with_ansi(ansi)
                .with_writer(writer.clone()),
        ),
        LogFormat::Json => Box::new(
            fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(writer.clone()),
        ),
    }
}

/// Logs go to stderr through a writer thread; `RUST_LOG` overrides `level`. Audit records are
/// written whatever the level, into the log or, with `audit_file`, into that file alone. A
/// `RUST_LOG` that cannot be what the user meant is reported, never silently obeyed: a bare
/// `warning` would log nothing else at all. An audit file that cannot be opened is an error:
/// the proxy does not run without the audit trail it was told to keep.
fn init_tracing(
    format: LogFormat,
    level: &str,
    audit_file: Option<&Path>,
) -> Result<Logging, String> {
    let mut logging = Logging {
        reopen: Reopen::default(),
        audit: AuditLog::default(),
        live: None,
        _guard: None,
    };
    let (filter, env_level) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => match EnvFilter::try_new(&v) {
            Ok(f) => {
                if let Some(word) = bare_non_level(&v) {
                    eprintln!(
                        "warning: RUST_LOG={v:?}: {word:?} is not a level (trace, debug, info, warn, error, off), so it selects a module of that name and little else will be logged"
                    );
                }
                (f, true)
            }
            Err(e) => {
                eprintln!("warning: ignoring RUST_LOG={v:?} ({e}); logging at level {level}");
                (EnvFilter::new(level), false)
            }
        },
        _ => (EnvFilter::new(level), false),
    };
    let (writer, guard) = match LineWriter::start(audit_file, logging.reopen.clone()) {
        Ok(w) => w,
        Err(e) => {
            return match audit_file {
                // Returned, not exited on: the caller reports it.
                Some(path) => Err(format!("audit.file {}: {e}", path.display())),
                None => {
                    eprintln!("warning: logging not initialised: {e}");
                    Ok(logging)
                }
            };
        }
    };
    logging._guard = Some(guard);
    logging.audit = AuditLog::new(writer.clone(), matches!(format, LogFormat::Json));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // The filter of the whole subscriber, not of its one layer: a per-layer filter adds
    // bookkeeping to every span and event (registry look-ups on each span enter and exit)
    // and buys nothing without a second layer to filter differently. Both sit behind reload
    // handles; an event that is written takes two uncontended read locks, and the events a
    // level filters out are skipped at their call site as before.
    let (filter, filter_handle) = reload::Layer::new(filter);
    let (layer, format_handle) = reload::Layer::new(format_layer(format, &writer, ansi));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
    if let Err(e) = installed {
        eprintln!("warning: logging not initialised: {e}");
    }
    logging.live = Some(Arc::new(LiveLogging {
        writer,
        audit: logging.audit.clone(),
        filter: filter_handle,
        format: format_handle,
        env_level,
        ansi,
        in_service: Mutex::new(InService {
            logging: LoggingConfig {
                format,
                level: level.to_string(),
            },
            audit_file: audit_file.map(Path::to_path_buf),
            syslog: Vec::new(),
        }),
    }));
    Ok(logging)
}

/// A directive that is a single plain word but no level (`warning`, `verbose`): almost always
/// a mistyped level rather than a module name.
fn bare_non_level(v: &str) -> Option<&str> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    v.split(',').map(str::trim).find(|d| {
        !d.is_empty()
            && d.bytes().all(|b| b.is_ascii_alphabetic())
            && !LEVELS.contains(&d.to_ascii_lowercase().as_str())
    })
}
