//! The same one-device backup streaming taken through vdi-async and through the blocking API.
//!
//! Here the client is the measured side, so it is the parent; the engine is the child: it fills
//! each buffer and sends it, [`DEPTH`] in flight. Blocking: `GetCommand` on the calling thread,
//! checksum, `CompleteCommand`. Async: the command stream of an `AsyncDevice` polled by one task
//! on a current-thread tokio runtime (the device's waiter thread takes the commands). Rounds
//! alternate between the two (A B A B ...); the ratio is the median of the per-round ratios.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use vdi_async::AsyncSet;
use vdi_core::{
    ClientBackend, ClientCommand, ClientConfig, ClientDevice, ClientDeviceSet, CommandCode,
    Completion, CompletionCode, Error as VdiError, ServerBackend, ServerBuffer, ServerCommand,
    ServerConfig, ServerDevice, ServerDeviceSet,
};
use vdi_shm::{ShmClient, ShmServer};

use crate::{
    plan::Plan,
    shm::WAIT,
    util::{self, Context, Error, Peer, Result},
};

/// Buffers in flight.
const DEPTH: u32 = 4;

/// One transfer size.
#[derive(Debug, Serialize)]
pub(crate) struct Row {
    /// Bytes per transfer.
    pub(crate) transfer: u32,
    /// Interleaved rounds.
    pub(crate) rounds: usize,
    /// The blocking API, median GB/s.
    pub(crate) blocking_gbps: f64,
    /// vdi-async, median GB/s.
    pub(crate) async_gbps: f64,
    /// Median of per-round async / blocking.
    pub(crate) ratio: f64,
}

/// Every transfer size of the plan.
pub(crate) fn run(plan: &Plan) -> Result<Vec<Row>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let mut rows = Vec::new();
    for &transfer in &plan.async_sizes {
        let (mut b, mut a) = (Vec::new(), Vec::new());
        for r in 0..plan.async_rounds {
            if r % 2 == 0 {
                b.push(blocking(transfer, plan.async_bytes)?);
                a.push(rt.block_on(asynchronous(transfer, plan.async_bytes))?);
            } else {
                a.push(rt.block_on(asynchronous(transfer, plan.async_bytes))?);
                b.push(blocking(transfer, plan.async_bytes)?);
            }
            eprintln!(
                "  async {:>4} KiB, round {}/{}: blocking {:6.2}  async {:6.2} GB/s",
                transfer >> 10,
                r + 1,
                plan.async_rounds,
                b[r],
                a[r]
            );
        }
        let ratios: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y).collect();
        rows.push(Row {
            transfer,
            rounds: plan.async_rounds,
            blocking_gbps: util::median(&b),
            async_gbps: util::median(&a),
            ratio: util::median(&ratios),
        });
    }
    Ok(rows)
}

fn spawn_engine(name: &str, transfer: u32, total: u64) -> Result<Peer> {
    Peer::spawn(
        "engine",
        &[name.to_owned(), transfer.to_string(), total.to_string()],
        None,
    )
}

fn finish(engine: Peer, received: u64, total: u64, elapsed: Duration) -> Result<f64> {
    engine.finish()?;
    if received != total {
        return Err(Error::msg(format!(
            "received {received} bytes, expected {total}"
        )));
    }
    Ok(util::gbps(total, elapsed))
}

/// From the first command to the completion of the last byte. (Not to `VD_E_CLOSE`: a client
/// that finished its spin before CloseDevice may see the close only at the end of vdi-shm's
/// 100 ms sleep slice, which is no part of the data rate.)
fn span(start: Option<Instant>, end: Option<Instant>) -> Duration {
    match (start, end) {
        (Some(s), Some(e)) => e.duration_since(s),
        _ => Duration::ZERO,
    }
}

fn blocking(transfer: u32, total: u64) -> Result<f64> {
    let name = util::unique_name("blocking");
    let set = ShmClient::new()
        .create(None, &name, &ClientConfig::default())
        .context("create")?;
    let engine = spawn_engine(&name, transfer, total)?;
    set.configuration(WAIT).context("configuration")?;
    let dev = set.open_device(&name).context("open device")?;
    let (mut received, mut sum) = (0u64, 0u64);
    let mut start = None;
    let mut end: Option<Instant> = None;
    loop {
        let cmd = match dev.command(WAIT) {
            Ok(c) => c,
            Err(VdiError::Closed) => break,
            Err(e) => return Err(Error::msg(format!("GetCommand: {e}"))),
        };
        start.get_or_insert_with(Instant::now);
        let c = if cmd.code() == CommandCode::WRITE {
            sum = sum.wrapping_add(util::checksum(cmd.data()));
            received += u64::from(cmd.size());
            Completion::success(cmd.size())
        } else {
            Completion::success(0)
        };
        dev.complete(cmd, c).context("complete")?;
        if received == total && end.is_none() {
            end = Some(Instant::now());
        }
    }
    let elapsed = span(start, end);
    std::hint::black_box(sum);
    drop(dev);
    set.close().context("close")?;
    finish(engine, received, total, elapsed)
}

async fn asynchronous(transfer: u32, total: u64) -> Result<f64> {
    let name = util::unique_name("async");
    let set = AsyncSet::create(&ShmClient::new(), None, &name, &ClientConfig::default())
        .await
        .context("create")?;
    let engine = spawn_engine(&name, transfer, total)?;
    set.configuration().await.context("configuration")?;
    let device = set.open_device(&name).await.context("open device")?;
    let mut commands = device.commands();
    let (mut received, mut sum) = (0u64, 0u64);
    let mut start = None;
    let mut end = None;
    while let Some(cmd) = commands.next().await {
        let cmd = cmd.context("command")?;
        start.get_or_insert_with(Instant::now);
        let c = if cmd.code() == CommandCode::WRITE {
            sum = sum.wrapping_add(util::checksum(cmd.data()));
            received += u64::from(cmd.size());
            Completion::success(cmd.size())
        } else {
            Completion::success(0)
        };
        cmd.complete(c).context("complete")?;
        if received == total && end.is_none() {
            end = Some(Instant::now());
        }
    }
    let elapsed = span(start, end);
    std::hint::black_box(sum);
    drop((commands, device));
    set.close().await.context("close")?;
    finish(engine, received, total, elapsed)
}

/// The engine process: `args` = [set name, transfer, total bytes]. Writes `total` bytes in
/// transfers of `transfer`, filling each buffer first, then Flush and CloseDevice.
pub(crate) fn engine_child(args: &[String]) -> Result<()> {
    let name: String = util::arg(args, 0, "set name")?;
    let transfer: u32 = util::arg(args, 1, "transfer")?;
    let total: u64 = util::arg(args, 2, "bytes")?;
    let set = ShmServer::new().open(None, &name).context("open")?;
    set.begin_configuration(&ServerConfig::backup(65536, transfer.max(65536)))
        .context("begin configuration")?;
    set.request_buffers(transfer, 0, DEPTH)
        .context("request buffers")?;
    let dev = set.open_device(&name).context("open device")?;
    set.end_configuration().context("end configuration")?;
    let mut free = (0..DEPTH)
        .map(|_| set.allocate_buffer(transfer, 0))
        .collect::<Result<Vec<_>, _>>()
        .context("allocate buffer")?;
    let take = || -> Result<vdi_shm::Buffer> {
        let c = dev.completion(WAIT).context("completion")?;
        if c.completion.code != CompletionCode::SUCCESS {
            return Err(Error::msg(format!(
                "completed with {:?}",
                c.completion.code
            )));
        }
        c.buffer.context("a Write came back without its buffer")
    };
    let (mut sent, mut x) = (0u64, 0u64);
    while sent < total {
        let mut buf = match free.pop() {
            Some(b) => b,
            None => take()?,
        };
        let n = (total - sent).min(u64::from(transfer)) as u32;
        x = util::fill(&mut buf.as_mut_slice()[..n as usize], x);
        dev.send(ServerCommand::write(buf, n))
            .map_err(|e| Error::msg(format!("send: {}", e.error)))?;
        sent += u64::from(n);
    }
    while dev.outstanding() > 0 {
        take()?;
    }
    dev.send(ServerCommand::control(CommandCode::FLUSH))
        .map_err(|e| Error::msg(format!("send: {}", e.error)))?;
    dev.completion(WAIT).context("flush")?;
    dev.close().context("close device")?;
    set.close().context("close")?;
    Ok(())
}
