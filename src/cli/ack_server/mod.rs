//! `mllp-proxy ack-server`: a stand-in legacy engine on plain MLLP that answers AA to every
//! message, and on request misbehaves the way real engines do (`--fault KIND=PROBABILITY`), so
//! that failure handling — the proxy's, or a sender's retry logic — can be rehearsed.
//!
//! With `--log`, one JSON line per received message records what the engine did: its control
//! ID, the fault applied, and the exact ACK written (each ACK has its own MSH-10) and whether it
//! was written completely. A checker can then trace every ACK a sender saw back to the exact
//! frame the engine wrote (`mllp-proxy soak` does).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use crate::cli::send::parse_duration_arg;
use crate::hl7::{AckCode, Header, build_accept, build_ack};
use crate::mllp::{Frame, MllpCodec};

mod faults;

use faults::parse_fault;
pub use faults::{Behaviour, Fault};

/// Arguments of `ack-server`.
#[derive(Debug, clap::Args)]
pub struct AckServerArgs {
    /// Address to listen on, e.g. 127.0.0.1:2576.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Append one JSON record per received message (control ID, fault, ACK written) to this file.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Misbehave on a share of messages: KIND=PROBABILITY, repeatable (e.g. --fault close=0.01).
    /// Kinds: no-answer close reset partial garbage wrong-msa2 duplicate late drip stray
    /// close-after-ack ae ar. The probabilities add up to at most 1.
    #[arg(long = "fault", value_parser = parse_fault)]
    pub faults: Vec<(Fault, f64)>,
    /// Seed of the fault draws (default: from the OS).
    #[arg(long)]
    pub seed: Option<u64>,
    /// How long a `late` ACK waits before it is written (set it above the proxy's ack_timeout).
    #[arg(long, default_value = "2s", value_parser = parse_duration_arg)]
    pub late_delay: Duration,
    /// Serve MLLP over TLS with this certificate (PEM chain): rehearse a partner that an
    /// egress route (`upstream.tls`) connects to.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of `--cert`.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Require a client certificate issued by this CA (PEM): mutual TLS.
    #[arg(long, requires = "cert")]
    pub client_ca: Option<PathBuf>,
}

/// How the engine answers: the fault mix, the draws, the behaviour when no fault is drawn,
/// and what it keeps of what it received.
pub struct Engine {
    faults: Vec<(Fault, f64)>,
    late_delay: Duration,
    /// splitmix64 state: one atomic step per draw, so draws need no lock.
    rng: AtomicU64,
    seq: AtomicU64,
    conns: AtomicU64,
    log: Option<Mutex<std::fs::File>>,
    behaviour: Mutex<Behaviour>,
    /// Every frame received, in order (tests only: it grows without bound).
    received: Option<Mutex<Vec<Bytes>>>,
    /// Serves one connection at a time, like a lab system's single listener thread.
    single: bool,
    /// Connections open now, refused because one was (single), and the most open at once.
    open: Mutex<(usize, usize, usize)>,
    /// Serves TLS (a partner) instead of plain MLLP.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// A bad `ack-server` set-up, named for the person at the terminal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EngineError(String);

impl Engine {
    /// An engine with the fault mix of `args`, appending records to `args.log` if given.
    pub fn new(args: &AckServerArgs) -> Result<Engine, EngineError> {
        let total: f64 = args.faults.iter().map(|(_, p)| p).sum();
        if total > 1.0 + 1e-9 {
            return Err(EngineError(format!(
                "--fault probabilities add up to {total}, more than 1"
            )));
        }
        let log = match &args.log {
            Some(p) => {
                Some(Mutex::new(open_log(p).map_err(|e| {
                    EngineError(format!("--log {}: {e}", p.display()))
                })?))
            }
            None => None,
        };
        let seed = args.seed.unwrap_or_else(|| {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        });
        Ok(Engine {
            faults: args.faults.clone(),
            late_delay: args.late_delay,
            rng: AtomicU64::new(seed),
            log,
            ..Engine::plain()
        })
    }

    /// A well-behaved engine: AA to everything, no record file.
    pub fn plain() -> Engine {
        Engine {
            faults: Vec::new(),
            late_delay: Duration::ZERO,
            rng: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            conns: AtomicU64::new(0),
            log: None,
            behaviour: Mutex::new(Behaviour::Ack),
            received: None,
            single: false,
            open: Mutex::default(),
            tls: None,
        }
    }

    /// This engine behind TLS with `config` (a partner that egress routes connect to).
    pub fn with_tls(self, config: Arc<rustls::ServerConfig>) -> Engine {
        Engine {
            tls: Some(tokio_rustls::TlsAcceptor::from(config)),
            ..self
        }
    }

    /// An engine that behaves as `behaviour` and keeps every frame it receives (for tests);
    /// `single`: one connection at a time, a second one closed at once and counted.
    pub fn scripted(behaviour: Behaviour, single: bool) -> Engine {
        Engine {
            behaviour: Mutex::new(behaviour),
            received: Some(Mutex::default()),
            single,
            ..Engine::plain()
        }
    }

    /// Changes the behaviour for the messages that follow.
    pub fn set_behaviour(&self, b: Behaviour) {
        if let Ok(mut current) = self.behaviour.lock() {
            *current = b;
        }
    }

    fn behaviour(&self) -> Behaviour {
        self.behaviour.lock().map_or(Behaviour::Ack, |b| *b)
    }

    /// The frames received so far, in order (empty unless [`Engine::scripted`]).
    pub fn received(&self) -> Vec<Bytes> {
        self.received
            .as_ref()
            .and_then(|r| r.lock().ok().map(|r| r.clone()))
            .unwrap_or_default()
    }

    /// Connections accepted and served.
    pub fn connections(&self) -> u64 {
        self.conns.load(Ordering::Relaxed)
    }

    /// Connections refused because another was open (single-connection engines).
    pub fn refused(&self) -> usize {
        self.open.lock().map_or(0, |o| o.1)
    }

    /// The most connections that were open at once.
    pub fn peak(&self) -> usize {
        self.open.lock().map_or(0, |o| o.2)
    }

    /// Takes a new connection into the counts; `false` when a single-connection engine is
    /// busy (then it is counted as refused).
    fn enter(&self) -> bool {
        let Ok(mut o) = self.open.lock() else {
            return true;
        };
        if self.single && o.0 > 0 {
            o.1 += 1;
            return false;
        }
        o.0 += 1;
        o.2 = o.2.max(o.0);
        true
    }

    fn leave(&self) {
        if let Ok(mut o) = self.open.lock() {
            o.0 = o.0.saturating_sub(1);
        }
    }

    /// A uniform draw in [0, 1).
    fn draw(&self) -> f64 {
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick(&self) -> Option<Fault> {
        if self.faults.is_empty() {
            return None;
        }
        let mut u = self.draw();
        for &(fault, p) in &self.faults {
            if u < p {
                return Some(fault);
            }
            u -= p;
        }
        None
    }

    fn record(&self, r: &Record<'_>) {
        let Some(log) = &self.log else { return };
        let mut line = match serde_json::to_vec(r) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "ack-server record not serialised");
                return;
            }
        };
        line.push(b'\n');
        // One write per record on an O_APPEND file: records never interleave.
        let written = match log.lock() {
            Ok(mut f) => std::io::Write::write_all(&mut *f, &line),
            Err(_) => return,
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "ack-server record not written");
        }
    }
}

/// One line of the `--log` file.
#[derive(serde::Serialize)]
struct Record<'a> {
    /// Order of receipt across all connections.
    seq: u64,
    conn: u64,
    control_id: String,
    message_type: String,
    bytes: usize,
    fault: &'a str,
    /// MSH-10 of the ACK written, if one was.
    ack_id: Option<String>,
    /// The ACK exactly as written (without framing).
    ack: Option<String>,
    /// Whether the whole ACK frame reached the socket.
    ack_complete: bool,
}

/// Opens (creating or appending to) the record file at `path`.
fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// `ack-server` as a command: binds, serves until SIGTERM/SIGINT, and says what went wrong.
pub async fn run(args: AckServerArgs) -> Result<(), EngineError> {
    let mut engine = Engine::new(&args)?;
    let mut transport = "plain MLLP";
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        let tls = crate::config::AdminTlsConfig {
            certificate: cert.clone(),
            private_key: key.clone(),
            client_ca: args.client_ca.clone(),
        };
        let config = crate::tls::admin_server_config(&tls).map_err(|e| {
            EngineError(
                e.to_string()
                    .replace("admin.tls.", "--")
                    .replace("client_ca", "client-ca"),
            )
        })?;
        engine = engine.with_tls(config);
        transport = if args.client_ca.is_some() {
            "mutual TLS"
        } else {
            "TLS"
        };
    }
    let engine = Arc::new(engine);
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| EngineError(format!("--listen {}: {e}", args.listen)))?;
    let addr = listener.local_addr().unwrap_or(args.listen);
    let faults: Vec<String> = args
        .faults
        .iter()
        .map(|(f, p)| format!("{}={p}", f.name()))
        .collect();
    tracing::info!(listen = %addr, faults = %faults.join(","), transport, "ack-server listening (AA to every message)");
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(listener, engine, stop.clone()));
    match crate::shutdown::Signals::new() {
        Ok(mut signals) => while signals.next().await != crate::shutdown::Signal::Terminate {},
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    stop.cancel();
    let _ = server.await;
    Ok(())
}

/// Serves connections until `shutdown`. Each message is answered AA (CA in enhanced mode) unless
/// a fault is drawn for it.
pub async fn serve(listener: TcpListener, engine: Arc<Engine>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, _)) => {
                if !engine.enter() {
                    continue;
                }
                let engine = engine.clone();
                let shutdown = shutdown.clone();
                let conn = engine.conns.fetch_add(1, Ordering::Relaxed) + 1;
                tokio::spawn(async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        r = accepted_connection(tcp, &engine, conn) => if let Err(e) = r {
                            tracing::debug!(error = %e, "ack-server connection ended");
                        },
                    }
                    // Counted closed before the peer can see the close, as a real engine that
                    // takes the next connection only after closing this one.
                    engine.leave();
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "ack-server accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What to do with the connection after a message.
enum Next {
    Read,
    Close,
}

/// A byte stream an engine serves: plain TCP, or TLS over it.
pub(super) trait Wire: AsyncRead + AsyncWrite + Unpin + Send {
    /// The TCP connection underneath (for an abortive close).
    fn tcp(&self) -> &TcpStream;
}

impl Wire for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Wire for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// One accepted connection: its TLS handshake first when the engine serves TLS.
async fn accepted_connection(tcp: TcpStream, engine: &Engine, conn: u64) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    match &engine.tls {
        None => {
            let mut tcp = tcp;
            connection(&mut tcp, engine, conn).await
        }
        Some(acceptor) => {
            let mut tls = acceptor.accept(tcp).await?;
            let r = connection(&mut tls, engine, conn).await;
            let _ = tls.shutdown().await;
            r
        }
    }
}

async fn connection<S: Wire>(tcp: &mut S, engine: &Engine, conn: u64) -> std::io::Result<()> {
    let mut codec = MllpCodec::new(64 * 1024 * 1024);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut nth = 0;
    loop {
        while let Some(frame) = codec.decode(&mut buf).map_err(std::io::Error::other)? {
            let Frame::Message(msg) = frame else { continue };
            nth += 1;
            if let Next::Close = answer(tcp, engine, conn, &msg, nth).await {
                return Ok(());
            }
        }
        buf.reserve(16 * 1024);
        let read = tcp.read_buf(&mut buf);
        let n = match engine.behaviour() {
            Behaviour::AckCloseWhenIdle(idle) => match tokio::time::timeout(idle, read).await {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            },
            _ => read.await?,
        };
        if n == 0 {
            return Ok(());
        }
    }
}

/// Answers the `nth` message of a connection as the drawn fault or the behaviour says, and
/// records what was written.
async fn answer<S: Wire>(tcp: &mut S, engine: &Engine, conn: u64, msg: &Bytes, nth: u64) -> Next {
    if let Some(received) = &engine.received
        && let Ok(mut r) = received.lock()
    {
        r.push(msg.clone());
    }
    let behaviour = engine.behaviour();
    if behaviour == Behaviour::CloseOnSecondMessage && nth == 2 {
        return Next::Close;
    }
    let seq = engine.seq.fetch_add(1, Ordering::Relaxed);
    let header = Header::parse(msg).ok();
    let text = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
    let mut rec = Record {
        seq,
        conn,
        control_id: text(header.map(|h| h.control_id)),
        message_type: text(header.map(|h| h.message_type)),
        bytes: msg.len(),
        fault: "none",
        ack_id: None,
        ack: None,
        ack_complete: false,
    };
    if header.is_some_and(|h| h.is_ack()) {
        // Like a real engine: an acknowledgment is not answered.
        engine.record(&rec);
        return Next::Read;
    }
    let fault = engine.pick().or(behaviour.fault());
    rec.fault = fault.map_or("none", Fault::name);
    let ack = match fault {
        Some(Fault::Ae) => build_ack(header.as_ref(), AckCode::AE),
        Some(Fault::Ar) => build_ack(header.as_ref(), AckCode::AR),
        Some(Fault::Garbage) => b"this is not an HL7 acknowledgment".to_vec(),
        Some(Fault::WrongMsa2) => {
            let ack = String::from_utf8_lossy(&build_accept(header.as_ref())).into_owned();
            let f = header.map_or('|', |h| char::from(h.separators.field));
            let msa = format!("MSA{f}AA{f}");
            ack.replacen(&msa, &format!("{msa}WRONG-"), 1).into_bytes()
        }
        Some(_) => build_accept(header.as_ref()),
        None => behaviour.ack(header.as_ref()).await,
    };
    let (written, next) = write_answer(tcp, engine, fault, &ack).await;
    if fault.is_none() && written == Some(true) {
        behaviour.after(tcp, &MllpCodec::frame(&ack)).await;
    }
    if let Some(complete) = written {
        rec.ack_id = Header::parse(&ack)
            .ok()
            .map(|h| String::from_utf8_lossy(h.control_id).into_owned());
        rec.ack = Some(String::from_utf8_lossy(&ack).into_owned());
        rec.ack_complete = complete;
    }
    engine.record(&rec);
    next
}

/// Writes `ack` as `fault` says: whether it was written whole (`None`: not at all), and
/// what the connection does next.
async fn write_answer<S: Wire>(
    tcp: &mut S,
    engine: &Engine,
    fault: Option<Fault>,
    ack: &[u8],
) -> (Option<bool>, Next) {
    let framed = MllpCodec::frame(ack);
    match fault {
        Some(Fault::NoAnswer) => (None, Next::Read),
        Some(Fault::Close) => (None, Next::Close),
        Some(Fault::Reset) => {
            let _ = tcp.tcp().set_zero_linger();
            (None, Next::Close)
        }
        Some(Fault::Partial) => {
            let half = &framed[..framed.len() / 2];
            let _ = tcp.write_all(half).await;
            (Some(false), Next::Close)
        }
        Some(Fault::Late) => {
            tokio::time::sleep(engine.late_delay).await;
            (Some(tcp.write_all(&framed).await.is_ok()), Next::Read)
        }
        Some(Fault::Drip) => {
            let mut ok = true;
            for b in framed.iter() {
                if tcp.write_all(&[*b]).await.is_err() {
                    ok = false;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (Some(ok), Next::Read)
        }
        Some(Fault::Stray) => {
            let mut all = b"\n\0stray\r\n".to_vec();
            all.extend_from_slice(&framed);
            all.extend_from_slice(b"\r\n");
            (Some(tcp.write_all(&all).await.is_ok()), Next::Read)
        }
        Some(Fault::Duplicate) => {
            let ok = tcp.write_all(&framed).await.is_ok();
            let delay = 1 + (engine.draw() * 10.0) as u64;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let _ = tcp.write_all(&framed).await;
            (Some(ok), Next::Read)
        }
        Some(Fault::CloseAfterAck) => (Some(tcp.write_all(&framed).await.is_ok()), Next::Close),
        _ => (Some(tcp.write_all(&framed).await.is_ok()), Next::Read),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_by_name_and_bad_ones_are_explained() {
        assert_eq!(parse_fault("close=0.25"), Ok((Fault::Close, 0.25)));
        for f in Fault::ALL {
            assert_eq!(Fault::from_name(f.name()), Some(f));
        }
        assert!(
            parse_fault("close")
                .unwrap_err()
                .contains("KIND=PROBABILITY")
        );
        assert!(parse_fault("boom=0.1").unwrap_err().contains("wrong-msa2"));
        assert!(parse_fault("ae=1.5").unwrap_err().contains("within 0..1"));
    }

    #[test]
    fn draws_follow_the_configured_shares() {
        let args = AckServerArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            log: None,
            faults: vec![(Fault::Close, 0.1), (Fault::Ae, 0.3)],
            seed: Some(7),
            late_delay: Duration::ZERO,
            cert: None,
            key: None,
            client_ca: None,
        };
        let e = Engine::new(&args).unwrap();
        let n = 100_000;
        let (mut close, mut ae) = (0, 0);
        for _ in 0..n {
            match e.pick() {
                Some(Fault::Close) => close += 1,
                Some(Fault::Ae) => ae += 1,
                _ => {}
            }
        }
        assert!((9_000..11_000).contains(&close), "{close}");
        assert!((28_500..31_500).contains(&ae), "{ae}");
        let too_much = AckServerArgs {
            faults: vec![(Fault::Close, 0.7), (Fault::Ae, 0.7)],
            ..args
        };
        assert!(Engine::new(&too_much).is_err());
    }
}
