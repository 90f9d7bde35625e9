//! Closed label sets: every metric label value the code produces is a variant of an enum that
//! implements [`Label`], and metrics create their series from [`Label::ALL`].
//!
//! The [`labels!`](crate::labels) macro writes the enum, its `ALL` list and its words from one
//! list, so a new variant cannot be missing from `ALL` or from the pre-created series, and no
//! label is ever compared as a string.

/// A bounded set of metric label values (and the same words in log lines and audit records).
pub trait Label: Copy + Eq + 'static {
    /// Every value, in declaration order.
    const ALL: &'static [Self];
    /// The word written into metrics, logs and audit records.
    fn label(self) -> &'static str;
}

/// Declares an enum whose variants are the values of one metric label:
/// `labels! { pub enum Kind { Connect => "connect", Timeout => "timeout" } }`.
#[macro_export]
macro_rules! labels {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $word:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $crate::label::Label for $name {
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::label::Label::label(*self))
            }
        }

        // Checked when compiling: audit records write these words without scanning them.
        const _: () = {
            $( assert!($crate::label::plain_word($word), concat!("label word needs quoting: ", $word)); )+
        };
    };
}

/// Whether `word` is letters, digits, `_`, `-` and `.` only: nothing a log or JSON string
/// would quote or escape.
pub const fn plain_word(word: &str) -> bool {
    let bytes = word.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.') {
            return false;
        }
        i += 1;
    }
    !bytes.is_empty()
}

labels! {
    /// Who caused what a log line reports (`side` field): the sender, the engine or partner,
    /// or the proxy itself.
    pub enum Side {
        /// The sending system.
        Sender => "sender",
        /// The engine or partner.
        Upstream => "upstream",
        /// The proxy (a reload, shutdown, its own configuration).
        Proxy => "proxy",
    }
}

labels! {
    /// Where audit records go (`audit_records_dropped_total{sink}`).
    pub enum AuditSink {
        /// Into the log (standard error), with no `audit.file`.
        Log => "log",
        /// Appended to `audit.file`.
        File => "file",
    }
}

labels! {
    /// Why a reload closed an open session (after its in-flight exchange).
    pub enum Offboarded {
        /// The client's identity is no longer in `allowed_clients`.
        NotAllowed => "not_allowed",
        /// The client's certificate no longer verifies: revoked by a reloaded CRL, or no longer
        /// issued by a configured client CA.
        Revoked => "revoked",
        /// The route's transport changed (plain ↔ TLS): the session's own no longer exists.
        Transport => "transport",
    }
}

labels! {
    /// The `result` of a reload or a health check.
    pub enum Verdict {
        /// It worked.
        Success => "success",
        /// It did not.
        Failure => "failure",
    }
}

impl Verdict {
    /// `Success` when `ok`.
    pub fn of(ok: bool) -> Self {
        if ok {
            Verdict::Success
        } else {
            Verdict::Failure
        }
    }
}

labels! {
    /// The `role` of `certificate_expiry_timestamp_seconds`: which certificate expires.
    pub enum CertRole {
        /// The listener's own certificate.
        Server => "server",
        /// The earliest-expiring certificate of `client_ca`.
        ClientCa => "client_ca",
        /// Our client certificate toward the partner (`upstream.tls.certificate`).
        Client => "client",
        /// The earliest-expiring certificate of `upstream.tls.ca`.
        UpstreamCa => "upstream_ca",
        /// Our client certificate toward a syslog collector (`audit.syslog[].tls`); its
        /// `route` label is `audit:NAME`.
        SyslogClient => "syslog_client",
        /// The earliest-expiring certificate of a syslog collector's CA.
        SyslogCa => "syslog_ca",
    }
}

labels! {
    /// The `reason` of `tls_handshake_failures_total`, in logs and audit records too.
    pub enum HandshakeReason {
        /// Not completed within `handshake_timeout`.
        Timeout => "timeout",
        /// The client sent no certificate.
        NoClientCert => "no_client_cert",
        /// The client certificate has expired.
        Expired => "expired",
        /// The client certificate does not chain to `client_ca`.
        UnknownCa => "unknown_ca",
        /// A CRL revokes the client certificate.
        Revoked => "revoked",
        /// Another certificate problem.
        BadCertificate => "bad_certificate",
        /// No protocol version, cipher suite or group in common.
        Incompatible => "incompatible",
        /// The first bytes were not TLS (plain MLLP to a TLS port, an HTTP probe).
        NotTls => "not_tls",
        /// The client sent an alert (it refused our certificate).
        Alert => "alert",
        /// Another TLS protocol error.
        Protocol => "protocol",
        /// Closed before or during the handshake (port probes, health checks).
        Eof => "eof",
        /// Another socket error.
        Io => "io",
    }
}

labels! {
    /// The `kind` of an upstream failure (`upstream_failures_total`, which counts the kinds
    /// one target is to blame for, and `upstream_exchanges_failed_total`, which counts all).
    pub enum FailureKind {
        /// No target accepted a connection.
        Connect => "connect",
        /// The TLS handshake with the partner failed, or its certificate is not one
        /// `allowed_servers` admits: nothing was delivered.
        Tls => "tls",
        /// No ACK within `ack_timeout`.
        Timeout => "timeout",
        /// The engine closed the connection before a whole ACK.
        Closed => "closed",
        /// The engine answered something other than the message's ACK.
        Protocol => "protocol",
        /// No pooled connection in time: the message was never forwarded.
        Queue => "queue",
    }
}

impl FailureKind {
    /// Whether one target is to blame, so `upstream_failures_total` has a series for it.
    pub fn has_target(self) -> bool {
        !matches!(self, FailureKind::Queue)
    }
}

labels! {
    /// The `reason` of `upstream_tls_handshake_failures_total`: why a TLS connection to a
    /// partner (`upstream.tls`) was not established.
    pub enum PartnerRefusal {
        /// Its certificate is not issued by `upstream.tls.ca`.
        UnknownCa => "unknown_ca",
        /// Its certificate is not valid for the name checked.
        NameMismatch => "name_mismatch",
        /// Its certificate has expired.
        Expired => "expired",
        /// Its certificate is revoked by `upstream.tls.crl`.
        Revoked => "revoked",
        /// Its certificate is unacceptable for another reason.
        BadCertificate => "bad_certificate",
        /// Verified, but outside `upstream.tls.allowed_servers`.
        NotAllowed => "not_allowed",
        /// It asked for a client certificate and none is configured.
        ClientCertRequired => "client_cert_required",
        /// It refused the client certificate presented.
        ClientCertRefused => "client_cert_refused",
        /// The handshake did not finish within `connect_timeout`.
        Timeout => "timeout",
        /// It closed the connection during the handshake.
        Eof => "eof",
        /// Anything else.
        Protocol => "protocol",
    }
}

labels! {
    /// The `reason` of `connections_rejected_total`: the limit that refused a connection at
    /// accept, before any TLS work.
    pub enum Refusal {
        /// `limits.max_connections`.
        Limit => "limit",
        /// `limits.max_connections_per_source`.
        PerSource => "per_source",
        /// `limits.max_pending_handshakes`.
        PendingHandshakes => "pending_handshakes",
    }
}

labels! {
    /// The `event` of `log_events_suppressed_total`: the peer-repeatable events whose log lines
    /// are rate-limited.
    pub enum LogEvent {
        /// A TLS handshake failed.
        HandshakeFailure => "handshake_failure",
        /// A connection was refused at accept by a limit.
        ConnectionRejected => "connection_rejected",
        /// A verified client outside `allowed_clients`.
        ClientDenied => "client_denied",
        /// A message answered with the proxy's NAK.
        MessageRefused => "message_refused",
        /// A session ended by a sender's fault.
        SessionError => "session_error",
        /// An exchange that ended without the engine's ACK.
        UpstreamFailure => "upstream_failure",
    }
}

labels! {
    /// The `result` of `proxy_protocol_total`: what became of a connection on a route behind a
    /// load balancer, before any TLS work.
    pub enum ProxyResult {
        /// A header named the sender; it is the peer from here on.
        Proxied => "proxied",
        /// The balancer's own connection (v2 LOCAL, v1 UNKNOWN): its address stays the peer.
        Local => "local",
        /// A trusted source sent no header: refused.
        Missing => "missing",
        /// A malformed or oversize header: refused.
        Invalid => "invalid",
        /// A source outside `proxy_protocol.trusted`: refused.
        Untrusted => "untrusted",
        /// No whole header within `header_timeout`: refused.
        Timeout => "timeout",
    }
}

labels! {
    /// The `state` of a pooled upstream connection.
    pub enum ConnState {
        /// Leased to an exchange.
        Busy => "busy",
        /// Waiting in the pool.
        Idle => "idle",
    }
}

/// Checks a label set: unique words in Prometheus' safe alphabet.
#[cfg(test)]
pub fn assert_well_formed<L: Label>() {
    let mut seen = std::collections::HashSet::new();
    for value in L::ALL {
        let word = value.label();
        assert!(seen.insert(word), "{word} twice");
        assert!(
            !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "{word:?}"
        );
    }
}
