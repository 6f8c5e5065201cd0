//! One thread per device: a backup striped over N devices (default 4), each stripe into its own
//! file, then the restore from those files, as Microsoft's `mthread.cpp` sample does
//! (vdi-spec.md §9.4, and §10 "Multi-device"). Blocking calls, through `vdi-core`'s traits over
//! `vdi-shm`.
//!
//! # Why every device needs its own thread
//!
//! The engine keeps the streams in step (§9.4), as SQL Server does: its `BUFFERCOUNT` buffers
//! are shared by all devices, and the backup's chunks get them in order, chunk `i` going to
//! device `i mod N`. A client that served device 0 to its end before turning to device 1 would
//! leave device 1's first Writes uncompleted; they hold buffers, the next chunks wait for
//! buffers, device 0's `GetCommand` waits for a chunk, and the engine waits for the client: a
//! deadlock. So all devices are served at the same time, one thread each.
//!
//! # The calls, in order (§4 for each)
//!
//! 1. `CreateEx` with `deviceCount = N` and `VDF_RequestComplete`.
//! 2. Start the engine: with SQL Server, `BACKUP DATABASE [db] TO VIRTUAL_DEVICE = '<set>',
//!    VIRTUAL_DEVICE = '<set>-stripe1', …` (the first device is named like the set; the others
//!    follow [`vdi_core::stripe_device_name`]); here the reference engine in a child process
//!    (`examples::engine`).
//! 3. `GetConfiguration` (`examples::engine::configuration`: one-second slices, checking that
//!    the engine still runs).
//! 4. On each of N threads ([`std::thread::scope`]): `OpenDevice` of its device, then
//!    `GetCommand`/`CompleteCommand` until `VD_E_CLOSE`. Write appends to the stripe's file,
//!    Flush and Complete `fsync` it, ClearError succeeds, anything else is answered
//!    `ERROR_NOT_SUPPORTED`. A thread that fails calls `SignalAbort`: the other threads'
//!    `GetCommand` return `VD_E_ABORT` at once instead of waiting for streams that will never
//!    move again (§9.2).
//! 5. `Close` once every thread has returned; then the engine's result (§9.1).
//!
//! The restore makes the same calls with `RESTORE DATABASE [db] FROM VIRTUAL_DEVICE = …`, each
//! thread serving `VDC_Read` from its stripe's file (`ERROR_HANDLE_EOF` at the end, §9.7), and
//! the engine verifies every byte.
//!
//! Run it with `cargo run --release -p examples --example thread-per-device [MIB] [DEVICES]`
//! (default: a 64 MiB database through 4 devices). It prints the bytes per device and the
//! rates.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use examples::{
    BoxError,
    engine::{self, EngineCommand},
    stripe_file::serve_stripe,
};
use vdi_core::{ClientBackend, ClientConfig, ClientDeviceSet, Features};
use vdi_shm::ShmClient;

/// `MAXTRANSFERSIZE` of the statements: 1 MiB transfers (SQL Server's default for VDI is 64 KiB).
const MAX_TRANSFER: u32 = 1 << 20;

fn main() -> ExitCode {
    if let Some(code) = engine::run_if_engine() {
        return code;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib = args.first().map_or(Ok(64), |a| a.parse::<u64>());
    let devices = args.get(1).map_or(Ok(4), |a| a.parse::<u32>());
    let (Ok(mib @ 1..), Ok(devices @ 1..=64)) = (mib, devices) else {
        eprintln!("usage: thread-per-device [MIB] [DEVICES (1 to 64)]");
        return ExitCode::FAILURE;
    };
    match run(mib << 20, devices) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("thread-per-device: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(size: u64, devices: u32) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let files: Vec<PathBuf> = (0..devices)
        .map(|i| dir.path().join(format!("stripe{i}.bak")))
        .collect();
    let pid = std::process::id();

    let name = format!("thread-per-device-{pid}-backup");
    let statement = EngineCommand::backup(&name, size).max_transfer_size(MAX_TRANSFER);
    let (bytes, elapsed) = session(&name, devices, statement, |device, i| {
        serve_stripe(device, &files[i], true)
    })?;
    report("backup", &bytes, elapsed);

    let name = format!("thread-per-device-{pid}-restore");
    let statement = EngineCommand::restore(&name).max_transfer_size(MAX_TRANSFER);
    let (bytes, elapsed) = session(&name, devices, statement, |device, i| {
        serve_stripe(device, &files[i], false)
    })?;
    report("restore", &bytes, elapsed);
    println!("thread-per-device: backup and restore through {devices} devices succeeded");
    Ok(())
}

fn report(what: &str, bytes: &[u64], elapsed: Duration) {
    let total: u64 = bytes.iter().sum();
    println!(
        "{what}: {total} bytes through {} devices ({bytes:?} per device) in {:.3} s: {:.1} MB/s",
        bytes.len(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64().max(1e-6) / 1e6
    );
}

/// One BACKUP or RESTORE: steps 1 to 5, with `serve(device, i)` serving device `i` on its own
/// thread. Returns the bytes per device and the time from the configuration to the last
/// device's end.
fn session(
    name: &str,
    devices: u32,
    statement: EngineCommand,
    serve: impl Fn(&vdi_shm::ClientDevice, usize) -> Result<u64, BoxError> + Sync,
) -> Result<(Vec<u64>, Duration), BoxError> {
    let config = ClientConfig {
        device_count: devices,
        features: Features::REQUEST_COMPLETE,
        ..ClientConfig::default()
    };
    let set = ShmClient::new()
        .create(None, name, &config)
        .map_err(|e| format!("CreateEx({name}): {e}"))?;
    let mut engine = statement.spawn()?;
    let served = engine::configuration(&set, &mut engine, Duration::from_secs(30))
        .and_then(|_| serve_all(&set, name, devices, &serve));
    if served.is_err() {
        let _ = set.signal_abort();
    }
    let closed = set.close();
    let outcome = engine.wait();
    let served = served?;
    closed.map_err(|e| format!("Close: {e}"))?;
    outcome?;
    Ok(served)
}

/// Step 4: a thread per device, all at once.
fn serve_all(
    set: &vdi_shm::ClientSet,
    name: &str,
    devices: u32,
    serve: &(impl Fn(&vdi_shm::ClientDevice, usize) -> Result<u64, BoxError> + Sync),
) -> Result<(Vec<u64>, Duration), BoxError> {
    let start = Instant::now();
    // The first failure, which the other threads' VD_E_ABORT errors follow.
    let first_failure = OnceLock::new();
    let results: Vec<Option<u64>> = thread::scope(|s| {
        let threads: Vec<_> = (0..devices)
            .map(|i| {
                let first_failure = &first_failure;
                s.spawn(move || {
                    let device_name = vdi_core::stripe_device_name(name, i);
                    let result = set
                        .open_device(&device_name)
                        .map_err(|e| format!("OpenDevice: {e}").into())
                        .and_then(|device| serve(&device, i as usize));
                    match result {
                        Ok(bytes) => Some(bytes),
                        Err(e) => {
                            first_failure.get_or_init(|| format!("device {device_name}: {e}"));
                            let _ = set.signal_abort();
                            None
                        }
                    }
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or(None))
            .collect()
    });
    let elapsed = start.elapsed();
    if let Some(e) = first_failure.into_inner() {
        return Err(e.into());
    }
    let bytes = results
        .into_iter()
        .collect::<Option<Vec<u64>>>()
        .ok_or("a device thread panicked")?;
    Ok((bytes, elapsed))
}
