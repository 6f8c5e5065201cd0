//! Timeouts as VDI takes them: milliseconds, with 0 to poll and `INFINITE` to wait forever.

use core::time::Duration;

/// How long a blocking call may wait.
///
/// The value is a count of milliseconds as `GetCommand` and `GetConfiguration` take it:
/// [`Timeout::POLL`] (0) does not wait, [`Timeout::INFINITE`] (`0xFFFF_FFFF`) waits until the
/// event, an abort or the peer's death.
///
/// ```
/// use std::time::Duration;
/// use vdi_core::Timeout;
/// assert_eq!(Timeout::from(Duration::from_secs(2)).as_millis(), 2000);
/// assert_eq!(Timeout::INFINITE.as_duration(), None);
/// assert!(Timeout::POLL.is_poll());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timeout(u32);

impl Timeout {
    /// Do not wait: answer at once.
    pub const POLL: Self = Self(0);
    /// Wait without a time limit (`INFINITE`).
    pub const INFINITE: Self = Self(u32::MAX);

    /// A timeout of `ms` milliseconds; `u32::MAX` is [`Timeout::INFINITE`].
    pub const fn from_millis(ms: u32) -> Self {
        Self(ms)
    }

    /// The value as `GetCommand` takes it.
    pub const fn as_millis(self) -> u32 {
        self.0
    }

    /// The time limit, or `None` for [`Timeout::INFINITE`].
    pub const fn as_duration(self) -> Option<Duration> {
        if self.0 == u32::MAX {
            None
        } else {
            Some(Duration::from_millis(self.0 as u64))
        }
    }

    /// Whether this is [`Timeout::POLL`].
    pub const fn is_poll(self) -> bool {
        self.0 == 0
    }

    /// Whether this is [`Timeout::INFINITE`].
    pub const fn is_infinite(self) -> bool {
        self.0 == u32::MAX
    }
}

impl From<Duration> for Timeout {
    /// Rounds up to whole milliseconds; durations of `u32::MAX` ms or more become `INFINITE`.
    fn from(d: Duration) -> Self {
        let ms = d.as_nanos().div_ceil(1_000_000);
        Self(u32::try_from(ms).unwrap_or(u32::MAX))
    }
}

impl From<Option<Duration>> for Timeout {
    /// `None` is [`Timeout::INFINITE`].
    fn from(d: Option<Duration>) -> Self {
        d.map_or(Self::INFINITE, Self::from)
    }
}
