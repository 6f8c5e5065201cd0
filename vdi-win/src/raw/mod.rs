//! The COM layer: `vdi.h`'s client interfaces, one to one, and every `unsafe` of this crate.
//!
//! Each interface is a `#[repr(transparent)]` owner of one reference to a COM object
//! ([`IClientVirtualDeviceSet2`], its base [`IClientVirtualDeviceSet`], and
//! [`IClientVirtualDevice`]): `Clone` is `AddRef`, `Drop` is `Release`. Its `#[repr(C)]` vtable
//! lists the methods in the slot order of `vdi.h` (vdi-spec.md §2.2) after the three of
//! `IUnknown`, each an `unsafe extern "system" fn` with the C names. The structures are
//! `vdi-core`'s [`VdConfig`] and [`VdcCommand`], whose layout is asserted here again.
//!
//! The methods keep the raw `HRESULT` ([`HResult`]): `VD_E_TIMEOUT` and `VD_E_CLOSE` are control
//! flow, and the mapping to errors lives in one place above this layer. They are safe to call
//! because constructing an interface ([`IClientVirtualDevice::from_raw`] and the like) is
//! `unsafe` and promises an object that keeps the contracts of Microsoft's VDI reference; what the
//! methods take is typed so that no other promise is needed (NUL-terminated wide strings, `&mut`
//! out-structures, commands only as [`ActiveCommand`]s a device returned).
//!
//! These wrappers are neither `Send` nor `Sync`: a COM pointer belongs to its apartment.
//! [`FreeThreaded`] is the one, `unsafe`, way to share one between threads; it is what the safe
//! layer uses for sqlvdi's objects, which live in the multithreaded apartment.
//!
//! ```compile_fail
//! fn send<T: Send>() {}
//! send::<vdi_win::raw::IClientVirtualDeviceSet2>();
//! ```
//!
//! ```compile_fail
//! fn sync<T: Sync>() {}
//! sync::<vdi_win::raw::IClientVirtualDevice>();
//! ```
//!
//! The declarations build on every platform (they need no COM runtime), so layout tests and
//! tests with a fake COM object run on Linux too; only activation and apartments need Windows.

use core::{ffi::c_void, fmt, marker::PhantomData, mem, ops::Deref, ptr, ptr::NonNull};

use vdi_core::guids;
pub use vdi_core::{HResult, VdConfig, VdcCommand};
/// The commands and mapped buffers the interfaces hand out: vdi-foreign's, shared with
/// vdi-linux.
pub use vdi_foreign::{ActiveCommand, MappedView};

#[cfg_attr(windows, path = "runtime_windows.rs")]
#[cfg_attr(not(windows), path = "runtime_stub.rs")]
pub(crate) mod runtime;

// The structures the vtables take, as `vdi.h` lays them out (`#pragma pack(8)`).
const _: () = {
    assert!(size_of::<VdConfig>() == 44);
    assert!(align_of::<VdConfig>() == 4);
    assert!(mem::offset_of!(VdConfig, device_count) == 0);
    assert!(mem::offset_of!(VdConfig, features) == 4);
    assert!(mem::offset_of!(VdConfig, server_time_out) == 24);
    assert!(mem::offset_of!(VdConfig, buffer_area_size) == 40);
};
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(size_of::<VdcCommand>() == 24);
    assert!(mem::offset_of!(VdcCommand, command_code) == 0);
    assert!(mem::offset_of!(VdcCommand, size) == 4);
    assert!(mem::offset_of!(VdcCommand, position) == 8);
    assert!(mem::offset_of!(VdcCommand, buffer) == 16);
};
// `HRESULT` crosses the ABI as a plain `i32`.
const _: () = assert!(size_of::<HResult>() == 4 && align_of::<HResult>() == 4);

/// `E_POINTER`: a method reported success but returned a null pointer.
pub const E_POINTER: HResult = HResult(0x8000_4003_u32 as i32);
/// `RPC_E_CHANGED_MODE`: `CoInitializeEx` found the thread in a single-threaded apartment.
pub const RPC_E_CHANGED_MODE: HResult = HResult(0x8001_0106_u32 as i32);
/// `HRESULT_FROM_WIN32(ERROR_NOT_SUPPORTED)`: what activation answers off Windows.
pub const E_NOT_SUPPORTED: HResult = HResult(0x8007_0032_u32 as i32);

/// A COM `GUID` in its binary layout.
///
/// ```
/// use vdi_win::raw::{Guid, IClientVirtualDeviceSet2};
/// assert_eq!(
///     IClientVirtualDeviceSet2::IID.to_string(),
///     "d0e6eb07-7a62-11d2-8573-00c04fc21759"
/// );
/// assert_eq!(Guid::from_u128(0x1234).to_u128(), 0x1234);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Guid {
    /// The first 32 bits.
    pub data1: u32,
    /// The next 16 bits.
    pub data2: u16,
    /// The next 16 bits.
    pub data3: u16,
    /// The last 64 bits, in text order.
    pub data4: [u8; 8],
}

impl Guid {
    /// The GUID written `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` as the `u128` `0xxxxxxxxx_...`.
    pub const fn from_u128(v: u128) -> Self {
        Self {
            data1: (v >> 96) as u32,
            data2: (v >> 80) as u16,
            data3: (v >> 64) as u16,
            data4: (v as u64).to_be_bytes(),
        }
    }

    /// The inverse of [`Guid::from_u128`].
    pub const fn to_u128(self) -> u128 {
        ((self.data1 as u128) << 96)
            | ((self.data2 as u128) << 80)
            | ((self.data3 as u128) << 64)
            | u64::from_be_bytes(self.data4) as u128
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.to_u128();
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            v >> 96,
            (v >> 80) & 0xFFFF,
            (v >> 64) & 0xFFFF,
            (v >> 48) & 0xFFFF,
            v & 0xFFFF_FFFF_FFFF
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{self}}}")
    }
}

/// `IID_IUnknown`: `00000000-0000-0000-c000-000000000046`.
pub const IID_IUNKNOWN: Guid = Guid::from_u128(0x00000000_0000_0000_c000_000000000046);
/// `CLSID_MSSQL_ClientVirtualDeviceSet`, the class sqlvdi.dll registers (the same GUID as
/// `IID_IClientVirtualDeviceSet`).
pub const CLSID_MSSQL_CLIENT_VIRTUAL_DEVICE_SET: Guid =
    Guid::from_u128(guids::CLSID_MSSQL_CLIENT_VIRTUAL_DEVICE_SET);

/// A NUL-terminated UTF-16 string, as `LPCWSTR` parameters take it.
///
/// ```
/// use vdi_win::raw::WideCString;
/// let w = WideCString::new("Set-1").unwrap();
/// assert_eq!(w.as_slice_with_nul(), &[83, 101, 116, 45, 49, 0]);
/// assert!(WideCString::new("a\0b").is_none());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct WideCString(Vec<u16>);

impl WideCString {
    /// `s` in UTF-16 with a NUL appended; `None` if `s` holds a NUL itself.
    pub fn new(s: &str) -> Option<Self> {
        if s.contains('\0') {
            return None;
        }
        Some(Self(s.encode_utf16().chain([0]).collect()))
    }

    /// The code units, the terminating NUL included.
    pub fn as_slice_with_nul(&self) -> &[u16] {
        &self.0
    }

    /// The `LPCWSTR`: valid, and NUL-terminated, while `self` lives.
    pub fn as_ptr(&self) -> *const u16 {
        self.0.as_ptr()
    }
}

impl fmt::Debug for WideCString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = String::from_utf16_lossy(&self.0[..self.0.len() - 1]);
        write!(f, "L{text:?}")
    }
}

/// The vtable of `IUnknown`: slots 0 to 2 of every interface.
#[allow(non_snake_case, reason = "the C names of vdi.h and unknwn.h")]
#[allow(non_camel_case_types, reason = "the windows-rs naming of vtables")]
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct IUnknown_Vtbl {
    /// Slot 0: `QueryInterface(REFIID riid, void** ppvObject)`.
    pub QueryInterface: unsafe extern "system" fn(
        this: *mut c_void,
        riid: *const Guid,
        ppv: *mut *mut c_void,
    ) -> HResult,
    /// Slot 1: `AddRef()`.
    pub AddRef: unsafe extern "system" fn(this: *mut c_void) -> u32,
    /// Slot 2: `Release()`.
    pub Release: unsafe extern "system" fn(this: *mut c_void) -> u32,
}

/// The vtable of `IClientVirtualDevice` (vdi-spec.md §2.2).
#[allow(non_snake_case, reason = "the C names of vdi.h")]
#[allow(non_camel_case_types, reason = "the windows-rs naming of vtables")]
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct IClientVirtualDevice_Vtbl {
    /// Slots 0 to 2.
    pub base__: IUnknown_Vtbl,
    /// Slot 3: `GetCommand(DWORD dwTimeOut, VDC_Command** ppCmd)`.
    pub GetCommand: unsafe extern "system" fn(
        this: *mut c_void,
        dwTimeOut: u32,
        ppCmd: *mut *mut VdcCommand,
    ) -> HResult,
    /// Slot 4: `CompleteCommand(VDC_Command* pCmd, DWORD dwCompletionCode, DWORD
    /// dwBytesTransferred, DWORDLONG dwlPosition)`.
    pub CompleteCommand: unsafe extern "system" fn(
        this: *mut c_void,
        pCmd: *mut VdcCommand,
        dwCompletionCode: u32,
        dwBytesTransferred: u32,
        dwlPosition: u64,
    ) -> HResult,
}

/// The vtable of `IClientVirtualDeviceSet` (vdi-spec.md §2.2).
#[allow(non_snake_case, reason = "the C names of vdi.h")]
#[allow(non_camel_case_types, reason = "the windows-rs naming of vtables")]
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct IClientVirtualDeviceSet_Vtbl {
    /// Slots 0 to 2.
    pub base__: IUnknown_Vtbl,
    /// Slot 3: `Create(LPCWSTR lpName, VDConfig* pCfg)` (deprecated).
    pub Create: unsafe extern "system" fn(
        this: *mut c_void,
        lpName: *const u16,
        pCfg: *mut VdConfig,
    ) -> HResult,
    /// Slot 4: `GetConfiguration(DWORD dwTimeOut, VDConfig* pCfg)`.
    pub GetConfiguration: unsafe extern "system" fn(
        this: *mut c_void,
        dwTimeOut: u32,
        pCfg: *mut VdConfig,
    ) -> HResult,
    /// Slot 5: `OpenDevice(LPCWSTR lpName, IClientVirtualDevice** ppVirtualDevice)`.
    pub OpenDevice: unsafe extern "system" fn(
        this: *mut c_void,
        lpName: *const u16,
        ppVirtualDevice: *mut *mut c_void,
    ) -> HResult,
    /// Slot 6: `Close()`.
    pub Close: unsafe extern "system" fn(this: *mut c_void) -> HResult,
    /// Slot 7: `SignalAbort()`.
    pub SignalAbort: unsafe extern "system" fn(this: *mut c_void) -> HResult,
    /// Slot 8: `OpenInSecondary(LPCWSTR lpSetName)` (deprecated).
    pub OpenInSecondary:
        unsafe extern "system" fn(this: *mut c_void, lpSetName: *const u16) -> HResult,
    /// Slot 9: `GetBufferHandle(BYTE* pBuffer, DWORD* pBufferHandle)`.
    pub GetBufferHandle: unsafe extern "system" fn(
        this: *mut c_void,
        pBuffer: *mut u8,
        pBufferHandle: *mut u32,
    ) -> HResult,
    /// Slot 10: `MapBufferHandle(DWORD dwBuffer, BYTE** ppBuffer)`.
    pub MapBufferHandle: unsafe extern "system" fn(
        this: *mut c_void,
        dwBuffer: u32,
        ppBuffer: *mut *mut u8,
    ) -> HResult,
}

/// The vtable of `IClientVirtualDeviceSet2`, which extends `IClientVirtualDeviceSet`
/// (vdi-spec.md §2.2).
#[allow(non_snake_case, reason = "the C names of vdi.h")]
#[allow(non_camel_case_types, reason = "the windows-rs naming of vtables")]
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct IClientVirtualDeviceSet2_Vtbl {
    /// Slots 0 to 10.
    pub base__: IClientVirtualDeviceSet_Vtbl,
    /// Slot 11: `CreateEx(LPCWSTR lpInstanceName, LPCWSTR lpName, VDConfig* pCfg)`.
    pub CreateEx: unsafe extern "system" fn(
        this: *mut c_void,
        lpInstanceName: *const u16,
        lpName: *const u16,
        pCfg: *mut VdConfig,
    ) -> HResult,
    /// Slot 12: `OpenInSecondaryEx(LPCWSTR lpInstanceName, LPCWSTR lpSetName)`.
    pub OpenInSecondaryEx: unsafe extern "system" fn(
        this: *mut c_void,
        lpInstanceName: *const u16,
        lpSetName: *const u16,
    ) -> HResult,
}

/// A COM interface wrapper of this module.
///
/// # Safety
///
/// The type is `#[repr(transparent)]` over a non-null pointer to a COM object whose vtable
/// starts with `Self::Vtable`, which starts with [`IUnknown_Vtbl`]; `IID` is its interface ID.
pub unsafe trait Interface: Sized {
    /// The vtable.
    type Vtable;
    /// The interface ID.
    const IID: Guid;

    /// The interface pointer, for a call; the reference stays with `self`.
    fn as_raw(&self) -> *mut c_void;
}

macro_rules! interface {
    ($(#[$meta:meta])* $name:ident, $vtbl:ty, $iid:expr, $iid_name:literal) => {
        $(#[$meta])*
        #[repr(transparent)]
        pub struct $name {
            ptr: NonNull<c_void>,
            /// A COM pointer belongs to its apartment: neither `Send` nor `Sync`.
            _not_send: PhantomData<*mut ()>,
        }

        impl $name {
            #[doc = concat!("`", $iid_name, "`.")]
            pub const IID: Guid = $iid;

            /// Takes over one reference to a COM object; `Drop` releases it.
            ///
            /// # Safety
            ///
            /// - `ptr` points to a live COM object implementing this interface as `vdi.h`
            ///   declares it (its vtable starts like [`Self::IID`]'s vtable here), and the
            ///   caller owns one reference to it, which passes to the result.
            /// - The object keeps the contracts of Microsoft's VDI reference: the pointers its
            ///   methods return (a `VDC_Command` and its buffer with the configured prefix zone
            ///   below it, a device, a mapped buffer) stay valid for as long as that reference
            ///   says, and it reads the strings and structures passed to it only during the call.
            pub unsafe fn from_raw(ptr: NonNull<c_void>) -> Self {
                Self { ptr, _not_send: PhantomData }
            }

            /// Gives up the reference without releasing it.
            pub fn into_raw(self) -> NonNull<c_void> {
                let ptr = self.ptr;
                mem::forget(self);
                ptr
            }

            /// The vtable.
            fn vtable(&self) -> &$vtbl {
                // SAFETY: a COM object starts with a pointer to its vtable, which is of this
                // interface's layout and outlives the object (`from_raw`'s contract, upheld by
                // its caller); the object is alive while `self` holds its reference.
                unsafe { &**(self.ptr.as_ptr() as *const *const $vtbl) }
            }

            /// Asks the object for another of its interfaces (`QueryInterface`).
            ///
            /// # Errors
            ///
            /// The object's `HRESULT`, typically `E_NOINTERFACE`.
            pub fn cast<T: Interface>(&self) -> Result<T, HResult> {
                query_interface(self.as_raw(), unknown(self))
            }
        }

        // SAFETY: `$name` is `#[repr(transparent)]` over the object pointer, its vtable type is
        // `$vtbl` (which starts with `IUnknown_Vtbl`), and `IID` is its interface ID.
        unsafe impl Interface for $name {
            type Vtable = $vtbl;
            const IID: Guid = $iid;

            fn as_raw(&self) -> *mut c_void {
                self.ptr.as_ptr()
            }
        }

        impl Clone for $name {
            /// `AddRef`.
            fn clone(&self) -> Self {
                // SAFETY: the object is alive (we hold a reference) and its vtable starts with
                // `IUnknown_Vtbl` (`from_raw`'s contract).
                unsafe { (unknown(self).AddRef)(self.as_raw()) };
                Self { ptr: self.ptr, _not_send: PhantomData }
            }
        }

        impl Drop for $name {
            /// `Release`.
            fn drop(&mut self) {
                // SAFETY: `self` owns one reference (`from_raw`'s contract, or `clone`'s
                // `AddRef`), released exactly once here; the pointer is not used afterwards.
                unsafe { (unknown(self).Release)(self.as_raw()) };
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:p})"), self.ptr)
            }
        }
    };
}

/// The `IUnknown` part of an interface's vtable.
fn unknown<T: Interface>(iface: &T) -> &IUnknown_Vtbl {
    // SAFETY: `Interface`'s contract: the object starts with a pointer to a vtable that starts
    // with `IUnknown_Vtbl`, alive while `iface` holds its reference.
    unsafe { &**(iface.as_raw() as *const *const IUnknown_Vtbl) }
}

/// `QueryInterface` for `T` on `this`.
fn query_interface<T: Interface>(this: *mut c_void, vtbl: &IUnknown_Vtbl) -> Result<T, HResult> {
    let mut out = ptr::null_mut();
    // SAFETY: `this` is a live object with this vtable (the caller's `Interface`), and the IID
    // and the out pointer are valid for the call.
    let hr = unsafe { (vtbl.QueryInterface)(this, &T::IID, &mut out) };
    if !hr.is_ok() {
        return Err(hr);
    }
    let ptr = NonNull::new(out).ok_or(E_POINTER)?;
    // SAFETY: a successful `QueryInterface` returns an owned reference to an interface of `T`'s
    // IID on the same object, which keeps the contracts the caller's `from_raw` promised.
    Ok(unsafe { transmute_interface::<T>(ptr) })
}

/// Builds a `T` from an owned interface pointer.
///
/// # Safety
///
/// `ptr` is an owned reference to an interface of `T`'s IID.
unsafe fn transmute_interface<T: Interface>(ptr: NonNull<c_void>) -> T {
    const { assert!(size_of::<T>() == size_of::<NonNull<c_void>>()) };
    // SAFETY: `T` is `#[repr(transparent)]` over `NonNull<c_void>` (`Interface`'s contract, and
    // the size check above), and the caller hands over the reference.
    unsafe { mem::transmute_copy::<NonNull<c_void>, T>(&ptr) }
}

/// Calls a vtable slot: `call!(self, Slot(args..))`.
macro_rules! call {
    ($iface:expr, $slot:ident($($arg:expr),* $(,)?)) => {
        ($iface.vtable().$slot)($iface.as_raw() $(, $arg)*)
    };
}

interface!(
    /// `IClientVirtualDevice`: one device of a set, as the client sees it.
    IClientVirtualDevice,
    IClientVirtualDevice_Vtbl,
    Guid::from_u128(guids::IID_ICLIENT_VIRTUAL_DEVICE),
    "IID_IClientVirtualDevice"
);

interface!(
    /// `IClientVirtualDeviceSet`: the device set, as the client sees it (the SQL Server 7.0
    /// interface; [`IClientVirtualDeviceSet2`] extends it).
    IClientVirtualDeviceSet,
    IClientVirtualDeviceSet_Vtbl,
    Guid::from_u128(guids::IID_ICLIENT_VIRTUAL_DEVICE_SET),
    "IID_IClientVirtualDeviceSet"
);

interface!(
    /// `IClientVirtualDeviceSet2`: the device set with named instances (`CreateEx`,
    /// `OpenInSecondaryEx`); it derefs to its base [`IClientVirtualDeviceSet`] for the other
    /// methods.
    IClientVirtualDeviceSet2,
    IClientVirtualDeviceSet2_Vtbl,
    Guid::from_u128(guids::IID_ICLIENT_VIRTUAL_DEVICE_SET2),
    "IID_IClientVirtualDeviceSet2"
);

impl IClientVirtualDevice {
    /// `GetCommand`: waits up to `timeout_ms` (`0xFFFF_FFFF` forever) for the next command.
    ///
    /// `prefix_zone` is the set's `prefixZoneSize`, so that the command can offer its prefix
    /// zone; `max_size` its `maxTransferSize`: a Read or Write above it, or with a NULL
    /// buffer, comes back [malformed](ActiveCommand::is_malformed), with no data zone.
    ///
    /// # Errors
    ///
    /// The `HRESULT`: `VD_E_CLOSE` (the normal end), `VD_E_TIMEOUT`, `VD_E_ABORT`, ...; `E_POINTER`
    /// for a success with no command.
    pub fn get_command(
        &self,
        timeout_ms: u32,
        prefix_zone: u32,
        max_size: u32,
    ) -> Result<ActiveCommand, HResult> {
        let mut out = ptr::null_mut();
        // SAFETY: a live object of this interface (`from_raw`); the out pointer is valid for the
        // call.
        let hr = unsafe { call!(self, GetCommand(timeout_ms, &mut out)) };
        if !hr.is_ok() {
            return Err(hr);
        }
        let cmd = NonNull::new(out).ok_or(E_POINTER)?;
        // SAFETY: `ActiveCommand::from_raw`'s contract: on success the object returned a
        // command that stays valid, with its buffer (and the prefix zone the set was configured
        // with below it), until it is completed (`from_raw`'s contract of this interface).
        // `from_raw` itself rejects a NULL buffer and a size above `max_size`.
        Ok(unsafe { ActiveCommand::from_raw(cmd, prefix_zone, max_size) })
    }

    /// `CompleteCommand`: ends `command`, handing its buffer back.
    ///
    /// `command` should be one this device returned; an object answers `VD_E_INVALID` for any
    /// other.
    pub fn complete_command(
        &self,
        command: ActiveCommand,
        completion_code: u32,
        bytes_transferred: u32,
        position: u64,
    ) -> HResult {
        // SAFETY: a live object of this interface (`from_raw`); the command pointer came from a
        // `GetCommand` of such an object and is passed back as it was, once (`ActiveCommand` is
        // consumed).
        unsafe {
            call!(
                self,
                CompleteCommand(
                    command.as_ptr(),
                    completion_code,
                    bytes_transferred,
                    position
                )
            )
        }
    }
}

impl IClientVirtualDeviceSet {
    /// `Create` (deprecated: the default instance only; [`IClientVirtualDeviceSet2::create_ex`]
    /// supersedes it).
    pub fn create(&self, name: &WideCString, config: &mut VdConfig) -> HResult {
        // SAFETY: a live object (`from_raw`); the string is NUL-terminated and the structure
        // writable, both for the call.
        unsafe { call!(self, Create(name.as_ptr(), config)) }
    }

    /// `GetConfiguration`: waits up to `timeout_ms` for the server's configuration, written to
    /// `config`.
    pub fn get_configuration(&self, timeout_ms: u32, config: &mut VdConfig) -> HResult {
        // SAFETY: a live object (`from_raw`); the structure is writable for the call.
        unsafe { call!(self, GetConfiguration(timeout_ms, config)) }
    }

    /// `OpenDevice`.
    ///
    /// # Errors
    ///
    /// The `HRESULT`; `E_POINTER` for a success with no device.
    pub fn open_device(&self, name: &WideCString) -> Result<IClientVirtualDevice, HResult> {
        let mut out = ptr::null_mut();
        // SAFETY: a live object (`from_raw`); the string is NUL-terminated and the out pointer
        // valid, both for the call.
        let hr = unsafe { call!(self, OpenDevice(name.as_ptr(), &mut out)) };
        if !hr.is_ok() {
            return Err(hr);
        }
        let ptr = NonNull::new(out).ok_or(E_POINTER)?;
        // SAFETY: a successful `OpenDevice` returns an owned reference to an
        // `IClientVirtualDevice` of the same implementation, which keeps the same contracts.
        Ok(unsafe { IClientVirtualDevice::from_raw(ptr) })
    }

    /// `Close`.
    pub fn close(&self) -> HResult {
        // SAFETY: a live object (`from_raw`); no arguments.
        unsafe { call!(self, Close()) }
    }

    /// `SignalAbort`.
    pub fn signal_abort(&self) -> HResult {
        // SAFETY: a live object (`from_raw`); no arguments.
        unsafe { call!(self, SignalAbort()) }
    }

    /// `OpenInSecondary` (deprecated: the default instance only;
    /// [`IClientVirtualDeviceSet2::open_in_secondary_ex`] supersedes it).
    pub fn open_in_secondary(&self, name: &WideCString) -> HResult {
        // SAFETY: a live object (`from_raw`); the string is NUL-terminated for the call.
        unsafe { call!(self, OpenInSecondary(name.as_ptr())) }
    }

    /// `GetBufferHandle`: a process-independent handle of `command`'s buffer.
    ///
    /// # Errors
    ///
    /// The `HRESULT` (`VD_E_INVALID` for a buffer not of this set).
    pub fn get_buffer_handle(&self, command: &ActiveCommand) -> Result<u32, HResult> {
        let mut handle = 0;
        // SAFETY: a live object (`from_raw`); the buffer pointer is one the implementation
        // itself returned with a command, and the out pointer is valid for the call.
        let hr = unsafe { call!(self, GetBufferHandle(command.buffer(), &mut handle)) };
        if hr.is_ok() { Ok(handle) } else { Err(hr) }
    }

    /// `MapBufferHandle`: this process's address of the buffer `handle` names.
    ///
    /// The object says nothing of the buffer's length; see [`MappedView::new`].
    ///
    /// # Errors
    ///
    /// The `HRESULT` (`VD_E_INVALID` for an unknown handle); `E_POINTER` for a success with a
    /// null address.
    pub fn map_buffer_handle(&self, handle: u32) -> Result<NonNull<u8>, HResult> {
        let mut out = ptr::null_mut();
        // SAFETY: a live object (`from_raw`); the out pointer is valid for the call.
        let hr = unsafe { call!(self, MapBufferHandle(handle, &mut out)) };
        if !hr.is_ok() {
            return Err(hr);
        }
        NonNull::new(out).ok_or(E_POINTER)
    }
}

impl IClientVirtualDeviceSet2 {
    /// `CreateEx`: creates the set `name` for `instance` (`None`: the default instance).
    pub fn create_ex(
        &self,
        instance: Option<&WideCString>,
        name: &WideCString,
        config: &mut VdConfig,
    ) -> HResult {
        let instance = instance.map_or(ptr::null(), WideCString::as_ptr);
        // SAFETY: a live object (`from_raw`); the strings are NUL-terminated (or the instance
        // null, which means the default instance) and the structure writable, for the call.
        unsafe { call!(self, CreateEx(instance, name.as_ptr(), config)) }
    }

    /// `OpenInSecondaryEx`: joins the set `name` of `instance` from a secondary process.
    pub fn open_in_secondary_ex(
        &self,
        instance: Option<&WideCString>,
        name: &WideCString,
    ) -> HResult {
        let instance = instance.map_or(ptr::null(), WideCString::as_ptr);
        // SAFETY: a live object (`from_raw`); the strings are NUL-terminated (or the instance
        // null), for the call.
        unsafe { call!(self, OpenInSecondaryEx(instance, name.as_ptr())) }
    }
}

impl Deref for IClientVirtualDeviceSet2 {
    type Target = IClientVirtualDeviceSet;

    fn deref(&self) -> &IClientVirtualDeviceSet {
        // SAFETY: both types are `#[repr(transparent)]` over the same fields, and an
        // `IClientVirtualDeviceSet2` pointer is an `IClientVirtualDeviceSet` pointer: its vtable
        // starts with `IClientVirtualDeviceSet_Vtbl` (`base__`, at offset 0 of a `#[repr(C)]`
        // struct), as COM's single inheritance lays it out. The reference borrows `self`, so no
        // extra reference is released.
        unsafe { &*(self as *const Self as *const IClientVirtualDeviceSet) }
    }
}

/// An interface shared between threads: `Send` and `Sync` over a `!Send` COM pointer.
///
/// COM lets a pointer to an object in the multithreaded apartment (MTA) be used from every
/// thread of that apartment, at once, with no marshalling, when the object is free-threaded.
/// sqlvdi.dll's client objects are (vdi-spec.md §12: the set interface may be used from any
/// thread; Microsoft's samples call one device set from several threads). The safe layer makes
/// every call from a thread that has entered the MTA first.
pub struct FreeThreaded<T>(T);

// SAFETY: `FreeThreaded::new`'s contract: the object may be called from any thread, at once,
// and released from any thread.
unsafe impl<T: Interface> Send for FreeThreaded<T> {}
// SAFETY: as for `Send`: concurrent calls through `&T` are what a free-threaded object allows.
unsafe impl<T: Interface> Sync for FreeThreaded<T> {}

impl<T: Interface> FreeThreaded<T> {
    /// Wraps an interface of a free-threaded object.
    ///
    /// # Safety
    ///
    /// The object lives in the multithreaded apartment (or no apartment at all) and is
    /// free-threaded: its methods may be called from any thread, concurrently, and its last
    /// reference released from any thread; so are the interfaces obtained from it (a set's
    /// devices). Callers must still call it only from threads that are not in a
    /// single-threaded apartment.
    pub unsafe fn new(iface: T) -> Self {
        Self(iface)
    }

    /// The interface, for a call from this thread.
    pub fn get(&self) -> &T {
        &self.0
    }
}

impl<T: fmt::Debug> fmt::Debug for FreeThreaded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FreeThreaded").field(&self.0).finish()
    }
}

impl FreeThreaded<IClientVirtualDeviceSet2> {
    /// `OpenDevice`, for a device shared between threads like its set.
    ///
    /// # Errors
    ///
    /// As [`IClientVirtualDeviceSet::open_device`].
    pub fn open_device(
        &self,
        name: &WideCString,
    ) -> Result<FreeThreaded<IClientVirtualDevice>, HResult> {
        let device = self.0.open_device(name)?;
        // SAFETY: `new`'s contract covers every interface obtained from the object: its devices
        // come from the same free-threaded implementation.
        Ok(unsafe { FreeThreaded::new(device) })
    }

    /// `MapBufferHandle`, as a view of `len` bytes.
    ///
    /// # Errors
    ///
    /// As [`IClientVirtualDeviceSet::map_buffer_handle`].
    ///
    /// # Safety
    ///
    /// As [`MappedView::new`]: the buffer `handle` names holds at least `len` bytes (the size of
    /// the command that carries it), and nothing else in this process uses them while the view
    /// lives.
    pub unsafe fn map_buffer(&self, handle: u32, len: usize) -> Result<MappedView, HResult> {
        let ptr = self.0.map_buffer_handle(handle)?;
        // SAFETY: `ptr` came from `MapBufferHandle`; the rest is this function's contract,
        // passed on to its caller.
        Ok(unsafe { MappedView::new(ptr, len) })
    }
}

/// Makes the device set a backend works with: sqlvdi's, through `CoCreateInstance`, or another
/// implementation (a fake in tests, a side-by-side copy of sqlvdi.dll).
///
/// # Safety
///
/// Every object `activate` returns, and every interface obtained from it, must:
/// - implement `IClientVirtualDeviceSet2` and `IClientVirtualDevice` as `vdi.h` declares them
///   (the vtables of this module) and keep the contracts of Microsoft's VDI reference, as
///   [`IClientVirtualDeviceSet2::from_raw`] requires;
/// - be free-threaded: callable from any thread that is not in a single-threaded apartment,
///   concurrently, and releasable from any thread, as [`FreeThreaded::new`] requires
///   (sqlvdi.dll's objects, made in the multithreaded apartment, are);
/// - keep the memory of every buffer it hands out (in a command, or from `MapBufferHandle`)
///   mapped for as long as the set object lives;
/// - off Windows, where `VirtualQuery` cannot check it, return from `MapBufferHandle` an
///   address with at least `maxTransferSize` bytes of readable and writable memory.
pub unsafe trait Activate: Send + Sync + fmt::Debug {
    /// A new, not yet created, device set, with one reference for the caller.
    ///
    /// # Errors
    ///
    /// The `HRESULT` of the failure (`REGDB_E_CLASSNOTREG` when sqlvdi.dll is not registered).
    fn activate(&self) -> Result<IClientVirtualDeviceSet2, HResult>;
}

/// Makes a device set that may be shared between threads.
pub(crate) fn activate_free_threaded(
    activator: &dyn Activate,
) -> Result<FreeThreaded<IClientVirtualDeviceSet2>, HResult> {
    let set = activator.activate()?;
    // SAFETY: `Activate`'s contract: the object is free-threaded.
    Ok(unsafe { FreeThreaded::new(set) })
}

/// The activator of sqlvdi.dll: `CoCreateInstance(CLSID_MSSQL_ClientVirtualDeviceSet, NULL,
/// CLSCTX_INPROC_SERVER, IID_IClientVirtualDeviceSet2)`.
///
/// Off Windows it answers `HRESULT_FROM_WIN32(ERROR_NOT_SUPPORTED)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ComActivator {
    clsid: Guid,
}

impl ComActivator {
    /// The activator of `CLSID_MSSQL_ClientVirtualDeviceSet`.
    pub const fn new() -> Self {
        Self {
            clsid: CLSID_MSSQL_CLIENT_VIRTUAL_DEVICE_SET,
        }
    }

    /// The activator of another class implementing the VDI client interfaces, such as
    /// `CLSID_WINFS_ClientVirtualDeviceSet` (`50b99b13-7b84-44d3-9c98-2652bf144d96`) in
    /// `vdi.h`.
    pub const fn with_clsid(clsid: Guid) -> Self {
        Self { clsid }
    }

    /// The class it activates.
    pub const fn clsid(&self) -> Guid {
        self.clsid
    }
}

impl Default for ComActivator {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: a class that answers `CoCreateInstance` for `IID_IClientVirtualDeviceSet2` promises
// that interface, as `vdi.h` declares it, by COM's rules; the in-process classes that implement
// it (sqlvdi.dll's) are free-threaded and made in the multithreaded apartment, which the backend
// enters before activating.
unsafe impl Activate for ComActivator {
    fn activate(&self) -> Result<IClientVirtualDeviceSet2, HResult> {
        // SAFETY: as for the `impl`: the class keeps the VDI contracts.
        unsafe { runtime::create_instance::<IClientVirtualDeviceSet2>(&self.clsid) }
    }
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    const PTR: usize = size_of::<usize>();

    #[test]
    fn iunknown_slots() {
        assert_eq!(offset_of!(IUnknown_Vtbl, QueryInterface), 0);
        assert_eq!(offset_of!(IUnknown_Vtbl, AddRef), PTR);
        assert_eq!(offset_of!(IUnknown_Vtbl, Release), 2 * PTR);
        assert_eq!(size_of::<IUnknown_Vtbl>(), 3 * PTR);
    }

    #[test]
    fn device_slots() {
        type V = IClientVirtualDevice_Vtbl;
        assert_eq!(offset_of!(V, base__), 0);
        assert_eq!(offset_of!(V, GetCommand), 3 * PTR);
        assert_eq!(offset_of!(V, CompleteCommand), 4 * PTR);
        assert_eq!(size_of::<V>(), 5 * PTR);
    }

    #[test]
    fn set_slots() {
        type V = IClientVirtualDeviceSet_Vtbl;
        assert_eq!(offset_of!(V, base__), 0);
        assert_eq!(offset_of!(V, Create), 3 * PTR);
        assert_eq!(offset_of!(V, GetConfiguration), 4 * PTR);
        assert_eq!(offset_of!(V, OpenDevice), 5 * PTR);
        assert_eq!(offset_of!(V, Close), 6 * PTR);
        assert_eq!(offset_of!(V, SignalAbort), 7 * PTR);
        assert_eq!(offset_of!(V, OpenInSecondary), 8 * PTR);
        assert_eq!(offset_of!(V, GetBufferHandle), 9 * PTR);
        assert_eq!(offset_of!(V, MapBufferHandle), 10 * PTR);
        assert_eq!(size_of::<V>(), 11 * PTR);
    }

    #[test]
    fn set2_slots_extend_set() {
        type V = IClientVirtualDeviceSet2_Vtbl;
        assert_eq!(offset_of!(V, base__), 0);
        assert_eq!(offset_of!(V, CreateEx), 11 * PTR);
        assert_eq!(offset_of!(V, OpenInSecondaryEx), 12 * PTR);
        assert_eq!(size_of::<V>(), 13 * PTR);
    }

    #[test]
    fn interfaces_are_one_pointer() {
        assert_eq!(size_of::<IClientVirtualDevice>(), PTR);
        assert_eq!(size_of::<Option<IClientVirtualDevice>>(), PTR);
        assert_eq!(size_of::<IClientVirtualDeviceSet2>(), PTR);
        assert_eq!(size_of::<FreeThreaded<IClientVirtualDeviceSet2>>(), PTR);
    }

    #[test]
    fn guids_match_vdiguid_h() {
        assert_eq!(
            IClientVirtualDevice::IID.to_string(),
            "40700424-0080-11d2-851f-00c04fc21759"
        );
        assert_eq!(
            IClientVirtualDeviceSet::IID.to_string(),
            "40700425-0080-11d2-851f-00c04fc21759"
        );
        assert_eq!(
            IClientVirtualDeviceSet2::IID.to_string(),
            "d0e6eb07-7a62-11d2-8573-00c04fc21759"
        );
        assert_eq!(
            CLSID_MSSQL_CLIENT_VIRTUAL_DEVICE_SET,
            IClientVirtualDeviceSet::IID
        );
        // The binary layout, as `DEFINE_GUID` writes it.
        let g = IClientVirtualDeviceSet2::IID;
        assert_eq!((g.data1, g.data2, g.data3), (0xd0e6_eb07, 0x7a62, 0x11d2));
        assert_eq!(g.data4, [0x85, 0x73, 0x00, 0xc0, 0x4f, 0xc2, 0x17, 0x59]);
        assert_eq!(
            format!("{IID_IUNKNOWN:?}"),
            "{00000000-0000-0000-c000-000000000046}"
        );
    }

    #[test]
    fn guid_layout() {
        assert_eq!(size_of::<Guid>(), 16);
        assert_eq!(offset_of!(Guid, data2), 4);
        assert_eq!(offset_of!(Guid, data3), 6);
        assert_eq!(offset_of!(Guid, data4), 8);
    }

    #[test]
    fn wide_strings() {
        let w = WideCString::new("Ünï-😀").unwrap();
        assert_eq!(w.as_slice_with_nul().last(), Some(&0));
        assert_eq!(
            String::from_utf16(&w.as_slice_with_nul()[..w.as_slice_with_nul().len() - 1]).unwrap(),
            "Ünï-😀"
        );
        assert_eq!(format!("{w:?}"), "L\"Ünï-😀\"");
    }
}
