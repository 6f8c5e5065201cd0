//! Streaming a backup: the server fills each buffer, the client reads all of it (a checksum).
//! For each transfer size and device count, interleaved rounds of: vdi-shm, the same bytes
//! through pipes, through Unix sockets, and the pipeline bound.
//!
//! The pipeline bound is what a two-stage pipeline on two cores could reach with a free
//! transport: the slower of fill-alone and checksum-alone, each measured on one core with no
//! transport, arranged as the transports are (one thread per device, each cycling through its
//! own 4 buffers of the transfer size), so the bound sees the caches the transports see.

use std::{
    sync::{Barrier, Mutex},
    thread,
};

use serde::Serialize;

use crate::{
    copy::{self, Via},
    plan::Plan,
    shm,
    util::{self, Result},
};

/// One transfer size and device count.
#[derive(Debug, Serialize)]
pub(crate) struct Cell {
    /// Bytes per transfer.
    pub(crate) transfer: u32,
    /// Devices (one stream each, one thread per side each).
    pub(crate) devices: u32,
    /// Interleaved rounds.
    pub(crate) rounds: usize,
    /// vdi-shm, median GB/s.
    pub(crate) shm_gbps: f64,
    /// Pipes, median GB/s.
    pub(crate) pipe_gbps: f64,
    /// Unix sockets, median GB/s.
    pub(crate) socket_gbps: f64,
    /// The pipeline bound, median GB/s.
    pub(crate) bound_gbps: f64,
    /// Fill alone, median GB/s.
    pub(crate) fill_gbps: f64,
    /// Checksum alone, median GB/s.
    pub(crate) checksum_gbps: f64,
    /// Median of per-round vdi-shm / pipe.
    pub(crate) shm_over_pipe: f64,
    /// Median of per-round vdi-shm / socket.
    pub(crate) shm_over_socket: f64,
    /// Median of per-round vdi-shm / bound.
    pub(crate) shm_over_bound: f64,
}

/// Every cell of the plan.
pub(crate) fn run(plan: &Plan) -> Result<Vec<Cell>> {
    let mut cells = Vec::new();
    for &transfer in &plan.stream_sizes {
        for &devices in &plan.stream_devices {
            cells.push(cell(plan, transfer, devices)?);
        }
    }
    Ok(cells)
}

fn cell(plan: &Plan, transfer: u32, devices: u32) -> Result<Cell> {
    let depth = plan.depth;
    let (mut shm_r, mut pipe_r, mut sock_r) = (Vec::new(), Vec::new(), Vec::new());
    let (mut bound_r, mut fill_r, mut sum_r) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..plan.stream_rounds {
        let mut order = [0, 1, 2, 3];
        if r % 2 == 1 {
            order.reverse();
        }
        for step in order {
            match step {
                0 => shm_r.push(shm::stream(
                    devices,
                    transfer,
                    depth,
                    plan.stream_bytes_shm,
                )?),
                1 => pipe_r.push(copy::stream(
                    Via::Pipe,
                    devices,
                    transfer,
                    depth,
                    plan.stream_bytes_copy,
                )?),
                2 => sock_r.push(copy::stream(
                    Via::Socket,
                    devices,
                    transfer,
                    depth,
                    plan.stream_bytes_copy,
                )?),
                _ => {
                    let (fill, sum) = bound(devices, transfer, depth, plan.bound_bytes);
                    fill_r.push(fill);
                    sum_r.push(sum);
                    bound_r.push(fill.min(sum));
                }
            }
        }
        eprintln!(
            "  streaming {:>4} KiB x {:>2} devices, round {}/{}: vdi-shm {:6.2}  pipe {:5.2}  socket {:5.2}  bound {:6.2} GB/s",
            transfer >> 10,
            devices,
            r + 1,
            plan.stream_rounds,
            shm_r[r],
            pipe_r[r],
            sock_r[r],
            bound_r[r]
        );
    }
    let ratio = |a: &[f64], b: &[f64]| {
        let v: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
        util::median(&v)
    };
    Ok(Cell {
        transfer,
        devices,
        rounds: plan.stream_rounds,
        shm_gbps: util::median(&shm_r),
        pipe_gbps: util::median(&pipe_r),
        socket_gbps: util::median(&sock_r),
        bound_gbps: util::median(&bound_r),
        fill_gbps: util::median(&fill_r),
        checksum_gbps: util::median(&sum_r),
        shm_over_pipe: ratio(&shm_r, &pipe_r),
        shm_over_socket: ratio(&shm_r, &sock_r),
        shm_over_bound: ratio(&shm_r, &bound_r),
    })
}

/// Fill-alone and checksum-alone GB/s on this core, arranged as the transports are: one thread
/// per device, each cycling through its own `depth` buffers of `transfer` bytes, `bytes` bytes
/// in all for each of the two.
pub(crate) fn bound(devices: u32, transfer: u32, depth: u32, bytes: u64) -> (f64, f64) {
    let len = transfer as usize;
    let depth = depth as usize;
    let per_device = (bytes / u64::from(devices) / u64::from(transfer)).max(depth as u64) as usize;
    let mut rings: Vec<Vec<u8>> = (0..devices).map(|_| vec![0u8; len * depth]).collect();
    // Touch every page before timing.
    for r in &mut rings {
        util::fill(r, 0);
    }
    let total = (per_device * len) as u64 * u64::from(devices);
    let run = |rings: &mut [Vec<u8>], stage: Stage| -> f64 {
        let barrier = Barrier::new(rings.len());
        let stamps = Mutex::new(Vec::<(u64, u64)>::new());
        thread::scope(|s| {
            for ring in rings.iter_mut() {
                let (barrier, stamps) = (&barrier, &stamps);
                s.spawn(move || {
                    barrier.wait();
                    let start = util::mono_ns();
                    let mut x = 0u64;
                    for i in 0..per_device {
                        let b = (i % depth) * len;
                        x = match stage {
                            Stage::Fill => util::fill(&mut ring[b..b + len], x),
                            Stage::Checksum => x.wrapping_add(util::checksum(&ring[b..b + len])),
                        };
                    }
                    std::hint::black_box(x);
                    stamps
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((start, util::mono_ns()));
                });
            }
        });
        let stamps = stamps.into_inner().unwrap_or_else(|p| p.into_inner());
        let starts: Vec<u64> = stamps.iter().map(|s| s.0).collect();
        util::gbps(
            total,
            util::span(&starts, stamps.iter().map(|s| s.1).max().unwrap_or(0)),
        )
    };
    let fill = run(&mut rings, Stage::Fill);
    let sum = run(&mut rings, Stage::Checksum);
    (fill, sum)
}

/// One stage of the pipeline, alone.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Fill,
    Checksum,
}
