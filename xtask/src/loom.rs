//! `cargo xtask loom`: the loom models of vdi-shm's lock-free code and of vdi-async's device
//! protocol.
//!
//! - vdi-shm: `RUSTFLAGS="--cfg loom" cargo test -p vdi-shm --release --lib loom_` with
//!   `LOOM_MAX_PREEMPTIONS=3`, in its own target directory (`target/loom`): a different
//!   `RUSTFLAGS` would otherwise rebuild everything in `target/` and throw away the normal
//!   cache.
//! - vdi-async: tokio does not build with a global `--cfg loom`, so the flag goes to vdi-async
//!   alone (`cargo rustc -p vdi-async --lib --profile test -- --cfg loom`, in
//!   `target/loom-async`), and the test binary it reports runs the `loom_model` tests with
//!   `LOOM_MAX_PREEMPTIONS=2`.

use std::{env, path::PathBuf, process::Stdio};

use crate::{cargo, stage};

/// Runs the loom stage.
pub(crate) fn run() -> Result<(), String> {
    run_shm()?;
    run_async()
}

/// vdi-async's models: build the test binary with `--cfg loom` on that crate only, then run it.
fn run_async() -> Result<(), String> {
    println!("\n=== xtask: loom (vdi-async): build");
    let out = cargo()
        .args([
            "rustc",
            "-p",
            "vdi-async",
            "--lib",
            "--profile",
            "test",
            "--locked",
            "--target-dir",
            "target/loom-async",
            "--message-format=json-render-diagnostics",
            "--",
            "--cfg",
            "loom",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("loom (vdi-async): cargo: {e}"))?;
    if !out.status.success() {
        return Err("loom (vdi-async): the build failed".into());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let exe = stdout
        .lines()
        .filter(|l| {
            l.contains("\"reason\":\"compiler-artifact\"") && l.contains("\"name\":\"vdi_async\"")
        })
        .find_map(|l| json_string(l, "executable"))
        .ok_or("loom (vdi-async): cargo reported no test executable for vdi-async")?;
    let mut cmd = std::process::Command::new(PathBuf::from(exe));
    cmd.arg("loom_model").env("LOOM_MAX_PREEMPTIONS", "2");
    stage("loom (vdi-async)", cmd)
}

/// The string value of `"key":"..."` in one line of cargo's JSON output (paths: no escapes
/// other than `\\` and `\"`).
fn json_string(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut value = String::new();
    let mut chars = line[start..].chars();
    loop {
        match chars.next()? {
            '"' => return Some(value),
            '\\' => value.push(chars.next()?),
            c => value.push(c),
        }
    }
}

/// vdi-shm's models.
fn run_shm() -> Result<(), String> {
    let rustflags = match env::var("RUSTFLAGS") {
        Ok(flags) if !flags.trim().is_empty() => format!("{flags} --cfg loom"),
        _ => "--cfg loom".to_owned(),
    };
    let mut cmd = cargo();
    cmd.args([
        "test",
        "-p",
        "vdi-shm",
        "--release",
        "--lib",
        "--locked",
        "--target-dir",
        "target/loom",
        "loom_",
    ])
    .env("RUSTFLAGS", rustflags)
    .env("LOOM_MAX_PREEMPTIONS", "3");
    stage("loom", cmd)
}
