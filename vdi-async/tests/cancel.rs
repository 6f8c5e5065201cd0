//! Cancellation and exactly-once completion, with the engine on threads of this process:
//! futures dropped at random points (configuration waits, reads, stream polls, whole devices,
//! `serve_all`, the set) leave the engine with success or an abort and nothing hanging; a
//! command dropped without being completed reaches the engine as `ERROR_OPERATION_ABORTED`;
//! Flush and Complete are not acknowledged before the sink says the data is durable.

mod common;

use std::{
    io,
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use common::{Checker, Outcome, Plan, Rng};
use futures::StreamExt;
use tokio::{io::AsyncReadExt, sync::oneshot, time::timeout};
use vdi_async::{AsyncSet, BackupReader, BackupSink, backup_to, serve_all};
use vdi_core::{
    ClientConfig, CommandCode, Completion, CompletionCode, Error, Features, ServerBuffer,
    ServerCommand, ServerConfig, ServerDevice, ServerDeviceSet, Timeout,
};
use vdi_shm::{ClientDevice, ClientSet, ShmClient};

/// A limit for any await of the client side: exceeding it is a hang, and fails the test.
const LIMIT: Duration = Duration::from_secs(30);

async fn create(name: &str, devices: u32, features: Features) -> AsyncSet<ClientSet> {
    let cfg = ClientConfig {
        device_count: devices,
        features,
        ..ClientConfig::default()
    };
    AsyncSet::create(&ShmClient::new(), None, name, &cfg)
        .await
        .expect("CreateEx")
}

/// Runs `f` on a thread (the engine) and returns a future of its result.
async fn join<T: Send + 'static>(h: thread::JoinHandle<T>) -> T {
    timeout(LIMIT, tokio::task::spawn_blocking(move || h.join()))
        .await
        .expect("the engine hangs")
        .unwrap()
        .expect("the engine panicked")
}

/// What a round of the cancellation test drops.
#[derive(Debug, Clone, Copy)]
enum Scenario {
    /// Reads through a `BackupReader`, some of them dropped after a random short while; every
    /// byte is checked. The engine must see success.
    Reads,
    /// Three tasks poll one device's streams, some polls dropped after a random short while.
    /// The engine must see success.
    Polls,
    /// Device 0's reader and handle are dropped at a random byte (or after the end); device 1
    /// runs to the end.
    Device,
    /// `serve_all` is dropped after a random while (up to 20 ms).
    ServeAll,
    /// Both devices' readers and handles are dropped at a random byte, then the set.
    Set,
}

/// Reads device `device` to its end through a reader, dropping some reads; returns the bytes.
async fn read_all(device: vdi_async::AsyncDevice<ClientDevice>, rng: Rng) -> io::Result<u64> {
    read_until(device, rng, u64::MAX).await
}

/// As [`read_all`], but stops (dropping the reader and the device) once `stop_at` bytes were
/// read.
async fn read_until(
    device: vdi_async::AsyncDevice<ClientDevice>,
    mut rng: Rng,
    stop_at: u64,
) -> io::Result<u64> {
    let mut reader = BackupReader::new(&device);
    let mut checker = Checker::new(device.index());
    let mut buf = vec![0u8; 1 + rng.below(100_000) as usize];
    loop {
        let n = if rng.below(3) == 0 {
            let wait = Duration::from_micros(rng.below(300));
            match timeout(wait, reader.read(&mut buf)).await {
                Ok(r) => r?,
                Err(_) => continue,
            }
        } else {
            reader.read(&mut buf).await?
        };
        if n > 0 {
            checker.next(&buf[..n]);
            if checker.offset >= stop_at {
                return Ok(checker.offset);
            }
            continue;
        }
        match reader.take_barrier() {
            Some(b) => b.complete(Completion::success(0))?,
            None => return Ok(checker.offset),
        }
    }
}

/// Serves device `device` with three tasks whose polls are dropped now and then.
async fn poll_all(device: vdi_async::AsyncDevice<ClientDevice>, mut rng: Rng, mts: u32) {
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let mut stream = device.commands();
        let mut rng = Rng(rng.next());
        let index = device.index();
        tasks.push(tokio::spawn(async move {
            loop {
                let wait = Duration::from_micros(rng.below(500));
                let Ok(next) = timeout(wait, stream.next()).await else {
                    continue;
                };
                let Some(cmd) = next else { break };
                let cmd = cmd.unwrap();
                let c = if cmd.code() == CommandCode::WRITE {
                    let offset = cmd.sequence() * u64::from(mts);
                    assert!(
                        common::check(index, offset, cmd.data()),
                        "bytes at {offset}"
                    );
                    Completion::success(cmd.size())
                } else {
                    Completion::success(0)
                };
                cmd.complete(c).unwrap();
            }
        }));
    }
    drop(device);
    for t in tasks {
        t.await.unwrap();
    }
}

async fn round(rng: &mut Rng, scenario: Scenario) {
    let plan = Plan {
        devices: 2,
        block: 4096,
        max_transfer: 64 << 10,
        depth: 3,
        bytes: 1 << 20,
    };
    let name = common::unique_name("cancel");
    let set = create(&name, plan.devices, Features::empty()).await;
    let engine_name = name.clone();
    let engine = thread::spawn(move || common::serve_backup(&engine_name, plan));
    // Configuration waits dropped at random points, then awaited to the end.
    for _ in 0..rng.below(4) {
        let wait = Duration::from_micros(rng.below(5_000));
        let _ = timeout(wait, set.configuration()).await;
    }
    timeout(LIMIT, set.configuration())
        .await
        .expect("configuration hangs")
        .unwrap();
    let names: Vec<String> = (0..plan.devices)
        .map(|i| common::device_name(&name, i))
        .collect();
    let must_succeed = matches!(scenario, Scenario::Reads | Scenario::Polls);
    let client = async {
        match scenario {
            Scenario::Reads => {
                let mut seeds = (rng.next(), rng.next());
                let bytes = serve_all(&set, &names, |d| {
                    let seed = std::mem::replace(&mut seeds.0, seeds.1);
                    read_all(d, Rng(seed))
                })
                .await
                .unwrap();
                assert_eq!(bytes, vec![plan.bytes; 2]);
            }
            Scenario::Polls => {
                let mut seed = rng.next();
                serve_all(&set, &names, |d| {
                    seed = Rng(seed).next();
                    let fut = poll_all(d, Rng(seed), plan.max_transfer);
                    async move {
                        fut.await;
                        Ok::<_, Error>(())
                    }
                })
                .await
                .unwrap();
            }
            Scenario::Device => {
                let d0 = set.open_device(&names[0]).await.unwrap();
                let d1 = set.open_device(&names[1]).await.unwrap();
                let other = tokio::spawn(read_all(d1, Rng(rng.next())));
                let stop_at = rng.below(plan.bytes * 5 / 4);
                read_until(d0, Rng(rng.next()), stop_at).await.unwrap();
                other.await.unwrap().unwrap();
            }
            Scenario::ServeAll => {
                let wait = Duration::from_micros(rng.below(20_000));
                let mut seed = rng.next();
                let _ = timeout(
                    wait,
                    serve_all(&set, &names, |d| {
                        seed = Rng(seed).next();
                        read_all(d, Rng(seed))
                    }),
                )
                .await;
            }
            Scenario::Set => {
                let d0 = set.open_device(&names[0]).await.unwrap();
                let d1 = set.open_device(&names[1]).await.unwrap();
                let (stop0, stop1) = (rng.below(plan.bytes), rng.below(plan.bytes * 2));
                let both = futures::future::join(
                    read_until(d0, Rng(rng.next()), stop0),
                    read_until(d1, Rng(rng.next()), stop1),
                );
                let _ = both.await;
            }
        }
    };
    timeout(LIMIT, client).await.expect("the client hangs");
    if matches!(scenario, Scenario::Set) {
        drop(set);
    } else {
        // Closing may find devices the engine has not closed yet (VD_E_OPEN, an abort).
        let _ = timeout(LIMIT, set.close()).await.expect("Close hangs");
        drop(set);
    }
    let outcomes = join(engine).await;
    eprintln!("{scenario:?}: the engine saw {outcomes:?}");
    if must_succeed {
        assert_eq!(outcomes, vec![Outcome::Ok; 2], "{scenario:?}");
    } else {
        assert!(
            outcomes.iter().all(Outcome::is_ok_or_abort),
            "{scenario:?}: the engine saw {outcomes:?}"
        );
    }
}

/// Rounds of backups between the client and an engine thread, each with futures dropped at
/// random points (seeded; `VDI_SEED` replays a run): the engine sees success where nothing of
/// the client's was lost, and success or an abort otherwise; nothing hangs (every await has a
/// limit, the whole test a watchdog).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_futures_leave_success_or_abort() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(150));
    let mut rng = Rng::from_env();
    let scenarios = [
        Scenario::Reads,
        Scenario::Polls,
        Scenario::Device,
        Scenario::ServeAll,
        Scenario::Set,
    ];
    for i in 0..15 {
        let scenario = scenarios[i % scenarios.len()];
        round(&mut rng, scenario).await;
    }
}

/// A `MakeWriter` that keeps what is logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A Write taken from the stream and dropped reaches the engine as `ERROR_OPERATION_ABORTED`,
/// with a warning naming the command and device; the next Write, completed, succeeds.
#[test]
fn dropped_command_reaches_engine_as_operation_aborted() {
    common::watchdog(Duration::from_secs(60));
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("vdi_async=warn")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let plan = Plan {
        devices: 1,
        block: 4096,
        max_transfer: 64 << 10,
        depth: 2,
        bytes: 0,
    };
    let name = common::unique_name("dropped");
    let engine_name = name.clone();
    let engine = thread::spawn(move || -> Vec<CompletionCode> {
        let (set, devices) = common::open_and_configure(&engine_name, &plan, true).unwrap();
        let dev = &devices[0];
        let mut codes = Vec::new();
        let mut buf = set.allocate_buffer(plan.max_transfer, 0).unwrap();
        for _ in 0..2 {
            common::fill(0, 0, buf.as_mut_slice());
            dev.send(ServerCommand::write(buf, plan.max_transfer))
                .unwrap();
            let c = dev.completion(common::WAIT).unwrap();
            codes.push(c.completion.code);
            buf = c.buffer.unwrap();
            if c.completion.code != CompletionCode::SUCCESS {
                dev.send(ServerCommand::control(CommandCode::CLEAR_ERROR))
                    .unwrap();
                let c = dev.completion(common::WAIT).unwrap();
                assert_eq!(c.completion.code, CompletionCode::SUCCESS, "ClearError");
            }
        }
        dev.close().unwrap();
        set.close().unwrap();
        codes
    });
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let set = create(&name, 1, Features::empty()).await;
            set.configuration().await.unwrap();
            let device = set.open_device(&name).await.unwrap();
            let mut commands = device.commands();
            let first = commands.next().await.unwrap().unwrap();
            assert_eq!(first.code(), CommandCode::WRITE);
            drop(first);
            let clear = commands.next().await.unwrap().unwrap();
            assert_eq!(clear.code(), CommandCode::CLEAR_ERROR);
            clear.complete(Completion::success(0)).unwrap();
            let second = commands.next().await.unwrap().unwrap();
            let n = second.size();
            second.complete(Completion::success(n)).unwrap();
            assert!(
                commands.next().await.is_none(),
                "the engine closed the device"
            );
            drop((commands, device));
            set.close().await.unwrap();
        });
    });
    let codes = engine.join().unwrap();
    assert_eq!(
        codes,
        [CompletionCode::OPERATION_ABORTED, CompletionCode::SUCCESS]
    );
    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("WARN") && log.contains("command dropped without complete()"),
        "no warning logged: {log:?}"
    );
    assert!(log.contains("code=VDC_Write") && log.contains(&format!("device={name}")));
}

/// A sink whose `sync` and `complete` say they were called and then wait for the test's word.
struct GatedSink {
    entered: mpsc::Sender<&'static str>,
    gates: Arc<Mutex<Vec<oneshot::Receiver<io::Result<()>>>>>,
    bytes: u64,
}

impl GatedSink {
    async fn gate(&mut self, what: &'static str) -> io::Result<()> {
        let gate = self.gates.lock().unwrap().remove(0);
        self.entered.send(what).unwrap();
        gate.await.unwrap()
    }
}

#[async_trait]
impl BackupSink for GatedSink {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.bytes += data.len() as u64;
        Ok(())
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.gate("sync").await
    }

    async fn complete(&mut self) -> io::Result<()> {
        self.gate("complete").await
    }
}

/// The engine side of the durability tests: two Writes, then Flush and Complete. After each of
/// those it says so, then on the test's word polls for the completion (`Timeout::POLL`) and
/// says what it found, then on the next word waits for it and says its code.
fn gated_engine(
    name: String,
    say: mpsc::Sender<String>,
    words: mpsc::Receiver<()>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let plan = Plan {
            devices: 1,
            block: 4096,
            max_transfer: 64 << 10,
            depth: 2,
            bytes: 128 << 10,
        };
        let mut cfg = ServerConfig::backup(plan.block, plan.max_transfer);
        cfg.features |= Features::COMPLETE_ENABLED;
        let (set, devices) = common::open_and_configure_with(&name, &plan, &cfg).unwrap();
        let dev = &devices[0];
        for i in 0..2 {
            let mut buf = set.allocate_buffer(plan.max_transfer, 0).unwrap();
            common::fill(0, i * u64::from(plan.max_transfer), buf.as_mut_slice());
            dev.send(ServerCommand::write(buf, plan.max_transfer))
                .unwrap();
        }
        for _ in 0..2 {
            let c = dev.completion(common::WAIT).unwrap();
            assert_eq!(c.completion.code, CompletionCode::SUCCESS);
        }
        for code in [CommandCode::FLUSH, CommandCode::COMPLETE] {
            dev.send(ServerCommand::control(code)).unwrap();
            say.send(format!("sent {code:?}")).unwrap();
            words.recv().unwrap();
            let polled = match dev.completion(Timeout::POLL) {
                Err(Error::Timeout) => "none".to_owned(),
                other => format!("{other:?}"),
            };
            say.send(format!("polled {polled}")).unwrap();
            words.recv().unwrap();
            let c = dev.completion(common::WAIT).unwrap();
            say.send(format!("{:?} {:?}", c.code, c.completion.code))
                .unwrap();
            if c.completion.code != CompletionCode::SUCCESS {
                break;
            }
        }
        dev.close().unwrap();
        set.close().unwrap();
    })
}

/// Receives the engine's or the sink's next message without blocking a runtime thread.
async fn next<T: Send + 'static>(rx: &Arc<Mutex<mpsc::Receiver<T>>>) -> T {
    let rx = Arc::clone(rx);
    timeout(
        LIMIT,
        tokio::task::spawn_blocking(move || rx.lock().unwrap().recv_timeout(LIMIT).unwrap()),
    )
    .await
    .expect("no message")
    .unwrap()
}

/// Flush and Complete reach the sink's `sync` and `complete`, and the engine finds no
/// completion for them while the sink has not answered (checked after a pause, in which a
/// premature acknowledgment would have arrived); once the sink answers, they complete with
/// success. A failing `sync` (disk full) fails the Flush with `ERROR_DISK_FULL` instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barriers_wait_for_the_sink() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    for fail in [false, true] {
        let name = common::unique_name("durable");
        let set = create(&name, 1, Features::REQUEST_COMPLETE).await;
        let (say, heard) = mpsc::channel();
        let (word, words) = mpsc::channel();
        let engine = gated_engine(name.clone(), say, words);
        let heard = Arc::new(Mutex::new(heard));
        set.configuration().await.unwrap();
        let device = set.open_device(&name).await.unwrap();
        let (entered_tx, entered) = mpsc::channel();
        let entered = Arc::new(Mutex::new(entered));
        let mut opens = Vec::new();
        let mut gates = Vec::new();
        for _ in 0..2 {
            let (tx, rx) = oneshot::channel();
            opens.push(tx);
            gates.push(rx);
        }
        let mut sink = GatedSink {
            entered: entered_tx,
            gates: Arc::new(Mutex::new(gates)),
            bytes: 0,
        };
        let backup = tokio::spawn(async move {
            let r = backup_to(&device, &mut sink).await;
            (r, sink.bytes)
        });
        for (what, code) in [
            ("sync", CommandCode::FLUSH),
            ("complete", CommandCode::COMPLETE),
        ] {
            assert_eq!(next(&heard).await, format!("sent {code:?}"));
            assert_eq!(next(&entered).await, what);
            // A pause: an acknowledgment sent before the sink answered would be there by now.
            tokio::time::sleep(Duration::from_millis(200)).await;
            word.send(()).unwrap();
            assert_eq!(
                next(&heard).await,
                "polled none",
                "{code:?} acknowledged early"
            );
            let answer = if fail {
                Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
            } else {
                Ok(())
            };
            opens.remove(0).send(answer).unwrap();
            word.send(()).unwrap();
            if fail {
                assert_eq!(next(&heard).await, "VDC_Flush ERROR_DISK_FULL");
                break;
            }
            assert_eq!(next(&heard).await, format!("{code:?} ERROR_SUCCESS"));
        }
        let (r, bytes) = timeout(LIMIT, backup).await.unwrap().unwrap();
        assert_eq!(bytes, 128 << 10);
        match r {
            Ok(s) => {
                assert!(!fail);
                assert_eq!((s.flushes, s.completes), (1, 1));
            }
            Err(e) => {
                assert!(fail);
                assert_eq!(e.kind(), io::ErrorKind::StorageFull);
            }
        }
        join(engine).await;
        set.close().await.unwrap();
    }
}
