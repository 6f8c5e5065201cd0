//! The Windows half of `cargo xtask sdk-test`: vdi-sdk's `sqlvdi.dll` (the COM server)
//! registered in a Wine prefix of its own, and Microsoft's Windows samples and BackupX's
//! Windows worker, built unchanged with MinGW-w64, run against the reference engine under Wine.
//!
//! Steps:
//!
//! 1. Wine, MinGW-w64 (C and C++) and the Rust target, installed when missing, and the prefix
//!    `target/wine/sdk-prefix` (see [`crate::wine::Wine`]); it is not the prefix of
//!    `wine-test`, whose vdi-win tests insist that no sqlvdi.dll is registered.
//! 2. `cargo build --target x86_64-pc-windows-gnu -p vdi-sdk -p vdi-engine`, then `-p vdi-agent`
//!    on its own (as `wine-test` builds it, so the two share the build), and a check that
//!    `sqlvdi.dll` exports exactly `DllCanUnloadNow`, `DllGetClassObject`, `DllRegisterServer`
//!    and `DllUnregisterServer` (`objdump -p`).
//! 3. Registration through `regsvr32`: a registration, found in the registry with
//!    `ThreadingModel` `Both`; a refusal while the class belongs to another DLL (a Microsoft
//!    path written with `reg add`), with the reason on standard error and the other DLL's
//!    registration untouched; the forced replacement (`VDI_SQLVDI_FORCE_REGISTER=1`);
//!    `regsvr32 /u`, which removes it; and the final registration the clients use.
//! 4. In `target/sdk-test/windows/`: `simple.cpp` and `mthread.cpp` compiled unchanged with
//!    the flags their project files set (Unicode) and `-lole32`, each with `osql.exe` (a copy
//!    of `vdi-sqlcmd.exe`) beside it; BackupX's worker through its own CMakeLists, with the
//!    corpus's Windows SDK headers (the hashes it pins) and the POSIX-thread MinGW compiler
//!    (its `std::thread` needs it); and this project's `vdi-sdk/tests/cpp/com_client.cpp`,
//!    written against our own `vdi_com.h`.
//! 5. The runs, each result asserted:
//!    - simple: a backup, a restore of it with every byte checked by the engine, and a restore
//!      of a copy with one byte changed, which must fail;
//!    - mthread with 1, 3 and 8 devices: a backup, then a restore of it;
//!    - mthread with 3 devices and an engine abort (`--abort-at`): the sample's failure path;
//!    - BackupX: the same four runs as on Linux ([`crate::sdk::backupx`]);
//!    - our client: the same runs as on Linux ([`crate::sdk::own_client`]): bad input, and two
//!      devices with `OpenInSecondaryEx` and buffer handles mapped in a second process;
//!    - `vdi-agent.exe --external --set NAME` (`--backend auto`, which is vdi-win on Windows:
//!      sqlvdi.dll through COM) against `vdi-engine.exe` started on its own, 4 MiB through 1
//!      and 4 devices: a backup (the engine's exit 0 and the agent's, `info --json` saying
//!      `complete`, `verify` clean) and a restore of it with every byte checked by the engine;
//!      each run's vdi-win log (`RUST_LOG=vdi_win=debug`) says it created the set, and Wine's
//!      relay log of each backup (`+relay`, only `CreateFileW` and `FlushFileBuffers`, the
//!      prefix's `RelayInclude`) shows a successful FlushFileBuffers on every stripe file and
//!      the manifest; a restore of a copy whose stripe has one byte changed, which the agent
//!      refuses (its exit 5; the engine's 1, its Read completed with an error) as `verify`
//!      does; and a backup with the class unregistered (`regsvr32 /u`), which fails with
//!      `REGDB_E_CLASSNOTREG` and vdi-win's advice, before the final registration.
//! 6. vdi-sdk's conformance suite under Wine, against vdi-shm's Windows backend and against
//!    vdi-win (the binding made for Microsoft's sqlvdi.dll) over our registered COM server:
//!    the first time vdi-win talks to a real COM server.

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use crate::{
    Outcome, project_root,
    sdk::{self, Host, Ran, copy, file, log_lines, mkdir, pair, run_one},
    stage,
    wine::{MINGW_GXX, Wine},
};

/// The MinGW-w64 C++ compiler with POSIX threads (BackupX uses `std::thread`).
const MINGW_GXX_POSIX: &str = "x86_64-w64-mingw32-g++-posix";
/// The exports `sqlvdi.dll` must have, and no others.
const COM_EXPORTS: &[&str] = &[
    "DllCanUnloadNow",
    "DllGetClassObject",
    "DllRegisterServer",
    "DllUnregisterServer",
];
/// The registry key of the class's DLL.
const INPROC_KEY: &str = r"HKCR\CLSID\{40700425-0080-11D2-851F-00C04FC21759}\InprocServer32";
/// Where SQL Server keeps Microsoft's sqlvdi.dll: the registration ours must not replace.
const MICROSOFT_DLL: &str = r"C:\Program Files\Microsoft SQL Server\160\Shared\sqlvdi.dll";

/// Runs the Windows half, or says why it cannot run here.
pub(crate) fn run() -> Result<Outcome, String> {
    let start = Instant::now();
    let wine = match Wine::setup("sdk-prefix", "sdk-test (Windows)")? {
        Ok(wine) => wine,
        Err(reason) => {
            return Ok(Outcome::Skipped(format!(
                "skipping sdk-test's Windows half: {reason}"
            )));
        }
    };
    let build = wine.cargo(&["build", "-p", "vdi-sdk", "-p", "vdi-engine"]);
    stage(
        "sdk-test (Windows): build sqlvdi.dll, vdi-engine.exe, vdi-sqlcmd.exe",
        build,
    )?;
    // On its own, as wine-test builds it: the same features, so the two stages share the build.
    stage(
        "sdk-test (Windows): build vdi-agent.exe",
        wine.cargo(&["build", "-p", "vdi-agent"]),
    )?;
    let debug = wine.debug_dir();
    check_exports(&debug.join("sqlvdi.dll"))?;

    let root = project_root();
    let work = root.join("target/sdk-test/windows");
    let _ = fs::remove_dir_all(&work);
    let env = WinEnv {
        wine,
        root,
        lib: work.join("lib"),
        engine: debug.join("vdi-engine.exe"),
        agent: debug.join("vdi-agent.exe"),
        work,
    };
    mkdir(&env.lib)?;
    copy(&debug.join("sqlvdi.dll"), &env.lib.join("sqlvdi.dll"))?;
    registration(&env)?;
    env.build_clients(&debug)?;

    println!("\n=== xtask: sdk-test (Windows): runs");
    simple(&env)?;
    mthread(&env)?;
    let dir = env.work.join("backupx");
    sdk::backupx(&env, &dir, &dir.join("build/backupx-sqlvdi.exe"))?;
    let dir = env.work.join("own");
    sdk::own_client(&env, &dir, &dir.join("com_client.exe"))?;
    agent(&env)?;

    // The conformance suite: vdi-shm's Windows backend, and vdi-win over our COM server.
    let mut conformance = env
        .wine
        .cargo(&["test", "-p", "vdi-sdk", "--test", "conformance"]);
    conformance.env("VDI_SDK_COM_REGISTERED", "1");
    stage(
        "sdk-test (Windows): the conformance suite under Wine (vdi-shm; vdi-win over sqlvdi.dll)",
        conformance,
    )?;
    println!(
        "=== xtask: sdk-test (Windows): every client passed in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    Ok(Outcome::Passed)
}

fn check_exports(dll: &Path) -> Result<(), String> {
    let out = Command::new("x86_64-w64-mingw32-objdump")
        .arg("-p")
        .arg(dll)
        .output()
        .map_err(|e| format!("x86_64-w64-mingw32-objdump: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The name table: lines `\t[   0] Name` after its heading, up to the first blank line.
    let mut found: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("[Ordinal/Name Pointer] Table"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split(']').nth(1).map(str::trim))
        .collect();
    found.sort_unstable();
    if !out.status.success() || found != COM_EXPORTS {
        return Err(format!(
            "sqlvdi.dll exports {found:?}, expected exactly {COM_EXPORTS:?}"
        ));
    }
    println!("=== xtask: sdk-test (Windows): sqlvdi.dll exports exactly {COM_EXPORTS:?}");
    Ok(())
}

/// The Windows build and run directories.
struct WinEnv {
    wine: Wine,
    root: PathBuf,
    work: PathBuf,
    lib: PathBuf,
    engine: PathBuf,
    agent: PathBuf,
}

impl Host for WinEnv {
    fn client(&self, program: &Path, dir: &Path, tag: &str) -> Result<Command, String> {
        let mut cmd = self.wine.command(program);
        cmd.current_dir(dir)
            .stdout(file(&dir.join(format!("{tag}.out")))?)
            .stderr(file(&dir.join(format!("{tag}.err")))?);
        Ok(cmd)
    }

    fn engine_program(&self) -> &Path {
        &self.engine
    }
}

impl WinEnv {
    fn samples(&self) -> PathBuf {
        self.root
            .join("../shared/thirdparty/microsoft-sql-server-samples/samples/features/sqlvdi")
    }

    /// `regsvr32 <args> sqlvdi.dll`, run in `lib/`.
    fn regsvr32(&self, tag: &str, args: &[&str], force: bool) -> Result<Ran, String> {
        let mut cmd = self.client(Path::new("regsvr32"), &self.lib, tag)?;
        cmd.args(args).arg("sqlvdi.dll");
        if force {
            cmd.env("VDI_SQLVDI_FORCE_REGISTER", "1");
        }
        run_one(cmd, &self.lib, tag)
    }

    /// The class's registered DLL, read back with `reg query` (`None`: not registered).
    fn registered(&self, tag: &str) -> Result<Option<String>, String> {
        let mut cmd = self.client(Path::new("reg"), &self.lib, tag)?;
        cmd.args(["query", INPROC_KEY]);
        let ran = run_one(cmd, &self.lib, tag)?;
        if ran.code != Some(0) {
            return Ok(None);
        }
        let value = |name: &str| {
            ran.out.lines().find_map(|l| {
                let l = l.trim();
                l.strip_prefix(name)
                    .and_then(|r| r.trim_start().strip_prefix("REG_SZ"))
                    .map(|v| v.trim().to_owned())
            })
        };
        if value("ThreadingModel").as_deref() != Some("Both") {
            return Err(format!(
                "{INPROC_KEY} has no ThreadingModel Both:\n{}",
                ran.out
            ));
        }
        Ok(value("(Default)"))
    }

    /// This DLL's path as Wine names it (`Z:` is the Unix root).
    fn our_dll(&self) -> String {
        format!(
            "Z:{}",
            self.lib
                .join("sqlvdi.dll")
                .display()
                .to_string()
                .replace('/', "\\")
        )
    }

    fn build_clients(&self, debug: &Path) -> Result<(), String> {
        let include = self.samples().join("include");
        for (name, source) in [
            ("simple", "simple/simple.cpp"),
            ("mthread", "mthread/mthread.cpp"),
        ] {
            let dir = self.work.join(name);
            mkdir(&dir)?;
            let mut gxx = Command::new(MINGW_GXX);
            // The flags their project files set: a Unicode console program.
            gxx.args(["-DUNICODE", "-D_UNICODE", "-O2", "-I"])
                .arg(&include)
                .arg("-o")
                .arg(dir.join(format!("{name}.exe")))
                .arg(self.samples().join(source))
                .args(["-lole32", "-static"]);
            stage(
                &format!("sdk-test (Windows): build {name}.cpp (MinGW-w64)"),
                gxx,
            )?;
            copy(&debug.join("vdi-sqlcmd.exe"), &dir.join("osql.exe"))?;
        }

        let dir = self.work.join("backupx");
        let headers = dir.join("sdk");
        mkdir(&headers)?;
        for f in ["vdi.h", "vdierror.h", "vdiguid.h"] {
            copy(&include.join(f), &headers.join(f))?;
        }
        let mut configure = Command::new("cmake");
        configure
            .arg("-S")
            .arg(
                self.root
                    .join("../shared/thirdparty/Awuqing-BackupX/native/sqlvdi"),
            )
            .arg("-B")
            .arg(dir.join("build"))
            .arg("-DCMAKE_SYSTEM_NAME=Windows")
            .arg(format!("-DCMAKE_CXX_COMPILER={MINGW_GXX_POSIX}"))
            .arg(format!("-DSQLVDI_SDK_DIR={}", headers.display()))
            .arg("-DCMAKE_BUILD_TYPE=Release");
        stage(
            "sdk-test (Windows): configure BackupX (its CMakeLists, MinGW-w64)",
            configure,
        )?;
        let mut cmake = Command::new("cmake");
        cmake.arg("--build").arg(dir.join("build"));
        stage("sdk-test (Windows): build BackupX", cmake)?;

        // Our own COM client, written against our own declarations (`vdi_com.h`).
        let dir = self.work.join("own");
        mkdir(&dir)?;
        let mut gxx = Command::new(MINGW_GXX_POSIX);
        gxx.args([
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-DUNICODE",
            "-D_UNICODE",
            "-I",
        ])
        .arg(self.root.join("vdi-sdk/include"))
        .arg("-o")
        .arg(dir.join("com_client.exe"))
        .arg(self.root.join("vdi-sdk/tests/cpp/com_client.cpp"))
        .args(["-lole32", "-static"]);
        stage("sdk-test (Windows): build com_client.cpp (ours)", gxx)
    }
}

/// `regsvr32` registers, refuses to replace another DLL's class, replaces it when forced, and
/// unregisters; the clients then find ours.
fn registration(env: &WinEnv) -> Result<(), String> {
    let ours = env.our_dll();
    let is = |tag: &str, want: Option<&str>, what: &str| -> Result<(), String> {
        let got = env.registered(tag)?;
        if got.as_deref() != want {
            return Err(format!(
                "{what}: the class is registered to {got:?}, expected {want:?}"
            ));
        }
        println!("=== xtask: sdk-test (Windows): ok: {what}");
        Ok(())
    };
    env.regsvr32("register", &["/s"], false)?
        .expect("regsvr32 sqlvdi.dll", 0, &[], &[])?;
    is(
        "query-1",
        Some(&ours),
        "registered to our DLL, ThreadingModel Both",
    )?;
    env.regsvr32("register-again", &["/s"], false)?.expect(
        "regsvr32 again (idempotent)",
        0,
        &[],
        &[],
    )?;

    // Another DLL holds the class, as Microsoft's does on a machine with SQL Server.
    let mut add = env.client(Path::new("reg"), &env.lib, "reg-add")?;
    add.args(["add", INPROC_KEY, "/ve", "/d", MICROSOFT_DLL, "/f"]);
    run_one(add, &env.lib, "reg-add")?.expect("reg add (Microsoft's path)", 0, &[], &[])?;
    let refused = env.regsvr32("refused", &["/s"], false)?;
    if refused.code == Some(0) || !refused.err.contains("VDI_SQLVDI_FORCE_REGISTER=1") {
        return Err(format!(
            "regsvr32 over another DLL's class: exit {:?}, stderr:\n{}",
            refused.code, refused.err
        ));
    }
    if !refused.err.contains(MICROSOFT_DLL) {
        return Err(format!(
            "the refusal does not name the other DLL:\n{}",
            refused.err
        ));
    }
    println!("=== xtask: sdk-test (Windows): ok: regsvr32 refuses to replace another DLL's class");
    is(
        "query-2",
        Some(MICROSOFT_DLL),
        "the other DLL's registration is untouched",
    )?;
    let failed_unregister = env.regsvr32("unregister-other", &["/u", "/s"], false)?;
    if failed_unregister.code == Some(0) {
        return Err("regsvr32 /u removed another DLL's class".to_owned());
    }
    is(
        "query-3",
        Some(MICROSOFT_DLL),
        "regsvr32 /u leaves another DLL's class alone",
    )?;
    env.regsvr32("forced", &["/s"], true)?.expect(
        "regsvr32 with VDI_SQLVDI_FORCE_REGISTER=1",
        0,
        &[],
        &[],
    )?;
    is(
        "query-4",
        Some(&ours),
        "the forced registration replaced it",
    )?;
    env.regsvr32("unregister", &["/u", "/s"], false)?.expect(
        "regsvr32 /u sqlvdi.dll",
        0,
        &[],
        &[],
    )?;
    is("query-5", None, "regsvr32 /u removed the class")?;
    env.regsvr32("register-final", &["/s"], false)?.expect(
        "regsvr32 sqlvdi.dll (for the clients)",
        0,
        &[],
        &[],
    )?;
    is("query-6", Some(&ours), "registered for the clients")
}

/// Runs a sample in its directory with the engine's inputs in the environment.
fn sample(
    env: &WinEnv,
    name: &str,
    tag: &str,
    args: &[&str],
    engine_args: &str,
) -> Result<Ran, String> {
    let dir = env.work.join(name);
    let mut c = env.client(&dir.join(format!("{name}.exe")), &dir, tag)?;
    c.args(args)
        .env("VDI_SQLCMD_LOG", dir.join("osql.log"))
        .env("VDI_SQLCMD_SIZE", "6MiB")
        .env("VDI_SQLCMD_SEED", "21")
        .env("VDI_SQLCMD_ENGINE_ARGS", engine_args);
    run_one(c, &dir, tag)
}

fn simple(env: &WinEnv) -> Result<(), String> {
    let dir = env.work.join("simple");
    let ok = "The SQL command executed successfully.";
    let moved = "Successfully completed data transfer.";
    sample(env, "simple", "backup", &["B"], "")?.expect(
        "simple.cpp backup",
        0,
        &[moved, "BACKUP DATABASE successfully processed", ok],
        &[],
    )?;
    let dump = dir.join("superbak.dmp");
    let size = fs::metadata(&dump).map(|m| m.len()).unwrap_or(0);
    if size <= 6 << 20 {
        return Err(format!(
            "simple.cpp wrote {size} bytes, expected over 6 MiB"
        ));
    }
    sample(env, "simple", "restore", &["R"], "")?.expect(
        "simple.cpp restore of its backup (every byte checked by the engine)",
        0,
        &[moved, "RESTORE DATABASE successfully processed", ok],
        &[],
    )?;
    // One byte changed: the engine refuses, and osql's exit code tells the sample so.
    let good = fs::read(&dump).map_err(|e| e.to_string())?;
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    fs::write(&dump, bad).map_err(|e| e.to_string())?;
    sample(env, "simple", "restore-changed", &["R"], "")?.expect(
        "simple.cpp restore of a changed file fails",
        0,
        &["RESTORE failed", "The SQL command failed."],
        &[],
    )?;
    let want = [
        "backup exit=0 devices=1",
        "restore exit=0 devices=1",
        "restore exit=7 devices=1",
    ];
    let got = log_lines(&dir.join("osql.log"));
    if got != want {
        return Err(format!(
            "osql.exe's log says {got:?}, expected {want:?} (ok, ok, data mismatch)"
        ));
    }
    println!(
        "=== xtask: sdk-test (Windows): ok: the engine's exit codes behind simple.cpp: {got:?}"
    );
    Ok(())
}

fn mthread(env: &WinEnv) -> Result<(), String> {
    let dir = env.work.join("mthread");
    let ok = "The SQL operation was sucessful.";
    let mut want = Vec::new();
    for n in ["1", "3", "8"] {
        sample(env, "mthread", &format!("backup-{n}"), &["B", n], "")?.expect(
            &format!("mthread.cpp backup through {n} devices"),
            0,
            &["BACKUP DATABASE successfully processed", ok],
            &[],
        )?;
        let count: usize = n.parse().map_err(|_| "device count")?;
        for i in 0..count {
            let f = dir.join(format!("multi.{i}.dmp"));
            if fs::metadata(&f).map(|m| m.len()).unwrap_or(0) == 0 {
                return Err(format!("mthread.cpp wrote no {}", f.display()));
            }
        }
        sample(env, "mthread", &format!("restore-{n}"), &["R", n], "")?.expect(
            &format!("mthread.cpp restore through {n} devices (every byte checked)"),
            0,
            &["RESTORE DATABASE successfully processed", ok],
            &[],
        )?;
        want.push(format!("backup exit=0 devices={n}"));
        want.push(format!("restore exit=0 devices={n}"));
    }
    // The engine aborts: the sample sees the SQL side fail, signals abort and exits non-zero.
    let aborted = sample(env, "mthread", "abort", &["B", "3"], "--abort-at 5")?;
    if aborted.code == Some(0) || !aborted.out.contains("BACKUP failed") {
        return Err(format!(
            "mthread.cpp after an engine abort: exit {:?}\n{}",
            aborted.code, aborted.out
        ));
    }
    println!("=== xtask: sdk-test (Windows): ok: mthread.cpp fails after an engine abort");
    want.push("backup exit=5 devices=3".to_owned());
    let got = log_lines(&dir.join("osql.log"));
    if got != want {
        return Err(format!("osql.exe's log says {got:?}, expected {want:?}"));
    }
    println!("=== xtask: sdk-test (Windows): ok: the engine's exit codes behind mthread.cpp");
    Ok(())
}

/// The size of the pseudo-database of each agent run.
const AGENT_SIZE: &str = "4MiB";

/// `vdi-agent.exe <args>` in `dir` (no engine), with vdi-win's debug log on stderr.
fn agent_cmd(env: &WinEnv, dir: &Path, tag: &str, args: &[&str]) -> Result<Command, String> {
    let mut c = env.client(&env.agent, dir, tag)?;
    c.args(args)
        .args(["--no-progress"])
        .env("RUST_LOG", "vdi_win=debug");
    Ok(c)
}

/// Makes Wine's `+relay` channel (on for the agent's backups) log only `CreateFileW` and
/// `FlushFileBuffers`: the prefix's `RelayInclude`.
fn relay_file_calls(env: &WinEnv, dir: &Path) -> Result<(), String> {
    let mut add = env.client(Path::new("reg"), dir, "relay-include")?;
    add.args([
        "add",
        r"HKCU\Software\Wine\Debug",
        "/v",
        "RelayInclude",
        "/d",
        "CreateFileW;FlushFileBuffers",
        "/f",
    ]);
    run_one(add, dir, "relay-include")?.expect(
        "reg add RelayInclude (Wine logs the agent's CreateFileW and FlushFileBuffers)",
        0,
        &[],
        &[],
    )
}

/// The names of the files a successful `FlushFileBuffers` was called on, from a `+relay` log:
/// `TID:Call KERNEL32.CreateFileW(ADDR L"PATH",...)` then `TID:Ret  KERNEL32.CreateFileW()
/// retval=HANDLE` name the handles; `TID:Call KERNEL32.FlushFileBuffers(HANDLE)` then `TID:Ret
/// KERNEL32.FlushFileBuffers() retval=NONZERO` is a flush that worked.
fn flushed_files(log: &str) -> BTreeSet<String> {
    let hex = |s: &str| u64::from_str_radix(s.split([' ', ')']).next().unwrap_or(""), 16).ok();
    let mut opening: HashMap<&str, String> = HashMap::new();
    let mut flushing: HashMap<&str, String> = HashMap::new();
    let mut handles: HashMap<u64, String> = HashMap::new();
    let mut flushed = BTreeSet::new();
    for line in log.lines() {
        let Some((thread, call)) = line.split_once(':') else {
            continue;
        };
        if let Some(args) = call.strip_prefix("Call KERNEL32.CreateFileW(") {
            if let Some(name) = args.split('"').nth(1).and_then(|p| p.rsplit('\\').next()) {
                opening.insert(thread, name.to_owned());
            }
        } else if let Some(ret) = call.strip_prefix("Ret  KERNEL32.CreateFileW() retval=") {
            if let (Some(name), Some(h)) = (opening.remove(thread), hex(ret))
                && h != u64::MAX
            {
                handles.insert(h, name);
            }
        } else if let Some(args) = call.strip_prefix("Call KERNEL32.FlushFileBuffers(") {
            if let Some(name) = hex(args).and_then(|h| handles.get(&h)) {
                flushing.insert(thread, name.clone());
            }
        } else if let Some(ret) = call.strip_prefix("Ret  KERNEL32.FlushFileBuffers() retval=")
            && let Some(name) = flushing.remove(thread)
            && hex(ret).is_some_and(|r| r != 0)
        {
            flushed.insert(name);
        }
    }
    flushed
}

/// The relay log of a backup through `n` devices shows a successful FlushFileBuffers on every
/// stripe file and on the manifest: the agent's fsync, on Windows.
fn flushed_every(ran: &Ran, what: &str, n: &str) -> Result<(), String> {
    let count: u32 = n.parse().map_err(|_| format!("bad device count {n}"))?;
    let flushed = flushed_files(&ran.err);
    let unsynced: Vec<String> = (0..count)
        .map(|i| format!("stripe-{i:02}.vdis"))
        .chain(["manifest.json.tmp".to_owned()])
        .filter(|f| !flushed.contains(f))
        .collect();
    if !unsynced.is_empty() {
        return Err(format!(
            "{what}: no successful FlushFileBuffers on {unsynced:?} (flushed: {flushed:?})"
        ));
    }
    println!(
        "=== xtask: sdk-test (Windows): ok: FlushFileBuffers on every stripe and the manifest \
         ({n} devices)"
    );
    Ok(())
}

/// The agent's log says vdi-win created the set: the run went through COM, to the class
/// registered in the prefix (ours), not through vdi-shm directly.
fn through_com(ran: &Ran, what: &str) -> Result<(), String> {
    let created = ran
        .err
        .lines()
        .any(|l| l.contains("vdi_win") && l.contains("device set created"));
    if !created {
        return Err(format!(
            "{what}: no vdi-win log line 'device set created' on stderr: the agent did not go \
             through sqlvdi.dll\n--- stderr:\n{}",
            ran.err
        ));
    }
    Ok(())
}

/// `vdi-agent.exe --external` (vdi-win over our registered sqlvdi.dll) against `vdi-engine.exe`
/// started on its own: backup and restore through 1 and 4 devices, the engine checking every
/// byte; the manifest complete, `verify` clean, and every stripe and the manifest hardened with
/// FlushFileBuffers; a restore of a stripe with one byte changed refused; and with the class
/// unregistered, the agent fails for that reason.
fn agent(env: &WinEnv) -> Result<(), String> {
    let dir = env.work.join("agent");
    mkdir(&dir)?;
    relay_file_calls(env, &dir)?;
    for n in ["1", "4"] {
        let backup = format!("backup-{n}");
        let set = format!("agent-b{n}");
        let mut c = agent_cmd(
            env,
            &dir,
            &backup,
            &[
                "backup",
                &backup,
                "--external",
                "--set",
                &set,
                "--devices",
                n,
                "--json",
            ],
        )?;
        c.env("WINEDEBUG", "+relay");
        let e = env.engine(
            &dir,
            &format!("{backup}-engine"),
            &[
                "backup",
                "--set",
                &set,
                "--devices",
                n,
                "--size",
                AGENT_SIZE,
            ],
        )?;
        let (c, e) = pair(c, e, &dir, &backup)?;
        e.expect(
            &format!("engine: vdi-agent.exe backup through {n} devices"),
            0,
            &["BACKUP DATABASE successfully processed"],
            &[&format!("{n} devices")],
        )?;
        c.expect(
            &format!("vdi-agent.exe --external backup through {n} devices (vdi-win)"),
            0,
            &[r#""state": "complete""#, &format!(r#""devices": {n}"#)],
            &[],
        )?;
        through_com(&c, &backup)?;
        flushed_every(&c, &backup, n)?;

        let c = agent_cmd(
            env,
            &dir,
            &format!("{backup}-info"),
            &["info", &backup, "--json"],
        )?;
        run_one(c, &dir, &format!("{backup}-info"))?.expect(
            &format!("vdi-agent.exe info: the {n}-device backup is complete"),
            0,
            &[
                r#""state": "complete""#,
                r#""good": true"#,
                &format!(r#""devices": {n}"#),
            ],
            &[],
        )?;
        let c = agent_cmd(env, &dir, &format!("{backup}-verify"), &["verify", &backup])?;
        run_one(c, &dir, &format!("{backup}-verify"))?.expect(
            &format!("vdi-agent.exe verify of the {n}-device backup"),
            0,
            &[],
            &[],
        )?;

        let restore = format!("restore-{n}");
        let set = format!("agent-r{n}");
        let c = agent_cmd(
            env,
            &dir,
            &restore,
            &["restore", &backup, "--external", "--set", &set, "--json"],
        )?;
        let e = env.engine(
            &dir,
            &format!("{restore}-engine"),
            &["restore", "--set", &set, "--devices", n],
        )?;
        let (c, e) = pair(c, e, &dir, &restore)?;
        e.expect(
            &format!("engine: vdi-agent.exe restore through {n} devices (every byte checked)"),
            0,
            &["RESTORE DATABASE successfully processed"],
            &["verified: true"],
        )?;
        c.expect(
            &format!("vdi-agent.exe --external restore through {n} devices (vdi-win)"),
            0,
            &[r#""operation": "restore""#, &format!(r#""devices": {n}"#)],
            &[],
        )?;
        through_com(&c, &restore)?;
    }

    // One byte changed in the middle of the stripe: the agent's checksums refuse it.
    let changed = dir.join("changed");
    mkdir(&changed)?;
    for f in ["manifest.json", "stripe-00.vdis"] {
        copy(&dir.join("backup-1").join(f), &changed.join(f))?;
    }
    let stripe = changed.join("stripe-00.vdis");
    let mut bytes = fs::read(&stripe).map_err(|e| format!("{}: {e}", stripe.display()))?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&stripe, bytes).map_err(|e| format!("{}: {e}", stripe.display()))?;
    let c = agent_cmd(
        env,
        &dir,
        "restore-changed",
        &["restore", "changed", "--external", "--set", "agent-bad"],
    )?;
    let e = env.engine(
        &dir,
        "restore-changed-engine",
        &["restore", "--set", "agent-bad"],
    )?;
    let (c, e) = pair(c, e, &dir, "restore-changed")?;
    c.expect(
        "vdi-agent.exe restore of a stripe with one byte changed fails (exit 5: corrupt)",
        5,
        &[],
        &["payload checksum mismatch"],
    )?;
    // The agent completes the engine's Read with an error: the engine's exit 1.
    e.expect(
        "engine: the restore of the changed stripe failed (a Read completed with an error)",
        1,
        &[],
        &["RESTORE failed", "VDC_Read failed"],
    )?;
    let c = agent_cmd(env, &dir, "verify-changed", &["verify", "changed"])?;
    run_one(c, &dir, "verify-changed")?.expect(
        "vdi-agent.exe verify of the changed stripe fails (exit 5)",
        5,
        &[],
        &[],
    )?;

    // Without the registration the agent cannot create a set: it used the COM class.
    env.regsvr32("agent-unregister", &["/u", "/s"], false)?
        .expect("regsvr32 /u sqlvdi.dll (for the agent)", 0, &[], &[])?;
    let c = agent_cmd(
        env,
        &dir,
        "unregistered",
        &[
            "backup",
            "unregistered",
            "--external",
            "--set",
            "agent-unreg",
            "--connect-timeout",
            "20s",
        ],
    )?;
    let unregistered = run_one(c, &dir, "unregistered")?;
    env.regsvr32("agent-register", &["/s"], false)?.expect(
        "regsvr32 sqlvdi.dll again (for the conformance suite)",
        0,
        &[],
        &[],
    )?;
    unregistered.expect(
        "vdi-agent.exe --external with sqlvdi.dll unregistered fails for that reason",
        1,
        &[],
        &[
            "cannot create the device set 'agent-unreg'",
            "REGDB_E_CLASSNOTREG",
            // vdi-win's advice, which the agent passes on.
            "sqlvdi.dll is not registered",
        ],
    )?;
    if env.registered("agent-query")?.as_deref() != Some(env.our_dll().as_str()) {
        return Err("sqlvdi.dll is not registered again after the agent's runs".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::flushed_files;

    /// A relay log as Wine 8 writes it: two threads interleaved, a failed open, a handle
    /// reused for another file, and a failed flush.
    #[test]
    fn flushed_files_follows_handles_per_thread() {
        let log = r#"0110:Call KERNEL32.CreateFileW(00390120 L"\\\\?\\Z:\\w\\b",00000000)
0110:Ret  KERNEL32.CreateFileW() retval=ffffffffffffffff ret=14090bdd5
0110:Call KERNEL32.CreateFileW(00387b90 L"\\\\?\\Z:\\w\\b\\stripe-00.vdis",40000000)
0110:Ret  KERNEL32.CreateFileW() retval=000000bc ret=14090bdd5
0110:Call KERNEL32.CreateFileW(00388f80 L"\\\\?\\Z:\\w\\b\\stripe-01.vdis",40000000)
0110:Ret  KERNEL32.CreateFileW() retval=000000c4 ret=14090bdd5
0160:Call KERNEL32.FlushFileBuffers(000000c4) ret=140906402
0158:Call KERNEL32.FlushFileBuffers(000000bc) ret=140906402
0158:Ret  KERNEL32.FlushFileBuffers() retval=00000001 ret=140906402
0160:Ret  KERNEL32.FlushFileBuffers() retval=00000000 ret=140906402
0158:Call KERNEL32.CreateFileW(0039e990 L"\\\\?\\Z:\\w\\b\\manifest.json.tmp",40000000)
0158:Ret  KERNEL32.CreateFileW() retval=000000bc ret=14090bdd5
0158:Call KERNEL32.FlushFileBuffers(000000bc) ret=140906402
0158:Ret  KERNEL32.FlushFileBuffers() retval=00000001 ret=140906402
0158:trace:relay:load_list L"RelayInclude" = L"CreateFileW;FlushFileBuffers"
"#;
        let got: Vec<String> = flushed_files(log).into_iter().collect();
        // stripe-01's flush failed; the failed open named no handle.
        assert_eq!(got, ["manifest.json.tmp", "stripe-00.vdis"]);
    }
}
