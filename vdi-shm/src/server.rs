//! The server side (what SQL Server does, and our reference engine): `Open`, the configuration,
//! buffers, `OpenDevice`, `SendCommand`, completions, `CloseDevice`, `SignalAbort`, `Close`.

use std::{
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

use tracing::{debug, trace, warn};
use vdi_core::{
    AbortReason, ClientConfig, CommandCode, Completion, CompletionCode, Error, InvalidReason,
    ProtocolReason, SendError, ServerCall, ServerCommand, ServerCompletion, ServerConfig,
    ServerDeviceMachine, ServerSetMachine, Timeout,
};

use crate::{
    Options,
    layout::{
        BufferRef, CommandEntry, CompletionEntry, Control, DEV_CLOSED, DEV_SERVER_OPEN, Descriptor,
        QUEUE_DEPTH, STATE_CONFIGURED, STATE_CONNECTED, Tag,
    },
    monitor::{self, Monitor},
    pool::{self, AllocError, HandleTable, Placement, Pool},
    queue::{self, RingIndex},
    ring::WaitOutcome,
    sync::{AtomicU64, Ordering},
    sys::{self, Mapping, Socket},
    view::BufView,
    wait,
    wire::{Msg, Role},
};

static NEXT_SET_ID: AtomicU64 = AtomicU64::new(1);

/// Opens device sets that clients created: the server side of [`vdi_core`]'s traits.
#[derive(Debug, Clone, Default)]
pub struct ShmServer {
    options: Options,
}

impl ShmServer {
    /// A backend with default [`Options`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend with the given options.
    pub fn with_options(options: Options) -> Self {
        Self { options }
    }
}

impl vdi_core::ServerBackend for ShmServer {
    type Set = ServerSet;

    fn open(&self, instance: Option<&str>, name: &str) -> Result<ServerSet, Error> {
        if !matches!(instance, None | Some("")) {
            return Err(Error::InstanceName);
        }
        vdi_core::validate_name(name)?;
        let sock = match Socket::connect(name) {
            Ok(s) => s,
            Err(sys::ConnectError::NotFound) => {
                return Err(Error::Invalid(InvalidReason::NoSuchSet));
            }
            Err(sys::ConnectError::Os(e)) => return Err(e),
        };
        let (control, sock) = monitor::handshake(sock, name, Role::Server, &self.options)?;
        let client = control.client_config();
        if client.validate().is_err() || client.device_count != control.device_count() {
            return Err(Error::Protocol(ProtocolReason::PeerMisbehaved));
        }
        control.publish_state(STATE_CONNECTED);
        let control = Arc::new(control);
        let sock = Arc::new(sock);
        // The server's monitor watches the primary client's connection. The client sends
        // nothing after the handshake; anything it does is ignored.
        let on_gone = {
            let (control, set) = (Arc::clone(&control), name.to_owned());
            move |pid| {
                // Latched first: the server's own state (commands outstanding) decides whether
                // a clean-looking end still strands it.
                control.set_peer_gone();
                control.peer_went_away(&set, "client", pid);
            }
        };
        let monitor = monitor::watch(name, Arc::clone(&sock), false, |_, _| {}, on_gone)?;
        let mut machine = ServerSetMachine::new();
        machine.apply(ServerCall::Open)?;
        debug!(
            set = name,
            devices = client.device_count,
            "server opened the set"
        );
        Ok(ServerSet {
            shared: Arc::new(SetShared {
                id: NEXT_SET_ID.fetch_add(1, Ordering::Relaxed),
                name: name.to_owned(),
                control,
                client,
                sock,
                spins: self.options.spins,
                closed: AtomicU64::new(0),
                state: Mutex::new(SetState {
                    machine,
                    config: None,
                    pending: Vec::new(),
                    pool: Pool::new(client.prefix_zone_size, 1),
                    handles: HandleTable::new(crate::layout::DESCRIPTORS, 0),
                    segments: Vec::new(),
                    names: Vec::new(),
                }),
                monitor: Mutex::new(Some(monitor)),
            }),
        })
    }
}

#[derive(Debug)]
struct SetState {
    machine: ServerSetMachine,
    config: Option<ServerConfig>,
    pending: Vec<(u32, u32, u32)>,
    pool: Pool,
    handles: HandleTable,
    segments: Vec<Arc<Mapping>>,
    /// The names of the devices opened, in order (kept here: the copies in shared memory
    /// are writable by the client).
    names: Vec<String>,
}

#[derive(Debug)]
struct SetShared {
    id: u64,
    name: String,
    control: Arc<Control>,
    client: ClientConfig,
    sock: Arc<Socket>,
    spins: u32,
    /// Devices closed with CloseDevice, one bit each (this process's own record).
    closed: AtomicU64,
    state: Mutex<SetState>,
    monitor: Mutex<Option<Monitor>>,
}

impl SetShared {
    fn lock(&self) -> MutexGuard<'_, SetState> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(reason) = self.control.abort_reason() {
            st.machine.abort(reason);
        }
        st
    }

    fn abort_error(&self) -> Error {
        Error::Aborted(
            self.control
                .abort_reason()
                .unwrap_or(AbortReason::Signalled),
        )
    }

    fn misbehaved(&self) -> Error {
        warn!(set = %self.name, "the client wrote invalid values into shared memory; aborting");
        self.control.abort(AbortReason::PeerMisbehaved);
        self.abort_error()
    }

    /// The final data-zone alignment: the larger of the client's and the server's.
    fn set_alignment(&self, cfg: &ServerConfig) -> u32 {
        self.client.alignment.max(cfg.effective_alignment())
    }

    /// Creates a segment for `requests`, sends it to the client and adds it to the pool.
    fn add_segment(&self, st: &mut SetState, requests: &[(u32, u32, u32)]) -> Result<(), Error> {
        let id = st.segments.len() as u32;
        if id >= crate::layout::MAX_SEGMENTS {
            return Err(Error::Memory);
        }
        let len = st.pool.segment_len_for(requests).map_err(alloc_error)?;
        let len = usize::try_from(len)
            .map_err(|_| Error::Memory)?
            .next_multiple_of(sys::page_size());
        let in_use: u64 = st.segments.iter().map(|m| m.len() as u64).sum();
        if in_use.saturating_add(len as u64) > sys::buffer_memory_limit() {
            return Err(Error::Memory);
        }
        let map = Mapping::create(&format!("vdi-shm:{}:segment{id}", self.name), len, &[])?;
        // Registered locally before it is announced, so an id is never announced twice.
        if !st.pool.add_segment(id as u8, len as u64) {
            return Err(Error::Memory);
        }
        let map = Arc::new(map);
        st.segments.push(Arc::clone(&map));
        self.control
            .segment_len(id)
            .store(len as u64, Ordering::Release);
        let msg = Msg::Segment {
            id,
            len: len as u64,
        };
        if let Err(e) = self.sock.send(&msg.encode(), Some(&map)) {
            // The client cannot learn of the segment: the set cannot go on.
            self.control.abort(AbortReason::PeerExited);
            return Err(e);
        }
        debug!(set = %self.name, id, len, "buffer segment created");
        Ok(())
    }
}

fn alloc_error(e: AllocError) -> Error {
    match e {
        AllocError::InvalidSize => Error::Invalid(InvalidReason::BufferSize),
        AllocError::InvalidAlignment => Error::Invalid(InvalidReason::Alignment),
        AllocError::NoSpace => Error::Memory,
        _ => Error::Invalid(InvalidReason::Buffer),
    }
}

fn check_buffer_request(size: u32, alignment: u32) -> Result<(), Error> {
    if size == 0 || size > pool::MAX_BUFFER_SIZE {
        return Err(Error::Invalid(InvalidReason::BufferSize));
    }
    if alignment != 0 && (!alignment.is_power_of_two() || alignment > vdi_core::MAX_ALIGNMENT) {
        return Err(Error::Invalid(InvalidReason::Alignment));
    }
    Ok(())
}

/// A device set as the server sees it (`IServerVirtualDeviceSet2`).
#[derive(Debug)]
pub struct ServerSet {
    shared: Arc<SetShared>,
}

impl ServerSet {
    /// The set's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The configuration as the client sees it, once `EndConfiguration` succeeded.
    pub fn config(&self) -> Option<vdi_core::Config> {
        let st = self.shared.lock();
        let s = st.config?;
        st.machine
            .is_configured()
            .then(|| vdi_core::Config::combine(&self.shared.client, &s).ok())
            .flatten()
    }
}

impl vdi_core::ServerDeviceSet for ServerSet {
    type Device = ServerDevice;
    type Buffer = Buffer;

    fn configuration(&self) -> Result<ClientConfig, Error> {
        self.shared
            .lock()
            .machine
            .check(ServerCall::GetConfiguration)?;
        Ok(self.shared.client)
    }

    fn begin_configuration(&self, config: &ServerConfig) -> Result<(), Error> {
        let mut st = self.shared.lock();
        st.machine.check(ServerCall::BeginConfiguration)?;
        config.validate_for(&self.shared.client)?;
        let align = self.shared.set_alignment(config);
        st.pool = Pool::new(self.shared.client.prefix_zone_size, align);
        st.handles = HandleTable::new(crate::layout::DESCRIPTORS, self.shared.control.handle_key());
        st.config = Some(*config);
        st.machine.apply(ServerCall::BeginConfiguration)?;
        Ok(())
    }

    fn request_buffers(&self, size: u32, alignment: u32, count: u32) -> Result<(), Error> {
        let mut st = self.shared.lock();
        let state = st.machine.check(ServerCall::RequestBuffers)?;
        check_buffer_request(size, alignment)?;
        if count == 0 {
            return Ok(());
        }
        if state == vdi_core::ServerSetState::Configurable {
            st.pending.push((size, alignment, count));
            Ok(())
        } else {
            self.shared
                .add_segment(&mut st, &[(size, alignment, count)])
        }
    }

    fn query_available_buffers(&self, size: u32, alignment: u32) -> Result<u32, Error> {
        let st = self.shared.lock();
        st.machine.check(ServerCall::QueryAvailableBuffers)?;
        check_buffer_request(size, alignment)?;
        st.pool.available(size, alignment).map_err(alloc_error)
    }

    fn end_configuration(&self) -> Result<(), Error> {
        let mut st = self.shared.lock();
        st.machine.check(ServerCall::EndConfiguration)?;
        let Some(cfg) = st.config else {
            return Err(Error::Protocol(ProtocolReason::WrongState(
                vdi_core::Call::EndConfiguration,
            )));
        };
        let pending = std::mem::take(&mut st.pending);
        if !pending.is_empty() {
            // VD_E_MEMORY leaves the set configurable with no buffers: the server may ask for
            // less, or abort.
            self.shared.add_segment(&mut st, &pending)?;
        }
        self.shared.control.set_server_config(&cfg);
        self.shared.control.publish_state(STATE_CONFIGURED);
        st.machine.apply(ServerCall::EndConfiguration)?;
        debug!(set = %self.shared.name, ?cfg, "configuration ended");
        Ok(())
    }

    fn open_device(&self, name: &str) -> Result<ServerDevice, Error> {
        vdi_core::validate_name(name)?;
        let mut st = self.shared.lock();
        st.machine.check(ServerCall::OpenDevice)?;
        let control = &self.shared.control;
        let index = st.names.len() as u32;
        if index >= control.device_count() {
            return Err(Error::Open);
        }
        // The first device carries the set's name; names are unique within the set.
        let bad_name = (index == 0 && name != self.shared.name)
            || (index > 0 && (name == self.shared.name || st.names.iter().any(|n| n == name)));
        if bad_name {
            return Err(Error::Invalid(InvalidReason::DeviceName));
        }
        let Some(cfg) = st.config else {
            return Err(Error::Protocol(ProtocolReason::WrongState(
                vdi_core::Call::OpenDevice,
            )));
        };
        control.set_device_name(index, name);
        control
            .device_flags(index)
            .fetch_or(DEV_SERVER_OPEN, Ordering::Release);
        st.names.push(name.to_owned());
        st.machine.apply(ServerCall::OpenDevice)?;
        trace!(set = %self.shared.name, device = name, index, "server opened device");
        Ok(ServerDevice {
            set: Arc::clone(&self.shared),
            index,
            name: name.to_owned(),
            config: cfg,
            state: Mutex::new(DeviceState {
                machine: ServerDeviceMachine::new(QUEUE_DEPTH),
                sq: RingIndex::default(),
                cq: RingIndex::default(),
                inflight: (0..QUEUE_DEPTH).map(|_| None).collect(),
                generations: vec![0; QUEUE_DEPTH as usize],
                last_progress: Instant::now(),
                progressed: false,
            }),
        })
    }

    fn allocate_buffer(&self, size: u32, alignment: u32) -> Result<Buffer, Error> {
        let mut st = self.shared.lock();
        st.machine.check(ServerCall::AllocateBuffer)?;
        check_buffer_request(size, alignment)?;
        let p = st.pool.allocate(size, alignment).map_err(alloc_error)?;
        let Some((index, generation, _handle)) = st.handles.insert(p) else {
            let _ = st.pool.free(p);
            return Err(Error::Memory);
        };
        let map = Arc::clone(&st.segments[usize::from(p.segment)]);
        let Some(words) = self.shared.control.descriptor(u32::from(index)) else {
            return Err(Error::Memory);
        };
        Descriptor {
            generation,
            segment: p.segment,
            size: p.size,
            offset: p.data_offset,
        }
        .publish(words);
        let view = BufView::new(map, p.data_offset, u64::from(p.size)).ok_or(Error::Memory)?;
        Ok(Buffer {
            set: self.shared.id,
            placement: p,
            index,
            generation,
            view,
        })
    }

    fn free_buffer(&self, buffer: Buffer) -> Result<(), Error> {
        let mut st = self.shared.lock();
        st.machine.check(ServerCall::FreeBuffer)?;
        if buffer.set != self.shared.id {
            return Err(Error::Invalid(InvalidReason::Buffer));
        }
        st.pool.free(buffer.placement).map_err(alloc_error)?;
        st.handles.remove(buffer.index);
        if let (Some(words), Some(g)) = (
            self.shared.control.descriptor(u32::from(buffer.index)),
            st.handles.generation(buffer.index),
        ) {
            Descriptor::retire(words, g);
        }
        Ok(())
    }

    fn is_shared_buffer(&self, addr: *const u8) -> bool {
        self.shared.lock().segments.iter().any(|m| m.contains(addr))
    }

    fn signal_abort(&self) -> Result<(), Error> {
        let mut st = self.shared.lock();
        st.machine.apply(ServerCall::SignalAbort)?;
        st.machine.abort(AbortReason::Signalled);
        self.shared.control.abort(AbortReason::Signalled);
        debug!(set = %self.shared.name, "server SignalAbort");
        Ok(())
    }

    fn close(&self) -> Result<(), Error> {
        let mut st = self.shared.lock();
        let c = &self.shared.control;
        let devices_open = (0..st.names.len() as u32)
            .any(|i| self.shared.closed.load(Ordering::Acquire) & (1 << i) == 0);
        let not_all_closed = (st.names.len() as u32) < c.device_count() || devices_open;
        let mut action = st.machine.close(devices_open);
        if action.result.is_ok()
            && not_all_closed
            && !action.abort_peer
            && c.abort_reason().is_none()
        {
            // Closing before every device ended: the client must not wait forever.
            action.abort_peer = true;
        }
        if action.abort_peer {
            c.abort(AbortReason::Signalled);
        }
        drop(st);
        monitor::stop_in(&self.shared.monitor);
        debug!(set = %self.shared.name, result = ?action.result, "server Close");
        action.result
    }
}

impl Drop for ServerSet {
    fn drop(&mut self) {
        let open = self.shared.lock().machine.state() != vdi_core::ServerSetState::DoesNotExist;
        if open {
            let _ = vdi_core::ServerDeviceSet::close(self);
        }
    }
}

/// A shared buffer the server allocated: its data zone (the client's prefix zone is not part
/// of it). It moves into [`ServerDevice::send`](vdi_core::ServerDevice::send) and comes back
/// with the completion.
#[derive(Debug)]
pub struct Buffer {
    set: u64,
    placement: Placement,
    index: u16,
    generation: u16,
    view: BufView,
}

impl Buffer {
    /// The buffer's length.
    pub fn len(&self) -> usize {
        self.view.len()
    }

    /// Whether the buffer is empty (never: sizes start at 1).
    pub fn is_empty(&self) -> bool {
        self.view.len() == 0
    }

    /// The address of the data zone, as `IsSharedBuffer` takes it.
    pub fn as_ptr(&self) -> *const u8 {
        self.view.as_ptr()
    }
}

impl vdi_core::ServerBuffer for Buffer {
    fn as_slice(&self) -> &[u8] {
        self.view.as_slice()
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.view.as_mut_slice()
    }
}

#[derive(Debug)]
struct InFlight {
    code: CommandCode,
    size: u32,
    buffer: Option<Buffer>,
}

#[derive(Debug)]
struct DeviceState {
    machine: ServerDeviceMachine,
    sq: RingIndex,
    cq: RingIndex,
    inflight: Vec<Option<InFlight>>,
    generations: Vec<u32>,
    /// When progress was last seen (see `server_timed_out`).
    last_progress: Instant,
    /// A completion came, or the first command went out, since `last_progress` was stamped.
    progressed: bool,
}

/// A device as the server sees it (`IServerVirtualDevice`).
#[derive(Debug)]
pub struct ServerDevice {
    set: Arc<SetShared>,
    index: u32,
    name: String,
    config: ServerConfig,
    state: Mutex<DeviceState>,
}

impl ServerDevice {
    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Commands sent and not yet completed.
    pub fn outstanding(&self) -> u32 {
        self.lock().machine.outstanding()
    }

    fn lock(&self) -> MutexGuard<'_, DeviceState> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(reason) = self.set.control.abort_reason() {
            st.machine.abort(reason);
        }
        st
    }

    fn check(&self, cmd: &ServerCommand<Buffer>) -> Result<(), Error> {
        let is_rw = cmd.code.has_buffer();
        match &cmd.buffer {
            None if is_rw => Err(Error::Invalid(InvalidReason::Buffer)),
            Some(_) if !is_rw => Err(Error::Invalid(InvalidReason::Buffer)),
            Some(b) if b.set != self.set.id => Err(Error::Invalid(InvalidReason::Buffer)),
            Some(b) => {
                let size = cmd.size;
                if size == 0
                    || size as usize > b.len()
                    || size > self.config.max_transfer_size
                    || !size.is_multiple_of(self.config.block_size)
                {
                    Err(Error::Invalid(InvalidReason::TransferSize))
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// The completion the abort produces for one outstanding command, if any is left.
    fn abort_one(&self, st: &mut DeviceState) -> Option<ServerCompletion<Buffer>> {
        let slot = st.inflight.iter().position(Option::is_some)?;
        let f = st.inflight[slot].take()?;
        let tag = Tag {
            slot: slot as u32,
            generation: st.generations[slot],
        }
        .to_word();
        st.generations[slot] = st.generations[slot].wrapping_add(1);
        st.machine
            .completed(f.code, CompletionCode::OPERATION_ABORTED);
        Some(ServerCompletion {
            tag,
            code: f.code,
            completion: Completion::aborted(),
            buffer: f.buffer,
        })
    }

    /// Whether the client made no progress (no completion, while commands were outstanding)
    /// for twice the client's serverTimeout. Progress is stamped with the time here, at the
    /// first look that finds nothing to take after it, rather than at each send and
    /// completion, so that a busy device reads no clock for it. The timeout then runs from
    /// that look: later than the progress itself only while the server was not waiting for
    /// completions, when it could not have acted on a timeout anyway.
    fn server_timed_out(&self, st: &mut DeviceState) -> bool {
        let t = self.set.client.server_timeout;
        if t == 0 || st.machine.outstanding() == 0 {
            return false;
        }
        if st.progressed {
            st.progressed = false;
            st.last_progress = Instant::now();
            return false;
        }
        st.last_progress.elapsed() > Duration::from_millis(u64::from(t)) * 2
    }
}

impl vdi_core::ServerDevice for ServerDevice {
    type Buffer = Buffer;

    fn index(&self) -> u32 {
        self.index
    }

    fn send(&self, command: ServerCommand<Buffer>) -> Result<u64, SendError<Buffer>> {
        if let Err(error) = self.check(&command) {
            return Err(SendError { error, command });
        }
        let mut st = self.lock();
        let free = st.inflight.iter().position(Option::is_none);
        if let Err(error) = st.machine.send(command.code) {
            return Err(SendError { error, command });
        }
        // The table has one slot per command the machine allows outstanding, and a slot is
        // taken exactly while its command is outstanding: a send the machine accepted finds one.
        let Some(slot) = free else {
            return Err(SendError {
                error: Error::Busy,
                command,
            });
        };
        let tag = Tag {
            slot: slot as u32,
            generation: st.generations[slot],
        }
        .to_word();
        let entry = CommandEntry {
            code: command.code,
            size: command.size,
            position: command.position,
            tag,
            buffer: command.buffer.as_ref().map(|b| BufferRef {
                index: u32::from(b.index),
                generation: b.generation,
            }),
        };
        let sq = self.set.control.sq(self.index);
        if queue::push(&sq, &mut st.sq, entry.to_words()).is_err() {
            // The ring has room for every command the machine allows: the client corrupted its
            // index. The set is aborted; the command comes back untouched.
            let error = self.set.misbehaved();
            return Err(SendError { error, command });
        }
        if st.machine.outstanding() == 1 {
            st.progressed = true;
        }
        trace!(device = %self.name, code = ?command.code, size = command.size, "sent");
        st.inflight[slot] = Some(InFlight {
            code: command.code,
            size: command.size,
            buffer: command.buffer,
        });
        Ok(tag)
    }

    fn completion(&self, timeout: Timeout) -> Result<ServerCompletion<Buffer>, Error> {
        let mut deadline = wait::LazyDeadline::new(timeout);
        let control = &self.set.control;
        loop {
            let seen;
            {
                let mut st = self.lock();
                if st.machine.state() == vdi_core::DeviceState::Aborted {
                    // Outstanding commands complete with ERROR_OPERATION_ABORTED; later client
                    // completions are ignored.
                    return self
                        .abort_one(&mut st)
                        .ok_or_else(|| self.set.abort_error());
                }
                // Where the wait below starts (a pop by another thread before it makes the
                // wait return at once).
                seen = st.cq;
                match queue::pop(&control.cq(self.index), &mut st.cq) {
                    Err(()) => {
                        drop(st);
                        return Err(self.set.misbehaved());
                    }
                    Ok(Some(words)) => {
                        let CompletionEntry { tag, completion } =
                            CompletionEntry::from_words(words);
                        let Tag { slot, generation } = Tag::from_word(tag);
                        let slot = slot as usize;
                        let valid = slot < st.inflight.len()
                            && st.generations[slot] == generation
                            && st.inflight[slot].is_some();
                        let Some(f) = valid.then(|| st.inflight[slot].take()).flatten() else {
                            drop(st);
                            return Err(self.set.misbehaved());
                        };
                        let bytes = completion.bytes_transferred;
                        if f.code.has_buffer() && bytes > f.size {
                            drop(st);
                            return Err(self.set.misbehaved());
                        }
                        st.generations[slot] = generation.wrapping_add(1);
                        st.machine.completed(f.code, completion.code);
                        st.progressed = true;
                        trace!(device = %self.name, code = ?f.code, completion = ?completion.code, bytes, "completion");
                        return Ok(ServerCompletion {
                            tag,
                            code: f.code,
                            completion,
                            buffer: f.buffer,
                        });
                    }
                    Ok(None) => {
                        if st.machine.state() == vdi_core::DeviceState::Closed
                            && st.machine.outstanding() == 0
                        {
                            return Err(Error::Closed);
                        }
                        if control.peer_gone() && st.machine.outstanding() > 0 {
                            // The client is gone and nothing it held will be completed.
                            control.abort(AbortReason::PeerExited);
                            continue;
                        }
                        if self.server_timed_out(&mut st) {
                            warn!(device = %self.name, "no completion for twice serverTimeOut; aborting");
                            control.abort(AbortReason::ServerTimeout);
                            continue;
                        }
                    }
                }
            }
            if deadline.is_poll() {
                return Err(Error::Timeout);
            }
            let outcome = queue::wait(
                &control.cq(self.index),
                seen,
                self.set.spins,
                &mut deadline,
                &|| control.abort_reason().is_some(),
            );
            if outcome == WaitOutcome::TimedOut {
                return Err(Error::Timeout);
            }
        }
    }

    fn close(&self) -> Result<(), Error> {
        let mut st = self.lock();
        st.machine.close()?;
        let c = &self.set.control;
        c.device_flags(self.index)
            .fetch_or(DEV_CLOSED, Ordering::Release);
        self.set.closed.fetch_or(1 << self.index, Ordering::AcqRel);
        queue::wake(&c.sq(self.index));
        trace!(device = %self.name, "CloseDevice");
        Ok(())
    }
}
