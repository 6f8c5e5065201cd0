//! `--backend sqlvdi`: the agent through vdi-linux, the binding to Microsoft's libsqlvdi.so,
//! here loaded over vdi-sdk's SDK-compatible library, with the reference engine started
//! separately as SQL Server would be (`--external`). Real processes throughout: the agent, the
//! engine (this same binary, `vdi-agent __engine ...`), and the library loaded with `dlopen`.

#![cfg(target_os = "linux")]

mod common;

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// The longest any one process of these tests may run.
const LIMIT: Duration = Duration::from_secs(120);

fn lib() -> PathBuf {
    vdi_testkit::built_sqlvdi_lib()
}

fn unique(tag: &str) -> String {
    vdi_testkit::unique_name("agent-sqlvdi", tag)
}

/// A running process with its stderr collected in the background.
struct Proc {
    child: Child,
    what: String,
    stderr: thread::JoinHandle<String>,
}

fn start(what: &str, args: &[String]) -> Proc {
    let mut child = Command::new(AGENT)
        .args(args)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let mut pipe = child.stderr.take().expect("piped stderr");
    let stderr = thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    Proc {
        child,
        what: format!("{what}: vdi-agent {}", args.join(" ")),
        stderr,
    }
}

impl Proc {
    /// Waits (bounded; a hang is killed and fails the test) and returns the exit code and
    /// stderr.
    fn finish(mut self) -> (i32, String) {
        let deadline = Instant::now() + LIMIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("{} did not end within {LIMIT:?}", self.what);
            }
            thread::sleep(Duration::from_millis(20));
        };
        let stderr = self.stderr.join().unwrap_or_default();
        let code = status.code().unwrap_or(-1);
        eprintln!("$ {}\n[exit {code}]\n{stderr}", self.what);
        (code, stderr)
    }
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// The agent's arguments for `--backend sqlvdi --external` on the set `set`.
fn agent_args(op: &str, dir: &Path, set: &str, extra: &[&str]) -> Vec<String> {
    let lib = lib();
    let mut a = strings(&[op, s(dir), "--no-progress", "--external", "--set", set]);
    a.extend(strings(&[
        "--backend",
        "sqlvdi",
        "--sqlvdi-lib",
        lib.to_str().expect("utf-8 path"),
    ]));
    a.extend(strings(extra));
    a
}

/// The reference engine, as an external engine: it waits for the agent's set to appear.
fn engine(op: &str, set: &str, devices: u32, extra: &[&str]) -> Proc {
    let mut a = strings(&["__engine", op, "--set", set, "--wait-for-set", "60s"]);
    a.extend(strings(&["--devices", &devices.to_string()]));
    a.extend(strings(&[
        "--block-size",
        "4KiB",
        "--max-transfer-size",
        "256KiB",
    ]));
    a.extend(strings(extra));
    start(&format!("engine {op}"), &a)
}

fn manifest(dir: &Path) -> Value {
    let text = fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    serde_json::from_str(&text).expect("manifest JSON")
}

/// Backs up `size` through `devices` devices into `dir`; returns the agent's stderr.
fn backup(dir: &Path, devices: u32, size: &str) -> String {
    let set = unique(&format!("b{devices}"));
    let n = devices.to_string();
    let agent = start(
        "agent backup",
        &agent_args("backup", dir, &set, &["--devices", &n]),
    );
    let engine = engine("backup", &set, devices, &["--size", size, "--flushes", "3"]);
    let (engine_code, engine_err) = engine.finish();
    let (code, stderr) = agent.finish();
    assert_eq!(engine_code, 0, "the engine's backup: {engine_err}");
    assert_eq!(code, 0, "the agent's backup: {stderr}");
    stderr
}

#[test]
fn backup_and_restore_through_libsqlvdi_one_and_four_devices() {
    for devices in [1, 4] {
        let t = scratch();
        let dir = t.path().join("b");
        let stderr = backup(&dir, devices, "6MiB");
        // The set was made through the library, and the statement to paste names every device
        // with the transfer size and buffer count.
        assert!(stderr.contains("is ready (libsqlvdi.so)"), "{stderr}");
        assert!(stderr.contains("BACKUP DATABASE"), "{stderr}");
        assert!(stderr.contains("MAXTRANSFERSIZE = 4194304"), "{stderr}");
        assert!(
            stderr.contains(&format!("BUFFERCOUNT = {}", 4 * devices)),
            "{stderr}"
        );
        let m = manifest(&dir);
        assert_eq!(m["state"], "complete");
        assert_eq!(
            m["stripes"].as_array().map(Vec::len),
            Some(devices as usize)
        );
        assert_eq!(verify(&dir).code, 0);

        // The restore: the engine checks every byte against the pseudo-database.
        let set = unique(&format!("r{devices}"));
        let agent = start("agent restore", &agent_args("restore", &dir, &set, &[]));
        let engine = engine("restore", &set, devices, &[]);
        let (engine_code, engine_err) = engine.finish();
        let (code, stderr) = agent.finish();
        assert_eq!(
            engine_code, 0,
            "the engine checked every byte: {engine_err}"
        );
        assert_eq!(code, 0, "{stderr}");
        assert!(stderr.contains("RESTORE DATABASE"), "{stderr}");
        assert!(stderr.contains("BLOCKSIZE = 4096"), "{stderr}");
    }
}

#[test]
fn a_changed_byte_fails_the_restore_through_libsqlvdi() {
    let t = scratch();
    let dir = t.path().join("b");
    backup(&dir, 1, "2MiB");
    // One byte of the payload, past the header: the record's checksum catches it before the
    // engine sees a byte of it.
    let stripe = stripe(&dir, 0);
    let mut bytes = fs::read(&stripe).expect("stripe");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    fs::write(&stripe, bytes).expect("write stripe");
    let set = unique("corrupt");
    let agent = start("agent restore", &agent_args("restore", &dir, &set, &[]));
    let engine = engine("restore", &set, 1, &[]);
    let (engine_code, _) = engine.finish();
    let (code, stderr) = agent.finish();
    assert_eq!(code, 5, "{stderr}");
    assert_ne!(engine_code, 0, "the engine must not call the restore good");
}

#[test]
fn an_engine_abort_through_libsqlvdi_leaves_an_aborted_backup() {
    let t = scratch();
    let dir = t.path().join("b");
    let set = unique("abort");
    let agent = start(
        "agent backup",
        &agent_args("backup", &dir, &set, &["--devices", "2"]),
    );
    // After the first of three Flushes, so that the backup holds something durable.
    let engine = engine(
        "backup",
        &set,
        2,
        &["--size", "8MiB", "--flushes", "3", "--abort-at", "12"],
    );
    let (engine_code, _) = engine.finish();
    let (code, stderr) = agent.finish();
    assert_eq!(engine_code, 5, "the engine's --abort-at exit");
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("aborted"), "{stderr}");
    assert_eq!(manifest(&dir)["state"], "aborted");
    assert_ne!(verify(&dir).code, 0);
}

#[test]
fn an_abort_before_the_configuration_names_sql_servers_permission_rules() {
    let t = scratch();
    let dir = t.path().join("b");
    let set = unique("early");
    let agent = start(
        "agent backup",
        &agent_args("backup", &dir, &set, &["--devices", "2"]),
    );
    // The engine's statement names 3 devices, the set has 2: it aborts the set before it
    // configures it, as SQL Server does with a set it cannot open.
    let engine = engine("backup", &set, 3, &["--size", "1MiB"]);
    let (engine_code, _) = engine.finish();
    let (code, stderr) = agent.finish();
    assert_eq!(engine_code, 1);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("aborted before the engine configured the set"),
        "{stderr}"
    );
    assert!(stderr.contains("user mssql"), "{stderr}");
    assert!(stderr.contains("umask 0"), "{stderr}");
    assert!(!dir.exists(), "nothing was acknowledged, nothing stays");
}

#[test]
fn an_agent_killed_mid_backup_through_libsqlvdi_is_noticed_and_incomplete() {
    let t = scratch();
    let dir = t.path().join("b");
    let set = unique("kill");
    let mut agent = start(
        "agent backup",
        &agent_args("backup", &dir, &set, &["--devices", "2"]),
    );
    // The engine flushes, then goes silent for longer than the test: the agent is killed while
    // it waits for the next command, after the first Flush was made durable.
    let engine = engine(
        "backup",
        &set,
        2,
        &[
            "--size",
            "8MiB",
            "--flushes",
            "2",
            "--silent-at",
            "10",
            "--silent-for",
            "10m",
        ],
    );
    let start = Instant::now();
    loop {
        if every_stripe_flushed(&dir) {
            break;
        }
        assert!(start.elapsed() < LIMIT, "no Flush reached the manifest");
        thread::sleep(Duration::from_millis(20));
    }
    agent.child.kill().expect("SIGKILL the agent");
    let (code, _) = agent.finish();
    assert_eq!(code, -1, "killed by a signal");
    // The engine notices the dead client (in its silent phase it still watches the set) and
    // fails the backup instead of waiting out its silence.
    let (engine_code, engine_err) = engine.finish();
    assert_eq!(engine_code, 4, "aborted by the client: {engine_err}");
    assert_eq!(manifest(&dir)["state"], "flushed");
    assert_eq!(verify(&dir).code, 7);
    assert_eq!(restore(&dir, &[]).code, 7);
}

#[test]
fn a_library_that_cannot_be_loaded_is_a_clear_usage_error() {
    let t = scratch();
    let dir = t.path().join("b");
    let run = |lib: &Path| {
        let lib = lib.to_str().expect("utf-8 path");
        agent(&[
            "backup",
            s(&dir),
            "--external",
            "--backend",
            "sqlvdi",
            "--sqlvdi-lib",
            lib,
            "--connect-timeout",
            "1s",
        ])
    };
    let missing = t.path().join("no-such-libsqlvdi.so");
    let r = run(&missing);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no such file"), "{}", r.stderr);
    assert!(
        r.stderr.contains(s(&missing)),
        "the path is named: {}",
        r.stderr
    );

    let text = t.path().join("text.so");
    fs::write(&text, "not a library\n").expect("write");
    let r = run(&text);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not a shared library"), "{}", r.stderr);

    // Our own library with one member's name changed in its dynamic symbol table: a library
    // without SignalAbort.
    let original = fs::read(lib()).expect("read libsqlvdi.so");
    let name = b"_ZN22ClientVirtualDeviceSet11SignalAbortEv";
    let mut patched = original.clone();
    let mut hits = 0;
    let mut i = 0;
    while let Some(at) = patched[i..].windows(name.len()).position(|w| w == name) {
        let at = i + at;
        patched[at + name.len() - 1] = b'X';
        hits += 1;
        i = at + name.len();
    }
    assert!(hits > 0, "the symbol's name is in the library");
    let renamed = t.path().join("libsqlvdi-without-signalabort.so");
    fs::write(&renamed, &patched).expect("write");
    let r = run(&renamed);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("has no ClientVirtualDeviceSet::SignalAbort()"),
        "{}",
        r.stderr
    );

    // The same library marked as built for another machine (ELF e_machine = aarch64).
    let mut foreign = original;
    foreign[18..20].copy_from_slice(&183u16.to_le_bytes());
    let arm = t.path().join("libsqlvdi-aarch64.so");
    fs::write(&arm, &foreign).expect("write");
    let r = run(&arm);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("built for aarch64"), "{}", r.stderr);

    assert!(!dir.exists(), "nothing is created before the library loads");
}
