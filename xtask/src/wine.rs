//! `cargo xtask wine-test`: vdi-win and vdi-shm built for `x86_64-pc-windows-gnu` and tested under
//! Wine, from Linux.
//!
//! Steps, each a no-op when its result is already there:
//!
//! 1. The Rust target: `rustup target add x86_64-pc-windows-gnu`.
//! 2. clippy for the Windows target: `cargo clippy --target x86_64-pc-windows-gnu -p vdi-win
//!    -p vdi-shm -p vdi-sdk -p vdi-engine -p vdi-agent --all-targets -- -D warnings` (the code
//!    under `cfg(windows)`, vdi-win's COM layer, vdi-shm's Windows platform layer, vdi-sdk's COM
//!    server and the agent's Windows backends, is checked nowhere else).
//! 3. Wine and the MinGW-w64 cross compilers: `apt-get update` and `apt-get install -y
//!    --no-install-recommends wine gcc-mingw-w64-x86-64 g++-mingw-w64-x86-64` for whichever of
//!    `wine`, `x86_64-w64-mingw32-gcc` and `x86_64-w64-mingw32-g++` is missing (the recommends
//!    are fonts, sound and printing, which console tests never use; the C++ compiler builds
//!    `sdk-test`'s Windows clients).
//! 4. A Wine prefix of its own, `target/wine/prefix`, made by `wineboot --init` with no display
//!    (`DISPLAY` removed, `WINEDEBUG=-all`, Mono and Gecko declined), so nothing opens a window
//!    or asks a question.
//! 5. `bcryptprimitives.dll`. Rust's std for windows-gnu takes its random numbers from
//!    `ProcessPrng` in `bcryptprimitives.dll`, which Wine 8 (Debian 12) lacks, so every test
//!    `.exe` fails to start. When neither the prefix nor Wine has the DLL, a 20-line stand-in is
//!    compiled with MinGW (source written to `target/wine/bcryptprimitives/`): `ProcessPrng`
//!    forwarding to `RtlGenRandom` (`SystemFunction036` of advapi32), placed in the prefix's
//!    `system32`.
//! 6. `cargo test --target x86_64-pc-windows-gnu -p vdi-win --locked`, then the same with
//!    `-p vdi-shm`, with Wine as the runner (`CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine`)
//!    and the MinGW linker. For vdi-shm that is its whole suite on its Windows backend
//!    (`src/sys/windows/`: sections, events, named pipes): the unit tests, and the
//!    multi-process integration tests (`vdi-shm/tests/*.rs`), whose child processes are the test
//!    binary re-run under Wine and killed with `TerminateProcess`. One persistent `wineserver -p`
//!    serves every test process and is killed (`wineserver -k`) at the end, so no test starts
//!    while a server is exiting.
//! 7. The agent on Windows: `vdi-agent.exe demo --zstd` through 3 devices (a backup through the
//!    engine it starts, a restore with every byte checked, a verify), then `verify` and `info`
//!    of the backup it kept.
//!
//! Everything it builds goes to `target/wine` (`CARGO_TARGET_DIR`), away from the normal cache
//! and its build lock.
//!
//! The stage is skipped, with a message saying why, only when the tools cannot be installed
//! here: no `rustup` for the target, or Wine or MinGW missing with no `apt-get` or no root, or
//! the installation failing. Anything that fails after the tools are there fails the stage.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Outcome, cargo, ensure_rust_target, probe, project_root, stage, stage_bounded};

/// The Rust target Wine runs.
const TARGET: &str = "x86_64-pc-windows-gnu";
/// The MinGW-w64 C compiler (Debian's `gcc-mingw-w64-x86-64`).
pub(crate) const MINGW_GCC: &str = "x86_64-w64-mingw32-gcc";
/// The MinGW-w64 C++ compiler (Debian's `g++-mingw-w64-x86-64`), for the Windows VDI clients
/// of `sdk-test`.
pub(crate) const MINGW_GXX: &str = "x86_64-w64-mingw32-g++";
/// Longest wait for `apt-get update` plus `apt-get install`, each.
const APT_LIMIT: Duration = Duration::from_secs(900);
/// Longest wait for `wineboot --init`.
const WINEBOOT_LIMIT: Duration = Duration::from_secs(300);
/// Longest wait for `wineserver -p` or `wineserver -k`.
const SERVER_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait for building and running the tests under Wine.
const TEST_LIMIT: Duration = Duration::from_secs(1800);

/// The stand-in for `bcryptprimitives.dll`: `ProcessPrng` over `RtlGenRandom`.
const PROCESS_PRNG_C: &str = r#"/* Written by `cargo xtask wine-test` (xtask/src/wine.rs); do not edit.
 *
 * Rust's std for windows-gnu imports ProcessPrng from bcryptprimitives.dll, which Wine 8 lacks.
 * This stand-in forwards to RtlGenRandom (SystemFunction036 of advapi32), which Wine has. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
"#;

/// Runs the stage, or says why it cannot run here.
pub(crate) fn run() -> Result<Outcome, String> {
    let start = Instant::now();
    let root = project_root();
    let target_dir = root.join("target/wine");

    if let Err(reason) = ensure_rust_target(TARGET, "wine-test") {
        return Ok(Outcome::Skipped(format!("skipping wine-test: {reason}")));
    }

    let wine = match Wine::setup("prefix", "wine-test")? {
        Ok(wine) => wine,
        Err(reason) => return Ok(Outcome::Skipped(format!("skipping wine-test: {reason}"))),
    };
    // After the setup, which installs MinGW-w64 when it is missing: the C in vdi-agent's
    // dependencies (zstd) needs its compiler even to be linted.
    let mut clippy = cargo();
    clippy
        .args(["clippy", "--target", TARGET])
        .args([
            "-p",
            "vdi-win",
            "-p",
            "vdi-shm",
            "-p",
            "vdi-sdk",
            "-p",
            "vdi-engine",
            "-p",
            "vdi-agent",
        ])
        .args(["--all-targets", "--locked", "--", "-D", "warnings"])
        .env("CARGO_TARGET_DIR", &target_dir);
    stage("wine-test: clippy (x86_64-pc-windows-gnu)", clippy)?;
    for krate in ["vdi-win", "vdi-shm"] {
        let mut test = wine.cargo(&["test", "-p", krate]);
        // The prefix has no sqlvdi.dll: vdi-win's activation test then insists on the
        // "not registered" diagnosis.
        test.env("VDI_WIN_EXPECT_NO_SQLVDI", "1");
        let name = format!("wine-test: cargo test -p {krate} under Wine");
        stage_bounded(&name, test, Some(TEST_LIMIT))?;
    }
    agent_demo(&wine)?;

    println!(
        "=== xtask: wine-test passed in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    Ok(Outcome::Passed)
}

/// The agent on Windows: `vdi-agent.exe demo` (backup through the reference engine it starts,
/// restore with every byte checked, verify) with zstd through 3 devices, and the backup's
/// `verify` and `info` afterwards.
fn agent_demo(wine: &Wine) -> Result<(), String> {
    stage(
        "wine-test: build vdi-agent.exe",
        wine.cargo(&["build", "-p", "vdi-agent"]),
    )?;
    let work = wine.target_dir.join("agent-demo");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let agent = wine.debug_dir().join("vdi-agent.exe");
    // Paths relative to `work`: Wine does not translate Unix paths in arguments.
    let run = |args: &[&str], want: &str| -> Result<(), String> {
        let mut cmd = wine.command(&agent);
        cmd.current_dir(&work).args(args);
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() || !text.contains(want) {
            return Err(format!(
                "wine-test: vdi-agent.exe {args:?}: {} (expected success and {want:?}):\n{text}",
                out.status
            ));
        }
        println!("=== xtask: wine-test: ok: vdi-agent.exe {args:?}");
        Ok(())
    };
    run(
        &[
            "demo",
            "--size",
            "32MiB",
            "--devices",
            "3",
            "--zstd",
            "--dir",
            "demo",
            "--keep",
        ],
        "demo: ok.",
    )?;
    run(&["verify", "demo"], "ok")?;
    run(&["info", "demo"], "complete")
}

/// A Wine prefix of its own under `target/wine`, ready to run Windows programs, with one
/// persistent `wineserver` until dropped.
pub(crate) struct Wine {
    prefix: PathBuf,
    target_dir: PathBuf,
    _server: PersistentServer,
}

impl Wine {
    /// Installs what is missing (the Rust target, Wine, MinGW-w64's C and C++ compilers),
    /// makes the prefix `target/wine/<name>` and starts its server. The inner `Err` is a
    /// reason to skip: the tools cannot be installed here.
    pub(crate) fn setup(name: &str, stage_name: &str) -> Result<Result<Self, String>, String> {
        if let Err(reason) = ensure_rust_target(TARGET, stage_name) {
            return Ok(Err(reason));
        }
        if let Err(reason) = ensure_packages(stage_name) {
            return Ok(Err(reason));
        }
        let target_dir = project_root().join("target/wine");
        let prefix = target_dir.join(name);
        ensure_prefix(&prefix, stage_name)?;
        ensure_process_prng(&target_dir, &prefix, stage_name)?;
        let server = PersistentServer::start(&prefix, stage_name)?;
        Ok(Ok(Self {
            prefix,
            target_dir,
            _server: server,
        }))
    }

    /// `cargo <args> --target x86_64-pc-windows-gnu --locked`, into `target/wine`, with the
    /// MinGW linker and Wine as the runner of what it runs.
    pub(crate) fn cargo(&self, args: &[&str]) -> Command {
        let mut cmd = cargo();
        cmd.args(args)
            .args(["--target", TARGET, "--locked"])
            .env("CARGO_TARGET_DIR", &self.target_dir)
            .env("CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER", "wine")
            .env("CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER", MINGW_GCC);
        wine_env(&mut cmd, &self.prefix);
        cmd
    }

    /// Where `cargo` puts the debug build for Windows.
    pub(crate) fn debug_dir(&self) -> PathBuf {
        self.target_dir.join(TARGET).join("debug")
    }

    /// `wine <program>` in this prefix.
    pub(crate) fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("wine");
        cmd.arg(program);
        wine_env(&mut cmd, &self.prefix);
        cmd
    }
}

/// The environment every Wine process gets: its own prefix, no display, no debug channels,
/// and no offer to install Mono or Gecko.
fn wine_env(cmd: &mut Command, prefix: &Path) {
    cmd.env("WINEPREFIX", prefix)
        .env("WINEARCH", "win64")
        .env("WINEDEBUG", "-all")
        .env("WINEDLLOVERRIDES", "mscoree=;mshtml=")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY");
}

/// A `wineserver -p` for the prefix, alive until dropped.
///
/// Without it every test binary (and every child process a test re-runs) starts or joins a
/// server that exits three seconds after its last client. A client that connects while that
/// server is exiting dies at once with `wine client error:0: recvmsg: Connection reset by peer`
/// (a CI run of vdi-shm's `errors` suite failed so, before running a test). A persistent
/// server never exits under the tests; dropping the guard runs `wineserver -k`.
struct PersistentServer {
    prefix: PathBuf,
}

impl PersistentServer {
    /// Starts the server (`wineserver -p` detaches and returns at once) or joins a running one.
    fn start(prefix: &Path, stage_name: &str) -> Result<Self, String> {
        let mut cmd = Command::new("wineserver");
        // The detached server keeps the descriptors it is given: with this process's output it
        // would hold a CI log's pipe open after the run.
        cmd.arg("-p").stdout(Stdio::null()).stderr(Stdio::null());
        wine_env(&mut cmd, prefix);
        stage_bounded(
            &format!("{stage_name}: wineserver -p (one server for every program)"),
            cmd,
            Some(SERVER_LIMIT),
        )?;
        Ok(Self {
            prefix: prefix.to_path_buf(),
        })
    }
}

impl Drop for PersistentServer {
    fn drop(&mut self) {
        let mut cmd = Command::new("wineserver");
        cmd.arg("-k");
        wine_env(&mut cmd, &self.prefix);
        // A server already gone is fine; anything else is reported and the stage's result
        // stands.
        if let Err(e) = stage_bounded("wineserver -k", cmd, Some(SERVER_LIMIT)) {
            println!("=== xtask: {e}");
        }
    }
}

/// Whether `program --version` runs.
fn has(program: &str) -> bool {
    let mut cmd = Command::new(program);
    cmd.arg("--version");
    probe(cmd).is_ok()
}

/// Installs Wine and MinGW-w64 (C and C++) with apt-get when one is missing; `Err` is a
/// reason to skip.
fn ensure_packages(stage_name: &str) -> Result<(), String> {
    let mut missing = Vec::new();
    if !has("wine") {
        missing.push("wine");
    }
    if !has(MINGW_GCC) {
        missing.push("gcc-mingw-w64-x86-64");
    }
    if !has(MINGW_GXX) {
        missing.push("g++-mingw-w64-x86-64");
    }
    if missing.is_empty() {
        return Ok(());
    }
    let what = missing.join(" and ");
    if !has("apt-get") {
        return Err(format!(
            "{what} missing, and there is no apt-get to install it"
        ));
    }
    if !is_root() {
        return Err(format!(
            "{what} missing, and installing needs root (run `apt-get install wine \
             gcc-mingw-w64-x86-64 g++-mingw-w64-x86-64` as root)"
        ));
    }
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    stage_bounded(
        &format!("{stage_name}: apt-get update"),
        apt(&["update"]),
        Some(APT_LIMIT),
    )
    .map_err(|e| format!("{what} missing, and apt-get update failed ({e})"))?;
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(&missing);
    stage_bounded(
        &format!("{stage_name}: apt-get install"),
        install,
        Some(APT_LIMIT),
    )
    .map_err(|e| format!("{what} missing, and apt-get install failed ({e})"))?;
    if !has("wine") || !has(MINGW_GCC) || !has(MINGW_GXX) {
        return Err(format!("{what} still missing after apt-get install"));
    }
    Ok(())
}

/// Whether this process runs as root (`id -u` prints 0).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Creates the Wine prefix unless it is there already.
fn ensure_prefix(prefix: &Path, stage_name: &str) -> Result<(), String> {
    if prefix.join("system.reg").is_file() && system32(prefix).is_dir() {
        return Ok(());
    }
    fs::create_dir_all(prefix).map_err(|e| format!("cannot create {}: {e}", prefix.display()))?;
    let mut boot = Command::new("wine");
    boot.args(["wineboot", "--init"]);
    wine_env(&mut boot, prefix);
    stage_bounded(
        &format!("{stage_name}: wineboot --init"),
        boot,
        Some(WINEBOOT_LIMIT),
    )?;
    // wineboot returns before the server has written the registry to disk; wait for it.
    if has("wineserver") {
        let mut wait = Command::new("wineserver");
        wait.arg("-w");
        wine_env(&mut wait, prefix);
        stage_bounded(
            &format!("{stage_name}: wineserver -w"),
            wait,
            Some(WINEBOOT_LIMIT),
        )?;
    }
    if !system32(prefix).is_dir() {
        return Err(format!(
            "wineboot did not create {}",
            system32(prefix).display()
        ));
    }
    Ok(())
}

/// The 64-bit system directory of a win64 prefix.
fn system32(prefix: &Path) -> PathBuf {
    prefix.join("drive_c/windows/system32")
}

/// Puts a `bcryptprimitives.dll` exporting `ProcessPrng` into the prefix when Wine has none.
fn ensure_process_prng(target_dir: &Path, prefix: &Path, stage_name: &str) -> Result<(), String> {
    let installed = system32(prefix).join("bcryptprimitives.dll");
    if installed.is_file() {
        return Ok(());
    }
    if let Some(builtin) = wine_builtin("bcryptprimitives.dll") {
        println!(
            "=== xtask: Wine has {} itself; no stand-in needed",
            builtin.display()
        );
        return Ok(());
    }
    let dir = target_dir.join("bcryptprimitives");
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let source = dir.join("bcryptprimitives.c");
    fs::write(&source, PROCESS_PRNG_C)
        .map_err(|e| format!("cannot write {}: {e}", source.display()))?;
    let dll = dir.join("bcryptprimitives.dll");
    let mut gcc = Command::new(MINGW_GCC);
    gcc.args(["-shared", "-O2", "-s", "-o"])
        .arg(&dll)
        .arg(&source)
        .arg("-ladvapi32");
    stage(
        &format!("{stage_name}: build bcryptprimitives.dll (ProcessPrng)"),
        gcc,
    )?;
    fs::copy(&dll, &installed).map_err(|e| {
        format!(
            "cannot copy {} to {}: {e}",
            dll.display(),
            installed.display()
        )
    })?;
    Ok(())
}

/// Where Wine keeps its own 64-bit DLL `name`, if it has one.
fn wine_builtin(name: &str) -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/wine/x86_64-windows",
        "/usr/lib/wine/x86_64-windows",
        "/usr/local/lib/wine/x86_64-windows",
        "/opt/wine-stable/lib/wine/x86_64-windows",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(name))
    .find(|p| p.is_file())
}
