//! `cargo xtask portable-test`: vdi-shm's portable Unix backend (`vdi-shm/src/sys/posix/`),
//! the one every Unix but Linux uses.
//!
//! 1. The Rust targets `x86_64-unknown-freebsd` and `x86_64-apple-darwin`, added with rustup
//!    when missing (std only: nothing is linked, so no cross toolchain is needed).
//! 2. `cargo clippy -p vdi-shm --all-targets --target <each> -- -D warnings`: the backend as
//!    those systems compile it (their own `cfg`s: seals on FreeBSD, `SO_NOSIGPIPE` and no
//!    `SOCK_CLOEXEC` on macOS), type-checked and linted. A target that cannot be added is
//!    skipped with a message.
//! 3. `cargo test -p vdi-shm --features portable-unix`: the whole vdi-shm suite (unit tests,
//!    multi-process, peer death, secondaries) on the portable backend, here on Linux.
//! 4. `cargo test -p vdi-sdk --test conformance --features vdi-shm/portable-unix`: the
//!    client-side conformance suite (vdi-shm's client and the C ABI) on the portable backend.
//!
//! The builds share the workspace's `target/` (each target in its own folder).

use std::time::Instant;

use crate::{Outcome, cargo, ensure_rust_target, stage};

/// The Unix targets whose build of vdi-shm is checked.
const TARGETS: [&str; 2] = ["x86_64-unknown-freebsd", "x86_64-apple-darwin"];

/// Runs the stage; `Skipped` names the targets that could not be checked (the tests still ran).
pub(crate) fn run() -> Result<Outcome, String> {
    let start = Instant::now();
    let mut skipped = Vec::new();
    for target in TARGETS {
        if let Err(reason) = ensure_rust_target(target, "portable-test") {
            skipped.push(reason);
            continue;
        }
        let mut clippy = cargo();
        clippy
            .args([
                "clippy",
                "-p",
                "vdi-shm",
                "--all-targets",
                "--target",
                target,
            ])
            .args(["--locked", "--", "-D", "warnings"]);
        stage(&format!("portable-test: clippy ({target})"), clippy)?;
    }

    let mut test = cargo();
    test.args([
        "test",
        "-p",
        "vdi-shm",
        "--features",
        "portable-unix",
        "--locked",
    ]);
    stage("portable-test: cargo test -p vdi-shm (portable-unix)", test)?;

    // The client-side conformance suite on the portable backend: vdi-shm's client and the C
    // ABI over it, against the engine (which then runs on the portable backend too).
    let mut conformance = cargo();
    conformance.args([
        "test",
        "-p",
        "vdi-sdk",
        "--test",
        "conformance",
        "--features",
        "vdi-shm/portable-unix",
        "--locked",
    ]);
    stage(
        "portable-test: the conformance suite on the portable backend",
        conformance,
    )?;

    println!(
        "=== xtask: portable-test passed in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    if skipped.is_empty() {
        Ok(Outcome::Passed)
    } else {
        Ok(Outcome::Skipped(format!(
            "portable-test checked no build for: {}",
            skipped.join("; ")
        )))
    }
}
