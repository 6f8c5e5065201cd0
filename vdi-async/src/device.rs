//! Devices as async values: a waiter thread per device takes commands with `GetCommand` and
//! hands them to the tasks that poll the device's [`CommandStream`]s.

use std::{
    fmt,
    pin::Pin,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    thread,
    time::Duration,
};

use futures::Stream;
use tracing::{Span, debug, debug_span, trace, warn};
use vdi_core::{ClientCommand, ClientDevice, Error, Timeout};

use crate::AsyncCommand;

/// How long the waiter thread waits in one call, for a command or for room under the bound.
pub(crate) const SLICE: Duration = Duration::from_millis(100);

/// The default bound on a device's outstanding commands.
pub const DEFAULT_MAX_OUTSTANDING: usize = 16;

/// What the device handles, the waiter thread and every command share.
pub(crate) struct DeviceShared<D> {
    pub(crate) device: D,
    pub(crate) name: String,
    pub(crate) index: u32,
    pub(crate) span: Span,
    state: Mutex<WaiterState>,
    room: Condvar,
}

#[derive(Debug)]
struct WaiterState {
    /// Commands taken from the backend and not yet completed (in the channel, or held).
    outstanding: usize,
    /// The bound on `outstanding`.
    max: usize,
    /// No handle (device or stream) is left: nobody can take commands any more.
    detached: bool,
    /// How the device's command stream ended, once it did.
    end: Option<End>,
}

#[derive(Clone, Copy, Debug)]
enum End {
    /// `VD_E_CLOSE`: the normal end.
    Closed,
    /// Any other error of `GetCommand` (an abort).
    Failed(Error),
}

impl<D> DeviceShared<D> {
    fn lock(&self) -> MutexGuard<'_, WaiterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A command was completed: one more place under the bound.
    pub(crate) fn completed(&self) {
        let mut st = self.lock();
        st.outstanding = st.outstanding.saturating_sub(1);
        drop(st);
        self.room.notify_all();
    }

    fn failure(&self) -> Option<Error> {
        match self.lock().end {
            Some(End::Failed(e)) => Some(e),
            _ => None,
        }
    }
}

/// Marks the device detached when the last handle (device or stream) is dropped, and completes
/// the commands still queued, which nobody can take any more.
struct Handles<D: ClientDevice> {
    shared: Arc<DeviceShared<D>>,
    rx: async_channel::Receiver<AsyncCommand<D>>,
}

impl<D: ClientDevice> Drop for Handles<D> {
    fn drop(&mut self) {
        self.shared.lock().detached = true;
        self.shared.room.notify_all();
        while let Ok(c) = self.rx.try_recv() {
            c.abort_quietly();
        }
    }
}

/// A device opened through an [`AsyncSet`](crate::AsyncSet): its commands come out as
/// [`CommandStream`]s.
///
/// Opening a device starts its *waiter thread* (named `vdi-async <device>`), which takes
/// commands with `GetCommand` in slices of 100 ms while fewer than the bound are outstanding
/// ([`with_max_outstanding`](Self::with_max_outstanding), default
/// [`DEFAULT_MAX_OUTSTANDING`]), and hands each to whichever task polls a stream of the device
/// first. When the engine closes the device (`VD_E_CLOSE`) every stream ends; after an abort
/// every stream yields the error once, then ends.
///
/// The handle is cheap to clone. When the last clone and the last stream are dropped before the
/// device ended, the waiter thread completes every command still queued or still to come with
/// `ERROR_OPERATION_ABORTED`, so the engine sees the I/O fail at once instead of waiting for
/// it; the thread exits at `VD_E_CLOSE` or an abort. A device whose stream ended leaves no
/// thread behind.
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
            state: Mutex::new(WaiterState {
                outstanding: 0,
                max: DEFAULT_MAX_OUTSTANDING,
                detached: false,
                end: None,
            }),
            room: Condvar::new(),
        });
        let (tx, rx) = async_channel::unbounded();
        let waiter = Waiter {
            shared: Arc::clone(&shared),
            tx,
            drain: rx.clone(),
            next_sequence: 0,
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
            rx,
        });
        Ok(Self { shared, handles })
    }
}

impl<D: ClientDevice> AsyncDevice<D> {
    /// Sets the bound on outstanding commands (at least 1): commands taken from the engine and
    /// not yet completed, whether still queued for a stream or held by a task (or by the
    /// [`Bytes`](bytes::Bytes) of a Write). At the bound the waiter thread stops taking
    /// commands, so a slow sink pushes back on the engine instead of growing memory.
    #[must_use]
    pub fn with_max_outstanding(self, max: usize) -> Self {
        self.set_max_outstanding(max);
        self
    }

    /// Changes the bound on outstanding commands (at least 1); see
    /// [`with_max_outstanding`](Self::with_max_outstanding).
    pub fn set_max_outstanding(&self, max: usize) {
        self.shared.lock().max = max.max(1);
        self.shared.room.notify_all();
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

    /// Whether the device's command stream ended (`VD_E_CLOSE` or an abort reached the waiter
    /// thread). Commands it took before may still be queued.
    pub fn is_ended(&self) -> bool {
        self.shared.lock().end.is_some()
    }

    /// A stream of the device's commands, in the order the engine sent them.
    ///
    /// Each stream (and each clone of one) is a consumer: a command goes to exactly one of the
    /// streams polled, so several tasks may drain one device at once. With a single consumer
    /// the commands come in the engine's order; with several, each task sees a subsequence, and
    /// [`AsyncCommand::sequence`] gives the order back.
    pub fn commands(&self) -> CommandStream<D> {
        CommandStream {
            rx: Box::pin(self.handles.rx.clone()),
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
/// Polling never blocks: the device's waiter thread does the waiting.
///
/// # Cancel safety
///
/// Taking a command is atomic: a `next()` or [`recv`](Self::recv) future dropped before it
/// returned took nothing, and the command goes to the next poller. Dropping a stream loses no
/// command either; only when every stream and every [`AsyncDevice`] handle of the device is
/// gone are the commands still queued completed with `ERROR_OPERATION_ABORTED`.
pub struct CommandStream<D: ClientDevice> {
    rx: Pin<Box<async_channel::Receiver<AsyncCommand<D>>>>,
    shared: Arc<DeviceShared<D>>,
    _handles: Arc<Handles<D>>,
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
        match self.rx.recv().await {
            Ok(c) => Some(Ok(c)),
            Err(async_channel::RecvError) => self.end(),
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

impl<D: ClientDevice> Stream for CommandStream<D> {
    type Item = Result<AsyncCommand<D>, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.as_mut().poll_next(cx) {
            Poll::Ready(Some(c)) => Poll::Ready(Some(Ok(c))),
            Poll::Ready(None) => Poll::Ready(self.end()),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<D: ClientDevice> Clone for CommandStream<D> {
    fn clone(&self) -> Self {
        Self {
            rx: Box::pin(async_channel::Receiver::clone(&self.rx)),
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
            .field("queued", &self.rx.len())
            .finish_non_exhaustive()
    }
}

/// The waiter thread of one device.
struct Waiter<D: ClientDevice> {
    shared: Arc<DeviceShared<D>>,
    tx: async_channel::Sender<AsyncCommand<D>>,
    /// A receiver of the thread's own, to take back queued commands nobody can take any more.
    drain: async_channel::Receiver<AsyncCommand<D>>,
    next_sequence: u64,
}

impl<D: ClientDevice> Waiter<D> {
    fn run(mut self) {
        let span = self.shared.span.clone();
        let _entered = span.enter();
        trace!(device = %self.shared.name, "waiter thread started");
        let mut warned = false;
        let end = loop {
            let detached = self.wait_for_room();
            if detached {
                if !warned {
                    warned = true;
                    let queued = self.drain.len();
                    warn!(device = %self.shared.name, queued, "every handle of the device was dropped before the device ended; completing its commands with ERROR_OPERATION_ABORTED");
                }
                while let Ok(c) = self.drain.try_recv() {
                    c.abort_quietly();
                }
            }
            match self.shared.device.command(Timeout::from(SLICE)) {
                Ok(command) => {
                    let c = self.take(command);
                    if detached {
                        c.abort_quietly();
                    } else if let Err(e) = self.tx.try_send(c) {
                        e.into_inner().abort_quietly();
                    }
                }
                Err(Error::Timeout) => {}
                Err(Error::Closed) => break End::Closed,
                Err(e) => break End::Failed(e),
            }
        };
        match end {
            End::Closed => debug!(device = %self.shared.name, "device closed by the engine"),
            End::Failed(e) => debug!(device = %self.shared.name, error = %e, "GetCommand failed"),
        }
        self.shared.lock().end = Some(end);
        // Streams take what is queued, then end. Commands queued when the last handle goes are
        // completed by the handles' drop.
        self.tx.close();
        if self.shared.lock().detached {
            while let Ok(c) = self.drain.try_recv() {
                c.abort_quietly();
            }
        }
    }

    /// Waits, in bounded slices, until a command may be taken; returns whether every handle is
    /// gone (then the bound no longer applies: commands are completed at once).
    fn wait_for_room(&self) -> bool {
        let mut st = self.shared.lock();
        loop {
            if st.detached {
                return true;
            }
            if st.outstanding < st.max {
                return false;
            }
            st = self
                .shared
                .room
                .wait_timeout(st, SLICE)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn take(&mut self, command: D::Command) -> AsyncCommand<D> {
        self.shared.lock().outstanding += 1;
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        trace!(
            code = ?command.code(),
            size = command.size(),
            device = %self.shared.name,
            sequence,
            "command"
        );
        AsyncCommand::new(command, Arc::clone(&self.shared), sequence)
    }
}
