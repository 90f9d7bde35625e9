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
/// [`SPARE_BUFFERS`], or one that grew for a large message for the next [`take_large`];
/// one still shared with a frame is let go.
pub fn give_back(mut buf: BytesMut) {
    buf.clear();
    // Asking for more than the view holds makes try_reclaim reclaim the whole allocation from
    // its start when no frame holds part of it (a shared one would have to allocate anew,
    // which the next taker can do as well). A view's own capacity says nothing: after a
    // large frame was split off, the buffer is a view of the last kilobytes of a
    // multi-megabyte allocation, exactly a read buffer's worth when the frame was given that
    // much room, and a spare made of it would keep the whole allocation. The rare buffer
    // that held no frame (offset 0, nothing to reclaim) is let go too.
    if !buf.try_reclaim(buf.capacity().max(READ_BUFFER - 1) + 1) {
        return;
    }
    if buf.capacity() > READ_BUFFER {
        keep_large(buf);
        return;
    }
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

/// Buffers that grew for a large message, emptied, for the next large message of any session.
/// A fresh multi-megabyte buffer costs more than its bytes: glibc maps its pages and faults
/// them in again, or walks its free lists first (8 senders of 8 MiB messages: 0.78x the CPU
/// per message when each reused its last buffer, 0.93x with only the copies of growing it
/// removed). Emptied when no large message came for [`CHECK_EVERY`].
static LARGE_SPARE: std::sync::Mutex<Vec<BytesMut>> = std::sync::Mutex::new(Vec::new());

/// At most this many large buffers kept (docs/changes.md sizes memory with it)...
const LARGE_SPARES: usize = 8;

/// ...and at most this many bytes in them: beyond, a buffer given back is freed.
const LARGE_SPARE_BYTES: usize = 128 << 20;

/// Large buffers given back or taken since the pool was last emptied.
static LARGE_USED: AtomicUsize = AtomicUsize::new(0);

/// Keeps an emptied large buffer for [`take_large`], within the pool's bounds.
fn keep_large(buf: BytesMut) {
    LARGE_USED.fetch_add(1, Ordering::Relaxed);
    let Ok(mut kept) = LARGE_SPARE.lock() else {
        return;
    };
    let bytes: usize = kept.iter().map(BytesMut::capacity).sum();
    if kept.len() < LARGE_SPARES && bytes + buf.capacity() <= LARGE_SPARE_BYTES {
        kept.push(buf);
        return;
    }
    // Full: a larger buffer takes the place of the smallest. Otherwise a pool filled by
    // frames that grew by doubling (8 MiB for a message just under it) would be kept while
    // every later frame, asking for its sender's size plus a read buffer, allocated anew.
    let Some(smallest) = (0..kept.len()).min_by_key(|&i| kept[i].capacity()) else {
        return;
    };
    let freed = kept[smallest].capacity();
    if freed < buf.capacity() && bytes - freed + buf.capacity() <= LARGE_SPARE_BYTES {
        kept[smallest] = buf;
    }
}

/// An empty large buffer given back earlier with room for at least `need` bytes (the
/// smallest that has), for a frame that outgrew its read buffer.
pub fn take_large(need: usize) -> Option<BytesMut> {
    let mut kept = LARGE_SPARE.lock().ok()?;
    LARGE_USED.fetch_add(1, Ordering::Relaxed);
    let fits = (0..kept.len())
        .filter(|&i| kept[i].capacity() >= need)
        .min_by_key(|&i| kept[i].capacity());
    if let Some(best) = fits {
        return Some(kept.swap_remove(best));
    }
    // None fits, so the caller allocates one that does: the smallest kept is freed first,
    // as the new one would take its place on its way back, and both need not be resident.
    if let Some(smallest) = (0..kept.len()).min_by_key(|&i| kept[i].capacity()) {
        kept.swap_remove(smallest);
    }
    None
}

/// Held by unit tests that use the large buffers, which every test thread shares.
#[cfg(test)]
pub static LARGE_TEST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Frees the large buffers kept, returning how many bytes they held.
pub(crate) fn drop_large() -> usize {
    let Ok(mut kept) = LARGE_SPARE.lock() else {
        return 0;
    };
    kept.drain(..).map(|b| b.capacity()).sum()
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
    let mut large_used = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Before the release below, so that what the pool held is given back with the rest.
        let used = LARGE_USED.load(Ordering::Relaxed);
        if used == large_used {
            let freed = drop_large();
            if freed > 0 {
                tracing::debug!(bytes = freed, "large read buffers freed after quiet");
            }
        }
        large_used = used;
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

    #[test]
    fn the_tail_of_a_large_allocation_is_never_a_spare_and_is_reused_once_let_go() {
        // A frame given a read buffer of room beyond its size leaves a view of exactly
        // READ_BUFFER bytes at the end of its allocation. While the frame holds the
        // allocation the view is let go; once it let go, the whole allocation is kept for
        // the next large frame, never as a read buffer.
        let _one = LARGE_TEST.blocking_lock();
        drop_large();
        let spares = || SPARE.with(|s| s.borrow().len());
        for frame_alive in [true, false] {
            let mut buf = BytesMut::with_capacity(700_000 + READ_BUFFER);
            buf.resize(700_000, b'x');
            let start = buf.as_ptr() as usize;
            let frame = buf.split_to(700_000).freeze();
            assert_eq!(buf.capacity(), READ_BUFFER);
            let frame = frame_alive.then_some(frame);
            let before = spares();
            give_back(buf);
            assert_eq!(
                spares(),
                before,
                "kept as a read buffer, frame alive: {frame_alive}"
            );
            let again = take_large(600_000);
            if frame_alive {
                assert!(
                    again.is_none(),
                    "a buffer a frame still reads from was kept"
                );
            } else {
                let again = again.expect("the let-go allocation kept for the next large frame");
                assert_eq!(
                    again.as_ptr() as usize,
                    start,
                    "the whole allocation, from its start"
                );
                assert!(again.is_empty() && again.capacity() >= 700_000);
                assert!(take_large(1).is_none(), "taken once");
                // Filled and split again by the next frame, its tail goes back the same way.
                let mut again = again;
                again.resize(690_000, b'y');
                drop(again.split_to(690_000));
                give_back(again);
                assert!(drop_large() >= 700_000, "emptied after quiet");
                assert!(take_large(1).is_none());
            }
            drop(frame);
        }
        // A read buffer that held a small frame, let go, is a spare read buffer still.
        let before = spares();
        let mut buf = BytesMut::with_capacity(READ_BUFFER);
        buf.extend_from_slice(&[b'x'; 1000]);
        drop(buf.split_to(1000).freeze());
        give_back(buf);
        assert_eq!(spares(), before + 1);
    }

    /// The emptied tail of a frame of `len` bytes in an allocation of `len` + a read buffer,
    /// the frame let go.
    fn tail_of(len: usize) -> BytesMut {
        let mut buf = BytesMut::with_capacity(len + READ_BUFFER);
        buf.resize(len, b'x');
        drop(buf.split_to(len));
        buf
    }

    #[test]
    fn kept_large_buffers_too_small_for_the_frames_give_way_to_ones_that_fit() {
        // Eight buffers of 100 KB fill the pool. Frames of 200 KB find none that fits: the
        // first miss frees the smallest (the frame's own buffer takes its place on the way
        // back), and once the pool is full again a larger buffer replaces the smallest.
        let _one = LARGE_TEST.blocking_lock();
        drop_large();
        for _ in 0..LARGE_SPARES {
            give_back(tail_of(100_000));
        }
        assert!(take_large(200_000).is_none(), "nothing of 200 KB was kept");
        give_back(tail_of(200_000));
        let fits = take_large(200_000).expect("the 200 KB buffer given back");
        assert!(fits.capacity() >= 200_000);
        give_back(tail_of(100_000));
        give_back(tail_of(300_000));
        let big = take_large(300_000).expect("the larger buffer in the smallest's place");
        assert_eq!(drop_large(), (LARGE_SPARES - 1) * (100_000 + READ_BUFFER));
        drop(big);
        drop(fits);
    }
}
