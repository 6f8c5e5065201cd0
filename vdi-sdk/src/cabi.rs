//! [`vdi_core::ClientBackend`] over the library's C ABI: every call goes through the
//! `extern "C"` functions of [`crate::ffi`] that `cpp/sqlvdi.cpp` forwards to one for one, with
//! raw pointers, as a C++ client's calls arrive.
//!
//! It is how this crate's conformance suite holds the C ABI to the same answers as vdi-shm's
//! own client, and how `cargo xtask bench` measures what the ABI costs against the Rust API.

use std::{
    ffi::{CString, c_void},
    ptr,
    sync::Arc,
};

use vdi_shm::{Options, ShmClient};

use crate::{ffi, sdk};
use vdi_core::{
    BufferHandle, ClientBackend, ClientCommand, ClientConfig, ClientDevice, ClientDeviceSet,
    CommandCode, Completion, Config, Error, HResult, MappedBuffer, Timeout, VdConfig, VdcCommand,
};

fn check(rc: i32) -> Result<(), Error> {
    Error::from_hresult(HResult(rc)).map_or(Ok(()), Err)
}

fn millis(t: Timeout) -> i64 {
    if t.is_infinite() {
        -1
    } else {
        i64::from(t.as_millis())
    }
}

fn c_name(name: &str) -> Result<CString, Error> {
    CString::new(name).map_err(|_| Error::Invalid(vdi_core::InvalidReason::Unspecified))
}

/// The backend: `new ClientVirtualDeviceSet` then `Create` or `OpenInSecondary`.
#[derive(Debug, Default)]
pub struct CAbi {
    /// vdi-shm's options for the sets made here; `None`: the defaults, as `new
    /// ClientVirtualDeviceSet` has them.
    options: Option<Options>,
}

impl CAbi {
    /// The backend as a C++ client has it (vdi-shm's default options).
    pub fn new() -> Self {
        Self::default()
    }

    /// The backend with vdi-shm's `options` under each set (how long a wait spins, ...),
    /// every call still through the C ABI.
    pub fn with_options(options: Options) -> Self {
        Self {
            options: Some(options),
        }
    }

    /// A new set object, as the constructor makes it.
    fn new_set(&self) -> CSet {
        let raw = match &self.options {
            None => ffi::vdi_sdk_set_new(),
            Some(o) => Box::into_raw(Box::new(sdk::Set::with_client(ShmClient::with_options(
                o.clone(),
            )))),
        };
        CSet {
            raw,
            owner: Arc::new(Owner(raw)),
            opened: 0.into(),
        }
    }
}

/// The set object itself, freed (as the destructor frees it) when the set and its last
/// device and command are gone.
#[derive(Debug)]
struct Owner(*mut sdk::Set);

// SAFETY: the library's set is used from many threads by design: all its state is behind
// mutexes (sdk.rs), and the pointer stays valid until this value is dropped.
unsafe impl Send for Owner {}
// SAFETY: as for Send.
unsafe impl Sync for Owner {}

impl Drop for Owner {
    fn drop(&mut self) {
        // SAFETY: the pointer came from vdi_sdk_set_new (or the same Box::into_raw with other
        // options) and is freed only here, once every CSet, CDevice and CCommand sharing this
        // owner is gone.
        unsafe { ffi::vdi_sdk_set_free(self.0) };
    }
}

/// A set object (`ClientVirtualDeviceSet`).
#[derive(Debug)]
pub struct CSet {
    raw: *mut sdk::Set,
    owner: Arc<Owner>,
    opened: std::sync::atomic::AtomicU32,
}

// SAFETY: as for Owner, which keeps `raw` alive.
unsafe impl Send for CSet {}
// SAFETY: as for Send.
unsafe impl Sync for CSet {}

impl ClientBackend for CAbi {
    type Set = CSet;

    fn create(&self, _: Option<&str>, name: &str, config: &ClientConfig) -> Result<CSet, Error> {
        let set = self.new_set();
        let name = c_name(name)?;
        let raw: VdConfig = config.to_raw();
        // SAFETY: a live set, a NUL-terminated name and a readable VDConfig.
        check(unsafe { ffi::vdi_sdk_create(set.raw, name.as_ptr(), &raw) })?;
        Ok(set)
    }

    fn open_secondary(&self, _: Option<&str>, name: &str) -> Result<CSet, Error> {
        let set = self.new_set();
        let name = c_name(name)?;
        // SAFETY: a live set and a NUL-terminated name.
        check(unsafe { ffi::vdi_sdk_open_in_secondary(set.raw, name.as_ptr()) })?;
        Ok(set)
    }
}

impl ClientDeviceSet for CSet {
    type Device = CDevice;
    type Mapped = CMapped;

    fn configuration(&self, timeout: Timeout) -> Result<Config, Error> {
        let mut raw = VdConfig::default();
        // SAFETY: a live set and a writable VDConfig.
        check(unsafe { ffi::vdi_sdk_get_configuration(self.raw, millis(timeout), &mut raw) })?;
        Ok(Config::from_raw(&raw))
    }

    fn open_device(&self, name: &str) -> Result<CDevice, Error> {
        let name = c_name(name)?;
        let (mut out, mut storage, mut device) = (ptr::null_mut(), ptr::null_mut(), ptr::null());
        // SAFETY: a live set, a NUL-terminated name, three writable pointers.
        check(unsafe {
            ffi::vdi_sdk_open_device(self.raw, name.as_ptr(), &mut out, &mut storage, &mut device)
        })?;
        let _: *mut c_void = storage;
        let index = self
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(CDevice {
            raw: device,
            owner: Arc::clone(&self.owner),
            index,
        })
    }

    fn buffer_handle(&self, command: &CCommand) -> Result<BufferHandle, Error> {
        let mut h = 0;
        // SAFETY: a live set and a writable handle; the buffer pointer is only compared.
        check(unsafe { ffi::vdi_sdk_get_buffer_handle(self.raw, command.buffer, &mut h) })?;
        Ok(BufferHandle(h))
    }

    fn map_buffer_handle(&self, handle: BufferHandle, len: u32) -> Result<CMapped, Error> {
        let mut p = ptr::null_mut();
        // SAFETY: a live set and a writable pointer.
        check(unsafe { ffi::vdi_sdk_map_buffer_handle(self.raw, handle.0 as i32, &mut p) })?;
        // The C ABI gives an address, not a length, and no exclusivity (a C++ caller may map a
        // buffer twice): the slices below come from vdi-shm's own view, which checks that `len`
        // bytes are the buffer's and holds the lease that refuses a second view of them.
        // SAFETY: a live set (this value owns it).
        let view = unsafe { &*self.raw }.map_buffer_view(handle, len)?;
        if !ptr::eq(view.as_slice().as_ptr(), p) {
            return Err(Error::Invalid(vdi_core::InvalidReason::BufferHandle));
        }
        Ok(CMapped {
            _owner: Arc::clone(&self.owner),
            view,
        })
    }

    fn signal_abort(&self) -> Result<(), Error> {
        // SAFETY: a live set.
        check(unsafe { ffi::vdi_sdk_signal_abort(self.raw) })
    }

    fn close(&self) -> Result<(), Error> {
        // SAFETY: a live set.
        check(unsafe { ffi::vdi_sdk_close(self.raw) })
    }
}

/// A device (`ClientVirtualDevice`); it keeps its set object alive.
#[derive(Debug)]
pub struct CDevice {
    raw: *const sdk::Device,
    owner: Arc<Owner>,
    index: u32,
}

// SAFETY: the library's device is used from many threads by design (its state is behind a
// mutex); the set object that owns it lives as long as `owner`.
unsafe impl Send for CDevice {}
// SAFETY: as for Send.
unsafe impl Sync for CDevice {}

impl CDevice {
    /// `CompleteCommand` with any pointer at all, as a careless client might pass; the raw
    /// `int` result.
    #[allow(
        clippy::not_unsafe_ptr_arg_deref,
        reason = "the library compares the pointer with the commands it handed out, never dereferences it"
    )]
    pub fn complete_ptr(&self, cmd: *mut VdcCommand, code: i32, bytes: u64) -> i32 {
        // SAFETY: a live device; the library only compares the command pointer.
        unsafe { ffi::vdi_sdk_complete_command(self.raw, cmd, code, bytes, 0) }
    }
}

impl CCommand {
    /// The `VDC_Command` the library handed out.
    pub fn raw(&self) -> *mut VdcCommand {
        self.cmd
    }
}

/// The command code in a `VDC_Command` the library handed out and the device has not yet
/// reused (a completed command stays readable until the device's next GetCommand).
///
/// # Safety
///
/// `cmd` is a pointer [`CCommand::raw`] gave, and its device has had no GetCommand since.
pub unsafe fn code_of(cmd: *mut VdcCommand) -> u32 {
    // SAFETY: the caller passes a pointer the library handed out, before the device's next
    // GetCommand, so the library still holds it alive.
    unsafe { cmd.read().command_code }
}

impl ClientDevice for CDevice {
    type Command = CCommand;

    fn index(&self) -> u32 {
        self.index
    }

    fn command(&self, timeout: Timeout) -> Result<CCommand, Error> {
        let mut cmd: *mut VdcCommand = ptr::null_mut();
        // SAFETY: a live device and a writable pointer.
        check(unsafe { ffi::vdi_sdk_get_command(self.raw, millis(timeout), &mut cmd) })?;
        // SAFETY: the library hands out a readable VDC_Command that stays valid until the
        // device's next GetCommand; it is read once, here.
        let c = unsafe { cmd.read() };
        Ok(CCommand {
            device: self.raw,
            _owner: Arc::clone(&self.owner),
            cmd,
            code: CommandCode(c.command_code),
            size: c.size,
            position: c.position,
            buffer: c.buffer,
            index: self.index,
            done: false,
        })
    }

    fn complete(&self, mut command: CCommand, completion: Completion) -> Result<(), Error> {
        // SAFETY: a live device; the command pointer is only compared by the library.
        let done = check(unsafe {
            ffi::vdi_sdk_complete_command(
                self.raw,
                command.cmd,
                completion.code.0 as i32,
                u64::from(completion.bytes_transferred),
                completion.position as i64,
            )
        });
        // A refused completion leaves the command active: dropping it completes it (995).
        command.done = done.is_ok();
        done
    }
}

/// A command taken through the C ABI.
#[derive(Debug)]
pub struct CCommand {
    device: *const sdk::Device,
    /// Keeps the device's set object alive.
    _owner: Arc<Owner>,
    cmd: *mut VdcCommand,
    code: CommandCode,
    size: u32,
    position: u64,
    buffer: *mut u8,
    index: u32,
    done: bool,
}

// SAFETY: the command's buffer belongs to its holder until completion, whichever thread holds
// it; the device pointer is thread-safe (see CDevice).
unsafe impl Send for CCommand {}

impl Drop for CCommand {
    fn drop(&mut self) {
        if !self.done {
            // SAFETY: a live device; the command pointer is only compared.
            let _ = unsafe { ffi::vdi_sdk_complete_command(self.device, self.cmd, 995, 0, 0) };
        }
    }
}

impl ClientCommand for CCommand {
    fn code(&self) -> CommandCode {
        self.code
    }

    fn size(&self) -> u32 {
        self.size
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn device_index(&self) -> u32 {
        self.index
    }

    fn data(&self) -> &[u8] {
        if self.buffer.is_null() || self.size == 0 {
            return &[];
        }
        // SAFETY: a Read or Write command's buffer holds `size` bytes that belong to this
        // command's holder until it is completed, which consumes the command.
        unsafe { std::slice::from_raw_parts(self.buffer, self.size as usize) }
    }

    fn data_mut(&mut self) -> &mut [u8] {
        if self.buffer.is_null() || self.size == 0 {
            return &mut [];
        }
        // SAFETY: as in `data`; `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.buffer, self.size as usize) }
    }

    fn prefix_zone(&mut self) -> &mut [u8] {
        // The C ABI does not say where the prefix zone is (it lies below `buffer`).
        &mut []
    }
}

/// A buffer mapped through `MapBufferHandle`.
#[derive(Debug)]
pub struct CMapped {
    /// Keeps the set object, and so its mapped segments, alive.
    _owner: Arc<Owner>,
    /// vdi-shm's view of the bytes, with its lease (one view per buffer in this process).
    view: vdi_shm::MappedBuffer,
}

impl MappedBuffer for CMapped {
    fn handle(&self) -> BufferHandle {
        self.view.handle()
    }

    fn as_slice(&self) -> &[u8] {
        self.view.as_slice()
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.view.as_mut_slice()
    }
}
