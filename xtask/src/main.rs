//! Project tooling, run as `cargo xtask <command>` (the cargo-xtask pattern).
//!
//! - `ci`: everything CI checks, in order: tidy, fmt, clippy, tests, docs.
//! - `tidy`: repository rules no compiler checks (see [`tidy`]).
//!
//! It has no dependencies, so it builds in seconds on a fresh machine.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

mod tidy;

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
    println!("  ci     tidy, fmt --check, clippy -D warnings, tests, docs with warnings denied");
    println!("  tidy   repository rules no compiler checks (listed in xtask/src/tidy.rs)");
}

/// The workspace root: the parent of this crate's manifest directory.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs one stage, printing its name and time; fails when the command fails.
pub(crate) fn stage(name: &str, mut cmd: Command) -> Result<(), String> {
    println!("\n=== xtask: {name}");
    let start = Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("{name}: cannot run {cmd:?}: {e}"))?;
    println!(
        "=== xtask: {name}: {} in {:.1}s",
        if status.success() { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("stage `{name}` failed ({status})"))
    }
}

fn ci() -> Result<(), String> {
    let start = Instant::now();
    tidy::run(&project_root())?;

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

    println!(
        "\n=== xtask: ci passed in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
