//! What a binding knows of one set in this process, and the state machine's word before and
//! after each call: the glue between `vdi-core`'s [`ClientSetMachine`] and a foreign library,
//! the same for sqlvdi.dll and libsqlvdi.so.

use std::{
    sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError},
    time::Instant,
};

use vdi_core::{
    AbortReason, Call, ClientConfig, ClientSetMachine, ClientSetState, Config, Error,
    InvalidReason, MAX_DEVICES, MAX_TRANSFER_SIZE, ProtocolReason, SharedLeases, Timeout, VdConfig,
};

/// What this process knows of the set, under one lock.
#[derive(Debug)]
struct Local {
    machine: ClientSetMachine,
    /// The devices this process opened: its index for each, and the name.
    devices: Vec<(u32, String)>,
    /// Device and buffer calls inside the library, or just back from it with a result not yet
    /// turned into a view ([`DeviceCall`]): `Close` waits for them, since the library's
    /// `Close` invalidates the device objects and buffers they use.
    in_flight: u32,
    /// `Close` found views of the set's buffers still held in this process, and left the
    /// library's `Close` to [`SetState::take_deferred_close`].
    close_deferred: bool,
}

/// One set's state in this process: its machine, its devices, its configuration, and the
/// leases on the views of its buffers.
///
/// The binding asks it before each call into the library (a call the specification's table
/// forbids in the state this process knows gets the table's answer without reaching the
/// library) and tells it each outcome after (configured, device opened, `VD_E_CLOSE`, abort).
/// Once a call reaches the library, the library's answer is the answer.
#[derive(Debug)]
pub struct SetState {
    name: String,
    /// The client's configuration, for the primary; `None` in a secondary.
    client_config: Option<ClientConfig>,
    /// What `GetConfiguration` returned first.
    config: OnceLock<Config>,
    local: Mutex<Local>,
    /// Signalled when `in_flight` drops to 0.
    idle: Condvar,
    /// The byte ranges of the library's buffers this process has views of (the commands it
    /// holds, prefix and data zone, and the mapped handles), in the process's one address space
    /// (0): the libraries hand out addresses only, and this keeps two views of the same bytes
    /// from existing at once.
    leases: Arc<SharedLeases>,
}

impl SetState {
    /// The set `name` this process created with `config` (the library's `Create` succeeded).
    ///
    /// # Errors
    ///
    /// What the machine says of `Create` (it does not fail on a new set).
    pub fn created(name: &str, config: &ClientConfig) -> Result<Self, Error> {
        let mut machine = ClientSetMachine::new();
        machine.create(config.device_count)?;
        Ok(Self::new(name, machine, Some(*config)))
    }

    /// The set `name` this secondary process joined. The libraries do not tell a secondary how
    /// many devices the set has: the machine allows every index, and the library checks names.
    pub fn joined(name: &str) -> Self {
        Self::new(name, ClientSetMachine::secondary(MAX_DEVICES), None)
    }

    fn new(name: &str, machine: ClientSetMachine, client_config: Option<ClientConfig>) -> Self {
        Self {
            name: name.to_owned(),
            client_config,
            config: OnceLock::new(),
            local: Mutex::new(Local {
                machine,
                devices: Vec::new(),
                in_flight: 0,
                close_deferred: false,
            }),
            idle: Condvar::new(),
            leases: Arc::default(),
        }
    }

    fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The set's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The set's state as this process knows it.
    pub fn state(&self) -> ClientSetState {
        self.local().machine.state()
    }

    /// The leases on the views of the set's buffers in this process.
    pub fn leases(&self) -> &Arc<SharedLeases> {
        &self.leases
    }

    /// Records an abort: this process's own, or one the library reported. Later calls answer
    /// `VD_E_ABORT` locally.
    pub fn aborted(&self) {
        let _ = self.local().machine.signal_abort(AbortReason::Signalled);
    }

    /// Records what a failed call says of the set (an abort).
    pub fn observe(&self, e: &Error) {
        if e.is_abort() {
            self.aborted();
        }
    }

    /// Before `GetConfiguration`.
    ///
    /// # Errors
    ///
    /// The machine's answer.
    pub fn before_configuration(&self) -> Result<(), Error> {
        self.local().machine.check_get_configuration()
    }

    /// `GetConfiguration` returned `raw`.
    pub fn configured(&self, raw: &VdConfig) -> Config {
        let config = Config::from_raw(raw);
        self.config.get_or_init(|| config);
        self.local().machine.configured();
        config
    }

    /// The `prefixZoneSize` the set's buffers were laid out with: the primary's own request;
    /// in a secondary, the configuration (fetched once with `fetch`, a `GetConfiguration` that
    /// does not wait, if not yet asked).
    pub fn prefix_zone(&self, fetch: impl FnOnce() -> Option<VdConfig>) -> u32 {
        if let Some(c) = self.client_config {
            return c.prefix_zone_size;
        }
        if let Some(c) = self.config.get() {
            return c.prefix_zone_size;
        }
        match fetch() {
            Some(raw) => {
                self.config
                    .get_or_init(|| Config::from_raw(&raw))
                    .prefix_zone_size
            }
            None => 0,
        }
    }

    /// The largest `size` a Read or Write of the set may have: the `maxTransferSize` of the
    /// configuration (call [`SetState::prefix_zone`] first, which fetches it in a secondary),
    /// else the largest the specification allows ([`MAX_TRANSFER_SIZE`]). A command's data zone
    /// is never trusted beyond it.
    pub fn max_transfer_size(&self) -> u32 {
        match self.config.get() {
            Some(c) if c.max_transfer_size > 0 => c.max_transfer_size,
            _ => MAX_TRANSFER_SIZE,
        }
    }

    /// Before `OpenDevice` of `name`.
    ///
    /// # Errors
    ///
    /// The machine's answer in a state where devices cannot be opened; `VD_E_PROTOCOL` for a
    /// device this process has open.
    pub fn before_open(&self, name: &str) -> Result<(), Error> {
        let mut local = self.local();
        if !matches!(
            local.machine.state(),
            ClientSetState::Initializing | ClientSetState::Active
        ) {
            // In these states the machine only answers, with the table's error.
            local.machine.open_device(0, false, false)?;
        }
        if local.devices.iter().any(|(_, n)| n == name) {
            return Err(Error::Protocol(ProtocolReason::DeviceAlreadyOpen));
        }
        Ok(())
    }

    /// `OpenDevice` of `name` succeeded: the device's index. The device named like the set is
    /// device 0; the libraries do not reveal the order of the other names, so they are
    /// numbered in the order this process opens them.
    ///
    /// # Errors
    ///
    /// The machine's answer (the binding releases the device object).
    pub fn opened(&self, name: &str) -> Result<u32, Error> {
        let mut local = self.local();
        let index = if name == self.name {
            0
        } else {
            (1..MAX_DEVICES)
                .find(|i| local.devices.iter().all(|(j, _)| j != i))
                .unwrap_or(MAX_DEVICES)
        };
        local.machine.open_device(index, false, false)?;
        local.devices.push((index, name.to_owned()));
        Ok(index)
    }

    /// Before `GetBufferHandle` or `MapBufferHandle` (`call`) of `len` bytes (0 for
    /// GetBufferHandle).
    ///
    /// # Errors
    ///
    /// `VD_E_PROTOCOL` once the set is not open; `VD_E_INVALID` for more than the set's
    /// `maxTransferSize`.
    pub fn before_buffer_handle(&self, call: Call, len: u32) -> Result<(), Error> {
        self.local().machine.check_buffer_handle(call)?;
        if self.config.get().is_some_and(|c| len > c.max_transfer_size) {
            return Err(Error::Invalid(InvalidReason::TransferSize));
        }
        Ok(())
    }

    /// Before `SignalAbort` on this process's own initiative.
    ///
    /// # Errors
    ///
    /// The machine's answer.
    pub fn before_abort(&self) -> Result<(), Error> {
        self.local().machine.signal_abort(AbortReason::Signalled)
    }

    /// `Close`, with `call` (the library's `Close`) made under the set's lock: the library
    /// knows which devices are still open, in every process, and its answer, `call`'s result,
    /// stands; the machine goes back to DoesNotExist either way.
    ///
    /// The library's `Close` frees the device objects and the buffers, so it is never made
    /// while this process still uses them:
    ///
    /// - it waits for the device and buffer calls in progress ([`SetState::begin_call`]);
    ///   when a device is still open, it first ends their waits with `abort` (the library's
    ///   `SignalAbort`), as the library's own `Close` would;
    /// - while views of the buffers remain (commands not completed, mapped buffers), the
    ///   answer is the machine's, as vdi-shm's (`VD_E_OPEN` with devices open, after `abort`),
    ///   and the library's `Close` waits for [`SetState::take_deferred_close`], which the
    ///   binding calls when the last of them has gone (its set object drops).
    ///
    /// # Errors
    ///
    /// `VD_E_PROTOCOL`, without a call, when the set does not exist here.
    pub fn close<R>(
        &self,
        abort: impl FnOnce(),
        call: impl FnOnce() -> R,
    ) -> Result<Closed<R>, Error> {
        let mut local = self.local();
        let mut abort = Some(abort);
        loop {
            // Checked again after each wait: another thread's Close may have ended the set.
            if local.machine.state() == ClientSetState::DoesNotExist {
                return Err(Error::Protocol(ProtocolReason::WrongState(Call::Close)));
            }
            if local.in_flight == 0 {
                break;
            }
            if local.machine.has_open_devices()
                && let Some(abort) = abort.take()
            {
                let _ = local.machine.signal_abort(AbortReason::Signalled);
                abort();
            }
            local = self
                .idle
                .wait(local)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let open = local.machine.has_open_devices();
        let closed = if self.leases.is_empty() {
            let result = call();
            let _ = local.machine.close(open);
            Closed::Library(result)
        } else {
            local.close_deferred = true;
            let action = local.machine.close(open);
            if action.abort_peer
                && let Some(abort) = abort.take()
            {
                abort();
            }
            Closed::Deferred(action.result)
        };
        local.devices.clear();
        Ok(closed)
    }

    /// Whether a [`SetState::close`] left the library's `Close` for later: the binding calls
    /// it once no view of the set's buffers remains (when its set object drops), then deletes
    /// or releases the object.
    pub fn take_deferred_close(&self) -> bool {
        std::mem::take(&mut self.local().close_deferred)
    }

    /// Starts a call into the library that uses a device object or yields a view of a buffer
    /// (`GetCommand` until its command holds its lease, `CompleteCommand`, `MapBufferHandle`
    /// until its view holds its lease), after `check` (the machine's word, under the set's
    /// lock). [`SetState::close`] waits until the returned value drops.
    ///
    /// # Errors
    ///
    /// What `check` says.
    pub fn begin_call(
        &self,
        check: impl FnOnce(&mut ClientSetMachine) -> Result<(), Error>,
    ) -> Result<DeviceCall<'_>, Error> {
        let mut local = self.local();
        check(&mut local.machine)?;
        local.in_flight += 1;
        Ok(DeviceCall { state: self })
    }

    /// [`SetState::begin_call`] for `GetCommand` on device `index`: the machine's word as
    /// [`SetState::before_command`] gives it.
    ///
    /// # Errors
    ///
    /// The machine's answer.
    pub fn begin_command(&self, index: u32) -> Result<DeviceCall<'_>, Error> {
        self.begin_call(|m| m.check_get_command(index))
    }

    /// [`SetState::begin_call`] for `CompleteCommand` on device `index`.
    ///
    /// # Errors
    ///
    /// The machine's answer.
    pub fn begin_complete(&self, index: u32) -> Result<DeviceCall<'_>, Error> {
        self.begin_call(|m| m.check_complete_command(index))
    }

    /// Before `GetCommand` on device `index` (the machine answers `VD_E_CLOSE` too, for a
    /// device that returned it, without a call into the library).
    ///
    /// # Errors
    ///
    /// The machine's answer.
    pub fn before_command(&self, index: u32) -> Result<(), Error> {
        self.local().machine.check_get_command(index)
    }

    /// `GetCommand` on device `index` failed with `e`.
    pub fn command_failed(&self, index: u32, e: &Error) {
        if *e == Error::Closed {
            self.local().machine.device_closed(index);
        } else {
            self.observe(e);
        }
    }

    /// Before `CompleteCommand` on device `index`.
    ///
    /// # Errors
    ///
    /// The machine's answer.
    pub fn before_complete(&self, index: u32) -> Result<(), Error> {
        self.local().machine.check_complete_command(index)
    }
}

/// What [`SetState::close`] did.
#[derive(Debug)]
pub enum Closed<R> {
    /// It called the library's `Close`, which answered this.
    Library(R),
    /// Views of the set's buffers remain in this process: the library's `Close` waits for
    /// [`SetState::take_deferred_close`], and this is the machine's answer.
    Deferred(Result<(), Error>),
}

/// A call into the library in progress ([`SetState::begin_call`]); dropping it ends it.
#[derive(Debug)]
#[must_use = "the call is in progress until this value drops"]
pub struct DeviceCall<'a> {
    state: &'a SetState,
}

impl Drop for DeviceCall<'_> {
    fn drop(&mut self) {
        let mut local = self.state.local();
        local.in_flight -= 1;
        if local.in_flight == 0 {
            self.state.idle.notify_all();
        }
    }
}

/// The time left until `deadline` (`None`: no limit), for the library's call after a wait for
/// the device's turn.
pub fn remaining(deadline: Option<Instant>) -> Timeout {
    deadline.map_or(Timeout::INFINITE, |d| {
        Timeout::from(d.saturating_duration_since(Instant::now()))
    })
}
