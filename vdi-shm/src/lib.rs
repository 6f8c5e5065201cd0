//! Both sides of a VDI device set over shared memory, across processes, with zero copies.
//!
//! [`ShmClient`] creates sets (`CreateEx`) and joins them from secondary processes
//! (`OpenInSecondary`); [`ShmServer`] opens them (`Open`) as SQL Server would. Both implement
//! `vdi-core`'s traits, so code written against the traits runs over this backend or over
//! Microsoft's sqlvdi.dll alike.
//!
//! What it does, and how:
//! - **Rendezvous.** The creator listens on a socket named after the set in the library's own
//!   namespace (Linux: the abstract socket namespace; Windows: a named pipe
//!   `\\.\pipe\vdi-shm.1\<name>`; other Unix systems: a socket file in a private directory of
//!   the user, held by a lock), freed by the system when the creator dies, so a stale set never
//!   blocks its name. Peers connect, their credentials are checked (same user, or on Linux an
//!   admitted user or group: see [`Options`]), and shared memory travels as sealed memfds
//!   (Linux), as section handles the peer duplicates (Windows), or as POSIX shared memory
//!   descriptors (other Unix systems).
//! - **Zero copy.** Buffers live in shared segments the server allocates, pre-faulted, with the
//!   client's prefix zone directly below each aligned data zone. A command hands the client the
//!   server's buffer itself; a completion hands it back.
//! - **Commands.** Each device has a command ring (server → client) and a completion ring
//!   (client → server) of [`QUEUE_DEPTH`] entries; a full queue gives the server `VD_E_BUSY`.
//! - **Waiting.** A waiter spins briefly (yielding its core now and then after the first
//!   couple of microseconds), then sleeps on a shared futex (Windows: an event per
//!   shared word) after announcing itself, so a producer makes a system call only when someone
//!   sleeps; every sleep is bounded.
//! - **Death and garbage.** A monitor thread per process watches its connections; a peer that
//!   dies (even by SIGKILL or `TerminateProcess`) aborts the set and wakes every waiter. Every value read from shared
//!   memory is read once, validated, then used; a peer that writes garbage causes `VD_E_ABORT`
//!   (reason: the peer misbehaved), never an out-of-bounds access, a panic or a hang.
//!
//! # Async
//!
//! Waits here block the calling thread. An async layer (vdi-async) polls with a zero timeout
//! from its tasks and leaves the blocking waits to a waiter thread per device, which wakes the
//! tasks; the calls take timeouts, so such a thread never blocks for longer than it chooses.
//!
//! # Platforms
//!
//! Linux, Windows and other Unix systems, each behind the platform contract written atop
//! `src/sys/mod.rs` (`sys/linux.rs`, `sys/windows/`, `sys/posix/`); the rest of the crate is
//! shared. On Windows, both processes of a set must run as the same user at the same integrity
//! level (they duplicate each other's handles), and set names that differ only in case collide
//! (pipe names are case-insensitive). Elsewhere the crate builds but has no backend.
//!
//! The portable Unix backend (macOS, FreeBSD, and every Unix but Linux) uses only portable
//! facilities: POSIX shared memory, a socket pair for each word processes sleep on (instead of
//! a futex), and a socket file per set in a directory of the user (macOS: in the user's private
//! temporary directory; elsewhere `/tmp/vdi-shm.1-<uid>/`, which another user could block by
//! creating it first), so both processes of a set must run as the same user. It has one
//! residual risk the others do not: where nothing stops a shared memory object from shrinking
//! (Linux with `portable-unix`; macOS refuses to resize one, FreeBSD seals it), a peer of the
//! same user holding a segment could shrink it and crash this process with SIGBUS. A set of 64 devices costs 258 descriptors in
//! each process (two per sleeping word).
//!
//! # Features
//!
//! - `portable-unix`: the portable Unix backend on Linux too, instead of the Linux one, for
//!   testing the fallback on Linux; not for applications.
//! - `fuzzing`: entry points for cargo-fuzz; not for applications.

#![warn(missing_docs, missing_debug_implementations)]
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

#[allow(dead_code, reason = "parts are used only by tests and the server")]
pub(crate) mod pool;
pub(crate) mod ring;
pub(crate) mod sync;

/// The items of the shared-memory backend itself, which exists on Unix and Windows and not under
/// loom or Miri (which check `ring` and `pool` alone): one `cfg` for all of them.
macro_rules! backend {
    ($($item:item)*) => {
        $(
            #[cfg(all(any(unix, windows), not(any(loom, miri))))]
            $item
        )*
    };
}

backend! {
    mod client;
    mod layout;
    mod monitor;
    mod queue;
    mod segments;
    mod server;
    mod sys;
    mod view;
    mod wait;
    mod wire;

    #[cfg(any(test, feature = "fuzzing"))]
    #[doc(hidden)]
    pub mod fuzzing;

    pub use client::{ClientDevice, ClientSet, Command, MappedBuffer, ShmClient};
    pub use layout::{DESCRIPTORS, MAX_SEGMENTS, QUEUE_DEPTH};
    pub use server::{Buffer, ServerDevice, ServerSet, ShmServer};
}

/// Support for vdi-bench's floors, not an API (the Linux backend's sealed memfds).
#[cfg(all(
    target_os = "linux",
    not(feature = "portable-unix"),
    not(any(loom, miri))
))]
#[doc(hidden)]
pub mod floor;

/// Test support, not an API: what is left of set `name`, as `(mappings, rendezvous)`: this
/// process's mappings of the set's shared memory, and whether the set's pipe still exists.
#[cfg(all(
    any(
        windows,
        all(unix, any(not(target_os = "linux"), feature = "portable-unix"))
    ),
    not(any(loom, miri))
))]
#[doc(hidden)]
pub fn leftovers(name: &str) -> (usize, usize) {
    sys::leftovers(name)
}

/// Options of a client or server backend.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Also admit peers running as this user (SQL Server on Linux runs as `mssql`). Linux only:
    /// on Windows only peers of this process's own user (token SID) are admitted, and with the
    /// portable Unix backend only peers of this process's user reach the set's directory.
    pub admit_uid: Option<u32>,
    /// Also admit peers whose effective group is this one. Linux only, as `admit_uid`.
    pub admit_gid: Option<u32>,
    /// How many times a waiter spins before it sleeps (default 2000: about 50 µs on a current
    /// x86 core). Past the first 32 spins, one in 8 yields the core to any other thread ready
    /// to run on it (and counts as 24 spins), so waiters that outnumber the cores do not hold
    /// up the thread whose command is ready.
    pub spins: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            admit_uid: None,
            admit_gid: None,
            spins: 2000,
        }
    }
}

impl Options {
    /// Admits peers running as user `uid` besides this process's own user.
    pub fn admit_uid(mut self, uid: u32) -> Self {
        self.admit_uid = Some(uid);
        self
    }

    /// Admits peers whose effective group is `gid`.
    pub fn admit_gid(mut self, gid: u32) -> Self {
        self.admit_gid = Some(gid);
        self
    }

    /// Sets how many times a waiter spins before sleeping (0: sleep at once).
    pub fn spins(mut self, spins: u32) -> Self {
        self.spins = spins;
        self
    }
}
