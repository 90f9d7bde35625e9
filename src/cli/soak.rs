//! `mllp-proxy soak`: senders that behave like real MLLP senders (resend on a close, a time-out
//! or AR/CR; AE is final) drive the proxy in front of a fault-injecting `ack-server`, and then
//! the delivery promises are checked from what the senders saw, the engine's record file and the
//! proxy's metrics:
//!
//! - no positive ACK that the engine did not write completely, for that very message;
//! - every ACK's MSA-2 names the message in flight, and every relayed ACK is byte-identical to
//!   the one the engine wrote;
//! - every message is finally answered (AA, or AE);
//! - per sender, the engine receives messages in order;
//! - the metrics equal what the senders saw;
//! - the proxy's descriptors return to their start value and its memory stays bounded.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::TlsArgs;
use crate::cli::ack_server::Fault;
use crate::cli::send::parse_duration_arg;
use crate::client::{ClientError, ClientTarget, MllpClient, http_get};
use crate::config::FailureMode;
use crate::hl7::{AckCode, Header, RejectReason, parse_ack};
use crate::label::Label;
use crate::metrics::samples;

/// Arguments of `soak`.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// The proxy route, HOST:PORT (with the TLS options).
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Concurrent senders.
    #[arg(long, default_value_t = 16)]
    pub senders: usize,
    /// Messages per sender, each with its own control ID.
    #[arg(long, default_value_t = 1000)]
    pub messages: usize,
    /// The record file the engine (`ack-server --log`) writes.
    #[arg(long)]
    pub engine_log: PathBuf,
    /// The proxy's admin address, for /metrics.
    #[arg(long)]
    pub admin: SocketAddr,
    /// The proxy's process ID, to sample its memory and open descriptors.
    #[arg(long)]
    pub proxy_pid: Option<u32>,
    /// The route's `on_upstream_failure` (`nak` allows AR answers written by the proxy).
    #[arg(long, default_value = "close", value_parser = FailureMode::parse)]
    pub mode: FailureMode,
    /// A sender gives up on one attempt after this (set it above what the proxy can take).
    #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
    pub timeout: Duration,
    /// Attempts per message before it counts as never answered.
    #[arg(long, default_value_t = 40)]
    pub max_attempts: usize,
    /// Prefix of the control IDs (make it unique per run).
    #[arg(long, default_value = "SOAK")]
    pub prefix: String,
    /// Fail unless every fault kind was injected at least once.
    #[arg(long)]
    pub require_every_fault: bool,
    /// Peak proxy memory allowed, in MiB.
    #[arg(long, default_value_t = 256)]
    pub max_rss_mib: u64,
}

/// What one sender saw.
#[derive(Default)]
struct SenderLog {
    /// Every answer: (control ID in flight, the answer's bytes).
    answers: Vec<(String, Vec<u8>)>,
    attempts: u64,
    /// Attempts that ended with the connection closed and no answer.
    closed: u64,
    /// Attempts the sender itself gave up on.
    timeouts: u64,
    /// Control IDs never answered AA or AE.
    unanswered: Vec<String>,
}

/// One line of the engine's record file (see `ack-server --log`).
#[derive(serde::Deserialize)]
struct EngineRecord {
    seq: u64,
    control_id: String,
    fault: String,
    ack_id: Option<String>,
    ack: Option<String>,
    ack_complete: bool,
}

/// Resource samples of the proxy process.
#[derive(Default, Clone, Copy)]
struct Usage {
    rss_kib: u64,
    fds: u64,
}

/// Runs the senders, checks every invariant, prints the table; `Ok(false)` on any violation.
pub async fn run(args: SoakArgs) -> Result<bool, ClientError> {
    let target = args.tls.target(&args.to)?;
    let start_usage = args.proxy_pid.map(usage).transpose()?;
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = args.proxy_pid.map(|pid| {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = Usage::default();
            while sampling.load(Ordering::Relaxed) {
                if let Ok(u) = usage(pid) {
                    peak.rss_kib = peak.rss_kib.max(u.rss_kib);
                    peak.fds = peak.fds.max(u.fds);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            peak
        })
    });

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.senders);
    for s in 0..args.senders {
        let target = target.clone();
        let prefix = format!("{}{s}-", args.prefix);
        let (n, timeout, max) = (args.messages, args.timeout, args.max_attempts);
        tasks.push(tokio::spawn(async move {
            sender(&target, &prefix, n, timeout, max).await
        }));
    }
    let mut logs = Vec::with_capacity(args.senders);
    for t in tasks {
        logs.push(
            t.await
                .map_err(|e| ClientError(format!("sender task: {e}")))?,
        );
    }
    let elapsed = started.elapsed();

    // Sessions close as the senders leave; give the proxy a moment to release them.
    let mut end_usage = None;
    if let (Some(pid), Some(start)) = (args.proxy_pid, start_usage) {
        for _ in 0..50 {
            let u = usage(pid)?;
            end_usage = Some(u);
            if u.fds <= start.fds {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    sampling.store(false, Ordering::Relaxed);
    let peak = match sampler {
        Some(t) => Some(t.await.map_err(|e| ClientError(format!("sampler: {e}")))?),
        None => None,
    };

    let engine = read_engine_log(&args.engine_log)?;
    let metrics = http_get(args.admin, "/metrics").await?;
    let mut report = Report::default();
    report.check(&args, &logs, &engine, &metrics);
    if let (Some(start), Some(peak), Some(end)) = (start_usage, peak, end_usage) {
        report.resources(&args, start, peak, end);
    }
    report.print(&args, &logs, &engine, elapsed);
    Ok(report.violations.is_empty())
}

/// One sender: each message until AA or AE, resending on close, time-out and AR/CR.
async fn sender(
    target: &ClientTarget,
    prefix: &str,
    n: usize,
    timeout: Duration,
    max_attempts: usize,
) -> SenderLog {
    let mut log = SenderLog::default();
    let mut client: Option<MllpClient> = None;
    for i in 0..n {
        let id = format!("{prefix}{i}");
        let msg = message(&id, i);
        let mut answered = false;
        for _ in 0..max_attempts {
            let c = match client.as_mut() {
                Some(c) => c,
                None => match MllpClient::connect(target, timeout).await {
                    Ok(c) => client.insert(c),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            log.attempts += 1;
            let exchange = async {
                c.send(&msg).await?;
                c.recv().await
            };
            let answer = match tokio::time::timeout(timeout, exchange).await {
                Ok(Ok(a)) => a,
                Ok(Err(_)) => {
                    log.closed += 1;
                    client = None;
                    continue;
                }
                Err(_) => {
                    log.timeouts += 1;
                    client = None;
                    continue;
                }
            };
            let code = parse_ack(&answer).map(|a| a.code);
            log.answers.push((id.clone(), answer.to_vec()));
            if matches!(
                code,
                Some(AckCode::AA | AckCode::CA | AckCode::AE | AckCode::CE)
            ) {
                answered = true;
                break;
            }
        }
        if !answered {
            log.unanswered.push(id);
        }
    }
    if let Some(c) = client {
        c.close().await;
    }
    log
}

/// A synthetic ADT^A01 (made-up patient) with control ID `id`.
fn message(id: &str, i: usize) -> Vec<u8> {
    format!(
        "MSH|^~\\&|SOAK|WARD|ENGINE|HOSP|20261126120000||ADT^A01^ADT_A01|{id}|P|2.5.1\r\
         EVN|A01|20261126120000\r\
         PID|1||SOAK-{i}^^^HOSP^MR||SYNTHETIC^PATIENT||19800101|U\r\
         PV1|1|I|WARD^101^1\r"
    )
    .into_bytes()
}

fn read_engine_log(path: &PathBuf) -> Result<Vec<EngineRecord>, ClientError> {
    let f = std::fs::File::open(path)
        .map_err(|e| ClientError(format!("engine log {}: {e}", path.display())))?;
    let mut records = Vec::new();
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| ClientError(format!("engine log: {e}")))?;
        let r: EngineRecord = serde_json::from_str(&line)
            .map_err(|e| ClientError(format!("engine log line {}: {e}", n + 1)))?;
        records.push(r);
    }
    records.sort_by_key(|r| r.seq);
    Ok(records)
}

/// Memory and open descriptors of `pid`, from /proc.
fn usage(pid: u32) -> Result<Usage, ClientError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| ClientError(format!("/proc/{pid}/status: {e}")))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| ClientError(format!("/proc/{pid}/fd: {e}")))?
        .count() as u64;
    Ok(Usage { rss_kib, fds })
}

/// The sum of a metric's samples whose labels include every `(name, value)` of `with`.
fn metric_sum(text: &str, name: &str, with: &[(&str, &str)]) -> f64 {
    samples(text)
        .filter(|s| s.name == name && with.iter().all(|(k, v)| s.has(k, v)))
        .map(|s| s.value)
        .sum()
}

/// What senders were answered, held against what the engine wrote.
#[derive(Default)]
struct Answers {
    /// Answers that are no ACK the engine wrote for that message.
    fabricated: Vec<String>,
    /// ACKs whose MSA-2 is another message.
    misrouted: Vec<String>,
    /// Relayed ACKs that differ from the engine's bytes.
    altered: Vec<String>,
    /// Engine ACKs relayed, per MSA-1.
    engine_codes: BTreeMap<&'static str, u64>,
    /// AR/CR written by the proxy itself (`on_upstream_failure: nak`).
    proxy_naks: u64,
}

impl Answers {
    fn of(mode: FailureMode, logs: &[SenderLog], engine: &[EngineRecord]) -> Self {
        let by_ack_id: HashMap<&str, &EngineRecord> = engine
            .iter()
            .filter_map(|r| Some((r.ack_id.as_deref()?, r)))
            .collect();
        let mut a = Answers::default();
        for (id, answer) in logs.iter().flat_map(|l| &l.answers) {
            let Some(info) = parse_ack(answer) else {
                a.fabricated.push(format!("{id}: answer without MSA"));
                continue;
            };
            if info.control_id != id.as_bytes() {
                a.misrouted.push(format!(
                    "{id} answered for {}",
                    String::from_utf8_lossy(info.control_id)
                ));
            }
            let ack_id = Header::parse(answer)
                .map(|h| String::from_utf8_lossy(h.control_id).into_owned())
                .unwrap_or_default();
            match by_ack_id.get(ack_id.as_str()) {
                Some(rec) => {
                    if rec.control_id != *id || !rec.ack_complete {
                        a.fabricated.push(format!(
                            "{id}: ACK {ack_id} was written for {} (complete: {})",
                            rec.control_id, rec.ack_complete
                        ));
                    }
                    if rec.ack.as_deref().map(str::as_bytes) != Some(&answer[..]) {
                        a.altered
                            .push(format!("{id}: ACK {ack_id} differs from the engine's"));
                    }
                    *a.engine_codes.entry(info.code.label()).or_default() += 1;
                }
                None if mode == FailureMode::Nak
                    && matches!(info.code, AckCode::AR | AckCode::CR) =>
                {
                    a.proxy_naks += 1;
                }
                None => a.fabricated.push(format!(
                    "{id}: {} {ack_id} was never written by the engine",
                    info.code
                )),
            }
        }
        a
    }
}

/// Messages the engine received out of one sender's order.
fn out_of_order(engine: &[EngineRecord]) -> Vec<String> {
    let mut out = Vec::new();
    let mut highest: HashMap<&str, usize> = HashMap::new();
    for r in engine {
        let Some((sender, i)) = r
            .control_id
            .rsplit_once('-')
            .and_then(|(s, i)| Some((s, i.parse::<usize>().ok()?)))
        else {
            continue;
        };
        let top = highest.entry(sender).or_insert(i);
        if i < *top {
            out.push(format!("{} after {sender}-{top}", r.control_id));
        }
        *top = (*top).max(i);
    }
    out
}

/// Figures and violations, in the order they are printed.
#[derive(Default)]
struct Report {
    rows: Vec<(String, String)>,
    violations: Vec<String>,
}

impl Report {
    fn row(&mut self, name: &str, value: impl std::fmt::Display) {
        self.rows.push((name.to_string(), value.to_string()));
    }

    /// A figure that must be zero.
    fn must_be_zero(&mut self, name: &str, n: usize, examples: &[String]) {
        self.row(name, n);
        if n > 0 {
            let shown: Vec<_> = examples.iter().take(5).cloned().collect();
            self.violations
                .push(format!("{name}: {n} (e.g. {})", shown.join("; ")));
        }
    }

    fn check(
        &mut self,
        args: &SoakArgs,
        logs: &[SenderLog],
        engine: &[EngineRecord],
        metrics: &str,
    ) {
        let answers = Answers::of(args.mode, logs, engine);
        let attempts: u64 = logs.iter().map(|l| l.attempts).sum();
        let closed: u64 = logs.iter().map(|l| l.closed).sum();
        self.row(
            "senders x messages",
            format!("{} x {}", args.senders, args.messages),
        );
        self.row("sender attempts (first sends and resends)", attempts);
        self.row(
            "messages received by the engine (with repeats)",
            engine.len(),
        );
        self.faults(args, engine);
        let codes: Vec<String> = answers
            .engine_codes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        self.row("engine ACKs relayed to senders", codes.join(", "));
        self.row("AR written by the proxy (nak mode)", answers.proxy_naks);
        self.row("attempts closed without an answer", closed);
        self.delivery(logs, engine, &answers);
        self.metrics_match(metrics, &answers, attempts, closed);
    }

    /// The faults the engine injected, per kind; with `--require-every-fault`, each at least once.
    fn faults(&mut self, args: &SoakArgs, engine: &[EngineRecord]) {
        let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
        for r in engine {
            *faults.entry(r.fault.as_str()).or_default() += 1;
        }
        let injected: u64 = faults
            .iter()
            .filter(|(k, _)| Fault::from_name(k).is_some())
            .map(|(_, v)| v)
            .sum();
        self.row("faults injected by the engine", injected);
        let per_fault: Vec<String> = Fault::ALL
            .iter()
            .map(|f| format!("{} {}", f.name(), faults.get(f.name()).unwrap_or(&0)))
            .collect();
        self.row("  per kind", per_fault.join(", "));
        if args.require_every_fault {
            let missing: Vec<String> = Fault::ALL
                .iter()
                .filter(|f| !faults.contains_key(f.name()))
                .map(|f| f.name().to_string())
                .collect();
            if !missing.is_empty() {
                self.violations
                    .push(format!("fault kinds never injected: {}", missing.join(" ")));
            }
        }
    }

    /// The delivery promises: no fabricated, misrouted or altered ACK, nothing lost, in order.
    fn delivery(&mut self, logs: &[SenderLog], engine: &[EngineRecord], answers: &Answers) {
        let unanswered: Vec<String> = logs.iter().flat_map(|l| l.unanswered.clone()).collect();
        let out_of_order = out_of_order(engine);
        let timeouts: u64 = logs.iter().map(|l| l.timeouts).sum();
        self.must_be_zero(
            "positive ACKs the engine did not write for that message",
            answers.fabricated.len(),
            &answers.fabricated,
        );
        self.must_be_zero(
            "ACKs whose MSA-2 is not the message in flight",
            answers.misrouted.len(),
            &answers.misrouted,
        );
        self.must_be_zero(
            "relayed ACKs not byte-identical to the engine's",
            answers.altered.len(),
            &answers.altered,
        );
        self.must_be_zero(
            "messages never answered AA or AE",
            unanswered.len(),
            &unanswered,
        );
        self.must_be_zero(
            "per-sender order violations at the engine",
            out_of_order.len(),
            &out_of_order,
        );
        self.must_be_zero("attempts the sender timed out on", timeouts as usize, &[]);
    }

    /// The metrics must tell the operator exactly what the senders experienced.
    fn metrics_match(&mut self, metrics: &str, answers: &Answers, attempts: u64, closed: u64) {
        let mut mismatches = Vec::new();
        let mut expect = |what: &str, got: f64, want: u64| {
            if got != want as f64 {
                mismatches.push(format!("{what}: metrics {got}, senders {want}"));
            }
        };
        for code in AckCode::ALL.iter().filter(|c| **c != AckCode::Other) {
            let got = metric_sum(metrics, "mllp_proxy_acks_total", &[("code", code.label())]);
            expect(
                &format!("acks_total{{code={code}}}"),
                got,
                answers.engine_codes.get(code.label()).copied().unwrap_or(0),
            );
        }
        expect(
            "messages_received_total",
            metric_sum(metrics, "mllp_proxy_messages_received_total", &[]),
            attempts,
        );
        expect(
            "upstream_exchanges_failed_total",
            metric_sum(metrics, "mllp_proxy_upstream_exchanges_failed_total", &[]),
            closed + answers.proxy_naks,
        );
        let upstream = RejectReason::Upstream.label();
        expect(
            "messages_rejected_total{reason=upstream}",
            metric_sum(
                metrics,
                "mllp_proxy_messages_rejected_total",
                &[("reason", upstream)],
            ),
            answers.proxy_naks,
        );
        let dups = metric_sum(metrics, "mllp_proxy_upstream_duplicate_acks_total", &[]);
        self.row("repeated ACKs dropped by the proxy", dups);
        self.must_be_zero(
            "metrics that differ from what senders saw",
            mismatches.len(),
            &mismatches,
        );
    }

    fn resources(&mut self, args: &SoakArgs, start: Usage, peak: Usage, end: Usage) {
        let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
        self.row(
            "proxy RSS MiB: start / peak / end",
            format!(
                "{} / {} / {}",
                mib(start.rss_kib),
                mib(peak.rss_kib),
                mib(end.rss_kib)
            ),
        );
        self.row(
            "proxy open descriptors: start / peak / end",
            format!("{} / {} / {}", start.fds, peak.fds, end.fds),
        );
        if end.fds > start.fds {
            self.violations.push(format!(
                "descriptors not released: {} at start, {} after the load",
                start.fds, end.fds
            ));
        }
        if peak.rss_kib > args.max_rss_mib * 1024 {
            self.violations.push(format!(
                "proxy RSS peaked at {} MiB, over {} MiB",
                mib(peak.rss_kib),
                args.max_rss_mib
            ));
        }
    }

    fn print(&self, args: &SoakArgs, logs: &[SenderLog], engine: &[EngineRecord], t: Duration) {
        let attempts: u64 = logs.iter().map(|l| l.attempts).sum();
        println!(
            "soak: {} senders, on_upstream_failure {}, {:.1} s, {:.0} attempts/s, {} engine records",
            args.senders,
            args.mode.word(),
            t.as_secs_f64(),
            attempts as f64 / t.as_secs_f64().max(1e-9),
            engine.len()
        );
        println!("| figure | value |");
        println!("|---|---|");
        for (k, v) in &self.rows {
            println!("| {k} | {v} |");
        }
        if self.violations.is_empty() {
            println!("RESULT ok: no violation");
        } else {
            for v in &self.violations {
                println!("VIOLATION {v}");
            }
            println!("RESULT failed: {} violation(s)", self.violations.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_filter_by_name_and_labels() {
        let text = "# HELP x\nmllp_proxy_acks_total{code=\"AA\",route=\"a\"} 3\n\
                    mllp_proxy_acks_total{code=\"AE\",route=\"a\"} 2\n\
                    mllp_proxy_acks_totalx{code=\"AA\"} 100\n\
                    mllp_proxy_messages_received_total{route=\"a\"} 7\n";
        assert_eq!(metric_sum(text, "mllp_proxy_acks_total", &[]), 5.0);
        assert_eq!(
            metric_sum(text, "mllp_proxy_acks_total", &[("code", "AA")]),
            3.0
        );
        assert_eq!(
            metric_sum(text, "mllp_proxy_messages_received_total", &[]),
            7.0
        );
    }
}
