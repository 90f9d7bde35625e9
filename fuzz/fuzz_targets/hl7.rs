//! Header parsing, the reader, validation in every mode and NAK building on arbitrary bytes:
//! no panic, every NAK parses back with the original control ID, and what lenient mode
//! accepts (after re-terminating) strict mode accepts too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mllp_proxy::config::{ValidationConfig, ValidationMode};
use mllp_proxy::hl7::{Header, Message, NakReason, Validator, build_nak, parse_ack};

fuzz_target!(|data: &[u8]| {
    let cfg = |mode| ValidationConfig {
        mode,
        max_message_bytes: 1 << 20,
        message_types: vec!["ADT^*".into(), "ORU^R01".into()],
        versions: vec!["2.5.1".into()],
        processing_ids: vec![],
    };
    let strict = Validator::new(&cfg(ValidationMode::Strict));
    let lenient = Validator::new(&cfg(ValidationMode::Lenient));
    let _ = Validator::new(&cfg(ValidationMode::Off)).check(data);
    let strict_result = strict.check(data);
    if let Ok(normalised) = lenient.check(data) {
        assert!(
            strict.check(&normalised.bytes).is_ok(),
            "lenient output must pass strict"
        );
    }
    if let Ok(m) = Message::parse(data) {
        for seg in m.segments().take(64) {
            let f = seg.field(3);
            let _ = f.component(2);
            let _ = f.subcomponent(1, 2);
            let _ = f.repetitions().count();
        }
    }
    let header = Header::parse(data).ok();
    let reason = match strict_result {
        Err(r) => r.reason,
        Ok(_) => NakReason::UpstreamFailed,
    };
    let (nak, sent) = build_nak(header.as_ref(), reason);
    let ack = parse_ack(&nak).expect("a proxy NAK is an acknowledgment");
    // What logs and audit records report is what the NAK says.
    assert_eq!(ack.code, sent);
    // MSA-2 echoes MSH-10 unless MSH-10 itself contains a delimiter the reader splits on.
    if let Some(h) = header {
        let id = h.control_id;
        if !id.iter().any(|&b| b == b'\r' || b == b'\n') {
            assert_eq!(ack.control_id, id);
        }
    }
    let _ = parse_ack(data);
});
