//! The floors, written here: what a round trip between two processes costs with nothing but
//! one shared word.
//!
//! - **Cache line**: both processes spin on one 32-bit word in a shared mapping; the parent
//!   writes an odd value, the child answers with the next even one. Each round trip moves that
//!   one cache line to the child's core and back: nothing shared-memory IPC does can be cheaper.
//! - **Futex**: the same word, but the child never spins: it sleeps in `FUTEX_WAIT` and the
//!   parent wakes it with `FUTEX_WAKE` after each store (the parent spins for the answer, as
//!   vdi-shm's server does in the asleep rows). One sleep and one wake per round trip: the floor
//!   of any transport whose client is asleep.
//!
//! The word lives in a memfd the parent creates and hands to the child as its standard input,
//! so nothing is left behind in the file system whatever happens. This module holds the crate's
//! only `unsafe` code: mapping that memfd and viewing its first word as an atomic.

use std::{
    fs::File,
    os::fd::{AsFd, OwnedFd},
    process::Stdio,
    sync::atomic::{AtomicU32, Ordering},
    time::Instant,
};

use rustix::thread::futex;

use crate::util::{self, Context, Count, Peer, Result, Watchdog};

/// One page of shared memory holding the word both processes bounce.
#[derive(Debug)]
struct SharedWord {
    map: memmap2::MmapMut,
}

impl SharedWord {
    const LEN: u64 = 4096;

    /// A new zeroed page in a memfd, mapped here; the memfd goes to the child.
    fn create() -> Result<(Self, OwnedFd)> {
        let fd = rustix::fs::memfd_create("vdi-bench-floor", rustix::fs::MemfdFlags::CLOEXEC)
            .context("memfd_create for the floor")?;
        rustix::fs::ftruncate(&fd, Self::LEN).context("ftruncate of the floor memfd")?;
        let file = File::from(fd.try_clone().context("dup of the floor memfd")?);
        Ok((Self::map(&file)?, fd))
    }

    /// The page the parent created, from this process's standard input.
    fn from_stdin() -> Result<Self> {
        let fd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .context("dup of standard input (the floor memfd)")?;
        let file = File::from(fd);
        let len = file.metadata().context("fstat of the floor memfd")?.len();
        if len != Self::LEN {
            return Err(util::Error::msg(format!(
                "standard input is not the floor memfd ({len} bytes)"
            )));
        }
        Self::map(&file)
    }

    fn map(file: &File) -> Result<Self> {
        // SAFETY: the memfd has no name in any file system, so only the two processes of this
        // pair can reach it; its length is set once, before either maps it, and never changed;
        // both processes touch the memory only through `AtomicU32` (see `word`), so no Rust
        // reference ever sees a concurrent non-atomic write.
        let map = unsafe { memmap2::MmapMut::map_mut(file) }.context("mmap of the floor memfd")?;
        Ok(Self { map })
    }

    /// The shared word, at the start of the page.
    fn word(&self) -> &AtomicU32 {
        let ptr = self.map.as_ptr().cast::<AtomicU32>();
        // SAFETY: the mapping is one page long and page-aligned, so its first 4 bytes are an
        // aligned `u32` inside it; `AtomicU32` is valid for any bit pattern; the reference
        // borrows `self`, so it cannot outlive the mapping; every access, here and in the peer,
        // is atomic.
        unsafe { &*ptr }
    }
}

/// Which floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Floor {
    /// Both sides spin on the word.
    CacheLine,
    /// The child sleeps on the word's futex; the parent wakes it and spins for the answer.
    Futex,
}

impl Floor {
    fn role(self) -> &'static str {
        match self {
            Self::CacheLine => "floor-cacheline",
            Self::Futex => "floor-futex",
        }
    }
}

/// The word's value that tells the child to stop (odd, like every value the parent writes).
const STOP: u32 = u32::MAX;

/// Timed round trips in nanoseconds, as `count` says.
pub(crate) fn round_trips(kind: Floor, count: Count) -> Result<Vec<u64>> {
    let (shared, fd) = SharedWord::create()?;
    let word = shared.word();
    let mut peer = Peer::spawn(kind.role(), &[], Some(Stdio::from(fd)))?;
    let mut samples = Vec::with_capacity(count.n);
    let start = Instant::now();
    let mut i = 0usize;
    let wake = |w: &AtomicU32| -> Result<()> {
        if kind == Floor::Futex {
            futex::wake(w, futex::Flags::empty(), 1).context("FUTEX_WAKE")?;
        }
        Ok(())
    };
    while !count.done(samples.len(), start) {
        count.pause();
        let v = 2 * (i as u32) + 1;
        let t = Instant::now();
        word.store(v, Ordering::Release);
        wake(word)?;
        let mut dog = Watchdog::new("floor round trip");
        while word.load(Ordering::Acquire) != v + 1 {
            std::hint::spin_loop();
            if dog.tick() {
                dog.check()?;
                peer.check_alive()?;
            }
        }
        let ns = util::ns_since(t);
        if count.timed(i, start) {
            samples.push(ns);
        }
        i += 1;
    }
    word.store(STOP, Ordering::Release);
    wake(word)?;
    peer.finish()?;
    Ok(samples)
}

/// The child side of [`round_trips`]: answers each odd value with the next even one until
/// [`STOP`].
pub(crate) fn child(kind: Floor, args: &[String]) -> Result<()> {
    let _ = args;
    let shared = SharedWord::from_stdin()?;
    let word = shared.word();
    let timeout = futex::Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    // The last value answered (0: none yet).
    let mut last = 0u32;
    loop {
        let mut dog = Watchdog::new("floor child");
        let v = loop {
            let v = word.load(Ordering::Acquire);
            if !v.is_multiple_of(2) && v != last {
                break v;
            }
            match kind {
                Floor::CacheLine => {
                    std::hint::spin_loop();
                    if dog.tick() {
                        dog.check()?;
                    }
                }
                // EAGAIN (the word changed), EINTR and ETIMEDOUT all mean: look again.
                Floor::Futex => {
                    let _ = futex::wait(word, futex::Flags::empty(), v, Some(&timeout));
                    dog.check()?;
                }
            }
        };
        if v == STOP {
            return Ok(());
        }
        word.store(v + 1, Ordering::Release);
        last = v;
    }
}
