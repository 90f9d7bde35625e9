//! What a peer can put into a log line: escaped values and rate-limited events.
//!
//! A sender controls its control IDs and message types, and a certificate's owner its subject;
//! written raw they could carry terminal escape sequences or forged line breaks into an
//! operator's screen, and a peer that repeats a failing handshake at will could flood the log.
//! Counters always count every event; only the lines are limited.

use std::fmt::{self, Write};
use std::sync::Mutex;
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;

use crate::label::LogEvent;
use crate::metrics::LazyCounter;

/// Longest message field (control ID, message type) written to a log line, in bytes.
pub const MAX_LOGGED: usize = 64;
/// Longest certificate field (subject, issuer, identity) written to a log line, in bytes:
/// distinguished names are longer than message fields.
pub const MAX_LOGGED_CERT: usize = 256;

/// A message field for a log line: at most [`MAX_LOGGED`] bytes, control characters, DEL,
/// backslash and bytes that are not UTF-8 written as `\xNN`, and `…` when it was cut.
pub fn escape(bytes: &[u8]) -> String {
    escape_bounded(bytes, MAX_LOGGED)
}

/// [`escape`] for certificate text, bounded at [`MAX_LOGGED_CERT`] bytes.
pub fn escape_str(text: &str) -> String {
    escape_bounded(text.as_bytes(), MAX_LOGGED_CERT)
}

/// Whether a peer's value can be copied into a record as it is, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plain {
    /// [`escape`] leaves it as it is and logfmt takes it bare.
    Bare,
    /// [`escape`] leaves it as it is; logfmt needs it quoted (empty, or a space, `=`, `"`, `,`).
    Quoted,
    /// It must go through [`escape`].
    No,
}

/// Reads `bytes` once to tell whether [`escape`] would leave them as they are (printable ASCII,
/// no backslash, within [`MAX_LOGGED`]) and whether logfmt would quote them: the usual control
/// ID or message type is then copied without building a `String` (two per message).
pub fn classify(bytes: &[u8]) -> Plain {
    const QUOTE: u8 = 1;
    const ESCAPE: u8 = 2;
    const CLASS: [u8; 256] = {
        let mut t = [ESCAPE; 256];
        let mut b = b' ';
        while b <= b'~' {
            t[b as usize] = match b {
                b' ' | b'=' | b'"' | b',' => QUOTE,
                b'\\' => ESCAPE,
                _ => 0,
            };
            b += 1;
        }
        t
    };
    // No early exit: values are short, and a branch per byte costs more than the table.
    let class = bytes.iter().fold(0, |acc, &b| acc | CLASS[usize::from(b)]);
    if class & ESCAPE != 0 || bytes.len() > MAX_LOGGED {
        Plain::No
    } else if class & QUOTE != 0 || bytes.is_empty() {
        Plain::Quoted
    } else {
        Plain::Bare
    }
}

fn plain_within(bytes: &[u8], max: usize) -> Option<&str> {
    let printable = |b: &u8| matches!(b, b' '..=b'~') && *b != b'\\';
    if bytes.len() <= max && bytes.iter().all(printable) {
        std::str::from_utf8(bytes).ok()
    } else {
        None
    }
}

fn escape_bounded(bytes: &[u8], max: usize) -> String {
    // Most values are plain: skip the per-character path, which is the expensive one.
    if let Some(text) = plain_within(bytes, max) {
        return text.to_string();
    }
    let cut = bytes.len() > max;
    let bytes = &bytes[..bytes.len().min(max)];
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{b:02X}");
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
    if cut {
        out.push('…');
    }
    out
}

/// Lines a peer-triggered event may write: a burst, then a steady rate; what is held back is
/// counted and reported on the next line that is written.
pub struct EventLog {
    state: Mutex<Bucket>,
    suppressed_total: LazyCounter,
}

struct Bucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

/// Lines written at once before the rate applies.
const BURST: f64 = 20.0;
/// Lines per second after the burst.
const PER_SECOND: f64 = 2.0;

impl EventLog {
    /// A limiter counting what it holds back in `suppressed_total`.
    pub fn new(suppressed_total: LazyCounter) -> Self {
        Self {
            state: Mutex::new(Bucket {
                tokens: BURST,
                last: Instant::now(),
                suppressed: 0,
            }),
            suppressed_total,
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were held back since the
    /// last one (write it in the line); `None` when this one is held back.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let Ok(mut b) = self.state.lock() else {
            return Some(0);
        };
        let elapsed = now.saturating_duration_since(b.last);
        b.last = now;
        b.tokens = (b.tokens + elapsed.as_secs_f64() * PER_SECOND).min(BURST);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.suppressed))
        } else {
            b.suppressed += 1;
            self.suppressed_total.inc();
            None
        }
    }
}

/// The rate-limited events of one route.
pub struct RouteEvents {
    /// TLS handshakes that failed (`event="handshake_failure"`).
    pub handshake: EventLog,
    /// Connections closed at accept by a limit (`connection_rejected`).
    pub rejected: EventLog,
    /// Verified clients outside `allowed_clients` (`client_denied`).
    pub denied: EventLog,
    /// Messages answered with the proxy's NAK (`message_refused`).
    pub refused: EventLog,
    /// Sessions ended by a sender fault (`session_error`).
    pub session: EventLog,
    /// Exchanges without the engine's ACK (`upstream_failure`): one per sender resend while
    /// an engine is down.
    pub upstream: EventLog,
}

impl RouteEvents {
    /// The limiters of `route`, counting into its `log_events_suppressed_total` series.
    pub fn new(metrics: &crate::metrics::RouteMetrics) -> Self {
        let log = |event| EventLog::new(metrics.suppressed(event));
        Self {
            handshake: log(LogEvent::HandshakeFailure),
            rejected: log(LogEvent::ConnectionRejected),
            denied: log(LogEvent::ClientDenied),
            refused: log(LogEvent::MessageRefused),
            session: log(LogEvent::SessionError),
            upstream: log(LogEvent::UpstreamFailure),
        }
    }
}

/// The text log's field formatter: logfmt. A value is written bare when it can be, and quoted
/// (with `"` and `\` escaped) when it has a space, `=`, `"`, `,` or a control character, so
/// that logfmt parsers (Loki, Vector, Grafana) read a certificate subject such as
/// `O=HL7 Proxy Test, CN=lab-01` as one value instead of several junk keys. String values are
/// always quoted, as tracing's default formatter writes them.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogfmtFields;

/// The visitor of [`LogfmtFields`] for one event.
pub struct LogfmtVisitor<'a> {
    writer: Writer<'a>,
    result: fmt::Result,
    first: bool,
}

impl<'a> MakeVisitor<Writer<'a>> for LogfmtFields {
    type Visitor = LogfmtVisitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> Self::Visitor {
        LogfmtVisitor {
            writer,
            result: Ok(()),
            first: true,
        }
    }
}

impl LogfmtVisitor<'_> {
    fn write(&mut self, field: &Field, value: fmt::Arguments<'_>, always_quote: bool) {
        if self.result.is_err() {
            return;
        }
        let sep = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        if field.name() == "message" {
            self.result = write!(self.writer, "{sep}{value}");
            return;
        }
        let name = field.name().trim_start_matches("r#");
        // Most values are static words or numbers: no allocation for those.
        let text = match value.as_str() {
            Some(text) => std::borrow::Cow::Borrowed(text),
            None => std::borrow::Cow::Owned(value.to_string()),
        };
        self.result = if always_quote || needs_quotes(&text) {
            write!(self.writer, "{sep}{name}=\"{}\"", QuotedText(&text))
        } else {
            write!(self.writer, "{sep}{name}={text}")
        };
    }
}

impl Visit for LogfmtVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, format_args!("{value}"), field.name() != "message");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.write(field, format_args!("{value}"), false);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.write(field, format_args!("{value}"), false);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.write(field, format_args!("{value}"), false);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, format_args!("{value:?}"), false);
    }
}

impl VisitOutput<fmt::Result> for LogfmtVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for LogfmtVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// Whether a logfmt value must be quoted to stay one value.
pub fn needs_quotes(text: &str) -> bool {
    // One pass with a table (every audit record asks for several values): the ASCII bytes
    // that need quotes, and whether any byte is not ASCII (then Unicode controls count too).
    const SPECIAL: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 0x20 {
            t[b] = true;
            b += 1;
        }
        t[b' ' as usize] = true;
        t[b'=' as usize] = true;
        t[b'"' as usize] = true;
        t[b',' as usize] = true;
        t[b'\\' as usize] = true;
        t[0x7f] = true;
        t
    };
    let mut high = 0u8;
    for &b in text.as_bytes() {
        if SPECIAL[usize::from(b)] {
            return true;
        }
        high |= b;
    }
    text.is_empty() || (high >= 0x80 && text.chars().any(char::is_control))
}

/// Text inside logfmt quotes: `"` and `\` escaped, line breaks and other controls as `\n`, `\xNN`.
pub struct QuotedText<'a>(pub &'a str);

impl fmt::Display for QuotedText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() => write!(f, "\\x{:02X}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn values_are_quoted_exactly_when_logfmt_needs_it() {
        for bare in [
            "ADT^A01",
            "MSG-1",
            "spiffe://hospital.example/lis",
            "Zoë",
            "5a:e0:1a",
        ] {
            assert!(!needs_quotes(bare), "{bare:?}");
        }
        let quoted = [
            "", "a b", "a=b", "a\"b", "a,b", "a\\b", "a\tb", "a\rb", "\u{7f}", "é\u{85}",
        ];
        for q in quoted {
            assert!(needs_quotes(q), "{q:?}");
        }
    }

    #[test]
    fn escape_writes_controls_as_hex_and_bounds_the_length() {
        assert_eq!(escape(b"MSG-1"), "MSG-1");
        assert_eq!(escape(b" ORU^R01~\"|&#}"), " ORU^R01~\"|&#}");
        assert_eq!(escape(&[b'x'; MAX_LOGGED]), "x".repeat(MAX_LOGGED));
        assert_eq!(classify(b"ORU^R01"), Plain::Bare);
        assert_eq!(classify(&[b'~'; MAX_LOGGED]), Plain::Bare);
        for quoted in [&b""[..], b"a b", b"a=b", b"a\"b", b"a,b"] {
            assert_eq!(classify(quoted), Plain::Quoted, "{quoted:?}");
        }
        for needs_escaping in [
            &b"a\\b"[..],
            b"a\x7f",
            b"a\x1fb",
            b"a\tb",
            b"caf\xc3\xa9",
            &[b'x'; MAX_LOGGED + 1],
        ] {
            assert_eq!(classify(needs_escaping), Plain::No, "{needs_escaping:?}");
        }
        assert_eq!(escape(b"INJ\x1b[31mRED\n"), "INJ\\x1B[31mRED\\x0A");
        assert_eq!(escape(b"a\\b\x00\x7f"), "a\\x5Cb\\x00\\x7F");
        assert_eq!(escape(b"caf\xe9"), "caf\\xE9");
        assert_eq!(escape("café".as_bytes()), "café");
        let long = escape(&[b'x'; 500]);
        assert_eq!(long.chars().count(), MAX_LOGGED + 1);
        assert!(long.ends_with('…'));
        // A C1 control (U+009B, CSI) is escaped too.
        assert_eq!(escape_str("a\u{9b}b"), "a\\xC2\\x9Bb");
    }

    proptest::proptest! {
        /// A value `classify` lets through is what `escape` would write, quoted exactly when
        /// logfmt needs it.
        #[test]
        fn classify_agrees_with_escape_and_quoting(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)
        ) {
            let class = classify(&bytes);
            if class != Plain::No {
                let escaped = escape(&bytes);
                proptest::prop_assert_eq!(escaped.as_bytes(), &bytes[..]);
                proptest::prop_assert_eq!(needs_quotes(&escaped), class == Plain::Quoted);
            }
            if bytes.len() <= MAX_LOGGED && bytes.iter().all(|b| (b' '..=b'~').contains(b) && *b != b'\\') {
                proptest::prop_assert_ne!(class, Plain::No);
            }
        }
    }

    /// The fields of one event as the text log writes them.
    fn logfmt_line(emit: impl FnOnce()) -> String {
        let out = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(LogfmtFields)
            .without_time()
            .with_level(false)
            .with_target(false)
            .with_ansi(false)
            .with_writer(move || SharedBuf(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        text.trim_end().to_string()
    }

    struct SharedBuf(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn text_log_values_are_bare_when_they_can_be_and_quoted_when_they_must() {
        let subject = "O=HL7 Proxy \"Test\", CN=lab";
        let id = Some(tracing::field::display("MSG-2".to_string()));
        let none: Option<tracing::field::DisplayValue<String>> = None;
        let line = logfmt_line(|| {
            tracing::info!(subject = %subject, control_id = id, hidden = none, n = 3u64, word = "AE", empty = %"", "event text");
        });
        assert_eq!(
            line,
            r#"event text subject="O=HL7 Proxy \"Test\", CN=lab" control_id=MSG-2 n=3 word="AE" empty="""#
        );
        let line = logfmt_line(|| tracing::info!(error = %"line\nbreak\\", "x"));
        assert_eq!(line, r#"x error="line\nbreak\\""#);
    }

    #[test]
    fn a_flood_gets_a_burst_then_a_steady_rate_and_the_rest_is_counted() {
        let metrics = crate::metrics::Metrics::new().unwrap();
        let log = EventLog::new(
            metrics
                .route("t", Default::default())
                .suppressed(LogEvent::SessionError),
        );
        let suppressed = || {
            let series =
                "mllp_proxy_log_events_suppressed_total{event=\"session_error\",route=\"t\"}";
            crate::metrics::sample_value(&metrics.encode(), series)
        };
        assert_eq!(suppressed(), None, "created by the first event");
        let start = Instant::now();
        let written = (0..5000).filter(|_| log.admit_at(start).is_some()).count();
        assert_eq!(written, 20);
        assert_eq!(suppressed(), Some(4980.0));
        // One second later two more lines, the first reporting what was held back.
        let later = start + Duration::from_secs(1);
        assert_eq!(log.admit_at(later), Some(4980));
        assert_eq!(log.admit_at(later), Some(0));
        assert_eq!(log.admit_at(later), None);
        assert_eq!(suppressed(), Some(4981.0));
    }
}
