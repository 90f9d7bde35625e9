//! Acknowledgments: reading the engine's MSA, and writing the proxy's own NAKs.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::label::Label;

use super::message::{Header, Message, Separators};

crate::labels! {
    /// MSA-1 acknowledgment code, as a bounded metric label (and its wire form).
    pub enum AckCode {
        /// Application accept.
        AA => "AA",
        /// Application error.
        AE => "AE",
        /// Application reject.
        AR => "AR",
        /// Commit accept (enhanced mode).
        CA => "CA",
        /// Commit error (enhanced mode).
        CE => "CE",
        /// Commit reject (enhanced mode).
        CR => "CR",
        /// Anything else.
        Other => "other",
    }
}

crate::labels! {
    /// The `reason` of `messages_rejected_total`: why the proxy refused a message.
    pub enum RejectReason {
        /// ERR 100: segment sequence.
        Segment => "segment",
        /// ERR 101: a required field is missing.
        RequiredField => "required_field",
        /// ERR 102: data type error (a control character, a bad delimiter).
        DataType => "data_type",
        /// ERR 207: over `max_message_bytes`.
        TooLarge => "too_large",
        /// Another content error.
        Content => "content",
        /// ERR 200: MSH-9 not in `message_types`.
        MessageType => "message_type",
        /// ERR 202: MSH-11 not in `processing_ids`.
        ProcessingId => "processing_id",
        /// ERR 203: MSH-12 not in `versions`.
        Version => "version",
        /// Another unacceptable header value.
        Unsupported => "unsupported",
        /// The engine failed and `on_upstream_failure: nak` answered for it.
        Upstream => "upstream",
    }
}

/// What the proxy read from an acknowledgment.
#[derive(Debug, Clone, Copy)]
pub struct AckInfo<'a> {
    /// MSA-1.
    pub code: AckCode,
    /// MSA-2: the control ID of the acknowledged message.
    pub control_id: &'a [u8],
}

/// Why the proxy refuses a message itself; picks the MSA-1 code and the ERR code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NakReason {
    /// A content error (HL7 table 0357 code and text): answered AE / CE.
    Content {
        /// Table 0357 code (100, 101, 102, 207).
        code: u16,
        /// Human-readable reason, free of HL7 delimiters.
        text: &'static str,
    },
    /// An unacceptable MSH-9, MSH-11 or MSH-12: answered AR / CR.
    Unsupported {
        /// Table 0357 code (200, 202, 203).
        code: u16,
        /// Human-readable reason, free of HL7 delimiters.
        text: &'static str,
    },
    /// The engine failed; the sender should resend later: answered AR / CR with code 207.
    UpstreamFailed,
}

impl AckCode {
    /// Parses MSA-1.
    pub fn parse(code: &[u8]) -> Self {
        match code {
            b"AA" => AckCode::AA,
            b"AE" => AckCode::AE,
            b"AR" => AckCode::AR,
            b"CA" => AckCode::CA,
            b"CE" => AckCode::CE,
            b"CR" => AckCode::CR,
            _ => AckCode::Other,
        }
    }

    /// Whether a sender treats this code as delivered.
    pub fn is_positive(self) -> bool {
        matches!(self, AckCode::AA | AckCode::CA)
    }
}

impl NakReason {
    /// The bounded metric label of this reason.
    pub fn label(self) -> RejectReason {
        match self {
            NakReason::Content { code: 100, .. } => RejectReason::Segment,
            NakReason::Content { code: 101, .. } => RejectReason::RequiredField,
            NakReason::Content { code: 102, .. } => RejectReason::DataType,
            NakReason::Content { code: 207, .. } => RejectReason::TooLarge,
            NakReason::Content { .. } => RejectReason::Content,
            NakReason::Unsupported { code: 200, .. } => RejectReason::MessageType,
            NakReason::Unsupported { code: 202, .. } => RejectReason::ProcessingId,
            NakReason::Unsupported { code: 203, .. } => RejectReason::Version,
            NakReason::Unsupported { .. } => RejectReason::Unsupported,
            NakReason::UpstreamFailed => RejectReason::Upstream,
        }
    }

    /// The ERR code (HL7 table 0357) of the NAK.
    pub fn err_code(self) -> u16 {
        self.parts().1
    }

    fn parts(self) -> (bool, u16, &'static str) {
        match self {
            NakReason::Content { code, text } => (false, code, text),
            NakReason::Unsupported { code, text } => (true, code, text),
            NakReason::UpstreamFailed => (
                true,
                207,
                "upstream engine failed; message not delivered; resend later",
            ),
        }
    }
}

/// Reads MSA-1 and MSA-2 from an acknowledgment; `None` when it is not one.
pub fn parse_ack(msg: &[u8]) -> Option<AckInfo<'_>> {
    let sep = Message::parse(msg).ok()?.separators().field;
    // The first segment with ID MSA, looked for where segments start (after a CR or LF),
    // without splitting the segments before it: every engine answer is read this way.
    let msa = memchr::memchr2_iter(b'\r', b'\n', msg).find_map(|at| {
        let rest = &msg[at + 1..];
        let seg = &rest[..memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len())];
        (seg.starts_with(b"MSA") && seg.get(3).is_none_or(|&b| b == sep)).then_some(seg)
    })?;
    let mut fields = msa.split(|&b| b == sep).skip(1);
    let code = fields.next().unwrap_or_default();
    if code.is_empty() {
        return None;
    }
    Some(AckInfo {
        code: AckCode::parse(code),
        control_id: fields.next().unwrap_or_default(),
    })
}

/// Builds the proxy's negative acknowledgment of a message it refused.
///
/// `header` is `None` when not even MSH could be read; the NAK then uses standard delimiters,
/// version 2.5 and an empty MSA-2. Returns the NAK and its MSA-1, which logs and audit
/// records report: what was sent, not what the reason usually gets.
pub fn build_nak(header: Option<&Header<'_>>, reason: NakReason) -> (Vec<u8>, AckCode) {
    let (unsupported, err_code, text) = reason.parts();
    let enhanced = header.is_some_and(|h| h.enhanced_mode());
    let code = match (enhanced, unsupported) {
        (false, false) => AckCode::AE,
        (false, true) => AckCode::AR,
        (true, false) => AckCode::CE,
        (true, true) => AckCode::CR,
    };
    let mut out = Vec::with_capacity(256);
    let d = write_ack_header(&mut out, header, code.label(), text, NAK_PREFIX);
    // ERR-1 (segment^seq^field^code&text&table) before v2.5, ERR-3 (code^text^table) after.
    let code_digits = err_code.to_string();
    let parts: [&[u8]; 3] = [code_digits.as_bytes(), text.as_bytes(), b"HL70357"];
    out.extend_from_slice(b"ERR");
    out.push(d.field);
    let joiner = if d.pre_25 {
        out.extend_from_slice(&[d.component; 3]);
        d.subcomponent
    } else {
        out.push(d.field);
        out.push(d.field);
        d.component
    };
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(joiner);
        }
        push_escaped(&mut out, part, &d.separators);
    }
    if !d.pre_25 {
        out.push(d.field);
        out.push(b'E');
    }
    out.push(b'\r');
    (out, code)
}

/// Builds a positive acknowledgment (`AA`, or `CA` in enhanced mode): what the stand-in engine
/// of `ack-server` and `demo` answers.
pub fn build_accept(header: Option<&Header<'_>>) -> Vec<u8> {
    let code = if header.is_some_and(|h| h.enhanced_mode()) {
        AckCode::CA
    } else {
        AckCode::AA
    };
    build_ack(header, code)
}

/// Builds an acknowledgment with MSA-1 `code` and no ERR segment: what a stand-in engine
/// answers when it is told to refuse (`ack-server --fault ae=…`).
pub fn build_ack(header: Option<&Header<'_>>, code: AckCode) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    write_ack_header(&mut out, header, code.label(), "", ENGINE_PREFIX);
    out
}

struct Delimiters {
    field: u8,
    component: u8,
    subcomponent: u8,
    pre_25: bool,
    separators: Separators,
}

/// Appends `text` with any of the message's own delimiters written as HL7 escape sequences,
/// so a sender with unusual delimiters still gets a NAK whose structure reads back right.
fn push_escaped(out: &mut Vec<u8>, text: &[u8], s: &Separators) {
    for &b in text {
        let letter = if b == s.field {
            Some(b'F')
        } else if b == s.component {
            Some(b'S')
        } else if b == s.subcomponent {
            Some(b'T')
        } else if b == s.repetition {
            Some(b'R')
        } else if b == s.escape {
            Some(b'E')
        } else if Some(b) == s.truncation {
            Some(b'P')
        } else {
            None
        };
        match letter {
            Some(l) => out.extend_from_slice(&[s.escape, l, s.escape]),
            None => out.push(b),
        }
    }
}

/// The delimiters of a message without a readable MSH: the HL7 defaults.
const DEFAULT_SEPARATORS: Separators = Separators::STANDARD;

/// Writes MSH (parties swapped, a fresh control ID starting `prefix`) and MSA of an
/// acknowledgment of `header`.
fn write_ack_header(
    out: &mut Vec<u8>,
    header: Option<&Header<'_>>,
    code: &str,
    text: &str,
    prefix: &str,
) -> Delimiters {
    let (f, c, s, enc): (u8, u8, u8, &[u8]) = match header {
        Some(h) => (
            h.separators.field,
            h.separators.component,
            h.separators.subcomponent,
            h.encoding_characters,
        ),
        None => (b'|', b'^', b'&', b"^~\\&"),
    };
    let h = header.copied();
    let version = header.map_or(&b"2.5"[..], |h| {
        if h.version.is_empty() {
            b"2.5"
        } else {
            h.version
        }
    });
    let trigger = h.map_or(&[][..], |h| h.message_type_component(2));

    out.extend_from_slice(b"MSH");
    out.push(f);
    out.extend_from_slice(enc);
    for part in [
        h.map_or(&[][..], |h| h.receiving_application),
        h.map_or(&[][..], |h| h.receiving_facility),
        h.map_or(&[][..], |h| h.sending_application),
        h.map_or(&[][..], |h| h.sending_facility),
    ] {
        out.push(f);
        out.extend_from_slice(part);
    }
    out.push(f);
    out.extend_from_slice(hl7_timestamp(SystemTime::now()).as_bytes());
    out.push(f); // MSH-8 security
    out.push(f);
    out.extend_from_slice(b"ACK");
    if !trigger.is_empty() {
        out.push(c);
        out.extend_from_slice(trigger);
        out.push(c);
        out.extend_from_slice(b"ACK");
    }
    out.push(f);
    out.extend_from_slice(fresh_control_id(prefix).as_bytes());
    out.push(f);
    out.extend_from_slice(h.map_or(&[][..], |h| h.processing_id));
    out.push(f);
    out.extend_from_slice(version);
    out.push(b'\r');

    out.extend_from_slice(b"MSA");
    out.push(f);
    out.extend_from_slice(code.as_bytes());
    out.push(f);
    out.extend_from_slice(h.map_or(&[][..], |h| h.control_id));
    let separators = h.map_or(DEFAULT_SEPARATORS, |h| h.separators);
    if !text.is_empty() {
        out.push(f);
        push_escaped(out, text.as_bytes(), &separators);
    }
    out.push(b'\r');
    Delimiters {
        field: f,
        component: c,
        subcomponent: s,
        pre_25: is_pre_25(version),
        separators,
    }
}

fn is_pre_25(version: &[u8]) -> bool {
    matches!(
        version.get(..3),
        Some(b"2.1") | Some(b"2.2") | Some(b"2.3") | Some(b"2.4")
    )
}

/// The MSH-10 prefix of the proxy's own NAKs: an ACK whose control ID starts with it came from
/// the proxy, not the engine.
pub const NAK_PREFIX: &str = "PX";

/// The MSH-10 prefix of the stand-in engine's ACKs (`ack-server`, `demo`): never mistaken for
/// a proxy NAK.
pub const ENGINE_PREFIX: &str = "AS";

/// A fresh control ID: `prefix` and 16 hex digits, 18 characters (within v2.3's limit of 20).
/// A counter from a random start: unique within the process, and two processes (the proxy and
/// its replicas) only collide by chance, 1 in 2^64 per pair.
fn fresh_control_id(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: OnceLock<AtomicU64> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        // RandomState is seeded from the OS: randomness without another dependency.
        AtomicU64::new(
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
        )
    });
    format!("{prefix}{:016X}", next.fetch_add(1, Ordering::Relaxed))
}

/// `YYYYMMDDHHMMSS` in UTC, the HL7 DTM form without zone.
pub(crate) fn hl7_timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        /// The MSA found where segments start is the one the segment reader finds.
        #[test]
        fn parse_ack_reads_the_msa_the_segment_reader_finds(
            head in proptest::sample::select(vec![&b"MSH|^~\\&|"[..], b"MSH#^~\\&#", b"MSH|^~"]),
            pieces in proptest::collection::vec(proptest::sample::select(vec![
                &b"\rMSA|AA|X1"[..], b"\nMSA#AE#Z", b"\rMSA|", b"\rMSA", b"\rMSAX|AR|Q", b"\rMS",
                b"A|CA|", b"\rPID|1", b"|", b"#", b"^", b"\r", b"\n", b"\r\n", b"X",
            ]), 0..12)
        ) {
            let msg = [&[head][..], &pieces[..]].concat().concat();
            let reference = Message::parse(&msg).ok().and_then(|m| m.segment(b"MSA")).and_then(|msa| {
                let code = msa.field(1).as_bytes();
                (!code.is_empty()).then(|| (AckCode::parse(code), msa.field(2).as_bytes()))
            });
            proptest::prop_assert_eq!(parse_ack(&msg).map(|a| (a.code, a.control_id)), reference);
        }
    }

    const ADT: &[u8] =
        b"MSH|^~\\&|ADM|WARD|LAB|HOSP|20260101120000||ADT^A01^ADT_A01|MSG42|P|2.5.1\rPID|1\r";

    #[test]
    fn nak_swaps_parties_and_echoes_the_control_id() {
        let h = Header::parse(ADT).unwrap();
        let (nak, sent) = build_nak(
            Some(&h),
            NakReason::Content {
                code: 101,
                text: "required field missing",
            },
        );
        let text = String::from_utf8(nak.clone()).unwrap();
        let segs: Vec<&str> = text.split('\r').collect();
        let msh: Vec<&str> = segs[0].split('|').collect();
        assert_eq!(&msh[2..6], &["LAB", "HOSP", "ADM", "WARD"]);
        assert_eq!(msh[8], "ACK^A01^ACK");
        assert_eq!(msh[9].len(), 18);
        assert!(msh[9].starts_with("PX"));
        assert_eq!(&msh[10..12], &["P", "2.5.1"]);
        assert_eq!(segs[1], "MSA|AE|MSG42|required field missing");
        assert_eq!(segs[2], "ERR|||101^required field missing^HL70357|E");
        let info = parse_ack(&nak).unwrap();
        assert_eq!(info.code, AckCode::AE);
        assert_eq!(sent, AckCode::AE);
        assert_eq!(info.control_id, b"MSG42");
    }

    #[test]
    fn the_engines_acks_and_the_proxys_naks_have_control_ids_of_their_own() {
        // An operator tells a proxy NAK from an engine ACK by MSH-10: the stand-in engine's
        // accept must never look like one.
        let m = b"MSH|^~\\&|A|B|C|D|||ADT^A01|X1|P|2.5.1\r";
        let h = Header::parse(m).unwrap();
        let id = |ack: &[u8]| {
            String::from_utf8_lossy(ack)
                .split('|')
                .nth(9)
                .unwrap_or_default()
                .to_string()
        };
        let accept = id(&build_accept(Some(&h)));
        let nak = id(&build_nak(Some(&h), NakReason::UpstreamFailed).0);
        assert!(
            accept.starts_with(ENGINE_PREFIX) && accept.len() == 18,
            "{accept}"
        );
        assert!(nak.starts_with(NAK_PREFIX) && nak.len() == 18, "{nak}");
        assert_ne!(ENGINE_PREFIX, NAK_PREFIX);
    }

    #[test]
    fn enhanced_mode_and_old_versions() {
        let m = b"MSH|^~\\&|A|B|C|D|||ORU^R01|X9|T|2.3|||AL|NE\r";
        let h = Header::parse(m).unwrap();
        let (nak, sent) = build_nak(Some(&h), NakReason::UpstreamFailed);
        let info = parse_ack(&nak).unwrap();
        assert_eq!(info.code, AckCode::CR);
        assert_eq!(sent, AckCode::CR);
        let text = String::from_utf8(nak).unwrap();
        assert!(
            text.contains("\rERR|^^^207&upstream engine failed"),
            "{text}"
        );
    }

    #[test]
    fn texts_are_escaped_against_the_senders_delimiters() {
        // A sender whose component separator is `-` (legal) would otherwise see the NAK text
        // "MSH-1 field separator…" split into components.
        let m = b"MSH|-~\\&|A|B|C|D|||ADT-A01|X1|P|2.5\r";
        let h = Header::parse(m).unwrap();
        let (nak, _) = build_nak(
            Some(&h),
            NakReason::Content {
                code: 102,
                text: "MSH-1 field separator is invalid",
            },
        );
        let text = String::from_utf8(nak).unwrap();
        assert!(
            text.contains("MSA|AE|X1|MSH\\S\\1 field separator is invalid\r"),
            "{text}"
        );
    }

    #[test]
    fn unreadable_header_gets_a_generic_nak() {
        let (nak, sent) = build_nak(
            None,
            NakReason::Content {
                code: 100,
                text: "no MSH",
            },
        );
        let info = parse_ack(&nak).unwrap();
        assert_eq!(info.code, AckCode::AE);
        assert_eq!(sent, AckCode::AE);
        assert!(info.control_id.is_empty());
    }

    #[test]
    fn reads_msa_and_refuses_non_acks() {
        let ack = b"MSH|^~\\&|LAB|HOSP|ADM|WARD|20260101||ACK^A01^ACK|A1|P|2.5.1\rMSA|AA|MSG42\r";
        let info = parse_ack(ack).unwrap();
        assert_eq!((info.code, info.control_id), (AckCode::AA, &b"MSG42"[..]));
        assert!(parse_ack(ADT).is_none());
        assert!(parse_ack(b"garbage").is_none());
    }

    #[test]
    fn timestamps_are_civil_utc() {
        let t = UNIX_EPOCH + Duration::from_secs(1_767_225_600 + 3661); // 2026-01-01T01:01:01Z
        assert_eq!(hl7_timestamp(t), "20260101010101");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
