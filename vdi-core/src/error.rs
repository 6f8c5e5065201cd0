//! The error every call of every backend returns: one variant per `VD_E_*` code, with a typed
//! reason where the code alone would leave the caller guessing.

use core::fmt;

use crate::{Call, ConfigError, HResult, NameError};

/// The error of a VDI call.
///
/// Each variant stands for exactly one `HRESULT` ([`Error::hresult`]); the reasons inside say
/// which rule was broken, so that a message can name the cause. `Timeout` and `Closed` are normal
/// control flow for `GetCommand` and `GetConfiguration`, not failures.
///
/// ```
/// use vdi_core::{Error, HResult};
/// let e = Error::Timeout;
/// assert_eq!(e.hresult(), HResult::VD_E_TIMEOUT);
/// assert_eq!(e.to_string(), "the wait timed out (VD_E_TIMEOUT)");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// `VD_E_NOTOPEN`: the device or set is not open.
    NotOpen,
    /// `VD_E_TIMEOUT`: the wait ran out; the call may simply be made again.
    Timeout,
    /// `VD_E_ABORT`: the set was aborted; only `Close` is useful now.
    Aborted(AbortReason),
    /// `VD_E_SECURITY`: the security environment could not be set up.
    Security,
    /// `VD_E_INVALID`: a bad parameter.
    Invalid(InvalidReason),
    /// `VD_E_INSTANCE_NAME`: the instance name was not recognized.
    InstanceName,
    /// `VD_E_NOTSUPPORTED`: the configuration breaks a rule.
    Config(ConfigError),
    /// `VD_E_MEMORY`: there is no room for the buffers asked for.
    Memory,
    /// `VD_E_UNEXPECTED`: an operating-system call failed.
    System(SystemError),
    /// `VD_E_PROTOCOL`: the call is not allowed now, or the peer broke the protocol.
    Protocol(ProtocolReason),
    /// `VD_E_OPEN`: all devices are already open (OpenDevice), or devices are still open (Close).
    Open,
    /// `VD_E_CLOSE`: the server closed the device; the normal end of a command stream.
    Closed,
    /// `VD_E_BUSY`: the device's command queue is full; complete some commands and retry.
    Busy,
    /// A send failed because the device is in the IO-ERROR state: only `VDC_ClearError` may be
    /// sent now. Reported as `HRESULT_FROM_WIN32(ERROR_IO_DEVICE)`; vdierror.h has no code for it.
    DeviceError,
    /// Any other `HRESULT`, as a COM implementation returned it.
    Other(HResult),
}

impl Error {
    /// The `HRESULT` this error stands for.
    pub const fn hresult(&self) -> HResult {
        match self {
            Self::NotOpen => HResult::VD_E_NOTOPEN,
            Self::Timeout => HResult::VD_E_TIMEOUT,
            Self::Aborted(_) => HResult::VD_E_ABORT,
            Self::Security => HResult::VD_E_SECURITY,
            Self::Invalid(_) => HResult::VD_E_INVALID,
            Self::InstanceName => HResult::VD_E_INSTANCE_NAME,
            Self::Config(_) => HResult::VD_E_NOTSUPPORTED,
            Self::Memory => HResult::VD_E_MEMORY,
            Self::System(_) => HResult::VD_E_UNEXPECTED,
            Self::Protocol(_) => HResult::VD_E_PROTOCOL,
            Self::Open => HResult::VD_E_OPEN,
            Self::Closed => HResult::VD_E_CLOSE,
            Self::Busy => HResult::VD_E_BUSY,
            Self::DeviceError => crate::CompletionCode::IO_DEVICE.to_hresult(),
            Self::Other(hr) => *hr,
        }
    }

    /// The error for an `HRESULT` received from a COM implementation, with generic reasons.
    ///
    /// Returns `None` for a success code.
    pub const fn from_hresult(hr: HResult) -> Option<Self> {
        if hr.is_ok() {
            return None;
        }
        Some(match hr {
            HResult::VD_E_NOTOPEN => Self::NotOpen,
            HResult::VD_E_TIMEOUT => Self::Timeout,
            HResult::VD_E_ABORT => Self::Aborted(AbortReason::Signalled),
            HResult::VD_E_SECURITY => Self::Security,
            HResult::VD_E_INVALID => Self::Invalid(InvalidReason::Unspecified),
            HResult::VD_E_INSTANCE_NAME => Self::InstanceName,
            HResult::VD_E_NOTSUPPORTED => Self::Config(ConfigError::Unspecified),
            HResult::VD_E_MEMORY => Self::Memory,
            HResult::VD_E_PROTOCOL => Self::Protocol(ProtocolReason::Unspecified),
            HResult::VD_E_OPEN => Self::Open,
            HResult::VD_E_CLOSE => Self::Closed,
            HResult::VD_E_BUSY => Self::Busy,
            other => Self::Other(other),
        })
    }

    /// Whether the error is a peer's or an abort's, after which the set is unusable.
    pub const fn is_abort(&self) -> bool {
        matches!(self, Self::Aborted(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hr = self.hresult();
        match self {
            Self::Aborted(reason) => write!(f, "the operation was aborted: {reason}")?,
            Self::Invalid(reason) => write!(f, "invalid parameter: {reason}")?,
            Self::Config(reason) => write!(f, "unsupported configuration: {reason}")?,
            Self::System(e) => write!(f, "{e}")?,
            Self::Protocol(reason) => write!(f, "protocol error: {reason}")?,
            Self::DeviceError => {
                f.write_str("the device is in the IO-ERROR state: only VDC_ClearError may be sent")?
            }
            Self::Other(hr) if hr.name().is_none() => {
                return write!(f, "{hr} ({:#010x})", hr.0 as u32);
            }
            _ => write!(f, "{hr}")?,
        }
        match hr.name() {
            Some(name) => write!(f, " ({name})"),
            None => write!(f, " ({:#010x})", hr.0 as u32),
        }
    }
}

impl std::error::Error for Error {}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

impl From<NameError> for Error {
    fn from(e: NameError) -> Self {
        Self::Invalid(InvalidReason::Name(e))
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        use std::io::ErrorKind;
        let kind = match e {
            Error::Timeout => ErrorKind::TimedOut,
            Error::Aborted(_) => ErrorKind::ConnectionAborted,
            Error::Invalid(_) | Error::Config(_) => ErrorKind::InvalidInput,
            Error::Memory => ErrorKind::OutOfMemory,
            Error::Security => ErrorKind::PermissionDenied,
            Error::Closed => ErrorKind::UnexpectedEof,
            Error::Busy => ErrorKind::WouldBlock,
            Error::NotOpen => ErrorKind::NotConnected,
            Error::Protocol(_) => ErrorKind::InvalidData,
            _ => ErrorKind::Other,
        };
        Self::new(kind, e)
    }
}

/// Why a set was aborted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AbortReason {
    /// One side called `SignalAbort`, or closed with devices still open.
    Signalled,
    /// The peer process exited without `Close`.
    PeerExited,
    /// The peer wrote values into shared memory that break the protocol.
    PeerMisbehaved,
    /// No command completed for two `serverTimeOut` intervals while some were outstanding.
    ServerTimeout,
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Signalled => "SignalAbort was called",
            Self::PeerExited => "the peer process exited without closing the set",
            Self::PeerMisbehaved => "the peer broke the protocol in shared memory",
            Self::ServerTimeout => "the client did not respond within twice serverTimeOut",
        })
    }
}

/// Which parameter was bad, for [`Error::Invalid`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidReason {
    /// The set name breaks a naming rule.
    Name(NameError),
    /// No device set of this name exists (or it is not reachable by this user).
    NoSuchSet,
    /// No device of the set has this name.
    DeviceName,
    /// The command is not an active command of this device: it belongs to another device or
    /// set, or it was already completed.
    NotActiveCommand,
    /// The buffer handle does not name a live buffer of this set (another set's handle, or one
    /// of a buffer that was freed and reused).
    BufferHandle,
    /// The buffer is not a shared buffer of this set, or not one that may be used this way.
    Buffer,
    /// A buffer size of zero, or one larger than the limits allow.
    BufferSize,
    /// An alignment that is not a power of two, or above 64 KiB.
    Alignment,
    /// A transfer size larger than the buffer, or not a multiple of the block size.
    TransferSize,
    /// The byte count of a completion is larger than the command's size.
    BytesTransferred,
    /// The instance name is not accepted by this backend.
    InstanceName,
    /// A COM implementation returned `VD_E_INVALID` with no more detail.
    Unspecified,
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(e) => write!(f, "bad set name: {e}"),
            Self::NoSuchSet => f.write_str("no device set of this name exists"),
            Self::DeviceName => f.write_str("no device of the set has this name"),
            Self::NotActiveCommand => f.write_str(
                "not an active command of this device (another device's, or already completed)",
            ),
            Self::BufferHandle => f.write_str("the buffer handle names no live buffer of this set"),
            Self::Buffer => f.write_str("not a shared buffer of this set"),
            Self::BufferSize => f.write_str("the buffer size is zero or too large"),
            Self::Alignment => f.write_str("the alignment is not a power of two up to 64 KiB"),
            Self::TransferSize => {
                f.write_str("the transfer size does not fit the buffer or block size")
            }
            Self::BytesTransferred => f.write_str("more bytes reported than the command asked for"),
            Self::InstanceName => f.write_str("this backend does not take an instance name"),
            Self::Unspecified => f.write_str("no detail given"),
        }
    }
}

/// Why a call broke the protocol, for [`Error::Protocol`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolReason {
    /// The call is not allowed in the set's or device's current state (vdi-spec.md §6).
    WrongState(Call),
    /// A set of this name already exists.
    AlreadyExists,
    /// No set of this name exists, or it is not ready for this call.
    NotReady,
    /// The device is already open.
    DeviceAlreadyOpen,
    /// The peer wrote a value into shared memory that breaks the protocol.
    PeerMisbehaved,
    /// The peer speaks another version of the shared-memory layout.
    VersionMismatch,
    /// A COM implementation returned `VD_E_PROTOCOL` with no more detail.
    Unspecified,
}

impl fmt::Display for ProtocolReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongState(call) => write!(f, "{call} is not allowed in the current state"),
            Self::AlreadyExists => f.write_str("a device set of this name already exists"),
            Self::NotReady => f.write_str("the device set is not ready for this call"),
            Self::DeviceAlreadyOpen => f.write_str("the device is already open"),
            Self::PeerMisbehaved => f.write_str("the peer wrote invalid values into shared memory"),
            Self::VersionMismatch => {
                f.write_str("the peer uses another shared-memory layout version")
            }
            Self::Unspecified => f.write_str("no detail given"),
        }
    }
}

/// An operating-system call that failed, for [`Error::System`].
///
/// The code is `errno` on Unix and a Win32 error on Windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SystemError {
    /// The name of the failed call, e.g. `"memfd_create"`.
    pub call: &'static str,
    /// The operating system's error code.
    pub code: i32,
}

impl fmt::Display for SystemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = std::io::Error::from_raw_os_error(self.code);
        write!(f, "{} failed: {msg}", self.call)
    }
}
