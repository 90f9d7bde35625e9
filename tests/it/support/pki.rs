//! A test PKI made with rcgen per test: a CA, server and client certificates, CRLs, and the
//! client targets that present them.

use super::*;

/// A test PKI in a temporary folder: a CA, a server certificate for localhost/127.0.0.1 and
/// client certificates (good, from another CA, expired).
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    other_ca: CertifiedIssuer<'static, KeyPair>,
}

/// Which client certificate a test connects with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    Good,
    None,
    OtherCa,
    Expired,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca =
            CertifiedIssuer::self_signed(ca_params("test CA"), KeyPair::generate().expect("key"))
                .expect("ca");
        let other_ca =
            CertifiedIssuer::self_signed(ca_params("other CA"), KeyPair::generate().expect("key"))
                .expect("ca");
        let pki = Pki { dir, ca, other_ca };
        std::fs::write(pki.path("ca.crt"), pki.ca.pem()).expect("write");
        std::fs::write(pki.path("other-ca.crt"), pki.other_ca.pem()).expect("write");
        pki.issue_server("server", "localhost");
        pki.issue_client(
            "client",
            "lab-sender",
            &["lab.example.org"],
            &["spiffe://hospital.test/lab"],
            false,
            false,
        );
        pki.issue_client(
            "other",
            "lab-sender",
            &["lab.example.org"],
            &[],
            true,
            false,
        );
        pki.issue_client(
            "expired",
            "lab-sender",
            &["lab.example.org"],
            &[],
            false,
            true,
        );
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `NAME.crt` and `NAME.key`: a server certificate for `cn`, localhost and 127.0.0.1.
    pub fn issue_server(&self, name: &str, cn: &str) {
        self.issue_server_valid_for(name, cn, None);
    }

    /// Like [`Pki::issue_server`], expiring `days` from now when given.
    pub fn issue_server_valid_for(&self, name: &str, cn: &str, days: Option<i64>) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        if let Some(days) = days {
            p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        }
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &self.ca).expect("sign");
        std::fs::write(self.path(&format!("{name}.crt")), cert.pem()).expect("write");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write");
    }

    /// Writes `NAME.crt` and `NAME.key`: a server certificate for localhost and 127.0.0.1 from
    /// the test CA, shaped by `edit`.
    pub fn issue_server_with(&self, name: &str, edit: impl FnOnce(&mut CertificateParams)) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        p.distinguished_name.push(DnType::CommonName, "localhost");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        edit(&mut p);
        let cert = p.signed_by(&key, &self.ca).expect("sign");
        std::fs::write(self.path(&format!("{name}.crt")), cert.pem()).expect("write");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write");
    }

    /// Writes `NAME.crt` and `NAME.key`: a client certificate from the test CA, shaped by `edit`.
    pub fn issue_client_with(&self, name: &str, edit: impl FnOnce(&mut CertificateParams)) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        edit(&mut p);
        let cert = p.signed_by(&key, &self.ca).expect("sign");
        std::fs::write(self.path(&format!("{name}.crt")), cert.pem()).expect("write");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write");
    }

    /// Writes `NAME.crt` and `NAME.key`: a client certificate with subject `cn` and `serial`
    /// (for CRLs).
    pub fn issue_client_serial(&self, name: &str, cn: &str, serial: u64) {
        self.issue_client_with(name, |p| {
            p.serial_number = Some(rcgen::SerialNumber::from(serial));
            p.distinguished_name.push(DnType::CommonName, cn);
        });
    }

    /// A CRL from the test CA revoking `serials`: (PEM, DER).
    pub fn crl(&self, serials: &[u64], number: u64) -> (String, Vec<u8>) {
        self.crl_due_in(serials, number, 7)
    }

    /// Like [`Pki::crl`], with its next update `days` from now (negative: overdue).
    pub fn crl_due_in(&self, serials: &[u64], number: u64, days: i64) -> (String, Vec<u8>) {
        self.crl_signed(&self.ca, serials, number, days)
    }

    /// A CRL issued by the other CA: for senders of the test CA, its revocation status is
    /// unknown.
    pub fn crl_of_other_ca(&self) -> (String, Vec<u8>) {
        self.crl_signed(&self.other_ca, &[], 1, 7)
    }

    fn crl_signed(
        &self,
        issuer: &CertifiedIssuer<'static, KeyPair>,
        serials: &[u64],
        number: u64,
        days: i64,
    ) -> (String, Vec<u8>) {
        let now = time::OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::days(10),
            next_update: now + time::Duration::days(days),
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: now - time::Duration::minutes(5),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(issuer).expect("CRL");
        (crl.pem().expect("CRL PEM"), crl.der().to_vec())
    }

    /// A TLS target presenting the client certificate `NAME.crt`.
    pub fn target_named(&self, addr: SocketAddr, name: &str) -> ClientTarget {
        TlsArgs {
            ca: Some(self.path("ca.crt")),
            cert: Some(self.path(&format!("{name}.crt"))),
            key: Some(self.path(&format!("{name}.key"))),
            server_name: Some("localhost".into()),
        }
        .target(&addr.to_string())
        .expect("client target")
    }

    /// Writes `NAME.crt` and `NAME.key`: a client certificate.
    pub fn issue_client(
        &self,
        name: &str,
        cn: &str,
        dns: &[&str],
        uris: &[&str],
        other_ca: bool,
        expired: bool,
    ) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>())
            .expect("params");
        for u in uris {
            p.subject_alt_names
                .push(SanType::URI(u.to_string().try_into().expect("uri")));
        }
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let issuer = if other_ca { &self.other_ca } else { &self.ca };
        let cert = p.signed_by(&key, issuer).expect("sign");
        std::fs::write(self.path(&format!("{name}.crt")), cert.pem()).expect("write");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write");
    }

    /// The client-side TLS target for `addr` with the given certificate.
    pub fn target(&self, addr: SocketAddr, which: ClientCert) -> ClientTarget {
        let name = match which {
            ClientCert::Good => Some("client"),
            ClientCert::None => None,
            ClientCert::OtherCa => Some("other"),
            ClientCert::Expired => Some("expired"),
        };
        TlsArgs {
            ca: Some(self.path("ca.crt")),
            cert: name.map(|n| self.path(&format!("{n}.crt"))),
            key: name.map(|n| self.path(&format!("{n}.key"))),
            server_name: Some("localhost".into()),
        }
        .target(&addr.to_string())
        .expect("client target")
    }

    /// A route configuration YAML forwarding to `targets`, with `extra` appended to the route.
    /// Health probes are off: tests that count the engine's connections would see them; the
    /// health tests turn them on.
    pub fn config_yaml(&self, targets: &[String], extra: &str) -> String {
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        format!(
            r#"
admin:
  listen: "127.0.0.1:0"
shutdown:
  drain_timeout: 10s
routes:
  - name: test
    listen: "127.0.0.1:0"
    tls:
      certificate: server.crt
      private_key: server.key
      client_ca: ca.crt
    upstream:
      targets: [{}]
      connect_timeout: 1s
      ack_timeout: 2s
      health_check_interval: 0
{extra}"#,
            targets.join(", ")
        )
    }

    /// [`Pki::config_yaml`] with `tls` keys added to the route's `tls` section (indented six
    /// spaces).
    pub fn config_yaml_tls(&self, targets: &[String], tls: &str, extra: &str) -> String {
        let ca = "      client_ca: ca.crt\n";
        self.config_yaml(targets, extra)
            .replace(ca, &format!("{ca}{tls}"))
    }

    /// The validated configuration of [`Pki::config_yaml`].
    pub fn config(&self, targets: &[String], extra: &str) -> Config {
        Config::from_yaml(&self.config_yaml(targets, extra), self.dir.path()).expect("test config")
    }
}
