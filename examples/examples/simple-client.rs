//! The minimal VDI client: one device, a backup into a file, then a restore from that file, in
//! the classic flow of Microsoft's `simple.cpp` sample (vdi-spec.md §10, "Backup, one device"
//! and "Restore"). Blocking calls, through `vdi-core`'s traits over `vdi-shm`. This is the one
//! to copy.
//!
//! The calls, in order (each is described in §4):
//!
//! 1. `CreateEx` ([`ClientBackend::create`]): one device, with `VDF_RequestComplete` so that
//!    the engine sends `VDC_Complete` once the whole backup is written (§3.2, §7.3).
//! 2. Start the engine. With SQL Server this is `BACKUP DATABASE [db] TO VIRTUAL_DEVICE =
//!    '<set>'` on another connection; here it is the reference engine in a child process (the
//!    example runs itself again: `examples::engine`).
//! 3. `GetConfiguration`: waits until the engine has opened and configured the set.
//!    `VD_E_TIMEOUT` only means "not yet": check that the engine still runs, and call again
//!    (§9.3).
//! 4. `OpenDevice` with the set's name (the first device is named like the set).
//! 5. `GetCommand` and `CompleteCommand` until `GetCommand` returns `VD_E_CLOSE`, the normal
//!    end: `VDC_Write` appends the buffer to `db.bak.partial`; `VDC_Flush` makes it durable
//!    (`fsync`); `VDC_ClearError` succeeds; `VDC_Complete` finalizes the backup (`fsync`, then
//!    rename to `db.bak`); anything else is answered `ERROR_NOT_SUPPORTED`. A failed file
//!    operation is answered with `ERROR_DISK_FULL` or `ERROR_IO_DEVICE`, and the engine fails
//!    the backup (§9.2).
//! 6. `Close`; then the engine's result (with SQL Server: the statement's) says whether the
//!    backup succeeded, which VDI alone cannot tell (§9.1).
//!
//! The restore makes the same calls with `RESTORE DATABASE [db] FROM VIRTUAL_DEVICE = '<set>'`
//! and serves `VDC_Read`: each read is filled in full from the file, whatever its size (§9.7);
//! the read that meets the end of the file returns the bytes it got with `ERROR_HANDLE_EOF`,
//! and so does every read after it. The engine checks every byte it reads back.
//!
//! If the client itself fails, it calls `SignalAbort`, then `Close` (§9.2, §10), so the engine
//! stops at once instead of waiting for commands nobody serves.
//!
//! Run it with `cargo run -p examples --example simple-client [MIB]` (default: a 16 MiB
//! database; the files go to a temporary directory, removed at the end).

use std::{
    fs::{self, File},
    io::{self, Read, Write},
    path::Path,
    process::ExitCode,
};

use examples::{
    BoxError,
    engine::{self, EngineCommand},
};
use vdi_core::{
    ClientBackend, ClientCommand, ClientConfig, ClientDevice, ClientDeviceSet, CommandCode,
    Completion, CompletionCode, Error, Features, Timeout,
};
use vdi_shm::ShmClient;

/// How long one `GetConfiguration` or `GetCommand` waits. `VD_E_TIMEOUT` is not an error: a
/// client uses the pause to check for cancellation, then calls again (§9.3).
const WAIT: Timeout = Timeout::from_millis(1000);

fn main() -> ExitCode {
    // In the child process started in step 2, this is the engine.
    if let Some(code) = engine::run_if_engine() {
        return code;
    }
    let mib: u64 = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 16,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: simple-client [MIB]");
            return ExitCode::FAILURE;
        }
    };
    match run(mib << 20) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simple-client: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(size: u64) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db.bak");
    let pid = std::process::id();

    let name = format!("simple-client-{pid}-backup");
    let written = session(&name, EngineCommand::backup(&name, size), |device| {
        backup_to_file(device, &path)
    })?;
    println!("backup: {written} bytes in {}", path.display());

    let name = format!("simple-client-{pid}-restore");
    let read = session(&name, EngineCommand::restore(&name), |device| {
        restore_from_file(device, &path)
    })?;
    println!("restore: {read} bytes served from {}", path.display());
    println!("simple-client: backup and restore succeeded");
    Ok(())
}

/// One BACKUP or RESTORE: steps 1 to 6, with `serve` doing step 5.
fn session(
    name: &str,
    statement: EngineCommand,
    serve: impl FnOnce(&vdi_shm::ClientDevice) -> Result<u64, BoxError>,
) -> Result<u64, BoxError> {
    // 1. CreateEx.
    let config = ClientConfig {
        device_count: 1,
        features: Features::REQUEST_COMPLETE,
        ..ClientConfig::default()
    };
    let set = ShmClient::new()
        .create(None, name, &config)
        .map_err(|e| format!("CreateEx({name}): {e}"))?;
    // 2. Start the engine (with SQL Server: run the BACKUP or RESTORE statement on another
    //    connection, from another thread).
    let mut engine = statement.spawn()?;
    let served = open_and_serve(&set, name, &mut engine, serve);
    if served.is_err() {
        // Our own failure: SignalAbort, so the engine stops at once instead of waiting (§9.2).
        let _ = set.signal_abort();
    }
    // 6. Close, then the statement's outcome.
    let closed = set.close();
    let outcome = engine.wait();
    let bytes = served?;
    closed.map_err(|e| format!("Close: {e}"))?;
    outcome?;
    Ok(bytes)
}

/// Steps 3 to 5.
fn open_and_serve(
    set: &vdi_shm::ClientSet,
    name: &str,
    engine: &mut engine::Engine,
    serve: impl FnOnce(&vdi_shm::ClientDevice) -> Result<u64, BoxError>,
) -> Result<u64, BoxError> {
    // 3. GetConfiguration.
    let config = loop {
        match set.configuration(WAIT) {
            Ok(config) => break config,
            Err(Error::Timeout) => engine.check_running()?,
            Err(e) => return Err(format!("GetConfiguration: {e}").into()),
        }
    };
    let direction = if config.is_backup() {
        "backup"
    } else {
        "restore"
    };
    println!(
        "{name}: configured for {direction}, block {} B, max transfer {} KiB",
        config.block_size,
        config.max_transfer_size >> 10
    );
    // 4. OpenDevice.
    let device = set
        .open_device(name)
        .map_err(|e| format!("OpenDevice: {e}"))?;
    // 5. The command loop.
    serve(&device)
}

/// Step 5 of a backup: the commands into `path`, which appears only once the engine sent
/// `VDC_Complete` and the data is durable.
fn backup_to_file(device: &vdi_shm::ClientDevice, path: &Path) -> Result<u64, BoxError> {
    let partial = path.with_extension("bak.partial");
    let mut file = File::create(&partial)?;
    let mut written = 0;
    let mut failure = None;
    loop {
        let cmd = match device.command(WAIT) {
            Ok(cmd) => cmd,
            Err(Error::Closed) => break,
            Err(Error::Timeout) => continue,
            Err(e) => return Err(format!("GetCommand: {e}").into()),
        };
        let result = match cmd.code() {
            CommandCode::WRITE => file
                .write_all(cmd.data())
                .map(|()| Completion::success(cmd.size())),
            CommandCode::FLUSH => file.sync_all().map(|()| Completion::success(0)),
            CommandCode::COMPLETE => file
                .sync_all()
                .and_then(|()| fs::rename(&partial, path))
                .map(|()| Completion::success(0)),
            CommandCode::CLEAR_ERROR => Ok(Completion::success(0)),
            _ => Ok(Completion::not_supported()),
        };
        let completion = result.unwrap_or_else(|e| failed(e, &mut failure));
        written += u64::from(completion.bytes_transferred);
        // CompleteCommand hands the buffer back: `cmd` is gone after this.
        device
            .complete(cmd, completion)
            .map_err(|e| format!("CompleteCommand: {e}"))?;
    }
    if let Some(e) = failure {
        return Err(format!("the backup file failed: {e}").into());
    }
    if !path.exists() {
        return Err("the device closed before VDC_Complete: the backup is incomplete".into());
    }
    Ok(written)
}

/// Step 5 of a restore: each Read filled from `path`; `ERROR_HANDLE_EOF` at its end.
fn restore_from_file(device: &vdi_shm::ClientDevice, path: &Path) -> Result<u64, BoxError> {
    let mut file = File::open(path)?;
    let mut served = 0;
    let mut at_end = false;
    let mut failure = None;
    loop {
        let mut cmd = match device.command(WAIT) {
            Ok(cmd) => cmd,
            Err(Error::Closed) => break,
            Err(Error::Timeout) => continue,
            Err(e) => return Err(format!("GetCommand: {e}").into()),
        };
        let size = cmd.size();
        let result = match cmd.code() {
            // Reads may still come after the end (the engine prefetches): the same answer.
            CommandCode::READ if at_end => Ok(Completion::eof(0)),
            CommandCode::READ => read_full(&mut file, cmd.data_mut()).map(|n| {
                at_end = n < size as usize;
                if at_end {
                    Completion::eof(n as u32)
                } else {
                    Completion::success(n as u32)
                }
            }),
            CommandCode::CLEAR_ERROR => Ok(Completion::success(0)),
            _ => Ok(Completion::not_supported()),
        };
        let completion = result.unwrap_or_else(|e| failed(e, &mut failure));
        served += u64::from(completion.bytes_transferred);
        device
            .complete(cmd, completion)
            .map_err(|e| format!("CompleteCommand: {e}"))?;
    }
    match failure {
        Some(e) => Err(format!("reading the backup file failed: {e}").into()),
        None => Ok(served),
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The completion for a failed file operation (`ERROR_DISK_FULL` when the disk is full, else
/// `ERROR_IO_DEVICE`); keeps the first error to report at the end.
fn failed(e: io::Error, first: &mut Option<io::Error>) -> Completion {
    let code = match e.kind() {
        io::ErrorKind::StorageFull => CompletionCode::DISK_FULL,
        _ => CompletionCode::IO_DEVICE,
    };
    first.get_or_insert(e);
    Completion::with_code(code)
}
