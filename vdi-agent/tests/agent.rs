//! The agent binary end to end, against the reference engine it starts itself (a child
//! process): backup, restore and verify with 1 and 4 devices, with and without compression;
//! every fault the engine injects, with the agent's message and exit code; damaged backups.

#![cfg(target_os = "linux")]

mod common;

use std::{
    fs,
    process::{Command, Stdio},
};

use common::*;

fn round_trip(devices: u32, compress: bool) {
    let t = scratch();
    let dir = t.path().join("b");
    let extra: &[&str] = if compress { &["--zstd"] } else { &[] };
    let b = backup(&dir, devices, "6MiB", extra);
    assert_eq!(b.code, 0, "backup failed");
    let summary = format!("through {devices} device");
    assert!(b.stderr.contains(&summary), "summary missing");
    for i in 0..devices {
        assert!(stripe(&dir, i).exists());
    }
    let manifest = fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    assert!(
        manifest.contains("\"complete\""),
        "manifest not complete: {manifest}"
    );
    let stored: u64 = (0..devices)
        .map(|i| fs::metadata(stripe(&dir, i)).expect("stripe").len())
        .sum();
    if compress {
        assert!(stored < 6 << 20, "zstd did not compress: {stored}");
    } else {
        assert!(
            stored > 6 << 20,
            "stored stripes hold less than the data: {stored}"
        );
    }
    assert_eq!(verify(&dir).code, 0, "verify failed");
    let r = restore(&dir, &[]);
    assert_eq!(r.code, 0, "restore failed");
    // The engine checks every byte it reads and says so.
    assert!(r.stderr.contains("RESTORE DATABASE successfully processed"));
}

#[test]
fn one_device_round_trip() {
    round_trip(1, false);
}

#[test]
fn one_device_round_trip_compressed() {
    round_trip(1, true);
}

#[test]
fn four_devices_round_trip() {
    round_trip(4, false);
}

#[test]
fn four_devices_round_trip_compressed() {
    round_trip(4, true);
}

#[test]
fn stdout_and_stdin() {
    let t = scratch();
    let file = t.path().join("one.vdis");
    let mut args = vec!["backup", "-", "--size", "3MiB"];
    args.extend(ENGINE);
    let out = Command::new(AGENT)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&file).expect("create"))
        .output()
        .expect("start");
    assert_eq!(finish(&args, &out).code, 0);
    let v = Command::new(AGENT)
        .args(["verify", "-"])
        .stdin(fs::File::open(&file).expect("open"))
        .output()
        .expect("start");
    assert_eq!(finish(&["verify", "-"], &v).code, 0);
    let mut args = vec!["restore", "-"];
    args.extend(ENGINE);
    let r = Command::new(AGENT)
        .args(&args)
        .stdin(fs::File::open(&file).expect("open"))
        .output()
        .expect("start");
    assert_eq!(finish(&args, &r).code, 0);
}

#[test]
fn corrupt_stripe_is_detected_by_verify_and_restore() {
    let t = scratch();
    let dir = t.path().join("b");
    assert_eq!(backup(&dir, 4, "4MiB", &["--zstd"]).code, 0);
    let path = stripe(&dir, 2);
    let mut data = fs::read(&path).expect("read");
    let at = data.len() / 2;
    data[at] ^= 0x40;
    fs::write(&path, data).expect("write");
    let v = verify(&dir);
    assert_eq!(v.code, 5);
    assert!(
        v.stderr.contains("stripe 2"),
        "verify does not name the stripe"
    );
    let r = restore(&dir, &[]);
    assert_eq!(r.code, 5, "restore of a corrupt stripe");
    assert!(r.stderr.contains("stripe 2"));
}

#[test]
fn truncated_stripe_is_detected_by_verify_and_restore() {
    let t = scratch();
    let dir = t.path().join("b");
    assert_eq!(backup(&dir, 4, "4MiB", &[]).code, 0);
    let path = stripe(&dir, 1);
    let len = fs::metadata(&path).expect("meta").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(len - 1000)
        .expect("truncate");
    let v = verify(&dir);
    assert_eq!(v.code, 5);
    assert!(v.stderr.contains("stripe 1") && v.stderr.contains("truncated"));
    let r = restore(&dir, &[]);
    assert_eq!(r.code, 5);
    assert!(r.stderr.contains("truncated"));
}

#[test]
fn missing_stripe_is_detected() {
    let t = scratch();
    let dir = t.path().join("b");
    assert_eq!(backup(&dir, 4, "2MiB", &[]).code, 0);
    fs::remove_file(stripe(&dir, 3)).expect("remove");
    let v = verify(&dir);
    assert_eq!(v.code, 5);
    assert!(v.stderr.contains("stripe 3") && v.stderr.contains("missing"));
    let r = restore(&dir, &[]);
    assert_eq!(r.code, 5);
    assert!(r.stderr.contains("missing"));
}

#[test]
fn a_backup_that_never_flushed_is_removed() {
    let t = scratch();
    let dir = t.path().join("b");
    // The engine aborts before any Flush: nothing was acknowledged, so nothing is left.
    let b = backup(&dir, 2, "2MiB", &["--engine-arg=--abort-at=3"]);
    assert_eq!(b.code, 3);
    assert!(
        b.stderr.contains("nothing was acknowledged"),
        "{}",
        b.stderr
    );
    assert!(!dir.exists(), "the directory the agent created stays");
    let r = restore(&dir, &[]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no such directory"));
}

#[test]
fn not_a_backup_directory() {
    let t = scratch();
    let v = verify(t.path());
    assert_eq!(v.code, 5);
    assert!(v.stderr.contains("manifest"));
}

#[test]
fn refuses_a_directory_that_is_not_empty() {
    let t = scratch();
    fs::write(t.path().join("precious"), b"x").expect("write");
    let b = backup(t.path(), 1, "1MiB", &[]);
    assert_eq!(b.code, 1);
    assert!(b.stderr.contains("not empty"));
    // Not even --force touches a directory the agent did not write.
    let b = backup(t.path(), 1, "1MiB", &["--force"]);
    assert_eq!(b.code, 1);
    assert_eq!(fs::read(t.path().join("precious")).expect("read"), b"x");
}

#[test]
fn engine_abort_fails_the_backup_with_exit_3() {
    let t = scratch();
    let b = backup(
        &t.path().join("b"),
        4,
        "4MiB",
        &["--engine-arg=--abort-at=5"],
    );
    assert_eq!(b.code, 3);
    assert!(b.stderr.contains("abort"), "no word of the abort");
}

#[test]
fn engine_abort_fails_the_restore_with_exit_3() {
    let t = scratch();
    let dir = t.path().join("b");
    assert_eq!(backup(&dir, 2, "4MiB", &[]).code, 0);
    let r = restore(&dir, &["--engine-arg=--abort-at=4"]);
    assert_eq!(r.code, 3);
    assert!(r.stderr.contains("abort"));
}

#[test]
fn error_then_clear_error_is_survived() {
    let t = scratch();
    let dir = t.path().join("b");
    let b = backup(&dir, 2, "4MiB", &["--engine-arg=--error-at=3"]);
    assert_eq!(
        b.code, 0,
        "an unsupported command and ClearError must not fail the backup"
    );
    assert_eq!(restore(&dir, &["--engine-arg=--error-at=2"]).code, 0);
}

#[test]
fn silent_phase_is_waited_out() {
    let t = scratch();
    let dir = t.path().join("b");
    let b = backup(
        &dir,
        2,
        "2MiB",
        &[
            "--engine-arg=--silent-at=2",
            "--engine-arg=--silent-for=1500ms",
        ],
    );
    assert_eq!(b.code, 0);
}

#[test]
fn several_flushes_each_harden_the_stripes() {
    let t = scratch();
    let dir = t.path().join("b");
    let b = backup(&dir, 2, "4MiB", &["--engine-arg=--flushes=3"]);
    assert_eq!(b.code, 0);
    let manifest = fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    assert!(
        manifest.contains("\"checkpoints\": 4") || manifest.contains("\"checkpoints\":4"),
        "3 Flushes and a Complete per stripe: {manifest}"
    );
    assert_eq!(restore(&dir, &[]).code, 0);
}

#[test]
fn a_client_that_never_answers_is_timed_out_by_the_engine() {
    let t = scratch();
    let b = backup(
        &t.path().join("b"),
        1,
        "4MiB",
        &["--server-timeout", "200ms", "--stall-after", "3"],
    );
    assert_eq!(b.code, 3);
    assert!(
        b.stderr.to_lowercase().contains("time"),
        "no word of the timeout"
    );
}

#[test]
fn restore_that_stops_early_is_fine() {
    let t = scratch();
    let dir = t.path().join("b");
    assert_eq!(backup(&dir, 2, "4MiB", &[]).code, 0);
    let r = restore(&dir, &["--engine-arg=--stop-after=64KiB"]);
    assert_eq!(r.code, 0);
    assert!(r.stderr.contains("before the end"));
}

#[test]
fn full_disk_fails_with_exit_6() {
    let mut args = vec!["backup", "-", "--size", "4MiB"];
    args.extend(ENGINE);
    let out = Command::new(AGENT)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(
            fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .expect("/dev/full"),
        )
        .output()
        .expect("start");
    let r = finish(&args, &out);
    assert_eq!(r.code, 6);
    assert!(r.stderr.contains("disk is full"));
}

#[test]
fn no_engine_times_out_with_a_hint() {
    let t = scratch();
    let r = agent(&[
        "backup",
        s(&t.path().join("b")),
        "--external",
        "--connect-timeout",
        "1s",
    ]);
    assert_eq!(r.code, 4);
    assert!(r.stderr.contains("no engine configured the set"));
    assert!(r.stderr.contains("VIRTUAL_DEVICE"));
}
