//! The COM runtime off Windows: there is none.
//!
//! The contract is that of `runtime_windows.rs`. Here entering the MTA and keeping it alive do
//! nothing (objects made in this process, such as test fakes, need no apartment), and
//! activation answers `HRESULT_FROM_WIN32(ERROR_NOT_SUPPORTED)`: sqlvdi.dll exists only on
//! Windows.

use core::ptr::NonNull;

use super::{E_NOT_SUPPORTED, Guid, HResult, Interface};

/// No apartment to enter.
#[derive(Debug)]
pub(crate) struct Apartment;

impl Apartment {
    /// Succeeds: there is no COM runtime whose rules could be broken.
    pub(crate) fn enter_mta() -> Result<Self, HResult> {
        Ok(Self)
    }
}

/// No MTA to keep alive.
#[derive(Debug)]
pub(crate) struct MtaUsage;

impl MtaUsage {
    /// Succeeds, doing nothing.
    pub(crate) fn acquire() -> Result<Self, HResult> {
        Ok(Self)
    }
}

/// Always `HRESULT_FROM_WIN32(ERROR_NOT_SUPPORTED)`.
///
/// # Safety
///
/// None needed here; the signature matches `runtime_windows.rs`.
pub(crate) unsafe fn create_instance<T: Interface>(_clsid: &Guid) -> Result<T, HResult> {
    Err(E_NOT_SUPPORTED)
}

/// Always `true`: off Windows the only objects are [`Activate`](super::Activate)
/// implementations made in this process (test fakes), whose contract vouches for the memory of
/// the buffers they hand out.
pub(crate) fn read_write(_ptr: NonNull<u8>, _len: usize) -> bool {
    true
}
