//! How vdi-shm grows with devices, and what setting up a set costs.
//!
//! - **Scale**, 1..64 devices, each with four 1 MiB buffers: the shared memory of the set (the
//!   control segment, which holds every device's rings, and the buffer segments), the round
//!   trip on device 0 while every other device is open and idle, and the cost per command with
//!   every device busy at once (one server thread sends a control command to each device, then
//!   takes each completion). The server spins; the client threads, one per device, all on one
//!   core, keep the default spin budget (so idle ones sleep).
//! - **Set-up**: create + open + configure (with a buffer area of [`Plan::setup_bytes`]) + the
//!   client's `GetConfiguration` + `OpenDevice` + the first Write round trip (by then the
//!   client has mapped the buffer area), both sides in this process, beside the floor
//!   for touching that much memory once: an anonymous mapping of the same size populated by
//!   the kernel. Interleaved, median of rounds.

use std::time::Instant;

use serde::Serialize;
use vdi_core::{
    ClientBackend, ClientConfig, ClientDevice, ClientDeviceSet, Completion, ServerBackend,
    ServerCommand, ServerConfig, ServerDevice, ServerDeviceSet,
};
use vdi_shm::{ShmClient, ShmServer};

use crate::{
    plan::Plan,
    shm::{self, WAIT},
    util::{self, Context, Count, Error, Latency, Result},
};

/// Buffer size of the scale rows.
const SCALE_BUFFER: u32 = 1 << 20;
/// Buffers per device of the scale rows.
const SCALE_BUFFERS_PER_DEVICE: u32 = 4;
/// Transfer size of the set-up row.
const SETUP_TRANSFER: u32 = 4 << 20;

/// One device count.
#[derive(Debug, Serialize)]
pub(crate) struct ScaleRow {
    /// Devices in the set.
    pub(crate) devices: u32,
    /// Bytes of the control segment (header, device table, every device's rings).
    pub(crate) control_bytes: u64,
    /// Bytes of the buffer segments (four 1 MiB buffers per device).
    pub(crate) buffer_bytes: u64,
    /// Round trips on device 0, the others open and idle.
    pub(crate) rtt: Latency,
    /// Nanoseconds per command with every device busy.
    pub(crate) ns_per_command_all_busy: f64,
}

/// Every device count of the plan.
pub(crate) fn run(plan: &Plan) -> Result<Vec<ScaleRow>> {
    let mut rows = Vec::new();
    for &devices in &plan.scale_devices {
        let pair = shm::Pair::open(
            devices,
            SCALE_BUFFER,
            devices * SCALE_BUFFERS_PER_DEVICE,
            shm::SPIN_ALWAYS,
            2000,
        )?;
        let (control_bytes, buffer_bytes) = pair.shared_bytes()?;
        let count = Count {
            warmup: plan.rtt_warmup,
            n: plan.scale_rtt_n,
            limit: plan.rtt_spin_limit,
            pause: None,
        };
        let rtt = Latency::of(&shm::round_trips_on(&pair, count)?);
        let per_command = shm::all_devices_busy(&pair, plan.scale_cmds_per_device)?;
        pair.close()?;
        eprintln!(
            "  scale {devices:>2} devices: control {:>8} KiB, buffers {:>6} MiB, rtt p50 {:>7}, all busy {:>7.0} ns/command",
            control_bytes >> 10,
            buffer_bytes >> 20,
            crate::rtt::fmt_ns(rtt.p50_ns),
            per_command
        );
        rows.push(ScaleRow {
            devices,
            control_bytes,
            buffer_bytes,
            rtt,
            ns_per_command_all_busy: per_command,
        });
    }
    Ok(rows)
}

/// The set-up row.
#[derive(Debug, Serialize)]
pub(crate) struct SetupRow {
    /// The buffer area asked for.
    pub(crate) buffer_bytes: u64,
    /// Interleaved rounds.
    pub(crate) rounds: usize,
    /// `CreateEx` (the client creates the set and its control segment), median ms.
    pub(crate) create_ms: f64,
    /// `Open` (the server connects and maps the control segment), median ms.
    pub(crate) open_ms: f64,
    /// `BeginConfiguration` + `RequestBuffers` + `OpenDevice` + `EndConfiguration` (allocates,
    /// pre-faults and sends the buffer segments), median ms.
    pub(crate) configure_ms: f64,
    /// The client's `GetConfiguration` + `OpenDevice`, median ms.
    pub(crate) client_ms: f64,
    /// The first Write round trip: the server allocates a buffer and sends it, the client gets
    /// the command (its monitor has mapped the buffer segments by then) and completes it,
    /// median ms.
    pub(crate) first_command_ms: f64,
    /// All of it, median ms.
    pub(crate) total_ms: f64,
    /// An anonymous mapping of the same size, populated, median ms.
    pub(crate) populate_ms: f64,
    /// Median of per-round total / populate.
    pub(crate) ratio: f64,
}

/// The set-up row.
pub(crate) fn setup(plan: &Plan) -> Result<SetupRow> {
    let bytes = plan.setup_bytes;
    let mut phases: Vec<[f64; 6]> = Vec::new();
    let mut populate = Vec::new();
    for r in 0..plan.setup_rounds {
        if r % 2 == 0 {
            phases.push(setup_once(bytes)?);
            populate.push(populate_once(bytes)?);
        } else {
            populate.push(populate_once(bytes)?);
            phases.push(setup_once(bytes)?);
        }
        eprintln!(
            "  set-up {} MiB, round {}/{}: {:.1} ms (populate alone {:.1} ms)",
            bytes >> 20,
            r + 1,
            plan.setup_rounds,
            phases[r][5],
            populate[r]
        );
    }
    let col = |i: usize| util::median(&phases.iter().map(|p| p[i]).collect::<Vec<_>>());
    let ratios: Vec<f64> = phases
        .iter()
        .zip(&populate)
        .map(|(p, q)| p[5] / q)
        .collect();
    Ok(SetupRow {
        buffer_bytes: bytes,
        rounds: plan.setup_rounds,
        create_ms: col(0),
        open_ms: col(1),
        configure_ms: col(2),
        client_ms: col(3),
        first_command_ms: col(4),
        total_ms: col(5),
        populate_ms: util::median(&populate),
        ratio: util::median(&ratios),
    })
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// One set-up: [create, open, configure, client, first command, total] in ms.
fn setup_once(bytes: u64) -> Result<[f64; 6]> {
    let name = util::unique_name("setup");
    let count = u32::try_from(bytes / u64::from(SETUP_TRANSFER))
        .context("buffer area too large")?
        .max(1);
    let all = Instant::now();
    let t = Instant::now();
    let client = ShmClient::new()
        .create(None, &name, &ClientConfig::default())
        .context("create")?;
    let create = ms(t);
    let t = Instant::now();
    let server = ShmServer::new().open(None, &name).context("open")?;
    let open = ms(t);
    let t = Instant::now();
    server
        .begin_configuration(&ServerConfig::backup(65536, SETUP_TRANSFER))
        .context("begin configuration")?;
    server
        .request_buffers(SETUP_TRANSFER, 0, count)
        .context("request buffers")?;
    let sdev = server.open_device(&name).context("server open device")?;
    server.end_configuration().context("end configuration")?;
    let configure = ms(t);
    let t = Instant::now();
    client.configuration(WAIT).context("client configuration")?;
    let cdev = client.open_device(&name).context("client open device")?;
    let client_ms = ms(t);
    let t = Instant::now();
    let buf = server
        .allocate_buffer(SETUP_TRANSFER, 0)
        .context("allocate buffer")?;
    sdev.send(ServerCommand::write(buf, 65536))
        .map_err(|e| Error::msg(format!("send: {}", e.error)))?;
    let cmd = cdev.command(WAIT).context("client GetCommand")?;
    cdev.complete(cmd, Completion::success(65536))
        .context("complete")?;
    let done = sdev.completion(WAIT).context("completion")?;
    let first = ms(t);
    let total = ms(all);
    if let Some(b) = done.buffer {
        server.free_buffer(b).context("free buffer")?;
    }
    drop(cdev);
    sdev.close().context("close device")?;
    drop(sdev);
    server.close().context("server close")?;
    client.close().context("client close")?;
    Ok([create, open, configure, client_ms, first, total])
}

/// Maps `bytes` of anonymous memory with MAP_POPULATE: the kernel allocates and zeroes every
/// page, as a set's buffer area needs once. ms.
fn populate_once(bytes: u64) -> Result<f64> {
    let len = usize::try_from(bytes).context("size")?;
    let t = Instant::now();
    let map = memmap2::MmapOptions::new()
        .len(len)
        .populate()
        .map_anon()
        .context("anonymous populated mapping")?;
    let took = ms(t);
    drop(map);
    Ok(took)
}
