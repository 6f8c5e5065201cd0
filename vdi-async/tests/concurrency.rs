//! Many tasks draining one device, and completion out of order under an in-order byte stream;
//! the engine runs in another process (this test binary re-run as `child_engine`) and requires
//! every command to succeed.

mod common;

use std::{
    collections::BTreeMap,
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use common::{Checker, ChildProc, Outcome, Plan, Rng};
use futures::StreamExt;
use vdi_async::{AsyncCommand, AsyncSet, BackupSink, CommandStream, backup_to};
use vdi_core::{ClientConfig, CommandCode, Completion};
use vdi_shm::{ClientDevice, ClientSet, ShmClient};

/// The child: the engine side of a backup; fails unless every device succeeded.
#[test]
fn child_engine() {
    let Some(_) = common::role() else { return };
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    let (name, plan) = Plan::from_env();
    let outcomes = common::serve_backup(&name, plan);
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Ok),
        "engine outcomes: {outcomes:?}"
    );
}

async fn start(tag: &str, plan: Plan) -> (String, AsyncSet<ClientSet>, ChildProc) {
    let name = common::unique_name(tag);
    let cfg = ClientConfig {
        device_count: plan.devices,
        ..ClientConfig::default()
    };
    let set = AsyncSet::create(&ShmClient::new(), None, &name, &cfg)
        .await
        .unwrap();
    let engine = ChildProc::spawn("child_engine", "backup", &plan.params(&name));
    set.configuration().await.unwrap();
    (name, set, engine)
}

async fn finish(set: AsyncSet<ClientSet>, engine: ChildProc) {
    set.close().await.expect("Close");
    drop(set);
    let status = tokio::task::spawn_blocking(move || engine.wait(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(status.success(), "engine process failed");
}

/// What the drain tasks share: commands held now and at most, and each command seen.
#[derive(Default)]
struct Tally {
    held: usize,
    max_held: usize,
    /// Sequence number → (code, size), for every command taken.
    seen: BTreeMap<u64, (CommandCode, u32)>,
}

/// One drain task's handling of a command: checks a Write's bytes at the offset its sequence
/// number gives (the engine writes full transfers), waits a random while, completes.
async fn handle(cmd: AsyncCommand<ClientDevice>, plan: &Plan, tally: &Mutex<Tally>, rng: &mut Rng) {
    {
        let mut t = tally.lock().unwrap();
        t.held += 1;
        t.max_held = t.max_held.max(t.held);
        t.seen.insert(cmd.sequence(), (cmd.code(), cmd.size()));
    }
    for _ in 0..rng.below(4) {
        tokio::task::yield_now().await;
    }
    if rng.below(4) == 0 {
        tokio::time::sleep(Duration::from_micros(rng.below(2000))).await;
    }
    let completion = match cmd.code() {
        CommandCode::WRITE => {
            let offset = cmd.sequence() * u64::from(plan.max_transfer);
            assert!(
                common::check(0, offset, cmd.data()),
                "command {}: wrong bytes at offset {offset}",
                cmd.sequence()
            );
            Completion::success(cmd.size())
        }
        CommandCode::FLUSH => Completion::success(0),
        _ => Completion::not_supported(),
    };
    tally.lock().unwrap().held -= 1;
    cmd.complete(completion).unwrap();
}

/// Six tasks take the commands of one device at once, four with a stream clone each and two
/// sharing one stream by reference, and complete them after random delays (so out of order).
/// Every Write is checked at the offset its sequence number gives, the sequence numbers are
/// exactly 0..n, and the tasks never held more commands than the device's bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_drain_one_device() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(120));
    let plan = Plan {
        devices: 1,
        block: 4096,
        max_transfer: 128 << 10,
        depth: 8,
        bytes: 12 << 20,
    };
    const BOUND: usize = 5;
    let (name, set, engine) = start("drain", plan).await;
    let device = set
        .open_device(&name)
        .await
        .unwrap()
        .with_max_outstanding(BOUND);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut rng = Rng::from_env();
    let shared: Arc<CommandStream<ClientDevice>> = Arc::new(device.commands());
    let mut tasks = Vec::new();
    for k in 0..6u64 {
        let tally = Arc::clone(&tally);
        let mut rng = Rng(rng.next());
        if k < 4 {
            let mut stream = device.commands();
            tasks.push(tokio::spawn(async move {
                while let Some(cmd) = stream.next().await {
                    handle(cmd.unwrap(), &plan, &tally, &mut rng).await;
                }
            }));
        } else {
            let shared = Arc::clone(&shared);
            tasks.push(tokio::spawn(async move {
                while let Some(cmd) = shared.recv().await {
                    handle(cmd.unwrap(), &plan, &tally, &mut rng).await;
                }
            }));
        }
    }
    drop(shared);
    for t in tasks {
        t.await.unwrap();
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let writes = plan.bytes.div_ceil(u64::from(plan.max_transfer));
    assert_eq!(
        tally.seen.len() as u64,
        writes + 1,
        "every Write and the Flush"
    );
    for (i, (&seq, &(code, size))) in tally.seen.iter().enumerate() {
        assert_eq!(seq, i as u64, "sequence numbers are 0..n");
        if seq < writes {
            assert_eq!((code, size), (CommandCode::WRITE, plan.max_transfer));
        } else {
            assert_eq!(code, CommandCode::FLUSH);
        }
    }
    assert!(
        tally.max_held <= BOUND,
        "{} commands held at once, above the bound {BOUND}",
        tally.max_held
    );
    drop(device);
    finish(set, engine).await;
}

/// A sink that checks the stream in order but releases the Writes' bytes (and so completes
/// them) in pairs, the later one first: when a third Write arrives, the two before it go, in
/// reverse order (a Write completes only once its `write` returned, so the current one stays).
/// At the last Write everything goes.
struct PairwiseSink {
    checker: Checker,
    total: u64,
    next: u64,
    held: Vec<(u64, Bytes)>,
    released: Vec<u64>,
}

#[async_trait]
impl BackupSink for PairwiseSink {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.checker.next(&data);
        self.held.push((self.next, data));
        self.next += 1;
        let last = self.checker.offset == self.total;
        if self.held.len() == 3 || last {
            let current = if last { None } else { self.held.pop() };
            while let Some((n, bytes)) = self.held.pop() {
                drop(bytes);
                self.released.push(n);
            }
            self.held.extend(current);
        }
        Ok(())
    }

    async fn sync(&mut self) -> io::Result<()> {
        assert!(self.held.is_empty());
        Ok(())
    }
}

/// Writes completed out of order (each pair's second first) while the byte stream the sink
/// sees is in order; the engine requires every completion to succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_completion_in_order_stream() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(120));
    let plan = Plan {
        devices: 1,
        block: 4096,
        max_transfer: 64 << 10,
        depth: 4,
        bytes: (4 << 20) + (64 << 10),
    };
    let (name, set, engine) = start("reorder", plan).await;
    let device = set.open_device(&name).await.unwrap();
    let mut sink = PairwiseSink {
        checker: Checker::new(0),
        total: plan.bytes,
        next: 0,
        held: Vec::new(),
        released: Vec::new(),
    };
    let summary = backup_to(&device, &mut sink).await.unwrap();
    assert_eq!((summary.bytes, summary.flushes), (plan.bytes, 1));
    assert_eq!(sink.checker.offset, plan.bytes);
    let n = sink.released.len() as u64;
    assert_eq!(n, plan.bytes / u64::from(plan.max_transfer));
    let mut sorted = sink.released.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..n).collect::<Vec<_>>());
    assert_eq!(&sink.released[..4], &[1, 0, 3, 2], "completed out of order");
    drop(device);
    finish(set, engine).await;
}
