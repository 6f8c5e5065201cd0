//! What the bindings to Microsoft's VDI client libraries share: vdi-win (sqlvdi.dll, COM) and
//! vdi-linux (libsqlvdi.so, C++). Both libraries hand out a `VDC_Command` with a buffer
//! pointer, and buffer addresses without lengths; what the client traits make of them is the
//! same for both, so it is written once here:
//!
//! - [`ActiveCommand`]: a command the library returned and that is not completed yet, its
//!   fields read once when it arrives, with its data and prefix zones;
//! - [`MappedView`]: a buffer mapped from a handle, with the length the caller vouches for;
//! - [`Command`]: the command as [`vdi_core::ClientCommand`] sees it, holding this process's
//!   lease on the buffer's bytes, completed exactly once (a dropped one with
//!   `ERROR_OPERATION_ABORTED`) through its device ([`ForeignDevice`]);
//! - [`Mapped`]: the mapped buffer as [`vdi_core::MappedBuffer`] sees it, with its lease;
//! - [`SetState`]: what a binding knows of a set in this process, and `vdi-core`'s state
//!   machine asked before, and told after, each call into the library.
//!
//! The `unsafe` code is in `raw`: the two types that turn the libraries' pointers into slices,
//! each behind an `unsafe` constructor whose contract the binding upholds.

mod raw;
mod set;
mod wrap;

pub use raw::{ActiveCommand, MappedView};
pub use set::{Closed, DeviceCall, SetState, remaining};
pub use wrap::{Command, ForeignDevice, Mapped};
