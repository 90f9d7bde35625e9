//! `mllp-proxy ack-server`: a stand-in legacy engine on plain MLLP that answers AA to every
//! message and can append each one, exactly as received, to a file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use crate::hl7::{Header, build_accept};
use crate::mllp::{Frame, MllpCodec};

/// Arguments of `ack-server`.
#[derive(Debug, clap::Args)]
pub struct AckServerArgs {
    /// Address to listen on, e.g. 127.0.0.1:2576.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Append each received message, followed by a newline, to this file.
    #[arg(long)]
    pub log: Option<PathBuf>,
}

/// Where received messages are appended.
pub type MessageLog = Arc<Mutex<tokio::fs::File>>;

/// Opens (creating or appending to) the message log at `path`.
pub async fn open_log(path: &std::path::Path) -> std::io::Result<MessageLog> {
    let f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    Ok(Arc::new(Mutex::new(f)))
}

/// Serves connections until `shutdown`: each message is logged, then answered AA (CA in
/// enhanced mode), like an engine that acknowledges only what it has stored.
pub async fn serve(listener: TcpListener, log: Option<MessageLog>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, _)) => {
                let log = log.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        r = connection(tcp, log) => if let Err(e) = r {
                            tracing::debug!(error = %e, "ack-server connection ended");
                        },
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "ack-server accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(mut tcp: TcpStream, log: Option<MessageLog>) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let mut codec = MllpCodec::new(64 * 1024 * 1024);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(1024);
    loop {
        while let Some(frame) = codec.decode(&mut buf).map_err(std::io::Error::other)? {
            let Frame::Message(msg) = frame else { continue };
            if let Some(log) = &log {
                let mut f = log.lock().await;
                f.write_all(&msg).await?;
                f.write_all(b"\n").await?;
                f.flush().await?;
            }
            let header = Header::parse(&msg).ok();
            if header.is_some_and(|h| h.is_ack()) {
                continue;
            }
            out.clear();
            MllpCodec::write_frame(&build_accept(header.as_ref()), &mut out);
            tcp.write_all(&out).await?;
        }
        buf.reserve(16 * 1024);
        if tcp.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}
