//! The reference engine: the server side of VDI, behaving as SQL Server does during BACKUP and
//! RESTORE, so that VDI clients can be tested without SQL Server.
//!
//! A client creates a device set and waits in `GetConfiguration`; where it would run
//! `BACKUP DATABASE … TO VIRTUAL_DEVICE = '<set>'`, a test runs [`run_backup`] (in a thread, as
//! a library) or `vdi-engine backup --set <set> --size 1GiB` (as a process). The engine opens
//! the set, configures it, opens every device and streams a deterministic pseudo-database
//! ([`database`]) in the stream format of [`mod@format`]; [`run_restore`] (`vdi-engine restore`)
//! reads the streams back with varying read sizes and checks every byte. Faults can be injected
//! ([`Faults`]), and every failure is a typed [`EngineError`] naming the device, the command
//! and the code.
//!
//! # What it is, and is not
//!
//! It is a stand-in for SQL Server's side of the protocol: the same calls in the same order,
//! the same configuration rules and defaults, the same shape of command stream (devices kept in
//! step, several commands outstanding, Flushes, `VDC_Complete`, early close), and the same
//! reactions to what a client does (error completions, IO-ERROR and `VDC_ClearError`, aborts,
//! timeouts).
//!
//! It is not SQL Server: the stream is its own format, not Microsoft Tape Format; there is no
//! T-SQL and no database; it drives pipe-like devices only (no `VDC_Load`, positioning,
//! filemarks or snapshots). It is generic over [`vdi_core::ServerBackend`]; the process (and
//! the `*_shm` functions) use `vdi-shm` on Linux.
//!
//! # How it maps to SQL Server
//!
//! The sections are those of the project's VDI summary, `vdi-spec.md`.
//!
//! | SQL Server | the engine |
//! |---|---|
//! | `Open` fails at once if the client has not created the set: error 3041, "Open failure … 0x80070002" (§5, §14.1) | [`EngineError::SetNotFound`] at once; [`Options::wait_for_set`] retries instead |
//! | `BeginConfiguration` with `VDF_WriteMedia` (backup) or `VDF_ReadMedia` (restore), and `VDF_CompleteEnabled` when the client set `VDF_RequestComplete` (§3.2, §7.3) | the same; [`Options::send_complete`] can withhold `VDC_Complete` |
//! | `BLOCKSIZE` 512, `MAXTRANSFERSIZE` 64 KiB for VDI, `BUFFERCOUNT` ≈ devices × 4 + devices + 2 by default (§3.1, §14.6) | [`Options::default`], [`default_buffer_count`] |
//! | `RequestBuffers` once for the shared buffers; small metadata buffers on top (§3.1) | `BUFFERCOUNT` buffers of `MAXTRANSFERSIZE`, plus one `BLOCKSIZE` buffer per device for the header and trailer of a backup |
//! | buffers shared by all devices; streams kept in step, so a client that services its devices one after another deadlocks (§9.4) | chunk `i` goes to device `i % N` and gets a buffer only after chunk `i - 1` got one |
//! | several commands outstanding per device; completions in any order (§4) | a sender and a completion thread per device; reads prefetched |
//! | a failed command: SQL stops, waits for what is outstanding, closes the devices, fails the statement (§9.2) | the same; the error names device, command and code (e.g. `ERROR_DISK_FULL`, 112) |
//! | IO-ERROR after an error completion; only `VDC_ClearError` may follow (§6) | the error fault ([`Faults::error_at`]) |
//! | `VDC_Flush` after the data, more than once with FILESTREAM; `VDC_Complete` after all data (§7.3, §14.5) | [`BackupJob::flushes`]; `VDC_Complete` once every device's final Flush succeeded |
//! | `CloseDevice` on every device, then `Close` (§9.1) | the same |
//! | `serverTimeOut`: no completion for twice the interval with commands outstanding aborts (§3.1, §9.3) | the same, per device, with [`Options::server_timeout`] to override; [`EngineError::ClientTimeout`] |
//! | `SignalAbort` from either side (§9.2) | the abort fault ([`Faults::abort_at`]); a client's abort is [`AbortedBy::Client`] |
//! | long phases with no command, e.g. zeroing files before the first read of a restore (§9.3) | the silent fault ([`Faults::silent_at`]) |
//! | restore: read sizes vary between `BLOCKSIZE` and `MAXTRANSFERSIZE`; `BLOCKSIZE` must be the backup's; end of data is `ERROR_HANDLE_EOF` or `ERROR_NO_DATA_DETECTED`; reads may be outstanding past it (§9.7, §9.8) | the same, every byte verified |
//! | RESTORE FILELISTONLY / HEADERONLY read the start, then close early (§9.7) | [`RestoreJob::stop_after`] |
//!
//! One choice is the engine's own: devices are opened before `EndConfiguration` (the state
//! machine allows it), so every device name is known when the client's `GetConfiguration`
//! returns and the client may open its devices at once.
//!
//! # Example
//!
//! A backup between a client thread and the engine in another thread, over vdi-shm:
//!
//! ```
//! # #[cfg(any(unix, windows))]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use vdi_core::{
//!     ClientBackend, ClientCommand, ClientConfig, ClientDevice, ClientDeviceSet, CommandCode,
//!     Completion, Error, Timeout,
//! };
//! use vdi_engine::{BackupJob, Options};
//!
//! let name = format!("vdi-engine-doc-{}", std::process::id());
//! // The client creates the set first, as it would before running BACKUP.
//! let set = vdi_shm::ShmClient::new().create(None, &name, &ClientConfig::default())?;
//! let options = Options::new(name.as_str());
//! let engine =
//!     std::thread::spawn(move || vdi_engine::run_backup_shm(&options, &BackupJob::new(256 << 10)));
//! set.configuration(Timeout::from_millis(30_000))?;
//! let dev = set.open_device(&name)?;
//! let mut stream = Vec::new();
//! loop {
//!     match dev.command(Timeout::from_millis(30_000)) {
//!         Ok(cmd) if cmd.code() == CommandCode::WRITE => {
//!             stream.extend_from_slice(cmd.data());
//!             let n = cmd.size();
//!             dev.complete(cmd, Completion::success(n))?;
//!         }
//!         Ok(cmd) if cmd.code() == CommandCode::FLUSH => dev.complete(cmd, Completion::success(0))?,
//!         Ok(cmd) => dev.complete(cmd, Completion::not_supported())?,
//!         Err(Error::Closed) => break,
//!         Err(e) => return Err(e.into()),
//!     }
//! }
//! set.close()?;
//! let report = engine.join().expect("the engine thread")?;
//! assert_eq!(report.database_bytes, 256 << 10);
//! // A header block, the data, a trailer block.
//! assert_eq!(stream.len(), 512 + (256 << 10) + 512);
//! println!("{}", report.message()); // BACKUP DATABASE successfully processed 32 pages in …
//! # Ok(())
//! # }
//! # #[cfg(not(any(unix, windows)))]
//! # fn main() {}
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]
#![doc(test(attr(deny(warnings))))]

mod backup;
pub mod cli;
pub mod database;
mod error;
pub mod format;
mod options;
mod report;
mod restore;
mod run;
pub mod statement;
pub mod units;

pub use backup::run_backup;
pub use error::{AbortedBy, EngineError, Exit, TimeoutSource};
pub use options::{
    BackupJob, DEFAULT_BLOCK_SIZE, DEFAULT_CONFIG_TIMEOUT, DEFAULT_IDLE_LIMIT,
    DEFAULT_MAX_TRANSFER_SIZE, FaultPoint, Faults, Options, OptionsError, RestoreJob,
    default_buffer_count,
};
pub use report::{EffectiveConfig, Operation, Report, Warning};
pub use restore::run_restore;

/// [`run_backup`] over shared memory ([`vdi_shm::ShmServer`] with default options).
///
/// # Errors
///
/// As [`run_backup`].
#[cfg(any(unix, windows))]
pub fn run_backup_shm(options: &Options, job: &BackupJob) -> Result<Report, EngineError> {
    run_backup(&vdi_shm::ShmServer::new(), options, job)
}

/// [`run_restore`] over shared memory ([`vdi_shm::ShmServer`] with default options).
///
/// # Errors
///
/// As [`run_restore`].
#[cfg(any(unix, windows))]
pub fn run_restore_shm(options: &Options, job: &RestoreJob) -> Result<Report, EngineError> {
    run_restore(&vdi_shm::ShmServer::new(), options, job)
}
