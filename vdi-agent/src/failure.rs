//! How the agent fails: a message for the terminal and an exit code for scripts.

use std::{fmt, io, process::ExitCode};

/// The exit codes of `vdi-agent`, one per kind of failure a script may want to tell apart.
///
/// 0 is success. The values are part of the command line's interface: see `vdi-agent --help`
/// (`cli::EXIT_CODES` lists them for people, in the same order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Anything not listed below.
    Other = 1,
    /// A usage error: a bad flag or value, found before anything started (clap's code too).
    Usage = 2,
    /// The engine failed or aborted the operation, or died.
    Engine = 3,
    /// No engine configured the set in time.
    NoEngine = 4,
    /// A stripe or the manifest is missing, corrupt or truncated.
    Data = 5,
    /// An I/O error on the agent's own files (disk full, permissions, ...).
    Io = 6,
    /// The backup is incomplete: the engine never confirmed its end (aborted, interrupted, or
    /// the agent died), so it is not restored and does not verify as good.
    Incomplete = 7,
    /// The agent was interrupted (Ctrl-C or SIGTERM): it aborted the operation and said so.
    Interrupted = 8,
}

/// A failure of a command: what went wrong, in words, and the exit code that goes with it.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) exit: Exit,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }

    pub(crate) fn other(message: impl Into<String>) -> Self {
        Self::new(Exit::Other, message)
    }

    pub(crate) fn data(message: impl Into<String>) -> Self {
        Self::new(Exit::Data, message)
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub(crate) fn incomplete(message: impl Into<String>) -> Self {
        Self::new(Exit::Incomplete, message)
    }

    pub(crate) fn engine(message: impl Into<String>) -> Self {
        Self::new(Exit::Engine, message)
    }

    /// An I/O error on `what` (a file or directory, in words).
    pub(crate) fn io(what: impl fmt::Display, e: &io::Error) -> Self {
        let hint = match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                " (the disk is full: free space or choose another directory)"
            }
            io::ErrorKind::PermissionDenied => " (permission denied: check its owner and mode)",
            _ => "",
        };
        Self::new(Exit::Io, format!("{what}: {e}{hint}"))
    }

    /// The same failure, with `more` said after it.
    pub(crate) fn and(mut self, more: &str) -> Self {
        if !more.is_empty() {
            self.message.push_str("; ");
            self.message.push_str(more);
        }
        self
    }

    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.exit as u8)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The result of an agent command.
pub(crate) type Outcome<T = ()> = Result<T, Failure>;
