//! The live view: `/status` and `mllp-proxy status` name who is connected, which target is
//! down and why, and the last reload, over a mutual-TLS admin port; nothing from messages.

use std::time::Duration;

use mllp_proxy::client::MllpClient;

use crate::support::*;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_each_sender_the_down_target_and_the_refused_reload_without_control_ids() {
    let h = Harness::new()
        .target_after(unused_addr().await)
        .health_checks("1s")
        .admin_yaml("  tls:\n    certificate: server.crt\n    private_key: server.key\n    client_ca: ca.crt\n");
    let names = ["lab", "pharmacy", "radiology", "billing"];
    for n in names {
        h.pki.issue_client(
            &format!("s-{n}"),
            &format!("{n}-sender"),
            &[],
            &[],
            false,
            false,
        );
    }
    let world = h.start_live().await;
    let (pki, proxy) = (&world.pki, &world.proxy);
    let route = proxy.routes()[0].1;
    let mut senders = Vec::new();
    for n in names {
        let mut c = MllpClient::connect(&pki.target_named(route, &format!("s-{n}")), T)
            .await
            .expect("connect");
        let ack = c.exchange(&adt(&format!("CTRL-{n}-7731")), T).await;
        assert_eq!(msa(&ack.expect("ACK")).0, "AA");
        senders.push(c);
    }
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
    let status = |json: bool| {
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
        tokio::task::spawn_blocking(move || {
            let out = cmd.output().expect("run status");
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    // The down target is probed every second.
    let probed = eventually(T, || async {
        let table = status(false).await.expect("status");
        table
            .lines()
            .any(|l| l.contains(&down) && l.contains("DOWN") && l.contains("refused"))
    });
    assert!(probed.await, "{}", status(false).await.expect("status"));
    let table = status(false).await.expect("status");
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
    let json = status(true).await.expect("status");
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
        !status(false)
            .await
            .expect("status")
            .contains("cn:lab-sender")
    });
    assert!(left.await);
    assert!(status(false).await.expect("status").contains("sessions 3"));
}
