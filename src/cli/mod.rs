//! The tool commands around the proxy: `check`, `send`, `status`, `ack-server`, `demo`, `bench`,
//! `soak`.
//!
//! The client-side ones share [`crate::client::MllpClient`] and take [`TlsArgs`].

pub mod ack_server;
pub mod bench;
pub mod check;
pub mod demo;
pub mod send;
pub mod soak;
pub mod status;

use std::path::PathBuf;

use rustls_pki_types::ServerName;

use crate::client::{ClientError, ClientTarget};

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

/// Splits text into HL7 messages: line breaks (`\r\n`, `\n` or `\r`) end segments, and a blank
/// line separates messages. Each segment of the result ends with `\r`.
pub fn split_messages(text: &[u8]) -> Vec<Vec<u8>> {
    let unified = crate::hl7::normalise_terminators(text);
    let mut messages = Vec::new();
    let mut current = Vec::new();
    for line in unified.split(|&b| b == b'\r') {
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
