//! What an administrator must be able to trust, through the binary: an incomplete backup is
//! never called good or restored, a manifest that contradicts its stripes is damage, Ctrl-C
//! and SIGTERM leave a directory that says what it holds, usage errors come before anything
//! starts, and the output says what happened in one unit and within 80 columns.

#![cfg(target_os = "linux")]

mod common;

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

fn manifest(dir: &Path) -> Value {
    let text = fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    serde_json::from_str(&text).expect("manifest JSON")
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let mut m = manifest(dir);
    edit(&mut m);
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&m).expect("json"),
    )
    .expect("write manifest");
}

/// Starts the agent with its stderr collected.
fn spawn(args: &[&str]) -> Child {
    Command::new(AGENT)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vdi-agent")
}

/// Waits (bounded: a failing test fails, it does not hang) until `ready` holds.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "gave up waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

fn wait_output(child: Child, args: &[&str]) -> Run {
    let out = child.wait_with_output().expect("wait for vdi-agent");
    finish(args, &out)
}

/// A 2-device backup that flushes once mid-stream and then goes silent: by the time its
/// manifest says "flushed", the agent is waiting for the engine's next command.
fn backup_paused_after_a_flush(dir: &Path) -> (Child, Vec<String>) {
    let mut args: Vec<String> = ["backup", s(dir), "--devices", "2", "--size", "4MiB"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend(ENGINE.iter().map(|a| a.to_string()));
    args.extend(
        [
            "--engine-arg=--flushes=2",
            "--engine-arg=--silent-at=7",
            "--engine-arg=--silent-for=2m",
        ]
        .iter()
        .map(|a| a.to_string()),
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = spawn(&refs);
    // Every device's first Flush acknowledged (each stores the manifest).
    wait_until("the first Flush on every device", || {
        every_stripe_flushed(dir)
    });
    (child, args)
}

#[test]
fn an_agent_killed_mid_backup_leaves_a_backup_that_verify_and_restore_call_incomplete() {
    let t = scratch();
    let dir = t.path().join("b");
    let (mut child, _) = backup_paused_after_a_flush(&dir);
    child.kill().expect("SIGKILL the agent");
    let _ = child.wait();
    assert_eq!(manifest(&dir)["state"], "flushed");

    let v = verify(&dir);
    assert_eq!(v.code, 7, "verify of an unfinished backup");
    assert!(v.stderr.contains("incomplete:"), "{}", v.stderr);
    assert!(v.stderr.contains("never confirmed"), "{}", v.stderr);
    assert!(v.stderr.contains("checkpoint 1"), "{}", v.stderr);
    assert!(
        !v.stderr.contains(": ok"),
        "an incomplete backup is never ok"
    );

    let r = restore(&dir, &[]);
    assert_eq!(r.code, 7, "restore of an unfinished backup");
    assert!(r.stderr.contains("refusing to restore"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("RESTORE DATABASE"),
        "the engine must not have been involved"
    );

    // Asked for explicitly, the acknowledged part is sent, and the engine (which checks the
    // whole database) fails partway, as SQL Server would.
    let r = restore(&dir, &["--allow-incomplete"]);
    assert!(
        r.stderr.contains("restoring an incomplete backup"),
        "{}",
        r.stderr
    );
    assert_eq!(r.code, 3, "the engine must fail a partial stream");

    let i = agent(&["info", s(&dir), "--json"]);
    assert_eq!(i.code, 0);
    let info: Value = serde_json::from_str(&i.stdout).expect("info JSON");
    assert_eq!(info["state"], "flushed");
    assert_eq!(info["good"], false);
}

#[test]
fn ctrl_c_aborts_marks_the_manifest_and_force_replaces_it() {
    for sig in ["-INT", "-TERM"] {
        let t = scratch();
        let dir = t.path().join("b");
        let (child, args) = backup_paused_after_a_flush(&dir);
        signal(child.id(), sig);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let b = wait_output(child, &refs);
        assert_eq!(b.code, 8, "interrupted by {sig}");
        let lines: Vec<&str> = b.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {:?}", b.stderr);
        assert!(lines[0].contains("interrupted by SIG"), "{}", lines[0]);
        assert!(lines[0].contains("holds an aborted backup"), "{}", lines[0]);
        let m = manifest(&dir);
        assert_eq!(m["state"], "aborted");
        assert!(
            m["reason"]
                .as_str()
                .is_some_and(|r| r.contains("interrupted by SIG")),
            "{m}"
        );
        assert_eq!(verify(&dir).code, 7);
        assert_eq!(restore(&dir, &[]).code, 7);

        // A retry into the directory is refused, saying what it holds and how to replace it.
        let again = backup(&dir, 2, "1MiB", &[]);
        assert_eq!(again.code, 1);
        assert!(again.stderr.contains("aborted backup"), "{}", again.stderr);
        assert!(again.stderr.contains("--force"), "{}", again.stderr);

        // --force removes what the agent wrote, and only that.
        fs::write(dir.join("notes.txt"), b"mine").expect("write");
        let forced = backup(&dir, 2, "1MiB", &["--force"]);
        assert_eq!(
            forced.code, 1,
            "a file the agent did not write stops --force"
        );
        assert!(forced.stderr.contains("notes.txt"), "{}", forced.stderr);
        fs::remove_file(dir.join("notes.txt")).expect("remove");
        let forced = backup(&dir, 2, "1MiB", &["--force"]);
        assert_eq!(forced.code, 0, "{}", forced.stderr);
        assert_eq!(manifest(&dir)["state"], "complete");
        assert_eq!(verify(&dir).code, 0);

        // A complete backup is never replaced.
        let again = backup(&dir, 2, "1MiB", &["--force"]);
        assert_eq!(again.code, 1);
        assert!(
            again.stderr.contains("holds a complete backup"),
            "{}",
            again.stderr
        );
    }
}

#[test]
fn an_engine_abort_after_a_flush_is_recorded_as_aborted() {
    let t = scratch();
    let dir = t.path().join("b");
    let b = backup(
        &dir,
        2,
        "4MiB",
        &["--engine-arg=--flushes=2", "--engine-arg=--abort-at=8"],
    );
    assert_eq!(b.code, 3);
    let m = manifest(&dir);
    assert_eq!(m["state"], "aborted", "{m}");
    let v = verify(&dir);
    assert_eq!(v.code, 7);
    assert!(v.stderr.contains("was aborted"), "{}", v.stderr);
}

#[test]
fn a_killed_engine_is_reported_as_dead() {
    let t = scratch();
    let dir = t.path().join("b");
    let (child, args) = backup_paused_after_a_flush(&dir);
    // The reference engine is the agent's only child.
    let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
        .expect("children of the agent");
    let engine = children.split_whitespace().next().expect("an engine child");
    signal(engine.parse().expect("pid"), "-KILL");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let b = wait_output(child, &refs);
    assert_eq!(b.code, 3);
    assert!(b.stderr.contains("the engine died"), "{}", b.stderr);
    assert!(!b.stderr.contains("SignalAbort"), "{}", b.stderr);
    let named = (0..2)
        .filter(|i| b.stderr.contains(&format!("device {i}")))
        .count();
    assert_eq!(named, 1, "one device named: {}", b.stderr);
}

#[test]
fn restore_takes_the_block_size_from_the_manifest() {
    let t = scratch();
    let dir = t.path().join("b");
    let b = agent(&[
        "backup",
        s(&dir),
        "--devices",
        "2",
        "--size",
        "2MiB",
        "--block-size",
        "4096",
    ]);
    assert_eq!(b.code, 0);
    assert_eq!(manifest(&dir)["block_size"], 4096);
    let r = agent(&["restore", s(&dir)]);
    assert_eq!(r.code, 0, "restore with the backup's own block size");
    let r = agent(&["restore", s(&dir), "--block-size", "8KiB"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("8192") && r.stderr.contains("4096"),
        "{}",
        r.stderr
    );
}

#[test]
fn the_built_in_engine_has_the_reference_engines_defaults() {
    let t = scratch();
    let dir = t.path().join("b");
    assert_eq!(agent(&["backup", s(&dir), "--size", "256KiB"]).code, 0);
    let m = manifest(&dir);
    // vdi-engine's defaults, which are SQL Server's: BLOCKSIZE 512, MAXTRANSFERSIZE 64 KiB.
    assert_eq!(
        (m["block_size"].as_u64(), m["max_transfer_size"].as_u64()),
        (Some(512), Some(65536))
    );
}

#[test]
fn a_manifest_that_contradicts_its_stripes_is_damage() {
    let t = scratch();
    let dir = t.path().join("b");
    assert_eq!(backup(&dir, 2, "2MiB", &[]).code, 0);
    fs::copy(dir.join("manifest.json"), t.path().join("good.json")).expect("copy");
    let restore_good = || {
        fs::copy(t.path().join("good.json"), dir.join("manifest.json")).expect("copy");
    };

    edit_manifest(&dir, |m| m["block_size"] = 8192.into());
    let v = verify(&dir);
    assert_eq!(v.code, 5);
    assert!(
        v.stderr
            .contains("block size is 4096, the manifest has 8192"),
        "{}",
        v.stderr
    );
    assert_eq!(agent(&["restore", s(&dir)]).code, 5);

    restore_good();
    edit_manifest(&dir, |m| {
        m["codec"] = serde_json::json!({"name": "zstd", "level": 3})
    });
    let v = verify(&dir);
    assert_eq!(v.code, 5);
    assert!(
        v.stderr.contains("codec is stored, the manifest has zstd"),
        "{}",
        v.stderr
    );

    restore_good();
    edit_manifest(&dir, |m| m["max_transfer_size"] = 65536.into());
    assert_eq!(verify(&dir).code, 5);

    restore_good();
    fs::copy(stripe(&dir, 1), dir.join("stripe-04.vdis")).expect("copy");
    let v = verify(&dir);
    assert_eq!(v.code, 5);
    assert!(v.stderr.contains("stripe-04.vdis"), "{}", v.stderr);
    assert_eq!(restore(&dir, &[]).code, 5);
    fs::remove_file(dir.join("stripe-04.vdis")).expect("remove");

    // Two stripes swapped.
    fs::rename(stripe(&dir, 0), t.path().join("x")).expect("rename");
    fs::rename(stripe(&dir, 1), stripe(&dir, 0)).expect("rename");
    fs::rename(t.path().join("x"), stripe(&dir, 1)).expect("rename");
    assert_eq!(verify(&dir).code, 5);
}

#[test]
fn nothing_is_left_behind_when_no_engine_comes() {
    let t = scratch();
    let dir = t.path().join("b");
    let r = agent(&[
        "backup",
        s(&dir),
        "--external",
        "--connect-timeout",
        "1500ms",
    ]);
    assert_eq!(r.code, 4);
    assert!(
        r.stderr.contains("within 1500ms"),
        "the timeout as given: {}",
        r.stderr
    );
    assert!(!dir.exists(), "the directory the agent created stays");

    // The set name is taken: refused before any data, directory removed.
    let (holder, _) = backup_paused_after_a_flush(&t.path().join("first"));
    let mut holder = holder;
    let set = {
        let m = manifest(&t.path().join("first"));
        m["set_name"].as_str().expect("set name").to_owned()
    };
    let r = agent(&["backup", s(&dir), "--set", &set, "--size", "1MiB"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("cannot create the device set"),
        "{}",
        r.stderr
    );
    assert!(!dir.exists(), "the directory the agent created stays");
    holder.kill().expect("kill");
    let _ = holder.wait();
}

#[test]
fn ctrl_c_on_demo_removes_its_temporary_directory() {
    let t = scratch();
    let args = ["demo", "--size", "512MiB", "--devices", "2"];
    let child = Command::new(AGENT)
        .args(args)
        .env("TMPDIR", t.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start demo");
    wait_until("the demo's first stripe", || {
        fs::read_dir(t.path()).is_ok_and(|mut d| {
            d.any(|e| e.is_ok_and(|e| e.path().join("backup").join("stripe-00.vdis").exists()))
        })
    });
    signal(child.id(), "-INT");
    let r = wait_output(child, &args);
    assert_eq!(r.code, 8);
    let left: Vec<_> = fs::read_dir(t.path()).expect("read").collect();
    assert!(left.is_empty(), "the demo left {left:?}");
}

#[test]
fn free_space_is_checked_before_a_backup_of_known_size() {
    let t = scratch();
    let dir = t.path().join("b");
    let r = agent(&["backup", s(&dir), "--size", "100TiB"]);
    assert_eq!(r.code, 6);
    assert!(r.stderr.contains("not enough free space"), "{}", r.stderr);
    assert!(!dir.exists());
    // With zstd the ratio is unknown: a warning, and the backup starts (here the engine
    // aborts it at once).
    let r = agent(&[
        "backup",
        s(&dir),
        "--size",
        "100TiB",
        "--zstd",
        "--engine-arg=--abort-at=0",
    ]);
    assert!(
        r.stderr.contains("fits only if zstd shrinks it"),
        "{}",
        r.stderr
    );
    assert_eq!(r.code, 3);
}

#[test]
fn usage_errors_are_exit_2_printed_once_before_anything_starts() {
    let t = scratch();
    let dir = t.path().join("b");
    let file = t.path().join("f");
    fs::write(&file, b"x").expect("write");
    let nope = t.path().join("nope");
    let cases: [&[&str]; 9] = [
        &["backup", s(&dir), "--block-size", "1000"],
        &["backup", s(&dir), "--block-size", "128KiB"],
        &["backup", s(&dir), "--max-transfer-size", "100000"],
        &["backup", s(&dir), "--buffer-count", "0"],
        &["backup", "-", "--devices", "2"],
        &["backup", s(&file)],
        &["backup", s(&dir), "--connect-timeout", "5 parsecs"],
        &["verify", s(&nope)],
        &["restore", s(&nope)],
    ];
    for args in cases {
        let r = agent(args);
        assert_eq!(r.code, 2, "{args:?}");
        assert!(!dir.exists(), "{args:?} created the directory");
        let first = r.stderr.lines().next().unwrap_or_default().to_owned();
        assert_eq!(
            r.stderr.matches(&first[..first.len().min(40)]).count(),
            1,
            "{args:?} printed its error more than once: {}",
            r.stderr
        );
    }
    let r = agent(&["verify", s(&t.path().join("nope"))]);
    assert!(r.stderr.contains("no such directory"), "{}", r.stderr);
}

#[test]
fn one_syntax_for_sizes_and_durations() {
    let t = scratch();
    let dir = t.path().join("b");
    let b = backup(
        &dir,
        1,
        "1.5MiB",
        &["--connect-timeout", "1m30s", "--server-timeout", "0"],
    );
    assert_eq!(b.code, 0);
    // 1.5 MiB of database, and a 4 KiB header and trailer block.
    assert_eq!(manifest(&dir)["stripes"][0]["raw_bytes"], 1_572_864 + 8192);
    assert!(b.stderr.contains("1.51 MiB"), "{}", b.stderr);
    // One rate unit: MiB/s in the summary; the engine's line says MB/sec as SQL Server's does,
    // counting the same 2^20 bytes.
    assert!(b.stderr.contains(" MiB/s)"), "{}", b.stderr);
    assert!(!b.stderr.contains("GB/s"), "{}", b.stderr);
    assert!(
        b.stderr.contains("through 1 device "),
        "singular: {}",
        b.stderr
    );
}

#[test]
fn verify_reads_a_single_stripe_file() {
    let t = scratch();
    let dir = t.path().join("b");
    assert_eq!(backup(&dir, 4, "2MiB", &["--zstd"]).code, 0);
    let v = agent(&["verify", s(&stripe(&dir, 2))]);
    assert_eq!(v.code, 0);
    assert!(v.stderr.contains("stripe 2 of 4"), "{}", v.stderr);
}

#[test]
fn info_list_and_json_describe_backups() {
    let t = scratch();
    let dir = t.path().join("nightly");
    let b = agent(&[
        "backup",
        s(&dir),
        "--devices",
        "2",
        "--size",
        "2MiB",
        "--zstd",
        "--json",
        "--block-size",
        "4KiB",
        "--max-transfer-size",
        "256KiB",
    ]);
    assert_eq!(b.code, 0);
    let summary: Value = serde_json::from_str(&b.stdout).expect("backup --json");
    assert_eq!(summary["operation"], "backup");
    assert_eq!(summary["state"], "complete");
    assert_eq!(
        summary["raw_bytes"].as_u64(),
        Some(2 * (4096 + 4096) + (2 << 20))
    );

    let i = agent(&["info", s(&dir)]);
    assert_eq!(i.code, 0);
    for field in [
        "state: complete",
        "devices: 2 stripes",
        "codec: zstd level 1",
        "block size: 4096",
        "created: 20",
        "finished: 20",
        "confirmed by: VDC_Complete",
        "engine: BACKUP DATABASE successfully processed",
    ] {
        assert!(i.stdout.contains(field), "{field} missing: {}", i.stdout);
    }
    let i = agent(&["info", s(&dir), "--json"]);
    let info: Value = serde_json::from_str(&i.stdout).expect("info --json");
    assert_eq!(info["state"], "complete");
    assert_eq!(info["good"], true);
    assert_eq!(info["devices"], 2);
    assert_eq!(info["codec"]["name"], "zstd");
    assert!(info["ratio"].as_f64().is_some_and(|r| r > 1.0));
    assert!(info["created"].as_str().is_some_and(|c| c.ends_with('Z')));

    let v = agent(&["verify", s(&dir), "--json"]);
    let verified: Value = serde_json::from_str(&v.stdout).expect("verify --json");
    assert_eq!(verified["state"], "complete");
    let r = agent(&["restore", s(&dir), "--json"]);
    let restored: Value = serde_json::from_str(&r.stdout).expect("restore --json");
    assert_eq!(restored["devices"], 2);

    fs::create_dir(t.path().join("empty")).expect("mkdir");
    let l = agent(&["list", s(t.path())]);
    assert_eq!(l.code, 0);
    assert_eq!(l.stdout.lines().count(), 1, "{}", l.stdout);
    assert!(
        l.stdout.starts_with("nightly") && l.stdout.contains("complete"),
        "{}",
        l.stdout
    );
    let l = agent(&["list", s(t.path()), "--json"]);
    let list: Value = serde_json::from_str(&l.stdout).expect("list --json");
    assert_eq!(list.as_array().map(Vec::len), Some(1));
}

#[test]
fn completions_and_man_page_are_generated() {
    let c = agent(&["completions", "bash"]);
    assert_eq!(c.code, 0);
    assert!(c.stdout.contains("vdi-agent") && c.stdout.contains("--allow-incomplete"));
    let m = agent(&["man"]);
    assert_eq!(m.code, 0);
    assert!(
        m.stdout.starts_with(".ie") || m.stdout.contains(".TH"),
        "{}",
        &m.stdout[..200.min(m.stdout.len())]
    );
}

/// Runs the agent in a pseudo-terminal of 80 columns (util-linux's `script`) and returns what
/// the terminal showed.
fn in_terminal(args: &str) -> String {
    let cmd = format!("stty cols 80 rows 40; {AGENT} {args}");
    let out = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `text` without terminal escape sequences, split at every carriage return and newline.
fn screen_lines(text: &str) -> Vec<String> {
    let mut lines = vec![String::new()];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // Cursor movement and erasure: what follows is drawn elsewhere.
                lines.push(String::new());
                if chars.peek() == Some(&'[') {
                    chars.next();
                    while let Some(&n) = chars.peek() {
                        chars.next();
                        if n.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' | '\n' => lines.push(String::new()),
            c => lines.last_mut().expect("a line").push(c),
        }
    }
    lines
}

/// The progress rows of what an 80-column terminal showed: indicatif pads every line to the
/// terminal's width and lets the terminal wrap, so a drawn segment is cut into rows of 80, as
/// the terminal does. (The summary and messages are left out: they wrap like any text.)
fn progress_rows(text: &str) -> Vec<String> {
    let mut rows = Vec::new();
    for l in screen_lines(text) {
        let t = l.trim_start();
        if ["backup:", "restore:", "verify:", "engine:", "vdi-agent:"]
            .iter()
            .any(|p| t.starts_with(p))
        {
            continue;
        }
        let chars: Vec<char> = l.chars().collect();
        rows.extend(chars.chunks(80).map(|c| c.iter().collect::<String>()));
    }
    rows
}

/// The "done/total" of a bar's row, in bytes: `... ]   4.77 MiB/64.03 MiB ...`.
fn bar_counts(row: &str) -> Option<(f64, f64)> {
    let after = row.split_once(']')?.1;
    let mut t = after.split_whitespace();
    let (n, mid, unit) = (t.next()?, t.next()?, t.next()?);
    let (unit_a, m) = mid.split_once('/')?;
    let scale = |u: &str| match u {
        "B" => Some(1.0),
        "KiB" => Some(1024.0),
        "MiB" => Some(1024.0 * 1024.0),
        "GiB" => Some(1024.0 * 1024.0 * 1024.0),
        _ => None,
    };
    Some((
        n.parse::<f64>().ok()? * scale(unit_a)?,
        m.parse::<f64>().ok()? * scale(unit)?,
    ))
}

/// Checks that every progress row begins with its label: a line longer than 80 columns would
/// leave its tail at the start of a row of its own.
fn assert_rows_fit(shown: &str) -> Vec<String> {
    let labels = ["backup [", "restore [", "verify [", "device ", "stored"];
    let rows = progress_rows(shown);
    for r in &rows {
        let t = r.trim();
        assert!(
            t.is_empty() || labels.iter().any(|l| t.starts_with(l)),
            "a progress line does not fit 80 columns: row {r:?} in {shown:?}"
        );
    }
    rows
}

#[test]
fn progress_fits_80_columns_and_shows_every_phase() {
    let t = scratch();
    let dir = t.path().join("b");
    let shown = in_terminal(&format!(
        "backup {} --devices 4 --size 64MiB --zstd --block-size 4KiB --max-transfer-size 64KiB \
         --engine-arg=--silent-at=20 --engine-arg=--silent-for=700ms",
        s(&dir)
    ));
    let lines = assert_rows_fit(&shown);
    assert!(lines.iter().any(|l| l.contains("device 3")), "{shown}");
    assert!(
        lines.iter().any(|l| l.contains("stored")),
        "the compressed size: {shown}"
    );
    assert!(
        lines.iter().any(|l| l.contains(" left")),
        "labelled ETA: {shown}"
    );
    assert!(
        lines.iter().any(|l| bar_counts(l).is_some()),
        "no bar read: {shown}"
    );
    for l in &lines {
        if let Some((done, total)) = bar_counts(l) {
            assert!(done <= total, "a bar past 100%: {l:?}");
        }
    }

    let shown = in_terminal(&format!(
        "restore {} --verify-first --max-transfer-size 64KiB --engine-arg=--silent-at=20 \
         --engine-arg=--silent-for=700ms",
        s(&dir)
    ));
    let lines = assert_rows_fit(&shown);
    assert!(
        lines.iter().any(|l| l.trim_start().starts_with("verify")),
        "a verify phase: {shown}"
    );
    assert!(
        lines.iter().any(|l| l.trim_start().starts_with("restore")),
        "{shown}"
    );
}

#[test]
fn a_terminal_is_never_a_backup() {
    let t = scratch();
    let shown = in_terminal("backup - --size 1MiB");
    assert!(
        shown.contains("refusing to write a backup to a terminal"),
        "{shown}"
    );
    let shown = in_terminal("restore -");
    assert!(
        shown.contains("refusing to read a backup from a terminal"),
        "{shown}"
    );
    let _ = t;
}

/// Runs the agent as a user that file modes apply to: this user, or `nobody` through
/// util-linux's `setpriv` when the tests run as root (whom modes do not stop).
fn agent_unprivileged(args: &[&str]) -> Run {
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", AGENT]);
        c
    } else {
        Command::new(AGENT)
    };
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("start vdi-agent");
    finish(args, &out)
}

#[test]
fn a_permission_error_names_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let t = scratch();
    let dir = t.path().join("b");
    assert_eq!(backup(&dir, 2, "1MiB", &[]).code, 0);
    for p in [t.path(), dir.as_path()] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    for e in fs::read_dir(&dir).expect("read") {
        let p = e.expect("entry").path();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    fs::set_permissions(stripe(&dir, 1), fs::Permissions::from_mode(0o000)).expect("chmod");
    let v = agent_unprivileged(&["verify", s(&dir)]);
    assert_eq!(v.code, 6, "{}", v.stderr);
    assert!(v.stderr.contains(s(&stripe(&dir, 1))), "{}", v.stderr);
    assert!(v.stderr.contains("permission denied"), "{}", v.stderr);
}
