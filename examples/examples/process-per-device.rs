//! One process per device, with secondary clients and buffer handles, as Microsoft's
//! `mprocess.cpp` sample does (vdi-spec.md §9.5, §9.4): a backup striped over N devices
//! (default 3), each stripe into its own file, then the restore from those files.
//!
//! The processes (all this same program, started again with `VDI_EXAMPLE_ROLE`):
//!
//! - **The primary** creates the set, starts the engine, takes the configuration, starts the
//!   others, and serves device 0 itself, but without touching the data: for each Write (or Read)
//!   it takes the buffer's handle (`GetBufferHandle`) and sends it over a pipe to the helper;
//!   when the helper answers, the primary completes the command, because the process that
//!   received a command must complete it (§4, §9.5). For a Write it also checksums the buffer
//!   through its own mapping and checks that the helper's checksum matches.
//! - **The helper** joins the set (`OpenInSecondaryEx`) but opens no device; it maps each
//!   handle (`MapBufferHandle`), writes the buffer to device 0's file (backup) or fills it from
//!   that file (restore), `fsync`s it on request, and answers on its stdout.
//! - **A secondary per device 1..N** joins the set, opens its own device, learns the direction
//!   from `GetConfiguration` (`VDF_WriteMedia` or `VDF_ReadMedia`), and serves the device to or
//!   from its own file until `VD_E_CLOSE`, then closes.
//! - **The engine** (`examples::engine`), standing in for SQL Server.
//!
//! # The calls, in order
//!
//! Primary: `CreateEx` (N devices, `VDF_RequestComplete`); start the engine (with SQL Server:
//! `BACKUP DATABASE [db] TO VIRTUAL_DEVICE = '<set>', VIRTUAL_DEVICE = '<set>-stripe1', …`);
//! `GetConfiguration`, which must come before any `OpenInSecondaryEx` (§4); start the helper
//! and the secondaries, passing them the set's name; `OpenDevice(<set>)`; then `GetCommand`,
//! `GetBufferHandle`, (the helper's `MapBufferHandle` and I/O), `CompleteCommand`, until
//! `VD_E_CLOSE`; wait for every secondary; `Close`.
//!
//! Secondary: `OpenInSecondaryEx(<set>)`, `OpenDevice(<set>-stripe<i>)`, `GetConfiguration`
//! (the direction), the command loop, `Close`.
//!
//! # Failures
//!
//! VDI notices the death of the engine or of the primary, not of a secondary (§9.2, §9.5). So
//! the primary waits for each secondary on a thread of its own, and if one fails, it calls
//! `SignalAbort`, which stops every process: the engine, the other secondaries (their
//! `GetCommand` returns `VD_E_ABORT`) and device 0. If the primary itself fails, it calls
//! `SignalAbort` too. Run it with `fail` as the third argument to see that: the primary fails
//! on purpose in the middle of the backup, and every process ends at once.
//!
//! Run it with `cargo run -p examples --example process-per-device [MIB] [DEVICES] [fail]`
//! (default: a 16 MiB database through 3 devices).

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio},
    thread,
    time::Duration,
};

use examples::{
    BoxError,
    engine::{self, EngineCommand},
    stripe_file::{read_full, serve_stripe},
};
use vdi_core::{
    BufferHandle, ClientBackend, ClientCommand, ClientConfig, ClientDevice, ClientDeviceSet,
    CommandCode, Completion, Config, Error, Features, MappedBuffer, Timeout,
};
use vdi_shm::{ClientSet, ShmClient};
use xxhash_rust::xxh3::xxh3_64;

/// `GetConfiguration` and `GetCommand` wait this long per call; `VD_E_TIMEOUT` is not an error.
const WAIT: Timeout = Timeout::from_millis(1000);
/// In the `fail` demonstration, the primary fails at this Write of device 0.
const FAIL_AT_WRITE: u64 = 3;

fn main() -> ExitCode {
    if let Some(code) = engine::run_if_engine() {
        return code;
    }
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let role = var("VDI_EXAMPLE_ROLE");
    let result = match role.as_str() {
        "secondary" => var("VDI_EXAMPLE_DEVICE")
            .parse()
            .map_err(BoxError::from)
            .and_then(|i| secondary(&var("VDI_EXAMPLE_SET"), i, var("VDI_EXAMPLE_FILE"))),
        "helper" => helper(&var("VDI_EXAMPLE_SET"), var("VDI_EXAMPLE_FILE")),
        _ => {
            let args: Vec<String> = std::env::args().skip(1).collect();
            let mib = args.first().map_or(Ok(16), |a| a.parse::<u64>());
            let devices = args.get(1).map_or(Ok(3), |a| a.parse::<u32>());
            let fail = args.get(2).map(String::as_str);
            let (Ok(mib @ 1..), Ok(devices @ 1..=32), None | Some("fail")) = (mib, devices, fail)
            else {
                eprintln!("usage: process-per-device [MIB] [DEVICES (1 to 32)] [fail]");
                return ExitCode::FAILURE;
            };
            primary(mib << 20, devices, fail.is_some())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let role = match role.as_str() {
                "secondary" => format!("secondary of device {}", var("VDI_EXAMPLE_DEVICE")),
                "helper" => role,
                _ => "primary".to_owned(),
            };
            eprintln!(
                "process-per-device, {role} (pid {}): {e}",
                std::process::id()
            );
            ExitCode::FAILURE
        }
    }
}

fn primary(size: u64, devices: u32, fail: bool) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let files: Vec<PathBuf> = (0..devices)
        .map(|i| dir.path().join(format!("stripe{i}.bak")))
        .collect();
    let pid = std::process::id();
    let name = format!("process-per-device-{pid}-backup");
    let fail_at = fail.then_some(FAIL_AT_WRITE);
    let writes = session(&name, &files, EngineCommand::backup(&name, size), fail_at)?;
    println!(
        "backup: device 0's {writes} Writes went through the helper process by buffer handle; every checksum matched"
    );
    let name = format!("process-per-device-{pid}-restore");
    let reads = session(&name, &files, EngineCommand::restore(&name), None)?;
    println!(
        "restore: device 0's {reads} Reads were filled by the helper process by buffer handle"
    );
    println!(
        "process-per-device: backup and restore through {devices} devices, one process each, succeeded"
    );
    Ok(())
}

/// One BACKUP or RESTORE as the primary runs it. Returns the data commands of device 0.
fn session(
    name: &str,
    files: &[PathBuf],
    statement: EngineCommand,
    fail_at: Option<u64>,
) -> Result<u64, BoxError> {
    let config = ClientConfig {
        device_count: files.len() as u32,
        features: Features::REQUEST_COMPLETE,
        ..ClientConfig::default()
    };
    let set = ShmClient::new()
        .create(None, name, &config)
        .map_err(|e| format!("CreateEx({name}): {e}"))?;
    let mut engine = statement.spawn()?;
    let served = engine::configuration(&set, &mut engine, Duration::from_secs(30))
        .and_then(|config| serve(&set, name, &config, files, fail_at));
    if served.is_err() {
        // Stops every process of the set (§9.5), if serve has not done it already.
        let _ = set.signal_abort();
    }
    let closed = set.close();
    let outcome = engine.wait();
    let served = served?;
    closed.map_err(|e| format!("Close: {e}"))?;
    outcome?;
    Ok(served)
}

/// Starts the helper and the secondaries, serves device 0, and waits for the secondaries.
fn serve(
    set: &ClientSet,
    name: &str,
    config: &Config,
    files: &[PathBuf],
    fail_at: Option<u64>,
) -> Result<u64, BoxError> {
    let mut helper = Helper::start(name, &files[0])?;
    let mut secondaries = Vec::new();
    for (i, file) in files.iter().enumerate().skip(1) {
        match start("secondary", name, file, Some(i)).and_then(|mut c| c.spawn()) {
            Ok(child) => secondaries.push((i, child)),
            Err(e) => {
                // The secondaries started so far end with VD_E_ABORT.
                let _ = set.signal_abort();
                return Err(format!("cannot start the secondary of device {i}: {e}").into());
            }
        }
    }
    let device = set
        .open_device(name)
        .map_err(|e| format!("OpenDevice: {e}"))?;
    thread::scope(|s| {
        // VDI does not notice a secondary's death: a thread per secondary waits for it, and
        // aborts the set if it fails.
        let watchers: Vec<_> = secondaries
            .into_iter()
            .map(|(i, mut child)| {
                s.spawn(move || {
                    let error = match child.wait() {
                        Ok(status) if status.success() => return Ok(()),
                        Ok(status) => format!("the secondary of device {i} failed ({status})"),
                        Err(e) => format!("cannot wait for the secondary of device {i}: {e}"),
                    };
                    let _ = set.signal_abort();
                    Err(error)
                })
            })
            .collect();
        let served = serve_device0(set, &device, &mut helper, config.is_backup(), fail_at);
        if let Err(e) = &served {
            eprintln!("primary: device 0 failed ({e}): SignalAbort");
            let _ = set.signal_abort();
        }
        let helper_done = helper.finish();
        // The primary's own error first: the others may be its consequences.
        let mut errors: Vec<String> = served
            .as_ref()
            .err()
            .map(ToString::to_string)
            .into_iter()
            .collect();
        errors.extend(
            watchers
                .into_iter()
                .filter_map(|w| w.join().unwrap_or(Err("a watcher panicked".into())).err()),
        );
        errors.extend(helper_done.err().map(|e| e.to_string()));
        if errors.is_empty() {
            served
        } else {
            Err(errors.join("; ").into())
        }
    })
}

/// Device 0: the primary takes each command and has the helper do the data's I/O through the
/// buffer's handle; the primary completes the command. Returns the data commands served.
fn serve_device0(
    set: &ClientSet,
    device: &vdi_shm::ClientDevice,
    helper: &mut Helper,
    backup: bool,
    fail_at: Option<u64>,
) -> Result<u64, BoxError> {
    let (mut transfers, mut at_end) = (0, false);
    loop {
        let cmd = match device.command(WAIT) {
            Ok(cmd) => cmd,
            Err(Error::Closed) => return Ok(transfers),
            Err(Error::Timeout) => continue,
            Err(e) => return Err(format!("GetCommand: {e}").into()),
        };
        let size = cmd.size();
        let completion = match cmd.code() {
            CommandCode::WRITE if backup => {
                if fail_at == Some(transfers) {
                    return Err("failing on purpose (the `fail` argument)".into());
                }
                // GetBufferHandle: a value that names the buffer in any process of the set.
                let handle = set
                    .buffer_handle(&cmd)
                    .map_err(|e| format!("GetBufferHandle: {e}"))?;
                let answer = helper.ask(&format!("write {} {size}", handle.0))?;
                let mine = format!("{:016x}", xxh3_64(cmd.data()));
                if answer != mine {
                    return Err(format!("checksums differ: helper {answer}, primary {mine}").into());
                }
                transfers += 1;
                Completion::success(size)
            }
            CommandCode::READ if !backup && at_end => Completion::eof(0),
            CommandCode::READ if !backup => {
                let handle = set
                    .buffer_handle(&cmd)
                    .map_err(|e| format!("GetBufferHandle: {e}"))?;
                let n: u32 = helper.ask(&format!("read {} {size}", handle.0))?.parse()?;
                transfers += 1;
                at_end = n < size;
                if at_end {
                    Completion::eof(n)
                } else {
                    Completion::success(n)
                }
            }
            CommandCode::FLUSH | CommandCode::COMPLETE => {
                helper.ask("sync")?;
                Completion::success(0)
            }
            CommandCode::CLEAR_ERROR => Completion::success(0),
            _ => Completion::not_supported(),
        };
        // The receiving process completes the command, whoever did the I/O.
        device
            .complete(cmd, completion)
            .map_err(|e| format!("CompleteCommand: {e}"))?;
    }
}

/// This program again, in `role`.
fn start(role: &str, set: &str, file: &Path, device: Option<usize>) -> io::Result<Command> {
    let mut c = Command::new(std::env::current_exe()?);
    c.env("VDI_EXAMPLE_ROLE", role)
        .env("VDI_EXAMPLE_SET", set)
        .env("VDI_EXAMPLE_FILE", file);
    if let Some(i) = device {
        c.env("VDI_EXAMPLE_DEVICE", i.to_string());
    }
    Ok(c)
}

/// The helper process as the primary drives it: one request line, one answer line.
struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Helper {
    fn start(set: &str, file: &Path) -> Result<Self, BoxError> {
        let mut child = start("helper", set, file, None)
            .and_then(|mut c| c.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn())
            .map_err(|e| format!("cannot start the helper process: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the helper process has no pipes".into());
        };
        Ok(Self {
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
        })
    }

    /// Sends a request; returns the answer after `ok `, or fails with the helper's error.
    fn ask(&mut self, request: &str) -> Result<String, BoxError> {
        let stdin = self.stdin.as_mut().ok_or("the helper was stopped")?;
        writeln!(stdin, "{request}").map_err(|e| format!("the helper process is gone: {e}"))?;
        let mut answer = String::new();
        if self.stdout.read_line(&mut answer)? == 0 {
            return Err("the helper process ended".into());
        }
        let answer = answer.trim_end_matches('\n');
        match answer.strip_prefix("ok ") {
            Some(rest) => Ok(rest.to_owned()),
            None => Err(format!("the helper failed: {answer}").into()),
        }
    }

    /// Closes its stdin (it then closes its set and exits) and waits for it.
    fn finish(mut self) -> Result<(), BoxError> {
        drop(self.stdin.take());
        match self.child.wait()? {
            s if s.success() => Ok(()),
            s => Err(format!("the helper process failed ({s})").into()),
        }
    }
}

/// The helper process: maps buffer handles and does device 0's file I/O on the buffers.
/// Requests: `write HANDLE LEN` (answer: the checksum), `read HANDLE LEN` (answer: the bytes
/// read), `sync`.
fn helper(set_name: &str, path: String) -> Result<(), BoxError> {
    let set = ShmClient::new()
        .open_secondary(None, set_name)
        .map_err(|e| format!("OpenInSecondaryEx: {e}"))?;
    let config = configuration(&set)?;
    let mut file = if config.is_backup() {
        File::create(&path)?
    } else {
        File::open(&path)?
    };
    let mut out = io::stdout().lock();
    for line in io::stdin().lock().lines() {
        let line = line?;
        let answer = match handle_request(&set, &mut file, &line) {
            Ok(a) => format!("ok {a}"),
            Err(e) => format!("error {e}"),
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    set.close()?;
    Ok(())
}

fn handle_request(set: &ClientSet, file: &mut File, line: &str) -> Result<String, BoxError> {
    let words: Vec<&str> = line.split(' ').collect();
    match words[..] {
        ["write", handle, len] => {
            // MapBufferHandle: this process's view of the primary's command buffer.
            let mapped = set
                .map_buffer_handle(BufferHandle(handle.parse()?), len.parse()?)
                .map_err(|e| format!("MapBufferHandle: {e}"))?;
            let data = mapped.as_slice();
            file.write_all(data)?;
            Ok(format!("{:016x}", xxh3_64(data)))
        }
        ["read", handle, len] => {
            let mut mapped = set
                .map_buffer_handle(BufferHandle(handle.parse()?), len.parse()?)
                .map_err(|e| format!("MapBufferHandle: {e}"))?;
            let buf = mapped.as_mut_slice();
            Ok(read_full(file, buf)?.to_string())
        }
        ["sync"] => {
            file.sync_all()?;
            Ok(String::new())
        }
        _ => Err(format!("bad request {line:?}").into()),
    }
}

/// A secondary process: serves device `index` to or from its own file.
fn secondary(set_name: &str, index: u32, path: String) -> Result<(), BoxError> {
    // OpenInSecondaryEx, then OpenDevice of its own device.
    let set = ShmClient::new()
        .open_secondary(None, set_name)
        .map_err(|e| format!("OpenInSecondaryEx: {e}"))?;
    let device = set
        .open_device(&vdi_core::stripe_device_name(set_name, index))
        .map_err(|e| format!("OpenDevice: {e}"))?;
    // GetConfiguration: here only to learn the direction.
    let backup = configuration(&set)?.is_backup();
    let served = serve_stripe(&device, Path::new(&path), backup);
    if served.is_err() {
        let _ = set.signal_abort();
    }
    let closed = set.close();
    let bytes = served?;
    closed.map_err(|e| format!("Close: {e}"))?;
    let verb = if backup { "wrote" } else { "served" };
    println!(
        "  secondary process {} (device {index}): {verb} {bytes} bytes",
        std::process::id()
    );
    Ok(())
}

fn configuration(set: &ClientSet) -> Result<Config, BoxError> {
    loop {
        match set.configuration(WAIT) {
            Ok(config) => return Ok(config),
            Err(Error::Timeout) => {}
            Err(e) => return Err(format!("GetConfiguration: {e}").into()),
        }
    }
}
