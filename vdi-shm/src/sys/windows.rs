//! Windows: pagefile-backed sections, events and named pipes, with the objects passed to peers
//! by handle duplication.
//!
//! This is the only module of the backend that talks to Windows on its behalf; `mod.rs` says
//! what it provides. The choices, and why:
//!
//! - **Shared memory** is an *unnamed* pagefile-backed section (`CreateFileMappingW` over
//!   `INVALID_HANDLE_VALUE`, `SEC_COMMIT`), so its commit charge is taken at creation (the
//!   analogue of `fallocate`: running out is an error at creation, never a fault later), and
//!   its size can never change (a pagefile-backed section cannot be extended or truncated, so a
//!   peer cannot pull pages from under a view). Views are placed by the system on the 64 KiB
//!   allocation granularity, which is the alignment the layout needs (checked). Every page is
//!   touched at creation and again when a peer maps it, as `MAP_POPULATE` does on Linux.
//! - **Handles travel by duplication, pulled by the receiver.** A message names the sender's
//!   own handle values; the receiver, which holds a `PROCESS_DUP_HANDLE` handle to the peer
//!   (opened from the pipe's client or server process id), duplicates them into itself with
//!   only the rights it needs (map read/write; synchronize and modify for events). Pulling
//!   means the receiver only ever gains fresh handles of its own and never has to trust a
//!   handle value in its own table; a value that names something else in the sender's table
//!   gives an object that then fails the section checks below. Unnamed objects need no
//!   namespace (so the set works across sessions, where `Local\` names would not and `Global\`
//!   names need `SeCreateGlobalPrivilege`), cannot be squatted, and cannot be opened by name by
//!   anyone: the only way in is duplication from a process, which already takes full control of
//!   it. So sections and events keep the default DACL of the creator's token (its user, SYSTEM,
//!   and for an elevated token the Administrators), which only matters for opening by name. The cost: both processes must be able to open each other with `PROCESS_DUP_HANDLE`,
//!   i.e. run as the same user at the same integrity level (SQL Server's own VDI likewise
//!   needs its client to grant it access to the client's process).
//! - **A section from a peer is checked before use**: mapped at exactly the length the local
//!   layout computes (mapping fails if the section is smaller), then `VirtualQuery` must show
//!   one committed, read-write, mapped (not image) region covering the whole view, and the view
//!   must not be backed by a file (`GetMappedFileNameW` finds no name), since a file's pages
//!   can fail to read in. A reserved-only section would fault on first touch; it is refused.
//! - **Wake-ups** are manual-reset events, one per wake word of the control segment (the set
//!   state and each ring's `wake_seq`), created by the primary and passed with the control
//!   segment like the section. `futex_wake_all` sets the word's event; `futex_wait` resets it,
//!   then re-reads the word and returns if it changed, else waits on the event for at most the
//!   timeout. A wake that lands between a waiter's re-read and its wait leaves the event set,
//!   so the wait returns at once; the one race left is two waiters on one word where the second
//!   resets the event the first was about to wait on, which costs the first one sleep slice
//!   (at most 100 ms), never a hang. The ring's protocol above this (spin, announce, sleep,
//!   wake only when someone sleeps) is unchanged. `WaitOnAddress` is not used across processes:
//!   it wakes only threads of the same process.
//! - **Rendezvous** is a message-mode named pipe `\\.\pipe\vdi-shm.1\<name>` (set names cannot
//!   contain `\`, so a name cannot leave that folder; pipe names are case-insensitive, so two
//!   sets whose names differ only in case collide). The first instance is created with
//!   `FILE_FLAG_FIRST_PIPE_INSTANCE`, so creating a taken name fails (`AlreadyExists`); the
//!   name exists only while the creator holds an instance, so a dead creator leaves nothing
//!   behind; opening a missing name fails at once (`ERROR_FILE_NOT_FOUND`: no such set). A
//!   pipe breaks when the process at its other end dies, however it died: that is how a dead
//!   peer is noticed. The pipe refuses remote clients, and its DACL (the only named object here,
//!   so the only one that needs one) admits the creating user alone
//!   (`D:P(A;;GA;;;<user SID>)`): the default DACL of a named pipe would let everyone read.
//! - **Identity**: both sides open the peer's process (`GetNamedPipeClientProcessId` /
//!   `GetNamedPipeServerProcessId`) and compare the user SID of its token with their own;
//!   `Options::admit_uid`/`admit_gid` (Linux uids and gids) do not apply: on Windows only the
//!   same user is admitted. The client opens the pipe with `SECURITY_IDENTIFICATION`, so a
//!   foreign listener cannot impersonate it.
//! - **The monitor's poll** waits with `WaitForMultipleObjects` on manual-reset events: the
//!   notifier, the listener's pending `ConnectNamedPipe`, and each connection's pending
//!   overlapped read. A connection always has one read outstanding; `recv` collects it and
//!   starts the next. Past 64 waitables the wait covers the first 64 (the notifier and the
//!   listener among them) in slices of 10 ms and checks the rest in between.

use std::{
    collections::hash_map::RandomState,
    ffi::c_void,
    hash::{BuildHasher, Hasher},
    io::{self, ErrorKind},
    os::windows::io::{AsHandle, AsRawHandle, FromRawHandle, OwnedHandle, RawHandle},
    ptr::{self, NonNull},
    sync::{Arc, Mutex, OnceLock, PoisonError, RwLock},
    time::{Duration, Instant},
};

use vdi_core::{AbortReason, Error, InvalidReason, ProtocolReason, SystemError};
use windows_sys::Win32::{
    Foundation::{
        DuplicateHandle, ERROR_ACCESS_DENIED, ERROR_BROKEN_PIPE, ERROR_COMMITMENT_LIMIT,
        ERROR_DISK_FULL, ERROR_FILE_NOT_FOUND, ERROR_INSUFFICIENT_BUFFER, ERROR_IO_INCOMPLETE,
        ERROR_IO_PENDING, ERROR_MORE_DATA, ERROR_NO_DATA, ERROR_NO_SYSTEM_RESOURCES,
        ERROR_NOT_ENOUGH_MEMORY, ERROR_OUTOFMEMORY, ERROR_PIPE_BUSY, ERROR_PIPE_CONNECTED,
        ERROR_PIPE_NOT_CONNECTED, GENERIC_READ, GENERIC_WRITE, HANDLE, INVALID_HANDLE_VALUE,
        LocalFree, WAIT_FAILED, WAIT_OBJECT_0, WAIT_TIMEOUT,
    },
    Security::{
        Authorization::{
            ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
            SDDL_REVISION_1,
        },
        GetTokenInformation, PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES, TOKEN_QUERY, TOKEN_USER,
        TokenUser,
    },
    Storage::FileSystem::{
        CreateFileW, FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_FLAG_OVERLAPPED, OPEN_EXISTING,
        PIPE_ACCESS_DUPLEX, ReadFile, SECURITY_IDENTIFICATION, SECURITY_SQOS_PRESENT, SYNCHRONIZE,
        WriteFile,
    },
    System::{
        IO::{CancelIoEx, GetOverlappedResult, GetOverlappedResultEx, OVERLAPPED},
        Memory::{
            CreateFileMappingW, FILE_MAP_READ, FILE_MAP_WRITE, MEM_COMMIT, MEM_MAPPED,
            MEMORY_BASIC_INFORMATION, MEMORY_MAPPED_VIEW_ADDRESS, MapViewOfFile, PAGE_READWRITE,
            SEC_COMMIT, UnmapViewOfFile, VirtualQuery,
        },
        Pipes::{
            ConnectNamedPipe, CreateNamedPipeW, GetNamedPipeClientProcessId,
            GetNamedPipeServerProcessId, PIPE_READMODE_MESSAGE, PIPE_REJECT_REMOTE_CLIENTS,
            PIPE_TYPE_MESSAGE, PIPE_UNLIMITED_INSTANCES, PIPE_WAIT, SetNamedPipeHandleState,
            WaitNamedPipeW,
        },
        ProcessStatus::K32GetMappedFileNameW,
        SystemInformation::{GetSystemInfo, GlobalMemoryStatusEx, MEMORYSTATUSEX, SYSTEM_INFO},
        Threading::{
            CreateEventW, EVENT_MODIFY_STATE, GetCurrentProcess, INFINITE, OpenProcess,
            OpenProcessToken, PROCESS_DUP_HANDLE, PROCESS_QUERY_LIMITED_INFORMATION, ResetEvent,
            SetEvent, WaitForMultipleObjects, WaitForSingleObject, WaitOnAddress, WakeByAddressAll,
        },
    },
};

use super::{ConnectError, MAP_ALIGN, Ready};
use crate::{
    Options,
    sync::{AtomicU32, Ordering},
};

/// What [`poll`] waits on: a manual-reset event.
pub(crate) use std::os::windows::io::BorrowedHandle as Waitable;

/// The folder of every pipe this library creates: the library's own namespace.
const PIPE_PREFIX: &str = r"\\.\pipe\vdi-shm.1\";
/// The most handles one message carries: a section and an event per wake word (the set state
/// and two rings for each of at most 64 devices), with room to spare.
const MAX_HANDLES: usize = 256;
/// A message on the pipe: an 8-byte header (payload length, handle count), the payload, then
/// the sender's handle values (8 bytes each).
const FRAME_MAX: usize = 8 + 64 + 8 * MAX_HANDLES;
/// How long a connecting side waits for a free pipe instance, and a write for the reader.
const PIPE_LIMIT: Duration = Duration::from_secs(5);
/// How long dropping a pipe waits for its cancelled operations to finish before leaking their
/// buffers (which the system might still write) instead of freeing them.
const CANCEL_LIMIT: Duration = Duration::from_secs(1);
/// `WaitForMultipleObjects` takes at most this many handles.
const MAX_WAIT_OBJECTS: usize = 64;
/// With more waitables than that, how often the ones past the first 64 are checked.
const OVERFLOW_SLICE: Duration = Duration::from_millis(10);

/// A Win32 error `code` from `call` as the crate's error: out-of-memory and commit-limit
/// conditions become `VD_E_MEMORY`, everything else `VD_E_UNEXPECTED` naming the call.
pub(crate) fn os_error(call: &'static str, code: u32) -> Error {
    match code {
        ERROR_NOT_ENOUGH_MEMORY
        | ERROR_OUTOFMEMORY
        | ERROR_COMMITMENT_LIMIT
        | ERROR_NO_SYSTEM_RESOURCES
        | ERROR_DISK_FULL => Error::Memory,
        _ => Error::System(SystemError {
            call,
            code: code as i32,
        }),
    }
}

/// A system error `e` from `call` as the crate's error (see [`os_error`]).
pub(crate) fn io_error(call: &'static str, e: &io::Error) -> Error {
    os_error(call, e.raw_os_error().unwrap_or(0) as u32)
}

/// The calling thread's last Win32 error.
fn last_error() -> u32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0) as u32
}

/// [`os_error`] with the thread's last error.
fn last_os_error(call: &'static str) -> Error {
    os_error(call, last_error())
}

/// A Win32 error code as an `io::Error`.
fn io_err(code: u32) -> io::Error {
    io::Error::from_raw_os_error(code as i32)
}

/// Takes ownership of a handle a create or open call returned (null: the call failed).
///
/// # Safety
///
/// `h` must be null or a handle the calling code has just received from the system and owns
/// (not a pseudo-handle), which nothing else will close.
unsafe fn owned(h: HANDLE, call: &'static str) -> Result<OwnedHandle, Error> {
    if h.is_null() || h == INVALID_HANDLE_VALUE {
        return Err(last_os_error(call));
    }
    // SAFETY: the caller guarantees `h` is a fresh handle owned by nobody else.
    Ok(unsafe { OwnedHandle::from_raw_handle(h) })
}

/// Milliseconds for a Win32 wait: rounded up (so a short wait is not a poll), below INFINITE.
fn millis(d: Duration) -> u32 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u32::try_from(ms).unwrap_or(u32::MAX).min(INFINITE - 1)
}

/// A NUL-terminated UTF-16 string.
fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// A new unnamed, non-inheritable, manual-reset event, not signalled.
fn new_event() -> Result<OwnedHandle, Error> {
    // SAFETY: null security attributes (default DACL, not inheritable) and a null name are
    // allowed; the call only creates an object.
    let h = unsafe { CreateEventW(ptr::null(), 1, 0, ptr::null()) };
    // SAFETY: a handle CreateEventW just returned.
    unsafe { owned(h, "CreateEventW") }
}

/// Signals event `h` (a failure, on a handle that is no event, changes nothing).
fn set_event(h: RawHandle) {
    // SAFETY: SetEvent only changes the state of the object; the caller holds `h` open.
    let _ = unsafe { SetEvent(h) };
}

/// Resets event `h`; false if `h` is no event.
fn reset_event(h: RawHandle) -> bool {
    // SAFETY: ResetEvent only changes the state of the object; the caller holds `h` open.
    unsafe { ResetEvent(h) != 0 }
}

/// Whether object `h` is signalled now (without waiting, and without consuming the signal of
/// a manual-reset event).
fn signalled(h: RawHandle) -> bool {
    // SAFETY: a zero-timeout wait on a handle the caller holds open.
    unsafe { WaitForSingleObject(h, 0) == WAIT_OBJECT_0 }
}

// ---------------------------------------------------------------------------------------------
// Identity and security descriptors

/// The string SID of the user of `process`'s token (`S-1-5-21-...`).
fn process_user(process: RawHandle) -> Result<String, Error> {
    let mut token: HANDLE = ptr::null_mut();
    // SAFETY: `process` is a process handle the caller holds open (or the current-process
    // pseudo-handle); `token` receives a new handle.
    if unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut token) } == 0 {
        return Err(last_os_error("OpenProcessToken"));
    }
    // SAFETY: a handle OpenProcessToken just returned.
    let token = unsafe { owned(token, "OpenProcessToken")? };
    let mut len = 0u32;
    // SAFETY: a size query: no buffer, and `len` receives the size needed.
    let _ = unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            ptr::null_mut(),
            0,
            &mut len,
        )
    };
    if last_error() != ERROR_INSUFFICIENT_BUFFER || len == 0 {
        return Err(last_os_error("GetTokenInformation"));
    }
    // u64 words: the buffer must be aligned for TOKEN_USER, which holds a pointer.
    let mut buf = vec![0u64; (len as usize).div_ceil(8)];
    // SAFETY: `buf` has room for `len` bytes, as the size query asked.
    if unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            buf.as_mut_ptr().cast(),
            len,
            &mut len,
        )
    } == 0
    {
        return Err(last_os_error("GetTokenInformation"));
    }
    // SAFETY: the call filled `buf` with a TOKEN_USER (aligned: u64 storage), whose SID
    // pointer points into `buf`, which lives until the end of this function.
    let sid = unsafe { (*buf.as_ptr().cast::<TOKEN_USER>()).User.Sid };
    let mut text: *mut u16 = ptr::null_mut();
    // SAFETY: `sid` is a valid SID (above); `text` receives a LocalAlloc'd string.
    if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 || text.is_null() {
        return Err(last_os_error("ConvertSidToStringSidW"));
    }
    // SAFETY: `text` is a NUL-terminated UTF-16 string the call allocated; it is read up to
    // the NUL, then freed once.
    let s = unsafe {
        let n = (0..).take_while(|&i| *text.add(i) != 0).count();
        let s = String::from_utf16_lossy(std::slice::from_raw_parts(text, n));
        LocalFree(text.cast());
        s
    };
    Ok(s)
}

/// The user of this process, as a string SID (computed once).
fn current_user() -> Result<&'static str, Error> {
    static USER: OnceLock<Result<String, Error>> = OnceLock::new();
    USER.get_or_init(|| {
        // SAFETY: GetCurrentProcess returns a pseudo-handle; nothing is created.
        process_user(unsafe { GetCurrentProcess() })
    })
    .as_deref()
    .map_err(|e| *e)
}

/// A self-relative security descriptor whose DACL admits only this process's user.
struct OwnerOnly(PSECURITY_DESCRIPTOR);

// SAFETY: the descriptor is allocated once, never written after, and never freed (it lives for
// the process); reading it from several threads is fine.
unsafe impl Send for OwnerOnly {}
// SAFETY: as for Send.
unsafe impl Sync for OwnerOnly {}

/// Security attributes for the pipe: an owner-only DACL, not inheritable.
fn owner_only() -> Result<SECURITY_ATTRIBUTES, Error> {
    static SD: OnceLock<Result<OwnerOnly, Error>> = OnceLock::new();
    let sd = SD
        .get_or_init(|| {
            // Protected (P: no inherited entries), one entry: Generic All for this user.
            let sddl = wide(&format!("D:P(A;;GA;;;{})", current_user()?));
            let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
            // SAFETY: `sddl` is NUL-terminated; `sd` receives a LocalAlloc'd descriptor, kept
            // for the life of the process.
            let ok = unsafe {
                ConvertStringSecurityDescriptorToSecurityDescriptorW(
                    sddl.as_ptr(),
                    SDDL_REVISION_1,
                    &mut sd,
                    ptr::null_mut(),
                )
            };
            if ok == 0 || sd.is_null() {
                return Err(last_os_error(
                    "ConvertStringSecurityDescriptorToSecurityDescriptorW",
                ));
            }
            Ok(OwnerOnly(sd))
        })
        .as_ref()
        .map_err(|e| *e)?;
    Ok(SECURITY_ATTRIBUTES {
        nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: sd.0,
        bInheritHandle: 0,
    })
}

// ---------------------------------------------------------------------------------------------
// Shared memory

/// The events of a mapping's wake words, by byte offset (sorted).
#[derive(Debug)]
struct WakeTable {
    words: Vec<(usize, OwnedHandle)>,
}

impl WakeTable {
    fn event(&self, offset: usize) -> Option<RawHandle> {
        self.words
            .binary_search_by_key(&offset, |(o, _)| *o)
            .ok()
            .map(|i| self.words[i].1.as_raw_handle())
    }
}

/// A live mapping of this process: where it is, its tag, and its wake words' events.
#[derive(Debug)]
struct Registered {
    base: usize,
    len: usize,
    tag: String,
    wake: Arc<WakeTable>,
}

/// Every live mapping of this process, so a wait or wake on a word finds the word's event.
static MAPPINGS: RwLock<Vec<Registered>> = RwLock::new(Vec::new());

/// What carries a mapping to a peer: its section and the events of its wake words (in this
/// process, after duplication from the sender).
#[derive(Debug)]
pub(crate) struct Attachment {
    section: OwnedHandle,
    events: Vec<OwnedHandle>,
}

/// A pagefile-backed section mapped read-write into this process.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    section: OwnedHandle,
    wake: Arc<WakeTable>,
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
        let mut words: Vec<(usize, OwnedHandle)> = wake_words.iter().copied().zip(events).collect();
        words.sort_by_key(|(o, _)| *o);
        let map = Self {
            ptr,
            len,
            section,
            wake: Arc::new(WakeTable { words }),
        };
        // Views start on the allocation granularity (64 KiB on every Windows), which is what
        // the layout needs; checked, since the layout's alignment rests on it.
        if !(ptr.as_ptr() as usize).is_multiple_of(MAP_ALIGN) {
            return Err(Some(Error::System(SystemError {
                call: "MapViewOfFile (alignment)",
                code: 0,
            })));
        }
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

    /// The handles a message carries for this mapping: the section, then the wake words'
    /// events in the order of `wake_words` (sorted).
    fn raw_handles(&self) -> Vec<RawHandle> {
        std::iter::once(self.section.as_raw_handle())
            .chain(self.wake.words.iter().map(|(_, e)| e.as_raw_handle()))
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
                .words
                .iter()
                .map(|(_, e)| e.try_clone())
                .collect::<io::Result<_>>()?,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let base = self.ptr.as_ptr() as usize;
        MAPPINGS
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|r| r.base != base);
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

// ---------------------------------------------------------------------------------------------
// Wake-ups

/// The wake table and event of `word`, if it is a wake word of a live mapping.
fn wake_event(word: &AtomicU32) -> Option<(Arc<WakeTable>, RawHandle)> {
    let addr = ptr::from_ref(word) as usize;
    let all = MAPPINGS.read().unwrap_or_else(PoisonError::into_inner);
    let r = all
        .iter()
        .find(|r| (r.base..r.base + r.len).contains(&addr))?;
    let event = r.wake.event(addr - r.base)?;
    Some((Arc::clone(&r.wake), event))
}

/// Sleeps while `word` holds `expected`, for at most `timeout`; returns early on a change seen
/// before sleeping, on a [`futex_wake_all`] from any process, or spuriously.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let Some((_table, event)) = wake_event(word) else {
        // Not a wake word: only threads of this process can wake it.
        // SAFETY: `word` and `expected` are valid for reads of 4 bytes for the whole call.
        let _ = unsafe {
            WaitOnAddress(
                word.as_ptr().cast(),
                (&raw const expected).cast(),
                4,
                millis(timeout),
            )
        };
        return;
    };
    // Reset, then re-read: a wake that comes after the re-read sets the event again, so the
    // wait below returns at once (`_table` keeps the event open meanwhile).
    reset_event(event);
    if word.load(Ordering::SeqCst) != expected {
        return;
    }
    // SAFETY: a bounded wait on an event the wake table (held above) keeps open.
    let _ = unsafe { WaitForSingleObject(event, millis(timeout)) };
}

/// Wakes every thread, in any process, sleeping on `word`.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    match wake_event(word) {
        Some((_table, event)) => set_event(event),
        // SAFETY: wakes this process's WaitOnAddress waiters on the word's address.
        None => unsafe { WakeByAddressAll(word.as_ptr().cast()) },
    }
}

/// The event pair as the ring's wait strategy.
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
// Overlapped operations

/// An OVERLAPPED and its buffer, on the heap at a fixed address while an operation may write
/// to them.
#[repr(C)]
struct Op {
    ov: OVERLAPPED,
    buf: [u8; FRAME_MAX],
}

/// One overlapped operation slot of a pipe.
///
/// The `Op` is owned through a raw pointer: while an operation is pending the system may write
/// to it at any time, so no Rust reference to it may exist then, and it must not move or be
/// freed until the operation has finished ([`IoSlot::release`]).
struct IoSlot {
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
// The rendezvous pipe

/// The identity of the process at the other end of a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerCred {
    /// Process id.
    pub(crate) pid: i32,
    /// Whether its token's user is this process's user.
    pub(crate) same_user: bool,
}

/// Whether a peer may join: on Windows, only this process's user (see the module docs; the
/// Linux uid and gid options do not apply).
pub(crate) fn admitted(cred: &PeerCred, options: &Options) -> bool {
    let _ = options;
    cred.same_user
}

/// A listening pipe or a connected one.
#[derive(Debug)]
pub(crate) struct Socket(Inner);

#[derive(Debug)]
enum Inner {
    Listener(Listener),
    Conn(Conn),
}

/// The listening side: one pipe instance waiting in `ConnectNamedPipe` at a time.
struct Listener {
    name: Vec<u16>,
    /// Signalled when a client connects to the waiting instance.
    event: OwnedHandle,
    state: Mutex<ListenState>,
}

struct ListenState {
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
struct Conn {
    pipe: OwnedHandle,
    /// Signalled when the outstanding read completes (a message, the end, or an error).
    event: OwnedHandle,
    read: Mutex<ReadState>,
    /// The peer process, to pull its handles from; `None` if it could not be opened.
    peer_process: Option<OwnedHandle>,
    peer: PeerCred,
}

struct ReadState {
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
fn pipe_ended(code: u32) -> bool {
    matches!(
        code,
        ERROR_BROKEN_PIPE | ERROR_PIPE_NOT_CONNECTED | ERROR_NO_DATA
    )
}

fn pipe_path(name: &str) -> Vec<u16> {
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
fn write_error(code: u32) -> Error {
    if pipe_ended(code) {
        Error::Aborted(AbortReason::PeerExited)
    } else {
        os_error("WriteFile", code)
    }
}

/// Splits a frame into its payload and handle values; `None` if it is malformed.
fn parse_frame(frame: &[u8]) -> Option<(&[u8], Vec<u64>)> {
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

/// This process's id.
pub(crate) fn current_pid() -> i32 {
    std::process::id() as i32
}

/// A random 32-bit value (for the per-set handle key): SipHash under std's random keys, which
/// come from the system's generator.
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

/// Test support: what is left of set `name`: this process's mappings of its shared memory, and
/// whether its pipe still exists (1) or not (0).
pub(crate) fn leftovers(name: &str) -> (usize, usize) {
    let prefix = format!("vdi-shm:{name}:");
    let mapped = MAPPINGS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|r| r.tag.starts_with(&prefix))
        .count();
    (mapped, usize::from(pipe_exists(&pipe_path(name))))
}

/// Whether a pipe named `path` (NUL-terminated) exists, listening or busy.
fn pipe_exists(path: &[u16]) -> bool {
    // SAFETY: `path` is NUL-terminated; a 1 ms wait for a free instance, which connects nothing.
    let free = unsafe { WaitNamedPipeW(path.as_ptr(), 1) } != 0;
    free || last_error() != ERROR_FILE_NOT_FOUND
}
