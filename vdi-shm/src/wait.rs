//! How a blocking call waits: in slices of at most [`SLEEP_SLICE`], against a deadline read
//! from the clock only when the call first has to sleep.

use std::time::{Duration, Instant};

/// The longest a blocked call sleeps before it looks again: a lost wake-up costs at most this.
pub(crate) const SLEEP_SLICE: Duration = Duration::from_millis(100);
/// How long the next sleep of a wait with `deadline` may last: at most [`SLEEP_SLICE`], and
/// `None` once the deadline has passed (`None` deadline: no limit).
pub(crate) fn next_slice(deadline: Option<Instant>) -> Option<Duration> {
    match deadline {
        None => Some(SLEEP_SLICE),
        Some(d) => {
            let now = Instant::now();
            (now < d).then(|| (d - now).min(SLEEP_SLICE))
        }
    }
}

/// The deadline of a call that may wait (GetCommand, the server's completion), read from the
/// clock only when the call first has to sleep: a call whose answer is already there, or comes
/// while it spins, never reads the clock, and an infinite timeout never does. The timeout
/// therefore runs from the call's first sleep rather than from its entry, which is later by
/// one look at the ring and one spin.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LazyDeadline {
    /// The call's timeout (`None`: infinite).
    timeout: Option<Duration>,
    /// When it ends, once the clock was read.
    at: Option<Instant>,
}

impl LazyDeadline {
    /// A deadline `timeout` from the first wait.
    pub(crate) fn new(timeout: vdi_core::Timeout) -> Self {
        Self {
            timeout: timeout.as_duration(),
            at: None,
        }
    }

    /// The length of the next sleep ([`next_slice`]), or `None` once the deadline has passed.
    pub(crate) fn next_slice(&mut self) -> Option<Duration> {
        let Some(timeout) = self.timeout else {
            return Some(SLEEP_SLICE);
        };
        let now = Instant::now();
        let at = *self.at.get_or_insert(now + timeout);
        (now < at).then(|| (at - now).min(SLEEP_SLICE))
    }

    /// Whether the timeout is zero ([`vdi_core::Timeout::POLL`]): the call never waits.
    pub(crate) fn is_poll(&self) -> bool {
        self.timeout == Some(Duration::ZERO)
    }

    /// Whether the deadline has passed (starting it if it had not started).
    pub(crate) fn expired(&mut self) -> bool {
        self.timeout.is_some() && self.next_slice().is_none()
    }
}
