//! The configuration file exactly as written: serde structs that refuse unknown keys, and the
//! defaults of every optional key.

use serde::Deserialize;

use super::{Balance, FailureMode, LogFormat, RevocationConfig, ValidationMode};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) logging: RawLogging,
    #[serde(default)]
    pub(super) audit: RawAudit,
    #[serde(default)]
    pub(super) shutdown: RawShutdown,
    #[serde(default = "default_config_reload_interval")]
    pub(super) config_reload_interval: String,
    pub(super) routes: Vec<RawRoute>,
}

fn default_config_reload_interval() -> String {
    "30s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAudit {
    pub(super) messages: bool,
    pub(super) file: String,
    pub(super) syslog: Vec<RawSyslog>,
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            messages: true,
            file: String::new(),
            syslog: Vec::new(),
        }
    }
}

/// `audit.syslog[]`: one collector the audit trail is sent to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSyslog {
    pub(super) name: String,
    pub(super) address: String,
    #[serde(default = "RawSyslog::default_transport")]
    pub(super) transport: String,
    #[serde(default = "RawSyslog::default_format")]
    pub(super) format: String,
    #[serde(default = "RawSyslog::default_facility")]
    pub(super) facility: String,
    #[serde(default)]
    pub(super) severity: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub(super) hostname: String,
    #[serde(default = "RawSyslog::default_sd_id")]
    pub(super) sd_id: String,
    #[serde(default = "RawSyslog::default_queue_bytes")]
    pub(super) queue_bytes: u64,
    #[serde(default)]
    pub(super) max_message_bytes: u64,
    pub(super) tls: Option<RawUpstreamTls>,
    #[serde(default)]
    pub(super) atna_messages: bool,
}

impl RawSyslog {
    fn default_transport() -> String {
        "tls".into()
    }
    fn default_format() -> String {
        "rfc5424".into()
    }
    fn default_facility() -> String {
        "authpriv".into()
    }
    /// RFC 5612's documentation enterprise number: an organisation with its own PEN sets it.
    fn default_sd_id() -> String {
        "mllp-proxy@32473".into()
    }
    fn default_queue_bytes() -> u64 {
        8 << 20
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdmin {
    pub(super) listen: String,
    pub(super) health_listen: String,
    pub(super) ready_requires_upstream: bool,
    pub(super) max_connections: u32,
    pub(super) tls: RawAdminTls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdminTls {
    pub(super) certificate: String,
    pub(super) private_key: String,
    pub(super) client_ca: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLogging {
    pub(super) format: LogFormat,
    pub(super) level: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawShutdown {
    pub(super) delay: String,
    pub(super) drain_timeout: String,
}

/// `tcp_keepalive` of sender sessions (`limits`) or engine connections (`upstream`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawKeepalive {
    pub(super) time: String,
    pub(super) interval: String,
    pub(super) retries: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: String,
    pub(super) listen: String,
    #[serde(default)]
    pub(super) plaintext: bool,
    pub(super) tls: Option<RawTls>,
    #[serde(default)]
    pub(super) allowed_clients: Vec<RawClientMatcher>,
    pub(super) upstream: RawUpstream,
    #[serde(default)]
    pub(super) on_upstream_failure: FailureMode,
    #[serde(default)]
    pub(super) validation: RawValidation,
    #[serde(default)]
    pub(super) limits: RawLimits,
    pub(super) proxy_protocol: Option<RawProxyProtocol>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxyProtocol {
    pub(super) trusted: Vec<String>,
    #[serde(default = "default_header_timeout")]
    pub(super) header_timeout: String,
}

fn default_header_timeout() -> String {
    "3s".into()
}

/// Declares a raw TLS section (`tls`, `upstream.tls`) with its own keys plus the policy keys
/// both directions share, written once here. serde's `flatten` would say the same with a
/// struct, but it cannot be combined with `deny_unknown_fields`, and unknown keys must stay
/// errors.
macro_rules! raw_tls_section {
    ($(#[$meta:meta])* $name:ident { $($fields:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct $name {
            $($fields)*
            #[serde(default)]
            pub(super) crl: Vec<String>,
            #[serde(default = "RawTlsPolicy::default_min_version")]
            pub(super) min_version: String,
            #[serde(default = "RawTlsPolicy::default_reload_interval")]
            pub(super) reload_interval: String,
            #[serde(default)]
            pub(super) cipher_suites: Vec<String>,
            #[serde(default)]
            pub(super) groups: Vec<String>,
            #[serde(default)]
            pub(super) revocation: RevocationConfig,
        }

        impl $name {
            /// The shared policy keys, taken out for their one validation.
            pub(super) fn policy(&mut self) -> RawTlsPolicy {
                RawTlsPolicy {
                    crl: std::mem::take(&mut self.crl),
                    min_version: std::mem::take(&mut self.min_version),
                    reload_interval: std::mem::take(&mut self.reload_interval),
                    cipher_suites: std::mem::take(&mut self.cipher_suites),
                    groups: std::mem::take(&mut self.groups),
                    revocation: self.revocation,
                }
            }
        }
    };
}

/// The policy keys of both TLS sections, as written.
#[derive(Debug)]
pub(super) struct RawTlsPolicy {
    pub(super) crl: Vec<String>,
    pub(super) min_version: String,
    pub(super) reload_interval: String,
    pub(super) cipher_suites: Vec<String>,
    pub(super) groups: Vec<String>,
    pub(super) revocation: RevocationConfig,
}

raw_tls_section! {
    /// A listener's `tls`: our certificate, the senders' CAs, and the shared policy keys.
    RawTls {
        pub(super) certificate: String,
        pub(super) private_key: String,
        pub(super) client_ca: String,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClientMatcher {
    pub(super) cn: Option<String>,
    pub(super) dns: Option<String>,
    pub(super) uri: Option<String>,
    pub(super) email: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) targets: Vec<String>,
    #[serde(default = "RawUpstream::default_connect_timeout")]
    pub(super) connect_timeout: String,
    #[serde(default = "RawUpstream::default_ack_timeout")]
    pub(super) ack_timeout: String,
    #[serde(default)]
    pub(super) balance: Balance,
    #[serde(default)]
    pub(super) max_connections: u32,
    #[serde(default = "RawUpstream::default_queue_timeout")]
    pub(super) queue_timeout: String,
    #[serde(default = "RawUpstream::default_idle_timeout")]
    pub(super) idle_timeout: String,
    #[serde(default = "RawUpstream::default_health_check_interval")]
    pub(super) health_check_interval: DurationOrOff,
    #[serde(default)]
    pub(super) messages_per_connection: u32,
    #[serde(default)]
    pub(super) tcp_keepalive: RawKeepalive,
    pub(super) tls: Option<RawUpstreamTls>,
}

raw_tls_section! {
    /// `upstream.tls`: the partner's trust anchors and name, our client certificate, and the
    /// same policy keys as a listener's.
    RawUpstreamTls {
        pub(super) ca: String,
        #[serde(default)]
        pub(super) certificate: String,
        #[serde(default)]
        pub(super) private_key: String,
        #[serde(default)]
        pub(super) server_name: String,
        #[serde(default)]
        pub(super) allowed_servers: Vec<RawClientMatcher>,
    }
}

/// A duration that may be written `0` (off) as well as `10s`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum DurationOrOff {
    Text(String),
    Number(u64),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawValidation {
    pub(super) mode: ValidationMode,
    pub(super) max_message_bytes: u64,
    pub(super) message_types: Vec<String>,
    pub(super) versions: Vec<String>,
    pub(super) processing_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    pub(super) max_connections: u64,
    pub(super) handshake_timeout: String,
    pub(super) frame_timeout: String,
    pub(super) idle_timeout: String,
    pub(super) listen_backlog: u32,
    pub(super) max_connections_per_source: u32,
    pub(super) max_pending_handshakes: u32,
    pub(super) tcp_keepalive: RawKeepalive,
}

// The defaults, one place per section (docs/configuration.md lists the same values).

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9575".into(),
            health_listen: String::new(),
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
            delay: "0s".into(),
            drain_timeout: "30s".into(),
        }
    }
}

impl Default for RawKeepalive {
    /// The first probe after 60 s idle, the peer dropped 30 s later: well inside the idle
    /// timeouts of the balancers in front of senders (F5 300 s, AWS NLB 350 s) and of
    /// firewalls between the proxy and an engine, and cheap (a probe a minute per idle socket).
    fn default() -> Self {
        Self {
            time: "60s".into(),
            interval: "10s".into(),
            retries: 3,
        }
    }
}

// RawTls, RawUpstreamTls and RawUpstream have required keys, so no `Default`: their optional
// keys default one by one.
impl RawTlsPolicy {
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
            tcp_keepalive: RawKeepalive::default(),
        }
    }
}
