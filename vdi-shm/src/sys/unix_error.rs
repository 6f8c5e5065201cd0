//! System errors as the crate's [`Error`], for both Unix backends (`linux.rs`, `posix/`).

use rustix::io::Errno;
use vdi_core::{Error, SystemError};

/// A system error `e` from `call` as the crate's error (see [`os_error`]).
pub(crate) fn io_error(call: &'static str, e: &std::io::Error) -> Error {
    os_error(call, Errno::from_io_error(e).unwrap_or(Errno::IO))
}

/// Maps an errno from `call` to the crate's error: out-of-memory and out-of-space conditions
/// become `VD_E_MEMORY`, everything else `VD_E_UNEXPECTED` naming the call.
pub(crate) fn os_error(call: &'static str, e: Errno) -> Error {
    if e == Errno::NOMEM || e == Errno::NOSPC || e == Errno::FBIG {
        Error::Memory
    } else {
        Error::System(SystemError {
            call,
            code: e.raw_os_error(),
        })
    }
}
