//! Session threads: one single-threaded runtime per CPU core, each running the sessions the
//! listeners hand it.
//!
//! On the shared multi-threaded runtime a session's task moved between workers, and the workers
//! parked and woke each other around every message (9% of the CPU in wake-ups and context
//! switches at 64 senders). A session placed on one core's runtime stays there: its TLS
//! socket, its timers and (preferably) its pooled engine connection are all driven by that
//! thread. Listeners, the admin server and the reloader stay on the main runtime.
//!
//! A route with a small limited pool keeps all its sessions on one thread instead: its few
//! engine connections pass from session to session after every exchange, and on one thread
//! that hand-off is a task switch, not a wake-up of another thread. A pool large enough to be
//! split per thread (`upstream::pool`) is spread like an unlimited one.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

thread_local! {
    /// This thread's core index; `usize::MAX` off the session threads.
    static CORE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The index of the session thread this runs on, or `usize::MAX` elsewhere.
pub fn current() -> usize {
    CORE.with(Cell::get)
}

/// The session threads; they stop when this is dropped (after the proxy drained).
pub struct Cores {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Cores {
    /// Starts `n` session threads (at least one).
    pub fn start(n: usize) -> std::io::Result<Arc<Cores>> {
        let stop = CancellationToken::new();
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("sessions-{i}"))
                    .spawn(move || {
                        CORE.with(|c| c.set(i));
                        runtime.block_on(stop.cancelled());
                    })?,
            );
        }
        Ok(Arc::new(Cores {
            handles,
            next: AtomicUsize::new(0),
            stop,
            threads,
        }))
    }

    /// How many session threads there are (at least one).
    pub fn threads(&self) -> usize {
        self.handles.len()
    }

    fn next_index(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len()
    }

    /// Where a route's sessions run: spread over all threads, or all on the next one in turn
    /// (routes pinned this way take turns, so several limited routes use several cores).
    pub fn placement(self: &Arc<Self>, spread: bool) -> Placement {
        let first = self.next_index();
        Placement {
            cores: self.clone(),
            one: (!spread).then_some(first),
            next: AtomicUsize::new(first),
        }
    }
}

/// The session threads a route's sessions run on; holding it keeps them running.
pub struct Placement {
    cores: Arc<Cores>,
    /// Every session on this thread; `None`: each on the next thread in turn.
    one: Option<usize>,
    /// The route's own turn: with one turn for all routes, two routes whose connections
    /// alternate would each land every session on the same thread (and a pool split per
    /// thread would leave one share unused).
    next: AtomicUsize,
}

impl Placement {
    /// The runtime for the next session.
    pub fn next(&self) -> &Handle {
        let i = self
            .one
            .unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed));
        &self.cores.handles[i % self.cores.handles.len()]
    }
}

impl Drop for Cores {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
