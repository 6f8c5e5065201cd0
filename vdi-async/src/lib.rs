//! VDI device sets in tokio, over any `vdi-core` client backend (the shared-memory backend
//! `vdi-shm`, or the COM binding to sqlvdi.dll), with no protocol logic of its own.
//!
//! - [`AsyncSet`]: create a set or join one as a secondary, await its configuration, open
//!   devices, abort, close.
//! - [`AsyncDevice`] and [`CommandStream`]: a device's commands as a [`futures::Stream`], taken
//!   by the polling task itself when they are there (no thread hop), by a waiter thread when
//!   the task would have to wait; many tasks may take commands of one device at once, up to a
//!   bound on outstanding commands, so a slow consumer pushes back on the engine instead of
//!   growing memory.
//! - [`AsyncCommand`]: an owned command, completed exactly once. [`AsyncCommand::complete`]
//!   consumes it; [`AsyncCommand::into_bytes`] turns a Write's data into [`bytes::Bytes`]
//!   without a copy and completes it when the last clone drops; a command dropped otherwise is
//!   completed with `ERROR_OPERATION_ABORTED` (995) and a warning.
//! - Byte streams in stream order: [`BackupReader`] ([`tokio::io::AsyncRead`] and
//!   [`tokio::io::AsyncBufRead`]) and the drivers [`backup_to`] (into a [`BackupSink`]) and
//!   [`restore_from`] (from any `AsyncRead`), or [`restore_from_reader`] (from a blocking
//!   `Read`, on a thread of its own, straight into the engine's buffers). Flush and Complete are durability barriers:
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
//! # How waiting works: the polling task first, a waiter thread per device otherwise
//!
//! vdi-core's calls block the calling thread, with a timeout; the COM binding has nothing a
//! reactor could poll (sqlvdi waits on its own events inside `GetCommand`). But `GetCommand`
//! with a zero timeout ([`vdi_core::Timeout::POLL`]) never waits, so a task that polls a
//! device's [`CommandStream`] takes the next command itself when the engine has already sent
//! it (or sends it within 5 µs, for which the task keeps trying, as a blocking `GetCommand`
//! spins before it sleeps), on its own thread: a busy consumer gets its commands with no
//! thread hop, which on a small VM saves two cross-thread wake-ups (tens of µs each) per
//! command. Only when there is no command yet does the task leave the waiting to the device's
//! dedicated thread,
//! `vdi-async <device>`, and return `Pending`: while some task waits and fewer commands are
//! outstanding than the device's bound, that thread calls `GetCommand` with a 100 ms timeout,
//! and hands the command it gets to the device's queue, which wakes the waiting tasks;
//! without a waiting task it sleeps (in 100 ms slices). A poll takes a queued command before
//! it calls `GetCommand` itself.
//!
//! One token guards every `GetCommand` of a device, so the calls are made one at a time, and
//! the commands are numbered ([`AsyncCommand::sequence`]) in the engine's order under it. The
//! thread queues its command before it gives the token back, and a task takes a command
//! itself only with the token and an empty queue: so a single consumer gets the commands in
//! the engine's order whichever way each came, and several consumers each get an increasing
//! subsequence. The thread gives the token back between its 100 ms calls, so tasks can take
//! commands directly as soon as they come again. A task never waits for the token: if the
//! thread holds it, the task lets the thread bring the command. (The module `device` spells
//! out the protocol and why no wake-up is lost.)
//!
//! At `VD_E_CLOSE` every stream of the device ends; after an abort each yields the error once,
//! then ends (whether a task or the thread met the end). No runtime worker thread ever blocks
//! on VDI: `GetConfiguration`, `Close` and the other calls that may wait run on tokio's
//! blocking pool, in 100 ms slices where the call waits. `CompleteCommand` and `GetCommand`
//! with a zero timeout do not wait and run on the calling task's thread.
//!
//! The thread costs a stack per device (a set has at most 64) and wakes every 100 ms while
//! idle; it stops at the device's end. `GetCommand` of a device runs on that thread or on the
//! threads of the tasks that poll the device, one call at a time (the COM binding enters the
//! multithreaded apartment for each call, so any thread will do).
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
#[cfg(all(loom, test))]
mod loom_model;
mod restore;
mod serve;
mod set;

pub use backup::{BackupReader, BackupSink, Summary, WriterSink, backup_to, io_error_code};
pub use command::AsyncCommand;
pub use device::{AsyncDevice, CommandStream, DEFAULT_MAX_OUTSTANDING};
pub use restore::{restore_from, restore_from_reader};
pub use serve::serve_all;
pub use set::AsyncSet;
