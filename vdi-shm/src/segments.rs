//! The buffer segments a client process has mapped, and how a client thread waits for one that
//! the server announced but the monitor thread has not mapped yet.

use std::{
    sync::{Arc, Condvar, Mutex, PoisonError},
    time::{Duration, Instant},
};

use vdi_core::{Lease, SharedLeases};

use crate::{
    layout::{Control, MAX_SEGMENTS},
    sync::Ordering,
    sys::{Attachment, Mapping},
};

/// Segments by id, filled by the monitor thread as the server's `Segment` messages arrive.
#[derive(Debug)]
pub(crate) struct Segments {
    maps: Mutex<Vec<Option<Arc<Mapping>>>>,
    arrived: Condvar,
    /// The byte ranges of segments that writable views in this process are using, with the
    /// segment id as the address space.
    leases: Arc<SharedLeases>,
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
    /// already leased in this process, or the range is reversed (the rule of
    /// [`vdi_core::LeaseTable`]).
    pub(crate) fn lease(&self, id: u32, start: u64, end: u64) -> Option<Lease> {
        SharedLeases::claim(&self.leases, u64::from(id), start, end)
    }
}

/// The largest buffer segment a client maps (1 TiB).
const MAX_SEGMENT_LEN: u64 = 1 << 40;

/// Maps a segment the server announced, after checking it against the segment table.
pub(crate) fn map_announced(
    control: &Control,
    set: &str,
    id: u32,
    len: u64,
    mut fds: Vec<Attachment>,
) -> Result<Mapping, ()> {
    if id >= MAX_SEGMENTS || len == 0 || len > MAX_SEGMENT_LEN || fds.len() != 1 {
        return Err(());
    }
    if control.segment_len(id).load(Ordering::Acquire) != len {
        return Err(());
    }
    let len = usize::try_from(len).map_err(|_| ())?;
    let tag = format!("vdi-shm:{set}:segment{id}");
    Mapping::open(fds.remove(0), &tag, len, &[]).map_err(|_| ())
}


#[cfg(test)]
mod tests {
    use super::Segments;

    #[test]
    fn leases_follow_the_core_rule_per_segment() {
        let s = Segments::new();
        let a = s.lease(0, 4096, 8192).unwrap();
        assert!(s.lease(0, 8191, 8193).is_none());
        // Another segment's bytes are other bytes.
        let b = s.lease(1, 4096, 8192).unwrap();
        // Adjacent ranges and empty ones alias nothing; a reversed one names nothing.
        let c = s.lease(0, 8192, 12288).unwrap();
        let e = s.lease(0, 6000, 6000).unwrap();
        assert!(s.lease(0, 10, 5).is_none());
        drop((a, b, c, e));
        assert!(s.leases.is_empty());
        drop(s.lease(0, 0, u64::MAX).unwrap());
    }
}
