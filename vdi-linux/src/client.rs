//! The safe layer: `vdi-core`'s client traits over a loaded library ([`LibSqlVdi`]).
//!
//! The library enforces the protocol itself; this layer adds what makes its answers the same
//! as every other backend's, through vdi-foreign's [`SetState`] (the state machine asked before
//! each call and told the outcome after, as vdi-win does). Once a call reaches the library, the
//! library's answer is the answer: its `int` becomes a [`vdi_core::Error`] in one place,
//! [`check`].

#![deny(unsafe_code)]

use std::{
    ffi::CString,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use tracing::{debug, trace, warn};
use vdi_core::{
    BufferHandle, Call, ClientConfig, ClientSetState, Completion, Config, Error, HResult,
    InvalidReason, NameError, SharedLeases, Timeout, Turn, VdConfig,
};
use vdi_foreign::{ActiveCommand, Closed, ForeignDevice, MappedView, SetState};

use crate::{
    load::{self, LoadError},
    raw::{self, Library, RawDevice, RawSet},
};

/// A command taken with `GetCommand` (vdi-foreign's, shared with vdi-win): complete it with
/// [`ClientDevice::complete`](vdi_core::ClientDevice::complete); dropped, it completes with
/// `ERROR_OPERATION_ABORTED`.
pub type LibCommand = vdi_foreign::Command;

/// A buffer mapped from a handle (vdi-foreign's, shared with vdi-win).
pub type LibMapped = vdi_foreign::Mapped;

/// The library's `int` result for call `op`, as `vdi-core` says it: **the** mapping of this
/// crate. 0 is success; a VD_E_* code is its error; anything else is kept as it is
/// ([`Error::Other`]), and a C++ exception the shim caught is logged as one.
fn check(op: &'static str, rc: i32) -> Result<(), Error> {
    if rc == raw::THREW {
        warn!(op, "libsqlvdi threw a C++ exception; the shim caught it");
    } else if rc == raw::NULL_RESULT {
        warn!(op, "libsqlvdi reported success with a NULL result");
    }
    match Error::from_hresult(HResult(rc)) {
        None => Ok(()),
        Some(e) => {
            if !matches!(e, Error::Timeout | Error::Closed) {
                debug!(op, error = %e, "libsqlvdi call failed");
            }
            Err(e)
        }
    }
}

/// The error for a call that failed with `rc` (a success with a NULL result is
/// [`raw::NULL_RESULT`], `E_POINTER`; a success code other than 0 is kept as it is).
fn error(op: &'static str, rc: i32) -> Error {
    check(op, rc).err().unwrap_or(Error::Other(HResult(rc)))
}

/// A timeout in the library's unit: ms, negative for no limit.
fn millis(t: Timeout) -> i64 {
    if t.is_infinite() {
        -1
    } else {
        i64::from(t.as_millis())
    }
}

/// A set or device name, checked by `vdi-core`'s rules (as every backend does), NUL-terminated.
fn c_name(name: &str) -> Result<CString, Error> {
    vdi_core::validate_name(name)?;
    CString::new(name).map_err(|_| Error::Invalid(InvalidReason::Name(NameError::ControlCharacter)))
}

/// The client backend over a VDI client library with the Linux SDK's C++ interface:
/// Microsoft's `libsqlvdi.so` (SQL Server on Linux), or any library that has it.
///
/// The library is loaded at run time, once per process, and never unloaded.
///
/// ```no_run
/// use vdi_core::{ClientBackend, ClientConfig};
/// use vdi_linux::LibSqlVdi;
///
/// let sdk = LibSqlVdi::load(vdi_linux::resolve(None))?;
/// let set = sdk.create(None, "MyBackup-1", &ClientConfig::default())?;
/// # drop(set);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct LibSqlVdi {
    lib: &'static Library,
    path: Arc<PathBuf>,
    umask_zero: bool,
}

impl LibSqlVdi {
    /// Loads the library at `path` (see [`resolve`](crate::resolve) for the usual choice).
    ///
    /// # Errors
    ///
    /// [`LoadError`]: no file, not a shared library, another machine's, refused by `dlopen`,
    /// or missing a member of the SDK's classes.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let lib = load::load(path)?;
        debug!(path = %path.display(), "libsqlvdi loaded");
        Ok(Self {
            lib,
            path: Arc::new(path.to_path_buf()),
            umask_zero: true,
        })
    }

    /// The library's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `Create` and `OpenInSecondary` run with the process umask set to 0 (the
    /// default: yes). SQL Server on Linux opens the objects they create as another user of
    /// their group, which a umask that strips group permissions prevents (vdi-spec.md
    /// section 11); the umask is restored when the call returns. Concurrent `Create` and
    /// `OpenInSecondary` calls of this crate take turns at it, so each restores the umask as it
    /// was outside them. It is the process's, though: files another thread creates during
    /// those calls get umask 0 too, and a thread that calls `umask` itself meanwhile races
    /// with the restore. Turn it off with `false` when that matters more than the group's
    /// access.
    pub fn umask_zero(mut self, yes: bool) -> Self {
        self.umask_zero = yes;
        self
    }

    fn new_set(&self) -> Result<RawSet, Error> {
        RawSet::new(self.lib).map_err(|rc| error("new ClientVirtualDeviceSet", rc))
    }
}

impl vdi_core::ClientBackend for LibSqlVdi {
    type Set = LibSet;

    /// `Create`. The SDK has no instances: an instance other than `None` or `""` is
    /// `VD_E_INSTANCE_NAME`.
    fn create(
        &self,
        instance: Option<&str>,
        name: &str,
        config: &ClientConfig,
    ) -> Result<LibSet, Error> {
        no_instance(instance)?;
        let c = c_name(name)?;
        config.validate()?;
        let set = self.new_set()?;
        let mut raw = config.to_raw();
        check("Create", set.create(&c, &mut raw, self.umask_zero))?;
        let state = SetState::created(name, config)?;
        debug!(
            set = name,
            devices = config.device_count,
            "device set created"
        );
        Ok(LibSet::new(set, state))
    }

    /// `OpenInSecondary`.
    fn open_secondary(&self, instance: Option<&str>, name: &str) -> Result<LibSet, Error> {
        no_instance(instance)?;
        let c = c_name(name)?;
        let set = self.new_set()?;
        check(
            "OpenInSecondary",
            set.open_in_secondary(&c, self.umask_zero),
        )?;
        debug!(set = name, "joined as a secondary client");
        Ok(LibSet::new(set, SetState::joined(name)))
    }
}

/// The Linux SDK has no named instances.
fn no_instance(instance: Option<&str>) -> Result<(), Error> {
    match instance {
        None | Some("") => Ok(()),
        Some(_) => Err(Error::InstanceName),
    }
}

/// What a set's handle, devices and commands share.
#[derive(Debug)]
struct SetShared {
    set: RawSet,
    state: SetState,
}

impl Drop for SetShared {
    fn drop(&mut self) {
        // The last command and mapped buffer of the set have gone: a `Close` that found views
        // of its buffers can now reach the library (before the object is deleted).
        if self.state.take_deferred_close() {
            let _ = check("Close", self.set.close());
            debug!(set = %self.state.name(), "deferred Close");
        }
    }
}

impl SetShared {
    /// `SignalAbort` on this process's own initiative.
    fn abort(&self) {
        self.state.aborted();
        let _ = self.set.signal_abort();
    }

    /// The prefix zone the buffers were laid out with.
    fn prefix_zone(&self) -> u32 {
        self.state.prefix_zone(|| {
            let mut raw = VdConfig::default();
            (self.set.get_configuration(0, &mut raw) == 0).then_some(raw)
        })
    }
}

/// A device set of the library (`ClientVirtualDeviceSet`), as the client uses it.
///
/// `Send` and `Sync`. Dropping it without [`close`](vdi_core::ClientDeviceSet::close) closes
/// it; the object itself is deleted when its last device and command are gone too.
#[derive(Debug)]
pub struct LibSet {
    shared: Arc<SetShared>,
}

impl LibSet {
    fn new(set: RawSet, state: SetState) -> Self {
        Self {
            shared: Arc::new(SetShared { set, state }),
        }
    }

    /// The set's name.
    pub fn name(&self) -> &str {
        self.shared.state.name()
    }

    /// The set's state as this process knows it.
    pub fn state(&self) -> ClientSetState {
        self.shared.state.state()
    }
}

impl vdi_core::ClientDeviceSet for LibSet {
    type Device = LibDevice;
    type Mapped = LibMapped;

    fn configuration(&self, timeout: Timeout) -> Result<Config, Error> {
        let sh = &self.shared;
        sh.state.before_configuration()?;
        let mut raw = VdConfig::default();
        check(
            "GetConfiguration",
            sh.set.get_configuration(millis(timeout), &mut raw),
        )
        .inspect_err(|e| sh.state.observe(e))?;
        let config = sh.state.configured(&raw);
        debug!(set = %sh.state.name(), block = config.block_size, max_transfer = config.max_transfer_size, "configured");
        Ok(config)
    }

    fn open_device(&self, name: &str) -> Result<LibDevice, Error> {
        let c = c_name(name)?;
        let sh = &self.shared;
        sh.state.before_open(name)?;
        let device = sh.set.open_device(&c).map_err(|rc| {
            let e = error("OpenDevice", rc);
            sh.state.observe(&e);
            e
        })?;
        let index = sh.state.opened(name)?;
        trace!(set = %sh.state.name(), device = name, index, "device opened");
        Ok(LibDevice {
            inner: Arc::new(DeviceInner {
                device,
                set: Arc::clone(sh),
                index,
                name: name.to_owned(),
                turn: Turn::default(),
            }),
        })
    }

    fn buffer_handle(&self, command: &LibCommand) -> Result<BufferHandle, Error> {
        if !command.is_of_set(Arc::as_ptr(&self.shared) as usize) {
            return Err(Error::Invalid(InvalidReason::NotActiveCommand));
        }
        let cmd = command.active();
        if !cmd.has_buffer() {
            return Err(Error::Invalid(InvalidReason::Buffer));
        }
        self.shared
            .state
            .before_buffer_handle(Call::GetBufferHandle, 0)?;
        let h = self
            .shared
            .set
            .get_buffer_handle(cmd)
            .map_err(|rc| error("GetBufferHandle", rc))?;
        Ok(BufferHandle(h))
    }

    /// The library returns an address only: the `len` bytes there must be mapped read-write
    /// in this process (`/proc/self/maps`, a snapshot: see `raw::read_write` for its limits),
    /// within the set's `maxTransferSize`, and not already in a view of this process (a command
    /// it holds, or another mapping).
    fn map_buffer_handle(&self, handle: BufferHandle, len: u32) -> Result<LibMapped, Error> {
        let sh = &self.shared;
        sh.state.before_buffer_handle(Call::MapBufferHandle, len)?;
        // Until the view holds its lease: `Close` must not free the buffer meanwhile.
        let _call = sh
            .state
            .begin_call(|m| m.check_buffer_handle(Call::MapBufferHandle))?;
        let ptr = sh
            .set
            .map_buffer_handle(handle.0)
            .map_err(|rc| error("MapBufferHandle", rc))?;
        let start = ptr.as_ptr() as usize;
        let lease = SharedLeases::claim(
            sh.state.leases(),
            0,
            start as u64,
            start.saturating_add(len as usize) as u64,
        )
        .ok_or(Error::Invalid(InvalidReason::Buffer))?;
        // The library says nothing of the buffer's length: the memory itself must hold `len`
        // bytes this process may read and write.
        if !raw::read_write(start, len as usize) {
            return Err(Error::Invalid(InvalidReason::TransferSize));
        }
        #[allow(
            unsafe_code,
            reason = "the view's contract is met just above; see SAFETY"
        )]
        // SAFETY: `MappedView::new`'s contract: `ptr` came from MapBufferHandle of this set
        // (that it is one of the set's buffers is the library's word); its memory stays mapped
        // while the view lives, since the view keeps the set object alive (`Mapped` holds it)
        // and the library's Close, which frees the buffers, waits for the last view
        // (`SetState::close`); the `len` bytes were mapped read-write when checked just now
        // (a snapshot: nothing of this crate unmaps them later); the lease makes this the
        // only view of them in this process while it lives.
        let view = unsafe { MappedView::new(ptr, len as usize) };
        Ok(LibMapped::new(handle, view, lease, Arc::clone(sh) as _))
    }

    fn signal_abort(&self) -> Result<(), Error> {
        self.shared.state.before_abort()?;
        debug!(set = %self.shared.state.name(), "SignalAbort");
        check("SignalAbort", self.shared.set.signal_abort())
    }

    /// Waits for the device calls in progress (ending their waits with `SignalAbort` when a
    /// device is still open); while commands or mapped buffers of the set remain, the library's
    /// `Close` waits for the last of them (see vdi-foreign's `SetState::close`).
    fn close(&self) -> Result<(), Error> {
        let sh = &self.shared;
        let result = sh
            .state
            .close(
                || {
                    let _ = sh.set.signal_abort();
                },
                || check("Close", sh.set.close()),
            )
            .and_then(|closed| match closed {
                Closed::Library(r) | Closed::Deferred(r) => r,
            });
        debug!(set = %self.shared.state.name(), result = ?result.as_ref().err(), "Close");
        result
    }
}

impl Drop for LibSet {
    fn drop(&mut self) {
        if self.state() != ClientSetState::DoesNotExist {
            let _ = vdi_core::ClientDeviceSet::close(self);
        }
    }
}

#[derive(Debug)]
struct DeviceInner {
    device: RawDevice,
    /// Keeps the set object, which owns the device object, alive.
    set: Arc<SetShared>,
    index: u32,
    name: String,
    turn: Turn,
}

/// A device of a set (`ClientVirtualDevice`), as the client uses it.
///
/// `Send`, `Sync` and cheap to clone. `GetCommand` calls on one device are serialized (a
/// second thread waits, within its timeout, for the first one's call to return); completions
/// may come from any thread.
#[derive(Clone, Debug)]
pub struct LibDevice {
    inner: Arc<DeviceInner>,
}

impl LibDevice {
    /// The device's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

impl ForeignDevice for DeviceInner {
    fn index(&self) -> u32 {
        self.index
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn set_id(&self) -> usize {
        Arc::as_ptr(&self.set) as usize
    }

    fn complete_raw(&self, cmd: ActiveCommand, completion: Completion) -> Result<(), Error> {
        let code = cmd.code();
        // Held through the call: `Close` must not free the device meanwhile.
        let _call = self.set.state.begin_complete(self.index)?;
        check(
            "CompleteCommand",
            self.device.complete_command(
                cmd,
                completion.code.0,
                completion.bytes_transferred,
                completion.position,
            ),
        )
        .inspect_err(|e| self.set.state.observe(e))?;
        trace!(device = %self.name, code = ?code, completion = ?completion.code, bytes = completion.bytes_transferred, "completed");
        Ok(())
    }

    fn abort_set(&self) {
        self.set.abort();
    }
}

impl vdi_core::ClientDevice for LibDevice {
    type Command = LibCommand;

    fn index(&self) -> u32 {
        self.inner.index
    }

    fn command(&self, timeout: Timeout) -> Result<LibCommand, Error> {
        let inner = &self.inner;
        let set = &inner.set;
        let deadline = timeout.as_duration().map(|d| Instant::now() + d);
        set.state.before_command(inner.index)?;
        let Some(_turn) = inner.turn.take(deadline) else {
            return Err(Error::Timeout);
        };
        // Again with the turn: the thread that had it may have ended the device. Held until
        // the command holds its lease: `Close` must not free the device or the buffer
        // meanwhile.
        let _call = set.state.begin_command(inner.index)?;
        let remaining = vdi_foreign::remaining(deadline);
        // The prefix zone first: in a secondary it fetches the configuration, and with it
        // the `maxTransferSize` that bounds the command's size.
        let prefix_zone = set.prefix_zone();
        let max_size = set.state.max_transfer_size();
        match inner
            .device
            .get_command(millis(remaining), prefix_zone, max_size)
        {
            Ok(cmd) => {
                trace!(device = %inner.name, code = ?cmd.code(), size = cmd.size(), "command");
                LibCommand::arrive(Arc::clone(inner) as _, cmd, set.state.leases())
            }
            Err(rc) => {
                let e = error("GetCommand", rc);
                set.state.command_failed(inner.index, &e);
                Err(e)
            }
        }
    }

    fn complete(&self, command: LibCommand, completion: Completion) -> Result<(), Error> {
        command.complete(&*self.inner, completion)
    }
}

#[cfg(test)]
mod tests {
    use vdi_core::{Error, HResult};

    use super::error;
    use crate::raw;

    #[test]
    fn a_null_result_is_e_pointer_not_an_exception() {
        assert_eq!(
            error("OpenDevice", raw::NULL_RESULT),
            Error::Other(HResult::E_POINTER)
        );
        assert_ne!(raw::NULL_RESULT, raw::THREW);
        assert_eq!(error("GetCommand", HResult::VD_E_CLOSE.0), Error::Closed);
        // A success code other than 0 where 0 was due is kept, as an error.
        assert_eq!(error("GetCommand", 1), Error::Other(HResult(1)));
    }
}
