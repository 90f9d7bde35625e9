//! The engine's misbehaviours: the faults drawn per message (`--fault`) and the deterministic
//! behaviours the tests script.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::Wire;
use crate::hl7::{AckCode, Header, build_accept, build_ack};
use crate::mllp::MllpCodec;

/// One way a legacy engine misbehaves when answering a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// Reads the message and never answers (the connection stays open).
    NoAnswer,
    /// Closes the connection without answering.
    Close,
    /// Resets the connection (RST) without answering.
    Reset,
    /// Writes the first half of the ACK frame, then closes.
    Partial,
    /// Answers a frame that is not an acknowledgment.
    Garbage,
    /// Answers an ACK whose MSA-2 names another message.
    WrongMsa2,
    /// Answers the ACK, then the same ACK again a few milliseconds later.
    Duplicate,
    /// Answers the ACK only after `--late-delay`.
    Late,
    /// Writes the ACK one byte at a time, a millisecond apart.
    Drip,
    /// Writes bytes outside the frame before and after the ACK.
    Stray,
    /// Answers the ACK, then closes the connection.
    CloseAfterAck,
    /// Answers AE (application error: the sender must not resend).
    Ae,
    /// Answers AR (application reject: the sender resends).
    Ar,
}

impl Fault {
    /// Every kind, in the order of `--help`.
    pub const ALL: [Fault; 13] = [
        Fault::NoAnswer,
        Fault::Close,
        Fault::Reset,
        Fault::Partial,
        Fault::Garbage,
        Fault::WrongMsa2,
        Fault::Duplicate,
        Fault::Late,
        Fault::Drip,
        Fault::Stray,
        Fault::CloseAfterAck,
        Fault::Ae,
        Fault::Ar,
    ];

    /// The name used on the command line and in the log.
    pub fn name(self) -> &'static str {
        match self {
            Fault::NoAnswer => "no-answer",
            Fault::Close => "close",
            Fault::Reset => "reset",
            Fault::Partial => "partial",
            Fault::Garbage => "garbage",
            Fault::WrongMsa2 => "wrong-msa2",
            Fault::Duplicate => "duplicate",
            Fault::Late => "late",
            Fault::Drip => "drip",
            Fault::Stray => "stray",
            Fault::CloseAfterAck => "close-after-ack",
            Fault::Ae => "ae",
            Fault::Ar => "ar",
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// What the engine does with every message for which no `--fault` is drawn: answer AA, or one
/// of the quirks of real engines, deterministically. `ack-server` answers AA; the integration
/// tests set the others, so that they, `demo`, the soak and `ack-server` run one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers AA (CA in enhanced mode) with the right MSA-2.
    Ack,
    /// Reads and never answers ([`Fault::NoAnswer`] on every message).
    Silent,
    /// Reads the message, then closes the connection ([`Fault::Close`]).
    CloseAfterRead,
    /// Answers AA with a wrong MSA-2 ([`Fault::WrongMsa2`]).
    WrongControlId,
    /// Answers something that is not an acknowledgment ([`Fault::Garbage`]).
    Garbage,
    /// Answers AA, then closes the connection ([`Fault::CloseAfterAck`]).
    CloseAfterAck,
    /// Answers AA after a delay.
    Delay(Duration),
    /// Answers AA after the first delay when the control ID starts with the text, after the
    /// second otherwise.
    DelayByPrefix(&'static str, Duration, Duration),
    /// Answers the first message of each connection; closes on reading the second (engines
    /// that mishandle a second message on a connection).
    CloseOnSecondMessage,
    /// Answers AA, then a line feed outside any frame a moment later.
    AckThenLineFeed,
    /// Answers AA twice (the same ACK again 20 ms later).
    AckTwice,
    /// Answers AA, then 20 ms later an unsolicited AA naming another message.
    AckThenOther,
    /// Answers AA with an NTE segment of this many bytes (engines that echo the message).
    AckPadded(usize),
    /// Answers AA, and closes a connection idle for this long.
    AckCloseWhenIdle(Duration),
    /// Answers AR to the message with this control ID, AA to the others.
    RejectId(&'static str),
}

impl Behaviour {
    /// The fault kind this behaviour applies to every message, if it is one.
    pub(super) fn fault(self) -> Option<Fault> {
        match self {
            Behaviour::Silent => Some(Fault::NoAnswer),
            Behaviour::CloseAfterRead => Some(Fault::Close),
            Behaviour::WrongControlId => Some(Fault::WrongMsa2),
            Behaviour::Garbage => Some(Fault::Garbage),
            Behaviour::CloseAfterAck => Some(Fault::CloseAfterAck),
            _ => None,
        }
    }

    /// The answer to a message with `header`, after the wait this behaviour asks for.
    pub(super) async fn ack(self, header: Option<&Header<'_>>) -> Vec<u8> {
        let id = header.map_or(&[][..], |h| h.control_id);
        match self {
            Behaviour::Delay(d) => tokio::time::sleep(d).await,
            Behaviour::DelayByPrefix(prefix, slow, fast) => {
                let hit = id.starts_with(prefix.as_bytes());
                tokio::time::sleep(if hit { slow } else { fast }).await;
            }
            Behaviour::RejectId(reject) if id == reject.as_bytes() => {
                return build_ack(header, AckCode::AR);
            }
            Behaviour::AckPadded(n) => {
                let mut ack = build_accept(header);
                ack.extend_from_slice(b"NTE|1||");
                ack.extend(std::iter::repeat_n(b'x', n));
                ack.push(b'\r');
                return ack;
            }
            _ => {}
        }
        build_accept(header)
    }

    /// What follows a written answer `framed`.
    pub(super) async fn after<S: Wire>(self, tcp: &mut S, framed: &[u8]) {
        let pause = Duration::from_millis(20);
        match self {
            Behaviour::AckThenLineFeed => {
                tokio::time::sleep(pause).await;
                let _ = tcp.write_all(b"\n").await;
            }
            Behaviour::AckTwice => {
                tokio::time::sleep(pause).await;
                let _ = tcp.write_all(framed).await;
            }
            Behaviour::AckThenOther => {
                tokio::time::sleep(pause).await;
                let other =
                    b"MSH|^~\\&|LAB|HOSP|ADT|WARD|20261126||ADT^A01|SOMETHING-ELSE|P|2.5.1\r";
                let ack = build_accept(Header::parse(other).ok().as_ref());
                let _ = tcp.write_all(&MllpCodec::frame(&ack)).await;
            }
            _ => {}
        }
    }
}

pub(super) fn parse_fault(s: &str) -> Result<(Fault, f64), String> {
    let (kind, p) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KIND=PROBABILITY, got {s:?}"))?;
    let fault = Fault::from_name(kind).ok_or_else(|| {
        let kinds: Vec<_> = Fault::ALL.iter().map(|f| f.name()).collect();
        format!("unknown fault {kind:?}; one of: {}", kinds.join(" "))
    })?;
    let p: f64 = p
        .parse()
        .map_err(|_| format!("probability of {kind}: {p:?} is not a number"))?;
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("probability of {kind}: {p} is not within 0..1"));
    }
    Ok((fault, p))
}
