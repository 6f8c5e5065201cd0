//! `cargo xtask miri`: the tests that touch no OS resource, under Miri (nightly).
//!
//! - `cargo +nightly miri test -p vdi-core --lib --tests`: the protocol, all of it.
//! - `cargo +nightly miri test -p vdi-shm --lib`: the heap-backed ring and pool tests. Under
//!   `cfg(miri)` vdi-shm compiles out its OS modules (memfds, futexes, sockets), as it does
//!   under loom, and its long stress tests are `#[cfg(not(miri))]`.
//!
//! `PROPTEST_CASES=4` keeps property tests short (tests that set their own case count cut it
//! under `cfg(miri)`). Artifacts go to `target/miri`, away from the normal cache.
//!
//! If `cargo +nightly miri` does not work, this tries once to add the `miri` and `rust-src`
//! components; if that fails too, the stage is skipped with the reason, and passes.

use std::{process::Command, time::Duration};

use crate::{Outcome, nightly, nightly_cargo, probe, stage, stage_bounded};

/// Flags for every Miri run. Isolation is off because proptest reads the working directory
/// (for its regression files); the code under test does no I/O either way.
const MIRIFLAGS: &str = "-Zmiri-strict-provenance -Zmiri-disable-isolation";
/// Longest wait for `rustup component add`.
const INSTALL_LIMIT: Duration = Duration::from_secs(300);

/// Runs the Miri stage, or says why it cannot run here.
pub(crate) fn run() -> Result<Outcome, String> {
    if let Err(reason) = available() {
        return Ok(Outcome::Skipped(format!("skipping Miri: {reason}")));
    }

    let mut setup = nightly_cargo();
    setup.args(["miri", "setup"]);
    stage("miri: sysroot", setup)?;

    let mut core = miri_test();
    core.args(["-p", "vdi-core", "--lib", "--tests"]);
    stage("miri: vdi-core", core)?;

    let mut shm = miri_test();
    shm.args(["-p", "vdi-shm", "--lib"]);
    stage("miri: vdi-shm (ring, pool)", shm)?;
    Ok(Outcome::Passed)
}

/// `cargo +nightly miri test --locked` with this stage's environment.
fn miri_test() -> Command {
    let mut cmd = nightly_cargo();
    cmd.args(["miri", "test", "--locked"])
        .env("MIRIFLAGS", MIRIFLAGS)
        .env("PROPTEST_CASES", "4");
    cmd
}

/// Whether `cargo +nightly miri` works, adding its components once if it does not.
fn available() -> Result<(), String> {
    nightly()?;
    let version = || {
        let mut cmd = nightly_cargo();
        cmd.args(["miri", "--version"]);
        probe(cmd)
    };
    if version().is_ok() {
        return Ok(());
    }
    let mut add = Command::new("rustup");
    add.args([
        "component",
        "add",
        "--toolchain",
        "nightly",
        "miri",
        "rust-src",
    ]);
    stage_bounded("miri: rustup component add", add, Some(INSTALL_LIMIT))
        .map_err(|e| format!("the miri component is missing and cannot be added ({e})"))?;
    version()
}
