//! HL7 v2 over the frame's bytes: header reading, validation, acknowledgments.
//!
//! Nothing here allocates on the forwarding path or assumes UTF-8: fields are byte slices into
//! the frame, and the only copies made are of messages that lenient mode must re-terminate and
//! of NAKs the proxy writes itself.

mod ack;
mod message;
mod validate;

pub(crate) use ack::hl7_timestamp;
pub use ack::{
    AckCode, AckInfo, NakReason, RejectReason, build_accept, build_ack, build_nak, parse_ack,
};
pub use message::{Field, Header, HeaderError, Message, Segment, Separators};
pub use validate::{Checked, Rejection, Validator, normalise_terminators};
