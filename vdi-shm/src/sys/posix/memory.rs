//! Shared memory: POSIX shared memory objects (sealed memfds on FreeBSD), mapped at a
//! multiple of 64 KiB, with a socket pair per wake word, and the checks a peer's object passes.

use super::*;

/// What carries a mapping to a peer: the shared memory object and, for each wake word in
/// order, its socket pair's two ends.
#[derive(Debug)]
pub(crate) struct Attachment {
    pub(super) object: OwnedFd,
    pub(super) wake: Vec<OwnedFd>,
}

/// A shared memory object mapped read-write into this process.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    pub(super) object: OwnedFd,
    wake: Arc<WakeTable<WakePair>>,
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

    /// Maps `len` bytes of `object` at a multiple of [`MAP_ALIGN`](crate::sys::MAP_ALIGN) and
    /// registers the mapping.
    /// `from_peer`: the object is a peer's (checked by [`Mapping::open`]), so a failure to map
    /// it, other than a lack of memory, is `PeerMisbehaved`.
    fn map(
        object: OwnedFd,
        tag: &str,
        len: usize,
        words: Vec<(usize, WakePair)>,
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
        let mapped = unsafe { crate::sys::unix_map::map_aligned(object.as_fd(), len, false) };
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
        let map = Self {
            ptr,
            len,
            object,
            wake: Arc::new(WakeTable::new(words)),
        };
        MAPPINGS.register(ptr.as_ptr() as usize, len, tag, &map.wake);
        Ok(map)
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
    pub(super) fn fds(&self) -> Vec<BorrowedFd<'_>> {
        std::iter::once(self.object.as_fd())
            .chain(
                self.wake
                    .objects()
                    .flat_map(|p| [p.rx.as_fd(), p.tx.as_fd()]),
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
        MAPPINGS.unregister(self.ptr.as_ptr() as usize);
        // SAFETY: ptr/len are exactly what mmap returned, and every reference derived from the
        // mapping borrows `self`, so none outlives this call. Byte views handed out by callers
        // hold an Arc to the mapping.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A new shared memory object of `len` bytes: sealed against shrinking and growing (FreeBSD).
#[cfg(target_os = "freebsd")]
pub(super) fn new_object(tag: &str, len: usize) -> Result<OwnedFd, Error> {
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
pub(super) fn new_object(tag: &str, len: usize) -> Result<OwnedFd, Error> {
    use crate::sys::random_u32;
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
pub(super) fn is_shared_memory(fd: BorrowedFd<'_>, st: &rustix::fs::Stat) -> bool {
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
