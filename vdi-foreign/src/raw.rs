//! The commands and mapped buffers a VDI library hands out, as owned values.

use std::{fmt, ptr::NonNull, slice};

use vdi_core::{CommandCode, VdcCommand};

/// A command `GetCommand` returned and that has not been completed yet.
///
/// It owns the command, and its buffer, until the binding completes it (which consumes it):
/// only then does the buffer go back to the server. The fields are copied when the command
/// arrives (the `VDC_Command` is read-only to the client).
///
/// It holds no library object, so it may move to another thread (`Send`), to be completed
/// there.
pub struct ActiveCommand {
    cmd: NonNull<VdcCommand>,
    code: CommandCode,
    size: u32,
    position: u64,
    buffer: *mut u8,
    prefix_zone: u32,
}

// SAFETY: the command and its buffer belong to whoever holds the `ActiveCommand` until it is
// completed (the VDI contract); they are plain memory, not tied to a thread or an apartment.
// `&ActiveCommand` allows only reads, so it is not `Sync`, which nothing needs.
unsafe impl Send for ActiveCommand {}

impl ActiveCommand {
    /// The command at `cmd`, its fields read once, here.
    ///
    /// # Safety
    ///
    /// `cmd` was returned by a successful `GetCommand` of a device, the command has not been
    /// completed, and the device's set stays alive until this value is completed or dropped:
    /// the `VDC_Command` is readable, and a Read or Write command's buffer holds `size`
    /// writable bytes, with `prefix_zone` more directly below them when the set was configured
    /// with that prefix zone, all of them this value's until it is completed.
    pub unsafe fn from_raw(cmd: NonNull<VdcCommand>, prefix_zone: u32) -> Self {
        // SAFETY: the caller's contract: a readable command.
        let raw = unsafe { cmd.as_ptr().read() };
        Self {
            cmd,
            code: CommandCode(raw.command_code),
            size: raw.size,
            position: raw.position,
            buffer: raw.buffer,
            prefix_zone,
        }
    }

    /// The `VDC_Command` pointer, as `CompleteCommand` takes it back.
    pub fn as_ptr(&self) -> *mut VdcCommand {
        self.cmd.as_ptr()
    }

    /// `commandCode`.
    pub fn code(&self) -> CommandCode {
        self.code
    }

    /// `size` (the byte count of Read and Write; overloaded by other commands).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// `position`.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// `buffer`, as the server sent it (meaningful for Read and Write only).
    pub fn buffer(&self) -> *mut u8 {
        self.buffer
    }

    /// The data zone: `size` bytes at `buffer` for Read and Write, empty otherwise (other
    /// commands overload `size` and carry no buffer).
    pub fn data(&self) -> &[u8] {
        match self.data_len() {
            // SAFETY: a Read or Write command's buffer holds at least `size` bytes, valid and
            // ours until the command is completed, which needs `self` by value (`from_raw`'s
            // contract).
            Some(len) => unsafe { slice::from_raw_parts(self.buffer, len) },
            None => &[],
        }
    }

    /// The data zone, to write (see [`ActiveCommand::data`]).
    pub fn data_mut(&mut self) -> &mut [u8] {
        match self.data_len() {
            // SAFETY: as in `data`; `&mut self` makes this the only view of the buffer.
            Some(len) => unsafe { slice::from_raw_parts_mut(self.buffer, len) },
            None => &mut [],
        }
    }

    /// The prefix zone: the `prefixZoneSize` bytes directly below the data zone of a Read or
    /// Write; empty otherwise.
    pub fn prefix_zone(&mut self) -> &mut [u8] {
        if self.data_len().is_none() || self.prefix_zone == 0 {
            return &mut [];
        }
        let len = self.prefix_zone as usize;
        // SAFETY: `from_raw`'s contract: every buffer has `len` client bytes directly below its
        // data zone, ours until completion; `&mut self` makes this the only view.
        unsafe { slice::from_raw_parts_mut(self.buffer.sub(len), len) }
    }

    /// The addresses the command's buffer covers, `start..end` (prefix zone and data zone),
    /// for commands that have one.
    pub fn zones(&self) -> Option<(usize, usize)> {
        let len = self.data_len()?;
        let data = self.buffer as usize;
        Some((
            data.saturating_sub(self.prefix_zone as usize),
            data.saturating_add(len),
        ))
    }

    /// Whether the command carries a buffer (a Read or Write with one).
    pub fn has_buffer(&self) -> bool {
        self.data_len().is_some()
    }

    /// The data zone's length, for commands that have one.
    fn data_len(&self) -> Option<usize> {
        (self.code.has_buffer() && !self.buffer.is_null() && self.size > 0)
            .then_some(self.size as usize)
    }
}

impl fmt::Debug for ActiveCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActiveCommand")
            .field("cmd", &self.cmd)
            .field("code", &self.code)
            .field("size", &self.size)
            .field("position", &self.position)
            .field("buffer", &self.buffer)
            .finish()
    }
}

/// A buffer mapped from a handle (`MapBufferHandle`), with the length its user vouches for.
pub struct MappedView {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the view is plain shared memory of the set, not tied to a thread or an apartment;
// `&mut self` is needed to write it.
unsafe impl Send for MappedView {}

impl MappedView {
    /// A view of `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` was returned by `MapBufferHandle` for a buffer of at least `len` bytes mapped
    /// read-write in this process, which stay mapped while the view lives, and nothing else in
    /// this process reads or writes those bytes while the view lives (the command that carries
    /// the buffer is held, uncompleted, by the process that made the handle, and it does not
    /// touch the buffer meanwhile).
    pub unsafe fn new(ptr: NonNull<u8>, len: usize) -> Self {
        Self { ptr, len }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `new`'s contract: `len` valid bytes, not written by anyone else meanwhile.
        unsafe { slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, to write.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `new`'s contract, and `&mut self` makes this the only view.
        unsafe { slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl fmt::Debug for MappedView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MappedView({:p}, {} bytes)", self.ptr, self.len)
    }
}
