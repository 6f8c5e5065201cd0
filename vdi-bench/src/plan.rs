//! How much each section measures, for a full run, `--quick` and `--smoke`.

use std::time::Duration;

/// The length of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// The numbers BENCHMARKS.md records (one to two minutes on 2 cores).
    Full,
    /// About fifteen seconds: every row, fewer samples and rounds.
    Quick,
    /// Seconds, in a debug build: every code path once (the crate's own test).
    Smoke,
}

/// The sizes and counts of one run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Interleaved rounds of the spinning round-trip group.
    pub(crate) rtt_spin_rounds: usize,
    /// Round trips per variant and round, spinning.
    pub(crate) rtt_spin_n: usize,
    /// The most time one spinning row may take per round (a loaded machine makes spinning
    /// round trips cost a scheduler time slice each).
    pub(crate) rtt_spin_limit: Duration,
    /// Interleaved rounds of the asleep round-trip group.
    pub(crate) rtt_asleep_rounds: usize,
    /// Round trips per variant and round, client asleep.
    pub(crate) rtt_asleep_n: usize,
    /// The most time one asleep row may take per round.
    pub(crate) rtt_asleep_limit: Duration,
    /// The pause before each asleep round trip: long enough for the client's core to go idle.
    pub(crate) asleep_pause: Duration,
    /// Warm-up round trips before the timed ones.
    pub(crate) rtt_warmup: usize,
    /// Transfer sizes of the streaming rows.
    pub(crate) stream_sizes: Vec<u32>,
    /// Device counts of the streaming rows.
    pub(crate) stream_devices: Vec<u32>,
    /// Interleaved rounds per streaming cell.
    pub(crate) stream_rounds: usize,
    /// Bytes per vdi-shm streaming run.
    pub(crate) stream_bytes_shm: u64,
    /// Bytes per pipe or socket streaming run (they are ~10x slower).
    pub(crate) stream_bytes_copy: u64,
    /// Bytes filled, and bytes checksummed, for the pipeline bound.
    pub(crate) bound_bytes: u64,
    /// Buffers per device in flight.
    pub(crate) depth: u32,
    /// Transfer sizes of the async rows.
    pub(crate) async_sizes: Vec<u32>,
    /// Interleaved rounds of the async rows.
    pub(crate) async_rounds: usize,
    /// Bytes per async or blocking run.
    pub(crate) async_bytes: u64,
    /// Device counts of the scale rows.
    pub(crate) scale_devices: Vec<u32>,
    /// Round trips on device 0 per scale row.
    pub(crate) scale_rtt_n: usize,
    /// Commands per device in the all-devices-busy scale measurement.
    pub(crate) scale_cmds_per_device: usize,
    /// The buffer area of the set-up row.
    pub(crate) setup_bytes: u64,
    /// Interleaved rounds of the set-up row.
    pub(crate) setup_rounds: usize,
    /// The main job: MAXTRANSFERSIZE values.
    pub(crate) job_transfers: Vec<u32>,
    /// The main job: device counts.
    pub(crate) job_devices: Vec<u32>,
    /// The main job: interleaved rounds.
    pub(crate) job_rounds: usize,
    /// The main job: the pseudo-database's size.
    pub(crate) job_bytes: u64,
    /// The main job: the places, of `tmpfs` and `disk`.
    pub(crate) job_places: Vec<&'static str>,
    /// The main job: whether the zstd and backend rows run.
    pub(crate) job_extras: bool,
}

const KIB: u32 = 1024;
const MIB: u32 = 1024 * 1024;

impl Plan {
    /// The plan for `mode`.
    pub(crate) fn new(mode: Mode) -> Self {
        let full = Self {
            rtt_spin_rounds: 7,
            rtt_spin_n: 50_000,
            rtt_spin_limit: Duration::from_millis(1000),
            rtt_asleep_rounds: 5,
            rtt_asleep_n: 2_000,
            rtt_asleep_limit: Duration::from_millis(2500),
            asleep_pause: Duration::from_micros(300),
            rtt_warmup: 1_000,
            stream_sizes: vec![64 * KIB, MIB, 4 * MIB],
            stream_devices: vec![1, 4, 16],
            stream_rounds: 5,
            stream_bytes_shm: 2 << 30,
            stream_bytes_copy: 256 << 20,
            bound_bytes: 512 << 20,
            depth: 4,
            async_sizes: vec![64 * KIB, MIB, 4 * MIB],
            async_rounds: 5,
            async_bytes: 2 << 30,
            scale_devices: vec![1, 2, 4, 8, 16, 32, 64],
            scale_rtt_n: 20_000,
            scale_cmds_per_device: 2_000,
            setup_bytes: 1 << 30,
            setup_rounds: 3,
            job_transfers: vec![MIB, 4 * MIB],
            job_devices: vec![1, 4, 16],
            job_rounds: 3,
            job_bytes: 2 << 30,
            job_places: vec!["tmpfs", "disk"],
            job_extras: true,
        };
        match mode {
            Mode::Full => full,
            Mode::Quick => Self {
                rtt_spin_rounds: 3,
                rtt_spin_n: 10_000,
                rtt_spin_limit: Duration::from_millis(300),
                rtt_asleep_rounds: 2,
                rtt_asleep_n: 300,
                rtt_asleep_limit: Duration::from_millis(500),
                rtt_warmup: 500,
                stream_rounds: 1,
                stream_bytes_shm: 256 << 20,
                stream_bytes_copy: 64 << 20,
                bound_bytes: 128 << 20,
                async_rounds: 2,
                async_bytes: 256 << 20,
                scale_devices: vec![1, 4, 16, 64],
                scale_rtt_n: 5_000,
                scale_cmds_per_device: 500,
                setup_rounds: 1,
                job_transfers: vec![MIB],
                job_rounds: 1,
                job_bytes: 256 << 20,
                ..full
            },
            Mode::Smoke => Self {
                rtt_spin_rounds: 2,
                rtt_spin_n: 200,
                rtt_spin_limit: Duration::from_millis(300),
                rtt_asleep_rounds: 1,
                rtt_asleep_n: 20,
                rtt_asleep_limit: Duration::from_millis(300),
                rtt_warmup: 20,
                stream_sizes: vec![64 * KIB, MIB],
                stream_devices: vec![1, 2],
                stream_rounds: 1,
                stream_bytes_shm: 4 << 20,
                stream_bytes_copy: 4 << 20,
                bound_bytes: 4 << 20,
                depth: 2,
                async_sizes: vec![64 * KIB],
                async_rounds: 1,
                async_bytes: 4 << 20,
                scale_devices: vec![1, 3],
                scale_rtt_n: 100,
                scale_cmds_per_device: 20,
                setup_bytes: 16 << 20,
                setup_rounds: 1,
                job_transfers: vec![64 * KIB],
                job_devices: vec![1, 2],
                job_rounds: 1,
                job_bytes: 4 << 20,
                ..full
            },
        }
    }
}

/// The main job's rows narrowed from the command line (`--job-devices`, `--job-places`,
/// `--job-rounds`, `--job-core`), for measuring one change without the whole plan.
#[derive(Debug, Default)]
pub(crate) struct JobNarrowing {
    /// Device counts instead of the plan's.
    pub(crate) devices: Option<Vec<u32>>,
    /// Places instead of the plan's.
    pub(crate) places: Option<Vec<&'static str>>,
    /// Rounds instead of the plan's.
    pub(crate) rounds: Option<usize>,
    /// Only backup, restore and verify: no zstd and no backend row.
    pub(crate) core_only: bool,
}

impl JobNarrowing {
    /// Narrows `plan`.
    pub(crate) fn apply(self, plan: &mut Plan) {
        if let Some(d) = self.devices {
            plan.job_devices = d;
        }
        if let Some(p) = self.places {
            plan.job_places = p;
        }
        if let Some(r) = self.rounds {
            plan.job_rounds = r.max(1);
        }
        if self.core_only {
            plan.job_extras = false;
        }
    }
}
