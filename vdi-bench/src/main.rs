//! `vdi-bench`: vdi-shm measured side by side with the alternatives, as ratios.
//!
//! Run it with `cargo xtask bench` (a release build with the `iceoryx2` feature; `--quick` for a
//! short run), or directly:
//!
//! ```text
//! cargo run --release -p vdi-bench [--features iceoryx2] -- [--quick | --smoke] [--out DIR]
//!     [--only rtt,streaming,async,scale,setup,sdk,job,s3]
//! ```
//!
//! What one run measures (each section's module says how):
//!
//! - **Round trip** ([`rtt`]): vdi-shm's command round trip, both sides spinning and with the
//!   client asleep, against the floors written here ([`floor`]: one cache line bounced between
//!   two processes, a futex ping-pong), iceoryx2 ([`iox`]) and a Unix socket ([`copy`]).
//! - **Streaming** ([`streaming`]): a backup through 1, 4 and 16 devices at 64 KiB, 1 MiB and
//!   4 MiB transfers, against pipes, Unix sockets and the pipeline bound.
//! - **Async** ([`asynch`]): the same streaming through vdi-async against the blocking API.
//! - **Scale** and **set-up** ([`scale`]): memory and per-command cost from 1 to 64 devices;
//!   create + configure + open of a set with a 1 GiB buffer area.
//! - **The main job** ([`job`]): `vdi-agent backup`, `restore` and `verify` through 1, 4 and 16
//!   devices, on tmpfs and on disk, each against its bound (I/O alone or the CPU work alone,
//!   whichever is slower), with the agent's peak memory.
//! - **The C ABI** ([`sdk`]): vdi-sdk's C ABI (libsqlvdi.so's) against vdi-shm's Rust API, the
//!   spinning round trip and 1 MiB streaming through 1 and 4 devices.
//!
//! Every comparison runs interleaved (A B A B ..., reversed every other round) and reports the
//! median of the per-round ratios, so the machine's drift cancels. The two processes of a pair
//! are pinned to different cores: the parent (this process) and a child, which is this binary
//! re-run as `--child ROLE ARGS...`.
//!
//! Output, in `--out` (default `target/bench`): `results.md` (tables, the aims met or missed),
//! `results.json`, and SVG plots: `rtt-spinning.svg`, `rtt-asleep.svg`, `streaming.svg`,
//! `async.svg`, `scale.svg`, `job.svg`. Nothing here asserts on timing: the numbers are for
//! people.

#![forbid(unsafe_code)]

use std::process::ExitCode;

#[cfg(target_os = "linux")]
mod asynch;
#[cfg(target_os = "linux")]
mod copy;
#[cfg(target_os = "linux")]
mod floor;
#[cfg(target_os = "linux")]
mod iox;
#[cfg(target_os = "linux")]
mod job;
#[cfg(target_os = "linux")]
mod objstore;
#[cfg(target_os = "linux")]
mod plan;
#[cfg(target_os = "linux")]
mod report;
#[cfg(target_os = "linux")]
mod rtt;
#[cfg(target_os = "linux")]
mod scale;
#[cfg(target_os = "linux")]
mod sdk;
#[cfg(target_os = "linux")]
mod shm;
#[cfg(target_os = "linux")]
mod streaming;
#[cfg(target_os = "linux")]
mod svg;
#[cfg(target_os = "linux")]
mod util;

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let result = if args.first().map(String::as_str) == Some("--child") {
            child(&args[1..])
        } else {
            parent(&args)
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vdi-bench: {e}");
                ExitCode::FAILURE
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        eprintln!("vdi-bench: Linux only (it measures vdi-shm's Linux backend)");
        ExitCode::FAILURE
    }
}

/// The sections a run can be limited to with `--only`.
#[cfg(target_os = "linux")]
const SECTIONS: [&str; 8] = [
    "rtt",
    "streaming",
    "async",
    "scale",
    "setup",
    "sdk",
    "job",
    "s3",
];

#[cfg(target_os = "linux")]
fn usage() -> String {
    format!(
        "usage: vdi-bench [--quick | --smoke] [--out DIR] [--only {}] \
         [--job-devices N,..] [--job-places tmpfs,disk] [--job-rounds N] [--job-core]",
        SECTIONS.join(",")
    )
}

/// The measuring process.
#[cfg(target_os = "linux")]
fn parent(args: &[String]) -> util::Result<()> {
    use std::{path::PathBuf, time::Instant};

    use plan::{JobNarrowing, Mode, Plan};
    use util::{Context, Error};

    let mut mode = Mode::Full;
    let mut out = PathBuf::from("target/bench");
    let mut only: Vec<String> = SECTIONS.iter().map(|s| (*s).to_owned()).collect();
    let mut job = JobNarrowing::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--job-devices" => {
                let list = it.next().with_context(usage)?;
                let parsed: Result<Vec<u32>, _> = list.split(',').map(str::parse).collect();
                job.devices = Some(parsed.map_err(|_| Error::msg(usage()))?);
            }
            "--job-places" => {
                let list = it.next().with_context(usage)?;
                let mut places = Vec::new();
                for p in list.split(',') {
                    places.push(match p {
                        "tmpfs" => "tmpfs",
                        "disk" => "disk",
                        _ => return Err(Error::msg(usage())),
                    });
                }
                job.places = Some(places);
            }
            "--job-rounds" => {
                let n = it.next().with_context(usage)?;
                job.rounds = Some(n.parse().map_err(|_| Error::msg(usage()))?);
            }
            "--job-core" => job.core_only = true,
            "--quick" => mode = Mode::Quick,
            "--smoke" => mode = Mode::Smoke,
            "--out" => out = PathBuf::from(it.next().with_context(usage)?),
            "--only" => {
                only = it
                    .next()
                    .with_context(usage)?
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                if let Some(bad) = only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
                    return Err(Error::msg(format!("unknown section `{bad}`; {}", usage())));
                }
            }
            "-h" | "--help" => {
                println!("{}", usage());
                return Ok(());
            }
            other => {
                return Err(Error::msg(format!(
                    "unknown argument `{other}`; {}",
                    usage()
                )));
            }
        }
    }
    let mut plan = Plan::new(mode);
    job.apply(&mut plan);
    let wants = |s: &str| only.iter().any(|o| o == s);
    std::fs::create_dir_all(&out).with_context(|| format!("mkdir {}", out.display()))?;
    // Before pinning: the machine's cores, not the one this thread is about to be held to.
    let machine = report::Machine::detect();
    util::pin(util::PARENT_CPU);
    let command = std::iter::once("vdi-bench".to_owned())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let load_before = report::load();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let start = Instant::now();
    eprintln!(
        "vdi-bench: {mode:?} run, load average {load_before}, iceoryx2 {}",
        if iox::BUILT {
            "built in"
        } else {
            "not built (feature `iceoryx2` off)"
        }
    );
    let mut results = report::Results {
        mode,
        command,
        machine,
        started_unix,
        seconds: 0.0,
        load_before,
        load_after: String::new(),
        asleep_pause_us: plan.asleep_pause.as_micros() as u64,
        round_trip: Vec::new(),
        streaming: Vec::new(),
        asynch: Vec::new(),
        scale: Vec::new(),
        setup: None,
        sdk: None,
        job: Vec::new(),
        job_skipped: None,
        aims: Vec::new(),
    };
    if wants("rtt") {
        eprintln!("round trips");
        results.round_trip = rtt::run(&plan)?;
    }
    if wants("streaming") {
        eprintln!("streaming");
        results.streaming = streaming::run(&plan)?;
    }
    if wants("async") {
        eprintln!("async against blocking");
        results.asynch = asynch::run(&plan)?;
    }
    if wants("scale") {
        eprintln!("scale");
        results.scale = scale::run(&plan)?;
    }
    if wants("setup") {
        eprintln!("set-up");
        results.setup = Some(scale::setup(&plan)?);
    }
    if wants("sdk") {
        eprintln!("the C ABI against the Rust API");
        results.sdk = Some(sdk::run(&plan)?);
    }
    if wants("job") {
        eprintln!("the main job: vdi-agent against its bounds");
        (results.job, results.job_skipped) = util::unpinned(|| job::run(&plan))?;
    }
    if wants("s3") {
        eprintln!("the main job to S3: vdi-agent against object_store alone");
        let rows = util::unpinned(|| objstore::rows(&plan, &job::agent_binary()))?;
        results.job.extend(rows);
    }
    results.seconds = start.elapsed().as_secs_f64();
    results.load_after = report::load();
    results.aims = report::aims(&results);

    let write = |name: &str, text: &str| -> util::Result<()> {
        let p = out.join(name);
        std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))
    };
    let json = serde_json::to_string_pretty(&results).context("results as JSON")?;
    write("results.json", &json)?;
    let md = report::markdown(&results);
    write("results.md", &md)?;
    for g in &results.round_trip {
        write(&format!("rtt-{}.svg", g.name), &svg::round_trips(g))?;
    }
    if !results.streaming.is_empty() {
        write("streaming.svg", &svg::streaming(&results.streaming))?;
    }
    if !results.asynch.is_empty() {
        write("async.svg", &svg::asynchronous(&results.asynch))?;
    }
    if !results.scale.is_empty() {
        write("scale.svg", &svg::scale(&results.scale))?;
    }
    if !results.job.is_empty() {
        write("job.svg", &svg::job(&results.job))?;
    }
    println!("{md}");
    eprintln!(
        "vdi-bench: done in {:.0} s (load average now {}); results in {}",
        results.seconds,
        results.load_after,
        out.display()
    );
    Ok(())
}

/// The second process of a pair: `--child ROLE ARGS...`.
#[cfg(target_os = "linux")]
fn child(args: &[String]) -> util::Result<()> {
    use util::Error;

    util::pin(util::CHILD_CPU);
    let role = args.first().map_or("", String::as_str);
    let rest = args.get(1..).unwrap_or(&[]);
    match role {
        "floor-cacheline" => floor::child(floor::Floor::CacheLine, rest),
        "floor-futex" => floor::child(floor::Floor::Futex, rest),
        "shm-client" => shm::client_child(shm::Client::Rust, rest),
        "cabi-client" => shm::client_child(shm::Client::CAbi, rest),
        "pipe-sink" => copy::sink_child(copy::Via::Pipe, rest),
        "socket-sink" => copy::sink_child(copy::Via::Socket, rest),
        "socket-echo" => copy::echo_child(rest),
        "iceoryx2-echo" => iox::echo_child(rest),
        "engine" => asynch::engine_child(rest),
        other => Err(Error::msg(format!("unknown child role `{other}`"))),
    }
    .map_err(|e| Error::msg(format!("{role} process: {e}")))
}
