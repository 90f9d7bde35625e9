//! `mllp-proxy send`: sends messages from files (or stdin) and prints each ACK's MSA-1 and MSA-2.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use super::TlsArgs;
use crate::client::{ClientError, MllpClient};
use crate::hl7::{Header, Message, parse_ack};

/// Arguments of `send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// Where to send: HOST:PORT of the proxy (TLS) or of an engine (plain).
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// How long to wait for each ACK.
    #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
    pub timeout: Duration,
    /// Also print each answer in full, one segment per line.
    #[arg(long)]
    pub show: bool,
    /// Connect from this local address (a host with several, or 127.0.0.N to look like
    /// another sender behind a load balancer).
    #[arg(long)]
    pub from: Option<std::net::IpAddr>,
    /// Files holding one or more messages separated by blank lines; `-` or none reads stdin.
    pub files: Vec<PathBuf>,
}

pub(crate) fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s)
}

/// Sends every message in order over one connection; `Ok(true)` when each got a positive ACK.
pub async fn run(args: SendArgs) -> Result<bool, ClientError> {
    let mut messages = Vec::new();
    let stdin = PathBuf::from("-");
    let files = if args.files.is_empty() {
        std::slice::from_ref(&stdin)
    } else {
        &args.files[..]
    };
    for file in files {
        let bytes = if file.as_os_str() == "-" {
            let mut b = Vec::new();
            std::io::stdin()
                .read_to_end(&mut b)
                .map_err(|e| ClientError(format!("stdin: {e}")))?;
            b
        } else {
            std::fs::read(file).map_err(|e| ClientError(format!("{}: {e}", file.display())))?
        };
        messages.extend(super::split_messages(&bytes));
    }
    if messages.is_empty() {
        return Err(ClientError("no message to send".into()));
    }
    let target = args.tls.target(&args.to)?;
    let mut client = MllpClient::connect_from(&target, args.from, args.timeout).await?;
    client.check_admitted(ADMISSION_WAIT).await?;
    let mut all_positive = true;
    for (i, msg) in messages.iter().enumerate() {
        let control_id = Header::parse(msg)
            .map(|h| String::from_utf8_lossy(h.control_id).into_owned())
            .unwrap_or_default();
        let answer = match client.exchange(msg, args.timeout).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("no ACK for message {control_id}: {e}");
                let left = messages.len() - i - 1;
                if left > 0 {
                    eprintln!("{left} later message(s) not sent");
                }
                return Ok(false);
            }
        };
        match parse_ack(&answer) {
            Some(info) => {
                println!("{} {}", info.code, String::from_utf8_lossy(info.control_id));
                all_positive &= info.code.is_positive();
                if !info.code.is_positive() && !args.show {
                    for line in why_refused(&answer) {
                        println!("  {line}");
                    }
                }
            }
            None => {
                println!("? (answer to {control_id} has no MSA segment)");
                all_positive = false;
            }
        }
        if args.show {
            for segment in answer.split(|&b| b == b'\r').filter(|s| !s.is_empty()) {
                println!("  {}", String::from_utf8_lossy(segment));
            }
        }
    }
    client.close().await;
    Ok(all_positive)
}

/// How long `send` listens after the handshake for a server that turns the sender away.
const ADMISSION_WAIT: Duration = Duration::from_millis(200);

/// The text of a negative ACK: MSA-3, and each ERR segment's code and text (ERR-3 from v2.5,
/// ERR-1 before), as the sender's operator needs them.
fn why_refused(ack: &[u8]) -> Vec<String> {
    let Ok(msg) = Message::parse(ack) else {
        return Vec::new();
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut lines = Vec::new();
    if let Some(msa) = msg.segment(b"MSA") {
        let t = msa.field(3).as_bytes();
        if !t.is_empty() {
            lines.push(format!("MSA-3: {}", text(t)));
        }
    }
    for err in msg.segments().filter(|s| s.id() == b"ERR") {
        let (code, what) = match (err.field(3), err.field(1)) {
            (f, _) if !f.as_bytes().is_empty() => (f.component(1), f.component(2)),
            (_, f) => (f.subcomponent(4, 1), f.subcomponent(4, 2)),
        };
        if !code.is_empty() || !what.is_empty() {
            lines.push(format!("ERR: {} {}", text(code), text(what)));
        }
    }
    lines
}
