//! Windows: pagefile-backed sections, events and named pipes, with the objects passed to peers
//! by handle duplication.
//!
//! This is the only module of the backend that talks to Windows on its behalf; `sys/mod.rs` says
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
//!
//! # Where the code is
//!
//! `memory.rs` (sections and their checks), `wake.rs` (the event of a wake word, over the
//! shared registry of `sys/wake_table.rs`), `pipe.rs` (overlapped operations, the rendezvous
//! pipe and its connections, the notifier, `poll`), `security.rs` (token users, the pipe's
//! DACL, admission); this file holds the choices above, the imports and limits they share,
//! and the error and handle helpers every part uses.

use std::{
    ffi::c_void,
    io::{self, ErrorKind},
    os::windows::io::{AsHandle, AsRawHandle, FromRawHandle, OwnedHandle, RawHandle},
    ptr::{self, NonNull},
    sync::{Arc, Mutex, OnceLock, PoisonError},
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

use super::{
    ConnectError, MAP_ALIGN, Ready,
    wake_table::{Registry, WakeObject, WakeTable},
};
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

mod memory;
mod pipe;
mod security;
mod wake;

pub(crate) use self::{memory::*, pipe::*, security::*, wake::*};
