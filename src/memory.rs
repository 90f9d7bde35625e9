//! Memory that sessions take and give back: per-thread spare read buffers, and giving a
//! burst's memory back to the system once its connections have closed.
//!
//! glibc's malloc keeps what a worker thread freed in that thread's arena and returns pages
//! only from the top of it: after 4,000 idle connections came and went the proxy stayed at
//! 77 MB (8.5 MB at start), with `MALLOC_ARENA_MAX=1` and a fixed trim threshold too.
//! `malloc_trim(0)` gives every free page back; it is called once the number of open
//! connections has fallen well below its recent peak, so a steady load never pays for it.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio_util::sync::CancellationToken;

/// A session's read buffer, in bytes.
pub const READ_BUFFER: usize = 8 * 1024;

/// Read buffers kept per worker thread. A session gives its buffer back whenever it waits for
/// the next message (so an idle connection holds none) and takes one when bytes arrive: a busy
/// sender does both on every message, and an 8 KiB malloc and free each time cost 1.8 µs of
/// CPU per message (glibc consolidates its free lists before a request of 1 KiB or more).
const SPARE_BUFFERS: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A read buffer of [`READ_BUFFER`] bytes: a spare one of this thread, or a new one.
pub fn take_buffer() -> BytesMut {
    SPARE
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(READ_BUFFER))
}

/// Keeps an emptied read buffer for the next [`take_buffer`] on this thread, up to
/// [`SPARE_BUFFERS`]; beyond that (or if it is still shared with a frame) it is freed.
pub fn give_back(mut buf: BytesMut) {
    buf.clear();
    // Reclaims the whole allocation when no frame holds part of it; a shared one would have
    // to allocate anew, which the next taker can do as well.
    if !buf.try_reclaim(READ_BUFFER) {
        return;
    }
    // Only a buffer of the size handed out is kept. One that grew for a large message is
    // freed, and so is the tail of one: after a large frame was split off, the buffer is a
    // view of some kilobytes at the end of a multi-megabyte allocation, which try_reclaim
    // leaves as it is when the view has room enough, and a spare would keep the whole
    // allocation (61 MB after a burst of 8 MiB messages).
    if buf.capacity() != READ_BUFFER {
        return;
    }
    SPARE.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < SPARE_BUFFERS {
            spare.push(buf);
        }
    });
}

/// Sender connections open, all routes together.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// The most open since the last release, kept at each accept so that a burst shorter than
/// [`CHECK_EVERY`] is not missed.
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// How often the count is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Connections closed since the peak that make a release worth its arena walk (a few ms for
/// a heap of 100 MB); about 5 MB of sessions.
const RELEASE_AFTER: usize = 256;

/// Bytes of large messages received since the last release.
static LARGE: AtomicUsize = AtomicUsize::new(0);

/// A message this size or larger counts towards [`LARGE_RELEASE`]: below glibc's largest
/// mmap threshold its buffers come from the heap, which keeps them after they are freed.
const LARGE_MESSAGE: usize = 256 * 1024;

/// Bytes of large messages after which a quiet moment (no large message for
/// [`CHECK_EVERY`]) releases free memory: a burst of embedded documents leaves megabytes of
/// freed buffers in the heap that the allocator would otherwise keep.
const LARGE_RELEASE: usize = 16 << 20;

/// Notes a received message's size, for the release after a burst of large ones.
pub fn large_message(len: usize) {
    if len >= LARGE_MESSAGE {
        LARGE.fetch_add(len, Ordering::Relaxed);
    }
}

/// Counts one open sender connection while it lives.
pub struct OpenConnection(());

impl OpenConnection {
    /// Counts a connection that was just accepted.
    pub fn new() -> Self {
        let open = OPEN.fetch_add(1, Ordering::Relaxed) + 1;
        PEAK.fetch_max(open, Ordering::Relaxed);
        Self(())
    }
}

impl Default for OpenConnection {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Releases free memory to the system whenever at least [`RELEASE_AFTER`] connections have
/// closed since the peak, or a burst of large messages has ended, until `shutdown`.
pub async fn release_after_bursts(shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    let mut large_seen = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let open = OPEN.load(Ordering::Relaxed);
        let large = LARGE.load(Ordering::Relaxed);
        let large_burst_ended = large >= LARGE_RELEASE && large == large_seen;
        large_seen = large;
        if PEAK.load(Ordering::Relaxed).saturating_sub(open) >= RELEASE_AFTER || large_burst_ended {
            PEAK.store(open, Ordering::Relaxed);
            LARGE.fetch_sub(large, Ordering::Relaxed);
            large_seen = 0;
            // The walk locks each arena in turn: off the runtime's workers.
            let released = tokio::task::spawn_blocking(release).await.unwrap_or(false);
            tracing::debug!(
                open,
                large_bytes = large,
                released,
                "free memory released after a burst"
            );
        }
    }
}

/// Has every thread allocate from the one main heap, from the first thread on. With a heap
/// per session thread (glibc's default), a freed large buffer at the top of a thread's heap
/// stays resident: `malloc_trim` gives back the free pages inside every heap but trims only
/// the main heap's top (26 MB resident 10 s after a burst of 8 MiB messages against 10 MB).
/// Mapping large buffers instead (a fixed mmap threshold) gives them back too, but costs a
/// page fault per 4 KiB of every large message: 0.6x the rate at 256 KiB. One heap costs
/// 1.8% more CPU per 1 KB message at 64 senders (bench/ab.sh, same run); small allocations
/// stay in each thread's cache, without the heap's lock.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn one_heap() {
    // SAFETY: mallopt takes two integers; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Elsewhere the allocator's own policy stands.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn one_heap() {}

/// Returns free heap pages to the system; whether any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release() -> bool {
    // SAFETY: malloc_trim takes no pointers and glibc serialises it with every other
    // allocator call; it only gives back pages that hold no allocation.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Elsewhere (musl, other systems) the allocator returns memory itself, or offers no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again_whole_and_a_shared_one_is_not_kept() {
        let mut b = take_buffer();
        b.extend_from_slice(b"0123456789");
        let frame = b.split_to(4);
        drop(frame);
        let at = b.as_ptr() as usize - 4;
        give_back(b);
        let again = take_buffer();
        assert_eq!(
            again.as_ptr() as usize,
            at,
            "the same allocation, from its start"
        );
        assert!(again.is_empty() && again.capacity() >= READ_BUFFER);

        // Part of it still held by a frame: freed, not kept for another session.
        let mut shared = again;
        shared.extend_from_slice(b"abcdef");
        let held = shared.split_to(3).freeze();
        give_back(shared);
        let other = take_buffer();
        let start = held.as_ptr() as usize;
        let inside = (start..start + READ_BUFFER).contains(&(other.as_ptr() as usize));
        assert!(
            !inside,
            "a buffer a frame still reads from was handed out again"
        );
        assert_eq!(&held[..], b"abc");
    }
}
