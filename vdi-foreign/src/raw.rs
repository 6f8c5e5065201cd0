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
///
/// Its data zone stays mapped until it is completed or dropped: the bindings keep the set
/// object alive, and defer the library's `Close` while any command holds its buffer
/// ([`SetState::close`](crate::SetState::close)). What this cannot prevent: after an abort
/// (`SignalAbort`, or the server's), the library completes outstanding commands itself and the
/// server may reuse their buffers while the client still reads or writes them. The bytes stay
/// mapped, so this is wrong data, not a dangling slice, and the client sees the abort at its
/// next call; memory shared with another process is written outside Rust's model either way.
pub struct ActiveCommand {
    cmd: NonNull<VdcCommand>,
    code: CommandCode,
    size: u32,
    position: u64,
    buffer: *mut u8,
    prefix_zone: u32,
    /// A Read or Write whose fields cannot describe a buffer of this set (see
    /// [`ActiveCommand::is_malformed`]): no slice is ever made of it.
    malformed: bool,
}

// SAFETY: the command and its buffer belong to whoever holds the `ActiveCommand` until it is
// completed (the VDI contract); they are plain memory, not tied to a thread or an apartment.
// `&ActiveCommand` allows only reads, so it is not `Sync`, which nothing needs.
unsafe impl Send for ActiveCommand {}

impl ActiveCommand {
    /// The command at `cmd`, its fields read once, here, and checked: a Read or Write with a
    /// data zone (`size` > 0) must have a non-NULL `buffer`, `size` at most `max_size` (the
    /// set's `maxTransferSize`), and its zones, `buffer - prefix_zone .. buffer + size`, must
    /// not wrap around the address space. A command that fails the check is
    /// [malformed](ActiveCommand::is_malformed): it has no data or prefix zone, and is only
    /// fit to be completed.
    ///
    /// # Safety
    ///
    /// `cmd` was returned by a successful `GetCommand` of a device, the command has not been
    /// completed, and the device's set stays alive until this value is completed or dropped:
    /// the `VDC_Command` is readable, and the buffer of a Read or Write command that passes
    /// the check above holds `size` writable bytes, with `prefix_zone` more directly below
    /// them when the set was configured with that prefix zone, all of them this value's until
    /// it is completed. (The check bounds what the caller vouches for: it need not trust a
    /// `size` or a NULL `buffer` the library returns.)
    pub unsafe fn from_raw(cmd: NonNull<VdcCommand>, prefix_zone: u32, max_size: u32) -> Self {
        // SAFETY: the caller's contract: a readable command. It is read once; only the copy is
        // used from here on.
        let raw = unsafe { cmd.as_ptr().read() };
        let code = CommandCode(raw.command_code);
        let addr = raw.buffer as usize;
        let malformed = code.has_buffer()
            && raw.size > 0
            && (raw.buffer.is_null()
                || raw.size > max_size
                || addr.checked_sub(prefix_zone as usize).is_none()
                || addr.checked_add(raw.size as usize).is_none());
        Self {
            cmd,
            code,
            size: raw.size,
            position: raw.position,
            buffer: raw.buffer,
            prefix_zone,
            malformed,
        }
    }

    /// Whether the library returned a Read or Write whose fields cannot describe a buffer of
    /// the set: a NULL `buffer` with a `size`, a `size` above the set's `maxTransferSize`, or
    /// zones that wrap around the address space. Such a command has no data zone: the
    /// binding completes it with an error instead of handing it out.
    pub fn is_malformed(&self) -> bool {
        self.malformed
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
            // SAFETY: a Read or Write command that passed `from_raw`'s check (`data_len` is
            // `None` for a malformed one) has `size` bytes at its non-NULL buffer, valid and ours
            // until the command is completed, which needs `self` by value (`from_raw`'s
            // contract, upheld by the binding that made this value).
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
        // SAFETY: `from_raw`'s contract: every buffer that passed its check has `len` client
        // bytes directly below its data zone, ours until completion, and the check made sure
        // `buffer - len` does not wrap; `&mut self` makes this the only view.
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

    /// The data zone's length, for commands that have one (never a malformed one).
    fn data_len(&self) -> Option<usize> {
        (self.code.has_buffer() && !self.malformed && !self.buffer.is_null() && self.size > 0)
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
            .field("malformed", &self.malformed)
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

#[cfg(test)]
mod tests {
    use std::ptr::{self, NonNull};

    use vdi_core::{CommandCode, VdcCommand};

    use super::ActiveCommand;

    fn command(code: CommandCode, size: u32, buffer: *mut u8) -> VdcCommand {
        VdcCommand {
            command_code: code.0,
            size,
            position: 0,
            buffer,
        }
    }

    fn active(raw: &mut VdcCommand, prefix_zone: u32, max_size: u32) -> ActiveCommand {
        // SAFETY: `raw` is a readable command; the tests give a Read or Write a buffer of
        // `size` bytes with `prefix_zone` below it whenever they expect the check to pass, and
        // make no slice of one that fails it.
        unsafe { ActiveCommand::from_raw(NonNull::from(raw), prefix_zone, max_size) }
    }

    #[test]
    fn a_well_formed_write_has_its_zones() {
        let mut memory = [7u8; 16 + 64];
        let data = memory[16..].as_mut_ptr();
        let mut raw = command(CommandCode::WRITE, 64, data);
        let mut cmd = active(&mut raw, 16, 64);
        assert!(!cmd.is_malformed());
        assert_eq!(cmd.data().len(), 64);
        assert_eq!(cmd.prefix_zone().len(), 16);
    }

    #[test]
    fn a_size_above_the_transfer_size_is_malformed() {
        let mut memory = [0u8; 64];
        let mut raw = command(CommandCode::READ, 64 << 20, memory.as_mut_ptr());
        let mut cmd = active(&mut raw, 0, 4 << 20);
        assert!(cmd.is_malformed());
        assert!(cmd.data().is_empty());
        assert!(cmd.data_mut().is_empty());
        assert!(cmd.prefix_zone().is_empty());
        assert_eq!(cmd.zones(), None);
        assert!(!cmd.has_buffer());
        // The fields stay readable, for the log.
        assert_eq!(cmd.size(), 64 << 20);
    }

    #[test]
    fn a_null_buffer_with_a_size_is_malformed() {
        let mut raw = command(CommandCode::WRITE, 512, ptr::null_mut());
        let cmd = active(&mut raw, 0, 4 << 20);
        assert!(cmd.is_malformed());
        assert!(cmd.data().is_empty());
    }

    #[test]
    fn zones_that_wrap_are_malformed() {
        // A prefix zone below address 0x10 and a data zone past the top of the address space:
        // neither is memory, and `buffer.sub`/`add` would wrap. The pointers are never used.
        let mut raw = command(CommandCode::WRITE, 64, ptr::without_provenance_mut(0x10));
        assert!(active(&mut raw, 0x100, 4 << 20).is_malformed());
        let mut raw = command(
            CommandCode::READ,
            64,
            ptr::without_provenance_mut(usize::MAX - 8),
        );
        assert!(active(&mut raw, 0, 4 << 20).is_malformed());
    }

    #[test]
    fn commands_without_a_buffer_are_never_malformed() {
        // Other commands overload `size` (SkipMarks, SetPosition's whence) and carry no buffer.
        let mut raw = command(CommandCode::FLUSH, u32::MAX, ptr::null_mut());
        let cmd = active(&mut raw, 0, 64);
        assert!(!cmd.is_malformed());
        assert!(cmd.data().is_empty());
        let mut raw = command(CommandCode::WRITE, 0, ptr::null_mut());
        assert!(!active(&mut raw, 0, 64).is_malformed());
    }
}
