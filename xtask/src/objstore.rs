//! `cargo xtask objstore-test`: the object-storage tests against real servers, installing the
//! servers under `target/objstore/` when missing (a clean clone pays once; later runs reuse
//! them).
//!
//! Steps, each a no-op when its result is already there:
//!
//! 1. moto (S3, in memory, with IAM credential checks): `python3 -m venv
//!    target/objstore/venv`, then `pip install moto[server]==5.2.6` with boto3, botocore and
//!    azure-storage-blob pinned too (the test kit's helper uses them); the binary is
//!    `venv/bin/moto_server`. When the venv cannot be made for want of `ensurepip`, Debian's
//!    `python3-venv` is installed with apt-get.
//! 2. s3s-fs (S3 on a directory): `cargo install s3s-fs --version 0.14.1 --features binary
//!    --locked --root target/objstore/s3s-fs` (later versions need a newer rustc).
//! 3. Azurite (Azure Blob): `npm install --prefix target/objstore/azurite azurite@3.37.0`; the
//!    binary is `node_modules/.bin/azurite-blob`. When `npm` is missing, Debian's `nodejs` and
//!    `npm` are installed with apt-get.
//! 4. `cargo test -p vdi-testkit --test objstore --locked`, with the tools named in
//!    `VDI_MOTO_SERVER`, `VDI_S3S_FS`, `VDI_AZURITE_BLOB`, `VDI_OBJSTORE_PYTHON` and
//!    `VDI_OBJSTORE_REQUIRED=1` (so a missing tool fails rather than skips); the servers'
//!    capability report goes to `target/objstore/capabilities.md` and is printed.
//! 5. The same for `cargo test -p vdi-agent --test objstore --locked`: the agent's backups to S3
//!    and Azure.
//!
//! Each install is bounded in time, its output kept in `target/objstore/logs/` and shown when
//! it fails. The stage is skipped, with the reason, when a registry (PyPI, crates.io, npm)
//! cannot be reached or does not answer in time; any other failure fails it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{Outcome, cargo, display, project_root, stage_bounded};

/// moto, pinned (the newest 5.x when this was written).
const MOTO: &str = "moto[server]==5.2.6";
/// The moto version [`MOTO`] installs, as the venv reports it.
const MOTO_VERSION: &str = "5.2.6";
/// The rest of the venv, pinned: what moto 5.2.6 resolved to, and the Azure client.
const PY_PINS: &[&str] = &[
    "boto3==1.44.18",
    "botocore==1.44.18",
    "azure-storage-blob==12.31.1",
];
/// s3s-fs, pinned (0.15 and later need a newer rustc than the workspace's).
const S3S_FS_VERSION: &str = "0.14.1";
/// Azurite, pinned.
const AZURITE_VERSION: &str = "3.37.0";

/// Longest wait for `apt-get update` plus `apt-get install`, each.
const APT_LIMIT: Duration = Duration::from_secs(900);
/// Longest wait for making the venv and `pip install`.
const PIP_LIMIT: Duration = Duration::from_secs(900);
/// Longest wait for `cargo install s3s-fs` (a build from source on one job).
const CARGO_INSTALL_LIMIT: Duration = Duration::from_secs(1800);
/// Longest wait for `npm install`.
const NPM_LIMIT: Duration = Duration::from_secs(900);
/// Longest wait for one test run.
const TEST_LIMIT: Duration = Duration::from_secs(1200);

/// Words in an installer's output that say a registry could not be reached.
const UNREACHABLE: &[&str] = &[
    "Temporary failure in name resolution",
    "Failed to establish a new connection",
    "Max retries exceeded",
    "Network is unreachable",
    "Connection refused",
    "ConnectionError",
    "ReadTimeoutError",
    "No matching distribution found",
    "Could not resolve host",
    "Couldn't resolve host",
    "Couldn't connect to server",
    "npm error network",
    "failed to download",
    "spurious network error",
    "failed to query replaced source registry",
    "ENOTFOUND",
    "ECONNREFUSED",
    "ECONNRESET",
    "ETIMEDOUT",
    "EAI_AGAIN",
    "network request",
];

/// The installed tools.
struct Tools {
    moto_server: PathBuf,
    python: PathBuf,
    s3s_fs: PathBuf,
    azurite_blob: PathBuf,
}

/// Why an install did not succeed.
enum InstallError {
    /// The registry cannot be reached here: a reason to skip.
    Unreachable(String),
    /// Anything else: a failure.
    Failed(String),
}

impl From<String> for InstallError {
    fn from(e: String) -> Self {
        Self::Failed(e)
    }
}

/// Runs the stage, or says why it cannot run here.
pub(crate) fn run() -> Result<Outcome, String> {
    let start = Instant::now();
    let root = project_root();
    let dir = root.join("target/objstore");
    let tools = match install(&dir) {
        Ok(t) => t,
        Err(InstallError::Unreachable(reason)) => {
            return Ok(Outcome::Skipped(format!(
                "skipping objstore-test: {reason}"
            )));
        }
        Err(InstallError::Failed(e)) => return Err(format!("objstore-test: {e}")),
    };
    println!(
        "=== xtask: objstore-test: servers ready in {:.1}s",
        start.elapsed().as_secs_f64()
    );

    let report = dir.join("capabilities.md");
    let _ = fs::remove_file(&report);
    let test = |krate: &str| {
        let mut cmd = cargo();
        cmd.args(["test", "-p", krate, "--test", "objstore", "--locked"])
            .env("VDI_MOTO_SERVER", &tools.moto_server)
            .env("VDI_S3S_FS", &tools.s3s_fs)
            .env("VDI_AZURITE_BLOB", &tools.azurite_blob)
            .env("VDI_OBJSTORE_PYTHON", &tools.python)
            .env("VDI_OBJSTORE_REQUIRED", "1")
            .env("VDI_OBJSTORE_REPORT", &report);
        stage_bounded(
            &format!("objstore-test: cargo test -p {krate} --test objstore"),
            cmd,
            Some(TEST_LIMIT),
        )
    };
    test("vdi-testkit")?;
    if let Ok(text) = fs::read_to_string(&report) {
        println!("=== xtask: objstore-test: what each server supports:\n{text}");
    }
    test("vdi-agent")?;
    println!(
        "=== xtask: objstore-test passed in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    Ok(Outcome::Passed)
}

/// Installs what is missing under `dir`.
fn install(dir: &Path) -> Result<Tools, InstallError> {
    fs::create_dir_all(dir.join("logs")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (moto_server, python) = ensure_moto(dir)?;
    let s3s_fs = ensure_s3s_fs(dir)?;
    let azurite_blob = ensure_azurite(dir)?;
    Ok(Tools {
        moto_server,
        python,
        s3s_fs,
        azurite_blob,
    })
}

fn ensure_moto(dir: &Path) -> Result<(PathBuf, PathBuf), InstallError> {
    let venv = dir.join("venv");
    let python = venv.join("bin/python");
    let moto_server = venv.join("bin/moto_server");
    let installed = || {
        let out = Command::new(&python)
            .args([
                "-c",
                "import importlib.metadata as m; print(m.version('moto'), m.version('azure-storage-blob'))",
            ])
            .stdin(Stdio::null())
            .output();
        out.is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).starts_with(&format!("{MOTO_VERSION} "))
        })
    };
    if moto_server.is_file() && installed() {
        return Ok((moto_server, python));
    }
    if !python.is_file() {
        let mut mk = Command::new("python3");
        mk.args(["-m", "venv"]).arg(&venv);
        if let Err(e) = logged(dir, "venv", mk, PIP_LIMIT) {
            if !e.contains("ensurepip") {
                return Err(InstallError::Failed(e));
            }
            apt(dir, &["python3-venv"])?;
            let _ = fs::remove_dir_all(&venv);
            let mut mk = Command::new("python3");
            mk.args(["-m", "venv"]).arg(&venv);
            logged(dir, "venv", mk, PIP_LIMIT)?;
        }
    }
    let mut pip = Command::new(venv.join("bin/pip"));
    pip.args(["install", "--disable-pip-version-check", MOTO])
        .args(PY_PINS);
    registry(logged(dir, "pip-install", pip, PIP_LIMIT), "PyPI")?;
    if !moto_server.is_file() {
        return Err(InstallError::Failed(format!(
            "pip installed moto, but {} is missing",
            moto_server.display()
        )));
    }
    Ok((moto_server, python))
}

/// s3s-fs, installed under `target/objstore` when missing (for the bench's S3 rows too).
///
/// # Errors
///
/// Why it cannot be installed.
pub(crate) fn s3s_fs(root: &Path) -> Result<PathBuf, String> {
    let dir = root.join("target/objstore");
    fs::create_dir_all(dir.join("logs")).map_err(|e| format!("{}: {e}", dir.display()))?;
    ensure_s3s_fs(&dir).map_err(|e| match e {
        InstallError::Unreachable(r) | InstallError::Failed(r) => r,
    })
}

fn ensure_s3s_fs(dir: &Path) -> Result<PathBuf, InstallError> {
    let root = dir.join("s3s-fs");
    let bin = root.join("bin/s3s-fs");
    if bin.is_file() {
        return Ok(bin);
    }
    let install = |locked: bool| {
        let mut cmd = cargo();
        cmd.args(["install", "s3s-fs", "--version", S3S_FS_VERSION])
            .args(["--features", "binary", "--root"])
            .arg(&root);
        if locked {
            cmd.arg("--locked");
        }
        registry(
            logged(dir, "cargo-install-s3s-fs", cmd, CARGO_INSTALL_LIMIT),
            "crates.io",
        )
    };
    if let Err(InstallError::Failed(e)) = install(true) {
        println!("=== xtask: objstore-test: s3s-fs with --locked failed; trying without:\n{e}");
        install(false)?;
    }
    Ok(bin)
}

fn ensure_azurite(dir: &Path) -> Result<PathBuf, InstallError> {
    let prefix = dir.join("azurite");
    let bin = prefix.join("node_modules/.bin/azurite-blob");
    let manifest = prefix.join("node_modules/azurite/package.json");
    let want = format!("\"version\": \"{AZURITE_VERSION}\"");
    if bin.is_file() && fs::read_to_string(&manifest).is_ok_and(|m| m.contains(&want)) {
        return Ok(bin);
    }
    if !has("npm") {
        apt(dir, &["nodejs", "npm"])?;
    }
    let mut npm = Command::new("npm");
    npm.args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&prefix)
        .arg(format!("azurite@{AZURITE_VERSION}"));
    registry(logged(dir, "npm-install-azurite", npm, NPM_LIMIT), "npm")?;
    if !bin.is_file() {
        return Err(InstallError::Failed(format!(
            "npm installed azurite, but {} is missing",
            bin.display()
        )));
    }
    Ok(bin)
}

/// Whether `program --version` runs.
fn has(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Debian packages, for a tool a step needs; no apt-get, or a failure to reach Debian's
/// mirrors, is a reason to skip.
fn apt(dir: &Path, packages: &[&str]) -> Result<(), InstallError> {
    if !has("apt-get") {
        return Err(InstallError::Unreachable(format!(
            "{} missing, and there is no apt-get to install it",
            packages.join(" and ")
        )));
    }
    let mut update = Command::new("apt-get");
    update.arg("update");
    registry(logged(dir, "apt-get-update", update, APT_LIMIT), "Debian")?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive");
    registry(logged(dir, "apt-get-install", install, APT_LIMIT), "Debian")
}

/// Sorts an installer's failure: one that says the registry is out of reach (or that ran out
/// of time) is a reason to skip.
fn registry(result: Result<(), String>, name: &str) -> Result<(), InstallError> {
    result.map_err(|e| {
        if e.contains("ran past") || UNREACHABLE.iter().any(|w| e.contains(w)) {
            InstallError::Unreachable(format!("{name} cannot be reached: {}", first_line(&e)))
        } else {
            InstallError::Failed(e)
        }
    })
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Runs `cmd` with its output in `dir/logs/<name>.log`, bounded by `limit`; on failure, the
/// command and the log's tail.
fn logged(dir: &Path, name: &str, mut cmd: Command, limit: Duration) -> Result<(), String> {
    let log = dir.join("logs").join(format!("{name}.log"));
    let file = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    println!("\n=== xtask: objstore-test: {}", display(&cmd));
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", display(&cmd)))?;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let secs = start.elapsed().as_secs_f64();
    let text = fs::read_to_string(&log).unwrap_or_default();
    let tail: String = {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    match status {
        Some(s) if s.success() => {
            println!("=== xtask: objstore-test: {name}: ok in {secs:.1}s");
            Ok(())
        }
        Some(s) => Err(format!(
            "`{}` failed ({s}) after {secs:.1}s; the end of {}:\n{tail}",
            display(&cmd),
            log.display()
        )),
        None => Err(format!(
            "`{}` ran past {}s; the end of {}:\n{tail}",
            display(&cmd),
            limit.as_secs(),
            log.display()
        )),
    }
}
