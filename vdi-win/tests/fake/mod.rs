//! A fake sqlvdi: COM objects written in Rust that record every call.
//!
//! The vtables are plain arrays of function pointers in the slot order of vdi-spec.md §2.2,
//! built independently of `vdi_win::raw`'s `#[repr(C)]` structs: a slot the wrapper calls in the
//! wrong place records the wrong method. Each method's result can be scripted; the commands
//! `GetCommand` hands out live in buffers the fake owns, with a prefix zone below each.

#![allow(dead_code, reason = "each test file uses part of the fake")]

use std::{
    collections::{HashMap, VecDeque},
    ffi::c_void,
    fmt,
    ptr::{self, NonNull},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicI32, Ordering},
    },
    time::Duration,
};

use vdi_core::{CommandCode, HResult, VdConfig, VdcCommand};
use vdi_win::{
    Activate,
    raw::{Guid, IClientVirtualDevice, IClientVirtualDeviceSet, IClientVirtualDeviceSet2},
};

/// One recorded call, with its arguments decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    QueryInterface {
        object: usize,
        iid: Guid,
    },
    Create {
        name: String,
    },
    GetConfiguration {
        timeout: u32,
    },
    OpenDevice {
        name: String,
    },
    Close,
    SignalAbort,
    OpenInSecondary {
        name: String,
    },
    GetBufferHandle {
        buffer: usize,
    },
    MapBufferHandle {
        handle: u32,
    },
    CreateEx {
        instance: Option<String>,
        name: String,
        config: VdConfig,
    },
    OpenInSecondaryEx {
        instance: Option<String>,
        name: String,
    },
    GetCommand {
        device: usize,
        timeout: u32,
    },
    CompleteCommand {
        device: usize,
        cmd: usize,
        code: u32,
        bytes: u32,
        position: u64,
    },
}

impl Call {
    /// The method's name, as the script keys it.
    pub(crate) fn method(&self) -> &'static str {
        match self {
            Self::QueryInterface { .. } => "QueryInterface",
            Self::Create { .. } => "Create",
            Self::GetConfiguration { .. } => "GetConfiguration",
            Self::OpenDevice { .. } => "OpenDevice",
            Self::Close => "Close",
            Self::SignalAbort => "SignalAbort",
            Self::OpenInSecondary { .. } => "OpenInSecondary",
            Self::GetBufferHandle { .. } => "GetBufferHandle",
            Self::MapBufferHandle { .. } => "MapBufferHandle",
            Self::CreateEx { .. } => "CreateEx",
            Self::OpenInSecondaryEx { .. } => "OpenInSecondaryEx",
            Self::GetCommand { .. } => "GetCommand",
            Self::CompleteCommand { .. } => "CompleteCommand",
        }
    }
}

type Slot = *const c_void;

/// A fake COM object: a set (`device == None`) or a device.
#[repr(C)]
struct Object {
    /// First, as in every COM object.
    vtbl: *const Slot,
    fake: *const Fake,
    device: Option<usize>,
    refs: AtomicI32,
}

/// A command handed out, with its buffer (prefix zone first).
struct Slotted {
    cmd: VdcCommand,
    buffer: Vec<u8>,
    prefix: usize,
    completed: bool,
}

#[allow(
    clippy::vec_box,
    reason = "the boxes keep the addresses handed to the wrapper stable as the vectors grow"
)]
#[derive(Default)]
struct State {
    calls: Vec<Call>,
    script: HashMap<&'static str, VecDeque<HResult>>,
    queue: VecDeque<(CommandCode, u32, u64)>,
    commands: Vec<Box<Slotted>>,
    objects: Vec<Box<Object>>,
    blocked: bool,
}

/// The fake and its records.
pub(crate) struct Fake {
    state: Mutex<State>,
    unblock: Condvar,
    set_vtbl: Box<[Slot; 13]>,
    device_vtbl: Box<[Slot; 5]>,
    /// What `GetConfiguration` writes.
    pub(crate) server_config: Mutex<VdConfig>,
    /// The `prefixZoneSize` below each buffer.
    pub(crate) prefix: usize,
}

// SAFETY: every mutable part is behind the mutex or atomic; the raw pointers point into the fake
// itself (its boxed vtables and objects), which outlives every use the tests make of them.
unsafe impl Send for Fake {}
// SAFETY: as for `Send`.
unsafe impl Sync for Fake {}

impl fmt::Debug for Fake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fake")
            .field("calls", &self.lock().calls)
            .finish()
    }
}

impl Fake {
    pub(crate) fn new(prefix: usize) -> Arc<Self> {
        // The slots of vdi-spec.md §2.2, by number.
        let set_vtbl: [Slot; 13] = [
            query_interface as Slot,
            add_ref as Slot,
            release as Slot,
            create as Slot,
            get_configuration as Slot,
            open_device as Slot,
            close as Slot,
            signal_abort as Slot,
            open_in_secondary as Slot,
            get_buffer_handle as Slot,
            map_buffer_handle as Slot,
            create_ex as Slot,
            open_in_secondary_ex as Slot,
        ];
        let device_vtbl: [Slot; 5] = [
            query_interface as Slot,
            add_ref as Slot,
            release as Slot,
            get_command as Slot,
            complete_command as Slot,
        ];
        Arc::new(Self {
            state: Mutex::new(State::default()),
            unblock: Condvar::new(),
            set_vtbl: Box::new(set_vtbl),
            device_vtbl: Box::new(device_vtbl),
            server_config: Mutex::new(VdConfig {
                device_count: 1,
                features: 0x1_0000,
                block_size: 65536,
                max_io_depth: 4,
                max_transfer_size: 1 << 20,
                buffer_area_size: 4 << 20,
                ..VdConfig::default()
            }),
            prefix,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every call so far.
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The methods called so far, IUnknown's left out.
    pub(crate) fn methods(&self) -> Vec<&'static str> {
        self.lock()
            .calls
            .iter()
            .map(Call::method)
            .filter(|m| *m != "QueryInterface")
            .collect()
    }

    /// Forgets the calls so far.
    pub(crate) fn clear(&self) {
        self.lock().calls.clear();
    }

    /// Makes the next call of `method` return `hr` (`"CoCreateInstance"` for activation).
    pub(crate) fn fail_next(&self, method: &'static str, hr: HResult) {
        self.lock().script.entry(method).or_default().push_back(hr);
    }

    /// Queues a command for `GetCommand`.
    pub(crate) fn push_command(&self, code: CommandCode, size: u32, position: u64) {
        self.lock().queue.push_back((code, size, position));
    }

    /// Makes `GetCommand` wait until [`Fake::unblock`].
    pub(crate) fn block_get_command(&self) {
        self.lock().blocked = true;
    }

    /// Lets waiting `GetCommand` calls go on.
    pub(crate) fn unblock(&self) {
        self.lock().blocked = false;
        self.unblock.notify_all();
    }

    /// The references each object still has: the set first, then the devices.
    pub(crate) fn refs(&self) -> Vec<i32> {
        self.lock()
            .objects
            .iter()
            .map(|o| o.refs.load(Ordering::SeqCst))
            .collect()
    }

    /// The address of the `n`-th command handed out, and of its data zone.
    pub(crate) fn command_ptrs(&self, n: usize) -> (usize, usize) {
        let st = self.lock();
        let c = &st.commands[n];
        (ptr::from_ref(&c.cmd) as usize, c.cmd.buffer as usize)
    }

    /// The data zone and prefix zone of the `n`-th command, as the fake sees them now.
    pub(crate) fn command_bytes(&self, n: usize) -> (Vec<u8>, Vec<u8>) {
        let st = self.lock();
        let c = &st.commands[n];
        let end = c.prefix + c.cmd.size as usize;
        (
            c.buffer[c.prefix..end].to_vec(),
            c.buffer[..c.prefix].to_vec(),
        )
    }

    /// A new set object, with one reference for the caller.
    pub(crate) fn new_set(&self) -> NonNull<c_void> {
        self.new_object(self.set_vtbl.as_ptr(), None)
    }

    fn new_object(&self, vtbl: *const Slot, device: Option<usize>) -> NonNull<c_void> {
        let mut obj = Box::new(Object {
            vtbl,
            fake: ptr::from_ref(self),
            device,
            refs: AtomicI32::new(1),
        });
        let ptr = NonNull::from(&mut *obj).cast();
        self.lock().objects.push(obj);
        ptr
    }

    fn record(&self, call: Call) -> HResult {
        let mut st = self.lock();
        let method = call.method();
        st.calls.push(call);
        st.script
            .get_mut(method)
            .and_then(VecDeque::pop_front)
            .unwrap_or(HResult::S_OK)
    }

    /// The scripted result of activation.
    fn activation(&self) -> HResult {
        self.lock()
            .script
            .get_mut("CoCreateInstance")
            .and_then(VecDeque::pop_front)
            .unwrap_or(HResult::S_OK)
    }
}

/// An activator handing out the fake's set objects.
#[derive(Debug, Clone)]
pub(crate) struct FakeActivator(pub(crate) Arc<Fake>);

// SAFETY: the fake implements both interfaces with the vtables of vdi.h, keeps the returned
// pointers valid for as long as the fake lives (the tests keep it past every wrapper), and
// guards all its state with a mutex, so any thread may call it.
unsafe impl Activate for FakeActivator {
    fn activate(&self) -> Result<IClientVirtualDeviceSet2, HResult> {
        let hr = self.0.activation();
        if !hr.is_ok() {
            return Err(hr);
        }
        let ptr = self.0.new_set();
        // SAFETY: a fresh set object with one reference, handed over (see the impl).
        Ok(unsafe { IClientVirtualDeviceSet2::from_raw(ptr) })
    }
}

/// The object behind `this`.
///
/// # Safety
///
/// `this` is one of the fake's objects.
unsafe fn object<'a>(this: *mut c_void) -> &'a Object {
    // SAFETY: the caller's contract; objects live as long as the fake.
    unsafe { &*this.cast::<Object>() }
}

/// The fake behind `this`.
///
/// # Safety
///
/// `this` is one of the fake's objects.
unsafe fn fake<'a>(this: *mut c_void) -> &'a Fake {
    // SAFETY: the caller's contract; an object points to its fake, which outlives it.
    unsafe { &*object(this).fake }
}

/// A NUL-terminated UTF-16 string, or `None` for null.
///
/// # Safety
///
/// `p` is null or NUL-terminated.
unsafe fn wide(p: *const u16) -> Option<String> {
    if p.is_null() {
        return None;
    }
    let mut len = 0;
    // SAFETY: the caller's contract: every unit up to the NUL is readable.
    while unsafe { *p.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: `len` units were just read.
    Some(String::from_utf16(unsafe { std::slice::from_raw_parts(p, len) }).expect("UTF-16"))
}

unsafe extern "system" fn query_interface(
    this: *mut c_void,
    iid: *const Guid,
    out: *mut *mut c_void,
) -> HResult {
    // SAFETY: the wrapper calls with one of our objects and valid pointers.
    let (obj, f, iid) = unsafe { (object(this), fake(this), *iid) };
    let r = f.record(Call::QueryInterface {
        object: this as usize,
        iid,
    });
    let known: &[Guid] = if obj.device.is_some() {
        &[vdi_win::raw::IID_IUNKNOWN, IClientVirtualDevice::IID]
    } else {
        &[
            vdi_win::raw::IID_IUNKNOWN,
            IClientVirtualDeviceSet::IID,
            IClientVirtualDeviceSet2::IID,
        ]
    };
    if !r.is_ok() || !known.contains(&iid) {
        // SAFETY: the out pointer is valid.
        unsafe { *out = ptr::null_mut() };
        return if r.is_ok() { HResult::E_NOINTERFACE } else { r };
    }
    obj.refs.fetch_add(1, Ordering::SeqCst);
    // SAFETY: the out pointer is valid.
    unsafe { *out = this };
    HResult::S_OK
}

unsafe extern "system" fn add_ref(this: *mut c_void) -> u32 {
    // SAFETY: one of our objects.
    let obj = unsafe { object(this) };
    let n = obj.refs.fetch_add(1, Ordering::SeqCst) + 1;
    assert!(n > 1, "AddRef on a released object");
    n as u32
}

unsafe extern "system" fn release(this: *mut c_void) -> u32 {
    // SAFETY: one of our objects.
    let obj = unsafe { object(this) };
    let n = obj.refs.fetch_sub(1, Ordering::SeqCst) - 1;
    assert!(n >= 0, "Release on a released object");
    n as u32
}

unsafe extern "system" fn create(
    this: *mut c_void,
    name: *const u16,
    _cfg: *mut VdConfig,
) -> HResult {
    // SAFETY: one of our objects; the name is NUL-terminated.
    unsafe {
        fake(this).record(Call::Create {
            name: wide(name).unwrap_or_default(),
        })
    }
}

unsafe extern "system" fn get_configuration(
    this: *mut c_void,
    timeout: u32,
    cfg: *mut VdConfig,
) -> HResult {
    // SAFETY: one of our objects.
    let f = unsafe { fake(this) };
    let hr = f.record(Call::GetConfiguration { timeout });
    if hr.is_ok() {
        let config = *f
            .server_config
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // SAFETY: the wrapper passes a writable structure.
        unsafe { *cfg = config };
    }
    hr
}

unsafe extern "system" fn open_device(
    this: *mut c_void,
    name: *const u16,
    out: *mut *mut c_void,
) -> HResult {
    // SAFETY: one of our objects; the name is NUL-terminated.
    let (f, name) = unsafe { (fake(this), wide(name).unwrap_or_default()) };
    let hr = f.record(Call::OpenDevice { name });
    let dev = if hr.is_ok() {
        let id = f.lock().objects.len();
        f.new_object(f.device_vtbl.as_ptr(), Some(id)).as_ptr()
    } else {
        ptr::null_mut()
    };
    // SAFETY: the wrapper passes a valid out pointer.
    unsafe { *out = dev };
    hr
}

unsafe extern "system" fn close(this: *mut c_void) -> HResult {
    // SAFETY: one of our objects.
    unsafe { fake(this).record(Call::Close) }
}

unsafe extern "system" fn signal_abort(this: *mut c_void) -> HResult {
    // SAFETY: one of our objects.
    unsafe { fake(this).record(Call::SignalAbort) }
}

unsafe extern "system" fn open_in_secondary(this: *mut c_void, name: *const u16) -> HResult {
    // SAFETY: one of our objects; the name is NUL-terminated.
    unsafe {
        fake(this).record(Call::OpenInSecondary {
            name: wide(name).unwrap_or_default(),
        })
    }
}

unsafe extern "system" fn get_buffer_handle(
    this: *mut c_void,
    buffer: *mut u8,
    handle: *mut u32,
) -> HResult {
    // SAFETY: one of our objects.
    let f = unsafe { fake(this) };
    let hr = f.record(Call::GetBufferHandle {
        buffer: buffer as usize,
    });
    if !hr.is_ok() {
        return hr;
    }
    let st = f.lock();
    match st.commands.iter().position(|c| c.cmd.buffer == buffer) {
        Some(i) => {
            // SAFETY: the wrapper passes a valid out pointer.
            unsafe { *handle = 100 + i as u32 };
            HResult::S_OK
        }
        None => HResult::VD_E_INVALID,
    }
}

unsafe extern "system" fn map_buffer_handle(
    this: *mut c_void,
    handle: u32,
    out: *mut *mut u8,
) -> HResult {
    // SAFETY: one of our objects.
    let f = unsafe { fake(this) };
    let hr = f.record(Call::MapBufferHandle { handle });
    let st = f.lock();
    let found = (handle as usize)
        .checked_sub(100)
        .and_then(|i| st.commands.get(i))
        .map(|c| c.cmd.buffer);
    match found {
        Some(buffer) if hr.is_ok() => {
            // SAFETY: the wrapper passes a valid out pointer.
            unsafe { *out = buffer };
            HResult::S_OK
        }
        _ if !hr.is_ok() => hr,
        _ => HResult::VD_E_INVALID,
    }
}

unsafe extern "system" fn create_ex(
    this: *mut c_void,
    instance: *const u16,
    name: *const u16,
    cfg: *mut VdConfig,
) -> HResult {
    // SAFETY: one of our objects; the strings are NUL-terminated or null, the config readable.
    unsafe {
        fake(this).record(Call::CreateEx {
            instance: wide(instance),
            name: wide(name).unwrap_or_default(),
            config: *cfg,
        })
    }
}

unsafe extern "system" fn open_in_secondary_ex(
    this: *mut c_void,
    instance: *const u16,
    name: *const u16,
) -> HResult {
    // SAFETY: one of our objects; the strings are NUL-terminated or null.
    unsafe {
        fake(this).record(Call::OpenInSecondaryEx {
            instance: wide(instance),
            name: wide(name).unwrap_or_default(),
        })
    }
}

unsafe extern "system" fn get_command(
    this: *mut c_void,
    timeout: u32,
    out: *mut *mut VdcCommand,
) -> HResult {
    // SAFETY: one of our objects.
    let (obj, f) = unsafe { (object(this), fake(this)) };
    let device = obj.device.expect("GetCommand on a set object");
    let hr = f.record(Call::GetCommand { device, timeout });
    let mut st = f.lock();
    while st.blocked {
        st = f
            .unblock
            .wait_timeout(st, Duration::from_secs(10))
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    if !hr.is_ok() {
        return hr;
    }
    let Some((code, size, position)) = st.queue.pop_front() else {
        return HResult::VD_E_TIMEOUT;
    };
    let prefix = f.prefix;
    let mut slotted = Box::new(Slotted {
        cmd: VdcCommand {
            command_code: code.0,
            size,
            position,
            buffer: ptr::null_mut(),
        },
        buffer: Vec::new(),
        prefix,
        completed: false,
    });
    if code.has_buffer() {
        // The data zone counts up from 0; the prefix zone holds 0xEE. Every buffer holds
        // maxTransferSize bytes, as `Activate`'s contract asks of an implementation off
        // Windows (a mapped handle's view may be that long).
        let max = f.server_config.lock().unwrap().max_transfer_size.max(size);
        slotted.buffer = vec![0xEE; prefix];
        slotted.buffer.extend((0..size).map(|i| i as u8));
        slotted.buffer.resize(prefix + max as usize, 0);
        // SAFETY: `prefix` is within the buffer just built.
        slotted.cmd.buffer = unsafe { slotted.buffer.as_mut_ptr().add(prefix) };
    }
    let cmd = ptr::from_mut(&mut slotted.cmd);
    st.commands.push(slotted);
    // SAFETY: the wrapper passes a valid out pointer.
    unsafe { *out = cmd };
    HResult::S_OK
}

unsafe extern "system" fn complete_command(
    this: *mut c_void,
    cmd: *mut VdcCommand,
    code: u32,
    bytes: u32,
    position: u64,
) -> HResult {
    // SAFETY: one of our objects.
    let (obj, f) = unsafe { (object(this), fake(this)) };
    let device = obj.device.expect("CompleteCommand on a set object");
    let hr = f.record(Call::CompleteCommand {
        device,
        cmd: cmd as usize,
        code,
        bytes,
        position,
    });
    if !hr.is_ok() {
        return hr;
    }
    let mut st = f.lock();
    match st
        .commands
        .iter_mut()
        .find(|c| ptr::from_ref(&c.cmd) == cmd.cast_const() && !c.completed)
    {
        Some(c) => {
            c.completed = true;
            HResult::S_OK
        }
        None => HResult::VD_E_INVALID,
    }
}
