//! How an exchange ended, reported in one place: the counters, the (rate-limited) log line
//! and the audit record, each saying the same thing, so no path can count one answer and log
//! or audit another.

use std::time::Duration;

use tracing::field::{DisplayValue, display};

use super::{Session, session_event};
use crate::audit;
use crate::hl7::{AckCode, Header, NakReason, RejectReason};
use crate::label::{FailureKind, Label, Side};
use crate::logsafe::escape;
use crate::upstream::{Ack, UpstreamError};

/// How one exchange ended.
pub(super) enum Outcome<'a> {
    /// The engine's ACK was relayed.
    Relayed {
        /// The engine's answer.
        ack: &'a Ack,
        /// Forward to ACK.
        latency: Duration,
    },
    /// An acknowledgment from the sender was passed on to the engine (which answers nothing).
    Forwarded {
        /// The engine target.
        engine: &'a str,
    },
    /// Validation refused the message.
    Refused {
        /// Why.
        reason: NakReason,
        /// The NAK's MSA-1; `None` for an acknowledgment, which is never answered.
        answer: Option<AckCode>,
    },
    /// The message was over `max_message_bytes`.
    Oversize {
        /// The NAK's MSA-1; `None` when its header could not be read (the connection closes).
        answer: Option<AckCode>,
    },
    /// The engine gave no ACK.
    Failed {
        /// What went wrong.
        error: &'a UpstreamError,
        /// The proxy's NAK (`on_upstream_failure: nak`); `None`: the connection closes.
        answer: Option<AckCode>,
    },
}

impl Session<'_> {
    /// Counts, logs and audits one exchange of the message with `header` and `bytes`.
    pub(super) fn report(&self, header: Option<&Header<'_>>, bytes: usize, outcome: Outcome<'_>) {
        if self.count(header, bytes, &outcome) {
            self.record(header, bytes, &outcome);
        }
    }

    /// The counters and the (rate-limited) log line of an exchange; whether its audit record
    /// is to be written (a refusal's shares its line's rate limit). A relayed ACK is counted
    /// before the sender has it, so a scrape never lags what a sender saw.
    pub(super) fn count(
        &self,
        header: Option<&Header<'_>>,
        bytes: usize,
        outcome: &Outcome<'_>,
    ) -> bool {
        let m = &self.ctx.metrics;
        match *outcome {
            Outcome::Relayed { ack, latency } => {
                m.messages_forwarded.inc();
                m.upstream_ack_seconds.observe(latency.as_secs_f64());
                m.ack(ack.code);
                true
            }
            Outcome::Forwarded { .. } => {
                m.messages_forwarded.inc();
                true
            }
            Outcome::Refused { reason, answer } => {
                m.rejected(reason.label());
                self.log_refusal(header, bytes, reason, answer)
            }
            Outcome::Oversize { answer } => {
                m.rejected(RejectReason::TooLarge);
                let Some(suppressed) = self.ctx.events.refused.admit() else {
                    return false;
                };
                session_event!(
                    warn,
                    self.who,
                    client = %self.client,
                    side = Side::Sender.label(),
                    bytes,
                    limit = self.ctx.cfg.validation.max_message_bytes,
                    answer = answer.map_or("none (connection closed)", AckCode::label),
                    suppressed,
                    "message over max_message_bytes refused"
                );
                true
            }
            Outcome::Failed { error, answer } => {
                self.count_failure(header, error, answer);
                true
            }
        }
    }

    /// The audit record of an exchange (with `audit.messages`).
    pub(super) fn record(&self, header: Option<&Header<'_>>, bytes: usize, outcome: &Outcome<'_>) {
        if !self.ctx.audit_messages {
            return;
        }
        let record = match *outcome {
            Outcome::Relayed { ack, latency } => audit::Outcome::Relayed {
                ack: ack.code,
                engine: &ack.target,
                latency,
            },
            Outcome::Forwarded { engine } => audit::Outcome::Forwarded { engine },
            Outcome::Refused { reason, answer } => audit::Outcome::Refused {
                reason: reason.label(),
                err: reason.err_code(),
                answer,
            },
            Outcome::Oversize { answer } => audit::Outcome::Refused {
                reason: RejectReason::TooLarge,
                err: 207,
                answer,
            },
            Outcome::Failed { error, answer } => audit::Outcome::Failed {
                kind: error.kind(),
                engine: error.target(),
                answer,
            },
        };
        let (id, kind) = (control_id(header), message_type(header));
        self.ctx
            .audit
            .message(self.who, self.prefix.as_ref(), id, kind, bytes, record);
    }

    /// The log line of a refusal, rate-limited: a sender can repeat a refused message at will.
    /// Whether it was written (and the audit record may be too).
    fn log_refusal(
        &self,
        header: Option<&Header<'_>>,
        bytes: usize,
        reason: NakReason,
        answer: Option<AckCode>,
    ) -> bool {
        let Some(suppressed) = self.ctx.events.refused.admit() else {
            return false;
        };
        let id = self.logged_control_id(header);
        let reason = reason.label().label();
        match answer {
            None => {
                session_event!(debug, self.who, client = %self.client, side = Side::Sender.label(), reason, control_id = id, suppressed, "acknowledgment refused; not answered");
            }
            Some(code) => {
                session_event!(info, self.who, client = %self.client, side = Side::Sender.label(), reason, control_id = id, bytes, answer = code.label(), suppressed, "message refused with NAK");
            }
        }
        true
    }

    /// Counts an exchange without the engine's ACK and writes its warning, rate-limited: an
    /// engine outage would otherwise write one line per sender resend. (Its audit record is
    /// not limited: unlike a refusal, a sender cannot cause it at will.)
    fn count_failure(
        &self,
        header: Option<&Header<'_>>,
        error: &UpstreamError,
        answer: Option<AckCode>,
    ) {
        let m = &self.ctx.metrics;
        let kind = error.kind();
        // Connect and TLS failures were counted per target as each was tried.
        if let Some(target) = error.target()
            && kind != FailureKind::Tls
        {
            m.upstream_failed(target, kind);
        }
        m.exchange_failed(kind);
        if kind == FailureKind::Protocol {
            // Written and answered, though not with its ACK.
            m.messages_forwarded.inc();
        }
        if answer.is_some() {
            m.rejected(RejectReason::Upstream);
        }
        let Some(suppressed) = self.ctx.events.upstream.admit() else {
            return;
        };
        session_event!(
            warn,
            self.who,
            client = %self.client,
            side = Side::Upstream.label(),
            kind = kind.label(),
            engine = error.target().unwrap_or("none"),
            control_id = self.logged_control_id(header),
            answer = answer.map_or("none (connection closed)", AckCode::label),
            error = %error,
            suppressed,
            "upstream failure; message not acknowledged by the engine"
        );
    }

    /// MSH-10 for a log line, escaped; `None` (no field) when `audit.messages` is off, which
    /// keeps control IDs out of every line.
    fn logged_control_id(&self, header: Option<&Header<'_>>) -> Option<DisplayValue<String>> {
        let id = || display(escape(control_id(header)));
        self.ctx.audit_messages.then(id)
    }
}

/// MSH-10, or nothing when MSH could not be read.
pub(super) fn control_id<'a>(header: Option<&Header<'a>>) -> &'a [u8] {
    header.map_or(&[][..], |h| h.control_id)
}

/// MSH-9, or nothing when MSH could not be read.
fn message_type<'a>(header: Option<&Header<'a>>) -> &'a [u8] {
    header.map_or(&[][..], |h| h.message_type)
}
