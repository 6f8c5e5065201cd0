//! The main job: `vdi-agent backup`, `restore` and `verify` (the release binary beside this
//! one, with the reference engine it starts), each against its bound measured in the same run,
//! interleaved (A B …, reversed every other round):
//!
//! - **backup** through N devices: the bound is the slower of writing the same stripe files
//!   with no VDI (one thread per file, transfer-sized writes from a filled buffer, `fsync` at
//!   the end of each file, as the agent hardens each stripe at the final Flush or Complete) and
//!   the engine's generation of the same bytes alone (`Database::fill`, one thread per device);
//! - **restore**: the slower of reading the stripe files (one thread each, `cat`-like) and the
//!   engine's check of the same bytes alone (`Database::mismatch`);
//! - **verify**: the slower of reading the files and XXH3 over the same bytes in memory.
//!
//! - **backup with zstd** (level 1, 4 devices, tmpfs): against zstd alone at the same level
//!   on the same bytes, one job per core (as `zstd -T0`), with both compression ratios.
//! - **backup and restore to S3** (4 devices, a local s3s-fs on tmpfs): against object_store
//!   alone moving the same bytes to and from the same server ([`crate::objstore`]).
//! - **backup through SQL Server's library** (`--backend sqlvdi`: vdi-linux over vdi-sdk's
//!   `libsqlvdi.so`, 4 devices, tmpfs): against the same backup through `--backend shm`.
//!
//! Each runs on tmpfs (`/dev/shm`) and on the disk the default demo uses (the temporary
//! directory). The agent's peak memory (`VmHWM`, sampled from `/proc` while it runs) is
//! reported for each row: it must not grow with the backup's size.

use std::{
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;
use vdi_engine::database::Database;

use crate::{
    plan::Plan,
    util::{self, Context, Error, Result},
};

/// One row: an operation at one device count, transfer size and place.
#[derive(Debug, Serialize)]
pub(crate) struct Row {
    /// `backup`, `restore` or `verify`.
    pub(crate) op: &'static str,
    /// `tmpfs` or `disk`.
    pub(crate) place: &'static str,
    /// Devices (stripes).
    pub(crate) devices: u32,
    /// MAXTRANSFERSIZE.
    pub(crate) transfer: u32,
    /// The stripes' bytes.
    pub(crate) bytes: u64,
    /// Interleaved rounds.
    pub(crate) rounds: usize,
    /// The agent, median GB/s.
    pub(crate) agent_gbps: f64,
    /// The I/O alone (write with fsync, or read), median GB/s.
    pub(crate) io_gbps: f64,
    /// The CPU work alone (the engine's generation or check, or XXH3), median GB/s.
    pub(crate) cpu_gbps: f64,
    /// Median over rounds of the agent's time / the bound's (the slower of the two alone).
    pub(crate) over_bound: f64,
    /// The same work alone, I/O and CPU in turn on one thread per stripe (no VDI, no second
    /// process), median GB/s; NaN where the row has none.
    pub(crate) work_gbps: f64,
    /// Median over rounds of the agent's time / that work's.
    pub(crate) over_work: f64,
    /// Which of the two is the bound: `io` or `cpu`.
    pub(crate) bound: &'static str,
    /// The agent's peak resident memory, bytes (the largest over the rounds).
    pub(crate) agent_peak_rss: u64,
    /// zstd rows: the agent's stored bytes ÷ the database's, and zstd alone's.
    pub(crate) ratios: Option<(f64, f64)>,
}

/// Every row of the plan; an empty list with the reason when the agent binary is missing.
pub(crate) fn run(plan: &Plan) -> Result<(Vec<Row>, Option<String>)> {
    let agent = agent_binary();
    if !agent.is_file() {
        let why = format!(
            "{} is not built (`cargo build --release -p vdi-agent`; `cargo xtask bench` does it)",
            agent.display()
        );
        eprintln!("  main job skipped: {why}");
        return Ok((Vec::new(), Some(why)));
    }
    let mut rows = Vec::new();
    for &place in &plan.job_places {
        let parent = if place == "tmpfs" {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        for &transfer in &plan.job_transfers {
            for &devices in &plan.job_devices {
                let dir = parent.join(util::unique_name("job"));
                let r = cell(plan, &agent, place, &dir, devices, transfer);
                let _ = fs::remove_dir_all(&dir);
                rows.extend(r?);
            }
        }
    }
    if !plan.job_extras {
        return Ok((rows, None));
    }
    let dir = PathBuf::from("/dev/shm").join(util::unique_name("jobz"));
    let r = zstd_cell(plan, &agent, &dir);
    let _ = fs::remove_dir_all(&dir);
    rows.push(r?);
    let lib = agent.with_file_name("libsqlvdi.so");
    if lib.is_file() {
        let dir = PathBuf::from("/dev/shm").join(util::unique_name("jobb"));
        let r = backend_cell(plan, &agent, &lib, &dir);
        let _ = fs::remove_dir_all(&dir);
        rows.push(r?);
    } else {
        eprintln!(
            "  main job: the backend row skipped: {} is not built (`cargo build --release -p vdi-sdk`)",
            lib.display()
        );
    }
    Ok((rows, None))
}

/// The devices of the backend row.
const BACKEND_DEVICES: u32 = 4;

/// A backup through `--backend sqlvdi` (vdi-linux over vdi-sdk's `libsqlvdi.so`, loaded with
/// `dlopen`) against the same backup through `--backend shm` (vdi-shm called directly), 4
/// devices to tmpfs, interleaved: what the binding to SQL Server's library costs the agent.
/// In the row, "CPU alone" holds the shm backend's rate and the ratio is sqlvdi's time ÷ shm's.
fn backend_cell(plan: &Plan, agent: &Path, lib: &Path, dir: &Path) -> Result<Row> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let size = plan.job_bytes;
    let transfer = plan.job_transfers.first().copied().unwrap_or(1 << 20);
    let backup_dir = dir.join("backup");
    let common = [
        format!("--devices={BACKEND_DEVICES}"),
        format!("--size={size}"),
        format!("--max-transfer-size={transfer}"),
        format!("--buffer-count={}", BACKEND_DEVICES * 4),
    ];
    let mut sqlvdi = Samples::default();
    let mut shm = Samples::default();
    let mut bytes = 0;
    for round in 0..plan.job_rounds {
        let mut one = |s: &mut Samples, backend: &[String]| -> Result<()> {
            let _ = fs::remove_dir_all(&backup_dir);
            let flags: Vec<String> = common.iter().chain(backend).cloned().collect();
            s.run(agent, "backup", &backup_dir, &flags)?;
            bytes = stripe_sizes(&backup_dir)?.iter().sum();
            Ok(())
        };
        let via_lib = [
            "--backend=sqlvdi".to_owned(),
            format!("--sqlvdi-lib={}", lib.display()),
        ];
        let via_shm = ["--backend=shm".to_owned()];
        if round % 2 == 0 {
            one(&mut sqlvdi, &via_lib)?;
            one(&mut shm, &via_shm)?;
        } else {
            one(&mut shm, &via_shm)?;
            one(&mut sqlvdi, &via_lib)?;
        }
        eprintln!(
            "  main job tmpfs backup {BACKEND_DEVICES} devices, round {}/{}: --backend sqlvdi {:.2}s, --backend shm {:.2}s",
            round + 1,
            plan.job_rounds,
            sqlvdi.agent[round].as_secs_f64(),
            shm.agent[round].as_secs_f64(),
        );
    }
    sqlvdi.cpu = shm.agent;
    sqlvdi.io = vec![Duration::ZERO; plan.job_rounds];
    sqlvdi.rss = sqlvdi.rss.max(shm.rss);
    let mut row = sqlvdi.row(
        "backup-sqlvdi",
        "tmpfs",
        BACKEND_DEVICES,
        transfer,
        bytes,
        plan.job_rounds,
    );
    row.io_gbps = f64::NAN;
    row.bound = "shm";
    Ok(row)
}

/// The zstd level of the compressed row (the agent's `--zstd` default and zstd's fastest).
const ZSTD_LEVEL: i32 = 1;
/// The devices of the compressed row.
const ZSTD_DEVICES: u32 = 4;

/// A backup with `--zstd 1` through 4 devices on tmpfs against zstd alone at the same level
/// on the same bytes (the engine's database, generated in memory beforehand), one job per
/// core over 4 MiB chunks, as `zstd -T0` splits its input.
fn zstd_cell(plan: &Plan, agent: &Path, dir: &Path) -> Result<Row> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let size = plan.job_bytes;
    let transfer = plan.job_transfers.first().copied().unwrap_or(1 << 20);
    let backup_dir = dir.join("backup");
    let mut data = vec![0u8; usize::try_from(size).map_err(|_| Error::msg("size"))?];
    Database::new(1, size).fill(0, &mut data);
    let mut b = Samples::default();
    let (mut stored, mut alone_stored) = (0u64, 0u64);
    for round in 0..plan.job_rounds {
        let _ = fs::remove_dir_all(&backup_dir);
        let agent_run = |b: &mut Samples| -> Result<u64> {
            b.run(
                agent,
                "backup",
                &backup_dir,
                &[
                    format!("--devices={ZSTD_DEVICES}"),
                    format!("--zstd={ZSTD_LEVEL}"),
                    format!("--size={size}"),
                    format!("--max-transfer-size={transfer}"),
                ],
            )?;
            Ok(stripe_sizes(&backup_dir)?.iter().sum())
        };
        if round % 2 == 0 {
            stored = agent_run(&mut b)?;
        }
        let (t, n) = zstd_alone(&data, ZSTD_LEVEL)?;
        b.cpu.push(t);
        let sizes = vec![size / u64::from(ZSTD_DEVICES); ZSTD_DEVICES as usize];
        b.work.push(backup_work(
            &dir.join("work"),
            &sizes,
            size,
            transfer,
            Some(ZSTD_LEVEL),
        )?);
        alone_stored = n;
        if round % 2 == 1 {
            stored = agent_run(&mut b)?;
        }
        // No I/O bound here: the comparison is with zstd alone.
        b.io.push(Duration::ZERO);
        eprintln!(
            "  main job tmpfs zstd {ZSTD_DEVICES} devices, round {}/{}: backup {:.2}s, zstd alone {:.2}s, work {:.2}s; stored {} MiB, zstd alone {} MiB",
            round + 1,
            plan.job_rounds,
            b.agent[round].as_secs_f64(),
            t.as_secs_f64(),
            b.work[round].as_secs_f64(),
            stored >> 20,
            n >> 20
        );
    }
    let mut row = b.row(
        "backup-zstd",
        "tmpfs",
        ZSTD_DEVICES,
        transfer,
        size,
        plan.job_rounds,
    );
    row.io_gbps = f64::NAN;
    row.bound = "cpu";
    row.ratios = Some((
        stored as f64 / size as f64,
        alone_stored as f64 / size as f64,
    ));
    Ok(row)
}

/// zstd at `level` over `data`, one thread per core each compressing 4 MiB chunks in turn:
/// the time and the compressed bytes.
fn zstd_alone(data: &[u8], level: i32) -> Result<(Duration, u64)> {
    const CHUNK: usize = 4 << 20;
    let threads = thread::available_parallelism().map_or(1, |n| n.get());
    let chunks: Vec<&[u8]> = data.chunks(CHUNK).collect();
    let t = Instant::now();
    let results: Vec<Result<u64>> = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let chunks = &chunks;
                s.spawn(move || -> Result<u64> {
                    let mut c = zstd::bulk::Compressor::new(level).context("zstd compressor")?;
                    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(CHUNK));
                    let mut n = 0u64;
                    for chunk in chunks.iter().skip(k).step_by(threads) {
                        out.clear();
                        c.compress_to_buffer(chunk, &mut out)
                            .context("zstd compress")?;
                        n += out.len() as u64;
                    }
                    Ok(n)
                })
            })
            .collect();
        join_all(handles)
    });
    let elapsed = t.elapsed();
    let mut total = 0;
    for r in results {
        total += r?;
    }
    Ok((elapsed, total))
}

/// `vdi-agent` beside this binary (both in `target/release`, or `target/debug` for tests).
pub(crate) fn agent_binary() -> PathBuf {
    let me = std::env::current_exe().unwrap_or_default();
    let dir = me.parent().map(Path::to_path_buf).unwrap_or_default();
    // Integration tests run from target/<profile>/deps.
    let dir = if dir.ends_with("deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    };
    dir.join("vdi-agent")
}

/// Backup, restore and verify at one device count, transfer size and place.
fn cell(
    plan: &Plan,
    agent: &Path,
    place: &'static str,
    dir: &Path,
    devices: u32,
    transfer: u32,
) -> Result<Vec<Row>> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let size = plan.job_bytes;
    let backup_dir = dir.join("backup");
    let plain = dir.join("plain");
    let mut b = Samples::default();
    let mut r = Samples::default();
    let mut v = Samples::default();
    let mut stripes: Vec<u64> = Vec::new();
    for round in 0..plan.job_rounds {
        let _ = fs::remove_dir_all(&backup_dir);
        let _ = fs::remove_dir_all(&plain);
        let agent_first = round % 2 == 0;
        // Backup and its bound.
        let backup = |b: &mut Samples| -> Result<Vec<u64>> {
            b.run(
                agent,
                "backup",
                &backup_dir,
                &[
                    format!("--devices={devices}"),
                    format!("--size={size}"),
                    format!("--max-transfer-size={transfer}"),
                    format!("--buffer-count={}", devices * 4),
                ],
            )?;
            stripe_sizes(&backup_dir)
        };
        // Round 0 has the agent first, so the bound knows the stripes' sizes.
        if agent_first {
            stripes = backup(&mut b)?;
        }
        b.io.push(write_alone(&plain, &stripes, transfer)?);
        b.cpu.push(generate_alone(devices, size, transfer));
        b.work
            .push(backup_work(&plain, &stripes, size, transfer, None)?);
        if !agent_first {
            stripes = backup(&mut b)?;
        }
        // Restore and its bound.
        let restore = |r: &mut Samples| r.run(agent, "restore", &backup_dir, &[]);
        let files = stripe_files(&backup_dir)?;
        if agent_first {
            restore(&mut r)?;
        }
        let read = read_alone(&files)?;
        r.io.push(read);
        r.cpu.push(check_alone(devices, size, transfer));
        r.work.push(restore_work(&files, size, transfer)?);
        if !agent_first {
            restore(&mut r)?;
        }
        // Verify and its bound.
        let verify = |v: &mut Samples| v.run(agent, "verify", &backup_dir, &[]);
        if agent_first {
            verify(&mut v)?;
        }
        v.io.push(read_alone(&files)?);
        v.cpu.push(xxh3_alone(&stripes, transfer));
        v.work.push(verify_work(&files, transfer)?);
        if !agent_first {
            verify(&mut v)?;
        }
        let bytes: u64 = stripes.iter().sum();
        eprintln!(
            "  main job {place} {devices:>2} devices x {:>4} KiB, round {}/{}: backup {:.2}s (bound {:.2}s, work {:.2}s)  restore {:.2}s ({:.2}s, {:.2}s)  verify {:.2}s ({:.2}s, {:.2}s), {} MiB",
            transfer >> 10,
            round + 1,
            plan.job_rounds,
            b.agent[round].as_secs_f64(),
            b.bound(round).as_secs_f64(),
            b.work[round].as_secs_f64(),
            r.agent[round].as_secs_f64(),
            r.bound(round).as_secs_f64(),
            r.work[round].as_secs_f64(),
            v.agent[round].as_secs_f64(),
            v.bound(round).as_secs_f64(),
            v.work[round].as_secs_f64(),
            bytes >> 20
        );
    }
    let bytes: u64 = stripes.iter().sum();
    Ok(vec![
        b.row("backup", place, devices, transfer, bytes, plan.job_rounds),
        r.row("restore", place, devices, transfer, bytes, plan.job_rounds),
        v.row("verify", place, devices, transfer, bytes, plan.job_rounds),
    ])
}

/// One operation's timings over the rounds.
#[derive(Default)]
pub(crate) struct Samples {
    pub(crate) agent: Vec<Duration>,
    pub(crate) io: Vec<Duration>,
    pub(crate) cpu: Vec<Duration>,
    /// The same work as the agent's without VDI, I/O and CPU in turn on one thread per
    /// stripe; empty where the row has none.
    pub(crate) work: Vec<Duration>,
    pub(crate) rss: u64,
}

impl Samples {
    /// Runs `vdi-agent <op> <dir> <flags> --no-progress` and records its time and peak memory.
    fn run(&mut self, agent: &Path, op: &str, dir: &Path, flags: &[String]) -> Result<()> {
        self.run_env(agent, op, dir, flags, &[])
    }

    /// [`run`](Self::run) with `env` set for the agent.
    pub(crate) fn run_env(
        &mut self,
        agent: &Path,
        op: &str,
        dir: &Path,
        flags: &[String],
        env: &[(&str, &str)],
    ) -> Result<()> {
        let mut args: Vec<&std::ffi::OsStr> = vec![op.as_ref(), dir.as_os_str()];
        args.extend(flags.iter().map(std::ffi::OsStr::new));
        args.push("--no-progress".as_ref());
        let (t, rss) = run_agent(agent, &args, env)?;
        self.agent.push(t);
        self.rss = self.rss.max(rss);
        Ok(())
    }

    fn bound(&self, round: usize) -> Duration {
        self.io[round].max(self.cpu[round])
    }

    pub(crate) fn row(
        &self,
        op: &'static str,
        place: &'static str,
        devices: u32,
        transfer: u32,
        bytes: u64,
        rounds: usize,
    ) -> Row {
        let rate = |d: &[Duration]| {
            let v: Vec<f64> = d.iter().map(|&d| util::gbps(bytes, d)).collect();
            util::median(&v)
        };
        let over: Vec<f64> = (0..self.agent.len())
            .map(|i| self.agent[i].as_secs_f64() / self.bound(i).as_secs_f64())
            .collect();
        let (io, cpu) = (rate(&self.io), rate(&self.cpu));
        let (work_gbps, over_work) = if self.work.len() == self.agent.len() {
            let over: Vec<f64> = (0..self.agent.len())
                .map(|i| self.agent[i].as_secs_f64() / self.work[i].as_secs_f64())
                .collect();
            (rate(&self.work), util::median(&over))
        } else {
            (f64::NAN, f64::NAN)
        };
        Row {
            op,
            place,
            devices,
            transfer,
            bytes,
            rounds,
            agent_gbps: rate(&self.agent),
            io_gbps: io,
            cpu_gbps: cpu,
            over_bound: util::median(&over),
            work_gbps,
            over_work,
            bound: if io <= cpu { "io" } else { "cpu" },
            agent_peak_rss: self.rss,
            ratios: None,
        }
    }
}

/// Runs the agent to its end: the time it took and its peak resident memory.
fn run_agent(
    agent: &Path,
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
) -> Result<(Duration, u64)> {
    let t = Instant::now();
    let mut child = Command::new(agent)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {}", agent.display()))?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let limit = Duration::from_secs(600);
    let status = loop {
        if let Some(s) = child.try_wait().context("wait for the agent")? {
            break s;
        }
        if let Some(hwm) = fs::read_to_string(&status_path)
            .ok()
            .and_then(|s| vm_hwm(&s))
        {
            peak = peak.max(hwm);
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::msg(format!(
                "vdi-agent {args:?} still running after {}s",
                limit.as_secs()
            )));
        }
        thread::sleep(Duration::from_millis(5));
    };
    let elapsed = t.elapsed();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        return Err(Error::msg(format!("vdi-agent {args:?}: {status}\n{err}")));
    }
    Ok((elapsed, peak))
}

/// `VmHWM` of a `/proc/<pid>/status`, bytes.
fn vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The stripe files of a backup directory, in name order.
fn stripe_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "vdis"))
        .collect();
    files.sort();
    Ok(files)
}

fn stripe_sizes(dir: &Path) -> Result<Vec<u64>> {
    stripe_files(dir)?
        .iter()
        .map(|p| {
            fs::metadata(p)
                .map(|m| m.len())
                .with_context(|| format!("stat {}", p.display()))
        })
        .collect()
}

/// Writes one file per stripe, of the stripe's size, in `transfer`-sized writes, each file
/// fsynced at its end; one thread per file. The time of the slowest.
fn write_alone(dir: &Path, sizes: &[u64], transfer: u32) -> Result<Duration> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let chunk = {
        let mut v = vec![0u8; transfer as usize];
        util::fill(&mut v, 7);
        v
    };
    let t = Instant::now();
    let results: Vec<Result<()>> = thread::scope(|s| {
        let handles: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let (chunk, path) = (&chunk, dir.join(format!("plain-{i:02}")));
                s.spawn(move || -> Result<()> {
                    let mut f = fs::File::create(&path)
                        .with_context(|| format!("create {}", path.display()))?;
                    let mut left = size;
                    while left > 0 {
                        let n = left.min(chunk.len() as u64) as usize;
                        f.write_all(&chunk[..n]).context("write")?;
                        left -= n as u64;
                    }
                    f.sync_all().context("fsync")
                })
            })
            .collect();
        join_all(handles)
    });
    let elapsed = t.elapsed();
    results.into_iter().collect::<Result<()>>()?;
    let _ = fs::remove_dir_all(dir);
    Ok(elapsed)
}

/// Reads every file to its end, one thread each (1 MiB reads). The time of the slowest.
fn read_alone(files: &[PathBuf]) -> Result<Duration> {
    read_files(files, 1 << 20, |b| u64::from(b[b.len() - 1]))
}

/// Reads every file to its end in `chunk`-sized reads, one thread each, calling `per_read` on
/// each read's bytes. The time of the slowest.
fn read_files(
    files: &[PathBuf],
    chunk: usize,
    per_read: impl Fn(&[u8]) -> u64 + Sync,
) -> Result<Duration> {
    let t = Instant::now();
    let results: Vec<Result<u64>> = thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .map(|p| {
                let per_read = &per_read;
                s.spawn(move || -> Result<u64> {
                    let mut f =
                        fs::File::open(p).with_context(|| format!("open {}", p.display()))?;
                    let mut buf = vec![0u8; chunk];
                    let mut x = 0u64;
                    loop {
                        let n = f.read(&mut buf).context("read")?;
                        if n == 0 {
                            return Ok(x);
                        }
                        x = x.wrapping_add(per_read(&buf[..n]));
                    }
                })
            })
            .collect();
        join_all(handles)
    });
    let elapsed = t.elapsed();
    for r in results {
        std::hint::black_box(r?);
    }
    Ok(elapsed)
}

/// The engine's generation of a `size`-byte database through `devices` devices alone: one
/// thread per device filling `transfer`-sized buffers of its share.
fn generate_alone(devices: u32, size: u64, transfer: u32) -> Duration {
    per_device(devices, size, transfer, |db, offset, buf| {
        db.fill(offset, buf);
        u64::from(buf[0])
    })
}

/// The engine's check of the same bytes alone (the buffers hold the right bytes).
fn check_alone(devices: u32, size: u64, transfer: u32) -> Duration {
    per_device(devices, size, transfer, |db, offset, buf| {
        u64::from(db.mismatch(offset, buf).is_none())
    })
}

/// `work` over each device's share of the database, one thread per device, each buffer
/// first filled with the database's bytes (outside the timing only for the check: the fill is
/// the generation's own work, done again there).
fn per_device(
    devices: u32,
    size: u64,
    transfer: u32,
    work: impl Fn(&Database, u64, &mut [u8]) -> u64 + Sync,
) -> Duration {
    let db = Database::new(1, size);
    let share = size / u64::from(devices);
    let mut bufs: Vec<Vec<u8>> = (0..devices)
        .map(|d| {
            let mut b = vec![0u8; transfer as usize];
            db.fill(u64::from(d) * share, &mut b);
            b
        })
        .collect();
    let t = Instant::now();
    thread::scope(|s| {
        for (d, buf) in bufs.iter_mut().enumerate() {
            let (db, work) = (&db, &work);
            s.spawn(move || {
                let start = d as u64 * share;
                let mut x = 0u64;
                let mut off = 0u64;
                while off < share {
                    // Each buffer checks against its own offset, so the data stays right.
                    x = x.wrapping_add(work(db, start, buf));
                    off += u64::from(transfer);
                }
                std::hint::black_box(x);
            });
        }
    });
    t.elapsed()
}

/// XXH3 over the stripes' bytes in memory, one thread per stripe, `transfer`-sized records.
fn xxh3_alone(sizes: &[u64], transfer: u32) -> Duration {
    let mut chunk = vec![0u8; transfer as usize];
    util::fill(&mut chunk, 3);
    let t = Instant::now();
    thread::scope(|s| {
        for &size in sizes {
            let chunk = &chunk;
            s.spawn(move || {
                let mut left = size;
                let mut x = 0u64;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    x ^= xxhash_rust::xxh3::xxh3_64(&chunk[..n]);
                    left -= n as u64;
                }
                std::hint::black_box(x);
            });
        }
    });
    t.elapsed()
}

/// The backup's work without VDI: one thread per stripe generates its share of the database
/// into a `transfer`-sized buffer (the engine's part), compresses it at `zstd` if given (one
/// frame per buffer, as the agent's records), hashes what it stores once (XXH3, the record's
/// checksum) and writes it, `fsync` at the end of the file. The time of the slowest.
fn backup_work(
    dir: &Path,
    sizes: &[u64],
    size: u64,
    transfer: u32,
    zstd: Option<i32>,
) -> Result<Duration> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let db = Database::new(1, size);
    let stripes = sizes.len() as u64;
    let t = Instant::now();
    let results: Vec<Result<()>> = thread::scope(|s| {
        let handles: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &file_size)| {
                let (db, path) = (&db, dir.join(format!("work-{i:02}")));
                s.spawn(move || -> Result<()> {
                    let mut buf = vec![0u8; transfer as usize];
                    let mut compressor = match zstd {
                        Some(level) => {
                            Some(zstd::bulk::Compressor::new(level).context("zstd compressor")?)
                        }
                        None => None,
                    };
                    let mut packed = Vec::with_capacity(zstd::zstd_safe::compress_bound(buf.len()));
                    let mut f = fs::File::create(&path)
                        .with_context(|| format!("create {}", path.display()))?;
                    let mut offset = i as u64 * (size / stripes.max(1));
                    let mut left = file_size;
                    let mut x = 0u64;
                    while left > 0 {
                        let n = left.min(buf.len() as u64) as usize;
                        db.fill(offset, &mut buf[..n]);
                        let out = match compressor.as_mut() {
                            Some(c) => {
                                packed.clear();
                                c.compress_to_buffer(&buf[..n], &mut packed)
                                    .context("zstd compress")?;
                                &packed[..]
                            }
                            None => &buf[..n],
                        };
                        x ^= xxhash_rust::xxh3::xxh3_64(out);
                        f.write_all(out).context("write")?;
                        offset += n as u64;
                        left -= n as u64;
                    }
                    std::hint::black_box(x);
                    f.sync_all().context("fsync")
                })
            })
            .collect();
        join_all(handles)
    });
    let elapsed = t.elapsed();
    results.into_iter().collect::<Result<()>>()?;
    let _ = fs::remove_dir_all(dir);
    Ok(elapsed)
}

/// The restore's work without VDI: one thread per stripe file reads it in `transfer`-sized
/// reads, hashes each once (XXH3, the record's checksum) and runs the engine's check over a
/// buffer of the database's bytes (the file's own bytes are records, which the check would
/// stop at). The time of the slowest.
fn restore_work(files: &[PathBuf], size: u64, transfer: u32) -> Result<Duration> {
    let db = Database::new(1, size);
    let mut right = vec![0u8; transfer as usize];
    db.fill(0, &mut right);
    read_files(files, transfer as usize, |b| {
        xxhash_rust::xxh3::xxh3_64(b)
            .wrapping_add(u64::from(db.mismatch(0, &right[..b.len()]).is_none()))
    })
}

/// The verify's work: one thread per stripe file reads it in `transfer`-sized reads and
/// hashes each once. The time of the slowest.
fn verify_work(files: &[PathBuf], transfer: u32) -> Result<Duration> {
    read_files(files, transfer as usize, xxhash_rust::xxh3::xxh3_64)
}

/// Joins scoped threads, a panic as an error.
fn join_all<T>(handles: Vec<thread::ScopedJoinHandle<'_, Result<T>>>) -> Vec<Result<T>> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(Error::msg("a worker thread panicked")))
        })
        .collect()
}
