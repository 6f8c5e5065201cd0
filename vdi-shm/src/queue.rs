//! The rings as the backend uses them: a process keeps its own index of each ring it produces
//! to or consumes from (never trusting the copy in shared memory), and sleeps and wakes through
//! the shared futex.

use std::time::Duration;

use crate::{
    ring::{Consumer, Producer, PushError, Ring, WaitOutcome, wake_all_sleepers},
    sys::FutexWake,
};

/// This process's authoritative index into one ring (the producer's tail or the consumer's
/// head).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RingIndex(pub(crate) u32);

/// Pushes one entry, waking the consumer if it sleeps.
pub(crate) fn push(ring: &Ring<'_>, idx: &mut RingIndex, entry: [u64; 4]) -> Result<(), PushError> {
    let mut p = Producer::new(*ring, idx.0);
    let r = p.push(entry, &FutexWake);
    idx.0 = p.tail();
    r
}

/// Pops one entry; `Err` when the producer's index is impossible (a misbehaving peer).
pub(crate) fn pop(ring: &Ring<'_>, idx: &mut RingIndex) -> Result<Option<[u64; 4]>, ()> {
    let mut c = Consumer::new(*ring, idx.0);
    let r = c.pop();
    idx.0 = c.head();
    r.map_err(|_| ())
}

/// Waits at most one `slice` for an entry past `seen`, spinning `spins` times first.
pub(crate) fn wait(
    ring: &Ring<'_>,
    seen: RingIndex,
    spins: u32,
    slice: Duration,
    stop: &impl Fn() -> bool,
) -> WaitOutcome {
    ring.wait(seen.0, &FutexWake, spins, slice, stop)
}

/// Wakes every thread, in any process, sleeping on the ring.
pub(crate) fn wake(ring: &Ring<'_>) {
    wake_all_sleepers(ring, &FutexWake);
}
