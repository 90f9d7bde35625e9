//! `mllp-proxy-pipe LISTEN ENGINE CERT_DIR`: accepts mutual-TLS connections on LISTEN (a
//! single-threaded runtime per core, each with its own SO_REUSEPORT listener, as the proxy's
//! session threads), opens a TCP connection to ENGINE for each and copies bytes both ways.
//! No framing, no validation, no ACK correlation, no metrics, no audit: the floor the proxy's
//! stack sets. CERT_DIR holds server.crt, server.key and ca.crt.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, engine, certs] = &args[..] else {
        return Err("usage: mllp-proxy-pipe LISTEN ENGINE CERT_DIR".into());
    };
    let (listen, engine): (SocketAddr, SocketAddr) = (listen.parse()?, engine.parse()?);
    let acceptor = acceptor(certs)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let acceptor = acceptor.clone();
            std::thread::spawn(move || -> Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()?;
                runtime.block_on(async { serve(listener(listen)?, acceptor, engine).await })
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "a runtime thread panicked")??;
    }
    Ok(())
}

fn acceptor(dir: &str) -> Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(format!("{dir}/server.crt"))?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(format!("{dir}/server.key"))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(format!("{dir}/ca.crt"))? {
        roots.add(ca?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn listener(addr: SocketAddr) -> Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(TcpListener::from_std(socket.into())?)
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, engine: SocketAddr) -> Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let Ok(mut upstream) = TcpStream::connect(engine).await else {
                return;
            };
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
        });
    }
}
