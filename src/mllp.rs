//! MLLP framing: `0x0B` message `0x1C 0x0D`, as a tokio-util codec.
//!
//! The decoder is bounded: a frame over `max_message_bytes` is consumed and thrown away up to its
//! end block while only its first bytes are kept (so the proxy can still read the header and
//! NAK it). Bytes outside frames are discarded and counted. A scan index means a frame arriving in
//! many small reads is scanned once, not once per read.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Start block.
pub const SB: u8 = 0x0B;
/// End block, followed by [`CR`].
pub const EB: u8 = 0x1C;
/// Carriage return that closes a frame (and separates HL7 segments).
pub const CR: u8 = 0x0D;

/// How much of an oversize frame is kept: enough for any realistic MSH segment.
pub const OVERSIZE_HEAD_BYTES: usize = 4096;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete message (the bytes between the start block and the end block).
    Message(Bytes),
    /// A message over the limit, consumed to its end; `head` holds its first bytes.
    Oversize {
        /// The first [`OVERSIZE_HEAD_BYTES`] bytes (or fewer) of the message.
        head: Bytes,
        /// Total message length in bytes.
        len: usize,
    },
}

/// A framing error; the connection cannot be resynchronised after it.
#[derive(Debug, thiserror::Error)]
pub enum MllpError {
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame ({received} bytes received)")]
    TruncatedFrame {
        /// Bytes of the unfinished frame that had arrived.
        received: usize,
    },
    /// Reading or writing the socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// MLLP decoder and encoder with a size limit.
#[derive(Debug)]
pub struct MllpCodec {
    max_len: usize,
    state: State,
    discarded: u64,
}

#[derive(Debug)]
enum State {
    /// Outside a frame, looking for a start block.
    Idle,
    /// Inside a frame; `buf[..scanned]` is known to hold no end block.
    InFrame { scanned: usize },
    /// Inside an oversize frame whose content is being thrown away.
    Discarding { head: Bytes, len: usize },
}

impl MllpCodec {
    /// A codec that accepts messages up to `max_len` bytes (framing bytes excluded).
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            state: State::Idle,
            discarded: 0,
        }
    }

    /// Changes the largest frame accepted from the next frame on (a reload).
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len;
    }

    /// Whether a frame has started and not yet ended (the frame timeout applies).
    pub fn in_frame(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// Bytes discarded outside frames since the last call, resetting the count.
    pub fn take_discarded(&mut self) -> u64 {
        std::mem::take(&mut self.discarded)
    }

    /// Frames `msg` into `dst` (start block, message, end block, carriage return).
    pub fn write_frame(msg: &[u8], dst: &mut BytesMut) {
        dst.reserve(msg.len() + 3);
        dst.put_u8(SB);
        dst.put_slice(msg);
        dst.put_slice(&[EB, CR]);
    }

    /// The bytes before and after a message in its frame.
    pub fn frame_ends() -> (&'static [u8], &'static [u8]) {
        (&[SB], &[EB, CR])
    }

    /// A framed copy of `msg`.
    pub fn frame(msg: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(msg.len() + 3);
        Self::write_frame(msg, &mut b);
        b.freeze()
    }
}

impl Decoder for MllpCodec {
    type Item = Frame;
    type Error = MllpError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, MllpError> {
        loop {
            match &mut self.state {
                State::Idle => {
                    match memchr::memchr(SB, buf) {
                        Some(i) => {
                            self.discarded += i as u64;
                            // Keep the start block in the buffer so indices below are stable.
                            buf.advance(i);
                            self.state = State::InFrame { scanned: 1 };
                        }
                        None => {
                            self.discarded += buf.len() as u64;
                            buf.clear();
                            return Ok(None);
                        }
                    }
                }
                State::InFrame { scanned } => {
                    let start = *scanned;
                    if let Some(end) = find_end(buf, start) {
                        let content_len = end - 1;
                        if content_len > self.max_len {
                            // Grew past the limit within this single read: report it the same way.
                            let head = Bytes::copy_from_slice(
                                &buf[1..1 + OVERSIZE_HEAD_BYTES.min(content_len)],
                            );
                            buf.advance(end + 2);
                            self.state = State::Idle;
                            return Ok(Some(Frame::Oversize {
                                head,
                                len: content_len,
                            }));
                        }
                        let frame = buf.split_to(end + 2).freeze();
                        self.state = State::Idle;
                        return Ok(Some(Frame::Message(frame.slice(1..end))));
                    }
                    // No end yet. A trailing EB may be completed by the next read, so it is
                    // neither counted as content nor dropped; everything before it is never
                    // scanned again.
                    let keep_eb = usize::from(buf.last() == Some(&EB));
                    let content_len = buf.len() - 1 - keep_eb;
                    if content_len > self.max_len {
                        let head = Bytes::copy_from_slice(
                            &buf[1..1 + OVERSIZE_HEAD_BYTES.min(content_len)],
                        );
                        buf.advance(1 + content_len);
                        self.state = State::Discarding {
                            head,
                            len: content_len,
                        };
                        continue;
                    }
                    *scanned = buf.len().saturating_sub(1).max(1);
                    return Ok(None);
                }
                State::Discarding { head, len } => {
                    if let Some(end) = find_end(buf, 0) {
                        let total = *len + end;
                        let head = std::mem::take(head);
                        buf.advance(end + 2);
                        self.state = State::Idle;
                        return Ok(Some(Frame::Oversize { head, len: total }));
                    }
                    let keep_eb = buf.last() == Some(&EB);
                    let drop = buf.len() - usize::from(keep_eb);
                    *len += drop;
                    buf.advance(drop);
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, MllpError> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        match &self.state {
            State::Idle => {
                self.discarded += buf.len() as u64;
                buf.clear();
                Ok(None)
            }
            State::InFrame { .. } => {
                let received = buf.len().saturating_sub(1);
                buf.clear();
                self.state = State::Idle;
                Err(MllpError::TruncatedFrame { received })
            }
            State::Discarding { len, .. } => {
                let received = *len + buf.len();
                buf.clear();
                self.state = State::Idle;
                Err(MllpError::TruncatedFrame { received })
            }
        }
    }
}

impl Encoder<&[u8]> for MllpCodec {
    type Error = MllpError;

    fn encode(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<(), MllpError> {
        Self::write_frame(msg, dst);
        Ok(())
    }
}

/// Index of the `EB` of the first `EB CR` pair at or after `from`.
fn find_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = memchr::memchr(EB, buf.get(i..)?) {
        let at = i + off;
        if buf.get(at + 1) == Some(&CR) {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed(codec: &mut MllpCodec, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for c in chunks {
            buf.extend_from_slice(c);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        out
    }

    fn msg(s: &str) -> Frame {
        Frame::Message(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn one_frame_fed_byte_by_byte_is_one_message() {
        let wire = MllpCodec::frame(b"MSH|^~\\&|A\rPID|1\r");
        let chunks: Vec<&[u8]> = wire.chunks(1).collect();
        let frames = feed(&mut MllpCodec::new(1024), &chunks);
        assert_eq!(frames, vec![msg("MSH|^~\\&|A\rPID|1\r")]);
    }

    #[test]
    fn two_frames_in_one_read_are_two_messages() {
        let mut wire = BytesMut::new();
        MllpCodec::write_frame(b"MSH|1", &mut wire);
        MllpCodec::write_frame(b"MSH|2", &mut wire);
        let frames = feed(&mut MllpCodec::new(1024), &[&wire]);
        assert_eq!(frames, vec![msg("MSH|1"), msg("MSH|2")]);
    }

    #[test]
    fn garbage_between_frames_is_discarded_and_counted() {
        let mut codec = MllpCodec::new(1024);
        let frames = feed(
            &mut codec,
            &[b"junk\r\n\x0bMSH|1\x1c\r\n\n", b"more\x0bMSH|2\x1c", b"\r"],
        );
        assert_eq!(frames, vec![msg("MSH|1"), msg("MSH|2")]);
        assert_eq!(codec.take_discarded(), 6 + 2 + 4);
        assert_eq!(codec.take_discarded(), 0);
    }

    #[test]
    fn end_block_without_cr_is_content() {
        let frames = feed(&mut MllpCodec::new(1024), &[b"\x0bA\x1cB\x1c\r"]);
        assert_eq!(frames, vec![Frame::Message(Bytes::from_static(b"A\x1cB"))]);
    }

    #[test]
    fn oversize_frame_is_consumed_and_reported_with_its_head() {
        let big = vec![b'x'; 10_000];
        let mut wire = BytesMut::new();
        MllpCodec::write_frame(&big, &mut wire);
        MllpCodec::write_frame(b"MSH|ok", &mut wire);
        let mut codec = MllpCodec::new(1000);
        let chunks: Vec<&[u8]> = wire.chunks(333).collect();
        let frames = feed(&mut codec, &chunks);
        assert_eq!(frames.len(), 2);
        match &frames[0] {
            Frame::Oversize { head, len } => {
                assert_eq!(*len, 10_000);
                assert!(head.len() <= OVERSIZE_HEAD_BYTES && head.len() >= 999);
                assert!(head.iter().all(|&b| b == b'x'));
            }
            other => panic!("expected oversize, got {other:?}"),
        }
        assert_eq!(frames[1], msg("MSH|ok"));
    }

    #[test]
    fn oversize_frame_never_holds_more_than_the_limit() {
        let mut codec = MllpCodec::new(1000);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"\x0b");
        for _ in 0..1000 {
            buf.extend_from_slice(&[b'y'; 512]);
            assert!(codec.decode(&mut buf).unwrap().is_none());
            assert!(buf.len() <= 1000 + 512 + 1, "buffer grew to {}", buf.len());
        }
        buf.extend_from_slice(b"\x1c\r");
        match codec.decode(&mut buf).unwrap() {
            Some(Frame::Oversize { len, .. }) => assert_eq!(len, 512_000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn eof_inside_a_frame_is_an_error_and_outside_is_not() {
        let mut codec = MllpCodec::new(1024);
        let mut buf = BytesMut::from(&b"\x0bMSH|half"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(codec.in_frame());
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(MllpError::TruncatedFrame { received: 8 })
        ));
        let mut buf = BytesMut::from(&b"\r\n"[..]);
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
    }

    fn stream_of(messages: &[Vec<u8>]) -> Vec<u8> {
        let mut wire = BytesMut::new();
        for m in messages {
            MllpCodec::write_frame(m, &mut wire);
        }
        wire.to_vec()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any split of a stream of frames yields the same messages as one read.
        #[test]
        fn any_split_yields_the_same_messages(
            messages in proptest::collection::vec(
                proptest::collection::vec(any::<u8>().prop_filter("no framing", |b| *b != SB && *b != EB), 0..300),
                1..8),
            cuts in proptest::collection::vec(0usize..2500, 0..20),
        ) {
            let wire = stream_of(&messages);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut prev = 0;
            for c in cuts { chunks.push(&wire[prev..c]); prev = c; }
            chunks.push(&wire[prev..]);
            let frames = feed(&mut MllpCodec::new(256), &chunks);
            let expected: Vec<Frame> = messages.iter().map(|m| if m.len() > 256 {
                Frame::Oversize { head: Bytes::copy_from_slice(&m[..m.len().min(OVERSIZE_HEAD_BYTES)]), len: m.len() }
            } else {
                Frame::Message(Bytes::copy_from_slice(m))
            }).collect();
            // Heads of oversize frames depend on where the limit was crossed; compare lengths there.
            prop_assert_eq!(frames.len(), expected.len());
            for (got, want) in frames.iter().zip(expected.iter()) {
                match (got, want) {
                    (Frame::Oversize { len: a, head }, Frame::Oversize { len: b, head: wh }) => {
                        prop_assert_eq!(a, b);
                        prop_assert!(wh.starts_with(head) || head.starts_with(wh));
                    }
                    _ => prop_assert_eq!(got, want),
                }
            }
        }

        /// Arbitrary bytes never panic and never grow the buffer past the limit plus one read.
        #[test]
        fn arbitrary_bytes_are_bounded(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..400), 0..30)) {
            let mut codec = MllpCodec::new(300);
            let mut buf = BytesMut::new();
            for c in &chunks {
                buf.extend_from_slice(c);
                while let Ok(Some(_)) = codec.decode(&mut buf) {}
                prop_assert!(buf.len() <= 300 + 400 + 1);
            }
            let _ = codec.decode_eof(&mut buf);
        }
    }
}
