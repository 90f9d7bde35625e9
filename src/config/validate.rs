//! Validation: the raw file → the typed [`Config`], section by section, naming the key path
//! on every error.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::*;
use super::*;

pub(super) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Parses a listen address. `${NAME}` is replaced by the environment variable NAME, so a
/// Kubernetes pod can listen on its own IP (`"${POD_IP}:2575"`) while the engine in the same
/// pod holds `127.0.0.1:2575`.
pub(super) fn addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
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

pub(super) fn expand_env(key: &str, text: &str) -> Result<String, ConfigError> {
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

pub(super) fn file(key: &str, text: &str, base: &Path) -> Result<PathBuf, ConfigError> {
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
    pub(super) fn validate(self, base: &Path) -> Result<Config, ConfigError> {
        let admin = AdminConfig {
            listen: addr("admin.listen", &self.admin.listen)?,
            health_listen: match self.admin.health_listen.trim() {
                "" => None,
                text => Some(addr("admin.health_listen", text)?),
            },
            ready_requires_upstream: self.admin.ready_requires_upstream,
            max_connections: match self.admin.max_connections {
                0 => return Err(invalid("admin.max_connections", "must be at least 1")),
                n => n as usize,
            },
            tls: self.admin.tls.validate(base)?,
        };
        if admin
            .health_listen
            .is_some_and(|h| h == admin.listen && h.port() != 0)
        {
            return Err(invalid(
                "admin.health_listen",
                "must differ from admin.listen (it serves /healthz and /readyz on a port of its own)",
            ));
        }
        let logging = LoggingConfig {
            format: self.logging.format,
            level: log_level(&self.logging.level)?,
        };
        let shutdown = ShutdownConfig {
            delay: parse_duration(&self.shutdown.delay)
                .map_err(|reason| invalid("shutdown.delay", reason))?,
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
        let syslog = super::syslog::collectors(self.audit.syslog, base)?;
        let audit = AuditConfig {
            messages: self.audit.messages,
            file: match self.audit.file.trim() {
                "" => None,
                f => Some(file("audit.file", f, base)?),
            },
            syslog,
        };
        // 0 (with or without a unit) turns polling off: SIGHUP only.
        let key = "config_reload_interval";
        let config_reload_interval = match self.config_reload_interval.trim() {
            "0" => Duration::ZERO,
            text => parse_duration(text).map_err(|reason| invalid(key, reason))?,
        };
        Ok(Config {
            admin,
            logging,
            audit,
            shutdown,
            config_reload_interval,
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
        let allowed_clients = matchers(&format!("{k}.allowed_clients"), self.allowed_clients)?;
        let tls = match (self.plaintext, self.tls) {
            (false, Some(tls)) => Some(tls.validate(&format!("{k}.tls"), base)?),
            (true, None) => None,
            (false, None) => {
                return Err(invalid(
                    format!("{k}.tls"),
                    "required: the listener's certificate and client CA (or `plaintext: true` for a plain MLLP listener fed by a local engine, an egress route)",
                ));
            }
            (true, Some(_)) => {
                return Err(invalid(
                    format!("{k}.plaintext"),
                    "`plaintext: true` and a `tls` section exclude each other",
                ));
            }
        };
        if tls.is_none() && !allowed_clients.is_empty() {
            return Err(invalid(
                format!("{k}.allowed_clients"),
                "a plain listener has no client certificates to match",
            ));
        }
        Ok(RouteConfig {
            name: self.name,
            listen: addr(&format!("{k}.listen"), &self.listen)?,
            tls,
            allowed_clients,
            upstream: self.upstream.validate(&format!("{k}.upstream"), base)?,
            on_upstream_failure: self.on_upstream_failure,
            validation: self.validation.validate(&format!("{k}.validation"))?,
            limits: self.limits.validate(&format!("{k}.limits"))?,
            proxy_protocol: self
                .proxy_protocol
                .map(|p| p.validate(&format!("{k}.proxy_protocol")))
                .transpose()?,
        })
    }
}

impl RawProxyProtocol {
    fn validate(self, k: &str) -> Result<ProxyProtocolConfig, ConfigError> {
        if self.trusted.is_empty() {
            return Err(invalid(
                format!("{k}.trusted"),
                "list the load balancers' address ranges; every other source is refused",
            ));
        }
        let trusted = self
            .trusted
            .iter()
            .enumerate()
            .map(|(i, t)| {
                Cidr::parse(t).map_err(|reason| invalid(format!("{k}.trusted[{i}]"), reason))
            })
            .collect::<Result<_, _>>()?;
        Ok(ProxyProtocolConfig {
            trusted,
            header_timeout: duration(&format!("{k}.header_timeout"), &self.header_timeout)?,
        })
    }
}

impl RawTls {
    fn validate(mut self, k: &str, base: &Path) -> Result<TlsConfig, ConfigError> {
        let policy = self.policy().validate(k, base)?;
        Ok(TlsConfig {
            certificate: file(&format!("{k}.certificate"), &self.certificate, base)?,
            private_key: file(&format!("{k}.private_key"), &self.private_key, base)?,
            client_ca: file(&format!("{k}.client_ca"), &self.client_ca, base)?,
            policy,
        })
    }
}

impl RawTlsPolicy {
    /// The keys a listener's `tls` and `upstream.tls` share; `k` is the section's key.
    fn validate(self, k: &str, base: &Path) -> Result<TlsPolicy, ConfigError> {
        let mut crl = Vec::with_capacity(self.crl.len());
        for (j, c) in self.crl.iter().enumerate() {
            crl.push(file(&format!("{k}.crl[{j}]"), c, base)?);
        }
        Ok(TlsPolicy {
            crl,
            min_version: min_version(k, &self.min_version)?,
            reload_interval: duration(&format!("{k}.reload_interval"), &self.reload_interval)?,
            cipher_suites: self.cipher_suites,
            groups: self.groups,
            revocation: self.revocation,
        })
    }
}

/// A list of identity matchers (`allowed_clients`, `upstream.tls.allowed_servers`).
fn matchers(k: &str, raw: Vec<RawClientMatcher>) -> Result<Vec<ClientMatcher>, ConfigError> {
    raw.into_iter()
        .enumerate()
        .map(|(j, m)| m.validate(&format!("{k}[{j}]")))
        .collect()
}

fn min_version(k: &str, text: &str) -> Result<TlsVersion, ConfigError> {
    match text {
        "1.2" => Ok(TlsVersion::Tls12),
        "1.3" => Ok(TlsVersion::Tls13),
        other => Err(invalid(
            format!("{k}.min_version"),
            format!("`{other}` is not supported (1.2 or 1.3)"),
        )),
    }
}

impl RawUpstreamTls {
    pub(super) fn validate(
        mut self,
        k: &str,
        base: &Path,
    ) -> Result<UpstreamTlsConfig, ConfigError> {
        let policy = self.policy().validate(k, base)?;
        let client = match (self.certificate.trim(), self.private_key.trim()) {
            ("", "") => None,
            ("", _) | (_, "") => {
                return Err(invalid(
                    format!("{k}.certificate"),
                    "certificate and private_key go together (or neither, when the partner asks for no client certificate)",
                ));
            }
            (cert, key) => Some((
                file(&format!("{k}.certificate"), cert, base)?,
                file(&format!("{k}.private_key"), key, base)?,
            )),
        };
        let server_name = match self.server_name.trim() {
            "" => None,
            name => {
                rustls_pki_types::ServerName::try_from(name).map_err(|_| {
                    invalid(
                        format!("{k}.server_name"),
                        format!("`{name}` is not a DNS name or IP address"),
                    )
                })?;
                Some(name.to_string())
            }
        };
        Ok(UpstreamTlsConfig {
            ca: file(&format!("{k}.ca"), &self.ca, base)?,
            client,
            server_name,
            allowed_servers: matchers(&format!("{k}.allowed_servers"), self.allowed_servers)?,
            policy,
        })
    }
}

impl RawUpstream {
    fn validate(self, k: &str, base: &Path) -> Result<UpstreamConfig, ConfigError> {
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
            messages_per_connection: u64::from(self.messages_per_connection),
            tcp_keepalive: self.tcp_keepalive.validate(&format!("{k}.tcp_keepalive"))?,
            tls: self
                .tls
                .map(|t| t.validate(&format!("{k}.tls"), base))
                .transpose()?,
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
            tcp_keepalive: self.tcp_keepalive.validate(&format!("{k}.tcp_keepalive"))?,
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

impl RawKeepalive {
    /// `time: 0s` turns keepalive off. Linux counts in whole seconds, up to 32767 for the
    /// times and 127 probes.
    fn validate(self, k: &str) -> Result<Option<Keepalive>, ConfigError> {
        let seconds = |key: &str, text: &str, min: u64| -> Result<Duration, ConfigError> {
            let key = format!("{k}.{key}");
            let d = parse_duration(text).map_err(|reason| invalid(&key, reason))?;
            if d.subsec_nanos() != 0 || !(min..=32_767).contains(&d.as_secs()) {
                return Err(invalid(
                    key,
                    format!("must be whole seconds, {min}s to 32767s"),
                ));
            }
            Ok(d)
        };
        let time = seconds("time", &self.time, 0)?;
        if time.is_zero() {
            return Ok(None);
        }
        if !(1..=127).contains(&self.retries) {
            return Err(invalid(format!("{k}.retries"), "must be between 1 and 127"));
        }
        Ok(Some(Keepalive {
            time,
            interval: seconds("interval", &self.interval, 1)?,
            retries: self.retries,
        }))
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
