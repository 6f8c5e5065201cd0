//! One caller at a time, within each caller's deadline: how the bindings to foreign libraries
//! serialize the `GetCommand` calls of one device, which those libraries do not promise to take
//! from two threads at once.

use std::{
    sync::{Condvar, Mutex, PoisonError},
    time::Instant,
};

/// A turn that one thread holds at a time.
///
/// ```
/// use std::time::{Duration, Instant};
/// use vdi_core::Turn;
///
/// let turn = Turn::default();
/// let first = turn.take(None).unwrap();
/// // A second caller gives up at its deadline while the first holds the turn.
/// assert!(turn.take(Some(Instant::now() + Duration::from_millis(10))).is_none());
/// drop(first);
/// assert!(turn.take(Some(Instant::now())).is_some());
/// ```
#[derive(Debug, Default)]
pub struct Turn {
    busy: Mutex<bool>,
    free: Condvar,
}

impl Turn {
    /// Waits until no other thread holds the turn, or until `deadline` (`None`: no limit).
    pub fn take(&self, deadline: Option<Instant>) -> Option<TurnGuard<'_>> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        while *busy {
            busy = match deadline {
                None => self.free.wait(busy).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    self.free
                        .wait_timeout(busy, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        *busy = true;
        Some(TurnGuard(self))
    }
}

/// A thread's turn; dropping it passes the turn on.
#[derive(Debug)]
#[must_use = "the turn passes on when the guard drops"]
pub struct TurnGuard<'a>(&'a Turn);

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(PoisonError::into_inner) = false;
        self.0.free.notify_one();
    }
}
