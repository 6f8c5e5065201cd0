//! The server side of the examples: the reference engine (`vdi-engine`) in a child process.
//!
//! A real VDI client creates its device set and then runs
//! `BACKUP DATABASE … TO VIRTUAL_DEVICE = '<set>'` (or `RESTORE … FROM VIRTUAL_DEVICE …`) on
//! SQL Server, from another thread or process, because `GetConfiguration` blocks until the
//! statement reaches the server (vdi-spec.md §4, §10). The examples do the same with the
//! reference engine instead of SQL Server: [`EngineCommand::spawn`] starts the example's own
//! program again with the environment variable [`ENGINE_VAR`] set, and the example's `main`
//! begins with [`run_if_engine`], which in that child runs [`vdi_engine::run_backup_shm`] or
//! [`vdi_engine::run_restore_shm`], prints the engine's report (SQL Server's message 3014,
//! e.g. `BACKUP DATABASE successfully processed 128 pages in …`) and exits. So the client and
//! the engine are two processes that share nothing but the VDI set.
//!
//! As with SQL Server, the client cannot tell from VDI alone whether the operation succeeded
//! (§9.1): it learns that from the engine's exit status ([`Engine::wait`]), the stand-in for
//! the T-SQL result.

use std::{
    fmt,
    io::Write,
    process::{Child, Command, ExitCode, ExitStatus},
    time::{Duration, Instant},
};

use vdi_core::{ClientDeviceSet, Config, Error, Timeout};
use vdi_engine::{BackupJob, Options, RestoreJob};

use crate::BoxError;

/// The environment variable that makes an example's process the engine: `backup` or `restore`.
pub const ENGINE_VAR: &str = "VDI_EXAMPLE_ENGINE";
const SET_VAR: &str = "VDI_EXAMPLE_ENGINE_SET";
const SIZE_VAR: &str = "VDI_EXAMPLE_ENGINE_SIZE";
const MAX_TRANSFER_VAR: &str = "VDI_EXAMPLE_ENGINE_MAX_TRANSFER";

/// In the engine's child process, runs the engine and returns the exit code for `main`; in any
/// other process, returns `None` at once.
///
/// Call it first thing in `main`:
///
/// ```no_run
/// # fn main() -> std::process::ExitCode {
/// if let Some(code) = examples::engine::run_if_engine() {
///     return code;
/// }
/// // ... the client ...
/// # std::process::ExitCode::SUCCESS
/// # }
/// ```
pub fn run_if_engine() -> Option<ExitCode> {
    let operation = std::env::var(ENGINE_VAR).ok()?;
    let set = std::env::var(SET_VAR).unwrap_or_default();
    Some(match run_engine(&operation, &set) {
        Ok(message) => {
            println!("  engine ({set}): {message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One write, so that the lines of engines running at once do not interleave.
            let line = format!("  engine ({set}): {operation} failed: {e}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            ExitCode::FAILURE
        }
    })
}

fn run_engine(operation: &str, set: &str) -> Result<String, BoxError> {
    let number = |var: &str| -> Result<Option<u64>, BoxError> {
        match std::env::var(var) {
            Ok(v) => Ok(Some(v.parse().map_err(|e| format!("{var}={v:?}: {e}"))?)),
            Err(_) => Ok(None),
        }
    };
    let mut options = Options::new(set);
    if let Some(n) = number(MAX_TRANSFER_VAR)? {
        options = options.max_transfer_size(u32::try_from(n)?);
    }
    match operation {
        "backup" => {
            let size = number(SIZE_VAR)?.ok_or("no database size given")?;
            let report = vdi_engine::run_backup_shm(&options, &BackupJob::new(size))?;
            Ok(report.message())
        }
        "restore" => {
            let report = vdi_engine::run_restore_shm(&options, &RestoreJob::new())?;
            if !report.verified {
                return Err("the restore ended without reading every stream to its end".into());
            }
            let streams = match report.device_bytes.len() {
                1 => "the stream".to_owned(),
                n => format!("all {n} streams"),
            };
            Ok(format!(
                "{} Every byte of {streams} verified.",
                report.message()
            ))
        }
        other => Err(format!("unknown operation {other:?} in {ENGINE_VAR}").into()),
    }
}

/// What to run in the engine's process: a BACKUP to, or a RESTORE from, the set `set`.
#[derive(Clone, Debug)]
pub struct EngineCommand {
    operation: &'static str,
    set: String,
    size: u64,
    max_transfer_size: Option<u32>,
}

impl EngineCommand {
    /// `BACKUP DATABASE … TO VIRTUAL_DEVICE = '<set>', …` of a pseudo-database of `size`
    /// bytes, one `VIRTUAL_DEVICE` per device of the client's set.
    pub fn backup(set: &str, size: u64) -> Self {
        Self {
            operation: "backup",
            set: set.to_owned(),
            size,
            max_transfer_size: None,
        }
    }

    /// `RESTORE DATABASE … FROM VIRTUAL_DEVICE = '<set>', …`: reads every stream back and
    /// verifies every byte.
    pub fn restore(set: &str) -> Self {
        Self {
            operation: "restore",
            set: set.to_owned(),
            size: 0,
            max_transfer_size: None,
        }
    }

    /// `WITH MAXTRANSFERSIZE = bytes` (a multiple of 64 KiB up to 4 MiB; SQL Server's default
    /// for VDI is 64 KiB).
    pub fn max_transfer_size(mut self, bytes: u32) -> Self {
        self.max_transfer_size = Some(bytes);
        self
    }

    /// The command that starts the engine: this program again, with the engine's environment.
    ///
    /// # Errors
    ///
    /// When the path of the running program cannot be found.
    pub fn command(&self) -> std::io::Result<Command> {
        let mut c = Command::new(std::env::current_exe()?);
        c.env(ENGINE_VAR, self.operation)
            .env(SET_VAR, &self.set)
            .env(SIZE_VAR, self.size.to_string());
        if let Some(n) = self.max_transfer_size {
            c.env(MAX_TRANSFER_VAR, n.to_string());
        }
        Ok(c)
    }

    /// Starts the engine's process.
    ///
    /// # Errors
    ///
    /// When the process cannot be started.
    pub fn spawn(&self) -> Result<Engine, BoxError> {
        let child = self
            .command()
            .and_then(|mut c| c.spawn())
            .map_err(|e| format!("cannot start the engine process: {e}"))?;
        Ok(Engine {
            child: Some(child),
            what: format!("the engine's {} of set {}", self.operation, self.set),
        })
    }
}

/// The engine's process. Dropping it without [`wait`](Self::wait) kills the process.
#[derive(Debug)]
pub struct Engine {
    child: Option<Child>,
    what: String,
}

/// The engine's process failed (its own message is on its stderr) or could not be waited for.
#[derive(Debug)]
pub struct EngineFailed {
    what: String,
    status: Option<ExitStatus>,
}

impl fmt::Display for EngineFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "{} failed ({s}); its error is printed above", self.what),
            None => write!(f, "{}: cannot wait for the process", self.what),
        }
    }
}

impl std::error::Error for EngineFailed {}

impl Engine {
    /// Fails if the process has already exited: called while waiting for the configuration, it
    /// tells "the engine failed" apart from "the engine is slow" (with SQL Server: the BACKUP
    /// statement failed before it opened the set, e.g. not sysadmin; vdi-spec.md §10).
    ///
    /// # Errors
    ///
    /// [`EngineFailed`] when the process exited.
    pub fn check_running(&mut self) -> Result<(), EngineFailed> {
        let failed = |status| EngineFailed {
            what: self.what.clone(),
            status,
        };
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => Ok(()),
            Some(Ok(Some(status))) => Err(failed(Some(status))),
            _ => Err(failed(None)),
        }
    }

    /// Waits for the process to end: the outcome of the BACKUP or RESTORE statement.
    ///
    /// # Errors
    ///
    /// [`EngineFailed`] when it ended with a failure.
    pub fn wait(mut self) -> Result<(), EngineFailed> {
        let status = self.child.take().and_then(|mut c| c.wait().ok());
        match status {
            Some(s) if s.success() => Ok(()),
            status => Err(EngineFailed {
                what: self.what.clone(),
                status,
            }),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `GetConfiguration`, waiting up to `limit` for the engine to configure the set, in slices of
/// one second between which it checks that the engine is still running (vdi-spec.md §9.3:
/// `VD_E_TIMEOUT` is not fatal, call again).
///
/// # Errors
///
/// The engine exited, the limit passed, or `GetConfiguration` failed (e.g. `VD_E_ABORT`).
pub fn configuration<S: ClientDeviceSet>(
    set: &S,
    engine: &mut Engine,
    limit: Duration,
) -> Result<Config, BoxError> {
    let start = Instant::now();
    loop {
        match set.configuration(Timeout::from_millis(1000)) {
            Ok(config) => return Ok(config),
            Err(Error::Timeout) if start.elapsed() < limit => engine.check_running()?,
            Err(Error::Timeout) => {
                return Err(
                    format!("the engine did not configure the set within {limit:?}").into(),
                );
            }
            Err(e) => return Err(format!("GetConfiguration failed: {e}").into()),
        }
    }
}
