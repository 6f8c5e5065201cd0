//! Project tooling, run as `cargo xtask <command>` (the cargo-xtask pattern).
//!
//! - `ci`: everything CI checks, in order: tidy, fmt, clippy, tests, docs, then the loom models,
//!   Miri, 20 seconds of fuzzing, the portable Unix backend, the SDK corpus, the object-storage
//!   tests and the Windows tests under Wine (see [`loom`], [`miri`], [`fuzz`], [`portable`],
//!   [`sdk`], [`objstore`], [`wine`]).
//! - `tidy`: repository rules no compiler checks (see [`tidy`]).
//! - `loom`: the loom models of vdi-shm's lock-free code and of vdi-async's device protocol,
//!   alone.
//! - `miri`: the heap-only tests under Miri (nightly), alone.
//! - `fuzz [--seconds N]`: the `shared_region` cargo-fuzz target for N seconds (default 60;
//!   nightly; see [`fuzz`]).
//! - `wine-test`: vdi-win and vdi-shm built for `x86_64-pc-windows-gnu` and tested under Wine,
//!   installing Wine and MinGW-w64 when missing (see [`wine`]).
//! - `sdk-test`: third-party VDI clients (Microsoft's Linux sample, BackupX's worker) and our
//!   own C++ client, built unchanged against vdi-sdk's `libsqlvdi.so` and run against the
//!   reference engine; then Microsoft's Windows samples, BackupX's Windows worker, our COM
//!   client and the conformance suite against vdi-sdk's `sqlvdi.dll` under Wine; installing
//!   the compilers and Wine when missing (see [`sdk`], [`sdk_windows`]).
//! - `objstore-test`: the object-storage tests (vdi-testkit's, and vdi-agent's when it has
//!   them) against moto, s3s-fs and Azurite on 127.0.0.1, installing them under
//!   `target/objstore/` when missing (see [`objstore`]).
//! - `portable-test`: vdi-shm's portable Unix backend: clippy for FreeBSD and macOS, and the
//!   whole vdi-shm test suite on it here (see [`portable`]).
//! - `bench [--quick] [--no-iceoryx2] [--save]`: vdi-shm side by side with the alternatives
//!   (vdi-bench, with iceoryx2), results in `target/bench/` (see [`mod@bench`]). Not part of `ci`;
//!   vdi-bench's own test runs a smoke version of it there.
//!
//! Stages that need a nightly toolchain (Miri, fuzzing), another Rust target or Wine say `skipping <stage>: <reason>` and
//! pass when it, or their component, is missing and cannot be installed: the stable checks
//! decide whether CI passes on any machine.
//!
//! It has no dependencies, so it builds in seconds on a fresh machine.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

mod bench;
mod fuzz;
mod loom;
mod miri;
mod objstore;
mod portable;
mod sdk;
mod sdk_windows;
mod tidy;
mod wine;

/// How a stage that may be unavailable on this machine ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// It ran and passed.
    Passed,
    /// It could not run here; the reason says why.
    Skipped(String),
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let root = project_root();
    if let Err(e) = env::set_current_dir(&root) {
        eprintln!("xtask: cannot enter {}: {e}", root.display());
        return ExitCode::FAILURE;
    }
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("tidy") => tidy::run(&root),
        Some("loom") => loom::run(),
        Some("miri") => miri::run().map(report_skip),
        Some("fuzz") => fuzz::parse_seconds(&args[1..])
            .and_then(fuzz::run)
            .map(report_skip),
        Some("wine-test") => wine::run().map(report_skip),
        Some("portable-test") => portable::run().map(report_skip),
        Some("sdk-test") => sdk::run().map(report_skip),
        Some("objstore-test") => objstore::run().map(report_skip),
        Some("bench") => bench::parse(&args[1..]).and_then(|o| bench::run(&root, &o)),
        Some("help" | "--help" | "-h") | None => {
            print_help();
            Ok(())
        }
        Some(other) => Err(format!("unknown command `{other}`; see `cargo xtask help`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_help() {
    println!("cargo xtask <command>\n");
    println!("commands:");
    println!(
        "  ci                  tidy, fmt, clippy, tests, docs, loom, Miri, fuzzing, portable, SDK,"
    );
    println!("                      object storage, Wine");
    println!("  tidy                repository rules no compiler checks (xtask/src/tidy.rs)");
    println!("  loom                the loom models of vdi-shm and vdi-async (target/loom*)");
    println!("  miri                vdi-core and vdi-shm's heap-only tests under Miri (nightly)");
    println!("  fuzz [--seconds N]  the shared_region fuzz target for N s (default 60; nightly)");
    println!(
        "  wine-test           vdi-win and vdi-shm tests for windows-gnu under Wine (installs it)"
    );
    println!(
        "  portable-test       vdi-shm's portable Unix backend: FreeBSD/macOS clippy, tests here"
    );
    println!("  sdk-test            third-party VDI clients against libsqlvdi.so, and sqlvdi.dll");
    println!("                      under Wine, with vdi-engine (installs compilers and Wine)");
    println!(
        "  objstore-test       object-storage tests against moto, s3s-fs and Azurite (installs them)"
    );
    println!("  bench [--quick] [--no-iceoryx2] [--save]");
    println!("                      benchmarks against the alternatives, into target/bench/");
    println!("                      (--save: copy them to vdi-bench/results/ for BENCHMARKS.md)");
}

/// The workspace root: the parent of this crate's manifest directory.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The cargo that runs xtask (the stable toolchain, or whatever the caller chose).
fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `cargo +nightly` through rustup's proxy. `CARGO` and `RUSTUP_TOOLCHAIN` are removed: they
/// name the toolchain running xtask, and cargo-miri would otherwise drive the stable cargo.
pub(crate) fn nightly_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

/// Runs `cmd` quietly; `Ok` if it succeeds, else the last line of its error output.
pub(crate) fn probe(mut cmd: Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("error"))
        .or_else(|| stderr.lines().map(str::trim).rfind(|l| !l.is_empty()))
        .unwrap_or("no message");
    Err(format!("`{}` failed: {line}", display(&cmd)))
}

/// Whether `cargo +nightly` works here.
pub(crate) fn nightly() -> Result<(), String> {
    let mut cmd = nightly_cargo();
    cmd.arg("--version");
    probe(cmd).map_err(|e| format!("no nightly toolchain ({e})"))
}

/// The command line, for messages.
fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs one stage, printing its name and time; fails when the command fails.
pub(crate) fn stage(name: &str, cmd: Command) -> Result<(), String> {
    stage_bounded(name, cmd, None)
}

/// [`stage`], killing the command if it runs past `limit`.
pub(crate) fn stage_bounded(
    name: &str,
    mut cmd: Command,
    limit: Option<Duration>,
) -> Result<(), String> {
    println!("\n=== xtask: {name}");
    let start = Instant::now();
    let status = wait_bounded(&mut cmd, limit).map_err(|e| format!("{name}: {e}"))?;
    let ok = status.is_some_and(|s| s.success());
    println!(
        "=== xtask: {name}: {} in {:.1}s",
        if ok { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!("stage `{name}` failed ({s})")),
        None => Err(format!(
            "stage `{name}` killed after {}s",
            limit.unwrap_or_default().as_secs()
        )),
    }
}

/// Runs `cmd` with no standard input; `None` if it was killed for running past `limit`.
fn wait_bounded(cmd: &mut Command, limit: Option<Duration>) -> Result<Option<ExitStatus>, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", display(cmd)))?;
    let Some(limit) = limit else {
        return child.wait().map(Some).map_err(|e| e.to_string());
    };
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(Some(status));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Longest wait for `rustup target add`.
const RUSTUP_LIMIT: Duration = Duration::from_secs(600);

/// Installs the Rust `target` unless the toolchain has it (for the stage named `stage_name`);
/// `Err` is a reason to skip.
pub(crate) fn ensure_rust_target(target: &str, stage_name: &str) -> Result<(), String> {
    if rust_target_installed(target) {
        return Ok(());
    }
    let mut version = Command::new("rustup");
    version.arg("--version");
    probe(version).map_err(|e| {
        format!("the {target} Rust target is missing and rustup cannot add it ({e})")
    })?;
    let mut add = Command::new("rustup");
    add.args(["target", "add", target]);
    stage_bounded(
        &format!("{stage_name}: rustup target add {target}"),
        add,
        Some(RUSTUP_LIMIT),
    )
    .map_err(|e| format!("the {target} Rust target cannot be added ({e})"))
}

/// Whether the running toolchain's sysroot holds `target`'s std.
fn rust_target_installed(target: &str) -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    out.status.success()
        && Path::new(&sysroot)
            .join("lib/rustlib")
            .join(target)
            .join("lib")
            .is_dir()
}

/// Prints why a stage was skipped; the command still succeeds.
fn report_skip(outcome: Outcome) {
    if let Outcome::Skipped(reason) = outcome {
        println!("=== xtask: {reason}");
    }
}

/// Seconds of fuzzing in `cargo xtask ci`: a smoke run; `cargo xtask fuzz` goes longer.
const CI_FUZZ_SECONDS: u64 = 20;

fn ci() -> Result<(), String> {
    let start = Instant::now();
    tidy::run(&project_root())?;
    // vdi-sdk's build compiles C++: install the compilers before the first build needs them.
    if let Err(reason) = sdk::ensure_tools() {
        println!("=== xtask: note: {reason}");
    }

    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    stage("fmt", fmt)?;

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]);
    stage("clippy", clippy)?;

    let mut test = cargo();
    test.args(["test", "--workspace", "--locked"]);
    stage("test", test)?;

    let mut doc = cargo();
    doc.args(["doc", "--workspace", "--no-deps", "--locked"])
        .env("RUSTDOCFLAGS", "-D warnings");
    stage("doc", doc)?;

    loom::run()?;
    let mut skipped = Vec::new();
    for outcome in [
        miri::run()?,
        fuzz::run(CI_FUZZ_SECONDS)?,
        portable::run()?,
        sdk::run()?,
        objstore::run()?,
        wine::run()?,
    ] {
        if let Outcome::Skipped(reason) = outcome {
            println!("=== xtask: {reason}");
            skipped.push(reason);
        }
    }

    println!(
        "\n=== xtask: ci passed in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    for reason in &skipped {
        println!("=== xtask: note: {reason}");
    }
    Ok(())
}
