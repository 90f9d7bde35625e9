//! TLS: building the rustls server configuration of a route from its PEM files, the client
//! verifier (client CA, CRLs), identity extraction and allow-lists, and reloading.
//!
//! Loading is all-or-nothing: [`TlsMaterial::load`] reads every file, checks that the pieces fit
//! together and only then yields a configuration, so a half-written secret never reaches a
//! handshake.

mod identity;
mod partner;
mod shared;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};

use crate::config::{AdminTlsConfig, Policy, RevocationDepth, TlsConfig, TlsPolicy, TlsVersion};

pub use identity::{AllowList, ClientIdentity};

use crate::label::HandshakeReason;
pub use partner::{PartnerTls, Refused, establish_tls};
pub use watch::{Material, ReloadOutcome, Watcher};

/// The watcher of a listener's `tls` files.
pub type TlsFiles = Watcher<TlsMaterial>;
/// The watcher of a partner's `upstream.tls` files.
pub type PartnerFiles = Watcher<PartnerTls>;

/// Why TLS material could not be loaded; every variant names the configuration key at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file named by the configuration could not be read.
    #[error("{key}: {}: {source}", path.display())]
    Read {
        /// The configuration key (`tls.certificate`, …).
        key: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file was read, but what it holds is not usable: no PEM certificate, a key that does
    /// not fit the certificate, a CRL that does not parse, …
    #[error("{key}: {}: {reason}", path.display())]
    Invalid {
        /// The configuration key.
        key: String,
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting names what this build does not offer (a cipher suite, a group).
    #[error("{key}: {reason}")]
    Policy {
        /// The configuration key (`tls.cipher_suites[1]`, …).
        key: String,
        /// What is wrong, with what the build offers.
        reason: String,
    },
}

impl TlsError {
    /// The configuration key at fault.
    pub fn key(&self) -> &str {
        match self {
            TlsError::Read { key, .. }
            | TlsError::Invalid { key, .. }
            | TlsError::Policy { key, .. } => key,
        }
    }

    /// The file at fault, if a file is.
    pub fn path(&self) -> Option<&Path> {
        match self {
            TlsError::Read { path, .. } | TlsError::Invalid { path, .. } => Some(path),
            TlsError::Policy { .. } => None,
        }
    }

    fn new(key: impl Into<String>, path: &Path, reason: impl std::fmt::Display) -> Self {
        TlsError::Invalid {
            key: key.into(),
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    fn policy(key: String, reason: String) -> Self {
        TlsError::Policy { key, reason }
    }
}

/// The crypto provider of a route: aws-lc-rs, narrowed to `tls.cipher_suites` and
/// `tls.groups` when they are set (a TLS policy such as NIST SP 800-52r2 or BSI TR-02102-2).
pub fn route_provider(cfg: &TlsConfig) -> Result<Arc<CryptoProvider>, TlsError> {
    policy_provider(&cfg.policy, "tls")
}

/// aws-lc-rs narrowed to the policy's `cipher_suites` and `groups` (when set), errors named
/// under `section` (`tls`, `upstream.tls`).
fn policy_provider(policy: &TlsPolicy, section: &str) -> Result<Arc<CryptoProvider>, TlsError> {
    let (suites, groups) = (&policy.cipher_suites, &policy.groups);
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    if !suites.is_empty() {
        p.cipher_suites = narrow(
            &p.cipher_suites,
            suites,
            |s| s.suite().as_str(),
            &format!("{section}.cipher_suites"),
            "cipher suite",
        )?;
    }
    if !groups.is_empty() {
        p.kx_groups = narrow(
            &p.kx_groups,
            groups,
            |g| g.name().as_str(),
            &format!("{section}.groups"),
            "key exchange group",
        )?;
    }
    Ok(Arc::new(p))
}

/// The items of `offered` named in `names` (compared without regard to case), in that order;
/// an unknown name is an error naming `key[i]` and listing what the build offers.
fn narrow<T: Copy>(
    offered: &[T],
    names: &[String],
    name_of: impl Fn(&T) -> Option<&'static str>,
    key: &str,
    what: &str,
) -> Result<Vec<T>, TlsError> {
    let mut chosen = Vec::with_capacity(names.len());
    for (j, name) in names.iter().enumerate() {
        let item = offered
            .iter()
            .find(|t| name_of(t).is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .ok_or_else(|| {
                let all: Vec<&str> = offered.iter().filter_map(&name_of).collect();
                TlsError::policy(
                    format!("{key}[{j}]"),
                    format!(
                        "unknown {what} `{name}`; this build offers {}",
                        all.join(", ")
                    ),
                )
            })?;
        chosen.push(*item);
    }
    Ok(chosen)
}

/// Reads one file, naming the key that points at it on error.
fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key: key.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

/// Certificate lifetimes, for the expiry metric and `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// notAfter of the server (leaf) certificate, Unix seconds.
    pub server_not_after: i64,
    /// Earliest notAfter among the client CA certificates, Unix seconds.
    pub client_ca_not_after: i64,
}

/// A loaded, consistent set of TLS material for one route; routes that name the same files
/// with the same settings share one (see `shared`), so a clone is a few reference counts.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The configuration new handshakes use.
    pub server_config: Arc<ServerConfig>,
    /// Its client verifier, to check open sessions' certificates again after a reload.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// Lifetimes of what was loaded.
    pub expiry: Expiry,
    /// Subject of the server certificate, for `check` and logs.
    pub server_subject: Arc<str>,
    /// Number of client CA certificates and CRLs loaded.
    pub counts: (usize, usize),
    /// Next-update times of the CRLs (Unix seconds), for `check`.
    pub crl_next_updates: Arc<[(PathBuf, Option<i64>)]>,
    /// The files it was built from, compared on each poll to detect changes.
    contents: Arc<Contents>,
}

/// The files of a listener's `tls`, as read.
#[derive(Clone, PartialEq)]
pub struct Contents {
    certificate: Vec<u8>,
    private_key: Vec<u8>,
    client_ca: Vec<u8>,
    crls: Vec<Vec<u8>>,
}

/// A listener's handshake as the client verifier sees it: the route's allow-list, and what
/// the client presented (rustls keeps no connection state after a failure, and the audit
/// trail records who was refused).
#[derive(Default)]
pub struct HandshakeScope {
    /// The route's `allowed_clients`, checked inside the handshake so that a refused sender
    /// gets an `access_denied` alert rather than a clean handshake and then EOF.
    pub allow: Arc<AllowList>,
    /// The certificate presented, once the verifier has seen one.
    pub presented: std::sync::Mutex<Option<ClientIdentity>>,
    /// Whether the certificate verified but `allow` refused it.
    pub denied: std::sync::atomic::AtomicBool,
}

tokio::task_local! {
    /// The handshake being run on this task ([`HandshakeScope`]).
    pub static HANDSHAKE: Arc<HandshakeScope>;
}

/// The WebPKI client verifier, noting the presented certificate in [`HANDSHAKE`] first and
/// applying the route's allow-list after the chain verified. Outside a handshake's scope
/// (re-checking open sessions after a reload, which applies the allow-list itself) it is the
/// WebPKI verifier alone.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for RecordingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let identity = ClientIdentity::from_der(end_entity);
        let admitted = HANDSHAKE.try_with(|scope| {
            let admitted = identity.as_ref().is_some_and(|id| scope.allow.admits(id));
            if let Ok(mut slot) = scope.presented.lock() {
                *slot = identity;
            }
            admitted
        });
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match admitted {
            Ok(false) => {
                let _ = HANDSHAKE.try_with(|s| s.denied.store(true, Ordering::Release));
                // rustls answers this with the `access_denied` alert.
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
            Ok(true) | Err(_) => Ok(verified),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The TLS configuration of the admin server: its certificate and, with a client CA, mutual
/// TLS for scrapers. Read once at start.
pub fn admin_server_config(cfg: &AdminTlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = parse_certs(&read_file("admin.tls.certificate", &cfg.certificate)?)
        .map_err(|r| TlsError::new("admin.tls.certificate", &cfg.certificate, r))?;
    let key = PrivateKeyDer::from_pem_slice(&read_file("admin.tls.private_key", &cfg.private_key)?)
        .map_err(|e| {
            TlsError::new(
                "admin.tls.private_key",
                &cfg.private_key,
                format!("no usable PEM private key ({e})"),
            )
        })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("admin.tls.certificate", &cfg.certificate, e))?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in parse_certs(&read_file("admin.tls.client_ca", ca)?)
                .map_err(|r| TlsError::new("admin.tls.client_ca", ca, r))?
            {
                roots
                    .add(c)
                    .map_err(|e| TlsError::new("admin.tls.client_ca", ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::new("admin.tls.client_ca", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError::new(
            "admin.tls.private_key",
            &cfg.private_key,
            format!("does not fit the certificate: {e}"),
        )
    })?;
    without_resumption(&mut config);
    Ok(Arc::new(config))
}

/// Turns session resumption off: a resumed session skips the client certificate's
/// verification (chain, expiry, CRL), so every connection gets a full handshake. It also
/// drops rustls's default cache of 256 sessions, whose entries, made during a burst of
/// handshakes and kept after it, kept 1-2 MB of the heap from being returned after the burst.
fn without_resumption(config: &mut ServerConfig) {
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
}

/// The crypto provider used everywhere: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl TlsMaterial {
    /// Reads and checks the files named by `cfg`.
    pub fn load(cfg: &TlsConfig) -> Result<Self, TlsError> {
        Self::build(cfg, Self::read(cfg)?)
    }
}

impl Material for TlsMaterial {
    type Config = TlsConfig;
    type Contents = Arc<Contents>;
    const WHAT: &'static str = "TLS";

    fn read(cfg: &TlsConfig) -> Result<Arc<Contents>, TlsError> {
        Ok(Arc::new(Contents {
            certificate: read_file("tls.certificate", &cfg.certificate)?,
            private_key: read_file("tls.private_key", &cfg.private_key)?,
            client_ca: read_file("tls.client_ca", &cfg.client_ca)?,
            crls: read_crls(&cfg.policy.crl, "tls.crl")?,
        }))
    }

    fn build(cfg: &TlsConfig, files: Arc<Contents>) -> Result<Self, TlsError> {
        shared::share(cfg, files, Self::build_anew)
    }

    fn contents(&self) -> &Arc<Contents> {
        &self.contents
    }

    fn set_expiry(&self, metrics: &crate::metrics::RouteMetrics) {
        use crate::label::CertRole;
        metrics.set_expiry(CertRole::Server, self.expiry.server_not_after);
        metrics.set_expiry(CertRole::ClientCa, self.expiry.client_ca_not_after);
    }

    fn subject(&self) -> Option<&str> {
        Some(&self.server_subject)
    }
}

impl TlsMaterial {
    /// Builds the material from the files' contents, sharing nothing.
    fn build_anew(cfg: &TlsConfig, files: Arc<Contents>) -> Result<Self, TlsError> {
        let provider = route_provider(cfg)?;
        let err = |key: &str, path: &Path, reason: String| TlsError::new(key, path, reason);

        let chain = parse_certs(&files.certificate)
            .map_err(|r| err("tls.certificate", &cfg.certificate, r))?;
        let key = PrivateKeyDer::from_pem_slice(&files.private_key).map_err(|e| {
            err(
                "tls.private_key",
                &cfg.private_key,
                format!("no usable PEM private key ({e})"),
            )
        })?;
        let (server_not_after, server_subject) =
            leaf_info(&chain[0]).map_err(|r| err("tls.certificate", &cfg.certificate, r))?;
        rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
            |e| {
                let reason = match e {
                    rustls::Error::InconsistentKeys(_) => format!(
                        "the private key does not belong to the certificate {}",
                        cfg.certificate.display()
                    ),
                    e => format!("does not fit the certificate: {e}"),
                };
                err("tls.private_key", &cfg.private_key, reason)
            },
        )?;
        let cas = ca_bundle(&files.client_ca, "tls.client_ca", &cfg.client_ca)?;
        let (crls, crl_next_updates) = parse_crls(&cfg.policy.crl, &files.crls, "tls.crl")?;
        let crl_count = crls.len();
        let verifier = client_verifier(cfg, cas.roots, crls, &provider)?;
        let webpki = verifier.inner.clone();

        let mut server_config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions(cfg.policy.min_version))
            .map_err(|e| err("tls.min_version", &cfg.certificate, e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| err("tls.certificate", &cfg.certificate, e.to_string()))?;
        without_resumption(&mut server_config);

        Ok(TlsMaterial {
            server_config: Arc::new(server_config),
            verifier: webpki,
            expiry: Expiry {
                server_not_after,
                client_ca_not_after: cas.earliest_not_after,
            },
            server_subject: server_subject.into(),
            counts: (cas.count, crl_count),
            crl_next_updates: crl_next_updates.into(),
            contents: files,
        })
    }
}

/// The protocol versions offered or accepted from `min` on.
fn versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static FROM_1_2: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static FROM_1_3: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        TlsVersion::Tls12 => &FROM_1_2,
        TlsVersion::Tls13 => &FROM_1_3,
    }
}

/// A CA bundle as trust anchors.
struct CaBundle {
    roots: RootCertStore,
    count: usize,
    /// The earliest notAfter among its certificates, Unix seconds.
    earliest_not_after: i64,
}

/// Parses the PEM bundle `pem` (from `path`, the value of `key`) into trust anchors.
fn ca_bundle(pem: &[u8], key: &str, path: &Path) -> Result<CaBundle, TlsError> {
    let cas = parse_certs(pem).map_err(|r| TlsError::new(key, path, r))?;
    let mut roots = RootCertStore::empty();
    let mut earliest_not_after = i64::MAX;
    for ca in &cas {
        let (not_after, _) = leaf_info(ca).map_err(|r| TlsError::new(key, path, r))?;
        earliest_not_after = earliest_not_after.min(not_after);
        roots
            .add(ca.clone())
            .map_err(|e| TlsError::new(key, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(CaBundle {
        roots,
        count: cas.len(),
        earliest_not_after,
    })
}

/// Why a client whose handshake passed at `verified_at` would no longer be admitted by
/// `verifier` (a reloaded CA bundle or CRL); `None` while it still would. Judged as of the
/// handshake, so that a certificate expiring during a long session is not mistaken for one
/// the reload revoked.
pub fn no_longer_verifies(
    verifier: &dyn ClientCertVerifier,
    chain: &[CertificateDer<'_>],
    verified_at: UnixTime,
) -> Option<rustls::Error> {
    let (leaf, intermediates) = chain.split_first()?;
    verifier
        .verify_client_cert(leaf, intermediates, verified_at)
        .err()
}

/// The CRLs of `cfg` (PEM or DER) and the nextUpdate of each.
#[allow(clippy::type_complexity)]
fn parse_crls(
    paths: &[PathBuf],
    files: &[Vec<u8>],
    key: &str,
) -> Result<
    (
        Vec<CertificateRevocationListDer<'static>>,
        Vec<(PathBuf, Option<i64>)>,
    ),
    TlsError,
> {
    let err = |key: &str, path: &Path, reason: String| TlsError::new(key, path, reason);
    let mut crls = Vec::with_capacity(paths.len());
    let mut crl_next_updates = Vec::with_capacity(paths.len());
    for (path, bytes) in paths.iter().zip(files) {
        let der = if bytes.starts_with(b"-----BEGIN") {
            CertificateRevocationListDer::from_pem_slice(bytes)
                .map_err(|e| err(key, path, format!("no PEM X509 CRL ({e})")))?
        } else {
            CertificateRevocationListDer::from(bytes.clone())
        };
        let next = crl_next_update(der.as_ref()).map_err(|r| err(key, path, r))?;
        crl_next_updates.push((path.clone(), next));
        crls.push(der);
    }
    Ok((crls, crl_next_updates))
}

/// The client certificate verifier: `client_ca`, the CRLs and `tls.revocation`.
fn client_verifier(
    cfg: &TlsConfig,
    roots: RootCertStore,
    crls: Vec<CertificateRevocationListDer<'static>>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<RecordingVerifier>, TlsError> {
    let err = |key: &str, path: &Path, reason: String| TlsError::new(key, path, reason);
    // By default revocation is checked for the sender's own certificate, and a sender whose
    // CA has no CRL configured is not refused for that (the CA bundle may mix CAs with and
    // without CRLs); tls.revocation tightens both.
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls);
    let r = cfg.policy.revocation;
    let webpki = if r.depth == RevocationDepth::EndEntity {
        webpki.only_check_end_entity_revocation()
    } else {
        webpki
    };
    let webpki = if r.unknown_status == Policy::Allow {
        webpki.allow_unknown_revocation_status()
    } else {
        webpki
    };
    let webpki = if r.expired_crl == Policy::Deny {
        webpki.enforce_revocation_expiration()
    } else {
        webpki
    };
    let webpki = webpki.build().map_err(|e| {
        let (key, path) = match cfg.policy.crl.first() {
            None => ("tls.client_ca", &cfg.client_ca),
            Some(crl) => ("tls.crl", crl),
        };
        err(key, path, format!("client verifier: {e}"))
    })?;
    Ok(Arc::new(RecordingVerifier { inner: webpki }))
}

/// Reads the CRL files of a policy, each named by `key` on error.
fn read_crls(paths: &[PathBuf], key: &str) -> Result<Vec<Vec<u8>>, TlsError> {
    paths.iter().map(|p| read_file(key, p)).collect()
}

/// The certificates of a PEM file, in order (a chain: the leaf first).
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("unreadable PEM ({e})"))?;
    if certs.is_empty() {
        return Err("no PEM CERTIFICATE block found".into());
    }
    Ok(certs)
}

/// notAfter (Unix seconds) and subject of a certificate.
fn leaf_info(der: &CertificateDer<'_>) -> Result<(i64, String), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("not an X.509 certificate ({e})"))?;
    Ok((
        cert.validity().not_after.timestamp(),
        cert.subject().to_string(),
    ))
}

fn crl_next_update(der: &[u8]) -> Result<Option<i64>, String> {
    let (_, crl) =
        x509_parser::parse_x509_crl(der).map_err(|e| format!("not an X.509 CRL ({e})"))?;
    Ok(crl.next_update().map(|t| t.timestamp()))
}

/// A client configuration for the tool commands and tests: trust `ca`, present `cert_key`.
pub fn client_config(
    ca: &Path,
    cert_key: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let cas = parse_certs(&read_file("--ca", ca)?).map_err(|r| TlsError::new("--ca", ca, r))?;
    for ca_cert in cas {
        roots
            .add(ca_cert)
            .map_err(|e| TlsError::new("--ca", ca, e))?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("--ca", ca, e))?
        .with_root_certificates(roots);
    let config = match cert_key {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = parse_certs(&read_file("--cert", cert)?)
                .map_err(|r| TlsError::new("--cert", cert, r))?;
            let pk = PrivateKeyDer::from_pem_slice(&read_file("--key", key)?)
                .map_err(|e| TlsError::new("--key", key, e))?;
            builder
                .with_client_auth_cert(chain, pk)
                .map_err(|e| TlsError::new("--key", key, e))?
        }
    };
    Ok(Arc::new(config))
}

impl HandshakeReason {
    /// Maps a failed handshake to its reason.
    pub fn of(e: &std::io::Error) -> Self {
        use rustls::{CertificateError, Error};
        let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) else {
            return match e.kind() {
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe => Self::Eof,
                _ => Self::Io,
            };
        };
        match tls {
            Error::NoCertificatesPresented => Self::NoClientCert,
            Error::InvalidCertificate(CertificateError::Expired)
            | Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => Self::Expired,
            Error::InvalidCertificate(CertificateError::UnknownIssuer) => Self::UnknownCa,
            Error::InvalidCertificate(CertificateError::Revoked) => Self::Revoked,
            Error::InvalidCertificate(_) => Self::BadCertificate,
            Error::PeerIncompatible(_) => Self::Incompatible,
            Error::InvalidMessage(_) => Self::NotTls,
            Error::AlertReceived(_) => Self::Alert,
            _ => Self::Protocol,
        }
    }
}
