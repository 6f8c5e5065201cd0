//! What Windows and the portable Unix backend share besides the wake table: touching every
//! page of a new mapping (they have no `MAP_POPULATE`), the process id, and random values.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
};

use super::{Mapping, page_size};
use crate::sync::{AtomicU32, Ordering};

impl Mapping {
    /// Touches one word in every page, so the pages are faulted in now, not on the data path.
    pub(super) fn touch_pages(&self, write: bool) {
        let page = page_size();
        for i in 0..self.len() / page {
            let w: &AtomicU32 = self.get(i * page);
            if write {
                // Fresh memory no other process has yet: storing 0 changes nothing.
                w.store(0, Ordering::Relaxed);
            } else {
                let _ = w.load(Ordering::Relaxed);
            }
        }
    }
}

/// This process's id.
pub(crate) fn current_pid() -> i32 {
    std::process::id() as i32
}

/// A random 32-bit value (for the per-set handle key and object names): SipHash under std's
/// random keys, which come from the system's generator.
pub(crate) fn random_u32() -> u32 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish() as u32
}
