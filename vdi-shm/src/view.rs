//! Byte views of buffers in a shared mapping: the data zones and prefix zones the API hands out.
//!
//! This module and `sys` are the only places that turn shared memory into Rust references.

use std::sync::Arc;

use crate::sys::Mapping;

/// A range of bytes in a shared mapping, kept alive by an `Arc` to the mapping.
///
/// The protocol gives one side at a time the right to touch a buffer: the server until it sends
/// the command, the client until it completes it. Within this process, `&mut self` makes the
/// view exclusive. A peer that breaks the protocol and writes the same bytes concurrently can
/// only change what the bytes say: the view never reaches outside its range, and no control
/// flow of this crate depends on buffer contents.
#[derive(Debug)]
pub(crate) struct BufView {
    map: Arc<Mapping>,
    offset: usize,
    len: usize,
}

impl BufView {
    /// A view of `len` bytes at `offset`; `None` unless the range lies inside the mapping.
    pub(crate) fn new(map: Arc<Mapping>, offset: u64, len: u64) -> Option<Self> {
        let offset = usize::try_from(offset).ok()?;
        let len = usize::try_from(len).ok()?;
        if offset.checked_add(len)? > map.len() {
            return None;
        }
        Some(Self { map, offset, len })
    }

    /// The length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The address of the first byte.
    pub(crate) fn as_ptr(&self) -> *const u8 {
        // In bounds: `new` checked offset + len <= the mapping's length.
        self.map.base().wrapping_add(self.offset)
    }

    /// The bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the range is inside the mapping (checked in `new`), which the Arc keeps
        // mapped for as long as `self` lives; u8 is valid for every bit pattern. Concurrent
        // writes by a misbehaving peer are discussed on the type.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }

    /// The bytes, to write.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: as in `as_slice`; `&mut self` makes this the only view of the range in this
        // process (views are created once per buffer ownership and not cloned).
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr().cast_mut(), self.len) }
    }
}
