//! What every section shares: errors with context, CPU pinning, the child processes (this binary
//! re-run with `--child ROLE ARGS...`), unique names, watchdogs for spin loops, statistics.

use std::{
    fmt,
    io::{BufRead, BufReader},
    process::{Child, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// An error: what failed, with the cause in words.
#[derive(Debug)]
pub(crate) struct Error(String);

impl Error {
    /// An error with this message.
    pub(crate) fn msg(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The result of everything here.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds what was being done to an error.
pub(crate) trait Context<T> {
    /// `what: cause`.
    fn context(self, what: &str) -> Result<T>;
    /// `what(): cause`, the message built only on failure.
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: &str) -> Result<T> {
        self.map_err(|e| Error(format!("{what}: {e}")))
    }

    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error(format!("{}: {e}", what())))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: &str) -> Result<T> {
        self.ok_or_else(|| Error(what.to_owned()))
    }

    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.ok_or_else(|| Error(what()))
    }
}

/// The core the measuring (parent) process runs on.
pub(crate) const PARENT_CPU: usize = 0;
/// The core the peer (child) process runs on.
pub(crate) const CHILD_CPU: usize = 1;

/// Runs `f` with the calling thread unpinned (every core of the machine allowed), then pins it
/// to [`PARENT_CPU`] again: for the rows that run whole programs (the agent and the engine
/// it starts, the object store's server), which must have the machine's cores as a user's
/// would, and whose bounds are measured on the same cores.
pub(crate) fn unpinned<T>(f: impl FnOnce() -> T) -> T {
    // Every possible core: the kernel keeps the ones that exist (the current mask would not
    // do, nor `available_parallelism`, which reads it).
    let mut set = rustix::thread::CpuSet::new();
    for cpu in 0..rustix::thread::CpuSet::MAX_CPU {
        set.set(cpu);
    }
    let _ = rustix::thread::sched_setaffinity(None, &set);
    let r = f();
    pin(PARENT_CPU);
    r
}

/// Pins the calling thread (and the threads and processes it starts from now on) to `cpu`, or
/// to core 0 when the machine has no such core. Best effort: a failure (a container that
/// forbids it) leaves the thread where it is. (The mask a process inherits does not limit it:
/// a child pins itself to a core its parent's mask leaves out.)
pub(crate) fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        eprintln!("vdi-bench: cannot pin to core {cpu} ({e}); using core 0: the pair shares it");
        let mut set = rustix::thread::CpuSet::new();
        set.set(0);
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }
}

/// A name no other run or pair uses: `vdi-bench-<pid>-<tag>-<n>`.
pub(crate) fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "vdi-bench-{}-{tag}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A peer process: this binary re-run as `--child ROLE ARGS...`, pinned to [`CHILD_CPU`].
#[derive(Debug)]
pub(crate) struct Peer {
    role: String,
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Peer {
    /// Starts `role` with `args`; `stdin` becomes its standard input (a memfd, for the floors).
    pub(crate) fn spawn(role: &str, args: &[String], stdin: Option<Stdio>) -> Result<Self> {
        let exe = std::env::current_exe().context("where is this binary")?;
        let mut cmd = Command::new(exe);
        cmd.arg("--child")
            .arg(role)
            .args(args)
            .stdin(stdin.unwrap_or_else(Stdio::null))
            .stdout(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start the `{role}` process"))?;
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(Self {
            role: role.to_owned(),
            child,
            stdout,
        })
    }

    /// Waits for the next line the child prints (its "ready" or "done" signal).
    pub(crate) fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        let out = self
            .stdout
            .as_mut()
            .context("child output already closed")?;
        let n = out
            .read_line(&mut line)
            .with_context(|| format!("reading from the `{}` process", self.role))?;
        if n == 0 {
            return Err(Error(format!(
                "the `{}` process ended without answering",
                self.role
            )));
        }
        Ok(line.trim().to_owned())
    }

    /// Whether the child has exited (with an error if it failed).
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error(format!(
                "the `{}` process exited early ({status})",
                self.role
            ))),
            Err(e) => Err(Error(format!("waiting for `{}`: {e}", self.role))),
        }
    }

    /// Waits for the child to exit; an error if it failed.
    pub(crate) fn finish(mut self) -> Result<()> {
        drop(self.stdout.take());
        let status = self
            .child
            .wait()
            .with_context(|| format!("waiting for the `{}` process", self.role))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error(format!(
                "the `{}` process failed ({status})",
                self.role
            )))
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // A peer left running after an error would spin on its core for ever: end it.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Prints a line to the parent (the child's side of [`Peer::read_line`]).
pub(crate) fn tell_parent(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Bounds a spin loop: after `limit`, [`Watchdog::check`] fails instead of spinning for ever
/// on a peer that died.
#[derive(Debug)]
pub(crate) struct Watchdog {
    start: Instant,
    limit: Duration,
    what: &'static str,
    count: u32,
}

impl Watchdog {
    /// A watchdog for one spin loop, `what` naming it in the error.
    pub(crate) fn new(what: &'static str) -> Self {
        Self {
            start: Instant::now(),
            limit: Duration::from_secs(60),
            what,
            count: 0,
        }
    }

    /// Called on every iteration of a spin loop: true once every 64Ki calls, when the caller
    /// should [`Watchdog::check`] (and look at its peer).
    #[inline]
    pub(crate) fn tick(&mut self) -> bool {
        self.count = self.count.wrapping_add(1);
        self.count & 0xffff == 0
    }

    /// An error once the limit has passed.
    pub(crate) fn check(&self) -> Result<()> {
        if self.start.elapsed() > self.limit {
            return Err(Error(format!(
                "{}: no answer for {} s",
                self.what,
                self.limit.as_secs()
            )));
        }
        Ok(())
    }
}

/// How many round trips to time, and for how long at most.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Count {
    /// Untimed round trips first.
    pub(crate) warmup: usize,
    /// Timed round trips, at most.
    pub(crate) n: usize,
    /// Fewer if they take longer than this (a loaded machine): the run stays bounded.
    pub(crate) limit: Duration,
    /// Spun through before each round trip (the asleep rows).
    pub(crate) pause: Option<Duration>,
}

impl Count {
    /// Whether round trip `i` (0-based; the first started at `start`) counts: past the
    /// warm-up, or past a quarter of the time limit (a loaded machine).
    pub(crate) fn timed(&self, i: usize, start: Instant) -> bool {
        i >= self.warmup || start.elapsed() > self.limit / 4
    }

    /// Whether to stop, with `samples` timed so far: all of them, or some and out of time.
    pub(crate) fn done(&self, samples: usize, start: Instant) -> bool {
        samples >= self.n || (samples > 0 && start.elapsed() > self.limit)
    }

    /// Spins through the pause, if any.
    #[inline]
    pub(crate) fn pause(&self) {
        if let Some(p) = self.pause {
            spin_for(p);
        }
    }
}

/// Spins (without sleeping, so the core stays awake) for `d`.
pub(crate) fn spin_for(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// The median of the finite values of `v` (the mean of the middle two for an even count); NaN
/// for none.
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

/// Percentiles of a set of latency samples, in nanoseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Latency {
    /// How many samples.
    pub(crate) samples: usize,
    /// Median.
    pub(crate) p50_ns: f64,
    /// 99th percentile.
    pub(crate) p99_ns: f64,
    /// 99.9th percentile.
    pub(crate) p999_ns: f64,
    /// Mean.
    pub(crate) mean_ns: f64,
}

impl Latency {
    /// The percentiles of `samples` (nanoseconds).
    pub(crate) fn of(samples: &[u64]) -> Self {
        let mut s = samples.to_vec();
        s.sort_unstable();
        let pct = |p: f64| -> f64 {
            if s.is_empty() {
                return f64::NAN;
            }
            s[((s.len() as f64 * p) as usize).min(s.len() - 1)] as f64
        };
        let mean = if s.is_empty() {
            f64::NAN
        } else {
            s.iter().map(|&x| x as f64).sum::<f64>() / s.len() as f64
        };
        Self {
            samples: s.len(),
            p50_ns: pct(0.50),
            p99_ns: pct(0.99),
            p999_ns: pct(0.999),
            mean_ns: mean,
        }
    }
}

/// Nanoseconds since `t`, as an integer sample.
#[inline]
pub(crate) fn ns_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Writes a running counter into every 8-byte word (about memset speed): the engine's "fill".
#[inline(never)]
pub(crate) fn fill(buf: &mut [u8], mut x: u64) -> u64 {
    for w in buf.chunks_exact_mut(8) {
        w.copy_from_slice(&x.to_le_bytes());
        x = x.wrapping_add(1);
    }
    x
}

/// Sums every 8-byte word, so every byte is read: the backup client's "checksum".
#[inline(never)]
pub(crate) fn checksum(buf: &[u8]) -> u64 {
    buf.chunks_exact(8).fold(0u64, |a, w| {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        a.wrapping_add(u64::from_le_bytes(b))
    })
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the machine, so a child's
/// timestamp and the parent's can be compared. (Each thread stamps its own start and end: a
/// coordinating thread may be scheduled late on a busy core, and its clock reading with it.)
pub(crate) fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// The span from the earliest of `starts` to `end`, as a duration (zero if none).
pub(crate) fn span(starts: &[u64], end: u64) -> Duration {
    let start = starts.iter().copied().min().unwrap_or(end);
    Duration::from_nanos(end.saturating_sub(start))
}

/// Bytes per second as GB/s.
pub(crate) fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// The argument at `i` of a child's argument list, parsed.
pub(crate) fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T> {
    args.get(i)
        .with_context(|| format!("missing argument {i} ({what})"))?
        .parse()
        .map_err(|_| Error(format!("argument {i} ({what}) is not valid: {:?}", args[i])))
}
