//! One writable view of each byte: the rule both backends apply before they hand out a slice of
//! shared memory that may be written.
//!
//! Two views able to write the same bytes in one process would be two `&mut` to the same memory.
//! The protocol gives each buffer to one holder at a time, but a caller can map a handle twice,
//! or map the handle of a command it still holds, and a misbehaving peer can name overlapping
//! buffers. A backend claims a buffer's byte range in its process's [`LeaseTable`] before it
//! makes a view of it and releases the claim when the view is gone, so each of those cases fails
//! instead.
//!
//! The table is pure (no lock, no I/O). [`SharedLeases`] is the table behind a lock, with a
//! [`Lease`] that gives its range back when it drops: what a backend keeps per process, or per
//! set, so that each view holds its lease.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
};

/// The byte ranges that writable views are using, per address space.
///
/// A space is whatever the backend's addresses are relative to: a shared-memory segment id in
/// vdi-shm, the process's one address space (0) in vdi-win. The rule:
///
/// - a range `start..end` with `start < end` is granted when it overlaps no granted range of the
///   same space (adjacent ranges are distinct bytes);
/// - an empty range (`start == end`) aliases nothing: it is always granted, and holds nothing;
/// - a reversed range (`start > end`) names no bytes at all and is refused.
///
/// ```
/// use vdi_core::LeaseTable;
///
/// let mut t = LeaseTable::default();
/// let a = t.claim(0, 100, 200).unwrap();
/// assert!(t.claim(0, 150, 250).is_none()); // overlaps `a`
/// let b = t.claim(1, 150, 250).unwrap(); // another space
/// t.release(a);
/// t.release(b);
/// assert!(t.is_empty());
/// ```
#[derive(Debug, Default)]
pub struct LeaseTable {
    /// (space, start) -> end, for every granted non-empty range.
    ranges: BTreeMap<(u64, u64), u64>,
}

/// A granted range, to be given back with [`LeaseTable::release`] once the view it guards is
/// gone. Deliberately neither `Clone` nor `Copy`: each claim is released once.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a claim holds its range until it is released"]
pub struct Claim {
    /// (space, start) of a non-empty range; `None` for an empty one.
    key: Option<(u64, u64)>,
}

impl LeaseTable {
    /// Claims bytes `start..end` of `space`; `None` when the range is reversed or overlaps a
    /// range already claimed in the same space (see the rule on [`LeaseTable`]).
    pub fn claim(&mut self, space: u64, start: u64, end: u64) -> Option<Claim> {
        if start > end {
            return None;
        }
        if start == end {
            // Nothing to claim: an empty view aliases nothing.
            return Some(Claim { key: None });
        }
        // The last range starting at or before `start` must end by it...
        let before = self.ranges.range((space, 0)..=(space, start)).next_back();
        if before.is_some_and(|(_, &e)| e > start) {
            return None;
        }
        // ...and the first starting after it must start at or past `end`.
        let after = self
            .ranges
            .range((space, start.saturating_add(1))..=(space, u64::MAX))
            .next();
        if after.is_some_and(|(&(_, s), _)| s < end) {
            return None;
        }
        self.ranges.insert((space, start), end);
        Some(Claim {
            key: Some((space, start)),
        })
    }

    /// Gives a claimed range back.
    pub fn release(&mut self, claim: Claim) {
        if let Some(key) = claim.key {
            self.ranges.remove(&key);
        }
    }

    /// Whether no range is claimed (an empty claim holds none).
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// A [`LeaseTable`] behind a lock, shared by the views it guards: each claim is a [`Lease`]
/// that gives its range back when it drops.
///
/// ```
/// use std::sync::Arc;
/// use vdi_core::SharedLeases;
///
/// let leases = Arc::new(SharedLeases::default());
/// let a = SharedLeases::claim(&leases, 0, 100, 200).unwrap();
/// assert!(SharedLeases::claim(&leases, 0, 150, 160).is_none());
/// drop(a);
/// assert!(leases.is_empty());
/// ```
#[derive(Debug, Default)]
pub struct SharedLeases(Mutex<LeaseTable>);

impl SharedLeases {
    /// Claims bytes `start..end` of `space` (the rule of [`LeaseTable::claim`]); the lease holds
    /// them until it drops.
    pub fn claim(this: &Arc<Self>, space: u64, start: u64, end: u64) -> Option<Lease> {
        let claim = this.table().claim(space, start, end)?;
        Some(Lease {
            leases: Arc::clone(this),
            claim: Some(claim),
        })
    }

    /// Whether no range is claimed.
    pub fn is_empty(&self) -> bool {
        self.table().is_empty()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, LeaseTable> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A range claimed in [`SharedLeases`]; dropping it gives the range back.
#[derive(Debug)]
#[must_use = "a lease holds its range until it drops"]
pub struct Lease {
    leases: Arc<SharedLeases>,
    claim: Option<Claim>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            self.leases.table().release(claim);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{LeaseTable, SharedLeases};

    #[test]
    fn overlaps_are_refused_and_released_ranges_free() {
        let mut t = LeaseTable::default();
        let a = t.claim(0, 100, 200).unwrap();
        // Adjacent ranges are distinct bytes.
        let b = t.claim(0, 200, 300).unwrap();
        let c = t.claim(0, 50, 100).unwrap();
        for (start, end) in [
            (100, 200),
            (150, 160),
            (99, 101),
            (199, 201),
            (0, 1000),
            (60, 70),
        ] {
            assert!(t.claim(0, start, end).is_none(), "{start}..{end}");
        }
        t.release(a);
        let again = t.claim(0, 120, 180).unwrap();
        assert!(t.claim(0, 100, 121).is_none());
        for claim in [b, c, again] {
            t.release(claim);
        }
        assert!(t.is_empty());
        let all = t.claim(0, 0, u64::MAX).unwrap();
        t.release(all);
        assert!(t.is_empty());
    }

    #[test]
    fn empty_ranges_alias_nothing_and_reversed_ones_name_nothing() {
        let mut t = LeaseTable::default();
        let a = t.claim(0, 100, 200).unwrap();
        // Empty, even inside a claimed range: granted, and it holds nothing.
        for at in [0, 100, 150, 200, u64::MAX] {
            let e = t.claim(0, at, at).unwrap();
            t.release(e);
        }
        let e = t.claim(0, 150, 150).unwrap();
        t.release(a);
        assert!(t.is_empty());
        t.release(e);
        assert!(t.claim(0, 200, 100).is_none());
        assert!(t.claim(0, 1, 0).is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn spaces_are_independent() {
        let mut t = LeaseTable::default();
        let a = t.claim(3, 0, 4096).unwrap();
        let b = t.claim(4, 0, 4096).unwrap();
        assert!(t.claim(3, 4095, 4097).is_none());
        // The last byte of space 3's range does not reach into space 4, nor the reverse.
        let c = t.claim(2, 4095, u64::MAX).unwrap();
        let d = t.claim(u64::MAX, 0, u64::MAX).unwrap();
        for claim in [a, b, c, d] {
            t.release(claim);
        }
        assert!(t.is_empty());
    }

    #[test]
    fn shared_leases_hold_their_range_until_dropped() {
        let leases = Arc::new(SharedLeases::default());
        let a = SharedLeases::claim(&leases, 0, 100, 200).unwrap();
        let b = SharedLeases::claim(&leases, 0, 200, 300).unwrap();
        assert!(SharedLeases::claim(&leases, 0, 199, 201).is_none());
        // Another space, and an empty range, alias nothing.
        let other = SharedLeases::claim(&leases, 1, 150, 250).unwrap();
        assert!(SharedLeases::claim(&leases, 0, 150, 150).is_some());
        drop(a);
        let again = SharedLeases::claim(&leases, 0, 120, 180).unwrap();
        assert!(SharedLeases::claim(&leases, 0, 100, 121).is_none());
        drop((b, other, again));
        assert!(leases.is_empty());
        drop(SharedLeases::claim(&leases, 0, 0, u64::MAX).unwrap());
    }
}
