//! Integration tests: real sockets on loopback, real TLS handshakes with certificates made per
//! test, a stand-in engine, the binary itself where signals matter, and third-party HL7 peers.

mod alerts;
mod architecture;
mod balancer;
mod certificates;
mod cli;
mod core;
mod corpus;
mod dashboard;
mod deploy;
mod doc_quotes;
mod egress;
mod interop;
mod lifecycle;
mod limits;
mod logging;
mod observability;
mod offboarding;
mod reliability;
mod reload;
mod scrape;
mod security;
mod status;
mod support;
mod syslog;
mod tunnel;
mod upstream;
