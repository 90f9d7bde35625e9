//! The per-route validation policy (`strict`, `lenient`, `off`) and allow-lists.

use std::borrow::Cow;

use super::ack::NakReason;
use super::message::{Header, HeaderError};
use crate::config::{ValidationConfig, ValidationMode};

/// An accepted message: what to forward, and its header, read once for the whole exchange.
#[derive(Debug, Clone)]
pub struct Checked<'a> {
    /// The bytes to forward (re-terminated in lenient mode).
    pub bytes: Cow<'a, [u8]>,
    /// MSH of the message; `None` only in `off` mode when it cannot be read.
    pub header: Option<Header<'a>>,
}

/// A refused message: why, which picks the NAK's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// Picks the MSA-1 and ERR codes of the NAK.
    pub reason: NakReason,
}

/// A route's validation rules, compiled once.
#[derive(Debug, Clone)]
pub struct Validator {
    mode: ValidationMode,
    message_types: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    versions: Vec<Vec<u8>>,
    processing_ids: Vec<Vec<u8>>,
}

impl Validator {
    /// Compiles the rules of one route.
    pub fn new(cfg: &ValidationConfig) -> Self {
        let message_types = cfg
            .message_types
            .iter()
            .map(|t| match t.split_once('^') {
                Some((ty, "*")) | Some((ty, "")) => (ty.as_bytes().to_vec(), None),
                Some((ty, ev)) => (ty.as_bytes().to_vec(), Some(ev.as_bytes().to_vec())),
                None => (t.as_bytes().to_vec(), None),
            })
            .collect();
        Self {
            mode: cfg.mode,
            message_types,
            versions: cfg.versions.iter().map(|v| v.as_bytes().to_vec()).collect(),
            processing_ids: cfg
                .processing_ids
                .iter()
                .map(|v| v.as_bytes().to_vec())
                .collect(),
        }
    }

    /// The validation mode.
    pub fn mode(&self) -> ValidationMode {
        self.mode
    }

    /// Checks `msg`; returns what to forward and its header, or why not.
    pub fn check<'a>(&self, msg: &'a [u8]) -> Result<Checked<'a>, Rejection> {
        if self.mode == ValidationMode::Off {
            // Even here: a framing byte would split the message in two at the engine.
            if memchr::memchr2(crate::mllp::SB, crate::mllp::EB, msg).is_some() {
                return Err(content(102, "message contains an MLLP framing byte"));
            }
            return Ok(Checked {
                bytes: Cow::Borrowed(msg),
                header: Header::parse(msg).ok(),
            });
        }
        // What nearly every message is: no byte below space but CR and TAB (so no framing
        // byte, control character or LF), ending in CR. One pass settles all of that, and
        // what is left to check reads the same in strict and lenient mode.
        if !has_byte_below_space_but_cr_tab(msg) && msg.last() == Some(&b'\r') {
            let header = parse_header(msg)?;
            check_segment_ids(msg, header.separators.field)?;
            self.check_fields(&header)?;
            return Ok(Checked {
                bytes: Cow::Borrowed(msg),
                header: Some(header),
            });
        }
        self.check_general(msg)
    }

    /// [`Validator::check`] for a message with bytes below space other than CR and TAB, or
    /// without a final CR: the rules in the order that picks the answer.
    fn check_general<'a>(&self, msg: &'a [u8]) -> Result<Checked<'a>, Rejection> {
        if memchr::memchr2(crate::mllp::SB, crate::mllp::EB, msg).is_some() {
            return Err(content(102, "message contains an MLLP framing byte"));
        }
        if has_control_character(msg) {
            return Err(content(
                102,
                "message contains a control character other than CR, LF and TAB",
            ));
        }
        let header = parse_header(msg)?;
        let bytes = if self.mode == ValidationMode::Lenient {
            normalise_terminators(msg)
        } else {
            Cow::Borrowed(msg)
        };
        check_segments(&bytes, header.separators.field)?;
        self.check_fields(&header)?;
        Ok(Checked {
            bytes,
            header: Some(header),
        })
    }

    /// The required MSH fields, then the allow-lists.
    fn check_fields(&self, header: &Header<'_>) -> Result<(), Rejection> {
        if header.message_type_component(1).is_empty() {
            return Err(content(101, "MSH-9 message type is missing"));
        }
        if header.control_id.is_empty() {
            return Err(content(101, "MSH-10 message control ID is missing"));
        }
        if header.version_id().is_empty() {
            return Err(content(101, "MSH-12 version ID is missing"));
        }
        self.check_allow_lists(header)
    }

    fn check_allow_lists(&self, h: &Header<'_>) -> Result<(), Rejection> {
        // Acknowledgments flow regardless of the type allow-list: it lists what may be sent.
        if !self.message_types.is_empty() && !h.is_ack() {
            let ty = h.message_type_component(1);
            let ev = h.message_type_component(2);
            let ok = self
                .message_types
                .iter()
                .any(|(t, e)| t == ty && e.as_ref().is_none_or(|e| e == ev));
            if !ok {
                return Err(unsupported(200, "message type not accepted on this route"));
            }
        }
        if !self.versions.is_empty() && !self.versions.iter().any(|v| v == h.version_id()) {
            return Err(unsupported(203, "version ID not accepted on this route"));
        }
        if !self.processing_ids.is_empty()
            && !self
                .processing_ids
                .iter()
                .any(|p| p == h.processing_id_value())
        {
            return Err(unsupported(202, "processing ID not accepted on this route"));
        }
        Ok(())
    }
}

/// MSH read, its errors as the NAK's codes.
fn parse_header(msg: &[u8]) -> Result<Header<'_>, Rejection> {
    Header::parse(msg).map_err(|e| match e {
        HeaderError::NoMsh => content(100, "message does not start with an MSH segment"),
        HeaderError::BadFieldSeparator => content(102, "MSH-1 field separator is invalid"),
        HeaderError::BadEncodingCharacters => content(102, "MSH-2 encoding characters are invalid"),
    })
}

fn content(code: u16, text: &'static str) -> Rejection {
    Rejection {
        reason: NakReason::Content { code, text },
    }
}

fn unsupported(code: u16, text: &'static str) -> Rejection {
    Rejection {
        reason: NakReason::Unsupported { code, text },
    }
}

/// Whether `msg` holds a C0 control character other than CR, LF and TAB: a NUL or an escape
/// in a field may make the engine read the message differently from the proxy (or an
/// operator's terminal run it). LF is left to the segment rules: strict refuses it as a
/// terminator (ERR 100), lenient turns it into CR.
///
/// Written without an early exit per byte so that it compiles to a vectorised scan: bitwise
/// `&`, not `&&`, so each 64-byte block becomes a few vector compares; the early exit is per
/// block. Only messages off the fast path ([`has_byte_below_space_but_cr_tab`]) get here.
fn has_control_character(msg: &[u8]) -> bool {
    let bad = |b: u8| {
        u8::from(b < 0x20) & u8::from(b != b'\r') & u8::from(b != b'\t') & u8::from(b != b'\n')
    };
    let mut blocks = msg.chunks_exact(64);
    let hit = blocks
        .by_ref()
        .any(|block| block.iter().fold(0u8, |acc, &b| acc | bad(b)) != 0);
    hit || blocks.remainder().iter().any(|&b| bad(b) != 0)
}

/// Whether `msg` holds a byte below space other than CR and TAB: the scan every message gets,
/// so it is written for the vector unit. `b | 4` maps TAB (0x09) and CR (0x0D), and only them,
/// to 0x0D, so `((b | 4) ^ 0x0D) - 1` (wrapping) is below 0x1F exactly for the bytes refused:
/// or, xor, add and a running minimum per byte, and one compare at the end. No early exit: a
/// message that fails is rare, and a check per block cost a third of the scan.
fn has_byte_below_space_but_cr_tab(msg: &[u8]) -> bool {
    let key = |b: u8| ((b | 4) ^ 0x0D).wrapping_sub(1);
    msg.iter().fold(u8::MAX, |acc, &b| acc.min(key(b))) < 0x1F
}

/// Strict segment rules: `\r` terminators (including the last), no empty segments, and IDs of
/// three upper-case letters or digits followed by the field separator or the terminator.
fn check_segments(msg: &[u8], field_sep: u8) -> Result<(), Rejection> {
    if memchr::memchr(b'\n', msg).is_some() {
        return Err(content(100, "segments must be terminated by CR only"));
    }
    if msg.last() != Some(&b'\r') {
        return Err(content(100, "the last segment is not terminated by CR"));
    }
    check_segment_ids(msg, field_sep)
}

/// The segment rules past the terminators: no empty segment, three-character IDs.
fn check_segment_ids(msg: &[u8], field_sep: u8) -> Result<(), Rejection> {
    let mut start = 0;
    for end in memchr::memchr_iter(b'\r', msg) {
        let seg = &msg[start..end];
        start = end + 1;
        if seg.is_empty() {
            return Err(content(100, "empty segment"));
        }
        let id_ok = seg.len() >= 3
            && seg[..3]
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && seg.get(3).is_none_or(|&b| b == field_sep);
        if !id_ok {
            return Err(content(
                100,
                "segment ID is not three upper-case letters or digits",
            ));
        }
    }
    Ok(())
}

/// `\r\n` and lone `\n` become `\r`, and a missing final `\r` is added; nothing else changes.
/// The one line-end normaliser: lenient validation, `send`'s files and the tests use it.
pub fn normalise_terminators(msg: &[u8]) -> Cow<'_, [u8]> {
    if memchr::memchr(b'\n', msg).is_none() && msg.last() == Some(&b'\r') {
        return Cow::Borrowed(msg);
    }
    let mut out = Vec::with_capacity(msg.len() + 1);
    let mut i = 0;
    while i < msg.len() {
        match msg[i] {
            b'\r' if msg.get(i + 1) == Some(&b'\n') => {
                out.push(b'\r');
                i += 2;
            }
            b'\n' => {
                out.push(b'\r');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    if out.last() != Some(&b'\r') {
        out.push(b'\r');
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_scan_refuses_exactly_the_bytes_below_space_but_cr_and_tab() {
        for b in 0..=u8::MAX {
            let refused = b < 0x20 && b != b'\r' && b != b'\t';
            // Alone, and amid a longer message.
            assert_eq!(
                has_byte_below_space_but_cr_tab(&[b]),
                refused,
                "byte {b:#04x}"
            );
            let mut long = vec![b'A'; 200];
            long[70] = b;
            assert_eq!(
                has_byte_below_space_but_cr_tab(&long),
                refused,
                "byte {b:#04x}"
            );
        }
    }

    fn validator(mode: ValidationMode) -> Validator {
        Validator::new(&ValidationConfig {
            mode,
            max_message_bytes: 1 << 20,
            message_types: vec!["ADT^A01".into(), "ORU^*".into()],
            versions: vec![],
            processing_ids: vec![],
        })
    }

    const GOOD: &[u8] = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|X1|P|2.5\rPID|1||123\r";

    #[test]
    fn control_characters_are_refused_except_in_off_mode_and_framing_bytes_everywhere() {
        let nul_in_msh3 = b"MSH|^~\\&|LAB\0|B|C|D|20260101||ADT^A01|X1|P|2.5\rPID|1||123\r";
        let nul_in_msh9 = b"MSH|^~\\&|A|B|C|D|20260101||ADT\0^A01|X1|P|2.5\rPID|1||123\r";
        let esc_in_obx = b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|X1|P|2.5\rOBX|1|ST|X||\x1b[31mRED\r";
        let tab = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|X1|P|2.5\rNTE|1||a\tb\r";
        for mode in [ValidationMode::Strict, ValidationMode::Lenient] {
            let v = validator(mode);
            for msg in [&nul_in_msh3[..], nul_in_msh9, esc_in_obx] {
                let r = v.check(msg).unwrap_err();
                assert!(
                    matches!(r.reason, NakReason::Content { code: 102, .. }),
                    "{mode:?} {r:?}"
                );
            }
            assert!(v.check(tab).is_ok(), "{mode:?}");
        }
        let off = validator(ValidationMode::Off);
        assert!(off.check(nul_in_msh3).is_ok());
        let framed = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|X1|P|2.5\rNTE|1||a\x1cb\r";
        for mode in [
            ValidationMode::Strict,
            ValidationMode::Lenient,
            ValidationMode::Off,
        ] {
            let r = validator(mode).check(framed).unwrap_err();
            assert!(
                matches!(r.reason, NakReason::Content { code: 102, .. }),
                "{mode:?}"
            );
        }
    }

    #[test]
    fn strict_accepts_a_good_message_unchanged() {
        let v = validator(ValidationMode::Strict);
        let checked = v.check(GOOD).unwrap();
        assert!(matches!(checked.bytes, Cow::Borrowed(b) if b == GOOD));
        assert_eq!(checked.header.unwrap().control_id, b"X1");
    }

    #[test]
    fn lenient_rewrites_only_terminators() {
        let v = validator(ValidationMode::Lenient);
        let crlf = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|X1|P|2.5\r\nPID|1||123";
        assert_eq!(v.check(crlf).unwrap().bytes.as_ref(), GOOD);
        let lf = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|X1|P|2.5\nPID|1||123\n";
        assert_eq!(v.check(lf).unwrap().bytes.as_ref(), GOOD);
        assert!(validator(ValidationMode::Strict).check(crlf).is_err());
    }

    #[test]
    fn rejections_carry_table_0357_codes() {
        let v = validator(ValidationMode::Strict);
        let code = |m: &[u8]| match v.check(m).unwrap_err().reason {
            NakReason::Content { code, .. } | NakReason::Unsupported { code, .. } => code,
            NakReason::UpstreamFailed => 0,
        };
        assert_eq!(code(b"PID|1\r"), 100);
        assert_eq!(code(b"MSH|^~\\&|A|B|C|D|1||ADT^A01||P|2.5\r"), 101);
        assert_eq!(code(b"MSH|^~\\&|A|B|C|D|1||ADT^A01|X|P|\r"), 101);
        assert_eq!(code(b"MSH|^~\\&|A|B|C|D|1||ADT^A01|X|P|2.5\rpid|1\r"), 100);
        assert_eq!(
            code(b"MSH|^~\\&|A|B|C|D|1||ADT^A01|X|P|2.5\r\rPID|1\r"),
            100
        );
        assert_eq!(code(b"MSH|^~\\&|A|B|C|D|1||ADT^A04|X|P|2.5\r"), 200);
        assert_eq!(code(b"MSH|^~\\&|A|B|C|D|1||ORM^O01|X|P|2.5\r"), 200);
        assert_eq!(
            code(b"MSH|^~\\&|A|B|C|D|1||ADT^A01|X|P|2.5\rPID|\x0b1\r"),
            102
        );
        assert!(v.check(b"MSH|^~\\&|A|B|C|D|1||ORU^R30|X|P|2.5\r").is_ok());
    }

    #[test]
    fn off_forwards_anything_framed() {
        let v = validator(ValidationMode::Off);
        assert!(v.check(b"\xff\xfe not hl7").is_ok());
    }

    mod properties {
        use super::*;
        use crate::hl7::{Header, build_nak, parse_ack};
        use proptest::prelude::*;

        /// Bytes that look enough like HL7 to reach deep into the rules.
        fn hl7ish() -> impl Strategy<Value = Vec<u8>> {
            let alphabet: Vec<u8> = b"MSHPIDOBX|^~\\&#-\r\n\x0b\x1c 0123AaZ\xff".to_vec();
            (
                prop::sample::select(vec![&b"MSH|^~\\&|"[..], b"MSH#^~\\&#", b"MSH|^~\\&#|", b""]),
                prop::collection::vec(prop::sample::select(alphabet), 0..400),
            )
                .prop_map(|(head, body)| [head, &body[..]].concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            /// No input panics; lenient output passes strict; every NAK reads back with the
            /// message's own control ID.
            #[test]
            fn validation_and_naks_hold_on_any_input(data in prop_oneof![hl7ish(), prop::collection::vec(any::<u8>(), 0..300)]) {
                let strict = validator(ValidationMode::Strict);
                let lenient = validator(ValidationMode::Lenient);
                let strict_result = strict.check(&data);
                // The one-pass path decides as the rules in their order would.
                for v in [&strict, &lenient] {
                    let (fast, general) = (v.check(&data), v.check_general(&data));
                    prop_assert_eq!(fast.as_ref().err(), general.as_ref().err());
                    if let (Ok(f), Ok(g)) = (fast, general) {
                        prop_assert_eq!(f.bytes, g.bytes);
                        prop_assert_eq!(f.header.map(|h| h.control_id), g.header.map(|h| h.control_id));
                    }
                }
                if let Ok(out) = lenient.check(&data) {
                    prop_assert!(strict.check(&out.bytes).is_ok());
                }
                let header = Header::parse(&data).ok();
                let reason = strict_result.err().map_or(NakReason::UpstreamFailed, |r| r.reason);
                let (nak, sent) = build_nak(header.as_ref(), reason);
                let ack = parse_ack(&nak);
                prop_assert_eq!(ack.map(|a| a.code), Some(sent));
                if let (Some(h), Some(a)) = (header, ack) {
                    prop_assert_eq!(a.control_id, h.control_id);
                }
            }
        }
    }
}
