//! Zero-copy reading of the MSH segment and of segments and fields of any message.

/// The delimiters a message declares in MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Separators {
    /// MSH-1, usually `|`.
    pub field: u8,
    /// First encoding character, usually `^`.
    pub component: u8,
    /// Second encoding character, usually `~`.
    pub repetition: u8,
    /// Third encoding character, usually `\`.
    pub escape: u8,
    /// Fourth encoding character, usually `&`.
    pub subcomponent: u8,
    /// Fifth encoding character (v2.7+), usually `#`.
    pub truncation: Option<u8>,
}

impl Separators {
    /// The HL7 defaults, `|^~\\&`: what nearly every message declares.
    pub const STANDARD: Separators = Separators {
        field: b'|',
        component: b'^',
        repetition: b'~',
        escape: b'\\',
        subcomponent: b'&',
        truncation: None,
    };
}

/// Why the MSH header could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The message does not start with `MSH`.
    #[error("message does not start with an MSH segment")]
    NoMsh,
    /// MSH-1 is missing or is a letter, digit or line break.
    #[error("MSH-1 field separator is invalid")]
    BadFieldSeparator,
    /// MSH-2 is not four or five distinct delimiter characters.
    #[error("MSH-2 encoding characters are invalid")]
    BadEncodingCharacters,
}

/// The fields of MSH the proxy needs, as slices of the message.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    /// The delimiters declared by this message.
    pub separators: Separators,
    /// MSH-2 exactly as written.
    pub encoding_characters: &'a [u8],
    /// MSH-3 sending application.
    pub sending_application: &'a [u8],
    /// MSH-4 sending facility.
    pub sending_facility: &'a [u8],
    /// MSH-5 receiving application.
    pub receiving_application: &'a [u8],
    /// MSH-6 receiving facility.
    pub receiving_facility: &'a [u8],
    /// MSH-9 message type, all components.
    pub message_type: &'a [u8],
    /// MSH-10 message control ID.
    pub control_id: &'a [u8],
    /// MSH-11 processing ID.
    pub processing_id: &'a [u8],
    /// MSH-12 version ID.
    pub version: &'a [u8],
    /// MSH-15 accept acknowledgment type (non-empty means enhanced mode).
    pub accept_ack_type: &'a [u8],
}

impl<'a> Header<'a> {
    /// Reads MSH from the start of `msg`. The segment ends at the first `\r` or `\n`.
    pub fn parse(msg: &'a [u8]) -> Result<Self, HeaderError> {
        let (separators, encoding_characters) = msh_delimiters(msg)?;
        let end = memchr::memchr2(b'\r', b'\n', msg).unwrap_or(msg.len());
        let seg = &msg[..end];
        // fields[0] = "MSH", fields[1] = MSH-2, fields[n-1] = MSH-n for n >= 2.
        let mut fields: [&[u8]; 18] = [&[]; 18];
        let (mut n, mut start) = (0, 0);
        // Eight bytes at a time: MSH is read for every message and every ACK, and a byte
        // loop over it cost more than the rest of validation.
        let repeated = u64::from(separators.field) * 0x0101_0101_0101_0101;
        let mut base = 0;
        while let Some(word) = seg.get(base..).and_then(<[u8]>::first_chunk::<8>) {
            let mut hits = zero_bytes(u64::from_le_bytes(*word) ^ repeated);
            while hits != 0 && n < fields.len() {
                let at = base + hits.trailing_zeros() as usize / 8;
                hits &= hits - 1;
                fields[n] = &seg[start..at];
                (n, start) = (n + 1, at + 1);
            }
            if n == fields.len() {
                break;
            }
            base += 8;
        }
        for at in base..seg.len() {
            if n < fields.len() && seg[at] == separators.field {
                fields[n] = &seg[start..at];
                (n, start) = (n + 1, at + 1);
            }
        }
        if let Some(last) = fields.get_mut(n) {
            *last = &seg[start..];
        }
        Ok(Header {
            separators,
            encoding_characters,
            sending_application: fields[2],
            sending_facility: fields[3],
            receiving_application: fields[4],
            receiving_facility: fields[5],
            message_type: fields[8],
            control_id: fields[9],
            processing_id: fields[10],
            version: fields[11],
            accept_ack_type: fields[14],
        })
    }

    /// Component `n` (1-based) of MSH-9: 1 is the type (`ADT`), 2 the trigger (`A01`).
    pub fn message_type_component(&self, n: usize) -> &'a [u8] {
        component(self.message_type, self.separators.component, n)
    }

    /// First component of MSH-12 (a version may carry an internationalisation code after it).
    pub fn version_id(&self) -> &'a [u8] {
        component(self.version, self.separators.component, 1)
    }

    /// First component of MSH-11 (`P`, `T`, `D`).
    pub fn processing_id_value(&self) -> &'a [u8] {
        component(self.processing_id, self.separators.component, 1)
    }

    /// Whether the message is itself an acknowledgment (MSH-9 type `ACK`).
    pub fn is_ack(&self) -> bool {
        self.message_type_component(1) == b"ACK"
    }

    /// Whether the sender asked for enhanced-mode accept acknowledgments (MSH-15 set).
    pub fn enhanced_mode(&self) -> bool {
        !self.accept_ack_type.is_empty()
    }
}

/// A whole message read through its own delimiters, without copying.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    bytes: &'a [u8],
    separators: Separators,
}

/// One segment (terminated by `\r`, or by `\n` for lenient input).
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    bytes: &'a [u8],
    separators: Separators,
}

/// One field, or one repetition of it.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    bytes: &'a [u8],
    separators: Separators,
}

impl<'a> Message<'a> {
    /// Reads the delimiters from MSH; the rest is split lazily.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, HeaderError> {
        let (separators, _) = msh_delimiters(bytes)?;
        Ok(Self { bytes, separators })
    }

    /// The delimiters declared in MSH-1 and MSH-2.
    pub fn separators(&self) -> Separators {
        self.separators
    }

    /// Non-empty segments in order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'a>> + 'a {
        let separators = self.separators;
        segments(self.bytes).map(move |bytes| Segment { bytes, separators })
    }

    /// The first segment with ID `id` (`b"MSA"`).
    pub fn segment(&self, id: &[u8]) -> Option<Segment<'a>> {
        self.segments().find(|s| s.id() == id)
    }
}

impl<'a> Segment<'a> {
    /// The segment's bytes, without terminator.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The segment ID: the bytes before the first field separator.
    pub fn id(&self) -> &'a [u8] {
        self.bytes
            .split(|&b| b == self.separators.field)
            .next()
            .unwrap_or(&[])
    }

    /// Field `n` in HL7 numbering. For MSH, field 1 is the field separator itself and field 2
    /// the encoding characters, so `field(10)` is MSH-10 in every segment.
    pub fn field(&self, n: usize) -> Field<'a> {
        let is_msh = self.id() == b"MSH";
        let bytes = match (is_msh, n) {
            (_, 0) => self.id(),
            (true, 1) => self.bytes.get(3..4).unwrap_or(&[]),
            (true, n) => field(self.bytes, self.separators.field, n - 1),
            (false, n) => field(self.bytes, self.separators.field, n),
        };
        Field {
            bytes,
            separators: self.separators,
        }
    }
}

impl<'a> Field<'a> {
    /// The raw bytes, escape sequences untouched.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Repetitions of the field (one when it does not repeat).
    pub fn repetitions(&self) -> impl Iterator<Item = Field<'a>> + 'a {
        let separators = self.separators;
        self.bytes
            .split(move |&b| b == separators.repetition)
            .map(move |bytes| Field { bytes, separators })
    }

    /// Component `n` (1-based) of the first repetition; empty when absent.
    pub fn component(&self, n: usize) -> &'a [u8] {
        let first = self
            .bytes
            .split(|&b| b == self.separators.repetition)
            .next()
            .unwrap_or(&[]);
        component(first, self.separators.component, n)
    }

    /// Subcomponent `s` of component `c` (both 1-based) of the first repetition.
    pub fn subcomponent(&self, c: usize, s: usize) -> &'a [u8] {
        component(self.component(c), self.separators.subcomponent, s)
    }
}

/// Component `n` (1-based) of a field; empty when absent.
pub(crate) fn component(field: &[u8], sep: u8, n: usize) -> &[u8] {
    field
        .split(|&b| b == sep)
        .nth(n.saturating_sub(1))
        .unwrap_or(&[])
}

/// Field `n` of a non-MSH segment (`n` = 1 is the first after the segment ID).
pub(crate) fn field(segment: &[u8], sep: u8, n: usize) -> &[u8] {
    segment.split(|&b| b == sep).nth(n).unwrap_or(&[])
}

/// Segments of a message, split on `\r` and `\n`, without empty ones.
pub(crate) fn segments(msg: &[u8]) -> impl Iterator<Item = &[u8]> {
    // memchr2 rather than a split on a closure: every ACK is searched for its MSA this way.
    let mut rest = msg;
    std::iter::from_fn(move || {
        while !rest.is_empty() {
            let end = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
            let segment = &rest[..end];
            rest = rest.get(end + 1..).unwrap_or_default();
            if !segment.is_empty() {
                return Some(segment);
            }
        }
        None
    })
}

/// `0x80` in each byte of the result where `x` has a zero byte, nothing elsewhere (exact,
/// unlike the shorter test for whether any byte is zero).
fn zero_bytes(x: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// MSH-1 and MSH-2 of `msg`, checked, without reading the rest of MSH.
fn msh_delimiters(msg: &[u8]) -> Result<(Separators, &[u8]), HeaderError> {
    // The delimiters nearly every message declares, known valid: no checks to run.
    if msg.len() > 8 && msg[..9] == *b"MSH|^~\\&|" {
        return Ok((Separators::STANDARD, &msg[4..8]));
    }
    if !msg.starts_with(b"MSH") {
        return Err(HeaderError::NoMsh);
    }
    let field = *msg.get(3).ok_or(HeaderError::BadFieldSeparator)?;
    if !is_delimiter(field) {
        return Err(HeaderError::BadFieldSeparator);
    }
    // MSH-2 runs to the next field separator or line end; past five bytes it is invalid
    // whatever follows, so a message without either is not scanned to its end.
    let rest = &msg[4..];
    let window = &rest[..rest.len().min(6)];
    let len = window
        .iter()
        .position(|&b| b == field || b == b'\r' || b == b'\n')
        .unwrap_or(window.len());
    let enc = &rest[..len];
    let valid = (enc.len() == 4 || enc.len() == 5)
        && enc.iter().all(|&b| is_delimiter(b) && b != field)
        // Index pairs, not `contains`: a library memchr call per character cost more than
        // the rest of MSH's reading.
        && (0..enc.len()).all(|i| (i + 1..enc.len()).all(|j| enc[i] != enc[j]));
    if !valid {
        return Err(HeaderError::BadEncodingCharacters);
    }
    let separators = Separators {
        field,
        component: enc[0],
        repetition: enc[1],
        escape: enc[2],
        subcomponent: enc[3],
        truncation: enc.get(4).copied(),
    };
    Ok((separators, enc))
}

fn is_delimiter(b: u8) -> bool {
    b.is_ascii_graphic() && !b.is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Whatever follows `MSH`: a message's delimiters are its header's, the header's fields
        /// are the first line's pieces between its MSH-1, and both refuse the same input.
        #[test]
        fn message_and_header_read_the_same_delimiters(
            rest in proptest::collection::vec(
                proptest::sample::select(b"|#^~\\&A1\r\n ".to_vec()), 0..40)
        ) {
            let mut m = b"MSH".to_vec();
            m.extend_from_slice(&rest);
            let header = Header::parse(&m);
            proptest::prop_assert_eq!(
                Message::parse(&m).map(|m| m.separators()),
                header.map(|h| h.separators)
            );
            if let Ok(h) = header {
                let line = m.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or(&[]);
                let pieces: Vec<&[u8]> = line.split(|&b| b == h.separators.field).collect();
                let piece = |i: usize| pieces.get(i).copied().unwrap_or(&[]);
                proptest::prop_assert_eq!(h.encoding_characters, piece(1));
                proptest::prop_assert_eq!(h.receiving_facility, piece(5));
                proptest::prop_assert_eq!(h.version, piece(11));
                proptest::prop_assert_eq!(h.accept_ack_type, piece(14));
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The header's fields are the pieces of its first line between `|`.
        #[test]
        fn header_fields_are_the_first_lines_pieces(
            rest in proptest::collection::vec(
                proptest::sample::select(b"|^~\\&#A1\r\n ".to_vec()), 0..80)
        ) {
            let mut m = b"MSH|^~\\&".to_vec();
            m.extend_from_slice(&rest);
            let line = m.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or(&[]);
            let pieces: Vec<&[u8]> = line.split(|&b| b == b'|').collect();
            let piece = |i: usize| pieces.get(i).copied().unwrap_or(&[]);
            match Header::parse(&m) {
                Ok(h) => {
                    proptest::prop_assert_eq!(h.encoding_characters, piece(1));
                    proptest::prop_assert_eq!(h.sending_application, piece(2));
                    proptest::prop_assert_eq!(h.message_type, piece(8));
                    proptest::prop_assert_eq!(h.control_id, piece(9));
                    proptest::prop_assert_eq!(h.accept_ack_type, piece(14));
                }
                Err(e) => {
                    proptest::prop_assert_eq!(e, HeaderError::BadEncodingCharacters);
                    proptest::prop_assert_ne!(piece(1), b"^~\\&".as_slice());
                }
            }
        }
    }

    proptest::proptest! {
        /// `zero_bytes` marks exactly the zero bytes of a word, whatever is around them.
        #[test]
        fn zero_bytes_marks_exactly_the_zero_bytes(bytes in proptest::prelude::any::<[u8; 8]>(), zeros in proptest::prelude::any::<u8>()) {
            let mut word = bytes;
            for (i, b) in word.iter_mut().enumerate() {
                if zeros & (1 << i) != 0 {
                    *b = 0;
                }
            }
            let expected = word.iter().enumerate().fold(0u64, |m, (i, &b)| m | u64::from(b == 0) << (8 * i + 7));
            proptest::prop_assert_eq!(zero_bytes(u64::from_le_bytes(word)), expected);
        }
    }

    #[test]
    fn reads_the_header_fields() {
        let m = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20260101120000||ORU^R01^ORU_R01|C123|P|2.5.1|||AL\rPID|1\r";
        let h = Header::parse(m).unwrap();
        assert_eq!(h.sending_application, b"LAB");
        assert_eq!(h.receiving_facility, b"HOSP");
        assert_eq!(h.message_type_component(1), b"ORU");
        assert_eq!(h.message_type_component(2), b"R01");
        assert_eq!(h.control_id, b"C123");
        assert_eq!(h.processing_id_value(), b"P");
        assert_eq!(h.version_id(), b"2.5.1");
        assert!(h.enhanced_mode());
        assert_eq!(h.separators.truncation, None);
    }

    #[test]
    fn five_encoding_characters_and_odd_separators() {
        let h = Header::parse(b"MSH#$~\\&^#A#B#C#D#T##ADT$A01#X1#P#2.7\r").unwrap();
        assert_eq!(h.separators.field, b'#');
        assert_eq!(h.separators.truncation, Some(b'^'));
        assert_eq!(h.message_type_component(2), b"A01");
        assert_eq!(h.control_id, b"X1");
    }

    #[test]
    fn fields_components_and_repetitions() {
        let m = Message::parse(
            b"MSH|^~\\&|LAB|HOSP|||||ORU^R01|C1|P|2.5\rPID|1||111^^^H^MR~222^^^H^PI||DOE^JANE\rOBX|1|CE|X&Y^Z\r",
        )
        .unwrap();
        let msh = m.segment(b"MSH").unwrap();
        assert_eq!(msh.field(1).as_bytes(), b"|");
        assert_eq!(msh.field(2).as_bytes(), b"^~\\&");
        assert_eq!(msh.field(9).component(2), b"R01");
        assert_eq!(msh.field(10).as_bytes(), b"C1");
        let pid = m.segment(b"PID").unwrap();
        let ids: Vec<&[u8]> = pid.field(3).repetitions().map(|r| r.component(5)).collect();
        assert_eq!(ids, vec![&b"MR"[..], b"PI"]);
        assert_eq!(pid.field(5).component(2), b"JANE");
        assert_eq!(m.segment(b"OBX").unwrap().field(3).subcomponent(1, 2), b"Y");
        assert!(m.segment(b"NTE").is_none());
        assert_eq!(m.segments().count(), 3);
    }

    #[test]
    fn broken_headers_are_named() {
        assert_eq!(Header::parse(b"PID|1").unwrap_err(), HeaderError::NoMsh);
        assert_eq!(
            Header::parse(b"MSHA^~\\&").unwrap_err(),
            HeaderError::BadFieldSeparator
        );
        assert_eq!(
            Header::parse(b"MSH").unwrap_err(),
            HeaderError::BadFieldSeparator
        );
        assert_eq!(
            Header::parse(b"MSH|^^\\&|").unwrap_err(),
            HeaderError::BadEncodingCharacters
        );
        assert_eq!(
            Header::parse(b"MSH|^~|").unwrap_err(),
            HeaderError::BadEncodingCharacters
        );
    }
}
