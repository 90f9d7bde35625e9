//! Who is connected right now: each route's open sessions, for `/status`. A session registers
//! when its sender is admitted and leaves when it ends; while it runs it updates a few atomics
//! of its own per message (no lock, no clock read on the forwarding path: the time of the last
//! message is the exchange's own start time).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// The open sessions of one route, kept across its reloads.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<u64, Arc<Live>>>,
}

/// One open session as `/status` shows it. Nothing from message content.
pub struct Live {
    /// The connection id of its log lines and audit records.
    pub conn: u64,
    /// The client certificate's identity (`cn:…`, `dns:…`), `None` on a plain listener.
    pub identity: Option<Box<str>>,
    /// The sender's address (the one a PROXY header named, behind a balancer).
    pub peer: SocketAddr,
    /// When it was admitted.
    pub since: SystemTime,
    started: Instant,
    messages: AtomicU64,
    /// Nanoseconds from `started` to the last message's arrival, plus one; 0: none yet.
    last: AtomicU64,
    in_flight: AtomicBool,
}

/// A session's registration; leaving the registry when dropped.
pub struct Registered {
    sessions: Arc<Sessions>,
    live: Arc<Live>,
}

/// A session's figures at one moment.
pub struct Snapshot {
    /// Frames received.
    pub messages: u64,
    /// When the last one arrived.
    pub last_message: Option<SystemTime>,
    /// Whether a message is with the engine now.
    pub in_flight: bool,
}

impl Sessions {
    /// Registers a session admitted now.
    pub fn register(
        self: &Arc<Self>,
        conn: u64,
        identity: Option<String>,
        peer: SocketAddr,
    ) -> Registered {
        let live = Arc::new(Live {
            conn,
            identity: identity.map(String::into_boxed_str),
            peer,
            since: SystemTime::now(),
            started: Instant::now(),
            messages: AtomicU64::new(0),
            last: AtomicU64::new(0),
            in_flight: AtomicBool::new(false),
        });
        if let Ok(mut open) = self.open.lock() {
            open.insert(conn, live.clone());
        }
        Registered {
            sessions: self.clone(),
            live,
        }
    }

    /// The open sessions, oldest first.
    pub fn list(&self) -> Vec<Arc<Live>> {
        let mut all: Vec<Arc<Live>> = self
            .open
            .lock()
            .map(|open| open.values().cloned().collect())
            .unwrap_or_default();
        all.sort_by_key(|l| l.conn);
        all
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut open) = self.sessions.open.lock() {
            open.remove(&self.live.conn);
        }
    }
}

impl Registered {
    /// The session's entry, for its updates.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }
}

impl Live {
    /// The `n`th frame arrived at `at`.
    pub fn received(&self, n: u64, at: Instant) {
        self.messages.store(n, Ordering::Relaxed);
        let nanos = at.saturating_duration_since(self.started).as_nanos();
        self.last.store(
            u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1,
            Ordering::Relaxed,
        );
    }

    /// A message went to the engine (`true`) or its exchange ended (`false`).
    pub fn in_flight(&self, yes: bool) {
        self.in_flight.store(yes, Ordering::Relaxed);
    }

    /// Its figures now.
    pub fn snapshot(&self) -> Snapshot {
        let last = self.last.load(Ordering::Relaxed);
        Snapshot {
            messages: self.messages.load(Ordering::Relaxed),
            last_message: (last > 0).then(|| self.since + Duration::from_nanos(last - 1)),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_listed_until_its_registration_is_dropped() {
        let sessions = Arc::new(Sessions::default());
        let peer: SocketAddr = "192.0.2.1:4000".parse().expect("addr");
        let a = sessions.register(7, Some("cn:lab".into()), peer);
        let b = sessions.register(3, None, peer);
        assert_eq!(
            sessions.list().iter().map(|l| l.conn).collect::<Vec<_>>(),
            [3, 7]
        );
        let at = a.live().started + Duration::from_secs(2);
        a.live().received(1, at);
        a.live().in_flight(true);
        let s = a.live().snapshot();
        assert_eq!((s.messages, s.in_flight), (1, true));
        assert_eq!(
            s.last_message
                .and_then(|t| t.duration_since(a.live().since).ok()),
            Some(Duration::from_secs(2))
        );
        assert!(b.live().snapshot().last_message.is_none());
        drop(a);
        assert_eq!(
            sessions.list().iter().map(|l| l.conn).collect::<Vec<_>>(),
            [3]
        );
    }
}
