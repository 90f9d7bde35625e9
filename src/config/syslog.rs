//! Validation of `audit.syslog[]`: the collectors the audit trail is sent to.

use std::path::Path;

use super::raw::RawSyslog;
use super::validate::invalid;
use super::{ConfigError, SyslogConfig, SyslogFormat, SyslogTransport};

/// The collectors of `audit.syslog`, each validated, their names unique.
pub(super) fn collectors(
    raw: Vec<RawSyslog>,
    base: &Path,
) -> Result<Vec<SyslogConfig>, ConfigError> {
    let mut out: Vec<SyslogConfig> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let c = r.validate(&format!("audit.syslog[{i}]"), base)?;
        if out.iter().any(|s| s.name == c.name) {
            return Err(invalid(
                format!("audit.syslog[{i}].name"),
                format!("`{}` is used by another collector", c.name),
            ));
        }
        out.push(c);
    }
    Ok(out)
}

impl RawSyslog {
    fn validate(self, k: &str, base: &Path) -> Result<SyslogConfig, ConfigError> {
        let name = collector_name(k, &self.name)?;
        let ok = self
            .address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            return Err(invalid(
                format!("{k}.address"),
                format!("`{}` is not host:port", self.address),
            ));
        }
        let (transport, format) = transport_and_format(k, &self.transport, &self.format)?;
        if self.atna_messages && format != SyslogFormat::Atna {
            return Err(invalid(
                format!("{k}.atna_messages"),
                "only with format: atna",
            ));
        }
        let tls = match (transport, self.tls) {
            (SyslogTransport::Tls, Some(t)) => Some(t.validate(&format!("{k}.tls"), base)?),
            (SyslogTransport::Tls, None) => {
                return Err(invalid(
                    format!("{k}.tls"),
                    "transport tls needs the collector's CA (tls.ca) and, for mutual TLS, our certificate and key",
                ));
            }
            (_, Some(_)) => return Err(invalid(format!("{k}.tls"), "only for transport tls")),
            (_, None) => None,
        };
        let facility = syslog_facility(&self.facility).ok_or_else(|| {
            invalid(
                format!("{k}.facility"),
                format!(
                    "`{}` is not a syslog facility (kern … local7, or 0 … 23)",
                    self.facility
                ),
            )
        })?;
        let mut severity = Vec::new();
        for (event, level) in self.severity {
            let s = syslog_severity(&level).ok_or_else(|| {
                invalid(
                    format!("{k}.severity.{event}"),
                    format!("`{level}` is not a syslog severity (emerg … debug, or 0 … 7)"),
                )
            })?;
            severity.push((event, s));
        }
        let sd_ok = !self.sd_id.is_empty()
            && self.sd_id.len() <= 32
            && self
                .sd_id
                .bytes()
                .all(|b| (33..=126).contains(&b) && !b"=]\"".contains(&b));
        if !sd_ok {
            return Err(invalid(
                format!("{k}.sd_id"),
                "an RFC 5424 SD-ID: up to 32 printable characters, no `=`, `]`, `\"` or space (`name@PEN`)",
            ));
        }
        let max_message_bytes = max_message_bytes(k, self.max_message_bytes, transport, format)?;
        Ok(SyslogConfig {
            name,
            address: self.address,
            transport,
            format,
            facility,
            severity,
            hostname: self.hostname.trim().to_string(),
            sd_id: self.sd_id,
            queue_bytes: usize::try_from(self.queue_bytes).unwrap_or(usize::MAX),
            max_message_bytes,
            tls,
            atna_messages: self.atna_messages,
        })
    }
}

/// A collector's name: the `sink` label of its metrics, so a word, and not another sink's.
fn collector_name(k: &str, name: &str) -> Result<String, ConfigError> {
    let name = name.trim();
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if name.is_empty() || !name.chars().all(plain) || name == "log" || name == "file" {
        return Err(invalid(
            format!("{k}.name"),
            format!(
                "`{name}` is not a name of letters, digits, `-` and `_` (and not `log` or `file`, the other sinks)"
            ),
        ));
    }
    Ok(name.to_string())
}

fn transport_and_format(
    k: &str,
    transport: &str,
    format: &str,
) -> Result<(SyslogTransport, SyslogFormat), ConfigError> {
    let transport = match transport {
        "tls" => SyslogTransport::Tls,
        "tcp" => SyslogTransport::Tcp,
        "udp" => SyslogTransport::Udp,
        other => {
            return Err(invalid(
                format!("{k}.transport"),
                format!("`{other}` is not tls, tcp or udp"),
            ));
        }
    };
    let format = match format {
        "rfc5424" => SyslogFormat::Rfc5424,
        "json" => SyslogFormat::Json,
        "atna" => SyslogFormat::Atna,
        other => {
            return Err(invalid(
                format!("{k}.format"),
                format!("`{other}` is not rfc5424, json or atna"),
            ));
        }
    };
    Ok((transport, format))
}

/// `max_message_bytes`, or its default: 64 KiB on a stream, 2048 on UDP (65000 for ATNA,
/// whose receivers take at least 32,768 octets: DICOM PS3.15 A.6).
fn max_message_bytes(
    k: &str,
    set: u64,
    transport: SyslogTransport,
    format: SyslogFormat,
) -> Result<usize, ConfigError> {
    let key = format!("{k}.max_message_bytes");
    let atna = format == SyslogFormat::Atna;
    match (set, transport) {
        (n, _) if atna && n != 0 && n < 32_768 => Err(invalid(
            key,
            "at least 32768 for format atna (DICOM PS3.15 A.6)",
        )),
        (0, SyslogTransport::Udp) if atna => Ok(65_000),
        (0, SyslogTransport::Udp) => Ok(2048),
        (0, _) => Ok(64 << 10),
        (n, SyslogTransport::Udp) if n > 65_000 => {
            Err(invalid(key, "at most 65000 for udp (one datagram)"))
        }
        (n, _) if n < 480 => Err(invalid(key, "at least 480 (RFC 5424)")),
        (n, _) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
    }
}

/// An RFC 5424 facility by name or number.
fn syslog_facility(text: &str) -> Option<u8> {
    const NAMES: [&str; 24] = [
        "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
        "authpriv", "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2",
        "local3", "local4", "local5", "local6", "local7",
    ];
    let text = text.trim();
    NAMES
        .iter()
        .position(|n| *n == text)
        .and_then(|i| u8::try_from(i).ok())
        .or_else(|| text.parse::<u8>().ok().filter(|n| *n < 24))
}

/// An RFC 5424 severity by name or number.
fn syslog_severity(text: &str) -> Option<u8> {
    const NAMES: [&str; 8] = [
        "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
    ];
    let text = text.trim();
    NAMES
        .iter()
        .position(|n| *n == text)
        .and_then(|i| u8::try_from(i).ok())
        .or_else(|| text.parse::<u8>().ok().filter(|n| *n < 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facilities_and_severities_by_name_or_number() {
        assert_eq!(syslog_facility("authpriv"), Some(10));
        assert_eq!(syslog_facility("local7"), Some(23));
        assert_eq!(syslog_facility("4"), Some(4));
        assert_eq!(syslog_facility("24"), None);
        assert_eq!(syslog_severity("notice"), Some(5));
        assert_eq!(syslog_severity("warning"), Some(4));
        assert_eq!(syslog_severity("8"), None);
    }
}
