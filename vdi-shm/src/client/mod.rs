//! The client side: `CreateEx`, `OpenInSecondary`, `GetConfiguration`, `OpenDevice`,
//! `GetCommand`, `CompleteCommand`, buffer handles, `SignalAbort` and `Close`.

use std::{
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
    },
    time::{Duration, Instant},
};

use tracing::{debug, trace, warn};
use vdi_core::{
    AbortReason, BufferHandle, Call, ClientConfig, ClientDeviceMachine, ClientSetMachine,
    ClientSetState, CommandCode, Completion, CompletionCode, Config, Delivery, Error,
    InvalidReason, ProtocolReason, Timeout,
};

use crate::{
    Options,
    layout::{
        BufferRef, CommandEntry, CompletionEntry, Control, DEV_CLOSED, Descriptor, STATE_CONFIGURED,
    },
    monitor::{self, Monitor},
    pool,
    queue::{self, RingIndex},
    ring::WaitOutcome,
    segments::{self, Segments},
    sync::{AtomicBool, AtomicU64, Ordering},
    sys::{self, Socket},
    view::BufView,
    wait,
    wire::{Msg, Role},
};

mod accept;

/// How long a client waits for a buffer segment that a command names but the monitor has not
/// mapped yet. The server sends the segment before any command that uses it, so this is only
/// reached when the server misbehaves.
const SEGMENT_WAIT: Duration = Duration::from_secs(5);

/// Creates and joins device sets over shared memory: the client side of [`vdi_core`]'s traits.
///
/// ```no_run
/// use vdi_core::{ClientBackend, ClientConfig, ClientDevice, ClientDeviceSet, Completion, Timeout};
/// use vdi_shm::ShmClient;
///
/// let set = ShmClient::new().create(None, "MyBackup-1", &ClientConfig::default())?;
/// let config = set.configuration(Timeout::from_millis(60_000))?;
/// let device = set.open_device("MyBackup-1")?;
/// loop {
///     match device.command(Timeout::INFINITE) {
///         Ok(cmd) => device.complete(cmd, Completion::not_supported())?,
///         Err(vdi_core::Error::Closed) => break,
///         Err(e) => return Err(e.into()),
///     }
/// }
/// set.close()?;
/// # let _ = config;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ShmClient {
    options: Options,
}

impl ShmClient {
    /// A backend with default [`Options`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend with the given options.
    pub fn with_options(options: Options) -> Self {
        Self { options }
    }
}

impl vdi_core::ClientBackend for ShmClient {
    type Set = ClientSet;

    fn create(
        &self,
        instance: Option<&str>,
        name: &str,
        config: &ClientConfig,
    ) -> Result<ClientSet, Error> {
        check_instance(instance)?;
        vdi_core::validate_name(name)?;
        config.validate()?;
        let listener = Socket::listen(name)?;
        listener.set_nonblocking()?;
        let control = Control::create(name, config, sys::random_u32())?;
        let mut machine = ClientSetMachine::new();
        machine.create(config.device_count)?;
        let shared = Arc::new(Shared::new(
            name,
            control,
            *config,
            machine,
            true,
            &self.options,
        ));
        let monitor = accept::spawn_primary(Arc::clone(&shared), listener, self.options.clone())?;
        *shared
            .monitor
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(monitor);
        debug!(
            set = name,
            devices = config.device_count,
            "device set created"
        );
        Ok(ClientSet { shared })
    }

    fn open_secondary(&self, instance: Option<&str>, name: &str) -> Result<ClientSet, Error> {
        check_instance(instance)?;
        vdi_core::validate_name(name)?;
        let sock = match Socket::connect(name) {
            Ok(s) => s,
            Err(sys::ConnectError::NotFound) => {
                return Err(Error::Protocol(ProtocolReason::NotReady));
            }
            Err(sys::ConnectError::Os(e)) => return Err(e),
        };
        let (control, sock) = monitor::handshake(sock, name, Role::Secondary, &self.options)?;
        let client_cfg = control.client_config();
        client_cfg
            .validate()
            .map_err(|_| Error::Protocol(ProtocolReason::PeerMisbehaved))?;
        let machine = ClientSetMachine::secondary(control.device_count());
        let shared = Arc::new(Shared::new(
            name,
            control,
            client_cfg,
            machine,
            false,
            &self.options,
        ));
        // The secondary's monitor maps the segments the primary forwards and watches the
        // primary.
        let on_message = {
            let shared = Arc::clone(&shared);
            move |msg: &[u8], fds| {
                if let Some(Msg::Segment { id, len }) = Msg::decode(msg) {
                    let ok = segments::map_announced(&shared.control, &shared.name, id, len, fds)
                        .is_ok_and(|map| shared.segments.insert(id, map));
                    if !ok {
                        shared.control.abort(AbortReason::PeerMisbehaved);
                    }
                }
            }
        };
        let on_gone = {
            let shared = Arc::clone(&shared);
            move |pid| {
                shared
                    .control
                    .peer_went_away(&shared.name, "primary client", pid);
            }
        };
        let monitor = monitor::watch(name, Arc::new(sock), true, on_message, on_gone)?;
        *shared
            .monitor
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(monitor);
        debug!(set = name, "joined as a secondary client");
        Ok(ClientSet { shared })
    }
}

fn check_instance(instance: Option<&str>) -> Result<(), Error> {
    // As on SQL Server on Linux, there are no named instances; the default instance is `None`
    // (or an empty name).
    match instance {
        None | Some("") => Ok(()),
        Some(_) => Err(Error::InstanceName),
    }
}

/// What the set's handles, devices, commands and the monitor thread share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) control: Control,
    pub(crate) client_config: ClientConfig,
    pub(crate) segments: Segments,
    machine: Mutex<ClientSetMachine>,
    /// Changes (under the machine's lock) whenever a guard that may have changed the machine
    /// goes; starts at 1, so the 0 of a fresh memo matches nothing (see
    /// [`Shared::check_memo`]).
    machine_version: AtomicU64,
    config: OnceLock<Config>,
    pub(crate) primary: bool,
    pub(crate) monitor: Mutex<Option<Monitor>>,
    pub(crate) secondaries_lost: AtomicU64,
    spins: u32,
}

impl Shared {
    fn new(
        name: &str,
        control: Control,
        client_config: ClientConfig,
        machine: ClientSetMachine,
        primary: bool,
        options: &Options,
    ) -> Self {
        Self {
            name: name.to_owned(),
            control,
            client_config,
            segments: Segments::new(),
            machine: Mutex::new(machine),
            machine_version: AtomicU64::new(1),
            config: OnceLock::new(),
            primary,
            monitor: Mutex::new(None),
            secondaries_lost: AtomicU64::new(0),
            spins: options.spins,
        }
    }

    fn machine(&self) -> MachineGuard<'_> {
        let mut m = self.machine.lock().unwrap_or_else(PoisonError::into_inner);
        // An abort recorded in shared memory (by the peer, or by a monitor that saw a peer
        // die) reaches the local machine here.
        if let Some(reason) = self.control.abort_reason() {
            let _ = m.signal_abort(reason);
        }
        MachineGuard {
            machine: m,
            version: &self.machine_version,
            may_change: true,
        }
    }

    /// The set machine's answer to `check` (a per-device call check that depends on nothing
    /// but the machine's state), remembered in `memo`: while no guard that may have changed
    /// the machine went since the machine last answered `Ok` (and no abort is recorded, which
    /// the machine would take in), the machine's state is unchanged, so its answer is too. The
    /// calls on a busy device (GetCommand, CompleteCommand) then take no set-wide lock.
    fn check_memo(
        &self,
        memo: &AtomicU64,
        check: impl FnOnce(&ClientSetMachine) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if memo.load(Ordering::Acquire) == self.machine_version.load(Ordering::Acquire)
            && self.control.abort_reason().is_none()
        {
            return Ok(());
        }
        self.check(check)?;
        memo.store(
            self.machine_version.load(Ordering::Relaxed),
            Ordering::Release,
        );
        Ok(())
    }

    /// The set machine's answer to `check`, a call check that changes nothing.
    fn check(
        &self,
        check: impl FnOnce(&ClientSetMachine) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut m = self.machine();
        // Only an abort taken in from shared memory (then the check fails) changes the machine
        // here; a guard that only answered leaves the memos of [`Shared::check_memo`] valid, so
        // GetCommand's and CompleteCommand's do not undo each other.
        m.may_change = self.control.abort_reason().is_some();
        check(&m)
    }

    /// Whether the set was aborted, by anyone.
    pub(crate) fn aborted(&self) -> bool {
        self.control.abort_reason().is_some()
    }

    /// Aborts the set because the peer broke the protocol.
    pub(crate) fn peer_misbehaved(&self) -> Error {
        warn!(set = %self.name, "the server wrote invalid values into shared memory; aborting");
        self.control.abort(AbortReason::PeerMisbehaved);
        Error::Aborted(
            self.control
                .abort_reason()
                .unwrap_or(AbortReason::PeerMisbehaved),
        )
    }

    /// The final configuration, read and validated once from shared memory when the server
    /// has published it; `None` before that.
    pub(crate) fn load_config(&self) -> Result<Option<Config>, Error> {
        if let Some(cfg) = self.config.get() {
            return Ok(Some(*cfg));
        }
        if !self.is_configured() {
            return Ok(None);
        }
        let server = self.control.server_config();
        let Ok(cfg) = Config::combine(&self.client_config, &server) else {
            return Err(self.peer_misbehaved());
        };
        let cfg = *self.config.get_or_init(|| cfg);
        debug!(set = %self.name, features = ?cfg.features, block = cfg.block_size, max_transfer = cfg.max_transfer_size, "configured");
        Ok(Some(cfg))
    }

    /// Whether the set is configured (the server published its configuration).
    pub(crate) fn is_configured(&self) -> bool {
        self.control.state().load(Ordering::Acquire) == STATE_CONFIGURED
    }
}

/// The set machine, locked; dropping it marks the machine as possibly changed (see
/// [`Shared::check_memo`]).
struct MachineGuard<'a> {
    machine: MutexGuard<'a, ClientSetMachine>,
    version: &'a AtomicU64,
    /// Whether the holder may have changed the machine (every holder but
    /// [`Shared::check_memo`], which only asks it).
    may_change: bool,
}

impl core::ops::Deref for MachineGuard<'_> {
    type Target = ClientSetMachine;

    fn deref(&self) -> &ClientSetMachine {
        &self.machine
    }
}

impl core::ops::DerefMut for MachineGuard<'_> {
    fn deref_mut(&mut self) -> &mut ClientSetMachine {
        &mut self.machine
    }
}

impl Drop for MachineGuard<'_> {
    fn drop(&mut self) {
        if self.may_change {
            // Under the lock, so a plain store: the only writers hold it.
            let v = self.version.load(Ordering::Relaxed);
            self.version.store(v + 1, Ordering::Release);
        }
    }
}

/// A device set as a client process sees it (`IClientVirtualDeviceSet2`).
///
/// Cheap to share between threads (`Sync`); every device and command keeps the set's shared
/// state alive.
#[derive(Debug)]
pub struct ClientSet {
    shared: Arc<Shared>,
}

impl ClientSet {
    /// The set's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The state of the set as this process sees it.
    pub fn state(&self) -> ClientSetState {
        self.shared.machine().state()
    }

    /// How many secondary client processes that joined this set have since disconnected
    /// (exited, or closed the set). Only the primary tracks this; VDI itself notices only the
    /// death of the server or the primary (vdi-spec.md §9.5), so a primary that hands work to
    /// secondaries checks this and calls `signal_abort` when one is lost.
    pub fn secondaries_lost(&self) -> u64 {
        self.shared.secondaries_lost.load(Ordering::Acquire)
    }

    fn configured(&self) -> Result<Config, Error> {
        self.shared
            .load_config()?
            .ok_or(Error::Protocol(ProtocolReason::WrongState(
                Call::OpenDevice,
            )))
    }

    fn device_index(&self, name: &str) -> Result<u32, Error> {
        let c = &self.shared.control;
        if name == self.shared.name {
            return Ok(0);
        }
        (1..c.device_count())
            .find(|&i| c.device_name(i).as_deref() == Some(name))
            .ok_or(Error::Invalid(InvalidReason::DeviceName))
    }

    fn descriptor_view(
        &self,
        index: u32,
        generation: u16,
        len: u32,
    ) -> Result<(BufView, vdi_core::Lease), Error> {
        let invalid = Error::Invalid(InvalidReason::BufferHandle);
        let shared = &self.shared;
        let cfg = shared.load_config()?.ok_or(invalid)?;
        let words = shared.control.descriptor(index).ok_or(invalid)?;
        let d = Descriptor::read(words, generation).ok_or(invalid)?;
        if d.offset % u64::from(cfg.alignment.max(1)) != 0 {
            return Err(invalid);
        }
        // A fresh secondary may see a handle before its monitor has mapped the segment the
        // primary forwarded; the descriptor is live, so the segment is on its way.
        let map = shared
            .segments
            .wait_for(u32::from(d.segment), SEGMENT_WAIT, || shared.aborted())
            .ok_or(invalid)?;
        if len > d.size {
            return Err(Error::Invalid(InvalidReason::TransferSize));
        }
        // The whole buffer must lie in the segment; the view is its first `len` bytes.
        BufView::new(Arc::clone(&map), d.offset, u64::from(d.size)).ok_or(invalid)?;
        let view = BufView::new(map, d.offset, u64::from(len)).ok_or(invalid)?;
        // Not while this process holds the buffer another way (its command, or another
        // mapping of the same handle).
        let lease = shared
            .segments
            .lease(u32::from(d.segment), d.offset, d.offset + u64::from(d.size))
            .ok_or(invalid)?;
        Ok((view, lease))
    }
}

impl vdi_core::ClientDeviceSet for ClientSet {
    type Device = ClientDevice;
    type Mapped = MappedBuffer;

    fn configuration(&self, timeout: Timeout) -> Result<Config, Error> {
        let deadline = timeout.as_duration().map(|d| Instant::now() + d);
        loop {
            self.shared.machine().check_get_configuration()?;
            let state = self.shared.control.state().load(Ordering::Acquire);
            if let Some(cfg) = self.shared.load_config()? {
                self.shared.machine().configured();
                return Ok(cfg);
            }
            let Some(slice) = wait::next_slice(deadline) else {
                return Err(Error::Timeout);
            };
            sys::futex_wait(self.shared.control.state(), state, slice);
        }
    }

    fn open_device(&self, name: &str) -> Result<ClientDevice, Error> {
        vdi_core::validate_name(name)?;
        let c = &self.shared.control;
        let mut m = self.shared.machine();
        if m.state() != ClientSetState::Initializing && m.state() != ClientSetState::Active {
            // Let the machine give the table's answer.
            m.open_device(0, false, false)?;
        }
        self.configured()?;
        let index = self.device_index(name)?;
        let all_open =
            (0..c.device_count()).all(|i| c.device_client(i).load(Ordering::Acquire) != 0);
        let this_open = c.device_client(index).load(Ordering::Acquire) != 0;
        if !all_open && !this_open {
            // Claim the device in shared memory first, so two processes cannot both open it.
            let pid = sys::current_pid() as u32;
            if c.device_client(index)
                .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return Err(Error::Protocol(ProtocolReason::DeviceAlreadyOpen));
            }
        }
        if let Err(e) = m.open_device(index, all_open, this_open) {
            if !all_open && !this_open {
                c.device_client(index).store(0, Ordering::Release);
            }
            return Err(e);
        }
        drop(m);
        trace!(set = %self.shared.name, device = name, index, "device opened");
        Ok(ClientDevice {
            inner: Arc::new(DeviceInner {
                set: Arc::clone(&self.shared),
                index,
                name: name.to_owned(),
                state: Mutex::new(DeviceState {
                    sq: RingIndex::default(),
                    cq: RingIndex::default(),
                    machine: ClientDeviceMachine::new(),
                    held: None,
                }),
                kick: AtomicBool::new(false),
                get_ok: AtomicU64::new(0),
                complete_ok: AtomicU64::new(0),
            }),
        })
    }

    fn buffer_handle(&self, command: &Command) -> Result<BufferHandle, Error> {
        if !Arc::ptr_eq(&command.device.set, &self.shared) {
            return Err(Error::Invalid(InvalidReason::NotActiveCommand));
        }
        let Some(buf) = &command.buffer else {
            return Err(Error::Invalid(InvalidReason::Buffer));
        };
        self.shared
            .check(|m| m.check_buffer_handle(Call::GetBufferHandle))?;
        let h = pool::encode_handle(
            buf.index as u16,
            buf.generation,
            self.shared.control.handle_key(),
        );
        Ok(BufferHandle(h))
    }

    fn map_buffer_handle(&self, handle: BufferHandle, len: u32) -> Result<MappedBuffer, Error> {
        self.shared
            .check(|m| m.check_buffer_handle(Call::MapBufferHandle))?;
        let (index, generation) = pool::decode_handle(handle.0, self.shared.control.handle_key());
        let (view, lease) = self.descriptor_view(u32::from(index), generation, len)?;
        Ok(MappedBuffer {
            handle,
            view,
            _lease: lease,
            _set: Arc::clone(&self.shared),
        })
    }

    fn signal_abort(&self) -> Result<(), Error> {
        self.shared.machine().signal_abort(AbortReason::Signalled)?;
        debug!(set = %self.shared.name, "SignalAbort");
        self.shared.control.abort(AbortReason::Signalled);
        Ok(())
    }

    fn close(&self) -> Result<(), Error> {
        let c = &self.shared.control;
        let mut machine = self.shared.machine();
        // The primary answers for the whole set; a secondary only for the devices it opened,
        // since it cannot know when other processes' devices end.
        let devices_open = if self.shared.primary {
            (0..c.device_count()).any(|i| {
                c.device_client(i).load(Ordering::Acquire) != 0
                    && c.device_flags(i).load(Ordering::Acquire) & DEV_CLOSED == 0
            })
        } else {
            machine.has_open_devices()
        };
        let action = machine.close(devices_open);
        drop(machine);
        if action.result.as_ref().err().map(Error::hresult)
            == Some(vdi_core::HResult::VD_E_PROTOCOL)
        {
            return action.result;
        }
        if action.abort_peer && self.shared.primary {
            self.shared.control.abort(AbortReason::Signalled);
        }
        monitor::stop_in(&self.shared.monitor);
        debug!(set = %self.shared.name, result = ?action.result, "Close");
        action.result
    }
}

impl Drop for ClientSet {
    fn drop(&mut self) {
        // A set dropped without Close is closed here; commands and devices still alive keep
        // the mappings until they go.
        if self.shared.machine().state() != ClientSetState::DoesNotExist {
            let _ = vdi_core::ClientDeviceSet::close(self);
        }
    }
}

#[derive(Debug)]
struct DeviceState {
    sq: RingIndex,
    cq: RingIndex,
    machine: ClientDeviceMachine,
    held: Option<CommandEntry>,
}

#[derive(Debug)]
pub(crate) struct DeviceInner {
    set: Arc<Shared>,
    index: u32,
    name: String,
    state: Mutex<DeviceState>,
    /// Set when a completion may let a waiting GetCommand proceed (a held ClearError, or the
    /// end of a closed device); waiters check it before and after they sleep.
    kick: AtomicBool,
    /// The set machine's last `Ok` to GetCommand on this device (see [`Shared::check_memo`]).
    get_ok: AtomicU64,
    /// The same for CompleteCommand.
    complete_ok: AtomicU64,
}

/// A device as a client process sees it (`IClientVirtualDevice`).
///
/// Several threads may take and complete commands of one device at once.
#[derive(Debug, Clone)]
pub struct ClientDevice {
    inner: Arc<DeviceInner>,
}

impl ClientDevice {
    /// The device's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

impl DeviceInner {
    fn lock(&self) -> MutexGuard<'_, DeviceState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Completes a command: pushes the completion and updates the device machine.
    fn finish(
        &self,
        st: &mut DeviceState,
        code: CommandCode,
        tag: u64,
        c: Completion,
    ) -> Result<(), Error> {
        let entry = CompletionEntry { tag, completion: c };
        let control = &self.set.control;
        if queue::push(&control.cq(self.index), &mut st.cq, entry.to_words()).is_err() {
            // The completion ring holds as many entries as commands can be outstanding; a
            // full or inconsistent ring means the server broke the protocol.
            return Err(self.set.peer_misbehaved());
        }
        st.machine.completed(code, c.code);
        if st.machine.outstanding() == 0
            && (st.machine.has_held() || control.device_closed(self.index))
        {
            // A held ClearError may now be delivered, or a closed device may now end: wake
            // this process's waiters (the flag first, so a waiter that samples the wake word
            // after the bump sees it in its stop check). Nothing else a waiter waits for
            // depends on the last completion, so the common case makes no system call here.
            // A close that lands after this look at the flag wakes the waiters itself, and a
            // waiter that has not seen the flag yet stops on it (see `command`).
            self.kick.store(true, Ordering::SeqCst);
            queue::wake(&control.sq(self.index));
        }
        Ok(())
    }
}

/// Turns a command entry into a command, validating everything the server wrote.
fn build(inner: &Arc<DeviceInner>, entry: CommandEntry) -> Result<Command, Error> {
    let set = &inner.set;
    let Ok(Some(cfg)) = set.load_config() else {
        return Err(set.peer_misbehaved());
    };
    let Some(parsed) = parse_command(
        &set.control,
        &cfg,
        &set.segments,
        entry,
        SEGMENT_WAIT,
        &|| set.aborted(),
    ) else {
        return Err(set.peer_misbehaved());
    };
    Ok(Command {
        device: Arc::clone(inner),
        code: parsed.code,
        size: parsed.size,
        position: parsed.position,
        tag: parsed.tag,
        buffer: parsed.buffer,
        done: false,
    })
}

/// A command entry after validation.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) code: CommandCode,
    pub(crate) size: u32,
    pub(crate) position: u64,
    pub(crate) tag: u64,
    buffer: Option<CommandBuffer>,
}

#[cfg(any(test, feature = "fuzzing"))]
impl Parsed {
    /// Reads and writes every byte of the views (the fuzzer's check that they are in bounds).
    pub(crate) fn touch(&mut self) {
        if let Some(b) = &mut self.buffer {
            for v in [&mut b.data, &mut b.prefix] {
                let bytes = v.as_mut_slice();
                let sum = bytes.iter().fold(0u8, |a, &x| a.wrapping_add(x));
                if let Some(first) = bytes.first_mut() {
                    *first = sum;
                }
            }
        }
    }
}

/// Validates the buffer of a command entry the server wrote (its structure was checked by
/// [`CommandEntry::from_words`]): the descriptor is live with the expected generation, the data
/// zone is aligned, at least `size` bytes long, and lies with its prefix zone inside a segment
/// this process has mapped (waiting up to `segment_wait` for a segment still on its way).
/// `None` means the peer broke the protocol.
pub(crate) fn parse_command(
    control: &Control,
    cfg: &Config,
    segments: &Segments,
    entry: CommandEntry,
    segment_wait: Duration,
    stop: &dyn Fn() -> bool,
) -> Option<Parsed> {
    let CommandEntry {
        code,
        size,
        position,
        tag,
        buffer,
    } = entry;
    let buffer = if let Some(BufferRef { index, generation }) = buffer {
        let d = Descriptor::read(control.descriptor(index)?, generation)?;
        if size > d.size || d.offset % u64::from(cfg.alignment.max(1)) != 0 {
            return None;
        }
        let prefix = u64::from(cfg.prefix_zone_size);
        let start = d.offset.checked_sub(prefix)?;
        let map = segments.wait_for(u32::from(d.segment), segment_wait, stop)?;
        let data = BufView::new(Arc::clone(&map), d.offset, u64::from(size))?;
        // The whole buffer (prefix and data zone) must lie inside the segment, and no other
        // writable view in this process may use any of it.
        let end = d.offset.checked_add(u64::from(d.size))?;
        BufView::new(Arc::clone(&map), start, end - start)?;
        let lease = segments.lease(u32::from(d.segment), start, end)?;
        let prefix = BufView::new(map, start, prefix)?;
        Some(CommandBuffer {
            index,
            generation,
            data,
            prefix,
            _lease: lease,
        })
    } else {
        None
    };
    Some(Parsed {
        code,
        size,
        position,
        tag,
        buffer,
    })
}

impl vdi_core::ClientDevice for ClientDevice {
    type Command = Command;

    fn index(&self) -> u32 {
        self.inner.index
    }

    fn command(&self, timeout: Timeout) -> Result<Command, Error> {
        let inner = &self.inner;
        let set = &inner.set;
        let mut deadline = wait::LazyDeadline::new(timeout);
        // Whether this thread saw the device closed at its last look. Until it has, a wait
        // stops as soon as the flag appears: the server's wake-up after setting it reaches only
        // a registered sleeper, so a thread still spinning would otherwise sleep a whole slice.
        // Once it has (and commands are still outstanding in other threads), the wait leaves
        // the flag out, or it would return at once, every time: a hot loop.
        let mut closed_seen;
        let mut seen;
        let result = loop {
            // Clear an old kick (a kick stored after this load is seen by the wait below); the
            // common case, no kick, stores nothing.
            if inner.kick.load(Ordering::SeqCst) {
                inner.kick.store(false, Ordering::SeqCst);
            }
            {
                let mut st = inner.lock();
                // The set machine answers, VD_E_CLOSE too for a device that returned it (see
                // `ClientSetMachine::check_get_command`). Checked under the device lock, which
                // the thread that ends the device holds while it tells the machine.
                if let Err(e) = set.check_memo(&inner.get_ok, |m| m.check_get_command(inner.index))
                {
                    break Err(e);
                }
                if st.machine.take_held()
                    && let Some(entry) = st.held.take()
                {
                    break build(inner, entry);
                }
                // The server sets the flag after pushing its last command: an empty ring seen
                // after the flag means no command will come.
                let closed = set.control.device_closed(inner.index);
                closed_seen = closed;
                // Where this thread's wait starts; another thread may pop before it waits,
                // which makes the wait return at once (a stale head is Ready).
                seen = st.sq;
                match queue::pop(&set.control.sq(inner.index), &mut st.sq) {
                    Err(()) => break Err(set.peer_misbehaved()),
                    Ok(Some(words)) => {
                        let Some(entry) = CommandEntry::from_words(words) else {
                            break Err(set.peer_misbehaved());
                        };
                        let code = entry.code;
                        match st.machine.on_command(code) {
                            Delivery::Deliver => break build(inner, entry),
                            Delivery::FailIoDevice => {
                                trace!(device = %inner.name, code = ?code, "failed unseen: device in IO-ERROR");
                                if fail_unseen(inner, &mut st, entry).is_err() {
                                    break Err(set.peer_misbehaved());
                                }
                            }
                            Delivery::Hold => {
                                // A second ClearError while one is held: fail the older one,
                                // so every command the server sent is completed once.
                                if let Some(old) = st.held.replace(entry)
                                    && fail_unseen(inner, &mut st, old).is_err()
                                {
                                    break Err(set.peer_misbehaved());
                                }
                            }
                        }
                        // The deadline holds even while the ring keeps refilling.
                        if deadline.expired() {
                            break Err(Error::Timeout);
                        }
                        continue;
                    }
                    Ok(None) if closed => {
                        // VD_E_CLOSE only once every command handed out was completed, so no
                        // completion is stranded behind the end of the set.
                        if st.held.is_none() && st.machine.outstanding() == 0 {
                            set.machine().device_closed(inner.index);
                            drop(st);
                            trace!(device = %inner.name, "VD_E_CLOSE");
                            break Err(Error::Closed);
                        }
                    }
                    Ok(None) => {}
                }
            }
            if deadline.is_poll() {
                break Err(Error::Timeout);
            }
            #[cfg(test)]
            test_hook::before_wait();
            let outcome = queue::wait(
                &set.control.sq(inner.index),
                seen,
                set.spins,
                &mut deadline,
                &|| {
                    set.aborted()
                        || inner.kick.load(Ordering::SeqCst)
                        || (!closed_seen && set.control.device_closed(inner.index))
                },
            );
            #[cfg(test)]
            test_hook::after_wait(outcome);
            if outcome == WaitOutcome::TimedOut {
                break Err(Error::Timeout);
            }
        };
        if let Err(e) = &result
            && !matches!(e, Error::Timeout | Error::Closed)
        {
            debug!(device = %inner.name, error = %e, "GetCommand failed");
        }
        result
    }

    fn complete(&self, mut command: Command, completion: Completion) -> Result<(), Error> {
        if !Arc::ptr_eq(&command.device, &self.inner) {
            // Dropping it completes it on its own device with ERROR_OPERATION_ABORTED.
            return Err(Error::Invalid(InvalidReason::NotActiveCommand));
        }
        if command.code.has_buffer() && completion.bytes_transferred > command.size {
            return Err(Error::Invalid(InvalidReason::BytesTransferred));
        }
        command.done = true;
        // The buffer goes back to the server with the completion: give up this process's
        // views (and their lease) first, so a thread that receives the buffer again at once
        // finds it free.
        drop(command.buffer.take());
        complete_raw(&self.inner, command.code, command.tag, completion)
    }
}

/// Completes a command the client never saw with `ERROR_IO_DEVICE` (IO-ERROR rules).
fn fail_unseen(inner: &DeviceInner, st: &mut DeviceState, entry: CommandEntry) -> Result<(), ()> {
    let e = CompletionEntry {
        tag: entry.tag,
        completion: Completion {
            code: CompletionCode::IO_DEVICE,
            bytes_transferred: 0,
            position: 0,
        },
    };
    queue::push(&inner.set.control.cq(inner.index), &mut st.cq, e.to_words()).map_err(|_| ())
}

fn complete_raw(
    inner: &DeviceInner,
    code: CommandCode,
    tag: u64,
    completion: Completion,
) -> Result<(), Error> {
    inner.set.check_memo(&inner.complete_ok, |m| {
        m.check_complete_command(inner.index)
    })?;
    let mut st = inner.lock();
    inner.finish(&mut st, code, tag, completion)?;
    trace!(device = %inner.name, code = ?code, completion = ?completion.code, bytes = completion.bytes_transferred, "completed");
    Ok(())
}

#[derive(Debug)]
struct CommandBuffer {
    index: u32,
    generation: u16,
    data: BufView,
    prefix: BufView,
    _lease: vdi_core::Lease,
}

/// A command taken with `GetCommand`: complete it with
/// [`ClientDevice::complete`](vdi_core::ClientDevice::complete).
///
/// Dropping a command without completing it completes it with `ERROR_OPERATION_ABORTED` and
/// logs a warning, so the server is never left waiting.
#[derive(Debug)]
pub struct Command {
    device: Arc<DeviceInner>,
    code: CommandCode,
    size: u32,
    position: u64,
    tag: u64,
    buffer: Option<CommandBuffer>,
    done: bool,
}

impl vdi_core::ClientCommand for Command {
    fn code(&self) -> CommandCode {
        self.code
    }

    fn size(&self) -> u32 {
        self.size
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn device_index(&self) -> u32 {
        self.device.index
    }

    fn data(&self) -> &[u8] {
        self.buffer.as_ref().map_or(&[], |b| b.data.as_slice())
    }

    fn data_mut(&mut self) -> &mut [u8] {
        match &mut self.buffer {
            Some(b) => b.data.as_mut_slice(),
            None => &mut [],
        }
    }

    fn prefix_zone(&mut self) -> &mut [u8] {
        match &mut self.buffer {
            Some(b) => b.prefix.as_mut_slice(),
            None => &mut [],
        }
    }
}

impl Drop for Command {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        warn!(code = ?self.code, device = %self.device.name, "Command dropped without complete(); completing with ERROR_OPERATION_ABORTED");
        drop(self.buffer.take());
        let _ = complete_raw(&self.device, self.code, self.tag, Completion::aborted());
    }
}

/// A buffer mapped in this process from a handle another process took (`MapBufferHandle`).
#[derive(Debug)]
pub struct MappedBuffer {
    handle: BufferHandle,
    view: BufView,
    _lease: vdi_core::Lease,
    _set: Arc<Shared>,
}

impl vdi_core::MappedBuffer for MappedBuffer {
    fn handle(&self) -> BufferHandle {
        self.handle
    }

    fn as_slice(&self) -> &[u8] {
        self.view.as_slice()
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.view.as_mut_slice()
    }
}

/// Per-thread hooks into GetCommand's wait loop, for tests that must steer an interleaving or
/// count waits without measuring time.
#[cfg(test)]
mod test_hook {
    use std::cell::{Cell, RefCell};

    use crate::ring::WaitOutcome;

    thread_local! {
        /// Runs right before each wait, after the checks under the device lock.
        static BEFORE_WAIT: RefCell<Option<Box<dyn FnMut()>>> = const { RefCell::new(None) };
        /// Waits started on this thread.
        static WAITS: Cell<u32> = const { Cell::new(0) };
        /// Waits on this thread that ended with a whole slice slept (or a spurious wake-up).
        static SLICES: Cell<u32> = const { Cell::new(0) };
    }

    /// Runs `hook` before every wait of GetCommand on this thread (until [`clear`]).
    pub(super) fn set(hook: impl FnMut() + 'static) {
        BEFORE_WAIT.with_borrow_mut(|h| *h = Some(Box::new(hook)));
    }

    /// Removes this thread's hook.
    pub(super) fn clear() {
        BEFORE_WAIT.with_borrow_mut(|h| *h = None);
    }

    /// The counts of this thread as (waits, slices slept), reset to zero.
    pub(super) fn take_counts() -> (u32, u32) {
        (WAITS.replace(0), SLICES.replace(0))
    }

    pub(super) fn before_wait() {
        WAITS.set(WAITS.get() + 1);
        BEFORE_WAIT.with_borrow_mut(|h| {
            if let Some(h) = h {
                h();
            }
        });
    }

    pub(super) fn after_wait(outcome: WaitOutcome) {
        if outcome == WaitOutcome::SliceElapsed {
            SLICES.set(SLICES.get() + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use vdi_core::{
        ClientBackend, ClientConfig, ClientDevice as _, ClientDeviceSet, CommandCode, Completion,
        Error, ServerBackend, ServerCommand, ServerConfig, ServerDevice as _, ServerDeviceSet,
        Timeout,
    };

    use std::sync::atomic::Ordering;

    use vdi_core::{Call, ProtocolReason};

    use super::test_hook;
    use crate::{ClientDevice, ClientSet, ServerDevice, ServerSet, ShmClient, ShmServer};

    /// A configured one-device set with both sides in this thread.
    fn pair(tag: &str) -> (ClientSet, ClientDevice, ServerSet, ServerDevice) {
        let name = format!("client-{tag}-{}", std::process::id());
        let set = ShmClient::new()
            .create(None, &name, &ClientConfig::default())
            .unwrap();
        let server = ShmServer::new().open(None, &name).unwrap();
        server
            .begin_configuration(&ServerConfig::backup(512, 65536))
            .unwrap();
        let sdev = server.open_device(&name).unwrap();
        server.end_configuration().unwrap();
        set.configuration(Timeout::from_millis(10_000)).unwrap();
        let cdev = set.open_device(&name).unwrap();
        (set, cdev, server, sdev)
    }

    /// CloseDevice landing after GetCommand looked at the device flags, but before it
    /// registered as a sleeper (while it spins), must end the wait at once: the close's
    /// wake-up went out before the client registered, so only the stop predicate can see it.
    /// Before the fix the wait slept a whole slice (counted here), then returned VD_E_CLOSE.
    #[test]
    fn close_while_spinning_ends_get_command_without_sleeping() {
        let (set, cdev, server, sdev) = pair("close-spin");
        let sdev = Rc::new(RefCell::new(Some(sdev)));
        let hook_dev = Rc::clone(&sdev);
        test_hook::set(move || {
            if let Some(d) = hook_dev.borrow().as_ref()
                && d.outstanding() == 0
            {
                // Idempotent enough: a second call fails with a state error, ignored.
                let _ = d.close();
            }
        });
        let _ = test_hook::take_counts();
        assert_eq!(
            cdev.command(Timeout::from_millis(10_000)).unwrap_err(),
            Error::Closed
        );
        let (waits, slices) = test_hook::take_counts();
        test_hook::clear();
        assert_eq!(waits, 1, "one wait, ended by the close");
        assert_eq!(slices, 0, "the wait slept a slice after the close");
        drop(sdev.borrow_mut().take());
        server.close().unwrap();
        set.close().unwrap();
    }

    /// GetCommand and CompleteCommand remember the set machine's `Ok` instead of locking it on
    /// every call; any change of the machine must end that (here: the set terminating while a
    /// command is still outstanding, forced through the machine).
    #[test]
    fn remembered_set_checks_follow_the_machine() {
        let (set, cdev, server, sdev) = pair("memo");
        for _ in 0..2 {
            sdev.send(ServerCommand::control(CommandCode::FLUSH))
                .unwrap();
        }
        let first = cdev.command(Timeout::from_millis(10_000)).unwrap();
        let second = cdev.command(Timeout::from_millis(10_000)).unwrap();
        cdev.complete(first, Completion::success(0)).unwrap();
        // Answering alone changes nothing: the remembered answers stay.
        let v = set.shared.machine_version.load(Ordering::Relaxed);
        assert_eq!(cdev.command(Timeout::POLL).unwrap_err(), Error::Timeout);
        assert_eq!(set.shared.machine_version.load(Ordering::Relaxed), v);
        set.shared.machine().device_closed(cdev.inner.index);
        assert_eq!(
            cdev.complete(second, Completion::success(0)).unwrap_err(),
            Error::Protocol(ProtocolReason::WrongState(Call::CompleteCommand))
        );
        // GetCommand's answer is the machine's too: for a device that ended, VD_E_CLOSE (see
        // `ClientSetMachine::check_get_command`).
        assert_eq!(
            set.shared.machine().check_get_command(cdev.inner.index),
            Err(Error::Closed)
        );
        assert_eq!(cdev.command(Timeout::POLL).unwrap_err(), Error::Closed);
        let _ = sdev.close();
        drop(sdev);
        let _ = server.close();
        let _ = set.close();
    }

    /// A device closed with a command still outstanding (held by another thread, here by
    /// the test) ends only once that command is completed; meanwhile GetCommand sleeps in
    /// slices rather than returning at once from every wait.
    #[test]
    fn closed_with_a_command_outstanding_waits_without_spinning_hot() {
        let (set, cdev, server, sdev) = pair("close-outstanding");
        sdev.send(ServerCommand::control(CommandCode::FLUSH))
            .unwrap();
        let cmd = cdev.command(Timeout::from_millis(10_000)).unwrap();
        sdev.close().unwrap();
        let _ = test_hook::take_counts();
        assert_eq!(
            cdev.command(Timeout::from_millis(250)).unwrap_err(),
            Error::Timeout
        );
        let (waits, _) = test_hook::take_counts();
        // Three 100 ms slices and what is left; a hot loop makes thousands of waits.
        assert!(waits <= 20, "{waits} waits in 250 ms");
        cdev.complete(cmd, Completion::success(0)).unwrap();
        assert_eq!(
            sdev.completion(Timeout::from_millis(10_000)).unwrap().code,
            CommandCode::FLUSH
        );
        assert_eq!(
            cdev.command(Timeout::from_millis(10_000)).unwrap_err(),
            Error::Closed
        );
        drop(sdev);
        server.close().unwrap();
        set.close().unwrap();
    }
}
