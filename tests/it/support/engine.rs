//! The stand-in legacy engine (`ack-server`'s own), sample messages and answers.

use super::*;

/// What the stand-in engine does with each message: `ack-server`'s own engine behaviours.
pub use mllp_proxy::cli::ack_server::Behaviour;

/// The stand-in legacy engine of `ack-server`, on plain MLLP on a loopback port, keeping what
/// it receives; stopped when dropped.
pub struct Engine {
    pub addr: SocketAddr,
    engine: Arc<ack_server::Engine>,
    stop: CancellationToken,
}

impl Engine {
    pub async fn start(b: Behaviour) -> Engine {
        Self::start_with("127.0.0.1:0".parse().expect("addr"), b, false).await
    }

    pub async fn start_on(addr: SocketAddr, b: Behaviour) -> Engine {
        Self::start_with(addr, b, false).await
    }

    /// An engine that serves one connection at a time, like a lab system's single listener
    /// thread: a second connection while one is open is counted and closed at once.
    pub async fn start_single(b: Behaviour) -> Engine {
        Self::start_with("127.0.0.1:0".parse().expect("addr"), b, true).await
    }

    /// The engine behind TLS with `config`: a partner that egress routes connect to.
    pub async fn start_tls(b: Behaviour, config: Arc<rustls::ServerConfig>) -> Engine {
        let engine = ack_server::Engine::scripted(b, false).with_tls(config);
        Self::serve(engine, "127.0.0.1:0".parse().expect("addr")).await
    }

    async fn start_with(addr: SocketAddr, b: Behaviour, single: bool) -> Engine {
        Self::serve(ack_server::Engine::scripted(b, single), addr).await
    }

    async fn serve(engine: ack_server::Engine, addr: SocketAddr) -> Engine {
        let listener = TcpListener::bind(addr).await.expect("engine binds");
        let addr = listener.local_addr().expect("addr");
        let engine = Arc::new(engine);
        let stop = CancellationToken::new();
        tokio::spawn(ack_server::serve(listener, engine.clone(), stop.clone()));
        Engine { addr, engine, stop }
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    pub fn set(&self, b: Behaviour) {
        self.engine.set_behaviour(b);
    }

    pub fn received(&self) -> Vec<Bytes> {
        self.engine.received()
    }

    /// The MSH-10 of each received message, in order.
    pub fn received_ids(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|m| {
                String::from_utf8_lossy(m)
                    .split('|')
                    .nth(9)
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }

    pub fn connections(&self) -> usize {
        self.engine.connections() as usize
    }

    /// Connections refused because another was open (single-connection engines).
    pub fn refused(&self) -> usize {
        self.engine.refused()
    }

    /// The most connections that were open at once.
    pub fn peak(&self) -> usize {
        self.engine.peak()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A free loopback port, released: for an address bound later (a listener moved on reload, an
/// engine that comes back). For a target that stays down, [`dead_addr`].
pub async fn unused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// A loopback address that refuses connections for as long as the tests run: its port stays
/// bound (never listening, so a connect is refused) and cannot be handed to another test's
/// server, as a port picked free and released can.
pub fn dead_addr() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    // Held until the test binary exits: a handful of descriptors.
    std::mem::forget(socket);
    addr
}

/// A valid ADT^A01 with control ID `id` and a made-up patient.
pub fn adt(id: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|ADT|WARD|LAB|HOSP|20261126120000||ADT^A01^ADT_A01|{id}|P|2.5.1\rEVN|A01|20261126120000\rPID|1||MRN{id}^^^HOSP^MR||DOE^JANE||19800101|F\r"
    )
    .into_bytes()
}

/// MSA-1 and MSA-2 of an answer, as strings.
pub fn msa(answer: &[u8]) -> (String, String) {
    let info = mllp_proxy::hl7::parse_ack(answer).expect("answer is an acknowledgment");
    (
        info.code.to_string(),
        String::from_utf8_lossy(info.control_id).into_owned(),
    )
}
