//! What the log and the audit trail say: the answer that was sent, logfmt that parses, and
//! `audit.messages: false` keeping control IDs out of every line.

use std::time::Duration;

use mllp_proxy::client::MllpClient;
use mllp_proxy::logsafe::escape_str;
use mllp_proxy::tls::ClientIdentity;
use rcgen::{DnType, SanType};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::support::*;

const T: Duration = Duration::from_secs(10);

/// An enhanced-mode message (MSH-15 `AL`).
fn enhanced(id: &str) -> Vec<u8> {
    format!("MSH|^~\\&|ADT|WARD|LAB|HOSP|20261126||ADT^A01|{id}|P|2.5.1|||AL|NE\rPID|1\r")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enhanced_mode_nak_for_an_engine_failure_is_logged_and_audited_as_the_cr_sent() {
    // The engine is down and the route answers failures with a NAK: an enhanced-mode message
    // gets CR on the wire, and the warning and the audit record both say CR, with its size.
    let BinaryWorld {
        pki,
        engine: _engine,
        proxy,
        ..
    } = Harness::new()
        .route_yaml("    on_upstream_failure: nak\n")
        .engine_down()
        .spawn_json()
        .await;
    let msg = enhanced("ENH-1");
    let mut client = MllpClient::connect(&pki.target(proxy.addr, ClientCert::Good), T)
        .await
        .expect("connect");
    let nak = client.exchange(&msg, T).await.expect("a NAK");
    assert_eq!(msa(&nak), ("CR".into(), "ENH-1".into()));
    client.close().await;

    let warning = json_lines(&proxy, 1, |v| {
        v["message"] == "upstream failure; message not acknowledged by the engine"
    });
    assert_eq!(warning.len(), 1, "{:?}", proxy.log_lines());
    assert_eq!(warning[0]["answer"], "CR");
    assert_eq!(warning[0]["control_id"], "ENH-1");
    assert_eq!(warning[0]["kind"], "connect");
    let record = json_lines(&proxy, 1, |v| v["event"] == "message");
    assert_eq!(record.len(), 1, "{:?}", proxy.log_lines());
    assert_eq!(record[0]["answer"], "CR");
    assert_eq!(record[0]["upstream_failure"], "connect");
    assert_eq!(record[0]["control_id"], "ENH-1");
    assert_eq!(record[0]["bytes"], msg.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_audit_messages_off_no_record_and_no_line_carries_a_control_id() {
    // A forwarded message, a refused one and one the engine never answered: with
    // audit.messages false none leaves a message record, and no line names a control ID;
    // the session records, the refusal and the upstream warning remain.
    let BinaryWorld {
        pki, engine, proxy, ..
    } = Harness::new()
        .top_yaml("audit:\n  messages: false\n")
        .route_yaml(
            "    on_upstream_failure: nak\n    validation:\n      message_types: [\"ADT^*\"]\n",
        )
        .spawn_json()
        .await;
    let mut client = MllpClient::connect(&pki.target(proxy.addr, ClientCert::Good), T)
        .await
        .expect("connect");
    let ack = client.exchange(&adt("QUIET-OK"), T).await.expect("ACK");
    assert_eq!(msa(&ack).0, "AA");
    let refused = b"MSH|^~\\&|OE|W|LAB|H|20261126||ORM^O01|QUIET-NAK|P|2.5.1\rPID|1\r";
    assert_eq!(
        msa(&client.exchange(refused, T).await.expect("NAK")).0,
        "AR"
    );
    drop(engine);
    let failed = client.exchange(&adt("QUIET-FAIL"), T).await.expect("NAK");
    assert_eq!(msa(&failed).0, "AR");
    client.close().await;

    let ends = json_lines(&proxy, 1, |v| v["event"] == "session_end");
    assert_eq!(ends.len(), 1);
    let lines = proxy.log_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"event\":\"session_start\""))
    );
    assert!(lines.iter().any(|l| l.contains("message refused with NAK")));
    assert!(lines.iter().any(|l| l.contains("upstream failure;")));
    assert!(
        !lines.iter().any(|l| l.contains("\"event\":\"message\"")),
        "{lines:#?}"
    );
    for id in ["QUIET-OK", "QUIET-NAK", "QUIET-FAIL"] {
        assert!(!lines.iter().any(|l| l.contains(id)), "{id} in {lines:#?}");
    }
}

/// One logfmt line as its parsers read it: `key=value` and `key="quoted \" value"` pairs, and
/// bare words (the event's message text, which tracing writes first) as keys without value.
fn logfmt(line: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            return out;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == ' ' || c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            out.push((key, None));
            continue;
        }
        chars.next();
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.push(chars.next().unwrap_or('\\')),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key, Some(value)));
    }
}

/// Every line of `lines` parsed as logfmt, checked field by field (no bare word among the
/// fields, no junk key: a value split by a parser leaves keys such as `CN` or `Inc."`);
/// the subjects of `session_start` records and the events seen.
fn logfmt_fields(lines: &[String]) -> (Vec<String>, std::collections::BTreeSet<String>) {
    let field_name = |k: &str| {
        k.starts_with(|c: char| c.is_ascii_lowercase())
            && k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let mut subjects = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    for line in lines {
        // Timestamp, level and target, then the message's words, then the fields.
        let pairs = logfmt(line);
        let first_field = pairs
            .iter()
            .position(|(_, v)| v.is_some())
            .unwrap_or(pairs.len());
        for (key, value) in &pairs[first_field..] {
            assert!(
                value.is_some(),
                "bare word {key:?} among the fields of {line}"
            );
            assert!(field_name(key), "junk key {key:?} in {line}");
        }
        let field = |name: &str| {
            pairs[first_field..]
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.clone())
        };
        if let Some(event) = field("event") {
            if event == "session_start" {
                subjects.push(field("subject").expect("subject"));
            }
            kinds.insert(event);
        }
        if line.contains("message refused with NAK") {
            assert_eq!(field("control_id").as_deref(), Some("BUSY NAK"), "{line}");
        }
    }
    (subjects, kinds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_text_log_line_of_a_busy_run_parses_as_logfmt() {
    // A sender whose certificate subject holds spaces, commas, quotes and '=', a refused
    // handshake, forwarded messages, a NAK, an engine failure and the audit records of all
    // of it, in text format: a logfmt parser reads every line into the fields written (no
    // junk keys), and the subject comes back whole.
    let harness = Harness::new().route_yaml(
        "    on_upstream_failure: nak\n    validation:\n      message_types: [\"ADT^*\"]\n",
    );
    harness.pki.issue_client_with("odd", |p| {
        p.distinguished_name
            .push(DnType::OrganizationName, "HL7 Proxy \"Test\", Inc.");
        p.distinguished_name
            .push(DnType::CommonName, "lab=analyzer 01");
        p.subject_alt_names = vec![SanType::URI(
            "spiffe://hospital.test/lab analyzer"
                .try_into()
                .expect("uri"),
        )];
    });
    let BinaryWorld {
        pki, engine, proxy, ..
    } = harness.spawn("text").await;
    let mut odd = MllpClient::connect(&pki.target_named(proxy.addr, "odd"), T)
        .await
        .expect("connect");
    for i in 0..5 {
        let ack = odd
            .exchange(&adt(&format!("BUSY-{i}")), T)
            .await
            .expect("ACK");
        assert_eq!(msa(&ack).0, "AA");
    }
    let refused = b"MSH|^~\\&|OE|W|LAB|H|20261126||ORM^O01|BUSY NAK|P|2.5.1\rPID|1\r";
    assert_eq!(msa(&odd.exchange(refused, T).await.expect("NAK")).0, "AR");
    if let Ok(mut c) = MllpClient::connect(&pki.target(proxy.addr, ClientCert::OtherCa), T).await {
        let _ = c.exchange(&adt("NEVER"), T).await;
    }
    engine.set(Behaviour::CloseAfterRead);
    assert_eq!(
        msa(&odd.exchange(&adt("BUSY-DOWN"), T).await.expect("AR")).0,
        "AR"
    );
    odd.close().await;

    let pem = std::fs::read(pki.path("odd.crt")).expect("read");
    let der = CertificateDer::from_pem_slice(&pem).expect("pem");
    let subject = escape_str(&ClientIdentity::from_der(&der).expect("identity").subject);
    assert!(subject.contains(", ") && subject.contains('"'), "{subject}");
    let ended = eventually(T, || async {
        proxy
            .log_lines()
            .iter()
            .any(|l| l.contains("event=\"session_end\""))
    });
    assert!(ended.await, "no session_end record");
    let lines = proxy.log_lines();
    let (subjects, kinds) = logfmt_fields(&lines);
    assert_eq!(subjects, [subject], "{lines:#?}");
    for kind in [
        "session_start",
        "message",
        "session_end",
        "handshake_refused",
    ] {
        assert!(kinds.contains(kind), "no {kind} record in {lines:#?}");
    }
}

#[test]
fn the_audit_file_is_readable_by_its_group_only_and_stays_so_across_rotation() {
    // audit.file names every sending system, certificate serial and control ID: it is created
    // rw-r-----, and after logrotate moves it and SIGHUP reopens it, the new file is too and
    // the moved one keeps the records written before.
    use std::os::unix::fs::PermissionsExt;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let harness = Harness::new();
    let file = harness.pki.path("audit.log");
    let top = format!("audit:\n  file: {}\n", file.display());
    let BinaryWorld {
        pki,
        engine: _engine,
        proxy,
        ..
    } = rt.block_on(harness.top_yaml(&top).spawn_json());
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .expect("audit file")
            .permissions()
            .mode()
            & 0o777
    };
    let send = |id: &str| {
        rt.block_on(async {
            let target = pki.target(proxy.addr, ClientCert::Good);
            let mut c = MllpClient::connect(&target, T).await.expect("connect");
            let ack = c.exchange(&adt(id), T).await.expect("ACK");
            c.close().await;
            msa(&ack).0
        })
    };
    let holds = |p: &std::path::Path, id: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(p).is_ok_and(|t| t.contains(id)) {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    };
    assert_eq!(send("ROT-1"), "AA");
    assert!(holds(&file, "ROT-1"));
    assert_eq!(mode(&file), 0o640);

    let rotated = pki.path("audit.log.1");
    std::fs::rename(&file, &rotated).expect("rotate");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &proxy.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    // The reopen happens when the writer next writes; SIGHUP gives no sign of being taken up
    // other than the reload's log line.
    let reloaded = || {
        proxy
            .log_lines()
            .iter()
            .filter(|l| l.contains("SIGHUP"))
            .count()
            >= 1
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !reloaded() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(send("ROT-2"), "AA");
    assert!(holds(&file, "ROT-2"), "no new audit file after SIGHUP");
    assert_eq!(mode(&file), 0o640);
    assert!(holds(&rotated, "ROT-1"));
    assert!(
        !std::fs::read_to_string(&rotated)
            .expect("rotated")
            .contains("ROT-2")
    );
}
