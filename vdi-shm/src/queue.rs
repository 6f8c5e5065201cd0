//! The rings as the backend uses them: a process keeps its own index of each ring it produces
//! to or consumes from (never trusting the copy in shared memory), and sleeps and wakes through
//! the shared futex.

use crate::{
    ring::{Consumer, Producer, PushError, Ring, WaitOutcome, wake_all_sleepers},
    sys::FutexWake,
    wait::LazyDeadline,
};

/// This process's authoritative position in one ring: the producer's tail, or the consumer's
/// head (never trusting the copy in shared memory). A producer also keeps the consumer's head
/// as it last validated it, so that it reads the shared one only when the ring looks full.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RingIndex {
    /// Our own index: the next entry to publish or to consume.
    index: u32,
    /// Producers only: the consumer's head as last validated (`index - peer` is at most the
    /// capacity; 0 and 0 for a fresh ring, whose consumer is at 0).
    peer: u32,
}

/// Pushes one entry, waking the consumer if it sleeps.
pub(crate) fn push(ring: &Ring<'_>, idx: &mut RingIndex, entry: [u64; 4]) -> Result<(), PushError> {
    let mut p = Producer::resume(*ring, idx.index, idx.peer);
    let r = p.push(entry, &FutexWake);
    idx.index = p.tail();
    idx.peer = p.seen_head();
    r
}

/// Pops one entry; `Err` when the producer's index is impossible (a misbehaving peer).
pub(crate) fn pop(ring: &Ring<'_>, idx: &mut RingIndex) -> Result<Option<[u64; 4]>, ()> {
    let mut c = Consumer::new(*ring, idx.index);
    let r = c.pop();
    idx.index = c.head();
    r.map_err(|_| ())
}

/// Waits for an entry past `seen`: spins `spins` times, then sleeps at most the slice
/// `deadline` gives (reading the clock only then); [`WaitOutcome::TimedOut`] when it has passed.
pub(crate) fn wait(
    ring: &Ring<'_>,
    seen: RingIndex,
    spins: u32,
    deadline: &mut LazyDeadline,
    stop: &impl Fn() -> bool,
) -> WaitOutcome {
    ring.wait_until(
        seen.index,
        &FutexWake,
        spins,
        || deadline.next_slice(),
        stop,
    )
}

/// Wakes every thread, in any process, sleeping on the ring.
pub(crate) fn wake(ring: &Ring<'_>) {
    wake_all_sleepers(ring, &FutexWake);
}
