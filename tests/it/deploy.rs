//! The deployment files and the configuration reference stay true to the code: what the
//! Dockerfile copies exists, the Kubernetes configurations parse, the rules and the dashboard
//! use real metric names, and every configuration key is documented.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use mllp_proxy::config::Config;
use mllp_proxy::metrics::Metrics;
use serde::Deserialize;

use crate::support::promtool;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn dockerfile_copies_what_exists_and_runs_the_binary_cargo_builds() {
    // Every COPY source of the build stage exists; the binary it builds is the one Cargo.toml
    // names, copied to where ENTRYPOINT runs it; the runtime user is not root. (The
    // `prebuilt` stage copies from a context of its own: the folder smoke.sh makes.)
    let dockerfile = read("deploy/container/Dockerfile");
    let mut built = None;
    let mut installed = None;
    let mut copied_to = None;
    let mut stage = "";
    for line in dockerfile.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("FROM") => stage = words.last().copied().unwrap_or_default(),
            Some("COPY") if stage == "prebuilt" => {}
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
    // The mllp-proxy.yaml each kustomization generates its ConfigMap from passes the same
    // validation as `run`.
    for folder in ["sidecar", "scaled", "egress"] {
        let text = read(&format!("deploy/kubernetes/{folder}/mllp-proxy.yaml"));
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
    let every = mllp_proxy::metrics::RouteShape {
        tls: true,
        allowed_clients: true,
        proxy_protocol: true,
        partner: true,
        queue: true,
    };
    let r = m.route("x", every);
    let _target = r.target("t:1");
    r.partner("t:1");
    // The breakdowns of refusals exist from their first event.
    use mllp_proxy::label::*;
    r.handshake_failed(HandshakeReason::Eof);
    r.rejected(mllp_proxy::hl7::RejectReason::Segment);
    r.refused(Refusal::Limit);
    r.closed_on_reload(Offboarded::Revoked);
    r.partner_refused("t:1", PartnerRefusal::Expired);
    r.suppressed(LogEvent::SessionError).inc();
    r.set_expiry(mllp_proxy::label::CertRole::Server, 0);
    m.audit_syslog(&[mllp_proxy::metrics::SinkFigures {
        name: "siem",
        up: true,
        sent: 0,
        dropped: 0,
        not_after: (Some(0), Some(0)),
    }]);
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
    let source = read("src/config/raw.rs");
    let docs = read("docs/configuration.md");
    let mut keys = BTreeSet::new();
    let mut in_raw = false;
    for line in source.lines() {
        let t = line.trim();
        if t.starts_with("pub(super) struct Raw") && t.ends_with('{') {
            in_raw = true;
            continue;
        }
        if in_raw && t == "}" {
            in_raw = false;
        }
        if in_raw
            && let Some((name, _)) = t
                .strip_prefix("pub(super) ")
                .and_then(|f| f.split_once(':'))
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
    // The example configuration shows every key (the optional ones commented out).
    let example = read("examples/mllp-proxy.yaml");
    let absent: Vec<_> = keys
        .iter()
        .filter(|k| {
            !example.lines().any(|l| {
                let l = l.trim_start().trim_start_matches('#').trim_start();
                let l = l.trim_start_matches("- ");
                l.starts_with(&format!("{k}:"))
            })
        })
        .collect();
    assert!(
        absent.is_empty(),
        "examples/mllp-proxy.yaml lacks {absent:?}"
    );
}

/// The `job` label each shipped scrape path gives its targets: prometheus.yml's scrape
/// configs (their `job_name`, unless a relabeling sets `job`) and the Prometheus Operator's
/// ServiceMonitors (a relabeling of `job`, else the Service label `jobLabel` names, else the
/// Service's name, as the operator does).
fn shipped_jobs() -> Vec<(String, String)> {
    let prom: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/prometheus/prometheus.yml")).expect("yaml");
    let mut jobs = Vec::new();
    for sc in prom["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
    {
        let name = sc["job_name"].as_str().expect("job_name").to_string();
        let job = relabeled_job(sc.get("relabel_configs"), "target_label", "replacement")
            .unwrap_or_else(|| name.clone());
        jobs.push((format!("prometheus.yml job {name}"), job));
    }
    for folder in ["scaled", "sidecar", "egress"] {
        jobs.extend(service_monitor_jobs(&format!("deploy/kubernetes/{folder}")));
    }
    jobs
}

/// The `replacement` of the relabeling rule (of `rules`) whose `target` is `job`.
fn relabeled_job(
    rules: Option<&serde_yaml::Value>,
    target: &str,
    replacement: &str,
) -> Option<String> {
    rules?.as_sequence()?.iter().find_map(|r| {
        (r.get(target)?.as_str()? == "job")
            .then(|| r.get(replacement)?.as_str().map(str::to_string))?
    })
}

/// The jobs the ServiceMonitors of one Kubernetes example give the Services they select.
fn service_monitor_jobs(folder: &str) -> Vec<(String, String)> {
    use serde_yaml::Value;
    let docs: Vec<Value> = std::fs::read_dir(repo().join(folder))
        .expect("folder")
        .flat_map(|e| {
            let text = std::fs::read_to_string(e.expect("entry").path()).expect("read");
            serde_yaml::Deserializer::from_str(&text)
                .map(|d| Value::deserialize(d).expect("yaml"))
                .collect::<Vec<_>>()
        })
        .collect();
    let kind = |d: &Value, k: &str| d["kind"].as_str() == Some(k);
    let mut jobs = Vec::new();
    for monitor in docs.iter().filter(|d| kind(d, "ServiceMonitor")) {
        let selector = monitor["spec"]["selector"]["matchLabels"]
            .as_mapping()
            .expect("matchLabels");
        let selected = |svc: &&Value| {
            selector.iter().all(|(k, v)| {
                svc["metadata"]["labels"].get(k.as_str().unwrap_or_default()) == Some(v)
            })
        };
        for endpoint in monitor["spec"]["endpoints"]
            .as_sequence()
            .expect("endpoints")
        {
            let port = endpoint["port"].as_str().expect("port");
            let has_port = |svc: &&Value| {
                let ports = svc["spec"]["ports"].as_sequence().into_iter().flatten();
                ports.clone().any(|p| p["name"].as_str() == Some(port))
            };
            for svc in docs
                .iter()
                .filter(|d| kind(d, "Service"))
                .filter(selected)
                .filter(has_port)
            {
                let name = svc["metadata"]["name"].as_str().unwrap_or("?");
                let job = relabeled_job(endpoint.get("relabelings"), "targetLabel", "replacement")
                    .or_else(|| {
                        let label = monitor["spec"].get("jobLabel")?.as_str()?;
                        svc["metadata"]["labels"]
                            .get(label)?
                            .as_str()
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| name.to_string());
                jobs.push((format!("{folder} ServiceMonitor, Service {name}"), job));
            }
        }
    }
    jobs
}

#[test]
fn every_shipped_scrape_path_produces_a_job_the_down_alert_selects() {
    // An alert on up{job="mllp-proxy"} fires only for targets scraped under that job; the
    // Prometheus Operator names a ServiceMonitor's job after the Service unless told
    // otherwise. Each job the shipped files produce is fed to promtool with its target down:
    // MllpProxyDown must fire for every one.
    let jobs = shipped_jobs();
    assert!(jobs.len() >= 4, "{jobs:?}");
    let Some(promtool) = promtool() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        repo().join("deploy/prometheus/mllp-proxy.rules.yml"),
        dir.path().join("rules.yml"),
    )
    .expect("copy");
    let names: BTreeSet<&str> = jobs.iter().map(|(_, j)| j.as_str()).collect();
    for job in names {
        let test = format!(
            "rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n      - series: 'up{{job=\"{job}\",instance=\"p1:9575\"}}'\n        values: '0x10'\n    alert_rule_test:\n      - eval_time: 5m\n        alertname: MllpProxyDown\n        exp_alerts:\n          - exp_labels: {{ severity: critical, job: \"{job}\", instance: \"p1:9575\" }}\n            exp_annotations:\n              summary: \"mllp-proxy p1:9575 is down\"\n              description: \"Prometheus cannot scrape p1:9575 for 2 minutes. Senders behind it cannot deliver; check the process or pod.\"\n              runbook_url: \"https://mllp-proxy.invalid/docs/runbook.md#mllpproxydown\"\n"
        );
        let path = dir.path().join(format!("{job}.test.yml"));
        std::fs::write(&path, test).expect("write test");
        let out = std::process::Command::new(&promtool)
            .args(["test", "rules"])
            .arg(&path)
            .current_dir(dir.path())
            .output()
            .expect("promtool");
        let from: Vec<_> = jobs
            .iter()
            .filter(|(_, j)| j == job)
            .map(|(w, _)| w)
            .collect();
        assert!(
            out.status.success(),
            "MllpProxyDown does not fire for job {job} (from {from:?}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_prometheus_rule_object_is_the_rules_file() {
    // One source: the PrometheusRule is what the script makes of the rules file, and its
    // groups are the file's, rule for rule.
    let out = std::process::Command::new("bash")
        .arg(repo().join("deploy/prometheus/prometheusrule.sh"))
        .output()
        .expect("bash");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        read("deploy/prometheus/prometheusrule.yaml"),
        "deploy/prometheus/prometheusrule.yaml is stale: bash deploy/prometheus/prometheusrule.sh > deploy/prometheus/prometheusrule.yaml"
    );
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/prometheus/mllp-proxy.rules.yml")).expect("rules");
    let object: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/prometheus/prometheusrule.yaml")).expect("object");
    assert_eq!(object["kind"], "PrometheusRule");
    assert_eq!(object["spec"]["groups"], rules["groups"]);
}

#[test]
fn every_alert_links_to_its_runbook_entry() {
    // runbook_url ends in an anchor of docs/runbook.md, whose entry says what the alert means
    // and what to do.
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/prometheus/mllp-proxy.rules.yml")).expect("rules");
    let runbook = read("docs/runbook.md");
    let anchors: Vec<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    let alerts = rules["groups"][0]["rules"].as_sequence().expect("rules");
    assert!(alerts.len() >= 10);
    for rule in alerts {
        let name = rule["alert"].as_str().expect("alert name");
        let url = rule["annotations"]["runbook_url"].as_str().unwrap_or("");
        let anchor = url.rsplit_once("docs/runbook.md#").map(|(_, a)| a);
        assert_eq!(anchor, Some(name.to_lowercase().as_str()), "{name}: {url}");
        assert!(
            anchors.contains(&name.to_lowercase()),
            "docs/runbook.md has no entry ## {name}"
        );
    }
}
