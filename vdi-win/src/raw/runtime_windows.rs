//! The COM runtime on Windows: apartments and activation (ole32/combase through windows-sys).
//!
//! The contract both this file and `runtime_stub.rs` fulfil:
//! - `Apartment::enter_mta()`: the calling thread is in the multithreaded apartment until the
//!   guard drops (`CoInitializeEx(COINIT_MULTITHREADED)`, balanced by `CoUninitialize`), or the
//!   `HRESULT` of the failure (`RPC_E_CHANGED_MODE` on a thread in a single-threaded apartment).
//! - `MtaUsage::acquire()`: keeps the MTA alive, and COM DLLs loaded, while the guard lives, even
//!   when no thread has called `CoInitializeEx` (`CoIncrementMTAUsage`).
//! - `create_instance::<T>(clsid)`: `CoCreateInstance(clsid, NULL, CLSCTX_INPROC_SERVER, T::IID)`.

use core::{ffi::c_void, marker::PhantomData, ptr, ptr::NonNull};

use windows_sys::{
    Win32::System::Com::{
        CLSCTX_INPROC_SERVER, CO_MTA_USAGE_COOKIE, COINIT_MULTITHREADED, CoCreateInstance,
        CoDecrementMTAUsage, CoIncrementMTAUsage, CoInitializeEx, CoUninitialize,
    },
    core::GUID,
};

use super::{E_POINTER, Guid, HResult, Interface, transmute_interface};

/// The calling thread's membership of the MTA, for as long as the guard lives.
#[derive(Debug)]
pub(crate) struct Apartment {
    /// `CoUninitialize` must run on the thread that called `CoInitializeEx`.
    _not_send: PhantomData<*mut ()>,
}

impl Apartment {
    /// `CoInitializeEx(NULL, COINIT_MULTITHREADED)`; `S_FALSE` (already in the MTA) is success.
    pub(crate) fn enter_mta() -> Result<Self, HResult> {
        // SAFETY: the reserved pointer is null, as required; any thread may call it.
        let hr = HResult(unsafe { CoInitializeEx(ptr::null(), COINIT_MULTITHREADED as u32) });
        if hr.is_ok() {
            Ok(Self {
                _not_send: PhantomData,
            })
        } else {
            Err(hr)
        }
    }
}

impl Drop for Apartment {
    fn drop(&mut self) {
        // SAFETY: balances the successful `CoInitializeEx` of `enter_mta`, on the same thread
        // (the guard is `!Send`).
        unsafe { CoUninitialize() };
    }
}

/// A use of the MTA that keeps it, and the DLLs loaded into it, alive (`CoIncrementMTAUsage`).
#[derive(Debug)]
pub(crate) struct MtaUsage(CO_MTA_USAGE_COOKIE);

// SAFETY: the cookie is an opaque token that `CoDecrementMTAUsage` accepts from any thread.
unsafe impl Send for MtaUsage {}
// SAFETY: `&MtaUsage` allows nothing but formatting the token.
unsafe impl Sync for MtaUsage {}

impl MtaUsage {
    /// `CoIncrementMTAUsage`.
    pub(crate) fn acquire() -> Result<Self, HResult> {
        let mut cookie: CO_MTA_USAGE_COOKIE = ptr::null_mut();
        // SAFETY: the out pointer is valid for the call.
        let hr = HResult(unsafe { CoIncrementMTAUsage(&mut cookie) });
        if hr.is_ok() {
            Ok(Self(cookie))
        } else {
            Err(hr)
        }
    }
}

impl Drop for MtaUsage {
    fn drop(&mut self) {
        // SAFETY: the cookie came from a successful `CoIncrementMTAUsage` and is returned once.
        unsafe { CoDecrementMTAUsage(self.0) };
    }
}

/// `CoCreateInstance(clsid, NULL, CLSCTX_INPROC_SERVER, T::IID)`.
///
/// # Safety
///
/// The class `clsid` implements `T` as `vdi.h` declares it and keeps the contracts of
/// Microsoft's VDI reference (as `T::from_raw` requires).
pub(crate) unsafe fn create_instance<T: Interface>(clsid: &Guid) -> Result<T, HResult> {
    let to_sys = |g: &Guid| GUID {
        data1: g.data1,
        data2: g.data2,
        data3: g.data3,
        data4: g.data4,
    };
    let (clsid, iid) = (to_sys(clsid), to_sys(&T::IID));
    let mut out: *mut c_void = ptr::null_mut();
    // SAFETY: the GUIDs and the out pointer are valid for the call; no aggregation.
    let hr = HResult(unsafe {
        CoCreateInstance(
            &clsid,
            ptr::null_mut(),
            CLSCTX_INPROC_SERVER,
            &iid,
            &mut out,
        )
    });
    if !hr.is_ok() {
        return Err(hr);
    }
    let ptr = NonNull::new(out).ok_or(E_POINTER)?;
    // SAFETY: a successful `CoCreateInstance` returns an owned reference to the interface
    // `T::IID`, of an object that keeps the contracts (this function's caller).
    Ok(unsafe { transmute_interface::<T>(ptr) })
}
