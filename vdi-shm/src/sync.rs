//! Synchronisation primitives shim: `loom`'s model-checked versions under
//! `--cfg loom`, the `std` ones otherwise. Code that must be checkable by loom
//! imports its atomics from here and nowhere else.
//!
//! This is the one module that names `std::sync::atomic`'s types and fences: `clippy.toml`
//! refuses them elsewhere in the crate. Outside loom they are type aliases (and a forwarding
//! `fence`) rather than re-exports, so that a use elsewhere names the shim, not std.

#[cfg(loom)]
#[allow(unused_imports)]
pub(crate) use loom::hint::spin_loop;
#[cfg(loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
#[cfg(loom)]
#[allow(unused_imports)]
pub(crate) use loom::thread::yield_now;

#[cfg(not(loom))]
#[allow(unused_imports)]
pub(crate) use std::hint::spin_loop;
#[cfg(not(loom))]
#[allow(unused_imports)]
pub(crate) use std::sync::atomic::Ordering;
#[cfg(not(loom))]
#[allow(unused_imports)]
pub(crate) use std::thread::yield_now;

/// std's `AtomicBool` (loom's under `--cfg loom`).
#[cfg(not(loom))]
#[allow(clippy::disallowed_types)] // The shim: the one place that names std's atomics.
pub(crate) type AtomicBool = std::sync::atomic::AtomicBool;
/// std's `AtomicU32` (loom's under `--cfg loom`).
#[cfg(not(loom))]
#[allow(clippy::disallowed_types)] // The shim: the one place that names std's atomics.
pub(crate) type AtomicU32 = std::sync::atomic::AtomicU32;
/// std's `AtomicU64` (loom's under `--cfg loom`).
#[cfg(not(loom))]
#[allow(clippy::disallowed_types)] // The shim: the one place that names std's atomics.
pub(crate) type AtomicU64 = std::sync::atomic::AtomicU64;
/// std's `AtomicUsize`, for tests loom never builds.
#[cfg(all(test, not(loom)))]
#[allow(dead_code)] // Reason: only the portable backend's tests count with it.
#[allow(clippy::disallowed_types)] // The shim: the one place that names std's atomics.
pub(crate) type AtomicUsize = std::sync::atomic::AtomicUsize;

/// std's `fence` (loom's under `--cfg loom`).
#[cfg(not(loom))]
#[allow(dead_code)] // Reason: which modules fence depends on the platform and features.
#[allow(clippy::disallowed_methods)] // The shim: the one place that names std's fence.
#[inline(always)]
pub(crate) fn fence(order: Ordering) {
    std::sync::atomic::fence(order);
}
