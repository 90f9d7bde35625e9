//! Health of each target: passive (connect outcomes, successful exchanges) and active (a TCP
//! connect probe of targets the pool holds no connection to), with a back-off for targets that
//! are down.
//!
//! Every connect to a target, a pooled one or a probe, holds that target's gate, so at most one
//! connect per target is ever in flight: a single-connection engine never sees a probe compete
//! with real traffic, and twenty sessions arriving at a dead target do not each wait
//! `connect_timeout` for it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::conn::Wire;
use crate::config::Keepalive;
use crate::label::{Label, PartnerRefusal, Side};
use crate::timer::{backoff, jitter};
use crate::tls::PartnerTls;
use crate::tls::establish_tls;
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::Instant;

use crate::metrics::TargetMetrics;

/// Longest down reason kept for `/status` (rustls' words on a certificate can be long).
const REASON_CHARS: usize = 300;

/// One configured target and what is known about it.
pub struct Target {
    /// `host:port` as configured (the metric label).
    pub addr: Arc<str>,
    /// The route it serves, for the log.
    route: Arc<str>,
    /// Reached over `upstream.tls` (a partner), not plain MLLP (an engine): a reload may
    /// switch the transport while keeping the target.
    partner: AtomicBool,
    /// Mirrors `state.up`: read on every exchange without taking the lock.
    up: AtomicBool,
    state: Mutex<State>,
    /// Held by whoever connects to this target.
    gate: AsyncMutex<()>,
    /// Open pooled connections to this target (busy or idle).
    pub(super) pooled: AtomicUsize,
    pub(super) metrics: TargetMetrics,
}

struct State {
    up: bool,
    /// Consecutive failures, for the back-off.
    failures: u32,
    /// A down target is not tried by sessions before this (while another target is up).
    retry_at: Option<Instant>,
    /// Why it is down (`None` while up, or never tried), for `/status`.
    reason: Option<Box<str>>,
    /// When `up` last changed (or the target was made), for `/status`.
    since: SystemTime,
}

/// A target's health as `/status` shows it.
pub struct Health {
    /// Whether it is up.
    pub up: bool,
    /// Why it is down, if it is and a connect or check said why.
    pub reason: Option<Box<str>>,
    /// Since when it has been up (or down).
    pub since: SystemTime,
}

impl Target {
    /// A target of unknown health: reported down until a connect or probe succeeds.
    pub fn new(addr: &str, route: Arc<str>, partner: bool, metrics: TargetMetrics) -> Self {
        Self {
            addr: addr.into(),
            route,
            partner: AtomicBool::new(partner),
            up: AtomicBool::new(false),
            state: Mutex::new(State {
                up: false,
                failures: 0,
                retry_at: None,
                reason: Some("not checked yet".into()),
                since: SystemTime::now(),
            }),
            gate: AsyncMutex::new(()),
            pooled: AtomicUsize::new(0),
            metrics,
        }
    }

    /// A reload kept this target and (maybe) changed its transport.
    pub fn set_partner(&self, partner: bool) {
        self.partner.store(partner, Ordering::Release);
    }

    fn is_partner(&self) -> bool {
        self.partner.load(Ordering::Acquire)
    }

    /// Up or down, why, and since when.
    pub fn health(&self) -> Health {
        match self.state.lock() {
            Ok(s) => Health {
                up: s.up,
                reason: s.reason.clone(),
                since: s.since,
            },
            Err(_) => Health {
                up: self.is_up(),
                reason: None,
                since: SystemTime::UNIX_EPOCH,
            },
        }
    }

    /// Whether the last connect, probe or exchange succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether a session may try this target now while another may be up: it is up, or its
    /// back-off has passed (or it was never tried). The clock is read only for a target that
    /// is down: every exchange asks, and most of the time every target is up.
    pub fn eligible(&self) -> bool {
        self.is_up()
            || self
                .state
                .lock()
                .is_ok_and(|s| s.up || s.retry_at.is_none_or(|t| t <= Instant::now()))
    }

    /// Records a success: the target is up.
    pub fn mark_up(&self) {
        if self.is_up() {
            // Every successful exchange lands here: no lock when nothing changes.
            return;
        }
        if let Ok(mut s) = self.state.lock() {
            if !s.up {
                let side = Side::Upstream.label();
                if self.is_partner() {
                    tracing::info!(route = %self.route, side, partner = %self.addr, "partner target up");
                } else {
                    tracing::info!(route = %self.route, side, engine = %self.addr, "engine target up");
                }
                s.since = SystemTime::now();
            }
            s.up = true;
            s.failures = 0;
            s.retry_at = None;
            s.reason = None;
            self.up.store(true, Ordering::Release);
        }
        self.metrics.up.set(1);
    }

    /// Records a failed connect: the target is down and skipped for a growing back-off.
    pub fn mark_down(&self, reason: &str) {
        if let Ok(mut s) = self.state.lock() {
            let was_up = s.up;
            s.up = false;
            self.up.store(false, Ordering::Release);
            s.failures = s.failures.saturating_add(1);
            let backoff = backoff(s.failures, jitter());
            s.retry_at = Some(Instant::now() + backoff);
            s.reason = Some(reason.chars().take(REASON_CHARS).collect());
            if was_up || s.failures == 1 {
                s.since = SystemTime::now();
                let (side, retry_in_ms) = (Side::Upstream.label(), backoff.as_millis() as u64);
                if self.is_partner() {
                    tracing::warn!(route = %self.route, side, partner = %self.addr, reason = %reason, retry_in_ms, "partner target down");
                } else {
                    tracing::warn!(route = %self.route, side, engine = %self.addr, reason = %reason, retry_in_ms, "engine target down");
                }
            }
        }
        self.metrics.up.set(0);
    }

    /// Connects under `timeout` (and, with `partner`, completes the TLS handshake under it
    /// too), holding the gate, and updates the health state. `Ok(None)`: while this waited
    /// for the gate, another attempt found the target down, so it is skipped rather than
    /// tried again at once.
    ///
    /// With `wait` false (every target is down), a connect already in flight is not waited
    /// for: this one is skipped at once, so a dead engine costs one `connect_timeout` at a
    /// time, not one per waiting session.
    pub async fn connect(
        &self,
        timeout: Duration,
        wait: bool,
        partner: Option<&PartnerTls>,
        keepalive: Option<Keepalive>,
    ) -> Result<Option<Wire>, ConnectFailure> {
        let _gate = if wait {
            let gate = self.gate.lock().await;
            if !self.eligible() {
                return Ok(None);
            }
            gate
        } else {
            match self.gate.try_lock() {
                Ok(gate) => gate,
                Err(_) => return Ok(None),
            }
        };
        self.connect_gated(timeout, partner, keepalive)
            .await
            .map(Some)
    }

    /// Connects (and, with `partner`, handshakes) under `timeout`, holding the gate. A plain
    /// engine that accepts the connect is up; a partner is up only once it has shown that it
    /// accepts our certificate (an exchange answered, or a probe's verdict), because under
    /// TLS 1.3 our side of the handshake completes before the partner has checked it.
    async fn connect_gated(
        &self,
        timeout: Duration,
        partner: Option<&PartnerTls>,
        keepalive: Option<Keepalive>,
    ) -> Result<Wire, ConnectFailure> {
        let failure = match tokio::time::timeout(timeout, TcpStream::connect(&*self.addr)).await {
            Ok(Ok(tcp)) => {
                // Small request/response exchanges: Nagle would add up to 40 ms per ACK.
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(engine = %self.addr, error = %e, "TCP_NODELAY not set");
                }
                if let Some(Err(e)) = keepalive.map(|k| k.apply(&tcp)) {
                    tracing::debug!(engine = %self.addr, error = %e, "TCP keepalive not set");
                }
                match partner {
                    None => {
                        self.mark_up();
                        return Ok(Wire::Plain(tcp));
                    }
                    // Boxed: the handshake's state is a kilobyte, and this future is part of
                    // every session's, idle ones included.
                    Some(p) => match Box::pin(establish_tls(tcp, &self.addr, p, timeout)).await {
                        Ok(tls) => return Ok(Wire::Tls(tls)),
                        Err(refused) => ConnectFailure {
                            reason: format!("TLS: {} ({})", refused.reason.words(), refused.detail),
                            refused: Some(refused.reason),
                        },
                    },
                }
            }
            Ok(Err(e)) => ConnectFailure::tcp(e.to_string()),
            Err(_) => ConnectFailure::tcp(format!("connect timed out after {timeout:?}")),
        };
        self.mark_down(&failure.reason);
        Err(failure)
    }

    /// One active check, unless the pool holds a connection to this target (an idle one is
    /// watched instead: [`super::Upstream::maintain`]) or a connect to it is in flight (the
    /// engine may take only one).
    ///
    /// An engine gets a TCP connect, closed at once. A partner gets a handshake, and counts as
    /// up once it has not refused our certificate within [`VERDICT_WAIT`]; that connection is
    /// then kept (`Probe::Passed(Some(wire))`) for the pool, so that a quiet egress route holds
    /// one session open at the partner instead of opening one per interval, and its closing
    /// is what tells that the partner went away.
    pub async fn probe(
        &self,
        timeout: Duration,
        partner: Option<&PartnerTls>,
        keepalive: Option<Keepalive>,
    ) -> Probe {
        let Ok(_gate) = self.gate.try_lock() else {
            return Probe::Skipped;
        };
        if self.pooled.load(Ordering::Acquire) > 0 {
            return Probe::Skipped;
        }
        let keepalive = keepalive.filter(|_| partner.is_some());
        let started = Instant::now();
        let mut wire = match self.connect_gated(timeout, partner, keepalive).await {
            Ok(wire) => wire,
            Err(failure) => {
                self.metrics.checks_failed.inc();
                tracing::debug!(route = %self.route, side = Side::Upstream.label(), target_addr = %self.addr, reason = %failure.reason, "health check failed");
                return Probe::Failed(failure.refused);
            }
        };
        let Some(p) = partner else {
            // Close, and keep the gate until the engine has closed its side: a
            // single-connection engine must be done with the probe before a pooled
            // connect follows.
            let _ = wire.shutdown().await;
            let mut sink = [0u8; 256];
            let _ = tokio::time::timeout(timeout.min(VERDICT_WAIT), async {
                while let Ok(1..) = wire.read(&mut sink).await {}
            })
            .await;
            self.metrics.checks_passed.inc();
            return Probe::Passed(None);
        };
        // The verdict follows our Finished by one round trip; the connect and handshake took
        // two or three.
        let wait = (started.elapsed() * 2)
            .max(MIN_VERDICT_WAIT)
            .min(timeout.min(VERDICT_WAIT));
        let presented = p.client_not_after.is_some();
        match verdict(&mut wire, wait, presented).await {
            Verdict::Accepted => {
                self.metrics.checks_passed.inc();
                self.mark_up();
                Probe::Passed(Some(wire))
            }
            Verdict::Unasked => {
                // Up, but a connection with bytes nobody asked for is not one to pool.
                self.metrics.checks_passed.inc();
                self.mark_up();
                Probe::Passed(None)
            }
            Verdict::Refused(reason, refusal) => {
                self.metrics.checks_failed.inc();
                self.mark_down(&reason);
                Probe::Failed(refusal)
            }
        }
    }
}

/// The longest a probe waits for a partner's verdict on our certificate, or for an engine to
/// close after the probe's connect.
const VERDICT_WAIT: Duration = Duration::from_secs(1);
/// The shortest wait for a partner's verdict (a partner on loopback answers in microseconds,
/// but may be busy).
const MIN_VERDICT_WAIT: Duration = Duration::from_millis(100);

/// What a probe found.
pub enum Probe {
    /// Not probed: the pool holds a connection to the target, or a connect is in flight.
    Skipped,
    /// Up; a partner's connection, to be pooled, when there is one to keep.
    Passed(Option<Wire>),
    /// Down; with the partner's TLS refusal, for its counter.
    Failed(Option<PartnerRefusal>),
}

/// What a partner did in the moments after our side of the handshake completed.
enum Verdict {
    /// Nothing within the wait (or TLS 1.2, whose handshake ends with the partner's Finished,
    /// sent only after it checked our certificate): it accepted us.
    Accepted,
    /// It sent application data unasked.
    Unasked,
    /// It refused (an alert) or closed: why, and the refusal for the counter.
    Refused(String, Option<PartnerRefusal>),
}

async fn verdict(wire: &mut Wire, wait: Duration, presented: bool) -> Verdict {
    if let Wire::Tls(tls) = wire
        && tls.get_ref().1.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3)
    {
        return Verdict::Accepted;
    }
    let mut byte = [0u8; 1];
    match tokio::time::timeout(wait, wire.read(&mut byte)).await {
        Err(_) => Verdict::Accepted,
        Ok(Ok(0)) => Verdict::Refused(
            "the partner closed the connection right after the handshake".into(),
            None,
        ),
        Ok(Ok(_)) => Verdict::Unasked,
        Ok(Err(e)) => {
            let refusal = PartnerRefusal::of(&e, presented);
            Verdict::Refused(format!("TLS: {} ({e})", refusal.words()), Some(refusal))
        }
    }
}

/// Why a connect to a target failed.
#[derive(Debug)]
pub struct ConnectFailure {
    /// In words, for the log.
    pub reason: String,
    /// The partner's TLS refusal, when the TCP connect succeeded and TLS did not.
    pub refused: Option<PartnerRefusal>,
}

impl ConnectFailure {
    fn tcp(reason: String) -> Self {
        Self {
            reason,
            refused: None,
        }
    }
}
