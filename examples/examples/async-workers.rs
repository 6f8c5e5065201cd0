//! A backup whose commands worker processes consume, through vdi-async: the primary client
//! takes each device's commands in stream order and passes each Write's buffer handle to one of
//! several worker processes (secondary clients), which map the buffer, do the work (here: check
//! every byte and checksum it) and report back; the primary completes the command, and
//! acknowledges a Flush only once every Write before it was reported done.
//!
//! The engine and the workers are this same program in a child process each
//! (`VDI_EXAMPLE_ROLE`). Run it with
//! `cargo run --release -p examples --example async-workers [MIB_PER_DEVICE] [DEVICES] [WORKERS]`
//! (default: 256 MiB through 2 devices, 3 workers).

use std::{
    process::{ExitCode, Stdio},
    time::Instant,
};

use futures::StreamExt;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
    sync::mpsc,
};
use vdi_async::{AsyncCommand, AsyncDevice, AsyncSet, serve_all};
use vdi_core::{
    BufferHandle, ClientConfig, CommandCode, Completion, CompletionCode, Error, MappedBuffer,
    ServerBackend, ServerBuffer, ServerCommand, ServerConfig, ServerDevice, ServerDeviceSet,
    Timeout,
};
use vdi_shm::{ClientDevice, ClientSet, ShmClient, ShmServer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const BLOCK: u32 = 65536;
const MAX_TRANSFER: u32 = 1 << 20;
const DEPTH: u32 = 4;
const WAIT: Timeout = Timeout::from_millis(60_000);

fn main() -> ExitCode {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let mib = args.first().copied().unwrap_or(256);
    let devices = args.get(1).copied().unwrap_or(2) as u32;
    let workers = args.get(2).copied().unwrap_or(3) as usize;
    let per_device = (mib << 20) / u64::from(BLOCK) * u64::from(BLOCK);
    let result = match std::env::var("VDI_EXAMPLE_ROLE").as_deref() {
        Ok("engine") => engine(&set_name(), devices, per_device),
        Ok("worker") => tokio_main(worker(set_name())),
        _ => tokio_main(primary(devices, workers, per_device)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("async-workers: {e}");
            ExitCode::FAILURE
        }
    }
}

fn set_name() -> String {
    std::env::var("VDI_EXAMPLE_SET").unwrap_or_default()
}

fn tokio_main(f: impl Future<Output = Result<(), BoxError>>) -> Result<(), BoxError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f)
}

fn device_name(set: &str, i: u32) -> String {
    if i == 0 {
        set.to_owned()
    } else {
        format!("{set}-stripe{i}")
    }
}

/// Starts this program again in `role`, with pipes for stdin and stdout.
fn spawn(role: &str, name: &str) -> Result<Child, BoxError> {
    Ok(Command::new(std::env::current_exe()?)
        .args(std::env::args().skip(1))
        .env("VDI_EXAMPLE_ROLE", role)
        .env("VDI_EXAMPLE_SET", name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?)
}

/// The primary: creates the set, starts the engine and the workers, serves every device.
async fn primary(devices: u32, workers: usize, per_device: u64) -> Result<(), BoxError> {
    let name = format!("async-workers-example-{}", std::process::id());
    let config = ClientConfig {
        device_count: devices,
        ..ClientConfig::default()
    };
    let set = AsyncSet::create(&ShmClient::new(), None, &name, &config).await?;
    let mut engine = spawn("engine", &name)?;
    let cfg = set.configuration().await?;
    println!(
        "configured: {} devices, block {} KiB, max transfer {} KiB; {workers} worker processes",
        cfg.device_count,
        cfg.block_size >> 10,
        cfg.max_transfer_size >> 10
    );
    let mut pool = Vec::new();
    for _ in 0..workers {
        pool.push(Worker::start(spawn("worker", &name)?).await?);
    }
    let start = Instant::now();
    let (jobs_tx, jobs_rx) = async_channel::bounded::<Job>(2 * workers);
    let drivers: Vec<_> = pool
        .into_iter()
        .map(|w| tokio::spawn(drive(w, set.clone(), jobs_rx.clone())))
        .collect();
    drop(jobs_rx);
    let names: Vec<String> = (0..devices).map(|i| device_name(&name, i)).collect();
    let served = serve_all(&set, &names, move |device| {
        dispatch(device, jobs_tx.clone())
    })
    .await;
    let mut per_worker = Vec::new();
    for d in drivers {
        per_worker.push(d.await??);
    }
    let elapsed = start.elapsed();
    let received = served?;
    set.close().await?;
    if !engine.wait().await?.success() {
        return Err("the engine process failed".into());
    }
    if received.iter().any(|&r| r != per_device) {
        return Err(
            format!("received {received:?} bytes, expected {per_device} per device").into(),
        );
    }
    let total: u64 = received.iter().sum();
    let checksum = per_worker.iter().fold(0u64, |a, w| a.wrapping_add(w.1));
    println!(
        "backed up {:.2} GiB through {devices} devices in {:.2} s ({:.2} GB/s); Writes per worker: {:?}; every byte checked in a worker (checksum {checksum:#018x})",
        total as f64 / (1u64 << 30) as f64,
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64() / 1e9,
        per_worker.iter().map(|w| w.0).collect::<Vec<_>>(),
    );
    Ok(())
}

/// A Write on its way to a worker; `done` hears whether its bytes were right.
struct Job {
    command: AsyncCommand<ClientDevice>,
    offset: u64,
    done: mpsc::UnboundedSender<bool>,
}

/// One device: takes its commands in stream order, hands each Write to the workers, and
/// acknowledges a Flush once every Write before it was reported good.
async fn dispatch(
    device: AsyncDevice<ClientDevice>,
    jobs: async_channel::Sender<Job>,
) -> Result<u64, BoxError> {
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let (mut offset, mut sent, mut reported) = (0u64, 0u64, 0u64);
    let mut commands = device.commands();
    while let Some(cmd) = commands.next().await {
        let cmd = cmd?;
        match cmd.code() {
            CommandCode::WRITE => {
                let size = u64::from(cmd.size());
                let job = Job {
                    command: cmd,
                    offset,
                    done: done_tx.clone(),
                };
                if jobs.send(job).await.is_err() {
                    return Err("every worker is gone".into());
                }
                offset += size;
                sent += 1;
            }
            CommandCode::FLUSH | CommandCode::COMPLETE => {
                let mut good = true;
                while reported < sent {
                    good &= done.recv().await.unwrap_or(false);
                    reported += 1;
                }
                if !good {
                    cmd.complete(Completion::with_code(CompletionCode::IO_DEVICE))?;
                    return Err(
                        format!("device {}: a worker found wrong bytes", device.name()).into(),
                    );
                }
                cmd.complete(Completion::success(0))?;
            }
            CommandCode::CLEAR_ERROR => cmd.complete(Completion::success(0))?,
            _ => cmd.complete(Completion::not_supported())?,
        }
    }
    Ok(offset)
}

/// A worker process as the primary drives it: one request line, one answer line.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    async fn start(mut child: Child) -> Result<Self, BoxError> {
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let mut w = Self {
            child,
            stdin,
            lines,
        };
        match w.recv().await?.as_str() {
            "ready" => Ok(w),
            other => Err(format!("worker: {other}").into()),
        }
    }

    async fn recv(&mut self) -> Result<String, BoxError> {
        Ok(self.lines.next_line().await?.ok_or("the worker ended")?)
    }

    async fn ask(&mut self, line: &str) -> Result<String, BoxError> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.recv().await
    }
}

/// Drives one worker: has it check each job's buffer by handle, then completes the command.
/// Returns the jobs it did and the sum of their checksums.
async fn drive(
    mut worker: Worker,
    set: AsyncSet<ClientSet>,
    jobs: async_channel::Receiver<Job>,
) -> Result<(u64, u64), BoxError> {
    let (mut count, mut checksum) = (0, 0u64);
    while let Ok(job) = jobs.recv().await {
        let h = job.command.buffer_handle(&set)?;
        let (dev, size) = (job.command.device_index(), job.command.size());
        let answer = worker
            .ask(&format!("{} {dev} {} {size}", h.0, job.offset))
            .await?;
        let sum = answer.strip_prefix("ok ").and_then(|s| s.parse().ok());
        let completion = match sum {
            Some(_) => Completion::success(size),
            None => Completion::with_code(CompletionCode::IO_DEVICE),
        };
        job.command.complete(completion)?;
        let _ = job.done.send(sum.is_some());
        checksum = checksum.wrapping_add(sum.unwrap_or(0));
        count += 1;
    }
    drop(worker.stdin);
    if !worker.child.wait().await?.success() {
        return Err("a worker process failed".into());
    }
    Ok((count, checksum))
}

/// A worker: joins the set as a secondary client and answers each request
/// `HANDLE DEVICE OFFSET LEN` with `ok CHECKSUM` once the bytes are checked, or `bad`.
async fn worker(name: String) -> Result<(), BoxError> {
    let set = AsyncSet::open_secondary(&ShmClient::new(), None, &name).await?;
    set.configuration().await?;
    let mut out = tokio::io::stdout();
    out.write_all(b"ready\n").await?;
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let w: Vec<u64> = line.split(' ').filter_map(|x| x.parse().ok()).collect();
        let [handle, device, offset, len] = w[..] else {
            return Err(format!("bad request {line:?}").into());
        };
        let len = u32::try_from(len)?;
        let mapped = set
            .map_buffer_handle(BufferHandle(handle as u32), len)
            .await?;
        let data = mapped.as_slice();
        let answer = match check(device as u32, offset, data) {
            Some(sum) => format!("ok {sum}\n"),
            None => "bad\n".to_owned(),
        };
        drop(mapped);
        out.write_all(answer.as_bytes()).await?;
        out.flush().await?;
    }
    set.close().await?;
    Ok(())
}

/// The engine: a minimal server writing a deterministic stream to every device.
fn engine(name: &str, devices: u32, per_device: u64) -> Result<(), BoxError> {
    let set = ShmServer::new().open(None, name)?;
    set.begin_configuration(&ServerConfig::backup(BLOCK, MAX_TRANSFER))?;
    set.request_buffers(MAX_TRANSFER, 0, DEPTH * devices)?;
    let devs = (0..devices)
        .map(|i| set.open_device(&device_name(name, i)))
        .collect::<Result<Vec<_>, _>>()?;
    set.end_configuration()?;
    let mut buffers = (0..DEPTH * devices)
        .map(|_| set.allocate_buffer(MAX_TRANSFER, 0))
        .collect::<Result<Vec<_>, _>>()?;
    std::thread::scope(|s| {
        let handles: Vec<_> = devs
            .iter()
            .enumerate()
            .map(|(i, dev)| {
                let mine: Vec<_> = buffers.drain(..DEPTH as usize).collect();
                s.spawn(move || write_stream(dev, i as u32, mine, per_device))
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("engine device thread"))
    })?;
    set.close()?;
    Ok(())
}

fn write_stream(
    dev: &vdi_shm::ServerDevice,
    index: u32,
    mut free: Vec<vdi_shm::Buffer>,
    total: u64,
) -> Result<(), Error> {
    let take = || -> Result<vdi_shm::Buffer, Error> {
        let c = dev.completion(WAIT)?;
        if c.completion.code != CompletionCode::SUCCESS {
            return Err(Error::DeviceError);
        }
        c.buffer.ok_or(Error::DeviceError)
    };
    let mut offset = 0;
    while offset < total {
        let mut buf = match free.pop() {
            Some(b) => b,
            None => take()?,
        };
        let n = (total - offset).min(u64::from(MAX_TRANSFER)) as u32;
        fill(index, offset, &mut buf.as_mut_slice()[..n as usize]);
        dev.send(ServerCommand::write(buf, n))
            .map_err(|e| e.error)?;
        offset += u64::from(n);
    }
    while dev.outstanding() > 0 {
        take()?;
    }
    dev.send(ServerCommand::control(CommandCode::FLUSH))
        .map_err(|e| e.error)?;
    let c = dev.completion(WAIT)?;
    if c.completion.code != CompletionCode::SUCCESS {
        return Err(Error::DeviceError);
    }
    dev.close()
}

/// The stream's 8-byte word at word index `i` of device `d`: cheap to make and to check.
fn word(d: u32, i: u64) -> u64 {
    (i ^ (u64::from(d) << 56)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn fill(d: u32, offset: u64, buf: &mut [u8]) {
    for (k, w) in buf.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&word(d, offset / 8 + k as u64).to_le_bytes());
    }
}

/// Checks the bytes; returns their checksum (a sum of words) if all are right.
fn check(d: u32, offset: u64, buf: &[u8]) -> Option<u64> {
    let mut sum = 0u64;
    for (k, w) in buf.chunks_exact(8).enumerate() {
        let v = word(d, offset / 8 + k as u64);
        if w != v.to_le_bytes() {
            return None;
        }
        sum = sum.wrapping_add(v);
    }
    Some(sum)
}
