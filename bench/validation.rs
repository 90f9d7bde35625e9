//! Cost of strict validation per message, in isolation: `cargo bench --bench validation`.
//! Prints ns per message and throughput at 1 KB and 64 KB. No external harness: the loop is
//! simple enough that Instant and black_box give stable medians.

use std::hint::black_box;
use std::time::Instant;

use mllp_proxy::config::{ValidationConfig, ValidationMode};
use mllp_proxy::hl7::{AckCode, Header, Validator, build_ack, parse_ack};
use mllp_proxy::mllp::MllpCodec;

fn main() {
    // `cargo bench` passes --bench; under `cargo test --all-targets` this only checks that
    // the benchmark's messages validate, without spending seconds timing them.
    let timing = std::env::args().any(|a| a == "--bench");
    for size in [1024usize, 64 * 1024] {
        let msg = mllp_proxy::cli::bench::message(0, 1, size);
        for mode in [
            ValidationMode::Strict,
            ValidationMode::Lenient,
            ValidationMode::Off,
        ] {
            let v = Validator::new(&ValidationConfig {
                mode,
                max_message_bytes: 1 << 20,
                message_types: vec!["ADT^*".into(), "ORU^R01".into()],
                versions: vec!["2.5.1".into()],
                processing_ids: vec!["P".into()],
            });
            assert!(v.check(&msg).is_ok(), "bench message must be valid");
            if !timing {
                continue;
            }
            let ns = median_ns(|| {
                let checked = v.check(black_box(&msg));
                black_box(checked.is_ok());
            });
            println!(
                "validate {mode:<8} {size:>6} B: {ns:>9.1} ns/msg  {:>8.0} MB/s",
                size as f64 / ns * 1e3,
                mode = format!("{mode:?}").to_lowercase()
            );
        }
        if !timing {
            continue;
        }
        // For scale: what the forwarding path does to every message regardless of mode.
        let ns = median_ns(|| {
            let h = Header::parse(black_box(&msg)).map(|h| h.control_id.len());
            black_box(h.is_ok());
            black_box(MllpCodec::frame(&msg));
        });
        println!("header+frame      {size:>6} B: {ns:>9.1} ns/msg");
        // The two reads every exchange makes besides validation: the message's MSH and the
        // engine's ACK (its delimiters, then MSA).
        let ns = median_ns(|| {
            black_box(
                Header::parse(black_box(&msg))
                    .map(|h| h.control_id.len())
                    .ok(),
            );
        });
        println!("header            {size:>6} B: {ns:>9.1} ns/msg");
        let ack = build_ack(Header::parse(&msg).ok().as_ref(), AckCode::AA);
        let ns = median_ns(|| {
            black_box(parse_ack(black_box(&ack)).map(|a| a.control_id.len()));
        });
        println!("ACK's MSA         {size:>6} B: {ns:>9.1} ns/msg");
    }
}

/// Median over 7 runs of the mean time of one call, each run about 50 ms.
fn median_ns(mut f: impl FnMut()) -> f64 {
    let mut per_call = Vec::new();
    let mut iters = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        if t.elapsed().as_millis() >= 50 {
            break;
        }
        iters *= 2;
    }
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        per_call.push(t.elapsed().as_nanos() as f64 / iters as f64);
    }
    per_call.sort_by(f64::total_cmp);
    per_call[3]
}
