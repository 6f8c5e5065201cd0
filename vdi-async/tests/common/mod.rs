//! Test support: byte checks at any offset and length (`Checker`, `Source`), a seeded random
//! number generator, and a small engine (the server side) whose devices report an [`Outcome`]
//! instead of panicking, so that tests can accept "success or an abort". Child processes in a
//! role, deterministic stream data and the server's configuration come from `vdi-testkit`,
//! re-exported here.

#![allow(dead_code, reason = "each test file uses a part of the support module")]

use std::{
    pin::Pin,
    task::{Context, Poll},
    thread,
    time::Duration,
};

use tokio::io::{AsyncRead, ReadBuf};
use vdi_core::{
    CommandCode, CompletionCode, Error, ServerBuffer, ServerCommand, ServerConfig, ServerDevice,
    ServerDeviceSet, Timeout,
};
use vdi_shm::ShmServer;
#[allow(unused_imports, reason = "each test file uses a part of the kit")]
pub(crate) use vdi_testkit::{
    ChildProc, MSG_TAG, Plan, check, device_name, fill, init_tracing, param, param_u64, role,
    tell_parent, watchdog,
};
use vdi_testkit::{OpenRetry, splitmix};

/// Generous bound for any single wait of the engine; a hang fails instead of blocking CI.
pub(crate) const WAIT: Timeout = Timeout::from_millis(20_000);

/// How long, and how often, [`open_and_configure`] tries to open a set not created yet.
const OPEN: OpenRetry = OpenRetry {
    within: Duration::from_secs(20),
    every: Duration::from_millis(2),
};

/// A set name unique to this process and call (`vdi-async-<tag>-<pid>-<n>`).
pub(crate) fn unique_name(tag: &str) -> String {
    vdi_testkit::unique_name("vdi-async", tag)
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

/// The same pieces, blocking (for `restore_from_reader`).
impl std::io::Read for Source {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let r = self.next_rand();
        let left = (self.total - self.offset) as usize;
        let piece = 1 + (r >> 8) as usize % self.max_piece;
        let n = left.min(piece).min(out.len());
        fill_any(self.device, self.offset, &mut out[..n], &mut self.scratch);
        self.offset += n as u64;
        Ok(n)
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

/// Opens `name` as the server and configures it for `plan`, retrying the open until the client
/// has created the set.
pub(crate) fn open_and_configure(
    name: &str,
    plan: &Plan,
    backup: bool,
) -> Result<(vdi_shm::ServerSet, Vec<vdi_shm::ServerDevice>), Error> {
    open_and_configure_with(name, plan, &plan.server_config(backup))
}

/// As [`open_and_configure`], with the server's configuration given.
pub(crate) fn open_and_configure_with(
    name: &str,
    plan: &Plan,
    cfg: &ServerConfig,
) -> Result<(vdi_shm::ServerSet, Vec<vdi_shm::ServerDevice>), Error> {
    vdi_testkit::open_and_configure(&ShmServer::new(), name, plan, cfg, OPEN)
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
