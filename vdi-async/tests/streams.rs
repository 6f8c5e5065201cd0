//! Backup and restore through the async API with the engine in another process (this test
//! binary re-run as `child_engine`), for 1 and 4 devices, every byte checked in stream order;
//! and a restore the engine ends early (FILELISTONLY), which must end cleanly.

mod common;

use std::{io, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use common::{Checker, ChildProc, Outcome, Plan, Source};
use tokio::io::AsyncReadExt;
use vdi_async::{
    AsyncSet, BackupReader, BackupSink, backup_to, restore_from, restore_from_reader, serve_all,
};
use vdi_core::{ClientConfig, CommandCode, Completion, Features};
use vdi_shm::{ClientSet, ShmClient};

/// The child: the engine side of the plan in `VDI_ROLE`; fails unless every device succeeded.
#[test]
fn child_engine() {
    let Some(role) = common::role() else { return };
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    let (name, plan) = Plan::from_env();
    let outcomes = match role.as_str() {
        "backup" => common::serve_backup(&name, plan),
        "restore" => common::serve_restore(&name, plan, None),
        "restore_early" => {
            common::serve_restore(&name, plan, Some(common::param_u64("VDI_STOP_AFTER")))
        }
        other => panic!("unknown role {other}"),
    };
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Ok),
        "engine outcomes: {outcomes:?}"
    );
}

async fn create(name: &str, devices: u32) -> AsyncSet<ClientSet> {
    let cfg = ClientConfig {
        device_count: devices,
        ..ClientConfig::default()
    };
    AsyncSet::create(&ShmClient::new(), None, name, &cfg)
        .await
        .expect("CreateEx")
}

fn names(name: &str, devices: u32) -> Vec<String> {
    (0..devices).map(|i| common::device_name(name, i)).collect()
}

async fn finish(set: AsyncSet<ClientSet>, engine: ChildProc) {
    set.close().await.expect("Close");
    drop(set);
    let status = tokio::task::spawn_blocking(move || engine.wait(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(status.success(), "engine process failed");
}

/// One device read as an `AsyncRead` in pieces that straddle the Writes, with three Writes
/// outstanding at most; the Flush comes as a barrier after the last byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_1_device_as_async_read() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(120));
    let plan = Plan {
        devices: 1,
        block: 65536,
        max_transfer: 1 << 20,
        depth: 4,
        bytes: 24 << 20,
    };
    let name = common::unique_name("backup1");
    let set = create(&name, 1).await;
    let engine = ChildProc::spawn("child_engine", "backup", &plan.params(&name));
    let config = set.configuration().await.unwrap();
    assert!(config.features.contains(Features::WRITE_MEDIA));
    let device = set
        .open_device(&name)
        .await
        .unwrap()
        .with_max_outstanding(3);
    let mut reader = BackupReader::new(&device);
    let mut checker = Checker::new(0);
    let mut buf = vec![0u8; 100_003];
    let mut flushes = 0;
    loop {
        let n = reader.read(&mut buf).await.unwrap();
        if n > 0 {
            checker.next(&buf[..n]);
            continue;
        }
        let Some(barrier) = reader.take_barrier() else {
            break;
        };
        assert_eq!(barrier.code(), CommandCode::FLUSH);
        assert_eq!(
            checker.offset, plan.bytes,
            "the Flush comes after every byte"
        );
        barrier.complete(Completion::success(0)).unwrap();
        flushes += 1;
    }
    assert!(reader.is_ended());
    assert_eq!(
        (checker.offset, reader.bytes_read(), flushes),
        (plan.bytes, plan.bytes, 1)
    );
    drop((reader, device));
    finish(set, engine).await;
}

/// A sink that checks every byte in order and remembers where it was last made durable.
struct CheckSink {
    checker: Checker,
    durable: u64,
}

#[async_trait]
impl BackupSink for CheckSink {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.checker.next(&data);
        Ok(())
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.durable = self.checker.offset;
        Ok(())
    }
}

/// Four devices served at once by `serve_all`, each by `backup_to` into a checking sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_4_devices_to_sinks() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(120));
    let plan = Plan {
        devices: 4,
        block: 4096,
        max_transfer: 256 << 10,
        depth: 3,
        bytes: 6 << 20,
    };
    let name = common::unique_name("backup4");
    let set = create(&name, plan.devices).await;
    let engine = ChildProc::spawn("child_engine", "backup", &plan.params(&name));
    set.configuration().await.unwrap();
    let results = serve_all(&set, names(&name, plan.devices), |device| async move {
        let mut sink = CheckSink {
            checker: Checker::new(device.index()),
            durable: 0,
        };
        let summary = backup_to(&device, &mut sink).await?;
        Ok::<_, io::Error>((summary, sink.durable))
    })
    .await
    .unwrap();
    for (summary, durable) in results {
        assert_eq!(summary.bytes, plan.bytes);
        assert_eq!(summary.flushes, 1);
        assert_eq!(durable, plan.bytes, "synced after the last byte");
    }
    finish(set, engine).await;
}

fn restore_plan(devices: u32) -> Plan {
    Plan {
        devices,
        block: 4096,
        max_transfer: 256 << 10,
        depth: 3,
        // Not a multiple of any read size: the final read is short.
        bytes: (5 << 20) + 4096 * 3 + 8,
    }
}

/// One device restored from an `AsyncRead` that yields uneven pieces; the engine reads in
/// varying sizes with three reads outstanding and checks every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_1_device_from_async_read() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(120));
    let plan = restore_plan(1);
    let name = common::unique_name("restore1");
    let set = create(&name, 1).await;
    let engine = ChildProc::spawn("child_engine", "restore", &plan.params(&name));
    let config = set.configuration().await.unwrap();
    assert!(config.features.contains(Features::READ_MEDIA));
    let device = set.open_device(&name).await.unwrap();
    let mut source = Source::new(0, plan.bytes, 70_001);
    let summary = restore_from(&device, &mut source).await.unwrap();
    assert_eq!((summary.bytes, summary.completes), (plan.bytes, 1));
    drop(device);
    finish(set, engine).await;
}

/// Two devices restored from blocking readers, each on a thread of its own
/// (`restore_from_reader`): the same rules, the engine checks every byte, and one device's
/// reader stopped early by the engine (it reads 4 blocks and closes) ends cleanly too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_from_blocking_readers_on_their_own_threads() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(120));
    let plan = restore_plan(2);
    let name = common::unique_name("restoreblk");
    let set = create(&name, plan.devices).await;
    let engine = ChildProc::spawn("child_engine", "restore", &plan.params(&name));
    set.configuration().await.unwrap();
    let bytes = plan.bytes;
    let results = serve_all(&set, names(&name, plan.devices), |device| async move {
        tokio::task::spawn_blocking(move || {
            let mut source = Source::new(device.index(), bytes, 300_001);
            restore_from_reader(&device, &mut source)
        })
        .await
        .unwrap()
    })
    .await
    .unwrap();
    assert!(
        results.iter().all(|s| s.bytes == bytes && s.completes == 1),
        "{results:?}"
    );
    finish(set, engine).await;

    // The engine stops after 4 reads: the blocking restore ends cleanly.
    let plan = restore_plan(1);
    let name = common::unique_name("restoreblk-early");
    let set = create(&name, 1).await;
    let mut params = plan.params(&name);
    params.push(("VDI_STOP_AFTER", "4".into()));
    let engine = ChildProc::spawn("child_engine", "restore_early", &params);
    set.configuration().await.unwrap();
    let device = set.open_device(&name).await.unwrap();
    let d = device.clone();
    let summary = tokio::task::spawn_blocking(move || {
        let mut source = Source::new(0, plan.bytes, 1 << 20);
        restore_from_reader(&d, &mut source)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!((summary.transfers, summary.completes), (4, 0));
    drop(device);
    finish(set, engine).await;
}

/// Four devices restored at once by `serve_all`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_4_devices_from_async_reads() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(120));
    let plan = restore_plan(4);
    let name = common::unique_name("restore4");
    let set = create(&name, plan.devices).await;
    let engine = ChildProc::spawn("child_engine", "restore", &plan.params(&name));
    set.configuration().await.unwrap();
    let bytes = plan.bytes;
    let results = serve_all(&set, names(&name, plan.devices), |device| async move {
        let mut source = Source::new(device.index(), bytes, 1 << 20);
        restore_from(&device, &mut source).await
    })
    .await
    .unwrap();
    assert!(results.iter().all(|s| s.bytes == plan.bytes), "{results:?}");
    finish(set, engine).await;
}

/// The engine reads the first few blocks and closes the device (RESTORE FILELISTONLY): the
/// restore ends cleanly, having served only what was asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_closed_early_ends_cleanly() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(120));
    let plan = restore_plan(1);
    let name = common::unique_name("filelistonly");
    let set = create(&name, 1).await;
    let mut params = plan.params(&name);
    params.push(("VDI_STOP_AFTER", "4".into()));
    let engine = ChildProc::spawn("child_engine", "restore_early", &params);
    set.configuration().await.unwrap();
    let device = set.open_device(&name).await.unwrap();
    let mut source = Source::new(0, plan.bytes, 1 << 20);
    let summary = restore_from(&device, &mut source).await.unwrap();
    assert_eq!(summary.transfers, 4);
    assert!(summary.bytes < plan.bytes);
    assert_eq!(summary.completes, 0, "the source was not read to its end");
    assert!(device.is_ended());
    drop(device);
    finish(set, engine).await;
}
