//! Test support: child processes in a role, deterministic stream data checked at any offset,
//! and a small engine (the server side) that reports how each device ended.
//!
//! Copied from vdi-shm/tests/common/mod.rs: `unique_name`, `init_tracing`, `role`, `param`,
//! `param_u64`, `ChildProc`, `watchdog`, `splitmix`, `fill`, `device_name`, `Plan` and
//! `open_and_configure`, and the message tag of `tell_parent`. New here: byte checks at any
//! offset and length (`Checker`, `Source`), and an engine whose devices report an [`Outcome`]
//! instead of panicking, so that tests can accept "success or an abort".

#![allow(dead_code, reason = "each test file uses a part of the support module")]

use std::{
    io::Write,
    pin::Pin,
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    task::{Context, Poll},
    thread,
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, ReadBuf};
use vdi_core::{
    CommandCode, CompletionCode, Error, HResult, ServerBackend, ServerBuffer, ServerCommand,
    ServerConfig, ServerDevice, ServerDeviceSet, Timeout,
};
use vdi_shm::ShmServer;

/// Generous bound for any single wait of the engine; a hang fails instead of blocking CI.
pub(crate) const WAIT: Timeout = Timeout::from_millis(20_000);

/// A set name unique to this process and call.
pub(crate) fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "vdi-async-{tag}-{}-{}",
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
pub(crate) const MSG_TAG: &str = "@vdi-msg ";

/// In a child: sends `msg` (one line) to the parent on stdout.
pub(crate) fn tell_parent(msg: &str) {
    assert!(!msg.contains('\n'), "one line at a time");
    let mut out = std::io::stdout().lock();
    writeln!(out, "{MSG_TAG}{msg}").expect("write to parent");
    out.flush().expect("flush to parent");
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

/// Fills `buf` with the stream bytes of `device` from any `offset`, of any length.
pub(crate) fn fill_any(device: u32, offset: u64, buf: &mut [u8], scratch: &mut Vec<u8>) {
    let start = offset & !7;
    let end = (offset + buf.len() as u64).next_multiple_of(8);
    scratch.resize((end - start) as usize, 0);
    fill(device, start, scratch);
    let skip = (offset - start) as usize;
    buf.copy_from_slice(&scratch[skip..skip + buf.len()]);
}

/// Whether `buf` holds device `device`'s stream bytes from `offset` (multiples of 8).
pub(crate) fn check(device: u32, offset: u64, buf: &[u8]) -> bool {
    if !offset.is_multiple_of(8) || !buf.len().is_multiple_of(8) {
        return false;
    }
    let seed = u64::from(device) << 48;
    buf.chunks_exact(8)
        .enumerate()
        .all(|(i, chunk)| chunk == splitmix(seed ^ (offset / 8 + i as u64)).to_le_bytes())
}

/// Checks a device's stream in order, in chunks of any size.
#[derive(Debug)]
pub(crate) struct Checker {
    pub(crate) device: u32,
    pub(crate) offset: u64,
    scratch: Vec<u8>,
    expected: Vec<u8>,
}

impl Checker {
    pub(crate) fn new(device: u32) -> Self {
        Self {
            device,
            offset: 0,
            scratch: Vec::new(),
            expected: Vec::new(),
        }
    }

    /// Checks the next bytes of the stream; panics at the first wrong one.
    pub(crate) fn next(&mut self, data: &[u8]) {
        if self.offset.is_multiple_of(8) && data.len().is_multiple_of(8) {
            assert!(
                check(self.device, self.offset, data),
                "device {}: wrong bytes in [{}, {})",
                self.device,
                self.offset,
                self.offset + data.len() as u64
            );
        } else {
            self.expected.resize(data.len(), 0);
            fill_any(
                self.device,
                self.offset,
                &mut self.expected,
                &mut self.scratch,
            );
            assert!(
                self.expected == data,
                "device {}: wrong bytes in [{}, {})",
                self.device,
                self.offset,
                self.offset + data.len() as u64
            );
        }
        self.offset += data.len() as u64;
    }
}

/// A device's stream as an [`AsyncRead`] of `total` bytes, in uneven pieces (between 1 byte and
/// `max_piece`), returning `Pending` now and then.
#[derive(Debug)]
pub(crate) struct Source {
    device: u32,
    offset: u64,
    total: u64,
    max_piece: usize,
    rng: u64,
    scratch: Vec<u8>,
}

impl Source {
    pub(crate) fn new(device: u32, total: u64, max_piece: usize) -> Self {
        Self {
            device,
            offset: 0,
            total,
            max_piece,
            rng: u64::from(device) + 1,
            scratch: Vec::new(),
        }
    }

    fn next_rand(&mut self) -> u64 {
        self.rng = splitmix(self.rng);
        self.rng
    }
}

impl AsyncRead for Source {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let r = self.next_rand();
        if r.is_multiple_of(16) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let left = (self.total - self.offset) as usize;
        let piece = 1 + (r >> 8) as usize % self.max_piece;
        let n = left.min(piece).min(buf.remaining());
        let this = &mut *self;
        let out = buf.initialize_unfilled_to(n);
        fill_any(this.device, this.offset, &mut out[..n], &mut this.scratch);
        buf.advance(n);
        this.offset += n as u64;
        Poll::Ready(Ok(()))
    }
}

/// A small deterministic random number generator for tests (splitmix64).
#[derive(Debug)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// The seed from `VDI_SEED`, or one from the clock (printed, to replay a failure).
    pub(crate) fn from_env() -> Self {
        let seed = std::env::var("VDI_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("seed: VDI_SEED={seed}");
        Self(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = splitmix(self.0);
        self.0
    }

    /// A number in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The name of device `i` of set `set`: the first device has the set's name.
pub(crate) fn device_name(set: &str, i: u32) -> String {
    if i == 0 {
        set.to_owned()
    } else {
        format!("{set}-d{i}")
    }
}

/// What an engine run does.
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
    let cfg = if backup {
        ServerConfig::backup(plan.block, plan.max_transfer)
    } else {
        ServerConfig::restore(plan.block, plan.max_transfer)
    };
    open_and_configure_with(name, plan, &cfg)
}

/// As [`open_and_configure`], with the server's configuration given.
pub(crate) fn open_and_configure_with(
    name: &str,
    plan: &Plan,
    cfg: &ServerConfig,
) -> Result<(vdi_shm::ServerSet, Vec<vdi_shm::ServerDevice>), Error> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let set = loop {
        match ShmServer::new().open(None, name) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline && e.hresult() == HResult::VD_E_INVALID => {
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    };
    set.begin_configuration(cfg)?;
    set.request_buffers(plan.max_transfer, 0, plan.depth * plan.devices)?;
    let devices = (0..plan.devices)
        .map(|i| set.open_device(&device_name(name, i)))
        .collect::<Result<Vec<_>, _>>()?;
    set.end_configuration()?;
    Ok((set, devices))
}

/// How a device ended, as the engine saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every command succeeded (for a restore: up to the client's `ERROR_HANDLE_EOF`).
    Ok,
    /// A command was completed with this code; the engine stopped and closed the device.
    Failed(CompletionCode),
    /// A call returned `VD_E_ABORT`.
    Aborted,
    /// A call failed otherwise (a wait that timed out is a hang: the test fails).
    Error(Error),
}

impl Outcome {
    fn of(e: Error) -> Self {
        if e.is_abort() {
            Self::Aborted
        } else {
            Self::Error(e)
        }
    }

    /// Success, or one of the two forms of an abort the engine can see.
    pub(crate) fn is_ok_or_abort(&self) -> bool {
        matches!(
            self,
            Self::Ok | Self::Aborted | Self::Failed(CompletionCode::OPERATION_ABORTED)
        )
    }
}

/// The engine side of a backup: writes `plan.bytes` of each device's stream in transfers of
/// `max_transfer`, keeps up to `depth` commands outstanding per device, then Flush and
/// CloseDevice; every device on its own thread. A failed completion stops the device: the
/// engine waits for what is outstanding and closes it, as SQL Server does.
pub(crate) fn serve_backup(name: &str, plan: Plan) -> Vec<Outcome> {
    let (set, devices) = match open_and_configure(name, &plan, true) {
        Ok(x) => x,
        Err(e) => return vec![Outcome::of(e); plan.devices as usize],
    };
    let mut buffers = Vec::new();
    for _ in 0..plan.depth * plan.devices {
        match set.allocate_buffer(plan.max_transfer, 0) {
            Ok(b) => buffers.push(b),
            Err(e) => return vec![Outcome::of(e); plan.devices as usize],
        }
    }
    let outcomes = thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, dev) in devices.iter().enumerate() {
            let mine: Vec<_> = buffers.drain(..plan.depth as usize).collect();
            handles.push(s.spawn(move || backup_device(i as u32, dev, mine, &plan)));
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("device thread panicked"))
            .collect::<Vec<_>>()
    });
    let _ = set.close();
    outcomes
}

/// Waits for every outstanding command after a failure, then closes the device.
fn stop_device(dev: &vdi_shm::ServerDevice, outcome: Outcome) -> Outcome {
    while dev.outstanding() > 0 {
        match dev.completion(WAIT) {
            Ok(_) => {}
            Err(e) if e.is_abort() => return outcome,
            Err(e) => return Outcome::Error(e),
        }
    }
    let _ = dev.close();
    outcome
}

fn backup_device(
    index: u32,
    dev: &vdi_shm::ServerDevice,
    mut free: Vec<vdi_shm::Buffer>,
    plan: &Plan,
) -> Outcome {
    let mut offset = 0u64;
    let mut run = || -> Result<Outcome, Error> {
        while offset < plan.bytes {
            let mut buf = match free.pop() {
                Some(b) => b,
                None => {
                    let c = dev.completion(WAIT)?;
                    if c.completion.code != CompletionCode::SUCCESS {
                        return Ok(stop_device(dev, Outcome::Failed(c.completion.code)));
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
                return Ok(stop_device(dev, Outcome::Failed(c.completion.code)));
            }
        }
        dev.send(ServerCommand::control(CommandCode::FLUSH))
            .map_err(|e| e.error)?;
        let c = dev.completion(WAIT)?;
        if c.completion.code != CompletionCode::SUCCESS {
            return Ok(stop_device(dev, Outcome::Failed(c.completion.code)));
        }
        dev.close()?;
        Ok(Outcome::Ok)
    };
    run().unwrap_or_else(Outcome::of)
}

/// The engine side of a restore: reads each device's stream in sizes that vary between the
/// block size and `max_transfer`, with `depth` reads outstanding, and checks every byte, until
/// the client answers `ERROR_HANDLE_EOF`; then checks the total was `plan.bytes`. With
/// `stop_after`, closes each device after that many reads instead (FILELISTONLY).
pub(crate) fn serve_restore(name: &str, plan: Plan, stop_after: Option<u64>) -> Vec<Outcome> {
    let (set, devices) = match open_and_configure(name, &plan, false) {
        Ok(x) => x,
        Err(e) => return vec![Outcome::of(e); plan.devices as usize],
    };
    let mut buffers = Vec::new();
    for _ in 0..plan.depth * plan.devices {
        match set.allocate_buffer(plan.max_transfer, 0) {
            Ok(b) => buffers.push(b),
            Err(e) => return vec![Outcome::of(e); plan.devices as usize],
        }
    }
    let outcomes = thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, dev) in devices.iter().enumerate() {
            let mine: Vec<_> = buffers.drain(..plan.depth as usize).collect();
            handles.push(s.spawn(move || restore_device(i as u32, dev, mine, &plan, stop_after)));
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("device thread panicked"))
            .collect::<Vec<_>>()
    });
    let _ = set.close();
    outcomes
}

fn restore_device(
    index: u32,
    dev: &vdi_shm::ServerDevice,
    mut free: Vec<vdi_shm::Buffer>,
    plan: &Plan,
    stop_after: Option<u64>,
) -> Outcome {
    let blocks = plan.max_transfer / plan.block;
    let mut k = u64::from(index);
    // Stream offsets of the reads in flight, in order (completions come back in order).
    let mut inflight = std::collections::VecDeque::new();
    let mut offset = 0u64;
    let mut next_offset = 0u64;
    let mut sent = 0u64;
    let mut eof = false;
    let mut run = || -> Result<Outcome, Error> {
        loop {
            let may_send = !eof && stop_after.is_none_or(|s| sent < s);
            if may_send && let Some(buf) = free.pop() {
                // Read sizes vary: 1..=blocks blocks, not the backup's write sizes.
                k = k
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let n = plan.block * (1 + ((k >> 33) as u32 % blocks));
                dev.send(ServerCommand::read(buf, n)).map_err(|e| e.error)?;
                inflight.push_back((next_offset, n));
                next_offset += u64::from(n);
                sent += 1;
                continue;
            }
            if inflight.is_empty() {
                break;
            }
            let c = dev.completion(WAIT)?;
            let (at, n) = inflight.pop_front().expect("a read in flight");
            let buf = c.buffer.expect("read buffer comes back");
            let got = c.completion.bytes_transferred;
            if !eof {
                assert_eq!(at, offset, "device {index}: completions out of order");
                assert!(
                    check(index, offset, &buf.as_slice()[..got as usize]),
                    "device {index}: wrong bytes at offset {offset}"
                );
                offset += u64::from(got);
            }
            free.push(buf);
            match c.completion.code {
                CompletionCode::SUCCESS if got == n => {}
                CompletionCode::HANDLE_EOF => eof = true,
                other => return Ok(stop_device(dev, Outcome::Failed(other))),
            }
        }
        if stop_after.is_none() {
            assert_eq!(offset, plan.bytes, "device {index}: bytes restored");
        }
        dev.close()?;
        Ok(Outcome::Ok)
    };
    run().unwrap_or_else(Outcome::of)
}
