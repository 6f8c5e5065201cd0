//! Single-producer / single-consumer ring of fixed entries (four 64-bit words
//! each) in memory shared between two mutually distrusting processes, plus the
//! spin-then-sleep wake protocol used by the consumer.
//!
//! # Layout
//!
//! A ring is two pieces of shared memory, both `#[repr(C)]`, pointer-free and
//! made only of fixed-width atomics and padding:
//!
//! * a [`RingHeader`] (256 bytes, 128-byte aligned): two 128-byte lines, one
//!   for the consumer-written `head` and one for the rarely touched sleeper
//!   bookkeeping (`waiters`, `wake_seq`), so they never share a cache line;
//! * an array of `N` [`Entry`] values, `N` a power of two in `1..=4096`. An
//!   entry is one 64-byte cache line: a publication word `seq` and four opaque
//!   payload words.
//!
//! The all-zero byte pattern is the valid initial state of both (empty ring,
//! no sleepers), so freshly created, zero-filled shared memory needs no
//! initialisation. [`RingHeader::new`] and [`Entry::new`] exist for tests.
//!
//! Indices are free-running `u32` counters; the slot of index `i` is
//! `i & (N - 1)`. The producer publishes the entry of index `i` by storing
//! `i + 1` (wrapping) into its slot's `seq`, so a slot's `seq` says which
//! entry it holds: while the consumer is at index `h`, an honest producer has
//! left `h + 1` there (the entry is ready), or the previous lap's `h + 1 - N`,
//! or 0 (a slot never used). The consumer publishes its position in `head`.
//!
//! # Why a publication word per slot
//!
//! One transfer costs one cache line each way: the consumer polls the slot it
//! will read next, and the producer's stores of payload and `seq` land on that
//! same line, so a spinning consumer sees the entry with the one line move
//! that any shared-memory hand-over pays. The producer keeps the last `head` it
//! validated and reads the shared `head` only when that cached view says the
//! ring is full, so the consumer's line stays with the consumer. (With shared
//! `head` and `tail` words, as in io_uring, each transfer moved three lines.)
//!
//! # Ordering recipe
//!
//! * Producer: only if its cached `head` says the ring is full, load `head`
//!   (Acquire, so the consumer's reads of a slot happen before we overwrite
//!   it); fill the entry's words (Relaxed), then publish with
//!   `seq.store(t + 1, Release)`.
//! * Consumer: load the slot's `seq` (Acquire, so the entry's words are
//!   visible); if it is `h + 1`, read the words (Relaxed), then release the
//!   slot with `head.store(h + 1, Release)`.
//!
//! # Sleeper handshake (like `IORING_SQ_NEED_WAKEUP`)
//!
//! The producer must not make a wake system call while the consumer is merely
//! spinning, and the consumer must never sleep through a publish. This is a
//! Dekker-style handshake on two variables, each side doing
//! "store mine; `fence(SeqCst)`; load theirs":
//!
//! * producer: `seq.store(Release)` (the publish); `fence(SeqCst)`;
//!   `waiters.load()`; only if non-zero: bump `wake_seq` and
//!   [`Wake::wake_all`] on it;
//! * consumer: `waiters.fetch_add(1)`; `fence(SeqCst)`; load `wake_seq`;
//!   re-check the slot's `seq`; re-check the stop predicate; only then
//!   [`Wake::wait`] on `wake_seq` with the value it loaded.
//!
//! The two fences guarantee that at least one side sees the other: either the
//! consumer sees the new `seq` and does not sleep, or the producer sees
//! `waiters != 0` and rings. Since the producer bumps `wake_seq` *before*
//! waking, and the futex-style wait compares `wake_seq` atomically with going
//! to sleep, a ring that lands between the consumer's checks and its sleep is
//! not lost either.
//!
//! The futex word is `wake_seq` rather than a slot's `seq` so that one word
//! serves the whole ring, and so that a third party (abort,
//! [`wake_all_sleepers`]) can change it too: a stop request that only set a
//! flag and woke sleepers on a slot could fall between the consumer's stop
//! check and its sleep and be lost for a whole sleep slice.
//!
//! # Untrusted-peer rules
//!
//! The other process may write anything at any time into any shared word.
//!
//! * Each side keeps its own authoritative index ([`Producer`] its tail and
//!   the last `head` it validated, [`Consumer`] its head) and never reads it
//!   back from shared memory.
//! * Each shared value is read once into a local, validated, then used: a
//!   `head` that would put more than `N` entries in the ring, or a slot `seq`
//!   that is none of `h + 1`, `h + 1 - N` and 0, yields a `Corrupt` error.
//!   Slot indices are always masked, so nothing can panic or go out of bounds
//!   whatever the shared memory holds.
//! * Entry contents are opaque `u64` words; validating them is the caller's
//!   job. A producer rewriting an entry while the consumer reads it can only
//!   make the consumer read other words, each once.
//! * `waiters` and `wake_seq` only steer wake-ups: garbage there costs at most
//!   a spurious or missed wake-up, and every sleep is bounded by the caller's
//!   slice, so a hostile peer can slow its own session down but not hang or
//!   crash this process.
#![forbid(unsafe_code)]
#![allow(
    dead_code,
    reason = "the whole ring API is exercised by its tests and loom models; the backend uses part of it"
)]

use core::fmt;
use core::time::Duration;

use crate::sync::{AtomicU32, AtomicU64, Ordering, fence};

/// Number of 64-bit payload words in one ring entry.
pub(crate) const ENTRY_WORDS: usize = 4;

/// Largest supported number of entries in a ring.
pub(crate) const MAX_ENTRIES: usize = 4096;

/// Size of the cache-line-sized sections of [`RingHeader`].
const LINE: usize = 128;

/// One ring slot, one 64-byte cache line: the publication word and four opaque
/// 64-bit payload words, written by the producer and read by the consumer.
/// All-zero bytes are a valid (never used) slot.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct Entry {
    /// `i + 1` (wrapping) once the entry of free-running index `i` is
    /// published in this slot; 0 in a slot never used.
    pub(crate) seq: AtomicU32,
    /// Padding (atomic, like every byte a peer may write).
    _pad_seq: AtomicU32,
    /// The payload.
    pub(crate) words: [AtomicU64; ENTRY_WORDS],
    /// Padding that fills the line.
    _pad: [AtomicU64; 3],
}

impl Entry {
    /// A zeroed entry, for rings that live on the heap (tests). In production
    /// entries live in zero-filled shared memory and are never constructed.
    pub(crate) fn new() -> Self {
        Self {
            seq: AtomicU32::new(0),
            _pad_seq: AtomicU32::new(0),
            words: core::array::from_fn(|_| AtomicU64::new(0)),
            _pad: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Default for Entry {
    fn default() -> Self {
        Self::new()
    }
}

/// The shared control block of a ring: the consumer's position and the sleeper
/// bookkeeping, each on its own 128-byte line.
///
/// All-zero bytes are the valid initial state: empty ring, head 0, no
/// sleepers. In production it lives in zero-filled shared memory.
#[repr(C, align(128))]
#[derive(Debug)]
pub(crate) struct RingHeader {
    /// Free-running count of entries consumed; written only by the consumer,
    /// read by the producer only when its cached copy says the ring is full.
    pub(crate) head: AtomicU32,
    /// Padding that keeps `head` alone on its line (atomic words, like every
    /// byte a peer may write).
    _pad_head: [AtomicU32; LINE / 4 - 1],
    /// Number of consumer threads currently committed to sleeping (a count,
    /// since several threads of the consumer process may wait at once).
    /// Written by the consumer, read by the producer after each publish.
    pub(crate) waiters: AtomicU32,
    /// The futex word sleepers wait on. Bumped (wrapping) by the producer
    /// before waking sleepers and by [`wake_all_sleepers`]; only ever compared
    /// for equality, so any value is harmless.
    pub(crate) wake_seq: AtomicU32,
    /// Padding that fills the sleeper line.
    _pad_sleep: [AtomicU32; LINE / 4 - 2],
}

impl RingHeader {
    /// A zeroed header, for rings that live on the heap (tests). Not a
    /// `const fn`, because loom's atomics cannot be built in const context.
    pub(crate) fn new() -> Self {
        Self {
            head: AtomicU32::new(0),
            _pad_head: std::array::from_fn(|_| AtomicU32::new(0)),
            waiters: AtomicU32::new(0),
            wake_seq: AtomicU32::new(0),
            _pad_sleep: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

impl Default for RingHeader {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(not(loom))]
const _: () = {
    assert!(size_of::<Entry>() == 64);
    assert!(align_of::<Entry>() == 64);
    assert!(core::mem::offset_of!(Entry, seq) == 0);
    assert!(core::mem::offset_of!(Entry, words) == 8);
    assert!(size_of::<RingHeader>() == 256);
    assert!(align_of::<RingHeader>() == 128);
    assert!(core::mem::offset_of!(RingHeader, head) == 0);
    assert!(core::mem::offset_of!(RingHeader, waiters) == 128);
    assert!(core::mem::offset_of!(RingHeader, wake_seq) == 132);
};

/// Futex-style sleeping on a shared 32-bit word.
///
/// Production implements it with a Linux shared (non-private) futex.
pub(crate) trait Wake {
    /// Sleep while `word == expected`. Must return at once if `word !=
    /// expected` at the moment of going to sleep (checked atomically with
    /// going to sleep), may return spuriously, and returns after at most about
    /// `timeout`.
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Duration);

    /// Wake every thread sleeping in [`Wake::wait`] on `word`.
    fn wake_all(&self, word: &AtomicU32);
}

/// Error from [`Producer::push`] and [`Producer::free_slots`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// Every slot holds an unconsumed entry; retry later.
    Full,
    /// The consumer's `head` is impossible (more than capacity behind or any
    /// amount ahead of our tail): the peer is broken or hostile.
    Corrupt,
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full => f.write_str("ring is full"),
            Self::Corrupt => f.write_str("ring head index is corrupt"),
        }
    }
}

impl std::error::Error for PushError {}

/// Error from [`Consumer::pop`]: the slot's publication word is impossible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Corrupt;

impl fmt::Display for Corrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ring slot sequence word is corrupt")
    }
}

impl std::error::Error for Corrupt {}

/// Result of one call to [`Ring::wait`] / [`Consumer::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitOutcome {
    /// The slot after the head the caller saw holds an entry: pop (which may
    /// also report corruption).
    Ready,
    /// The stop predicate returned true.
    Stopped,
    /// Slept one slice (or woke spuriously) and the ring is still empty.
    SliceElapsed,
    /// The spin found nothing and the caller's deadline has passed (only from
    /// [`Ring::wait_until`]): nothing was slept.
    TimedOut,
}

/// What a slot's publication word says, for a consumer at index `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// `seq == h + 1`: the entry of index `h` is published.
    Ready,
    /// `seq` is the previous lap's `h + 1 - N`, or 0 (never used).
    Empty,
    /// Anything else: no honest producer writes it.
    Corrupt,
}

/// A validated view of one ring: its header and its entry array.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ring<'a> {
    /// The shared control block.
    header: &'a RingHeader,
    /// The shared slots; the length is a power of two in `1..=MAX_ENTRIES`.
    entries: &'a [Entry],
}

impl<'a> Ring<'a> {
    /// Build a view, or `None` unless `entries.len()` is a power of two in
    /// `1..=MAX_ENTRIES`.
    pub(crate) fn new(header: &'a RingHeader, entries: &'a [Entry]) -> Option<Self> {
        let n = entries.len();
        (n.is_power_of_two() && n <= MAX_ENTRIES).then_some(Self { header, entries })
    }

    /// Number of slots.
    pub(crate) fn capacity(&self) -> u32 {
        // Lossless: the length is at most MAX_ENTRIES.
        self.entries.len() as u32
    }

    /// The shared header.
    pub(crate) fn header(&self) -> &'a RingHeader {
        self.header
    }

    /// The slot holding free-running index `index` (always in bounds).
    fn slot(&self, index: u32) -> &'a Entry {
        &self.entries[(index & (self.capacity() - 1)) as usize]
    }

    /// Reads (once, Acquire) and classifies the publication word of the slot
    /// of index `h`, as a consumer at `h` sees it.
    fn slot_state(&self, h: u32) -> SlotState {
        let seq = self.slot(h).seq.load(Ordering::Acquire);
        let next = h.wrapping_add(1);
        if seq == next {
            SlotState::Ready
        } else if seq == next.wrapping_sub(self.capacity()) || seq == 0 {
            SlotState::Empty
        } else {
            SlotState::Corrupt
        }
    }

    /// Consumer side: wait until the slot after `seen_head` (the consumer's
    /// own head as last seen by this thread) holds an entry, `stop()` holds,
    /// or one sleep slice has passed.
    ///
    /// Spins up to `spins` times checking that slot, then registers as a
    /// sleeper (see the module docs), re-checks the slot and `stop()`, sleeps
    /// at most one `sleep_slice` and re-checks both. Takes `&self` so several
    /// threads may wait on one ring at once; a stale `seen_head` only causes an
    /// early [`WaitOutcome::Ready`] (its slot holds that entry, or a later
    /// one). A corrupt slot also reports `Ready`, for `pop` to tell. The
    /// caller loops with its own deadline.
    pub(crate) fn wait(
        &self,
        seen_head: u32,
        wake: &impl Wake,
        spins: u32,
        sleep_slice: Duration,
        stop: &impl Fn() -> bool,
    ) -> WaitOutcome {
        self.wait_until(seen_head, wake, spins, || Some(sleep_slice), stop)
    }

    /// [`Ring::wait`] with the sleep's length asked of `sleep_slice` only once
    /// the spin found nothing, so that a wait answered while spinning costs no
    /// clock read. `None` from it (the caller's deadline passed) ends the wait
    /// with [`WaitOutcome::TimedOut`] before registering as a sleeper.
    pub(crate) fn wait_until(
        &self,
        seen_head: u32,
        wake: &impl Wake,
        spins: u32,
        sleep_slice: impl FnOnce() -> Option<Duration>,
        stop: &impl Fn() -> bool,
    ) -> WaitOutcome {
        let h = self.header;
        let empty = || self.slot_state(seen_head) == SlotState::Empty;
        let mut spun = 0;
        let mut i = 0;
        while spun < spins {
            if !empty() {
                return WaitOutcome::Ready;
            }
            spun = spun.saturating_add(relax(i));
            i += 1;
        }
        let Some(sleep_slice) = sleep_slice() else {
            return WaitOutcome::TimedOut;
        };

        h.waiters.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        // Load the futex word before re-checking: a bump we load here was made
        // after the matching publish / stop request, so the checks below then
        // see it; a bump we miss makes the sleep return or get woken.
        let seq = h.wake_seq.load(Ordering::Acquire);
        let outcome = if !empty() {
            WaitOutcome::Ready
        } else if stop() {
            WaitOutcome::Stopped
        } else {
            wake.wait(&h.wake_seq, seq, sleep_slice);
            if !empty() {
                WaitOutcome::Ready
            } else if stop() {
                WaitOutcome::Stopped
            } else {
                WaitOutcome::SliceElapsed
            }
        };
        h.waiters.fetch_sub(1, Ordering::SeqCst);
        outcome
    }
}

/// Spin iterations before a waiter first yields its core: about 1 µs of
/// `pause`, several round trips between cores, so an answer already on its
/// way is caught without a system call.
const SPINS_BEFORE_YIELD: u32 = 32;

/// Past [`SPINS_BEFORE_YIELD`], one iteration in this many yields the core
/// instead of pausing.
///
/// When more threads wait than there are cores (every device of a set has a
/// client thread, and the other side spins too), a thread whose command is
/// ready can be waiting for the core a spinner holds: without the yield it
/// waits out the spinner's whole budget (2000 pauses, ~50 µs). A yield with
/// nothing else to run returns at once, so a waiter that owns its core loses
/// only the system call, and only in the slow part of its spin.
const YIELD_EVERY: u32 = 8;

/// What a yield takes from the spin budget, in pauses: about what the system
/// call costs (~0.6 µs here, a pause ~26 ns), so the budget keeps its length
/// in time, and a waiter alone on its core goes to sleep as soon as before.
const YIELD_COST: u32 = 24;

/// Back-off for spin iteration `i`: a CPU pause, with a scheduler yield now
/// and then past the first [`SPINS_BEFORE_YIELD`] (see [`YIELD_EVERY`]); a
/// yield every time under loom (so the model can make progress). Returns what
/// it took from the spin budget.
fn relax(i: u32) -> u32 {
    #[cfg(loom)]
    {
        let _ = i;
        crate::sync::yield_now();
        1
    }
    #[cfg(not(loom))]
    if should_yield(i) {
        crate::sync::yield_now();
        YIELD_COST
    } else {
        crate::sync::spin_loop();
        1
    }
}

/// Whether spin iteration `i` yields the core rather than pausing.
#[cfg_attr(loom, allow(dead_code))]
fn should_yield(i: u32) -> bool {
    i >= SPINS_BEFORE_YIELD && i.is_multiple_of(YIELD_EVERY)
}

/// Wake every consumer thread sleeping on `ring`, whether or not `waiters`
/// says any exist (used by abort after setting the stop condition that the
/// sleepers' `stop` predicate reads).
///
/// Bumps `wake_seq` first so that a sleeper that checked `stop()` just before
/// this call does not go to sleep on a stale value.
pub(crate) fn wake_all_sleepers(ring: &Ring<'_>, wake: &impl Wake) {
    let h = ring.header;
    h.wake_seq.fetch_add(1, Ordering::Release);
    wake.wake_all(&h.wake_seq);
}

/// The producing end of a ring. Owns the authoritative tail and a cached,
/// validated copy of the consumer's head.
#[derive(Debug)]
pub(crate) struct Producer<'a> {
    /// The ring written to.
    ring: Ring<'a>,
    /// Our tail: the index of the next entry to publish. Never read back.
    tail: u32,
    /// The consumer's head as last loaded and validated (`tail - head` is in
    /// `0..=N`); the real head is never behind it for an honest consumer.
    head: u32,
}

impl<'a> Producer<'a> {
    /// Producer starting at `tail` (0 for a fresh ring) that knows nothing of
    /// the consumer's position yet: its first push loads `head`. Writes
    /// nothing; the slots must be as a producer that published up to `tail`
    /// left them.
    pub(crate) fn new(ring: Ring<'a>, tail: u32) -> Self {
        let head = tail.wrapping_sub(ring.capacity());
        Self { ring, tail, head }
    }

    /// Producer resuming at `tail` with `head` as the consumer position it
    /// last validated ([`Producer::seen_head`] of an earlier producer on the
    /// same ring; `(0, 0)` for a fresh ring). `tail - head` must be in
    /// `0..=N`; otherwise this is [`Producer::new`].
    pub(crate) fn resume(ring: Ring<'a>, tail: u32, head: u32) -> Self {
        if tail.wrapping_sub(head) > ring.capacity() {
            Self::new(ring, tail)
        } else {
            Self { ring, tail, head }
        }
    }

    /// The ring this producer writes to.
    pub(crate) fn ring(&self) -> Ring<'a> {
        self.ring
    }

    /// Our authoritative tail.
    pub(crate) fn tail(&self) -> u32 {
        self.tail
    }

    /// The consumer's head as this producer last validated it.
    pub(crate) fn seen_head(&self) -> u32 {
        self.head
    }

    /// Loads the (untrusted) shared `head`, validates it, caches it, and
    /// returns the number of entries the ring holds.
    fn refresh(&mut self) -> Result<u32, PushError> {
        let head = self.ring.header.head.load(Ordering::Acquire);
        let used = self.tail.wrapping_sub(head);
        if used > self.ring.capacity() {
            Err(PushError::Corrupt)
        } else {
            self.head = head;
            Ok(used)
        }
    }

    /// Number of free slots by the shared `head` (loaded now), or
    /// [`PushError::Corrupt`] if it is impossible.
    pub(crate) fn free_slots(&mut self) -> Result<u32, PushError> {
        Ok(self.ring.capacity() - self.refresh()?)
    }

    /// Publish one entry, then wake sleeping consumers if (and only if) the
    /// shared `waiters` count is non-zero. Reads the shared `head` only when
    /// the cached one says the ring is full.
    pub(crate) fn push(
        &mut self,
        entry: [u64; ENTRY_WORDS],
        wake: &impl Wake,
    ) -> Result<(), PushError> {
        let cap = self.ring.capacity();
        if self.tail.wrapping_sub(self.head) >= cap && self.refresh()? == cap {
            return Err(PushError::Full);
        }
        let h = self.ring.header;
        let slot = self.ring.slot(self.tail);
        for (word, value) in slot.words.iter().zip(entry) {
            word.store(value, Ordering::Relaxed);
        }
        self.tail = self.tail.wrapping_add(1);
        slot.seq.store(self.tail, Ordering::Release);
        fence(Ordering::SeqCst);
        if h.waiters.load(Ordering::Relaxed) != 0 {
            h.wake_seq.fetch_add(1, Ordering::Release);
            wake.wake_all(&h.wake_seq);
        }
        Ok(())
    }
}

/// The consuming end of a ring. Owns the authoritative head.
#[derive(Debug)]
pub(crate) struct Consumer<'a> {
    /// The ring read from.
    ring: Ring<'a>,
    /// Our head: the index of the next entry to consume. Never read back.
    head: u32,
}

impl<'a> Consumer<'a> {
    /// Consumer starting at `head` (0 for a fresh ring). Writes nothing; the
    /// shared `head` should already equal `head` (the producer trusts it only
    /// as far as it validates it).
    pub(crate) fn new(ring: Ring<'a>, head: u32) -> Self {
        Self { ring, head }
    }

    /// The ring this consumer reads from.
    pub(crate) fn ring(&self) -> Ring<'a> {
        self.ring
    }

    /// Our authoritative head (pass it to [`Ring::wait`]).
    pub(crate) fn head(&self) -> u32 {
        self.head
    }

    /// Take the oldest entry: `Ok(None)` if the ring is empty, `Err(Corrupt)`
    /// if the slot's publication word is impossible.
    pub(crate) fn pop(&mut self) -> Result<Option<[u64; ENTRY_WORDS]>, Corrupt> {
        match self.ring.slot_state(self.head) {
            SlotState::Empty => Ok(None),
            SlotState::Corrupt => Err(Corrupt),
            SlotState::Ready => {
                let slot = self.ring.slot(self.head);
                let entry = core::array::from_fn(|i| slot.words[i].load(Ordering::Relaxed));
                self.head = self.head.wrapping_add(1);
                self.ring.header.head.store(self.head, Ordering::Release);
                Ok(Some(entry))
            }
        }
    }

    /// [`Ring::wait`] with this consumer's head. For several threads sharing
    /// one consumer behind a lock, copy [`Consumer::ring`] and
    /// [`Consumer::head`] out and call [`Ring::wait`] without the lock held.
    pub(crate) fn wait(
        &self,
        wake: &impl Wake,
        spins: u32,
        sleep_slice: Duration,
        stop: &impl Fn() -> bool,
    ) -> WaitOutcome {
        self.ring.wait(self.head, wake, spins, sleep_slice, stop)
    }
}

#[cfg(any(test, loom))]
pub(crate) use test_wake::CondvarWake;

/// In-process stand-in for a futex, for tests and loom models.
#[cfg(any(test, loom))]
mod test_wake {
    use core::time::Duration;

    #[cfg(loom)]
    use loom::sync::{Condvar, Mutex};
    #[cfg(not(loom))]
    use std::sync::{Condvar, Mutex};

    use super::Wake;
    use crate::sync::{AtomicU32, Ordering};

    /// Futex emulation with a mutex and a condition variable: the word check
    /// and going to sleep happen under the mutex, and waking takes the mutex,
    /// so a wake issued after the word changed cannot be lost. Under loom the
    /// timeout is ignored (infinite sleep), turning any lost wake-up into a
    /// detected deadlock.
    #[derive(Debug, Default)]
    pub(crate) struct CondvarWake {
        /// Serialises the check-then-sleep against wake-ups.
        lock: Mutex<()>,
        /// Where sleepers wait.
        cond: Condvar,
    }

    impl CondvarWake {
        /// A wake object with no sleepers.
        pub(crate) fn new() -> Self {
            Self::default()
        }
    }

    impl Wake for CondvarWake {
        fn wait(&self, word: &AtomicU32, expected: u32, timeout: Duration) {
            let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            if word.load(Ordering::SeqCst) != expected {
                return;
            }
            #[cfg(loom)]
            {
                let _ = timeout;
                drop(self.cond.wait(guard));
            }
            #[cfg(not(loom))]
            drop(self.cond.wait_timeout(guard, timeout));
        }

        fn wake_all(&self, _word: &AtomicU32) {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cond.notify_all();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sync::AtomicBool;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::time::Instant;

    /// A heap ring of `n` slots.
    fn make(n: usize) -> (RingHeader, Vec<Entry>) {
        (RingHeader::new(), (0..n).map(|_| Entry::new()).collect())
    }

    /// Puts a heap ring into the state an honest pair leaves after `start`
    /// entries went through it: empty, head `start`, every slot holding the
    /// publication word of its last entry.
    fn carried(h: &RingHeader, e: &[Entry], start: u32) {
        let cap = e.len() as u32;
        h.head.store(start, Ordering::Relaxed);
        for k in 1..=cap {
            let j = start.wrapping_sub(k);
            e[(j & (cap - 1)) as usize]
                .seq
                .store(j.wrapping_add(1), Ordering::Relaxed);
        }
    }

    /// Deterministic, index-dependent entry contents.
    fn entry(i: u64) -> [u64; ENTRY_WORDS] {
        [
            i,
            !i,
            i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            i ^ 0xDEAD_BEEF,
        ]
    }

    /// Counts wake calls; never sleeps.
    #[derive(Default)]
    struct CountingWake {
        /// Number of `wake_all` calls.
        wakes: AtomicU64,
        /// Number of `wait` calls.
        waits: AtomicU64,
    }

    impl Wake for CountingWake {
        fn wait(&self, _word: &AtomicU32, _expected: u32, _timeout: Duration) {
            self.waits.fetch_add(1, Ordering::Relaxed);
        }
        fn wake_all(&self, _word: &AtomicU32) {
            self.wakes.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn ring_new_checks_length() {
        let h = RingHeader::new();
        for n in [0usize, 3, 5, 6, 7, 12, 100, 4095, 4097, 8192] {
            let e: Vec<Entry> = (0..n).map(|_| Entry::new()).collect();
            assert!(Ring::new(&h, &e).is_none(), "len {n}");
        }
        for shift in 0..=12 {
            let e: Vec<Entry> = (0..1usize << shift).map(|_| Entry::new()).collect();
            let r = Ring::new(&h, &e).expect("power of two");
            assert_eq!(r.capacity(), 1 << shift);
        }
    }

    #[test]
    fn new_header_and_entry_are_zero_state() {
        let (h, e) = make(4);
        assert_eq!(h.head.load(Ordering::Relaxed), 0);
        assert_eq!(h.waiters.load(Ordering::Relaxed), 0);
        assert_eq!(h.wake_seq.load(Ordering::Relaxed), 0);
        for slot in &e {
            assert_eq!(slot.seq.load(Ordering::Relaxed), 0);
        }
        // Zero state: empty to a consumer at 0, all free to a producer at 0.
        let ring = Ring::new(&h, &e).unwrap();
        assert_eq!(Consumer::new(ring, 0).pop(), Ok(None));
        assert_eq!(Producer::new(ring, 0).free_slots(), Ok(4));
    }

    #[test]
    fn fifo_across_many_wraps() {
        let (h, e) = make(4);
        let ring = Ring::new(&h, &e).unwrap();
        let wake = CountingWake::default();
        let mut p = Producer::new(ring, 0);
        let mut c = Consumer::new(ring, 0);
        let (mut pushed, mut popped) = (0u64, 0u64);
        let mut batch = 1;
        while popped < 10_000 {
            for _ in 0..batch {
                if pushed < 10_000 {
                    p.push(entry(pushed), &wake).unwrap();
                    pushed += 1;
                }
            }
            while let Some(got) = c.pop().unwrap() {
                assert_eq!(got, entry(popped));
                popped += 1;
            }
            batch = batch % 4 + 1;
        }
        assert_eq!(c.pop(), Ok(None));
        assert_eq!(wake.wakes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn fifo_across_u32_index_wrap() {
        for cap in [1usize, 2, 4] {
            let (h, e) = make(cap);
            let start = u32::MAX - 9;
            carried(&h, &e, start);
            let ring = Ring::new(&h, &e).unwrap();
            let wake = CountingWake::default();
            let mut p = Producer::new(ring, start);
            let mut c = Consumer::new(ring, start);
            assert_eq!(c.pop(), Ok(None));
            for i in 0..40u64 {
                p.push(entry(i), &wake).unwrap();
                if i % 3 == 0 && cap > 1 {
                    p.push(entry(1000 + i), &wake).unwrap();
                    assert_eq!(c.pop(), Ok(Some(entry(i))));
                    assert_eq!(c.pop(), Ok(Some(entry(1000 + i))));
                } else {
                    assert_eq!(c.pop(), Ok(Some(entry(i))));
                }
                assert_eq!(c.pop(), Ok(None));
            }
            assert_eq!(p.tail(), c.head());
        }
    }

    #[test]
    fn full_when_full() {
        let (h, e) = make(8);
        let ring = Ring::new(&h, &e).unwrap();
        let wake = CountingWake::default();
        let mut p = Producer::new(ring, 0);
        let mut c = Consumer::new(ring, 0);
        for i in 0..8 {
            assert_eq!(p.free_slots(), Ok(8 - i as u32));
            p.push(entry(i), &wake).unwrap();
        }
        assert_eq!(p.free_slots(), Ok(0));
        assert_eq!(p.push(entry(99), &wake), Err(PushError::Full));
        assert_eq!(c.pop(), Ok(Some(entry(0))));
        assert_eq!(p.free_slots(), Ok(1));
        p.push(entry(8), &wake).unwrap();
        assert_eq!(p.push(entry(99), &wake), Err(PushError::Full));
        for i in 1..=8 {
            assert_eq!(c.pop(), Ok(Some(entry(i))));
        }
        assert_eq!(c.pop(), Ok(None));
    }

    #[test]
    fn producer_reads_head_only_when_its_cached_view_is_full() {
        let (h, e) = make(4);
        let ring = Ring::new(&h, &e).unwrap();
        let wake = CountingWake::default();
        // A fresh ring: (0, 0) is a valid view without reading anything.
        let mut p = Producer::resume(ring, 0, 0);
        p.push(entry(0), &wake).unwrap();
        // Garbage in `head` goes unnoticed while the cached view has room...
        h.head.store(u32::MAX / 2, Ordering::Relaxed);
        for i in 1..4 {
            p.push(entry(i), &wake).unwrap();
        }
        assert_eq!(p.seen_head(), 0);
        // ...and is caught when the producer needs the real one.
        assert_eq!(p.push(entry(4), &wake), Err(PushError::Corrupt));
        assert_eq!(p.tail(), 4);
        // A resumed producer with an impossible view starts from nothing.
        h.head.store(1, Ordering::Relaxed);
        let mut p = Producer::resume(ring, 4, 99);
        p.push(entry(4), &wake).unwrap();
        assert_eq!(p.seen_head(), 1);
        assert_eq!(p.push(entry(5), &wake), Err(PushError::Full));
    }

    /// Capacities the hostile-value tests try. The largest ring takes minutes under Miri, which
    /// checks the small ones only.
    const CAPS: &[usize] = if cfg!(miri) {
        &[1, 2, 4]
    } else {
        &[1, 2, 4, 4096]
    };

    /// Offsets (relative to an honest index) and absolute values a hostile
    /// peer might write.
    fn hostile_values(base: u32, cap: u32) -> Vec<u32> {
        let mut v: Vec<u32> = (0..=2 * cap + 2)
            .flat_map(|d| [base.wrapping_add(d), base.wrapping_sub(d)])
            .collect();
        v.extend([
            0,
            1,
            cap,
            cap + 1,
            u32::MAX,
            u32::MAX - 1,
            u32::MAX / 2,
            1 << 31,
        ]);
        v.extend((0..32).map(|b| 1u32 << b));
        v
    }

    #[test]
    fn producer_detects_corrupt_head() {
        for &cap in CAPS {
            let (h, e) = make(cap);
            let cap = cap as u32;
            let ring = Ring::new(&h, &e).unwrap();
            let wake = CountingWake::default();
            for tail in [0u32, 3, cap, u32::MAX, u32::MAX - cap, 1 << 31] {
                for head in hostile_values(tail, cap) {
                    h.head.store(head, Ordering::Relaxed);
                    let used = tail.wrapping_sub(head);
                    let expect = if used > cap {
                        Err(PushError::Corrupt)
                    } else if used == cap {
                        Err(PushError::Full)
                    } else {
                        Ok(())
                    };
                    let mut p = Producer::new(ring, tail);
                    let free = p.free_slots();
                    if used > cap {
                        assert_eq!(free, Err(PushError::Corrupt));
                    } else {
                        assert_eq!(free, Ok(cap - used));
                    }
                    for mut p in [p, Producer::new(ring, tail)] {
                        assert_eq!(
                            p.push(entry(7), &wake),
                            expect,
                            "cap {cap} t {tail} h {head}"
                        );
                        // A failed push must not advance anything.
                        let moved = u32::from(expect.is_ok());
                        assert_eq!(p.tail(), tail.wrapping_add(moved));
                    }
                }
            }
        }
    }

    #[test]
    fn consumer_detects_corrupt_seq() {
        for &cap in CAPS {
            let (h, e) = make(cap);
            let cap = cap as u32;
            let ring = Ring::new(&h, &e).unwrap();
            let wake = CountingWake::default();
            for head in [0u32, 3, cap, u32::MAX, u32::MAX - cap, 1 << 31] {
                let slot = &e[(head & (cap - 1)) as usize];
                let next = head.wrapping_add(1);
                for seq in hostile_values(next, cap) {
                    slot.seq.store(seq, Ordering::Relaxed);
                    let mut c = Consumer::new(ring, head);
                    let got = c.pop();
                    if seq == next {
                        assert!(matches!(got, Ok(Some(_))), "cap {cap} h {head} s {seq}");
                        assert_eq!(c.head(), next);
                    } else if seq == next.wrapping_sub(cap) || seq == 0 {
                        assert_eq!(got, Ok(None), "cap {cap} h {head} s {seq}");
                        // Empty ring, no stop: sleeps one (fake) slice.
                        let out = c.wait(&wake, 2, Duration::ZERO, &|| false);
                        assert_eq!(out, WaitOutcome::SliceElapsed);
                    } else {
                        assert_eq!(got, Err(Corrupt), "cap {cap} h {head} s {seq}");
                        assert_eq!(c.head(), head);
                    }
                    if got != Ok(None) {
                        // Corrupt or not, wait reports Ready so pop can tell.
                        let out = ring.wait(head, &wake, 0, Duration::ZERO, &|| false);
                        assert_eq!(out, WaitOutcome::Ready);
                    }
                }
            }
        }
    }

    #[test]
    fn garbage_in_every_shared_word_never_panics() {
        let (h, e) = make(2);
        let ring = Ring::new(&h, &e).unwrap();
        let wake = CountingWake::default();
        let vals = [
            0u32,
            1,
            2,
            3,
            0x7FFF_FFFF,
            0x8000_0000,
            u32::MAX - 1,
            u32::MAX,
        ];
        for &a in &vals {
            for &b in &vals {
                for &w in &vals {
                    h.head.store(b, Ordering::Relaxed);
                    h.waiters.store(w, Ordering::Relaxed);
                    h.wake_seq.store(a ^ b, Ordering::Relaxed);
                    for (k, slot) in e.iter().enumerate() {
                        slot.seq.store(a.wrapping_add(k as u32), Ordering::Relaxed);
                        slot._pad_seq.store(w, Ordering::Relaxed);
                        for x in slot.words.iter().chain(&slot._pad) {
                            x.store(u64::from(a) << 32 | u64::from(w), Ordering::Relaxed);
                        }
                    }
                    for &mine in &vals {
                        let mut p = Producer::new(ring, mine);
                        let _ = p.free_slots();
                        let _ = p.push([u64::MAX; ENTRY_WORDS], &wake);
                        let mut p = Producer::resume(ring, mine, b);
                        let _ = p.push([u64::MAX; ENTRY_WORDS], &wake);
                        let mut c = Consumer::new(ring, mine);
                        let _ = c.pop();
                        let _ = c.pop();
                        let _ = c.wait(&wake, 1, Duration::ZERO, &|| true);
                        wake_all_sleepers(&ring, &wake);
                    }
                }
            }
        }
    }

    #[test]
    fn push_wakes_only_when_waiters() {
        let (h, e) = make(4);
        let ring = Ring::new(&h, &e).unwrap();
        let wake = CountingWake::default();
        let mut p = Producer::new(ring, 0);
        let mut c = Consumer::new(ring, 0);
        for i in 0..100 {
            p.push(entry(i), &wake).unwrap();
            c.pop().unwrap().unwrap();
        }
        assert_eq!(wake.wakes.load(Ordering::Relaxed), 0);
        assert_eq!(h.wake_seq.load(Ordering::Relaxed), 0);

        h.waiters.store(1, Ordering::Relaxed);
        p.push(entry(0), &wake).unwrap();
        assert_eq!(wake.wakes.load(Ordering::Relaxed), 1);
        assert_eq!(h.wake_seq.load(Ordering::Relaxed), 1);

        h.waiters.store(3, Ordering::Relaxed);
        p.push(entry(1), &wake).unwrap();
        assert_eq!(wake.wakes.load(Ordering::Relaxed), 2);

        // A full ring wakes nobody.
        p.push(entry(2), &wake).unwrap();
        p.push(entry(3), &wake).unwrap();
        assert_eq!(wake.wakes.load(Ordering::Relaxed), 4);
        assert_eq!(p.push(entry(4), &wake), Err(PushError::Full));
        assert_eq!(wake.wakes.load(Ordering::Relaxed), 4);

        h.waiters.store(0, Ordering::Relaxed);
        c.pop().unwrap().unwrap();
        p.push(entry(5), &wake).unwrap();
        assert_eq!(wake.wakes.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn wait_outcomes_and_waiters_balance() {
        let (h, e) = make(2);
        let ring = Ring::new(&h, &e).unwrap();
        let wake = CountingWake::default();
        let c = Consumer::new(ring, 0);
        // Empty, stop set: Stopped without sleeping.
        assert_eq!(
            c.wait(&wake, 3, Duration::ZERO, &|| true),
            WaitOutcome::Stopped
        );
        assert_eq!(wake.waits.load(Ordering::Relaxed), 0);
        // Empty, no stop: one sleep, then SliceElapsed.
        assert_eq!(
            c.wait(&wake, 0, Duration::ZERO, &|| false),
            WaitOutcome::SliceElapsed
        );
        assert_eq!(wake.waits.load(Ordering::Relaxed), 1);
        assert_eq!(h.waiters.load(Ordering::Relaxed), 0);
        // Non-empty: Ready during the spin phase, even if stop is set.
        Producer::new(ring, 0).push(entry(0), &wake).unwrap();
        assert_eq!(
            c.wait(&wake, 1, Duration::ZERO, &|| true),
            WaitOutcome::Ready
        );
        assert_eq!(
            c.wait(&wake, 0, Duration::ZERO, &|| true),
            WaitOutcome::Ready
        );
        assert_eq!(wake.waits.load(Ordering::Relaxed), 1);
        assert_eq!(h.waiters.load(Ordering::Relaxed), 0);
        // A stale head (another thread popped since) is Ready at once, even a
        // whole lap behind.
        let mut p = Producer::new(ring, 1);
        let mut c = Consumer::new(ring, 0);
        c.pop().unwrap().unwrap();
        for i in 1..4 {
            p.push(entry(i), &wake).unwrap();
            c.pop().unwrap().unwrap();
        }
        for stale in 0..4 {
            assert_eq!(
                ring.wait(stale, &wake, 0, Duration::ZERO, &|| false),
                WaitOutcome::Ready,
                "stale head {stale}"
            );
        }
        assert_eq!(
            ring.wait(4, &wake, 0, Duration::ZERO, &|| false),
            WaitOutcome::SliceElapsed
        );
    }

    #[test]
    fn spinning_yields_only_past_the_first_spins_and_then_now_and_then() {
        assert!((0..SPINS_BEFORE_YIELD).all(|i| !should_yield(i)));
        let yields: Vec<u32> = (0..2000).filter(|&i| should_yield(i)).collect();
        assert_eq!(yields.first(), Some(&SPINS_BEFORE_YIELD));
        assert!(yields.windows(2).all(|w| w[1] - w[0] == YIELD_EVERY));
        // A yield takes a pause's worth of budget per pause it costs in time: the default
        // budget of 2000 is spent in 32 pauses, then rounds of 7 pauses and a yield.
        let (mut spun, mut iterations) = (0u32, 0u32);
        while spun < 2000 {
            spun += if should_yield(iterations) {
                YIELD_COST
            } else {
                1
            };
            iterations += 1;
        }
        let yields = (0..iterations).filter(|&i| should_yield(i)).count();
        assert_eq!((iterations, yields, spun), (537, 64, 2009));
    }

    #[test]
    fn wait_until_asks_for_the_slice_only_after_an_empty_spin() {
        let (h, e) = make(2);
        let ring = Ring::new(&h, &e).unwrap();
        let wake = CountingWake::default();
        let asked = &core::cell::Cell::new(0);
        let slice = |s: Option<Duration>| {
            move || {
                asked.set(asked.get() + 1);
                s
            }
        };
        assert_eq!(
            ring.wait_until(0, &wake, 3, slice(None), &|| false),
            WaitOutcome::TimedOut
        );
        assert_eq!((asked.get(), wake.waits.load(Ordering::Relaxed)), (1, 0));
        assert_eq!(h.waiters.load(Ordering::Relaxed), 0);
        assert_eq!(
            ring.wait_until(0, &wake, 3, slice(Some(Duration::ZERO)), &|| false),
            WaitOutcome::SliceElapsed
        );
        assert_eq!((asked.get(), wake.waits.load(Ordering::Relaxed)), (2, 1));
        Producer::new(ring, 0).push(entry(0), &wake).unwrap();
        assert_eq!(
            ring.wait_until(0, &wake, 3, slice(None), &|| false),
            WaitOutcome::Ready
        );
        assert_eq!(asked.get(), 2);
    }

    #[test]
    fn abort_wakes_sleeper_with_condvar_wake() {
        let (h, e) = make(2);
        let ring = Ring::new(&h, &e).unwrap();
        let wake = CondvarWake::new();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let c = Consumer::new(ring, 0);
                let start = Instant::now();
                loop {
                    // Long slices: only the abort wake-up ends this promptly,
                    // but the loop is still bounded.
                    let out = c.wait(&wake, 10, Duration::from_millis(500), &|| {
                        stop.load(Ordering::SeqCst)
                    });
                    if out != WaitOutcome::SliceElapsed {
                        return out;
                    }
                    assert!(start.elapsed() < Duration::from_secs(10), "never stopped");
                }
            });
            std::thread::sleep(Duration::from_millis(20));
            stop.store(true, Ordering::SeqCst);
            wake_all_sleepers(&ring, &wake);
            assert_eq!(waiter.join().unwrap(), WaitOutcome::Stopped);
        });
        assert_eq!(h.waiters.load(Ordering::Relaxed), 0);
    }

    /// One step of the model-based property test.
    #[derive(Debug, Clone)]
    enum Op {
        /// Push the next entry.
        Push,
        /// Pop one entry.
        Pop,
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: if cfg!(miri) { 4 } else { 256 },
            ..ProptestConfig::default()
        })]

        /// Any sequence of pushes and pops, from any starting index, behaves like a bounded
        /// FIFO queue; the producer is rebuilt for every push from its saved (tail, head) as the
        /// backend does, and pushes never touch the shared head unless the queue is full.
        #[test]
        fn ring_behaves_like_a_bounded_queue(
            shift in 0u32..4,
            start in prop_oneof![Just(0u32), any::<u32>(), Just(u32::MAX - 3)],
            ops in proptest::collection::vec(
                prop_oneof![3 => Just(Op::Push), 2 => Just(Op::Pop)],
                0..200,
            ),
        ) {
            let cap = 1usize << shift;
            let (h, e) = make(cap);
            carried(&h, &e, start);
            let ring = Ring::new(&h, &e).unwrap();
            let wake = CountingWake::default();
            let mut model = VecDeque::new();
            let (mut tail, mut seen) = (start, start);
            let mut c = Consumer::new(ring, start);
            let mut next = 0u64;
            for op in ops {
                match op {
                    Op::Push => {
                        let mut p = Producer::resume(ring, tail, seen);
                        let got = p.push(entry(next), &wake);
                        if model.len() < cap {
                            prop_assert_eq!(got, Ok(()));
                            model.push_back(next);
                            next += 1;
                        } else {
                            prop_assert_eq!(got, Err(PushError::Full));
                        }
                        (tail, seen) = (p.tail(), p.seen_head());
                        prop_assert!(tail.wrapping_sub(seen) <= cap as u32);
                    }
                    Op::Pop => {
                        let got = c.pop();
                        prop_assert_eq!(got, Ok(model.pop_front().map(entry)));
                    }
                }
                prop_assert_eq!(tail.wrapping_sub(c.head()) as usize, model.len());
                let out = ring.wait(c.head(), &wake, 0, Duration::ZERO, &|| false);
                let expect = if model.is_empty() {
                    WaitOutcome::SliceElapsed
                } else {
                    WaitOutcome::Ready
                };
                prop_assert_eq!(out, expect);
            }
        }
    }

    // 200 000 entries through two threads: hours under Miri, so native only.
    #[cfg(not(miri))]
    #[test]
    fn two_thread_stress() {
        const N: u64 = 200_000;
        const STALL: Duration = Duration::from_secs(10);
        let (h, e) = make(8);
        let ring = Ring::new(&h, &e).unwrap();
        let wake = CondvarWake::new();
        let failed = AtomicBool::new(false);
        std::thread::scope(|s| {
            let producer = s.spawn(|| {
                let mut p = Producer::new(ring, 0);
                let mut last = Instant::now();
                let mut i = 0;
                while i < N {
                    match p.push(entry(i), &wake) {
                        Ok(()) => {
                            i += 1;
                            last = Instant::now();
                            if i % 4099 == 0 {
                                std::thread::sleep(Duration::from_micros(300));
                            } else if i % 97 == 0 {
                                std::thread::yield_now();
                            }
                        }
                        Err(PushError::Full) => {
                            if failed.load(Ordering::Relaxed) || last.elapsed() > STALL {
                                failed.store(true, Ordering::Relaxed);
                                return Err(format!("producer stuck at {i}"));
                            }
                            std::thread::yield_now();
                        }
                        Err(PushError::Corrupt) => {
                            failed.store(true, Ordering::Relaxed);
                            return Err(format!("corrupt at {i}"));
                        }
                    }
                }
                Ok(())
            });
            let consumer = s.spawn(|| {
                let mut c = Consumer::new(ring, 0);
                let mut next = 0;
                let mut last = Instant::now();
                while next < N {
                    match c.pop() {
                        Ok(Some(got)) => {
                            if got != entry(next) {
                                failed.store(true, Ordering::Relaxed);
                                return Err(format!("entry {next}: got {got:?}"));
                            }
                            next += 1;
                            last = Instant::now();
                        }
                        Ok(None) => {
                            if failed.load(Ordering::Relaxed) || last.elapsed() > STALL {
                                failed.store(true, Ordering::Relaxed);
                                return Err(format!("consumer stuck at {next}"));
                            }
                            let _ = c.wait(&wake, 0, Duration::from_millis(1), &|| false);
                        }
                        Err(Corrupt) => {
                            failed.store(true, Ordering::Relaxed);
                            return Err(format!("corrupt at {next}"));
                        }
                    }
                }
                Ok(())
            });
            let p = producer.join().unwrap();
            let c = consumer.join().unwrap();
            assert_eq!(c, Ok(()));
            assert_eq!(p, Ok(()));
        });
        assert_eq!(h.waiters.load(Ordering::Relaxed), 0);
        assert_eq!(h.head.load(Ordering::Relaxed), N as u32);
        assert_eq!(
            e[((N - 1) % 8) as usize].seq.load(Ordering::Relaxed),
            N as u32
        );
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::AtomicBool;
    use loom::sync::Arc;
    use loom::thread;

    /// Header and entries of one heap ring, shareable between loom threads.
    struct Shared {
        /// Control block.
        header: RingHeader,
        /// Slots.
        entries: Vec<Entry>,
        /// Futex stand-in.
        wake: CondvarWake,
        /// Stop flag read by the consumer's predicate.
        stop: AtomicBool,
    }

    impl Shared {
        /// A fresh ring of `n` slots.
        fn new(n: usize) -> Arc<Self> {
            Arc::new(Self {
                header: RingHeader::new(),
                entries: (0..n).map(|_| Entry::new()).collect(),
                wake: CondvarWake::new(),
                stop: AtomicBool::new(false),
            })
        }

        /// The ring view.
        fn ring(&self) -> Ring<'_> {
            Ring::new(&self.header, &self.entries).unwrap()
        }
    }

    /// Model builder with a preemption bound that keeps runs short.
    fn builder() -> loom::model::Builder {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b
    }

    #[test]
    fn loom_push_two_pop_two_with_wait() {
        builder().check(|| {
            let shared = Shared::new(2);
            let producer = {
                let shared = shared.clone();
                thread::spawn(move || {
                    let mut p = Producer::new(shared.ring(), 0);
                    p.push([1, 2, 3, 4], &shared.wake).unwrap();
                    p.push([5, 6, 7, 8], &shared.wake).unwrap();
                })
            };
            let mut c = Consumer::new(shared.ring(), 0);
            let mut got = Vec::new();
            while got.len() < 2 {
                match c.pop().unwrap() {
                    Some(e) => got.push(e),
                    None => {
                        let out = c.wait(&shared.wake, 1, Duration::from_millis(1), &|| false);
                        assert_ne!(out, WaitOutcome::Stopped);
                    }
                }
            }
            assert_eq!(got, [[1, 2, 3, 4], [5, 6, 7, 8]]);
            producer.join().unwrap();
            assert_eq!(shared.header.waiters.load(Ordering::Relaxed), 0);
        });
    }

    /// A one-slot ring carrying three entries: the producer may overwrite the
    /// slot only after the consumer's reads of it (head Acquire/Release), and
    /// it reads `head` only when its cached view says full.
    #[test]
    fn loom_one_slot_wraps() {
        builder().check(|| {
            let shared = Shared::new(1);
            let producer = {
                let shared = shared.clone();
                thread::spawn(move || {
                    let mut p = Producer::new(shared.ring(), 0);
                    for i in 1..=3u64 {
                        loop {
                            match p.push([i, i + 10, i + 20, i + 30], &shared.wake) {
                                Ok(()) => break,
                                Err(PushError::Full) => thread::yield_now(),
                                Err(PushError::Corrupt) => panic!("honest head is corrupt"),
                            }
                        }
                    }
                })
            };
            let mut c = Consumer::new(shared.ring(), 0);
            let mut got = Vec::new();
            while got.len() < 3 {
                match c.pop().unwrap() {
                    Some(e) => got.push(e),
                    None => {
                        let out = c.wait(&shared.wake, 1, Duration::from_millis(1), &|| false);
                        assert_ne!(out, WaitOutcome::Stopped);
                    }
                }
            }
            assert_eq!(got, [[1, 11, 21, 31], [2, 12, 22, 32], [3, 13, 23, 33]]);
            producer.join().unwrap();
            assert_eq!(shared.header.waiters.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn loom_two_waiters_one_push() {
        builder().check(|| {
            let shared = Shared::new(2);
            let waiter = {
                let shared = shared.clone();
                thread::spawn(move || wait_until_ready(&shared))
            };
            let producer = {
                let shared = shared.clone();
                thread::spawn(move || {
                    let mut p = Producer::new(shared.ring(), 0);
                    p.push([9; ENTRY_WORDS], &shared.wake).unwrap();
                })
            };
            wait_until_ready(&shared);
            waiter.join().unwrap();
            producer.join().unwrap();
            assert_eq!(shared.header.waiters.load(Ordering::Relaxed), 0);
        });
    }

    /// One consumer thread waiting (without popping) until the ring is
    /// non-empty; panics on `Stopped`.
    fn wait_until_ready(shared: &Shared) {
        let ring = shared.ring();
        loop {
            match ring.wait(0, &shared.wake, 1, Duration::from_millis(1), &|| false) {
                WaitOutcome::Ready => return,
                WaitOutcome::SliceElapsed => {}
                WaitOutcome::Stopped => panic!("no stop was requested"),
                WaitOutcome::TimedOut => panic!("a fixed slice never times out"),
            }
        }
    }

    #[test]
    fn loom_stop_wakes_sleeper() {
        builder().check(|| {
            let shared = Shared::new(2);
            let aborter = {
                let shared = shared.clone();
                thread::spawn(move || {
                    shared.stop.store(true, Ordering::Release);
                    wake_all_sleepers(&shared.ring(), &shared.wake);
                })
            };
            let c = Consumer::new(shared.ring(), 0);
            let out = c.wait(&shared.wake, 1, Duration::from_millis(1), &|| {
                shared.stop.load(Ordering::Acquire)
            });
            assert_eq!(out, WaitOutcome::Stopped);
            aborter.join().unwrap();
        });
    }
}
