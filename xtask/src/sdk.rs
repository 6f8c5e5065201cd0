//! `cargo xtask sdk-test`: third-party VDI clients, built unchanged with their own build files
//! against vdi-sdk's `libsqlvdi.so`, run against the reference engine (Linux); then the
//! Windows clients against its `sqlvdi.dll` under Wine ([`crate::sdk_windows`]).
//!
//! Steps of the Linux half:
//!
//! 1. The tools: `g++`, `clang++` (the Linux sample's Makefile calls it), `cmake`, `make`, `nm`
//!    and `uuid/uuid.h`; when one is missing, `apt-get update` and `apt-get install -y
//!    --no-install-recommends g++ clang cmake make binutils uuid-dev` (as `wine.rs` does for
//!    Wine). Skipped, with the reason, only when they cannot be installed here.
//! 2. `cargo build -p vdi-sdk -p vdi-engine` (the library, `vdi-engine`, `vdi-sqlcmd`), and a
//!    check that `libsqlvdi.so` exports exactly the SDK's 19 symbols (`nm -D`).
//! 3. In `target/sdk-test/` (the corpus in `../shared/thirdparty` is only read): the library
//!    under `lib/`, `bin/sqlcmd` (a link to `vdi-sqlcmd`), and three clients:
//!    - Microsoft's `vdipipesample.cpp`: its four files copied unchanged, built by its own
//!      Makefile (`make LD_LIBRARY_PATH=<lib>`, the variable it links from);
//!    - BackupX's worker `main.cpp`: its own CMakeLists, with `SQLVDI_SDK_DIR` pointing at copies
//!      of the Linux SDK headers of the corpus (the hashes its CMakeLists pins, so it downloads
//!      nothing) and `SQLVDI_LIBRARY` at our library;
//!    - this project's `vdi-sdk/tests/cpp/sdk_client.cpp`, written against `vdi_sdk.h`.
//! 4. The runs, each with its expected result asserted:
//!    - vdipipesample: a backup, then a restore of the same file with the engine checking every
//!      byte (the sample always exits 0, so the engine's exit code comes from `vdi-sqlcmd`'s log);
//!      a restore of a copy with one byte changed, which the engine must refuse (data mismatch);
//!      and a backup with a 1 s silence from the engine (`--silent-at`), which the sample does not
//!      survive: its GetCommand waits only 90 ms and takes `VD_E_TIMEOUT` as the end (the
//!      sample's known bug, documented here as its expected behaviour).
//!    - BackupX: a backup with `VDC_Complete`, a restore of it, a cancel through stdin EOF, and
//!      an engine-injected abort (`--abort-at`).
//!    - our client: bad input, and two devices with `OpenInSecondary` and buffer handles mapped
//!      in a second process, backup then restore.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{Outcome, cargo, probe, project_root, stage, stage_bounded};

/// Longest wait for `apt-get update` plus `apt-get install`, each.
const APT_LIMIT: Duration = Duration::from_secs(900);
/// Longest wait for one client or engine process.
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// The symbols the library must export, and no others.
const SDK_SYMBOLS: &[&str] = &[
    "_ZN19ClientVirtualDevice10GetCommandElPP11VDC_Command",
    "_ZN19ClientVirtualDevice15CompleteCommandEP11VDC_Commandiml",
    "_ZN19ClientVirtualDeviceC1Ev",
    "_ZN19ClientVirtualDeviceC2Ev",
    "_ZN19ClientVirtualDeviceD1Ev",
    "_ZN19ClientVirtualDeviceD2Ev",
    "_ZN22ClientVirtualDeviceSet10OpenDeviceEPcPP19ClientVirtualDevice",
    "_ZN22ClientVirtualDeviceSet11SignalAbortEv",
    "_ZN22ClientVirtualDeviceSet15GetBufferHandleEPhPj",
    "_ZN22ClientVirtualDeviceSet15MapBufferHandleEiPPh",
    "_ZN22ClientVirtualDeviceSet15OpenInSecondaryEPc",
    "_ZN22ClientVirtualDeviceSet16GetConfigurationElP8VDConfig",
    "_ZN22ClientVirtualDeviceSet20RegisterDeviceClosedEv",
    "_ZN22ClientVirtualDeviceSet5CloseEv",
    "_ZN22ClientVirtualDeviceSet6CreateEPcP8VDConfig",
    "_ZN22ClientVirtualDeviceSetC1Ev",
    "_ZN22ClientVirtualDeviceSetC2Ev",
    "_ZN22ClientVirtualDeviceSetD1Ev",
    "_ZN22ClientVirtualDeviceSetD2Ev",
];

/// Runs the stage, or says why it cannot run here.
pub(crate) fn run() -> Result<Outcome, String> {
    if !cfg!(target_os = "linux") {
        return Ok(Outcome::Skipped(
            "skipping sdk-test: libsqlvdi.so is Linux only".into(),
        ));
    }
    let start = Instant::now();
    if let Err(reason) = ensure_tools() {
        return Ok(Outcome::Skipped(format!("skipping sdk-test: {reason}")));
    }
    let root = project_root();
    let debug = root.join("target/debug");
    let mut build = cargo();
    build.args(["build", "-p", "vdi-sdk", "-p", "vdi-engine", "--locked"]);
    stage(
        "sdk-test: build libsqlvdi.so, vdi-engine, vdi-sqlcmd",
        build,
    )?;
    check_exports(&debug.join("libsqlvdi.so"))?;

    let work = root.join("target/sdk-test");
    let _ = fs::remove_dir_all(&work);
    let env = Env::prepare(&root, &work)?;
    env.build_clients()?;

    println!("\n=== xtask: sdk-test: runs");
    vdipipe(&env)?;
    let dir = env.work.join("backupx");
    backupx(&env, &dir, &dir.join("build/backupx-sqlvdi"))?;
    let dir = env.work.join("own");
    own_client(&env, &dir, &dir.join("sdk_client"))?;
    println!(
        "=== xtask: sdk-test: every Linux client passed in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    crate::sdk_windows::run()
}

/// Installs what is missing; `Err` is a reason to skip.
pub(crate) fn ensure_tools() -> Result<(), String> {
    if !cfg!(target_os = "linux") {
        return Ok(());
    }
    let have = |tool: &str| {
        let mut c = Command::new(tool);
        c.arg("--version");
        probe(c).is_ok()
    };
    let uuid = Path::new("/usr/include/uuid/uuid.h").exists();
    let nm = {
        let mut c = Command::new("nm");
        c.arg("--version");
        probe(c).is_ok()
    };
    if ["g++", "clang++", "cmake", "make"].iter().all(|t| have(t)) && uuid && nm {
        return Ok(());
    }
    let mut version = Command::new("apt-get");
    version.arg("--version");
    probe(version).map_err(|e| format!("compilers or uuid-dev missing and no apt-get ({e})"))?;
    let mut update = Command::new("apt-get");
    update.arg("update");
    stage_bounded("sdk-test: apt-get update", update, Some(APT_LIMIT))
        .map_err(|e| format!("apt-get update failed ({e})"))?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "--no-install-recommends"])
        .args(["g++", "clang", "cmake", "make", "binutils", "uuid-dev"])
        .env("DEBIAN_FRONTEND", "noninteractive");
    stage_bounded("sdk-test: apt-get install", install, Some(APT_LIMIT))
        .map_err(|e| format!("the compilers could not be installed ({e})"))
}

fn check_exports(lib: &Path) -> Result<(), String> {
    let out = Command::new("nm")
        .args(["-D", "--defined-only", "--format=posix"])
        .arg(lib)
        .output()
        .map_err(|e| format!("nm: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    found.sort_unstable();
    let mut want = SDK_SYMBOLS.to_vec();
    want.sort_unstable();
    if !out.status.success() || found != want {
        return Err(format!(
            "libsqlvdi.so exports {found:?}, expected exactly the SDK's {want:?}"
        ));
    }
    println!(
        "=== xtask: sdk-test: libsqlvdi.so exports exactly the SDK's {} symbols",
        want.len()
    );
    Ok(())
}

/// How the runs start a client or the engine on one OS: natively, or under Wine.
pub(crate) trait Host {
    /// A client process run in `dir`, output to `<dir>/<tag>.out|err`.
    fn client(&self, program: &Path, dir: &Path, tag: &str) -> Result<Command, String>;
    /// The `vdi-engine` binary for this OS.
    fn engine_program(&self) -> &Path;
    /// `vdi-engine <args> --wait-for-set 30s -v`, run as [`Host::client`] runs a client.
    fn engine(&self, dir: &Path, tag: &str, args: &[&str]) -> Result<Command, String> {
        let mut cmd = self.client(self.engine_program(), dir, tag)?;
        cmd.args(args).args(["--wait-for-set", "30s", "-v"]);
        Ok(cmd)
    }
}

/// The build and run directories.
struct Env {
    root: PathBuf,
    work: PathBuf,
    lib: PathBuf,
    bin: PathBuf,
    engine: PathBuf,
}

impl Env {
    fn prepare(root: &Path, work: &Path) -> Result<Self, String> {
        let debug = root.join("target/debug");
        let lib = work.join("lib");
        let bin = work.join("bin");
        for d in [&lib, &bin] {
            fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        copy(&debug.join("libsqlvdi.so"), &lib.join("libsqlvdi.so"))?;
        std::os::unix::fs::symlink(debug.join("vdi-sqlcmd"), bin.join("sqlcmd"))
            .map_err(|e| format!("link sqlcmd: {e}"))?;
        Ok(Self {
            root: root.to_path_buf(),
            work: work.to_path_buf(),
            lib,
            bin,
            engine: debug.join("vdi-engine"),
        })
    }

    fn thirdparty(&self) -> PathBuf {
        self.root.join("../shared/thirdparty")
    }

    fn linux_sample(&self) -> PathBuf {
        self.thirdparty()
            .join("microsoft-sql-server-samples/samples/features/sqlvdi-linux")
    }

    fn build_clients(&self) -> Result<(), String> {
        // Microsoft's Linux sample, with its Makefile.
        let dir = self.work.join("vdipipe");
        mkdir(&dir)?;
        for f in ["Makefile", "vdipipesample.cpp", "vdi.h", "vdierror.h"] {
            copy(&self.linux_sample().join(f), &dir.join(f))?;
        }
        let mut make = Command::new("make");
        make.current_dir(&dir)
            .arg(format!("LD_LIBRARY_PATH={}", self.lib.display()));
        stage("sdk-test: build vdipipesample.cpp (its Makefile)", make)?;

        // BackupX's worker, with its CMakeLists.
        let dir = self.work.join("backupx");
        let sdk = dir.join("sdk");
        mkdir(&sdk)?;
        for f in ["vdi.h", "vdierror.h"] {
            copy(&self.linux_sample().join(f), &sdk.join(f))?;
        }
        let mut configure = Command::new("cmake");
        configure
            .arg("-S")
            .arg(self.thirdparty().join("Awuqing-BackupX/native/sqlvdi"))
            .arg("-B")
            .arg(dir.join("build"))
            .arg(format!("-DSQLVDI_SDK_DIR={}", sdk.display()))
            .arg(format!(
                "-DSQLVDI_LIBRARY={}",
                self.lib.join("libsqlvdi.so").display()
            ))
            .arg("-DCMAKE_BUILD_TYPE=Release");
        stage("sdk-test: configure BackupX (its CMakeLists)", configure)?;
        let mut cmake = Command::new("cmake");
        cmake.arg("--build").arg(dir.join("build"));
        stage("sdk-test: build BackupX", cmake)?;

        // Our own client.
        let dir = self.work.join("own");
        mkdir(&dir)?;
        let mut gxx = Command::new("g++");
        gxx.args([
            "-std=c++11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pthread",
            "-o",
        ])
        .arg(dir.join("sdk_client"))
        .arg("-I")
        .arg(self.root.join("vdi-sdk/include"))
        .arg(self.root.join("vdi-sdk/tests/cpp/sdk_client.cpp"))
        .arg("-L")
        .arg(&self.lib)
        .arg("-lsqlvdi");
        stage("sdk-test: build sdk_client.cpp (ours)", gxx)
    }
}

impl Host for Env {
    /// A client process with the library and `sqlcmd` found, output to `<dir>/<tag>.out|err`.
    fn client(&self, program: &Path, dir: &Path, tag: &str) -> Result<Command, String> {
        let mut cmd = Command::new(program);
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.current_dir(dir)
            .env("LD_LIBRARY_PATH", &self.lib)
            .env("PATH", format!("{}:{path}", self.bin.display()))
            .stdout(file(&dir.join(format!("{tag}.out")))?)
            .stderr(file(&dir.join(format!("{tag}.err")))?);
        Ok(cmd)
    }

    fn engine_program(&self) -> &Path {
        &self.engine
    }
}

/// What a process did.
pub(crate) struct Ran {
    pub(crate) code: Option<i32>,
    pub(crate) out: String,
    pub(crate) err: String,
}

impl Ran {
    pub(crate) fn expect(
        &self,
        what: &str,
        code: i32,
        out_has: &[&str],
        err_has: &[&str],
    ) -> Result<(), String> {
        let missing: Vec<&&str> = out_has
            .iter()
            .filter(|s| !self.out.contains(**s))
            .chain(err_has.iter().filter(|s| !self.err.contains(**s)))
            .collect();
        if self.code != Some(code) || !missing.is_empty() {
            return Err(format!(
                "{what}: exit {:?} (expected {code}), missing {missing:?}\n--- stdout:\n{}\n--- stderr:\n{}",
                self.code,
                tail(&self.out),
                tail(&self.err)
            ));
        }
        println!("=== xtask: sdk-test: ok: {what}");
        Ok(())
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

pub(crate) fn mkdir(d: &Path) -> Result<(), String> {
    fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))
}

pub(crate) fn copy(from: &Path, to: &Path) -> Result<(), String> {
    let bytes = fs::read(from).map_err(|e| format!("{}: {e}", from.display()))?;
    fs::write(to, bytes).map_err(|e| format!("{}: {e}", to.display()))
}

pub(crate) fn file(p: &Path) -> Result<fs::File, String> {
    fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))
}

pub(crate) fn spawn(mut cmd: Command) -> Result<Child, String> {
    cmd.spawn().map_err(|e| format!("cannot run {cmd:?}: {e}"))
}

/// Waits for `child` (killing it past [`RUN_LIMIT`]) and reads its output files.
pub(crate) fn finish(mut child: Child, dir: &Path, tag: &str) -> Result<Ran, String> {
    let start = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s.code();
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{tag}: still running after {}s",
                RUN_LIMIT.as_secs()
            ));
        }
        thread::sleep(Duration::from_millis(20));
    };
    let read = |ext: &str| fs::read_to_string(dir.join(format!("{tag}.{ext}"))).unwrap_or_default();
    Ok(Ran {
        code,
        out: read("out"),
        err: read("err"),
    })
}

pub(crate) fn run_one(cmd: Command, dir: &Path, tag: &str) -> Result<Ran, String> {
    finish(spawn(cmd)?, dir, tag)
}

/// Runs a client and the engine side by side.
pub(crate) fn pair(
    client: Command,
    engine: Command,
    dir: &Path,
    tag: &str,
) -> Result<(Ran, Ran), String> {
    let c = spawn(client)?;
    let e = spawn(engine)?;
    let e = finish(e, dir, &format!("{tag}-engine"))?;
    let c = finish(c, dir, tag)?;
    Ok((c, e))
}

pub(crate) fn log_lines(p: &Path) -> Vec<String> {
    fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn vdipipe(env: &Env) -> Result<(), String> {
    let dir = env.work.join("vdipipe");
    let sample = dir.join("vdipipesample");
    let bak = dir.join("pubs.bak");
    let log = dir.join("sqlcmd.log");
    let run = |tag: &str, op: &str, file: &Path, extra: &str| -> Result<Ran, String> {
        let mut c = env.client(&sample, &dir, tag)?;
        c.args([op, "D", "pubs", "sa", "password"])
            .arg(file)
            .env("VDI_SQLCMD_LOG", &log)
            .env("VDI_SQLCMD_SIZE", "24MiB")
            .env("VDI_SQLCMD_SEED", "12")
            .env("VDI_SQLCMD_ENGINE_ARGS", extra);
        run_one(c, &dir, tag)
    };

    run("backup", "B", &bak, "")?.expect(
        "vdipipesample backup",
        0,
        &[
            "Successfully completed data transfer.",
            "BACKUP DATABASE successfully processed",
        ],
        &[],
    )?;
    let size = fs::metadata(&bak).map(|m| m.len()).unwrap_or(0);
    if size <= 24 << 20 {
        return Err(format!(
            "vdipipesample wrote {size} bytes, expected over 24 MiB"
        ));
    }
    run("restore", "R", &bak, "")?.expect(
        "vdipipesample restore of its backup (every byte checked by the engine)",
        0,
        &[
            "Successfully completed data transfer.",
            "RESTORE DATABASE successfully processed",
        ],
        &[],
    )?;

    // One byte changed in the middle: the engine must notice.
    let bad = dir.join("changed.bak");
    let mut bytes = fs::read(&bak).map_err(|e| e.to_string())?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&bad, bytes).map_err(|e| e.to_string())?;
    run("restore-changed", "R", &bad, "")?.expect(
        "vdipipesample restore of a changed file is refused",
        0,
        &["RESTORE failed"],
        &[],
    )?;

    // The sample's GetCommand waits 90 ms: a longer silence ends its transfer.
    run(
        "silent",
        "B",
        &dir.join("silent.bak"),
        "--silent-at 2 --silent-for 1s",
    )?
    .expect(
        "vdipipesample fails on a pause over its 90 ms GetCommand timeout (its known bug)",
        0,
        &["Unexpected termination: x80770003", "BACKUP failed"],
        &[],
    )?;

    let want = [
        "backup exit=0 devices=1",
        "restore exit=0 devices=1",
        "restore exit=7 devices=1",
        "backup exit=4 devices=1",
    ];
    let got = log_lines(&log);
    if got != want {
        return Err(format!(
            "vdi-sqlcmd's log says {got:?}, expected {want:?} (ok, ok, data mismatch, aborted by the client)"
        ));
    }
    println!("=== xtask: sdk-test: ok: the engine's exit codes behind vdipipesample: {got:?}");
    Ok(())
}

/// BackupX's worker `worker`, run in `dir`: a backup with `VDC_Complete`, a restore of it, a
/// cancel through stdin EOF, an engine-injected abort. Files are named relative to `dir`, so
/// the same runs work for a Windows build under Wine.
pub(crate) fn backupx(env: &dyn Host, dir: &Path, worker: &Path) -> Result<(), String> {
    let dir = dir.to_path_buf();
    let art = Path::new("artifact.bak");
    let client = |tag: &str, op: &str, set: &str, path: &Path| -> Result<Command, String> {
        let mut c = env.client(worker, &dir, tag)?;
        c.args([op, set]).arg(path).arg("").stdin(Stdio::piped());
        Ok(c)
    };

    let (c, e) = pair(
        client("backup", "backup", "bx-backup", art)?,
        env.engine(
            &dir,
            "backup-engine",
            &["backup", "--set", "bx-backup", "--size", "12MiB"],
        )?,
        &dir,
        "backup",
    )?;
    e.expect(
        "engine: BackupX backup",
        0,
        &["BACKUP DATABASE successfully processed"],
        &["VDF_CompleteEnabled", "1 completes"],
    )?;
    c.expect(
        "BackupX backup with VDC_Complete",
        0,
        &["BACKUPX_SQLVDI_READY"],
        &[],
    )?;
    let device_bytes = e
        .err
        .lines()
        .find_map(|l| l.split("device 'bx-backup': ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    let written = fs::metadata(dir.join(art)).map(|m| m.len()).ok();
    if device_bytes.is_none() || device_bytes != written {
        return Err(format!(
            "BackupX wrote {written:?} bytes; the engine sent {device_bytes:?}"
        ));
    }

    let (c, e) = pair(
        client("restore", "restore", "bx-restore", art)?,
        env.engine(&dir, "restore-engine", &["restore", "--set", "bx-restore"])?,
        &dir,
        "restore",
    )?;
    e.expect(
        "engine: BackupX restore (every byte checked)",
        0,
        &["RESTORE DATABASE successfully processed"],
        &["verified: true"],
    )?;
    c.expect("BackupX restore", 0, &["BACKUPX_SQLVDI_READY"], &[])?;

    // Cancel: stdin reaches EOF while the worker waits for the configuration.
    let mut cancel = spawn(client(
        "cancel",
        "backup",
        "bx-cancel",
        Path::new("cancel.bak"),
    )?)?;
    wait_ready(&dir.join("cancel.out"))?;
    drop(cancel.stdin.take());
    finish(cancel, &dir, "cancel")?.expect(
        "BackupX cancelled through stdin EOF",
        1,
        &["BACKUPX_SQLVDI_READY"],
        &["VDI configuration cancelled"],
    )?;

    // The engine aborts the backup: the worker's GetCommand gets VD_E_ABORT.
    let (c, e) = pair(
        client("abort", "backup", "bx-abort", Path::new("abort.bak"))?,
        env.engine(
            &dir,
            "abort-engine",
            &[
                "backup",
                "--set",
                "bx-abort",
                "--size",
                "4MiB",
                "--abort-at",
                "3",
            ],
        )?,
        &dir,
        "abort",
    )?;
    e.expect("engine: --abort-at 3", 5, &[], &["BACKUP failed"])?;
    c.expect(
        "BackupX after an engine abort",
        1,
        &[],
        // VD_E_ABORT reaches GetCommand or CompleteCommand, whichever the worker is in.
        &["failed (VDI 0x80770004)"],
    )
}

/// Waits until the client printed its readiness line.
pub(crate) fn wait_ready(out: &Path) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < RUN_LIMIT {
        if let Ok(f) = fs::File::open(out)
            && BufReader::new(f)
                .lines()
                .any(|l| l.is_ok_and(|l| l.ends_with("_READY")))
        {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{}: no readiness line", out.display()))
}

/// Our own C++ client `program` (`sdk_client` on Linux, `com_client.exe` on Windows), run in
/// `dir`: bad input, then two devices with a secondary process and buffer handles mapped in
/// it, backup then restore. Files are named relative to `dir` (see [`backupx`]).
pub(crate) fn own_client(env: &dyn Host, dir: &Path, program: &Path) -> Result<(), String> {
    let dir = dir.to_path_buf();
    let mut c = env.client(program, &dir, "bad-input")?;
    c.args(["bad-input", "sdk-bad", "bad.bak"]);
    let (c, e) = pair(
        c,
        env.engine(
            &dir,
            "bad-input-engine",
            &["backup", "--set", "sdk-bad", "--size", "2MiB"],
        )?,
        &dir,
        "bad-input",
    )?;
    e.expect("engine: bad-input client", 0, &[], &[])?;
    c.expect(
        "our C++ client: bad input",
        0,
        &["bad-input: every check passed"],
        &[],
    )?;

    mkdir(&dir.join("streams"))?;
    for (op, set) in [("backup", "sdk-two"), ("restore", "sdk-two-r")] {
        let mut c = env.client(program, &dir, op)?;
        c.args(["primary", op, set, "streams"]);
        let second = format!("{set}-2");
        let mut args = vec![
            op,
            "--set",
            set,
            "--device-name",
            set,
            "--device-name",
            &second,
        ];
        args.extend(["--devices", "2", "--max-transfer-size", "128KiB"]);
        if op == "backup" {
            args.extend(["--size", "6MiB"]);
        }
        let (c, e) = pair(
            c,
            env.engine(&dir, &format!("{op}-engine"), &args)?,
            &dir,
            op,
        )?;
        e.expect(
            &format!("engine: two devices, a secondary and mapped buffers ({op})"),
            0,
            &[],
            &[if op == "backup" {
                "2 devices"
            } else {
                "verified: true"
            }],
        )?;
        c.expect(
            &format!("our C++ client: OpenInSecondary + MapBufferHandle across processes ({op})"),
            0,
            &["primary: ok"],
            &["buffers mapped"],
        )?;
    }
    Ok(())
}
