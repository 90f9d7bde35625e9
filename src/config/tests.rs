//! Configuration cases as inline YAML.

use super::validate::{addr, expand_env};
use super::*;

const MINIMAL: &str = r#"
routes:
  - name: lab
    listen: "127.0.0.1:2575"
    tls:
      certificate: tls/server.crt
      private_key: tls/server.key
      client_ca: tls/ca.crt
    upstream:
      targets: ["127.0.0.1:3575"]
"#;

fn err(yaml: &str) -> String {
    match Config::from_yaml(yaml, Path::new("/etc/mllp")) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn minimal_file_gets_documented_defaults() {
    let c = Config::from_yaml(MINIMAL, Path::new("/etc/mllp")).unwrap();
    assert_eq!(c.admin.listen, "127.0.0.1:9575".parse().unwrap());
    assert_eq!(c.shutdown.drain_timeout, Duration::from_secs(30));
    let r = &c.routes[0];
    let tls = r.tls.as_ref().expect("tls");
    assert_eq!(tls.certificate, PathBuf::from("/etc/mllp/tls/server.crt"));
    assert_eq!(tls.policy.min_version, TlsVersion::Tls12);
    assert_eq!(r.on_upstream_failure, FailureMode::Close);
    assert_eq!(r.validation.mode, ValidationMode::Strict);
    assert_eq!(r.validation.max_message_bytes, 1_048_576);
    assert_eq!(r.limits.max_connections, 1024);
    assert_eq!(r.limits.listen_backlog, 1024);
    assert_eq!(r.limits.max_connections_per_source, 64);
    assert_eq!(r.limits.max_pending_handshakes, 256);
    assert_eq!(c.logging.level, "info");
    let u = &r.upstream;
    assert_eq!(u.balance, Balance::Failover);
    assert_eq!(u.max_connections, 0);
    assert_eq!(u.queue_timeout, Duration::from_secs(30));
    assert_eq!(u.idle_timeout, Duration::from_secs(60));
    assert_eq!(u.health_check_interval, Some(Duration::from_secs(10)));
    assert!(!c.admin.ready_requires_upstream);
    assert!(c.audit.messages && c.audit.file.is_none());
    assert_eq!(c.admin.max_connections, 64);
    assert!(c.admin.tls.is_none());
    for off in ["0", "\"0\"", "0s"] {
        let yaml = MINIMAL.replace(
                "targets: [\"127.0.0.1:3575\"]",
                &format!("targets: [\"127.0.0.1:3575\"]\n      health_check_interval: {off}\n      balance: round_robin"),
            );
        let c = Config::from_yaml(&yaml, Path::new("/etc/mllp")).unwrap();
        assert_eq!(c.routes[0].upstream.health_check_interval, None, "{off}");
        assert_eq!(c.routes[0].upstream.balance, Balance::RoundRobin);
    }
    let warning = MINIMAL.replace("routes:", "logging: { level: WARNING }\nroutes:");
    let c = Config::from_yaml(&warning, Path::new("/etc/mllp")).unwrap();
    assert_eq!(c.logging.level, "warn");
    assert_eq!(r.limits.idle_timeout, Duration::from_secs(900));
    assert_eq!(r.upstream.ack_timeout, Duration::from_secs(30));
}

#[test]
fn unknown_key_is_named_with_its_path() {
    let yaml = MINIMAL.replace(
        "client_ca: tls/ca.crt",
        "client_ca: tls/ca.crt\n      cliant: x",
    );
    let e = err(&yaml);
    assert!(e.contains("routes[0].tls"), "{e}");
    assert!(e.contains("cliant"), "{e}");
}

#[test]
fn semantic_errors_are_located_in_the_file() {
    let text = "admin:\n  listen: \"127.0.0.1:9575\"\nroutes:\n  - name: lab\n    listen: \"127.0.0.1:2575\"\n    tls: { certificate: c, private_key: k }\n    upstream:\n      targets:\n        - \"127.0.0.1:1\"\n        - engine\n  - name: adt\n    upstream:\n      targets: [\"a:1\", \"b\"]\n      ack_timeout: 30\n";
    assert_eq!(line_of(text, "admin.listen"), Some(2));
    assert_eq!(line_of(text, "routes[0].name"), Some(4));
    assert_eq!(line_of(text, "routes[0].tls.private_key"), Some(6));
    assert_eq!(line_of(text, "routes[0].upstream.targets[1]"), Some(10));
    assert_eq!(line_of(text, "routes[1].upstream.targets[1]"), Some(13));
    assert_eq!(line_of(text, "routes[1].upstream.ack_timeout"), Some(14));
    // Not under route 0: no line rather than route 1's.
    assert_eq!(line_of(text, "routes[0].upstream.ack_timeout"), None);
    assert_eq!(line_of(text, "routes[2].name"), None);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, MINIMAL.replace("\"127.0.0.1:3575\"", "\"engine\"")).unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    let head = format!("{}: routes[0].upstream.targets[0]: ", path.display());
    assert!(e.starts_with(&head) && e.ends_with(" (line 10)"), "{e}");
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        (
            "listen: \"127.0.0.1:2575\"",
            "listen: \"nowhere\"",
            "routes[0].listen",
        ),
        ("name: lab", "name: Lab Results", "routes[0].name"),
        (
            "targets: [\"127.0.0.1:3575\"]",
            "targets: [\"127.0.0.1:3575\"]\n      ack_timeout: 30",
            "routes[0].upstream.ack_timeout",
        ),
        (
            "targets: [\"127.0.0.1:3575\"]",
            "targets: [\"engine\"]",
            "routes[0].upstream.targets[0]",
        ),
        (
            "targets: [\"127.0.0.1:3575\"]",
            "targets: []",
            "routes[0].upstream.targets",
        ),
        (
            "targets: [\"127.0.0.1:3575\"]",
            "targets: [\"127.0.0.1:3575\"]\n    limits: { listen_backlog: 0 }",
            "routes[0].limits.listen_backlog",
        ),
        (
            "routes:",
            "logging: { level: verbose }\nroutes:",
            "logging.level",
        ),
    ];
    for (from, to, key) in cases {
        let e = err(&MINIMAL.replace(from, to));
        assert!(e.starts_with(key), "{key}: {e}");
    }
}

#[test]
fn allow_list_entries_take_one_kind() {
    let yaml = MINIMAL.replace(
            "    upstream:",
            "    allowed_clients:\n      - dns: \"*.lab.example.org\"\n      - uri: spiffe://h/lab\n      - cn: x\n        dns: y\n    upstream:",
        );
    let e = err(&yaml);
    assert!(e.starts_with("routes[0].allowed_clients[2]"), "{e}");
}

#[test]
fn listen_addresses_expand_environment_variables() {
    // PATH is set in every test environment; an address made from it is not an address.
    let e = addr("routes[0].listen", "${PATH}:2575")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("routes[0].listen: `${PATH}:2575` (`"), "{e}");
    let e = addr("admin.listen", "${MLLP_PROXY_SURELY_UNSET_VAR}:1")
        .unwrap_err()
        .to_string();
    assert!(e.contains("MLLP_PROXY_SURELY_UNSET_VAR"), "{e}");
    assert_eq!(
        expand_env("k", "a${PATH}b").unwrap(),
        format!("a{}b", std::env::var("PATH").unwrap())
    );
    assert!(expand_env("k", "${OPEN").is_err());
    assert_eq!(addr("k", "127.0.0.1:2575").unwrap().port(), 2575);
}

#[test]
fn durations_need_a_unit() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert!(parse_duration("30").is_err());
    assert!(parse_duration("s").is_err());
    assert!(parse_duration("3d").is_err());
}

#[test]
fn proxy_protocol_takes_address_ranges_and_names_a_bad_one() {
    let with = |block: &str| MINIMAL.replace("    upstream:", &format!("{block}    upstream:"));
    let ok = Config::from_yaml(
        &with(
            "    proxy_protocol: { trusted: [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"] }\n",
        ),
        Path::new("/"),
    )
    .unwrap();
    let pp = ok.routes[0].proxy_protocol.clone().unwrap();
    assert_eq!(pp.header_timeout, Duration::from_secs(3));
    for (addr, trusted) in [
        ("10.1.2.3", true),
        ("11.0.0.1", false),
        ("::ffff:10.9.9.9", true),
        ("2001:db8:1::5", true),
        ("2001:db9::5", false),
        ("192.0.2.7", true),
        ("192.0.2.8", false),
    ] {
        assert_eq!(pp.trusts(addr.parse().unwrap()), trusted, "{addr}");
    }
    assert!(
        Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("203.0.113.1".parse().unwrap())
    );
    assert!(
        !Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("::1".parse().unwrap())
    );
    let e = err(&with(
        "    proxy_protocol: { trusted: [\"10.0.0.0/8\", \"10.0.0.0/33\"] }\n",
    ));
    assert!(
        e.contains("routes[0].proxy_protocol.trusted[1]") && e.contains("0 to 32"),
        "{e}"
    );
    let e = err(&with("    proxy_protocol: { trusted: [\"balancer\"] }\n"));
    assert!(e.contains("routes[0].proxy_protocol.trusted[0]"), "{e}");
    let e = err(&with("    proxy_protocol: { trusted: [] }\n"));
    assert!(e.contains("routes[0].proxy_protocol.trusted"), "{e}");
    let e = err(&with(
        "    proxy_protocol: { trusted: [\"10.0.0.0/8\"], header_timeout: 3 }\n",
    ));
    assert!(e.contains("routes[0].proxy_protocol.header_timeout"), "{e}");
    assert!(ok.routes[0].proxy_protocol.is_some());
    let none = Config::from_yaml(MINIMAL, Path::new("/")).unwrap();
    assert!(none.routes[0].proxy_protocol.is_none());
}

/// A range as its family (IPv4 or not) and bytes, for [`reference_contains`].
fn family_bytes(ip: std::net::IpAddr) -> (bool, Vec<u8>) {
    match ip {
        std::net::IpAddr::V4(v4) => (true, v4.octets().to_vec()),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (true, v4.octets().to_vec()),
            None => (false, v6.octets().to_vec()),
        },
    }
}

/// `Cidr::contains` written the slow way, bit by bit, with no shifts to get wrong: the
/// range's family and the peer's (an IPv4-mapped address counts as IPv4, a mapped range's
/// prefix as its IPv4 part) must agree, then the first `prefix` bits.
fn reference_contains(network: std::net::IpAddr, prefix: u32, ip: std::net::IpAddr) -> bool {
    let (net_v4, net) = family_bytes(network);
    let prefix = if net_v4 && network.is_ipv6() {
        prefix - 96
    } else {
        prefix
    };
    let (ip_v4, addr) = family_bytes(ip);
    let bit = |bytes: &[u8], i: u32| bytes[(i / 8) as usize] >> (7 - i % 8) & 1;
    net_v4 == ip_v4 && (0..prefix).all(|i| bit(&net, i) == bit(&addr, i))
}

/// A peer address near `net` (its first `keep` bits copied), written as IPv4, IPv4-mapped
/// or IPv6 by `form`.
fn peer_near(net: [u8; 16], keep: u32, noise: [u8; 16], form: u8) -> std::net::IpAddr {
    let mut b = noise;
    for i in 0..keep.min(128) {
        let (byte, mask) = ((i / 8) as usize, 0x80u8 >> (i % 8));
        b[byte] = (b[byte] & !mask) | (net[byte] & mask);
    }
    let v4 = std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    match form % 3 {
        0 => v4.into(),
        1 => v4.to_ipv6_mapped().into(),
        _ => std::net::Ipv6Addr::from(b).into(),
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

    #[test]
    fn cidr_contains_agrees_with_a_bit_by_bit_reference(
        kind in 0u8..3,
        net in proptest::prelude::any::<[u8; 16]>(),
        prefix in 0u32..=128,
        keep in 0u32..=128,
        noise in proptest::prelude::any::<[u8; 16]>(),
        form in 0u8..3,
    ) {
        let v4 = std::net::Ipv4Addr::new(net[0], net[1], net[2], net[3]);
        // IPv4 ranges, IPv6 ranges, and IPv4-mapped ranges (`::ffff:a.b.c.d/96..128`).
        let (network, prefix): (std::net::IpAddr, u32) = match kind {
            0 => (v4.into(), prefix % 33),
            1 => (std::net::Ipv6Addr::from(net).into(), prefix),
            _ => (v4.to_ipv6_mapped().into(), 96 + prefix % 33),
        };
        let cidr = Cidr::parse(&format!("{network}/{prefix}")).map_err(|e| {
            proptest::test_runner::TestCaseError::fail(e)
        })?;
        // Peers drawn near the range (an IPv4 range's and a mapped range's network are
        // `net[..4]`, as an IPv4 peer's address is), so that hits are common.
        let keep = if form % 3 == 2 { keep } else { keep % 33 };
        let ip = peer_near(net, keep, noise, form);
        proptest::prop_assert_eq!(
            cidr.contains(ip),
            reference_contains(network, prefix, ip),
            "{} contains {}?", cidr, ip
        );
    }
}

#[test]
fn an_ipv4_mapped_range_is_the_ipv4_range_it_names() {
    // The form a `[::]` listener logs IPv4 peers in, copied into `trusted`, trusts that one
    // IPv4 address and no other (it used to trust every IPv4 source).
    let one = Cidr::parse("::ffff:192.0.2.7").unwrap();
    assert_eq!(one, Cidr::parse("192.0.2.7/32").unwrap());
    assert!(one.contains("192.0.2.7".parse().unwrap()));
    assert!(one.contains("::ffff:192.0.2.7".parse().unwrap()));
    assert!(!one.contains("127.0.0.1".parse().unwrap()));
    assert!(!one.contains("198.51.100.9".parse().unwrap()));
    let net = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
    assert_eq!(net, Cidr::parse("10.0.0.0/8").unwrap());
    assert_eq!(
        Cidr::parse("::ffff:0:0/96").unwrap().to_string(),
        "0.0.0.0/0"
    );
    let e = Cidr::parse("::ffff:0:0/90").unwrap_err();
    assert!(e.contains("96 to 128"), "{e}");
}

#[test]
fn check_refuses_a_mapped_range_wider_than_ipv4_naming_key_and_line() {
    let yaml = format!(
        "{MINIMAL}    proxy_protocol: {{ trusted: [\"10.0.0.0/8\", \"::ffff:0:0/90\"] }}\n"
    );
    let e = Config::from_file_text(Path::new("/etc/mllp/mllp-proxy.yaml"), &yaml)
        .expect_err("a mapped /90 must be refused")
        .to_string();
    assert!(
        e.contains("routes[0].proxy_protocol.trusted[1]") && e.contains("96 to 128"),
        "{e}"
    );
    assert!(e.contains("(line 11)"), "{e}");
}

#[test]
fn keepalive_delay_and_health_listen_have_defaults_and_named_errors() {
    let c = Config::from_yaml(MINIMAL, Path::new("/etc/mllp")).unwrap();
    let ka = Some(Keepalive {
        time: Duration::from_secs(60),
        interval: Duration::from_secs(10),
        retries: 3,
    });
    assert_eq!(c.routes[0].limits.tcp_keepalive, ka);
    assert_eq!(c.routes[0].upstream.tcp_keepalive, ka);
    assert_eq!(c.shutdown.delay, Duration::ZERO);
    assert_eq!(c.admin.health_listen, None);
    let off = format!("{MINIMAL}    limits: {{ tcp_keepalive: {{ time: 0s }} }}\n");
    let c = Config::from_yaml(&off, Path::new("/etc/mllp")).unwrap();
    assert_eq!(c.routes[0].limits.tcp_keepalive, None);
    for (yaml, key) in [
        (
            "    limits: { tcp_keepalive: { time: 500ms } }\n",
            "routes[0].limits.tcp_keepalive.time",
        ),
        (
            "    limits: { tcp_keepalive: { interval: 0s } }\n",
            "routes[0].limits.tcp_keepalive.interval",
        ),
        (
            "    limits: { tcp_keepalive: { retries: 0 } }\n",
            "routes[0].limits.tcp_keepalive.retries",
        ),
        (
            "    limits: { tcp_keepalive: { time: 40000s } }\n",
            "routes[0].limits.tcp_keepalive.time",
        ),
    ] {
        let e = err(&format!("{MINIMAL}{yaml}"));
        assert!(e.contains(key), "{key}: {e}");
    }
    let e = err(&format!("shutdown: {{ delay: soon }}\n{MINIMAL}"));
    assert!(e.contains("shutdown.delay"), "{e}");
    let e = err(&format!(
        "admin: {{ listen: \"127.0.0.1:9575\", health_listen: \"127.0.0.1:9575\" }}\n{MINIMAL}"
    ));
    assert!(e.contains("admin.health_listen"), "{e}");
}

#[test]
fn keepalive_is_set_on_a_real_socket_as_configured() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let ka = Keepalive {
        time: Duration::from_secs(7),
        interval: Duration::from_secs(3),
        retries: 4,
    };
    ka.apply(&stream).unwrap();
    let s = socket2::SockRef::from(&stream);
    assert!(s.keepalive().unwrap());
    assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
    assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(3));
    assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
}
