//! Support for vdi-bench's floors, not an API: one 32-bit word in shared memory that two
//! processes bounce, with nothing else of the protocol around it.
//!
//! It is here, on top of the platform layer's `Mapping`, so that the benchmark harness needs
//! no `unsafe` code of its own: the mapping is a sealed memfd (Linux) that the creator hands to
//! the peer as a descriptor, and the word is viewed only as an atomic.

use std::os::fd::OwnedFd;

use vdi_core::Error;

use crate::{
    sync::AtomicU32,
    sys::{self, Mapping},
};

/// What the memfd is called (diagnostics only).
const TAG: &str = "vdi-bench-floor";

/// One page of shared memory holding a word two processes bounce.
#[derive(Debug)]
pub struct SharedWord(Mapping);

impl SharedWord {
    /// A new zeroed page, mapped here, and its descriptor for the peer ([`SharedWord::open`]).
    ///
    /// # Errors
    ///
    /// A system error of the memfd, its seals or the mapping.
    pub fn create() -> Result<(Self, OwnedFd), Error> {
        let map = Mapping::create(TAG, sys::page_size(), &[0])?;
        let fd = map
            .fd()
            .try_clone_to_owned()
            .map_err(|e| sys::io_error("dup", &e))?;
        Ok((Self(map), fd))
    }

    /// Maps the page a peer made with [`SharedWord::create`] and sent as `fd`.
    ///
    /// # Errors
    ///
    /// `VD_E_PROTOCOL` when `fd` is not such a page (not a sealed memfd of one page).
    pub fn open(fd: OwnedFd) -> Result<Self, Error> {
        Ok(Self(Mapping::open(fd, TAG, sys::page_size(), &[0])?))
    }

    /// The shared word, at the start of the page.
    pub fn word(&self) -> &AtomicU32 {
        self.0.get(0)
    }
}

#[cfg(test)]
mod tests {
    use crate::sync::Ordering;

    use super::SharedWord;

    #[test]
    fn the_peer_sees_the_same_word_and_nothing_else_opens() {
        let (a, fd) = SharedWord::create().unwrap();
        let b = SharedWord::open(fd).unwrap();
        a.word().store(7, Ordering::Release);
        assert_eq!(b.word().load(Ordering::Acquire), 7);
        // Not a sealed memfd of one page: refused, whatever it is.
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        assert!(SharedWord::open(file.into()).is_err());
    }
}
