//! The `extern "C"` functions `cpp/sqlvdi.cpp` forwards to: the crate's only `unsafe` code.
//!
//! Each function reads its raw arguments (names up to [`NAME_SCAN_LIMIT`] bytes, configurations
//! unaligned, output pointers checked for NULL), calls [`crate::sdk`], writes the outputs, and
//! returns 0 or the error's `HRESULT`. Every call runs under `catch_unwind`: a panic becomes
//! `VD_E_UNEXPECTED` (or a NULL set from [`vdi_sdk_set_new`]), never an unwind into C++.
//!
//! These functions are for the C++ half of the library only; the version script keeps them out
//! of its exports.

use std::{
    ffi::{c_char, c_int, c_void},
    panic::{AssertUnwindSafe, catch_unwind},
    ptr,
};

use vdi_core::{Call, Error, HResult, VdConfig, VdcCommand};

use crate::sdk::{self, Device, NAME_SCAN_LIMIT, RawName, Set};

/// Runs `f`, turning its result into an `int` and a panic into `VD_E_UNEXPECTED`.
fn guard(f: impl FnOnce() -> Result<(), Error>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => e.hresult().0,
        Err(_) => HResult::VD_E_UNEXPECTED.0,
    }
}

/// Reads a name: the bytes before its NUL, looking at no more than [`NAME_SCAN_LIMIT`] bytes.
///
/// # Safety
///
/// `p` is NULL or points to a NUL-terminated string, or to at least [`NAME_SCAN_LIMIT`]
/// readable bytes; they stay unchanged for `'a`.
unsafe fn name<'a>(p: *const c_char) -> Option<RawName<'a>> {
    if p.is_null() {
        return None;
    }
    let p = p.cast::<u8>();
    let mut len = 0;
    // SAFETY: the caller guarantees the bytes up to the NUL, or NAME_SCAN_LIMIT bytes, are
    // readable; the loop reads no further than either.
    while len < NAME_SCAN_LIMIT && unsafe { *p.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: the `len` bytes just read are readable and unchanged for 'a (the caller's
    // guarantee).
    let bytes = unsafe { std::slice::from_raw_parts(p, len) };
    Some(RawName {
        bytes,
        terminated: len < NAME_SCAN_LIMIT,
    })
}

/// The set behind a `CVDS*`.
///
/// # Safety
///
/// `p` is NULL or a pointer [`vdi_sdk_set_new`] returned and [`vdi_sdk_set_free`] has not freed.
unsafe fn set<'a>(p: *const Set) -> Result<&'a Set, Error> {
    // SAFETY: by the caller's guarantee, a non-NULL `p` points to a live Set; the set is used
    // from many threads only through `&Set`, whose state sits behind mutexes.
    // A NULL set: the constructor could not make one, or the destructor ran; no set is open.
    unsafe { p.as_ref() }.ok_or(Error::Protocol(vdi_core::ProtocolReason::Unspecified))
}

/// Writes `value` through an output pointer the client passed (checked non-NULL before).
///
/// # Safety
///
/// `p` is NULL or valid for a write of a `T` (any alignment).
unsafe fn put<T>(p: *mut T, value: T) {
    if !p.is_null() {
        // SAFETY: the caller guarantees a non-NULL `p` is writable; write_unaligned does not
        // require the client's pointer to be aligned.
        unsafe { p.write_unaligned(value) };
    }
}

/// The constructor: a new set object with no set. NULL only if it could not be made.
#[unsafe(no_mangle)]
pub extern "C" fn vdi_sdk_set_new() -> *mut Set {
    catch_unwind(|| Box::into_raw(Box::new(Set::new()))).unwrap_or(ptr::null_mut())
}

/// The destructor: closes the set if it is open, and frees every device and command.
///
/// # Safety
///
/// `set` is NULL or a pointer [`vdi_sdk_set_new`] returned, not freed before, with no call on
/// it or its devices still running or made later.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_sdk_set_free(set: *mut Set) {
    if set.is_null() {
        return;
    }
    // SAFETY: the caller gives up `set`, which came from Box::into_raw in vdi_sdk_set_new.
    let set = unsafe { Box::from_raw(set) };
    // A panic's payload is forgotten, not dropped: its own drop could panic again.
    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(set))) {
        std::mem::forget(payload);
    }
}

/// `ClientVirtualDeviceSet::Create`.
///
/// # Safety
///
/// `set` NULL or from [`vdi_sdk_set_new`] and not freed; `name` NULL or a NUL-terminated string (or [`NAME_SCAN_LIMIT`] readable bytes); `cfg` NULL or readable for a `VDConfig`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_sdk_create(
    set: *const Set,
    name: *const c_char,
    cfg: *const VdConfig,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let (set, name) = unsafe { (self::set(set)?, self::name(name)) };
        // SAFETY: a non-NULL `cfg` is readable for a VDConfig (the caller's guarantee); read
        // unaligned, so the client's alignment does not matter.
        let cfg = (!cfg.is_null()).then(|| unsafe { cfg.read_unaligned() });
        set.create(None, name, cfg)
    })
}

/// `ClientVirtualDeviceSet::GetConfiguration`.
///
/// # Safety
///
/// `set` NULL or from [`vdi_sdk_set_new`] and not freed; `cfg` NULL or writable for a `VDConfig`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_sdk_get_configuration(
    set: *const Set,
    timeout: i64,
    cfg: *mut VdConfig,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's guarantee, passed on.
        let set = unsafe { self::set(set)? };
        let value = set.configuration(timeout, !cfg.is_null())?;
        // SAFETY: `cfg` is non-NULL here and writable (the caller's guarantee).
        unsafe { put(cfg, value) };
        Ok(())
    })
}

/// `ClientVirtualDeviceSet::OpenDevice`: on success, `*storage` is where the C++ side
/// constructs the device object (which it then stores in `*out`), and `*device` what the object
/// forwards to; on failure `*out` is NULL.
///
/// # Safety
///
/// `set` NULL or from [`vdi_sdk_set_new`] and not freed; `name` NULL or a NUL-terminated string (or [`NAME_SCAN_LIMIT`] readable bytes); `out` NULL or writable for a pointer;
/// `storage` and `device` writable for a pointer (the C++ side's locals).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_sdk_open_device(
    set: *const Set,
    name: *const c_char,
    out: *mut *mut c_void,
    storage: *mut *mut c_void,
    device: *mut *const Device,
) -> c_int {
    // SAFETY: `out` is NULL or writable (the caller's guarantee).
    unsafe { put(out, ptr::null_mut()) };
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let (set, name) = unsafe { (self::set(set)?, self::name(name)) };
        let (place, dev) = set.open_device(name, !out.is_null())?;
        // SAFETY: `storage` and `device` are writable (the caller's guarantee).
        unsafe {
            put(storage, place);
            put(device, dev);
        }
        Ok(())
    })
}

/// `ClientVirtualDeviceSet::Close`.
///
/// # Safety
///
/// `set` NULL or from [`vdi_sdk_set_new`] and not freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_sdk_close(set: *const Set) -> c_int {
    // SAFETY: the caller's guarantee, passed on.
    guard(|| unsafe { self::set(set)? }.close())
}

/// `ClientVirtualDeviceSet::SignalAbort`.
///
/// # Safety
///
/// `set` NULL or from [`vdi_sdk_set_new`] and not freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_sdk_signal_abort(set: *const Set) -> c_int {
    // SAFETY: the caller's guarantee, passed on.
    guard(|| unsafe { self::set(set)? }.signal_abort())
}

/// `ClientVirtualDeviceSet::OpenInSecondary`.
///
/// # Safety
///
/// `set` NULL or from [`vdi_sdk_set_new`] and not freed; `name` NULL or a NUL-terminated string (or [`NAME_SCAN_LIMIT`] readable bytes).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_sdk_open_in_secondary(set: *const Set, name: *const c_char) -> c_int {
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let (set, name) = unsafe { (self::set(set)?, self::name(name)) };
        set.open_in_secondary(None, name)
    })
}

/// `ClientVirtualDeviceSet::GetBufferHandle`. `buffer` is compared with the buffers of the
/// commands handed out, never dereferenced.
///
/// # Safety
///
/// `set` NULL or from [`vdi_sdk_set_new`] and not freed; `handle` NULL or writable for an `unsigned int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_sdk_get_buffer_handle(
    set: *const Set,
    buffer: *const u8,
    handle: *mut u32,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's guarantee, passed on.
        let set = unsafe { self::set(set)? };
        let value = set.buffer_handle(buffer, !handle.is_null())?;
        // SAFETY: `handle` is non-NULL here and writable (the caller's guarantee).
        unsafe { put(handle, value) };
        Ok(())
    })
}

/// `ClientVirtualDeviceSet::MapBufferHandle`.
///
/// # Safety
///
/// `set` NULL or from [`vdi_sdk_set_new`] and not freed; `buffer` NULL or writable for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_sdk_map_buffer_handle(
    set: *const Set,
    handle: c_int,
    buffer: *mut *mut u8,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's guarantee, passed on.
        let set = unsafe { self::set(set)? };
        let value = set.map_buffer_handle(handle, !buffer.is_null())?;
        // SAFETY: `buffer` is non-NULL here and writable (the caller's guarantee).
        unsafe { put(buffer, value) };
        Ok(())
    })
}

/// `ClientVirtualDeviceSet::RegisterDeviceClosed` (see [`Set::register_device_closed`]).
///
/// # Safety
///
/// `set` NULL or from [`vdi_sdk_set_new`] and not freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_sdk_register_device_closed(set: *const Set) {
    let _ = guard(|| {
        // SAFETY: the caller's guarantee, passed on.
        unsafe { self::set(set)? }.register_device_closed();
        Ok(())
    });
}

/// `ClientVirtualDevice::GetCommand`; on failure `*cmd` is NULL.
///
/// # Safety
///
/// `device` NULL or a device [`vdi_sdk_open_device`] returned, whose set is not freed; `cmd`
/// NULL or writable for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_sdk_get_command(
    device: *const Device,
    timeout: i64,
    cmd: *mut *mut VdcCommand,
) -> c_int {
    // SAFETY: `cmd` is NULL or writable (the caller's guarantee).
    unsafe { put(cmd, ptr::null_mut()) };
    guard(|| {
        // SAFETY: a non-NULL `device` is live (the caller's guarantee); its set owns it.
        let device = unsafe { device.as_ref() }.ok_or(sdk::device_not_open(Call::GetCommand))?;
        let value = device.command(timeout, !cmd.is_null())?;
        // SAFETY: `cmd` is non-NULL here and writable (the caller's guarantee).
        unsafe { put(cmd, value) };
        Ok(())
    })
}

/// `ClientVirtualDevice::CompleteCommand`. `cmd` is compared with the commands handed out,
/// never dereferenced.
///
/// # Safety
///
/// `device` as for [`vdi_sdk_get_command`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_sdk_complete_command(
    device: *const Device,
    cmd: *mut VdcCommand,
    code: i32,
    bytes: u64,
    position: i64,
) -> c_int {
    guard(|| {
        // SAFETY: a non-NULL `device` is live (the caller's guarantee); its set owns it.
        let device =
            unsafe { device.as_ref() }.ok_or(sdk::device_not_open(Call::CompleteCommand))?;
        device.complete(cmd, code, bytes, position)
    })
}
