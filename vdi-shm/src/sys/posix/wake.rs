//! Wake-ups: a socket pair per wake word ([`WakePair`]), found by address in this
//! process's registry of mappings (`sys/wake_table.rs`); other words wait on a local
//! condition variable.

use super::*;

/// One wake word's socket pair: `rx` is polled and drained, `tx` is written.
#[derive(Debug)]
pub(super) struct WakePair {
    pub(super) rx: OwnedFd,
    pub(super) tx: OwnedFd,
}

/// Every live mapping of this process, so a wait or wake on a word finds the word's sockets.
pub(super) static MAPPINGS: Registry<WakePair> = Registry::new();

/// Waits and wakes on words that are not wake words of a mapping (only threads of this process
/// can reach those): one lock and condition variable for all of them.
pub(super) static LOCAL: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());

impl WakeObject for WakePair {
    /// Drain, re-read, poll. A wake is a byte sent after the word changed, so:
    /// - a change before the re-read is seen by the re-read, and the wait returns at once;
    /// - a change after the re-read sends its byte after the drain, so the poll returns at once;
    /// - every waiter already in poll sees the byte (poll does not consume it): a wake wakes all;
    /// - the byte stays until the next waiter drains it, so it costs no one a spurious return.
    ///
    /// The one race left is two waiters on one word: if the second drains between the first's
    /// re-read and its poll, it takes the first's byte, and the first sleeps until its timeout
    /// (the callers' slice, at most 100 ms), never longer. Two sleepers on one word are rare (a
    /// ring has one consumer), and a word is woken only when a sleeper is announced. A wake object
    /// that a peer broke (closed its end) stays readable; the wait then sleeps out its timeout
    /// instead of returning at once, so a broken peer costs latency, not a spinning thread.
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Duration) {
        let healthy = drain(self.rx.as_fd());
        if word.load(Ordering::SeqCst) != expected {
            return;
        }
        if healthy {
            wait_fd(self.rx.as_fd(), PollFlags::IN, timeout);
        } else {
            std::thread::sleep(timeout);
        }
    }

    fn wake(&self) {
        signal(self.tx.as_fd());
    }
}

/// Sleeps while `word` holds `expected`, for at most `timeout`; returns early on a change seen
/// before sleeping, on a [`futex_wake_all`] from any process, or spuriously. Why no wake-up is
/// lost, and what one race costs, is written at [`WakePair`]'s `wait`.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    if MAPPINGS.wait(word, expected, timeout) {
        return;
    }
    let guard = LOCAL.0.lock().unwrap_or_else(PoisonError::into_inner);
    if word.load(Ordering::SeqCst) == expected {
        let _ = LOCAL.1.wait_timeout(guard, timeout);
    }
}

/// Wakes every thread, in any process, sleeping on `word`.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    if !MAPPINGS.wake_all(word) {
        drop(LOCAL.0.lock().unwrap_or_else(PoisonError::into_inner));
        LOCAL.1.notify_all();
    }
}
