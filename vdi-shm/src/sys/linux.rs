//! Linux: sealed memfd mappings, shared futexes, abstract `AF_UNIX` sockets with `SCM_RIGHTS`,
//! peer credentials, eventfd and poll.
//!
//! This is the only module of the backend that talks to the kernel (the platform contract is
//! in `mod.rs`, which also holds the typed views of a mapped range as shared atomics). Its
//! `unsafe` code maps and unmaps a memfd and reads the peer's credentials.

use std::{
    io::{IoSlice, IoSliceMut},
    mem::MaybeUninit,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    ptr::NonNull,
    time::Duration,
};

use rustix::{
    event::{EventfdFlags, PollFd, PollFlags, eventfd},
    fs::{FallocateFlags, MemfdFlags, SealFlags},
    io::Errno,
    net::{
        AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
        SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
    },
    thread::futex,
    time::Timespec,
};
use vdi_core::{Error, InvalidReason, ProtocolReason};

pub(crate) use super::unix_error::{io_error, os_error};
use super::{ConnectError, Ready};
use crate::{Options, sync::AtomicU32};

/// What [`poll`] waits on: a descriptor.
pub(crate) use std::os::fd::BorrowedFd as Waitable;
/// What carries a mapping to a peer: its memfd (sent with `SCM_RIGHTS`).
pub(crate) use std::os::fd::OwnedFd as Attachment;

/// The prefix of every abstract socket name this library binds: the library's own namespace.
const SOCKET_PREFIX: &str = "vdi-shm.1/";
/// The most file descriptors one message carries.
pub(crate) const MAX_FDS: usize = 4;

/// A shared, sealed memfd mapped read-write into this process.
///
/// The memfd is sealed against shrinking and growing, so no process can truncate it under a
/// mapping (which would raise SIGBUS); its pages are allocated up front (fallocate) and mapped
/// populated, so the data path takes no page faults and running out of memory is reported at
/// creation instead of as SIGBUS later.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory; all access through `get`/`slice` is to ShmSafe
// (atomic) types, and raw byte access is handed out only under the protocol's ownership rules by
// the callers of `base`.
unsafe impl Send for Mapping {}
// SAFETY: as for Send.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Creates a new memfd of `len` bytes (a multiple of the page size), allocates its pages,
    /// seals it and maps it. Shared futexes work on any word, so `wake_words` needs nothing.
    pub(crate) fn create(tag: &str, len: usize, wake_words: &[usize]) -> Result<Self, Error> {
        let _ = wake_words;
        if len == 0 || !len.is_multiple_of(page_size()) {
            return Err(Error::Invalid(InvalidReason::BufferSize));
        }
        let fd = rustix::fs::memfd_create(tag, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| os_error("memfd_create", e))?;
        rustix::fs::ftruncate(&fd, len as u64).map_err(|e| os_error("ftruncate", e))?;
        rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, len as u64)
            .map_err(|e| os_error("fallocate", e))?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(|e| os_error("fcntl(F_ADD_SEALS)", e))?;
        Self::map(fd, len)
    }

    /// Maps a memfd received from a peer, after checking that it is sealed against shrinking and
    /// growing, has exactly `expected_len` bytes, and has all of them allocated. The memfd's
    /// own name is its tag; shared futexes need nothing for `wake_words`.
    pub(crate) fn open(
        fd: Attachment,
        tag: &str,
        expected_len: usize,
        wake_words: &[usize],
    ) -> Result<Self, Error> {
        let _ = (tag, wake_words);
        let misbehaved = Error::Protocol(ProtocolReason::PeerMisbehaved);
        if expected_len == 0 || !expected_len.is_multiple_of(page_size()) {
            return Err(misbehaved);
        }
        // The seals first: once SHRINK and GROW are set the size can no longer change, so the
        // size read next stays true for the mapping's lifetime. (Read the other way round, a
        // peer could truncate between the two calls and make the first touch raise SIGBUS.)
        // F_GET_SEALS also fails at once on anything that is not a memfd.
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|_| misbehaved)?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(misbehaved);
        }
        let stat = rustix::fs::fstat(&fd).map_err(|e| os_error("fstat", e))?;
        if u64::try_from(stat.st_size).ok() != Some(expected_len as u64) {
            return Err(misbehaved);
        }
        // Every page must already be allocated (the creator fallocates): mapping a sparse file
        // populated would make this process allocate the peer's memory.
        if u64::try_from(stat.st_blocks)
            .unwrap_or(0)
            .saturating_mul(512)
            < expected_len as u64
        {
            return Err(misbehaved);
        }
        Self::map(fd, expected_len)
    }

    fn map(fd: OwnedFd, len: usize) -> Result<Self, Error> {
        // SAFETY: `fd` is a memfd of at least `len` bytes sealed against shrinking (made by
        // `create`, or checked by `open`), so every page stays backed for the mapping's life.
        let ptr = unsafe { super::unix_map::map_aligned(fd.as_fd(), len, true) }
            .map_err(|e| os_error("mmap", e))?;
        Ok(Self { ptr, len, fd })
    }

    /// The length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The memfd, to send to a peer.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A copy of what [`Socket::send`] carries for this mapping, to open it again in this
    /// process as a peer would.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn attachment(&self) -> std::io::Result<Attachment> {
        self.fd.try_clone()
    }

    /// The first byte of the mapping.
    pub(crate) fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned, and every reference derived from the
        // mapping borrows `self`, so none outlives this call. Byte views handed out by callers
        // hold an Arc to the mapping.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The most bytes of shared buffers this process lets one device set have: three quarters of
/// the machine's physical memory. Pages of a memfd are allocated up front (so the data path never
/// faults), and an allocation beyond the memory the machine has would end with the out-of-memory
/// killer, not with an error; past this limit the server gets `VD_E_MEMORY` instead.
pub(crate) fn buffer_memory_limit() -> u64 {
    let info = rustix::system::sysinfo();
    let total = (info.totalram as u64).saturating_mul(u64::from(info.mem_unit.max(1)));
    total / 4 * 3
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    rustix::param::page_size()
}

/// Sleeps while `word` holds `expected`, for at most `timeout` (a shared, not private, futex:
/// processes mapping the same page meet on it). Returns early on a wake, a change or a signal.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = Timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: timeout.subsec_nanos().into(),
    };
    // EAGAIN (the value changed), ETIMEDOUT and EINTR all mean "look again".
    let _ = futex::wait(word, futex::Flags::empty(), expected, Some(&ts));
}

/// Wakes every thread, in any process, sleeping on `word`.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
}

/// A connected or listening `AF_UNIX` sequential-packet socket.
#[derive(Debug)]
pub(crate) struct Socket(OwnedFd);

/// The credentials of the process at the other end of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerCred {
    /// Process id.
    pub(crate) pid: i32,
    /// Effective user id.
    pub(crate) uid: u32,
    /// Effective group id.
    pub(crate) gid: u32,
}

fn socket_addr(name: &str) -> Result<SocketAddrUnix, Error> {
    let full = format!("{SOCKET_PREFIX}{name}");
    SocketAddrUnix::new_abstract_name(full.as_bytes()).map_err(|_| {
        Error::Invalid(InvalidReason::Name(vdi_core::NameError::TooLong(
            name.len(),
        )))
    })
}

fn new_socket() -> Result<OwnedFd, Error> {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| os_error("socket", e))
}

impl Socket {
    /// Binds and listens under `name` in the library's abstract namespace.
    ///
    /// The name is freed by the kernel when the socket closes, also when the process dies.
    pub(crate) fn listen(name: &str) -> Result<Self, Error> {
        let addr = socket_addr(name)?;
        let fd = new_socket()?;
        match rustix::net::bind(&fd, &addr) {
            Ok(()) => {}
            Err(Errno::ADDRINUSE) => return Err(Error::Protocol(ProtocolReason::AlreadyExists)),
            Err(e) => return Err(os_error("bind", e)),
        }
        rustix::net::listen(&fd, 64).map_err(|e| os_error("listen", e))?;
        Ok(Self(fd))
    }

    /// Connects to the socket listening under `name`.
    pub(crate) fn connect(name: &str) -> Result<Self, ConnectError> {
        let addr = socket_addr(name).map_err(ConnectError::Os)?;
        let fd = new_socket().map_err(ConnectError::Os)?;
        match rustix::net::connect(&fd, &addr) {
            Ok(()) => Ok(Self(fd)),
            Err(Errno::CONNREFUSED | Errno::NOENT) => Err(ConnectError::NotFound),
            Err(e) => Err(ConnectError::Os(os_error("connect", e))),
        }
    }

    /// Accepts one connection (blocking unless the listener is non-blocking).
    pub(crate) fn accept(&self) -> std::io::Result<Self> {
        Ok(rustix::net::accept_with(&self.0, SocketFlags::CLOEXEC).map(Self)?)
    }

    /// The credentials of the peer, as the kernel recorded them at connect time. The pid is 0
    /// when the peer is not visible in this process's pid namespace.
    pub(crate) fn peer_cred(&self) -> Result<PeerCred, Error> {
        self.peer_cred_raw()
            .map_err(|e| os_error("getsockopt(SO_PEERCRED)", e))
    }

    fn peer_cred_raw(&self) -> rustix::io::Result<PeerCred> {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` and `len` are valid for writes of the sizes given; the kernel writes at
        // most `len` bytes of a `struct ucred`, and every bit pattern is a valid libc::ucred
        // (three plain integers).
        let r = unsafe {
            libc::getsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&raw mut cred).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO));
        }
        if len as usize != size_of::<libc::ucred>() {
            return Err(Errno::IO);
        }
        Ok(PeerCred {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
        })
    }

    /// Sends one message, with the memfd of `mapping` if given.
    pub(crate) fn send(&self, bytes: &[u8], mapping: Option<&Mapping>) -> Result<(), Error> {
        let fd = mapping.map(Mapping::fd);
        let fds: &[BorrowedFd<'_>] = fd.as_slice();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(Error::Invalid(InvalidReason::Unspecified));
        }
        loop {
            match rustix::net::sendmsg(
                &self.0,
                &[IoSlice::new(bytes)],
                &mut control,
                SendFlags::NOSIGNAL,
            ) {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(Errno::PIPE | Errno::CONNRESET) => {
                    return Err(Error::Aborted(vdi_core::AbortReason::PeerExited));
                }
                Err(e) => return Err(os_error("sendmsg", e)),
            }
        }
    }

    /// Receives one message into `buf`; returns its length (0 at the end of the connection)
    /// and the file descriptors it carried. A message longer than `buf` is an error.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> std::io::Result<(usize, Vec<Attachment>)> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        Ok(self.recv_into(buf, &mut space)?)
    }

    /// Receives one message from a peer we take no descriptors from: descriptors it sends are
    /// discarded by the kernel, never installed here (closing a peer's descriptor can block,
    /// e.g. on a FUSE file).
    pub(crate) fn recv_no_attachments(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        Ok(self.recv_into(buf, &mut []).map(|(n, _)| n)?)
    }

    fn recv_into(
        &self,
        buf: &mut [u8],
        space: &mut [MaybeUninit<u8>],
    ) -> rustix::io::Result<(usize, Vec<OwnedFd>)> {
        let mut control = RecvAncillaryBuffer::new(space);
        let msg = loop {
            match rustix::net::recvmsg(
                &self.0,
                &mut [IoSliceMut::new(buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Err(Errno::INTR) => continue,
                other => break other?,
            }
        };
        let mut fds = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                fds.extend(rights);
            }
        }
        if msg.flags.contains(rustix::net::ReturnFlags::TRUNC) {
            return Err(Errno::MSGSIZE);
        }
        Ok((msg.bytes, fds))
    }

    /// Makes reads and accepts return `EAGAIN` instead of blocking.
    pub(crate) fn set_nonblocking(&self) -> Result<(), Error> {
        rustix::io::ioctl_fionbio(&self.0, true).map_err(|e| os_error("ioctl(FIONBIO)", e))
    }

    /// The descriptor, to poll.
    pub(crate) fn waitable(&self) -> Waitable<'_> {
        self.0.as_fd()
    }
}

/// An eventfd that wakes a thread blocked in [`poll`].
#[derive(Debug)]
pub(crate) struct Notifier(OwnedFd);

impl Notifier {
    /// A new, non-blocking eventfd.
    pub(crate) fn new() -> Result<Self, Error> {
        eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map(Self)
            .map_err(|e| os_error("eventfd", e))
    }

    /// Makes the eventfd readable.
    pub(crate) fn notify(&self) {
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    /// Clears it.
    pub(crate) fn drain(&self) {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut b);
    }

    /// The descriptor, to poll.
    pub(crate) fn waitable(&self) -> Waitable<'_> {
        self.0.as_fd()
    }
}

/// Waits until one of `fds` is readable or hung up, or `timeout` passes (`None`: no limit).
pub(crate) fn poll(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> Vec<Ready> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN | PollFlags::RDHUP))
        .collect();
    let ts = timeout.map(|t| Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: t.subsec_nanos().into(),
    });
    let _ = rustix::event::poll(&mut pfds, ts.as_ref());
    pfds.iter()
        .map(|p| {
            let r = p.revents();
            Ready {
                readable: r.contains(PollFlags::IN),
                hangup: r.intersects(
                    PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR | PollFlags::NVAL,
                ),
            }
        })
        .collect()
}

/// Whether a peer with these credentials may join: this process's (effective) user, or an
/// admitted user or group.
pub(crate) fn admitted(cred: &PeerCred, options: &Options) -> bool {
    let uid = rustix::process::geteuid().as_raw();
    cred.uid == uid || options.admit_uid == Some(cred.uid) || options.admit_gid == Some(cred.gid)
}

/// This process's id.
pub(crate) fn current_pid() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
}

/// A random 32-bit value from the kernel (for the per-set handle key).
pub(crate) fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    match rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()) {
        Ok(4) => u32::from_ne_bytes(b),
        // Fall back to something that still differs between sets.
        _ => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            t ^ (current_pid() as u32).rotate_left(16)
        }
    }
}
