//! The engine as a library, in a thread next to the client: the finer cases.

#![cfg(any(unix, windows))]

mod common;

use std::{thread, time::Duration};

use common::{Behaviour, End, create, expected_stream, serve, unique};
use vdi_core::{CommandCode, Completion, CompletionCode, Features};
use vdi_engine::{
    AbortedBy, BackupJob, EngineError, FaultPoint, Faults, Operation, Options, Report, RestoreJob,
    TimeoutSource, Warning, format::Region, run_backup_shm, run_restore_shm,
};

const MIB: u64 = 1 << 20;

/// Runs a backup of `job` in a thread while the client serves a new set of `devices` devices.
fn backup(
    devices: u32,
    features: Features,
    options: impl FnOnce(Options) -> Options,
    job: BackupJob,
    b: &Behaviour,
) -> (Result<Report, EngineError>, Vec<common::Seen>) {
    common::init_tracing();
    let name = unique("lib");
    let set = create(&name, devices, features, 0);
    let options = options(Options::new(name.as_str()));
    let engine = thread::spawn(move || run_backup_shm(&options, &job));
    let (_, seen) = serve(&set, &name, devices, b);
    (engine.join().expect("engine thread"), seen)
}

/// Runs a restore in a thread while the client serves `b.streams`.
fn restore(
    options: impl FnOnce(Options) -> Options,
    job: RestoreJob,
    b: &Behaviour,
) -> (Result<Report, EngineError>, Vec<common::Seen>) {
    common::init_tracing();
    let name = unique("libr");
    let set = create(&name, b.streams.len() as u32, Features::LIKE_PIPE, 0);
    let options = options(Options::new(name.as_str()));
    let engine = thread::spawn(move || run_restore_shm(&options, &job));
    let (_, seen) = serve(&set, &name, b.streams.len() as u32, b);
    (engine.join().expect("engine thread"), seen)
}

fn streams(devices: u32, size: u64) -> Vec<Vec<u8>> {
    (0..devices)
        .map(|i| expected_stream(9, size, devices, i, 512, 65536))
        .collect()
}

#[test]
fn the_report_describes_the_run() {
    let (r, seen) = backup(
        3,
        Features::REQUEST_COMPLETE,
        |o| o.max_transfer_size(128 << 10).buffer_count(4),
        BackupJob::new(MIB + 100).seed(9).flushes(2),
        &Behaviour::default(),
    );
    let r = r.unwrap();
    assert_eq!(r.operation, Operation::Backup);
    assert_eq!(r.database_bytes, MIB + 512);
    assert_eq!(r.backup_id, 9);
    assert_eq!(r.config.buffer_count, 4);
    assert_eq!(r.config.device_names.len(), 3);
    assert!(r.config.complete_enabled);
    assert_eq!((r.flushes, r.completes), (6, 3));
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(r.device_bytes[i], s.stream.len() as u64);
    }
    assert_eq!(r.device_bytes.iter().sum::<u64>(), MIB + 512 + 6 * 512);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert!(
        r.message()
            .starts_with("BACKUP DATABASE successfully processed 129 pages in ")
    );
}

#[test]
fn a_short_write_fails_the_backup() {
    let b = Behaviour {
        fail_write: Some((2, Completion::success(100))),
        ..Behaviour::default()
    };
    let (r, seen) = backup(2, Features::LIKE_PIPE, |o| o, BackupJob::new(MIB), &b);
    match r {
        Err(EngineError::ByteCount {
            command: CommandCode::WRITE,
            size: 65536,
            bytes: 100,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(seen.iter().all(|s| s.end == End::Closed));
}

#[test]
fn a_client_abort_is_reported_as_such() {
    let b = Behaviour {
        abort_after: Some(4),
        ..Behaviour::default()
    };
    let (r, _) = backup(2, Features::LIKE_PIPE, |o| o, BackupJob::new(4 * MIB), &b);
    match r {
        Err(
            e @ EngineError::Aborted {
                by: AbortedBy::Client,
                ..
            },
        ) => assert_eq!(e.exit_code(), vdi_engine::Exit::AbortedByClient),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_accepted_fault_command_is_a_warning() {
    let b = Behaviour {
        unsupported: Completion::success(0),
        ..Behaviour::default()
    };
    let mut faults = Faults::default();
    faults.error_at = Some(FaultPoint::on_device(1, 0));
    faults.abort_at = Some(FaultPoint::at(10_000));
    let (r, seen) = backup(
        1,
        Features::LIKE_PIPE,
        |o| o,
        BackupJob::new(MIB).faults(faults),
        &b,
    );
    let r = r.unwrap();
    assert!(matches!(
        r.warnings[0],
        Warning::FaultCommandAccepted {
            command: CommandCode::REWIND,
            ..
        }
    ));
    assert!(matches!(
        r.warnings[1],
        Warning::FaultNotFired { fault: "abort", .. }
    ));
    assert_eq!(seen[0].count(CommandCode::REWIND), 1);
    assert_eq!(seen[0].count(CommandCode::CLEAR_ERROR), 0);
}

#[test]
fn devices_serviced_in_turn_deadlock_as_with_sql_server() {
    // The client serves device 0 to its end before it looks at device 1: device 1's writes
    // hold the shared buffers, device 0 waits for them, and nothing moves until the server
    // timeout ends it.
    let b = Behaviour {
        in_turn: true,
        ..Behaviour::default()
    };
    let (r, seen) = backup(
        2,
        Features::LIKE_PIPE,
        |o| o.server_timeout(Duration::from_millis(300)),
        BackupJob::new(4 * MIB),
        &b,
    );
    match r {
        Err(EngineError::ClientTimeout {
            limit: TimeoutSource::EngineServerTimeout(_),
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(seen[0].end, End::Aborted);
}

#[test]
fn end_of_data_variants_are_accepted() {
    for (eof, after) in [
        (
            CompletionCode::HANDLE_EOF,
            Completion::with_code(CompletionCode::IO_DEVICE),
        ),
        (
            CompletionCode::NO_DATA_DETECTED,
            Completion::with_code(CompletionCode::NO_DATA_DETECTED),
        ),
    ] {
        let b = Behaviour {
            eof_code: eof,
            after_eof: after,
            ..Behaviour::restore(streams(2, MIB))
        };
        let (r, _) = restore(|o| o, RestoreJob::new().read_seed(4), &b);
        let r = r.unwrap();
        assert!(r.verified);
        assert_eq!(r.operation, Operation::Restore);
        assert_eq!((r.database_bytes, r.backup_id), (MIB, 9));
    }
}

#[test]
fn a_duplicate_stream_is_rejected() {
    let s = streams(2, MIB);
    let b = Behaviour::restore(vec![s[0].clone(), s[0].clone()]);
    let (r, _) = restore(|o| o, RestoreJob::new(), &b);
    assert!(
        matches!(r, Err(EngineError::DuplicateStream { index: 0, .. })),
        "{r:?}"
    );
}

#[test]
fn the_block_size_must_be_the_backups() {
    let (r, _) = restore(
        |o| o.block_size(4096),
        RestoreJob::new(),
        &Behaviour::restore(streams(1, MIB)),
    );
    match r {
        Err(
            e @ EngineError::HeaderMismatch {
                field: "block size",
                expected: 4096,
                found: 512,
                ..
            },
        ) => assert!(e.is_data_error()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn garbage_is_not_a_backup() {
    let garbage: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    let (r, _) = restore(|o| o, RestoreJob::new(), &Behaviour::restore(vec![garbage]));
    assert!(matches!(r, Err(EngineError::Header { .. })), "{r:?}");
    let (r, _) = restore(
        |o| o,
        RestoreJob::new(),
        &Behaviour::restore(vec![Vec::new()]),
    );
    assert!(matches!(r, Err(EngineError::Header { .. })), "{r:?}");
}

#[test]
fn misplaced_data_names_the_page_it_holds() {
    // Swap two chunks of device 0's stream: the first byte that differs is in the page number
    // (the magic is the same), and the page header there names the page that was written.
    let mut s = streams(1, MIB);
    let (a, b) = (512usize, 512 + 65536);
    let chunk_a: Vec<u8> = s[0][a..a + 65536].to_vec();
    s[0].copy_within(b..b + 65536, a);
    s[0][b..b + 65536].copy_from_slice(&chunk_a);
    let (r, _) = restore(|o| o, RestoreJob::new(), &Behaviour::restore(s));
    match r {
        Err(EngineError::Mismatch {
            offset,
            region: Region::Data { database_offset: 8 },
            found_page: Some(p),
            ..
        }) => {
            assert_eq!(offset, 520);
            assert_eq!((p.page, p.seed), (8, 9));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_short_successful_read_is_an_error() {
    // Every read of device 0 answers half of what was asked, with success.
    let name = unique("short");
    let set = create(&name, 1, Features::LIKE_PIPE, 0);
    let options = Options::new(name.as_str());
    let engine = thread::spawn(move || run_restore_shm(&options, &RestoreJob::new()));
    use vdi_core::{ClientCommand, ClientDevice, ClientDeviceSet, Timeout};
    set.configuration(Timeout::from(common::WAIT)).unwrap();
    let dev = set.open_device(&name).unwrap();
    while let Ok(cmd) = dev.command(Timeout::from(common::WAIT)) {
        let n = cmd.size() / 2;
        let _ = dev.complete(cmd, Completion::success(n));
    }
    let _ = set.close();
    match engine.join().unwrap() {
        Err(e @ EngineError::ByteCount { .. }) => {
            assert!(e.to_string().contains("short read"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}
