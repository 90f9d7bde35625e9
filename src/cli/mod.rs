//! The tool commands around the proxy: `check`, `send`, `ack-server`, `demo`, `bench`, `soak`.
//!
//! They share [`MllpClient`], a minimal MLLP (optionally MLLP/TLS) client that sends one message
//! and waits for one answer, the way a sending system does.

pub mod ack_server;
pub mod bench;
pub mod check;
pub mod demo;
pub mod send;
pub mod soak;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Decoder;

use crate::mllp::{Frame, MllpCodec};

/// A byte stream a client can use: plain TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// TLS options of the client-side commands.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// CA certificate (PEM) that issued the server certificate; enables TLS.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) to present.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Name to verify the server certificate against (default: the host of --to).
    #[arg(long)]
    pub server_name: Option<String>,
}

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
    buf: BytesMut,
    codec: MllpCodec,
    out: BytesMut,
}

/// A client error, with a message for the person at the terminal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(pub String);

impl TlsArgs {
    /// Resolves the TLS options for a connection to `to`.
    pub fn target(&self, to: &str) -> Result<ClientTarget, ClientError> {
        let Some(ca) = &self.ca else {
            if self.cert.is_some() {
                return Err(ClientError("--cert needs --ca (TLS)".into()));
            }
            return Ok(ClientTarget {
                addr: to.to_string(),
                tls: None,
            });
        };
        let cert_key = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        let config =
            crate::tls::client_config(ca, cert_key).map_err(|e| ClientError(e.to_string()))?;
        let host = match &self.server_name {
            Some(n) => n.clone(),
            None => host_of(to),
        };
        let name = ServerName::try_from(host.clone())
            .map_err(|_| ClientError(format!("`{host}` is not a valid server name")))?;
        Ok(ClientTarget {
            addr: to.to_string(),
            tls: Some((config, name)),
        })
    }
}

/// The host part of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

impl MllpClient {
    /// Connects (and completes the TLS handshake) within `timeout`.
    pub async fn connect(target: &ClientTarget, timeout: Duration) -> Result<Self, ClientError> {
        let connect = async {
            let tcp = TcpStream::connect(&target.addr)
                .await
                .map_err(|e| ClientError(format!("connect {}: {e}", target.addr)))?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = match &target.tls {
                None => Box::new(tcp),
                Some((config, name)) => {
                    let tls = TlsConnector::from(config.clone())
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| {
                            ClientError(format!("TLS handshake with {}: {e}", target.addr))
                        })?;
                    Box::new(tls)
                }
            };
            Ok(io)
        };
        let io = tokio::time::timeout(timeout, connect).await.map_err(|_| {
            ClientError(format!(
                "connect {}: timed out after {timeout:?}",
                target.addr
            ))
        })??;
        Ok(Self {
            io,
            buf: BytesMut::with_capacity(4096),
            codec: MllpCodec::new(64 * 1024 * 1024),
            out: BytesMut::with_capacity(4096),
        })
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
                Ok(0) => {
                    return Err(ClientError(
                        "connection closed by the server without an answer".into(),
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(ClientError(format!("read: {e}"))),
            }
        }
    }

    /// Closes the connection (TLS close_notify where applicable).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
    }
}

/// Splits text into HL7 messages: line breaks (`\r\n`, `\n` or `\r`) end segments, and a blank
/// line separates messages. Each segment of the result ends with `\r`.
pub fn split_messages(text: &[u8]) -> Vec<Vec<u8>> {
    let mut unified = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\r' if text.get(i + 1) == Some(&b'\n') => {
                unified.push(b'\n');
                i += 1;
            }
            b'\r' => unified.push(b'\n'),
            b => unified.push(b),
        }
        i += 1;
    }
    let mut messages = Vec::new();
    let mut current = Vec::new();
    for line in unified.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            if !current.is_empty() {
                messages.push(std::mem::take(&mut current));
            }
            continue;
        }
        current.extend_from_slice(line);
        current.push(b'\r');
    }
    if !current.is_empty() {
        messages.push(current);
    }
    messages
}

/// A plain HTTP/1.0 GET against the admin server; returns the body of a 200 answer.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<String, ClientError> {
    let fetch = async {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), fetch)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_on_blank_lines_whatever_the_line_ending() {
        for text in [
            &b"MSH|a\nPID|1\n\nMSH|b\n"[..],
            b"MSH|a\r\nPID|1\r\n\r\nMSH|b\r\n",
            b"MSH|a\rPID|1\r\rMSH|b\r",
        ] {
            let got = split_messages(text);
            assert_eq!(
                got,
                vec![b"MSH|a\rPID|1\r".to_vec(), b"MSH|b\r".to_vec()],
                "{text:?}"
            );
        }
    }

    #[test]
    fn host_is_taken_from_the_address() {
        assert_eq!(host_of("localhost:2575"), "localhost");
        assert_eq!(host_of("[::1]:2575"), "::1");
    }
}
