//! Sockets: the descriptor helpers every socket shares (flags, socket pairs, draining,
//! waiting), the framed `AF_UNIX` stream connections and their listener, the monitor's
//! notifier and `poll`.

use super::*;

// ---------------------------------------------------------------------------------------------
// Descriptors

/// The flags for a new socket: close-on-exec where the system takes it at creation.
pub(super) fn socket_flags() -> SocketFlags {
    #[cfg(not(target_vendor = "apple"))]
    return SocketFlags::CLOEXEC;
    #[cfg(target_vendor = "apple")]
    return SocketFlags::empty();
}

/// What a new socket descriptor still needs: on macOS, close-on-exec (not settable at creation
/// there) and no SIGPIPE (`SO_NOSIGPIPE`, besides the per-call flag of [`send_flags`]); on
/// FreeBSD, no SIGPIPE either way.
pub(super) fn finish_socket(fd: &OwnedFd) -> rustix::io::Result<()> {
    #[cfg(target_vendor = "apple")]
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?;
    #[cfg(any(target_vendor = "apple", target_os = "freebsd"))]
    rustix::net::sockopt::set_socket_nosigpipe(fd, true)?;
    let _ = fd;
    Ok(())
}

/// The flags of every send: no SIGPIPE (`MSG_NOSIGNAL`).
///
/// On macOS the socket option `SO_NOSIGPIPE` is set too (see [`finish_socket`]), but a socket
/// option belongs to the socket, and a wake object's socket is shared with the peer, which
/// could clear the option, shut the socket down, and so make our next wake raise SIGPIPE and
/// kill us. The per-call flag is ours alone. rustix does not offer it on Apple targets, but
/// the system defines it (`MSG_NOSIGNAL`, 0x80000) and XNU's `sendit` raises SIGPIPE only when
/// neither the socket option nor the flag is set; a kernel too old to know the flag ignores
/// it, and the socket option is then all there is.
pub(super) fn send_flags() -> SendFlags {
    #[cfg(not(target_vendor = "apple"))]
    return SendFlags::NOSIGNAL;
    #[cfg(target_vendor = "apple")]
    return SendFlags::from_bits_retain(libc::MSG_NOSIGNAL as u32);
}

/// The flags of every receive that may carry descriptors: close-on-exec where it exists.
pub(super) fn recv_flags() -> RecvFlags {
    #[cfg(not(target_vendor = "apple"))]
    return RecvFlags::CMSG_CLOEXEC;
    #[cfg(target_vendor = "apple")]
    return RecvFlags::empty();
}

/// A connected pair of stream sockets: a wake object, or a notifier.
pub(super) fn socket_pair() -> Result<(OwnedFd, OwnedFd), Error> {
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        socket_flags(),
        None,
    )
    .map_err(|e| os_error("socketpair", e))?;
    finish_socket(&a).map_err(|e| os_error("setsockopt", e))?;
    finish_socket(&b).map_err(|e| os_error("setsockopt", e))?;
    Ok((a, b))
}

/// Makes `fd` readable (one byte; a full socket is readable already).
pub(super) fn signal(fd: BorrowedFd<'_>) {
    let _ = rustix::net::send(fd, &[1], send_flags() | SendFlags::DONTWAIT);
}

/// Reads what is pending on `fd`, without blocking, until the socket says there is no more
/// (`EAGAIN`; a short read is no proof: a wake may arrive between two reads), at most
/// [`DRAIN_LIMIT`] reads. `false`: the socket is at its end or failed, and will stay readable.
pub(super) fn drain(fd: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 64];
    for _ in 0..DRAIN_LIMIT {
        match rustix::net::recv(fd, &mut buf, RecvFlags::DONTWAIT) {
            Ok((0, _)) => return false,
            Ok(_) | Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return true,
            Err(_) => return false,
        }
    }
    true
}

/// Waits until `fd` shows `flags` or `timeout` passes; whether it did. A signal that
/// interrupts the wait (`EINTR`, which poll returns whatever `SA_RESTART` says) is no timeout:
/// the wait goes on for the time left. `false` means the time ran out, or poll failed.
pub(super) fn wait_fd(fd: BorrowedFd<'_>, flags: PollFlags, timeout: Duration) -> bool {
    let mut pfd = [PollFd::new(&fd, flags)];
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let left = deadline.map_or(timeout, |d| d.saturating_duration_since(Instant::now()));
        match rustix::event::poll(&mut pfd, Some(&timespec(left))) {
            Ok(n) => return n > 0,
            // Bounded: each round waits only for the time left, and once none is left, a
            // round is a poll with a zero timeout (interrupted again, it ends the wait).
            Err(Errno::INTR) if !left.is_zero() => {}
            Err(_) => return false,
        }
    }
}

pub(super) fn timespec(t: Duration) -> Timespec {
    Timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as _,
        tv_nsec: t.subsec_nanos() as _,
    }
}


// ---------------------------------------------------------------------------------------------
// Connections

/// A listener's files, removed when it is dropped.
#[derive(Debug)]
pub(super) struct Listening {
    paths: SetPaths,
    /// The name's lock, held for the listener's life (only ever closed).
    _lock: OwnedFd,
}

impl Drop for Listening {
    fn drop(&mut self) {
        // The socket first, then the lock file while still holding the lock, so no one can
        // bind in between (see take_lock for a lock taken on the unlinked file).
        let _ = rustix::fs::unlink(self.paths.sock.as_path());
        let _ = rustix::fs::unlink(self.paths.lock.as_path());
        // `lock` closes after this, releasing the name.
    }
}

/// A message being received.
#[derive(Debug, Default)]
pub(super) struct RecvState {
    /// The current frame's bytes so far.
    frame: Vec<u8>,
    /// The message's payload (from its first frame).
    payload: Vec<u8>,
    /// The descriptors received for the message so far.
    fds: Vec<OwnedFd>,
    /// The descriptors the message's frames declared so far.
    declared: usize,
    /// Frames of the message still to come after the current one (`None`: the current frame
    /// is the message's first).
    frames_left: Option<usize>,
}

/// A listening or connected `AF_UNIX` stream socket. Its descriptor is always non-blocking;
/// "blocking" mode (the default for a connection) waits with poll, at most [`IO_LIMIT`].
#[derive(Debug)]
pub(crate) struct Socket {
    pub(super) fd: OwnedFd,
    listening: Option<Listening>,
    nonblocking: AtomicBool,
    rx: Mutex<RecvState>,
    tx: Mutex<()>,
}

pub(super) fn unix_addr(path: &Path) -> Result<SocketAddrUnix, Error> {
    SocketAddrUnix::new(path).map_err(|_| {
        Error::Invalid(InvalidReason::Name(vdi_core::NameError::TooLong(
            path.as_os_str().len(),
        )))
    })
}

pub(super) fn new_stream() -> Result<OwnedFd, Error> {
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        socket_flags(),
        None,
    )
    .map_err(|e| os_error("socket", e))?;
    finish_socket(&fd).map_err(|e| os_error("setsockopt", e))?;
    Ok(fd)
}

impl Socket {
    fn wrap(fd: OwnedFd, listening: Option<Listening>) -> Result<Self, Error> {
        rustix::io::ioctl_fionbio(&fd, true).map_err(|e| os_error("ioctl(FIONBIO)", e))?;
        Ok(Self {
            fd,
            listening,
            nonblocking: AtomicBool::new(false),
            rx: Mutex::new(RecvState::default()),
            tx: Mutex::new(()),
        })
    }

    /// Binds and listens under `name` in the user's rendezvous directory.
    ///
    /// The name is held by a lock the kernel drops when the process dies, so a stale socket
    /// file never blocks it; the files are removed when the listener is dropped.
    pub(crate) fn listen(name: &str) -> Result<Self, Error> {
        let paths = set_paths(name, true)?.ok_or(Error::Protocol(ProtocolReason::NotReady))?;
        let addr = unix_addr(&paths.sock)?;
        let Some(lock) = take_lock(&paths.lock, true)? else {
            return Err(Error::Protocol(ProtocolReason::AlreadyExists));
        };
        sweep_stale(&paths.dir, &paths.lock);
        // A socket file here is a dead listener's: we hold the name's lock.
        match rustix::fs::unlink(paths.sock.as_path()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(os_error("unlink", e)),
        }
        let fd = new_stream()?;
        rustix::net::bind(&fd, &addr).map_err(|e| os_error("bind", e))?;
        let listening = Listening { paths, _lock: lock };
        rustix::net::listen(&fd, 64).map_err(|e| os_error("listen", e))?;
        Self::wrap(fd, Some(listening))
    }

    /// Connects to the socket listening under `name`.
    pub(crate) fn connect(name: &str) -> Result<Self, ConnectError> {
        let Some(paths) = set_paths(name, false).map_err(ConnectError::Os)? else {
            return Err(ConnectError::NotFound);
        };
        let addr = unix_addr(&paths.sock).map_err(ConnectError::Os)?;
        let fd = new_stream().map_err(ConnectError::Os)?;
        // A listener whose backlog is full makes connect wait: bounded.
        rustix::net::sockopt::set_socket_timeout(
            &fd,
            rustix::net::sockopt::Timeout::Send,
            Some(IO_LIMIT),
        )
        .map_err(|e| ConnectError::Os(os_error("setsockopt(SO_SNDTIMEO)", e)))?;
        loop {
            match rustix::net::connect(&fd, &addr) {
                Ok(()) => break,
                Err(Errno::INTR) => {}
                Err(Errno::CONNREFUSED | Errno::NOENT) => return Err(ConnectError::NotFound),
                Err(Errno::AGAIN | Errno::TIMEDOUT) => {
                    return Err(ConnectError::Os(Error::Protocol(ProtocolReason::NotReady)));
                }
                Err(Errno::ACCESS) => return Err(ConnectError::Os(Error::Security)),
                Err(e) => return Err(ConnectError::Os(os_error("connect", e))),
            }
        }
        Self::wrap(fd, None).map_err(ConnectError::Os)
    }

    /// Accepts one connection, or `WouldBlock`.
    pub(crate) fn accept(&self) -> io::Result<Self> {
        if self.listening.is_none() {
            return Err(ErrorKind::InvalidInput.into());
        }
        #[cfg(not(target_vendor = "apple"))]
        let fd = rustix::net::accept_with(&self.fd, socket_flags())?;
        #[cfg(target_vendor = "apple")]
        let fd = rustix::net::accept(&self.fd)?;
        finish_socket(&fd)?;
        Self::wrap(fd, None).map_err(io::Error::from)
    }

    /// The credentials of the peer, as the kernel recorded them at connect time.
    pub(crate) fn peer_cred(&self) -> Result<PeerCred, Error> {
        peer_cred(self.fd.as_fd())
    }

    /// Sends one message, with the descriptors of `mapping` if given.
    pub(crate) fn send(&self, bytes: &[u8], mapping: Option<&Mapping>) -> Result<(), Error> {
        let fds = mapping.map(Mapping::fds).unwrap_or_default();
        // An empty message is refused: its receiver could not tell it from the end of the
        // connection (`recv` returning 0), and refuses one (see `header_ok`).
        if bytes.is_empty() || bytes.len() > MAX_PAYLOAD || fds.len() > MAX_MESSAGE_FDS {
            return Err(Error::Invalid(InvalidReason::Unspecified));
        }
        let chunks: Vec<&[BorrowedFd<'_>]> = if fds.is_empty() {
            vec![&[]]
        } else {
            fds.chunks(FDS_PER_FRAME).collect()
        };
        let _guard = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        let deadline = Instant::now() + IO_LIMIT;
        let mut started = false;
        for (i, chunk) in chunks.iter().enumerate() {
            let payload: &[u8] = if i == 0 { bytes } else { &[] };
            let mut frame = Vec::with_capacity(FRAME_HEADER + payload.len());
            frame.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
            frame.extend_from_slice(&(payload.len() as u16).to_le_bytes());
            frame.extend_from_slice(&(chunk.len() as u16).to_le_bytes());
            frame.extend_from_slice(&((chunks.len() - 1 - i) as u16).to_le_bytes());
            frame.extend_from_slice(payload);
            self.send_frame(&frame, chunk, deadline, &mut started)?;
        }
        Ok(())
    }

    /// Writes one frame whole, its descriptors with its first byte. A message half sent when
    /// time runs out leaves the stream unusable: the socket is shut down.
    fn send_frame(
        &self,
        frame: &[u8],
        fds: &[BorrowedFd<'_>],
        deadline: Instant,
        started: &mut bool,
    ) -> Result<(), Error> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_FRAME))];
        let mut sent = 0;
        while sent < frame.len() {
            let mut control = SendAncillaryBuffer::new(&mut space);
            if sent == 0 && !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(Error::Invalid(InvalidReason::Unspecified));
            }
            match rustix::net::sendmsg(
                &self.fd,
                &[IoSlice::new(&frame[sent..])],
                &mut control,
                send_flags(),
            ) {
                Ok(n) => {
                    sent += n;
                    *started = true;
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => {
                    let now = Instant::now();
                    let give_up =
                        now >= deadline || (!*started && self.nonblocking.load(Ordering::Relaxed));
                    if give_up || !wait_fd(self.fd.as_fd(), PollFlags::OUT, deadline - now) {
                        if *started {
                            let _ = rustix::net::shutdown(&self.fd, rustix::net::Shutdown::Both);
                        }
                        return Err(os_error("sendmsg", Errno::AGAIN));
                    }
                }
                Err(Errno::PIPE | Errno::CONNRESET) => {
                    return Err(Error::Aborted(vdi_core::AbortReason::PeerExited));
                }
                Err(e) => return Err(os_error("sendmsg", e)),
            }
        }
        Ok(())
    }

    /// Receives one message into `buf`; returns its length (0 at the end of the connection)
    /// and the mapping it carried. A message longer than `buf`, or malformed, is an error.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, Vec<Attachment>)> {
        self.recv_message(buf, true)
    }

    /// Receives one message from a peer we take no descriptors from: descriptors it sends are
    /// discarded by the kernel, never installed here.
    pub(crate) fn recv_no_attachments(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_message(buf, false).map(|(n, _)| n)
    }

    fn recv_message(&self, buf: &mut [u8], take: bool) -> io::Result<(usize, Vec<Attachment>)> {
        let mut st = self.rx.lock().unwrap_or_else(PoisonError::into_inner);
        let deadline = Instant::now() + IO_LIMIT;
        loop {
            let need = match st.frame.len() {
                n if n < FRAME_HEADER => FRAME_HEADER - n,
                n => FRAME_HEADER + usize::from(u16::from_le_bytes([st.frame[2], st.frame[3]])) - n,
            };
            if need > 0 {
                match self.recv_bytes(&mut st, need, take) {
                    Ok(0) => {
                        let idle = st.frame.is_empty() && st.frames_left.is_none();
                        *st = RecvState::default();
                        return if idle {
                            Ok((0, Vec::new()))
                        } else {
                            Err(ErrorKind::UnexpectedEof.into())
                        };
                    }
                    Ok(_) => {
                        // Checked once, as the header completes.
                        if st.frame.len() == FRAME_HEADER && !header_ok(&mut st, take) {
                            *st = RecvState::default();
                            return Err(ErrorKind::InvalidData.into());
                        }
                    }
                    Err(Errno::INTR) => {}
                    Err(Errno::AGAIN) => {
                        let now = Instant::now();
                        if self.nonblocking.load(Ordering::Relaxed) {
                            return Err(ErrorKind::WouldBlock.into());
                        }
                        if now >= deadline
                            || !wait_fd(self.fd.as_fd(), PollFlags::IN, deadline - now)
                        {
                            return Err(ErrorKind::TimedOut.into());
                        }
                    }
                    Err(e) => {
                        *st = RecvState::default();
                        return Err(e.into());
                    }
                }
                continue;
            }
            // A whole frame.
            let frame = std::mem::take(&mut st.frame);
            let more = usize::from(u16::from_le_bytes([frame[6], frame[7]]));
            if st.frames_left.is_none() {
                st.payload = frame[FRAME_HEADER..].to_vec();
            }
            st.frames_left = Some(more);
            if more > 0 {
                continue;
            }
            let done = std::mem::take(&mut *st);
            if take && done.fds.len() != done.declared {
                return Err(ErrorKind::InvalidData.into());
            }
            let Some(dst) = buf.get_mut(..done.payload.len()) else {
                return Err(ErrorKind::InvalidData.into());
            };
            dst.copy_from_slice(&done.payload);
            let mut fds = done.fds;
            let attachments = if fds.is_empty() {
                Vec::new()
            } else {
                let object = fds.remove(0);
                vec![Attachment { object, wake: fds }]
            };
            return Ok((done.payload.len(), attachments));
        }
    }

    /// Reads at most `need` bytes of the current frame, with the descriptors that come along
    /// (kept when `take`, else discarded by the kernel).
    fn recv_bytes(&self, st: &mut RecvState, need: usize, take: bool) -> rustix::io::Result<usize> {
        let mut bytes = [0u8; FRAME_HEADER + MAX_PAYLOAD];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_FRAME))];
        let space: &mut [MaybeUninit<u8>] = if take { &mut space } else { &mut [] };
        let mut control = RecvAncillaryBuffer::new(space);
        let msg = rustix::net::recvmsg(
            &self.fd,
            &mut [IoSliceMut::new(&mut bytes[..need])],
            &mut control,
            recv_flags() | RecvFlags::DONTWAIT,
        )?;
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                for fd in rights {
                    #[cfg(target_vendor = "apple")]
                    let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
                    st.fds.push(fd);
                }
            }
        }
        if (take && msg.flags.contains(ReturnFlags::CTRUNC)) || st.fds.len() > MAX_MESSAGE_FDS {
            // Descriptors beyond what a frame may carry: the peer does not follow the protocol.
            st.fds.clear();
            return Err(Errno::MSGSIZE);
        }
        st.frame.extend_from_slice(&bytes[..msg.bytes]);
        Ok(msg.bytes)
    }

    /// Makes reads and accepts return `WouldBlock` instead of waiting.
    pub(crate) fn set_nonblocking(&self) -> Result<(), Error> {
        self.nonblocking.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The descriptor, to poll.
    pub(crate) fn waitable(&self) -> Waitable<'_> {
        self.fd.as_fd()
    }
}

/// Checks a frame header just completed in `st` against the message so far.
pub(super) fn header_ok(st: &mut RecvState, take: bool) -> bool {
    let h = &st.frame;
    let word = |i: usize| usize::from(u16::from_le_bytes([h[i], h[i + 1]]));
    let (magic, len, fds, more) = (word(0), word(2), word(4), word(6));
    let first = st.frames_left.is_none();
    let ok = magic == usize::from(FRAME_MAGIC)
        && fds <= FDS_PER_FRAME
        && if first {
            // Every message has a payload; an empty one would read as the end of the stream.
            (1..=MAX_PAYLOAD).contains(&len) && more < MAX_FRAMES
        } else {
            len == 0 && Some(more + 1) == st.frames_left
        };
    st.declared += fds;
    ok && (!take || st.fds.len() <= st.declared)
}

/// A socket pair that wakes a thread blocked in [`poll`].
#[derive(Debug)]
pub(crate) struct Notifier {
    rx: OwnedFd,
    tx: OwnedFd,
}

impl Notifier {
    /// A new socket pair.
    pub(crate) fn new() -> Result<Self, Error> {
        let (rx, tx) = socket_pair()?;
        Ok(Self { rx, tx })
    }

    /// Makes it readable.
    pub(crate) fn notify(&self) {
        signal(self.tx.as_fd());
    }

    /// Clears it.
    pub(crate) fn drain(&self) {
        drain(self.rx.as_fd());
    }

    /// The descriptor, to poll.
    pub(crate) fn waitable(&self) -> Waitable<'_> {
        self.rx.as_fd()
    }
}

/// Waits until one of `fds` is readable or hung up, or `timeout` passes (`None`: no limit).
pub(crate) fn poll(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> Vec<Ready> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let ts = timeout.map(timespec);
    let _ = rustix::event::poll(&mut pfds, ts.as_ref());
    pfds.iter()
        .map(|p| {
            let r = p.revents();
            Ready {
                readable: r.contains(PollFlags::IN),
                hangup: r.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL),
            }
        })
        .collect()
}
