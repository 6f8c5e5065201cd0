//! Devices as async values: a task that polls a device's [`CommandStream`] takes the next command
//! itself with a non-blocking `GetCommand` when one is there, and a waiter thread per device
//! waits in `GetCommand` for the tasks that found none.
//!
//! # The protocol
//!
//! All shared state is in one mutex ([`DeviceShared::state`]): the queue of commands the waiter
//! thread took for the tasks, the wakers of the consumers waiting for a command, the count of
//! outstanding commands and its bound, the end of the device, whether it lost its last handle,
//! and the *taker token* ([`State::taking`]), a flag that whoever calls `GetCommand` holds
//! across the call, together with the sequence number of the next command. The waiter thread
//! sleeps on a condition variable ([`DeviceShared::work`]). No `GetCommand`, completion or wake
//! runs under the lock, and nobody ever waits for the token while holding anything.
//!
//! A consumer's poll ([`DeviceShared::poll_take`]) locks the state and:
//!
//! 1. takes the queue's first command if there is one, else the end if the device ended;
//! 2. else, if the token is free and fewer than the bound are outstanding, takes the token,
//!    and outside the lock calls `GetCommand` with [`Timeout::POLL`] (which never waits), again
//!    and again for at most [`POLL_SPIN`] (5 µs) while nothing is there; back under the lock it
//!    gives the token back, and returns a command it got, numbered and
//!    counted, with no other thread involved (`VD_E_CLOSE` or an error there ends the device);
//!    if there was none, it goes on with step 3 in that critical section;
//! 3. else (no command, no room, or the token was taken) registers its waker, in a critical
//!    section that saw an empty queue and no end, wakes the waiter thread if it sleeps and now
//!    has work, and returns `Pending`.
//!
//! The waiter thread has work when the device lost its last handle (it then takes every
//! command and completes it with `ERROR_OPERATION_ABORTED`), or when a consumer waits and fewer
//! than the bound are outstanding. It takes the token when it has work and the token is free,
//! else sleeps, in 100 ms slices. With the token, it calls `GetCommand` with a 100 ms timeout;
//! back under the lock it numbers a command it got, pushes it on the queue, gives the token
//! back, and takes the waiting consumers' wakers, which it wakes once the lock is released.
//! Between its calls the token is free, so tasks can take commands directly.
//!
//! A completion that makes room under the bound wakes the waiting consumers (they then take
//! the next command themselves); the end of the device wakes them all, and the waiter thread.
//!
//! # Why the order holds
//!
//! Every command is taken under the token and numbered in the critical section that gives the
//! token back, so sequence numbers are the engine's order. The waiter thread pushes its command
//! in that same critical section, so the queue is in sequence order, and whoever takes the
//! token next sees every command taken before in the queue. A task takes a command itself only
//! with the token, taken in a critical section that saw the queue empty; so a command leaves
//! the device (popped from the queue, or returned by a direct take) only after every command
//! before it left. A single consumer therefore gets the commands in the engine's order; several
//! each get an increasing subsequence.
//!
//! # Why no wake-up is lost
//!
//! A consumer returns `Pending` only after registering in a critical section that saw the
//! queue empty and the device not ended. Everything that can change that (a push, the end)
//! happens under the same lock, after the registration, and wakes every registered consumer.
//! The waiter thread decides to sleep in a critical section that saw no work or a taken token,
//! and whoever changes that (a registration, a completion that makes room, the token given
//! back by a task, the last handle dropped, the end) does it under the lock and notifies the
//! condition variable if the thread sleeps and now has work; so the thread either saw the
//! change before it slept or is woken by it. A consumer at the bound is woken by the
//! completion that makes room. And every sleep of the thread, and every `GetCommand` call it
//! makes, is bounded by the slice, after which it looks again: a missed notification would
//! cost at most one slice, not a hang. The loom models (`crate::loom_model`) check this with
//! timeouts that never fire.

use std::{
    collections::VecDeque,
    fmt,
    pin::Pin,
    sync::{Arc, PoisonError, atomic::Ordering},
    task::{Context, Poll, Waker},
    time::Duration,
};

// The loom models (`crate::loom_model`) check this module's protocol with loom's primitives.
#[cfg(all(loom, test))]
use loom::{
    sync::{
        Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64},
    },
    thread,
};
#[cfg(not(all(loom, test)))]
use std::{
    sync::{
        Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64},
    },
    thread,
};

use futures::Stream;
use tracing::{Span, debug, debug_span, trace, warn};
use vdi_core::{ClientCommand, ClientDevice, Error, Timeout};

use crate::AsyncCommand;

/// How long the waiter thread waits in one call, for a command or for work.
pub(crate) const SLICE: Duration = Duration::from_millis(100);

/// How long a polling task keeps trying `GetCommand` without waiting before it leaves the
/// waiting to the waiter thread: about what a blocking `GetCommand` of vdi-shm spins before
/// it sleeps. (Under loom, one try: the model must not depend on the clock.)
#[cfg(not(all(loom, test)))]
const POLL_SPIN: Duration = Duration::from_micros(5);
#[cfg(all(loom, test))]
const POLL_SPIN: Duration = Duration::ZERO;

/// The log line of a device's end says who met it: a polling task ...
const BY_TASK: &str = "task";
/// ... or the waiter thread.
const BY_WAITER: &str = "waiter thread";

/// The default bound on a device's outstanding commands.
pub const DEFAULT_MAX_OUTSTANDING: usize = 16;

/// What the device handles, the waiter thread and every command share.
pub(crate) struct DeviceShared<D: ClientDevice> {
    pub(crate) device: D,
    pub(crate) name: String,
    pub(crate) index: u32,
    pub(crate) span: Span,
    state: Mutex<State<D>>,
    /// The waiter thread sleeps on it while it has no work, or the token is taken.
    work: Condvar,
    /// The id of the next consumer (stream or `recv` future).
    next_consumer: AtomicU64,
}

struct State<D: ClientDevice> {
    /// The taker token: set across every call of `GetCommand` on the device, by the caller.
    taking: bool,
    /// The sequence number of the next command taken (changed only with the token).
    next_sequence: u64,
    /// Commands the waiter thread took, in sequence order, for the next consumers.
    queue: VecDeque<AsyncCommand<D>>,
    /// The consumers waiting for a command: each registered while the queue was empty and the
    /// device had not ended.
    waiting: Vec<(u64, Waker)>,
    /// Commands taken from the backend and not yet completed (queued, or held).
    outstanding: usize,
    /// The bound on `outstanding`.
    max: usize,
    /// No handle (device or stream) is left: nobody can take commands any more.
    detached: bool,
    /// How the device's command stream ended, once it did.
    end: Option<End>,
    /// The waiter thread sleeps on [`DeviceShared::work`] (and was not notified since).
    waiter_asleep: bool,
    /// Commands taken by consumers directly, and by the waiter thread (for the log).
    taken_directly: u64,
    taken_by_waiter: u64,
}

impl<D: ClientDevice> State<D> {
    /// Whether the waiter thread has a command to wait for: for a waiting consumer (under the
    /// bound), or to complete it because nobody can serve the device any more.
    fn waiter_has_work(&self) -> bool {
        self.detached || (!self.waiting.is_empty() && self.outstanding < self.max)
    }

    /// Whether the waiter thread, asleep, should wake: to take the token for its work, or to
    /// exit at the end.
    fn waiter_should_wake(&self) -> bool {
        self.end.is_some() || (!self.taking && self.waiter_has_work())
    }

    /// What a consumer gets without waiting: the first queued command, or the end (`None`).
    fn ready(&mut self, consumer: &mut Consumer) -> Option<Option<AsyncCommand<D>>> {
        let r = match self.queue.pop_front() {
            Some(c) => Some(Some(c)),
            None if self.end.is_some() => Some(None),
            None => None,
        };
        if r.is_some() {
            self.deregister(consumer);
        }
        r
    }

    fn register(&mut self, consumer: &mut Consumer, waker: &Waker) {
        consumer.registered = true;
        match self.waiting.iter_mut().find(|(id, _)| *id == consumer.id) {
            Some((_, w)) => w.clone_from(waker),
            None => self.waiting.push((consumer.id, waker.clone())),
        }
    }

    fn deregister(&mut self, consumer: &mut Consumer) {
        if std::mem::take(&mut consumer.registered)
            && let Some(i) = self.waiting.iter().position(|(id, _)| *id == consumer.id)
        {
            self.waiting.swap_remove(i);
        }
    }

    /// Takes the waiting consumers' wakers, to wake them once the lock is released.
    fn take_waiting(&mut self) -> Wakers {
        Wakers(std::mem::take(&mut self.waiting))
    }

    /// Numbers a command taken with the token, and counts it outstanding.
    fn number(&mut self, shared: &Arc<DeviceShared<D>>, command: D::Command) -> AsyncCommand<D> {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.outstanding += 1;
        trace!(
            code = ?command.code(),
            size = command.size(),
            device = %shared.name,
            sequence,
            "command"
        );
        AsyncCommand::new(command, Arc::clone(shared), sequence)
    }
}

/// Wakers to wake once no lock is held.
#[must_use]
struct Wakers(Vec<(u64, Waker)>);

impl Wakers {
    fn none() -> Self {
        Self(Vec::new())
    }

    fn wake(self) {
        for (_, w) in self.0 {
            w.wake();
        }
    }
}

/// A consumer of the device's commands: a stream, or one `recv` future.
#[derive(Debug)]
struct Consumer {
    id: u64,
    /// Whether its waker may be registered (it was, and it did not take anything since).
    registered: bool,
}

#[derive(Clone, Copy, Debug)]
enum End {
    /// `VD_E_CLOSE`: the normal end.
    Closed,
    /// Any other error of `GetCommand` (an abort).
    Failed(Error),
}

/// The token as a task holds it across its `GetCommand`: if the call panics, dropping this
/// gives the token back, so the device does not stall.
struct TaskToken<'a, D: ClientDevice> {
    shared: &'a DeviceShared<D>,
    held: bool,
}

impl<D: ClientDevice> TaskToken<'_, D> {
    /// Gives the token back (under the lock the caller holds).
    fn release(mut self, st: &mut State<D>) {
        self.held = false;
        st.taking = false;
    }
}

impl<D: ClientDevice> Drop for TaskToken<'_, D> {
    fn drop(&mut self) {
        if self.held {
            let mut st = self.shared.lock();
            st.taking = false;
            self.shared.poke(&mut st);
        }
    }
}

impl<D: ClientDevice> DeviceShared<D> {
    fn lock(&self) -> MutexGuard<'_, State<D>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn consumer(&self) -> Consumer {
        Consumer {
            id: self.next_consumer.fetch_add(1, Ordering::Relaxed),
            registered: false,
        }
    }

    /// Wakes the waiter thread if it sleeps and should not.
    fn poke(&self, st: &mut State<D>) {
        if st.waiter_asleep && st.waiter_should_wake() {
            st.waiter_asleep = false;
            self.work.notify_one();
        }
    }

    /// A command was completed: one more place under the bound. If that made room, the
    /// waiting consumers are woken to take the next command themselves.
    pub(crate) fn completed(&self) {
        let mut st = self.lock();
        let was_full = st.outstanding >= st.max;
        st.outstanding = st.outstanding.saturating_sub(1);
        let wakers = if was_full && st.outstanding < st.max {
            st.take_waiting()
        } else {
            Wakers::none()
        };
        self.poke(&mut st);
        drop(st);
        wakers.wake();
    }

    fn failure(&self) -> Option<Error> {
        match self.lock().end {
            Some(End::Failed(e)) => Some(e),
            _ => None,
        }
    }

    fn drop_consumer(&self, consumer: &mut Consumer) {
        if consumer.registered {
            self.lock().deregister(consumer);
        }
    }

    /// Records the end of the command stream (`GetCommand` returned `e` to `by`, who holds the
    /// token): every waiting consumer and the waiter thread will see it.
    fn end_with(&self, st: &mut State<D>, e: Error, by: &'static str) -> Wakers {
        let (directly, by_waiter) = (st.taken_directly, st.taken_by_waiter);
        let end = match e {
            Error::Closed => {
                debug!(parent: &self.span, device = %self.name, by, directly, by_waiter, "device closed by the engine");
                End::Closed
            }
            e => {
                debug!(parent: &self.span, device = %self.name, by, error = %e, directly, by_waiter, "GetCommand failed");
                End::Failed(e)
            }
        };
        st.end.get_or_insert(end);
        self.poke(st);
        st.take_waiting()
    }

    /// `GetCommand` without waiting, tried again for [`POLL_SPIN`] when nothing is there (as a
    /// blocking `GetCommand` spins before it sleeps): a command that comes within those few
    /// microseconds saves the two thread wake-ups of the waiter thread's path.
    fn poll_command(&self) -> Result<D::Command, Error> {
        let mut deadline = None;
        loop {
            match self.device.command(Timeout::POLL) {
                Err(Error::Timeout) => {}
                r => return r,
            }
            let now = std::time::Instant::now();
            let until = *deadline.get_or_insert(now + POLL_SPIN);
            if now >= until {
                return Err(Error::Timeout);
            }
            for _ in 0..64 {
                std::hint::spin_loop();
            }
        }
    }

    /// A consumer's poll: the next command, or `None` at the end; see the module docs.
    fn poll_take(
        self: &Arc<Self>,
        consumer: &mut Consumer,
        cx: &mut Context<'_>,
    ) -> Poll<Option<AsyncCommand<D>>> {
        let mut st = self.lock();
        if let Some(r) = st.ready(consumer) {
            return Poll::Ready(r);
        }
        if st.taking || st.outstanding >= st.max || st.detached {
            st.register(consumer, cx.waker());
            self.poke(&mut st);
            return Poll::Pending;
        }
        // The queue is empty and the token free: take it, and the next command if it is there.
        st.taking = true;
        let token = TaskToken {
            shared: self,
            held: true,
        };
        drop(st);
        let r = self.poll_command();
        let mut st = self.lock();
        token.release(&mut st);
        // With the token held, nothing was pushed and the device did not end (both need it).
        let wakers = match r {
            Ok(command) => {
                st.taken_directly += 1;
                st.deregister(consumer);
                let c = st.number(self, command);
                self.poke(&mut st);
                return Poll::Ready(Some(c));
            }
            Err(Error::Timeout) => {
                st.register(consumer, cx.waker());
                self.poke(&mut st);
                return Poll::Pending;
            }
            Err(e) => {
                st.deregister(consumer);
                self.end_with(&mut st, e, BY_TASK)
            }
        };
        drop(st);
        wakers.wake();
        Poll::Ready(None)
    }
}

/// Marks the device detached when the last handle (device or stream) is dropped, and completes
/// the commands still queued, which nobody can take any more.
struct Handles<D: ClientDevice> {
    shared: Arc<DeviceShared<D>>,
}

impl<D: ClientDevice> Drop for Handles<D> {
    fn drop(&mut self) {
        let shared = &self.shared;
        let mut st = shared.lock();
        st.detached = true;
        let queued = std::mem::take(&mut st.queue);
        if st.end.is_none() {
            warn!(parent: &shared.span, device = %shared.name, queued = queued.len(), "every handle of the device was dropped before the device ended; completing its commands with ERROR_OPERATION_ABORTED");
        }
        shared.poke(&mut st);
        drop(st);
        for c in queued {
            c.abort_quietly();
        }
    }
}

/// A device opened through an [`AsyncSet`](crate::AsyncSet): its commands come out as
/// [`CommandStream`]s.
///
/// A task that polls a stream of the device takes the next command itself when the engine
/// has already sent it (`GetCommand` with a zero timeout, which never waits), so a busy
/// consumer gets commands with no thread in between. Opening a device also starts its *waiter
/// thread* (named `vdi-async <device>`): when a task finds no command, the thread waits for one
/// in `GetCommand`, in slices of 100 ms, and hands it to whichever task polls a stream of the
/// device first. Calls of `GetCommand` on the device are made one at a time, so commands keep
/// the engine's order. No more than a bound are outstanding at any time
/// ([`with_max_outstanding`](Self::with_max_outstanding), default
/// [`DEFAULT_MAX_OUTSTANDING`]). When the engine closes the device (`VD_E_CLOSE`) every stream
/// ends; after an abort every stream yields the error once, then ends.
///
/// The handle is cheap to clone. When the last clone and the last stream are dropped before the
/// device ended, the commands still queued, and every command still to come (which the waiter
/// thread takes), are completed with `ERROR_OPERATION_ABORTED`, so the engine sees the I/O
/// fail at once instead of waiting for it; the thread exits at `VD_E_CLOSE` or an abort. A
/// device whose stream ended leaves no thread behind.
pub struct AsyncDevice<D: ClientDevice> {
    shared: Arc<DeviceShared<D>>,
    handles: Arc<Handles<D>>,
}

impl<D: ClientDevice + 'static> AsyncDevice<D> {
    /// Wraps a device opened with the backend's `OpenDevice` and starts its waiter thread.
    ///
    /// [`AsyncSet::open_device`](crate::AsyncSet::open_device) calls this; use it for a device
    /// opened by other means. `name` is for logs; `parent` is the span of the device's set
    /// (the device's `vdi_device` span is made a child of it).
    ///
    /// # Errors
    ///
    /// [`Error::System`] when the thread cannot be started (the device is dropped).
    pub fn new(device: D, name: &str, parent: &Span) -> Result<Self, Error> {
        let index = device.index();
        let span = debug_span!(parent: parent, "vdi_device", name = %name, index);
        let shared = Arc::new(DeviceShared {
            device,
            name: name.to_owned(),
            index,
            span,
            state: Mutex::new(State {
                taking: false,
                next_sequence: 0,
                queue: VecDeque::new(),
                waiting: Vec::new(),
                outstanding: 0,
                max: DEFAULT_MAX_OUTSTANDING,
                detached: false,
                end: None,
                waiter_asleep: false,
                taken_directly: 0,
                taken_by_waiter: 0,
            }),
            work: Condvar::new(),
            next_consumer: AtomicU64::new(0),
        });
        let waiter = Waiter {
            shared: Arc::clone(&shared),
        };
        thread::Builder::new()
            .name(format!("vdi-async {name}"))
            .spawn(move || waiter.run())
            .map_err(|e| {
                Error::System(vdi_core::SystemError {
                    call: "thread spawn",
                    code: e.raw_os_error().unwrap_or(0),
                })
            })?;
        let handles = Arc::new(Handles {
            shared: Arc::clone(&shared),
        });
        Ok(Self { shared, handles })
    }
}

impl<D: ClientDevice> AsyncDevice<D> {
    /// Sets the bound on outstanding commands (at least 1): commands taken from the engine and
    /// not yet completed, whether still queued for a stream or held by a task (or by the
    /// [`Bytes`](bytes::Bytes) of a Write). At the bound no command is taken, so a slow sink
    /// pushes back on the engine instead of growing memory.
    #[must_use]
    pub fn with_max_outstanding(self, max: usize) -> Self {
        self.set_max_outstanding(max);
        self
    }

    /// Changes the bound on outstanding commands (at least 1); see
    /// [`with_max_outstanding`](Self::with_max_outstanding).
    pub fn set_max_outstanding(&self, max: usize) {
        let mut st = self.shared.lock();
        let was_full = st.outstanding >= st.max;
        st.max = max.max(1);
        let wakers = if was_full && st.outstanding < st.max {
            st.take_waiting()
        } else {
            Wakers(Vec::new())
        };
        self.shared.poke(&mut st);
        drop(st);
        wakers.wake();
    }

    /// The bound on outstanding commands.
    pub fn max_outstanding(&self) -> usize {
        self.shared.lock().max
    }

    /// Commands taken from the engine and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.shared.lock().outstanding
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The device's index in its set.
    pub fn index(&self) -> u32 {
        self.shared.index
    }

    /// The device's `vdi_device` span, to instrument the tasks that serve it.
    pub fn span(&self) -> &Span {
        &self.shared.span
    }

    /// The backend's device.
    pub fn inner(&self) -> &D {
        &self.shared.device
    }

    /// Whether the device's command stream ended (`GetCommand` returned `VD_E_CLOSE` or an
    /// abort, to a task or to the waiter thread). Commands taken before may still be queued.
    pub fn is_ended(&self) -> bool {
        self.shared.lock().end.is_some()
    }

    /// A stream of the device's commands, in the order the engine sent them.
    ///
    /// Each stream (and each clone of one) is a consumer: a command goes to exactly one of the
    /// streams polled, so several tasks may drain one device at once. With a single consumer
    /// the commands come in the engine's order; with several, each task sees an increasing
    /// subsequence, and [`AsyncCommand::sequence`] gives the order back.
    pub fn commands(&self) -> CommandStream<D> {
        CommandStream {
            consumer: self.shared.consumer(),
            shared: Arc::clone(&self.shared),
            _handles: Arc::clone(&self.handles),
            reported: AtomicBool::new(false),
        }
    }
}

impl<D: ClientDevice> Clone for AsyncDevice<D> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            handles: Arc::clone(&self.handles),
        }
    }
}

impl<D: ClientDevice> fmt::Debug for AsyncDevice<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("AsyncDevice")
            .field("name", &self.shared.name)
            .field("index", &self.shared.index)
            .field("outstanding", &st.outstanding)
            .field("max_outstanding", &st.max)
            .field("end", &st.end)
            .finish()
    }
}

/// The commands of a device as a [`Stream`]: `Ok(command)` in the engine's order, `Err` once
/// after an abort, then the end; the end alone when the engine closed the device
/// (`VD_E_CLOSE`).
///
/// Clone it to let several tasks take commands: each clone is a consumer with its own waker,
/// and each command goes to exactly one of them. A stream may also be shared by reference
/// between tasks through [`recv`](Self::recv).
///
/// Polling never waits for the engine. A poll first takes a command the device's waiter thread
/// queued; else, if no other thread is in `GetCommand` on the device and fewer than the bound
/// are outstanding, it calls `GetCommand` with a zero timeout on the polling thread (trying
/// again for at most 5 µs, as a blocking `GetCommand` spins before it sleeps), and returns the
/// command if the engine sent one; else it leaves the waiting to the waiter thread.
///
/// # Cancel safety
///
/// Taking a command is atomic: a `next()` or [`recv`](Self::recv) future dropped before it
/// returned took nothing, and the command goes to the next poller. Dropping a stream loses no
/// command either; only when every stream and every [`AsyncDevice`] handle of the device is
/// gone are the commands still queued completed with `ERROR_OPERATION_ABORTED`.
pub struct CommandStream<D: ClientDevice> {
    shared: Arc<DeviceShared<D>>,
    _handles: Arc<Handles<D>>,
    consumer: Consumer,
    /// Whether this stream already yielded the terminal error.
    reported: AtomicBool,
}

impl<D: ClientDevice> CommandStream<D> {
    /// The next command, or the terminal error once, or `None` at the end; for streams shared
    /// by reference between tasks.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: a future dropped before it completed took no command.
    pub async fn recv(&self) -> Option<Result<AsyncCommand<D>, Error>> {
        let mut guard = RecvConsumer {
            shared: &self.shared,
            consumer: self.shared.consumer(),
        };
        let r = std::future::poll_fn(|cx| {
            DeviceShared::poll_take(&self.shared, &mut guard.consumer, cx)
        })
        .await;
        drop(guard);
        match r {
            Some(c) => Some(Ok(c)),
            None => self.end(),
        }
    }

    /// The device's name.
    pub fn device_name(&self) -> &str {
        &self.shared.name
    }

    fn end(&self) -> Option<Result<AsyncCommand<D>, Error>> {
        let e = self.shared.failure()?;
        if self.reported.swap(true, Ordering::AcqRel) {
            None
        } else {
            Some(Err(e))
        }
    }
}

/// The consumer of one [`CommandStream::recv`] future: its waker is deregistered when the
/// future is dropped.
struct RecvConsumer<'a, D: ClientDevice> {
    shared: &'a DeviceShared<D>,
    consumer: Consumer,
}

impl<D: ClientDevice> Drop for RecvConsumer<'_, D> {
    fn drop(&mut self) {
        self.shared.drop_consumer(&mut self.consumer);
    }
}

impl<D: ClientDevice> Stream for CommandStream<D> {
    type Item = Result<AsyncCommand<D>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match DeviceShared::poll_take(&this.shared, &mut this.consumer, cx) {
            Poll::Ready(Some(c)) => Poll::Ready(Some(Ok(c))),
            Poll::Ready(None) => Poll::Ready(this.end()),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<D: ClientDevice> Drop for CommandStream<D> {
    fn drop(&mut self) {
        self.shared.drop_consumer(&mut self.consumer);
    }
}

impl<D: ClientDevice> Clone for CommandStream<D> {
    fn clone(&self) -> Self {
        Self {
            consumer: self.shared.consumer(),
            shared: Arc::clone(&self.shared),
            _handles: Arc::clone(&self._handles),
            reported: AtomicBool::new(false),
        }
    }
}

impl<D: ClientDevice> fmt::Debug for CommandStream<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandStream")
            .field("device", &self.shared.name)
            .field("queued", &self.shared.lock().queue.len())
            .finish_non_exhaustive()
    }
}

/// The waiter thread of one device.
struct Waiter<D: ClientDevice> {
    shared: Arc<DeviceShared<D>>,
}

impl<D: ClientDevice> Waiter<D> {
    fn run(self) {
        let shared = &self.shared;
        let span = shared.span.clone();
        let _entered = span.enter();
        trace!(device = %shared.name, "waiter thread started");
        while self.take_token() {
            let r = shared.device.command(Timeout::from(SLICE));
            let mut st = shared.lock();
            st.taking = false;
            let (abort, wakers) = match r {
                Ok(command) => {
                    st.taken_by_waiter += 1;
                    let c = st.number(shared, command);
                    if st.detached {
                        (Some(c), Wakers::none())
                    } else {
                        st.queue.push_back(c);
                        (None, st.take_waiting())
                    }
                }
                Err(Error::Timeout) => (None, Wakers::none()),
                Err(e) => (None, shared.end_with(&mut st, e, BY_WAITER)),
            };
            drop(st);
            wakers.wake();
            if let Some(c) = abort {
                c.abort_quietly();
            }
        }
        trace!(device = %shared.name, "waiter thread exits");
    }

    /// Sleeps, in bounded slices, until there is work and the token is free, and takes the
    /// token; returns `false` once the device ended.
    fn take_token(&self) -> bool {
        let shared = &self.shared;
        let mut st = shared.lock();
        loop {
            if st.end.is_some() {
                return false;
            }
            if !st.taking && st.waiter_has_work() {
                st.taking = true;
                return true;
            }
            st.waiter_asleep = true;
            st = shared
                .work
                .wait_timeout(st, SLICE)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            st.waiter_asleep = false;
        }
    }
}
