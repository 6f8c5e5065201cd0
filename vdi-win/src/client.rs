//! The safe layer: `vdi-core`'s client traits over sqlvdi.dll ([`SqlVdi`]).
//!
//! sqlvdi enforces the protocol itself; this layer adds what makes its answers the same as every
//! other backend's. Before each call it consults [`ClientSetMachine`], so a call the
//! specification's table forbids in the state this process knows gets the table's answer
//! without reaching sqlvdi (and never reaches an interface that `Close` invalidated); after
//! each call it tells the machine the outcome (configured, device opened, `VD_E_CLOSE`, abort).
//! Once a call reaches sqlvdi, sqlvdi's answer is the answer.

#![deny(unsafe_code)]

use std::{sync::Arc, time::Instant};

use tracing::{debug, trace};
use vdi_core::{
    BufferHandle, Call, ClientConfig, ClientSetState, Completion, Config, Error, InvalidReason,
    Lease, SharedLeases, Timeout, VdConfig,
};

use vdi_foreign::{Closed, ForeignDevice, SetState};

use crate::{
    error::{Cause, HResultExt, Op, WinError},
    raw::{
        self, Activate, ActiveCommand, ComActivator, FreeThreaded, IClientVirtualDevice,
        IClientVirtualDeviceSet2, MappedView, WideCString,
        runtime::{Apartment, MtaUsage},
    },
};

/// A command taken with `GetCommand` (vdi-foreign's, shared with vdi-linux): complete it with
/// [`ClientDevice::complete`](vdi_core::ClientDevice::complete). Its data are sqlvdi's shared
/// buffer itself, no copy; dropped, it completes with `ERROR_OPERATION_ABORTED` and logs a
/// warning, so SQL Server is never left waiting.
pub type SqlVdiCommand = vdi_foreign::Command;

/// A buffer mapped from a handle (vdi-foreign's, shared with vdi-linux). Drop it before the
/// process that holds the command completes it.
pub type SqlVdiMapped = vdi_foreign::Mapped;

/// The client backend over Microsoft's sqlvdi.dll: creates device sets (`CreateEx`) and joins
/// them from secondary processes (`OpenInSecondaryEx`).
///
/// [`SqlVdi::new`] activates sqlvdi's registered class; [`SqlVdi::with_activator`] takes any
/// other [`Activate`] implementation, which is how the tests drive this layer with a fake COM
/// object. Off Windows, [`SqlVdi::new`]'s sets fail with [`Cause::UnsupportedPlatform`].
///
/// ```no_run
/// use vdi_core::{ClientBackend, ClientConfig};
/// use vdi_win::SqlVdi;
///
/// let set = SqlVdi::new().create(Some("SQL2022"), "MyBackup-1", &ClientConfig::default())?;
/// # drop(set);
/// # Ok::<(), vdi_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SqlVdi {
    activator: Arc<dyn Activate>,
}

impl Default for SqlVdi {
    fn default() -> Self {
        Self::new()
    }
}

impl SqlVdi {
    /// The backend over sqlvdi.dll's registered class (`CLSID_MSSQL_ClientVirtualDeviceSet`).
    pub fn new() -> Self {
        Self::with_activator(ComActivator::new())
    }

    /// The backend over the sets `activator` makes.
    pub fn with_activator(activator: impl Activate + 'static) -> Self {
        Self {
            activator: Arc::new(activator),
        }
    }

    /// `CreateEx`: creates the set `name` for `instance` (`None` or `""`: the default instance).
    ///
    /// What [`ClientBackend::create`](vdi_core::ClientBackend::create) does, with the error's
    /// [`Cause`] kept.
    ///
    /// # Errors
    ///
    /// As the trait method; a [`Cause`] for sqlvdi.dll not registered, access denied, a bad
    /// instance name, a single-threaded apartment, or an unsupported platform.
    pub fn create_set(
        &self,
        instance: Option<&str>,
        name: &str,
        config: &ClientConfig,
    ) -> Result<SqlVdiSet, WinError> {
        let op = Op::CreateEx;
        let instance = instance_name(op, instance)?;
        let wide = wide_name(op, name)?;
        config
            .validate()
            .map_err(|e| WinError::local(op, e.into()))?;
        let _apartment = enter(op)?;
        let (set, mta) = self.activate()?;
        let mut raw = config.to_raw();
        set.get()
            .create_ex(instance.as_ref(), &wide, &mut raw)
            .check(op)?;
        let state = SetState::created(name, config).map_err(|e| WinError::local(op, e))?;
        debug!(
            set = name,
            devices = config.device_count,
            "device set created"
        );
        Ok(SqlVdiSet::new(set, mta, state))
    }

    /// `OpenInSecondaryEx`: joins the configured set `name` of `instance` from this secondary
    /// process.
    ///
    /// What [`ClientBackend::open_secondary`](vdi_core::ClientBackend::open_secondary) does,
    /// with the error's [`Cause`] kept.
    ///
    /// # Errors
    ///
    /// As the trait method, with the causes of [`SqlVdi::create_set`].
    pub fn open_secondary_set(
        &self,
        instance: Option<&str>,
        name: &str,
    ) -> Result<SqlVdiSet, WinError> {
        let op = Op::OpenInSecondaryEx;
        let instance = instance_name(op, instance)?;
        let wide = wide_name(op, name)?;
        let _apartment = enter(op)?;
        let (set, mta) = self.activate()?;
        set.get()
            .open_in_secondary_ex(instance.as_ref(), &wide)
            .check(op)?;
        debug!(set = name, "joined as a secondary client");
        Ok(SqlVdiSet::new(set, mta, SetState::joined(name)))
    }

    /// A new set object, in the multithreaded apartment, kept alive with it.
    fn activate(&self) -> Result<(FreeThreaded<IClientVirtualDeviceSet2>, MtaUsage), WinError> {
        let mta = MtaUsage::acquire()
            .map_err(|hr| WinError::from_hresult(Op::CoIncrementMtaUsage, hr))?;
        let set = raw::activate_free_threaded(&*self.activator)
            .map_err(|hr| WinError::from_hresult(Op::CoCreateInstance, hr))?;
        Ok((set, mta))
    }
}

impl vdi_core::ClientBackend for SqlVdi {
    type Set = SqlVdiSet;

    fn create(
        &self,
        instance: Option<&str>,
        name: &str,
        config: &ClientConfig,
    ) -> Result<SqlVdiSet, Error> {
        self.create_set(instance, name, config)
            .map_err(WinError::report)
    }

    fn open_secondary(&self, instance: Option<&str>, name: &str) -> Result<SqlVdiSet, Error> {
        self.open_secondary_set(instance, name)
            .map_err(WinError::report)
    }
}

/// Enters the multithreaded apartment for one call of `op`.
fn enter(op: Op) -> Result<Apartment, WinError> {
    Apartment::enter_mta().map_err(|hr| WinError::from_hresult(op, hr))
}

/// The instance name as `CreateEx` takes it: `None` for the default instance.
fn instance_name(op: Op, instance: Option<&str>) -> Result<Option<WideCString>, WinError> {
    let bad = || WinError::local_with(op, Error::InstanceName, Cause::InstanceName);
    match instance {
        None | Some("") => Ok(None),
        // sqlvdi finds the instance's service by this name: `HOST\INSTANCE` is never one.
        Some(i) if i.contains('\\') => Err(bad()),
        Some(i) => WideCString::new(i).map(Some).ok_or_else(bad),
    }
}

/// A set or device name, checked by `vdi-core`'s rules (as every backend does), in UTF-16.
fn wide_name(op: Op, name: &str) -> Result<WideCString, WinError> {
    vdi_core::validate_name(name).map_err(|e| WinError::local(op, e.into()))?;
    WideCString::new(name).ok_or(WinError::local(
        op,
        Error::Invalid(InvalidReason::Name(vdi_core::NameError::ControlCharacter)),
    ))
}

/// What a set's handle, devices and commands share.
#[derive(Debug)]
struct SetShared {
    /// Released before `_mta` (fields drop in order).
    set: FreeThreaded<IClientVirtualDeviceSet2>,
    _mta: MtaUsage,
    state: SetState,
}

impl Drop for SetShared {
    fn drop(&mut self) {
        // The last command and mapped buffer of the set have gone: a `Close` that found views
        // of its buffers can now reach sqlvdi, from the MTA, before the reference is released.
        if self.state.take_deferred_close()
            && let Ok(_apartment) = enter(Op::Close)
        {
            let _ = self.set.get().close();
            debug!(set = %self.state.name(), "deferred Close");
        }
    }
}

impl SetShared {
    /// `SignalAbort` on this process's own initiative (the caller is in the MTA).
    fn abort(&self) {
        self.state.aborted();
        let _ = self.set.get().signal_abort();
    }

    /// Records what a failed call of sqlvdi says of the set (an abort).
    fn observe(&self, e: &WinError) {
        self.state.observe(&e.error());
    }

    /// The `prefixZoneSize` the set's buffers were laid out with.
    fn prefix_zone(&self) -> u32 {
        self.state.prefix_zone(|| {
            let mut raw = VdConfig::default();
            self.set
                .get()
                .get_configuration(0, &mut raw)
                .is_ok()
                .then_some(raw)
        })
    }
}

/// A device set of sqlvdi.dll (`IClientVirtualDeviceSet2`), as the client uses it.
///
/// `Send` and `Sync`: any thread that is not in a single-threaded apartment may call it (see
/// the crate's thread model). Dropping it without [`close`](vdi_core::ClientDeviceSet::close)
/// closes it.
#[derive(Debug)]
pub struct SqlVdiSet {
    shared: Arc<SetShared>,
}

impl SqlVdiSet {
    fn new(set: FreeThreaded<IClientVirtualDeviceSet2>, mta: MtaUsage, state: SetState) -> Self {
        Self {
            shared: Arc::new(SetShared {
                set,
                _mta: mta,
                state,
            }),
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

    fn configuration_inner(&self, timeout: Timeout) -> Result<Config, WinError> {
        let op = Op::GetConfiguration;
        let _apartment = enter(op)?;
        let sh = &self.shared;
        sh.state
            .before_configuration()
            .map_err(|e| WinError::local(op, e))?;
        let mut raw = VdConfig::default();
        let result = sh
            .set
            .get()
            .get_configuration(timeout.as_millis(), &mut raw)
            .check(op);
        if let Err(e) = result {
            sh.observe(&e);
            return Err(e);
        }
        let config = sh.state.configured(&raw);
        debug!(set = %sh.state.name(), features = ?config.features, block = config.block_size, max_transfer = config.max_transfer_size, "configured");
        Ok(config)
    }

    fn open_device_inner(&self, name: &str) -> Result<SqlVdiDevice, WinError> {
        let op = Op::OpenDevice;
        let wide = wide_name(op, name)?;
        let _apartment = enter(op)?;
        let sh = &self.shared;
        sh.state
            .before_open(name)
            .map_err(|e| WinError::local(op, e))?;
        let device = sh.set.open_device(&wide).map_err(|hr| {
            let e = WinError::from_hresult(op, hr);
            sh.observe(&e);
            e
        })?;
        // On an error here `device` is released as it drops.
        let index = sh.state.opened(name).map_err(|e| WinError::local(op, e))?;
        trace!(set = %sh.state.name(), device = name, index, "device opened");
        Ok(SqlVdiDevice {
            inner: Arc::new(DeviceInner {
                device,
                set: Arc::clone(sh),
                index,
                name: name.to_owned(),
                turn: vdi_core::Turn::default(),
            }),
        })
    }

    fn buffer_handle_inner(&self, command: &SqlVdiCommand) -> Result<BufferHandle, WinError> {
        let op = Op::GetBufferHandle;
        if !command.is_of_set(Arc::as_ptr(&self.shared) as usize) {
            return Err(WinError::local(
                op,
                Error::Invalid(InvalidReason::NotActiveCommand),
            ));
        }
        let cmd = command.active();
        if !cmd.code().has_buffer() || cmd.buffer().is_null() {
            return Err(WinError::local(op, Error::Invalid(InvalidReason::Buffer)));
        }
        let _apartment = enter(op)?;
        self.shared
            .state
            .before_buffer_handle(Call::GetBufferHandle, 0)
            .map_err(|e| WinError::local(op, e))?;
        let handle = self
            .shared
            .set
            .get()
            .get_buffer_handle(cmd)
            .map_err(|hr| WinError::from_hresult(op, hr))?;
        Ok(BufferHandle(handle))
    }

    fn map_buffer_handle_inner(
        &self,
        handle: BufferHandle,
        len: u32,
    ) -> Result<SqlVdiMapped, WinError> {
        let op = Op::MapBufferHandle;
        let _apartment = enter(op)?;
        self.shared
            .state
            .before_buffer_handle(Call::MapBufferHandle, len)
            .map_err(|e| WinError::local(op, e))?;
        // Until the view holds its lease: `Close` must not free the buffer meanwhile.
        let _call = self
            .shared
            .state
            .begin_call(|m| m.check_buffer_handle(Call::MapBufferHandle))
            .map_err(|e| WinError::local(op, e))?;
        let invalid = |reason| WinError::local(op, Error::Invalid(reason));
        // sqlvdi checks the handle; an unknown one gets its own error.
        let ptr = self
            .shared
            .set
            .get()
            .map_buffer_handle(handle.0)
            .map_err(|hr| WinError::from_hresult(op, hr))?;
        // sqlvdi says nothing of the buffer's length: the memory itself must hold `len` bytes
        // we may read and write...
        if !raw::runtime::read_write(ptr, len as usize) {
            return Err(invalid(InvalidReason::TransferSize));
        }
        // ...and no other view in this process may reach them (a command this process holds,
        // or another mapping).
        let start = ptr.as_ptr() as usize;
        let lease = take_lease(self.shared.state.leases(), start, start + len as usize)
            .ok_or_else(|| invalid(InvalidReason::Buffer))?;
        #[allow(
            unsafe_code,
            reason = "the view's contract is checked just above; see the SAFETY comment"
        )]
        // SAFETY: `MappedView::new`'s contract: `ptr` came from `MapBufferHandle`; the `len`
        // bytes at it are committed read-write memory of this process (checked just now; on
        // Windows with VirtualQuery, elsewhere by `Activate`'s contract), and they stay mapped
        // while the view lives, since the view keeps the set object (`Activate`'s contract:
        // buffers live as long as the object). The lease makes this the only view of those
        // bytes in this process until it drops, with the view.
        let view = unsafe { MappedView::new(ptr, len as usize) };
        Ok(SqlVdiMapped::new(
            handle,
            view,
            lease,
            Arc::clone(&self.shared) as _,
        ))
    }

    fn signal_abort_inner(&self) -> Result<(), WinError> {
        let op = Op::SignalAbort;
        let _apartment = enter(op)?;
        self.shared
            .state
            .before_abort()
            .map_err(|e| WinError::local(op, e))?;
        debug!(set = %self.shared.state.name(), "SignalAbort");
        self.shared.set.get().signal_abort().check(op)
    }

    fn close_inner(&self) -> Result<(), WinError> {
        let op = Op::Close;
        let _apartment = enter(op)?;
        let sh = &self.shared;
        // Waits for the device calls in progress (ending their waits with SignalAbort when a
        // device is still open); while commands or mapped buffers of the set remain, sqlvdi's
        // Close waits for the last of them (see vdi-foreign's `SetState::close`).
        let result = sh
            .state
            .close(
                || {
                    let _ = sh.set.get().signal_abort();
                },
                || sh.set.get().close().check(op),
            )
            .map_err(|e| WinError::local(op, e))
            .and_then(|closed| match closed {
                Closed::Library(r) => r,
                Closed::Deferred(r) => r.map_err(|e| WinError::local(op, e)),
            });
        debug!(set = %self.shared.state.name(), result = ?result.as_ref().err().map(WinError::error), "Close");
        result
    }
}

impl vdi_core::ClientDeviceSet for SqlVdiSet {
    type Device = SqlVdiDevice;
    type Mapped = SqlVdiMapped;

    fn configuration(&self, timeout: Timeout) -> Result<Config, Error> {
        self.configuration_inner(timeout).map_err(WinError::report)
    }

    fn open_device(&self, name: &str) -> Result<SqlVdiDevice, Error> {
        self.open_device_inner(name).map_err(WinError::report)
    }

    fn buffer_handle(&self, command: &SqlVdiCommand) -> Result<BufferHandle, Error> {
        self.buffer_handle_inner(command).map_err(WinError::report)
    }

    /// sqlvdi returns an address only: the `len` bytes there must be committed read-write
    /// memory (checked with `VirtualQuery`), within the set's `maxTransferSize`, and not
    /// already in a view of this process (a command it holds, or another mapping).
    fn map_buffer_handle(&self, handle: BufferHandle, len: u32) -> Result<SqlVdiMapped, Error> {
        self.map_buffer_handle_inner(handle, len)
            .map_err(WinError::report)
    }

    fn signal_abort(&self) -> Result<(), Error> {
        self.signal_abort_inner().map_err(WinError::report)
    }

    fn close(&self) -> Result<(), Error> {
        self.close_inner().map_err(WinError::report)
    }
}

impl Drop for SqlVdiSet {
    fn drop(&mut self) {
        // A set dropped without Close is closed here; devices and commands still alive keep
        // the object (not the set) until they go.
        if self.state() != ClientSetState::DoesNotExist {
            let _ = self.close_inner().map_err(WinError::report);
        }
    }
}

#[derive(Debug)]
struct DeviceInner {
    /// Released before the set (fields drop in order).
    device: FreeThreaded<IClientVirtualDevice>,
    set: Arc<SetShared>,
    index: u32,
    name: String,
    turn: vdi_core::Turn,
}

/// A device of a sqlvdi set (`IClientVirtualDevice`), as the client uses it.
///
/// `Send`, `Sync` and cheap to clone. `GetCommand` calls on one device are serialized (a
/// second thread waits, within its timeout, for the first one's call to return); completions
/// may come from any thread at any time, which is how several commands of a device are
/// serviced at once.
#[derive(Clone, Debug)]
pub struct SqlVdiDevice {
    inner: Arc<DeviceInner>,
}

impl SqlVdiDevice {
    /// The device's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn command_inner(&self, timeout: Timeout) -> Result<SqlVdiCommand, WinError> {
        let op = Op::GetCommand;
        let inner = &self.inner;
        let set = &inner.set;
        let deadline = timeout.as_duration().map(|d| Instant::now() + d);
        // The set machine answers, VD_E_CLOSE too for a device that returned it (see
        // `ClientSetMachine::check_get_command`), without a call into sqlvdi.
        let check = || {
            set.state
                .before_command(inner.index)
                .map_err(|e| WinError::local(op, e))
        };
        check()?;
        let _apartment = enter(op)?;
        let Some(_turn) = inner.turn.take(deadline) else {
            return Err(WinError::local(op, Error::Timeout));
        };
        // Again with the turn: the thread that had it may have ended the device. Held until
        // the command holds its lease: `Close` must not free the device or the buffer
        // meanwhile.
        let _call = set
            .state
            .begin_command(inner.index)
            .map_err(|e| WinError::local(op, e))?;
        let remaining = vdi_foreign::remaining(deadline);
        // The prefix zone first: in a secondary it fetches the configuration, and with it
        // the `maxTransferSize` that bounds the command's size.
        let prefix_zone = set.prefix_zone();
        let max_size = set.state.max_transfer_size();
        match inner
            .device
            .get()
            .get_command(remaining.as_millis(), prefix_zone, max_size)
        {
            Ok(cmd) => {
                trace!(device = %inner.name, code = ?cmd.code(), size = cmd.size(), "command");
                SqlVdiCommand::arrive(Arc::clone(inner) as _, cmd, set.state.leases())
                    .map_err(|e| WinError::local(op, e))
            }
            Err(hr) => {
                let e = WinError::from_hresult(op, hr);
                set.state.command_failed(inner.index, &e.error());
                Err(e)
            }
        }
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

    /// `CompleteCommand`, after the state check.
    fn complete_raw(&self, cmd: ActiveCommand, completion: Completion) -> Result<(), Error> {
        self.complete_in_mta(cmd, completion)
            .map_err(WinError::report)
    }

    fn abort_set(&self) {
        self.set.abort();
    }
}

impl DeviceInner {
    fn complete_in_mta(&self, cmd: ActiveCommand, completion: Completion) -> Result<(), WinError> {
        let op = Op::CompleteCommand;
        let code = cmd.code();
        let _apartment = enter(op)?;
        // Held through the call: `Close` must not free the device meanwhile.
        let _call = self
            .set
            .state
            .begin_complete(self.index)
            .map_err(|e| WinError::local(op, e))?;
        self.device
            .get()
            .complete_command(
                cmd,
                completion.code.0,
                completion.bytes_transferred,
                completion.position,
            )
            .check(op)
            .inspect_err(|e| self.set.observe(e))?;
        trace!(device = %self.name, code = ?code, completion = ?completion.code, bytes = completion.bytes_transferred, "completed");
        Ok(())
    }
}

impl vdi_core::ClientDevice for SqlVdiDevice {
    type Command = SqlVdiCommand;

    fn index(&self) -> u32 {
        self.inner.index
    }

    fn command(&self, timeout: Timeout) -> Result<SqlVdiCommand, Error> {
        self.command_inner(timeout).map_err(WinError::report)
    }

    fn complete(&self, command: SqlVdiCommand, completion: Completion) -> Result<(), Error> {
        command.complete(&*self.inner, completion)
    }
}

/// Claims the addresses `start..end` of this process (space 0).
fn take_lease(leases: &Arc<SharedLeases>, start: usize, end: usize) -> Option<Lease> {
    SharedLeases::claim(leases, 0, start as u64, end as u64)
}
