//! Windows: the COM binding to Microsoft's sqlvdi.dll, behind `vdi-core`'s client traits.
//!
//! [`SqlVdi`] implements [`ClientBackend`](vdi_core::ClientBackend): its sets ([`SqlVdiSet`]),
//! devices ([`SqlVdiDevice`]) and commands ([`SqlVdiCommand`]) drive SQL Server's own Virtual
//! Device Interface, so code written against `vdi-core`'s traits backs up and restores a real
//! SQL Server on Windows as it does over `vdi-shm` elsewhere. Underneath, [`raw`] declares
//! `IClientVirtualDeviceSet2`, `IClientVirtualDeviceSet` and `IClientVirtualDevice` one to one
//! with `vdi.h` (GUIDs, vtable slots, structures), and holds all of this crate's `unsafe` code.
//!
//! It is not a server: SQL Server plays that part, through its own copy of the interfaces. The
//! Windows platform layer of our own shared-memory transport lives in vdi-shm
//! (`vdi-shm/src/sys/windows.rs`: sections, events, a named pipe per set), next to its Linux
//! one, so both sides of a set run on Windows without sqlvdi.dll.
//!
//! # Requirements on Windows
//!
//! - **sqlvdi.dll registered, 64-bit.** It comes with SQL Server (and its client tools); COM
//!   finds it under `HKCR\CLSID\{40700425-0080-11d2-851f-00c04fc21759}\InprocServer32`. A 64-bit
//!   process needs the 64-bit registration: otherwise activation fails with
//!   `REGDB_E_CLASSNOTREG` (0x80040154) or `CLASS_E_CLASSNOTAVAILABLE` (0x80040111), reported as
//!   [`Cause::ClassNotRegistered`].
//! - **An administrator.** `CreateEx` changes the DACL of the process handle to let the SQL
//!   Server service account in; without the right it answers `E_ACCESSDENIED`
//!   ([`Cause::AccessDenied`]). The login that runs `BACKUP`/`RESTORE` must be a member of
//!   sysadmin.
//! - **SQL Server running on this machine**, and the T-SQL (`BACKUP DATABASE … TO
//!   VIRTUAL_DEVICE = 'set name'`) issued from another thread or process once the set exists:
//!   `GetConfiguration` waits for it.
//! - **Instance names without the machine prefix**: `Some("SQL2022")`, not `"HOST\SQL2022"`;
//!   `None` for the default instance. sqlvdi answers `VD_E_INSTANCE_NAME` otherwise
//!   ([`Cause::InstanceName`]).
//!
//! Errors of [`SqlVdi::create_set`] and [`SqlVdi::open_secondary_set`] are [`WinError`]s, which
//! keep such a [`Cause`] and say what to do; through the traits the same errors arrive as plain
//! [`vdi_core::Error`]s, and the cause is logged (`tracing`, warning level).
//!
//! # Thread model
//!
//! sqlvdi's objects are free-threaded and live in the multithreaded apartment (MTA): any thread
//! of the MTA may call them directly, concurrently, with no marshalling (vdi-spec.md §12: the
//! set interface may be used from any thread; Microsoft's samples keep one device per
//! thread). So:
//!
//! - [`SqlVdiSet`], [`SqlVdiDevice`] and [`SqlVdiCommand`] are `Send`, and the set and devices
//!   `Sync`, as `vdi-core`'s traits require. The raw interfaces in [`raw`] are not (a COM
//!   pointer belongs to its apartment); [`raw::FreeThreaded`] is the one, `unsafe`, place that
//!   lifts this, for objects that [`Activate`]'s contract declares free-threaded.
//! - Every call first enters the MTA on the calling thread (`CoInitializeEx(NULL,
//!   COINIT_MULTITHREADED)`, `S_FALSE` included, balanced by `CoUninitialize` when the call
//!   returns), so callers need no COM set-up of their own. A thread in a single-threaded
//!   apartment (one that called `CoInitializeEx(COINIT_APARTMENTTHREADED)`, like a UI thread)
//!   gets `RPC_E_CHANGED_MODE` ([`Cause::SingleThreadedApartment`]) instead of a call that would
//!   break COM's rules.
//! - Each set holds a `CoIncrementMTAUsage` cookie, so the MTA, and sqlvdi.dll with it, stay
//!   loaded while any of its sets, devices or commands live, whatever threads come and go.
//! - `GetCommand` waits alertably: APCs queued to the waiting thread run inside it.
//! - `GetCommand` calls on one device are serialized, each within its own timeout; completions
//!   may come from any thread at any time.
//!
//! # Other platforms
//!
//! The crate builds everywhere, and its docs too. [`SqlVdi::new`]'s sets fail with
//! [`Cause::UnsupportedPlatform`] (`io::ErrorKind::Unsupported` through [`WinError`]); a backend
//! given another [`Activate`] works anywhere, which is how the tests run this layer on Linux
//! against a fake COM object.
//!
//! # Examples
//!
//! A backup over one device, streaming to a file (the T-SQL runs on another thread or
//! process):
//!
//! ```no_run
//! use std::io::Write;
//!
//! use vdi_core::{
//!     ClientCommand, ClientConfig, ClientDevice, ClientDeviceSet, CommandCode,
//!     Completion, Error, Features, Timeout,
//! };
//! use vdi_win::SqlVdi;
//!
//! let config = ClientConfig { features: Features::REQUEST_COMPLETE, ..ClientConfig::default() };
//! let set = SqlVdi::new().create_set(None, "MyBackup-7c9e6679", &config)?;
//! // Now: BACKUP DATABASE [db] TO VIRTUAL_DEVICE = 'MyBackup-7c9e6679' on another connection.
//! set.configuration(Timeout::from_millis(60_000))?;
//! let device = set.open_device("MyBackup-7c9e6679")?;
//! let mut out = std::fs::File::create("db.bak")?;
//! loop {
//!     let cmd = match device.command(Timeout::INFINITE) {
//!         Ok(cmd) => cmd,
//!         Err(Error::Closed) => break,
//!         Err(e) => return Err(e.into()),
//!     };
//!     let completion = match cmd.code() {
//!         CommandCode::WRITE => {
//!             out.write_all(cmd.data())?;
//!             Completion::success(cmd.size())
//!         }
//!         CommandCode::FLUSH | CommandCode::COMPLETE => {
//!             out.sync_all()?;
//!             Completion::success(0)
//!         }
//!         CommandCode::CLEAR_ERROR => Completion::success(0),
//!         _ => Completion::not_supported(),
//!     };
//!     device.complete(cmd, completion)?;
//! }
//! set.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs, missing_debug_implementations)]
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]
#![doc(test(attr(deny(warnings))))]

mod client;
mod error;
pub mod raw;

pub use client::{SqlVdi, SqlVdiCommand, SqlVdiDevice, SqlVdiMapped, SqlVdiSet};
pub use error::{Cause, Op, WinError};
pub use raw::{Activate, ComActivator};
