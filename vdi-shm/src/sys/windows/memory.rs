//! Shared memory: unnamed pagefile-backed sections, mapped on the 64 KiB allocation
//! granularity, with an event per wake word, and the checks a peer's section passes.

use super::*;

/// What carries a mapping to a peer: its section and the events of its wake words (in this
/// process, after duplication from the sender).
#[derive(Debug)]
pub(crate) struct Attachment {
    pub(super) section: OwnedHandle,
    pub(super) events: Vec<OwnedHandle>,
}

/// A pagefile-backed section mapped read-write into this process.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    section: OwnedHandle,
    wake: Arc<WakeTable<Event>>,
}

// SAFETY: the mapping is plain shared memory; all access through `get`/`slice` is to ShmSafe
// (atomic) types, and raw byte access is handed out only under the protocol's ownership rules by
// the callers of `base`. The handles may be used from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as for Send.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Creates a zero-filled section of `len` bytes (a multiple of the page size), with its
    /// commit charge taken now, maps it, touches every page, and makes an event for each of
    /// `wake_words`.
    pub(crate) fn create(tag: &str, len: usize, wake_words: &[usize]) -> Result<Self, Error> {
        if len == 0 || !len.is_multiple_of(page_size()) {
            return Err(Error::Invalid(InvalidReason::BufferSize));
        }
        let size = len as u64;
        // SAFETY: a new unnamed section backed by the paging file; no existing object is
        // touched. Null security attributes: see the module docs (unnamed, not inheritable).
        let h = unsafe {
            CreateFileMappingW(
                INVALID_HANDLE_VALUE,
                ptr::null(),
                PAGE_READWRITE | SEC_COMMIT,
                (size >> 32) as u32,
                size as u32,
                ptr::null(),
            )
        };
        // SAFETY: a handle CreateFileMappingW just returned.
        let section = unsafe { owned(h, "CreateFileMappingW")? };
        let events = wake_words
            .iter()
            .map(|_| new_event())
            .collect::<Result<Vec<_>, _>>()?;
        let map = Self::map(section, tag, len, wake_words, events)
            .map_err(|e| e.unwrap_or(Error::Memory))?;
        map.touch_pages(true);
        Ok(map)
    }

    /// Maps a section a peer sent, after checking that it covers `expected_len` bytes, all
    /// committed, read-write and not backed by a file, and that its events are events.
    pub(crate) fn open(
        attachment: Attachment,
        tag: &str,
        expected_len: usize,
        wake_words: &[usize],
    ) -> Result<Self, Error> {
        let misbehaved = Error::Protocol(ProtocolReason::PeerMisbehaved);
        if expected_len == 0
            || !expected_len.is_multiple_of(page_size())
            || attachment.events.len() != wake_words.len()
        {
            return Err(misbehaved);
        }
        // A handle of another type makes ResetEvent fail. (Resetting is harmless: a waiter
        // resets before it re-reads its word anyway.)
        if !attachment
            .events
            .iter()
            .all(|e| reset_event(e.as_raw_handle()))
        {
            return Err(misbehaved);
        }
        let map = Self::map(
            attachment.section,
            tag,
            expected_len,
            wake_words,
            attachment.events,
        )
        .map_err(|e| e.unwrap_or(misbehaved))?;
        if !map.view_is_plain_memory() {
            return Err(misbehaved);
        }
        map.touch_pages(false);
        Ok(map)
    }

    /// Maps `len` bytes of `section` and registers the mapping. `Err(None)`: the section cannot
    /// be mapped so (too small, or no section).
    fn map(
        section: OwnedHandle,
        tag: &str,
        len: usize,
        wake_words: &[usize],
        events: Vec<OwnedHandle>,
    ) -> Result<Self, Option<Error>> {
        // SAFETY: maps a view of a section handle we own; the system picks the address, so
        // nothing existing is replaced. A handle of another type, or a section smaller than
        // `len`, makes the call fail.
        let view = unsafe {
            MapViewOfFile(
                section.as_raw_handle(),
                FILE_MAP_READ | FILE_MAP_WRITE,
                0,
                0,
                len,
            )
        };
        let Some(ptr) = NonNull::new(view.Value.cast::<u8>()) else {
            let code = last_error();
            return Err(match code {
                ERROR_NOT_ENOUGH_MEMORY | ERROR_OUTOFMEMORY | ERROR_COMMITMENT_LIMIT => {
                    Some(os_error("MapViewOfFile", code))
                }
                _ => None,
            });
        };
        let words = wake_words.iter().copied().zip(events.into_iter().map(Event));
        let map = Self {
            ptr,
            len,
            section,
            wake: Arc::new(WakeTable::new(words.collect())),
        };
        // Views start on the allocation granularity (64 KiB on every Windows), which is what
        // the layout needs; checked, since the layout's alignment rests on it.
        if !(ptr.as_ptr() as usize).is_multiple_of(MAP_ALIGN) {
            return Err(Some(Error::System(SystemError {
                call: "MapViewOfFile (alignment)",
                code: 0,
            })));
        }
        MAPPINGS.register(ptr.as_ptr() as usize, len, tag, &map.wake);
        Ok(map)
    }

    /// Whether the whole view is one committed, read-write region of a mapped (not image)
    /// section that no file backs.
    fn view_is_plain_memory(&self) -> bool {
        // SAFETY: MEMORY_BASIC_INFORMATION is plain data; all-zero is a valid value.
        let mut info: MEMORY_BASIC_INFORMATION = unsafe { std::mem::zeroed() };
        // SAFETY: queries our own view; `info` is large enough (its size is passed).
        let n = unsafe {
            VirtualQuery(
                self.ptr.as_ptr().cast(),
                &mut info,
                size_of::<MEMORY_BASIC_INFORMATION>(),
            )
        };
        if n == 0
            || info.BaseAddress != self.ptr.as_ptr().cast::<c_void>()
            || info.State != MEM_COMMIT
            || info.Type != MEM_MAPPED
            || info.Protect != PAGE_READWRITE
            || info.RegionSize < self.len
        {
            return false;
        }
        let mut name = [0u16; 64];
        // SAFETY: asks for the name of the file behind our own view into `name`, whose length
        // is passed; a view of a pagefile-backed section has none (the call returns 0).
        let n = unsafe {
            K32GetMappedFileNameW(
                GetCurrentProcess(),
                self.ptr.as_ptr().cast(),
                name.as_mut_ptr(),
                name.len() as u32,
            )
        };
        n == 0
    }

    /// The length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The first byte of the mapping.
    pub(crate) fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The handles a message carries for this mapping: the section, then the wake words'
    /// events in the order of `wake_words` (sorted).
    pub(super) fn raw_handles(&self) -> Vec<RawHandle> {
        std::iter::once(self.section.as_raw_handle())
            .chain(self.wake.objects().map(|e| e.0.as_raw_handle()))
            .collect()
    }

    /// A copy of what [`Socket::send`] carries for this mapping, to open it again in this
    /// process as a peer would.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn attachment(&self) -> io::Result<Attachment> {
        Ok(Attachment {
            section: self.section.try_clone()?,
            events: self
                .wake
                .objects()
                .map(|e| e.0.try_clone())
                .collect::<io::Result<_>>()?,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        MAPPINGS.unregister(self.ptr.as_ptr() as usize);
        // SAFETY: `ptr` is exactly what MapViewOfFile returned, and every reference derived from
        // the mapping borrows `self`, so none outlives this call. Byte views handed out by
        // callers hold an Arc to the mapping.
        let _ = unsafe {
            UnmapViewOfFile(MEMORY_MAPPED_VIEW_ADDRESS {
                Value: self.ptr.as_ptr().cast(),
            })
        };
    }
}

/// The most bytes of shared buffers this process lets one device set have: three quarters of
/// the machine's physical memory (as on Linux; the system's commit limit still applies, and
/// exceeding it fails the creation with `VD_E_MEMORY`).
///
/// Read once per process: Wine's `GlobalMemoryStatusEx` can hand a concurrent first caller its
/// all-zero cache, and a 0 here would refuse every buffer; a reading of 0 is retried, and if
/// the system never tells, only its commit limit applies.
pub(crate) fn buffer_memory_limit() -> u64 {
    static LIMIT: OnceLock<u64> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        for _ in 0..10 {
            // SAFETY: MEMORYSTATUSEX is plain data; all-zero is a valid value.
            let mut status: MEMORYSTATUSEX = unsafe { std::mem::zeroed() };
            status.dwLength = size_of::<MEMORYSTATUSEX>() as u32;
            // SAFETY: `status` is a MEMORYSTATUSEX with its length set, as the call requires.
            if unsafe { GlobalMemoryStatusEx(&mut status) } != 0 && status.ullTotalPhys > 0 {
                return status.ullTotalPhys / 4 * 3;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        u64::MAX
    })
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: SYSTEM_INFO is plain data; all-zero is a valid value.
        let mut info: SYSTEM_INFO = unsafe { std::mem::zeroed() };
        // SAFETY: the call fills `info`.
        unsafe { GetSystemInfo(&mut info) };
        (info.dwPageSize as usize).max(4096)
    })
}
