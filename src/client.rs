//! The MLLP (optionally MLLP/TLS) client shared by `send`, `demo`, `bench`, `soak` and the tests:
//! one message out, one answer back, the way a sending system works.
//!
//! Its errors are written for the person at the terminal: each phase (TCP connect, TLS
//! handshake, admission, exchange) fails with its own words, because "connection closed" alone
//! cannot tell a wrong port from a refused certificate from an engine outage.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::{AlertDescription, CertificateError, ClientConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Decoder;

use crate::mllp::{Frame, MllpCodec};

/// The TLS handshake gets its own deadline: a plain MLLP port never answers a ClientHello, and
/// the user should hear that long before an ACK time-out.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A byte stream a client can use: plain TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where and how a client connects.
#[derive(Clone)]
pub struct ClientTarget {
    /// `host:port`.
    pub addr: String,
    /// TLS configuration and the name to verify, if TLS.
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

/// A connected MLLP client.
pub struct MllpClient {
    io: Box<dyn Io>,
    tls: bool,
    addr: String,
    buf: BytesMut,
    codec: MllpCodec,
    out: BytesMut,
}

/// A TCP connection to `addr`, from `from` when given.
async fn tcp_connect(addr: &str, from: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let Some(from) = from else {
        return TcpStream::connect(addr).await;
    };
    let remote = tokio::net::lookup_host(addr)
        .await?
        .find(|r| r.is_ipv4() == from.is_ipv4())
        .ok_or_else(|| std::io::Error::other(format!("{addr}: no address of {from}'s family")))?;
    let socket = if from.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(std::net::SocketAddr::new(from, 0))?;
    socket.connect(remote).await
}

/// A client error, with a message for the person at the terminal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(pub String);

impl MllpClient {
    /// Connects (and completes the TLS handshake) within `timeout`; the handshake alone within
    /// [`HANDSHAKE_TIMEOUT`] at most.
    pub async fn connect(target: &ClientTarget, timeout: Duration) -> Result<Self, ClientError> {
        Self::connect_from(target, None, timeout).await
    }

    /// [`MllpClient::connect`] from the local address `from` (one of several loopback
    /// addresses, say, to look like several senders).
    pub async fn connect_from(
        target: &ClientTarget,
        from: Option<std::net::IpAddr>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let io = open(target, from, timeout).await?;
        Ok(Self {
            io,
            tls: target.tls.is_some(),
            addr: target.addr.clone(),
            buf: BytesMut::with_capacity(4096),
            codec: MllpCodec::new(64 * 1024 * 1024),
            out: BytesMut::with_capacity(4096),
        })
    }

    /// Waits `wait` for the server to turn the connection down right after the handshake (a
    /// TLS 1.3 server checks the client certificate after the client considers the handshake
    /// done, and mllp-proxy closes a sender that is not in `allowed_clients` at once). Silence
    /// means admitted.
    pub async fn check_admitted(&mut self, wait: Duration) -> Result<(), ClientError> {
        if !self.tls {
            return Ok(());
        }
        self.buf.reserve(4096);
        match tokio::time::timeout(wait, self.io.read_buf(&mut self.buf)).await {
            Err(_) | Ok(Ok(1..)) => Ok(()),
            Ok(Ok(0)) => Err(ClientError(format!(
                "{} closed the connection right after the TLS handshake: your certificate may not be in the route's allowed_clients (the proxy logs 'not in allowed_clients' with the certificate's identity)",
                self.addr
            ))),
            Ok(Err(e)) => Err(ClientError(match tls_error(&e) {
                Some(rustls::Error::AlertReceived(alert)) => alert_words(*alert),
                _ => format!("{}: {e}", self.addr),
            })),
        }
    }

    /// Sends one message and returns the answer frame's content, within `timeout`.
    pub async fn exchange(&mut self, msg: &[u8], timeout: Duration) -> Result<Bytes, ClientError> {
        tokio::time::timeout(timeout, async {
            self.send(msg).await?;
            self.recv().await
        })
        .await
        .map_err(|_| ClientError(format!("no answer within {timeout:?}")))?
    }

    /// Writes one framed message.
    pub async fn send(&mut self, msg: &[u8]) -> Result<(), ClientError> {
        self.out.clear();
        MllpCodec::write_frame(msg, &mut self.out);
        self.send_raw_buffered().await
    }

    /// Writes raw bytes as they are (tests of framing).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.out.clear();
        self.out.extend_from_slice(bytes);
        self.send_raw_buffered().await
    }

    async fn send_raw_buffered(&mut self) -> Result<(), ClientError> {
        self.io
            .write_all(&self.out)
            .await
            .map_err(|e| ClientError(format!("write: {e}")))?;
        self.io
            .flush()
            .await
            .map_err(|e| ClientError(format!("write: {e}")))
    }

    /// Reads the next answer frame.
    pub async fn recv(&mut self) -> Result<Bytes, ClientError> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(Frame::Message(m))) => return Ok(m),
                Ok(Some(Frame::Oversize { len, .. })) => {
                    return Err(ClientError(format!("answer of {len} bytes is too large")));
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError(e.to_string())),
            }
            self.buf.reserve(4096);
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) => return Err(ClientError(self.closed_without_answer())),
                Ok(_) => {}
                Err(e) => {
                    return Err(ClientError(match tls_error(&e) {
                        Some(rustls::Error::AlertReceived(alert)) => alert_words(*alert),
                        _ => format!("read: {e}"),
                    }));
                }
            }
        }
    }

    fn closed_without_answer(&mut self) -> String {
        // A TLS port answering a plain client sends a TLS alert (bytes that are no frame) and
        // closes: those bytes are the tell.
        if !self.tls && self.codec.take_discarded() > 0 {
            return format!(
                "{} answered bytes that are not MLLP (a TLS alert?) and closed the connection: if this port expects TLS, pass --ca, --cert and --key",
                self.addr
            );
        }
        let mut text = format!(
            "{} closed the connection after the message was sent, without an ACK: the engine behind it may be down or failing (see the proxy's log for this control ID)",
            self.addr
        );
        if !self.tls {
            text.push_str("; if this port expects TLS, pass --ca, --cert and --key");
        }
        text
    }

    /// Closes the connection (TLS close_notify where applicable).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
    }
}

fn tls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref())
}

/// A failed handshake in words: what the server refused, or what was wrong with the server.
fn handshake_failed(addr: &str, name: &ServerName<'_>, e: &std::io::Error) -> String {
    let Some(tls) = tls_error(e) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => format!(
                "{addr} closed the connection during the TLS handshake: is this port TLS (1.2 or 1.3)? (mllp-proxy also closes connections over its limits at once, before TLS: max_connections, max_connections_per_source, max_pending_handshakes; it logs 'connection refused at accept')"
            ),
            _ => format!("TLS handshake with {addr}: {e}"),
        };
    };
    use rustls::Error;
    match tls {
        Error::AlertReceived(alert) => alert_words(*alert),
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            format!("the certificate of {addr} was not issued by the CA given with --ca")
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the certificate of {addr} is not valid for the name {}: pass --server-name with a name it holds",
            name.to_str()
        ),
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => format!("the certificate of {addr} has expired"),
        Error::InvalidMessage(_) => {
            format!("{addr} did not answer with TLS: is this port TLS?")
        }
        other => format!("TLS handshake with {addr}: {other}"),
    }
}

/// A fatal alert from the server, in plain words.
fn alert_words(alert: AlertDescription) -> String {
    let refused = "the server did not accept your client certificate";
    match alert {
        AlertDescription::UnknownCA => {
            format!("{refused}: unknown CA (it was not issued by the route's client_ca)")
        }
        AlertDescription::CertificateExpired => format!("{refused}: it has expired"),
        AlertDescription::CertificateRevoked => format!("{refused}: it is revoked"),
        AlertDescription::BadCertificate | AlertDescription::UnsupportedCertificate => {
            format!("{refused}: bad certificate")
        }
        AlertDescription::AccessDenied => format!(
            "{refused}: access denied (it verified, but none of its identities is in the route's allowed_clients)"
        ),
        AlertDescription::CertificateRequired => {
            "the server requires a client certificate: pass --cert and --key".into()
        }
        AlertDescription::ProtocolVersion => {
            "the server does not accept this TLS version (1.2 or 1.3 only; see its min_version)"
                .into()
        }
        AlertDescription::HandshakeFailure => {
            "no TLS parameters in common with the server (version, cipher suite or key exchange group)"
                .into()
        }
        other => format!("the server ended the TLS session with the alert {other:?}"),
    }
}

/// A connection to `target` (the TLS handshake completed, with TLS) within `timeout`; the
/// handshake alone within [`HANDSHAKE_TIMEOUT`] at most.
async fn open(
    target: &ClientTarget,
    from: Option<std::net::IpAddr>,
    timeout: Duration,
) -> Result<Box<dyn Io>, ClientError> {
    let addr = &target.addr;
    let tcp = match tokio::time::timeout(timeout, tcp_connect(addr, from)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(ClientError(format!("connect {addr}: {e}"))),
        Err(_) => {
            return Err(ClientError(format!(
                "connect {addr}: no answer within {timeout:?} (host down, or the port filtered)"
            )));
        }
    };
    let _ = tcp.set_nodelay(true);
    Ok(match &target.tls {
        None => Box::new(tcp),
        Some((config, name)) => {
            let deadline = timeout.min(HANDSHAKE_TIMEOUT);
            let handshake = TlsConnector::from(config.clone()).connect(name.clone(), tcp);
            match tokio::time::timeout(deadline, handshake).await {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(e)) => return Err(ClientError(handshake_failed(addr, name, &e))),
                Err(_) => {
                    return Err(ClientError(format!(
                        "{addr} accepted the connection but did not answer the TLS handshake within {deadline:?}: is this port TLS? (a plain MLLP port waits silently for a frame)"
                    )));
                }
            }
        }
    })
}

/// A plain HTTP/1.0 GET against the admin server; returns the body of a 200 answer.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<String, ClientError> {
    let target = ClientTarget {
        addr: addr.to_string(),
        tls: None,
    };
    http_get_from(&target, path).await
}

/// An HTTP/1.0 GET against the admin server at `target` (HTTPS, mutual with a client
/// certificate, when it has TLS); returns the body of a 200 answer.
pub async fn http_get_from(target: &ClientTarget, path: &str) -> Result<String, ClientError> {
    let timeout = Duration::from_secs(10);
    let mut io = open(target, None, timeout).await?;
    let addr = &target.addr;
    let fetch = async {
        io.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut raw = Vec::new();
        match io.read_to_end(&mut raw).await {
            // The admin server closes without close_notify after an HTTP/1.0 answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            other => {
                other?;
            }
        }
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| ClientError(format!("GET {path}: timed out")))?
        .map_err(|e| ClientError(format!("GET {path}: {e}")))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError(format!("GET {path}: malformed answer")))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(ClientError(format!("GET {path}: HTTP {status}")));
    }
    Ok(body.to_string())
}
