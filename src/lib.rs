//! mllp-proxy: a mutual-TLS front for legacy HL7 v2 engines that speak plain MLLP.
//!
//! The data path, one sender connection at a time ([`session`]):
//!
//! ```text
//!  sender ──TLS──▶ listener ──▶ session: handshake (tls) → identity / allow-list
//!                                  │
//!                                  ├─ read one MLLP frame (mllp) under frame/idle time-outs
//!                                  ├─ validate and re-frame the HL7 message (hl7)
//!                                  │     refused → proxy NAK (AE/AR, CE/CR) back to the sender
//!                                  ├─ forward over plain MLLP (upstream), one message in flight
//!                                  ├─ read exactly one ACK, check MSA-2 == MSH-10
//!                                  └─ relay the engine's ACK, byte-identical but for framing
//! ```
//!
//! The proxy never invents a positive ACK: the sender gets the engine's own ACK, a NAK the proxy
//! wrote because it refused the message, or nothing (the connection closes) so that it resends.
//! [`proxy::start`] assembles routes, the admin server ([`admin`]) and TLS reloading;
//! [`metrics`] holds every counter; the tool commands live in [`cli`].

// One audited exception, `memory::release` (glibc's malloc_trim); nothing else may be unsafe.
#![deny(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod audit;
pub mod cli;
pub mod client;
pub mod config;
pub mod context;
pub mod cores;
pub mod hl7;
pub mod label;
pub mod listener;
pub mod live;
pub mod logsafe;
pub mod memory;
pub mod metrics;
pub mod mllp;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod route;
pub mod scrape;
pub mod session;
pub mod shutdown;
pub mod status;
pub mod timer;
pub mod tls;
pub mod upstream;
