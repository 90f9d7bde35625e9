//! The alert rules against series recorded from running proxies in the conditions the alerts
//! describe. A [`Recorder`] scrapes each proxy's `/metrics` every `STEP`; the recording is
//! replayed to promtool with each step as one minute (timestamps scaled to match), and
//! promtool says which alerts fire when.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mllp_proxy::client::{MllpClient, http_get};
use tokio_util::sync::CancellationToken;

use crate::egress::{MUTUAL, egress_yaml, start_egress};
use crate::support::*;

/// One step of a recording: one minute of promtool time.
const STEP: Duration = Duration::from_millis(400);
const T: Duration = Duration::from_secs(10);

/// Scrapes of several proxies, one per step, taken by a task of its own.
struct Recorder {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Recording>,
}

/// What a [`Recorder`] took: per step, per instance, the body of `/metrics` (`None`: the
/// scrape failed, as for a target that is down).
struct Recording {
    instances: Vec<String>,
    steps: Vec<Vec<Option<String>>>,
    started: f64,
}

impl Recorder {
    fn start(instances: Vec<(&str, SocketAddr)>) -> Self {
        let stop = CancellationToken::new();
        let names = instances.iter().map(|(n, _)| n.to_string()).collect();
        let admins: Vec<SocketAddr> = instances.iter().map(|(_, a)| *a).collect();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut recording = Recording {
                instances: names,
                steps: Vec::new(),
                started: unix_now(),
            };
            let mut tick = tokio::time::interval(STEP);
            loop {
                tokio::select! {
                    _ = token.cancelled() => return recording,
                    _ = tick.tick() => {}
                }
                let mut step = Vec::new();
                for admin in &admins {
                    step.push(http_get(*admin, "/metrics").await.ok());
                }
                recording.steps.push(step);
            }
        });
        Recorder { stop, task }
    }

    /// Lets `steps` more steps be recorded.
    async fn record(&self, steps: u32) {
        tokio::time::sleep(STEP * steps).await;
    }

    async fn finish(self) -> Recording {
        self.stop.cancel();
        self.task.await.expect("recorder")
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Recording {
    /// promtool's `input_series`: every series of every scrape with `job` and `instance`
    /// labels, `up` per instance, and timestamps moved onto the replay's time line.
    fn input_series(&self) -> String {
        let scale = 60.0 / STEP.as_secs_f64();
        let mut series: BTreeMap<String, Vec<Option<f64>>> = BTreeMap::new();
        let n = self.steps.len();
        for (i, step) in self.steps.iter().enumerate() {
            for (instance, body) in self.instances.iter().zip(step) {
                let up = format!("up{{job=\"mllp-proxy\",instance=\"{instance}\"}}");
                series.entry(up).or_insert_with(|| vec![None; n])[i] =
                    Some(if body.is_some() { 1.0 } else { 0.0 });
                let Some(body) = body else { continue };
                for s in mllp_proxy::scrape::samples(body) {
                    let labels = s.labels.trim_start_matches('{').trim_end_matches('}');
                    let sep = if labels.is_empty() { "" } else { "," };
                    let key = format!(
                        "{}{{job=\"mllp-proxy\",instance=\"{instance}\"{sep}{labels}}}",
                        s.name
                    );
                    // A point in time, as the replay's clock reads it.
                    let value = if s.name.ends_with("_timestamp_seconds") {
                        (s.value - self.started) * scale
                    } else {
                        s.value
                    };
                    series.entry(key).or_insert_with(|| vec![None; n])[i] = Some(value);
                }
            }
        }
        let mut out = String::new();
        for (key, values) in series {
            let values: Vec<String> = values
                .iter()
                .map(|v| v.map_or("_".to_string(), |v| format!("{v}")))
                .collect();
            out.push_str(&format!(
                "      - series: '{key}'\n        values: '{}'\n",
                values.join(" ")
            ));
        }
        out
    }

    /// Runs promtool: at each `(minute, firing)`, exactly the alerts `firing` fire, each
    /// written `Name{label="value",…}` with the labels of `count by (alertname, instance,
    /// route, target)` (absent ones left out).
    fn assert_alerts(&self, name: &str, expected: &[(u32, &[&str])]) {
        let Some(promtool) = promtool() else { return };
        assert!(
            self.steps.len() as u32 > expected.iter().map(|e| e.0).max().unwrap_or(0),
            "{name}: only {} steps recorded",
            self.steps.len()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(
            repo().join("deploy/prometheus/mllp-proxy.rules.yml"),
            dir.path().join("rules.yml"),
        )
        .expect("copy rules");
        let mut cases = String::new();
        for (minute, firing) in expected {
            cases.push_str(&format!(
                "      - expr: count by (alertname, instance, route, target) (ALERTS{{alertstate=\"firing\"}})\n        eval_time: {minute}m\n        exp_samples:{}\n",
                if firing.is_empty() { " []" } else { "" }
            ));
            for alert in *firing {
                let (alertname, labels) = alert.split_once('{').unwrap_or((alert, "}"));
                let labels = labels.trim_end_matches('}');
                let sep = if labels.is_empty() { "" } else { "," };
                cases.push_str(&format!(
                    "          - labels: '{{alertname=\"{alertname}\"{sep}{labels}}}'\n            value: 1\n"
                ));
            }
        }
        let test = format!(
            "rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n  - name: {name}\n    interval: 1m\n    input_series:\n{}    promql_expr_test:\n{cases}",
            self.input_series()
        );
        std::fs::write(dir.path().join("test.yml"), &test).expect("write test");
        let out = std::process::Command::new(promtool)
            .args(["test", "rules", "test.yml"])
            .current_dir(dir.path())
            .output()
            .expect("promtool");
        if !out.status.success() {
            // Kept for a look: the recording and the cases as promtool read them.
            let kept = dir.keep();
            panic!(
                "{name}: {}{} (in {})",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                kept.display()
            );
        }
    }
}

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Sends a message every `every` to `target`, reconnecting after a failure, until `stop`.
pub fn keep_sending(
    target: mllp_proxy::client::ClientTarget,
    every: Duration,
) -> CancellationToken {
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        let mut client = None;
        let mut n = 0u64;
        while !token.is_cancelled() {
            n += 1;
            if client.is_none() {
                client = MllpClient::connect(&target, T).await.ok();
            }
            if let Some(c) = client.as_mut()
                && c.exchange(&adt(&format!("K-{n}")), T).await.is_err()
            {
                client = None;
            }
            tokio::time::sleep(every).await;
        }
    });
    stop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_engine_fires_upstream_down_and_all_targets_down_without_traffic() {
    let World { proxy, config, .. } = Harness::new()
        .engine_down()
        .health_checks("1s")
        .start()
        .await;
    let target = config.routes[0].upstream.targets[0].clone();
    let recorder = Recorder::start(vec![("p1", proxy.admin())]);
    recorder.record(14).await;
    let rec = recorder.finish().await;
    let down =
        format!("MllpProxyUpstreamDown{{instance=\"p1\",route=\"test\",target=\"{target}\"}}");
    let all = "MllpProxyAllTargetsDown{instance=\"p1\",route=\"test\"}";
    rec.assert_alerts("engine down", &[(3, &[]), (12, &[&down, all])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_standby_fires_upstream_down_while_the_primary_serves() {
    let standby = dead_addr().to_string();
    let world = Harness::new()
        .target_after(&standby)
        .health_checks("1s")
        .start()
        .await;
    let sending = keep_sending(
        world
            .pki
            .target(world.proxy.routes()[0].1, ClientCert::Good),
        Duration::from_millis(200),
    );
    let recorder = Recorder::start(vec![("p1", world.proxy.admin())]);
    recorder.record(14).await;
    sending.cancel();
    let rec = recorder.finish().await;
    let down =
        format!("MllpProxyUpstreamDown{{instance=\"p1\",route=\"test\",target=\"{standby}\"}}");
    rec.assert_alerts("standby down", &[(12, &[&down])]);
    assert!(!world.engine.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_that_refuses_our_certificate_fires_upstream_down() {
    // The partner is an mllp-proxy whose allowed_clients does not name us: its access_denied
    // alert fails every probe.
    let partner = Harness::new()
        .route_yaml("    allowed_clients:\n      - cn: billing-sender\n")
        .start()
        .await;
    let to = partner.proxy.routes()[0].1.to_string();
    let yaml = egress_yaml(std::slice::from_ref(&to), MUTUAL, "")
        .replace("health_check_interval: 0", "health_check_interval: 1s");
    let egress = start_egress(&partner.pki, &yaml).await;
    let recorder = Recorder::start(vec![("p1", egress.admin())]);
    recorder.record(14).await;
    let rec = recorder.finish().await;
    let down = format!("MllpProxyUpstreamDown{{instance=\"p1\",route=\"egress\",target=\"{to}\"}}");
    let all = "MllpProxyAllTargetsDown{instance=\"p1\",route=\"egress\"}";
    rec.assert_alerts("partner refuses us", &[(12, &[&down, all])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_fires_config_reload_failing() {
    // The file is polled every step, as every 30 s by default: a refused file is retried, and
    // counted, at each poll.
    let world = Harness::new()
        .top_yaml("config_reload_interval: 400ms\n")
        .start_live()
        .await;
    let recorder = Recorder::start(vec![("p1", world.proxy.admin())]);
    recorder.record(3).await;
    let broken = world
        .yaml()
        .replace("drain_timeout: 10s", "drain_timeout: soon");
    std::fs::write(world.pki.path("proxy.yaml"), broken).expect("write");
    let refused = world.proxy.reload().await;
    assert!(
        matches!(refused, mllp_proxy::proxy::Reload::Refused(_)),
        "{refused:?}"
    );
    recorder.record(13).await;
    let rec = recorder.finish().await;
    let failing = "MllpProxyConfigReloadFailing{instance=\"p1\"}";
    rec.assert_alerts("reload refused", &[(2, &[]), (13, &[failing])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_messages_is_summed_over_replicas_so_an_unused_replica_does_not_fire() {
    // Two replicas of route test, a sender on the first only; route idle has none at all.
    let first = Harness::new().start().await;
    let second = Harness::new().start().await;
    let idle = Harness::new()
        .edit(|c| c.routes[0].name = "idle".into())
        .start()
        .await;
    let sending = keep_sending(
        first
            .pki
            .target(first.proxy.routes()[0].1, ClientCert::Good),
        Duration::from_millis(300),
    );
    let recorder = Recorder::start(vec![
        ("p1", first.proxy.admin()),
        ("p2", second.proxy.admin()),
        ("p3", idle.proxy.admin()),
    ]);
    recorder.record(45).await;
    sending.cancel();
    let rec = recorder.finish().await;
    // Without an `instance` label: the rule sums the replicas. (With less than the hour's
    // window recorded, a route quiet from the start counts as quiet for the hour.)
    let quiet = "MllpProxyNoMessages{route=\"idle\"}";
    rec.assert_alerts("replicas", &[(10, &[]), (20, &[quiet]), (40, &[quiet])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_restart_under_traffic_does_not_page() {
    // A sidecar pod's rollout restarts the engine: for a second every exchange fails, then all
    // flow again. Senders resend; neither the warning nor the page fires.
    let world = Harness::new().health_checks("1s").start().await;
    let addr = world.engine.addr;
    let sending = keep_sending(
        world
            .pki
            .target(world.proxy.routes()[0].1, ClientCert::Good),
        Duration::from_millis(50),
    );
    let recorder = Recorder::start(vec![("p1", world.proxy.admin())]);
    recorder.record(6).await;
    let World { proxy, engine, .. } = world;
    drop(engine);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _engine = Engine::start_on(addr, Behaviour::Ack).await;
    recorder.record(26).await;
    sending.cancel();
    let rec = recorder.finish().await;
    let failed = "mllp_proxy_upstream_exchanges_failed_total";
    let last = rec
        .steps
        .last()
        .and_then(|s| s[0].clone())
        .unwrap_or_default();
    let failures: f64 = mllp_proxy::scrape::samples(&last)
        .filter(|s| s.name == failed)
        .map(|s| s.value)
        .sum();
    assert!(failures > 0.0, "the restart failed no exchange");
    let quiet: &[&str] = &[];
    let minutes: Vec<(u32, &[&str])> = (8..31).map(|m| (m, quiet)).collect();
    rec.assert_alerts("engine restart", &minutes);
    drop(proxy);
}
