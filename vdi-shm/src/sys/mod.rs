//! The platform layer: everything the backend needs from the operating system.
//!
//! A platform module provides:
//! - `Mapping`: a shared memory object, created (sealed, pre-allocated, mapped populated) or
//!   opened from a descriptor a peer sent, with typed views of atomics at fixed offsets;
//! - `futex_wait`/`futex_wake_all` (and `FutexWake` for the ring): a cross-process wait on a
//!   32-bit word in shared memory, always bounded by a timeout;
//! - `Socket`: the rendezvous, a listening and connected socket named in the library's own
//!   namespace that carries descriptors and tells the peer's credentials; its hang-up is how a
//!   dead peer is noticed;
//! - `Notifier` and `poll`: for the monitor thread that watches the sockets.
//!
//! Linux is implemented (`linux.rs`); Windows comes through vdi-win.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;
