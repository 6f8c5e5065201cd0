//! `cargo xtask fuzz [--seconds N]`: runs the `shared_region` cargo-fuzz target for N seconds.
//!
//! The target (`fuzz/fuzz_targets/shared_region.rs`) feeds arbitrary bytes to
//! `vdi_shm::fuzzing::shared_region` as a peer's shared region. `fuzz/` is its own workspace
//! (built by cargo-fuzz with nightly and sanitizers); its corpus and crash artifacts stay in
//! `fuzz/corpus` and `fuzz/artifacts`, which git ignores.
//!
//! Installs cargo-fuzz when it is missing (`cargo install cargo-fuzz --locked`, or without
//! `--locked` if that fails). Without a nightly toolchain it says so and passes.

use std::time::Duration;

use crate::{Outcome, cargo, nightly, nightly_cargo, probe, stage, stage_bounded};

/// The fuzz target this command runs.
const TARGET: &str = "shared_region";
/// Seconds of fuzzing when `--seconds` is not given.
const DEFAULT_SECONDS: u64 = 60;
/// One input running longer than this (seconds) is a hang, reported as a failure.
const INPUT_TIMEOUT: u64 = 10;

/// The seconds to fuzz for, from the arguments after `fuzz`.
pub(crate) fn parse_seconds(args: &[String]) -> Result<u64, String> {
    match args {
        [] => Ok(DEFAULT_SECONDS),
        [flag, n] if flag == "--seconds" => n
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("--seconds wants a positive whole number, not `{n}`")),
        _ => Err("usage: cargo xtask fuzz [--seconds N]".into()),
    }
}

/// Fuzzes `shared_region` for `seconds`, or says why it cannot run here.
pub(crate) fn run(seconds: u64) -> Result<Outcome, String> {
    if let Err(reason) = nightly() {
        return Ok(Outcome::Skipped(format!("skipping fuzz: {reason}")));
    }
    install_cargo_fuzz()?;

    let mut cmd = nightly_cargo();
    cmd.args(["fuzz", "run", TARGET, "--"])
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT}"));
    // Building takes a while on a fresh machine; the fuzzing itself stops on its own.
    let limit = Duration::from_secs(seconds + 900);
    stage_bounded(&format!("fuzz {TARGET} for {seconds}s"), cmd, Some(limit))?;
    Ok(Outcome::Passed)
}

/// Installs cargo-fuzz unless `cargo fuzz` already works.
fn install_cargo_fuzz() -> Result<(), String> {
    let mut version = cargo();
    version.args(["fuzz", "--version"]);
    if probe(version).is_ok() {
        return Ok(());
    }
    let install = |locked: bool| {
        let mut cmd = cargo();
        cmd.args(["install", "cargo-fuzz"]);
        if locked {
            cmd.arg("--locked");
        }
        cmd
    };
    stage("install cargo-fuzz", install(true))
        .or_else(|_| stage("install cargo-fuzz (unlocked)", install(false)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn seconds_default_and_flag() {
        assert_eq!(parse_seconds(&[]), Ok(DEFAULT_SECONDS));
        assert_eq!(parse_seconds(&args(&["--seconds", "20"])), Ok(20));
        assert!(parse_seconds(&args(&["--seconds", "0"])).is_err());
        assert!(parse_seconds(&args(&["--seconds", "x"])).is_err());
        assert!(parse_seconds(&args(&["--seconds"])).is_err());
        assert!(parse_seconds(&args(&["20"])).is_err());
    }
}
