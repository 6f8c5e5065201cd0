//! The COM runtime on Windows: apartments and activation (ole32/combase through windows-sys).
//!
//! The contract both this file and `runtime_stub.rs` fulfil:
//! - `Apartment::enter_mta()`: the calling thread is in the multithreaded apartment until the
//!   guard drops (`CoInitializeEx(COINIT_MULTITHREADED)`, balanced by `CoUninitialize`), or the
//!   `HRESULT` of the failure (`RPC_E_CHANGED_MODE` on a thread in a single-threaded apartment).
//! - `MtaUsage::acquire()`: keeps the MTA alive, and COM DLLs loaded, while the guard lives, even
//!   when no thread has called `CoInitializeEx` (`CoIncrementMTAUsage`).
//! - `create_instance::<T>(clsid)`: `CoCreateInstance(clsid, NULL, CLSCTX_INPROC_SERVER, T::IID)`.
//! - `read_write(ptr, len)`: whether all `len` bytes at `ptr` are committed memory of this
//!   process that may be read and written now (`VirtualQuery`); `true` off Windows.

use core::{ffi::c_void, marker::PhantomData, ptr, ptr::NonNull};

use windows_sys::{
    Win32::System::{
        Com::{
            CLSCTX_INPROC_SERVER, CO_MTA_USAGE_COOKIE, COINIT_MULTITHREADED, CoCreateInstance,
            CoDecrementMTAUsage, CoIncrementMTAUsage, CoInitializeEx, CoUninitialize,
        },
        Memory::{
            MEM_COMMIT, MEMORY_BASIC_INFORMATION, PAGE_EXECUTE_READWRITE, PAGE_GUARD,
            PAGE_NOACCESS, PAGE_NOCACHE, PAGE_READWRITE, PAGE_WRITECOMBINE, VirtualQuery,
        },
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

/// Whether all `len` bytes at `ptr` are committed, readable and writable memory of this process
/// (every region `VirtualQuery` reports across the range is `MEM_COMMIT` with `PAGE_READWRITE`
/// or `PAGE_EXECUTE_READWRITE`, and no guard page). An empty range is accepted.
///
/// It says what holds now: memory that another thread unmaps later is the caller's business.
pub(crate) fn read_write(ptr: NonNull<u8>, len: usize) -> bool {
    let start = ptr.as_ptr() as usize;
    let Some(end) = start.checked_add(len) else {
        return false;
    };
    let mut at = start;
    while at < end {
        // SAFETY: MEMORY_BASIC_INFORMATION is plain integers and pointers, for which all-zero
        // bytes are a valid value.
        let mut info: MEMORY_BASIC_INFORMATION = unsafe { core::mem::zeroed() };
        // SAFETY: VirtualQuery only reads the process's address map; any address may be asked
        // about, and `info` is a valid out buffer of the size passed.
        let got = unsafe {
            VirtualQuery(
                at as *const c_void,
                &mut info,
                size_of::<MEMORY_BASIC_INFORMATION>(),
            )
        };
        if got == 0 || info.State != MEM_COMMIT {
            return false;
        }
        let protect = info.Protect & !(PAGE_GUARD | PAGE_NOCACHE | PAGE_WRITECOMBINE);
        if info.Protect & (PAGE_GUARD | PAGE_NOACCESS) != 0
            || (protect != PAGE_READWRITE && protect != PAGE_EXECUTE_READWRITE)
        {
            return false;
        }
        let region_end = (info.BaseAddress as usize).saturating_add(info.RegionSize);
        if region_end <= at {
            return false;
        }
        at = region_end;
    }
    true
}

#[cfg(test)]
mod tests {
    use core::ptr::NonNull;

    use windows_sys::Win32::System::Memory::{
        MEM_COMMIT, MEM_RELEASE, MEM_RESERVE, PAGE_READONLY, PAGE_READWRITE, VirtualAlloc,
        VirtualFree, VirtualProtect,
    };

    use super::read_write;

    #[test]
    fn read_write_covers_exactly_the_committed_read_write_pages() {
        const PAGE: usize = 4096;
        // SAFETY: reserves four pages of fresh address space; nothing else uses them.
        let base =
            unsafe { VirtualAlloc(core::ptr::null(), 4 * PAGE, MEM_RESERVE, PAGE_READWRITE) };
        assert!(!base.is_null());
        // SAFETY: commits the first two pages of the reservation just made.
        let got = unsafe { VirtualAlloc(base, 2 * PAGE, MEM_COMMIT, PAGE_READWRITE) };
        assert_eq!(got, base);
        let mut old = 0;
        // SAFETY: the second page is committed and ours; nothing refers to it.
        let ok = unsafe {
            VirtualProtect(
                base.cast::<u8>().add(PAGE).cast(),
                PAGE,
                PAGE_READONLY,
                &mut old,
            )
        };
        assert_ne!(ok, 0);
        let at = |offset: usize| NonNull::new(base.cast::<u8>().wrapping_add(offset)).unwrap();

        assert!(read_write(at(0), PAGE));
        assert!(read_write(at(100), PAGE - 100));
        assert!(read_write(at(0), 0));
        // Into the read-only page, or the reserved (uncommitted) ones.
        assert!(!read_write(at(0), PAGE + 1));
        assert!(!read_write(at(PAGE), 1));
        assert!(!read_write(at(2 * PAGE), 1));
        assert!(!read_write(at(PAGE - 1), usize::MAX));

        // SAFETY: releases the reservation made above; no reference to it remains.
        assert_ne!(unsafe { VirtualFree(base, 0, MEM_RELEASE) }, 0);
    }
}
