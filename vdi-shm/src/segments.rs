//! The buffer segments a client process has mapped, and how a client thread waits for one that
//! the server announced but the monitor thread has not mapped yet.

use std::{
    sync::{Arc, Condvar, Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::{layout::MAX_SEGMENTS, sys::Mapping};

/// Segments by id, filled by the monitor thread as the server's `Segment` messages arrive.
#[derive(Debug)]
pub(crate) struct Segments {
    maps: Mutex<Vec<Option<Arc<Mapping>>>>,
    arrived: Condvar,
    leases: Arc<Leases>,
}

/// The byte ranges of segments that writable views in this process are using.
///
/// Two views able to write the same bytes in one process would be two `&mut` to the same
/// memory. The protocol gives each buffer to one holder at a time, but a caller can map a
/// handle twice, or map the handle of a command it still holds, and a misbehaving server can
/// name overlapping buffers; a lease makes each of those fail instead.
#[derive(Debug, Default)]
pub(crate) struct Leases(Mutex<Vec<(u32, u64, u64)>>);

/// A leased range; dropping it returns the range.
#[derive(Debug)]
pub(crate) struct Lease {
    leases: Arc<Leases>,
    range: (u32, u64, u64),
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut v = self.leases.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = v.iter().position(|r| *r == self.range) {
            v.swap_remove(i);
        }
    }
}

impl Segments {
    pub(crate) fn new() -> Self {
        Self {
            maps: Mutex::new(vec![None; MAX_SEGMENTS as usize]),
            arrived: Condvar::new(),
            leases: Arc::default(),
        }
    }

    /// Records a mapped segment; returns false if the id was already taken (a peer error).
    pub(crate) fn insert(&self, id: u32, map: Mapping) -> bool {
        let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(slot) = maps.get_mut(id as usize) else {
            return false;
        };
        if slot.is_some() {
            return false;
        }
        *slot = Some(Arc::new(map));
        self.arrived.notify_all();
        true
    }

    /// Waits up to `limit` for segment `id`, giving up early when `stop()` says so.
    pub(crate) fn wait_for(
        &self,
        id: u32,
        limit: Duration,
        stop: impl Fn() -> bool,
    ) -> Option<Arc<Mapping>> {
        let deadline = Instant::now() + limit;
        let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(m) = maps.get(id as usize).cloned().flatten() {
                return Some(m);
            }
            let now = Instant::now();
            if now >= deadline || stop() || id >= MAX_SEGMENTS {
                return None;
            }
            let slice = (deadline - now).min(Duration::from_millis(50));
            maps = self
                .arrived
                .wait_timeout(maps, slice)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Every mapped segment with its id.
    pub(crate) fn all(&self) -> Vec<(u32, Arc<Mapping>)> {
        let maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        maps.iter()
            .enumerate()
            .filter_map(|(i, m)| m.clone().map(|m| (i as u32, m)))
            .collect()
    }

    /// Leases bytes `start..end` of segment `id` for a writable view; `None` if any part is
    /// already leased in this process (or the range is empty or reversed).
    pub(crate) fn lease(&self, id: u32, start: u64, end: u64) -> Option<Lease> {
        if start >= end {
            return None;
        }
        let mut v = self.leases.0.lock().unwrap_or_else(PoisonError::into_inner);
        if v.iter().any(|&(s, a, b)| s == id && start < b && a < end) {
            return None;
        }
        v.push((id, start, end));
        Some(Lease {
            leases: Arc::clone(&self.leases),
            range: (id, start, end),
        })
    }
}
