//! Errors: the one place where an `HRESULT` becomes a [`vdi_core::Error`], and the causes a
//! Windows user actually meets, named with what to do about them.

use core::fmt;
use std::io;

use tracing::{debug, warn};
use vdi_core::{Error, HResult, InvalidReason, ProtocolReason};

use crate::raw::{E_NOT_SUPPORTED, RPC_E_CHANGED_MODE};

/// The call that failed: a COM method of sqlvdi.dll, or one of the COM runtime's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// `CoIncrementMTAUsage`, which keeps the multithreaded apartment alive for a set.
    CoIncrementMtaUsage,
    /// `CoCreateInstance` of sqlvdi's class (or the backend's activator).
    CoCreateInstance,
    /// `IClientVirtualDeviceSet2::CreateEx`.
    CreateEx,
    /// `IClientVirtualDeviceSet2::OpenInSecondaryEx`.
    OpenInSecondaryEx,
    /// `IClientVirtualDeviceSet::GetConfiguration`.
    GetConfiguration,
    /// `IClientVirtualDeviceSet::OpenDevice`.
    OpenDevice,
    /// `IClientVirtualDevice::GetCommand`.
    GetCommand,
    /// `IClientVirtualDevice::CompleteCommand`.
    CompleteCommand,
    /// `IClientVirtualDeviceSet::SignalAbort`.
    SignalAbort,
    /// `IClientVirtualDeviceSet::Close`.
    Close,
    /// `IClientVirtualDeviceSet::GetBufferHandle`.
    GetBufferHandle,
    /// `IClientVirtualDeviceSet::MapBufferHandle`.
    MapBufferHandle,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CoIncrementMtaUsage => "CoIncrementMTAUsage",
            Self::CoCreateInstance => "CoCreateInstance",
            Self::CreateEx => "CreateEx",
            Self::OpenInSecondaryEx => "OpenInSecondaryEx",
            Self::GetConfiguration => "GetConfiguration",
            Self::OpenDevice => "OpenDevice",
            Self::GetCommand => "GetCommand",
            Self::CompleteCommand => "CompleteCommand",
            Self::SignalAbort => "SignalAbort",
            Self::Close => "Close",
            Self::GetBufferHandle => "GetBufferHandle",
            Self::MapBufferHandle => "MapBufferHandle",
        })
    }
}

/// A cause the bare code does not tell, with what to do about it (vdi-spec.md §14).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cause {
    /// `REGDB_E_CLASSNOTREG` or `CLASS_E_CLASSNOTAVAILABLE` from activation: sqlvdi.dll is not
    /// registered for this process's bitness.
    ClassNotRegistered,
    /// `E_NOINTERFACE` from activation: the registered sqlvdi.dll has no
    /// `IClientVirtualDeviceSet2` (a SQL Server 7.0 copy).
    NoSet2Interface,
    /// `E_ACCESSDENIED`: the process may not create the set.
    AccessDenied,
    /// `VD_E_INSTANCE_NAME`, or an instance name with a machine prefix.
    InstanceName,
    /// `VD_E_SECURITY`: sqlvdi could not set up the security of the set.
    Security,
    /// `RPC_E_CHANGED_MODE`: the calling thread is in a single-threaded apartment.
    SingleThreadedApartment,
    /// `VD_E_TIMEOUT` from `GetConfiguration`: no BACKUP or RESTORE opened the set yet.
    ConfigurationTimeout,
    /// Off Windows there is no sqlvdi.dll.
    UnsupportedPlatform,
}

impl Cause {
    /// The cause of `hr` from `op`, when it is one of those a user can act on.
    pub fn of(op: Op, hr: HResult) -> Option<Self> {
        Some(match (op, hr) {
            (
                Op::CoCreateInstance,
                HResult::REGDB_E_CLASSNOTREG | HResult::CLASS_E_CLASSNOTAVAILABLE,
            ) => Self::ClassNotRegistered,
            (Op::CoCreateInstance, HResult::E_NOINTERFACE) => Self::NoSet2Interface,
            (Op::CoCreateInstance, E_NOT_SUPPORTED) if cfg!(not(windows)) => {
                Self::UnsupportedPlatform
            }
            (_, HResult::E_ACCESSDENIED) => Self::AccessDenied,
            (_, HResult::VD_E_INSTANCE_NAME) => Self::InstanceName,
            (_, HResult::VD_E_SECURITY) => Self::Security,
            (_, RPC_E_CHANGED_MODE) => Self::SingleThreadedApartment,
            (Op::GetConfiguration, HResult::VD_E_TIMEOUT) => Self::ConfigurationTimeout,
            _ => return None,
        })
    }

    /// What to do about it, in a sentence or two.
    pub fn advice(self) -> &'static str {
        match self {
            Self::ClassNotRegistered if cfg!(target_pointer_width = "64") => {
                "sqlvdi.dll is not registered, or its bitness differs from this 64-bit process: \
                 install or repair SQL Server's 64-bit client components (COM looks under \
                 HKCR\\CLSID\\{40700425-0080-11d2-851f-00c04fc21759}\\InprocServer32)"
            }
            Self::ClassNotRegistered => {
                "sqlvdi.dll is not registered, or its bitness differs from this 32-bit process: \
                 build for 64-bit, or register SQL Server's 32-bit sqlvdi.dll (COM looks under \
                 HKCR\\CLSID\\{40700425-0080-11d2-851f-00c04fc21759}\\InprocServer32)"
            }
            Self::NoSet2Interface => {
                "the registered sqlvdi.dll lacks IClientVirtualDeviceSet2 (SQL Server 7.0): \
                 register the sqlvdi.dll of a current SQL Server"
            }
            Self::AccessDenied => {
                "run as an administrator (elevated): CreateEx must let the SQL Server service \
                 account into this process; the login that runs BACKUP/RESTORE must also be a \
                 member of sysadmin"
            }
            Self::InstanceName => {
                "instance name not recognized: give the instance name without the machine \
                 prefix (\"SQL2022\", not \"HOST\\SQL2022\"), or None for the default instance"
            }
            Self::Security => {
                "sqlvdi could not set up the security of the set: see the Application event \
                 log, source SQLVDI, and run as an administrator"
            }
            Self::SingleThreadedApartment => {
                "this thread is in a single-threaded COM apartment (COINIT_APARTMENTTHREADED, \
                 as UI threads are), but sqlvdi's objects live in the multithreaded apartment: \
                 make VDI calls from another thread"
            }
            Self::ConfigurationTimeout => {
                "SQL Server has not opened the set yet: run BACKUP/RESTORE ... VIRTUAL_DEVICE = \
                 '<set name>' on the same instance, as a member of sysadmin, from another thread \
                 or process, then call again"
            }
            Self::UnsupportedPlatform => {
                "sqlvdi.dll exists only on Windows: the SqlVdi backend is unsupported on this \
                 platform (vdi-shm is the backend here)"
            }
        }
    }

    /// Whether the cause is a setup problem worth a warning in the log (every cause but the
    /// configuration timeout, which a caller that polls meets routinely).
    fn is_setup(self) -> bool {
        self != Self::ConfigurationTimeout
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.advice())
    }
}

/// An error of the sqlvdi backend: the [`vdi_core::Error`] the traits return, the call that
/// failed, and the cause when a user can act on it.
///
/// It converts into `vdi_core::Error` (dropping the cause) and into `io::Error` (keeping the
/// whole message; [`io::ErrorKind::Unsupported`] off Windows).
///
/// ```
/// use vdi_core::HResult;
/// use vdi_win::{Cause, Op, WinError};
///
/// let e = WinError::from_hresult(Op::CoCreateInstance, HResult::REGDB_E_CLASSNOTREG);
/// assert_eq!(e.cause(), Some(Cause::ClassNotRegistered));
/// assert!(e.to_string().starts_with("CoCreateInstance failed: class not registered"));
/// assert!(e.to_string().contains("sqlvdi.dll is not registered"));
/// assert_eq!(vdi_core::Error::from(e).hresult(), HResult::REGDB_E_CLASSNOTREG);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WinError {
    op: Op,
    error: Error,
    cause: Option<Cause>,
}

impl WinError {
    /// The error for `hr`, returned by `op`: **the** mapping of this crate.
    ///
    /// The code picks the `vdi_core::Error` variant ([`Error::from_hresult`]); the call narrows
    /// the reason where the code has only one meaning for it (`VD_E_PROTOCOL` from `CreateEx`: a
    /// set of that name exists; `VD_E_INVALID` from `OpenDevice`: no such device; ...). Codes
    /// without a VDI meaning stay [`Error::Other`].
    pub fn from_hresult(op: Op, hr: HResult) -> Self {
        let error = match (op, Error::from_hresult(hr).unwrap_or(Error::Other(hr))) {
            (Op::CreateEx, Error::Protocol(_)) => Error::Protocol(ProtocolReason::AlreadyExists),
            (Op::OpenInSecondaryEx, Error::Protocol(_)) => {
                Error::Protocol(ProtocolReason::NotReady)
            }
            (Op::OpenDevice, Error::Invalid(_)) => Error::Invalid(InvalidReason::DeviceName),
            (Op::CompleteCommand, Error::Invalid(_)) => {
                Error::Invalid(InvalidReason::NotActiveCommand)
            }
            (Op::GetBufferHandle, Error::Invalid(_)) => Error::Invalid(InvalidReason::Buffer),
            (Op::MapBufferHandle, Error::Invalid(_)) => Error::Invalid(InvalidReason::BufferHandle),
            (_, e) => e,
        };
        Self {
            op,
            error,
            cause: Cause::of(op, hr),
        }
    }

    /// An error found before reaching sqlvdi: a state the specification's table forbids, a
    /// bad argument.
    pub(crate) fn local(op: Op, error: Error) -> Self {
        Self {
            op,
            error,
            cause: None,
        }
    }

    /// [`WinError::local`] with a cause.
    pub(crate) fn local_with(op: Op, error: Error, cause: Cause) -> Self {
        Self {
            op,
            error,
            cause: Some(cause),
        }
    }

    /// The call that failed.
    pub fn op(&self) -> Op {
        self.op
    }

    /// The error as `vdi-core`'s traits report it.
    pub fn error(&self) -> Error {
        self.error
    }

    /// The cause, when a user can act on it.
    pub fn cause(&self) -> Option<Cause> {
        self.cause
    }

    /// The `HRESULT`.
    pub fn hresult(&self) -> HResult {
        self.error.hresult()
    }

    /// The error for a trait method, logged once here (the cause does not survive the
    /// conversion): a warning for a setup problem, debug otherwise. Timeouts and the end of a
    /// device are control flow and not logged.
    pub(crate) fn report(self) -> Error {
        match self.cause {
            Some(cause) if cause.is_setup() => warn!(error = %self, "sqlvdi call failed"),
            _ if matches!(self.error, Error::Timeout | Error::Closed) => {}
            _ => debug!(error = %self, "sqlvdi call failed"),
        }
        self.error
    }
}

impl fmt::Display for WinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.op, self.error)?;
        if let Some(cause) = self.cause {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for WinError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<WinError> for Error {
    fn from(e: WinError) -> Self {
        e.error
    }
}

impl From<WinError> for io::Error {
    fn from(e: WinError) -> Self {
        let kind = match e.cause {
            Some(Cause::UnsupportedPlatform) => io::ErrorKind::Unsupported,
            Some(Cause::AccessDenied | Cause::Security) => io::ErrorKind::PermissionDenied,
            Some(Cause::ClassNotRegistered | Cause::NoSet2Interface) => io::ErrorKind::NotFound,
            _ => Self::from(e.error).kind(),
        };
        Self::new(kind, e)
    }
}

/// `HRESULT` to `Result`, through [`WinError::from_hresult`].
pub(crate) trait HResultExt {
    /// `Ok` for a success code, else the error of `op`.
    fn check(self, op: Op) -> Result<(), WinError>;
}

impl HResultExt for HResult {
    fn check(self, op: Op) -> Result<(), WinError> {
        if self.is_ok() {
            Ok(())
        } else {
            Err(WinError::from_hresult(op, self))
        }
    }
}

#[cfg(test)]
mod tests {
    use vdi_core::{AbortReason, ConfigError};

    use super::*;

    #[test]
    fn every_vd_e_code_maps_to_its_variant() {
        let cases = [
            (HResult::VD_E_NOTOPEN, Error::NotOpen),
            (HResult::VD_E_TIMEOUT, Error::Timeout),
            (HResult::VD_E_ABORT, Error::Aborted(AbortReason::Signalled)),
            (HResult::VD_E_SECURITY, Error::Security),
            (
                HResult::VD_E_INVALID,
                Error::Invalid(InvalidReason::Unspecified),
            ),
            (HResult::VD_E_INSTANCE_NAME, Error::InstanceName),
            (
                HResult::VD_E_NOTSUPPORTED,
                Error::Config(ConfigError::Unspecified),
            ),
            (HResult::VD_E_MEMORY, Error::Memory),
            (
                HResult::VD_E_UNEXPECTED,
                Error::Other(HResult::VD_E_UNEXPECTED),
            ),
            (
                HResult::VD_E_PROTOCOL,
                Error::Protocol(ProtocolReason::Unspecified),
            ),
            (HResult::VD_E_OPEN, Error::Open),
            (HResult::VD_E_CLOSE, Error::Closed),
            (HResult::VD_E_BUSY, Error::Busy),
        ];
        for (hr, want) in cases {
            let e = WinError::from_hresult(Op::GetConfiguration, hr);
            assert_eq!(e.error(), want, "{hr:?}");
            assert_eq!(e.hresult(), hr, "{hr:?}");
        }
    }

    #[test]
    fn reasons_follow_the_call() {
        let e = |op, hr| WinError::from_hresult(op, hr).error();
        assert_eq!(
            e(Op::CreateEx, HResult::VD_E_PROTOCOL),
            Error::Protocol(ProtocolReason::AlreadyExists)
        );
        assert_eq!(
            e(Op::OpenInSecondaryEx, HResult::VD_E_PROTOCOL),
            Error::Protocol(ProtocolReason::NotReady)
        );
        assert_eq!(
            e(Op::OpenDevice, HResult::VD_E_INVALID),
            Error::Invalid(InvalidReason::DeviceName)
        );
        assert_eq!(
            e(Op::CompleteCommand, HResult::VD_E_INVALID),
            Error::Invalid(InvalidReason::NotActiveCommand)
        );
        assert_eq!(
            e(Op::GetBufferHandle, HResult::VD_E_INVALID),
            Error::Invalid(InvalidReason::Buffer)
        );
        assert_eq!(
            e(Op::MapBufferHandle, HResult::VD_E_INVALID),
            Error::Invalid(InvalidReason::BufferHandle)
        );
    }

    #[test]
    fn causes_name_what_to_do() {
        let msg = |op, hr| WinError::from_hresult(op, hr).to_string();
        for hr in [
            HResult::REGDB_E_CLASSNOTREG,
            HResult::CLASS_E_CLASSNOTAVAILABLE,
        ] {
            assert!(
                msg(Op::CoCreateInstance, hr)
                    .contains("sqlvdi.dll is not registered, or its bitness differs")
            );
        }
        assert!(msg(Op::CreateEx, HResult::E_ACCESSDENIED).contains("run as an administrator"));
        assert!(msg(Op::CreateEx, HResult::VD_E_INSTANCE_NAME).contains(
            "instance name not recognized: give the instance name without the machine prefix"
        ));
        assert!(msg(Op::GetCommand, RPC_E_CHANGED_MODE).contains("single-threaded"));
        assert_eq!(
            WinError::from_hresult(Op::GetCommand, HResult::VD_E_TIMEOUT).cause(),
            None
        );
    }

    #[test]
    fn io_kinds() {
        let kind = |op, hr| io::Error::from(WinError::from_hresult(op, hr)).kind();
        assert_eq!(
            kind(Op::CreateEx, HResult::E_ACCESSDENIED),
            io::ErrorKind::PermissionDenied
        );
        assert_eq!(
            kind(Op::GetCommand, HResult::VD_E_TIMEOUT),
            io::ErrorKind::TimedOut
        );
        let unsupported = kind(Op::CoCreateInstance, E_NOT_SUPPORTED);
        if cfg!(windows) {
            assert_eq!(unsupported, io::ErrorKind::Other);
        } else {
            assert_eq!(unsupported, io::ErrorKind::Unsupported);
        }
    }
}
