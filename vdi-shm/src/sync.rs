//! Synchronisation primitives shim: `loom`'s model-checked versions under
//! `--cfg loom`, the `std` ones otherwise. Code that must be checkable by loom
//! imports its atomics from here and nowhere else.

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
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
#[cfg(not(loom))]
#[allow(unused_imports)]
pub(crate) use std::thread::yield_now;
