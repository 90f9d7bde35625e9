//! Behind a TCP load balancer: the PROXY protocol header names each sender, and a route
//! refuses, before any TLS work, what does not come from its balancer with a header.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use mllp_proxy::client::{ClientTarget, MllpClient};
use mllp_proxy::mllp::{Frame, MllpCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::codec::Decoder;

use crate::support::*;

const T: Duration = Duration::from_secs(10);

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

/// A TCP connection to `to` from the loopback address `from`.
async fn tcp_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(ip(from), 0))
        .expect("bind a loopback address");
    socket.connect(to).await.expect("connect")
}

/// Writes `header`, then speaks MLLP over TLS with the good client certificate on the same
/// connection: one message, its ACK's MSA-1 and MSA-2 (or `None` when the connection ends).
async fn exchange_after(
    mut tcp: TcpStream,
    header: &[u8],
    target: &ClientTarget,
    id: &str,
) -> Option<(String, String)> {
    tcp.write_all(header).await.ok()?;
    let (config, name) = target.tls.clone().expect("tls");
    let mut tls = tokio::time::timeout(T, TlsConnector::from(config).connect(name, tcp))
        .await
        .ok()?
        .ok()?;
    tls.write_all(&MllpCodec::frame(&adt(id))).await.ok()?;
    let mut codec = MllpCodec::new(1 << 20);
    let mut buf = BytesMut::new();
    loop {
        if let Ok(Some(Frame::Message(ack))) = codec.decode(&mut buf) {
            return Some(msa(&ack));
        }
        let n = tokio::time::timeout(T, tls.read_buf(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
    }
}

/// The `peer` of the first `n` audit records of `event`, once written.
async fn audited_peers(world: &World, event: &str, n: usize) -> Vec<String> {
    let records = world.audited(event, n).await;
    records
        .iter()
        .filter_map(|v| v["peer"].as_str().map(str::to_string))
        .collect()
}

fn result(r: &str) -> String {
    format!("mllp_proxy_proxy_protocol_total{{result=\"{r}\",route=\"test\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_trusted_source_with_a_header_is_served_and_the_header_names_the_sender() {
    // The route trusts 127.0.0.2 only. From 127.0.0.1: refused before TLS. From 127.0.0.2:
    // no header, refused; a header sent one byte every 300 ms, refused at header_timeout; a v1
    // header naming 192.0.2.10 makes that the peer of the audit records; a v2 LOCAL keeps the
    // balancer's own address.
    let yaml = "    proxy_protocol: { trusted: [\"127.0.0.2/32\"], header_timeout: 1s }\n";
    let world = Harness::new().route_yaml(yaml).audit().start().await;
    let (pki, proxy) = (&world.pki, &world.proxy);
    let addr = proxy.routes()[0].1;
    let target = pki.target(addr, ClientCert::Good);

    let untrusted = MllpClient::connect_from(&target, Some(ip("127.0.0.1")), T).await;
    assert!(untrusted.is_err(), "an untrusted source got a TLS session");
    assert!(metric_reaches(proxy, &result("untrusted"), 1.0).await);

    let no_header = MllpClient::connect_from(&target, Some(ip("127.0.0.2")), T).await;
    assert!(
        no_header.is_err(),
        "a trusted source without a header got a TLS session"
    );
    assert!(metric_reaches(proxy, &result("missing"), 1.0).await);

    let slow = async {
        let mut tcp = tcp_from("127.0.0.2", addr).await;
        let started = std::time::Instant::now();
        for b in b"PROXY TCP4 192.0.2.99 10.0.0.1 4000 2575\r\n" {
            if tcp.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut rest = [0u8; 1];
        let closed = matches!(
            tokio::time::timeout(T, tcp.read(&mut rest)).await,
            Ok(Ok(0)) | Ok(Err(_))
        );
        (closed, started.elapsed())
    }
    .await;
    assert!(slow.0, "a slow header was not closed");
    assert!(slow.1 < Duration::from_secs(5), "closed after {:?}", slow.1);
    assert!(metric_reaches(proxy, &result("timeout"), 1.0).await);

    let v1 = async {
        let tcp = tcp_from("127.0.0.2", addr).await;
        let header = b"PROXY TCP4 192.0.2.10 10.0.0.1 5555 2575\r\n";
        exchange_after(tcp, header, &target, "BEHIND-1").await
    }
    .await;
    assert_eq!(v1, Some(("AA".into(), "BEHIND-1".into())));
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    let v2 = async {
        let tcp = tcp_from("127.0.0.2", addr).await;
        exchange_after(tcp, &local, &target, "BEHIND-2").await
    }
    .await;
    assert_eq!(v2, Some(("AA".into(), "BEHIND-2".into())));
    assert!(metric_reaches(proxy, &result("proxied"), 1.0).await);
    assert!(metric_reaches(proxy, &result("local"), 1.0).await);

    let peers = audited_peers(&world, "message", 2).await;
    assert_eq!(peers.len(), 2, "{peers:#?}");
    assert_eq!(peers[0], "192.0.2.10:5555");
    assert!(peers[1].starts_with("127.0.0.2:"), "{peers:?}");
    assert_eq!(world.engine.received_ids(), ["BEHIND-1", "BEHIND-2"]);
}

/// HAProxy 2.6 in TCP mode on a loopback port, sending a PROXY header (`send-proxy-v2` or
/// `send-proxy`) to `backend`; stopped when dropped.
struct Haproxy {
    child: std::process::Child,
    /// Holds haproxy.cfg for as long as HAProxy runs.
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Returns it and the address of its frontend.
    fn start(backend: SocketAddr, send_proxy: &str) -> Option<(Haproxy, SocketAddr)> {
        let bin = required_tool("haproxy", "-v", "haproxy")?;
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("haproxy.cfg");
        let (child, front) = spawn_listening(false, Duration::from_secs(10), |port| {
            std::fs::write(
                &cfg,
                format!(
                    "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\nfrontend f\n  bind 127.0.0.1:{port}\n  default_backend b\nbackend b\n  server s {backend} {send_proxy}\n"
                ),
            )
            .expect("write haproxy.cfg");
            std::process::Command::new(&bin)
                .args(["-db", "-f"])
                .arg(&cfg)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn haproxy")
        });
        Some((Haproxy { child, _dir: dir }, front))
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_real_haproxy_each_sender_keeps_its_own_address_and_its_own_limit() {
    // Senders on 127.0.0.3 and 127.0.0.4 reach the proxy through HAProxy in TCP mode, once
    // with send-proxy-v2 and once with send-proxy (v1). The audit records carry each sender's
    // address, not HAProxy's; max_connections_per_source: 1 refuses a second connection of
    // 127.0.0.3 while 127.0.0.4 is served.
    for send_proxy in ["send-proxy-v2", "send-proxy"] {
        let yaml = "    proxy_protocol: { trusted: [\"127.0.0.1/32\"] }\n    limits: { max_connections_per_source: 1 }\n";
        let world = Harness::new().route_yaml(yaml).audit().start().await;
        let (pki, proxy) = (&world.pki, &world.proxy);
        let Some((_haproxy, front)) = Haproxy::start(proxy.routes()[0].1, send_proxy) else {
            return;
        };
        // HAProxy relays the readiness probe of its own frontend too, with a header: let it
        // be counted before the reference reading (no metric tells when HAProxy is done).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = metric(proxy, &result("proxied")).await;
        let target = pki.target(front, ClientCert::Good);
        let connect = |from: &'static str| MllpClient::connect_from(&target, Some(ip(from)), T);
        let mut first = connect("127.0.0.3").await.expect("127.0.0.3 connects");
        let ack = first.exchange(&adt("LB-3"), T).await.expect("ACK");
        assert_eq!(msa(&ack).0, "AA", "{send_proxy}");
        // A second connection of the same sender is over its limit of one.
        let second = match connect("127.0.0.3").await {
            Ok(mut c) => c.exchange(&adt("LB-3b"), Duration::from_secs(3)).await,
            Err(e) => Err(e),
        };
        assert!(
            second.is_err(),
            "{send_proxy}: a second connection of 127.0.0.3 was served"
        );
        let mut other = connect("127.0.0.4").await.expect("127.0.0.4 connects");
        let ack = other.exchange(&adt("LB-4"), T).await.expect("ACK");
        assert_eq!(msa(&ack).0, "AA", "{send_proxy}");
        first.close().await;
        other.close().await;
        let per_source =
            "mllp_proxy_connections_rejected_total{reason=\"per_source\",route=\"test\"}";
        assert!(metric_reaches(proxy, per_source, 1.0).await, "{send_proxy}");
        assert!(
            metric_reaches(proxy, &result("proxied"), before + 3.0).await,
            "{send_proxy}"
        );
        let peers = audited_peers(&world, "message", 2).await;
        assert_eq!(peers.len(), 2, "{send_proxy}: {peers:#?}");
        assert!(
            peers[0].starts_with("127.0.0.3:"),
            "{send_proxy}: {peers:?}"
        );
        assert!(
            peers[1].starts_with("127.0.0.4:"),
            "{send_proxy}: {peers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_mapped_trusted_range_trusts_that_one_address_and_no_other() {
    // `trusted` written as a `[::]` listener logs an IPv4 peer: ["::ffff:192.0.2.7"] refuses a
    // header from 127.0.0.1 before TLS (it once trusted every IPv4 source); with
    // ["::ffff:127.0.0.1"] the same connection is served and audited with the header's address.
    for (trusted, served) in [("::ffff:192.0.2.7", false), ("::ffff:127.0.0.1", true)] {
        let yaml = format!("    proxy_protocol: {{ trusted: [\"{trusted}\"] }}\n");
        let world = Harness::new().route_yaml(&yaml).audit().start().await;
        let (proxy, addr) = (&world.proxy, world.proxy.routes()[0].1);
        let target = world.pki.target(addr, ClientCert::Good);
        let tcp = tcp_from("127.0.0.1", addr).await;
        let header = b"PROXY TCP4 198.51.100.9 127.0.0.1 4000 2575\r\n";
        let answer = exchange_after(tcp, header, &target, "MAPPED-1").await;
        if served {
            assert_eq!(answer, Some(("AA".into(), "MAPPED-1".into())), "{trusted}");
            assert!(
                metric_reaches(proxy, &result("proxied"), 1.0).await,
                "{trusted}"
            );
            assert_eq!(
                audited_peers(&world, "message", 1).await,
                ["198.51.100.9:4000"]
            );
            assert_eq!(world.engine.received_ids(), ["MAPPED-1"]);
        } else {
            assert_eq!(answer, None, "{trusted}: an untrusted source was served");
            assert!(
                metric_reaches(proxy, &result("untrusted"), 1.0).await,
                "{trusted}"
            );
            assert_eq!(metric(proxy, &result("proxied")).await, 0.0, "{trusted}");
            assert!(world.engine.received_ids().is_empty(), "{trusted}");
            let handshakes =
                "mllp_proxy_tls_handshake_failures_total{reason=\"eof\",route=\"test\"}";
            assert_eq!(count(proxy, handshakes).await, 0.0, "TLS work was done");
        }
    }
}
