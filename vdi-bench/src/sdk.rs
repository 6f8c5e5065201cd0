//! vdi-sdk's C ABI against vdi-shm's Rust API, in one run: the same server and client process,
//! whose devices are served through either the Rust API (`ShmClient`) or the C ABI of
//! libsqlvdi.so (`sqlvdi::cabi::CAbi`: every GetCommand and CompleteCommand through the
//! `extern "C"` functions the C++ classes forward to, each `VDC_Command` a slot of its own).
//!
//! - **Round trip**, both sides spinning: the two clients interleaved (A B, then B A, ...).
//! - **Streaming** at 1 MiB through 1 and 4 devices: interleaved rounds of the two.

use serde::Serialize;

use crate::{
    plan::Plan,
    rtt::{self, Row},
    shm::{self, Client},
    util::{self, Count, Result},
};

/// One streaming cell: the two clients at one transfer size and device count.
#[derive(Debug, Serialize)]
pub(crate) struct Cell {
    /// Bytes per transfer.
    pub(crate) transfer: u32,
    /// Devices.
    pub(crate) devices: u32,
    /// Interleaved rounds.
    pub(crate) rounds: usize,
    /// Through the Rust API, median GB/s.
    pub(crate) rust_gbps: f64,
    /// Through the C ABI, median GB/s.
    pub(crate) cabi_gbps: f64,
    /// Median of per-round C ABI / Rust API.
    pub(crate) cabi_over_rust: f64,
}

/// The section's results.
#[derive(Debug, Serialize)]
pub(crate) struct Results {
    /// The spinning round trips: the C ABI's row first, so the group's ratio is C ABI / Rust.
    pub(crate) round_trip: rtt::Group,
    /// Streaming cells.
    pub(crate) streaming: Vec<Cell>,
}

/// Runs the section.
pub(crate) fn run(plan: &Plan) -> Result<Results> {
    let c = Count {
        warmup: plan.rtt_warmup,
        n: plan.rtt_spin_n,
        limit: plan.rtt_spin_limit,
        pause: None,
    };
    let rows = vec![
        Row {
            key: "c-abi",
            label: "vdi-sdk C ABI client, both sides spinning".into(),
            optional: false,
            run: Box::new(move || shm::round_trips_with(Client::CAbi, c, shm::SPIN_ALWAYS)),
        },
        Row {
            key: "vdi-shm",
            label: "vdi-shm Rust API client, both sides spinning".into(),
            optional: false,
            run: Box::new(move || shm::round_trips_with(Client::Rust, c, shm::SPIN_ALWAYS)),
        },
    ];
    let round_trip = rtt::group("c-abi", plan.rtt_spin_rounds, c.n, rows)?;
    let mut streaming = Vec::new();
    for devices in [1, 4] {
        streaming.push(cell(plan, 1 << 20, devices)?);
    }
    Ok(Results {
        round_trip,
        streaming,
    })
}

fn cell(plan: &Plan, transfer: u32, devices: u32) -> Result<Cell> {
    let (mut rust, mut cabi) = (Vec::new(), Vec::new());
    let stream =
        |client| shm::stream_with(client, devices, transfer, plan.depth, plan.stream_bytes_shm);
    for r in 0..plan.stream_rounds {
        if r % 2 == 0 {
            rust.push(stream(Client::Rust)?);
            cabi.push(stream(Client::CAbi)?);
        } else {
            cabi.push(stream(Client::CAbi)?);
            rust.push(stream(Client::Rust)?);
        }
        eprintln!(
            "  C ABI streaming {:>4} KiB x {:>2} devices, round {}/{}: Rust API {:6.2}  C ABI {:6.2} GB/s",
            transfer >> 10,
            devices,
            r + 1,
            plan.stream_rounds,
            rust[r],
            cabi[r]
        );
    }
    let per_round: Vec<f64> = cabi.iter().zip(&rust).map(|(c, r)| c / r).collect();
    Ok(Cell {
        transfer,
        devices,
        rounds: plan.stream_rounds,
        rust_gbps: util::median(&rust),
        cabi_gbps: util::median(&cabi),
        cabi_over_rust: util::median(&per_round),
    })
}
