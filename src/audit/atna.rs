//! IHE ATNA audit messages (`audit.syslog[].format: atna`): DICOM PS3.15 A.5 `AuditMessage`
//! XML made from the audit trail's records, for an Audit Record Repository (ITI-20).
//!
//! | record | EventID | EventTypeCode | outcome |
//! |---|---|---|---|
//! | `application_start`, `application_stop` | 110100 Application Activity | 110120 Application Start, 110121 Application Stop | 0 |
//! | `handshake_refused` | 110113 Security Alert | 110126 Node Authentication | 4 |
//! | `configuration_reload` | 110113 Security Alert | 110131 Software Configuration | 0 applied, 4 refused |
//! | `message` (with `atna_messages`) | 110107 Import | — | 0 AA/CA, 4 AE/CE/AR/CR or a NAK, 8 no answer |
//!
//! Elements are written in the schema's order (EventIdentification, ActiveParticipant+,
//! AuditSourceIdentification, ParticipantObjectIdentification*) with quick-xml, which escapes
//! every value. Nothing from message content but the control ID and type is ever in a record,
//! so nothing else can reach an ATNA message: PID-3 is never read.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;

use base64::Engine as _;
use quick_xml::Writer;
use quick_xml::events::BytesText;

/// A record's fields, as [`super::syslog`] read them.
pub(super) type Fields<'a> = [(Cow<'a, str>, Cow<'a, str>)];

/// What an ATNA message needs beyond the record.
pub(super) struct Source<'a> {
    /// The AuditSourceID and the application's NetworkAccessPointID: the host name.
    pub host: &'a str,
    /// Whether `message` records become Import messages.
    pub messages: bool,
}

/// The identity of each open session (`route`, `conn`), from its `session_start` record: a
/// message record names the connection, and its Import message names the sender.
#[derive(Default)]
pub(super) struct Sessions(HashMap<(String, String), String>);

impl Sessions {
    /// Notes a session's start or end.
    pub(super) fn follow(&mut self, fields: &Fields<'_>) {
        let get = |k: &str| field(fields, k);
        let key = (get("route").to_string(), get("conn").to_string());
        match get("event") {
            "session_start" => {
                let id = [get("identity"), get("peer")]
                    .into_iter()
                    .find(|s| !s.is_empty())
                    .unwrap_or("-");
                self.0.insert(key, id.to_string());
            }
            "session_end" => {
                self.0.remove(&key);
            }
            _ => {}
        }
    }
}

fn field<'a>(fields: &'a Fields<'_>, key: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_ref())
}

/// The ATNA message of a record at `timestamp`, or `None` for a record no ATNA event covers.
pub(super) fn message(
    timestamp: &str,
    fields: &Fields<'_>,
    source: &Source<'_>,
    sessions: &Sessions,
) -> Option<Vec<u8>> {
    let r = Record {
        at: timestamp,
        fields,
        source,
    };
    let mut w = Writer::new(Vec::with_capacity(1024));
    let event = r.get("event");
    let body = |w: &mut Out| match event {
        "application_start" | "application_stop" => r.application_activity(w),
        "handshake_refused" => r.node_authentication(w),
        "configuration_reload" => r.configuration(w),
        _ => r.import(w, sessions),
    };
    let covered = matches!(
        event,
        "application_start" | "application_stop" | "handshake_refused" | "configuration_reload"
    ) || (event == "message" && source.messages);
    if !covered {
        return None;
    }
    w.create_element("AuditMessage")
        .write_inner_content(body)
        .ok()?;
    Some(w.into_inner())
}

/// A record being written as an ATNA message.
struct Record<'a> {
    at: &'a str,
    fields: &'a Fields<'a>,
    source: &'a Source<'a>,
}

impl Record<'_> {
    fn get(&self, key: &str) -> &str {
        field(self.fields, key)
    }

    /// 110100 Application Activity: 110120 Application Start or 110121 Application Stop.
    fn application_activity(&self, w: &mut Out) -> std::io::Result<()> {
        let kind = if self.get("event") == "application_start" {
            ("110120", "Application Start")
        } else {
            ("110121", "Application Stop")
        };
        let id = ("110100", "Application Activity");
        identification(w, self.at, "0", id, Some(kind), None)?;
        application(w, self.source)?;
        audit_source(w, self.source)
    }

    /// 110113 Security Alert, 110126 Node Authentication: the peer (its certificate's subject
    /// when it presented one) refused.
    fn node_authentication(&self, w: &mut Out) -> std::io::Result<()> {
        let first = |keys: [&str; 2]| {
            keys.into_iter()
                .map(|k| self.get(k))
                .find(|s| !s.is_empty())
        };
        let subject = first(["subject", "presented_subject"]);
        let identities = first(["identities", "presented_identities"]);
        let peer = self.get("peer");
        let why = format!("TLS node authentication refused: {}", self.get("reason"));
        let (id, kind) = (
            ("110113", "Security Alert"),
            ("110126", "Node Authentication"),
        );
        identification(w, self.at, "4", id, Some(kind), Some(&why))?;
        participant(w, subject.unwrap_or(peer), true, host_of(peer), None)?;
        application(w, self.source)?;
        audit_source(w, self.source)?;
        let mut details = vec![
            ("reason", self.get("reason")),
            ("verified", self.get("verified")),
        ];
        details.extend(identities.map(|i| ("identities", i)));
        for key in ["issuer", "presented_issuer"] {
            if !self.get(key).is_empty() {
                details.push((key, self.get(key)));
            }
        }
        let name = subject.unwrap_or("(no certificate presented)");
        object(w, peer, ("110182", "DCM", "Node ID"), name, &details)
    }

    /// 110113 Security Alert, 110131 Software Configuration: a reload applied or refused.
    fn configuration(&self, w: &mut Out) -> std::io::Result<()> {
        let refused = self.get("result") == "refused";
        let why = refused.then(|| self.get("error"));
        let outcome = if refused { "4" } else { "0" };
        let (id, kind) = (
            ("110113", "Security Alert"),
            ("110131", "Software Configuration"),
        );
        identification(w, self.at, outcome, id, Some(kind), why)?;
        application(w, self.source)?;
        audit_source(w, self.source)
    }

    /// 110107 Import: a message from the sender (its session's identity) to the engine.
    fn import(&self, w: &mut Out, sessions: &Sessions) -> std::io::Result<()> {
        let outcome = match self.get("ack") {
            "AA" | "CA" => "0",
            "" if self.get("nak").is_empty() => "8",
            _ => "4",
        };
        let key = (self.get("route").to_string(), self.get("conn").to_string());
        let sender = sessions
            .0
            .get(&key)
            .map_or(self.get("peer"), String::as_str);
        let engine = self.get("engine");
        let detail = [self.get("nak"), self.get("answer")]
            .into_iter()
            .find(|s| !s.is_empty());
        identification(w, self.at, outcome, ("110107", "Import"), None, detail)?;
        let source_role = Some(("110153", "Source"));
        participant(w, sender, true, host_of(self.get("peer")), source_role)?;
        if !engine.is_empty() {
            let role = Some(("110152", "Destination"));
            participant(w, engine, false, host_of(engine), role)?;
        }
        application(w, self.source)?;
        audit_source(w, self.source)?;
        let details: Vec<_> = ["route", "ack", "bytes"]
            .into_iter()
            .map(|k| (k, self.get(k)))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let id_type = ("MSH-10", "HL7v2", "Message Control ID");
        object(
            w,
            self.get("control_id"),
            id_type,
            self.get("message_type"),
            &details,
        )
    }
}

/// The syslog severity of a record's ATNA message (ITI-20): warning (4) for a failure,
/// notice (5) otherwise.
pub(super) fn severity(fields: &Fields<'_>) -> u8 {
    let get = |k: &str| field(fields, k);
    let failed = match get("event") {
        "handshake_refused" => true,
        "configuration_reload" => get("result") == "refused",
        "message" => !matches!(get("ack"), "AA" | "CA"),
        _ => false,
    };
    if failed { 4 } else { 5 }
}

/// The host of `host:port` (`[v6]:port`), for NetworkAccessPointID.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Whether `host` is an IP address (NetworkAccessPointTypeCode 2) or a name (1).
fn access_point_type(host: &str) -> &'static str {
    if host.parse::<std::net::IpAddr>().is_ok() {
        "2"
    } else {
        "1"
    }
}

type Out = Writer<Vec<u8>>;

fn coded(
    w: &mut Out,
    element: &str,
    (code, system, text): (&str, &str, &str),
) -> std::io::Result<()> {
    w.create_element(element)
        .with_attributes([
            ("csd-code", code),
            ("codeSystemName", system),
            ("originalText", text),
        ])
        .write_empty()?;
    Ok(())
}

fn identification(
    w: &mut Out,
    at: &str,
    outcome: &str,
    (id, id_text): (&str, &str),
    kind: Option<(&str, &str)>,
    description: Option<&str>,
) -> std::io::Result<()> {
    w.create_element("EventIdentification")
        .with_attributes([
            ("EventActionCode", if id == "110107" { "C" } else { "E" }),
            ("EventDateTime", at),
            ("EventOutcomeIndicator", outcome),
        ])
        .write_inner_content(|w| {
            coded(w, "EventID", (id, "DCM", id_text))?;
            if let Some((code, text)) = kind {
                coded(w, "EventTypeCode", (code, "DCM", text))?;
            }
            if let Some(d) = description.filter(|d| !d.is_empty()) {
                w.create_element("EventOutcomeDescription")
                    .write_text_content(BytesText::new(d))?;
            }
            Ok(())
        })?;
    Ok(())
}

fn participant(
    w: &mut Out,
    user: &str,
    requestor: bool,
    access_point: &str,
    role: Option<(&str, &str)>,
) -> std::io::Result<()> {
    let el = w.create_element("ActiveParticipant").with_attributes([
        ("UserID", if user.is_empty() { "-" } else { user }),
        ("UserIsRequestor", if requestor { "true" } else { "false" }),
        ("NetworkAccessPointID", access_point),
        (
            "NetworkAccessPointTypeCode",
            access_point_type(access_point),
        ),
    ]);
    match role {
        Some((code, text)) => {
            el.write_inner_content(|w| coded(w, "RoleIDCode", (code, "DCM", text)))?
        }
        None => el.write_empty()?,
    };
    Ok(())
}

/// The proxy itself: the application, with its process id.
fn application(w: &mut Out, source: &Source<'_>) -> std::io::Result<()> {
    let pid = std::process::id().to_string();
    w.create_element("ActiveParticipant")
        .with_attributes([
            ("UserID", "mllp-proxy"),
            ("AlternativeUserID", pid.as_str()),
            ("UserIsRequestor", "false"),
            ("NetworkAccessPointID", source.host),
            ("NetworkAccessPointTypeCode", access_point_type(source.host)),
        ])
        .write_inner_content(|w| coded(w, "RoleIDCode", ("110150", "DCM", "Application")))?;
    Ok(())
}

fn audit_source(w: &mut Out, source: &Source<'_>) -> std::io::Result<()> {
    w.create_element("AuditSourceIdentification")
        .with_attribute(("AuditSourceID", source.host))
        .write_inner_content(|w| {
            // 4: an application server process.
            w.create_element("AuditSourceTypeCode")
                .with_attribute(("csd-code", "4"))
                .write_empty()?;
            Ok(())
        })?;
    Ok(())
}

fn object(
    w: &mut Out,
    id: &str,
    id_type: (&str, &str, &str),
    name: &str,
    details: &[(&str, &str)],
) -> std::io::Result<()> {
    let el = w
        .create_element("ParticipantObjectIdentification")
        .with_attributes([
            ("ParticipantObjectID", if id.is_empty() { "-" } else { id }),
            ("ParticipantObjectTypeCode", "2"),
        ]);
    el.write_inner_content(|w| {
        coded(w, "ParticipantObjectIDTypeCode", id_type)?;
        w.create_element("ParticipantObjectName")
            .write_text_content(BytesText::new(if name.is_empty() { "-" } else { name }))?;
        for (kind, value) in details {
            // ValuePair values are base64 (DICOM PS3.15 A.5.1): no XML fragment survives.
            let value = base64::engine::general_purpose::STANDARD.encode(value);
            w.create_element("ParticipantObjectDetail")
                .with_attributes([("type", *kind), ("value", value.as_str())])
                .write_empty()?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Writes `xml` as an ITI-20 message body: a UTF-8 BOM, then the XML.
pub(super) fn body(out: &mut Vec<u8>, xml: &[u8]) {
    let _ = out.write_all(b"\xEF\xBB\xBF");
    let _ = out.write_all(xml);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(
        pairs: &[(&'static str, &'static str)],
    ) -> Vec<(Cow<'static, str>, Cow<'static, str>)> {
        pairs
            .iter()
            .map(|(k, v)| (Cow::Borrowed(*k), Cow::Borrowed(*v)))
            .collect()
    }

    /// The element names of `xml`, in document order.
    fn elements(xml: &[u8]) -> Vec<String> {
        let mut reader = quick_xml::Reader::from_reader(xml);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            match reader.read_event_into(&mut buf) {
                Ok(quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e)) => {
                    out.push(e.name().0.to_string());
                }
                Ok(quick_xml::events::Event::Eof) => return out,
                Ok(_) => {}
                Err(e) => panic!("not well-formed: {e}"),
            }
            buf.clear();
        }
    }

    #[test]
    fn a_refused_handshake_is_a_node_authentication_alert_in_the_schemas_order() {
        let record = fields(&[
            ("event", "handshake_refused"),
            ("route", "lab"),
            ("peer", "192.0.2.7:4000"),
            ("conn", "3"),
            ("reason", "unknown_ca"),
            ("verified", "false"),
            ("presented_subject", "CN=<stolen>&co"),
            ("presented_identities", "cn:<stolen>&co"),
        ]);
        let source = Source {
            host: "proxy-1",
            messages: false,
        };
        let xml = message(
            "2026-12-07T12:00:00.000001Z",
            &record,
            &source,
            &Sessions::default(),
        )
        .expect("a message");
        assert_eq!(
            elements(&xml),
            [
                "AuditMessage",
                "EventIdentification",
                "EventID",
                "EventTypeCode",
                "EventOutcomeDescription",
                "ActiveParticipant",
                "ActiveParticipant",
                "RoleIDCode",
                "AuditSourceIdentification",
                "AuditSourceTypeCode",
                "ParticipantObjectIdentification",
                "ParticipantObjectIDTypeCode",
                "ParticipantObjectName",
                "ParticipantObjectDetail",
                "ParticipantObjectDetail",
                "ParticipantObjectDetail",
            ]
        );
        let text = String::from_utf8(xml).expect("UTF-8");
        assert!(
            text.contains(
                r#"<EventID csd-code="110113" codeSystemName="DCM" originalText="Security Alert"/>"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"csd-code="110126""#), "{text}");
        assert!(text.contains(r#"EventOutcomeIndicator="4""#), "{text}");
        assert!(
            text.contains("UserID=\"CN=&lt;stolen&gt;&amp;co\""),
            "{text}"
        );
        assert!(!text.contains("<stolen>"), "{text}");
        assert_eq!(severity(&record), 4);
    }

    #[test]
    fn a_message_record_becomes_an_import_naming_the_sessions_sender_only_when_asked() {
        let mut sessions = Sessions::default();
        sessions.follow(&fields(&[
            ("event", "session_start"),
            ("route", "lab"),
            ("conn", "7"),
            ("peer", "192.0.2.7:4000"),
            ("identity", "cn:lab-sender"),
        ]));
        let record = fields(&[
            ("event", "message"),
            ("route", "lab"),
            ("peer", "192.0.2.7:4000"),
            ("conn", "7"),
            ("control_id", "MSG-1"),
            ("message_type", "ADT^A01"),
            ("bytes", "612"),
            ("ack", "AA"),
            ("engine", "10.0.0.5:2575"),
        ]);
        let off = Source {
            host: "proxy-1",
            messages: false,
        };
        assert!(message("t", &record, &off, &sessions).is_none());
        let on = Source {
            host: "proxy-1",
            messages: true,
        };
        let xml = message("2026-12-07T12:00:00Z", &record, &on, &sessions).expect("a message");
        let text = String::from_utf8(xml.clone()).expect("UTF-8");
        assert!(text.contains(r#"csd-code="110107""#), "{text}");
        assert!(
            text.contains(r#"UserID="cn:lab-sender" UserIsRequestor="true""#),
            "{text}"
        );
        assert!(
            text.contains(r#"UserID="10.0.0.5:2575" UserIsRequestor="false""#),
            "{text}"
        );
        assert!(text.contains(r#"ParticipantObjectID="MSG-1""#), "{text}");
        assert_eq!(severity(&record), 5);
        assert_eq!(
            elements(&xml)[0..3],
            ["AuditMessage", "EventIdentification", "EventID"]
        );
    }
}
