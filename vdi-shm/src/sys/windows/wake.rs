//! Wake-ups: a manual-reset event per wake word ([`Event`]), found by address in this
//! process's registry of mappings (`sys/wake_table.rs`); other words wait with
//! `WaitOnAddress` (this process's threads only).

use super::*;

/// A wake word's manual-reset event.
#[derive(Debug)]
pub(super) struct Event(pub(super) OwnedHandle);

impl WakeObject for Event {
    /// Reset, then re-read: a wake that comes after the re-read sets the event again, so the
    /// wait returns at once.
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Duration) {
        reset_event(self.0.as_raw_handle());
        if word.load(Ordering::SeqCst) != expected {
            return;
        }
        // SAFETY: a bounded wait on this event, whose handle `self` keeps open for the call.
        let _ = unsafe { WaitForSingleObject(self.0.as_raw_handle(), millis(timeout)) };
    }

    fn wake(&self) {
        set_event(self.0.as_raw_handle());
    }
}

/// Every live mapping of this process, so a wait or wake on a word finds the word's event.
pub(super) static MAPPINGS: Registry<Event> = Registry::new();

/// Sleeps while `word` holds `expected`, for at most `timeout`; returns early on a change seen
/// before sleeping, on a [`futex_wake_all`] from any process, or spuriously.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    if MAPPINGS.wait(word, expected, timeout) {
        return;
    }
    // Not a wake word: only threads of this process can wake it.
    // SAFETY: `word` and `expected` are valid for reads of 4 bytes for the whole call.
    let _ = unsafe {
        WaitOnAddress(
            word.as_ptr().cast(),
            (&raw const expected).cast(),
            4,
            millis(timeout),
        )
    };
}

/// Wakes every thread, in any process, sleeping on `word`.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    if !MAPPINGS.wake_all(word) {
        // SAFETY: wakes this process's WaitOnAddress waiters on the word's address.
        unsafe { WakeByAddressAll(word.as_ptr().cast()) };
    }
}
