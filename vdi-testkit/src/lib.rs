//! Test support shared by the workspace's multi-process tests (a dev-dependency only).
//!
//! - Child processes in a role: a test that needs another process re-runs its own test binary
//!   with `--exact <child test>` and the role in `VDI_ROLE`; the child test does nothing unless
//!   [`role`] says it is one. [`ChildProc`] and [`PipedChild`] start such children, [`param`]
//!   reads what the parent passed, [`tell_parent`] and [`from_parent`] carry lines between
//!   them, [`watchdog`] turns a hang into a failure, [`unique_name`] names each set apart.
//! - Deterministic stream data: [`fill`] writes, and [`check`] checks, the bytes of a device's
//!   stream at any offset, so neither side has to keep the stream.
//! - A server set opened and configured for a [`Plan`] ([`open_and_configure`]), over any
//!   [`vdi_core::ServerBackend`].
//! - The workspace's own `libsqlvdi.so`, for tests that load it as a foreign library
//!   ([`built_sqlvdi_lib`]).
//!
//! It is not a library for applications: every failure panics, as a test wants, and it is only
//! ever a `[dev-dependencies]` entry. Of the workspace's crates it depends on vdi-core alone,
//! never on a backend, so that a backend whose tests use it is not built twice. What only one
//! crate's tests need (vdi-shm's drivers, vdi-async's engine, vdi-engine's client) stays in that
//! crate's `tests/common/mod.rs`.

#![forbid(unsafe_code)]

mod process;
mod sdk;
mod server;
mod stream;

pub use process::{
    ChildProc, MSG_TAG, PipedChild, from_parent, init_tracing, param, param_u64, role, tell_parent,
    unique_name, watchdog,
};
pub use sdk::{SQLVDI_LIB_ENV, built_sqlvdi_lib};
pub use server::{OpenRetry, Plan, open_and_configure};
pub use stream::{check, device_name, fill, splitmix};
