//! The upstream side's TLS (`upstream.tls`, an egress route): the partner's server certificate
//! verified against `ca` (and its CRLs) and a name, narrowed by `allowed_servers`, our client
//! certificate presented when one is configured, and session tickets kept so that a pooled
//! reconnect resumes instead of paying a full handshake.
//!
//! Loading is all-or-nothing, as for a listener ([`super::TlsMaterial`]); [`PartnerFiles`]
//! decides when the files changed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::{
    AllowList, ClientIdentity, TlsError, leaf_info, narrowed_provider, parse_certs, parse_crls,
    read_file,
};
use crate::config::{Policy, RevocationDepth, TlsVersion, UpstreamTlsConfig};
use crate::label::{CertRole, PartnerRefusal};
use crate::metrics::RouteMetrics;

/// Loaded `upstream.tls` material: what new connections to the partner use.
pub struct PartnerTls {
    /// The client configuration (with its session cache) of new connections.
    pub config: Arc<ClientConfig>,
    /// `server_name`, or `None` for each target's host.
    pub server_name: Option<ServerName<'static>>,
    /// `allowed_servers`.
    pub allowed: AllowList,
    /// notAfter of our client certificate, if one is presented.
    pub client_not_after: Option<i64>,
    /// Earliest notAfter among the partner's CA certificates.
    pub ca_not_after: i64,
    /// The raw file contents, compared on each poll.
    fingerprint: Vec<Vec<u8>>,
}

impl std::fmt::Debug for PartnerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartnerTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl PartnerTls {
    /// Reads and checks the files of `cfg`; errors are named under `upstream.tls`.
    pub fn load(cfg: &UpstreamTlsConfig) -> Result<Self, TlsError> {
        Self::from_contents(cfg, read_files(cfg)?)
    }

    /// The name to send (SNI) and verify for `target` (`host:port`).
    pub fn name_for(&self, target: &str) -> Option<ServerName<'static>> {
        if let Some(name) = &self.server_name {
            return Some(name.clone());
        }
        let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string()).ok()
    }

    /// Whether the partner's verified certificate (`chain`, leaf first) is one
    /// `allowed_servers` admits.
    pub fn admits(&self, chain: Option<&[CertificateDer<'static>]>) -> bool {
        let identity = chain
            .and_then(|c| c.first())
            .and_then(ClientIdentity::from_der)
            .unwrap_or_default();
        self.allowed.admits(&identity)
    }

    fn from_contents(cfg: &UpstreamTlsConfig, files: Vec<Vec<u8>>) -> Result<Self, TlsError> {
        const K: &str = "upstream.tls";
        let err = |key: &str, path: &Path, reason: String| TlsError::new(key, path, reason);
        let provider = narrowed_provider(&cfg.cipher_suites, &cfg.groups, K)?;
        let cas = parse_certs(&files[0]).map_err(|r| err("upstream.tls.ca", &cfg.ca, r))?;
        let mut roots = RootCertStore::empty();
        let mut ca_not_after = i64::MAX;
        for ca in &cas {
            let (not_after, _) = leaf_info(ca).map_err(|r| err("upstream.tls.ca", &cfg.ca, r))?;
            ca_not_after = ca_not_after.min(not_after);
            roots.add(ca.clone()).map_err(|e| {
                err(
                    "upstream.tls.ca",
                    &cfg.ca,
                    format!("not a usable CA certificate: {e}"),
                )
            })?;
        }
        let client_files = usize::from(cfg.client.is_some()) * 2;
        let (crls, _) = parse_crls(&cfg.crl, &files[1 + client_files..], "upstream.tls.crl")?;
        let r = cfg.revocation;
        let mut verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .with_crls(crls);
        if r.depth == RevocationDepth::EndEntity {
            verifier = verifier.only_check_end_entity_revocation();
        }
        if r.unknown_status == Policy::Allow {
            verifier = verifier.allow_unknown_revocation_status();
        }
        if r.expired_crl == Policy::Deny {
            verifier = verifier.enforce_revocation_expiration();
        }
        let verifier = verifier
            .build()
            .map_err(|e| err("upstream.tls.ca", &cfg.ca, format!("server verifier: {e}")))?;
        let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| err("upstream.tls.min_version", &cfg.ca, e.to_string()))?
            .with_webpki_verifier(verifier);
        let (config, client_not_after) = match &cfg.client {
            None => (builder.with_no_client_auth(), None),
            Some((cert, key)) => {
                let chain =
                    parse_certs(&files[1]).map_err(|r| err("upstream.tls.certificate", cert, r))?;
                let (not_after, _) =
                    leaf_info(&chain[0]).map_err(|r| err("upstream.tls.certificate", cert, r))?;
                let pk = PrivateKeyDer::from_pem_slice(&files[2]).map_err(|e| {
                    err(
                        "upstream.tls.private_key",
                        key,
                        format!("no usable PEM private key ({e})"),
                    )
                })?;
                let config = builder.with_client_auth_cert(chain, pk).map_err(|e| {
                    err(
                        "upstream.tls.private_key",
                        key,
                        format!("does not fit the certificate: {e}"),
                    )
                })?;
                (config, Some(not_after))
            }
        };
        Ok(PartnerTls {
            config: Arc::new(config),
            server_name: cfg
                .server_name
                .as_deref()
                .and_then(|n| ServerName::try_from(n.to_string()).ok()),
            allowed: AllowList::new(cfg.allowed_servers.clone()),
            client_not_after,
            ca_not_after,
            fingerprint: files,
        })
    }
}

/// Every file of `cfg` in a fixed order: CA, client certificate and key (when set), CRLs.
fn read_files(cfg: &UpstreamTlsConfig) -> Result<Vec<Vec<u8>>, TlsError> {
    let mut named: Vec<(&str, &PathBuf)> = vec![("upstream.tls.ca", &cfg.ca)];
    if let Some((cert, key)) = &cfg.client {
        named.push(("upstream.tls.certificate", cert));
        named.push(("upstream.tls.private_key", key));
    }
    named.extend(cfg.crl.iter().map(|p| ("upstream.tls.crl", p)));
    named
        .into_iter()
        .map(|(key, path)| read_file(key, path))
        .collect()
}

/// The `upstream.tls` files of one route and the content of those in service.
pub struct PartnerFiles {
    key: String,
    cfg: UpstreamTlsConfig,
    in_service: Vec<Vec<u8>>,
    last_failed: Option<Vec<Vec<u8>>>,
    metrics: RouteMetrics,
}

impl PartnerFiles {
    /// Starts from `material`, loaded from `cfg`; `key` is the route's key (`routes[0]`).
    pub fn new(
        key: String,
        cfg: UpstreamTlsConfig,
        material: &PartnerTls,
        metrics: RouteMetrics,
    ) -> Self {
        set_expiry(&metrics, material);
        Self {
            key,
            cfg,
            in_service: material.fingerprint.clone(),
            last_failed: None,
            metrics,
        }
    }

    /// The `upstream.tls` section in service.
    pub fn config(&self) -> &UpstreamTlsConfig {
        &self.cfg
    }

    /// Whether `material` (loaded from `cfg` by a configuration reload) differs from what is
    /// in service; when it does, it is taken as in service.
    pub fn replace(&mut self, key: String, cfg: UpstreamTlsConfig, material: &PartnerTls) -> bool {
        self.key = key;
        let same = cfg == self.cfg && material.fingerprint == self.in_service;
        self.cfg = cfg;
        if !same {
            self.accepted(material);
        }
        !same
    }

    /// Compares the files with the material in service and loads them if they differ;
    /// `force` retries content that failed before.
    pub fn reload(&mut self, force: bool) -> Option<PartnerTls> {
        let refused = |this: &Self, e: TlsError| {
            tracing::error!(side = "proxy", route = %this.metrics.route, error = %format!("{}.{e}", this.key), "upstream TLS reload refused; previous material stays in service");
            this.metrics.reloaded(false);
        };
        let files = match read_files(&self.cfg) {
            Ok(f) => f,
            Err(e) => {
                refused(self, e);
                return None;
            }
        };
        if files == self.in_service || (!force && self.last_failed.as_ref() == Some(&files)) {
            return None;
        }
        match PartnerTls::from_contents(&self.cfg, files.clone()) {
            Ok(material) => {
                self.accepted(&material);
                Some(material)
            }
            Err(e) => {
                refused(self, e);
                self.last_failed = Some(files);
                None
            }
        }
    }

    fn accepted(&mut self, material: &PartnerTls) {
        set_expiry(&self.metrics, material);
        self.metrics.reloaded(true);
        tracing::info!(route = %self.metrics.route, "upstream TLS material reloaded");
        self.in_service = material.fingerprint.clone();
        self.last_failed = None;
    }
}

fn set_expiry(metrics: &RouteMetrics, material: &PartnerTls) {
    if let Some(t) = material.client_not_after {
        metrics.set_expiry(CertRole::Client, t);
    }
    metrics.set_expiry(CertRole::UpstreamCa, material.ca_not_after);
}

impl PartnerRefusal {
    /// Why a handshake with a partner (or its first answer) failed; `presented`: whether we
    /// sent a client certificate.
    pub fn of(e: &std::io::Error, presented: bool) -> Self {
        use rustls::{AlertDescription as A, CertificateError as C, Error};
        let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) else {
            return match e.kind() {
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe => Self::Eof,
                _ => Self::Protocol,
            };
        };
        match tls {
            Error::InvalidCertificate(C::UnknownIssuer) => Self::UnknownCa,
            Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                Self::NameMismatch
            }
            Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => Self::Expired,
            Error::InvalidCertificate(C::Revoked) => Self::Revoked,
            Error::InvalidCertificate(_) => Self::BadCertificate,
            Error::AlertReceived(A::CertificateRequired) => Self::ClientCertRequired,
            Error::AlertReceived(A::HandshakeFailure | A::BadCertificate) if !presented => {
                Self::ClientCertRequired
            }
            Error::AlertReceived(
                A::BadCertificate
                | A::UnknownCA
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::AccessDenied
                | A::UnsupportedCertificate,
            ) => Self::ClientCertRefused,
            _ => Self::Protocol,
        }
    }

    /// The reason in words, for the log.
    pub fn words(self) -> &'static str {
        match self {
            Self::UnknownCa => "the partner's certificate is not issued by upstream.tls.ca",
            Self::NameMismatch => {
                "the partner's certificate is not valid for the name checked (upstream.tls.server_name, or the target's host)"
            }
            Self::Expired => "the partner's certificate has expired",
            Self::Revoked => "the partner's certificate is revoked by upstream.tls.crl",
            Self::BadCertificate => "the partner's certificate is not acceptable",
            Self::NotAllowed => {
                "the partner's verified certificate is not in upstream.tls.allowed_servers"
            }
            Self::ClientCertRequired => {
                "the partner requires a client certificate and none is configured (upstream.tls.certificate)"
            }
            Self::ClientCertRefused => {
                "the partner refused our client certificate (upstream.tls.certificate)"
            }
            Self::Timeout => "the TLS handshake did not complete within connect_timeout",
            Self::Eof => "the partner closed the connection during the TLS handshake",
            Self::Protocol => "TLS protocol error",
        }
    }
}
