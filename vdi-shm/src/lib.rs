//! Both sides of a VDI device set over shared memory, across processes, with zero copies.
//!
//! [`ShmClient`] creates sets (`CreateEx`) and joins them from secondary processes
//! (`OpenInSecondary`); [`ShmServer`] opens them (`Open`) as SQL Server would. Both implement
//! `vdi-core`'s traits, so code written against the traits runs over this backend or over
//! Microsoft's sqlvdi.dll alike.
//!
//! What it does, and how:
//! - **Rendezvous.** The creator listens on a socket named after the set in the library's own
//!   namespace (Linux: the abstract socket namespace, freed by the kernel when the creator dies,
//!   so a stale set never blocks its name). Peers connect, their credentials are checked (same
//!   user, or an admitted user or group: see [`Options`]), and shared memory travels as sealed
//!   memfds.
//! - **Zero copy.** Buffers live in shared segments the server allocates, pre-faulted, with the
//!   client's prefix zone directly below each aligned data zone. A command hands the client the
//!   server's buffer itself; a completion hands it back.
//! - **Commands.** Each device has a command ring (server → client) and a completion ring
//!   (client → server) of [`QUEUE_DEPTH`] entries; a full queue gives the server `VD_E_BUSY`.
//! - **Waiting.** A waiter spins briefly, then sleeps on a shared futex after announcing
//!   itself, so a producer makes a system call only when someone sleeps; every sleep is bounded.
//! - **Death and garbage.** A monitor thread per process watches its connections; a peer that
//!   dies (even by SIGKILL) aborts the set and wakes every waiter. Every value read from shared
//!   memory is read once, validated, then used; a peer that writes garbage causes `VD_E_ABORT`
//!   (reason: the peer misbehaved), never an out-of-bounds access, a panic or a hang.
//!
//! # Async
//!
//! Waits here block the calling thread. An async layer (vdi-async) runs blocking calls on a
//! dedicated waiter thread per device and wakes tasks from there; the calls take timeouts, so
//! such a thread never blocks for longer than it chooses.
//!
//! # Platforms
//!
//! Linux. Windows comes through vdi-win; on other systems the crate builds but has no backend.

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

#[cfg(all(target_os = "linux", not(any(loom, miri))))]
mod client;
#[cfg(all(target_os = "linux", not(any(loom, miri))))]
mod layout;
#[cfg(all(target_os = "linux", not(any(loom, miri))))]
mod monitor;
#[cfg(all(target_os = "linux", not(any(loom, miri))))]
mod queue;
#[cfg(all(target_os = "linux", not(any(loom, miri))))]
mod segments;
#[cfg(all(target_os = "linux", not(any(loom, miri))))]
mod server;
#[cfg(all(target_os = "linux", not(any(loom, miri))))]
mod sys;
#[cfg(all(target_os = "linux", not(any(loom, miri))))]
mod view;
#[cfg(all(target_os = "linux", not(any(loom, miri))))]
mod wire;

#[cfg(all(
    target_os = "linux",
    not(any(loom, miri)),
    any(test, feature = "fuzzing")
))]
#[doc(hidden)]
pub mod fuzzing;

#[cfg(all(target_os = "linux", not(any(loom, miri))))]
pub use client::{ClientDevice, ClientSet, Command, MappedBuffer, ShmClient};
#[cfg(all(target_os = "linux", not(any(loom, miri))))]
pub use layout::{DESCRIPTORS, MAX_SEGMENTS, QUEUE_DEPTH};
#[cfg(all(target_os = "linux", not(any(loom, miri))))]
pub use server::{Buffer, ServerDevice, ServerSet, ShmServer};

/// Options of a client or server backend.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Also admit peers running as this user (SQL Server on Linux runs as `mssql`).
    pub admit_uid: Option<u32>,
    /// Also admit peers whose effective group is this one.
    pub admit_gid: Option<u32>,
    /// How many times a waiter spins before it sleeps (default 2000, a few microseconds).
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
