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
}

impl Segments {
    pub(crate) fn new() -> Self {
        Self {
            maps: Mutex::new(vec![None; MAX_SEGMENTS as usize]),
            arrived: Condvar::new(),
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
}
