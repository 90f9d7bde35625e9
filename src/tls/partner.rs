//! The upstream side's TLS (`upstream.tls`, an egress route): the partner's server certificate
//! verified against `ca` (and its CRLs) and a name, narrowed by `allowed_servers`, our client
//! certificate presented when one is configured, and session tickets kept so that a pooled
//! reconnect resumes instead of paying a full handshake.
//!
//! Loading is all-or-nothing, as for a listener ([`super::TlsMaterial`]), and the same
//! [`super::Watcher`] decides when the files changed.

use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::WebPkiServerVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::{
    AllowList, ClientIdentity, Material, TlsError, ca_bundle, leaf_info, parse_certs, parse_crls,
    policy_provider, read_crls, read_file, versions,
};
use crate::config::{Policy, RevocationDepth, UpstreamTlsConfig};
use crate::label::{CertRole, PartnerRefusal};
use crate::metrics::RouteMetrics;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

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
    /// Its subject, for `/status`.
    pub client_subject: Option<String>,
    /// Earliest notAfter among the partner's CA certificates.
    pub ca_not_after: i64,
    /// The files it was built from, compared on each poll.
    contents: Contents,
}

/// The files of `upstream.tls`, as read.
#[derive(Clone, PartialEq)]
pub struct Contents {
    ca: Vec<u8>,
    /// Our certificate chain and key, when one is presented.
    client: Option<(Vec<u8>, Vec<u8>)>,
    crls: Vec<Vec<u8>>,
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
        Self::build(cfg, Self::read(cfg)?)
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
}

impl Material for PartnerTls {
    type Config = UpstreamTlsConfig;
    type Contents = Contents;
    const WHAT: &'static str = "upstream TLS";

    fn read(cfg: &UpstreamTlsConfig) -> Result<Contents, TlsError> {
        let client = match &cfg.client {
            None => None,
            Some((cert, key)) => Some((
                read_file("upstream.tls.certificate", cert)?,
                read_file("upstream.tls.private_key", key)?,
            )),
        };
        Ok(Contents {
            ca: read_file("upstream.tls.ca", &cfg.ca)?,
            client,
            crls: read_crls(&cfg.policy.crl, "upstream.tls.crl")?,
        })
    }

    fn build(cfg: &UpstreamTlsConfig, files: Contents) -> Result<Self, TlsError> {
        let err = |key: &str, path: &Path, reason: String| TlsError::new(key, path, reason);
        let provider = policy_provider(&cfg.policy, "upstream.tls")?;
        let cas = ca_bundle(&files.ca, "upstream.tls.ca", &cfg.ca)?;
        let (crls, _) = parse_crls(&cfg.policy.crl, &files.crls, "upstream.tls.crl")?;
        let r = cfg.policy.revocation;
        let mut verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(cas.roots), provider.clone())
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
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions(cfg.policy.min_version))
            .map_err(|e| err("upstream.tls.min_version", &cfg.ca, e.to_string()))?
            .with_webpki_verifier(verifier);
        let (config, client) = match (&cfg.client, &files.client) {
            (Some((cert, key)), Some((chain_pem, key_pem))) => {
                let chain =
                    parse_certs(chain_pem).map_err(|r| err("upstream.tls.certificate", cert, r))?;
                let (not_after, subject) =
                    leaf_info(&chain[0]).map_err(|r| err("upstream.tls.certificate", cert, r))?;
                let pk = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
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
                (config, Some((not_after, subject)))
            }
            _ => (builder.with_no_client_auth(), None),
        };
        let (client_not_after, client_subject) = client.unzip();
        Ok(PartnerTls {
            config: Arc::new(config),
            server_name: cfg
                .server_name
                .as_deref()
                .and_then(|n| ServerName::try_from(n.to_string()).ok()),
            allowed: AllowList::new(cfg.allowed_servers.clone()),
            client_not_after,
            client_subject,
            ca_not_after: cas.earliest_not_after,
            contents: files,
        })
    }

    fn contents(&self) -> &Contents {
        &self.contents
    }

    fn set_expiry(&self, metrics: &RouteMetrics) {
        if let Some(t) = self.client_not_after {
            metrics.set_expiry(CertRole::Client, t);
        }
        metrics.set_expiry(CertRole::UpstreamCa, self.ca_not_after);
    }
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

/// A partner's refusal of a TLS connection, with the detail for the log.
#[derive(Debug)]
pub struct Refused {
    /// The bounded reason (metric label).
    pub reason: PartnerRefusal,
    /// What rustls said.
    pub detail: String,
}

/// The TLS handshake with a partner over `tcp` to `target`, within `timeout`, and the check
/// of its verified certificate against `allowed_servers`.
pub async fn establish_tls(
    tcp: TcpStream,
    target: &str,
    partner: &PartnerTls,
    timeout: Duration,
) -> Result<Box<TlsStream<TcpStream>>, Refused> {
    let Some(name) = partner.name_for(target) else {
        return Err(Refused {
            reason: PartnerRefusal::NameMismatch,
            detail: format!(
                "`{target}` has no host usable as a TLS name; set upstream.tls.server_name"
            ),
        });
    };
    let connector = tokio_rustls::TlsConnector::from(partner.config.clone());
    let presented = partner.client_not_after.is_some();
    let tls = match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            return Err(Refused {
                reason: PartnerRefusal::of(&e, presented),
                detail: e.to_string(),
            });
        }
        Err(_) => {
            return Err(Refused {
                reason: PartnerRefusal::Timeout,
                detail: format!("not completed within {timeout:?}"),
            });
        }
    };
    if !partner.admits(tls.get_ref().1.peer_certificates()) {
        return Err(Refused {
            reason: PartnerRefusal::NotAllowed,
            detail: "verified, but not in allowed_servers".into(),
        });
    }
    Ok(Box::new(tls))
}
