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
//! The word lives in a sealed memfd the parent creates (through vdi-shm's hidden `floor`
//! module, so this crate has no `unsafe` code) and hands to the child as its standard input, so
//! nothing is left behind in the file system whatever happens.

use std::{
    os::fd::AsFd,
    process::Stdio,
    sync::atomic::{AtomicU32, Ordering},
    time::Instant,
};

use rustix::thread::futex;

use vdi_shm::floor::SharedWord;

use crate::util::{self, Context, Count, Peer, Result, Watchdog};

/// The page the parent created, from this process's standard input.
fn word_from_stdin() -> Result<SharedWord> {
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("dup of standard input (the floor memfd)")?;
    SharedWord::open(fd).context("standard input is not the floor memfd")
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
    let (shared, fd) = SharedWord::create().context("the floor's shared page")?;
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
    let shared = word_from_stdin()?;
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
