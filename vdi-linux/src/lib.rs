//! The Linux binding to a VDI client library with the Linux SDK's C++ interface: Microsoft's
//! `libsqlvdi.so`, through which SQL Server on Linux runs `BACKUP ... TO VIRTUAL_DEVICE`, or
//! vdi-sdk's drop-in library of the same shape.
//!
//! [`LibSqlVdi`] implements `vdi-core`'s client traits, like vdi-win does for sqlvdi.dll's COM
//! interface, so a backup agent written against those traits runs against SQL Server on Linux
//! unchanged.
//!
//! - **Loaded at run time.** The library is opened with `dlopen` ([`resolve`]: a path given,
//!   else `VDI_SQLVDI_LIB`, else `/opt/mssql/lib/libsqlvdi.so`), after a check of its ELF header;
//!   a missing file, a file that is not a shared library, one built for another machine, and one
//!   without the SDK's members are each a [`LoadError`] naming the path and the cause.
//! - **A C++ shim of our own** (`cpp/shim.cpp`, built by `cc`): the SDK has no C ABI, so the
//!   shim finds the classes' members by their mangled names and calls them, catching every C++
//!   exception; no exception or panic crosses the boundary.
//! - **The same answers as every backend**: each call consults `vdi-core`'s
//!   [`ClientSetMachine`](vdi_core::ClientSetMachine) first and tells it the outcome; the
//!   library's `int` results become `vdi-core` errors in one place; timeouts are in ms, with no
//!   limit as -1.
//! - **Permissions.** SQL Server on Linux runs as `mssql` and opens what `Create` made; by
//!   default `Create` runs with umask 0 ([`LibSqlVdi::umask_zero`]). The user must still be
//!   `mssql`, or share its group both ways (vdi-spec.md section 11); SQL Server aborts a set it
//!   cannot open, which the client sees as `VD_E_ABORT` at `GetConfiguration` or `OpenDevice`.
//!
//! The crate is empty off Linux.
//!
//! Unsafe code lives in `raw` (the shim's functions and the objects they hand out); `client` and
//! `load` deny it.

#[cfg(target_os = "linux")]
mod client;
#[cfg(target_os = "linux")]
mod load;
#[cfg(target_os = "linux")]
mod raw;

#[cfg(target_os = "linux")]
pub use client::{LibCommand, LibDevice, LibMapped, LibSet, LibSqlVdi};
#[cfg(target_os = "linux")]
pub use load::{DEFAULT_PATH, LoadError, PATH_ENV, resolve};
