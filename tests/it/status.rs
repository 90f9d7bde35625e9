//! The live view: `/status` and `mllp-proxy status` name who is connected, which target is
//! down and why, and the last reload, over a mutual-TLS admin port; nothing from messages.

use std::time::Duration;

use mllp_proxy::client::MllpClient;

use crate::support::*;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_each_sender_the_down_target_and_the_refused_reload_without_control_ids() {
    let names = ["lab", "pharmacy", "radiology", "billing"];
    let (world, mut senders) = four_senders(&names).await;
    let (pki, proxy) = (&world.pki, &world.proxy);
    // A configuration the proxy refuses: the running one stays, and status says so.
    let broken = world
        .yaml()
        .replace("drain_timeout: 10s", "drain_timeout: soon");
    std::fs::write(pki.path("proxy.yaml"), broken).expect("write");
    let refused = proxy.reload().await;
    assert!(
        matches!(refused, mllp_proxy::proxy::Reload::Refused(_)),
        "{refused:?}"
    );
    let down = world.config.routes[0].upstream.targets[1].clone();
    let status = |json: bool| status_of(pki, proxy, json);
    // The down target is probed every second.
    let probed = eventually(T, || async {
        let table = status(false).await;
        table
            .lines()
            .any(|l| l.contains(&down) && l.contains("DOWN") && l.contains("refused"))
    });
    assert!(probed.await, "{}", status(false).await);
    let table = status(false).await;
    for n in names {
        let line = table
            .lines()
            .find(|l| l.contains(&format!("cn:{n}-sender")));
        assert!(
            line.is_some_and(|l| l.contains("127.0.0.1:") && l.contains(" 1 ")),
            "{n}: {table}"
        );
    }
    assert!(table.contains("last reload: refused"), "{table}");
    assert!(table.contains("shutdown.drain_timeout"), "{table}");
    assert!(table.contains("sessions 4"), "{table}");
    let json = status(true).await;
    for text in [&table, &json] {
        assert!(
            !text.contains("CTRL-"),
            "a control ID in the status: {text}"
        );
    }
    let doc: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(doc["schema"], "mllp-proxy/status/v1");
    let sessions = doc["routes"][0]["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 4);
    assert!(
        sessions
            .iter()
            .all(|s| s["messages"] == 1 && s["in_flight"] == false)
    );
    assert!(sessions.iter().all(|s| s["last_message"].is_string()));

    // A sender that leaves is gone from the view.
    senders.remove(0).close().await;
    let left = eventually(T, || async {
        !status(false).await.contains("cn:lab-sender")
    });
    assert!(left.await);
    assert!(status(false).await.contains("sessions 3"));
}

/// `mllp-proxy status` against `proxy`'s mutual-TLS admin port (`--json`: the document).
async fn status_of(pki: &Pki, proxy: &mllp_proxy::proxy::RunningProxy, json: bool) -> String {
    let admin = format!("https://127.0.0.1:{}", proxy.admin().port());
    let mut cmd = std::process::Command::new(binary());
    cmd.args(["status", "--admin", &admin, "--server-name", "localhost"])
        .arg("--ca")
        .arg(pki.path("ca.crt"))
        .arg("--cert")
        .arg(pki.path("client.crt"))
        .arg("--key")
        .arg(pki.path("client.key"));
    if json {
        cmd.arg("--json");
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run status"))
        .await
        .expect("task");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A proxy with a down second target, health checks every second and a mutual-TLS admin
/// port, and one connected sender per name (certificate `CN={name}-sender`), each having sent
/// one message with control ID `CTRL-{name}-7731`.
async fn four_senders(names: &[&str]) -> (World, Vec<MllpClient>) {
    let h = Harness::new()
        .target_after(dead_addr())
        .health_checks("1s")
        .admin_yaml("  tls:\n    certificate: server.crt\n    private_key: server.key\n    client_ca: ca.crt\n");
    for n in names {
        let cn = format!("{n}-sender");
        h.pki
            .issue_client(&format!("s-{n}"), &cn, &[], &[], false, false);
    }
    let world = h.start_live().await;
    let route = world.proxy.routes()[0].1;
    let mut senders = Vec::new();
    for n in names {
        let target = world.pki.target_named(route, &format!("s-{n}"));
        let mut c = MllpClient::connect(&target, T).await.expect("connect");
        let ack = c.exchange(&adt(&format!("CTRL-{n}-7731")), T).await;
        assert_eq!(msa(&ack.expect("ACK")).0, "AA");
        senders.push(c);
    }
    (world, senders)
}
