//! Configuration: YAML → raw serde structs (`deny_unknown_fields`) → a validated [`Config`].
//!
//! The public schema lives here; [`raw`] is the file as written (serde, defaults),
//! [`validate`] turns it into these types section by section, and [`locate`] finds a key's
//! line for error messages. Reloading is the same load and validation.
//!
//! This is the only module that knows the YAML crate. Everything downstream receives typed
//! values (socket addresses, durations, absolute paths), so a mistake in the file is reported
//! once, at start-up, with the key path that holds it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use locate::line_of;
use raw::RawConfig;

mod locate;
mod raw;
mod syslog;
#[cfg(test)]
mod tests;
mod validate;

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
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The admin HTTP server (metrics and probes).
    pub admin: AdminConfig,
    /// Log output format and default level.
    pub logging: LoggingConfig,
    /// The audit trail.
    pub audit: AuditConfig,
    /// How long a stop waits for in-flight exchanges.
    pub shutdown: ShutdownConfig,
    /// How often the file is re-read to see whether its content changed; zero: SIGHUP only.
    pub config_reload_interval: Duration,
    /// One listener per route, each forwarding to its own upstream.
    pub routes: Vec<RouteConfig>,
}

/// The audit trail: who sent which message when, and what became of it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    /// One record per message (sessions and refused handshakes are always recorded).
    pub messages: bool,
    /// Where records go: `None` into the log, else appended to this file.
    pub file: Option<PathBuf>,
    /// Collectors the records are also sent to, as syslog.
    pub syslog: Vec<SyslogConfig>,
}

/// One syslog collector of the audit trail (`audit.syslog[]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SyslogConfig {
    /// Its name: the `sink` label of its metrics, and its log lines.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// How records travel.
    pub transport: SyslogTransport,
    /// What a record looks like.
    pub format: SyslogFormat,
    /// The RFC 5424 facility (`authpriv` = 10).
    pub facility: u8,
    /// The severity of each event's records where it is not [`SyslogConfig::DEFAULT_SEVERITY`].
    pub severity: Vec<(String, u8)>,
    /// The HOSTNAME field; empty: the machine's host name.
    pub hostname: String,
    /// The structured data's SD-ID (`name@PEN`).
    pub sd_id: String,
    /// Records held while the collector is unreachable, in bytes; more are dropped and counted.
    pub queue_bytes: usize,
    /// The longest record sent; longer ones are cut (`udp`: one datagram).
    pub max_message_bytes: usize,
    /// The collector's TLS (transport `tls`): its CA and name, our certificate.
    pub tls: Option<UpstreamTlsConfig>,
    /// With `format: atna`, an Import message for every message record too.
    pub atna_messages: bool,
}

impl SyslogConfig {
    /// Severity of an event's record unless `severity` says otherwise: notice (5), and warning
    /// (4) for refused handshakes and retired partner connections.
    pub fn severity_of(&self, event: &str) -> u8 {
        match self.severity.iter().find(|(e, _)| e == event) {
            Some((_, s)) => *s,
            None if matches!(event, "handshake_refused" | "upstream_retired") => 4,
            None => 5,
        }
    }
}

/// How syslog records travel to a collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogTransport {
    /// RFC 5425: octet-counted frames over (mutual) TLS.
    Tls,
    /// RFC 6587: octet-counted frames over plain TCP.
    Tcp,
    /// RFC 5426: one record per datagram.
    Udp,
}

/// What a syslog record carries after the RFC 5424 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogFormat {
    /// The record's fields as structured data, and as logfmt text in MSG.
    Rfc5424,
    /// The record as one JSON object in MSG, and its fields as structured data.
    Json,
    /// IHE ATNA (ITI-20): a DICOM PS3.15 audit message in MSG, MSGID `IHE+RFC-3881`, for
    /// the records an ATNA event covers.
    Atna,
}

/// The admin HTTP server.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
    /// A second, plain HTTP listener serving only `/healthz` and `/readyz`: for kubelet
    /// probes and balancer health checks when `tls` asks scrapers for a client certificate.
    pub health_listen: Option<SocketAddr>,
    /// `/readyz` is 503 while a route has no target up.
    pub ready_requires_upstream: bool,
    /// Admin connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Serve the admin endpoints over TLS (mutual TLS with a client CA).
    pub tls: Option<AdminTlsConfig>,
}

/// TLS of the admin server.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminTlsConfig {
    /// PEM chain, leaf first.
    pub certificate: PathBuf,
    /// PEM private key of the leaf.
    pub private_key: PathBuf,
    /// PEM bundle of the CAs of scrapers' client certificates; `None`: no client certificate.
    pub client_ca: Option<PathBuf>,
}

/// Log output.
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq)]
pub struct ShutdownConfig {
    /// Lame duck: after SIGTERM/SIGINT, `/readyz` is 503 while the listeners keep accepting
    /// for this long, so balancers and endpoints stop sending before anything is refused.
    pub delay: Duration,
    /// Upper bound on the drain after the listeners close.
    pub drain_timeout: Duration,
}

/// TCP keepalive of a socket: a probe after `time` without traffic, then every `interval`;
/// `retries` unanswered probes drop the connection. Keeps balancers and firewalls from
/// dropping an idle flow silently, and frees the slot of a peer whose host vanished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub time: Duration,
    /// Between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub retries: u32,
}

impl Keepalive {
    /// Sets these options on `socket` (anything with a file descriptor: std or tokio).
    pub fn apply(&self, socket: impl std::os::fd::AsFd) -> std::io::Result<()> {
        let ka = socket2::TcpKeepalive::new()
            .with_time(self.time)
            .with_interval(self.interval)
            .with_retries(self.retries);
        socket2::SockRef::from(&socket).set_tcp_keepalive(&ka)
    }
}

/// One listening port, its TLS policy and the legacy engine behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Bounded metric label and log field; `[a-z0-9_-]+`.
    pub name: String,
    /// Where senders connect.
    pub listen: SocketAddr,
    /// Server certificate, client CA and revocation lists; `None` on a plain listener
    /// (`plaintext: true`, an egress route fed by a local engine).
    pub tls: Option<TlsConfig>,
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
    /// The route sits behind a TCP load balancer that sends a PROXY protocol header.
    pub proxy_protocol: Option<ProxyProtocolConfig>,
}

/// `routes[].proxy_protocol`: which sources must send a PROXY header, and how fast.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyProtocolConfig {
    /// Sources that must begin with a header; every other source is refused.
    pub trusted: Vec<Cidr>,
    /// A header not complete within this is refused.
    pub header_timeout: Duration,
}

impl ProxyProtocolConfig {
    /// Whether connections from `ip` come from a trusted balancer.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }
}

/// An address range (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDRESS/PREFIX` or a single address. An IPv4-mapped IPv6 range
    /// (`::ffff:10.0.0.0/104`, the form a `[::]` listener logs IPv4 peers in) is stored as the
    /// IPv4 range it names (`10.0.0.0/8`): peers are compared in their canonical form, and a
    /// mapped range kept as IPv6 would never match one, or, with a prefix over 32, would be
    /// compared at the wrong width.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr.trim().parse().map_err(|_| {
            format!("`{text}` is not an address range (write 10.0.0.0/8 or 2001:db8::/32)")
        })?;
        let max: u8 = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {max}"))?,
        };
        if let IpAddr::V6(v6) = network
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            // A mapped prefix below 96 reaches past the ::ffff:0:0/96 block into native IPv6
            // addresses: no IPv4 range means that.
            let Some(prefix) = prefix.checked_sub(96) else {
                return Err(format!(
                    "`{text}`: an IPv4-mapped range (::ffff:a.b.c.d) needs a prefix of 96 to 128; \
                     write the IPv4 range instead (e.g. 10.0.0.0/8)"
                ));
            };
            return Ok(Cidr {
                network: IpAddr::V4(v4),
                prefix,
            });
        }
        Ok(Cidr { network, prefix })
    }

    /// Whether `ip` is in the range (an IPv4 peer seen on an IPv6 socket counts as IPv4).
    /// No arithmetic here can overflow, whatever the range: the prefix is at most the
    /// family's width by construction, and the shifts are checked all the same.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, addr, width) = match (self.network, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                (u128::from(u32::from(n)), u128::from(u32::from(a)), 32u32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => (u128::from(n), u128::from(a), 128),
            _ => return false,
        };
        let Some(shift) = width.checked_sub(u32::from(self.prefix)) else {
            return false;
        };
        // A shift by the whole width (prefix 0) leaves nothing to compare: every address of
        // the family is in the range.
        net.checked_shr(shift).unwrap_or(0) == addr.checked_shr(shift).unwrap_or(0)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// TLS material of a route. Paths are absolute (resolved against the configuration file).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// PEM chain, leaf first.
    pub certificate: PathBuf,
    /// PEM private key of the leaf.
    pub private_key: PathBuf,
    /// PEM bundle of the CAs that issue sender certificates.
    pub client_ca: PathBuf,
    /// Versions, suites, groups, CRLs and their use, and the poll of the files.
    pub policy: TlsPolicy,
}

/// What a listener (`tls`) and a partner connection (`upstream.tls`) set alike: one struct, so
/// that a key added to one direction exists in the other.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsPolicy {
    /// Certificate revocation lists of the peer's CAs, PEM or DER.
    pub crl: Vec<PathBuf>,
    /// Lowest TLS version accepted or offered.
    pub min_version: TlsVersion,
    /// How often the files are compared with the material in service.
    pub reload_interval: Duration,
    /// rustls names of the cipher suites; empty: the provider's defaults.
    pub cipher_suites: Vec<String>,
    /// Key exchange groups (`secp256r1`, `X25519MLKEM768`, …); empty: the defaults.
    pub groups: Vec<String>,
    /// How the CRLs are applied to the peer's certificate.
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
#[derive(Debug, Clone, PartialEq)]
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
    /// Messages a pooled connection carries before it is closed; 0 = no limit.
    pub messages_per_connection: u64,
    /// TCP keepalive of engine connections; `None`: off.
    pub tcp_keepalive: Option<Keepalive>,
    /// (Mutual) TLS to the targets: a partner across a network (egress).
    pub tls: Option<UpstreamTlsConfig>,
}

/// `upstream.tls`: how the partner is verified and what we present to it.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTlsConfig {
    /// PEM bundle of the CAs that issue the partner's server certificate.
    pub ca: PathBuf,
    /// Our client certificate (PEM chain) and key, when the partner asks for one.
    pub client: Option<(PathBuf, PathBuf)>,
    /// SNI and the name verified; `None`: each target's host.
    pub server_name: Option<String>,
    /// Partner identities accepted after verification; empty accepts every verified one.
    pub allowed_servers: Vec<ClientMatcher>,
    /// Versions, suites, groups, CRLs and their use, and the poll of the files.
    pub policy: TlsPolicy,
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
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq)]
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
    /// TCP keepalive of sender connections; `None`: off.
    pub tcp_keepalive: Option<Keepalive>,
}

impl Config {
    /// Reads and validates the file at `path`; relative paths inside resolve against its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_text(path).map(|(config, _)| config)
    }

    /// [`Config::load`], with the file's content as it was read (what a reload compares).
    pub fn load_with_text(path: &Path) -> Result<(Self, String), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Self::from_file_text(path, &text)?;
        Ok((config, text))
    }

    /// Validates `text`, read from the file at `path`: errors name the file and the line.
    pub fn from_file_text(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        Self::from_yaml(text, &base).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.to_path_buf(),
                message,
            },
            ConfigError::Invalid { key, reason } => ConfigError::InFile {
                path: path.to_path_buf(),
                line: line_of(text, &key),
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
