//! `cargo xtask loom`: vdi-shm's loom models (the `loom_*` tests of its lock-free code).
//!
//! Runs `RUSTFLAGS="--cfg loom" cargo test -p vdi-shm --release --lib loom_` with
//! `LOOM_MAX_PREEMPTIONS=3`, in its own target directory (`target/loom`): a different
//! `RUSTFLAGS` would otherwise rebuild everything in `target/` and throw away the normal cache.

use std::env;

use crate::{cargo, stage};

/// Runs the loom stage.
pub(crate) fn run() -> Result<(), String> {
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
