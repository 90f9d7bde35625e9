//! Time-dependent session logic on an in-memory stream with a paused clock: exact, instant.

use std::path::Path;
use std::task::{Context, Poll};

use tokio::io::DuplexStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

use super::*;
use crate::config::Config;
use crate::context::ListenerTls;
use crate::metrics::Metrics;
use crate::upstream::Upstream;

fn context() -> RouteContext {
    let yaml = r#"
routes:
  - name: t
    listen: "127.0.0.1:0"
    tls: { certificate: c, private_key: k, client_ca: ca }
    upstream: { targets: ["127.0.0.1:9"] }
    limits: { idle_timeout: 15m, frame_timeout: 60s }
"#;
    let cfg = Config::from_yaml(yaml, Path::new("/"))
        .unwrap()
        .routes
        .remove(0);
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        crate::tls::provider(),
    )
    .build()
    .unwrap();
    let metrics = Metrics::new().unwrap().route("t", Default::default());
    let audit = crate::audit::AuditLog::default();
    let upstream = Upstream::new(
        cfg.upstream.clone(),
        1,
        1 << 20,
        metrics.clone(),
        None,
        audit.clone(),
    );
    RouteContext::new(
        cfg,
        Some(ListenerTls {
            config: Arc::new(server),
            verifier,
            subject: "CN=test".into(),
            expiry: crate::tls::Expiry {
                server_not_after: 0,
                client_ca_not_after: 0,
            },
        }),
        Arc::new(upstream),
        metrics,
        (audit, true),
        None,
    )
}

impl ReadReady for DuplexStream {
    fn poll_read_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_sessions_future_holds_the_tls_stream_once() {
    // Every open connection's task is this future, idle ones included: the stream must be
    // held once, not in a slot per local it moves through.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _client = TcpStream::connect(addr).await.unwrap();
    let (tcp, peer) = listener.accept().await.unwrap();
    let ctx = Arc::new(context());
    let (_tx, updates) = watch::channel(ctx.clone());
    let session = serve(ctx, updates, tcp, peer, 1, None, CancellationToken::new());
    let size = std::mem::size_of_val(&session);
    let stream = std::mem::size_of::<TlsStream<TcpStream>>();
    assert!(size < 4 * stream, "{size} bytes, the stream alone {stream}");
}

async fn run_session(
    ctx: &Arc<RouteContext>,
    server: &mut DuplexStream,
    stop: &CancellationToken,
) -> (SessionEnd, Duration) {
    let started = Instant::now();
    let who = audit::Who {
        route: "t",
        peer: "127.0.0.1:1".parse().unwrap(),
        conn: 1,
    };
    let registered = ctx.sessions.register(1, None, who.peer);
    let live = registered.live().clone();
    let end = Session::new(ctx.clone(), who, "", live)
        .run(server, stop)
        .await;
    (end, started.elapsed())
}

#[tokio::test(start_paused = true)]
async fn a_silent_sender_is_closed_exactly_at_idle_timeout() {
    // Nothing is ever sent: the session ends at idle_timeout (15 min), not a moment later.
    let ctx = Arc::new(context());
    let (_client, mut server) = tokio::io::duplex(1024);
    let (end, took) = run_session(&ctx, &mut server, &CancellationToken::new()).await;
    assert!(matches!(end, SessionEnd::Idle), "{end}");
    assert_eq!(took, Duration::from_secs(15 * 60));
}

#[tokio::test(start_paused = true)]
async fn junk_outside_frames_does_not_keep_a_connection_alive() {
    // A byte every second between frames never completes a frame: the session still ends
    // at idle_timeout counted from the handshake, not from the last byte.
    let ctx = Arc::new(context());
    let (mut client, mut server) = tokio::io::duplex(1024);
    let junk = tokio::spawn(async move {
        for _ in 0..(20 * 60) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if client.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let (end, took) = run_session(&ctx, &mut server, &CancellationToken::new()).await;
    assert!(matches!(end, SessionEnd::Idle), "{end}");
    assert_eq!(took, Duration::from_secs(15 * 60));
    drop(server);
    junk.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_frame_kept_alive_by_trickling_bytes_still_ends_at_frame_timeout() {
    // A byte every 10 s never lets a read time out, yet the frame deadline counts from its start.
    let ctx = Arc::new(context());
    let (mut client, mut server) = tokio::io::duplex(1024);
    let trickle = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        client.write_all(b"\x0bMSH|").await.unwrap();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            if client.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let (end, took) = run_session(&ctx, &mut server, &CancellationToken::new()).await;
    assert!(matches!(end, SessionEnd::FrameTimeout), "{end}");
    // 5 s idle before the frame started, then exactly frame_timeout.
    assert_eq!(took, Duration::from_secs(65));
    drop(server);
    trickle.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_an_idle_session_at_once_but_waits_for_a_started_frame() {
    // Shutdown never cuts a message in the middle: only a session between frames stops at once.
    let ctx = Arc::new(context());
    let (_client, mut server) = tokio::io::duplex(1024);
    let stop = CancellationToken::new();
    stop.cancel();
    let (end, took) = run_session(&ctx, &mut server, &stop).await;
    assert!(matches!(end, SessionEnd::Shutdown), "{end}");
    assert_eq!(took, Duration::ZERO);

    // Inside a frame the session keeps reading until the frame ends or times out.
    let (mut client, mut server) = tokio::io::duplex(1024);
    client.write_all(b"\x0bMSH|half a frame").await.unwrap();
    let stop = CancellationToken::new();
    let session = async { run_session(&ctx, &mut server, &stop).await };
    let cancel_later = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.cancel();
    };
    let ((end, took), ()) = tokio::join!(session, cancel_later);
    assert!(matches!(end, SessionEnd::FrameTimeout), "{end}");
    assert_eq!(took, Duration::from_secs(60));
    drop(client);
}

#[tokio::test(start_paused = true)]
async fn a_sender_closing_between_frames_is_routine_and_inside_one_is_not() {
    // EOF between frames is a goodbye; EOF inside a frame is a sender fault worth a warning.
    let ctx = Arc::new(context());
    let (client, mut server) = tokio::io::duplex(1024);
    drop(client);
    let (end, _) = run_session(&ctx, &mut server, &CancellationToken::new()).await;
    assert!(
        matches!(end, SessionEnd::SenderClosed) && end.routine(),
        "{end}"
    );

    let (mut client, mut server) = tokio::io::duplex(1024);
    client.write_all(b"\x0bMSH|cut").await.unwrap();
    drop(client);
    let (end, _) = run_session(&ctx, &mut server, &CancellationToken::new()).await;
    assert!(
        matches!(end, SessionEnd::TruncatedFrame(_)) && !end.routine(),
        "{end}"
    );
    assert_eq!(end.side(), crate::label::Side::Sender);
}

#[tokio::test]
async fn a_frame_outgrowing_the_buffer_gets_the_senders_last_large_size_in_one_step() {
    // Growing by doubling copies a large message up to twice over: a frame that fills its read
    // buffer gets room for the sender's last large message (and a read buffer more) at once,
    // and doubles only when there was none or it is larger.
    let _one = crate::memory::LARGE_TEST.lock().await;
    crate::memory::drop_large();
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    let room = crate::memory::READ_BUFFER;
    for (large, want) in [(0, 2 * room), (300_000, 300_000 + room), (5_000, 2 * room)] {
        client.write_all(&[b'x'; 1000]).await.unwrap();
        let mut buf = BytesMut::with_capacity(room);
        buf.extend_from_slice(&vec![b'x'; room - 100]);
        let n = read_more(&mut buf, false, large, &mut server)
            .await
            .unwrap();
        assert_eq!(n, 1000);
        assert_eq!(buf.capacity(), want, "last large message {large}");
    }
}

#[tokio::test]
async fn a_session_remembers_its_senders_last_large_message_and_frames_stay_whole() {
    // Only a message larger than a read buffer sets the size; a small one in between leaves
    // it, an oversize one (thrown away) too. Every frame arrives whole whatever room it got,
    // in a buffer of its own or one an earlier frame left.
    let _one = crate::memory::LARGE_TEST.lock().await;
    let mut ctx = context();
    ctx.cfg.validation.max_message_bytes = 400_000;
    let ctx = Arc::new(ctx);
    let (mut client, mut server) = tokio::io::duplex(256 * 1024);
    let message = |n: usize, fill: u8| {
        let mut m = b"MSH|^~\\&|".to_vec();
        m.resize(n, fill);
        m
    };
    let sent = [
        message(300_000, b'a'),
        message(1_000, b'b'),
        message(500_000, b'o'),
        message(350_000, b'c'),
        message(20_000, b'd'),
    ];
    let wire = sent.clone();
    let writer = tokio::spawn(async move {
        for m in &wire {
            client.write_all(&MllpCodec::frame(m)).await.unwrap();
        }
        client
    });
    let who = audit::Who {
        route: "t",
        peer: "127.0.0.1:1".parse().unwrap(),
        conn: 1,
    };
    let registered = ctx.sessions.register(1, None, who.peer);
    let mut session = Session::new(ctx.clone(), who, "", registered.live().clone());
    let stop = CancellationToken::new();
    let mut stopping = std::pin::pin!(stop.cancelled());
    let expect_large = [300_003, 300_003, 300_003, 350_003, 20_003];
    for (m, large) in sent.iter().zip(expect_large) {
        let frame = session
            .next_frame(&mut server, &stop, stopping.as_mut())
            .await
            .unwrap();
        match frame {
            Frame::Message(got) => assert!(got[..] == m[..], "{} bytes", m.len()),
            Frame::Oversize { len, .. } => assert_eq!(len, m.len()),
        }
        assert_eq!(session.large, large, "after {} bytes", m.len());
    }
    drop(writer.await.unwrap());
}
