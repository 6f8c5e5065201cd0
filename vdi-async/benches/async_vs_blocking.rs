//! Throughput of a one-device backup through the blocking API and through vdi-async, side by
//! side.
//!
//! Run with `cargo bench -p vdi-async --bench async_vs_blocking` (add `-- quick` for a short
//! run; `VDI_BENCH_ROUNDS=n` sets the runs per client, `VDI_BENCH_TRANSFERS=64,1024` the
//! transfer sizes in KiB, default 1024 and 4096; with `RUST_LOG=vdi_async=debug` each device
//! logs at its end how many commands the task took itself and how many the waiter thread
//! took). The engine runs in a child process (this binary re-run with `VDI_BENCH_ROLE`) and
//! fills each buffer before sending it; the client reads every byte (a checksum) and completes
//! the Write. Runs alternate between the two clients (A B A B …) so that a change in the
//! machine's load hits both alike; the table gives the median GB/s of each and their ratio.
//!
//! - **blocking**: `GetCommand` with an infinite timeout on the calling thread, then
//!   `CompleteCommand`.
//! - **async**: the command stream of an `AsyncDevice` polled by one task on a current-thread
//!   runtime: the task takes a command itself when the engine has sent it, and leaves the
//!   waiting to the device's waiter thread otherwise.

use std::{
    process::{Child, Command},
    time::{Duration, Instant},
};

use futures::StreamExt;
use vdi_async::AsyncSet;
use vdi_core::{
    ClientBackend, ClientCommand, ClientConfig, ClientDevice, ClientDeviceSet, CommandCode,
    Completion, CompletionCode, Error, ServerBackend, ServerBuffer, ServerCommand, ServerConfig,
    ServerDevice, ServerDeviceSet, Timeout,
};
use vdi_shm::{ShmClient, ShmServer};

const WAIT: Timeout = Timeout::from_millis(60_000);
const DEPTH: u32 = 4;

fn quick() -> bool {
    std::env::args().any(|a| a == "quick")
}

fn main() {
    if let Ok(role) = std::env::var("VDI_BENCH_ROLE") {
        let name = std::env::var("VDI_BENCH_SET").expect("set name");
        let transfer: u32 = role.parse().expect("transfer size");
        let total: u64 = std::env::var("VDI_BENCH_BYTES")
            .expect("bytes")
            .parse()
            .expect("bytes");
        engine(&name, transfer, total).expect("engine");
        return;
    }
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let (total, mut rounds) = if quick() {
        (256u64 << 20, 2)
    } else {
        (2u64 << 30, 5)
    };
    if let Some(n) = env_list("VDI_BENCH_ROUNDS").first() {
        rounds = (*n).max(1) as usize;
    }
    let mut transfers: Vec<u32> = env_list("VDI_BENCH_TRANSFERS")
        .into_iter()
        .map(|kib| (kib as u32).max(1) << 10)
        .collect();
    if transfers.is_empty() {
        transfers = vec![1 << 20, 4 << 20];
    }
    println!(
        "# one-device backup, engine in a child process, {} MiB per run, {rounds} runs each, interleaved\n",
        total >> 20
    );
    println!("| transfer | blocking GB/s | async GB/s | async / blocking |");
    println!("|---|---|---|---|");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for transfer in transfers {
        let mut blocking = Vec::new();
        let mut asynch = Vec::new();
        for _ in 0..rounds {
            blocking.push(run_blocking(transfer, total));
            asynch.push(rt.block_on(run_async(transfer, total)));
        }
        let (b, a) = (median(&mut blocking), median(&mut asynch));
        let size = if transfer >= 1 << 20 {
            format!("{} MiB", transfer >> 20)
        } else {
            format!("{} KiB", transfer >> 10)
        };
        println!("| {size} | {b:.2} | {a:.2} | {:.2} |", a / b);
    }
}

/// The numbers in the comma-separated environment variable `key`.
fn env_list(key: &str) -> Vec<u64> {
    std::env::var(key)
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn set_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "vdi-async-bench-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn spawn_engine(name: &str, transfer: u32, total: u64) -> Child {
    Command::new(std::env::current_exe().expect("bench binary"))
        .env("VDI_BENCH_ROLE", transfer.to_string())
        .env("VDI_BENCH_SET", name)
        .env("VDI_BENCH_BYTES", total.to_string())
        .spawn()
        .expect("spawn the engine")
}

fn finish(mut engine: Child, received: u64, sum: u64, total: u64, elapsed: Duration) -> f64 {
    assert!(engine.wait().expect("wait").success(), "engine failed");
    assert_eq!(received, total, "bytes received");
    // The engine writes word i of the stream as i: the words of the whole stream sum to
    // n(n-1)/2, so every byte was read, and read right.
    let n = total / 8;
    let expected = if n.is_multiple_of(2) {
        (n / 2).wrapping_mul(n.wrapping_sub(1))
    } else {
        n.wrapping_mul((n - 1) / 2)
    };
    assert_eq!(sum, expected, "checksum of the stream");
    total as f64 / elapsed.as_secs_f64() / 1e9
}

/// Reads every byte (the sum of the stream's words, checked at the end).
fn checksum(data: &[u8]) -> u64 {
    data.chunks_exact(8).fold(0u64, |a, w| {
        a.wrapping_add(u64::from_le_bytes(w.try_into().expect("8 bytes")))
    })
}

fn run_blocking(transfer: u32, total: u64) -> f64 {
    let name = set_name("blocking");
    let set = ShmClient::new()
        .create(None, &name, &ClientConfig::default())
        .expect("create");
    let engine = spawn_engine(&name, transfer, total);
    set.configuration(WAIT).expect("configuration");
    let dev = set.open_device(&name).expect("open");
    let start = Instant::now();
    let (mut received, mut sum) = (0u64, 0u64);
    loop {
        let cmd = match dev.command(Timeout::INFINITE) {
            Ok(c) => c,
            Err(Error::Closed) => break,
            Err(e) => panic!("GetCommand: {e}"),
        };
        let c = if cmd.code() == CommandCode::WRITE {
            sum = sum.wrapping_add(checksum(cmd.data()));
            received += u64::from(cmd.size());
            Completion::success(cmd.size())
        } else {
            Completion::success(0)
        };
        dev.complete(cmd, c).expect("complete");
    }
    let elapsed = start.elapsed();
    drop(dev);
    set.close().expect("close");
    finish(engine, received, sum, total, elapsed)
}

async fn run_async(transfer: u32, total: u64) -> f64 {
    let name = set_name("async");
    let set = AsyncSet::create(&ShmClient::new(), None, &name, &ClientConfig::default())
        .await
        .expect("create");
    let engine = spawn_engine(&name, transfer, total);
    set.configuration().await.expect("configuration");
    let device = set.open_device(&name).await.expect("open");
    let mut commands = device.commands();
    let start = Instant::now();
    let (mut received, mut sum) = (0u64, 0u64);
    while let Some(cmd) = commands.next().await {
        let cmd = cmd.expect("command");
        let c = if cmd.code() == CommandCode::WRITE {
            sum = sum.wrapping_add(checksum(cmd.data()));
            received += u64::from(cmd.size());
            Completion::success(cmd.size())
        } else {
            Completion::success(0)
        };
        cmd.complete(c).expect("complete");
    }
    let elapsed = start.elapsed();
    drop((commands, device));
    set.close().await.expect("close");
    finish(engine, received, sum, total, elapsed)
}

/// The engine: writes `total` bytes in transfers of `transfer`, filling each buffer first.
fn engine(name: &str, transfer: u32, total: u64) -> Result<(), Error> {
    let set = ShmServer::new().open(None, name)?;
    set.begin_configuration(&ServerConfig::backup(65536, transfer))?;
    set.request_buffers(transfer, 0, DEPTH)?;
    let dev = set.open_device(name)?;
    set.end_configuration()?;
    let mut free = (0..DEPTH)
        .map(|_| set.allocate_buffer(transfer, 0))
        .collect::<Result<Vec<_>, _>>()?;
    let take = || -> Result<vdi_shm::Buffer, Error> {
        let c = dev.completion(WAIT)?;
        if c.completion.code != CompletionCode::SUCCESS {
            return Err(Error::DeviceError);
        }
        c.buffer.ok_or(Error::DeviceError)
    };
    let mut offset = 0u64;
    while offset < total {
        let mut buf = match free.pop() {
            Some(b) => b,
            None => take()?,
        };
        let n = (total - offset).min(u64::from(transfer)) as u32;
        for (i, w) in buf.as_mut_slice()[..n as usize]
            .chunks_exact_mut(8)
            .enumerate()
        {
            w.copy_from_slice(&(offset / 8 + i as u64).to_le_bytes());
        }
        dev.send(ServerCommand::write(buf, n))
            .map_err(|e| e.error)?;
        offset += u64::from(n);
    }
    while dev.outstanding() > 0 {
        take()?;
    }
    dev.send(ServerCommand::control(CommandCode::FLUSH))
        .map_err(|e| e.error)?;
    dev.completion(WAIT)?;
    dev.close()?;
    set.close()
}
