//! Loom models of the device protocol (`device`): every interleaving of a fake engine, the
//! waiter thread and one or two consumers (within a preemption bound), with loom's mutexes,
//! condition variable and park/unpark in place of the real ones.
//!
//! In the model a timed wait never times out (loom's `wait_timeout` is a plain wait) and the
//! fake `GetCommand` waits without a limit, so a lost wake-up is not rescued by a 100 ms
//! slice: it shows as a deadlock, which loom reports. The models check that the commands come
//! out in order, each exactly once, within the bound, that every stream sees the end (or the
//! abort once), that commands nobody can take are completed with `ERROR_OPERATION_ABORTED`,
//! and that the waiter thread exits.
//!
//! `cargo xtask loom` runs them, with `cfg(loom)` on this crate only (tokio does not build
//! with it): `cargo rustc -p vdi-async --lib --profile test -- --cfg loom`, then the test
//! binary cargo reports, with the filter `loom_model`.
//!
//! `LOOM_MAX_PREEMPTIONS` sets the preemption bound (default 2 here: seconds; 3 takes about
//! five minutes).

use std::{
    collections::VecDeque,
    future::Future,
    pin::pin,
    sync::Arc,
    task::{Context, Poll, Wake, Waker},
};

use futures::StreamExt;
use loom::{
    sync::{Condvar, Mutex},
    thread,
};
use tracing::Span;
use vdi_core::{
    AbortReason, ClientCommand, ClientDevice, CommandCode, Completion, CompletionCode, Error,
    Timeout,
};

use crate::{AsyncDevice, CommandStream};

/// What the fake engine and the fake device share.
#[derive(Default)]
struct Fake {
    /// Commands sent and not yet taken.
    ring: VecDeque<u64>,
    /// The engine sent everything: `VD_E_CLOSE` once all is completed.
    sent_all: bool,
    aborted: bool,
    outstanding: u32,
    ended: bool,
    /// The device was dropped: the waiter thread exited and every handle and command is gone.
    dropped: bool,
    /// Each command's number and completion code, in completion order.
    completed: Vec<(u64, CompletionCode)>,
}

#[derive(Clone, Default)]
struct Engine(Arc<(Mutex<Fake>, Condvar)>);

impl Engine {
    fn with<R>(&self, f: impl FnOnce(&mut Fake) -> R) -> R {
        let r = f(&mut self.0.0.lock().unwrap());
        self.0.1.notify_all();
        r
    }

    /// Sends commands `0..n`, then ends (`VD_E_CLOSE` once all are completed), or aborts
    /// after `abort_after` of them.
    fn spawn(&self, n: u64, abort_after: Option<u64>) -> thread::JoinHandle<()> {
        let engine = self.clone();
        thread::spawn(move || {
            for i in 0..n {
                if abort_after == Some(i) {
                    engine.with(|f| f.aborted = true);
                    return;
                }
                engine.with(|f| f.ring.push_back(i));
            }
            engine.with(|f| f.sent_all = true);
        })
    }
}

/// The client side of the fake: `GetCommand` as vdi-shm behaves (`VD_E_CLOSE` only once every
/// command handed out was completed), waiting without a time limit unless polled.
struct FakeDevice(Engine);

impl Drop for FakeDevice {
    fn drop(&mut self) {
        self.0.with(|f| f.dropped = true);
    }
}

struct FakeCommand(u64);

impl ClientCommand for FakeCommand {
    fn code(&self) -> CommandCode {
        CommandCode::WRITE
    }
    fn size(&self) -> u32 {
        0
    }
    fn position(&self) -> u64 {
        self.0
    }
    fn device_index(&self) -> u32 {
        0
    }
    fn data(&self) -> &[u8] {
        &[]
    }
    fn data_mut(&mut self) -> &mut [u8] {
        &mut []
    }
    fn prefix_zone(&mut self) -> &mut [u8] {
        &mut []
    }
}

impl ClientDevice for FakeDevice {
    type Command = FakeCommand;

    fn index(&self) -> u32 {
        0
    }

    fn command(&self, timeout: Timeout) -> Result<FakeCommand, Error> {
        let (m, cv) = &*self.0.0;
        let mut f = m.lock().unwrap();
        loop {
            if f.aborted {
                return Err(Error::Aborted(AbortReason::Signalled));
            }
            if f.ended {
                return Err(Error::Closed);
            }
            if let Some(n) = f.ring.pop_front() {
                f.outstanding += 1;
                return Ok(FakeCommand(n));
            }
            if f.sent_all && f.outstanding == 0 {
                f.ended = true;
                return Err(Error::Closed);
            }
            if timeout.is_poll() {
                return Err(Error::Timeout);
            }
            f = cv.wait(f).unwrap();
        }
    }

    fn complete(&self, command: FakeCommand, completion: Completion) -> Result<(), Error> {
        self.0.with(|f| {
            f.outstanding -= 1;
            f.completed.push((command.0, completion.code));
        });
        Ok(())
    }
}

struct Unparker(thread::Thread);

impl Wake for Unparker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `f` to completion on this loom thread, parking while it is pending: a wake-up that
/// never comes leaves the thread parked, which loom reports as a deadlock.
fn block_on<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unparker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

fn open(engine: &Engine, max: usize) -> AsyncDevice<FakeDevice> {
    AsyncDevice::new(FakeDevice(engine.clone()), "fake", &Span::none())
        .expect("waiter thread")
        .with_max_outstanding(max)
}

/// Takes and completes commands until the end; returns (sequence, number) of each, and the
/// error if the stream yielded one.
fn drain(stream: &mut CommandStream<FakeDevice>) -> (Vec<(u64, u64)>, Option<Error>) {
    let mut got = Vec::new();
    let mut error = None;
    while let Some(c) = block_on(stream.next()) {
        match c {
            Ok(c) => {
                got.push((c.sequence(), c.position()));
                c.complete(Completion::success(0)).unwrap();
            }
            Err(e) => {
                assert!(error.replace(e).is_none(), "the error comes once");
            }
        }
    }
    (got, error)
}

/// Waits until the device is dropped, which needs the waiter thread to exit (it holds the
/// device): a thread that never exits leaves this one waiting, a deadlock loom reports.
fn waiter_exits(engine: &Engine) {
    let (m, cv) = &*engine.0;
    let mut f = m.lock().unwrap();
    while !f.dropped {
        f = cv.wait(f).unwrap();
    }
}

/// One consumer, three commands: in order, each once, then the end; the waiter thread exits.
#[test]
fn one_consumer_in_order() {
    model(|| {
        let engine = Engine::default();
        let sender = engine.spawn(3, None);
        let device = open(&engine, 16);
        let mut stream = device.commands();
        let (got, error) = drain(&mut stream);
        assert!(error.is_none());
        assert_eq!(got, vec![(0, 0), (1, 1), (2, 2)]);
        assert!(device.is_ended());
        drop((stream, device));
        sender.join().unwrap();
        waiter_exits(&engine);
    });
}

/// Two consumers under a bound of 1: each gets an increasing subsequence, together every
/// command once, never two outstanding; a completion that makes room wakes the other.
#[test]
fn two_consumers_bound_one() {
    model(|| {
        let engine = Engine::default();
        let sender = engine.spawn(2, None);
        let device = open(&engine, 1);
        let mut a = device.commands();
        let mut b = device.commands();
        let other = thread::spawn(move || drain(&mut b));
        let (mut got, error) = drain(&mut a);
        assert!(error.is_none());
        let (got_b, error) = other.join().unwrap();
        assert!(error.is_none());
        for g in [&got, &got_b] {
            assert!(g.windows(2).all(|w| w[0].0 < w[1].0), "{g:?}");
            assert!(g.iter().all(|(s, n)| s == n));
        }
        got.extend(got_b);
        got.sort_unstable();
        assert_eq!(got, vec![(0, 0), (1, 1)]);
        drop((a, device));
        sender.join().unwrap();
        waiter_exits(&engine);
    });
}

/// Under a bound of 1, a consumer takes one command, completes it and goes away, while the
/// other waits at the bound: the completion must wake it (or the waiter thread for it).
#[test]
fn completion_makes_room() {
    model(|| {
        let engine = Engine::default();
        let sender = engine.spawn(2, None);
        let device = open(&engine, 1);
        let mut a = device.commands();
        let mut b = device.commands();
        let other = thread::spawn(move || {
            // One command, or the end if the other consumer took both.
            let c = block_on(b.next())?.unwrap();
            let got = (c.sequence(), c.position());
            c.complete(Completion::success(0)).unwrap();
            Some(got)
        });
        let (mut got, error) = drain(&mut a);
        assert!(error.is_none());
        got.extend(other.join().unwrap());
        got.sort_unstable();
        assert_eq!(got, vec![(0, 0), (1, 1)]);
        drop((a, device));
        sender.join().unwrap();
        waiter_exits(&engine);
    });
}

/// An abort after one command: every stream yields the error once, then ends.
#[test]
fn abort_reaches_every_stream() {
    model(|| {
        let engine = Engine::default();
        let sender = engine.spawn(2, Some(1));
        let device = open(&engine, 16);
        let mut a = device.commands();
        let mut b = device.commands();
        let other = thread::spawn(move || drain(&mut b));
        let (got, error) = drain(&mut a);
        assert!(error.is_some_and(|e| e.is_abort()));
        let (got_b, error) = other.join().unwrap();
        assert!(error.is_some_and(|e| e.is_abort()));
        assert!(got.len() + got_b.len() <= 1);
        drop((a, device));
        sender.join().unwrap();
        waiter_exits(&engine);
    });
}

/// Every handle dropped after the first command: the rest are completed with
/// `ERROR_OPERATION_ABORTED` (by the handles' drop or the waiter thread), and the waiter
/// thread exits at the end.
#[test]
fn dropped_handles_abort_the_rest() {
    model(|| {
        let engine = Engine::default();
        let sender = engine.spawn(3, None);
        let device = open(&engine, 16);
        let mut stream = device.commands();
        let first = block_on(stream.next()).unwrap().unwrap();
        assert_eq!((first.sequence(), first.position()), (0, 0));
        first.complete(Completion::success(0)).unwrap();
        drop((stream, device));
        sender.join().unwrap();
        waiter_exits(&engine);
        let completed = engine.with(|f| f.completed.clone());
        assert_eq!(completed[0], (0, CompletionCode::SUCCESS));
        let mut rest: Vec<_> = completed[1..].to_vec();
        rest.sort_unstable();
        assert_eq!(
            rest,
            vec![
                (1, CompletionCode::OPERATION_ABORTED),
                (2, CompletionCode::OPERATION_ABORTED)
            ]
        );
    });
}
