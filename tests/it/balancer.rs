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

/// The `peer` of every audit record of `event`.
fn audited_peers(proxy: &ProxyProcess, event: &str) -> Vec<String> {
    proxy
        .log_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .filter_map(|v| v["peer"].as_str().map(str::to_string))
        .collect()
}

/// Waits until the scrape of `proxy` has `sample` at `want`.
fn scraped(proxy: &ProxyProcess, rt: &tokio::runtime::Runtime, sample: &str, want: f64) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body = rt
            .block_on(mllp_proxy::client::http_get(proxy.admin, "/metrics"))
            .unwrap_or_default();
        if mllp_proxy::metrics::sample_value(&body, sample) == Some(want) {
            return true;
        }
        if std::time::Instant::now() > deadline {
            eprintln!(
                "{sample}: {:?}",
                mllp_proxy::metrics::sample_value(&body, sample)
            );
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn result(r: &str) -> String {
    format!("mllp_proxy_proxy_protocol_total{{result=\"{r}\",route=\"test\"}}")
}

#[test]
fn only_a_trusted_source_with_a_header_is_served_and_the_header_names_the_sender() {
    // The route trusts 127.0.0.2 only. From 127.0.0.1: refused before TLS. From 127.0.0.2:
    // no header, refused; a header sent one byte every 300 ms, refused at header_timeout; a v1
    // header naming 192.0.2.10 makes that the peer of the audit records; a v2 LOCAL keeps the
    // balancer's own address.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let yaml = "    proxy_protocol: { trusted: [\"127.0.0.2/32\"], header_timeout: 1s }\n";
    let BinaryWorld {
        pki, engine, proxy, ..
    } = rt.block_on(Harness::new().route_yaml(yaml).spawn_json());
    let target = pki.target(proxy.addr, ClientCert::Good);

    let untrusted = rt.block_on(MllpClient::connect_from(&target, Some(ip("127.0.0.1")), T));
    assert!(untrusted.is_err(), "an untrusted source got a TLS session");
    assert!(scraped(&proxy, &rt, &result("untrusted"), 1.0));

    let no_header = rt.block_on(MllpClient::connect_from(&target, Some(ip("127.0.0.2")), T));
    assert!(
        no_header.is_err(),
        "a trusted source without a header got a TLS session"
    );
    assert!(scraped(&proxy, &rt, &result("missing"), 1.0));

    let slow = rt.block_on(async {
        let mut tcp = tcp_from("127.0.0.2", proxy.addr).await;
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
    });
    assert!(slow.0, "a slow header was not closed");
    assert!(slow.1 < Duration::from_secs(5), "closed after {:?}", slow.1);
    assert!(scraped(&proxy, &rt, &result("timeout"), 1.0));

    let v1 = rt.block_on(async {
        let tcp = tcp_from("127.0.0.2", proxy.addr).await;
        let header = b"PROXY TCP4 192.0.2.10 10.0.0.1 5555 2575\r\n";
        exchange_after(tcp, header, &target, "BEHIND-1").await
    });
    assert_eq!(v1, Some(("AA".into(), "BEHIND-1".into())));
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    let v2 = rt.block_on(async {
        let tcp = tcp_from("127.0.0.2", proxy.addr).await;
        exchange_after(tcp, &local, &target, "BEHIND-2").await
    });
    assert_eq!(v2, Some(("AA".into(), "BEHIND-2".into())));
    assert!(scraped(&proxy, &rt, &result("proxied"), 1.0));
    assert!(scraped(&proxy, &rt, &result("local"), 1.0));

    assert!(eventually_sync(
        || audited_peers(&proxy, "message").len() >= 2
    ));
    let peers = audited_peers(&proxy, "message");
    assert_eq!(peers.len(), 2, "{:#?}", proxy.log_lines());
    assert_eq!(peers[0], "192.0.2.10:5555");
    assert!(peers[1].starts_with("127.0.0.2:"), "{peers:?}");
    assert_eq!(engine.received_ids(), ["BEHIND-1", "BEHIND-2"]);
}

/// HAProxy 2.6 in TCP mode listening on `front`, sending a PROXY header (`send-proxy-v2` or
/// `send-proxy`) to `backend`; stopped when dropped.
struct Haproxy {
    child: std::process::Child,
    /// Holds haproxy.cfg for as long as HAProxy runs.
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(front: SocketAddr, backend: SocketAddr, send_proxy: &str) -> Option<Haproxy> {
        let bin = required_tool("haproxy", "-v", "haproxy")?;
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\nfrontend f\n  bind {front}\n  default_backend b\nbackend b\n  server s {backend} {send_proxy}\n"
            ),
        )
        .expect("write haproxy.cfg");
        let child = std::process::Command::new(bin)
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn haproxy");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(front).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "haproxy did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Haproxy { child, _dir: dir })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn behind_a_real_haproxy_each_sender_keeps_its_own_address_and_its_own_limit() {
    // Senders on 127.0.0.3 and 127.0.0.4 reach the proxy through HAProxy in TCP mode, once
    // with send-proxy-v2 and once with send-proxy (v1). The audit records carry each sender's
    // address, not HAProxy's; max_connections_per_source: 1 refuses a second connection of
    // 127.0.0.3 while 127.0.0.4 is served.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for send_proxy in ["send-proxy-v2", "send-proxy"] {
        let yaml = "    proxy_protocol: { trusted: [\"127.0.0.1/32\"] }\n    limits: { max_connections_per_source: 1 }\n";
        let BinaryWorld {
            pki,
            engine: _engine,
            proxy,
            ..
        } = rt.block_on(Harness::new().route_yaml(yaml).spawn_json());
        let front = rt.block_on(unused_addr());
        let Some(_haproxy) = Haproxy::start(front, proxy.addr, send_proxy) else {
            return;
        };
        // HAProxy relays the readiness probe of its own frontend too, with a header: let it
        // be counted before the reference reading (no metric tells when HAProxy is done).
        std::thread::sleep(Duration::from_millis(300));
        let body = rt
            .block_on(mllp_proxy::client::http_get(proxy.admin, "/metrics"))
            .expect("scrape");
        let before = mllp_proxy::metrics::sample_value(&body, &result("proxied")).expect("series");
        let target = pki.target(front, ClientCert::Good);
        let connect =
            |from: &str| rt.block_on(MllpClient::connect_from(&target, Some(ip(from)), T));
        let mut first = connect("127.0.0.3").expect("127.0.0.3 connects");
        let ack = rt.block_on(first.exchange(&adt("LB-3"), T)).expect("ACK");
        assert_eq!(msa(&ack).0, "AA", "{send_proxy}");
        // A second connection of the same sender is over its limit of one.
        let second = connect("127.0.0.3")
            .and_then(|mut c| rt.block_on(c.exchange(&adt("LB-3b"), Duration::from_secs(3))));
        assert!(
            second.is_err(),
            "{send_proxy}: a second connection of 127.0.0.3 was served"
        );
        let mut other = connect("127.0.0.4").expect("127.0.0.4 connects");
        let ack = rt.block_on(other.exchange(&adt("LB-4"), T)).expect("ACK");
        assert_eq!(msa(&ack).0, "AA", "{send_proxy}");
        rt.block_on(first.close());
        rt.block_on(other.close());
        let per_source =
            "mllp_proxy_connections_rejected_total{reason=\"per_source\",route=\"test\"}";
        assert!(scraped(&proxy, &rt, per_source, 1.0), "{send_proxy}");
        assert!(
            scraped(&proxy, &rt, &result("proxied"), before + 3.0),
            "{send_proxy}"
        );
        assert!(eventually_sync(
            || audited_peers(&proxy, "message").len() >= 2
        ));
        let peers = audited_peers(&proxy, "message");
        assert_eq!(peers.len(), 2, "{send_proxy}: {:#?}", proxy.log_lines());
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

#[test]
fn an_ipv4_mapped_trusted_range_trusts_that_one_address_and_no_other() {
    // `trusted` written as a `[::]` listener logs an IPv4 peer: ["::ffff:192.0.2.7"] refuses a
    // header from 127.0.0.1 before TLS (it once trusted every IPv4 source); with
    // ["::ffff:127.0.0.1"] the same connection is served and audited with the header's address.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for (trusted, served) in [("::ffff:192.0.2.7", false), ("::ffff:127.0.0.1", true)] {
        let yaml = format!("    proxy_protocol: {{ trusted: [\"{trusted}\"] }}\n");
        let BinaryWorld {
            pki, engine, proxy, ..
        } = rt.block_on(Harness::new().route_yaml(&yaml).spawn_json());
        let target = pki.target(proxy.addr, ClientCert::Good);
        let answer = rt.block_on(async {
            let tcp = tcp_from("127.0.0.1", proxy.addr).await;
            let header = b"PROXY TCP4 198.51.100.9 127.0.0.1 4000 2575\r\n";
            exchange_after(tcp, header, &target, "MAPPED-1").await
        });
        if served {
            assert_eq!(answer, Some(("AA".into(), "MAPPED-1".into())), "{trusted}");
            assert!(scraped(&proxy, &rt, &result("proxied"), 1.0), "{trusted}");
            let audited = eventually_sync(|| audited_peers(&proxy, "message").len() == 1);
            assert!(audited, "{:#?}", proxy.log_lines());
            assert_eq!(audited_peers(&proxy, "message"), ["198.51.100.9:4000"]);
            assert_eq!(engine.received_ids(), ["MAPPED-1"]);
        } else {
            assert_eq!(answer, None, "{trusted}: an untrusted source was served");
            assert!(scraped(&proxy, &rt, &result("untrusted"), 1.0), "{trusted}");
            assert!(scraped(&proxy, &rt, &result("proxied"), 0.0), "{trusted}");
            assert!(engine.received_ids().is_empty(), "{trusted}");
            let handshakes =
                "mllp_proxy_tls_handshake_failures_total{reason=\"eof\",route=\"test\"}";
            assert!(scraped(&proxy, &rt, handshakes, 0.0), "TLS work was done");
        }
    }
}

/// Polls `check` every 50 ms for 10 s.
fn eventually_sync(mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}
