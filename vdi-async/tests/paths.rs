//! The two ways a command leaves a device: taken by the polling task itself (`GetCommand` with a
//! zero timeout, when the engine already sent it), or by the device's waiter thread (when the
//! task found none). The engine runs on threads of this process, so the tests can pace it and
//! know what it sent when.
//!
//! - Order: an engine that sends many small Writes at an irregular pace, so that both paths
//!   take commands, one after the other; every byte checked in stream order through
//!   `backup_to`, and with several tasks, every task's sequence numbers increase and each
//!   Write holds the bytes its sequence number says.
//! - The bound on outstanding commands holds on the direct path: with commands waiting in the
//!   engine's queue, a task at the bound gets nothing until it completes one.
//! - `VD_E_CLOSE` and an abort reach every stream whichever path meets them.
//!
//! Which path did what is read from the device's debug line at its end (a global subscriber
//! of this test binary captures the log).

mod common;

use std::{
    collections::BTreeSet,
    io,
    sync::{Arc, Mutex, OnceLock, mpsc},
    thread,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use common::{Checker, Outcome, Plan, Rng};
use futures::StreamExt;
use tokio::time::timeout;
use vdi_async::{AsyncCommand, AsyncDevice, AsyncSet, BackupSink, CommandStream, backup_to};
use vdi_core::{
    ClientConfig, CommandCode, Completion, CompletionCode, Error, ServerBuffer, ServerCommand,
    ServerDevice, ServerDeviceSet,
};
use vdi_shm::{ClientDevice, ClientSet, ShmClient};

/// A limit for any await of the client side: exceeding it is a hang, and fails the test.
const LIMIT: Duration = Duration::from_secs(30);

/// The log of this test binary (every test's devices; each device's name is unique).
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

fn log() -> &'static Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("vdi_async=debug")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("global subscriber");
        log
    })
}

/// How a device's command stream ended, from its debug line.
#[derive(Debug)]
struct EndLine {
    /// `"task"` or `"waiter thread"`.
    by: String,
    closed: bool,
    directly: u64,
    by_waiter: u64,
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        + key.len()
        + 2;
    let rest = &line[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        &quoted[..quoted.find('"').expect("closing quote")]
    } else {
        rest.split(' ').next().unwrap()
    }
}

/// The end line of device `name`, waiting a little for it (the waiter thread may still be
/// writing it).
fn end_line(name: &str) -> EndLine {
    let deadline = Instant::now() + Duration::from_secs(5);
    let key = format!(" device={name} ");
    loop {
        let text = String::from_utf8(log().0.lock().unwrap().clone()).unwrap();
        let found = text.lines().find(|l| {
            l.contains(&key)
                && (l.contains("device closed by the engine") || l.contains("GetCommand failed"))
        });
        if let Some(l) = found {
            let l = format!("{l} ");
            return EndLine {
                by: field(&l, "by").to_owned(),
                closed: l.contains("device closed by the engine"),
                directly: field(&l, "directly").parse().unwrap(),
                by_waiter: field(&l, "by_waiter").parse().unwrap(),
            };
        }
        assert!(Instant::now() < deadline, "no end line for {name}");
        thread::sleep(Duration::from_millis(5));
    }
}

async fn create(name: &str) -> AsyncSet<ClientSet> {
    AsyncSet::create(&ShmClient::new(), None, name, &ClientConfig::default())
        .await
        .expect("CreateEx")
}

/// Waits for the engine thread without blocking a runtime thread.
async fn join<T: Send + 'static>(h: thread::JoinHandle<T>) -> T {
    timeout(LIMIT, tokio::task::spawn_blocking(move || h.join()))
        .await
        .expect("the engine hangs")
        .unwrap()
        .expect("the engine panicked")
}

/// Receives the engine's next message without blocking a runtime thread.
async fn hear(rx: &Arc<Mutex<mpsc::Receiver<&'static str>>>) -> &'static str {
    let rx = Arc::clone(rx);
    timeout(
        LIMIT,
        tokio::task::spawn_blocking(move || rx.lock().unwrap().recv_timeout(LIMIT).unwrap()),
    )
    .await
    .expect("the engine says nothing")
    .unwrap()
}

/// Waits until the device's stream ended without polling it (only the waiter thread calls
/// `GetCommand` meanwhile).
async fn until_ended(device: &AsyncDevice<ClientDevice>) {
    let deadline = Instant::now() + LIMIT;
    while !device.is_ended() {
        assert!(Instant::now() < deadline, "the device never ended");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The engine side of a backup at an irregular pace: `plan.bytes` in Writes of `plan.block`
/// bytes (in buffers of `plan.max_transfer`), up to `plan.depth` outstanding; now and then it pauses (up to 300 µs)
/// before a send, or waits for every outstanding Write, so that the client sometimes finds the
/// next command already there and sometimes waits for it. Then a Flush and CloseDevice.
fn paced_backup(name: &str, plan: Plan, seed: u64) -> Outcome {
    let (set, devices) = match common::open_and_configure(name, &plan, true) {
        Ok(x) => x,
        Err(e) => return Outcome::Error(e),
    };
    let dev = &devices[0];
    let mut rng = Rng(seed);
    let mut run = || -> Result<Outcome, Error> {
        let mut free = (0..plan.depth)
            .map(|_| set.allocate_buffer(plan.max_transfer, 0))
            .collect::<Result<Vec<_>, _>>()?;
        let mut offset = 0u64;
        while offset < plan.bytes {
            match rng.below(16) {
                0 => thread::sleep(Duration::from_micros(rng.below(300))),
                1 => {
                    while dev.outstanding() > 0 {
                        let c = dev.completion(common::WAIT)?;
                        if c.completion.code != CompletionCode::SUCCESS {
                            return Ok(Outcome::Failed(c.completion.code));
                        }
                        free.push(c.buffer.expect("write buffer comes back"));
                    }
                }
                _ => {}
            }
            let mut buf = match free.pop() {
                Some(b) => b,
                None => {
                    let c = dev.completion(common::WAIT)?;
                    if c.completion.code != CompletionCode::SUCCESS {
                        return Ok(Outcome::Failed(c.completion.code));
                    }
                    c.buffer.expect("write buffer comes back")
                }
            };
            let n = (plan.bytes - offset).min(u64::from(plan.block)) as u32;
            common::fill(0, offset, &mut buf.as_mut_slice()[..n as usize]);
            dev.send(ServerCommand::write(buf, n))
                .map_err(|e| e.error)?;
            offset += u64::from(n);
        }
        while dev.outstanding() > 0 {
            let c = dev.completion(common::WAIT)?;
            if c.completion.code != CompletionCode::SUCCESS {
                return Ok(Outcome::Failed(c.completion.code));
            }
        }
        dev.send(ServerCommand::control(CommandCode::FLUSH))
            .map_err(|e| e.error)?;
        let c = dev.completion(common::WAIT)?;
        if c.completion.code != CompletionCode::SUCCESS {
            return Ok(Outcome::Failed(c.completion.code));
        }
        dev.close()?;
        Ok(Outcome::Ok)
    };
    let outcome = run().unwrap_or_else(Outcome::Error);
    let _ = set.close();
    outcome
}

/// A sink that checks the stream in order and sometimes dawdles (yields, or sleeps up to
/// 200 µs), so the engine is sometimes ahead and sometimes behind.
struct DawdlingSink {
    checker: Checker,
    rng: Rng,
}

#[async_trait]
impl BackupSink for DawdlingSink {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.checker.next(&data);
        match self.rng.below(8) {
            0 => tokio::time::sleep(Duration::from_micros(self.rng.below(200))).await,
            1 => tokio::task::yield_now().await,
            _ => {}
        }
        Ok(())
    }

    async fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn small_plan() -> Plan {
    Plan {
        devices: 1,
        block: 4096,
        max_transfer: 64 << 10,
        depth: 6,
        bytes: 3000 * 4096,
    }
}

/// One consumer, `backup_to`, thousands of small Writes at an irregular pace: both paths take
/// commands, and every byte arrives in stream order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_paths_keep_the_stream_order() {
    log();
    common::watchdog(Duration::from_secs(120));
    let mut rng = Rng::from_env();
    let plan = small_plan();
    for _ in 0..3 {
        let name = common::unique_name("order1");
        let set = create(&name).await;
        let engine_name = name.clone();
        let seed = rng.next();
        let engine = thread::spawn(move || paced_backup(&engine_name, plan, seed));
        set.configuration().await.unwrap();
        let device = set.open_device(&name).await.unwrap();
        let mut sink = DawdlingSink {
            checker: Checker::new(0),
            rng: Rng(rng.next()),
        };
        let summary = timeout(LIMIT, backup_to(&device, &mut sink))
            .await
            .expect("the backup hangs")
            .unwrap();
        assert_eq!((summary.bytes, summary.flushes), (plan.bytes, 1));
        assert_eq!(sink.checker.offset, plan.bytes);
        assert!(device.is_ended());
        drop(device);
        assert_eq!(join(engine).await, Outcome::Ok);
        set.close().await.unwrap();
        let end = end_line(&name);
        eprintln!("{name}: {end:?}");
        assert!(end.closed);
        assert_eq!(
            end.directly + end.by_waiter,
            3001,
            "every Write and the Flush"
        );
        assert!(
            end.directly > 0 && end.by_waiter > 0,
            "both paths took commands: {end:?}"
        );
    }
}

/// What the consumer tasks of [`mixed_paths_with_many_consumers`] share.
#[derive(Default)]
struct Tally {
    held: usize,
    max_held: usize,
    seen: BTreeSet<u64>,
}

async fn consume(
    cmd: AsyncCommand<ClientDevice>,
    last: &mut Option<u64>,
    tally: &Mutex<Tally>,
    device: &AsyncDevice<ClientDevice>,
    rng: &mut Rng,
    plan: &Plan,
) {
    let seq = cmd.sequence();
    assert!(
        last.is_none_or(|l| l < seq),
        "a task got {seq} after {last:?}"
    );
    *last = Some(seq);
    assert!(device.outstanding() <= device.max_outstanding());
    {
        let mut t = tally.lock().unwrap();
        t.held += 1;
        t.max_held = t.max_held.max(t.held);
        assert!(t.seen.insert(seq), "{seq} delivered twice");
    }
    match rng.below(8) {
        0 => tokio::time::sleep(Duration::from_micros(rng.below(300))).await,
        1 | 2 => tokio::task::yield_now().await,
        _ => {}
    }
    let completion = match cmd.code() {
        CommandCode::WRITE => {
            let offset = seq * u64::from(plan.block);
            assert!(
                common::check(0, offset, cmd.data()),
                "command {seq}: wrong bytes at offset {offset}"
            );
            Completion::success(cmd.size())
        }
        CommandCode::FLUSH => Completion::success(0),
        _ => Completion::not_supported(),
    };
    tally.lock().unwrap().held -= 1;
    cmd.complete(completion).unwrap();
}

/// Five tasks (four stream clones, two sharing one more stream by reference) drain one device
/// under a bound of 4 while the engine sends thousands of small Writes at an irregular pace:
/// each task's sequence numbers increase, each Write holds the bytes its sequence number
/// says, every command is delivered exactly once, the bound holds, and both paths took
/// commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_paths_with_many_consumers() {
    log();
    common::watchdog(Duration::from_secs(120));
    const BOUND: usize = 4;
    let mut rng = Rng::from_env();
    let plan = small_plan();
    for _ in 0..2 {
        let name = common::unique_name("orderN");
        let set = create(&name).await;
        let engine_name = name.clone();
        let seed = rng.next();
        let engine = thread::spawn(move || paced_backup(&engine_name, plan, seed));
        set.configuration().await.unwrap();
        let device = set
            .open_device(&name)
            .await
            .unwrap()
            .with_max_outstanding(BOUND);
        let tally = Arc::new(Mutex::new(Tally::default()));
        let shared: Arc<CommandStream<ClientDevice>> = Arc::new(device.commands());
        let mut tasks = Vec::new();
        for k in 0..6 {
            let tally = Arc::clone(&tally);
            let device = device.clone();
            let mut rng = Rng(rng.next());
            let mut last = None;
            if k < 4 {
                let mut stream = device.commands();
                tasks.push(tokio::spawn(async move {
                    while let Some(cmd) = stream.next().await {
                        consume(cmd.unwrap(), &mut last, &tally, &device, &mut rng, &plan).await;
                    }
                }));
            } else {
                let shared = Arc::clone(&shared);
                tasks.push(tokio::spawn(async move {
                    while let Some(cmd) = shared.recv().await {
                        consume(cmd.unwrap(), &mut last, &tally, &device, &mut rng, &plan).await;
                    }
                }));
            }
        }
        drop(shared);
        for t in tasks {
            timeout(LIMIT, t).await.expect("a task hangs").unwrap();
        }
        let tally = std::mem::take(&mut *tally.lock().unwrap());
        assert_eq!(tally.seen, (0..=3000).collect::<BTreeSet<u64>>());
        assert!(tally.max_held <= BOUND, "{} held", tally.max_held);
        drop(device);
        assert_eq!(join(engine).await, Outcome::Ok);
        set.close().await.unwrap();
        let end = end_line(&name);
        eprintln!("{name}: {end:?}");
        assert!(end.closed);
        assert_eq!(end.directly + end.by_waiter, 3001);
        assert!(
            end.directly > 0 && end.by_waiter > 0,
            "both paths took commands: {end:?}"
        );
    }
}

/// With eight Writes waiting in the engine's queue and a bound of 3, a task takes three
/// (directly: they are there), then gets nothing, from any stream, until it completes one;
/// then the next comes at once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_takes_respect_the_bound() {
    log();
    common::watchdog(Duration::from_secs(60));
    let plan = Plan {
        devices: 1,
        block: 4096,
        max_transfer: 64 << 10,
        depth: 8,
        bytes: 16 * (64 << 10),
    };
    let name = common::unique_name("bound");
    let set = create(&name).await;
    let (say, heard) = mpsc::channel();
    let heard = Arc::new(Mutex::new(heard));
    let engine_name = name.clone();
    let engine = thread::spawn(move || {
        let (set, devices) = common::open_and_configure(&engine_name, &plan, true).unwrap();
        let dev = &devices[0];
        let mut free = Vec::new();
        for _ in 0..plan.depth {
            free.push(set.allocate_buffer(plan.max_transfer, 0).unwrap());
        }
        let mut offset = 0;
        let mut first = true;
        while offset < plan.bytes {
            let mut buf = match free.pop() {
                Some(b) => b,
                None => {
                    if std::mem::take(&mut first) {
                        say.send("sent 8").unwrap();
                    }
                    let c = dev.completion(common::WAIT).unwrap();
                    assert_eq!(c.completion.code, CompletionCode::SUCCESS);
                    c.buffer.unwrap()
                }
            };
            common::fill(0, offset, buf.as_mut_slice());
            dev.send(ServerCommand::write(buf, plan.max_transfer))
                .unwrap();
            offset += u64::from(plan.max_transfer);
        }
        while dev.outstanding() > 0 {
            let c = dev.completion(common::WAIT).unwrap();
            assert_eq!(c.completion.code, CompletionCode::SUCCESS);
        }
        dev.close().unwrap();
        set.close().unwrap();
    });
    set.configuration().await.unwrap();
    let device = set
        .open_device(&name)
        .await
        .unwrap()
        .with_max_outstanding(3);
    let mut stream = device.commands();
    let mut other = device.commands();
    assert_eq!(hear(&heard).await, "sent 8");
    let mut held = Vec::new();
    for i in 0..3 {
        let c = stream.next().await.unwrap().unwrap();
        assert_eq!(c.sequence(), i);
        held.push(c);
    }
    assert_eq!(device.outstanding(), 3);
    // Five more are in the engine's queue; at the bound, no stream takes one.
    assert!(
        timeout(Duration::from_millis(150), stream.next())
            .await
            .is_err(),
        "a command beyond the bound"
    );
    assert!(
        timeout(Duration::from_millis(50), other.next())
            .await
            .is_err(),
        "a command beyond the bound"
    );
    assert_eq!(device.outstanding(), 3);
    let mut checker = Checker::new(0);
    let first = held.remove(0);
    checker.next(first.data());
    let n = first.size();
    first.complete(Completion::success(n)).unwrap();
    let next = timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("room under the bound, and a command waiting")
        .unwrap()
        .unwrap();
    assert_eq!(next.sequence(), 3);
    held.push(next);
    for c in held.drain(..) {
        checker.next(c.data());
        let n = c.size();
        c.complete(Completion::success(n)).unwrap();
    }
    // The rest, in order, from either stream.
    let mut streams = [stream, other];
    for seq in 4..16 {
        let c = timeout(LIMIT, streams[seq as usize % 2].next())
            .await
            .expect("hangs")
            .unwrap()
            .unwrap();
        assert_eq!(c.sequence(), seq);
        assert!(device.outstanding() <= 3);
        checker.next(c.data());
        let n = c.size();
        c.complete(Completion::success(n)).unwrap();
    }
    let [mut stream, mut other] = streams;
    assert!(timeout(LIMIT, stream.next()).await.unwrap().is_none());
    assert_eq!(checker.offset, plan.bytes);
    assert!(other.next().await.is_none());
    drop((stream, other, device));
    join(engine).await;
    set.close().await.unwrap();
    let end = end_line(&name);
    assert!(end.closed);
    assert!(end.directly >= 4, "{end:?}");
}

/// How a device's stream ends in [`end_on_either_path`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The engine closes the device.
    Close,
    /// The client signals an abort.
    Abort,
}

/// One round of [`end_on_either_path`]: one Write, then the end, met by a polling task
/// (`waiter == false`: nothing polls between the engine's last step and the next poll, so the
/// waiter thread has no work) or by the waiter thread (a stream is left registered, and the
/// test waits for the end without polling).
async fn end_round(ending: Ending, waiter: bool) {
    let name = common::unique_name("end");
    let set = create(&name).await;
    let (say, heard) = mpsc::channel();
    let heard = Arc::new(Mutex::new(heard));
    let (word, words) = mpsc::channel::<()>();
    let engine_name = name.clone();
    let engine = thread::spawn(move || {
        let plan = Plan {
            devices: 1,
            block: 4096,
            max_transfer: 64 << 10,
            depth: 1,
            bytes: 64 << 10,
        };
        let (set, devices) = common::open_and_configure(&engine_name, &plan, true).unwrap();
        let dev = &devices[0];
        let mut buf = set.allocate_buffer(plan.max_transfer, 0).unwrap();
        common::fill(0, 0, buf.as_mut_slice());
        dev.send(ServerCommand::write(buf, plan.max_transfer))
            .unwrap();
        say.send("sent").unwrap();
        let c = dev.completion(common::WAIT).unwrap();
        assert_eq!(c.completion.code, CompletionCode::SUCCESS);
        say.send("completed").unwrap();
        words.recv().unwrap();
        match ending {
            Ending::Close => {
                dev.close().unwrap();
                say.send("closed").unwrap();
                // The set stays until the client saw the end.
                words.recv().unwrap();
                set.close().unwrap();
            }
            Ending::Abort => {
                // The client aborts; the engine sees it.
                let deadline = Instant::now() + LIMIT;
                while !matches!(dev.completion(vdi_core::Timeout::from_millis(10)), Err(e) if e.is_abort())
                {
                    assert!(Instant::now() < deadline, "no abort");
                }
                say.send("aborted").unwrap();
            }
        }
    });
    set.configuration().await.unwrap();
    let device = set.open_device(&name).await.unwrap();
    let mut stream = device.commands();
    let mut other = device.commands();
    assert_eq!(hear(&heard).await, "sent");
    let w = timeout(LIMIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((w.code(), w.sequence()), (CommandCode::WRITE, 0));
    let n = w.size();
    w.complete(Completion::success(n)).unwrap();
    assert_eq!(hear(&heard).await, "completed");
    if waiter {
        // Registers the stream: the waiter thread waits in GetCommand for it from now on.
        assert!(
            timeout(Duration::from_millis(20), stream.next())
                .await
                .is_err()
        );
    }
    word.send(()).unwrap();
    match ending {
        Ending::Close => assert_eq!(hear(&heard).await, "closed"),
        Ending::Abort => set.signal_abort().unwrap(),
    }
    if waiter {
        until_ended(&device).await;
    }
    let first = timeout(LIMIT, stream.next()).await.unwrap();
    let second = timeout(LIMIT, other.next()).await.unwrap();
    match ending {
        Ending::Close => {
            assert!(first.is_none() && second.is_none());
        }
        Ending::Abort => {
            let e = first.unwrap().unwrap_err();
            assert!(e.is_abort(), "{e:?}");
            let e = second.unwrap().unwrap_err();
            assert!(e.is_abort(), "{e:?}");
        }
    }
    // The end stays: each stream ends (after yielding the error once).
    assert!(timeout(LIMIT, stream.next()).await.unwrap().is_none());
    assert!(timeout(LIMIT, other.next()).await.unwrap().is_none());
    // A new stream too (an abort once, then the end).
    let fresh = timeout(LIMIT, device.commands().next()).await.unwrap();
    assert_eq!(fresh.is_some(), ending == Ending::Abort);
    assert!(device.is_ended());
    match ending {
        Ending::Close => word.send(()).unwrap(),
        Ending::Abort => assert_eq!(hear(&heard).await, "aborted"),
    }
    drop((stream, other, device));
    join(engine).await;
    let _ = set.close().await;
    let end = end_line(&name);
    eprintln!("{ending:?}, waiter {waiter}: {end:?}");
    assert_eq!(end.closed, ending == Ending::Close);
    let by = if waiter { "waiter thread" } else { "task" };
    assert_eq!(end.by, by, "{end:?}");
    assert_eq!(end.directly + end.by_waiter, 1);
}

/// `VD_E_CLOSE` and an abort, each met by a polling task and by the waiter thread: every
/// stream ends, after yielding an abort once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_on_either_path() {
    log();
    common::watchdog(Duration::from_secs(120));
    for ending in [Ending::Close, Ending::Abort] {
        for waiter in [false, true] {
            end_round(ending, waiter).await;
        }
    }
}

/// A command the waiter thread queued comes out before the abort that follows it: a stream
/// registers, the engine sends a Write (the waiter thread takes and queues it), the client
/// aborts; the next polls give the Write, then the abort, then the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_command_before_the_abort() {
    log();
    common::watchdog(Duration::from_secs(60));
    let name = common::unique_name("queued");
    let set = create(&name).await;
    let (word, words) = mpsc::channel::<()>();
    let engine_name = name.clone();
    let engine = thread::spawn(move || {
        let plan = Plan {
            devices: 1,
            block: 4096,
            max_transfer: 64 << 10,
            depth: 1,
            bytes: 64 << 10,
        };
        let (set, devices) = common::open_and_configure(&engine_name, &plan, true).unwrap();
        let dev = &devices[0];
        let mut buf = set.allocate_buffer(plan.max_transfer, 0).unwrap();
        common::fill(0, 0, buf.as_mut_slice());
        words.recv().unwrap();
        dev.send(ServerCommand::write(buf, plan.max_transfer))
            .unwrap();
        // The abort comes first, or the completion (ignored after the abort).
        match dev.completion(common::WAIT) {
            Ok(c) => assert!(
                matches!(
                    c.completion.code,
                    CompletionCode::SUCCESS | CompletionCode::OPERATION_ABORTED
                ),
                "{:?}",
                c.completion.code
            ),
            Err(e) => assert!(e.is_abort(), "{e:?}"),
        }
    });
    set.configuration().await.unwrap();
    let device = set.open_device(&name).await.unwrap();
    let mut stream = device.commands();
    assert!(
        timeout(Duration::from_millis(20), stream.next())
            .await
            .is_err()
    );
    word.send(()).unwrap();
    let deadline = Instant::now() + LIMIT;
    while device.outstanding() == 0 {
        assert!(Instant::now() < deadline, "the waiter thread took nothing");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    set.signal_abort().unwrap();
    let w = timeout(LIMIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((w.code(), w.sequence()), (CommandCode::WRITE, 0));
    let n = w.size();
    let _ = w.complete(Completion::success(n));
    let e = timeout(LIMIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(e.is_abort(), "{e:?}");
    assert!(timeout(LIMIT, stream.next()).await.unwrap().is_none());
    drop((stream, device));
    join(engine).await;
    let _ = set.close().await;
    let end = end_line(&name);
    assert!(!end.closed);
    assert_eq!((end.directly, end.by_waiter), (0, 1));
}
