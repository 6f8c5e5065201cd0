//! The one mapping routine of both Unix backends (`linux.rs`, `posix/`): a shared object
//! mapped read-write at a multiple of [`MAP_ALIGN`].

use std::{ffi::c_void, os::fd::BorrowedFd, ptr::NonNull};

use rustix::{
    io::Errno,
    mm::{MapFlags, ProtFlags},
};

use super::MAP_ALIGN;

/// Maps the first `len` bytes of `object` shared and read-write at an address that is a
/// multiple of [`MAP_ALIGN`] (`populate`: with `MAP_POPULATE`, Linux only), and returns it.
///
/// Data zones may need up to 64 KiB alignment in every process's address space, and mmap
/// promises only page alignment: this reserves `len + MAP_ALIGN` bytes of address space, maps
/// the object over an aligned part of the reservation, and gives the slack back. If the
/// object cannot be mapped, the aligned part of the reservation is left reserved (inaccessible
/// address space, not memory): after a failed `MAP_FIXED` the kernel may already have removed
/// it, and unmapping it then could remove another thread's mapping that took its place.
///
/// # Safety
///
/// The caller must make sure that the pages of `object` stay backed while the mapping is
/// used, or that losing them (an object a peer shrinks) costs a SIGBUS only: `object` is a
/// shared memory object (never a file whose pages can block), and the caller has checked, or
/// made, its size to be at least `len`.
pub(crate) unsafe fn map_aligned(
    object: BorrowedFd<'_>,
    len: usize,
    populate: bool,
) -> Result<NonNull<u8>, Errno> {
    let reserve = len.checked_add(MAP_ALIGN).ok_or(Errno::NOMEM)?;
    // SAFETY: a new, inaccessible, private anonymous reservation at an address the kernel
    // chooses; nothing existing is touched.
    let base = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            reserve,
            ProtFlags::empty(),
            MapFlags::PRIVATE,
        )
    }?;
    let start = base as usize;
    let aligned = start.next_multiple_of(MAP_ALIGN);
    #[cfg(target_os = "linux")]
    let populate = if populate {
        MapFlags::POPULATE
    } else {
        MapFlags::empty()
    };
    #[cfg(not(target_os = "linux"))]
    let populate = {
        let _ = populate;
        MapFlags::empty()
    };
    let flags = MapFlags::SHARED | MapFlags::FIXED | populate;
    // SAFETY: `aligned..aligned + len` lies inside the reservation made above, which this
    // function owns and nothing else uses, so MAP_FIXED replaces only that, and mmap itself
    // creates no reference; the object's pages stay backed, or their loss costs a SIGBUS only
    // (this function's contract).
    let mapped = unsafe {
        rustix::mm::mmap(
            aligned as *mut c_void,
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            flags,
            object,
            0,
        )
    };
    let head = aligned - start;
    let tail = reserve - head - len;
    // SAFETY: the slack before and after the aligned part is the rest of our own reservation;
    // no reference into it exists, and the aligned part is not touched.
    unsafe {
        if head > 0 {
            let _ = rustix::mm::munmap(base, head);
        }
        if tail > 0 {
            let _ = rustix::mm::munmap((aligned + len) as *mut c_void, tail);
        }
    }
    let ptr = mapped?;
    NonNull::new(ptr.cast::<u8>()).ok_or(Errno::NOMEM)
}
