//! Portable Unix: POSIX shared memory, a socket pair per wake word, filesystem `AF_UNIX` stream
//! sockets in a private directory, `flock`, and poll.
//!
//! This is the backend on every Unix but Linux (macOS, FreeBSD, ...), and on Linux with the
//! `portable-unix` feature, which exists to test it there. `sys/mod.rs` says what it provides. The
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
//!   `WakePair`'s `wait` (`wake.rs`). Each wake word costs two descriptors per process: a set of 64 devices
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
//!
//! # Where the code is
//!
//! `memory.rs` (shared memory objects and their checks), `wake.rs` (the socket pair of a wake
//! word, over the shared registry of `sys/wake_table.rs`), `rendezvous.rs` (the directory, the
//! names, the locks), `socket.rs` (descriptor helpers, framed connections, the notifier,
//! `poll`), `security.rs` (the directory's ownership checks, peer credentials, admission);
//! this file holds the choices above, the imports and the limits they share.

use std::{
    io::{self, ErrorKind, IoSlice, IoSliceMut},
    mem::MaybeUninit,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    ptr::NonNull,
    sync::{Arc, Condvar, Mutex, PoisonError},
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
use super::{
    ConnectError, Ready,
    wake_table::{Registry, WakeObject, WakeTable},
};
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


mod memory;
mod rendezvous;
mod security;
mod socket;
#[cfg(test)]
mod tests;
mod wake;

pub(crate) use self::{memory::*, rendezvous::*, security::*, socket::*, wake::*};
