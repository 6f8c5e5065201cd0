//! The machinery both operations share: opening and configuring the set, the devices (each with
//! a sender side and a completion thread), the shared buffer pool, the serverTimeOut logic, the
//! faults, and the end of a run.
//!
//! Every wait is a loop of short slices ([`SLICE`]) that re-checks whether the run stopped, so
//! no thread blocks for long in one call; and every loop ends, because a device with commands
//! outstanding and no completion for its stall limit aborts the set (after which the backend
//! completes everything with `ERROR_OPERATION_ABORTED` and answers `VD_E_ABORT`), and a device
//! that was closed or timed out is given up after [`CLOSE_GRACE`].

use std::{
    collections::HashMap,
    sync::{
        Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tracing::{debug, warn};
use vdi_core::{
    ClientConfig, CommandCode, Completion, CompletionCode, Error, InvalidReason, ServerBackend,
    ServerCommand, ServerConfig, ServerDevice, ServerDeviceSet, Timeout,
};

use crate::{
    error::{AbortedBy, EngineError, TimeoutSource},
    options::{Faults, Options},
    report::Warning,
};

/// The longest a thread waits in one call before it re-checks the run.
pub(crate) const SLICE: Duration = Duration::from_millis(50);
const SLICE_TIMEOUT: Timeout = Timeout::from_millis(50);
/// How long a device may take to end after `CloseDevice` (or after a timeout) before its
/// completion thread gives up.
const CLOSE_GRACE: Duration = Duration::from_secs(30);
/// The bound on the wait for outstanding commands once the run has failed.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// How often `Open` is retried while waiting for the set.
const OPEN_RETRY: Duration = Duration::from_millis(20);
/// How long a wait for a command's completion may find nothing outstanding before it is
/// declared lost (an internal error; it cannot happen with a correct backend).
const LOST_WAIT: Duration = Duration::from_secs(5);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The stall limits of a run (vdi-spec.md §3.1, serverTimeOut; §9.3).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    server_timeout: Option<TimeoutSource>,
    config_timeout: Duration,
    idle_limit: Duration,
}

impl Limits {
    pub(crate) fn new(options: &Options, client: &ClientConfig) -> Self {
        let server_timeout = match options.server_timeout {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(TimeoutSource::EngineServerTimeout(d)),
            None if client.server_timeout != 0 => Some(TimeoutSource::ClientServerTimeout(
                Duration::from_millis(u64::from(client.server_timeout)),
            )),
            None => None,
        };
        Self {
            server_timeout,
            config_timeout: options.config_timeout,
            idle_limit: options.idle_limit,
        }
    }

    /// The `serverTimeOut` in effect.
    pub(crate) fn server_timeout(&self) -> Option<Duration> {
        match self.server_timeout {
            Some(TimeoutSource::EngineServerTimeout(d) | TimeoutSource::ClientServerTimeout(d)) => {
                Some(d)
            }
            _ => None,
        }
    }

    /// How long a device may have commands outstanding with none completing.
    fn stall(&self, seen_completion: bool, draining: bool) -> (Duration, TimeoutSource) {
        let (limit, source) = match self.server_timeout {
            Some(
                s @ (TimeoutSource::EngineServerTimeout(t) | TimeoutSource::ClientServerTimeout(t)),
            ) => (t.saturating_mul(2), s),
            _ if !seen_completion => (
                self.config_timeout,
                TimeoutSource::ConfigTimeout(self.config_timeout),
            ),
            _ => (self.idle_limit, TimeoutSource::IdleLimit(self.idle_limit)),
        };
        if draining {
            (limit.min(DRAIN_LIMIT), source)
        } else {
            (limit, source)
        }
    }
}

/// Which fault fired, for the warnings about faults that never did.
const FAULT_ERROR: usize = 0;
const FAULT_ABORT: usize = 1;
const FAULT_SILENT: usize = 2;

/// The state of one run shared by all its threads.
pub(crate) struct Run<'s, S> {
    pub(crate) set: &'s S,
    pub(crate) limits: Limits,
    pub(crate) client: ClientConfig,
    pub(crate) faults: Faults,
    stop: AtomicBool,
    aborted: AtomicBool,
    failure: Mutex<Option<EngineError>>,
    /// A failure that only counts if nothing better explains the end: completions with
    /// `ERROR_OPERATION_ABORTED` or `ERROR_IO_DEVICE` usually follow an abort or an error.
    weak: Mutex<Option<EngineError>>,
    warnings: Mutex<Vec<Warning>>,
    fired: [AtomicBool; 3],
}

impl<'s, S: ServerDeviceSet> Run<'s, S> {
    pub(crate) fn new(set: &'s S, options: &Options, client: ClientConfig, faults: Faults) -> Self {
        Self {
            set,
            limits: Limits::new(options, &client),
            client,
            faults,
            stop: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            failure: Mutex::new(None),
            weak: Mutex::new(None),
            warnings: Mutex::new(Vec::new()),
            fired: [const { AtomicBool::new(false) }; 3],
        }
    }

    /// Whether the run is stopping (it failed or was aborted).
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Whether the set was aborted (by either side).
    pub(crate) fn aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// Records `e` as the run's failure (the first one counts) and stops the run.
    pub(crate) fn fail(&self, e: EngineError) {
        let mut f = lock(&self.failure);
        if f.is_none() {
            debug!(error = %e, "the run failed");
            *f = Some(e);
        }
        drop(f);
        self.stop.store(true, Ordering::Release);
    }

    /// Records `e` unless something else explains the failure, and stops the run.
    pub(crate) fn fail_weak(&self, e: EngineError) {
        let mut f = lock(&self.weak);
        if f.is_none() {
            *f = Some(e);
        }
        drop(f);
        self.stop.store(true, Ordering::Release);
    }

    /// Fails the run with `e` and aborts the set (`SignalAbort`).
    pub(crate) fn abort(&self, e: EngineError) {
        self.fail(e);
        if !self.aborted.swap(true, Ordering::AcqRel) {
            debug!("SignalAbort");
            if let Err(error) = self.set.signal_abort() {
                debug!(%error, "SignalAbort failed");
            }
        }
    }

    /// A wait returned `VD_E_ABORT`: the client (or the backend) aborted, unless the engine did.
    pub(crate) fn observed_abort(&self, reason: vdi_core::AbortReason, device: &str) {
        self.aborted.store(true, Ordering::Release);
        self.fail(EngineError::from_abort(
            reason,
            device,
            self.client.server_timeout,
        ));
    }

    pub(crate) fn warn(&self, w: Warning) {
        warn!(warning = %w);
        lock(&self.warnings).push(w);
    }

    /// `Close` on the set, at the end.
    pub(crate) fn close_set(&self) {
        match self.set.close() {
            Ok(()) => debug!("set closed"),
            Err(_) if self.aborted() || self.stopped() => {}
            Err(error) => self.fail(EngineError::Vdi {
                call: "Close",
                device: None,
                error,
            }),
        }
    }

    /// The failure (if any) and the warnings, including those about faults that never fired.
    pub(crate) fn outcome(&self) -> (Option<EngineError>, Vec<Warning>) {
        let failure = lock(&self.failure)
            .take()
            .or_else(|| lock(&self.weak).take());
        let mut warnings = std::mem::take(&mut *lock(&self.warnings));
        let f = &self.faults;
        for (i, name, point) in [
            (FAULT_ERROR, "error", f.error_at),
            (FAULT_ABORT, "abort", f.abort_at),
            (FAULT_SILENT, "silent", f.silent_at),
        ] {
            if let Some(at) = point
                && !self.fired[i].load(Ordering::Acquire)
                && failure.is_none()
            {
                warnings.push(Warning::FaultNotFired { fault: name, at });
            }
        }
        (failure, warnings)
    }

    /// Applies the faults due before plan command `command` of `dev`; `false` when the run must
    /// stop.
    pub(crate) fn faults_before<D: ServerDevice, X>(
        &self,
        dev: &Device<'_, D, X>,
        command: u64,
    ) -> bool {
        let f = &self.faults;
        if f.silent_at.is_some_and(|p| p.hits(dev.slot, command)) {
            self.fired[FAULT_SILENT].store(true, Ordering::Release);
            debug!(device = %dev.name, command, duration = ?f.silent_for, "silent phase");
            // A duration past the clock's range is simply "until the run stops".
            let until = Instant::now().checked_add(f.silent_for);
            while !self.stopped() {
                let now = Instant::now();
                match until {
                    Some(u) if now >= u => break,
                    Some(u) => thread::sleep(SLICE.min(u - now)),
                    None => thread::sleep(SLICE),
                }
            }
        }
        if f.error_at.is_some_and(|p| p.hits(dev.slot, command)) {
            self.fired[FAULT_ERROR].store(true, Ordering::Release);
            if !dev.error_then_clear(self, f.error_command) {
                return false;
            }
        }
        if f.abort_at.is_some_and(|p| p.hits(dev.slot, command)) {
            if !self.fired[FAULT_ABORT].swap(true, Ordering::AcqRel) {
                debug!(device = %dev.name, command, "abort fault");
                self.abort(EngineError::Aborted {
                    by: AbortedBy::Fault,
                    device: Some(dev.name.clone()),
                });
            }
            return false;
        }
        !self.stopped()
    }
}

/// Fails the run if the thread holding it panics, so no other thread waits for it forever.
pub(crate) struct PanicGuard<'a, 's, S: ServerDeviceSet>(pub(crate) &'a Run<'s, S>);

impl<S: ServerDeviceSet> Drop for PanicGuard<'_, '_, S> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0
                .abort(EngineError::Internal("an engine thread panicked"));
        }
    }
}

/// The shared buffers, handed out in ticket order when tickets are given.
pub(crate) struct Pool<B> {
    st: Mutex<PoolState<B>>,
    cv: Condvar,
}

struct PoolState<B> {
    free: Vec<B>,
    next_ticket: u64,
}

impl<B> Pool<B> {
    pub(crate) fn new(free: Vec<B>) -> Self {
        Self {
            st: Mutex::new(PoolState {
                free,
                next_ticket: 0,
            }),
            cv: Condvar::new(),
        }
    }

    /// A free buffer; with `ticket`, only once every smaller ticket got one (so buffers go to
    /// chunks in order, as SQL Server keeps its devices in step). `None` once `stopped` says so.
    pub(crate) fn acquire(&self, ticket: Option<u64>, stopped: &dyn Fn() -> bool) -> Option<B> {
        let mut st = lock(&self.st);
        loop {
            if stopped() {
                return None;
            }
            if ticket.is_none_or(|t| t == st.next_ticket)
                && let Some(b) = st.free.pop()
            {
                if ticket.is_some() {
                    st.next_ticket += 1;
                }
                return Some(b);
            }
            st = self
                .cv
                .wait_timeout(st, SLICE)
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
    }

    /// Gives a buffer back.
    pub(crate) fn release(&self, b: B) {
        lock(&self.st).free.push(b);
        self.cv.notify_all();
    }
}

/// What the engine remembers of a command until it completes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pending {
    pub(crate) code: CommandCode,
    pub(crate) size: u32,
    /// The stream offset (Read, Write).
    pub(crate) offset: u64,
    /// The plan command index (Read, Write).
    pub(crate) seq: u64,
    /// Whether the buffer is the device's own (a backup's header and trailer block).
    pub(crate) meta: bool,
}

impl Pending {
    pub(crate) const fn control(code: CommandCode) -> Self {
        Self {
            code,
            size: 0,
            offset: 0,
            seq: 0,
            meta: false,
        }
    }
}

/// Why a send did not happen.
pub(crate) enum SendFail<B> {
    /// The run stopped (or the send failed and the run was failed).
    Stopped(Option<B>),
    /// The device is in the IO-ERROR state: an error completion arrived.
    IoError(Option<B>),
}

impl<B> SendFail<B> {
    pub(crate) fn into_buffer(self) -> Option<B> {
        match self {
            Self::Stopped(b) | Self::IoError(b) => b,
        }
    }
}

/// A device's state, under its lock.
pub(crate) struct DevState<X> {
    inflight: HashMap<u64, Pending>,
    finished: HashMap<u64, Completion>,
    last_progress: Instant,
    completions: u64,
    ended: bool,
    timed_out: bool,
    close_deadline: Option<Instant>,
    /// Commands sent.
    pub(crate) sent: u64,
    /// Flushes completed with success.
    pub(crate) flushes: u64,
    /// Completes completed with success.
    pub(crate) completes: u64,
    /// ClearErrors completed with success.
    pub(crate) clear_errors: u64,
    /// The operation's own state.
    pub(crate) extra: X,
}

/// Adds each device's counts to `report`, in device order; `bytes` reads the stream bytes a
/// device moved from the operation's own state.
pub(crate) fn tally<D: ServerDevice, X>(
    report: &mut crate::Report,
    devs: &[Device<'_, D, X>],
    bytes: impl Fn(&X) -> u64,
) {
    for d in devs {
        let st = d.lock();
        report.device_bytes.push(bytes(&st.extra));
        report.commands += st.sent;
        report.flushes += st.flushes;
        report.completes += st.completes;
        report.clear_errors += st.clear_errors;
    }
}

impl<X> DevState<X> {
    /// Commands sent and not yet completed (or still being handled).
    pub(crate) fn outstanding(&self) -> usize {
        self.inflight.len()
    }
}

/// One device: the backend's device, a lock and a condition variable.
pub(crate) struct Device<'d, D, X> {
    /// The device's index in the set.
    pub(crate) slot: u32,
    pub(crate) name: String,
    dev: &'d D,
    st: Mutex<DevState<X>>,
    cv: Condvar,
}

impl<'d, D: ServerDevice, X> Device<'d, D, X> {
    pub(crate) fn new(slot: u32, name: String, dev: &'d D, extra: X) -> Self {
        Self {
            slot,
            name,
            dev,
            st: Mutex::new(DevState {
                inflight: HashMap::new(),
                finished: HashMap::new(),
                last_progress: Instant::now(),
                completions: 0,
                ended: false,
                timed_out: false,
                close_deadline: None,
                sent: 0,
                flushes: 0,
                completes: 0,
                clear_errors: 0,
                extra,
            }),
            cv: Condvar::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, DevState<X>> {
        lock(&self.st)
    }

    /// Sends `command`, remembering `pending` for its completion. Retries while the device's
    /// queue is full.
    pub(crate) fn send<S: ServerDeviceSet>(
        &self,
        run: &Run<'_, S>,
        mut command: ServerCommand<D::Buffer>,
        pending: Pending,
    ) -> Result<u64, SendFail<D::Buffer>> {
        let mut st = self.lock();
        loop {
            if run.stopped() || st.ended {
                return Err(SendFail::Stopped(command.buffer));
            }
            match self.dev.send(command) {
                Ok(tag) => {
                    if st.inflight.is_empty() {
                        st.last_progress = Instant::now();
                    }
                    st.inflight.insert(tag, pending);
                    st.sent += 1;
                    return Ok(tag);
                }
                Err(e) => match e.error {
                    Error::Busy => {
                        command = e.command;
                        st = self
                            .cv
                            .wait_timeout(st, SLICE)
                            .map_or_else(|e| e.into_inner().0, |(g, _)| g);
                    }
                    Error::DeviceError => return Err(SendFail::IoError(e.command.buffer)),
                    Error::Aborted(reason) => {
                        drop(st);
                        run.observed_abort(reason, &self.name);
                        return Err(SendFail::Stopped(e.command.buffer));
                    }
                    error => {
                        drop(st);
                        run.abort(EngineError::Vdi {
                            call: "SendCommand",
                            device: Some(self.name.clone()),
                            error,
                        });
                        return Err(SendFail::Stopped(e.command.buffer));
                    }
                },
            }
        }
    }

    /// Waits until `pred` holds; `false` if the device ended (or, with `honour_stop`, the run
    /// stopped) first.
    pub(crate) fn wait_until<S: ServerDeviceSet>(
        &self,
        run: &Run<'_, S>,
        honour_stop: bool,
        mut pred: impl FnMut(&mut DevState<X>) -> bool,
    ) -> bool {
        let mut st = self.lock();
        let mut idle_since: Option<Instant> = None;
        loop {
            if pred(&mut st) {
                return true;
            }
            if st.ended || (honour_stop && run.stopped()) {
                return false;
            }
            // Every wait is for something a command in flight brings; with none in flight for
            // long, it will never come.
            if st.inflight.is_empty() {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() > LOST_WAIT {
                    drop(st);
                    run.abort(EngineError::Internal(
                        "a wait for a completion that no command in flight can bring",
                    ));
                    return false;
                }
            } else {
                idle_since = None;
            }
            st = self
                .cv
                .wait_timeout(st, SLICE)
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
    }

    /// Waits for the completion of the control command `tag`.
    pub(crate) fn wait_for<S: ServerDeviceSet>(
        &self,
        run: &Run<'_, S>,
        tag: u64,
    ) -> Option<Completion> {
        let mut got = None;
        self.wait_until(run, true, |st| {
            got = st.finished.remove(&tag);
            got.is_some()
        });
        got
    }

    /// Sends a control command and waits for its completion.
    pub(crate) fn control<S: ServerDeviceSet>(
        &self,
        run: &Run<'_, S>,
        code: CommandCode,
    ) -> Option<Completion> {
        let tag = self
            .send(run, ServerCommand::control(code), Pending::control(code))
            .ok()?;
        self.wait_for(run, tag)
    }

    /// Sends a control command that must succeed; fails the run if it does not.
    pub(crate) fn control_ok<S: ServerDeviceSet>(
        &self,
        run: &Run<'_, S>,
        code: CommandCode,
    ) -> bool {
        match self.control(run, code) {
            Some(c) if c.code == CompletionCode::SUCCESS => true,
            Some(c) => {
                run.fail(EngineError::CommandFailed {
                    device: self.name.clone(),
                    command: code,
                    code: c.code,
                });
                false
            }
            None => false,
        }
    }

    /// The error fault: a command the client should refuse, then `VDC_ClearError`.
    fn error_then_clear<S: ServerDeviceSet>(&self, run: &Run<'_, S>, code: CommandCode) -> bool {
        debug!(device = %self.name, ?code, "error fault");
        let Some(c) = self.control(run, code) else {
            return false;
        };
        if c.code == CompletionCode::SUCCESS {
            run.warn(Warning::FaultCommandAccepted {
                device: self.name.clone(),
                command: code,
            });
            return true;
        }
        debug!(device = %self.name, completion = ?c.code, "refused; ClearError");
        match self.control(run, CommandCode::CLEAR_ERROR) {
            Some(c) if c.code == CompletionCode::SUCCESS => true,
            Some(c) => {
                run.fail(EngineError::ClearErrorFailed {
                    device: self.name.clone(),
                    code: c.code,
                });
                false
            }
            None => false,
        }
    }

    /// The completion thread: collects completions until the device ends, hands those of Reads
    /// and Writes to `on_data`, and applies the stall limits.
    pub(crate) fn completions<S: ServerDeviceSet>(
        &self,
        run: &Run<'_, S>,
        mut on_data: impl FnMut(&Self, Pending, Completion, Option<D::Buffer>),
    ) {
        loop {
            match self.dev.completion(SLICE_TIMEOUT) {
                Ok(c) => {
                    let pending = {
                        let mut st = self.lock();
                        st.completions += 1;
                        st.last_progress = Instant::now();
                        st.inflight.get(&c.tag).copied()
                    };
                    match pending {
                        None => run.abort(EngineError::Internal(
                            "a completion for a command that was never sent",
                        )),
                        Some(p) if p.code.has_buffer() => {
                            on_data(self, p, c.completion, c.buffer);
                        }
                        Some(p) => {
                            let mut st = self.lock();
                            if c.completion.code == CompletionCode::SUCCESS {
                                match p.code {
                                    CommandCode::FLUSH => st.flushes += 1,
                                    CommandCode::COMPLETE => st.completes += 1,
                                    CommandCode::CLEAR_ERROR => st.clear_errors += 1,
                                    _ => {}
                                }
                            }
                            st.finished.insert(c.tag, c.completion);
                        }
                    }
                    let mut st = self.lock();
                    st.inflight.remove(&c.tag);
                    st.last_progress = Instant::now();
                    drop(st);
                    self.cv.notify_all();
                }
                Err(Error::Timeout) => {
                    if self.idle(run) {
                        break;
                    }
                }
                Err(Error::Closed) => break,
                Err(Error::Aborted(reason)) => {
                    run.observed_abort(reason, &self.name);
                    break;
                }
                Err(error) => {
                    run.abort(EngineError::Vdi {
                        call: "completion",
                        device: Some(self.name.clone()),
                        error,
                    });
                    break;
                }
            }
        }
        self.lock().ended = true;
        self.cv.notify_all();
    }

    /// A slice passed with no completion: applies the stall limit; `true` to give up the device.
    fn idle<S: ServerDeviceSet>(&self, run: &Run<'_, S>) -> bool {
        let mut st = self.lock();
        let now = Instant::now();
        if st.close_deadline.is_some_and(|d| now >= d) {
            warn!(device = %self.name, "the device did not end; giving it up");
            return true;
        }
        if st.inflight.is_empty() {
            // After an abort nothing more will come.
            return run.aborted();
        }
        let (limit, source) = run.limits.stall(st.completions > 0, run.stopped());
        let waited = now.saturating_duration_since(st.last_progress);
        if waited > limit && !st.timed_out {
            st.timed_out = true;
            st.close_deadline.get_or_insert(now + CLOSE_GRACE);
            drop(st);
            warn!(device = %self.name, ?waited, %source, "no completion; aborting");
            run.abort(EngineError::ClientTimeout {
                device: self.name.clone(),
                waited,
                limit: source,
            });
        }
        false
    }

    /// `CloseDevice` (unless the set was aborted); the completion thread then ends at
    /// `VD_E_CLOSE`.
    pub(crate) fn close<S: ServerDeviceSet>(&self, run: &Run<'_, S>) {
        if !run.aborted() {
            match self.dev.close() {
                Ok(()) => debug!(device = %self.name, "CloseDevice"),
                Err(Error::Aborted(reason)) => run.observed_abort(reason, &self.name),
                Err(error) => run.fail(EngineError::Vdi {
                    call: "CloseDevice",
                    device: Some(self.name.clone()),
                    error,
                }),
            }
        }
        self.lock()
            .close_deadline
            .get_or_insert(Instant::now() + CLOSE_GRACE);
        self.cv.notify_all();
    }
}

/// Waits until no command is outstanding on any device (bounded by the stall limits).
pub(crate) fn drain<S: ServerDeviceSet, D: ServerDevice, X>(
    run: &Run<'_, S>,
    devices: &[Device<'_, D, X>],
) {
    for d in devices {
        d.wait_until(run, false, |st| st.inflight.is_empty());
    }
}

/// `CloseDevice` on every device.
pub(crate) fn close_devices<S: ServerDeviceSet, D: ServerDevice, X>(
    run: &Run<'_, S>,
    devices: &[Device<'_, D, X>],
) {
    for d in devices {
        d.close(run);
    }
}

/// `Open`, retrying for [`Options::wait_for_set`] while the set does not exist.
pub(crate) fn open<B: ServerBackend>(
    backend: &B,
    options: &Options,
) -> Result<B::Set, EngineError> {
    let start = Instant::now();
    loop {
        match backend.open(options.instance.as_deref(), &options.set_name) {
            Ok(set) => {
                debug!(set = %options.set_name, "opened");
                return Ok(set);
            }
            Err(Error::Invalid(InvalidReason::NoSuchSet | InvalidReason::Unspecified)) => {
                let waited = start.elapsed();
                if waited >= options.wait_for_set {
                    return Err(EngineError::SetNotFound {
                        set: options.set_name.clone(),
                        waited: options.wait_for_set,
                    });
                }
                thread::sleep(OPEN_RETRY.min(options.wait_for_set - waited));
            }
            Err(error) => {
                return Err(EngineError::Vdi {
                    call: "Open",
                    device: None,
                    error,
                });
            }
        }
    }
}

/// Gives up a set that could not be configured: `SignalAbort`, then `Close` (vdi-spec.md §3.1:
/// a side that cannot work with the configuration aborts).
pub(crate) fn abandon<S: ServerDeviceSet>(set: &S) {
    let _ = set.signal_abort();
    let _ = set.close();
}

/// `GetConfiguration`, and the checks of the client's half against the options.
pub(crate) fn client_config<S: ServerDeviceSet>(
    set: &S,
    options: &Options,
    faults: &Faults,
) -> Result<ClientConfig, EngineError> {
    let client = set.configuration().map_err(|error| EngineError::Vdi {
        call: "GetConfiguration",
        device: None,
        error,
    })?;
    let n = client.device_count;
    if let Err(e) = vdi_core::validate_device_count(n) {
        return Err(EngineError::Vdi {
            call: "GetConfiguration",
            device: None,
            error: Error::Config(e),
        });
    }
    if let Some(expected) = options.expected_devices
        && expected != n
    {
        return Err(EngineError::DeviceCount {
            expected,
            client: n,
        });
    }
    if !options.device_names.is_empty() && options.device_names.len() != n as usize {
        return Err(EngineError::DeviceNames {
            names: options.device_names.len(),
            client: n,
        });
    }
    if let Some(device) = faults.devices().find(|&d| d >= n) {
        return Err(EngineError::FaultDevice { device, client: n });
    }
    Ok(client)
}

/// A configured set's devices, their names and the buffers allocated for each request.
pub(crate) struct Configured<S: ServerDeviceSet> {
    pub(crate) devices: Vec<S::Device>,
    pub(crate) names: Vec<String>,
    pub(crate) buffers: Vec<Vec<S::Buffer>>,
}

/// The error of the VDI call `call` (on `device`).
fn vdi<'a>(call: &'static str, device: Option<&'a str>) -> impl FnOnce(Error) -> EngineError + 'a {
    move |error| EngineError::Vdi {
        call,
        device: device.map(str::to_owned),
        error,
    }
}

/// `BeginConfiguration`, `RequestBuffers` for each `(size, count)`, `OpenDevice` for every
/// device, `EndConfiguration`, then `AllocateBuffer` for each request. Devices are opened before
/// `EndConfiguration` so that every device name is known when the client's `GetConfiguration`
/// returns.
pub(crate) fn configure<S: ServerDeviceSet>(
    set: &S,
    options: &Options,
    client: &ClientConfig,
    server: &ServerConfig,
    requests: &[(u32, u32)],
) -> Result<Configured<S>, EngineError> {
    set.begin_configuration(server)
        .map_err(vdi("BeginConfiguration", None))?;
    for &(size, count) in requests {
        set.request_buffers(size, 0, count)
            .map_err(vdi("RequestBuffers", None))?;
    }
    let names: Vec<String> = (0..client.device_count)
        .map(|i| options.device_name(i))
        .collect();
    let mut devices = Vec::with_capacity(names.len());
    for name in &names {
        devices.push(
            set.open_device(name)
                .map_err(vdi("OpenDevice", Some(name)))?,
        );
    }
    set.end_configuration()
        .map_err(vdi("EndConfiguration", None))?;
    let mut buffers = Vec::with_capacity(requests.len());
    for &(size, count) in requests {
        let mut v = Vec::with_capacity(count as usize);
        for _ in 0..count {
            v.push(
                set.allocate_buffer(size, 0)
                    .map_err(vdi("AllocateBuffer", None))?,
            );
        }
        buffers.push(v);
    }
    debug!(
        devices = names.len(),
        block = server.block_size,
        max_transfer = server.max_transfer_size,
        ?requests,
        features = ?server.features,
        "configured"
    );
    Ok(Configured {
        devices,
        names,
        buffers,
    })
}

/// The `ServerConfig` for `features` and the options.
pub(crate) fn server_config(options: &Options, features: vdi_core::Features) -> ServerConfig {
    ServerConfig {
        features,
        block_size: options.block_size,
        alignment: 0,
        max_transfer_size: options.max_transfer_size,
        timeout: millis(options.config_timeout),
    }
}

/// Joins a scoped thread, failing the run if it panicked.
pub(crate) fn join<S: ServerDeviceSet, T>(
    run: &Run<'_, S>,
    handle: thread::ScopedJoinHandle<'_, T>,
) -> Option<T> {
    match handle.join() {
        Ok(v) => Some(v),
        Err(_) => {
            run.abort(EngineError::Internal("an engine thread panicked"));
            None
        }
    }
}

/// A small seeded generator (splitmix64) for read sizes.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) const fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
