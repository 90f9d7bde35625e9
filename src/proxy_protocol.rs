//! The PROXY protocol header (v1 text, v2 binary) that a TCP load balancer puts in front of
//! a connection, read before any TLS work, so that the sender behind the balancer is the peer
//! for per-source limits, logs and audit records.
//!
//! From a trusted source the header is required; from any other source the listener refuses
//! the connection. The header is never guessed at: a connection that does not start with one
//! of the two signatures is refused (`missing`), not served as if it had none. [`decode`]
//! decides from the bytes so far how many more the header needs, so the reader takes exactly
//! the header off the socket and leaves the TLS handshake's first byte in place; the header
//! itself is parsed by the `ppp` crate.

use std::net::SocketAddr;

use ppp::HeaderResult;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::label::ProxyResult;

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header starts with `PROXY ` and is at most 107 bytes with its CRLF.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
const V1_MAX: usize = 107;
/// The largest v2 header accepted: the fixed 16 bytes, addresses and TLVs. Balancers send a
/// few dozen bytes of TLVs; the protocol allows 64 KiB, which a peer could use to make every
/// pending connection hold that much.
pub const V2_MAX: usize = 16 + 2048;

/// Whose connection it is, as the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Relayed for this sender.
    Proxied(SocketAddr),
    /// The balancer's own connection (a v2 LOCAL command, a v1 `UNKNOWN`, or addresses that are
    /// not IP): the balancer's address stays the peer.
    Local,
}

/// What the bytes read so far make of a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// A whole header of this many bytes.
    Complete(Source, usize),
    /// The header needs this many bytes in all before it can be decided.
    Incomplete(usize),
    /// Not a header (`Missing`) or a malformed one (`Invalid`).
    Refused(ProxyResult),
}

/// Decides what `bytes`, the first bytes of a connection, hold. Pure and total: any input gives
/// an answer, and `Incomplete(n)` always asks for more than `bytes.len()`.
pub fn decode(bytes: &[u8]) -> Decoded {
    let seen = bytes.len().min(V2_SIGNATURE.len());
    if bytes.len() < V1_PREFIX.len() {
        let could_be = V1_PREFIX.starts_with(bytes) || V2_SIGNATURE.starts_with(&bytes[..seen]);
        return if could_be {
            Decoded::Incomplete(V1_PREFIX.len())
        } else {
            Decoded::Refused(ProxyResult::Missing)
        };
    }
    let total = if bytes.starts_with(V1_PREFIX) {
        match memchr::memmem::find(bytes, b"\r\n") {
            Some(end) if end + 2 > V1_MAX => return Decoded::Refused(ProxyResult::Invalid),
            Some(end) => end + 2,
            None if bytes.len() >= V1_MAX => return Decoded::Refused(ProxyResult::Invalid),
            None => return Decoded::Incomplete(bytes.len() + 1),
        }
    } else if V2_SIGNATURE.starts_with(&bytes[..seen]) {
        if bytes.len() < 16 {
            return Decoded::Incomplete(16);
        }
        let total = 16 + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
        if total > V2_MAX {
            return Decoded::Refused(ProxyResult::Invalid);
        }
        if bytes.len() < total {
            return Decoded::Incomplete(total);
        }
        total
    } else {
        return Decoded::Refused(ProxyResult::Missing);
    };
    match parse(&bytes[..total]) {
        Some(source) => Decoded::Complete(source, total),
        None => Decoded::Refused(ProxyResult::Invalid),
    }
}

/// Reads the header off `stream`, no byte further: the TLS handshake reads on from there.
/// The caller bounds it in time (`header_timeout`).
pub async fn read<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Source, ProxyResult> {
    let mut buf = Vec::with_capacity(V1_MAX + 1);
    loop {
        let need = match decode(&buf) {
            Decoded::Complete(source, _) => return Ok(source),
            Decoded::Refused(result) => return Err(result),
            Decoded::Incomplete(need) => need,
        };
        let start = buf.len();
        buf.resize(need, 0);
        if stream.read_exact(&mut buf[start..]).await.is_err() {
            // A TCP check that connects and closes sends nothing; a cut header is malformed.
            return Err(if start == 0 {
                ProxyResult::Missing
            } else {
                ProxyResult::Invalid
            });
        }
    }
}

/// The source a whole header names, or `None` when `ppp` finds it malformed.
fn parse(header: &[u8]) -> Option<Source> {
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Some(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Source::Proxied(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Source::Proxied(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            ppp::v1::Addresses::Unknown => Source::Local,
        }),
        HeaderResult::V2(Ok(h)) => Some(match (h.command, h.addresses) {
            (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                Source::Proxied(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                Source::Proxied(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            _ => Source::Local,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn v2_tcp4(src: [u8; 4], port: u16) -> Vec<u8> {
        let mut body = src.to_vec();
        body.extend_from_slice(&[10, 0, 0, 1]);
        body.extend_from_slice(&port.to_be_bytes());
        body.extend_from_slice(&2575u16.to_be_bytes());
        v2(0x21, 0x11, &body)
    }

    #[test]
    fn both_versions_name_the_sender_and_local_keeps_the_balancer() {
        let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 40001 2575\r\n";
        assert_eq!(
            decode(v1),
            Decoded::Complete(
                Source::Proxied("192.0.2.7:40001".parse().unwrap()),
                v1.len()
            )
        );
        let v1 = b"PROXY TCP6 2001:db8::7 2001:db8::1 40001 2575\r\n";
        assert_eq!(
            decode(v1),
            Decoded::Complete(
                Source::Proxied("[2001:db8::7]:40001".parse().unwrap()),
                v1.len()
            )
        );
        assert_eq!(
            decode(b"PROXY UNKNOWN\r\n"),
            Decoded::Complete(Source::Local, 15)
        );
        let h = v2_tcp4([192, 0, 2, 8], 40002);
        assert_eq!(
            decode(&h),
            Decoded::Complete(Source::Proxied("192.0.2.8:40002".parse().unwrap()), h.len())
        );
        let local = v2(0x20, 0x00, &[]);
        assert_eq!(decode(&local), Decoded::Complete(Source::Local, 16));
    }

    #[test]
    fn bytes_after_the_header_are_left_for_tls() {
        let mut stream = v2_tcp4([192, 0, 2, 9], 1);
        let header_len = stream.len();
        stream.extend_from_slice(b"\x16\x03\x01 the ClientHello");
        assert_eq!(
            decode(&stream),
            Decoded::Complete(Source::Proxied("192.0.2.9:1".parse().unwrap()), header_len)
        );
        let mut v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\r\n".to_vec();
        let len = v1.len();
        v1.extend_from_slice(b"\x16\x03\x01");
        assert!(matches!(decode(&v1), Decoded::Complete(_, n) if n == len));
    }

    #[test]
    fn a_partial_header_asks_for_more_and_anything_else_is_refused() {
        assert_eq!(decode(b""), Decoded::Incomplete(6));
        assert_eq!(decode(b"PRO"), Decoded::Incomplete(6));
        assert_eq!(decode(b"\r\n\r"), Decoded::Incomplete(6));
        assert_eq!(decode(b"PROXY TCP4 1.2"), Decoded::Incomplete(15));
        assert_eq!(decode(&V2_SIGNATURE[..8]), Decoded::Incomplete(16));
        let h = v2_tcp4([1, 2, 3, 4], 5);
        assert_eq!(decode(&h[..20]), Decoded::Incomplete(h.len()));
        // A TLS ClientHello, plain MLLP, an HTTP probe: no header, refused, never guessed at.
        for no_header in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"\x0bMSH|^~\\&|",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert_eq!(decode(no_header), Decoded::Refused(ProxyResult::Missing));
        }
        assert_eq!(decode(b"\x16"), Decoded::Refused(ProxyResult::Missing));
        for bad in [
            &b"PROXY TCP4 999.1.1.1 10.0.0.1 1 2\r\n"[..],
            b"PROXY TCP9 1.1.1.1 10.0.0.1 1 2\r\n",
        ] {
            assert_eq!(
                decode(bad),
                Decoded::Refused(ProxyResult::Invalid),
                "{bad:?}"
            );
        }
        let endless = [&b"PROXY "[..], &[b'1'; 200]].concat();
        assert_eq!(decode(&endless), Decoded::Refused(ProxyResult::Invalid));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(decode(&huge), Decoded::Refused(ProxyResult::Invalid));
        // An IPv4 family whose address block is too short.
        assert_eq!(
            decode(&v2(0x21, 0x11, &[1, 2, 3])),
            Decoded::Refused(ProxyResult::Invalid)
        );
    }

    #[tokio::test]
    async fn the_reader_takes_exactly_the_header_off_a_stream_sent_in_pieces() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut sent = b"PROXY TCP4 192.0.2.7 10.0.0.1 40001 2575\r\n".to_vec();
        sent.extend_from_slice(b"TLS");
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in sent.chunks(5) {
                client.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let source = read(&mut server).await;
        assert_eq!(
            source,
            Ok(Source::Proxied("192.0.2.7:40001".parse().unwrap()))
        );
        let _client = writer.await.unwrap();
        let mut rest = [0u8; 3];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"TLS");

        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert_eq!(read(&mut server).await, Err(ProxyResult::Missing));
    }

    proptest::proptest! {
        #[test]
        fn decode_is_total_and_incomplete_always_asks_for_more(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            match decode(&data) {
                Decoded::Incomplete(n) => proptest::prop_assert!(n > data.len() && n <= V2_MAX),
                Decoded::Complete(_, n) => proptest::prop_assert!(n <= data.len()),
                Decoded::Refused(r) => proptest::prop_assert!(matches!(r, ProxyResult::Missing | ProxyResult::Invalid)),
            }
        }
    }
}
