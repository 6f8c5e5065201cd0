//! The platform layer: everything the backend needs from the operating system.
//!
//! The rest of the crate (layout, rings, pool, client, server, monitor) is platform-neutral and
//! reaches the system only through the items below. Each platform module (`linux.rs`,
//! `windows/`, `posix/`) implements the same contract; this file holds what is common to
//! them, and `wake_table.rs` the emulated futex that Windows and the portable backend share
//! (a kernel object per wake word, found by the word's address).
//!
//! # The contract
//!
//! A platform module provides:
//!
//! - **`Mapping`**: a shared memory object mapped read-write, at a multiple of 64 KiB (the
//!   largest data-zone alignment), its pages committed and touched up front.
//!   `Mapping::create(tag, len, wake_words)` makes a new zero-filled one;
//!   `Mapping::open(attachment, tag, expected_len, wake_words)` maps one a peer sent, after
//!   checking that no peer can shrink it under the mapping, that it is at least `expected_len`
//!   bytes, and that every page is already allocated (`PeerMisbehaved` otherwise).
//!   `len`, `base`, and (here) `contains`, `slice` and `get` give typed [`ShmSafe`] views.
//!   `tag` names the object for diagnostics only (`vdi-shm:<set>:control`, ...).
//! - **Wake-ups**: `futex_wait(word, expected, timeout)` sleeps while `word == expected`, at
//!   most `timeout`, and returns early on a change or a `futex_wake_all(word)` from any process;
//!   `FutexWake` (written once, here) is the same pair as the ring's wait strategy.
//!   `wake_words` (byte offsets given to `Mapping::create`/`open`, the same list on both
//!   sides) are the words of the mapping that processes sleep on; a platform without an
//!   address-keyed cross-process wait (Windows, the portable Unix backend) gives each of them a
//!   kernel object, travels those with the mapping, and finds them through `wake_table.rs`.
//!   Every wait is bounded by its timeout, so a lost wake-up costs latency, never a hang.
//! - **`Socket`**: the rendezvous, named after the set in the library's own namespace. `listen`
//!   fails with `AlreadyExists` when the name is taken, the name is freed when the listener's
//!   process dies (so a stale set never blocks its name), and `connect` to a name nobody listens
//!   on fails at once with `ConnectError::NotFound`. A connection carries small messages
//!   (`send`/`recv`, one message each, with at most one `Mapping` attached as an `Attachment`),
//!   tells the peer's identity (`peer_cred`, checked with `admitted`), and its end (`recv`
//!   returning 0 bytes) is how a dead peer is noticed, also when the peer was killed.
//!   `recv_no_attachments` takes no objects from the peer. `accept` and `recv` answer
//!   `WouldBlock` when nothing is there.
//! - **`Notifier`**, **`Waitable`** and **`poll`**: the monitor thread waits on its notifier,
//!   the listener and its connections at once; `poll` returns which are ready.
//! - `page_size`, `buffer_memory_limit` (the most shared buffer memory one set may have),
//!   `current_pid`, `random_u32`, and `io_error` (a system error as the crate's `Error`).
//!
//! Linux is implemented with sealed memfds, shared futexes and abstract `AF_UNIX` sockets
//! (`linux.rs`); Windows with pagefile-backed sections, events and named pipes, objects passed
//! by handle duplication (`windows/`); every other Unix with POSIX shared memory, a socket
//! pair per wake word and socket files in a private directory held by `flock` (`posix/`,
//! also selected on Linux by the `portable-unix` feature, to test it there). Elsewhere the
//! crate builds without a backend.

use std::time::Duration;

use crate::sync::{AtomicU32, AtomicU64};

#[cfg_attr(
    all(target_os = "linux", not(feature = "portable-unix")),
    path = "linux.rs"
)]
#[cfg_attr(
    all(unix, any(not(target_os = "linux"), feature = "portable-unix")),
    path = "posix/mod.rs"
)]
#[cfg_attr(windows, path = "windows/mod.rs")]
mod imp;

#[cfg(unix)]
mod unix_error;
#[cfg(any(windows, all(unix, any(not(target_os = "linux"), feature = "portable-unix"))))]
mod shared;
#[cfg(any(windows, all(unix, any(not(target_os = "linux"), feature = "portable-unix"))))]
mod wake_table;
#[cfg(unix)]
mod unix_map;

pub(crate) use imp::*;
#[cfg(any(windows, all(unix, any(not(target_os = "linux"), feature = "portable-unix"))))]
pub(crate) use shared::{current_pid, random_u32};

/// Types that may be viewed in shared memory written by an untrusted process.
///
/// # Safety
///
/// Implementors must be valid for every bit pattern (including all zeroes), contain no
/// pointers, and be mutated only through atomic operations, so that a peer writing any bytes at
/// any time can change values but never break memory safety.
pub(crate) unsafe trait ShmSafe: Sync {}

// SAFETY: an AtomicU32 is valid for every bit pattern and is only accessed atomically.
unsafe impl ShmSafe for AtomicU32 {}
// SAFETY: as for AtomicU32.
unsafe impl ShmSafe for AtomicU64 {}
// SAFETY: RingHeader is #[repr(C)] and made of AtomicU32 fields and padding bytes only.
unsafe impl ShmSafe for crate::ring::RingHeader {}
// SAFETY: Entry is #[repr(C)] and made of AtomicU32 and AtomicU64 fields only, with no
// padding bytes between them (its size is the sum of its fields', checked in ring.rs).
unsafe impl ShmSafe for crate::ring::Entry {}

/// Every mapping starts on a multiple of this (the largest data-zone alignment VDI allows), so
/// offsets aligned within a segment are aligned in every process's address space.
pub(crate) const MAP_ALIGN: usize = 64 * 1024;

impl Mapping {
    /// Whether `addr` lies inside the mapping.
    pub(crate) fn contains(&self, addr: *const u8) -> bool {
        let start = self.base() as usize;
        (start..start + self.len()).contains(&(addr as usize))
    }

    /// A view of `count` values of `T` at byte `offset`.
    ///
    /// Offsets come from the local layout computation, never from shared memory, so a range
    /// outside the mapping or a misaligned offset is a bug in this crate: it panics.
    pub(crate) fn slice<T: ShmSafe>(&self, offset: usize, count: usize) -> &[T] {
        let bytes = count
            .checked_mul(size_of::<T>())
            .expect("layout: size overflow");
        assert!(
            offset
                .checked_add(bytes)
                .is_some_and(|end| end <= self.len()),
            "layout: range outside the mapping"
        );
        assert!(
            offset.is_multiple_of(align_of::<T>()),
            "layout: misaligned offset"
        );
        // SAFETY: the range is inside the mapping (checked above), which stays mapped as long
        // as `self` lives (every platform unmaps only in Drop); the offset is aligned for T and
        // the base is aligned to MAP_ALIGN; T is ShmSafe, so any bytes a peer writes are a
        // valid T and all mutation is atomic.
        unsafe { std::slice::from_raw_parts(self.base().add(offset).cast::<T>(), count) }
    }

    /// A view of one `T` at byte `offset` (see [`Mapping::slice`]).
    pub(crate) fn get<T: ShmSafe>(&self, offset: usize) -> &T {
        &self.slice::<T>(offset, 1)[0]
    }
}

/// The platform's wake-ups ([`futex_wait`], [`futex_wake_all`]) as the ring's wait strategy.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FutexWake;

impl crate::ring::Wake for FutexWake {
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Duration) {
        futex_wait(word, expected, timeout);
    }

    fn wake_all(&self, word: &AtomicU32) {
        futex_wake_all(word);
    }
}

/// What a failed connect means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectError {
    /// Nobody listens under the name.
    NotFound,
    /// The system refused for another reason.
    Os(vdi_core::Error),
}

/// Readiness of one waitable after [`poll`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ready {
    /// Data (or a connection) to read.
    pub(crate) readable: bool,
    /// The peer hung up or the descriptor failed.
    pub(crate) hangup: bool,
}
