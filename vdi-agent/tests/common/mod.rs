//! What the agent's binary tests share: running the agent and reading what it said.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses its own part"
)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

pub const AGENT: &str = env!("CARGO_BIN_EXE_vdi-agent");

/// Small transfers so that a few MiB make many commands.
pub const ENGINE: [&str; 4] = ["--block-size", "4KiB", "--max-transfer-size", "256KiB"];

pub struct Run {
    pub code: i32,
    pub stderr: String,
    pub stdout: String,
}

pub fn agent(args: &[&str]) -> Run {
    let out: Output = Command::new(AGENT)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("start vdi-agent");
    finish(args, &out)
}

pub fn finish(args: &[&str], out: &Output) -> Run {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = out.status.code().unwrap_or(-1);
    eprintln!("$ vdi-agent {}\n[exit {code}]\n{stderr}", args.join(" "));
    Run {
        code,
        stderr,
        stdout,
    }
}

pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("vdi-agent-test-")
        .tempdir()
        .expect("temp dir")
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `backup` of `size` through `devices` into `dir` with extra arguments.
pub fn backup(dir: &Path, devices: u32, size: &str, extra: &[&str]) -> Run {
    let devices = devices.to_string();
    let mut args = vec!["backup", s(dir), "--devices", &devices, "--size", size];
    args.extend(ENGINE);
    args.extend(extra);
    agent(&args)
}

pub fn restore(dir: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["restore", s(dir)];
    args.extend(ENGINE);
    args.extend(extra);
    agent(&args)
}

pub fn verify(dir: &Path) -> Run {
    agent(&["verify", s(dir)])
}

pub fn stripe(dir: &Path, i: u32) -> PathBuf {
    dir.join(format!("stripe-{i:02}.vdis"))
}

/// Whether the manifest in `dir` shows every stripe with at least one checkpoint (its first
/// Flush made durable and acknowledged).
pub fn every_stripe_flushed(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("manifest.json"))
        .ok()
        .and_then(|m| serde_json::from_str::<serde_json::Value>(&m).ok())
        .and_then(|m| {
            m["stripes"]
                .as_array()
                .map(|a| a.iter().all(|s| s["checkpoints"].as_u64() >= Some(1)))
        })
        .unwrap_or(false)
}
