//! Why a run failed: [`EngineError`], one variant per cause, each naming the device, the
//! command and the code involved.

use core::fmt;
use std::time::Duration;

use vdi_core::{AbortReason, CommandCode, CompletionCode};

use crate::{
    format::{FormatError, Region},
    options::OptionsError,
};

/// Who aborted the operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AbortedBy {
    /// The engine, on purpose: the abort fault ([`Faults::abort_at`](crate::Faults::abort_at)).
    Fault,
    /// The client called `SignalAbort` (or closed its set with devices still open).
    Client,
    /// The client process exited without closing the set.
    ClientExited,
    /// The client broke the protocol (it wrote garbage into shared memory), and the backend
    /// aborted the set.
    ClientMisbehaved,
}

impl fmt::Display for AbortedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fault => "the engine aborted the operation (abort fault)",
            Self::Client => "the client aborted the operation (SignalAbort)",
            Self::ClientExited => "the client process exited without closing the set",
            Self::ClientMisbehaved => "the client broke the protocol in shared memory",
        })
    }
}

/// Which limit a [`EngineError::ClientTimeout`] ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutSource {
    /// Twice the client's `serverTimeOut` (vdi-spec.md §3.1), as the engine counted it.
    ClientServerTimeout(Duration),
    /// Twice the client's `serverTimeOut`, as the backend counted it (it aborted the set).
    Backend(Duration),
    /// Twice the engine's override of `serverTimeOut`.
    EngineServerTimeout(Duration),
    /// The engine's bound on the first completion of a device (the configuration timeout).
    ConfigTimeout(Duration),
    /// The engine's idle limit (no `serverTimeOut` applied).
    IdleLimit(Duration),
}

impl fmt::Display for TimeoutSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientServerTimeout(d) => {
                write!(f, "twice the client's serverTimeOut of {}", ms(*d))
            }
            Self::Backend(d) => write!(
                f,
                "twice the client's serverTimeOut of {}, counted by the backend",
                ms(*d)
            ),
            Self::EngineServerTimeout(d) => {
                write!(f, "twice the engine's server timeout of {}", ms(*d))
            }
            Self::ConfigTimeout(d) => write!(
                f,
                "the configuration timeout of {} for the first completion",
                ms(*d)
            ),
            Self::IdleLimit(d) => write!(f, "the engine's idle limit of {}", ms(*d)),
        }
    }
}

/// A duration for a message: milliseconds below 10 s, else seconds.
pub(crate) fn ms(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Why a BACKUP or RESTORE failed.
///
/// [`EngineError::exit_code`] maps each cause to the `vdi-engine` command's exit status.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineError {
    /// The options or the job break a rule.
    Options(OptionsError),
    /// No device set of this name exists: the client has not created it (SQL Server fails the
    /// same way, with error 3041 and "Open failure … 0x80070002"; vdi-spec.md §14.1).
    SetNotFound {
        /// The set's name.
        set: String,
        /// How long the engine kept retrying ([`Options::wait_for_set`](crate::Options::wait_for_set)).
        waited: Duration,
    },
    /// A VDI call failed.
    Vdi {
        /// The call, e.g. `"Open"` or `"SendCommand"`.
        call: &'static str,
        /// The device, for device calls.
        device: Option<String>,
        /// The error.
        error: vdi_core::Error,
    },
    /// The client's `deviceCount` is not the count the options expect.
    DeviceCount {
        /// The count the options name.
        expected: u32,
        /// The client's `deviceCount`.
        client: u32,
    },
    /// The explicit device names do not match the client's `deviceCount`.
    DeviceNames {
        /// Names given.
        names: usize,
        /// The client's `deviceCount`.
        client: u32,
    },
    /// A fault names a device the set does not have.
    FaultDevice {
        /// The device named.
        device: u32,
        /// The client's `deviceCount`.
        client: u32,
    },
    /// The client completed a command with an error code.
    CommandFailed {
        /// The device.
        device: String,
        /// The command.
        command: CommandCode,
        /// The completion code.
        code: CompletionCode,
    },
    /// A Read or Write completed with a byte count other than the one the rules allow: a Write
    /// not fully taken, a successful Read that is short (not the end of the data), or a Read
    /// answered with more bytes than asked.
    ByteCount {
        /// The device.
        device: String,
        /// The command.
        command: CommandCode,
        /// The bytes asked for.
        size: u32,
        /// The bytes the client reported.
        bytes: u32,
        /// The completion code.
        code: CompletionCode,
    },
    /// `VDC_ClearError` was not completed with success (it always must be; vdi-spec.md §6).
    ClearErrorFailed {
        /// The device.
        device: String,
        /// The completion code.
        code: CompletionCode,
    },
    /// Commands were outstanding on a device and none completed for too long; the engine (or
    /// the backend) aborted the operation (vdi-spec.md §3.1, serverTimeOut).
    ClientTimeout {
        /// The device.
        device: String,
        /// How long the engine waited.
        waited: Duration,
        /// The limit that ran out.
        limit: TimeoutSource,
    },
    /// The operation was aborted.
    Aborted {
        /// Who aborted it.
        by: AbortedBy,
        /// The device where the engine noticed (or where the fault fired).
        device: Option<String>,
    },
    /// A restored stream's header block is not a valid header.
    Header {
        /// The device.
        device: String,
        /// What is wrong with it.
        error: FormatError,
    },
    /// A restored stream's header disagrees with the restore or with another device's header.
    HeaderMismatch {
        /// The device.
        device: String,
        /// The field that differs.
        field: &'static str,
        /// The value expected (the restore's, or the first header's).
        expected: u64,
        /// The value found.
        found: u64,
    },
    /// Two devices present the same stream.
    DuplicateStream {
        /// The device.
        device: String,
        /// The stream index both carry.
        index: u32,
        /// The other device.
        other: String,
    },
    /// A restored byte differs from what the backup wrote.
    Mismatch {
        /// The device.
        device: String,
        /// The offset in the device's stream.
        offset: u64,
        /// Where in the stream.
        region: Region,
        /// The byte expected.
        expected: u8,
        /// The byte found.
        found: u8,
        /// When the data holds a page header there: the page and backup it belongs to (data
        /// from elsewhere).
        found_page: Option<crate::database::PageStamp>,
    },
    /// A restored stream ended before the length its header gives.
    Truncated {
        /// The device.
        device: String,
        /// The length the header gives.
        expected: u64,
        /// Where it ended.
        got: u64,
    },
    /// A restored stream goes on past the length its header gives.
    TooLong {
        /// The device.
        device: String,
        /// The length the header gives.
        expected: u64,
    },
    /// A read after the one that met the end of the data returned data.
    DataAfterEnd {
        /// The device.
        device: String,
        /// The stream offset of that read.
        offset: u64,
    },
    /// A thread of the engine failed unexpectedly (a bug in the engine or the backend).
    Internal(&'static str),
    /// This platform has no server backend for the command line (vdi-shm runs on Unix and
    /// Windows).
    Unsupported,
}

impl EngineError {
    /// The `vdi-engine` command's exit status for this error (see [`crate::cli`]).
    pub const fn exit_code(&self) -> u8 {
        use crate::cli::exit;
        match self {
            Self::SetNotFound { .. } => exit::SET_NOT_FOUND,
            Self::Aborted {
                by: AbortedBy::Fault,
                ..
            } => exit::ABORTED_BY_FAULT,
            Self::Aborted { .. } => exit::ABORTED_BY_CLIENT,
            Self::ClientTimeout { .. } => exit::CLIENT_TIMEOUT,
            Self::Header { .. }
            | Self::HeaderMismatch { .. }
            | Self::DuplicateStream { .. }
            | Self::Mismatch { .. }
            | Self::Truncated { .. }
            | Self::TooLong { .. }
            | Self::DataAfterEnd { .. } => exit::DATA_MISMATCH,
            _ => exit::FAILURE,
        }
    }

    /// Whether the restored data was found wrong (mismatch, truncation, bad header, …).
    pub const fn is_data_error(&self) -> bool {
        self.exit_code() == crate::cli::exit::DATA_MISMATCH
    }

    /// The error for an abort a wait returned, when the engine did not cause it.
    pub(crate) fn from_abort(reason: AbortReason, device: &str, client_timeout: u32) -> Self {
        let device = device.to_owned();
        let by = match reason {
            AbortReason::ServerTimeout => {
                let t = Duration::from_millis(u64::from(client_timeout));
                return Self::ClientTimeout {
                    device,
                    waited: t * 2,
                    limit: TimeoutSource::Backend(t),
                };
            }
            AbortReason::PeerExited => AbortedBy::ClientExited,
            AbortReason::PeerMisbehaved => AbortedBy::ClientMisbehaved,
            _ => AbortedBy::Client,
        };
        Self::Aborted {
            by,
            device: Some(device),
        }
    }
}

/// What a completion code means, in a few words, for a message.
fn describe(code: CompletionCode) -> &'static str {
    match code {
        CompletionCode::DISK_FULL
        | CompletionCode::HANDLE_DISK_FULL
        | CompletionCode::EOM_OVERFLOW => "the client reported the device full",
        CompletionCode::NOT_SUPPORTED => "the client does not support the command",
        CompletionCode::OPERATION_ABORTED => "the client aborted the command",
        CompletionCode::IO_DEVICE => "the device is in the IO-ERROR state",
        CompletionCode::END_OF_MEDIA => "the client reported the end of the media",
        _ => "the client reported an error",
    }
}

/// `NAME, number` of a completion code.
struct CodeName(CompletionCode);

impl fmt::Display for CodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.name() {
            Some(name) => write!(f, "{name}, {}", self.0.0),
            None => write!(f, "code {}", self.0.0),
        }
    }
}

/// The name of a command code.
struct Cmd(CommandCode);

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "command code {}", self.0.0),
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Options(e) => write!(f, "invalid options: {e}"),
            Self::SetNotFound { set, waited } => {
                write!(
                    f,
                    "the device set '{set}' does not exist (as SQL Server's error 3041, open failure 0x80070002)"
                )?;
                if !waited.is_zero() {
                    write!(f, " after waiting {}", ms(*waited))?;
                }
                f.write_str(": start the client first")
            }
            Self::Vdi {
                call,
                device: Some(d),
                error,
            } => write!(f, "device '{d}': {call} failed: {error}"),
            Self::Vdi {
                call,
                device: None,
                error,
            } => write!(f, "{call} failed: {error}"),
            Self::DeviceCount { expected, client } => write!(
                f,
                "the client's set has {client} devices, the statement names {expected}"
            ),
            Self::DeviceNames { names, client } => write!(
                f,
                "{names} device names given for the client's {client} devices"
            ),
            Self::FaultDevice { device, client } => write!(
                f,
                "a fault names device {device}, but the client's set has {client} devices"
            ),
            Self::CommandFailed {
                device,
                command,
                code,
            } => write!(
                f,
                "device '{device}': {} failed: {} ({})",
                Cmd(*command),
                describe(*code),
                CodeName(*code)
            ),
            Self::ByteCount {
                device,
                command,
                size,
                bytes,
                code,
            } => {
                let what = if bytes > size {
                    "more bytes than asked"
                } else if *command == CommandCode::READ {
                    "a short read that is not the end of the data"
                } else {
                    "not all of the data taken"
                };
                write!(
                    f,
                    "device '{device}': {} of {size} bytes completed with {bytes} bytes ({}): {what}",
                    Cmd(*command),
                    CodeName(*code)
                )
            }
            Self::ClearErrorFailed { device, code } => write!(
                f,
                "device '{device}': VDC_ClearError was completed with {} instead of success",
                CodeName(*code)
            ),
            Self::ClientTimeout {
                device,
                waited,
                limit,
            } => write!(
                f,
                "device '{device}': the client completed no command for {} with commands outstanding ({limit}); the operation was aborted",
                ms(*waited)
            ),
            Self::Aborted {
                by,
                device: Some(d),
            } => write!(f, "{by} (noticed on device '{d}')"),
            Self::Aborted { by, device: None } => write!(f, "{by}"),
            Self::Header { device, error } => {
                write!(
                    f,
                    "device '{device}': the stream's header is invalid: {error}"
                )
            }
            Self::HeaderMismatch {
                device,
                field,
                expected,
                found,
            } => write!(
                f,
                "device '{device}': the stream's header gives {field} {found}, expected {expected}"
            ),
            Self::DuplicateStream {
                device,
                index,
                other,
            } => write!(
                f,
                "device '{device}' carries stream {index}, as device '{other}' does"
            ),
            Self::Mismatch {
                device,
                offset,
                region,
                expected,
                found,
                found_page,
            } => {
                write!(
                    f,
                    "device '{device}': data mismatch at stream offset {offset} ({region}): expected {expected:#04x}, found {found:#04x}"
                )?;
                if let Some(p) = found_page {
                    write!(
                        f,
                        "; the data there is page {} of backup {}",
                        p.page, p.seed
                    )?;
                }
                Ok(())
            }
            Self::Truncated {
                device,
                expected,
                got,
            } => write!(
                f,
                "device '{device}': the stream ended after {got} bytes, but its header promises {expected} (truncated)"
            ),
            Self::TooLong { device, expected } => write!(
                f,
                "device '{device}': the stream goes on past the {expected} bytes its header promises"
            ),
            Self::DataAfterEnd { device, offset } => write!(
                f,
                "device '{device}': a read at stream offset {offset} returned data after the end of the data was reported"
            ),
            Self::Internal(what) => write!(f, "internal error: {what}"),
            Self::Unsupported => f.write_str(
                "no VDI server backend on this platform (the engine's command line runs on Unix and Windows)",
            ),
        }
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Options(e) => Some(e),
            Self::Vdi { error, .. } => Some(error),
            Self::Header { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl From<OptionsError> for EngineError {
    fn from(e: OptionsError) -> Self {
        Self::Options(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_cause() {
        let e = EngineError::CommandFailed {
            device: "s".into(),
            command: CommandCode::WRITE,
            code: CompletionCode::DISK_FULL,
        };
        assert_eq!(
            e.to_string(),
            "device 's': VDC_Write failed: the client reported the device full (ERROR_DISK_FULL, 112)"
        );
        let e = EngineError::SetNotFound {
            set: "x".into(),
            waited: Duration::ZERO,
        };
        assert!(e.to_string().contains("3041"), "{e}");
        assert_eq!(e.exit_code(), crate::cli::exit::SET_NOT_FOUND);
        let e = EngineError::from_abort(AbortReason::ServerTimeout, "d", 200);
        assert!(matches!(e, EngineError::ClientTimeout { .. }));
        assert!(e.to_string().contains("400 ms"), "{e}");
        for e in [
            EngineError::Internal("x"),
            EngineError::Aborted {
                by: AbortedBy::Client,
                device: None,
            },
            EngineError::TooLong {
                device: "d".into(),
                expected: 1,
            },
        ] {
            let s = e.to_string();
            assert!(!s.ends_with('.'), "{s}");
            assert!(s.chars().next().is_some_and(|c| !c.is_uppercase()), "{s}");
        }
    }
}
