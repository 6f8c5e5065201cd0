//! The rendezvous pipe and its connections: overlapped operations, the listener, framed
//! messages with handles pulled by the receiver, the monitor's notifier and `poll`.

use super::*;

// ---------------------------------------------------------------------------------------------
// Overlapped operations

/// An OVERLAPPED and its buffer, on the heap at a fixed address while an operation may write
/// to them.
#[repr(C)]
pub(super) struct Op {
    ov: OVERLAPPED,
    buf: [u8; FRAME_MAX],
}

/// One overlapped operation slot of a pipe.
///
/// The `Op` is owned through a raw pointer: while an operation is pending the system may write
/// to it at any time, so no Rust reference to it may exist then, and it must not move or be
/// freed until the operation has finished ([`IoSlot::release`]).
pub(super) struct IoSlot {
    op: NonNull<Op>,
    /// An operation was started and its result not yet collected.
    pending: bool,
}

// SAFETY: the slot exclusively owns its Op; its owner accesses it only under a lock, and the
// system's writes during a pending operation go through the OVERLAPPED protocol.
unsafe impl Send for IoSlot {}

impl IoSlot {
    /// A slot whose operations signal `event`.
    fn new(event: RawHandle) -> Self {
        // SAFETY: OVERLAPPED is plain data; all-zero is the state it must start in.
        let mut ov: OVERLAPPED = unsafe { std::mem::zeroed() };
        ov.hEvent = event;
        let op = Box::new(Op {
            ov,
            buf: [0; FRAME_MAX],
        });
        Self {
            op: NonNull::from(Box::leak(op)),
            pending: false,
        }
    }

    fn ov(&self) -> *mut OVERLAPPED {
        // SAFETY: `op` points to a live Op; this forms a raw pointer, no reference.
        unsafe { &raw mut (*self.op.as_ptr()).ov }
    }

    fn buf(&self) -> *mut u8 {
        // SAFETY: as in `ov`.
        unsafe { (&raw mut (*self.op.as_ptr()).buf).cast() }
    }

    /// Collects the pending operation's result without waiting: `Ok(bytes)`, or the error
    /// (`ERROR_IO_INCOMPLETE` while it runs).
    fn result(&mut self, file: RawHandle) -> Result<usize, u32> {
        let mut n = 0u32;
        // SAFETY: the OVERLAPPED is the one of the operation started on `file`, and stays in
        // place; the call only reads it.
        if unsafe { GetOverlappedResult(file, self.ov(), &mut n, 0) } != 0 {
            self.pending = false;
            return Ok(n as usize);
        }
        let code = last_error();
        if code != ERROR_IO_INCOMPLETE {
            self.pending = false;
        }
        Err(code)
    }

    /// Cancels a pending operation on `file` and waits (bounded) for it to finish. If it does
    /// not, the Op is leaked rather than freed under the system's feet.
    fn release(&mut self, file: RawHandle) {
        if !self.pending {
            return;
        }
        let mut n = 0u32;
        // SAFETY: cancels and collects the operation of this slot's OVERLAPPED on `file`,
        // which is still open.
        let finished = unsafe {
            CancelIoEx(file, self.ov());
            GetOverlappedResultEx(file, self.ov(), &mut n, millis(CANCEL_LIMIT), 0) != 0
        };
        // Any failure but "still running" is the operation's own end (cancelled, or failed).
        let done = finished || !matches!(last_error(), WAIT_TIMEOUT | ERROR_IO_INCOMPLETE);
        if !done {
            // Still running: leak the Op it writes to (never freed), and give the slot a fresh
            // one, which Drop frees.
            self.op = NonNull::from(Box::leak(Box::new(Op {
                // SAFETY: as in `new`.
                ov: unsafe { std::mem::zeroed() },
                buf: [0; FRAME_MAX],
            })));
        }
        self.pending = false;
    }
}

impl Drop for IoSlot {
    fn drop(&mut self) {
        if self.pending {
            // Its owner did not release it: leak rather than free memory the system may write.
            return;
        }
        // SAFETY: `op` came from Box::leak in `new` (or `release`), no operation uses it, and
        // it is freed once.
        drop(unsafe { Box::from_raw(self.op.as_ptr()) });
    }
}


// ---------------------------------------------------------------------------------------------
// The pipe

/// A listening pipe or a connected one.
#[derive(Debug)]
pub(crate) struct Socket(Inner);

#[derive(Debug)]
pub(super) enum Inner {
    Listener(Listener),
    Conn(Conn),
}

/// The listening side: one pipe instance waiting in `ConnectNamedPipe` at a time.
pub(super) struct Listener {
    name: Vec<u16>,
    /// Signalled when a client connects to the waiting instance.
    event: OwnedHandle,
    state: Mutex<ListenState>,
}

pub(super) struct ListenState {
    instance: Option<OwnedHandle>,
    slot: IoSlot,
    /// A client connected before `ConnectNamedPipe` was called (no operation pending).
    connected: bool,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").finish_non_exhaustive()
    }
}

/// A connected pipe (either end) with its read always outstanding.
pub(super) struct Conn {
    pipe: OwnedHandle,
    /// Signalled when the outstanding read completes (a message, the end, or an error).
    event: OwnedHandle,
    read: Mutex<ReadState>,
    /// The peer process, to pull its handles from; `None` if it could not be opened.
    peer_process: Option<OwnedHandle>,
    peer: PeerCred,
}

pub(super) struct ReadState {
    slot: IoSlot,
    /// The pipe ended (the peer closed it or died).
    eof: bool,
    /// The connection failed with this error (sticky).
    failed: Option<u32>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// Whether `code` means the pipe's other end is gone.
pub(super) fn pipe_ended(code: u32) -> bool {
    matches!(
        code,
        ERROR_BROKEN_PIPE | ERROR_PIPE_NOT_CONNECTED | ERROR_NO_DATA
    )
}

pub(super) fn pipe_path(name: &str) -> Vec<u16> {
    wide(&format!("{PIPE_PREFIX}{name}"))
}

impl Listener {
    /// Creates a pipe instance; the first one claims the name.
    fn instance(&self, first: bool) -> Result<OwnedHandle, Error> {
        let sa = owner_only()?;
        let flags = PIPE_ACCESS_DUPLEX
            | FILE_FLAG_OVERLAPPED
            | if first {
                FILE_FLAG_FIRST_PIPE_INSTANCE
            } else {
                0
            };
        // SAFETY: `name` is NUL-terminated; `sa` points to a descriptor that lives for the
        // process; the call creates a new object.
        let h = unsafe {
            CreateNamedPipeW(
                self.name.as_ptr(),
                flags,
                PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
                PIPE_UNLIMITED_INSTANCES,
                FRAME_MAX as u32,
                FRAME_MAX as u32,
                0,
                &sa,
            )
        };
        if h == INVALID_HANDLE_VALUE {
            let code = last_error();
            if first && matches!(code, ERROR_ACCESS_DENIED | ERROR_PIPE_BUSY) {
                return Err(Error::Protocol(ProtocolReason::AlreadyExists));
            }
            return Err(os_error("CreateNamedPipeW", code));
        }
        // SAFETY: a handle CreateNamedPipeW just returned.
        unsafe { owned(h, "CreateNamedPipeW") }
    }

    /// Starts waiting for a client on `st.instance`.
    fn start_connect(&self, st: &mut ListenState) -> Result<(), Error> {
        let Some(instance) = &st.instance else {
            return Ok(());
        };
        reset_event(self.event.as_raw_handle());
        // SAFETY: the slot's OVERLAPPED is free (no operation pending) and stays in place until
        // the operation is collected or released.
        let ok = unsafe { ConnectNamedPipe(instance.as_raw_handle(), st.slot.ov()) };
        let code = last_error();
        if ok != 0 {
            st.connected = true;
            set_event(self.event.as_raw_handle());
            return Ok(());
        }
        match code {
            ERROR_IO_PENDING => st.slot.pending = true,
            ERROR_PIPE_CONNECTED => {
                st.connected = true;
                set_event(self.event.as_raw_handle());
            }
            // A client came and went already: that instance is done; the next accept makes
            // another.
            ERROR_NO_DATA => {
                st.instance = None;
                set_event(self.event.as_raw_handle());
            }
            _ => return Err(os_error("ConnectNamedPipe", code)),
        }
        Ok(())
    }

    fn accept(&self) -> io::Result<Conn> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if st.instance.is_none() {
            st.instance = Some(self.instance(false).map_err(io::Error::other)?);
            st.connected = false;
            self.start_connect(&mut st).map_err(io::Error::other)?;
        }
        if !st.connected {
            if !st.slot.pending {
                return Err(ErrorKind::WouldBlock.into());
            }
            let file = st
                .instance
                .as_ref()
                .map_or(ptr::null_mut(), |h| h.as_raw_handle());
            match st.slot.result(file) {
                Ok(_) => {}
                Err(ERROR_IO_INCOMPLETE) => return Err(ErrorKind::WouldBlock.into()),
                Err(_) => {
                    // The client left before it was accepted: recycle the instance.
                    st.instance = None;
                    set_event(self.event.as_raw_handle());
                    return Err(ErrorKind::WouldBlock.into());
                }
            }
        }
        let pipe = st.instance.take().ok_or(ErrorKind::WouldBlock)?;
        st.connected = false;
        // The next instance at once, so the name stays and the next client finds it.
        match self.instance(false) {
            Ok(h) => {
                st.instance = Some(h);
                if self.start_connect(&mut st).is_err() {
                    st.instance = None;
                    set_event(self.event.as_raw_handle());
                }
            }
            // Retried by the next accept.
            Err(_) => set_event(self.event.as_raw_handle()),
        }
        drop(st);
        let mut pid = 0u32;
        // SAFETY: asks a connected pipe instance we own for its client's process id.
        unsafe { GetNamedPipeClientProcessId(pipe.as_raw_handle(), &mut pid) };
        Conn::new(pipe, pid).map_err(io::Error::other)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(instance) = &st.instance {
            st.slot.release(instance.as_raw_handle());
        }
    }
}

impl Conn {
    /// Wraps a connected pipe whose other end is process `pid`: opens the process, checks its
    /// user, and starts the first read.
    fn new(pipe: OwnedHandle, pid: u32) -> Result<Self, Error> {
        // SAFETY: opens a process by id with limited rights; a null result is an error.
        let process = unsafe {
            OpenProcess(
                PROCESS_DUP_HANDLE | PROCESS_QUERY_LIMITED_INFORMATION | SYNCHRONIZE,
                0,
                pid,
            )
        };
        // SAFETY: a handle OpenProcess just returned (or null).
        let peer_process = unsafe { owned(process, "OpenProcess") }.ok();
        let same_user = match (&peer_process, current_user()) {
            (Some(p), Ok(me)) => process_user(p.as_raw_handle()).is_ok_and(|u| u == me),
            _ => false,
        };
        let event = new_event()?;
        let slot = IoSlot::new(event.as_raw_handle());
        let conn = Self {
            pipe,
            event,
            read: Mutex::new(ReadState {
                slot,
                eof: false,
                failed: None,
            }),
            peer_process,
            peer: PeerCred {
                pid: pid as i32,
                same_user,
            },
        };
        conn.arm(&mut conn.read.lock().unwrap_or_else(PoisonError::into_inner));
        Ok(conn)
    }

    /// Starts the next read unless one is outstanding or the pipe ended.
    fn arm(&self, st: &mut ReadState) {
        if st.slot.pending || st.eof || st.failed.is_some() {
            return;
        }
        // SAFETY: the slot's buffer and OVERLAPPED are free (no operation pending) and stay in
        // place until the read is collected or released (Drop).
        let ok = unsafe {
            ReadFile(
                self.pipe.as_raw_handle(),
                st.slot.buf(),
                FRAME_MAX as u32,
                ptr::null_mut(),
                st.slot.ov(),
            )
        };
        let code = last_error();
        if ok != 0 || matches!(code, ERROR_IO_PENDING | ERROR_MORE_DATA) {
            // Done or running: the event is (or will be) signalled; `recv` collects it.
            st.slot.pending = true;
            return;
        }
        if pipe_ended(code) {
            st.eof = true;
        } else {
            st.failed = Some(code);
        }
        set_event(self.event.as_raw_handle());
    }

    /// The next whole message, `None` at the end of the pipe, `WouldBlock` if none is there.
    fn recv_frame(&self) -> io::Result<Option<Vec<u8>>> {
        let mut st = self.read.lock().unwrap_or_else(PoisonError::into_inner);
        self.arm(&mut st);
        if st.eof {
            return Ok(None);
        }
        if let Some(code) = st.failed {
            return Err(io_err(code));
        }
        match st.slot.result(self.pipe.as_raw_handle()) {
            Ok(n) => {
                let n = n.min(FRAME_MAX);
                // SAFETY: the read finished (collected above), so the system no longer writes
                // the buffer, and it has FRAME_MAX bytes.
                let frame = unsafe { std::slice::from_raw_parts(st.slot.buf(), n) }.to_vec();
                self.arm(&mut st);
                Ok(Some(frame))
            }
            Err(ERROR_IO_INCOMPLETE) => Err(ErrorKind::WouldBlock.into()),
            Err(code) if pipe_ended(code) => {
                st.eof = true;
                set_event(self.event.as_raw_handle());
                Ok(None)
            }
            Err(code) => {
                // ERROR_MORE_DATA: a message longer than any this protocol sends.
                st.failed = Some(code);
                set_event(self.event.as_raw_handle());
                Err(io_err(code))
            }
        }
    }

    /// Writes one message, waiting at most [`PIPE_LIMIT`] for room in the pipe.
    fn write_frame(&self, frame: Vec<u8>) -> Result<(), Error> {
        let event = new_event()?;
        let mut slot = IoSlot::new(event.as_raw_handle());
        let len = frame.len().min(FRAME_MAX);
        // SAFETY: the slot's buffer is free and has FRAME_MAX bytes.
        unsafe { ptr::copy_nonoverlapping(frame.as_ptr(), slot.buf(), len) };
        let file = self.pipe.as_raw_handle();
        // SAFETY: the buffer and OVERLAPPED stay in place until the write is collected or
        // released below.
        let ok = unsafe { WriteFile(file, slot.buf(), len as u32, ptr::null_mut(), slot.ov()) };
        let code = last_error();
        if ok == 0 && code != ERROR_IO_PENDING {
            return Err(write_error(code));
        }
        slot.pending = true;
        let mut n = 0u32;
        // SAFETY: waits (bounded) for the write of this slot's OVERLAPPED on `file`.
        let done = unsafe { GetOverlappedResultEx(file, slot.ov(), &mut n, millis(PIPE_LIMIT), 0) };
        if done != 0 {
            slot.pending = false;
            return Ok(());
        }
        let code = last_error();
        slot.release(file);
        Err(write_error(code))
    }

    /// Duplicates the peer's handles `values` into this process: a section and events.
    fn pull(&self, values: &[u64]) -> Option<Attachment> {
        let process = self.peer_process.as_ref()?.as_raw_handle();
        let dup = |value: u64, access: u32| -> Option<OwnedHandle> {
            let mut out: HANDLE = ptr::null_mut();
            // SAFETY: duplicates a handle of the peer process (which we hold open with
            // PROCESS_DUP_HANDLE) into this process with only `access`; any value is safe to
            // pass: a wrong one makes the call fail or yields some object of the peer, which
            // the caller validates.
            let ok = unsafe {
                DuplicateHandle(
                    process,
                    ptr::without_provenance_mut(value as usize),
                    GetCurrentProcess(),
                    &mut out,
                    access,
                    0,
                    0,
                )
            };
            // SAFETY: on success `out` is a new handle of this process, owned by nobody else.
            (ok != 0).then(|| unsafe { owned(out, "DuplicateHandle") }.ok())?
        };
        let (&section, events) = values.split_first()?;
        Some(Attachment {
            section: dup(section, FILE_MAP_READ | FILE_MAP_WRITE)?,
            events: events
                .iter()
                .map(|&e| dup(e, SYNCHRONIZE | EVENT_MODIFY_STATE))
                .collect::<Option<_>>()?,
        })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let st = self.read.get_mut().unwrap_or_else(PoisonError::into_inner);
        st.slot.release(self.pipe.as_raw_handle());
    }
}

/// A failed write as the crate's error: the peer's end is gone, or the system refused.
pub(super) fn write_error(code: u32) -> Error {
    if pipe_ended(code) {
        Error::Aborted(AbortReason::PeerExited)
    } else {
        os_error("WriteFile", code)
    }
}

/// Splits a frame into its payload and handle values; `None` if it is malformed.
pub(super) fn parse_frame(frame: &[u8]) -> Option<(&[u8], Vec<u64>)> {
    let header = frame.get(..8)?;
    let plen = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let count = u32::from_le_bytes(header[4..].try_into().ok()?) as usize;
    if count > MAX_HANDLES || frame.len() != 8 + plen + 8 * count {
        return None;
    }
    let payload = &frame[8..8 + plen];
    let handles = frame[8 + plen..]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    Some((payload, handles))
}

impl Socket {
    fn conn(&self) -> io::Result<&Conn> {
        match &self.0 {
            Inner::Conn(c) => Ok(c),
            Inner::Listener(_) => Err(ErrorKind::InvalidInput.into()),
        }
    }

    /// Creates the pipe `\\.\pipe\vdi-shm.1\<name>` and waits for clients.
    ///
    /// The name is freed when the last instance closes, also when the process dies.
    pub(crate) fn listen(name: &str) -> Result<Self, Error> {
        let event = new_event()?;
        // The handle value stays the same when `event` moves into the listener.
        let slot = IoSlot::new(event.as_raw_handle());
        let listener = Listener {
            name: pipe_path(name),
            event,
            state: Mutex::new(ListenState {
                instance: None,
                slot,
                connected: false,
            }),
        };
        // FILE_FLAG_FIRST_PIPE_INSTANCE makes the claim atomic on Windows; Wine (8) ignores
        // the flag and adds an instance to an existing pipe, so look first as well.
        if pipe_exists(&listener.name) {
            return Err(Error::Protocol(ProtocolReason::AlreadyExists));
        }
        let first = listener.instance(true)?;
        {
            let mut st = listener
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            st.instance = Some(first);
            listener.start_connect(&mut st)?;
        }
        Ok(Self(Inner::Listener(listener)))
    }

    /// Connects to the pipe of set `name`, waiting (bounded) while every instance is busy.
    pub(crate) fn connect(name: &str) -> Result<Self, ConnectError> {
        let path = pipe_path(name);
        let deadline = Instant::now() + PIPE_LIMIT;
        let pipe = loop {
            // SAFETY: `path` is NUL-terminated; the call opens the pipe or fails. Identification
            // level only: the listener may learn who we are, not act as us.
            let h = unsafe {
                CreateFileW(
                    path.as_ptr(),
                    GENERIC_READ | GENERIC_WRITE,
                    0,
                    ptr::null(),
                    OPEN_EXISTING,
                    FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION,
                    ptr::null_mut(),
                )
            };
            if h != INVALID_HANDLE_VALUE {
                // SAFETY: a handle CreateFileW just returned.
                break unsafe { owned(h, "CreateFileW") }.map_err(ConnectError::Os)?;
            }
            match last_error() {
                ERROR_FILE_NOT_FOUND => return Err(ConnectError::NotFound),
                ERROR_PIPE_BUSY => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(ConnectError::Os(Error::Protocol(ProtocolReason::NotReady)));
                    }
                    let slice = (deadline - now).min(Duration::from_millis(100));
                    // SAFETY: `path` is NUL-terminated; a bounded wait for a free instance.
                    if unsafe { WaitNamedPipeW(path.as_ptr(), millis(slice)) } == 0
                        && last_error() == ERROR_FILE_NOT_FOUND
                    {
                        return Err(ConnectError::NotFound);
                    }
                }
                ERROR_ACCESS_DENIED => return Err(ConnectError::Os(Error::Security)),
                code => return Err(ConnectError::Os(os_error("CreateFileW", code))),
            }
        };
        let mode = PIPE_READMODE_MESSAGE;
        // SAFETY: sets the read mode of a pipe handle we own; the other arguments are optional.
        if unsafe { SetNamedPipeHandleState(pipe.as_raw_handle(), &mode, ptr::null(), ptr::null()) }
            == 0
        {
            return Err(ConnectError::Os(last_os_error("SetNamedPipeHandleState")));
        }
        let mut pid = 0u32;
        // SAFETY: asks a pipe handle we own for the listening process's id.
        unsafe { GetNamedPipeServerProcessId(pipe.as_raw_handle(), &mut pid) };
        Conn::new(pipe, pid)
            .map(|c| Self(Inner::Conn(c)))
            .map_err(ConnectError::Os)
    }

    /// Accepts one connection, or `WouldBlock`.
    pub(crate) fn accept(&self) -> io::Result<Self> {
        match &self.0 {
            Inner::Listener(l) => l.accept().map(|c| Self(Inner::Conn(c))),
            Inner::Conn(_) => Err(ErrorKind::InvalidInput.into()),
        }
    }

    /// The identity of the peer, as recorded when the connection was made.
    pub(crate) fn peer_cred(&self) -> Result<PeerCred, Error> {
        self.conn()
            .map(|c| c.peer)
            .map_err(|e| io_error("GetNamedPipeClientProcessId", &e))
    }

    /// Sends one message with the handles of `mapping`, if given, for the peer to duplicate.
    pub(crate) fn send(&self, bytes: &[u8], mapping: Option<&Mapping>) -> Result<(), Error> {
        let conn = self.conn().map_err(|e| io_error("WriteFile", &e))?;
        let handles = mapping.map(Mapping::raw_handles).unwrap_or_default();
        if bytes.len() > 64 || handles.len() > MAX_HANDLES {
            return Err(Error::Invalid(InvalidReason::Unspecified));
        }
        let mut frame = Vec::with_capacity(8 + bytes.len() + 8 * handles.len());
        frame.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        frame.extend_from_slice(&(handles.len() as u32).to_le_bytes());
        frame.extend_from_slice(bytes);
        for h in handles {
            frame.extend_from_slice(&(h as usize as u64).to_le_bytes());
        }
        conn.write_frame(frame)
    }

    /// Receives one message into `buf`; returns its length (0 at the end of the connection)
    /// and the mapping it carried, duplicated into this process (none if the peer's handles
    /// could not be duplicated: the caller then finds one missing). A message longer than
    /// `buf`, or malformed, is an error.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, Vec<Attachment>)> {
        self.recv_into(buf, true)
    }

    /// Receives one message, taking no objects from the peer.
    pub(crate) fn recv_no_attachments(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_into(buf, false).map(|(n, _)| n)
    }

    fn recv_into(&self, buf: &mut [u8], take: bool) -> io::Result<(usize, Vec<Attachment>)> {
        let conn = self.conn()?;
        let Some(frame) = conn.recv_frame()? else {
            return Ok((0, Vec::new()));
        };
        let Some((payload, handles)) = parse_frame(&frame) else {
            return Err(ErrorKind::InvalidData.into());
        };
        let Some(dst) = buf.get_mut(..payload.len()) else {
            return Err(ErrorKind::InvalidData.into());
        };
        dst.copy_from_slice(payload);
        let attachments = if take && !handles.is_empty() {
            conn.pull(&handles).into_iter().collect()
        } else {
            Vec::new()
        };
        Ok((payload.len(), attachments))
    }

    /// Nothing to do: reads never block here (an operation is always outstanding, and `recv`
    /// answers `WouldBlock` until it completes).
    pub(crate) fn set_nonblocking(&self) -> Result<(), Error> {
        Ok(())
    }

    /// The event to poll: a connection's completed read, or a listener's connected client.
    pub(crate) fn waitable(&self) -> Waitable<'_> {
        match &self.0 {
            Inner::Listener(l) => l.event.as_handle(),
            Inner::Conn(c) => c.event.as_handle(),
        }
    }
}

/// An event that wakes a thread blocked in [`poll`].
#[derive(Debug)]
pub(crate) struct Notifier(OwnedHandle);

impl Notifier {
    /// A new manual-reset event.
    pub(crate) fn new() -> Result<Self, Error> {
        new_event().map(Self)
    }

    /// Signals it.
    pub(crate) fn notify(&self) {
        set_event(self.0.as_raw_handle());
    }

    /// Clears it.
    pub(crate) fn drain(&self) {
        reset_event(self.0.as_raw_handle());
    }

    /// The event, to poll.
    pub(crate) fn waitable(&self) -> Waitable<'_> {
        self.0.as_handle()
    }
}

/// Waits until one of `handles` (manual-reset events) is signalled, or `timeout` passes
/// (`None`: no limit). A signalled event counts as readable; the end of a pipe shows as a
/// completed read, so `hangup` stays false.
pub(crate) fn poll(handles: &[Waitable<'_>], timeout: Option<Duration>) -> Vec<Ready> {
    let raw: Vec<HANDLE> = handles.iter().map(AsRawHandle::as_raw_handle).collect();
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ready: Vec<Ready> = raw
            .iter()
            .map(|&h| Ready {
                readable: signalled(h),
                hangup: false,
            })
            .collect();
        if raw.is_empty() || ready.iter().any(|r| r.readable) {
            return ready;
        }
        let mut wait = match deadline {
            None => None,
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return ready;
                }
                Some(d - now)
            }
        };
        let n = raw.len().min(MAX_WAIT_OBJECTS);
        if raw.len() > MAX_WAIT_OBJECTS {
            wait = Some(wait.map_or(OVERFLOW_SLICE, |w| w.min(OVERFLOW_SLICE)));
        }
        let ms = wait.map_or(INFINITE, millis);
        // SAFETY: `raw[..n]` are at most 64 handles borrowed for the duration of this call.
        let r = unsafe { WaitForMultipleObjects(n as u32, raw.as_ptr(), 0, ms) };
        if r == WAIT_FAILED {
            // Cannot happen with borrowed handles; never spin if it does.
            std::thread::sleep(OVERFLOW_SLICE);
            return ready;
        }
    }
}

/// Test support: what is left of set `name`: this process's mappings of its shared memory, and
/// whether its pipe still exists (1) or not (0).
pub(crate) fn leftovers(name: &str) -> (usize, usize) {
    let prefix = format!("vdi-shm:{name}:");
    let mapped = MAPPINGS.count_tagged(&prefix);
    (mapped, usize::from(pipe_exists(&pipe_path(name))))
}

/// Whether a pipe named `path` (NUL-terminated) exists, listening or busy.
pub(super) fn pipe_exists(path: &[u16]) -> bool {
    // SAFETY: `path` is NUL-terminated; a 1 ms wait for a free instance, which connects nothing.
    let free = unsafe { WaitNamedPipeW(path.as_ptr(), 1) } != 0;
    free || last_error() != ERROR_FILE_NOT_FOUND
}
