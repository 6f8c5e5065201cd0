//! The results of a run: JSON (`results.json`), Markdown (`results.md`) and the aims the issue
//! sets, each marked met or missed.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{asynch, job, plan::Mode, rtt, rtt::fmt_ns, scale, sdk, streaming};

/// What the machine was.
#[derive(Debug, Serialize)]
pub(crate) struct Machine {
    /// `/proc/cpuinfo`'s model name.
    pub(crate) cpu: String,
    /// Cores available to this process.
    pub(crate) cores: usize,
    /// `MemTotal`, in GiB.
    pub(crate) memory_gib: f64,
    /// The kernel release.
    pub(crate) kernel: String,
    /// `rustc --version`, if rustc is on the path.
    pub(crate) rustc: String,
    /// Whether the binary was built with optimizations.
    pub(crate) optimized: bool,
}

impl Machine {
    /// This machine.
    pub(crate) fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown", |(_, v)| v.trim())
            .to_owned();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let rustc = std::process::Command::new("rustc")
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            memory_gib: kib / (1024.0 * 1024.0),
            kernel,
            rustc,
            optimized: !cfg!(debug_assertions),
        }
    }
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One aim of the issue.
#[derive(Debug, Serialize)]
pub(crate) struct Aim {
    /// What is aimed at.
    pub(crate) aim: String,
    /// The measured value, in words.
    pub(crate) measured: String,
    /// Met, missed, or not measured.
    pub(crate) met: Option<bool>,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub(crate) struct Results {
    /// Full, quick or smoke.
    pub(crate) mode: Mode,
    /// The command line.
    pub(crate) command: String,
    /// The machine.
    pub(crate) machine: Machine,
    /// Seconds since the epoch at the start.
    pub(crate) started_unix: u64,
    /// How long the run took.
    pub(crate) seconds: f64,
    /// Load averages before the run.
    pub(crate) load_before: String,
    /// Load averages after the run.
    pub(crate) load_after: String,
    /// The pause before each asleep round trip, µs.
    pub(crate) asleep_pause_us: u64,
    /// Round trips.
    pub(crate) round_trip: Vec<rtt::Group>,
    /// Streaming.
    pub(crate) streaming: Vec<streaming::Cell>,
    /// Async against blocking.
    #[serde(rename = "async")]
    pub(crate) asynch: Vec<asynch::Row>,
    /// Growth with devices.
    pub(crate) scale: Vec<scale::ScaleRow>,
    /// Set-up cost.
    pub(crate) setup: Option<scale::SetupRow>,
    /// The C ABI against the Rust API.
    pub(crate) sdk: Option<sdk::Results>,
    /// The main job against its bounds.
    pub(crate) job: Vec<job::Row>,
    /// Why the main job did not run, if it did not.
    pub(crate) job_skipped: Option<String>,
    /// The aims.
    pub(crate) aims: Vec<Aim>,
}

fn ratio_of(groups: &[rtt::Group], group: &str, against: &str) -> Option<f64> {
    groups
        .iter()
        .find(|g| g.name == group)?
        .ratios
        .iter()
        .find(|r| r.against == against)
        .map(|r| r.p50)
}

/// The aims, from the measurements.
pub(crate) fn aims(r: &Results) -> Vec<Aim> {
    let mut out = Vec::new();
    let mut upper = |aim: &str, v: Option<f64>, limit: f64, what: &str| {
        out.push(Aim {
            aim: aim.to_owned(),
            measured: v.map_or_else(|| "not measured".into(), |v| format!("{v:.2}× {what}")),
            met: v.map(|v| v <= limit),
        });
    };
    let g = &r.round_trip;
    upper(
        "spinning round trip ≤ 1.5× the cache-line floor (p50)",
        ratio_of(g, "spinning", "cache-line"),
        1.5,
        "the floor",
    );
    upper(
        "spinning round trip ≤ 0.5× iceoryx2 (p50)",
        ratio_of(g, "spinning", "iceoryx2"),
        0.5,
        "iceoryx2",
    );
    upper(
        "asleep round trip ≤ 1.2× the futex ping-pong (p50)",
        ratio_of(g, "asleep", "futex"),
        1.2,
        "the futex floor",
    );
    let min_of = |it: &mut dyn Iterator<Item = f64>| {
        it.fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))))
    };
    let pipe = min_of(&mut r.streaming.iter().map(|c| c.shm_over_pipe));
    out.push(Aim {
        aim: "streaming ≥ 5× the pipe (every cell)".into(),
        measured: pipe.map_or_else(|| "not measured".into(), |v| format!("lowest {v:.1}×")),
        met: pipe.map(|v| v >= 5.0),
    });
    let bound = min_of(
        &mut r
            .streaming
            .iter()
            .filter(|c| c.transfer >= 1 << 20)
            .map(|c| c.shm_over_bound),
    );
    out.push(Aim {
        aim: "streaming ≥ 0.9× the pipeline bound at 1 MiB and up (every cell)".into(),
        measured: bound.map_or_else(|| "not measured".into(), |v| format!("lowest {v:.2}×")),
        met: bound.map(|v| v >= 0.9),
    });
    let a = min_of(&mut r.asynch.iter().map(|a| a.ratio));
    out.push(Aim {
        aim: "async ≥ 0.9× blocking (every transfer size)".into(),
        measured: a.map_or_else(|| "not measured".into(), |v| format!("lowest {v:.2}×")),
        met: a.map(|v| v >= 0.9),
    });
    // The job rows compared with one alternative: the speed ratio is 1 / (time ÷ the other's).
    for (op, aim, floor) in [
        (
            "backup-zstd",
            "zstd backup ≥ 1.0× zstd alone at the same level (one job per core)",
            1.0,
        ),
        (
            "backup-sqlvdi",
            "backup through libsqlvdi.so ≥ 0.95× through vdi-shm (4 devices, tmpfs)",
            0.95,
        ),
        (
            "backup-s3",
            "backup to S3 ≥ 0.9× object_store's plain multipart upload (4 devices, s3s-fs)",
            0.9,
        ),
        (
            "restore-s3",
            "restore from S3 ≥ 0.9× object_store's plain ranged download (4 devices, s3s-fs)",
            0.9,
        ),
    ] {
        let v = r
            .job
            .iter()
            .find(|j| j.op == op)
            .map(|j| 1.0 / j.over_bound);
        out.push(Aim {
            aim: aim.into(),
            measured: v.map_or_else(|| "not measured".into(), |v| format!("{v:.2}×")),
            met: v.map(|v| v >= floor),
        });
    }
    for op in ["backup", "restore", "verify"] {
        let worst = r
            .job
            .iter()
            .filter(|j| j.op == op)
            .map(|j| j.over_bound)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        out.push(Aim {
            aim: format!("{op} within 1.15× its bound (every device count, transfer, place)"),
            measured: worst.map_or_else(|| "not measured".into(), |v| format!("worst {v:.2}×")),
            met: worst.map(|v| v <= 1.15),
        });
    }
    for op in ["backup", "restore", "verify"] {
        let worst = r
            .job
            .iter()
            .filter(|j| j.op == op && j.over_work.is_finite())
            .map(|j| j.over_work)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        out.push(Aim {
            aim: format!(
                "{op} within 1.15× the same work alone (I/O and CPU in turn, one thread per stripe)"
            ),
            measured: worst.map_or_else(|| "not measured".into(), |v| format!("worst {v:.2}×")),
            met: worst.map(|v| v <= 1.15),
        });
    }
    let rtt = r
        .sdk
        .as_ref()
        .and_then(|s| s.round_trip.ratios.first())
        .map(|x| x.p50);
    out.push(Aim {
        aim: "C ABI round trip ≤ 1.1× the Rust API's (p50, spinning)".into(),
        measured: rtt.map_or_else(|| "not measured".into(), |v| format!("{v:.2}×")),
        met: rtt.map(|v| v <= 1.1),
    });
    let c = r
        .sdk
        .as_ref()
        .and_then(|s| min_of(&mut s.streaming.iter().map(|c| c.cabi_over_rust)));
    out.push(Aim {
        aim: "C ABI streaming ≥ 0.95× the Rust API's at 1 MiB (every cell)".into(),
        measured: c.map_or_else(|| "not measured".into(), |v| format!("lowest {v:.2}×")),
        met: c.map(|v| v >= 0.95),
    });
    out
}

fn size(bytes: u32) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

fn bytes_text(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20))
    } else {
        format!("{:.0} KiB", b as f64 / 1024.0)
    }
}

/// The Markdown report.
pub(crate) fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "# vdi-bench results ({:?} run)\n", r.mode);
    let _ = writeln!(
        s,
        "`{}` — {} ({} cores, {:.0} GiB), Linux {}, {}{}; {:.0} s; load average before {}, after {}.\n",
        r.command,
        m.cpu,
        m.cores,
        m.memory_gib,
        m.kernel,
        if m.rustc.is_empty() {
            "rustc unknown"
        } else {
            &m.rustc
        },
        if m.optimized {
            ""
        } else {
            ", DEBUG BUILD (numbers meaningless)"
        },
        r.seconds,
        r.load_before,
        r.load_after
    );
    let _ = writeln!(
        s,
        "Each comparison runs interleaved (A B …, reversed every other round); a ratio is the \
         median of the per-round ratios, so drift of the machine cancels.\n"
    );

    let _ = writeln!(s, "## Aims\n\n| aim | measured | |\n|---|---|---|");
    for a in &r.aims {
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            a.aim,
            a.measured,
            match a.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "–",
            }
        );
    }

    let _ = writeln!(s, "\n## Round trip\n");
    let _ = writeln!(
        s,
        "Server sends a command, client gets and completes it, server sees the completion \
         (the others: the same ping-pong of one 8-byte value). Two processes, pinned to \
         different cores. Asleep: the server spins through a {} µs pause before each round \
         trip, so the client is asleep in the kernel when the command comes.\n",
        r.asleep_pause_us
    );
    for g in &r.round_trip {
        let _ = writeln!(
            s,
            "### {} ({} rounds × up to {} round trips per row)\n",
            g.name, g.rounds, g.per_round
        );
        let _ = writeln!(
            s,
            "| transport | p50 | p99 | p99.9 | mean | samples | vdi-shm / this (p50) | (p99) |\n|---|---|---|---|---|---|---|---|"
        );
        for v in &g.variants {
            let ratio = g.ratios.iter().find(|x| x.against == v.key);
            match (&v.latency, &v.error) {
                (Some(l), _) => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} | {} | {} | {} |",
                        v.label,
                        fmt_ns(l.p50_ns),
                        fmt_ns(l.p99_ns),
                        fmt_ns(l.p999_ns),
                        fmt_ns(l.mean_ns),
                        l.samples,
                        ratio.map_or("–".into(), |x| format!("{:.2}", x.p50)),
                        ratio.map_or("–".into(), |x| format!("{:.2}", x.p99)),
                    );
                }
                (None, e) => {
                    let _ = writeln!(
                        s,
                        "| {} | – | – | – | – | – | – | {} |",
                        v.label,
                        e.as_deref().unwrap_or("not run")
                    );
                }
            }
        }
        let _ = writeln!(s, "\n![{} round trips](rtt-{}.svg)\n", g.name, g.name);
    }

    let _ = writeln!(s, "## Streaming\n");
    let _ = writeln!(
        s,
        "A backup: the server fills each buffer, the client reads all of it (a checksum). \
         One thread per device on each side, the server's on one core and the client's on \
         the other; 4 buffers in flight per device. Pipe and socket: the same fill and \
         checksum around `write` and `read` of each transfer (default pipe and socket buffer \
         sizes). Bound: the slower of fill alone and checksum alone on one core, with no \
         transport, arranged the same way (a thread per device, each cycling through its own \
         4 buffers).\n"
    );
    let _ = writeln!(
        s,
        "| transfer | devices | vdi-shm GB/s | pipe | socket | bound (fill / checksum) | ÷ pipe | ÷ socket | ÷ bound |\n|---|---|---|---|---|---|---|---|---|"
    );
    for c in &r.streaming {
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} ({:.1} / {:.1}) | {:.1} | {:.1} | {:.2} |",
            size(c.transfer),
            c.devices,
            c.shm_gbps,
            c.pipe_gbps,
            c.socket_gbps,
            c.bound_gbps,
            c.fill_gbps,
            c.checksum_gbps,
            c.shm_over_pipe,
            c.shm_over_socket,
            c.shm_over_bound
        );
    }
    let _ = writeln!(s, "\n![streaming](streaming.svg)\n");

    if !r.job.is_empty() || r.job_skipped.is_some() {
        let _ = writeln!(s, "## The main job\n");
        let _ = writeln!(
            s,
            "`vdi-agent backup`, `restore` and `verify` (the release binary, with the reference \
             engine it starts), each against its bound in the same run: the slower of the I/O \
             alone (the same stripe files written with an fsync at the end of each, or read, one \
             thread per file) and the CPU work alone (the engine's generation or check of the \
             same bytes, or XXH3 over them, one thread per device). Time ÷ bound: 1.00 is the \
             bound itself. Work alone: the same work without VDI, the I/O and the CPU work in \
             turn on one thread per stripe (backup: generate, XXH3 once, write, fsync; restore: \
             read, XXH3 once, the engine's check; verify: read, XXH3 once); where the cores are \
             fewer than the stages, this is what the machine allows. Peak: the agent's resident \
             memory at its highest.\n"
        );
        if let Some(why) = &r.job_skipped {
            let _ = writeln!(s, "Not run: {why}\n");
        }
        let _ = writeln!(
            s,
            "| op | place | devices | transfer | agent GB/s | I/O alone | CPU alone | bound | time ÷ bound | work alone | time ÷ work | agent peak |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for j in &r.job {
            if j.op == "backup-s3" || j.op == "restore-s3" {
                let _ = writeln!(
                    s,
                    "| {} s3:// (a local s3s-fs; the comparison: object_store alone, same bytes) | {} | {} | {} | {:.2} | {:.2} (object_store) | – | object_store | {:.2} | – | – | {} |",
                    &j.op[..j.op.len() - 3],
                    j.place,
                    j.devices,
                    size(j.transfer),
                    j.agent_gbps,
                    j.io_gbps,
                    j.over_bound,
                    bytes_text(j.agent_peak_rss)
                );
                continue;
            }
            if j.op == "backup-sqlvdi" {
                let _ = writeln!(
                    s,
                    "| backup through libsqlvdi.so (`--backend sqlvdi`; the comparison: `--backend shm`) | {} | {} | {} | {:.2} | – | {:.2} (shm) | shm | {:.2} | – | – | {} |",
                    j.place,
                    j.devices,
                    size(j.transfer),
                    j.agent_gbps,
                    j.cpu_gbps,
                    j.over_bound,
                    bytes_text(j.agent_peak_rss)
                );
                continue;
            }
            if let Some((agent, alone)) = j.ratios {
                let _ = writeln!(
                    s,
                    "| {} (stored {:.3} of the bytes; zstd alone {:.3}) | {} | {} | {} | {:.2} | – | {:.2} (zstd alone) | cpu | {:.2} | {:.2} | {:.2} | {} |",
                    j.op,
                    agent,
                    alone,
                    j.place,
                    j.devices,
                    size(j.transfer),
                    j.agent_gbps,
                    j.cpu_gbps,
                    j.over_bound,
                    j.work_gbps,
                    j.over_work,
                    bytes_text(j.agent_peak_rss)
                );
                continue;
            }
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {} |",
                j.op,
                j.place,
                j.devices,
                size(j.transfer),
                j.agent_gbps,
                j.io_gbps,
                j.cpu_gbps,
                j.bound,
                j.over_bound,
                j.work_gbps,
                j.over_work,
                bytes_text(j.agent_peak_rss)
            );
        }
        if !r.job.is_empty() {
            let _ = writeln!(s, "\n![the main job](job.svg)\n");
        }
    }

    if let Some(sdk) = &r.sdk {
        let _ = writeln!(s, "## The C ABI against the Rust API\n");
        let _ = writeln!(
            s,
            "The same server and client process; the client serves its devices through \
             vdi-shm's Rust API or through vdi-sdk's C ABI (the `extern \"C\"` functions \
             libsqlvdi.so's C++ classes forward to), interleaved.\n"
        );
        let _ = writeln!(s, "| round trip, spinning | p50 | p99 |\n|---|---|---|");
        for v in &sdk.round_trip.variants {
            let (p50, p99) = v
                .latency
                .as_ref()
                .map_or((f64::NAN, f64::NAN), |l| (l.p50_ns, l.p99_ns));
            let _ = writeln!(s, "| {} | {} | {} |", v.label, fmt_ns(p50), fmt_ns(p99));
        }
        if let Some(x) = sdk.round_trip.ratios.first() {
            let _ = writeln!(
                s,
                "\nC ABI / Rust API: {:.2}× at p50, {:.2}× at p99.\n",
                x.p50, x.p99
            );
        }
        let _ = writeln!(
            s,
            "| transfer | devices | Rust API GB/s | C ABI GB/s | C ABI ÷ Rust |\n|---|---|---|---|---|"
        );
        for c in &sdk.streaming {
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {:.2} | {:.2} |",
                size(c.transfer),
                c.devices,
                c.rust_gbps,
                c.cabi_gbps,
                c.cabi_over_rust
            );
        }
        let _ = writeln!(s);
    }

    let _ = writeln!(s, "## Async\n");
    let _ = writeln!(
        s,
        "One device; the client (vdi-async on a current-thread runtime, or the blocking API) \
         is the measured process, the engine the other.\n"
    );
    let _ = writeln!(
        s,
        "| transfer | blocking GB/s | async GB/s | async / blocking |\n|---|---|---|---|"
    );
    for a in &r.asynch {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} | {:.2} |",
            size(a.transfer),
            a.blocking_gbps,
            a.async_gbps,
            a.ratio
        );
    }
    let _ = writeln!(s, "\n![async](async.svg)\n");

    let _ = writeln!(s, "## Scale\n");
    let _ = writeln!(
        s,
        "Each device with four 1 MiB buffers. Round trip on device 0 with the others open and \
         idle; all busy: one command on every device at once, per command.\n"
    );
    let _ = writeln!(
        s,
        "| devices | control segment | buffer segments | round trip p50 | p99 | all busy, per command |\n|---|---|---|---|---|---|"
    );
    for x in &r.scale {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            x.devices,
            bytes_text(x.control_bytes),
            bytes_text(x.buffer_bytes),
            fmt_ns(x.rtt.p50_ns),
            fmt_ns(x.rtt.p99_ns),
            fmt_ns(x.ns_per_command_all_busy)
        );
    }
    let _ = writeln!(s, "\n![scale](scale.svg)\n");

    if let Some(u) = &r.setup {
        let _ = writeln!(s, "## Set-up\n");
        let _ = writeln!(
            s,
            "A set with a {} buffer area ({} MiB buffers), both sides in one process, from \
             `CreateEx` until the first Write has been to the client and back (the client maps \
             the buffer area in the background, so that round trip waits for it); populate: an \
             anonymous mapping of the same size faulted in by the kernel once.\n",
            bytes_text(u.buffer_bytes),
            SETUP_MIB
        );
        let _ = writeln!(
            s,
            "| create | open | configure | client config + open device | first Write round trip | total | populate alone | total / populate |\n|---|---|---|---|---|---|---|---|"
        );
        let _ = writeln!(
            s,
            "| {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | **{:.1} ms** | {:.1} ms | {:.2} |",
            u.create_ms,
            u.open_ms,
            u.configure_ms,
            u.client_ms,
            u.first_command_ms,
            u.total_ms,
            u.populate_ms,
            u.ratio
        );
    }
    s
}

/// The buffer size of the set-up row, in MiB, for the text.
const SETUP_MIB: u32 = 4;
