//! The COM in-process server of `sqlvdi.dll` (Windows): `CLSID_MSSQL_ClientVirtualDeviceSet`
//! answering `IClientVirtualDeviceSet2`, its devices answering `IClientVirtualDevice`, over the
//! same safe state as the Linux library ([`crate::sdk`]).
//!
//! # Objects
//!
//! - A [`SetObject`] is what `CoCreateInstance` returns: one object whose vtable is the full
//!   `IClientVirtualDeviceSet2` vtable of `vdi_win::raw` (the declarations the project's COM
//!   client uses), answering `IUnknown`, `IID_IClientVirtualDeviceSet` and
//!   `IID_IClientVirtualDeviceSet2` alike (clients that ask for the first still call
//!   `CreateEx`, slot 11). Its reference count is atomic; the last `Release` frees it.
//! - A [`DeviceObject`] is what `OpenDevice` hands out. It belongs to its set object and shares
//!   its reference count: `AddRef` and `Release` on a device count on the set, so a device
//!   pointer keeps its set alive and stays valid for as long as the client holds a reference,
//!   whether or not the client ever releases it. After `Close` its calls answer as the closed
//!   set says (`VD_E_PROTOCOL`).
//! - The class factory is a static object; `LockServer` and every live set object keep the DLL
//!   loaded (`DllCanUnloadNow`).
//!
//! # Arguments
//!
//! Names are `LPCWSTR`: read up to [`NAME_SCAN_LIMIT`] UTF-16 units, decoded (unpaired
//! surrogates are `VD_E_INVALID`), then checked like the Linux library's. Timeouts are `DWORD`
//! milliseconds, `INFINITE` (0xFFFFFFFF) waiting without limit. Every method runs under
//! `catch_unwind`: a panic is `VD_E_UNEXPECTED`, never an unwind into the client.
//!
//! # Registration
//!
//! [`DllRegisterServer`] writes `HKCR\CLSID\{40700425-0080-11d2-851f-00c04fc21759}` with
//! `InprocServer32` = this DLL's path and `ThreadingModel` = `Both`, so `regsvr32 sqlvdi.dll`
//! installs it. It refuses (with `SELFREG_E_CLASS`, and a line on standard error that says why)
//! when the class is registered to another DLL: on a machine with SQL Server that is
//! Microsoft's `sqlvdi.dll`, which this one must never replace. Setting
//! `VDI_SQLVDI_FORCE_REGISTER=1` overrides the refusal. [`DllUnregisterServer`] removes the
//! class only when it is registered to this DLL.

use std::{
    ffi::c_void,
    panic::{AssertUnwindSafe, catch_unwind},
    ptr,
    rc::Rc,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
};

use vdi_core::{Error, HResult, InvalidReason, VdConfig, VdcCommand};
use vdi_win::raw::{
    CLSID_MSSQL_CLIENT_VIRTUAL_DEVICE_SET, Guid, IClientVirtualDevice, IClientVirtualDevice_Vtbl,
    IClientVirtualDeviceSet, IClientVirtualDeviceSet_Vtbl, IClientVirtualDeviceSet2,
    IClientVirtualDeviceSet2_Vtbl, IID_IUNKNOWN, IUnknown_Vtbl,
};

use crate::sdk::{self, Device, NAME_SCAN_LIMIT, RawName, Set};

mod registry;

/// Set objects alive plus `LockServer(TRUE)` calls not yet undone: the DLL may unload at 0.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// `IID_IClassFactory`: `00000001-0000-0000-c000-000000000046`.
const IID_ICLASS_FACTORY: Guid = Guid::from_u128(0x00000001_0000_0000_c000_000000000046);

/// Runs `f`, turning its result into an `HRESULT` and a panic into `VD_E_UNEXPECTED`.
fn guard(f: impl FnOnce() -> Result<(), Error>) -> HResult {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => HResult::S_OK,
        Ok(Err(e)) => e.hresult(),
        Err(_) => HResult::VD_E_UNEXPECTED,
    }
}

/// A name as the client passed it: NULL, or the units before its NUL (at most
/// [`NAME_SCAN_LIMIT`]), and whether the NUL was found.
struct WideName {
    units: Vec<u16>,
    terminated: bool,
}

impl WideName {
    /// The name in UTF-8, or `VD_E_INVALID` for unpaired surrogates; the length and naming
    /// rules are checked by [`sdk::parse_name`] on what this returns.
    fn decode(name: Option<&Self>) -> Result<Option<(String, bool)>, Error> {
        let Some(w) = name else { return Ok(None) };
        let text =
            String::from_utf16(&w.units).map_err(|_| Error::Invalid(InvalidReason::Unspecified))?;
        Ok(Some((text, w.terminated)))
    }
}

/// Calls `f` with the name as [`sdk`] takes it.
fn with_name<T>(
    name: Option<&WideName>,
    f: impl FnOnce(Option<RawName<'_>>) -> Result<T, Error>,
) -> Result<T, Error> {
    let decoded = WideName::decode(name)?;
    f(decoded.as_ref().map(|(text, terminated)| RawName {
        bytes: text.as_bytes(),
        terminated: *terminated,
    }))
}

/// The instance argument of `CreateEx`/`OpenInSecondaryEx`: NULL is the default instance.
fn with_instance<T>(
    instance: Option<&WideName>,
    f: impl FnOnce(Option<&str>) -> Result<T, Error>,
) -> Result<T, Error> {
    match instance {
        None => f(None),
        Some(w) if !w.terminated => Err(Error::InstanceName),
        Some(w) => {
            let text = String::from_utf16(&w.units).map_err(|_| Error::InstanceName)?;
            f(Some(&text))
        }
    }
}

/// Reads an `LPCWSTR`.
///
/// # Safety
///
/// `p` is NULL or points to a NUL-terminated UTF-16 string, or to at least
/// [`NAME_SCAN_LIMIT`] readable units.
unsafe fn wide(p: *const u16) -> Option<WideName> {
    if p.is_null() {
        return None;
    }
    let mut units = Vec::new();
    while units.len() < NAME_SCAN_LIMIT {
        // SAFETY: the caller guarantees the units up to the NUL, or NAME_SCAN_LIMIT units, are
        // readable; the loop reads no further than either (`read_unaligned`: any alignment).
        let u = unsafe { p.add(units.len()).read_unaligned() };
        if u == 0 {
            return Some(WideName {
                units,
                terminated: true,
            });
        }
        units.push(u);
    }
    Some(WideName {
        units,
        terminated: false,
    })
}

/// Writes `value` through an output pointer the client passed.
///
/// # Safety
///
/// `p` is NULL or valid for a write of a `T` (any alignment).
unsafe fn put<T>(p: *mut T, value: T) {
    if !p.is_null() {
        // SAFETY: a non-NULL `p` is writable (the caller's guarantee); unaligned is allowed.
        unsafe { p.write_unaligned(value) };
    }
}

/// The object `CoCreateInstance` returns.
#[repr(C)]
#[derive(Debug)]
pub struct SetObject {
    /// Offset 0: what the client calls through.
    vtbl: &'static IClientVirtualDeviceSet2_Vtbl,
    refs: AtomicU32,
    set: Set,
    /// Every device handed out; each stays at its address until the set object is freed
    /// (an `Rc` never cloned: moving it into the list does not re-assert unique ownership, as
    /// moving a `Box` would, so the client's pointer stays valid).
    devices: Mutex<Vec<Rc<DeviceObject>>>,
}

/// The object `OpenDevice` returns; it lives as long as its set object.
#[repr(C)]
#[derive(Debug)]
pub struct DeviceObject {
    /// Offset 0: what the client calls through.
    vtbl: &'static IClientVirtualDevice_Vtbl,
    /// The set object, as the pointer `new_raw` made (not derived from a `&SetObject`): the
    /// device's last `Release` may free the set object through it.
    owner: *const SetObject,
    device: *const Device,
}

impl SetObject {
    /// A new set object with one reference, as a COM pointer.
    fn new_raw() -> *mut c_void {
        let object = Box::new(Self {
            vtbl: &SET_VTBL,
            refs: AtomicU32::new(1),
            set: Set::new(),
            devices: Mutex::new(Vec::new()),
        });
        // Counted once it exists: a panic above leaves the count alone.
        LIVE.fetch_add(1, Ordering::SeqCst);
        Box::into_raw(object).cast()
    }

    fn add_ref(&self) -> u32 {
        self.refs.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    /// Drops a reference; frees the object at 0.
    ///
    /// # Safety
    ///
    /// `this` is a live set object and the caller owns the reference it gives up.
    unsafe fn release(this: *const Self) -> u32 {
        // SAFETY: live (the caller's guarantee).
        let left = unsafe { &*this }
            .refs
            .fetch_sub(1, Ordering::AcqRel)
            .wrapping_sub(1);
        if left == 0 {
            // SAFETY: the last reference is gone: nothing else can reach the object, which
            // came from Box::into_raw in `new_raw`. Dropping it closes the set if it is open
            // (sdk::Set's drop) and frees its devices.
            let object = unsafe { Box::from_raw(this.cast_mut()) };
            // A panic's payload is forgotten, not dropped: its own drop could panic again.
            if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(object))) {
                std::mem::forget(payload);
            }
            LIVE.fetch_sub(1, Ordering::SeqCst);
        }
        left
    }

    /// `OpenDevice`: a device object with one reference (counted on the set). `this` is the
    /// pointer the client called through (the one `new_raw` made): the device keeps it, not
    /// `&self`, since its last `Release` frees the set object through it.
    fn open_device(
        &self,
        this: *const Self,
        name: Option<&WideName>,
        out: bool,
    ) -> Result<*mut c_void, Error> {
        let (_, device) = with_name(name, |n| self.set.open_device(n, out))?;
        let object = Rc::new(DeviceObject {
            vtbl: &DEVICE_VTBL,
            owner: this,
            device,
        });
        let raw: *const DeviceObject = Rc::as_ptr(&object);
        self.devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(object);
        self.add_ref();
        Ok(raw.cast_mut().cast())
    }
}

/// Whether `iid` names an interface that `vtbl`'s object answers.
///
/// # Safety
///
/// `iid` is NULL or readable for a GUID.
unsafe fn is_one_of(iid: *const Guid, ids: &[Guid]) -> Option<bool> {
    // SAFETY: the caller's guarantee; read unaligned.
    let iid = (!iid.is_null()).then(|| unsafe { iid.read_unaligned() })?;
    Some(ids.contains(&iid))
}

/// `QueryInterface` of every object here: `this` itself, with one more reference through
/// `add_ref`, for any interface ID of `ids`; `E_NOINTERFACE` for others, `E_POINTER` for a
/// NULL argument. `*ppv` is NULL unless it succeeds.
///
/// # Safety
///
/// COM's contract: `this` NULL or a live object whose AddRef is `add_ref`, `riid` NULL or a
/// readable GUID, `ppv` NULL or writable for a pointer.
unsafe fn query_interface(
    this: *mut c_void,
    riid: *const Guid,
    ppv: *mut *mut c_void,
    ids: &[Guid],
    add_ref: unsafe extern "system" fn(*mut c_void) -> u32,
) -> HResult {
    if ppv.is_null() {
        return HResult::E_POINTER;
    }
    // SAFETY: `ppv` is non-NULL and writable (the caller's contract).
    unsafe { put(ppv, ptr::null_mut()) };
    // SAFETY: `riid` is NULL or a readable GUID (the caller's contract).
    match unsafe { is_one_of(riid, ids) } {
        None => HResult::E_POINTER,
        Some(false) => HResult::E_NOINTERFACE,
        Some(true) if this.is_null() => HResult::E_POINTER,
        Some(true) => {
            // SAFETY: `this` is a live object whose AddRef is `add_ref`; `ppv` is writable.
            unsafe {
                add_ref(this);
                put(ppv, this);
            }
            HResult::S_OK
        }
    }
}

/// The set object behind `this`.
///
/// # Safety
///
/// `this` is NULL or a live [`SetObject`] (COM's contract: the pointer the client calls
/// through is the one it was given).
unsafe fn set_object<'a>(this: *mut c_void) -> Result<&'a SetObject, Error> {
    // SAFETY: the caller's guarantee.
    unsafe { this.cast::<SetObject>().as_ref() }
        .ok_or(Error::Protocol(vdi_core::ProtocolReason::Unspecified))
}

/// The device object behind `this`.
///
/// # Safety
///
/// `this` is NULL or a live [`DeviceObject`].
unsafe fn device_object<'a>(this: *mut c_void) -> Option<&'a DeviceObject> {
    // SAFETY: the caller's guarantee.
    unsafe { this.cast::<DeviceObject>().as_ref() }
}

// --- IClientVirtualDeviceSet2 -------------------------------------------------------------

static SET_VTBL: IClientVirtualDeviceSet2_Vtbl = IClientVirtualDeviceSet2_Vtbl {
    base__: IClientVirtualDeviceSet_Vtbl {
        base__: IUnknown_Vtbl {
            QueryInterface: set_query_interface,
            AddRef: set_add_ref,
            Release: set_release,
        },
        Create: set_create,
        GetConfiguration: set_get_configuration,
        OpenDevice: set_open_device,
        Close: set_close,
        SignalAbort: set_signal_abort,
        OpenInSecondary: set_open_in_secondary,
        GetBufferHandle: set_get_buffer_handle,
        MapBufferHandle: set_map_buffer_handle,
    },
    CreateEx: set_create_ex,
    OpenInSecondaryEx: set_open_in_secondary_ex,
};

unsafe extern "system" fn set_query_interface(
    this: *mut c_void,
    riid: *const Guid,
    ppv: *mut *mut c_void,
) -> HResult {
    let ids = [
        IID_IUNKNOWN,
        IClientVirtualDeviceSet::IID,
        IClientVirtualDeviceSet2::IID,
    ];
    // SAFETY: COM's contract, passed on; `set_add_ref` is this object's AddRef.
    unsafe { query_interface(this, riid, ppv, &ids, set_add_ref) }
}

unsafe extern "system" fn set_add_ref(this: *mut c_void) -> u32 {
    // SAFETY: `this` is a live set object (COM's contract).
    unsafe { set_object(this) }.map_or(0, SetObject::add_ref)
}

unsafe extern "system" fn set_release(this: *mut c_void) -> u32 {
    if this.is_null() {
        return 0;
    }
    // SAFETY: `this` is a live set object and the caller gives up one reference (COM's
    // contract).
    unsafe { SetObject::release(this.cast()) }
}

unsafe extern "system" fn set_create(
    this: *mut c_void,
    name: *const u16,
    cfg: *mut VdConfig,
) -> HResult {
    // SAFETY: `Create` is `CreateEx` with the default instance; the arguments as there.
    unsafe { set_create_ex(this, ptr::null(), name, cfg) }
}

unsafe extern "system" fn set_create_ex(
    this: *mut c_void,
    instance: *const u16,
    name: *const u16,
    cfg: *mut VdConfig,
) -> HResult {
    guard(|| {
        // SAFETY: `this` is a live set object; `instance` and `name` NULL or NUL-terminated
        // strings; `cfg` NULL or readable for a VDConfig (the method's contract).
        let (object, instance, name, cfg) = unsafe {
            (
                set_object(this)?,
                wide(instance),
                wide(name),
                (!cfg.is_null()).then(|| cfg.read_unaligned()),
            )
        };
        with_instance(instance.as_ref(), |instance| {
            with_name(name.as_ref(), |name| object.set.create(instance, name, cfg))
        })
    })
}

unsafe extern "system" fn set_get_configuration(
    this: *mut c_void,
    timeout: u32,
    cfg: *mut VdConfig,
) -> HResult {
    guard(|| {
        // SAFETY: `this` is a live set object (the method's contract).
        let object = unsafe { set_object(this)? };
        let value = object
            .set
            .configuration(i64::from(timeout), !cfg.is_null())?;
        // SAFETY: `cfg` is non-NULL here and writable (the method's contract).
        unsafe { put(cfg, value) };
        Ok(())
    })
}

unsafe extern "system" fn set_open_device(
    this: *mut c_void,
    name: *const u16,
    out: *mut *mut c_void,
) -> HResult {
    // SAFETY: `out` is NULL or writable for a pointer (the method's contract).
    unsafe { put(out, ptr::null_mut()) };
    guard(|| {
        // SAFETY: `this` is a live set object, `name` NULL or a NUL-terminated string.
        let (object, name) = unsafe { (set_object(this)?, wide(name)) };
        let device = object.open_device(this.cast(), name.as_ref(), !out.is_null())?;
        // SAFETY: `out` is non-NULL here (open_device refuses NULL) and writable.
        unsafe { put(out, device) };
        Ok(())
    })
}

unsafe extern "system" fn set_close(this: *mut c_void) -> HResult {
    // SAFETY: `this` is a live set object (the method's contract).
    guard(|| unsafe { set_object(this)? }.set.close())
}

unsafe extern "system" fn set_signal_abort(this: *mut c_void) -> HResult {
    // SAFETY: `this` is a live set object (the method's contract).
    guard(|| unsafe { set_object(this)? }.set.signal_abort())
}

unsafe extern "system" fn set_open_in_secondary(this: *mut c_void, name: *const u16) -> HResult {
    // SAFETY: `OpenInSecondary` is `OpenInSecondaryEx` with the default instance.
    unsafe { set_open_in_secondary_ex(this, ptr::null(), name) }
}

unsafe extern "system" fn set_open_in_secondary_ex(
    this: *mut c_void,
    instance: *const u16,
    name: *const u16,
) -> HResult {
    guard(|| {
        // SAFETY: `this` is a live set object; `instance` and `name` NULL or NUL-terminated.
        let (object, instance, name) = unsafe { (set_object(this)?, wide(instance), wide(name)) };
        with_instance(instance.as_ref(), |instance| {
            with_name(name.as_ref(), |name| {
                object.set.open_in_secondary(instance, name)
            })
        })
    })
}

unsafe extern "system" fn set_get_buffer_handle(
    this: *mut c_void,
    buffer: *mut u8,
    handle: *mut u32,
) -> HResult {
    guard(|| {
        // SAFETY: `this` is a live set object (the method's contract).
        let object = unsafe { set_object(this)? };
        let value = object.set.buffer_handle(buffer, !handle.is_null())?;
        // SAFETY: `handle` is non-NULL here and writable (the method's contract).
        unsafe { put(handle, value) };
        Ok(())
    })
}

unsafe extern "system" fn set_map_buffer_handle(
    this: *mut c_void,
    handle: u32,
    buffer: *mut *mut u8,
) -> HResult {
    guard(|| {
        // SAFETY: `this` is a live set object (the method's contract).
        let object = unsafe { set_object(this)? };
        // A DWORD handle travels as the Linux SDK's `int`, bit for bit.
        let value = object
            .set
            .map_buffer_handle(handle as i32, !buffer.is_null())?;
        // SAFETY: `buffer` is non-NULL here and writable (the method's contract).
        unsafe { put(buffer, value) };
        Ok(())
    })
}

// --- IClientVirtualDevice -----------------------------------------------------------------

static DEVICE_VTBL: IClientVirtualDevice_Vtbl = IClientVirtualDevice_Vtbl {
    base__: IUnknown_Vtbl {
        QueryInterface: device_query_interface,
        AddRef: device_add_ref,
        Release: device_release,
    },
    GetCommand: device_get_command,
    CompleteCommand: device_complete_command,
};

unsafe extern "system" fn device_query_interface(
    this: *mut c_void,
    riid: *const Guid,
    ppv: *mut *mut c_void,
) -> HResult {
    let ids = [IID_IUNKNOWN, IClientVirtualDevice::IID];
    // SAFETY: COM's contract, passed on; `device_add_ref` is this object's AddRef.
    unsafe { query_interface(this, riid, ppv, &ids, device_add_ref) }
}

unsafe extern "system" fn device_add_ref(this: *mut c_void) -> u32 {
    // SAFETY: `this` is a live device object, whose owner lives at least as long (COM's
    // contract; the owner frees its devices only when it goes).
    unsafe { device_object(this).map_or(0, |d| (*d.owner).add_ref()) }
}

unsafe extern "system" fn device_release(this: *mut c_void) -> u32 {
    // SAFETY: `this` is a live device object (COM's contract). The owner pointer is copied
    // out and the borrow of the device ends here: the release below may free the device.
    let Some(owner) = (unsafe { device_object(this) }).map(|d| d.owner) else {
        return 0;
    };
    // SAFETY: the owner outlives its devices; the reference the caller gives up is counted
    // on it, and it frees the device (and itself) at 0.
    unsafe { SetObject::release(owner) }
}

unsafe extern "system" fn device_get_command(
    this: *mut c_void,
    timeout: u32,
    cmd: *mut *mut VdcCommand,
) -> HResult {
    // SAFETY: `cmd` is NULL or writable for a pointer (the method's contract).
    unsafe { put(cmd, ptr::null_mut()) };
    guard(|| {
        // SAFETY: `this` is a live device object, whose device its set object owns.
        let device = unsafe { device_object(this).map(|d| &*d.device) }
            .ok_or(sdk::device_not_open(vdi_core::Call::GetCommand))?;
        let value = device.command(i64::from(timeout), !cmd.is_null())?;
        // SAFETY: `cmd` is non-NULL here and writable.
        unsafe { put(cmd, value) };
        Ok(())
    })
}

unsafe extern "system" fn device_complete_command(
    this: *mut c_void,
    cmd: *mut VdcCommand,
    code: u32,
    bytes: u32,
    position: u64,
) -> HResult {
    guard(|| {
        // SAFETY: `this` is a live device object, whose device its set object owns.
        let device = unsafe { device_object(this).map(|d| &*d.device) }
            .ok_or(sdk::device_not_open(vdi_core::Call::CompleteCommand))?;
        // Win32 codes and positions travel as the Linux SDK's signed values, bit for bit.
        device.complete(cmd, code as i32, u64::from(bytes), position as i64)
    })
}

// --- The class factory and the DLL's exports ----------------------------------------------

#[allow(non_snake_case, reason = "the C names of unknwn.h")]
#[repr(C)]
struct IClassFactory_Vtbl {
    base__: IUnknown_Vtbl,
    CreateInstance: unsafe extern "system" fn(
        this: *mut c_void,
        outer: *mut c_void,
        riid: *const Guid,
        ppv: *mut *mut c_void,
    ) -> HResult,
    LockServer: unsafe extern "system" fn(this: *mut c_void, lock: i32) -> HResult,
}

/// The class factory: one static object, so its reference count is a constant.
#[repr(C)]
struct Factory {
    vtbl: &'static IClassFactory_Vtbl,
}

static FACTORY_VTBL: IClassFactory_Vtbl = IClassFactory_Vtbl {
    base__: IUnknown_Vtbl {
        QueryInterface: factory_query_interface,
        AddRef: factory_add_ref,
        Release: factory_release,
    },
    CreateInstance: factory_create_instance,
    LockServer: factory_lock_server,
};

static FACTORY: Factory = Factory {
    vtbl: &FACTORY_VTBL,
};

unsafe extern "system" fn factory_query_interface(
    this: *mut c_void,
    riid: *const Guid,
    ppv: *mut *mut c_void,
) -> HResult {
    // SAFETY: COM's contract, passed on; `factory_add_ref` is the factory's AddRef.
    unsafe {
        query_interface(
            this,
            riid,
            ppv,
            &[IID_IUNKNOWN, IID_ICLASS_FACTORY],
            factory_add_ref,
        )
    }
}

unsafe extern "system" fn factory_add_ref(_: *mut c_void) -> u32 {
    2
}

unsafe extern "system" fn factory_release(_: *mut c_void) -> u32 {
    1
}

unsafe extern "system" fn factory_create_instance(
    _: *mut c_void,
    outer: *mut c_void,
    riid: *const Guid,
    ppv: *mut *mut c_void,
) -> HResult {
    if ppv.is_null() {
        return HResult::E_POINTER;
    }
    // SAFETY: `ppv` is non-NULL and writable (COM's contract).
    unsafe { put(ppv, ptr::null_mut()) };
    if !outer.is_null() {
        return HResult::CLASS_E_NOAGGREGATION;
    }
    let Ok(object) = catch_unwind(SetObject::new_raw) else {
        return HResult::E_OUTOFMEMORY;
    };
    // SAFETY: `object` is a live set object with one reference, which QueryInterface adds to
    // and this call then gives up; `riid` and `ppv` as COM's contract says.
    unsafe {
        let hr = set_query_interface(object, riid, ppv);
        SetObject::release(object.cast());
        hr
    }
}

unsafe extern "system" fn factory_lock_server(_: *mut c_void, lock: i32) -> HResult {
    if lock != 0 {
        LIVE.fetch_add(1, Ordering::SeqCst);
    } else {
        // An unlock without a lock is the client's error; the count does not wrap.
        let _ = LIVE.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
    HResult::S_OK
}

/// `DllGetClassObject`: the class factory of `CLSID_MSSQL_ClientVirtualDeviceSet`.
///
/// # Safety
///
/// COM's contract: `clsid` and `iid` NULL or readable GUIDs, `ppv` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn DllGetClassObject(
    clsid: *const Guid,
    iid: *const Guid,
    ppv: *mut *mut c_void,
) -> HResult {
    if ppv.is_null() {
        return HResult::E_POINTER;
    }
    // SAFETY: `ppv` is non-NULL and writable; `clsid` NULL or readable (the caller's contract).
    unsafe { put(ppv, ptr::null_mut()) };
    // SAFETY: as above.
    match unsafe { is_one_of(clsid, &[CLSID_MSSQL_CLIENT_VIRTUAL_DEVICE_SET]) } {
        None => HResult::E_POINTER,
        Some(false) => HResult::CLASS_E_CLASSNOTAVAILABLE,
        Some(true) => {
            let factory: *const Factory = &FACTORY;
            // SAFETY: the factory is static; `iid` and `ppv` as the caller's contract says.
            unsafe { factory_query_interface(factory.cast_mut().cast(), iid, ppv) }
        }
    }
}

/// `DllCanUnloadNow`: `S_OK` when no set object is alive and no `LockServer` holds the DLL.
#[unsafe(no_mangle)]
pub extern "system" fn DllCanUnloadNow() -> HResult {
    if LIVE.load(Ordering::SeqCst) == 0 {
        HResult::S_OK
    } else {
        HResult::S_FALSE
    }
}

/// `DllRegisterServer`: registers this DLL as `CLSID_MSSQL_ClientVirtualDeviceSet`, unless the
/// class belongs to another DLL (see the [module docs](self)).
#[unsafe(no_mangle)]
pub extern "system" fn DllRegisterServer() -> HResult {
    let force = std::env::var("VDI_SQLVDI_FORCE_REGISTER").is_ok_and(|v| v == "1");
    registry::outcome(catch_unwind(move || registry::register(force)))
}

/// `DllUnregisterServer`: removes the class if it is registered to this DLL.
#[unsafe(no_mangle)]
pub extern "system" fn DllUnregisterServer() -> HResult {
    registry::outcome(catch_unwind(registry::unregister))
}
