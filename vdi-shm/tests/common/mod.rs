//! Test support shared by the multi-process tests: child processes in a role, deterministic
//! stream data, and small server (engine) and client (agent) drivers.
//!
//! A test that needs another process re-runs its own test binary with `--exact <child test>`
//! and the role in `VDI_ROLE`; the child test does nothing unless `VDI_ROLE` is set.

#![allow(dead_code, reason = "each test file uses a part of the support module")]

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use vdi_core::{
    ClientCommand, ClientDevice, ClientDeviceSet, CommandCode, Completion, CompletionCode, Error,
    ServerBackend, ServerBuffer, ServerCommand, ServerConfig, ServerDevice, ServerDeviceSet,
    Timeout,
};
use vdi_shm::{ClientSet, ShmServer};

/// Generous bound for any single wait in a test; a hang fails instead of blocking CI.
pub(crate) const WAIT: Timeout = Timeout::from_millis(30_000);

/// A set name unique to this process and call.
pub(crate) fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "vdi-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Turns on tracing output for the test (RUST_LOG, default warn).
pub(crate) fn init_tracing() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// The role this process was started in, if it is a child.
pub(crate) fn role() -> Option<String> {
    std::env::var("VDI_ROLE").ok()
}

/// A parameter passed to a child.
pub(crate) fn param(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("child parameter {key} missing"))
}

/// A numeric parameter passed to a child.
pub(crate) fn param_u64(key: &str) -> u64 {
    param(key)
        .parse()
        .unwrap_or_else(|_| panic!("child parameter {key} is not a number"))
}

/// A child process running test `test` of this binary in `role`; killed when dropped.
pub(crate) struct ChildProc {
    child: Option<Child>,
}

impl ChildProc {
    /// Starts the child.
    pub(crate) fn spawn(test: &str, role: &str, params: &[(&str, String)]) -> Self {
        let exe = std::env::current_exe().expect("test binary path");
        let mut cmd = Command::new(exe);
        cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env("VDI_ROLE", role)
            .stdin(Stdio::null());
        for (k, v) in params {
            cmd.env(k, v);
        }
        Self {
            child: Some(cmd.spawn().expect("spawn child test process")),
        }
    }

    /// The child's pid.
    pub(crate) fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Waits for the child to exit, at most `limit`; kills it and panics on overrun.
    pub(crate) fn wait(mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("child process did not exit within {limit:?}");
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the child (SIGKILL on Linux, TerminateProcess on Windows) and reaps it.
    pub(crate) fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The tag before each message a child writes for its parent on stdout; the test harness's own
/// output on the same stream lacks it.
const MSG_TAG: &str = "@vdi-msg ";

/// A child process (as [`ChildProc`]) whose stdin and stdout are pipes to the parent: the
/// parent sends it lines with [`PipedChild::send`] and reads its messages with
/// [`PipedChild::recv`]; the child uses [`tell_parent`] and [`from_parent`].
pub(crate) struct PipedChild {
    proc: ChildProc,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl PipedChild {
    /// Starts the child with piped stdin and stdout; killed when dropped.
    pub(crate) fn spawn(test: &str, role: &str, params: &[(&str, String)]) -> Self {
        let exe = std::env::current_exe().expect("test binary path");
        let mut cmd = Command::new(exe);
        cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env("VDI_ROLE", role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (k, v) in params {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn child test process");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("child stdout");
        let pid = child.id();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness may have begun the line ("test child ... ").
                if let Some((_, msg)) = line.split_once(MSG_TAG) {
                    if tx.send(msg.to_owned()).is_err() {
                        break;
                    }
                } else if !line.is_empty() {
                    eprintln!("[child {pid}] {line}");
                }
            }
        });
        Self {
            proc: ChildProc { child: Some(child) },
            stdin,
            lines,
        }
    }

    /// The child's pid.
    pub(crate) fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// Sends the child one line (no newline in `line`).
    pub(crate) fn send(&mut self, line: &str) {
        assert!(!line.contains('\n'), "one line at a time");
        let stdin = self.stdin.as_mut().expect("child stdin open");
        writeln!(stdin, "{line}").expect("write to child stdin");
        stdin.flush().expect("flush child stdin");
    }

    /// The child's next message; panics if none comes within `limit` or the child ends.
    pub(crate) fn recv(&self, limit: Duration) -> String {
        match self.lines.recv_timeout(limit) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("child {} sent nothing within {limit:?}", self.pid())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("child {} ended without the message expected", self.pid())
            }
        }
    }

    /// Waits for the child's next message and checks that it is `expected`.
    pub(crate) fn expect(&self, expected: &str, limit: Duration) {
        let got = self.recv(limit);
        assert_eq!(
            got,
            expected,
            "unexpected message from child {}",
            self.pid()
        );
    }

    /// Closes the child's stdin (it reads end of file), then waits for it to exit, at most
    /// `limit`; kills it and panics on overrun.
    pub(crate) fn wait(mut self, limit: Duration) -> ExitStatus {
        drop(self.stdin.take());
        self.proc.wait(limit)
    }

    /// Kills the child (SIGKILL on Linux, TerminateProcess on Windows) and reaps it.
    pub(crate) fn kill(self) {
        self.proc.kill();
    }
}

/// In a child: sends `msg` (one line) to the parent on stdout.
pub(crate) fn tell_parent(msg: &str) {
    assert!(!msg.contains('\n'), "one line at a time");
    let mut out = std::io::stdout().lock();
    writeln!(out, "{MSG_TAG}{msg}").expect("write to parent");
    out.flush().expect("flush to parent");
}

/// In a child: the next line the parent sent on stdin; `None` at end of file.
pub(crate) fn from_parent() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end_matches('\n').to_owned()),
    }
}

/// Fails the whole test process if it is still running after `limit` (a watchdog: a deadlock
/// becomes a failure, not a hung CI job).
pub(crate) fn watchdog(limit: Duration) {
    thread::spawn(move || {
        thread::sleep(limit);
        eprintln!("watchdog: test still running after {limit:?}; aborting");
        std::process::exit(101);
    });
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Fills `buf` with the stream bytes of device `device` starting at stream offset `offset`
/// (both multiples of 8).
pub(crate) fn fill(device: u32, offset: u64, buf: &mut [u8]) {
    assert!(offset.is_multiple_of(8) && buf.len().is_multiple_of(8));
    let seed = u64::from(device) << 48;
    for (i, chunk) in buf.chunks_exact_mut(8).enumerate() {
        let v = splitmix(seed ^ (offset / 8 + i as u64));
        chunk.copy_from_slice(&v.to_le_bytes());
    }
}

/// Whether `buf` holds device `device`'s stream bytes from `offset`.
pub(crate) fn check(device: u32, offset: u64, buf: &[u8]) -> bool {
    if !offset.is_multiple_of(8) || !buf.len().is_multiple_of(8) {
        return false;
    }
    let seed = u64::from(device) << 48;
    buf.chunks_exact(8)
        .enumerate()
        .all(|(i, chunk)| chunk == splitmix(seed ^ (offset / 8 + i as u64)).to_le_bytes())
}

/// The name of device `i` of set `set`: the first device has the set's name.
pub(crate) fn device_name(set: &str, i: u32) -> String {
    if i == 0 {
        set.to_owned()
    } else {
        format!("{set}-d{i}")
    }
}

/// What a server run does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub devices: u32,
    pub block: u32,
    pub max_transfer: u32,
    /// Buffers per device.
    pub depth: u32,
    /// Stream bytes per device (a multiple of the block size).
    pub bytes: u64,
}

impl Plan {
    /// Passes the plan to a child.
    pub(crate) fn params(&self, name: &str) -> Vec<(&'static str, String)> {
        vec![
            ("VDI_SET", name.to_owned()),
            ("VDI_DEVICES", self.devices.to_string()),
            ("VDI_BLOCK", self.block.to_string()),
            ("VDI_MTS", self.max_transfer.to_string()),
            ("VDI_DEPTH", self.depth.to_string()),
            ("VDI_BYTES", self.bytes.to_string()),
        ]
    }

    /// Reads the plan a parent passed.
    pub(crate) fn from_env() -> (String, Self) {
        (
            param("VDI_SET"),
            Self {
                devices: param_u64("VDI_DEVICES") as u32,
                block: param_u64("VDI_BLOCK") as u32,
                max_transfer: param_u64("VDI_MTS") as u32,
                depth: param_u64("VDI_DEPTH") as u32,
                bytes: param_u64("VDI_BYTES"),
            },
        )
    }
}

/// Opens `name` as the server and configures it for `plan`, retrying the open until the client
/// has created the set.
pub(crate) fn open_and_configure(
    name: &str,
    plan: &Plan,
    backup: bool,
) -> Result<(vdi_shm::ServerSet, Vec<vdi_shm::ServerDevice>), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let set = loop {
        match ShmServer::new().open(None, name) {
            Ok(s) => break s,
            Err(e)
                if Instant::now() < deadline && e.hresult() == vdi_core::HResult::VD_E_INVALID =>
            {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    };
    let cfg = if backup {
        ServerConfig::backup(plan.block, plan.max_transfer)
    } else {
        ServerConfig::restore(plan.block, plan.max_transfer)
    };
    set.begin_configuration(&cfg)?;
    set.request_buffers(plan.max_transfer, 0, plan.depth * plan.devices)?;
    let devices = (0..plan.devices)
        .map(|i| set.open_device(&device_name(name, i)))
        .collect::<Result<Vec<_>, _>>()?;
    set.end_configuration()?;
    Ok((set, devices))
}

/// The server side of a backup: writes `plan.bytes` of each device's stream in transfers of
/// `max_transfer`, keeps up to `depth` commands outstanding per device, then Flush and
/// CloseDevice. Every device runs on its own thread.
pub(crate) fn serve_backup(name: &str, plan: Plan) -> Result<(), Error> {
    let (set, devices) = open_and_configure(name, &plan, true)?;
    let mut buffers = Vec::new();
    for _ in 0..plan.depth * plan.devices {
        buffers.push(set.allocate_buffer(plan.max_transfer, 0)?);
    }
    thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, dev) in devices.iter().enumerate() {
            let mine: Vec<_> = buffers.drain(..plan.depth as usize).collect();
            handles.push(s.spawn(move || backup_device(i as u32, dev, mine, &plan)));
        }
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("device thread panicked"))
    })?;
    set.close()
}

fn backup_device(
    index: u32,
    dev: &vdi_shm::ServerDevice,
    mut free: Vec<vdi_shm::Buffer>,
    plan: &Plan,
) -> Result<(), Error> {
    let mut offset = 0u64;
    while offset < plan.bytes {
        let mut buf = match free.pop() {
            Some(b) => b,
            None => {
                let c = dev.completion(WAIT)?;
                if c.completion.code != CompletionCode::SUCCESS {
                    return Err(Error::DeviceError);
                }
                c.buffer.expect("write buffer comes back")
            }
        };
        let n = (plan.bytes - offset).min(u64::from(plan.max_transfer)) as u32;
        fill(index, offset, &mut buf.as_mut_slice()[..n as usize]);
        dev.send(ServerCommand::write(buf, n))
            .map_err(|e| e.error)?;
        offset += u64::from(n);
    }
    while dev.outstanding() > 0 {
        let c = dev.completion(WAIT)?;
        if c.completion.code != CompletionCode::SUCCESS {
            return Err(Error::DeviceError);
        }
    }
    dev.send(ServerCommand::control(CommandCode::FLUSH))
        .map_err(|e| e.error)?;
    let c = dev.completion(WAIT)?;
    assert_eq!(
        (c.code, c.completion.code),
        (CommandCode::FLUSH, CompletionCode::SUCCESS)
    );
    dev.close()
}

/// The server side of a restore: reads each device's stream in sizes that vary between the
/// block size and `max_transfer` and checks every byte, until the client answers
/// `ERROR_HANDLE_EOF`; returns the bytes read per device.
pub(crate) fn serve_restore(name: &str, plan: Plan) -> Result<Vec<u64>, Error> {
    let (set, devices) = open_and_configure(name, &plan, false)?;
    let mut buffers = Vec::new();
    for _ in 0..plan.devices {
        buffers.push(set.allocate_buffer(plan.max_transfer, 0)?);
    }
    let totals = thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, dev) in devices.iter().enumerate() {
            let buf = buffers.pop().expect("a buffer per device");
            handles.push(s.spawn(move || restore_device(i as u32, dev, buf, &plan)));
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("device thread panicked"))
            .collect::<Result<Vec<_>, _>>()
    })?;
    set.close()?;
    Ok(totals)
}

fn restore_device(
    index: u32,
    dev: &vdi_shm::ServerDevice,
    mut buf: vdi_shm::Buffer,
    plan: &Plan,
) -> Result<u64, Error> {
    let blocks = plan.max_transfer / plan.block;
    let mut offset = 0u64;
    let mut k = u64::from(index);
    loop {
        // Read sizes vary: 1..=blocks blocks, not the backup's write sizes.
        k = k
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = plan.block * (1 + ((k >> 33) as u32 % blocks));
        dev.send(ServerCommand::read(buf, n)).map_err(|e| e.error)?;
        let c = dev.completion(WAIT)?;
        buf = c.buffer.expect("read buffer comes back");
        let got = c.completion.bytes_transferred;
        assert!(
            check(index, offset, &buf.as_slice()[..got as usize]),
            "device {index}: wrong bytes at offset {offset}"
        );
        offset += u64::from(got);
        match c.completion.code {
            CompletionCode::SUCCESS if got == n => {}
            CompletionCode::HANDLE_EOF => break,
            other => panic!("device {index}: read answered {other:?} with {got} of {n} bytes"),
        }
    }
    dev.close()?;
    Ok(offset)
}

/// Opens every device of set `name` and runs `serve` on each, one thread per device (the
/// engine synchronizes its streams, so devices must be served at once); returns the results in
/// device order.
pub(crate) fn serve_devices<T: Send>(
    set: &ClientSet,
    name: &str,
    devices: u32,
    serve: impl Fn(&vdi_shm::ClientDevice) -> Result<T, Error> + Sync,
) -> Result<Vec<T>, Error> {
    let devs = (0..devices)
        .map(|i| set.open_device(&device_name(name, i)))
        .collect::<Result<Vec<_>, _>>()?;
    let serve = &serve;
    thread::scope(|s| {
        let handles: Vec<_> = devs.iter().map(|dev| s.spawn(move || serve(dev))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("device thread panicked"))
            .collect()
    })
}

/// The client side of a backup: serves every device on its own thread, checks every byte in
/// stream order, acknowledges Flush; returns the bytes received per device.
pub(crate) fn client_backup(set: &ClientSet, name: &str, devices: u32) -> Result<Vec<u64>, Error> {
    serve_devices(set, name, devices, |dev| {
        let index = ClientDevice::index(dev);
        let mut offset = 0u64;
        loop {
            let cmd = match dev.command(WAIT) {
                Ok(c) => c,
                Err(Error::Closed) => return Ok(offset),
                Err(e) => return Err(e),
            };
            match cmd.code() {
                CommandCode::WRITE => {
                    assert!(
                        check(index, offset, cmd.data()),
                        "device {index}: wrong bytes at offset {offset}"
                    );
                    offset += u64::from(cmd.size());
                    let n = cmd.size();
                    dev.complete(cmd, Completion::success(n))?;
                }
                CommandCode::FLUSH | CommandCode::CLEAR_ERROR | CommandCode::COMPLETE => {
                    dev.complete(cmd, Completion::success(0))?;
                }
                _ => dev.complete(cmd, Completion::not_supported())?,
            }
        }
    })
}

/// The client side of a restore: fills each Read from the device's stream until `bytes`, then
/// answers the short final read with `ERROR_HANDLE_EOF`.
pub(crate) fn client_restore(
    set: &ClientSet,
    name: &str,
    devices: u32,
    bytes: u64,
) -> Result<(), Error> {
    serve_devices(set, name, devices, |dev| {
        let index = ClientDevice::index(dev);
        let mut offset = 0u64;
        loop {
            let mut cmd = match dev.command(WAIT) {
                Ok(c) => c,
                Err(Error::Closed) => return Ok(()),
                Err(e) => return Err(e),
            };
            if cmd.code() != CommandCode::READ {
                dev.complete(cmd, Completion::not_supported())?;
                continue;
            }
            let want = u64::from(cmd.size());
            let n = want.min(bytes - offset);
            fill(index, offset, &mut cmd.data_mut()[..n as usize]);
            offset += n;
            let c = if n == want {
                Completion::success(n as u32)
            } else {
                Completion::eof(n as u32)
            };
            dev.complete(cmd, c)?;
        }
    })
    .map(drop)
}

/// Asserts that nothing of set `name` is left ([`leftovers`] is `(0, 0)`). The kernel frees a
/// dead process's sockets asynchronously (a socket with a message in flight that carries a
/// descriptor waits for the `AF_UNIX` garbage collector), so this looks again, for a bounded
/// while, before it fails.
pub(crate) fn assert_no_leftovers(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = leftovers(name);
        if left == (0, 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "mappings or sockets of {name} left behind: {left:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Counts what is left of set `name`: this process's mappings of its memfds (named
/// `vdi-shm:<name>:...`), and the abstract sockets bound under its name anywhere.
#[cfg(all(target_os = "linux", not(feature = "portable-unix")))]
pub(crate) fn leftovers(name: &str) -> (usize, usize) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let tag = format!("memfd:vdi-shm:{name}:");
    let mapped = maps.lines().filter(|l| l.contains(&tag)).count();
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let needle = format!("@vdi-shm.1/{name}");
    let sockets = unix
        .lines()
        .filter(|l| l.split_whitespace().last() == Some(needle.as_str()))
        .count();
    (mapped, sockets)
}

/// Counts what is left of set `name`: this process's mappings of its shared memory, and
/// whether its rendezvous exists (0 or 1): on Windows its pipe (`\\.\pipe\vdi-shm.1\<name>`),
/// with the portable Unix backend its socket file, live or stale.
#[cfg(any(
    windows,
    all(unix, any(not(target_os = "linux"), feature = "portable-unix"))
))]
pub(crate) fn leftovers(name: &str) -> (usize, usize) {
    vdi_shm::leftovers(name)
}

/// Whether [`leftovers`] may count the rendezvous of a set whose creator was killed: not where
/// the system frees the name (Linux's abstract sockets, Windows' pipes); with the portable Unix
/// backend, the dead creator's socket file stays (it no longer holds the name: its lock went
/// with the process) until the next set this user creates sweeps it away.
pub(crate) const STALE_SOCKET_FILE: bool = cfg!(all(
    unix,
    any(not(target_os = "linux"), feature = "portable-unix")
));
