//! The unsafe layer: the shim's C ABI (`cpp/shim.cpp`) and the objects the library hands out
//! (commands become vdi-foreign's `ActiveCommand`s here). Everything above it
//! ([`crate::client`]) is safe code.
//!
//! The library is code loaded into the process, so its objects are trusted to live as long as
//! it says, and a command's buffer address to point at a buffer of the set. Its other answers
//! are checked before use: a NULL result with success is an error, and a command's `size` is
//! bounded by the set's `maxTransferSize` (a Read or Write above it, or with a NULL buffer, is
//! completed with an error and the set aborted: vdi-foreign's `Command::arrive`). What the
//! other process (SQL Server) writes into the buffers is data, never a pointer or a length
//! this layer follows.

use std::{
    ffi::{CStr, c_char, c_int, c_void},
    fmt, fs,
    ptr::{self, NonNull},
};

use vdi_core::{HResult, VdConfig, VdcCommand};
use vdi_foreign::ActiveCommand;

/// What the shim returns when the library threw a C++ exception (COM's `E_UNEXPECTED`, which
/// no VDI library returns: their codes are in facility 0x77).
pub(crate) const THREW: i32 = 0x8000_FFFF_u32 as i32;

/// What this layer returns when the library reported success but left its out-pointer NULL
/// (no set, device, command or buffer): COM's `E_POINTER`, as vdi-win says it.
pub(crate) const NULL_RESULT: i32 = HResult::E_POINTER.0;

/// The shim's table of the library's members (opaque here).
#[repr(C)]
struct ShimLib {
    _opaque: [u8; 0],
}

// SAFETY (for the whole block): these are the functions of cpp/shim.cpp, declared with the
// same parameter types (`VdConfig` and `VdcCommand` are `#[repr(C)]` copies of the SDK's
// structures, checked by size in both languages). Each catches every C++ exception.
unsafe extern "C" {
    fn vdi_linux_load(
        path: *const c_char,
        out: *mut *const ShimLib,
        message: *mut c_char,
        message_len: usize,
    ) -> c_int;
    fn vdi_linux_set_new(lib: *const ShimLib, out: *mut *mut c_void) -> c_int;
    fn vdi_linux_set_delete(lib: *const ShimLib, set: *mut c_void) -> c_int;
    fn vdi_linux_create(
        lib: *const ShimLib,
        set: *mut c_void,
        name: *mut c_char,
        cfg: *mut VdConfig,
        umask_zero: c_int,
    ) -> c_int;
    fn vdi_linux_get_configuration(
        lib: *const ShimLib,
        set: *mut c_void,
        timeout: i64,
        cfg: *mut VdConfig,
    ) -> c_int;
    fn vdi_linux_open_device(
        lib: *const ShimLib,
        set: *mut c_void,
        name: *mut c_char,
        device: *mut *mut c_void,
    ) -> c_int;
    fn vdi_linux_close(lib: *const ShimLib, set: *mut c_void) -> c_int;
    fn vdi_linux_signal_abort(lib: *const ShimLib, set: *mut c_void) -> c_int;
    fn vdi_linux_open_in_secondary(
        lib: *const ShimLib,
        set: *mut c_void,
        name: *mut c_char,
        umask_zero: c_int,
    ) -> c_int;
    fn vdi_linux_get_buffer_handle(
        lib: *const ShimLib,
        set: *mut c_void,
        buffer: *mut u8,
        handle: *mut u32,
    ) -> c_int;
    fn vdi_linux_map_buffer_handle(
        lib: *const ShimLib,
        set: *mut c_void,
        handle: c_int,
        buffer: *mut *mut u8,
    ) -> c_int;
    fn vdi_linux_get_command(
        lib: *const ShimLib,
        device: *mut c_void,
        timeout: i64,
        cmd: *mut *mut VdcCommand,
    ) -> c_int;
    fn vdi_linux_complete_command(
        lib: *const ShimLib,
        device: *mut c_void,
        cmd: *mut VdcCommand,
        code: i32,
        bytes: u64,
        position: i64,
    ) -> c_int;
}

/// Why the shim could not load a library.
#[derive(Debug)]
pub(crate) enum ShimLoadError {
    /// `dlopen` failed, with `dlerror`'s message.
    Dlopen(String),
    /// A member is missing: its declaration and mangled name.
    Missing(String),
}

/// A loaded library with every member resolved. Never unloaded: `dlclose` under live objects
/// and threads is unsound, and a process loads the SDK once.
pub(crate) struct Library {
    lib: NonNull<ShimLib>,
}

// SAFETY: the shim's table is written once, in `vdi_linux_load`, and only read afterwards; the
// library's own objects say nothing of threads here (see `RawSet`).
unsafe impl Send for Library {}
// SAFETY: as for Send.
unsafe impl Sync for Library {}

impl fmt::Debug for Library {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Library").field("lib", &self.lib).finish()
    }
}

impl Library {
    /// `dlopen`s `path` and resolves the SDK's members.
    pub(crate) fn load(path: &CStr) -> Result<Self, ShimLoadError> {
        let mut out = ptr::null();
        let mut message = [0 as c_char; 512];
        // SAFETY: a NUL-terminated path, a writable out pointer, and a writable buffer of the
        // length given; the shim writes a NUL-terminated message into it.
        let rc =
            unsafe { vdi_linux_load(path.as_ptr(), &mut out, message.as_mut_ptr(), message.len()) };
        // SAFETY: the buffer is NUL-terminated: zeroed, and snprintf terminates what it writes.
        let text = unsafe { CStr::from_ptr(message.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        match (rc, NonNull::new(out.cast_mut())) {
            (0, Some(lib)) => Ok(Self { lib }),
            (2, _) => Err(ShimLoadError::Missing(text)),
            _ => Err(ShimLoadError::Dlopen(text)),
        }
    }

    fn ptr(&self) -> *const ShimLib {
        self.lib.as_ptr()
    }
}

/// A `ClientVirtualDeviceSet` object, deleted when this value drops.
///
/// `Send` and `Sync`: the SDK's clients call one set from many threads (Microsoft's samples
/// service each device from a thread of its own); `crate::client` serializes what the SDK does
/// not promise (one `GetCommand` at a time per device).
///
/// The Linux SDK documents no thread model: that a set may be called from several threads at
/// once is the Windows rule (vdi-spec.md section 12), assumed for libsqlvdi.so, and unverified
/// against Microsoft's library; vdi-sdk's own library locks each call.
pub(crate) struct RawSet {
    lib: &'static Library,
    set: NonNull<c_void>,
}

// SAFETY: the set object is heap memory of the library, not tied to the thread that made it;
// that its members may be called from several threads at once is the assumption the type's
// documentation states (the Windows rule; unverified for Microsoft's libsqlvdi.so).
unsafe impl Send for RawSet {}
// SAFETY: as for Send.
unsafe impl Sync for RawSet {}

impl fmt::Debug for RawSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawSet").field("set", &self.set).finish()
    }
}

impl RawSet {
    /// `new ClientVirtualDeviceSet`.
    pub(crate) fn new(lib: &'static Library) -> Result<Self, i32> {
        let mut out = ptr::null_mut();
        // SAFETY: a loaded library and a writable out pointer.
        let rc = unsafe { vdi_linux_set_new(lib.ptr(), &mut out) };
        match NonNull::new(out) {
            Some(set) if rc == 0 => Ok(Self { lib, set }),
            _ => Err(if rc == 0 { NULL_RESULT } else { rc }),
        }
    }

    /// `Create(name, cfg)`, with umask 0 for the call when `umask_zero`.
    pub(crate) fn create(&self, name: &CStr, cfg: &mut VdConfig, umask_zero: bool) -> i32 {
        // SAFETY: a live set; the SDK takes `char*` but only reads the NUL-terminated name; the
        // configuration is writable for the call.
        unsafe {
            vdi_linux_create(
                self.lib.ptr(),
                self.set.as_ptr(),
                name.as_ptr().cast_mut(),
                cfg,
                c_int::from(umask_zero),
            )
        }
    }

    /// `OpenInSecondary(name)`, with umask 0 for the call when `umask_zero`.
    pub(crate) fn open_in_secondary(&self, name: &CStr, umask_zero: bool) -> i32 {
        // SAFETY: as in `create`.
        unsafe {
            vdi_linux_open_in_secondary(
                self.lib.ptr(),
                self.set.as_ptr(),
                name.as_ptr().cast_mut(),
                c_int::from(umask_zero),
            )
        }
    }

    /// `GetConfiguration(timeout, cfg)`; `timeout` in ms, negative: no limit.
    pub(crate) fn get_configuration(&self, timeout: i64, cfg: &mut VdConfig) -> i32 {
        // SAFETY: a live set and a writable configuration.
        unsafe { vdi_linux_get_configuration(self.lib.ptr(), self.set.as_ptr(), timeout, cfg) }
    }

    /// `OpenDevice(name)`: the device object, which the set owns (it lives until the set is
    /// deleted; the caller keeps the set alive while it uses the device).
    pub(crate) fn open_device(&self, name: &CStr) -> Result<RawDevice, i32> {
        let mut out = ptr::null_mut();
        // SAFETY: a live set, a NUL-terminated name only read, a writable out pointer.
        let rc = unsafe {
            vdi_linux_open_device(
                self.lib.ptr(),
                self.set.as_ptr(),
                name.as_ptr().cast_mut(),
                &mut out,
            )
        };
        match NonNull::new(out) {
            Some(device) if rc == 0 => Ok(RawDevice {
                lib: self.lib,
                device,
            }),
            _ => Err(if rc == 0 { NULL_RESULT } else { rc }),
        }
    }

    /// `Close()`.
    pub(crate) fn close(&self) -> i32 {
        // SAFETY: a live set.
        unsafe { vdi_linux_close(self.lib.ptr(), self.set.as_ptr()) }
    }

    /// `SignalAbort()`.
    pub(crate) fn signal_abort(&self) -> i32 {
        // SAFETY: a live set.
        unsafe { vdi_linux_signal_abort(self.lib.ptr(), self.set.as_ptr()) }
    }

    /// `GetBufferHandle(buffer)`: the handle of a command's buffer.
    pub(crate) fn get_buffer_handle(&self, command: &ActiveCommand) -> Result<u32, i32> {
        let mut h = 0;
        // SAFETY: a live set and a writable handle; the library only compares the buffer
        // address with those of its buffers.
        let rc = unsafe {
            vdi_linux_get_buffer_handle(self.lib.ptr(), self.set.as_ptr(), command.buffer(), &mut h)
        };
        if rc == 0 { Ok(h) } else { Err(rc) }
    }

    /// `MapBufferHandle(handle)`: the buffer's address in this process.
    pub(crate) fn map_buffer_handle(&self, handle: u32) -> Result<NonNull<u8>, i32> {
        let mut out = ptr::null_mut();
        // SAFETY: a live set and a writable out pointer. The handle is a plain integer the
        // library looks up (the SDK's `int`; the bits pass through unchanged).
        let rc = unsafe {
            vdi_linux_map_buffer_handle(
                self.lib.ptr(),
                self.set.as_ptr(),
                handle as c_int,
                &mut out,
            )
        };
        match NonNull::new(out) {
            Some(p) if rc == 0 => Ok(p),
            _ => Err(if rc == 0 { NULL_RESULT } else { rc }),
        }
    }
}

impl Drop for RawSet {
    fn drop(&mut self) {
        // SAFETY: the set came from `vdi_linux_set_new` and is deleted once, here; every device,
        // command and mapped buffer of it keeps this value alive (crate::client), so none
        // outlives it, and a Close deferred while they lived was made just before (the
        // `SetShared` drop).
        let _ = unsafe { vdi_linux_set_delete(self.lib.ptr(), self.set.as_ptr()) };
    }
}

/// A `ClientVirtualDevice` object of a set; valid while its `RawSet` lives.
pub(crate) struct RawDevice {
    lib: &'static Library,
    device: NonNull<c_void>,
}

// SAFETY: the device object is plain memory of the library, not tied to a thread.
// `crate::client` serializes its `GetCommand` calls, but a `CompleteCommand` may run on another
// thread during one: that the library allows this is assumed (async clients need it; vdi-sdk's
// library locks), not documented by Microsoft (see `RawSet`). The library's `Close`, which
// frees the device, waits for both (vdi-foreign's `SetState::begin_call`).
unsafe impl Send for RawDevice {}
// SAFETY: as for Send.
unsafe impl Sync for RawDevice {}

impl fmt::Debug for RawDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawDevice")
            .field("device", &self.device)
            .finish()
    }
}

impl RawDevice {
    /// `GetCommand(timeout)`; `timeout` in ms, negative: no limit. The set must still live
    /// (the caller holds it). `prefix_zone` and `max_size` are the set's `prefixZoneSize` and
    /// `maxTransferSize`: a Read or Write above `max_size`, or with a NULL buffer, comes back
    /// [malformed](ActiveCommand::is_malformed), with no data zone.
    pub(crate) fn get_command(
        &self,
        timeout: i64,
        prefix_zone: u32,
        max_size: u32,
    ) -> Result<ActiveCommand, i32> {
        let mut out = ptr::null_mut();
        // SAFETY: a live device (its set is alive, the caller's contract) and a writable out
        // pointer.
        let rc = unsafe {
            vdi_linux_get_command(self.lib.ptr(), self.device.as_ptr(), timeout, &mut out)
        };
        if rc != 0 {
            return Err(rc);
        }
        let cmd = NonNull::new(out).ok_or(NULL_RESULT)?;
        // SAFETY: `from_raw`'s contract: the library returned this command from a successful
        // GetCommand; it stays valid, with its buffer (and the prefix zone the set was
        // configured with below it), until it is completed; the caller keeps the set alive.
        // The library vouches for the buffer's address only: `from_raw` itself rejects a
        // NULL one and a `size` above the set's `maxTransferSize`.
        Ok(unsafe { ActiveCommand::from_raw(cmd, prefix_zone, max_size) })
    }

    /// `CompleteCommand`: ends `command` (one this device returned), handing its buffer back.
    pub(crate) fn complete_command(
        &self,
        command: ActiveCommand,
        code: u32,
        bytes: u32,
        position: u64,
    ) -> i32 {
        // SAFETY: a live device; the command pointer came from this device's `GetCommand` and is
        // passed back once (`ActiveCommand` is consumed). The SDK's `int` and `int64_t` take
        // the bits of the completion code and position unchanged.
        unsafe {
            vdi_linux_complete_command(
                self.lib.ptr(),
                self.device.as_ptr(),
                command.as_ptr(),
                code as i32,
                u64::from(bytes),
                position as i64,
            )
        }
    }
}

/// Whether `start..start + len` lies in mappings of this process that are readable and
/// writable (`/proc/self/maps`; adjacent mappings may cover it together).
///
/// A snapshot, with two limits. It is true when read: a thread that unmaps or protects the
/// range afterwards (the library's `Close` is kept from it by vdi-foreign's `SetState`; other
/// code of the process is not) invalidates it. And it shows the bytes are accessible, not that
/// they are the set's buffer: any read-write mapping, the heap included (`rw-p`), passes, so
/// that the address is one of the set's buffers is still the library's word.
pub(crate) fn read_write(start: usize, len: usize) -> bool {
    let Some(end) = start.checked_add(len) else {
        return false;
    };
    if len == 0 {
        return true;
    }
    let Ok(maps) = fs::read_to_string("/proc/self/maps") else {
        return false;
    };
    let mut ranges: Vec<(usize, usize)> = maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            if !perms.starts_with("rw") {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect();
    ranges.sort_unstable();
    let mut covered = start;
    for (a, b) in ranges {
        if a > covered {
            // A gap: the ranges are sorted, so nothing later fills it.
            return false;
        }
        if b > covered {
            covered = b;
        }
        if covered >= end {
            return true;
        }
    }
    false
}
