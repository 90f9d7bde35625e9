//! Audit records as RFC 5424 syslog messages: the record read back from the line the audit
//! trail wrote (text or JSON), its fields as structured data, MSG in the collector's format.

use std::borrow::Cow;

use super::atna;
use crate::config::{SyslogConfig, SyslogFormat};

/// Cuts `msg` to at most `max` bytes, on a UTF-8 character boundary.
pub(super) fn cut(msg: &mut Vec<u8>, max: usize) {
    if msg.len() <= max {
        return;
    }
    let mut end = max;
    while end > 0 && (msg[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    msg.truncate(end);
}

/// One audit record line (the log's text or JSON form) as an RFC 5424 message; `None` when
/// the collector's format has no message for it (`atna`).
pub(super) fn format_record(
    cfg: &SyslogConfig,
    host: &str,
    line: &[u8],
    sessions: &mut atna::Sessions,
) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(line);
    let record = Parsed::of(text.trim_end());
    let event = record.get("event").unwrap_or("audit");
    let pri = u16::from(cfg.facility) * 8 + u16::from(cfg.severity_of(event));
    let timestamp = record.timestamp.as_deref().unwrap_or("-");
    if cfg.format == SyslogFormat::Atna {
        sessions.follow(&record.fields);
        let pri = u16::from(cfg.facility) * 8 + u16::from(atna::severity(&record.fields));
        let source = atna::Source {
            host,
            messages: cfg.atna_messages,
        };
        let xml = atna::message(timestamp, &record.fields, &source, sessions)?;
        let head = format!(
            "<{pri}>1 {timestamp} {host} mllp-proxy {} IHE+RFC-3881 - ",
            std::process::id()
        );
        let mut out = head.into_bytes();
        atna::body(&mut out, &xml);
        return Some(out);
    }
    let msgid: String = event
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect();
    // Header, the fields twice (structured data and MSG), and their quoting.
    let mut out = String::with_capacity(96 + 2 * line.len());
    let _ = std::fmt::Write::write_fmt(
        &mut out,
        format_args!(
            "<{pri}>1 {timestamp} {host} mllp-proxy {} {} [{}",
            std::process::id(),
            if msgid.is_empty() { "-" } else { &msgid },
            cfg.sd_id
        ),
    );
    let plain_name = |k: &str| {
        k.len() <= 32
            && k.bytes()
                .all(|b| b.is_ascii_graphic() && !b"=]\"".contains(&b))
    };
    for (k, v) in &record.fields {
        out.push(' ');
        if plain_name(k) {
            out.push_str(k);
        } else {
            let name = k
                .chars()
                .filter(|c| c.is_ascii_graphic() && !"=]\"".contains(*c));
            out.extend(name.take(32));
        }
        out.push_str("=\"");
        if v.bytes().any(|b| matches!(b, b'"' | b'\\' | b']')) {
            for c in v.chars() {
                if matches!(c, '"' | '\\' | ']') {
                    out.push('\\');
                }
                out.push(c);
            }
        } else {
            out.push_str(v);
        }
        out.push('"');
    }
    out.push_str("] ");
    match cfg.format {
        SyslogFormat::Json => out.push_str(&record.json()),
        SyslogFormat::Rfc5424 | SyslogFormat::Atna => out.push_str(&record.logfmt()),
    }
    Some(out.into_bytes())
}

/// An audit record's timestamp and fields, in their order.
struct Parsed<'a> {
    timestamp: Option<Cow<'a, str>>,
    fields: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// A text record's fields as the audit trail wrote them: already logfmt.
    body: Option<&'a str>,
}

impl<'a> Parsed<'a> {
    /// Reads a record in either of the log's formats; a text one without copying its values.
    fn of(line: &'a str) -> Parsed<'a> {
        if line.starts_with('{') {
            return Parsed::json_line(line);
        }
        // `TIMESTAMP  INFO audit: key=value …`
        let (head, body) = line.split_once(" audit: ").unwrap_or(("", line));
        let timestamp = head.split_whitespace().next().map(Cow::Borrowed);
        Parsed {
            timestamp,
            fields: logfmt_fields(body),
            body: Some(body),
        }
    }

    fn json_line(line: &str) -> Parsed<'a> {
        let fields: Vec<(String, serde_json::Value)> = serde_json::from_str::<OrderedObject>(line)
            .map(|o| o.0)
            .unwrap_or_default();
        let mut timestamp = None;
        let mut out = Vec::new();
        for (k, v) in fields {
            let text = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            match k.as_str() {
                "timestamp" => timestamp = Some(Cow::Owned(text)),
                "level" | "target" => {}
                _ => out.push((Cow::Owned(k), Cow::Owned(text))),
            }
        }
        Parsed {
            timestamp,
            fields: out,
            body: None,
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// The fields as logfmt: a text record's as written; else quoted where a value has a
    /// space, `=`, `"` or nothing.
    fn logfmt(&self) -> Cow<'a, str> {
        if let Some(body) = self.body {
            return Cow::Borrowed(body);
        }
        let mut out = String::new();
        for (k, v) in &self.fields {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(k);
            out.push('=');
            if v.is_empty() || v.contains([' ', '=', '"', ',']) {
                out.push('"');
                out.push_str(&v.replace('\\', "\\\\").replace('"', "\\\""));
                out.push('"');
            } else {
                out.push_str(v);
            }
        }
        Cow::Owned(out)
    }

    /// The fields as one JSON object, in order.
    fn json(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::Value::from(k.as_ref()).to_string());
            out.push(':');
            out.push_str(&serde_json::Value::from(v.as_ref()).to_string());
        }
        out.push('}');
        out
    }
}

/// `key=value` pairs of a logfmt line; a quoted value may hold spaces and `\"` (copied only
/// then).
fn logfmt_fields(body: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    let mut out = Vec::with_capacity(16);
    let mut rest = body.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = Cow::Borrowed(key.trim());
        let (value, next) = match after.strip_prefix('"') {
            Some(q) => {
                let end = closing_quote(q);
                let raw = &q[..end];
                let value = if raw.contains('\\') {
                    let mut v = String::with_capacity(raw.len());
                    let mut chars = raw.chars();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => v.extend(chars.next()),
                            _ => v.push(c),
                        }
                    }
                    Cow::Owned(v)
                } else {
                    Cow::Borrowed(raw)
                };
                (value, &q[(end + 1).min(q.len())..])
            }
            None => {
                let end = after.find(' ').unwrap_or(after.len());
                (Cow::Borrowed(&after[..end]), &after[end..])
            }
        };
        out.push((key, value));
        rest = next.trim_start();
    }
    out
}

/// Where the quoted value that `q` starts (after its opening quote) ends: the first `"` not
/// escaped by a backslash, or the end.
fn closing_quote(q: &str) -> usize {
    let bytes = q.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    q.len()
}

/// A JSON object's members in their order (serde_json's map sorts them).
struct OrderedObject(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<OrderedObject, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = m.next_entry::<String, serde_json::Value>()? {
                    out.push(kv);
                }
                Ok(OrderedObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SyslogTransport;

    fn cfg(format: SyslogFormat) -> SyslogConfig {
        SyslogConfig {
            name: "siem".into(),
            address: "127.0.0.1:6514".into(),
            transport: SyslogTransport::Tcp,
            format,
            facility: 10,
            severity: vec![],
            hostname: "proxy-1".into(),
            sd_id: "mllp-proxy@32473".into(),
            queue_bytes: 1 << 20,
            max_message_bytes: 65536,
            tls: None,
            atna_messages: false,
        }
    }

    #[test]
    fn a_text_record_becomes_rfc5424_with_its_fields_as_structured_data() {
        let line = br#"2026-12-07T12:29:08.982396Z  INFO audit: event="handshake_refused" route="lab" peer=127.0.0.1:54442 conn=6 subject="O=General Hospital, CN=billing] \"x\"""#;
        let out = String::from_utf8(
            format_record(
                &cfg(SyslogFormat::Rfc5424),
                "proxy-1",
                line,
                &mut Default::default(),
            )
            .unwrap(),
        )
        .unwrap();
        let pid = std::process::id();
        assert_eq!(
            out,
            format!(
                r#"<84>1 2026-12-07T12:29:08.982396Z proxy-1 mllp-proxy {pid} handshake_refused [mllp-proxy@32473 event="handshake_refused" route="lab" peer="127.0.0.1:54442" conn="6" subject="O=General Hospital, CN=billing\] \"x\""] event="handshake_refused" route="lab" peer=127.0.0.1:54442 conn=6 subject="O=General Hospital, CN=billing] \"x\"""#
            )
        );
    }

    #[test]
    fn a_json_record_keeps_its_field_order_and_its_severity_is_notice() {
        let line = br#"{"timestamp":"2026-12-07T12:00:00.000001Z","level":"INFO","event":"message","route":"lab","conn":7,"ack":"AA"}"#;
        let out = String::from_utf8(
            format_record(
                &cfg(SyslogFormat::Json),
                "proxy-1",
                line,
                &mut Default::default(),
            )
            .unwrap(),
        )
        .unwrap();
        let pid = std::process::id();
        assert_eq!(
            out,
            format!(
                r#"<85>1 2026-12-07T12:00:00.000001Z proxy-1 mllp-proxy {pid} message [mllp-proxy@32473 event="message" route="lab" conn="7" ack="AA"] {{"event":"message","route":"lab","conn":"7","ack":"AA"}}"#
            )
        );
    }

    #[test]
    fn a_long_record_is_cut_on_a_character_boundary() {
        let mut msg = "aé".repeat(10).into_bytes();
        cut(&mut msg, 4);
        assert_eq!(
            msg,
            "aé"
                .as_bytes()
                .iter()
                .chain(b"a")
                .copied()
                .collect::<Vec<_>>()
        );
    }
}
