//! Commands as owned values, completed exactly once: by [`AsyncCommand::complete`], by the last
//! clone of the [`Bytes`] of [`AsyncCommand::into_bytes`], or, for a command dropped without
//! either, with `ERROR_OPERATION_ABORTED`.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use bytes::Bytes;
use tracing::{debug, trace, warn};
use vdi_core::{
    BufferHandle, ClientCommand, ClientDevice, ClientDeviceSet, CommandCode, Completion,
    CompletionCode, Error,
};

use crate::{AsyncSet, device::DeviceShared};

/// A command taken from a device: owned, and completed exactly once.
///
/// [`complete`](Self::complete) consumes it. A Write's data can instead be turned into
/// [`Bytes`] without a copy ([`into_bytes`](Self::into_bytes)); the command is then completed
/// with success when the last clone of those bytes is dropped. A command dropped without either
/// is completed with `ERROR_OPERATION_ABORTED` (995), and a warning is logged: the engine is
/// never left waiting for it, and never told that data it sent was stored.
///
/// Every completion frees a place under the device's bound on outstanding commands
/// ([`AsyncDevice::with_max_outstanding`](crate::AsyncDevice::with_max_outstanding)).
pub struct AsyncCommand<D: ClientDevice> {
    command: Option<D::Command>,
    shared: Arc<DeviceShared<D>>,
    code: CommandCode,
    size: u32,
    position: u64,
    sequence: u64,
}

impl<D: ClientDevice> AsyncCommand<D> {
    pub(crate) fn new(command: D::Command, shared: Arc<DeviceShared<D>>, sequence: u64) -> Self {
        Self {
            code: command.code(),
            size: command.size(),
            position: command.position(),
            command: Some(command),
            shared,
            sequence,
        }
    }

    /// The command code.
    pub fn code(&self) -> CommandCode {
        self.code
    }

    /// The `size` field: the byte count of a Read or Write; overloaded by some commands.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The `position` field (RandomAccess Read/Write, SetPosition).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The command's place in its device's command order: 0 for the first command the device
    /// handed out, then 1, 2, … in the order the engine sent them.
    ///
    /// Tasks that take commands of one device concurrently can restore the stream order from it.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The index of the device the command belongs to.
    pub fn device_index(&self) -> u32 {
        self.shared.index
    }

    /// The name of the device the command belongs to.
    pub fn device_name(&self) -> &str {
        &self.shared.name
    }

    /// The data the engine wrote (Write): `size` bytes; empty for commands without a buffer.
    pub fn data(&self) -> &[u8] {
        self.command.as_ref().map_or(&[], |c| c.data())
    }

    /// The space to fill (Read): `size` bytes; empty for commands without a buffer.
    pub fn data_mut(&mut self) -> &mut [u8] {
        match &mut self.command {
            Some(c) => c.data_mut(),
            None => &mut [],
        }
    }

    /// The client's prefix zone directly below the data; empty for commands without a buffer.
    pub fn prefix_zone(&mut self) -> &mut [u8] {
        match &mut self.command {
            Some(c) => c.prefix_zone(),
            None => &mut [],
        }
    }

    /// The backend's command.
    pub fn inner(&self) -> &D::Command {
        self.command
            .as_ref()
            .expect("an AsyncCommand holds its command until it is completed")
    }

    /// A process-independent handle of the command's buffer (`GetBufferHandle`), for a
    /// secondary process that maps it ([`AsyncSet::map_buffer_handle`]) and does the work;
    /// this process still completes the command.
    ///
    /// # Errors
    ///
    /// `VD_E_INVALID` for a command without a buffer or of another set.
    pub fn buffer_handle<S>(&self, set: &AsyncSet<S>) -> Result<BufferHandle, Error>
    where
        S: ClientDeviceSet<Device = D> + 'static,
    {
        set.inner().buffer_handle(self.inner())
    }

    /// Completes the command (`CompleteCommand`), consuming it.
    ///
    /// This does not wait: it calls the backend's `complete` on the calling thread. The
    /// shared-memory backend only pushes an entry to a ring (and wakes the engine if it sleeps);
    /// a COM binding may take sqlvdi's lock briefly.
    ///
    /// # Errors
    ///
    /// `VD_E_INVALID` for a byte count above the command's size (the command is then completed
    /// with `ERROR_OPERATION_ABORTED` by the backend), `VD_E_ABORT` after an abort (the
    /// completion is ignored). Either way the command is done.
    pub fn complete(mut self, completion: Completion) -> Result<(), Error> {
        self.finish(completion)
    }

    /// The command's data as [`Bytes`] that share the command's buffer (no copy); the command
    /// is completed with success and its full size when the last clone of the bytes is dropped.
    ///
    /// Only a Write has data to hand out: for any other command the command comes back
    /// unchanged in `Err`.
    ///
    /// While any clone lives, the command stays outstanding and counts against the device's
    /// bound; holding the bytes is how a slow sink pushes back on the engine.
    ///
    /// # Errors
    ///
    /// The command itself, when it is not a Write.
    pub fn into_bytes(self) -> Result<Bytes, Self>
    where
        D: 'static,
    {
        self.into_bytes_with_verdict(None)
    }

    /// As [`into_bytes`](Self::into_bytes); if `verdict` holds a non-zero code when the last
    /// clone drops, the command is completed with that code instead of success.
    pub(crate) fn into_bytes_with_verdict(
        self,
        verdict: Option<Arc<Verdict>>,
    ) -> Result<Bytes, Self>
    where
        D: 'static,
    {
        if self.code != CommandCode::WRITE {
            return Err(self);
        }
        Ok(Bytes::from_owner(BytesOwner {
            command: self,
            verdict,
        }))
    }

    /// Completes with `ERROR_OPERATION_ABORTED` without the warning of a dropped command: for
    /// commands nobody can take any more (all handles of the device were dropped).
    pub(crate) fn abort_quietly(mut self) {
        debug!(code = ?self.code, device = %self.shared.name, "completing with ERROR_OPERATION_ABORTED: no handle of the device is left");
        let _ = self.finish(Completion::aborted());
    }

    fn finish(&mut self, completion: Completion) -> Result<(), Error> {
        let Some(command) = self.command.take() else {
            return Ok(());
        };
        let result = self.shared.device.complete(command, completion);
        trace!(
            code = ?self.code,
            completion = ?completion.code,
            bytes = completion.bytes_transferred,
            device = %self.shared.name,
            "completed"
        );
        self.shared.completed();
        if let Err(e) = &result {
            debug!(code = ?self.code, device = %self.shared.name, error = %e, "CompleteCommand failed");
        }
        result
    }
}

// The command is never pinned in place: its data lives in the backend's buffer.
impl<D: ClientDevice> Unpin for AsyncCommand<D> {}

impl<D: ClientDevice> Drop for AsyncCommand<D> {
    fn drop(&mut self) {
        if self.command.is_some() {
            warn!(
                code = ?self.code,
                device = %self.shared.name,
                "command dropped without complete(); completing with ERROR_OPERATION_ABORTED"
            );
            let _ = self.finish(Completion::aborted());
        }
    }
}

impl<D: ClientDevice> fmt::Debug for AsyncCommand<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncCommand")
            .field("code", &self.code)
            .field("size", &self.size)
            .field("position", &self.position)
            .field("sequence", &self.sequence)
            .field("device", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// The outcome a Write handed out as [`Bytes`] gets when its last clone drops: success unless
/// a code was set.
#[derive(Debug, Default)]
pub(crate) struct Verdict(AtomicU32);

impl Verdict {
    /// Makes the command fail with `code` (the first code set wins).
    pub(crate) fn fail(&self, code: CompletionCode) {
        let _ = self
            .0
            .compare_exchange(0, code.0, Ordering::AcqRel, Ordering::Acquire);
    }

    fn code(&self) -> CompletionCode {
        CompletionCode(self.0.load(Ordering::Acquire))
    }
}

/// The owner behind the [`Bytes`] of a Write: completes the command when dropped.
struct BytesOwner<D: ClientDevice> {
    command: AsyncCommand<D>,
    verdict: Option<Arc<Verdict>>,
}

impl<D: ClientDevice> AsRef<[u8]> for BytesOwner<D> {
    fn as_ref(&self) -> &[u8] {
        self.command.data()
    }
}

impl<D: ClientDevice> Drop for BytesOwner<D> {
    fn drop(&mut self) {
        let code = self
            .verdict
            .as_ref()
            .map_or(CompletionCode::SUCCESS, |v| v.code());
        let completion = if code == CompletionCode::SUCCESS {
            Completion::success(self.command.size)
        } else {
            Completion::with_code(code)
        };
        let _ = self.command.finish(completion);
    }
}
