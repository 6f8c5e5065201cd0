//! The `vdi-engine` process against a client in the test process: the engine and its client in
//! different processes, as with SQL Server.

#![cfg(any(unix, windows))]

mod common;

use std::time::Duration;

use common::{
    Behaviour, End, Engine, backup_process, create, expected_stream, restore_process, serve, unique,
};
use vdi_core::{CommandCode, Completion, CompletionCode, Features};
use vdi_engine::{Exit, format::Header};

const MIB: u64 = 1 << 20;

fn code(e: &common::Exit) -> i32 {
    e.code.unwrap_or(-1)
}

#[test]
fn backup_then_restore_one_device() {
    common::init_tracing();
    let (exit_b, cfg, seen) = backup_process(
        "rt1",
        1,
        Features::LIKE_PIPE,
        &[
            "--size",
            "2MiB",
            "--seed",
            "11",
            "--max-transfer-size",
            "128KiB",
        ],
        &Behaviour::default(),
    );
    assert_eq!(code(&exit_b), 0, "{exit_b:?}");
    assert!(
        exit_b
            .stdout
            .starts_with("BACKUP DATABASE successfully processed 256 pages in "),
        "{}",
        exit_b.stdout
    );
    let cfg = cfg.expect("the engine configured the set");
    assert!(cfg.is_backup() && !cfg.complete_enabled());
    assert_eq!((cfg.block_size, cfg.max_transfer_size), (512, 128 << 10));
    let s = &seen[0];
    assert_eq!(s.end, End::Closed);
    assert_eq!(s.count(CommandCode::FLUSH), 1);
    assert_eq!(s.count(CommandCode::COMPLETE), 0);
    assert_eq!(s.codes.last(), Some(&CommandCode::FLUSH));
    // Header, 16 chunks, trailer.
    assert_eq!(s.count(CommandCode::WRITE), 18);
    assert_eq!(s.stream, expected_stream(11, 2 * MIB, 1, 0, 512, 128 << 10));
    let h = Header::parse(&s.stream).unwrap();
    assert_eq!(
        (h.backup_id, h.database_size, h.device_count),
        (11, 2 * MIB, 1)
    );

    // Read it back; the client holds the first data read until the next one arrives (the
    // engine prefetches) and completes the later one first.
    let b = Behaviour {
        hold_second_read: true,
        ..Behaviour::restore(vec![s.stream.clone()])
    };
    let (exit_r, seen) = restore_process(
        "rt1r",
        &["--max-transfer-size", "128KiB", "--seed", "3"],
        &b,
    );
    assert_eq!(code(&exit_r), 0, "{exit_r:?}");
    assert!(
        exit_r
            .stdout
            .starts_with("RESTORE DATABASE successfully processed 256 pages in "),
        "{}",
        exit_r.stdout
    );
    let r = &seen[0];
    assert_eq!(r.end, End::Closed);
    assert_eq!(r.served, s.stream.len() as u64);
    let mut sizes = r.read_sizes.clone();
    assert!(
        sizes
            .iter()
            .all(|&n| n % 512 == 0 && (512..=128 << 10).contains(&n))
    );
    sizes.sort_unstable();
    sizes.dedup();
    assert!(sizes.len() > 3, "read sizes vary: {sizes:?}");
}

#[test]
fn backup_then_restore_four_devices_in_any_order() {
    common::init_tracing();
    let size = 3 * MIB + 512;
    let (exit_b, _, seen) = backup_process(
        "rt4",
        4,
        Features::LIKE_PIPE,
        &[
            "--size",
            &size.to_string(),
            "--seed",
            "42",
            "--devices",
            "4",
        ],
        &Behaviour::default(),
    );
    assert_eq!(code(&exit_b), 0, "{exit_b:?}");
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.end, End::Closed);
        assert_eq!(
            s.stream,
            expected_stream(42, size, 4, i as u32, 512, 65536),
            "device {i}"
        );
    }
    // Device i serves the stream of device (i + 1) % 4.
    let streams = (0..4).map(|i| seen[(i + 1) % 4].stream.clone()).collect();
    let (exit_r, seen_r) = restore_process("rt4r", &["--seed", "7"], &Behaviour::restore(streams));
    assert_eq!(code(&exit_r), 0, "{exit_r:?}");
    for (i, r) in seen_r.iter().enumerate() {
        assert_eq!(r.end, End::Closed);
        assert_eq!(r.served, seen[(i + 1) % 4].stream.len() as u64);
    }
}

/// Backs up `size` bytes on `devices` devices and returns the streams.
fn streams(devices: u32, size: u64) -> Vec<Vec<u8>> {
    (0..devices)
        .map(|i| expected_stream(5, size, devices, i, 512, 65536))
        .collect()
}

#[test]
fn a_corrupted_byte_is_reported_at_its_device_and_offset() {
    let mut s = streams(2, MIB);
    s[1][100_000] ^= 0x20;
    let (exit, seen) = restore_process("corrupt", &[], &Behaviour::restore(s));
    assert_eq!(
        code(&exit),
        i32::from(Exit::DataMismatch.code()),
        "{exit:?}"
    );
    assert!(
        exit.stderr.starts_with("vdi-engine: RESTORE failed: "),
        "{}",
        exit.stderr
    );
    assert!(exit.stderr.contains("-stripe1'"), "{}", exit.stderr);
    assert!(
        exit.stderr.contains("stream offset 100000 "),
        "{}",
        exit.stderr
    );
    // The engine stops, closes the devices: the client sees a normal end.
    assert!(seen.iter().all(|s| s.end == End::Closed), "{seen:?}");
}

#[test]
fn a_truncated_or_too_long_stream_is_reported() {
    let mut s = streams(1, MIB);
    let len = s[0].len();
    s[0].truncate(len - 512 - 4096);
    let (exit, _) = restore_process("trunc", &[], &Behaviour::restore(s));
    assert_eq!(
        code(&exit),
        i32::from(Exit::DataMismatch.code()),
        "{exit:?}"
    );
    assert!(exit.stderr.contains("truncated"), "{}", exit.stderr);
    assert!(
        exit.stderr.contains(&format!("after {} bytes", len - 4608)),
        "{}",
        exit.stderr
    );

    let mut s = streams(1, MIB);
    s[0].extend_from_slice(&[0; 1024]);
    let (exit, _) = restore_process("long", &[], &Behaviour::restore(s));
    assert_eq!(
        code(&exit),
        i32::from(Exit::DataMismatch.code()),
        "{exit:?}"
    );
    assert!(exit.stderr.contains("goes on past"), "{}", exit.stderr);
}

#[test]
fn stop_after_closes_the_devices_early() {
    let s = streams(2, 2 * MIB);
    let (exit, seen) = restore_process(
        "filelist",
        &["--stop-after", "100KiB"],
        &Behaviour::restore(s),
    );
    assert_eq!(code(&exit), 0, "{exit:?}");
    assert!(
        exit.stdout
            .starts_with("RESTORE FILELISTONLY successfully processed "),
        "{}",
        exit.stdout
    );
    for r in &seen {
        assert_eq!(r.end, End::Closed);
        assert_eq!(r.served, 100 << 10);
    }
}

#[test]
fn error_then_clear_error() {
    let (exit, _, seen) = backup_process(
        "clear",
        2,
        Features::LIKE_PIPE,
        &["--size", "1MiB", "--error-at", "3"],
        &Behaviour::default(),
    );
    assert_eq!(code(&exit), 0, "{exit:?}");
    for (i, s) in seen.iter().enumerate() {
        // Header and two chunks, then the refused command, then ClearError, then the rest.
        assert_eq!(
            &s.codes[..5],
            &[
                CommandCode::WRITE,
                CommandCode::WRITE,
                CommandCode::WRITE,
                CommandCode::REWIND,
                CommandCode::CLEAR_ERROR
            ],
            "device {i}"
        );
        assert_eq!(s.stream, expected_stream(1, MIB, 2, i as u32, 512, 65536));
    }

    // In a restore, on device 1 only.
    let (exit, seen) = restore_process(
        "clearr",
        &["--error-at", "2", "--device", "1"],
        &Behaviour::restore(streams(2, MIB)),
    );
    assert_eq!(code(&exit), 0, "{exit:?}");
    assert_eq!(seen[0].count(CommandCode::REWIND), 0);
    assert_eq!(
        &seen[1].codes[..4],
        &[
            CommandCode::READ,
            CommandCode::READ,
            CommandCode::REWIND,
            CommandCode::CLEAR_ERROR
        ]
    );
}

#[test]
fn abort_at_aborts_with_its_own_exit_code() {
    let (exit, _, seen) = backup_process(
        "abort",
        2,
        Features::LIKE_PIPE,
        &["--size", "4MiB", "--abort-at", "5"],
        &Behaviour::default(),
    );
    assert_eq!(
        code(&exit),
        i32::from(Exit::AbortedByFault.code()),
        "{exit:?}"
    );
    assert!(exit.stderr.contains("abort fault"), "{}", exit.stderr);
    assert!(seen.iter().all(|s| s.end == End::Aborted), "{seen:?}");
}

#[test]
fn a_silent_phase_does_not_end_the_run() {
    let (exit, _, seen) = backup_process(
        "silent",
        1,
        Features::LIKE_PIPE,
        &[
            "--size",
            "512KiB",
            "--silent-at",
            "2",
            "--silent-for",
            "700ms",
        ],
        &Behaviour::default(),
    );
    assert_eq!(code(&exit), 0, "{exit:?}");
    assert_eq!(
        seen[0].stream,
        expected_stream(1, 512 << 10, 1, 0, 512, 65536)
    );

    // Before the first read of a restore (the files are being zeroed).
    let (exit, _) = restore_process(
        "silentr",
        &["--silent-at", "0", "--silent-for", "700ms"],
        &Behaviour::restore(streams(1, 512 << 10)),
    );
    assert_eq!(code(&exit), 0, "{exit:?}");
}

#[test]
fn flushes_three_times() {
    let (exit, _, seen) = backup_process(
        "flush3",
        2,
        Features::LIKE_PIPE,
        &["--size", "1MiB", "--flushes", "3"],
        &Behaviour::default(),
    );
    assert_eq!(code(&exit), 0, "{exit:?}");
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.count(CommandCode::FLUSH), 3, "device {i}");
        assert_eq!(s.codes.last(), Some(&CommandCode::FLUSH));
        // The extra flushes are inside the data, not at its end.
        let first = s
            .codes
            .iter()
            .position(|&c| c == CommandCode::FLUSH)
            .unwrap();
        assert!(first < s.codes.len() / 2, "{:?}", s.codes);
        assert_eq!(s.stream, expected_stream(1, MIB, 2, i as u32, 512, 65536));
    }
}

#[test]
fn complete_is_sent_only_when_requested() {
    let cases = [
        (Features::LIKE_PIPE, &[][..], false),
        (Features::REQUEST_COMPLETE, &[][..], true),
        (Features::REQUEST_COMPLETE, &["--no-complete"][..], false),
    ];
    for (features, extra, complete) in cases {
        let mut args = vec!["--size", "256KiB"];
        args.extend_from_slice(extra);
        let (exit, cfg, seen) =
            backup_process("complete", 2, features, &args, &Behaviour::default());
        assert_eq!(code(&exit), 0, "{exit:?}");
        let cfg = cfg.expect("the engine configured the set");
        assert_eq!(cfg.complete_enabled(), complete, "{features:?} {extra:?}");
        for s in &seen {
            assert_eq!(s.count(CommandCode::COMPLETE), usize::from(complete));
            let last = if complete {
                CommandCode::COMPLETE
            } else {
                CommandCode::FLUSH
            };
            assert_eq!(s.codes.last(), Some(&last));
        }
    }
}

#[test]
fn a_client_that_never_answers_times_out() {
    // The engine's override of serverTimeOut.
    let name = unique("mute");
    let set = create(&name, 2, Features::LIKE_PIPE, 0);
    let engine = Engine::start(&[
        "backup",
        "--set",
        &name,
        "--size",
        "1MiB",
        "--server-timeout",
        "200ms",
    ]);
    let _cfg =
        vdi_core::ClientDeviceSet::configuration(&set, vdi_core::Timeout::from(common::WAIT))
            .unwrap();
    let _devices: Vec<_> = (0..2)
        .map(|i| {
            vdi_core::ClientDeviceSet::open_device(&set, &vdi_core::stripe_device_name(&name, i))
                .unwrap()
        })
        .collect();
    let exit = engine.wait();
    assert_eq!(
        code(&exit),
        i32::from(Exit::ClientTimeout.code()),
        "{exit:?}"
    );
    assert!(
        exit.stderr.contains("completed no command"),
        "{}",
        exit.stderr
    );
    assert!(
        exit.stderr.contains("server timeout of 200 ms"),
        "{}",
        exit.stderr
    );

    // The client's own serverTimeOut, honoured.
    let name = unique("mute2");
    let set = create(&name, 1, Features::LIKE_PIPE, 200);
    let engine = Engine::start(&["backup", "--set", &name, "--size", "1MiB"]);
    vdi_core::ClientDeviceSet::configuration(&set, vdi_core::Timeout::from(common::WAIT)).unwrap();
    let _dev = vdi_core::ClientDeviceSet::open_device(&set, &name).unwrap();
    let exit = engine.wait();
    assert_eq!(
        code(&exit),
        i32::from(Exit::ClientTimeout.code()),
        "{exit:?}"
    );
    assert!(
        exit.stderr.contains("serverTimeOut of 200 ms"),
        "{}",
        exit.stderr
    );
}

#[test]
fn a_missing_set_fails_at_once_unless_waited_for() {
    let name = unique("absent");
    let exit = Engine::start(&["backup", "--set", &name, "--size", "1MiB"]).wait();
    assert_eq!(code(&exit), i32::from(Exit::SetNotFound.code()), "{exit:?}");
    assert!(exit.stderr.contains("does not exist"), "{}", exit.stderr);
    assert!(
        exit.stderr.contains("start the client first"),
        "{}",
        exit.stderr
    );

    // With --wait-for-set the engine waits for the client to create the set.
    let name = unique("late");
    let engine = Engine::start(&[
        "backup",
        "--set",
        &name,
        "--size",
        "256KiB",
        "--wait-for-set",
        "30s",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let set = create(&name, 1, Features::LIKE_PIPE, 0);
    let (_, seen) = serve(&set, &name, 1, &Behaviour::default());
    let exit = engine.wait();
    assert_eq!(code(&exit), 0, "{exit:?}");
    assert_eq!(
        seen[0].stream,
        expected_stream(1, 256 << 10, 1, 0, 512, 65536)
    );
}

#[test]
fn a_disk_full_client_fails_the_backup() {
    let b = Behaviour {
        fail_write: Some((3, Completion::with_code(CompletionCode::DISK_FULL))),
        ..Behaviour::default()
    };
    let (exit, _, seen) = backup_process("full", 1, Features::LIKE_PIPE, &["--size", "1MiB"], &b);
    assert_eq!(code(&exit), i32::from(Exit::Failure.code()), "{exit:?}");
    assert!(
        exit.stderr
            .contains("the client reported the device full (ERROR_DISK_FULL, 112)"),
        "{}",
        exit.stderr
    );
    // SQL Server's soft failure: the devices are closed, not aborted.
    assert_eq!(seen[0].end, End::Closed);
}

#[test]
fn help_and_usage() {
    let exit = Engine::start(&["--help"]).wait();
    assert_eq!(code(&exit), 0);
    for word in ["backup", "restore", "Exit codes"] {
        assert!(exit.stdout.contains(word), "{}", exit.stdout);
    }
    let exit = Engine::start(&["backup", "--help"]).wait();
    for flag in [
        "--size",
        "--max-transfer-size",
        "--buffer-count",
        "--abort-at",
        "--wait-for-set",
    ] {
        assert!(exit.stdout.contains(flag), "{flag}: {}", exit.stdout);
    }
    let exit = Engine::start(&["backup", "--set", "x", "--size", "lots"]).wait();
    assert_eq!(code(&exit), i32::from(Exit::Usage.code()));
}
