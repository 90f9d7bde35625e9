//! `mllp-proxy bench`: a closed-loop load generator. Each connection sends one message, waits
//! for its ACK, and sends the next, like a real sending system; latency is send-to-ACK.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::TlsArgs;
use crate::cli::send::parse_duration_arg;
use crate::client::{ClientError, ClientTarget, MllpClient};
use crate::hl7::parse_ack;

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Target HOST:PORT (the proxy with TLS options, or an engine in plain MLLP).
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Concurrent connections.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Measured messages per connection.
    #[arg(long, default_value_t = 1000)]
    pub messages: usize,
    /// Unmeasured messages per connection sent first (connection set-up, caches).
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// Approximate size of each message in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Bound on each exchange.
    #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
    pub timeout: Duration,
    /// A new connection for every message: TCP connect, a full TLS handshake (no session
    /// resumption), one exchange, close. Measures new connections per second.
    #[arg(long)]
    pub reconnect: bool,
    /// Instead of a load: open this many connections (32 at a time), one exchange on each,
    /// print `HELD n`, then keep them open and idle for `--hold-for`.
    #[arg(long, default_value_t = 0)]
    pub hold: usize,
    /// How long `--hold` keeps its connections open.
    #[arg(long, default_value = "60s", value_parser = parse_duration_arg)]
    pub hold_for: Duration,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// Measured messages acknowledged.
    pub messages: u64,
    /// Wall time of the measured phase.
    pub elapsed: Duration,
    /// Latency histogram in microseconds.
    pub latency_us: Histogram<u64>,
}

impl BenchResult {
    /// Acknowledged messages per second.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs the benchmark and prints a summary; errors when any exchange fails.
pub async fn run(args: BenchArgs) -> Result<BenchResult, ClientError> {
    if args.connections == 0 || args.messages == 0 {
        return Err(ClientError(
            "--connections and --messages must be at least 1".into(),
        ));
    }
    let mut target = args.tls.target(&args.to)?;
    if args.reconnect {
        // Every handshake a full one, as a sender restarting would make.
        if let Some((config, _)) = &mut target.tls {
            let mut fresh = (**config).clone();
            fresh.resumption = rustls::client::Resumption::disabled();
            *config = Arc::new(fresh);
        }
    }
    if args.hold > 0 {
        return hold(&target, args.hold, args.size, args.timeout, args.hold_for).await;
    }
    let total = (args.connections * args.messages) as u64;
    let load = Arc::new(Load {
        target: target.clone(),
        messages: args.messages,
        warmup: args.warmup,
        size: args.size,
        timeout: args.timeout,
        done: AtomicU64::new(0),
        // Every connection is open and warmed up before the clock starts.
        barrier: tokio::sync::Barrier::new(args.connections + 1),
    });
    let mut tasks = Vec::with_capacity(args.connections);
    for c in 0..args.connections {
        let (load, reconnect) = (load.clone(), args.reconnect);
        tasks.push(tokio::spawn(async move {
            connection(c, &load, reconnect).await
        }));
    }
    load.barrier.wait().await;
    let started = Instant::now();
    let progress = tokio::spawn(progress(load.clone(), started, total));
    let mut latency = new_histogram()?;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(h)) => {
                latency
                    .add(&h)
                    .map_err(|e| ClientError(format!("histogram: {e}")))?;
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(ClientError(format!("connection task: {e}")));
            }
        }
    }
    let elapsed = started.elapsed();
    progress.abort();
    eprintln!();
    if let Some(e) = first_error {
        return Err(e);
    }
    let result = BenchResult {
        messages: latency.len(),
        elapsed,
        latency_us: latency,
    };
    print_result(&args, target.tls.is_some(), &result);
    Ok(result)
}

/// Prints how far the run is, every second, until aborted.
async fn progress(load: Arc<Load>, started: Instant, total: u64) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let n = load.done.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        eprint!("\r  {n}/{total} messages, {:.0} msg/s   ", n as f64 / secs);
        let _ = std::io::stderr().flush();
    }
}

/// The summary for people, then one `RESULT` line for scripts (bench/*.sh read it).
fn print_result(args: &BenchArgs, tls: bool, result: &BenchResult) {
    let (h, elapsed) = (&result.latency_us, result.elapsed);
    println!(
        "target {} ({}), {} connection(s) x {} messages of {} bytes",
        args.to,
        if tls { "MLLP/TLS" } else { "MLLP" },
        args.connections,
        args.messages,
        args.size
    );
    println!(
        "throughput {:.0} msg/s over {:.2} s",
        result.rate(),
        elapsed.as_secs_f64()
    );
    println!(
        "latency us: p50 {} p90 {} p99 {} max {}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.max()
    );
    println!(
        "RESULT msgs_per_sec={:.1} p50_us={} p90_us={} p99_us={} max_us={}",
        result.rate(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.max()
    );
}

fn new_histogram() -> Result<Histogram<u64>, ClientError> {
    // 1 µs to 10 min at 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| ClientError(format!("histogram: {e}")))
}

/// What every connection task of a run shares.
struct Load {
    target: ClientTarget,
    /// Measured messages per connection.
    messages: usize,
    warmup: usize,
    size: usize,
    timeout: Duration,
    /// Measured messages acknowledged so far, all connections.
    done: AtomicU64,
    barrier: tokio::sync::Barrier,
}

/// How a connection task sends: on one connection, or on a new one per message.
enum Sender {
    Kept(MllpClient),
    Reconnecting,
}

/// One connection task: warm-up messages, the barrier, then the measured ones, each timed.
async fn connection(c: usize, load: &Load, reconnect: bool) -> Result<Histogram<u64>, ClientError> {
    let mut sender = if reconnect {
        Sender::Reconnecting
    } else {
        match MllpClient::connect(&load.target, load.timeout).await {
            Ok(client) => Sender::Kept(client),
            Err(e) => {
                load.barrier.wait().await;
                return Err(e);
            }
        }
    };
    let mut warm_err = None;
    for i in 0..load.warmup {
        if let Err(e) = send(&mut sender, c, i, load).await {
            warm_err = Some(e);
            break;
        }
    }
    load.barrier.wait().await;
    if let Some(e) = warm_err {
        return Err(e);
    }
    let mut h = new_histogram()?;
    for i in 0..load.messages {
        let t = Instant::now();
        send(&mut sender, c, load.warmup + i, load).await?;
        h.saturating_record(t.elapsed().as_micros().max(1) as u64);
        load.done.fetch_add(1, Ordering::Relaxed);
    }
    if let Sender::Kept(client) = sender {
        client.close().await;
    }
    Ok(h)
}

/// Message `i` of connection `c`, acknowledged; with [`Sender::Reconnecting`] over a new
/// connection with a full handshake.
async fn send(sender: &mut Sender, c: usize, i: usize, load: &Load) -> Result<(), ClientError> {
    let msg = message(c, i, load.size);
    match sender {
        Sender::Kept(client) => exchange(client, &msg, load.timeout).await,
        Sender::Reconnecting => {
            let mut client = MllpClient::connect(&load.target, load.timeout).await?;
            exchange(&mut client, &msg, load.timeout).await?;
            client.close().await;
            Ok(())
        }
    }
}

/// `--hold`: opens `count` connections, 32 at a time, one exchange on each, and keeps them
/// open for `hold_for`; for measuring what an idle connection costs the server.
async fn hold(
    target: &ClientTarget,
    count: usize,
    size: usize,
    timeout: Duration,
    hold_for: Duration,
) -> Result<BenchResult, ClientError> {
    let opened = Instant::now();
    let mut held = Vec::with_capacity(count);
    let mut pending = tokio::task::JoinSet::new();
    let mut next = 0;
    while held.len() < count {
        while next < count && pending.len() < 32 {
            let (target, c) = (target.clone(), next);
            pending.spawn(async move {
                let mut client = MllpClient::connect(&target, timeout).await?;
                exchange(&mut client, &message(c, 0, size), timeout).await?;
                Ok::<_, ClientError>(client)
            });
            next += 1;
        }
        match pending.join_next().await {
            Some(Ok(Ok(client))) => held.push(client),
            Some(Ok(Err(e))) => {
                return Err(ClientError(format!(
                    "after {} connections: {e}",
                    held.len()
                )));
            }
            Some(Err(e)) => return Err(ClientError(format!("connection task: {e}"))),
            None => break,
        }
    }
    println!("HELD {}", held.len());
    let _ = std::io::stdout().flush();
    let elapsed = opened.elapsed();
    tokio::time::sleep(hold_for).await;
    drop(held);
    Ok(BenchResult {
        messages: count as u64,
        elapsed,
        latency_us: new_histogram()?,
    })
}

async fn exchange(
    client: &mut MllpClient,
    msg: &[u8],
    timeout: Duration,
) -> Result<(), ClientError> {
    let answer = client.exchange(msg, timeout).await?;
    match parse_ack(&answer) {
        Some(a) if a.code.is_positive() => Ok(()),
        Some(a) => Err(ClientError(format!("negative ACK {}", a.code))),
        None => Err(ClientError("answer without MSA".into())),
    }
}

/// A synthetic ORU^R01 of about `size` bytes with a unique control ID.
pub fn message(conn: usize, i: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "MSH|^~\\&|BENCH|LOADGEN|ENGINE|HOSP|20261126120000||ORU^R01^ORU_R01|B{conn}-{i}|P|2.5.1\r\
         PID|1||BENCH-{i}^^^LOADGEN^MR||SYNTHETIC^PATIENT||20000101|U\r\
         OBR|1|ORD-{i}||24331-1^Panel^LN\r"
    )
    .into_bytes();
    let mut seq = 1;
    while m.len() + 40 < size {
        let room = size - m.len() - 40;
        let value_len = room.min(200);
        m.extend_from_slice(format!("OBX|{seq}|ST|X^Value^L||").as_bytes());
        m.extend(std::iter::repeat_n(b'x', value_len));
        m.extend_from_slice(b"||||||F\r");
        seq += 1;
    }
    m
}
