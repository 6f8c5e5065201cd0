//! The emulated futex of the platforms with no address-keyed wait across processes (Windows,
//! and the portable Unix backend): each wake word of a mapping gets a kernel object that
//! travels with the mapping ([`WakeObject`]: an event on Windows, a socket pair on Unix), and
//! this module keeps, per process, the live mappings and their words' objects, and finds a
//! word's object by its address.
//!
//! The platform module owns one [`Registry`] (a `static`), registers each mapping it maps and
//! unregisters it on drop, and answers `futex_wait`/`futex_wake_all` through
//! [`Registry::wait`] and [`Registry::wake_all`]; a word that belongs to no mapping's wake
//! table is the platform's to wait on locally (only threads of this process can reach it).

use std::{
    ptr,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use crate::sync::AtomicU32;

/// The kernel object of one wake word, as the platform makes it.
pub(crate) trait WakeObject {
    /// Sleeps while `word` holds `expected`, for at most `timeout`; returns early on a change
    /// seen before sleeping, on a [`wake`](Self::wake) from any process, or spuriously. The
    /// caller holds the object's table for the whole call, so the object stays open.
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Duration);

    /// Wakes every thread, in any process, sleeping on this object.
    fn wake(&self);
}

/// The objects of a mapping's wake words, by byte offset (sorted).
#[derive(Debug)]
pub(crate) struct WakeTable<W> {
    words: Vec<(usize, W)>,
}

impl<W> WakeTable<W> {
    /// The table of `words` (offset and object), in any order.
    pub(crate) fn new(mut words: Vec<(usize, W)>) -> Self {
        words.sort_unstable_by_key(|(o, _)| *o);
        Self { words }
    }

    /// The object of the wake word at byte `offset`, if it is one.
    pub(crate) fn object(&self, offset: usize) -> Option<&W> {
        self.words
            .binary_search_by_key(&offset, |(o, _)| *o)
            .ok()
            .map(|i| &self.words[i].1)
    }

    /// The objects in the order of their (sorted) offsets: the order they travel in.
    pub(crate) fn objects(&self) -> impl Iterator<Item = &W> {
        self.words.iter().map(|(_, w)| w)
    }
}

/// A live mapping of this process: where it is, its tag, and its wake words' objects.
#[derive(Debug)]
struct Registered<W> {
    base: usize,
    len: usize,
    tag: String,
    wake: Arc<WakeTable<W>>,
}

/// Every live mapping of this process, so a wait or wake on a word finds the word's object.
#[derive(Debug)]
pub(crate) struct Registry<W> {
    mappings: RwLock<Vec<Registered<W>>>,
}

impl<W> Registry<W> {
    /// An empty registry, for a `static`.
    pub(crate) const fn new() -> Self {
        Self {
            mappings: RwLock::new(Vec::new()),
        }
    }

    /// Records the mapping of `len` bytes at `base`, tagged `tag`, with its wake table.
    pub(crate) fn register(&self, base: usize, len: usize, tag: &str, wake: &Arc<WakeTable<W>>) {
        self.mappings
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Registered {
                base,
                len,
                tag: tag.to_owned(),
                wake: Arc::clone(wake),
            });
    }

    /// Forgets the mapping at `base` (as it is unmapped).
    pub(crate) fn unregister(&self, base: usize) {
        self.mappings
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|r| r.base != base);
    }

    /// How many live mappings have a tag that starts with `prefix` (test support).
    pub(crate) fn count_tagged(&self, prefix: &str) -> usize {
        self.mappings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|r| r.tag.starts_with(prefix))
            .count()
    }

    /// The wake table and the offset of `word`, if it is a wake word of a live mapping.
    fn lookup(&self, word: &AtomicU32) -> Option<(Arc<WakeTable<W>>, usize)> {
        let addr = ptr::from_ref(word) as usize;
        let all = self.mappings.read().unwrap_or_else(PoisonError::into_inner);
        let r = all
            .iter()
            .find(|r| (r.base..r.base + r.len).contains(&addr))?;
        r.wake.object(addr - r.base)?;
        Some((Arc::clone(&r.wake), addr - r.base))
    }
}

impl<W: WakeObject> Registry<W> {
    /// [`WakeObject::wait`] on `word`'s object; `false` (at once) when `word` is no wake word
    /// of a live mapping.
    pub(crate) fn wait(&self, word: &AtomicU32, expected: u32, timeout: Duration) -> bool {
        let Some((table, offset)) = self.lookup(word) else {
            return false;
        };
        if let Some(object) = table.object(offset) {
            object.wait(word, expected, timeout);
        }
        true
    }

    /// [`WakeObject::wake`] on `word`'s object; `false` when `word` is no wake word of a live
    /// mapping.
    pub(crate) fn wake_all(&self, word: &AtomicU32) -> bool {
        let Some((table, offset)) = self.lookup(word) else {
            return false;
        };
        if let Some(object) = table.object(offset) {
            object.wake();
        }
        true
    }
}
