//! The state behind the C++ objects, in safe Rust: a [`Set`] per `ClientVirtualDeviceSet`, a
//! [`Device`] per `ClientVirtualDevice`, and the `VDC_Command`s handed out.
//!
//! Every method takes what [`crate::ffi`] read from the client (values, and whether an output
//! pointer was NULL) and returns what it must write back, so that all checks of bad input live
//! here, in safe code. State rules are not checked here: the vdi-shm set answers every call
//! from vdi-core's [`ClientSetMachine`]; before a set exists (or after a failed `Create`), a
//! fresh machine in `DoesNotExist` answers.

#![forbid(unsafe_code)]

use std::{
    cell::UnsafeCell,
    collections::VecDeque,
    ffi::c_void,
    ptr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use vdi_core::{
    AbortReason, BufferHandle, Call, ClientBackend, ClientCommand, ClientDevice as _,
    ClientDeviceSet as _, ClientSetMachine, ClientSetState, Completion, CompletionCode, Config,
    Error, InvalidReason, MappedBuffer as _, NameError, ProtocolReason, Timeout, VdConfig,
    VdcCommand,
};
use vdi_shm::{ClientSet, Command, ShmClient};

/// How many bytes of a name are read looking for its NUL: one more than the longest name
/// accepted, so a longer name is refused without reading further.
pub const NAME_SCAN_LIMIT: usize = vdi_core::MAX_NAME_LEN + 1;

/// A name as [`crate::ffi`] read it (a NULL pointer is `None` where one is taken).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawName<'a> {
    /// The bytes before the NUL, at most [`NAME_SCAN_LIMIT`].
    pub bytes: &'a [u8],
    /// Whether the NUL was found within [`NAME_SCAN_LIMIT`] bytes.
    pub terminated: bool,
}

/// Checks a name from a client: `VD_E_INVALID` for NULL, too long, not UTF-8, or against the
/// naming rules.
///
/// # Errors
///
/// `VD_E_INVALID`, with the broken rule.
pub fn parse_name(raw: Option<RawName<'_>>) -> Result<&str, Error> {
    let RawName { bytes, terminated } = raw.ok_or(Error::Invalid(InvalidReason::Unspecified))?;
    if !terminated || bytes.len() > vdi_core::MAX_NAME_LEN {
        return Err(Error::Invalid(InvalidReason::Name(NameError::TooLong(
            bytes.len(),
        ))));
    }
    let name =
        std::str::from_utf8(bytes).map_err(|_| Error::Invalid(InvalidReason::Unspecified))?;
    vdi_core::validate_name(name)?;
    Ok(name)
}

/// A `GetCommand` or `GetConfiguration` timeout in ms: any negative value waits without limit,
/// as does anything from `u32::MAX` ms (49.7 days) up.
pub fn timeout_from_millis(ms: i64) -> Timeout {
    u32::try_from(ms).map_or(Timeout::INFINITE, Timeout::from_millis)
}

// The set and device objects are shared by the client's threads through raw pointers, which
// hide these types' auto traits from the compiler: what that sharing relies on is checked
// here, so that a change in vdi-shm cannot silently break it.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send_sync::<ShmClient>();
    send_sync::<ClientSet>();
    send_sync::<vdi_shm::ClientDevice>();
    send::<Command>();
};

/// What the client is handed a pointer into: an allocation that never moves and whose
/// handle is moved freely (into lists, out of them) without re-asserting unique ownership, as
/// moving a `Box` would, which would invalidate the client's pointer under Rust's aliasing
/// rules. It is never cloned, so its (non-atomic) count is only ever touched by the one
/// owner, under the mutex that holds it.
type Stable<T> = std::rc::Rc<T>;

const fn null_argument() -> Error {
    Error::Invalid(InvalidReason::Unspecified)
}

/// What a `ClientVirtualDeviceSet` holds.
#[derive(Debug)]
pub struct Set {
    backend: ShmClient,
    inner: Mutex<SetInner>,
}

#[derive(Debug)]
struct SetInner {
    /// Answers `Create` and `OpenInSecondary`: `DoesNotExist` until one succeeds, and again
    /// once the set was closed.
    lifecycle: ClientSetMachine,
    /// The devices ever opened through this object; they live as long as it does, since the
    /// client holds pointers to them.
    /// Each device stays at its address while the list grows: C++ points into it.
    devices: Vec<Stable<DeviceSlot>>,
    /// The set created or joined last; kept after `Close`, so later calls get its answer.
    current: Option<Arc<ClientSet>>,
}

/// A device as the set owns it: the storage of its C++ object, and its state.
#[derive(Debug)]
struct DeviceSlot {
    /// Where the C++ side constructs the `ClientVirtualDevice` (one pointer). Only C++ code
    /// reads or writes it.
    cpp: UnsafeCell<[*mut c_void; 1]>,
    device: Device,
}

impl Default for Set {
    fn default() -> Self {
        Self::new()
    }
}

impl Set {
    /// A set object with no set: every call but `Create` and `OpenInSecondary` answers
    /// `VD_E_PROTOCOL`.
    pub fn new() -> Self {
        Self::with_client(ShmClient::new())
    }

    /// [`Set::new`] whose sets come from `backend` (vdi-shm with other options).
    pub fn with_client(backend: ShmClient) -> Self {
        Self {
            backend,
            inner: Mutex::new(SetInner {
                lifecycle: ClientSetMachine::new(),
                devices: Vec::new(),
                current: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SetInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current set, or the error a set in `DoesNotExist` gives for the call (`check`
    /// asks a fresh machine).
    fn current(
        &self,
        check: impl FnOnce(&mut ClientSetMachine) -> Result<(), Error>,
    ) -> Result<Arc<ClientSet>, Error> {
        if let Some(set) = &self.lock().current {
            return Ok(Arc::clone(set));
        }
        check(&mut ClientSetMachine::new())?;
        Err(Error::Protocol(ProtocolReason::Unspecified))
    }

    /// `Create(name, cfg)`, or on Windows `CreateEx(instance, name, cfg)` (`None`: the
    /// default instance).
    ///
    /// # Errors
    ///
    /// `VD_E_INVALID` for a NULL or bad name or a NULL configuration, `VD_E_NOTSUPPORTED` for
    /// a configuration that breaks a rule, `VD_E_PROTOCOL` when this object has a set open or
    /// a set of that name exists, `VD_E_INSTANCE_NAME` for an instance the backend does not
    /// know.
    pub fn create(
        &self,
        instance: Option<&str>,
        name: Option<RawName<'_>>,
        cfg: Option<VdConfig>,
    ) -> Result<(), Error> {
        let name = parse_name(name)?;
        let raw = cfg.ok_or_else(null_argument)?;
        let config = Config::from_raw(&raw).client();
        let mut inner = self.lock();
        inner.sync_lifecycle();
        inner.lifecycle.create(config.device_count)?;
        match self.backend.create(instance, name, &config) {
            Ok(set) => {
                inner.current = Some(Arc::new(set));
                Ok(())
            }
            Err(e) => {
                inner.lifecycle = ClientSetMachine::new();
                Err(e)
            }
        }
    }

    /// `OpenInSecondary(name)`, or on Windows `OpenInSecondaryEx(instance, name)`.
    ///
    /// # Errors
    ///
    /// `VD_E_INVALID` for a NULL or bad name, `VD_E_PROTOCOL` when this object has a set open
    /// or no such set is ready for secondaries, `VD_E_ABORT`, `VD_E_INSTANCE_NAME`.
    pub fn open_in_secondary(
        &self,
        instance: Option<&str>,
        name: Option<RawName<'_>>,
    ) -> Result<(), Error> {
        let name = parse_name(name)?;
        let mut inner = self.lock();
        inner.sync_lifecycle();
        if inner.lifecycle.state() != ClientSetState::DoesNotExist {
            return Err(Error::Protocol(ProtocolReason::WrongState(
                Call::OpenInSecondary,
            )));
        }
        let set = self.backend.open_secondary(instance, name)?;
        inner.lifecycle = ClientSetMachine::secondary(1);
        inner.current = Some(Arc::new(set));
        Ok(())
    }

    /// `GetConfiguration(timeout, cfg)`: the configuration to write to `cfg`.
    ///
    /// # Errors
    ///
    /// `VD_E_INVALID` for a NULL `cfg`, `VD_E_TIMEOUT`, `VD_E_ABORT`, `VD_E_PROTOCOL`.
    pub fn configuration(&self, timeout: i64, out: bool) -> Result<VdConfig, Error> {
        if !out {
            return Err(null_argument());
        }
        let set = self.current(|m| m.check_get_configuration())?;
        Ok(set.configuration(timeout_from_millis(timeout))?.to_raw())
    }

    /// `OpenDevice(name, ppDevice)`: where the C++ side constructs the device object, and the
    /// device it forwards to. Both live until this object is dropped.
    ///
    /// # Errors
    ///
    /// `VD_E_INVALID` for a NULL or bad name or a NULL `ppDevice`, or an unknown device;
    /// `VD_E_OPEN`, `VD_E_PROTOCOL`, `VD_E_ABORT` as the set's state says.
    pub fn open_device(
        &self,
        name: Option<RawName<'_>>,
        out: bool,
    ) -> Result<(*mut c_void, *const Device), Error> {
        if !out {
            return Err(null_argument());
        }
        let name = parse_name(name)?;
        let set = self.current(|m| m.open_device(0, false, false))?;
        let device = set.open_device(name)?;
        let slot = Stable::new(DeviceSlot {
            cpp: UnsafeCell::new([ptr::null_mut()]),
            device: Device {
                set,
                device,
                commands: Mutex::default(),
            },
        });
        let storage = slot.cpp.get().cast::<c_void>();
        let device: *const Device = &slot.device;
        // The box's contents do not move when the box itself moves into the list.
        self.lock().devices.push(slot);
        Ok((storage, device))
    }

    /// `Close()`.
    ///
    /// # Errors
    ///
    /// `VD_E_OPEN` (devices still open: the set is aborted and released anyway),
    /// `VD_E_PROTOCOL` when no set is open.
    pub fn close(&self) -> Result<(), Error> {
        self.current(|m| m.close(false).result)?.close()
    }

    /// `SignalAbort()`.
    ///
    /// # Errors
    ///
    /// `VD_E_PROTOCOL` when no set is open.
    pub fn signal_abort(&self) -> Result<(), Error> {
        self.current(|m| m.signal_abort(AbortReason::Signalled))?
            .signal_abort()
    }

    /// `GetBufferHandle(pBuffer, pHandle)`: the handle of the buffer of an active command of
    /// this set's devices in this process.
    ///
    /// # Errors
    ///
    /// `VD_E_INVALID` for a NULL argument or an address that is not the buffer of such a
    /// command; `VD_E_PROTOCOL` when no set is open.
    pub fn buffer_handle(&self, buffer: *const u8, out: bool) -> Result<u32, Error> {
        if !out {
            return Err(null_argument());
        }
        let inner = self.lock();
        let set = inner.open_set(Call::GetBufferHandle)?;
        if buffer.is_null() {
            return Err(Error::Invalid(InvalidReason::Buffer));
        }
        for slot in inner.devices_of(set) {
            let commands = slot.device.lock();
            if let Some(o) = commands
                .outstanding
                .iter()
                .find(|o| ptr::eq(o.buffer, buffer))
            {
                return Ok(set.buffer_handle(&o.command)?.0);
            }
        }
        Err(Error::Invalid(InvalidReason::Buffer))
    }

    /// `MapBufferHandle(handle, ppBuffer)`: this process's address of the buffer a handle
    /// names.
    ///
    /// A handle of a command this process holds maps to that command's buffer. Any other
    /// handle is validated by vdi-shm (a live buffer of this set, inside a segment this process
    /// has mapped); the address stays valid while this object has the set (until the next
    /// `Create` or `OpenInSecondary`, or its destruction), and the client may use it until the
    /// process that holds the command completes it, as VDI's contract says.
    ///
    /// # Errors
    ///
    /// `VD_E_INVALID` for a NULL `ppBuffer` or a handle that names no live buffer of this set;
    /// `VD_E_PROTOCOL` when no set is open.
    pub fn map_buffer_handle(&self, handle: i32, out: bool) -> Result<*mut u8, Error> {
        if !out {
            return Err(null_argument());
        }
        // The handle is a 32-bit value the client carries as `int`: the bits, unchanged.
        let handle = BufferHandle(handle as u32);
        let set = {
            let inner = self.lock();
            let set = inner.open_set(Call::MapBufferHandle)?;
            for slot in inner.devices_of(set) {
                let commands = slot.device.lock();
                let own = commands.outstanding.iter().find(|o| {
                    !o.buffer.is_null() && set.buffer_handle(&o.command).ok() == Some(handle)
                });
                if let Some(o) = own {
                    return Ok(o.buffer);
                }
            }
            Arc::clone(set)
        };
        // One byte is enough to validate the handle and learn the address; vdi-shm checks
        // that the whole buffer lies inside a mapped segment. The view (and its lease) go at
        // once: the segment stays mapped while the set lives, and from here on only the
        // client touches the bytes, through the address.
        let mut mapped = set.map_buffer_handle(handle, 1)?;
        Ok(mapped.as_mut_slice().as_mut_ptr())
    }

    /// vdi-shm's view of the first `len` bytes of the buffer a handle names, for a Rust caller
    /// that makes slices of them ([`crate::cabi`]). Unlike [`Set::map_buffer_handle`] (an
    /// address for C++, whose aliasing Rust does not see), the view holds vdi-shm's lease on
    /// the bytes while it lives: a second view of them, or one of a command this process holds,
    /// is refused, as [`vdi_core::ClientDeviceSet::map_buffer_handle`] says.
    ///
    /// # Errors
    ///
    /// As [`Set::map_buffer_handle`]; `VD_E_INVALID` also when the buffer is shorter than `len`
    /// or already has a view in this process (the buffer of a command it holds).
    pub fn map_buffer_view(
        &self,
        handle: BufferHandle,
        len: u32,
    ) -> Result<vdi_shm::MappedBuffer, Error> {
        let set = Arc::clone(self.lock().open_set(Call::MapBufferHandle)?);
        set.map_buffer_handle(handle, len)
    }

    /// `RegisterDeviceClosed()`: accepted and ignored.
    ///
    /// The Linux SDK declares it, with no result and no documentation; no client of the corpus
    /// calls it. This library tracks the end of each device itself (a device's `GetCommand`
    /// returns `VD_E_CLOSE` once, then keeps returning it), so there is nothing to register.
    pub fn register_device_closed(&self) {}
}

impl SetInner {
    /// Back to `DoesNotExist` once the current set was closed.
    fn sync_lifecycle(&mut self) {
        if self
            .current
            .as_ref()
            .is_none_or(|s| s.state() == ClientSetState::DoesNotExist)
        {
            self.lifecycle = ClientSetMachine::new();
        }
    }

    /// The current set if it is open; `VD_E_PROTOCOL` otherwise.
    fn open_set(&self, call: Call) -> Result<&Arc<ClientSet>, Error> {
        match &self.current {
            Some(set) if set.state() != ClientSetState::DoesNotExist => Ok(set),
            _ => Err(Error::Protocol(ProtocolReason::WrongState(call))),
        }
    }

    fn devices_of<'a>(&'a self, set: &'a Arc<ClientSet>) -> impl Iterator<Item = &'a DeviceSlot> {
        self.devices
            .iter()
            .map(|b| &**b)
            .filter(move |slot| Arc::ptr_eq(&slot.device.set, set))
    }
}

/// What a `ClientVirtualDevice` forwards to.
#[derive(Debug)]
pub struct Device {
    set: Arc<ClientSet>,
    device: vdi_shm::ClientDevice,
    commands: Mutex<Commands>,
}

/// The `VDC_Command`s of a device.
#[derive(Debug, Default)]
struct Commands {
    /// Handed out and not yet completed.
    outstanding: Vec<Outstanding>,
    /// Completed since the device's last `GetCommand`: still readable by the client.
    /// Each command stays at the address the client was given.
    retired: Vec<Stable<UnsafeCell<VdcCommand>>>,
    /// Slots no longer handed out, kept for the next commands, oldest first: a slot is
    /// reused as late as possible, so that a client completing a stale pointer a second time
    /// most likely meets no active command (`VD_E_INVALID`) rather than a newer one at the
    /// same address (which freed and reallocated slots could not rule out either).
    spare: VecDeque<Stable<UnsafeCell<VdcCommand>>>,
}

impl Commands {
    /// The most slots kept spare (more than any device has in flight).
    const SPARE: usize = 64;

    /// The completed commands' slots become spare: the client's read of them ends here.
    fn recycle(&mut self) {
        self.spare.extend(self.retired.drain(..));
        while self.spare.len() > Self::SPARE {
            self.spare.pop_front();
        }
    }
}

#[derive(Debug)]
struct Outstanding {
    /// The `VDC_Command` the client got; its address identifies the command. Only the client
    /// reads or writes it once it is handed out.
    slot: Stable<UnsafeCell<VdcCommand>>,
    command: Command,
    /// The command's data zone (NULL for commands without a buffer).
    buffer: *mut u8,
}

impl Device {
    fn lock(&self) -> MutexGuard<'_, Commands> {
        self.commands.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `GetCommand(timeout, ppCmd)`: the command to hand out. Commands completed since the
    /// last call are released first.
    ///
    /// # Errors
    ///
    /// `VD_E_INVALID` for a NULL `ppCmd`; `VD_E_CLOSE`, `VD_E_TIMEOUT`, `VD_E_ABORT`,
    /// `VD_E_PROTOCOL` (also after `Close`).
    pub fn command(&self, timeout: i64, out: bool) -> Result<*mut VdcCommand, Error> {
        if !out {
            return Err(null_argument());
        }
        let mut command = match self.device.command(timeout_from_millis(timeout)) {
            Ok(c) => c,
            Err(e) => {
                // The commands completed since the last call are released either way.
                self.lock().recycle();
                return Err(e);
            }
        };
        let buffer = if command.code().has_buffer() {
            command.data_mut().as_mut_ptr()
        } else {
            ptr::null_mut()
        };
        let value = VdcCommand {
            command_code: command.code().0,
            size: command.size(),
            position: command.position(),
            buffer,
        };
        // One lock per GetCommand: the commands completed since the last call are released
        // (their slots reused, so a command costs no allocation once the device is warm).
        let mut commands = self.lock();
        commands.recycle();
        // Reuse only once a few are spare, so that a slot just completed is not the next one.
        let spare = if commands.spare.len() > 8 {
            commands.spare.pop_front()
        } else {
            None
        };
        let slot = match spare {
            // A spare slot is not handed out: the only handle is this one.
            Some(mut slot) => match Stable::get_mut(&mut slot) {
                Some(cell) => {
                    *cell.get_mut() = value;
                    slot
                }
                None => Stable::new(UnsafeCell::new(value)),
            },
            None => Stable::new(UnsafeCell::new(value)),
        };
        let handed_out = slot.get();
        commands.outstanding.push(Outstanding {
            slot,
            command,
            buffer,
        });
        drop(commands);
        Ok(handed_out)
    }

    /// `CompleteCommand(pCmd, code, bytes, position)`.
    ///
    /// `cmd` is compared with the commands handed out, never dereferenced; the command's own
    /// code and size count, whatever the client wrote into its `VDC_Command`.
    ///
    /// # Errors
    ///
    /// `VD_E_INVALID` for a pointer that is not an active command of this device (NULL,
    /// foreign, completed already) or a byte count above the command's size (the command stays
    /// active); `VD_E_ABORT`, `VD_E_PROTOCOL` as the set's state says.
    pub fn complete(
        &self,
        cmd: *mut VdcCommand,
        code: i32,
        bytes: u64,
        position: i64,
    ) -> Result<(), Error> {
        let not_active = Error::Invalid(InvalidReason::NotActiveCommand);
        let mut commands = self.lock();
        let i = commands
            .outstanding
            .iter()
            .position(|o| ptr::eq(o.slot.get(), cmd))
            .ok_or(not_active)?;
        let c = &commands.outstanding[i].command;
        let too_many = Error::Invalid(InvalidReason::BytesTransferred);
        let bytes = u32::try_from(bytes).map_err(|_| too_many)?;
        if c.code().has_buffer() && bytes > c.size() {
            return Err(too_many);
        }
        let o = commands.outstanding.swap_remove(i);
        commands.retired.push(o.slot);
        drop(commands);
        let completion = Completion {
            // Win32 codes and positions travel as the client's signed values, bit for bit.
            code: CompletionCode(code as u32),
            bytes_transferred: bytes,
            position: position as u64,
        };
        self.device.complete(o.command, completion)
    }
}

/// The error of a call on a `ClientVirtualDevice` that `OpenDevice` did not hand out (a
/// NULL device pointer): the device is not open.
pub const fn device_not_open(call: Call) -> Error {
    Error::Protocol(ProtocolReason::WrongState(call))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(bytes: &[u8], terminated: bool) -> Option<RawName<'_>> {
        Some(RawName { bytes, terminated })
    }

    #[test]
    fn names_are_checked_before_use() {
        assert_eq!(parse_name(raw(b"set-1", true)), Ok("set-1"));
        fn invalid(r: Option<RawName<'_>>) -> Result<&str, vdi_core::HResult> {
            parse_name(r).map_err(|e| e.hresult())
        }
        assert_eq!(invalid(None), Err(vdi_core::HResult::VD_E_INVALID));
        assert_eq!(
            invalid(raw(&[0xff, 0xfe], true)),
            Err(vdi_core::HResult::VD_E_INVALID)
        );
        let long = [b'a'; NAME_SCAN_LIMIT];
        assert_eq!(
            invalid(raw(&long, false)),
            Err(vdi_core::HResult::VD_E_INVALID)
        );
        assert_eq!(
            invalid(raw(&long[..vdi_core::MAX_NAME_LEN], true)).map(str::len),
            Ok(vdi_core::MAX_NAME_LEN)
        );
        assert_eq!(
            invalid(raw(b"a/b", true)),
            Err(vdi_core::HResult::VD_E_INVALID)
        );
        assert_eq!(
            invalid(raw(b"", true)),
            Err(vdi_core::HResult::VD_E_INVALID)
        );
    }

    #[test]
    fn negative_timeouts_wait_without_limit() {
        assert_eq!(timeout_from_millis(-1), Timeout::INFINITE);
        assert_eq!(timeout_from_millis(i64::MIN), Timeout::INFINITE);
        assert_eq!(timeout_from_millis(0), Timeout::POLL);
        assert_eq!(timeout_from_millis(90).as_millis(), 90);
        assert_eq!(timeout_from_millis(i64::MAX), Timeout::INFINITE);
    }

    #[test]
    fn a_set_object_without_a_set_answers_protocol() {
        let set = Set::new();
        let protocol = Err(vdi_core::HResult::VD_E_PROTOCOL);
        assert_eq!(
            set.configuration(0, true)
                .map(|_| ())
                .map_err(|e| e.hresult()),
            protocol
        );
        assert_eq!(
            set.open_device(raw(b"x", true), true)
                .map(|_| ())
                .map_err(|e| e.hresult()),
            protocol
        );
        assert_eq!(set.close().map_err(|e| e.hresult()), protocol);
        assert_eq!(set.signal_abort().map_err(|e| e.hresult()), protocol);
        assert_eq!(
            set.buffer_handle(ptr::null(), true)
                .map(|_| ())
                .map_err(|e| e.hresult()),
            protocol
        );
        assert_eq!(
            set.map_buffer_handle(1, true)
                .map(|_| ())
                .map_err(|e| e.hresult()),
            protocol
        );
        // NULL out-pointers are VD_E_INVALID in any state.
        assert_eq!(
            set.configuration(0, false)
                .map(|_| ())
                .map_err(|e| e.hresult()),
            Err(vdi_core::HResult::VD_E_INVALID)
        );
    }
}
