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
//! - Object-storage servers for the S3 and Azure Blob tests ([`S3Server`]: moto or s3s-fs;
//!   [`Azurite`]), installed by `cargo xtask objstore-test` and found with [`objstore_tools`],
//!   and a fault-injecting HTTP proxy to put in front of them ([`FaultProxy`]).
//! - The workspace's own `libsqlvdi.so`, for tests that load it as a foreign library
//!   ([`built_sqlvdi_lib`]).
//!
//! It is not a library for applications: every failure panics, as a test wants, and it is only
//! ever a `[dev-dependencies]` entry. Of the workspace's crates it depends on vdi-core alone,
//! never on a backend, so that a backend whose tests use it is not built twice. What only one
//! crate's tests need (vdi-shm's drivers, vdi-async's engine, vdi-engine's client) stays in that
//! crate's `tests/common/mod.rs`.

#![forbid(unsafe_code)]

mod fault_proxy;
mod objstore;
mod process;
mod sdk;
mod server;
mod stream;

pub use fault_proxy::{Fault, FaultProxy, FaultRule, STOP_TIMEOUT};
pub use objstore::{
    AZURITE_ACCOUNT, AZURITE_BLOB_ENV, AZURITE_KEY, Azurite, Capability, HELPER_TIMEOUT,
    MOTO_SERVER_ENV, OBJSTORE_PYTHON_ENV, OBJSTORE_REQUIRED_ENV, ObjstoreTools, S3S_FS_ENV,
    S3Server, SERVER_STOP_TIMEOUT, START_TIMEOUT, objstore_tools,
};
pub use process::{
    ChildProc, MSG_TAG, PipedChild, from_parent, init_tracing, param, param_u64, role, tell_parent,
    unique_name, watchdog,
};
pub use sdk::{SQLVDI_LIB_ENV, built_sqlvdi_lib};
pub use server::{OpenRetry, Plan, open_and_configure};
pub use stream::{check, device_name, fill, splitmix};
