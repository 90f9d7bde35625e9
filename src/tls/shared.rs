//! Listener material shared between routes. A gateway typically presents one certificate on
//! every route; built once per route, its server configuration, client verifier and file
//! contents cost about 6 KiB a route. Routes whose `tls` settings and files are the same now
//! use one build. Nothing per route lives in it: the allow-list is the route's own, applied
//! through the handshake's scope ([`super::HANDSHAKE`]).

use std::sync::{Arc, Mutex};

use super::{Contents, TlsError, TlsMaterial};
use crate::config::TlsConfig;

/// Material built and not yet let go, with the settings it was built for.
static BUILT: Mutex<Vec<(TlsConfig, TlsMaterial)>> = Mutex::new(Vec::new());

/// The material of `cfg` and `files`: one built before from the same settings and contents
/// while a route still uses it, or a new one from `build` (remembered when it succeeds).
/// Deterministic either way: the same settings and contents always build the same material.
pub(super) fn share(
    cfg: &TlsConfig,
    files: Arc<Contents>,
    build: impl FnOnce(&TlsConfig, Arc<Contents>) -> Result<TlsMaterial, TlsError>,
) -> Result<TlsMaterial, TlsError> {
    // Held while building, so that routes loading the same files at once build them once.
    let Ok(mut built) = BUILT.lock() else {
        return build(cfg, files);
    };
    // What only this list still holds is in service nowhere.
    built.retain(|(_, m)| Arc::strong_count(&m.server_config) > 1);
    if let Some((_, m)) = built
        .iter()
        .find(|(c, m)| *m.contents == *files && c == cfg)
    {
        return Ok(m.clone());
    }
    let material = build(cfg, files)?;
    built.push((cfg.clone(), material.clone()));
    Ok(material)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use crate::config::{Config, TlsConfig};
    use crate::tls::TlsMaterial;

    /// A server certificate issued by a CA, both written into `dir`.
    fn issue(dir: &Path) {
        let mut ca = rcgen::CertificateParams::new(Vec::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().expect("key"))
            .expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("leaf");
        for (name, pem) in [
            ("ca.crt", ca.pem()),
            ("server.crt", leaf.pem()),
            ("server.key", key.serialize_pem()),
        ] {
            std::fs::write(dir.join(name), pem).expect("write");
        }
    }

    fn tls(dir: &Path, extra: &str) -> TlsConfig {
        let yaml = format!(
            "routes:\n  - name: t\n    listen: \"127.0.0.1:0\"\n    tls: {{ certificate: server.crt, private_key: server.key, client_ca: ca.crt{extra} }}\n    upstream: {{ targets: [\"127.0.0.1:9\"] }}\n"
        );
        let mut cfg = Config::from_yaml(&yaml, dir).expect("config");
        cfg.routes.remove(0).tls.expect("tls")
    }

    #[test]
    fn the_same_files_and_settings_share_one_build_until_no_route_holds_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        issue(dir.path());
        let cfg = tls(dir.path(), "");
        let a = TlsMaterial::load(&cfg).expect("load");
        let b = TlsMaterial::load(&cfg).expect("load");
        assert!(Arc::ptr_eq(&a.server_config, &b.server_config));
        let stricter = TlsMaterial::load(&tls(dir.path(), ", min_version: \"1.3\"")).expect("load");
        assert!(!Arc::ptr_eq(&a.server_config, &stricter.server_config));

        // Renewed files: a new build, which the old one's holders do not see.
        let first = Arc::downgrade(&a.server_config);
        issue(dir.path());
        let renewed = TlsMaterial::load(&cfg).expect("load");
        assert!(!Arc::ptr_eq(&a.server_config, &renewed.server_config));
        drop((a, b));
        // Let go once nothing but the list holds it (noticed at the next load).
        let _ = TlsMaterial::load(&cfg).expect("load");
        assert!(first.upgrade().is_none());
    }
}
