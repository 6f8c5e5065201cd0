//! The state machines of vdi-spec.md §6 as pure code.
//!
//! Three machines: the set as the client sees it ([`ClientSetMachine`]), the set as the server
//! sees it ([`ServerSetMachine`]), and a device ([`ServerDeviceMachine`] on the server's side,
//! [`ClientDeviceMachine`] on the client's). Backends do no state checking of their own: before a
//! call they ask the machine, which answers with the specification's result (the next state, or
//! the exact error), and after a wait that succeeded they tell it the outcome.
//!
//! # Readings of the specification
//!
//! The specification's tables leave three points open; this crate reads them as follows.
//!
//! - **Active.** The client table says the set becomes Active at the first `OpenDevice`; another
//!   page says only when all devices are open. Here it becomes Active at the first `OpenDevice`,
//!   because a client that serves each device on its own thread opens a device and starts taking
//!   its commands before the other devices are open.
//! - **OpenDevice in Active.** The table answers `VD_E_PROTOCOL`; the method's page answers
//!   `VD_E_OPEN` when every device is open and `VD_E_PROTOCOL` when the named device is already
//!   open. Here: opening a device that is not yet open succeeds while the set is Active,
//!   `VD_E_OPEN` when all are open, and `VD_E_PROTOCOL` when this device is open already.
//! - **Normally terminated.** The set is normally terminated when every device this process
//!   opened has returned `VD_E_CLOSE`.

use core::fmt;

use crate::{AbortReason, CommandCode, CompletionCode, Error, ProtocolReason};

/// A VDI method, for state checks and error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Call {
    /// Client `Create`/`CreateEx`.
    Create,
    /// Client or server `GetConfiguration`.
    GetConfiguration,
    /// Client or server `OpenDevice`.
    OpenDevice,
    /// Client `GetCommand`.
    GetCommand,
    /// Client `CompleteCommand`.
    CompleteCommand,
    /// Either side's `SignalAbort`.
    SignalAbort,
    /// Either side's `Close`.
    Close,
    /// Client `OpenInSecondary`/`OpenInSecondaryEx`.
    OpenInSecondary,
    /// Client `GetBufferHandle`.
    GetBufferHandle,
    /// Client `MapBufferHandle`.
    MapBufferHandle,
    /// Server `Open`.
    Open,
    /// Server `BeginConfiguration`.
    BeginConfiguration,
    /// Server `RequestBuffers`.
    RequestBuffers,
    /// Server `QueryAvailableBuffers`.
    QueryAvailableBuffers,
    /// Server `EndConfiguration`.
    EndConfiguration,
    /// Server `AllocateBuffer`.
    AllocateBuffer,
    /// Server `FreeBuffer`.
    FreeBuffer,
    /// Server `SendCommand`.
    SendCommand,
    /// Server `CloseDevice`.
    CloseDevice,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

const fn wrong_state(call: Call) -> Error {
    Error::Protocol(ProtocolReason::WrongState(call))
}

/// A device set's state as the client sees it (vdi-spec.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientSetState {
    /// No set: before `CreateEx`, or after `Close`.
    DoesNotExist,
    /// Created; waiting for the server's configuration.
    Configurable,
    /// Configured; devices may be opened.
    Initializing,
    /// At least one device is open; commands flow.
    Active,
    /// Every device this process opened has returned `VD_E_CLOSE`.
    NormallyTerminated,
    /// Aborted by either side; only `Close` is useful.
    Aborted,
}

impl ClientSetState {
    /// Every state, in the order of the specification's table.
    pub const ALL: [Self; 6] = [
        Self::DoesNotExist,
        Self::Configurable,
        Self::Initializing,
        Self::Active,
        Self::NormallyTerminated,
        Self::Aborted,
    ];
}

/// What `Close` must do besides answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct CloseAction {
    /// What `Close` returns. `Close` releases the set's resources even when this is an error.
    pub result: Result<(), Error>,
    /// Whether the peer must see an abort: the set was closed before it ended normally.
    pub abort_peer: bool,
}

/// The device set as the client sees it: the client transition table of vdi-spec.md §6.
///
/// Devices are numbered from 0 in the order of the set's device names (device 0 has the set's
/// name). The machine tracks which devices this process has open and which have ended.
///
/// ```
/// use vdi_core::{ClientSetMachine, ClientSetState, Error};
/// let mut set = ClientSetMachine::new();
/// set.create(2)?;
/// set.check_get_configuration()?;
/// set.configured();
/// set.open_device(0, false, false)?;
/// assert_eq!(set.state(), ClientSetState::Active);
/// set.check_get_command(0)?;
/// set.device_closed(0);
/// assert_eq!(set.state(), ClientSetState::NormallyTerminated);
/// assert!(set.close(false).result.is_ok());
/// # Ok::<(), Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSetMachine {
    state: ClientSetState,
    device_count: u32,
    opened: u64,
    ended: u64,
    abort_reason: AbortReason,
}

impl Default for ClientSetMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientSetMachine {
    /// A machine in `DoesNotExist`.
    pub const fn new() -> Self {
        Self {
            state: ClientSetState::DoesNotExist,
            device_count: 0,
            opened: 0,
            ended: 0,
            abort_reason: AbortReason::Signalled,
        }
    }

    /// A machine for a secondary client that joined a configured set (`OpenInSecondary`).
    pub const fn secondary(device_count: u32) -> Self {
        Self {
            state: ClientSetState::Initializing,
            device_count,
            ..Self::new()
        }
    }

    /// The current state.
    pub const fn state(&self) -> ClientSetState {
        self.state
    }

    /// Why the set was aborted (meaningful in `Aborted`).
    pub const fn abort_reason(&self) -> AbortReason {
        self.abort_reason
    }

    /// Whether this process has device `index` open.
    pub const fn is_open(&self, index: u32) -> bool {
        index < 64 && self.opened & (1 << index) != 0
    }

    /// Whether any device is open in this process and has not ended.
    pub const fn has_open_devices(&self) -> bool {
        self.opened & !self.ended != 0
    }

    const fn aborted(&self) -> Error {
        Error::Aborted(self.abort_reason)
    }

    /// `CreateEx`: DoesNotExist → Configurable.
    ///
    /// # Errors
    ///
    /// `VD_E_PROTOCOL` in any other state.
    pub fn create(&mut self, device_count: u32) -> Result<(), Error> {
        match self.state {
            ClientSetState::DoesNotExist => {
                *self = Self {
                    state: ClientSetState::Configurable,
                    device_count,
                    ..Self::new()
                };
                Ok(())
            }
            _ => Err(wrong_state(Call::Create)),
        }
    }

    /// Checks `GetConfiguration` before waiting: allowed once created, until an abort.
    ///
    /// # Errors
    ///
    /// `VD_E_PROTOCOL` in DoesNotExist; `VD_E_ABORT` in Aborted.
    pub fn check_get_configuration(&self) -> Result<(), Error> {
        match self.state {
            ClientSetState::DoesNotExist => Err(wrong_state(Call::GetConfiguration)),
            ClientSetState::Aborted => Err(self.aborted()),
            _ => Ok(()),
        }
    }

    /// The configuration arrived: Configurable → Initializing (other states stay).
    pub fn configured(&mut self) {
        if self.state == ClientSetState::Configurable {
            self.state = ClientSetState::Initializing;
        }
    }

    /// `OpenDevice` of device `index`: Initializing → Active; further devices while Active.
    ///
    /// `all_open` and `this_open` say whether, across every process of the set, all devices or
    /// this one are already open.
    ///
    /// # Errors
    ///
    /// `VD_E_OPEN` when all devices are open; `VD_E_PROTOCOL` when this device is, or in a state
    /// where devices cannot be opened; `VD_E_INVALID` for an index outside the set; `VD_E_ABORT`.
    pub fn open_device(
        &mut self,
        index: u32,
        all_open: bool,
        this_open: bool,
    ) -> Result<(), Error> {
        match self.state {
            ClientSetState::Initializing | ClientSetState::Active => {
                if index >= self.device_count || index >= 64 {
                    return Err(Error::Invalid(crate::InvalidReason::DeviceName));
                }
                if all_open {
                    return Err(Error::Open);
                }
                if this_open || self.is_open(index) {
                    return Err(Error::Protocol(ProtocolReason::DeviceAlreadyOpen));
                }
                self.opened |= 1 << index;
                self.state = ClientSetState::Active;
                Ok(())
            }
            ClientSetState::Aborted => Err(self.aborted()),
            _ => Err(wrong_state(Call::OpenDevice)),
        }
    }

    fn check_device_call(&self, index: u32, call: Call) -> Result<(), Error> {
        match self.state {
            ClientSetState::Active if self.is_open(index) => Ok(()),
            ClientSetState::Aborted => Err(self.aborted()),
            _ => Err(wrong_state(call)),
        }
    }

    /// Checks `GetCommand` on device `index`: only in Active, on a device this process opened.
    ///
    /// A device that returned `VD_E_CLOSE` answers `VD_E_CLOSE` to every later `GetCommand`, in
    /// Active, in NormallyTerminated and after an abort, until `Close`. This is how the table's
    /// cells are read here: the specification says what GetCommand returns once the server
    /// closed the device (§4, "the normal end of the stream") and that the set is then
    /// NormallyTerminated (§6), not that a second thread waiting on the same device must learn
    /// the end differently from the first; PROTOCOL in NormallyTerminated is what a device that
    /// never ended gets (one this process did not open).
    ///
    /// # Errors
    ///
    /// `VD_E_CLOSE` for a device that ended; otherwise `VD_E_PROTOCOL` or `VD_E_ABORT` as the
    /// table says.
    pub fn check_get_command(&self, index: u32) -> Result<(), Error> {
        if self.has_ended(index) {
            return Err(Error::Closed);
        }
        self.check_device_call(index, Call::GetCommand)
    }

    /// Whether device `index` returned `VD_E_CLOSE` in this process (see
    /// [`device_closed`](Self::device_closed)).
    pub const fn has_ended(&self, index: u32) -> bool {
        index < 64 && self.ended & (1 << index) != 0
    }

    /// Checks `GetBufferHandle` or `MapBufferHandle` (`call`): allowed while the set is open, in
    /// any state but DoesNotExist (§4: "VD_E_PROTOCOL (set not open)"). Whether the command or
    /// handle is valid is the backend's to check.
    ///
    /// # Errors
    ///
    /// `VD_E_PROTOCOL` in DoesNotExist.
    pub fn check_buffer_handle(&self, call: Call) -> Result<(), Error> {
        match self.state {
            ClientSetState::DoesNotExist => Err(wrong_state(call)),
            _ => Ok(()),
        }
    }

    /// Checks `CompleteCommand` on device `index`.
    ///
    /// # Errors
    ///
    /// `VD_E_PROTOCOL` or `VD_E_ABORT` as the table says.
    pub fn check_complete_command(&self, index: u32) -> Result<(), Error> {
        self.check_device_call(index, Call::CompleteCommand)
    }

    /// Device `index` returned `VD_E_CLOSE`; after the last one the set is NormallyTerminated.
    pub fn device_closed(&mut self, index: u32) {
        if index < 64 && self.state == ClientSetState::Active {
            self.ended |= (1 << index) & self.opened;
            if self.ended == self.opened {
                self.state = ClientSetState::NormallyTerminated;
            }
        }
    }

    /// `SignalAbort` (or a peer's abort, death or misbehaviour seen by this process).
    ///
    /// # Errors
    ///
    /// `VD_E_PROTOCOL` in DoesNotExist.
    pub fn signal_abort(&mut self, reason: AbortReason) -> Result<(), Error> {
        match self.state {
            ClientSetState::DoesNotExist => Err(wrong_state(Call::SignalAbort)),
            ClientSetState::Aborted => Ok(()),
            _ => {
                self.state = ClientSetState::Aborted;
                self.abort_reason = reason;
                Ok(())
            }
        }
    }

    /// `Close`: → DoesNotExist from any state but DoesNotExist.
    ///
    /// `devices_open` says whether any device of the set (in any process) is still open, that
    /// is, has not returned `VD_E_CLOSE`.
    pub fn close(&mut self, devices_open: bool) -> CloseAction {
        let (result, abort_peer) = match self.state {
            ClientSetState::DoesNotExist => {
                return CloseAction {
                    result: Err(wrong_state(Call::Close)),
                    abort_peer: false,
                };
            }
            ClientSetState::Aborted => (Ok(()), false),
            ClientSetState::NormallyTerminated if !devices_open => (Ok(()), false),
            _ if devices_open => (Err(Error::Open), true),
            _ => (Ok(()), true),
        };
        *self = Self::new();
        CloseAction { result, abort_peer }
    }
}

/// A device set's state as the server sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerSetState {
    /// Before `Open`, or after `Close`.
    DoesNotExist,
    /// Opened; the client's configuration can be read.
    Connected,
    /// `BeginConfiguration` was called; buffers are being requested.
    Configurable,
    /// `EndConfiguration` succeeded; the client sees the configuration; devices may be opened.
    Initializing,
    /// At least one device is open.
    Active,
    /// Aborted by either side.
    Aborted,
}

impl ServerSetState {
    /// Every state.
    pub const ALL: [Self; 6] = [
        Self::DoesNotExist,
        Self::Connected,
        Self::Configurable,
        Self::Initializing,
        Self::Active,
        Self::Aborted,
    ];
}

/// The device set as the server sees it (vdi-spec.md §5 and §6).
///
/// | call | DoesNotExist | Connected | Configurable | Initializing | Active | Aborted |
/// |---|---|---|---|---|---|---|
/// | Open | OK→Connected | PROTOCOL | PROTOCOL | PROTOCOL | PROTOCOL | PROTOCOL |
/// | GetConfiguration | PROTOCOL | OK | OK | OK | OK | ABORT |
/// | BeginConfiguration | PROTOCOL | OK→Configurable | PROTOCOL | PROTOCOL | PROTOCOL | ABORT |
/// | RequestBuffers | PROTOCOL | PROTOCOL | OK (summed) | OK (at once) | OK (at once) | ABORT |
/// | QueryAvailableBuffers | PROTOCOL | PROTOCOL | PROTOCOL | OK | OK | ABORT |
/// | EndConfiguration | PROTOCOL | PROTOCOL | OK→Initializing | PROTOCOL | PROTOCOL | ABORT |
/// | OpenDevice | PROTOCOL | PROTOCOL | OK (stays) | OK→Active | OK, or OPEN | ABORT |
/// | AllocateBuffer | PROTOCOL | PROTOCOL | PROTOCOL | OK | OK | ABORT |
/// | FreeBuffer | PROTOCOL | PROTOCOL | PROTOCOL | OK | OK | OK |
/// | SignalAbort | PROTOCOL | OK→Aborted | OK→Aborted | OK→Aborted | OK→Aborted | OK |
/// | Close | PROTOCOL | OK→DNE | OK→DNE | OK→DNE | OK or PROTOCOL→DNE | OK→DNE |
///
/// The server may open its devices while configuring, so that every device name is known when
/// the client's `GetConfiguration` returns; the set becomes Active at the first `OpenDevice`
/// after `EndConfiguration`, or at `EndConfiguration` when devices were opened before it.
/// `Close` with devices still open answers `VD_E_PROTOCOL`, aborts, and releases the set anyway.
/// `FreeBuffer` works after an abort because buffers stay usable by their holder until `Close`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSetMachine {
    state: ServerSetState,
    abort_reason: AbortReason,
    devices_opened: bool,
}

impl Default for ServerSetMachine {
    fn default() -> Self {
        Self::new()
    }
}

/// The server-set calls the table covers, for [`ServerSetMachine::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerCall {
    /// `Open`.
    Open,
    /// `GetConfiguration`.
    GetConfiguration,
    /// `BeginConfiguration`.
    BeginConfiguration,
    /// `RequestBuffers`.
    RequestBuffers,
    /// `QueryAvailableBuffers`.
    QueryAvailableBuffers,
    /// `EndConfiguration`.
    EndConfiguration,
    /// `OpenDevice`.
    OpenDevice,
    /// `AllocateBuffer`.
    AllocateBuffer,
    /// `FreeBuffer`.
    FreeBuffer,
    /// `SignalAbort`.
    SignalAbort,
    /// `Close`.
    Close,
}

impl ServerCall {
    /// Every call, in the order of the table.
    pub const ALL: [Self; 11] = [
        Self::Open,
        Self::GetConfiguration,
        Self::BeginConfiguration,
        Self::RequestBuffers,
        Self::QueryAvailableBuffers,
        Self::EndConfiguration,
        Self::OpenDevice,
        Self::AllocateBuffer,
        Self::FreeBuffer,
        Self::SignalAbort,
        Self::Close,
    ];

    const fn call(self) -> Call {
        match self {
            Self::Open => Call::Open,
            Self::GetConfiguration => Call::GetConfiguration,
            Self::BeginConfiguration => Call::BeginConfiguration,
            Self::RequestBuffers => Call::RequestBuffers,
            Self::QueryAvailableBuffers => Call::QueryAvailableBuffers,
            Self::EndConfiguration => Call::EndConfiguration,
            Self::OpenDevice => Call::OpenDevice,
            Self::AllocateBuffer => Call::AllocateBuffer,
            Self::FreeBuffer => Call::FreeBuffer,
            Self::SignalAbort => Call::SignalAbort,
            Self::Close => Call::Close,
        }
    }
}

impl ServerSetMachine {
    /// A machine in `DoesNotExist`.
    pub const fn new() -> Self {
        Self {
            state: ServerSetState::DoesNotExist,
            abort_reason: AbortReason::Signalled,
            devices_opened: false,
        }
    }

    /// The current state.
    pub const fn state(&self) -> ServerSetState {
        self.state
    }

    /// Why the set was aborted (meaningful in `Aborted`).
    pub const fn abort_reason(&self) -> AbortReason {
        self.abort_reason
    }

    /// Whether the configuration is final (`EndConfiguration` succeeded).
    pub const fn is_configured(&self) -> bool {
        matches!(
            self.state,
            ServerSetState::Initializing | ServerSetState::Active
        )
    }

    /// The table's answer for `call` in the current state: the state after a successful call,
    /// or the error. Nothing changes; see [`ServerSetMachine::apply`].
    ///
    /// # Errors
    ///
    /// The table's error for the cell.
    pub fn check(&self, call: ServerCall) -> Result<ServerSetState, Error> {
        use ServerCall as C;
        use ServerSetState as S;
        let s = self.state;
        match (call, s) {
            (C::Open, S::DoesNotExist) => Ok(S::Connected),
            (C::Open, _) => Err(wrong_state(call.call())),
            (C::FreeBuffer, S::Aborted) => Ok(S::Aborted),
            (C::SignalAbort | C::Close, S::Aborted) => Ok(if call == C::Close {
                S::DoesNotExist
            } else {
                S::Aborted
            }),
            (_, S::Aborted) => Err(Error::Aborted(self.abort_reason)),
            (_, S::DoesNotExist) => Err(wrong_state(call.call())),
            (C::GetConfiguration, _) => Ok(s),
            (C::BeginConfiguration, S::Connected) => Ok(S::Configurable),
            (C::RequestBuffers, S::Configurable | S::Initializing | S::Active) => Ok(s),
            (C::EndConfiguration, S::Configurable) => Ok(if self.devices_opened {
                S::Active
            } else {
                S::Initializing
            }),
            (C::OpenDevice, S::Configurable) => Ok(S::Configurable),
            (C::OpenDevice, S::Initializing | S::Active) => Ok(S::Active),
            (
                C::QueryAvailableBuffers | C::AllocateBuffer | C::FreeBuffer,
                S::Initializing | S::Active,
            ) => Ok(s),
            (C::SignalAbort, _) => Ok(S::Aborted),
            (C::Close, _) => Ok(S::DoesNotExist),
            _ => Err(wrong_state(call.call())),
        }
    }

    /// Checks `call` and, if it is allowed, moves to the next state.
    ///
    /// Calls that wait or allocate (`EndConfiguration`, `OpenDevice`) should [`check`] first and
    /// `apply` only after they succeed. `Close` is better done through [`ServerSetMachine::close`].
    ///
    /// [`check`]: ServerSetMachine::check
    ///
    /// # Errors
    ///
    /// The table's error for the cell; the state does not change.
    pub fn apply(&mut self, call: ServerCall) -> Result<ServerSetState, Error> {
        let next = self.check(call)?;
        self.state = next;
        if call == ServerCall::OpenDevice {
            self.devices_opened = true;
        }
        Ok(next)
    }

    /// The set was aborted, by this side or the peer.
    pub fn abort(&mut self, reason: AbortReason) {
        if self.state != ServerSetState::Aborted && self.state != ServerSetState::DoesNotExist {
            self.state = ServerSetState::Aborted;
            self.abort_reason = reason;
        }
    }

    /// `Close`; `devices_open` says whether any device is open and not closed with
    /// `CloseDevice`.
    pub fn close(&mut self, devices_open: bool) -> CloseAction {
        let action = match self.state {
            ServerSetState::DoesNotExist => {
                return CloseAction {
                    result: Err(wrong_state(Call::Close)),
                    abort_peer: false,
                };
            }
            ServerSetState::Aborted => CloseAction {
                result: Ok(()),
                abort_peer: false,
            },
            _ if devices_open => CloseAction {
                result: Err(wrong_state(Call::Close)),
                abort_peer: true,
            },
            // A set closed before any device ended normally leaves the client waiting:
            // abort it. After every device was closed, the client has seen VD_E_CLOSE.
            ServerSetState::Active => CloseAction {
                result: Ok(()),
                abort_peer: false,
            },
            _ => CloseAction {
                result: Ok(()),
                abort_peer: true,
            },
        };
        *self = Self::new();
        action
    }
}

/// A device's state (vdi-spec.md §6, "Per-device IO-ERROR state").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceState {
    /// Commands flow.
    Active,
    /// A command completed with an error: only `VDC_ClearError` may be sent.
    IoError,
    /// The server called `CloseDevice`.
    Closed,
    /// The set was aborted.
    Aborted,
}

impl DeviceState {
    /// Every state.
    pub const ALL: [Self; 4] = [Self::Active, Self::IoError, Self::Closed, Self::Aborted];
}

/// A device as the server sees it: what may be sent, and what completions do.
///
/// ```
/// use vdi_core::{CommandCode, CompletionCode, DeviceState, Error, ServerDeviceMachine};
/// let mut dev = ServerDeviceMachine::new(4);
/// dev.send(CommandCode::WRITE)?;
/// dev.completed(CommandCode::WRITE, CompletionCode::DISK_FULL);
/// assert_eq!(dev.state(), DeviceState::IoError);
/// assert_eq!(dev.send(CommandCode::WRITE), Err(Error::DeviceError));
/// dev.send(CommandCode::CLEAR_ERROR)?;
/// dev.completed(CommandCode::CLEAR_ERROR, CompletionCode::SUCCESS);
/// assert_eq!(dev.state(), DeviceState::Active);
/// # Ok::<(), Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerDeviceMachine {
    state: DeviceState,
    outstanding: u32,
    depth: u32,
    abort_reason: AbortReason,
}

impl ServerDeviceMachine {
    /// An Active device that allows `depth` outstanding commands.
    pub const fn new(depth: u32) -> Self {
        Self {
            state: DeviceState::Active,
            outstanding: 0,
            depth,
            abort_reason: AbortReason::Signalled,
        }
    }

    /// The current state.
    pub const fn state(&self) -> DeviceState {
        self.state
    }

    /// Commands sent and not yet completed.
    pub const fn outstanding(&self) -> u32 {
        self.outstanding
    }

    /// `SendCommand` of `code`.
    ///
    /// # Errors
    ///
    /// - `VD_E_ABORT` after an abort;
    /// - `VD_E_PROTOCOL` after `CloseDevice`;
    /// - [`Error::DeviceError`] for anything but `VDC_ClearError` in IO-ERROR;
    /// - `VD_E_BUSY` when `depth` commands are outstanding.
    pub fn send(&mut self, code: CommandCode) -> Result<(), Error> {
        match self.state {
            DeviceState::Aborted => return Err(Error::Aborted(self.abort_reason)),
            DeviceState::Closed => return Err(wrong_state(Call::SendCommand)),
            DeviceState::IoError if code != CommandCode::CLEAR_ERROR => {
                return Err(Error::DeviceError);
            }
            _ => {}
        }
        if self.outstanding >= self.depth {
            return Err(Error::Busy);
        }
        self.outstanding += 1;
        Ok(())
    }

    /// A command of `code` completed with `completion`.
    ///
    /// An error completion moves Active to IO-ERROR; a successful `VDC_ClearError` moves
    /// IO-ERROR back to Active.
    pub fn completed(&mut self, code: CommandCode, completion: CompletionCode) {
        self.outstanding = self.outstanding.saturating_sub(1);
        match self.state {
            DeviceState::IoError
                if code == CommandCode::CLEAR_ERROR && completion == CompletionCode::SUCCESS =>
            {
                self.state = DeviceState::Active;
            }
            DeviceState::Active if completion.is_error() => self.state = DeviceState::IoError,
            _ => {}
        }
    }

    /// `CloseDevice`.
    ///
    /// # Errors
    ///
    /// `VD_E_ABORT` after an abort (the call does nothing then); `VD_E_PROTOCOL` when closed
    /// already.
    pub fn close(&mut self) -> Result<(), Error> {
        match self.state {
            DeviceState::Aborted => Err(Error::Aborted(self.abort_reason)),
            DeviceState::Closed => Err(wrong_state(Call::CloseDevice)),
            _ => {
                self.state = DeviceState::Closed;
                Ok(())
            }
        }
    }

    /// The set was aborted.
    pub fn abort(&mut self, reason: AbortReason) {
        if self.state != DeviceState::Aborted {
            self.state = DeviceState::Aborted;
            self.abort_reason = reason;
        }
    }
}

/// What the client does with a command it takes from the device's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Hand it to the caller of `GetCommand`.
    Deliver,
    /// Complete it at once with `ERROR_IO_DEVICE` without the caller seeing it: the device is
    /// in IO-ERROR and this is not `VDC_ClearError`.
    FailIoDevice,
    /// Keep it back (it is `VDC_ClearError`) until every command outstanding at the error has
    /// been completed; then call [`ClientDeviceMachine::take_held`].
    Hold,
}

/// A device as the client sees it: the IO-ERROR rules applied to what `GetCommand` delivers.
///
/// ```
/// use vdi_core::{ClientDeviceMachine, CommandCode, CompletionCode, Delivery};
/// let mut dev = ClientDeviceMachine::new();
/// assert_eq!(dev.on_command(CommandCode::WRITE), Delivery::Deliver);
/// assert_eq!(dev.on_command(CommandCode::WRITE), Delivery::Deliver);
/// dev.completed(CommandCode::WRITE, CompletionCode::DISK_FULL);
/// assert_eq!(dev.on_command(CommandCode::WRITE), Delivery::FailIoDevice);
/// assert_eq!(dev.on_command(CommandCode::CLEAR_ERROR), Delivery::Hold);
/// dev.completed(CommandCode::WRITE, CompletionCode::SUCCESS);
/// assert!(dev.take_held());
/// dev.completed(CommandCode::CLEAR_ERROR, CompletionCode::SUCCESS);
/// assert_eq!(dev.on_command(CommandCode::WRITE), Delivery::Deliver);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientDeviceMachine {
    io_error: bool,
    outstanding: u32,
    held: bool,
}

impl ClientDeviceMachine {
    /// An Active device with nothing outstanding.
    pub const fn new() -> Self {
        Self {
            io_error: false,
            outstanding: 0,
            held: false,
        }
    }

    /// Whether the device is in IO-ERROR.
    pub const fn is_io_error(&self) -> bool {
        self.io_error
    }

    /// Commands delivered and not yet completed.
    pub const fn outstanding(&self) -> u32 {
        self.outstanding
    }

    /// Whether a `VDC_ClearError` is held back.
    pub const fn has_held(&self) -> bool {
        self.held
    }

    /// Decides what to do with a command of `code` taken from the queue.
    pub fn on_command(&mut self, code: CommandCode) -> Delivery {
        if !self.io_error {
            self.outstanding += 1;
            return Delivery::Deliver;
        }
        if code != CommandCode::CLEAR_ERROR {
            return Delivery::FailIoDevice;
        }
        if self.outstanding == 0 {
            self.outstanding += 1;
            Delivery::Deliver
        } else {
            self.held = true;
            Delivery::Hold
        }
    }

    /// Delivers the held `VDC_ClearError` if nothing else is outstanding; returns whether it did.
    pub fn take_held(&mut self) -> bool {
        if self.held && self.outstanding == 0 {
            self.held = false;
            self.outstanding += 1;
            true
        } else {
            false
        }
    }

    /// A delivered command of `code` was completed with `completion`.
    pub fn completed(&mut self, code: CommandCode, completion: CompletionCode) {
        self.outstanding = self.outstanding.saturating_sub(1);
        if code == CommandCode::CLEAR_ERROR && completion == CompletionCode::SUCCESS {
            self.io_error = false;
        } else if completion.is_error() {
            self.io_error = true;
        }
    }
}
