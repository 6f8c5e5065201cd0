//! VDI device sets in tokio, over any `vdi-core` client backend (the shared-memory backend
//! `vdi-shm`, or the COM binding to sqlvdi.dll), with no protocol logic of its own.
//!
//! - [`AsyncSet`]: create a set or join one as a secondary, await its configuration, open
//!   devices, abort, close.
//! - [`AsyncDevice`] and [`CommandStream`]: a device's commands as a [`futures::Stream`]; many
//!   tasks may take commands of one device at once, up to a bound on outstanding commands, so
//!   a slow consumer pushes back on the engine instead of growing memory.
//! - [`AsyncCommand`]: an owned command, completed exactly once. [`AsyncCommand::complete`]
//!   consumes it; [`AsyncCommand::into_bytes`] turns a Write's data into [`bytes::Bytes`]
//!   without a copy and completes it when the last clone drops; a command dropped otherwise is
//!   completed with `ERROR_OPERATION_ABORTED` (995) and a warning.
//! - Byte streams in stream order: [`BackupReader`] ([`tokio::io::AsyncRead`] and
//!   [`tokio::io::AsyncBufRead`]) and the drivers [`backup_to`] (into a [`BackupSink`]) and
//!   [`restore_from`] (from any `AsyncRead`). Flush and Complete are durability barriers:
//!   acknowledged only once the data before them is durable.
//! - [`serve_all`]: every device of a set served at once (the engine synchronizes the streams,
//!   so serving devices one after another can deadlock).
//!
//! ```no_run
//! use vdi_async::{AsyncSet, WriterSink, backup_to};
//! use vdi_core::ClientConfig;
//! use vdi_shm::ShmClient;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let set = AsyncSet::create(&ShmClient::new(), None, "MyBackup-1", &ClientConfig::default()).await?;
//! // ... start `BACKUP DATABASE ... TO VIRTUAL_DEVICE = 'MyBackup-1'` ...
//! let config = set.configuration().await?;
//! let device = set.open_device("MyBackup-1").await?;
//! let mut sink = WriterSink::new(tokio::io::sink());
//! let summary = backup_to(&device, &mut sink).await?;
//! set.close().await?;
//! # let _ = (config, summary);
//! # Ok(()) }
//! ```
//!
//! # How waiting works: a waiter thread per device
//!
//! vdi-core's calls block the calling thread, with a timeout; the COM binding has nothing a
//! reactor could poll (sqlvdi waits on its own events inside `GetCommand`). So each opened
//! device gets a dedicated thread, `vdi-async <device>`, which loops: wait (in slices of
//! 100 ms) until fewer commands are outstanding than the device's bound; `GetCommand` with a
//! 100 ms timeout; hand the command to the device's queue, which wakes one waiting task. At
//! `VD_E_CLOSE` every stream of the device ends; after an abort each yields the error once, then
//! ends. No runtime worker thread ever blocks on VDI: `GetConfiguration`, `Close` and the other
//! calls that may wait run on tokio's blocking pool, in 100 ms slices where the call waits.
//! `CompleteCommand` does not wait and runs on the calling task's thread.
//!
//! The thread costs a stack per device (a set has at most 64) and wakes every 100 ms while
//! idle; it stops at the device's end. It also keeps `GetCommand` of a device on one thread,
//! as sqlvdi advises.
//!
//! # Cancel safety
//!
//! Every `async fn` says what dropping its future does in a "Cancel safety" section. In short:
//! taking a command, reading bytes and awaiting the configuration are cancel safe; dropping
//! every handle of a device before its end, or a driver in the middle of its work, completes
//! the commands concerned with `ERROR_OPERATION_ABORTED`, so the engine sees the I/O fail at
//! once: the set is usable or cleanly aborted, never left waiting.
//!
//! # Logging
//!
//! Spans `vdi_set` (info, field `name`) and `vdi_device` (debug, fields `name` and `index`);
//! each command and completion is a `trace!` event with its code, size and device. Nothing is
//! logged per byte.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

mod backup;
mod command;
mod device;
mod restore;
mod serve;
mod set;

pub use backup::{BackupReader, BackupSink, Summary, WriterSink, backup_to, io_error_code};
pub use command::AsyncCommand;
pub use device::{AsyncDevice, CommandStream, DEFAULT_MAX_OUTSTANDING};
pub use restore::restore_from;
pub use serve::serve_all;
pub use set::AsyncSet;
