//! Portable Unix: POSIX shared memory, a socket pair per wake word, filesystem `AF_UNIX` stream
//! sockets in a private directory, `flock`, and poll.
//!
//! This is the backend on every Unix but Linux (macOS, FreeBSD, ...), and on Linux with the
//! `portable-unix` feature, which exists to test it there. `mod.rs` says what it provides. The
//! choices, and why:
//!
//! - **Shared memory** is a POSIX shared memory object (`shm_open` with a random name under
//!   `/vdi-shm.1.`, `O_CREAT | O_EXCL`, mode 0600, short enough for macOS's 31-byte limit),
//!   unlinked at once: like a memfd it then exists only as descriptors, which travel with
//!   `SCM_RIGHTS`. The mode is 0600 even for a set that admits other users, since the name is
//!   gone before anyone could open it by name, and a descriptor received carries its own
//!   access. On FreeBSD the object is a `memfd_create` object sealed against shrinking and
//!   growing, as on Linux, and a peer's object must show those seals. Mappings are placed at a
//!   multiple of 64 KiB inside a larger reservation, as on Linux, and every page is touched up
//!   front (written by the creator, read by a peer), since `MAP_POPULATE` is Linux's alone.
//! - **A peer's object must be shared memory**, not any descriptor of the right size: a file
//!   on disk could be truncated later, or stall our page touch on a network filesystem, and a
//!   directory or device is no memory at all. `open` requires, before it maps: on FreeBSD the
//!   seals (which only shared memory objects have); on macOS a descriptor whose `fstat` shows
//!   no file type (XNU reports a POSIX shm object's permission bits alone, every vnode shows
//!   its type); on Linux with `portable-unix` a regular file on tmpfs (`fstatfs`); on other
//!   systems a regular file (their filesystem is not checked). Then the size (`fstat`) must be
//!   the layout's. An object that passes but cannot be mapped (opened read-only, say) is
//!   `PeerMisbehaved` too.
//! - **The residual risk: SIGBUS.** Where there are no seals (Linux with `portable-unix`, and
//!   the systems other than macOS and FreeBSD), a peer holding the descriptor could shrink the
//!   object under our mapping with `ftruncate`, and our next touch of a lost page would raise
//!   SIGBUS and kill the process. The size check stops a short object sent by mistake or on
//!   purpose, but not one shrunk later. macOS refuses to resize a POSIX shared memory object
//!   after its first `ftruncate` (XNU's `pshm_truncate`), so there the checked size holds, and
//!   the object is anonymous memory; on Linux with `portable-unix` it does not (tmpfs files
//!   can shrink), which is one reason the feature is for tests only. Peers are admitted only
//!   when they run as this process's user (see below), so this is a crash a process can cause
//!   to another process of the same user, not across users. Nor does `open` check that every
//!   page is allocated (Linux compares `st_blocks`): reading the pages of a sparse object
//!   allocates no memory on tmpfs, and on macOS the object is anonymous memory either way.
//! - **Wake-ups.** No portable system call waits on a word of shared memory across processes
//!   (FreeBSD's `_umtx_op` and macOS's `os_sync_wait_on_address` do, each in its own way), so,
//!   as on Windows, each wake word gets a kernel object that travels with the mapping: a
//!   connected pair of `AF_UNIX` stream sockets, both ends in every process. `futex_wake_all`
//!   sends one byte to one end; `futex_wait` drains the other end, re-reads the word, returns if
//!   it changed, else polls the drained end for at most the timeout. Sends and receives pass
//!   `MSG_DONTWAIT`, a per-call flag, so a peer that clears `O_NONBLOCK` on the shared socket
//!   cannot make a wake or a drain block (with a pipe it could); a full socket means a wake is
//!   already pending. Sends pass `MSG_NOSIGNAL` for the same reason, on macOS too (where
//!   `SO_NOSIGPIPE` is also set, but a peer could clear that option on the shared socket, then
//!   shut it down to make our next wake raise SIGPIPE). Why no wake-up is lost, and what one race costs, is written at
//!   [`futex_wait`]. Each wake word costs two descriptors per process: a set of 64 devices
//!   has 129 wake words, so 258 descriptors in each process that maps its control segment.
//! - **Rendezvous** is a stream socket file in a private directory of the user, chosen from the
//!   effective user alone and never from the environment (`XDG_RUNTIME_DIR`, `TMPDIR`), so that
//!   a service and a login shell of one user, or a process started with `sudo -u`, find the
//!   same one: on macOS `vdi-shm.1/` in the user's private temporary directory
//!   (`confstr(_CS_DARWIN_USER_TEMP_DIR)`, `/var/folders/../T/`, which the system makes 0700
//!   for the user), elsewhere, or when that is unavailable or too long for a socket path,
//!   `/tmp/vdi-shm.1-<uid>/`. The directory is created 0700 and, when it exists already, used
//!   only if it is a directory (not a symlink) owned by this user and writable by nobody else;
//!   otherwise `listen` and `connect` fail with `VD_E_SECURITY` and a warning names the
//!   directory and the reason (for a directory of another owner: that another user created
//!   it, and its uid), so an administrator knows what to remove. **The residual risk: a denial
//!   of service.** `/tmp` is shared, so another user can create `/tmp/vdi-shm.1-<uid>` first
//!   (a name anyone can predict); they cannot reach our sets through it, since we refuse it,
//!   but until root removes it this user can create and join no set (on macOS only when the
//!   private directory is unavailable). A cleaner of `/tmp` that removes old files could also
//!   remove a long-lived listener's socket file: new connections then fail until the set is
//!   created again. A set `name` has the files `<name>.sock` and
//!   `<name>.lock`; a name that would not fit the smallest `sun_path` (104 bytes, BSD and
//!   macOS) with its directory, or that starts with `#`, is stored as `#` and 32 hex digits of
//!   a 128-bit hash, so every name up to `MAX_NAME_LEN` works. On macOS, whose filesystem by
//!   default takes names differing in case or Unicode normalization for one, so is every name
//!   not all of `[a-z0-9._-]`: set names are case-sensitive, and "Nightly" and "nightly" must
//!   not share files.
//! - **A name is held by a lock, not by the file.** `listen` takes an exclusive `flock` on
//!   `<name>.lock` (without waiting: a live holder means `AlreadyExists`), and holds it for the
//!   listener's life; the kernel drops it when the process dies, also by SIGKILL. Whoever gets
//!   the lock removes a stale socket file and binds; a dropped listener removes both files,
//!   the lock file last and while still holding the lock. A lock taken on a file that its
//!   holder unlinked meanwhile is detected (the path no longer names the locked file) and
//!   taken again. A creator killed by SIGKILL leaves its two files behind: the next `listen` of
//!   the name reuses them, and every `listen` removes the stale files of other names it finds
//!   (their lock free). A sweep holds such a lock for a moment, so a `listen` that finds its
//!   name's lock held tries again a few times, a millisecond apart, before `AlreadyExists`.
//!   The lock belongs to the open file, not to the process: its descriptor is close-on-exec,
//!   but a child forked without exec shares it, and then holds the name after the listener's
//!   process died, until the child exits (`listen` of the name answers `AlreadyExists`
//!   meanwhile). Closing it in the child would take a `pthread_atfork` handler and a registry
//!   of lock descriptors safe to read after fork; a program that forks children which keep
//!   running should exec them, or create its sets after forking. `connect` to a stale or missing socket fails at once (`ECONNREFUSED`,
//!   `ENOENT`): `ConnectError::NotFound`.
//! - **Messages** travel on a stream socket (macOS has no `SOCK_SEQPACKET` for `AF_UNIX`), in
//!   frames: an 8-byte header (magic, payload length, descriptors in this frame, frames still
//!   to come), then the payload. Descriptors ride in `SCM_RIGHTS` with their frame, at most 32
//!   a frame, so a control segment with its 258 wake descriptors goes as several frames (Linux
//!   takes at most 253 descriptors in one message). The receiver reads exactly the bytes of
//!   the frame it is in, keeps a partial frame between calls, and checks every header (a
//!   message has 1 to 64 bytes of payload: an empty one would read as the end of the
//!   connection), so a peer that sends garbage ends its connection, and a peer that sends half a frame makes a
//!   non-blocking `recv` answer `WouldBlock` and a blocking one give up after 5 seconds.
//! - **Identity**: `SO_PEERCRED` on Linux, `getpeereid` elsewhere (the pid is then reported as
//!   0; it is only logged). Peers are checked with [`admitted`] as on Linux, but the directory
//!   is the user's own, so peers of other users cannot reach it: `Options::admit_uid` and
//!   `admit_gid` have no effect here, as on Windows.
//! - The monitor's notifier is a socket pair too, and `poll` is poll(2).

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    io::{self, ErrorKind, IoSlice, IoSliceMut},
    mem::MaybeUninit,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    ptr::{self, NonNull},
    sync::{
        Arc, Condvar, Mutex, PoisonError, RwLock,
    },
    time::{Duration, Instant},
};

use rustix::{
    event::{PollFd, PollFlags, Timespec},
    fs::{AtFlags, CWD, FileType, FlockOperation, Mode, OFlags},
    io::Errno,
    net::{
        AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
        SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags,
        SocketType,
    },
};
use tracing::{trace, warn};
use vdi_core::{Error, InvalidReason, ProtocolReason};

pub(crate) use super::unix_error::{io_error, os_error};
use super::{ConnectError, Ready};
use crate::{
    Options,
    sync::{AtomicBool, AtomicU32, Ordering},
};

/// What [`poll`] waits on: a descriptor.
pub(crate) use std::os::fd::BorrowedFd as Waitable;

/// The prefix of every shared memory object name (macOS allows 31 bytes in all).
#[cfg(not(target_os = "freebsd"))]
const SHM_PREFIX: &str = "/vdi-shm.1.";
/// The rendezvous directory's name (in macOS's per-user temporary directory, or with `-<uid>`
/// under `/tmp`).
const DIR_NAME: &str = "vdi-shm.1";
/// The smallest `sun_path` of the supported systems (BSD, macOS), its NUL included. Linux has
/// 108; the smaller limit is used everywhere, so a name maps to the same file on every system.
const SUN_PATH_MAX: usize = 104;
/// A hashed file stem: `#` and 32 hex digits.
const HASHED_STEM_LEN: usize = 33;
/// The longer of the two suffixes (`.sock`, `.lock`).
const SUFFIX_LEN: usize = 5;
/// The most stale names one `listen` removes.
const SWEEP_LIMIT: usize = 64;
/// How many more times `listen` tries a name's lock that it found held (1 ms apart), in case
/// the holder is a sweep removing the name's stale files.
const LOCK_RETRIES: u32 = 5;

/// A frame's header: magic, payload length, descriptors in the frame, frames still to come.
const FRAME_HEADER: usize = 8;
const FRAME_MAGIC: u16 = 0x5644;
/// The longest payload a message has.
const MAX_PAYLOAD: usize = 64;
/// The most descriptors one frame carries.
const FDS_PER_FRAME: usize = 32;
/// The most descriptors one message carries: a control segment of 64 devices (its object and
/// two per wake word: 1 + 2 × 129), with room to spare.
const MAX_MESSAGE_FDS: usize = 320;
/// The most frames one message has.
const MAX_FRAMES: usize = MAX_MESSAGE_FDS.div_ceil(FDS_PER_FRAME);
/// How long a blocking receive waits for the rest of a message, and a send for room.
const IO_LIMIT: Duration = Duration::from_secs(5);
/// How many reads one drain of a wake socket makes at most (a peer could keep writing).
const DRAIN_LIMIT: usize = 8;

// ---------------------------------------------------------------------------------------------
// Descriptors

/// The flags for a new socket: close-on-exec where the system takes it at creation.
fn socket_flags() -> SocketFlags {
    #[cfg(not(target_vendor = "apple"))]
    return SocketFlags::CLOEXEC;
    #[cfg(target_vendor = "apple")]
    return SocketFlags::empty();
}

/// What a new socket descriptor still needs: on macOS, close-on-exec (not settable at creation
/// there) and no SIGPIPE (`SO_NOSIGPIPE`, besides the per-call flag of [`send_flags`]); on
/// FreeBSD, no SIGPIPE either way.
fn finish_socket(fd: &OwnedFd) -> rustix::io::Result<()> {
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
fn send_flags() -> SendFlags {
    #[cfg(not(target_vendor = "apple"))]
    return SendFlags::NOSIGNAL;
    #[cfg(target_vendor = "apple")]
    return SendFlags::from_bits_retain(libc::MSG_NOSIGNAL as u32);
}

/// The flags of every receive that may carry descriptors: close-on-exec where it exists.
fn recv_flags() -> RecvFlags {
    #[cfg(not(target_vendor = "apple"))]
    return RecvFlags::CMSG_CLOEXEC;
    #[cfg(target_vendor = "apple")]
    return RecvFlags::empty();
}

/// A connected pair of stream sockets: a wake object, or a notifier.
fn socket_pair() -> Result<(OwnedFd, OwnedFd), Error> {
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
fn signal(fd: BorrowedFd<'_>) {
    let _ = rustix::net::send(fd, &[1], send_flags() | SendFlags::DONTWAIT);
}

/// Reads what is pending on `fd`, without blocking, until the socket says there is no more
/// (`EAGAIN`; a short read is no proof: a wake may arrive between two reads), at most
/// [`DRAIN_LIMIT`] reads. `false`: the socket is at its end or failed, and will stay readable.
fn drain(fd: BorrowedFd<'_>) -> bool {
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
fn wait_fd(fd: BorrowedFd<'_>, flags: PollFlags, timeout: Duration) -> bool {
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

fn timespec(t: Duration) -> Timespec {
    Timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as _,
        tv_nsec: t.subsec_nanos() as _,
    }
}

// ---------------------------------------------------------------------------------------------
// Shared memory

/// One wake word's socket pair: `rx` is polled and drained, `tx` is written.
#[derive(Debug)]
struct WakePair {
    rx: OwnedFd,
    tx: OwnedFd,
}

/// The socket pairs of a mapping's wake words, by byte offset (sorted).
#[derive(Debug)]
struct WakeTable {
    words: Vec<(usize, WakePair)>,
}

impl WakeTable {
    fn pair(&self, offset: usize) -> Option<&WakePair> {
        self.words
            .binary_search_by_key(&offset, |(o, _)| *o)
            .ok()
            .map(|i| &self.words[i].1)
    }
}

/// A live mapping of this process: where it is, its tag, and its wake words' sockets.
#[derive(Debug)]
struct Registered {
    base: usize,
    len: usize,
    tag: String,
    wake: Arc<WakeTable>,
}

/// Every live mapping of this process, so a wait or wake on a word finds the word's sockets.
static MAPPINGS: RwLock<Vec<Registered>> = RwLock::new(Vec::new());

/// What carries a mapping to a peer: the shared memory object and, for each wake word in
/// order, its socket pair's two ends.
#[derive(Debug)]
pub(crate) struct Attachment {
    object: OwnedFd,
    wake: Vec<OwnedFd>,
}

/// A shared memory object mapped read-write into this process.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    object: OwnedFd,
    wake: Arc<WakeTable>,
}

// SAFETY: the mapping is plain shared memory; all access through `get`/`slice` is to ShmSafe
// (atomic) types, and raw byte access is handed out only under the protocol's ownership rules by
// the callers of `base`. The descriptors may be used from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as for Send.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Creates a zero-filled shared memory object of `len` bytes (a multiple of the page size),
    /// maps it, touches every page, and makes a socket pair for each of `wake_words`.
    pub(crate) fn create(tag: &str, len: usize, wake_words: &[usize]) -> Result<Self, Error> {
        if len == 0 || !len.is_multiple_of(page_size()) {
            return Err(Error::Invalid(InvalidReason::BufferSize));
        }
        let object = new_object(tag, len)?;
        let mut words = Vec::with_capacity(wake_words.len());
        for &offset in wake_words {
            let (rx, tx) = socket_pair()?;
            words.push((offset, WakePair { rx, tx }));
        }
        let map = Self::map(object, tag, len, words, false)?;
        map.touch_pages(true);
        trace!(tag, len, "shared memory created");
        Ok(map)
    }

    /// Maps an object a peer sent, after checking that it cannot shrink where the system can
    /// seal it (FreeBSD), that it is a shared memory object (see [`is_shared_memory`]), that it
    /// has exactly `expected_len` bytes, and that its wake objects are sockets. An object the
    /// system then refuses to map (opened read-only, say) is the peer's fault too.
    pub(crate) fn open(
        attachment: Attachment,
        tag: &str,
        expected_len: usize,
        wake_words: &[usize],
    ) -> Result<Self, Error> {
        let misbehaved = Error::Protocol(ProtocolReason::PeerMisbehaved);
        if expected_len == 0
            || !expected_len.is_multiple_of(page_size())
            || attachment.wake.len() != 2 * wake_words.len()
        {
            return Err(misbehaved);
        }
        // Seals first, where there are any: once SHRINK and GROW are set the size can no longer
        // change, so the size read next stays true for the mapping's lifetime.
        #[cfg(target_os = "freebsd")]
        {
            use rustix::fs::SealFlags;
            let seals = rustix::fs::fcntl_get_seals(&attachment.object).map_err(|_| misbehaved)?;
            if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
                return Err(misbehaved);
            }
        }
        let stat = rustix::fs::fstat(&attachment.object).map_err(|_| misbehaved)?;
        if !is_shared_memory(attachment.object.as_fd(), &stat)
            || u64::try_from(stat.st_size).ok() != Some(expected_len as u64)
        {
            return Err(misbehaved);
        }
        // A wake object is only ever polled, sent to and received from with MSG_DONTWAIT, so
        // any descriptor would be harmless; anything but a socket is still a peer's mistake.
        for fd in &attachment.wake {
            let st = rustix::fs::fstat(fd).map_err(|_| misbehaved)?;
            if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
                return Err(misbehaved);
            }
        }
        let mut sorted = wake_words.to_vec();
        sorted.sort_unstable();
        let mut ends = attachment.wake.into_iter();
        let mut words = Vec::with_capacity(sorted.len());
        for offset in sorted {
            let (Some(rx), Some(tx)) = (ends.next(), ends.next()) else {
                return Err(misbehaved);
            };
            words.push((offset, WakePair { rx, tx }));
        }
        let map = Self::map(attachment.object, tag, expected_len, words, true)?;
        map.touch_pages(false);
        Ok(map)
    }

    /// Maps `len` bytes of `object` at a multiple of [`MAP_ALIGN`](super::MAP_ALIGN) and
    /// registers the mapping.
    /// `from_peer`: the object is a peer's (checked by [`Mapping::open`]), so a failure to map
    /// it, other than a lack of memory, is `PeerMisbehaved`.
    fn map(
        object: OwnedFd,
        tag: &str,
        len: usize,
        mut words: Vec<(usize, WakePair)>,
        from_peer: bool,
    ) -> Result<Self, Error> {
        // SAFETY: `object` is one we made with `len` bytes, or a peer's that `open` checked to
        // be a shared memory object of this system (FreeBSD: sealed against resizing; macOS: a
        // POSIX shm object, resizable only once; Linux with `portable-unix`: a regular file
        // on tmpfs; elsewhere: a regular file) holding exactly `len` bytes. What a peer can
        // still do is shrink an unsealed object later (Linux with `portable-unix`, and the
        // other systems but macOS and FreeBSD), which makes our next access raise SIGBUS: a
        // crash, not undefined behaviour, and only between processes of one user (see the
        // module docs).
        let mapped = unsafe { super::unix_map::map_aligned(object.as_fd(), len, false) };
        let ptr = match mapped {
            Ok(p) => p,
            Err(e) => {
                if from_peer && e != Errno::NOMEM {
                    warn!(tag, error = %e, "a peer's shared memory object cannot be mapped");
                    return Err(Error::Protocol(ProtocolReason::PeerMisbehaved));
                }
                return Err(os_error("mmap", e));
            }
        };
        words.sort_unstable_by_key(|(o, _)| *o);
        let map = Self {
            ptr,
            len,
            object,
            wake: Arc::new(WakeTable { words }),
        };
        MAPPINGS
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Registered {
                base: ptr.as_ptr() as usize,
                len,
                tag: tag.to_owned(),
                wake: Arc::clone(&map.wake),
            });
        Ok(map)
    }

    /// Touches one word in every page, so the pages are faulted in now, not on the data path.
    fn touch_pages(&self, write: bool) {
        let page = page_size();
        for i in 0..self.len / page {
            let w: &AtomicU32 = self.get(i * page);
            if write {
                // Fresh memory no other process has yet: storing 0 changes nothing.
                w.store(0, Ordering::Relaxed);
            } else {
                let _ = w.load(Ordering::Relaxed);
            }
        }
    }

    /// The length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The first byte of the mapping.
    pub(crate) fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The descriptors a message carries for this mapping: the object, then each wake word's
    /// two ends, in the order of the (sorted) wake words.
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        std::iter::once(self.object.as_fd())
            .chain(
                self.wake
                    .words
                    .iter()
                    .flat_map(|(_, p)| [p.rx.as_fd(), p.tx.as_fd()]),
            )
            .collect()
    }

    /// A copy of what [`Socket::send`] carries for this mapping, to open it again in this
    /// process as a peer would.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn attachment(&self) -> io::Result<Attachment> {
        let mut fds = self
            .fds()
            .into_iter()
            .map(|fd| fd.try_clone_to_owned())
            .collect::<io::Result<Vec<_>>>()?;
        let object = fds.remove(0);
        Ok(Attachment { object, wake: fds })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let base = self.ptr.as_ptr() as usize;
        MAPPINGS
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|r| r.base != base);
        // SAFETY: ptr/len are exactly what mmap returned, and every reference derived from the
        // mapping borrows `self`, so none outlives this call. Byte views handed out by callers
        // hold an Arc to the mapping.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A new shared memory object of `len` bytes: sealed against shrinking and growing (FreeBSD).
#[cfg(target_os = "freebsd")]
fn new_object(tag: &str, len: usize) -> Result<OwnedFd, Error> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(tag, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(|e| os_error("memfd_create", e))?;
    rustix::fs::ftruncate(&fd, len as u64).map_err(|e| os_error("ftruncate", e))?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .map_err(|e| os_error("fcntl(F_ADD_SEALS)", e))?;
    Ok(fd)
}

/// A new shared memory object of `len` bytes: `shm_open` under a random name, unlinked at once
/// (it lives on as the descriptor).
#[cfg(not(target_os = "freebsd"))]
fn new_object(tag: &str, len: usize) -> Result<OwnedFd, Error> {
    let _ = tag;
    let mut attempts = 0;
    let fd = loop {
        let name = format!("{SHM_PREFIX}{:08x}{:08x}", random_u32(), random_u32());
        match rustix::shm::open(
            name.as_str(),
            rustix::shm::OFlags::CREATE | rustix::shm::OFlags::EXCL | rustix::shm::OFlags::RDWR,
            Mode::RUSR | Mode::WUSR,
        ) {
            Ok(fd) => {
                let _ = rustix::shm::unlink(name.as_str());
                break fd;
            }
            Err(Errno::EXIST) if attempts < 8 => attempts += 1,
            Err(e) => return Err(os_error("shm_open", e)),
        }
    };
    // shm_open sets close-on-exec (POSIX requires FD_CLOEXEC on the new descriptor).
    rustix::fs::ftruncate(&fd, len as u64).map_err(|e| os_error("ftruncate", e))?;
    Ok(fd)
}

/// Whether `fd` (whose `fstat` is `st`) is a shared memory object of this system's kind, not
/// a file on disk a peer could truncate or a network filesystem could stall a page fault on,
/// nor a directory, socket or device. Which object that is differs by system:
///
/// - Linux (`portable-unix`): `shm_open` makes a regular file on tmpfs (`/dev/shm`), so the
///   object must be a regular file (`fstat`) on a tmpfs (`fstatfs` gives `TMPFS_MAGIC`).
///   A tmpfs file can still be shrunk by its holder: the SIGBUS risk of the module docs.
/// - FreeBSD: the seals `open` requires first exist only on shared memory objects
///   (`memfd_create`, `shm_open`): a vnode answers `F_GET_SEALS` with an error.
/// - macOS: XNU's `fstat` of a POSIX shm descriptor (`pshm_stat` in `bsd/kern/posix_shm.c`)
///   fills `st_mode` with the object's permission bits alone (`shm_open` masks its mode with
///   `ALLPERMS`), so the file-type bits are 0, whereas every vnode (regular file, directory,
///   device, FIFO) and socket shows its type there. Type bits of 0 therefore mean no vnode; a
///   descriptor of another vnode-less kind (a semaphore, a kqueue) fails the `mmap` that
///   follows. Should a later XNU report a type for shm objects, this refuses every peer's
///   object (fails closed) rather than accepting files.
/// - Other systems: a regular file, which is what their `shm_open` makes; the filesystem is
///   not checked (the object could be a file on disk, truncatable by its holder).
fn is_shared_memory(fd: BorrowedFd<'_>, st: &rustix::fs::Stat) -> bool {
    #[cfg(target_os = "linux")]
    {
        // TMPFS_MAGIC, as `statfs(2)` lists it.
        const TMPFS_MAGIC: u64 = 0x0102_1994;
        FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
            && rustix::fs::fstatfs(fd).is_ok_and(|fs| fs.f_type as u64 == TMPFS_MAGIC)
    }
    #[cfg(target_os = "freebsd")]
    {
        let _ = (fd, st);
        true
    }
    #[cfg(target_vendor = "apple")]
    {
        let _ = fd;
        st.st_mode & libc::S_IFMT == 0
    }
    #[cfg(not(any(target_os = "linux", target_os = "freebsd", target_vendor = "apple")))]
    {
        let _ = fd;
        FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
    }
}

/// The most bytes of shared buffers this process lets one device set have: three quarters of
/// the machine's physical memory (`sysconf(_SC_PHYS_PAGES)`), or no limit but the system's if
/// it does not tell.
pub(crate) fn buffer_memory_limit() -> u64 {
    // SAFETY: sysconf reads a system value; it has no preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    match u64::try_from(pages) {
        Ok(p) if p > 0 => p.saturating_mul(page_size() as u64) / 4 * 3,
        _ => u64::MAX,
    }
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    rustix::param::page_size()
}

// ---------------------------------------------------------------------------------------------
// Wake-ups

/// The wake table and the pair index of `word`, if it is a wake word of a live mapping.
fn wake_table(word: &AtomicU32) -> Option<(Arc<WakeTable>, usize)> {
    let addr = ptr::from_ref(word) as usize;
    let all = MAPPINGS.read().unwrap_or_else(PoisonError::into_inner);
    let r = all
        .iter()
        .find(|r| (r.base..r.base + r.len).contains(&addr))?;
    r.wake.pair(addr - r.base)?;
    Some((Arc::clone(&r.wake), addr - r.base))
}

/// Waits and wakes on words that are not wake words of a mapping (only threads of this process
/// can reach those): one lock and condition variable for all of them.
static LOCAL: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());

/// Sleeps while `word` holds `expected`, for at most `timeout`; returns early on a change seen
/// before sleeping, on a [`futex_wake_all`] from any process, or spuriously.
///
/// Drain, re-read, poll. A wake is a byte sent after the word changed, so:
/// - a change before the re-read is seen by the re-read, and the wait returns at once;
/// - a change after the re-read sends its byte after the drain, so the poll returns at once;
/// - every waiter already in poll sees the byte (poll does not consume it): a wake wakes all;
/// - the byte stays until the next waiter drains it, so it costs no one a spurious return.
///
/// The one race left is two waiters on one word: if the second drains between the first's
/// re-read and its poll, it takes the first's byte, and the first sleeps until its timeout
/// (the callers' slice, at most 100 ms), never longer. Two sleepers on one word are rare (a
/// ring has one consumer), and a word is woken only when a sleeper is announced. A wake object
/// that a peer broke (closed its end) stays readable; the wait then sleeps out its timeout
/// instead of returning at once, so a broken peer costs latency, not a spinning thread.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let Some((table, offset)) = wake_table(word) else {
        let guard = LOCAL.0.lock().unwrap_or_else(PoisonError::into_inner);
        if word.load(Ordering::SeqCst) == expected {
            let _ = LOCAL.1.wait_timeout(guard, timeout);
        }
        return;
    };
    let Some(pair) = table.pair(offset) else {
        return;
    };
    let healthy = drain(pair.rx.as_fd());
    if word.load(Ordering::SeqCst) != expected {
        return;
    }
    if healthy {
        wait_fd(pair.rx.as_fd(), PollFlags::IN, timeout);
    } else {
        std::thread::sleep(timeout);
    }
}

/// Wakes every thread, in any process, sleeping on `word`.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    match wake_table(word) {
        Some((table, offset)) => {
            if let Some(pair) = table.pair(offset) {
                signal(pair.tx.as_fd());
            }
        }
        None => {
            drop(LOCAL.0.lock().unwrap_or_else(PoisonError::into_inner));
            LOCAL.1.notify_all();
        }
    }
}

/// The socket-pair wake-ups as the ring's wait strategy.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FutexWake;

impl crate::ring::Wake for FutexWake {
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Duration) {
        futex_wait(word, expected, timeout);
    }

    fn wake_all(&self, word: &AtomicU32) {
        futex_wake_all(word);
    }
}

// ---------------------------------------------------------------------------------------------
// The rendezvous directory

/// Why a rendezvous directory was refused: a warning that names it, then `VD_E_SECURITY`.
fn refuse(dir: &Path, why: &str) -> Error {
    warn!(
        "refusing the rendezvous directory {}: {why}; no set can be created or joined as this \
         user until it is removed",
        dir.display()
    );
    Error::Security
}

/// Checks that `dir` is a directory (not a symlink) owned by `uid` that nobody else may write.
fn check_dir(dir: &Path, uid: u32) -> Result<(), Error> {
    let st = rustix::fs::statat(CWD, dir, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| os_error("lstat", e))?;
    let owner = st.st_uid;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {}
        FileType::Symlink => {
            return Err(refuse(
                dir,
                &format!("it is a symbolic link (made by uid {owner}), not a directory"),
            ));
        }
        _ => {
            return Err(refuse(
                dir,
                &format!("it is no directory (made by uid {owner})"),
            ));
        }
    }
    if owner != uid {
        return Err(refuse(
            dir,
            &format!("another user (uid {owner}) created it, not this one (uid {uid})"),
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(refuse(
            dir,
            &format!(
                "its group or others may write to it (mode {:o})",
                st.st_mode & 0o777
            ),
        ));
    }
    Ok(())
}

/// The rendezvous directory, chosen from the (effective) user alone, never from the
/// environment, so every process of the user finds the same one: on macOS `vdi-shm.1` in the
/// user's private temporary directory (see [`darwin_user_temp_dir`]), elsewhere (and when that
/// one is unavailable or too long for a socket path) `/tmp/vdi-shm.1-<uid>`. Created (0700)
/// when `create`; `Ok(None)` when it does not exist and `create` is false.
fn rendezvous_dir(create: bool) -> Result<Option<PathBuf>, Error> {
    let uid = rustix::process::geteuid().as_raw();
    resolve_dir(user_dir(uid), uid, create)
}

/// The rendezvous directory's path for `uid` (see [`rendezvous_dir`]).
fn user_dir(uid: u32) -> PathBuf {
    #[cfg(target_vendor = "apple")]
    if let Some(dir) = darwin_user_temp_dir()
        .map(|t| t.join(DIR_NAME))
        .filter(|d| d.as_os_str().len() + 1 + HASHED_STEM_LEN + SUFFIX_LEN < SUN_PATH_MAX)
    {
        return dir;
    }
    PathBuf::from(format!("/tmp/{DIR_NAME}-{uid}"))
}

/// The user's private temporary directory on macOS (`/var/folders/../T/`), as
/// `confstr(_CS_DARWIN_USER_TEMP_DIR)` reports it: made by the system for the effective user,
/// owned by it and mode 0700, and not taken from `TMPDIR`. Unlike a name under `/tmp`, no
/// other user can create our directory inside it first.
#[cfg(target_vendor = "apple")]
fn darwin_user_temp_dir() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut buf = [0u8; 1024];
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes, and confstr writes at most that
    // many (a NUL-terminated string, truncated to fit); it returns the size the whole value
    // needs, its NUL included, or 0 when there is none.
    let n = unsafe {
        libc::confstr(
            libc::_CS_DARWIN_USER_TEMP_DIR,
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 2 || n > buf.len() {
        return None;
    }
    let dir = PathBuf::from(std::ffi::OsStr::from_bytes(&buf[..n - 1]));
    dir.is_absolute().then_some(dir)
}

/// Creates `dir` if asked and missing, then checks it (see [`check_dir`]).
fn resolve_dir(dir: PathBuf, uid: u32, create: bool) -> Result<Option<PathBuf>, Error> {
    if create {
        match rustix::fs::mkdir(dir.as_path(), Mode::RWXU) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(os_error("mkdir", e)),
        }
    } else if let Err(Errno::NOENT) = rustix::fs::statat(CWD, dir.as_path(), AtFlags::empty()) {
        return Ok(None);
    }
    check_dir(&dir, uid)?;
    Ok(Some(dir))
}

/// The file stem of set `name` in `dir` (see [`stem_for`]), by this system's rule: on Apple
/// systems the filesystem is taken to fold case and Unicode normalization.
fn stem(dir: &Path, name: &str) -> String {
    stem_for(dir, name, cfg!(target_vendor = "apple"))
}

/// The file stem of set `name` in `dir`: the name itself when its socket path fits, it does
/// not start with `#`, and, when `folding` (the filesystem may take names that differ in case
/// or Unicode normalization for one, as APFS and HFS+ do by default), it is all of
/// `[a-z0-9._-]`; else `#` and 32 hex digits of a 128-bit hash of its exact bytes. Set names
/// are case-sensitive, so on such a filesystem "Nightly" and "nightly" would otherwise share
/// files; hashed, they do not, and no kept name can equal a hashed stem (which starts with `#`).
fn stem_for(dir: &Path, name: &str, folding: bool) -> String {
    let fits = dir.as_os_str().len() + 1 + name.len() + SUFFIX_LEN < SUN_PATH_MAX;
    let foldable = folding
        && !name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'));
    if fits && !foldable && !name.starts_with('#') {
        return name.to_owned();
    }
    // FNV-1a, twice with different offsets: stable across builds and processes (std's hashers
    // are not promised to be), and collisions among one user's names are not a threat (the
    // directory is theirs alone).
    let fnv = |seed: u64| {
        name.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
        })
    };
    let hashed = format!(
        "#{:016x}{:016x}",
        fnv(0xCBF2_9CE4_8422_2325),
        fnv(0x6C62_272E_07BB_0142)
    );
    debug_assert_eq!(hashed.len(), HASHED_STEM_LEN);
    hashed
}

/// The paths of set `name`'s socket and lock files, and its directory; `None` when the
/// directory does not exist and `create` is false.
fn set_paths(name: &str, create: bool) -> Result<Option<SetPaths>, Error> {
    let Some(dir) = rendezvous_dir(create)? else {
        return Ok(None);
    };
    Ok(Some(SetPaths::new(dir, name)))
}

#[derive(Debug)]
struct SetPaths {
    dir: PathBuf,
    sock: PathBuf,
    lock: PathBuf,
}

impl SetPaths {
    fn new(dir: PathBuf, name: &str) -> Self {
        let stem = stem(&dir, name);
        Self {
            sock: dir.join(format!("{stem}.sock")),
            lock: dir.join(format!("{stem}.lock")),
            dir,
        }
    }
}

/// Takes the exclusive lock on `path` without waiting, creating the file if `create`:
/// `Ok(None)` when a live process holds it (or, without `create`, when there is no file).
///
/// With `create` (a `listen`), a lock found held is tried again, [`LOCK_RETRIES`] times a
/// millisecond apart, the path opened anew each time: its holder may be another process's
/// [`sweep_stale`], which holds a dead listener's lock only while it removes that listener's
/// files, and the name is then free. A live listener holds it throughout: `AlreadyExists`.
fn take_lock(path: &Path, create: bool) -> Result<Option<OwnedFd>, Error> {
    let flags = OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let mut busy = 0;
    let mut relocks = 0;
    while relocks < 8 {
        let fd = match rustix::fs::open(
            path,
            if create {
                flags | OFlags::CREATE
            } else {
                flags
            },
            Mode::RUSR | Mode::WUSR,
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if !create => return Ok(None),
            Err(e) => return Err(os_error("open(lock)", e)),
        };
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) if create && busy < LOCK_RETRIES => {
                busy += 1;
                drop(fd);
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(Errno::WOULDBLOCK) => return Ok(None),
            Err(e) => return Err(os_error("flock", e)),
        }
        // Its last holder may have unlinked the file between our open and our lock: the lock
        // counts only if the path still names the file we locked.
        let ours = rustix::fs::fstat(&fd).map_err(|e| os_error("fstat", e))?;
        if let Ok(now) = rustix::fs::statat(CWD, path, AtFlags::SYMLINK_NOFOLLOW)
            && (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino)
        {
            return Ok(Some(fd));
        }
        relocks += 1;
    }
    Err(os_error("flock", Errno::AGAIN))
}

/// Removes the files of names whose lock nobody holds (their listener died), at most
/// [`SWEEP_LIMIT`] of them. It never creates a lock file: one it created could make a
/// listener arriving at that moment find the name taken.
fn sweep_stale(dir: &Path, except: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if removed >= SWEEP_LIMIT {
            break;
        }
        let path = entry.path();
        if path == except || path.extension().is_none_or(|e| e != "lock") {
            continue;
        }
        if let Ok(Some(lock)) = take_lock(&path, false) {
            let _ = rustix::fs::unlink(path.with_extension("sock"));
            let _ = rustix::fs::unlink(path.as_path());
            drop(lock);
            removed += 1;
        }
    }
}

/// Test support: what is left of set `name`: this process's mappings of its shared memory,
/// and whether its socket file exists (1) or not (0), live or stale.
pub(crate) fn leftovers(name: &str) -> (usize, usize) {
    let prefix = format!("vdi-shm:{name}:");
    let mapped = MAPPINGS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|r| r.tag.starts_with(&prefix))
        .count();
    let file = match set_paths(name, false) {
        Ok(Some(p)) => usize::from(
            rustix::fs::statat(CWD, p.sock.as_path(), AtFlags::SYMLINK_NOFOLLOW).is_ok(),
        ),
        _ => 0,
    };
    (mapped, file)
}

// ---------------------------------------------------------------------------------------------
// Sockets

/// A listener's files, removed when it is dropped.
#[derive(Debug)]
struct Listening {
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
struct RecvState {
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
    fd: OwnedFd,
    listening: Option<Listening>,
    nonblocking: AtomicBool,
    rx: Mutex<RecvState>,
    tx: Mutex<()>,
}

/// The credentials of the process at the other end of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerCred {
    /// Process id (0 where the system does not tell).
    pub(crate) pid: i32,
    /// Effective user id.
    pub(crate) uid: u32,
    /// Effective group id.
    pub(crate) gid: u32,
}

fn unix_addr(path: &Path) -> Result<SocketAddrUnix, Error> {
    SocketAddrUnix::new(path).map_err(|_| {
        Error::Invalid(InvalidReason::Name(vdi_core::NameError::TooLong(
            path.as_os_str().len(),
        )))
    })
}

fn new_stream() -> Result<OwnedFd, Error> {
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
fn header_ok(st: &mut RecvState, take: bool) -> bool {
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

#[cfg(any(target_os = "linux", target_os = "android"))]
fn peer_cred(fd: BorrowedFd<'_>) -> Result<PeerCred, Error> {
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
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if r != 0 || len as usize != size_of::<libc::ucred>() {
        return Err(io_error(
            "getsockopt(SO_PEERCRED)",
            &io::Error::last_os_error(),
        ));
    }
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn peer_cred(fd: BorrowedFd<'_>) -> Result<PeerCred, Error> {
    let (mut uid, mut gid) = (0, 0);
    // SAFETY: `uid` and `gid` are valid for writes; the call fills them for a connected
    // AF_UNIX socket, which `fd` is (borrowed for the call).
    let r = unsafe {
        libc::getpeereid(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &raw mut uid,
            &raw mut gid,
        )
    };
    if r != 0 {
        return Err(io_error("getpeereid", &io::Error::last_os_error()));
    }
    Ok(PeerCred { pid: 0, uid, gid })
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

/// Whether a peer with these credentials may join: this process's (effective) user, or an
/// admitted user or group (which cannot reach the user's directory: see the module docs).
pub(crate) fn admitted(cred: &PeerCred, options: &Options) -> bool {
    let uid = rustix::process::geteuid().as_raw();
    cred.uid == uid || options.admit_uid == Some(cred.uid) || options.admit_gid == Some(cred.gid)
}

/// This process's id.
pub(crate) fn current_pid() -> i32 {
    std::process::id() as i32
}

/// A random 32-bit value (for the per-set handle key and object names): SipHash under std's
/// random keys, which come from the system's generator.
pub(crate) fn random_u32() -> u32 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader},
        os::unix::fs::PermissionsExt,
        process::{Command, Stdio},
    };

    use super::*;
    use crate::sync::AtomicUsize;

    /// A name no other test (or test process) uses.
    fn unique(what: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        format!(
            "posix-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A fresh scratch directory of this process.
    fn scratch(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(unique(what));
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    const MISBEHAVED: Error = Error::Protocol(ProtocolReason::PeerMisbehaved);

    /// Not a test of its own: the child process of `stale_socket_of_a_killed_listener_...`,
    /// which listens under `VDI_POSIX_CHILD_LISTEN` and waits to be killed.
    #[test]
    fn child_listener() {
        let Ok(name) = std::env::var("VDI_POSIX_CHILD_LISTEN") else {
            return;
        };
        let _listener = Socket::listen(&name).unwrap();
        println!("listening");
        std::thread::sleep(Duration::from_secs(60));
    }

    #[test]
    fn stale_socket_of_a_killed_listener_does_not_block_the_name() {
        let name = unique("stale");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "sys::imp::tests::child_listener", "--nocapture"])
            .env("VDI_POSIX_CHILD_LISTEN", &name)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // The test harness talks first; the child says "listening" once it holds the name.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while line.trim() != "listening" {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "the child ended");
        }
        // Alive: the name is taken, and a connection reaches the child.
        assert_eq!(
            Socket::listen(&name).unwrap_err(),
            Error::Protocol(ProtocolReason::AlreadyExists)
        );
        assert!(Socket::connect(&name).is_ok());
        assert_eq!(leftovers(&name), (0, 1));
        // SIGKILL: the socket file stays, but nobody listens and nobody holds the lock.
        child.kill().unwrap();
        child.wait().unwrap();
        let paths = set_paths(&name, false).unwrap().unwrap();
        assert!(paths.sock.exists() && paths.lock.exists());
        assert_eq!(Socket::connect(&name).unwrap_err(), ConnectError::NotFound);
        // The name can be created again, and connected to; dropping removes both files.
        let listener = Socket::listen(&name).unwrap();
        assert!(Socket::connect(&name).is_ok());
        drop(listener);
        assert!(!paths.sock.exists() && !paths.lock.exists());
        assert_eq!(leftovers(&name), (0, 0));
    }

    #[test]
    fn stale_files_of_other_names_are_swept() {
        let dir = rendezvous_dir(true).unwrap().unwrap();
        let stale = SetPaths::new(dir, &unique("swept"));
        std::fs::write(&stale.sock, b"").unwrap();
        std::fs::write(&stale.lock, b"").unwrap();
        let name = unique("sweeper");
        let _listener = Socket::listen(&name).unwrap();
        assert!(!stale.sock.exists() && !stale.lock.exists());
    }

    #[test]
    fn a_listener_drop_frees_the_name() {
        let name = unique("drop");
        let listener = Socket::listen(&name).unwrap();
        assert_eq!(
            Socket::listen(&name).unwrap_err(),
            Error::Protocol(ProtocolReason::AlreadyExists)
        );
        drop(listener);
        assert_eq!(Socket::connect(&name).unwrap_err(), ConnectError::NotFound);
        drop(Socket::listen(&name).unwrap());
    }

    #[test]
    fn bad_directories_are_refused() {
        let uid = rustix::process::geteuid().as_raw();
        let base = scratch("dirs");
        let good = base.join("good");
        assert_eq!(
            resolve_dir(good.clone(), uid, true).unwrap(),
            Some(good.clone())
        );
        let mode = std::fs::metadata(&good).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "created owner-only");
        // Someone else's directory (checked as if we were another user).
        assert_eq!(check_dir(&good, uid.wrapping_add(1)), Err(Error::Security));
        // Writable by the group or by others.
        for mode in [0o770, 0o702, 0o777] {
            std::fs::set_permissions(&good, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(
                resolve_dir(good.clone(), uid, true),
                Err(Error::Security),
                "{mode:o}"
            );
        }
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A symbolic link to a good directory, and a file.
        let link = base.join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert_eq!(resolve_dir(link, uid, true), Err(Error::Security));
        let file = base.join("file");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(resolve_dir(file, uid, true), Err(Error::Security));
        // Missing, and not to be created: no set there.
        assert_eq!(resolve_dir(base.join("missing"), uid, false), Ok(None));
        // The directory depends on the user alone, not on the environment.
        #[cfg(not(target_vendor = "apple"))]
        assert_eq!(user_dir(1234), PathBuf::from("/tmp/vdi-shm.1-1234"));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn every_name_up_to_the_limit_fits() {
        let dir = PathBuf::from(format!("/tmp/{DIR_NAME}-{}", u32::MAX));
        let long = "n".repeat(vdi_core::MAX_NAME_LEN);
        let longer = format!("{}m", &long[1..]);
        for name in [long.as_str(), longer.as_str(), "#short", "short"] {
            let p = SetPaths::new(dir.clone(), name);
            assert!(p.sock.as_os_str().len() < SUN_PATH_MAX, "{name}");
            assert!(unix_addr(&p.sock).is_ok());
        }
        // Short names are kept; long ones and those starting with '#' are hashed, distinctly.
        assert_eq!(stem(&dir, "short"), "short");
        assert_eq!(stem(&dir, &long).len(), HASHED_STEM_LEN);
        assert_ne!(stem(&dir, &long), stem(&dir, &longer));
        assert_ne!(stem(&dir, "#short"), "#short");
        // Where the filesystem folds case and normalization (Apple), only names of
        // [a-z0-9._-] are kept; the others are hashed from their exact bytes.
        for name in ["nightly", "db-1.full_2"] {
            assert_eq!(stem_for(&dir, name, true), name);
        }
        let mut seen = std::collections::HashSet::new();
        for name in [
            "Nightly",
            "NIGHTLY",
            "caf\u{e9}",
            "cafe\u{301}",
            "a b",
            "nightly",
        ] {
            let s = stem_for(&dir, name, true);
            assert!(name == "nightly" || s.len() == HASHED_STEM_LEN, "{name}");
            assert!(seen.insert(s), "{name}: two names, one stem");
            // Elsewhere these names are kept as they are.
            assert_eq!(stem_for(&dir, name, false), name);
        }
        // A path no sockaddr holds is the name error.
        let too_long = dir.join("x".repeat(200));
        assert!(matches!(
            unix_addr(&too_long),
            Err(Error::Invalid(InvalidReason::Name(
                vdi_core::NameError::TooLong(_)
            )))
        ));
        // And the longest name works end to end.
        let name = format!("{}{}", unique("long"), "x".repeat(vdi_core::MAX_NAME_LEN));
        let name = &name[name.len() - vdi_core::MAX_NAME_LEN..];
        let listener = Socket::listen(name).unwrap();
        assert!(Socket::connect(name).is_ok());
        drop(listener);
    }

    #[test]
    fn a_wake_wakes_every_waiter_of_the_word() {
        let page = page_size();
        let a = Arc::new(Mapping::create("vdi-shm:posix-test:wake", page, &[0, 64]).unwrap());
        // A second mapping of the same object, as a peer process would have.
        let b = Arc::new(
            Mapping::open(
                a.attachment().unwrap(),
                "vdi-shm:posix-test:wake",
                page,
                &[64, 0],
            )
            .unwrap(),
        );
        const WAIT: Duration = Duration::from_secs(60);
        let waiters: Vec<_> = (0..6)
            .map(|i| {
                let m = Arc::clone(if i % 2 == 0 { &a } else { &b });
                std::thread::spawn(move || {
                    let word: &AtomicU32 = m.get(0);
                    let start = Instant::now();
                    while word.load(Ordering::SeqCst) == 0 {
                        futex_wait(word, 0, WAIT);
                        assert!(start.elapsed() < WAIT, "a waiter slept out its timeout");
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        // A wake of another word wakes nobody for good: they go back to sleep.
        b.get::<AtomicU32>(64).store(1, Ordering::SeqCst);
        futex_wake_all(b.get(64));
        std::thread::sleep(Duration::from_millis(20));
        a.get::<AtomicU32>(0).store(1, Ordering::SeqCst);
        futex_wake_all(b.get(0));
        for w in waiters {
            w.join().unwrap();
        }
    }

    #[test]
    fn a_wait_on_a_changed_word_returns_at_once() {
        let page = page_size();
        let a = Mapping::create("vdi-shm:posix-test:changed", page, &[0]).unwrap();
        let word: &AtomicU32 = a.get(0);
        // A pending wake of long ago is drained, not taken for a new one.
        futex_wake_all(word);
        word.store(5, Ordering::SeqCst);
        futex_wait(word, 4, Duration::from_secs(60));
        // Words that are no wake words wait on this process's own condition variable.
        let local = Arc::new(AtomicU32::new(0));
        let l = Arc::clone(&local);
        let t = std::thread::spawn(move || {
            while l.load(Ordering::SeqCst) == 0 {
                futex_wait(&l, 0, Duration::from_secs(60));
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        local.store(1, Ordering::SeqCst);
        futex_wake_all(&local);
        t.join().unwrap();
    }

    #[test]
    fn a_drain_reads_until_the_socket_is_empty() {
        let (rx, tx) = socket_pair().unwrap();
        // Several reads' worth, in pieces.
        for _ in 0..5 {
            rustix::net::send(&tx, &[1; 40], SendFlags::empty()).unwrap();
        }
        assert!(drain(rx.as_fd()));
        let mut buf = [0u8; 1];
        assert_eq!(
            rustix::net::recv(&rx, &mut buf, RecvFlags::DONTWAIT).unwrap_err(),
            Errno::AGAIN
        );
        // More than the limit lets one drain take: what is left stays for the next.
        rustix::net::send(&tx, &[1; 64 * DRAIN_LIMIT + 1], SendFlags::empty()).unwrap();
        assert!(drain(rx.as_fd()));
        assert!(drain(rx.as_fd()));
        // A closed peer end: the socket stays readable for good.
        drop(tx);
        assert!(!drain(rx.as_fd()));
    }

    #[test]
    fn a_shrunk_or_malformed_object_is_refused() {
        let page = page_size();
        let len = 4 * page;
        let map = Mapping::create("vdi-shm:posix-test:shrunk", len, &[0]).unwrap();
        let att = map.attachment().unwrap();
        // Our own mapping goes first: shrinking under it would be the very SIGBUS we refuse.
        drop(map);
        // Where the system lets the size change at all (not macOS; not FreeBSD's sealed
        // objects), a smaller object is refused.
        if rustix::fs::ftruncate(&att.object, (len - page) as u64).is_ok() {
            assert_eq!(Mapping::open(att, "t", len, &[0]).unwrap_err(), MISBEHAVED);
        }
        // Wrong sizes, counts of wake objects, or a wake object that is no socket.
        let map = Mapping::create("vdi-shm:posix-test:shrunk", len, &[0]).unwrap();
        assert_eq!(
            Mapping::open(map.attachment().unwrap(), "t", 2 * len, &[0]).unwrap_err(),
            MISBEHAVED
        );
        assert_eq!(
            Mapping::open(map.attachment().unwrap(), "t", len, &[]).unwrap_err(),
            MISBEHAVED
        );
        let mut att = map.attachment().unwrap();
        att.wake[0] = map.object.try_clone().unwrap();
        assert_eq!(Mapping::open(att, "t", len, &[0]).unwrap_err(), MISBEHAVED);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn files_and_directories_are_no_shared_memory() {
        let len = 4 * page_size();
        let open = |object: OwnedFd| {
            Mapping::open(
                Attachment {
                    object,
                    wake: Vec::new(),
                },
                "t",
                len,
                &[],
            )
        };
        // A regular file of the right size, on a disk filesystem (next to the test binary),
        // opened read-write: a peer could truncate it under our mapping.
        let dir = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .to_owned();
        let on_tmpfs = rustix::fs::statfs(dir.as_path()).unwrap().f_type as u64 == 0x0102_1994;
        if on_tmpfs {
            eprintln!("{} is on tmpfs: no disk file to refuse", dir.display());
        } else {
            let path = dir.join(unique("regular-file"));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .unwrap();
            std::fs::remove_file(&path).unwrap();
            file.set_len(len as u64).unwrap();
            assert_eq!(open(file.into()).unwrap_err(), MISBEHAVED);
        }
        // A directory.
        let scratch_dir = scratch("dir-object");
        let dir = rustix::fs::open(
            scratch_dir.as_path(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        assert_eq!(open(dir).unwrap_err(), MISBEHAVED);
        std::fs::remove_dir(&scratch_dir).unwrap();
        // A shared memory object opened read-only: it cannot be mapped for writing.
        let map = Mapping::create("vdi-shm:posix-test:read-only", len, &[]).unwrap();
        let proc_path = format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&map.object)
        );
        if let Ok(ro) = rustix::fs::open(proc_path.as_str(), OFlags::RDONLY, Mode::empty()) {
            assert_eq!(open(ro).unwrap_err(), MISBEHAVED);
        }
        // And the real thing passes.
        assert!(open(map.attachment().unwrap().object).is_ok());
    }

    /// A message's length and how many attachments it carried.
    fn counts(r: io::Result<(usize, Vec<Attachment>)>) -> (usize, usize) {
        let (n, atts) = r.unwrap();
        (n, atts.len())
    }

    /// A connected pair through the rendezvous: (listener, connecting end, accepted end).
    fn pair(what: &str) -> (Socket, Socket, Socket) {
        let name = unique(what);
        let listener = Socket::listen(&name).unwrap();
        let client = Socket::connect(&name).unwrap();
        assert!(poll(&[listener.waitable()], Some(Duration::from_secs(5)))[0].readable);
        let server = listener.accept().unwrap();
        (listener, client, server)
    }

    #[test]
    fn a_control_segment_of_64_devices_travels_in_frames() {
        let (_l, client, server) = pair("frames");
        let page = page_size();
        let words: Vec<usize> = (0..129).map(|i| i * 8).collect();
        let map = Mapping::create("vdi-shm:posix-test:frames", 4 * page, &words).unwrap();
        client.send(b"hello", Some(&map)).unwrap();
        client.send(b"again", None).unwrap();
        let mut buf = [0u8; 32];
        let (n, mut atts) = server.recv(&mut buf).unwrap();
        assert_eq!((&buf[..n], atts.len()), (&b"hello"[..], 1));
        let att = atts.remove(0);
        assert_eq!(att.wake.len(), 2 * words.len());
        let peer = Mapping::open(att, "vdi-shm:posix-test:frames", 4 * page, &words).unwrap();
        assert_eq!(counts(server.recv(&mut buf)), (5, 0));
        assert_eq!(&buf[..5], b"again");
        // The wake objects are the creator's: the last word wakes across the two mappings.
        let last = 128 * 8;
        let t = std::thread::spawn(move || {
            let word: &AtomicU32 = peer.get(last);
            while word.load(Ordering::SeqCst) == 0 {
                futex_wait(word, 0, Duration::from_secs(60));
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        map.get::<AtomicU32>(last).store(1, Ordering::SeqCst);
        futex_wake_all(map.get(last));
        t.join().unwrap();
        // The end of the connection.
        drop(client);
        assert_eq!(counts(server.recv(&mut buf)), (0, 0));
    }

    #[test]
    fn garbage_and_half_frames() {
        let (_l, client, server) = pair("garbage");
        server.set_nonblocking().unwrap();
        let mut buf = [0u8; 32];
        // Half a header: nothing yet, and no blocking.
        rustix::net::send(&client.fd, &FRAME_MAGIC.to_le_bytes(), SendFlags::empty()).unwrap();
        assert_eq!(
            server.recv(&mut buf).unwrap_err().kind(),
            ErrorKind::WouldBlock
        );
        // The rest of a frame of 3 bytes.
        rustix::net::send(&client.fd, &[3, 0, 0, 0, 0, 0, 7, 8, 9], SendFlags::empty()).unwrap();
        assert_eq!(counts(server.recv(&mut buf)), (3, 0));
        assert_eq!(&buf[..3], &[7, 8, 9]);
        // A payload longer than any message, or a wrong magic: the stream is unusable.
        rustix::net::send(
            &client.fd,
            &[0x44, 0x56, 200, 0, 0, 0, 0, 0],
            SendFlags::empty(),
        )
        .unwrap();
        assert_eq!(
            server.recv(&mut buf).unwrap_err().kind(),
            ErrorKind::InvalidData
        );
        let (_l, client, server) = pair("garbage");
        rustix::net::send(&client.fd, &[0; 8], SendFlags::empty()).unwrap();
        assert_eq!(
            server.recv(&mut buf).unwrap_err().kind(),
            ErrorKind::InvalidData
        );
        // A message with no payload, which would read as the end of the connection: refused
        // on receipt, and never sent.
        let (_l, client, server) = pair("garbage");
        rustix::net::send(
            &client.fd,
            &[0x44, 0x56, 0, 0, 0, 0, 0, 0],
            SendFlags::empty(),
        )
        .unwrap();
        assert_eq!(
            server.recv(&mut buf).unwrap_err().kind(),
            ErrorKind::InvalidData
        );
        assert!(client.send(b"", None).is_err());
        // Descriptors declared but not sent.
        let (_l, client, server) = pair("garbage");
        rustix::net::send(
            &client.fd,
            &[0x44, 0x56, 1, 0, 1, 0, 0, 0, 9],
            SendFlags::empty(),
        )
        .unwrap();
        assert_eq!(
            server.recv(&mut buf).unwrap_err().kind(),
            ErrorKind::InvalidData
        );
        // A blocking receive waits for the rest of a message that comes a little later...
        let (_l, client, server) = pair("garbage");
        rustix::net::send(
            &client.fd,
            &[0x44, 0x56, 2, 0, 0, 0, 0, 0],
            SendFlags::empty(),
        )
        .unwrap();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            rustix::net::send(&client.fd, &[1, 2], SendFlags::empty()).unwrap();
            client
        });
        assert_eq!(counts(server.recv(&mut buf)), (2, 0));
        assert_eq!(&buf[..2], &[1, 2]);
        drop(late.join().unwrap());
        // ... and gives up on a peer that sends half a message.
        let (_l, client, server) = pair("garbage");
        rustix::net::send(&client.fd, &[0x44], SendFlags::empty()).unwrap();
        assert_eq!(
            server.recv(&mut buf).unwrap_err().kind(),
            ErrorKind::TimedOut
        );
    }

    extern "C" fn ignore_signal(_: libc::c_int) {}

    #[test]
    fn a_blocking_receive_outlasts_signals() {
        // A handler that does nothing, without SA_RESTART: poll fails with EINTR either way.
        // SAFETY: `action` is zeroed (a valid sigaction) and then given an empty mask and a
        // handler that is async-signal-safe (it does nothing); SIGUSR1 is used by nothing else
        // in this test process.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = 0;
            libc::sigemptyset(&raw mut action.sa_mask);
            assert_eq!(
                libc::sigaction(libc::SIGUSR1, &raw const action, ptr::null_mut()),
                0
            );
        }
        let (_l, client, server) = pair("signals");
        let receiver = std::thread::spawn(move || {
            let mut buf = [0u8; 32];
            server.recv(&mut buf).map(|(n, _)| buf[..n].to_vec())
        });
        let target = std::os::unix::thread::JoinHandleExt::as_pthread_t(&receiver);
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(5));
            // SAFETY: `target` is a thread not yet joined (its handle is held until after the
            // last signal), so its pthread_t is valid even if it has ended.
            unsafe { libc::pthread_kill(target, libc::SIGUSR1) };
        }
        client.send(b"after the signals", None).unwrap();
        assert_eq!(receiver.join().unwrap().unwrap(), b"after the signals");
    }

    #[test]
    fn peers_are_this_user() {
        let (_l, client, server) = pair("cred");
        let uid = rustix::process::geteuid().as_raw();
        for s in [&client, &server] {
            let cred = s.peer_cred().unwrap();
            assert_eq!(cred.uid, uid);
            assert!(admitted(&cred, &Options::default()));
        }
        let stranger = PeerCred {
            pid: 0,
            uid: uid.wrapping_add(1),
            gid: u32::MAX - 1,
        };
        assert!(!admitted(&stranger, &Options::default()));
    }
}
