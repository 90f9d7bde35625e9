//! Configuration: YAML → raw serde structs (`deny_unknown_fields`) → a validated [`Config`].
//!
//! This is the only module that knows the YAML crate. Everything downstream receives typed
//! values (socket addresses, durations, absolute paths), so a mistake in the file is reported
//! once, at start-up, with the key path that holds it.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where `run` and `check` look when neither `-c` nor `$MLLP_PROXY_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/mllp-proxy/mllp-proxy.yaml";

/// A configuration error: the key path that holds the mistake and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file itself could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The YAML did not parse or did not fit the schema (serde names the key path).
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    /// A value parsed but is not acceptable.
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
    /// An `Invalid` value found in a file: named with the file and, when it can be found, the
    /// line, as the YAML parser does for syntax errors.
    #[error("{path}: {key}: {reason}{}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    InFile {
        path: PathBuf,
        line: Option<usize>,
        key: String,
        reason: String,
    },
}

/// The validated configuration of one proxy process.
#[derive(Debug, Clone)]
pub struct Config {
    /// The admin HTTP server (metrics and probes).
    pub admin: AdminConfig,
    /// Log output format and default level.
    pub logging: LoggingConfig,
    /// The audit trail.
    pub audit: AuditConfig,
    /// How long a stop waits for in-flight exchanges.
    pub shutdown: ShutdownConfig,
    /// One listener per route, each forwarding to its own upstream.
    pub routes: Vec<RouteConfig>,
}

/// The audit trail: who sent which message when, and what became of it.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// One record per message (sessions and refused handshakes are always recorded).
    pub messages: bool,
    /// Where records go: `None` into the log, else appended to this file.
    pub file: Option<PathBuf>,
}

/// The admin HTTP server.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
    /// `/readyz` is 503 while a route has no target up.
    pub ready_requires_upstream: bool,
    /// Admin connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Serve the admin endpoints over TLS (mutual TLS with a client CA).
    pub tls: Option<AdminTlsConfig>,
}

/// TLS of the admin server.
#[derive(Debug, Clone)]
pub struct AdminTlsConfig {
    /// PEM chain, leaf first.
    pub certificate: PathBuf,
    /// PEM private key of the leaf.
    pub private_key: PathBuf,
    /// PEM bundle of the CAs of scrapers' client certificates; `None`: no client certificate.
    pub client_ca: Option<PathBuf>,
}

/// Log output.
#[derive(Debug, Clone)]
pub struct LoggingConfig {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// Default level (`trace`, `debug`, `info`, `warn` or `error`), overridden by `RUST_LOG`.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable single lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Shutdown behaviour.
#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    /// Upper bound on the drain after SIGTERM/SIGINT.
    pub drain_timeout: Duration,
}

/// One listening port, its TLS policy and the legacy engine behind it.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Bounded metric label and log field; `[a-z0-9_-]+`.
    pub name: String,
    /// Where senders connect (TLS).
    pub listen: SocketAddr,
    /// Server certificate, client CA and revocation lists.
    pub tls: TlsConfig,
    /// Identities admitted after verification; empty admits every verified certificate.
    pub allowed_clients: Vec<ClientMatcher>,
    /// The legacy engine.
    pub upstream: UpstreamConfig,
    /// What the sender sees when the engine fails.
    pub on_upstream_failure: FailureMode,
    /// Which messages are accepted for forwarding.
    pub validation: ValidationConfig,
    /// Bounds on connections and on how long a peer may hold one.
    pub limits: LimitsConfig,
}

/// TLS material of a route. Paths are absolute (resolved against the configuration file).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM chain, leaf first.
    pub certificate: PathBuf,
    /// PEM private key of the leaf.
    pub private_key: PathBuf,
    /// PEM bundle of the CAs that issue sender certificates.
    pub client_ca: PathBuf,
    /// Certificate revocation lists, PEM or DER.
    pub crl: Vec<PathBuf>,
    /// Lowest TLS version accepted.
    pub min_version: TlsVersion,
    /// How often the files are compared with the material in service.
    pub reload_interval: Duration,
    /// rustls names of the cipher suites offered; empty: the provider's defaults.
    pub cipher_suites: Vec<String>,
    /// Key exchange groups offered (`secp256r1`, `X25519MLKEM768`, …); empty: the defaults.
    pub groups: Vec<String>,
    /// How CRLs are applied.
    pub revocation: RevocationConfig,
}

/// How certificate revocation lists are applied to client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevocationConfig {
    /// Which certificates of the chain are checked.
    pub depth: RevocationDepth,
    /// A certificate whose issuer has no CRL configured.
    pub unknown_status: Policy,
    /// A CRL past its nextUpdate.
    pub expired_crl: Policy,
}

/// Which certificates revocation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationDepth {
    /// The sender's own certificate only.
    #[default]
    EndEntity,
    /// Every certificate of the chain below the root.
    Chain,
}

/// Admit or refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Admit.
    #[default]
    Allow,
    /// Refuse.
    Deny,
}

/// Lowest accepted TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// One entry of `allowed_clients`; a client is admitted when any entry matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMatcher {
    /// Subject common name, exact.
    Cn(String),
    /// DNS SAN, exact or `*.` for exactly one leading label.
    Dns(String),
    /// URI SAN, exact (SPIFFE IDs).
    Uri(String),
    /// e-mail SAN, exact (case-insensitive).
    Email(String),
}

/// The legacy engine targets of a route.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The engine's addresses, in order of preference.
    pub targets: Vec<String>,
    /// Bound on one TCP connect.
    pub connect_timeout: Duration,
    /// Bound on waiting for the engine's ACK after forwarding.
    pub ack_timeout: Duration,
    /// How a new connection picks among healthy targets.
    pub balance: Balance,
    /// Pooled connections shared by all sessions of the route; 0 = no limit.
    pub max_connections: usize,
    /// Longest wait for a pooled connection before the exchange fails (kind `queue`).
    pub queue_timeout: Duration,
    /// An idle pooled connection is closed after this.
    pub idle_timeout: Duration,
    /// Interval of the TCP probe of targets the pool holds no connection to; `None` = off.
    pub health_check_interval: Option<Duration>,
}

/// How a new upstream connection picks its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// The first healthy target in configuration order (primary/standby).
    #[default]
    Failover,
    /// Healthy targets in turn.
    RoundRobin,
}

/// Behaviour when the engine cannot be reached or answers wrongly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Close the sender's connection without an ACK, so it resends.
    #[default]
    Close,
    /// Answer AR (CR in enhanced mode) and keep the connection.
    Nak,
}

impl FailureMode {
    /// The word of the configuration file.
    pub fn word(self) -> &'static str {
        match self {
            FailureMode::Close => "close",
            FailureMode::Nak => "nak",
        }
    }

    /// Parses the word of the configuration file (for command-line flags).
    pub fn parse(word: &str) -> Result<Self, String> {
        [FailureMode::Close, FailureMode::Nak]
            .into_iter()
            .find(|m| m.word() == word)
            .ok_or_else(|| format!("{word:?}: expected close or nak"))
    }
}

/// Validation policy of a route.
#[derive(Debug, Clone)]
pub struct ValidationConfig {
    /// How much of HL7 is checked.
    pub mode: ValidationMode,
    /// Largest message accepted, excluding framing bytes.
    pub max_message_bytes: usize,
    /// Allowed `MSH-9` types (`ADT^A01`, `ORU^*`); empty allows all.
    pub message_types: Vec<String>,
    /// Allowed `MSH-12` versions; empty allows all.
    pub versions: Vec<String>,
    /// Allowed `MSH-11` processing IDs; empty allows all.
    pub processing_ids: Vec<String>,
}

/// How much of HL7 is checked before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValidationMode {
    /// Full header and segment checks.
    Strict,
    /// Strict, but `\n`/`\r\n` terminators are accepted and normalised.
    Lenient,
    /// Framing and size only.
    Off,
}

/// Per-route bounds.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Open connections at once; excess ones are closed right after accept.
    pub max_connections: usize,
    /// Bound on the TLS handshake.
    pub handshake_timeout: Duration,
    /// A started frame must end within this.
    pub frame_timeout: Duration,
    /// A connection with no frame in progress is closed after this.
    pub idle_timeout: Duration,
    /// The kernel's accept queue for the listener (capped by net.core.somaxconn).
    pub listen_backlog: u32,
    /// Sessions and handshakes from one IP address at once; 0 = no limit.
    pub max_connections_per_source: usize,
    /// Connections still in the TLS handshake, all sources; 0 = no limit.
    pub max_pending_handshakes: usize,
}

impl Config {
    /// Reads and validates the file at `path`; relative paths inside resolve against its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        Self::from_yaml(&text, &base).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.to_path_buf(),
                message,
            },
            ConfigError::Invalid { key, reason } => ConfigError::InFile {
                path: path.to_path_buf(),
                line: line_of(&text, &key),
                key,
                reason,
            },
            other => other,
        })
    }

    /// Parses and validates YAML text; `base_dir` anchors relative file paths.
    pub fn from_yaml(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        raw.validate(base_dir)
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        })
    }
}

impl fmt::Display for ClientMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientMatcher::Cn(v) => write!(f, "cn={v}"),
            ClientMatcher::Dns(v) => write!(f, "dns={v}"),
            ClientMatcher::Uri(v) => write!(f, "uri={v}"),
            ClientMatcher::Email(v) => write!(f, "email={v}"),
        }
    }
}

/// Parses `500ms`, `30s`, `15m`, `1h` (an integer and a unit; no unit is an error).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit (write 500ms, 30s, 15m or 1h)"))?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (write 500ms, 30s, 15m or 1h)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit `{unit}` (ms, s, m or h)"
            ));
        }
    };
    Ok(d)
}

// ---------------------------------------------------------------------------------------------
// Raw serde structs: the file exactly as written, before validation.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    logging: RawLogging,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    shutdown: RawShutdown,
    routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAudit {
    messages: bool,
    file: String,
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            messages: true,
            file: String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: String,
    ready_requires_upstream: bool,
    max_connections: u32,
    tls: RawAdminTls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdminTls {
    certificate: String,
    private_key: String,
    client_ca: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLogging {
    format: LogFormat,
    level: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawShutdown {
    drain_timeout: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    listen: String,
    tls: RawTls,
    #[serde(default)]
    allowed_clients: Vec<RawClientMatcher>,
    upstream: RawUpstream,
    #[serde(default)]
    on_upstream_failure: FailureMode,
    #[serde(default)]
    validation: RawValidation,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificate: String,
    private_key: String,
    client_ca: String,
    #[serde(default)]
    crl: Vec<String>,
    #[serde(default = "RawTls::default_min_version")]
    min_version: String,
    #[serde(default = "RawTls::default_reload_interval")]
    reload_interval: String,
    #[serde(default)]
    cipher_suites: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    revocation: RevocationConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientMatcher {
    cn: Option<String>,
    dns: Option<String>,
    uri: Option<String>,
    email: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    targets: Vec<String>,
    #[serde(default = "RawUpstream::default_connect_timeout")]
    connect_timeout: String,
    #[serde(default = "RawUpstream::default_ack_timeout")]
    ack_timeout: String,
    #[serde(default)]
    balance: Balance,
    #[serde(default)]
    max_connections: u32,
    #[serde(default = "RawUpstream::default_queue_timeout")]
    queue_timeout: String,
    #[serde(default = "RawUpstream::default_idle_timeout")]
    idle_timeout: String,
    #[serde(default = "RawUpstream::default_health_check_interval")]
    health_check_interval: DurationOrOff,
}

/// A duration that may be written `0` (off) as well as `10s`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DurationOrOff {
    Text(String),
    Number(u64),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawValidation {
    mode: ValidationMode,
    max_message_bytes: u64,
    message_types: Vec<String>,
    versions: Vec<String>,
    processing_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_connections: u64,
    handshake_timeout: String,
    frame_timeout: String,
    idle_timeout: String,
    listen_backlog: u32,
    max_connections_per_source: u32,
    max_pending_handshakes: u32,
}

// The defaults, one place per section (docs/configuration.md lists the same values).

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9575".into(),
            ready_requires_upstream: false,
            max_connections: 64,
            tls: RawAdminTls::default(),
        }
    }
}

impl Default for RawLogging {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Default for RawShutdown {
    fn default() -> Self {
        Self {
            drain_timeout: "30s".into(),
        }
    }
}

// RawTls and RawUpstream have required keys, so no `Default`: their optional keys default
// one by one.
impl RawTls {
    fn default_min_version() -> String {
        "1.2".into()
    }
    fn default_reload_interval() -> String {
        "30s".into()
    }
}

impl RawUpstream {
    fn default_connect_timeout() -> String {
        "5s".into()
    }
    fn default_ack_timeout() -> String {
        "30s".into()
    }
    fn default_queue_timeout() -> String {
        "30s".into()
    }
    fn default_idle_timeout() -> String {
        "60s".into()
    }
    fn default_health_check_interval() -> DurationOrOff {
        DurationOrOff::Text("10s".into())
    }
}

impl Default for RawValidation {
    fn default() -> Self {
        Self {
            mode: ValidationMode::Strict,
            max_message_bytes: 1_048_576,
            message_types: Vec::new(),
            versions: Vec::new(),
            processing_ids: Vec::new(),
        }
    }
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake_timeout: "10s".into(),
            frame_timeout: "60s".into(),
            idle_timeout: "15m".into(),
            listen_backlog: 1024,
            max_connections_per_source: 64,
            max_pending_handshakes: 256,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation: raw → typed, naming the key path on every error.

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Parses a listen address. `${NAME}` is replaced by the environment variable NAME, so a
/// Kubernetes pod can listen on its own IP (`"${POD_IP}:2575"`) while the engine in the same
/// pod holds `127.0.0.1:2575`.
fn addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    let expanded = expand_env(key, text)?;
    expanded.parse().map_err(|_| {
        let shown = if expanded == text {
            format!("`{text}`")
        } else {
            format!("`{text}` (`{expanded}`)")
        };
        invalid(key, format!("{shown} is not an IP:port address"))
    })
}

fn expand_env(key: &str, text: &str) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| invalid(key, format!("`{text}`: unclosed ${{")))?;
        let name = &after[..end];
        let value = std::env::var(name).map_err(|_| {
            invalid(
                key,
                format!("environment variable {name} (used in `{text}`) is not set"),
            )
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let d = parse_duration(text).map_err(|reason| invalid(key, reason))?;
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

fn file(key: &str, text: &str, base: &Path) -> Result<PathBuf, ConfigError> {
    if text.trim().is_empty() {
        return Err(invalid(key, "must name a file"));
    }
    let p = Path::new(text);
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    })
}

/// The 1-based line holding `key` (`routes[0].upstream.targets[1]`) in YAML `text`, for error
/// messages. A best effort over block and flow style: `None` rather than a wrong line.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let blank = |l: &str| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    };
    // The line found so far, and the indentation its children must exceed.
    let (mut at, mut scope): (Option<usize>, Option<usize>) = (None, None);
    for part in key.split('.') {
        let (name, indices) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        let start = at.unwrap_or(0);
        let found = (start..lines.len()).find(|&i| {
            let l = lines[i];
            let body = l.trim_start().trim_start_matches("- ");
            let here = body.starts_with(&format!("{name}:"))
                || l.contains(&format!("{{{name}:"))
                || l.contains(&format!(" {name}:"));
            here && (i == start || scope.is_none_or(|s| indent(l) > s || l.contains('{')))
        })?;
        if let Some(s) = scope {
            // Leaving the parent's block on the way means the key is not under it.
            let left = (start + 1..found).any(|i| !blank(lines[i]) && indent(lines[i]) <= s);
            if left {
                return None;
            }
        }
        at = Some(found);
        scope = Some(indent(lines[found]));
        for index in indices
            .split(']')
            .filter_map(|x| x.strip_prefix('['))
            .map(|x| x.parse::<usize>().ok())
        {
            let index = index?;
            let line = at?;
            if lines[line].contains('[') {
                // A flow list: every item is on this line.
                break;
            }
            let items: Vec<usize> = (line + 1..lines.len())
                .take_while(|&i| {
                    blank(lines[i])
                        || indent(lines[i]) > indent(lines[line])
                        || lines[i].trim_start().starts_with("- ")
                })
                .filter(|&i| lines[i].trim_start().starts_with("- "))
                .collect();
            let item_indent = indent(lines[*items.first()?]);
            let item = *items
                .iter()
                .filter(|&&i| indent(lines[i]) == item_indent)
                .nth(index)?;
            at = Some(item);
            scope = Some(item_indent);
        }
    }
    at.map(|i| i + 1)
}

/// A level name as tracing spells it. An unknown level would filter out every line, warnings
/// included, so it is an error; `warning` is what many operators type, and means `warn`.
fn log_level(text: &str) -> Result<String, ConfigError> {
    let level = text.trim().to_ascii_lowercase();
    match level.as_str() {
        "trace" | "debug" | "info" | "warn" | "error" => Ok(level),
        "warning" => Ok("warn".into()),
        _ => Err(invalid(
            "logging.level",
            format!("unknown level {text:?}: use trace, debug, info, warn or error"),
        )),
    }
}

impl RawConfig {
    fn validate(self, base: &Path) -> Result<Config, ConfigError> {
        let admin = AdminConfig {
            listen: addr("admin.listen", &self.admin.listen)?,
            ready_requires_upstream: self.admin.ready_requires_upstream,
            max_connections: match self.admin.max_connections {
                0 => return Err(invalid("admin.max_connections", "must be at least 1")),
                n => n as usize,
            },
            tls: self.admin.tls.validate(base)?,
        };
        let logging = LoggingConfig {
            format: self.logging.format,
            level: log_level(&self.logging.level)?,
        };
        let shutdown = ShutdownConfig {
            drain_timeout: duration("shutdown.drain_timeout", &self.shutdown.drain_timeout)?,
        };
        if self.routes.is_empty() {
            return Err(invalid("routes", "at least one route is required"));
        }
        let mut names = HashSet::new();
        let mut listens = HashSet::new();
        let mut routes = Vec::with_capacity(self.routes.len());
        for (i, raw) in self.routes.into_iter().enumerate() {
            let route = raw.validate(&format!("routes[{i}]"), base)?;
            if !names.insert(route.name.clone()) {
                return Err(invalid(
                    format!("routes[{i}].name"),
                    format!("`{}` is used by another route", route.name),
                ));
            }
            if route.listen.port() != 0 && !listens.insert(route.listen) {
                return Err(invalid(
                    format!("routes[{i}].listen"),
                    format!("{} is used by another route", route.listen),
                ));
            }
            routes.push(route);
        }
        let audit = AuditConfig {
            messages: self.audit.messages,
            file: match self.audit.file.trim() {
                "" => None,
                f => Some(file("audit.file", f, base)?),
            },
        };
        Ok(Config {
            admin,
            logging,
            audit,
            shutdown,
            routes,
        })
    }
}

impl RawAdminTls {
    fn validate(self, base: &Path) -> Result<Option<AdminTlsConfig>, ConfigError> {
        let (cert, key) = (self.certificate.trim(), self.private_key.trim());
        if cert.is_empty() && key.is_empty() && self.client_ca.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(AdminTlsConfig {
            certificate: file("admin.tls.certificate", cert, base)?,
            private_key: file("admin.tls.private_key", key, base)?,
            client_ca: match self.client_ca.trim() {
                "" => None,
                ca => Some(file("admin.tls.client_ca", ca, base)?),
            },
        }))
    }
}

impl RawRoute {
    fn validate(self, k: &str, base: &Path) -> Result<RouteConfig, ConfigError> {
        let valid_name = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(invalid(
                format!("{k}.name"),
                format!("`{}` must match [a-z0-9_-]+", self.name),
            ));
        }
        let mut allowed_clients = Vec::with_capacity(self.allowed_clients.len());
        for (j, m) in self.allowed_clients.into_iter().enumerate() {
            allowed_clients.push(m.validate(&format!("{k}.allowed_clients[{j}]"))?);
        }
        Ok(RouteConfig {
            name: self.name,
            listen: addr(&format!("{k}.listen"), &self.listen)?,
            tls: self.tls.validate(&format!("{k}.tls"), base)?,
            allowed_clients,
            upstream: self.upstream.validate(&format!("{k}.upstream"))?,
            on_upstream_failure: self.on_upstream_failure,
            validation: self.validation.validate(&format!("{k}.validation"))?,
            limits: self.limits.validate(&format!("{k}.limits"))?,
        })
    }
}

impl RawTls {
    fn validate(self, k: &str, base: &Path) -> Result<TlsConfig, ConfigError> {
        let min_version = match self.min_version.as_str() {
            "1.2" => TlsVersion::Tls12,
            "1.3" => TlsVersion::Tls13,
            other => {
                return Err(invalid(
                    format!("{k}.min_version"),
                    format!("`{other}` is not supported (1.2 or 1.3)"),
                ));
            }
        };
        let mut crl = Vec::with_capacity(self.crl.len());
        for (j, c) in self.crl.iter().enumerate() {
            crl.push(file(&format!("{k}.crl[{j}]"), c, base)?);
        }
        Ok(TlsConfig {
            certificate: file(&format!("{k}.certificate"), &self.certificate, base)?,
            private_key: file(&format!("{k}.private_key"), &self.private_key, base)?,
            client_ca: file(&format!("{k}.client_ca"), &self.client_ca, base)?,
            crl,
            min_version,
            reload_interval: duration(&format!("{k}.reload_interval"), &self.reload_interval)?,
            cipher_suites: self.cipher_suites,
            groups: self.groups,
            revocation: self.revocation,
        })
    }
}

impl RawUpstream {
    fn validate(self, k: &str) -> Result<UpstreamConfig, ConfigError> {
        if self.targets.is_empty() {
            return Err(invalid(
                format!("{k}.targets"),
                "at least one host:port is required",
            ));
        }
        for (j, target) in self.targets.iter().enumerate() {
            let ok = target
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(invalid(
                    format!("{k}.targets[{j}]"),
                    format!("`{target}` is not host:port"),
                ));
            }
        }
        let key = format!("{k}.health_check_interval");
        let health_check_interval = match &self.health_check_interval {
            DurationOrOff::Number(0) => None,
            DurationOrOff::Number(n) => {
                return Err(invalid(
                    key,
                    format!("`{n}` needs a unit (e.g. {n}s), or 0 for off"),
                ));
            }
            DurationOrOff::Text(t) if t.trim() == "0" => None,
            DurationOrOff::Text(t) => {
                Some(parse_duration(t).map_err(|reason| invalid(&key, reason))?)
                    .filter(|d| !d.is_zero())
            }
        };
        Ok(UpstreamConfig {
            targets: self.targets,
            connect_timeout: duration(&format!("{k}.connect_timeout"), &self.connect_timeout)?,
            ack_timeout: duration(&format!("{k}.ack_timeout"), &self.ack_timeout)?,
            balance: self.balance,
            max_connections: self.max_connections as usize,
            queue_timeout: duration(&format!("{k}.queue_timeout"), &self.queue_timeout)?,
            idle_timeout: duration(&format!("{k}.idle_timeout"), &self.idle_timeout)?,
            health_check_interval,
        })
    }
}

impl RawValidation {
    fn validate(self, k: &str) -> Result<ValidationConfig, ConfigError> {
        // Below a few hundred bytes not even an MSH fits; above 64 MiB one sender could pin
        // that much memory per connection.
        if !(256..=64 * 1024 * 1024).contains(&self.max_message_bytes) {
            return Err(invalid(
                format!("{k}.max_message_bytes"),
                "must be between 256 and 67108864",
            ));
        }
        for (j, t) in self.message_types.iter().enumerate() {
            let ok = !t.is_empty()
                && t.split('^').count() <= 2
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'^' || b == b'*');
            if !ok {
                return Err(invalid(
                    format!("{k}.message_types[{j}]"),
                    format!("`{t}` is not TYPE, TYPE^EVENT or TYPE^*"),
                ));
            }
        }
        Ok(ValidationConfig {
            mode: self.mode,
            max_message_bytes: usize::try_from(self.max_message_bytes).unwrap_or(usize::MAX),
            message_types: self.message_types,
            versions: self.versions,
            processing_ids: self.processing_ids,
        })
    }
}

impl RawLimits {
    fn validate(self, k: &str) -> Result<LimitsConfig, ConfigError> {
        if self.max_connections == 0 || self.max_connections > 1_000_000 {
            return Err(invalid(
                format!("{k}.max_connections"),
                "must be between 1 and 1000000",
            ));
        }
        let limits = LimitsConfig {
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            handshake_timeout: duration(
                &format!("{k}.handshake_timeout"),
                &self.handshake_timeout,
            )?,
            frame_timeout: duration(&format!("{k}.frame_timeout"), &self.frame_timeout)?,
            idle_timeout: duration(&format!("{k}.idle_timeout"), &self.idle_timeout)?,
            listen_backlog: self.listen_backlog,
            max_connections_per_source: self.max_connections_per_source as usize,
            max_pending_handshakes: self.max_pending_handshakes as usize,
        };
        if !(1..=65_535).contains(&limits.listen_backlog) {
            return Err(invalid(
                format!("{k}.listen_backlog"),
                "must be between 1 and 65535",
            ));
        }
        Ok(limits)
    }
}

impl RawClientMatcher {
    fn validate(self, k: &str) -> Result<ClientMatcher, ConfigError> {
        let mut set = Vec::new();
        if let Some(v) = self.cn {
            set.push(ClientMatcher::Cn(v));
        }
        if let Some(v) = self.dns {
            set.push(ClientMatcher::Dns(v.to_ascii_lowercase()));
        }
        if let Some(v) = self.uri {
            set.push(ClientMatcher::Uri(v));
        }
        if let Some(v) = self.email {
            set.push(ClientMatcher::Email(v));
        }
        if set.len() != 1 {
            return Err(invalid(
                k,
                "each entry takes exactly one of cn, dns, uri, email",
            ));
        }
        let m = set.remove(0);
        let value = match &m {
            ClientMatcher::Cn(v)
            | ClientMatcher::Dns(v)
            | ClientMatcher::Uri(v)
            | ClientMatcher::Email(v) => v,
        };
        if value.is_empty() {
            return Err(invalid(k, "the value must not be empty"));
        }
        if let ClientMatcher::Dns(v) = &m {
            let wildcard_ok = match v.strip_prefix("*.") {
                Some(rest) => !rest.is_empty() && !rest.contains('*'),
                None => !v.contains('*'),
            };
            if !wildcard_ok {
                return Err(invalid(
                    k,
                    format!("`{v}`: a wildcard is allowed only as a leading `*.`"),
                ));
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
routes:
  - name: lab
    listen: "127.0.0.1:2575"
    tls:
      certificate: tls/server.crt
      private_key: tls/server.key
      client_ca: tls/ca.crt
    upstream:
      targets: ["127.0.0.1:3575"]
"#;

    fn err(yaml: &str) -> String {
        match Config::from_yaml(yaml, Path::new("/etc/mllp")) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn minimal_file_gets_documented_defaults() {
        let c = Config::from_yaml(MINIMAL, Path::new("/etc/mllp")).unwrap();
        assert_eq!(c.admin.listen, "127.0.0.1:9575".parse().unwrap());
        assert_eq!(c.shutdown.drain_timeout, Duration::from_secs(30));
        let r = &c.routes[0];
        assert_eq!(r.tls.certificate, PathBuf::from("/etc/mllp/tls/server.crt"));
        assert_eq!(r.tls.min_version, TlsVersion::Tls12);
        assert_eq!(r.on_upstream_failure, FailureMode::Close);
        assert_eq!(r.validation.mode, ValidationMode::Strict);
        assert_eq!(r.validation.max_message_bytes, 1_048_576);
        assert_eq!(r.limits.max_connections, 1024);
        assert_eq!(r.limits.listen_backlog, 1024);
        assert_eq!(r.limits.max_connections_per_source, 64);
        assert_eq!(r.limits.max_pending_handshakes, 256);
        assert_eq!(c.logging.level, "info");
        let u = &r.upstream;
        assert_eq!(u.balance, Balance::Failover);
        assert_eq!(u.max_connections, 0);
        assert_eq!(u.queue_timeout, Duration::from_secs(30));
        assert_eq!(u.idle_timeout, Duration::from_secs(60));
        assert_eq!(u.health_check_interval, Some(Duration::from_secs(10)));
        assert!(!c.admin.ready_requires_upstream);
        assert!(c.audit.messages && c.audit.file.is_none());
        assert_eq!(c.admin.max_connections, 64);
        assert!(c.admin.tls.is_none());
        for off in ["0", "\"0\"", "0s"] {
            let yaml = MINIMAL.replace(
                "targets: [\"127.0.0.1:3575\"]",
                &format!("targets: [\"127.0.0.1:3575\"]\n      health_check_interval: {off}\n      balance: round_robin"),
            );
            let c = Config::from_yaml(&yaml, Path::new("/etc/mllp")).unwrap();
            assert_eq!(c.routes[0].upstream.health_check_interval, None, "{off}");
            assert_eq!(c.routes[0].upstream.balance, Balance::RoundRobin);
        }
        let warning = MINIMAL.replace("routes:", "logging: { level: WARNING }\nroutes:");
        let c = Config::from_yaml(&warning, Path::new("/etc/mllp")).unwrap();
        assert_eq!(c.logging.level, "warn");
        assert_eq!(r.limits.idle_timeout, Duration::from_secs(900));
        assert_eq!(r.upstream.ack_timeout, Duration::from_secs(30));
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let yaml = MINIMAL.replace(
            "client_ca: tls/ca.crt",
            "client_ca: tls/ca.crt\n      cliant: x",
        );
        let e = err(&yaml);
        assert!(e.contains("routes[0].tls"), "{e}");
        assert!(e.contains("cliant"), "{e}");
    }

    #[test]
    fn semantic_errors_are_located_in_the_file() {
        let text = "admin:\n  listen: \"127.0.0.1:9575\"\nroutes:\n  - name: lab\n    listen: \"127.0.0.1:2575\"\n    tls: { certificate: c, private_key: k }\n    upstream:\n      targets:\n        - \"127.0.0.1:1\"\n        - engine\n  - name: adt\n    upstream:\n      targets: [\"a:1\", \"b\"]\n      ack_timeout: 30\n";
        assert_eq!(line_of(text, "admin.listen"), Some(2));
        assert_eq!(line_of(text, "routes[0].name"), Some(4));
        assert_eq!(line_of(text, "routes[0].tls.private_key"), Some(6));
        assert_eq!(line_of(text, "routes[0].upstream.targets[1]"), Some(10));
        assert_eq!(line_of(text, "routes[1].upstream.targets[1]"), Some(13));
        assert_eq!(line_of(text, "routes[1].upstream.ack_timeout"), Some(14));
        // Not under route 0: no line rather than route 1's.
        assert_eq!(line_of(text, "routes[0].upstream.ack_timeout"), None);
        assert_eq!(line_of(text, "routes[2].name"), None);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.yaml");
        std::fs::write(&path, MINIMAL.replace("\"127.0.0.1:3575\"", "\"engine\"")).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        let head = format!("{}: routes[0].upstream.targets[0]: ", path.display());
        assert!(e.starts_with(&head) && e.ends_with(" (line 10)"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                "listen: \"127.0.0.1:2575\"",
                "listen: \"nowhere\"",
                "routes[0].listen",
            ),
            ("name: lab", "name: Lab Results", "routes[0].name"),
            (
                "targets: [\"127.0.0.1:3575\"]",
                "targets: [\"127.0.0.1:3575\"]\n      ack_timeout: 30",
                "routes[0].upstream.ack_timeout",
            ),
            (
                "targets: [\"127.0.0.1:3575\"]",
                "targets: [\"engine\"]",
                "routes[0].upstream.targets[0]",
            ),
            (
                "targets: [\"127.0.0.1:3575\"]",
                "targets: []",
                "routes[0].upstream.targets",
            ),
            (
                "targets: [\"127.0.0.1:3575\"]",
                "targets: [\"127.0.0.1:3575\"]\n    limits: { listen_backlog: 0 }",
                "routes[0].limits.listen_backlog",
            ),
            (
                "routes:",
                "logging: { level: verbose }\nroutes:",
                "logging.level",
            ),
        ];
        for (from, to, key) in cases {
            let e = err(&MINIMAL.replace(from, to));
            assert!(e.starts_with(key), "{key}: {e}");
        }
    }

    #[test]
    fn allow_list_entries_take_one_kind() {
        let yaml = MINIMAL.replace(
            "    upstream:",
            "    allowed_clients:\n      - dns: \"*.lab.example.org\"\n      - uri: spiffe://h/lab\n      - cn: x\n        dns: y\n    upstream:",
        );
        let e = err(&yaml);
        assert!(e.starts_with("routes[0].allowed_clients[2]"), "{e}");
    }

    #[test]
    fn listen_addresses_expand_environment_variables() {
        // PATH is set in every test environment; an address made from it is not an address.
        let e = addr("routes[0].listen", "${PATH}:2575")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("routes[0].listen: `${PATH}:2575` (`"), "{e}");
        let e = addr("admin.listen", "${MLLP_PROXY_SURELY_UNSET_VAR}:1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("MLLP_PROXY_SURELY_UNSET_VAR"), "{e}");
        assert_eq!(
            expand_env("k", "a${PATH}b").unwrap(),
            format!("a{}b", std::env::var("PATH").unwrap())
        );
        assert!(expand_env("k", "${OPEN").is_err());
        assert_eq!(addr("k", "127.0.0.1:2575").unwrap().port(), 2575);
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
