//! The validation corpus (tests/data/corpus, expectations in tests/data/corpus.tsv) sent
//! through a real proxy in each validation mode.

use std::time::Duration;

use mllp_proxy::client::MllpClient;
use mllp_proxy::hl7::Message;

use crate::support::*;

const T: Duration = Duration::from_secs(5);

fn data_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// `\r\n` and `\n` to `\r`, and a final `\r`: what lenient mode may change, and nothing else.
fn normalised(data: &[u8]) -> Vec<u8> {
    mllp_proxy::hl7::normalise_terminators(data).into_owned()
}

/// MSA-1 and the ERR table 0357 code of a NAK (ERR-3 from v2.5, ERR-1.4 before).
fn nak_codes(nak: &[u8]) -> (String, String) {
    let m = Message::parse(nak).expect("NAK has MSH");
    let msa = m.segment(b"MSA").expect("NAK has MSA");
    let err = m.segment(b"ERR").expect("NAK has ERR");
    let code = match err.field(3).component(1) {
        c if !c.is_empty() => c,
        _ => err.field(1).subcomponent(4, 1),
    };
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (s(msa.field(1).as_bytes()), s(code))
}

/// Sends one corpus case on `client` and says how the outcome differs from `expected` (`None`:
/// as expected): forwarded as is (`fwd`) or normalised (`norm`) and the engine's AA relayed, a
/// NAK with the codes `nak:MSA-1:ERR` and nothing forwarded, an acknowledgment passed on
/// (`ackfwd`) or dropped (`drop`) without an answer, or the connection closed (`closed`).
async fn mismatch(
    client: &mut MllpClient,
    engine: &Engine,
    data: &[u8],
    expected: &str,
    what: &str,
    n: usize,
) -> Option<String> {
    let before = engine.received().len();
    client.send(data).await.expect("send");
    match expected {
        "fwd" | "norm" => {
            let ack = match client.recv().await {
                Ok(ack) => ack,
                Err(e) => return Some(format!("{what}, got {e}")),
            };
            let code = mllp_proxy::hl7::parse_ack(&ack).map(|a| a.code.to_string());
            let received = engine.received();
            let want = if expected == "fwd" {
                data.to_vec()
            } else {
                normalised(data)
            };
            // The stand-in engine answers CA to enhanced-mode messages.
            if !matches!(code.as_deref(), Some("AA" | "CA")) {
                return Some(format!("{what}, got answer {code:?}"));
            }
            let same = received.len() == before + 1 && received[before].as_ref() == want.as_slice();
            (!same).then(|| format!("{what}, engine got something else"))
        }
        nak if nak.starts_with("nak:") => {
            let answer = match client.recv().await {
                Ok(answer) => answer,
                Err(e) => return Some(format!("{what}, got {e}")),
            };
            let want: Vec<&str> = nak.split(':').skip(1).collect();
            let got = nak_codes(&answer);
            if (got.0.as_str(), got.1.as_str()) != (want[0], want[1]) {
                return Some(format!("{what}, got {got:?}"));
            }
            (engine.received().len() != before).then(|| format!("{what}, but it was forwarded"))
        }
        "ackfwd" | "drop" => {
            // Nothing comes back for an acknowledgment: the next answer is the probe's.
            let probe = format!("PROBE-{n}");
            let ack = client
                .exchange(&adt(&probe), T)
                .await
                .expect("probe answered");
            if msa(&ack) != ("AA".to_string(), probe) {
                return Some(format!("{what}, the acknowledgment was answered"));
            }
            let received = engine.received();
            let forwarded = received.len() == before + 2 && received[before].as_ref() == data;
            (forwarded != (expected == "ackfwd")).then(|| format!("{what}, forwarded={forwarded}"))
        }
        "closed" => client
            .recv()
            .await
            .ok()
            .map(|answer| format!("{what}, got {:?}", String::from_utf8_lossy(&answer))),
        other => panic!("unknown outcome {other} for {what}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_message_gets_its_expected_outcome_in_every_mode() {
    // 48 malformed or unusual messages × 4 route set-ups: forwarded as is, forwarded
    // normalised, NAKed with the expected codes, silently not answered, or closed.
    let table = std::fs::read_to_string(data_dir().join("corpus.tsv")).expect("corpus.tsv");
    let cases: Vec<Vec<&str>> = table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split('\t').collect())
        .collect();
    assert!(cases.len() >= 40, "corpus has {} cases", cases.len());
    let modes = [
        ("strict", "mode: strict"),
        ("lenient", "mode: lenient"),
        ("off", "mode: off"),
        (
            "allow",
            "mode: strict\n      message_types: [\"ADT^*\", \"ORU^R01\"]\n      versions: [\"2.3\", \"2.5.1\"]\n      processing_ids: [P]",
        ),
    ];
    let mut failures = Vec::new();
    for (col, (mode, yaml)) in modes.iter().enumerate() {
        let extra = format!("    validation:\n      {yaml}\n      max_message_bytes: 4096\n");
        let World {
            pki, engine, proxy, ..
        } = Harness::new().route_yaml(&extra).start().await;
        let target = pki.target(proxy.routes()[0].1, ClientCert::Good);
        let mut client = MllpClient::connect(&target, T).await.expect("connect");
        for (n, case) in cases.iter().enumerate() {
            let (name, expected) = (case[0], case[col + 1]);
            let data = std::fs::read(data_dir().join("corpus").join(format!("{name}.hl7")))
                .expect("case file");
            let what = format!("{mode}/{name}: expected {expected}");
            let mismatch = mismatch(&mut client, &engine, &data, expected, &what, n).await;
            failures.extend(mismatch);
            if expected == "closed" {
                client = MllpClient::connect(&target, T).await.expect("reconnect");
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
