//! The MLLP decoder on arbitrary bytes cut into arbitrary reads: no panic, the buffer never
//! holds more than the limit plus one read, and every message respects the limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mllp_proxy::mllp::{Frame, MllpCodec};
use tokio_util::codec::Decoder;

const LIMIT: usize = 512;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(cut % 64) + 1;
    let mut codec = MllpCodec::new(LIMIT);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Ok(Some(frame)) = codec.decode(&mut buf) {
            match frame {
                Frame::Message(m) => assert!(m.len() <= LIMIT),
                Frame::Oversize { head, len } => assert!(len > LIMIT && head.len() <= len),
            }
        }
        assert!(
            buf.len() <= LIMIT + chunk + 1,
            "buffer grew to {}",
            buf.len()
        );
    }
    let _ = codec.decode_eof(&mut buf);
});
