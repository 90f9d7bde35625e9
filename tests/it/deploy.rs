//! The deployment files and the configuration reference stay true to the code: what the
//! Dockerfile copies exists, the Kubernetes configurations parse, the rules and the dashboard
//! use real metric names, and every configuration key is documented.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use mllp_proxy::config::Config;
use mllp_proxy::metrics::Metrics;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn dockerfile_copies_what_exists_and_runs_the_binary_cargo_builds() {
    // Every COPY source of the build stage exists; the binary it builds is the one Cargo.toml
    // names, copied to where ENTRYPOINT runs it; the runtime user is not root.
    let dockerfile = read("deploy/container/Dockerfile");
    let mut built = None;
    let mut installed = None;
    let mut copied_to = None;
    for line in dockerfile.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("COPY") if !line.contains("--from=") => {
                for src in &words[1..words.len() - 1] {
                    assert!(
                        repo().join(src).exists(),
                        "COPY source {src} does not exist"
                    );
                }
            }
            Some("COPY") => copied_to = words.last().map(|s| s.to_string()),
            Some("RUN") if line.contains("cargo build") => {
                let at = words.iter().position(|w| *w == "--bin").expect("--bin");
                built = Some(words[at + 1].to_string());
            }
            Some("&&") if line.contains("install") => {
                installed = Some((
                    words[words.len() - 2].to_string(),
                    words[words.len() - 1].to_string(),
                ));
            }
            _ => {}
        }
    }
    let cargo = read("Cargo.toml");
    let built = built.expect("a cargo build --bin line");
    assert!(
        cargo.contains(&format!("name = \"{built}\"")),
        "Cargo.toml has no binary {built}"
    );
    let (from, to) = installed.expect("install line");
    assert_eq!(from, format!("target/release/{built}"));
    let to_name = Path::new(&to)
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let copied_to = copied_to.expect("COPY --from");
    let entrypoint = dockerfile
        .lines()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .expect("ENTRYPOINT");
    assert!(
        entrypoint.contains(&format!("\"{copied_to}\"")),
        "{entrypoint} vs {copied_to}"
    );
    assert!(copied_to.ends_with(&to_name));
    assert!(dockerfile.contains("USER 65532:65532"));
    assert!(dockerfile.contains("EXPOSE 2575 9575"));
}

#[test]
fn kubernetes_configurations_are_valid_proxy_configurations() {
    // The mllp-proxy.yaml embedded in each ConfigMap passes the same validation as `run`.
    for folder in ["sidecar", "scaled"] {
        let manifest = read(&format!("deploy/kubernetes/{folder}/configmap.yaml"));
        let doc: serde_yaml::Value = serde_yaml::from_str(&manifest).expect("YAML");
        let text = doc["data"]["mllp-proxy.yaml"]
            .as_str()
            .expect("data.mllp-proxy.yaml");
        let text = text.replace("${POD_IP}", "10.42.0.7");
        let config = Config::from_yaml(&text, Path::new("/etc/mllp-proxy/config"))
            .unwrap_or_else(|e| panic!("{folder}: {e}"));
        assert_eq!(
            config.admin.listen.port(),
            9575,
            "{folder}: probes and scrapes use 9575"
        );
        assert_eq!(config.routes[0].listen.port(), 2575);
    }
}

fn metric_names() -> BTreeSet<String> {
    let m = Metrics::new().expect("metrics");
    let r = m.route("x");
    let _target = r.target("t:1");
    r.set_expiry(mllp_proxy::label::CertRole::Server, 0);
    m.encode()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Identifiers starting with `mllp_proxy_` in `text`, with histogram suffixes removed.
fn used_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("mllp_proxy_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(base.to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn alert_rules_dashboard_and_docs_use_real_metric_names() {
    // A renamed metric would silently empty a panel or never fire an alert.
    let known = metric_names();
    for file in [
        "deploy/prometheus/mllp-proxy.rules.yml",
        "deploy/grafana/mllp-proxy.json",
        "docs/metrics.md",
    ] {
        let used = used_names(&read(file));
        assert!(!used.is_empty(), "{file} uses no metric");
        let unknown: Vec<_> = used.difference(&known).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses unknown metrics {unknown:?}"
        );
    }
    // Every metric of DESIGN.md §7 is exported.
    for name in [
        "mllp_proxy_connections_accepted_total",
        "mllp_proxy_connections_active",
        "mllp_proxy_tls_handshake_failures_total",
        "mllp_proxy_clients_denied_total",
        "mllp_proxy_messages_received_total",
        "mllp_proxy_messages_rejected_total",
        "mllp_proxy_messages_forwarded_total",
        "mllp_proxy_acks_total",
        "mllp_proxy_upstream_failures_total",
        "mllp_proxy_upstream_up",
        "mllp_proxy_upstream_ack_seconds",
        "mllp_proxy_message_bytes",
        "mllp_proxy_certificate_expiry_timestamp_seconds",
        "mllp_proxy_tls_reloads_total",
        "mllp_proxy_build_info",
    ] {
        assert!(known.contains(name), "{name} not exported");
    }
}

#[test]
fn every_configuration_key_is_documented() {
    // Field names of the raw configuration structs (what the YAML may contain) all appear in
    // docs/configuration.md as `key` or `section.key`.
    let source = read("src/config.rs");
    let docs = read("docs/configuration.md");
    let mut keys = BTreeSet::new();
    let mut in_raw = false;
    for line in source.lines() {
        let t = line.trim();
        if t.starts_with("struct Raw") && t.ends_with('{') {
            in_raw = true;
            continue;
        }
        if in_raw && t == "}" {
            in_raw = false;
        }
        if in_raw
            && let Some((name, _)) = t.split_once(':')
            && !name.starts_with("#")
            && !name.starts_with("//")
        {
            keys.insert(name.trim().to_string());
        }
    }
    assert!(keys.len() >= 30, "found only {} keys: {keys:?}", keys.len());
    let missing: Vec<_> = keys
        .iter()
        .filter(|k| !docs.contains(&format!("`{k}`")) && !docs.contains(&format!(".{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "undocumented configuration keys: {missing:?}"
    );
}
