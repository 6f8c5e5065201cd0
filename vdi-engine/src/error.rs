//! Why a run failed: [`EngineError`], one variant per cause, each naming the device, the
//! command and the code involved.

use core::fmt;
use std::{process, time::Duration};

use vdi_core::{AbortReason, CommandCode, CompletionCode};

use crate::{
    format::{FormatError, Region},
    options::OptionsError,
};

/// The exit codes of the `vdi-engine` command ([`Exit::code`] is the number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum Exit {
    /// The operation succeeded.
    Success = 0,
    /// Any failure without a code of its own (a client's error completion, a VDI call that
    /// failed, bad options).
    Failure = 1,
    /// The command line could not be parsed (clap's code).
    Usage = 2,
    /// The device set does not exist (SQL Server's error 3041).
    SetNotFound = 3,
    /// The client aborted the operation (SignalAbort), exited, or broke the protocol.
    AbortedByClient = 4,
    /// The engine aborted the operation on purpose (`--abort-at`).
    AbortedByFault = 5,
    /// The client stopped answering: no completion within twice `serverTimeOut` (or the
    /// engine's limits).
    ClientTimeout = 6,
    /// The restored data is not what the backup wrote (mismatch, truncated or too long
    /// stream, bad or inconsistent header).
    DataMismatch = 7,
}

impl Exit {
    /// The process's exit status.
    pub const fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for process::ExitCode {
    fn from(e: Exit) -> Self {
        Self::from(e.code())
    }
}

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
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The options or the job break a rule.
    #[error("invalid options: {0}")]
    Options(#[from] OptionsError),
    /// No device set of this name exists: the client has not created it (SQL Server fails the
    /// same way, with error 3041 and "Open failure … 0x80070002"; vdi-spec.md §14.1).
    #[error(
        "the device set '{set}' does not exist (as SQL Server's error 3041, open failure \
         0x80070002){}: start the client first",
        after_waiting(*.waited)
    )]
    SetNotFound {
        /// The set's name.
        set: String,
        /// How long the engine kept retrying ([`Options::wait_for_set`](crate::Options::wait_for_set)).
        waited: Duration,
    },
    /// A VDI call failed.
    #[error("{}{call} failed: {error}", on_device(.device.as_deref()))]
    Vdi {
        /// The call, e.g. `"Open"` or `"SendCommand"`.
        call: &'static str,
        /// The device, for device calls.
        device: Option<String>,
        /// The error.
        #[source]
        error: vdi_core::Error,
    },
    /// The client's `deviceCount` is not the count the options expect.
    #[error("the client's set has {client} devices, the statement names {expected}")]
    DeviceCount {
        /// The count the options name.
        expected: u32,
        /// The client's `deviceCount`.
        client: u32,
    },
    /// The explicit device names do not match the client's `deviceCount`.
    #[error("{names} device names given for the client's {client} devices")]
    DeviceNames {
        /// Names given.
        names: usize,
        /// The client's `deviceCount`.
        client: u32,
    },
    /// A fault names a device the set does not have.
    #[error("a fault names device {device}, but the client's set has {client} devices")]
    FaultDevice {
        /// The device named.
        device: u32,
        /// The client's `deviceCount`.
        client: u32,
    },
    /// The client completed a command with an error code.
    #[error(
        "device '{device}': {} failed: {} ({})",
        Cmd(*.command),
        describe(*.code),
        CodeName(*.code)
    )]
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
    #[error(
        "device '{device}': {} of {size} bytes completed with {bytes} bytes ({}): {}",
        Cmd(*.command),
        CodeName(*.code),
        byte_count_fault(*.command, *.size, *.bytes)
    )]
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
    #[error(
        "device '{device}': VDC_ClearError was completed with {} instead of success",
        CodeName(*.code)
    )]
    ClearErrorFailed {
        /// The device.
        device: String,
        /// The completion code.
        code: CompletionCode,
    },
    /// Commands were outstanding on a device and none completed for too long; the engine (or
    /// the backend) aborted the operation (vdi-spec.md §3.1, serverTimeOut).
    #[error(
        "device '{device}': the client completed no command for {} with commands outstanding \
         ({limit}); the operation was aborted",
        ms(*.waited)
    )]
    ClientTimeout {
        /// The device.
        device: String,
        /// How long the engine waited.
        waited: Duration,
        /// The limit that ran out.
        limit: TimeoutSource,
    },
    /// The operation was aborted.
    #[error("{by}{}", noticed_on(.device.as_deref()))]
    Aborted {
        /// Who aborted it.
        by: AbortedBy,
        /// The device where the engine noticed (or where the fault fired).
        device: Option<String>,
    },
    /// A restored stream's header block is not a valid header.
    #[error("device '{device}': the stream's header is invalid: {error}")]
    Header {
        /// The device.
        device: String,
        /// What is wrong with it.
        #[source]
        error: FormatError,
    },
    /// A restored stream's header disagrees with the restore or with another device's header.
    #[error("device '{device}': the stream's header gives {field} {found}, expected {expected}")]
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
    #[error("device '{device}' carries stream {index}, as device '{other}' does")]
    DuplicateStream {
        /// The device.
        device: String,
        /// The stream index both carry.
        index: u32,
        /// The other device.
        other: String,
    },
    /// A restored byte differs from what the backup wrote.
    #[error(
        "device '{device}': data mismatch at stream offset {offset} ({region}): expected \
         {expected:#04x}, found {found:#04x}{}",
        page_note(*.found_page)
    )]
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
    #[error(
        "device '{device}': the stream ended after {got} bytes, but its header promises \
         {expected} (truncated)"
    )]
    Truncated {
        /// The device.
        device: String,
        /// The length the header gives.
        expected: u64,
        /// Where it ended.
        got: u64,
    },
    /// A restored stream goes on past the length its header gives.
    #[error("device '{device}': the stream goes on past the {expected} bytes its header promises")]
    TooLong {
        /// The device.
        device: String,
        /// The length the header gives.
        expected: u64,
    },
    /// A read after the one that met the end of the data returned data.
    #[error(
        "device '{device}': a read at stream offset {offset} returned data after the end of \
         the data was reported"
    )]
    DataAfterEnd {
        /// The device.
        device: String,
        /// The stream offset of that read.
        offset: u64,
    },
    /// A thread of the engine failed unexpectedly (a bug in the engine or the backend).
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// This platform has no server backend for the command line (vdi-shm runs on Unix and
    /// Windows).
    #[error(
        "no VDI server backend on this platform (the engine's command line runs on Unix and Windows)"
    )]
    Unsupported,
}

impl EngineError {
    /// The `vdi-engine` command's exit status for this error.
    pub const fn exit_code(&self) -> Exit {
        match self {
            Self::SetNotFound { .. } => Exit::SetNotFound,
            Self::Aborted {
                by: AbortedBy::Fault,
                ..
            } => Exit::AbortedByFault,
            Self::Aborted { .. } => Exit::AbortedByClient,
            Self::ClientTimeout { .. } => Exit::ClientTimeout,
            Self::Header { .. }
            | Self::HeaderMismatch { .. }
            | Self::DuplicateStream { .. }
            | Self::Mismatch { .. }
            | Self::Truncated { .. }
            | Self::TooLong { .. }
            | Self::DataAfterEnd { .. } => Exit::DataMismatch,
            _ => Exit::Failure,
        }
    }

    /// Whether the restored data was found wrong (mismatch, truncation, bad header, …).
    pub const fn is_data_error(&self) -> bool {
        matches!(self.exit_code(), Exit::DataMismatch)
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

/// `" after waiting 2 s"` when the engine waited for the set, else nothing.
fn after_waiting(waited: Duration) -> String {
    if waited.is_zero() {
        String::new()
    } else {
        format!(" after waiting {}", ms(waited))
    }
}

/// `"device 'd': "` for a device call, else nothing.
fn on_device(device: Option<&str>) -> String {
    device.map_or_else(String::new, |d| format!("device '{d}': "))
}

/// `" (noticed on device 'd')"` when a device noticed the abort, else nothing.
fn noticed_on(device: Option<&str>) -> String {
    device.map_or_else(String::new, |d| format!(" (noticed on device '{d}')"))
}

/// What is wrong with a Read's or Write's byte count, in a few words.
fn byte_count_fault(command: CommandCode, size: u32, bytes: u32) -> &'static str {
    if bytes > size {
        "more bytes than asked"
    } else if command == CommandCode::READ {
        "a short read that is not the end of the data"
    } else {
        "not all of the data taken"
    }
}

/// `"; the data there is page 3 of backup 7"` when a mismatch holds another page, else nothing.
fn page_note(found_page: Option<crate::database::PageStamp>) -> String {
    found_page.map_or_else(String::new, |p| {
        format!("; the data there is page {} of backup {}", p.page, p.seed)
    })
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
        assert_eq!(e.exit_code(), Exit::SetNotFound);
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
