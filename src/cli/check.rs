//! `mllp-proxy check`: validates the configuration and loads every route's TLS material the way
//! `run` would, without binding anything; with `--client-cert`, says per route whether a
//! sender presenting that certificate would be admitted, and as whom, or why not.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, UnixTime};

use crate::config::{Config, RouteConfig};
use crate::tls::{AllowList, ClientIdentity, PartnerTls, TlsMaterial};

/// Certificates expiring sooner than this are warned about.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// Prints a summary of `path` to stdout and problems to stderr; `true` when there is no error
/// (and, with `client_cert`, some route admits that certificate).
pub fn run(path: &Path, client_cert: Option<&Path>) -> bool {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return false;
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    println!(
        "{}: {} route(s), admin on {}",
        path.display(),
        config.routes.len(),
        config.admin.listen
    );
    let presented = match client_cert.map(read_chain).transpose() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: --client-cert: {e}");
            return false;
        }
    };
    let mut ok = check_admin_and_audit(&config);
    let mut admitted = false;
    for (i, r) in config.routes.iter().enumerate() {
        let (route_ok, admits) = check_route(i, r, now, presented.as_deref());
        ok &= route_ok;
        admitted |= admits;
    }
    if ok {
        println!("configuration OK");
    }
    if let Some(path) = client_cert.filter(|_| !admitted) {
        eprintln!("error: --client-cert: no route admits {}", path.display());
        return false;
    }
    ok
}

/// The certificate chain of a PEM file (the leaf first).
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let chain = crate::tls::parse_certs(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(chain)
}

/// Whether route `i` would admit a sender presenting `chain`, and as whom: printed in the
/// route's summary. The chain is verified by the route's own verifier (its `client_ca`, CRLs
/// and clock), then matched against `allowed_clients`, as a handshake would.
fn admission(r: &RouteConfig, material: &TlsMaterial, chain: &[CertificateDer<'static>]) -> bool {
    let Some(identity) = ClientIdentity::from_der(&chain[0]) else {
        println!("  --client-cert: refused: not a readable X.509 certificate");
        return false;
    };
    let names = identity.names();
    let names = if names.is_empty() {
        "none".into()
    } else {
        names
    };
    match material
        .verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
    {
        Err(e) => {
            println!(
                "  --client-cert: refused in the handshake: {} (issuer: {}; its identities: {names})",
                verify_words(&e),
                identity.issuer
            );
            false
        }
        Ok(_) if AllowList::new(r.allowed_clients.clone()).admits(&identity) => {
            println!("  --client-cert: admitted as {identity} (its identities: {names})");
            true
        }
        Ok(_) => {
            let wants: Vec<String> = r.allowed_clients.iter().map(ToString::to_string).collect();
            println!(
                "  --client-cert: refused with access_denied: verified, but none of its identities ({names}) is in allowed_clients ({})",
                wants.join(", ")
            );
            false
        }
    }
}

/// A verifier's refusal in the words of the route's keys.
fn verify_words(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "not issued by a CA in tls.client_ca".into()
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "expired".into()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "not valid yet".into()
        }
        rustls::Error::InvalidCertificate(C::Revoked) => "revoked by a CRL in tls.crl".into(),
        other => other.to_string(),
    }
}

/// `audit.file`'s folder and `admin.tls`; `true` when there is no error.
fn check_admin_and_audit(config: &Config) -> bool {
    let mut ok = true;
    if let Some(f) = &config.audit.file {
        // `run` opens it at start and exits 1 when it cannot; say so before a deployment.
        let dir = f.parent().filter(|d| !d.as_os_str().is_empty());
        if dir.is_some_and(|d| !d.is_dir()) {
            eprintln!(
                "error: audit.file: {}: its directory does not exist",
                f.display()
            );
            ok = false;
        }
    }
    for c in &config.audit.syslog {
        let partner = c.tls.as_ref().map(PartnerTls::load).transpose();
        match partner {
            Ok(p) => println!(
                "audit.syslog {}: {:?} to {} ({:?}, facility {}){}",
                c.name,
                c.transport,
                c.address,
                c.format,
                c.facility,
                if p.is_some() {
                    ", collector verified by its CA"
                } else {
                    ""
                }
            ),
            Err(e) => {
                eprintln!("error: audit.syslog {}: {e}", c.name);
                ok = false;
            }
        }
    }
    if let Some(t) = &config.admin.tls {
        match crate::tls::admin_server_config(t) {
            Ok(_) => println!(
                "admin: TLS{}",
                if t.client_ca.is_some() {
                    " with client certificates (mutual TLS)"
                } else {
                    ""
                }
            ),
            Err(e) => {
                eprintln!("error: {e}");
                ok = false;
            }
        }
    }
    ok
}

/// Prints route `i`'s summary and loads its TLS material: whether there is no error, and
/// whether the route admits `presented`.
fn check_route(
    i: usize,
    r: &RouteConfig,
    now: i64,
    presented: Option<&[CertificateDer<'static>]>,
) -> (bool, bool) {
    println!(
        "route {}: listen {} -> {} (on failure: {}, validation: {}, max {} bytes)",
        r.name,
        r.listen,
        r.upstream.targets.join(", "),
        r.on_upstream_failure.word(),
        format!("{:?}", r.validation.mode).to_lowercase(),
        r.validation.max_message_bytes
    );
    let u = &r.upstream;
    println!(
        "  upstream: {}, {} pooled connection(s), queue {:?}, health check {}",
        match u.balance {
            crate::config::Balance::Failover => "failover",
            crate::config::Balance::RoundRobin => "round_robin",
        },
        match u.max_connections {
            0 => "unlimited".to_string(),
            n => format!("at most {n}"),
        },
        u.queue_timeout,
        u.health_check_interval
            .map_or("off".to_string(), |d| format!("every {d:?}"))
    );
    let ok = check_partner(i, r, now);
    let Some(tls) = &r.tls else {
        println!("  listener: plain MLLP (plaintext: true), no TLS and no client identity");
        if !r.listen.ip().is_loopback() {
            eprintln!(
                "warning: routes[{i}].listen: a plain listener on {}, not a loopback address: anyone who can reach it can send through this route; keep it on 127.0.0.1 or the pod's own network",
                r.listen
            );
        }
        if presented.is_some() {
            println!("  --client-cert: not asked for (a plain listener admits any connection)");
        }
        return (ok, false);
    };
    let material = match TlsMaterial::load(tls) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: routes[{i}].{e}");
            return (false, false);
        }
    };
    println!(
        "  tls: min {}, reload every {:?}; server certificate {} expires {}",
        tls.policy.min_version,
        tls.policy.reload_interval,
        material.server_subject,
        describe(material.expiry.server_not_after, now)
    );
    println!(
        "  client CA: {} certificate(s), earliest expiry {}; CRLs: {}",
        material.counts.0,
        describe(material.expiry.client_ca_not_after, now),
        material.counts.1
    );
    if r.allowed_clients.is_empty() {
        println!("  allowed_clients: any certificate verified by client_ca");
    } else {
        let list: Vec<String> = r.allowed_clients.iter().map(ToString::to_string).collect();
        println!("  allowed_clients: {}", list.join(", "));
    }
    let admits = presented.is_some_and(|chain| admission(r, &material, chain));
    (check_dates(i, &material, now) && ok, admits)
}

/// Loads `upstream.tls` when set and prints what the partner is verified against.
fn check_partner(i: usize, r: &RouteConfig, now: i64) -> bool {
    let Some(t) = &r.upstream.tls else {
        return true;
    };
    let partner = match PartnerTls::load(t) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: routes[{i}].{e}");
            return false;
        }
    };
    let name = t.server_name.as_deref().unwrap_or("each target's host");
    let client = match partner.client_not_after {
        Some(at) => format!("client certificate expires {}", describe(at, now)),
        None => "no client certificate".into(),
    };
    println!(
        "  upstream.tls: partner verified against {} as {name}; CA expires {}; {client}",
        t.ca.display(),
        describe(partner.ca_not_after, now)
    );
    if !t.allowed_servers.is_empty() {
        let list: Vec<String> = t.allowed_servers.iter().map(ToString::to_string).collect();
        println!("  allowed_servers: {}", list.join(", "));
    }
    let mut ok = true;
    for (key, at) in [
        ("upstream.tls.certificate", partner.client_not_after),
        ("upstream.tls.ca", Some(partner.ca_not_after)),
    ] {
        if let Some(at) = at.filter(|a| *a <= now) {
            eprintln!(
                "error: routes[{i}].{key}: certificate expired on {}",
                date(at)
            );
            ok = false;
        }
    }
    ok
}

/// Expired certificates are errors, those expiring within 30 days and stale CRLs warnings.
fn check_dates(i: usize, material: &TlsMaterial, now: i64) -> bool {
    let mut ok = true;
    for (key, not_after) in [
        ("tls.certificate", material.expiry.server_not_after),
        ("tls.client_ca", material.expiry.client_ca_not_after),
    ] {
        if not_after <= now {
            eprintln!(
                "error: routes[{i}].{key}: certificate expired on {}",
                date(not_after)
            );
            ok = false;
        } else if not_after - now < EXPIRY_WARNING.as_secs() as i64 {
            eprintln!(
                "warning: routes[{i}].{key}: certificate expires in {} day(s), on {}",
                (not_after - now) / 86_400,
                date(not_after)
            );
        }
    }
    for (j, (crl, next)) in material.crl_next_updates.iter().enumerate() {
        if let Some(next) = next.filter(|n| *n < now) {
            eprintln!(
                "warning: routes[{i}].tls.crl[{j}]: {} is past its next update ({}); fetch a fresh CRL",
                crl.display(),
                date(next)
            );
        }
    }
    ok
}

fn describe(not_after: i64, now: i64) -> String {
    format!("{} ({} days)", date(not_after), (not_after - now) / 86_400)
}

/// `YYYY-MM-DD` of a Unix timestamp.
fn date(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    let s = crate::hl7::hl7_timestamp(t);
    format!("{}-{}-{}", &s[0..4], &s[4..6], &s[6..8])
}
