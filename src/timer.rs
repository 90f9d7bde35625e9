//! Deadlines that move forward on every message without touching the runtime's timer wheel
//! each time; and the one back-off with jitter of everything that retries (engine targets,
//! syslog collectors).
//!
//! A session's idle deadline and a connection's ACK deadline are pushed back by every message.
//! Resetting a tokio `Sleep` each time costs a wheel insertion and removal under the driver's
//! lock, twice per exchange. A [`Deadline`] keeps one `Sleep` armed; when the deadline moves
//! later the old one is left to fire, is found early, and is re-armed once: one wheel
//! operation per timeout period instead of one per message.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A re-usable timer for a deadline that mostly moves later; its `Sleep` is only made on first
/// use, so a session that never waits for something holds no timer for it.
#[derive(Default)]
pub struct Deadline {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    /// Completes at `at` (exactly: an earlier arming is only a wake-up to re-arm).
    pub async fn until(&mut self, at: Instant) {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        loop {
            if sleep.is_elapsed() || sleep.deadline() > at {
                sleep.as_mut().reset(at);
            }
            sleep.as_mut().await;
            if Instant::now() >= at {
                return;
            }
        }
    }
}

/// First back-off after a failure (a target down, a collector unreachable); doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest back-off between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The back-off after `failures` consecutive failures: 1 s doubling to 30 s, times `jitter`
/// (0.8 … 1.2) so that replicas do not retry in step.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let base = FIRST_BACKOFF
        .saturating_mul(1u32 << doublings)
        .min(MAX_BACKOFF);
    base.mul_f64(jitter)
}

/// A factor in 0.8 … 1.2, from the OS-seeded hasher: no randomness crate for one number.
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    0.8 + 0.4 * ((r >> 11) as f64 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_later_fires_exactly_at_the_new_instant() {
        let start = Instant::now();
        let mut d = Deadline::default();
        // Armed for 10 s by a first wait that is abandoned, then pushed back three times before it was due, as messages keep arriving.
        let first = d.until(start + Duration::from_secs(10));
        tokio::select! {
            _ = first => panic!("fired before its deadline"),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        for later in [4, 8, 12] {
            let wait = d.until(start + Duration::from_secs(10 + later));
            let cut = tokio::time::sleep(Duration::from_secs(4));
            tokio::select! {
                _ = wait => panic!("fired before its deadline"),
                _ = cut => {}
            }
        }
        d.until(start + Duration::from_secs(22)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(22));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_is_not_held_back_by_a_later_arming() {
        let start = Instant::now();
        let mut d = Deadline::default();
        let armed_later = d.until(start + Duration::from_secs(60));
        tokio::select! {
            _ = armed_later => panic!("fired before its deadline"),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        d.until(start + Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // After firing, a new deadline arms it again.
        d.until(start + Duration::from_secs(7)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(7));
    }

    #[test]
    fn backoff_doubles_from_one_second_to_thirty_within_the_jitter() {
        let secs = |n| backoff(n, 1.0).as_secs_f64();
        assert_eq!(
            [secs(1), secs(2), secs(3), secs(5), secs(6), secs(40)],
            [1.0, 2.0, 4.0, 16.0, 30.0, 30.0]
        );
        assert_eq!(backoff(1, 0.8), Duration::from_millis(800));
        assert_eq!(backoff(6, 1.2), Duration::from_secs(36));
        for _ in 0..100 {
            assert!((0.8..1.2).contains(&jitter()));
        }
    }
}
