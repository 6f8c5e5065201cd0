//! The command and the mapped buffer as the client traits see them, over [`ActiveCommand`]
//! and [`MappedView`], for any binding that implements [`ForeignDevice`].

use std::{fmt, sync::Arc};

use tracing::warn;
use vdi_core::{
    AbortReason, BufferHandle, CommandCode, Completion, Error, InvalidReason, Lease, SharedLeases,
};

use crate::{ActiveCommand, MappedView};

/// A binding's device, as its commands need it: to be completed, and to abort the set when a
/// command's buffer is still in another view of this process.
pub trait ForeignDevice: fmt::Debug + Send + Sync {
    /// The device's index in its set.
    fn index(&self) -> u32;
    /// The device's name, for logs.
    fn name(&self) -> &str;
    /// The address of the device's set, only ever compared (a command belongs to one set).
    fn set_id(&self) -> usize;
    /// `CompleteCommand` of `cmd`, a command this device returned, after the state machine's
    /// check.
    fn complete_raw(&self, cmd: ActiveCommand, completion: Completion) -> Result<(), Error>;
    /// `SignalAbort` of the device's set, on this process's own initiative.
    fn abort_set(&self);
}

/// A command taken with `GetCommand`: complete it with
/// [`ClientDevice::complete`](vdi_core::ClientDevice::complete).
///
/// Its data are the library's shared buffer itself, no copy. Dropping a command without
/// completing it completes it with `ERROR_OPERATION_ABORTED` and logs a warning, so the server
/// is never left waiting.
#[derive(Debug)]
pub struct Command {
    device: Arc<dyn ForeignDevice>,
    /// `None` only once `complete` or `drop` took it.
    cmd: Option<ActiveCommand>,
    /// This process's claim on the buffer's bytes, for commands that carry one.
    lease: Option<Lease>,
}

impl Command {
    /// The command `cmd` that `device` returned, with this process's claim on its buffer's
    /// bytes in `leases` (the views of the set's buffers in this process).
    ///
    /// # Errors
    ///
    /// `VD_E_ABORT` when those bytes are still in another view of this process (a mapping kept
    /// after the command it came from was completed): two views of the same bytes must not
    /// exist, so the command is completed with `ERROR_OPERATION_ABORTED` and the set aborted, as
    /// when a peer breaks the protocol. The same for a [malformed](ActiveCommand::is_malformed)
    /// command (a Read or Write whose size or buffer the library got wrong), whose data zone
    /// cannot be trusted.
    pub fn arrive(
        device: Arc<dyn ForeignDevice>,
        cmd: ActiveCommand,
        leases: &Arc<SharedLeases>,
    ) -> Result<Self, Error> {
        if cmd.is_malformed() {
            warn!(device = %device.name(), code = ?cmd.code(), size = cmd.size(), buffer = ?cmd.buffer(), "GetCommand: the library returned a Read or Write with a NULL buffer, a size above the set's maxTransferSize, or zones that wrap; aborting");
            let _ = device.complete_raw(cmd, Completion::aborted());
            device.abort_set();
            return Err(Error::Aborted(AbortReason::Signalled));
        }
        let lease = match cmd.zones() {
            None => None,
            Some((start, end)) => {
                if let Some(lease) = SharedLeases::claim(leases, 0, start as u64, end as u64) {
                    Some(lease)
                } else {
                    warn!(device = %device.name(), "GetCommand: the buffer is still mapped in this process (a view from MapBufferHandle outlived its command); aborting");
                    let _ = device.complete_raw(cmd, Completion::aborted());
                    device.abort_set();
                    return Err(Error::Aborted(AbortReason::Signalled));
                }
            }
        };
        Ok(Self {
            device,
            cmd: Some(cmd),
            lease,
        })
    }

    /// The command as the library returned it.
    pub fn active(&self) -> &ActiveCommand {
        self.cmd
            .as_ref()
            .expect("only complete and drop take the command, and both consume it")
    }

    fn active_mut(&mut self) -> &mut ActiveCommand {
        self.cmd
            .as_mut()
            .expect("only complete and drop take the command, and both consume it")
    }

    /// Whether the command belongs to the set whose [`ForeignDevice::set_id`] is `set`.
    pub fn is_of_set(&self, set: usize) -> bool {
        self.device.set_id() == set
    }

    /// Completes the command on `device`, which must be the device that returned it.
    ///
    /// # Errors
    ///
    /// `VD_E_INVALID` for another device's command (dropping it then completes it on its own
    /// device with `ERROR_OPERATION_ABORTED`) or more bytes than a Read or Write carries;
    /// otherwise what [`ForeignDevice::complete_raw`] says.
    pub fn complete(
        mut self,
        device: &dyn ForeignDevice,
        completion: Completion,
    ) -> Result<(), Error> {
        let mine = std::ptr::addr_eq(
            Arc::as_ptr(&self.device),
            device as *const dyn ForeignDevice,
        );
        if !mine {
            return Err(Error::Invalid(InvalidReason::NotActiveCommand));
        }
        let cmd = self.active();
        if cmd.code().has_buffer() && completion.bytes_transferred > cmd.size() {
            return Err(Error::Invalid(InvalidReason::BytesTransferred));
        }
        // The buffer goes back with the completion: give up this process's claim first, so a
        // thread that receives it again at once finds it free.
        drop(self.lease.take());
        match self.cmd.take() {
            Some(cmd) => self.device.complete_raw(cmd, completion),
            None => Err(Error::Invalid(InvalidReason::NotActiveCommand)),
        }
    }
}

impl vdi_core::ClientCommand for Command {
    fn code(&self) -> CommandCode {
        self.active().code()
    }

    fn size(&self) -> u32 {
        self.active().size()
    }

    fn position(&self) -> u64 {
        self.active().position()
    }

    fn device_index(&self) -> u32 {
        self.device.index()
    }

    fn data(&self) -> &[u8] {
        self.active().data()
    }

    fn data_mut(&mut self) -> &mut [u8] {
        self.active_mut().data_mut()
    }

    fn prefix_zone(&mut self) -> &mut [u8] {
        self.active_mut().prefix_zone()
    }
}

impl Drop for Command {
    fn drop(&mut self) {
        drop(self.lease.take());
        if let Some(cmd) = self.cmd.take() {
            warn!(code = ?cmd.code(), device = %self.device.name(), "Command dropped without complete(); completing with ERROR_OPERATION_ABORTED");
            let _ = self.device.complete_raw(cmd, Completion::aborted());
        }
    }
}

/// A buffer mapped from a handle
/// ([`ClientDeviceSet::map_buffer_handle`](vdi_core::ClientDeviceSet::map_buffer_handle)).
///
/// Drop it before the process that holds the command completes it.
#[derive(Debug)]
pub struct Mapped {
    handle: BufferHandle,
    view: MappedView,
    _lease: Lease,
    /// Keeps the set object, whose memory the view is, alive.
    _set: Arc<dyn fmt::Debug + Send + Sync>,
}

impl Mapped {
    /// The view of `handle`'s buffer, holding `lease` on its bytes and `set` alive.
    pub fn new(
        handle: BufferHandle,
        view: MappedView,
        lease: Lease,
        set: Arc<dyn fmt::Debug + Send + Sync>,
    ) -> Self {
        Self {
            handle,
            view,
            _lease: lease,
            _set: set,
        }
    }
}

impl vdi_core::MappedBuffer for Mapped {
    fn handle(&self) -> BufferHandle {
        self.handle
    }

    fn as_slice(&self) -> &[u8] {
        self.view.as_slice()
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.view.as_mut_slice()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        ptr::NonNull,
        sync::{Arc, Mutex},
    };

    use vdi_core::{
        AbortReason, CommandCode, Completion, CompletionCode, Error, SharedLeases, VdcCommand,
    };

    use super::{Command, ForeignDevice};
    use crate::ActiveCommand;

    /// A device that records what its commands do.
    #[derive(Debug, Default)]
    struct Recorder {
        completed: Mutex<Vec<CompletionCode>>,
        aborted: Mutex<bool>,
    }

    impl ForeignDevice for Recorder {
        fn index(&self) -> u32 {
            0
        }
        fn name(&self) -> &str {
            "recorder"
        }
        fn set_id(&self) -> usize {
            0
        }
        fn complete_raw(&self, _cmd: ActiveCommand, completion: Completion) -> Result<(), Error> {
            self.completed.lock().unwrap().push(completion.code);
            Ok(())
        }
        fn abort_set(&self) {
            *self.aborted.lock().unwrap() = true;
        }
    }

    #[test]
    fn a_malformed_command_is_completed_and_the_set_aborted() {
        let device = Arc::new(Recorder::default());
        let mut raw = VdcCommand {
            command_code: CommandCode::WRITE.0,
            size: 1 << 30,
            position: 0,
            buffer: std::ptr::null_mut(),
        };
        // SAFETY: a readable command; its NULL buffer fails the check, so no slice is made.
        let cmd = unsafe { ActiveCommand::from_raw(NonNull::from(&mut raw), 0, 4 << 20) };
        let leases = Arc::new(SharedLeases::default());
        let got = Command::arrive(Arc::clone(&device) as _, cmd, &leases);
        assert_eq!(got.err(), Some(Error::Aborted(AbortReason::Signalled)));
        assert_eq!(
            *device.completed.lock().unwrap(),
            [Completion::aborted().code]
        );
        assert!(*device.aborted.lock().unwrap());
        assert!(leases.is_empty());
    }
}
