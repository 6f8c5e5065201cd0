//! One client-side conformance suite, generic over `vdi_core::ClientBackend`, with the
//! reference engine in a thread as the server: every backend must answer every call alike.
//!
//! - Linux: vdi-shm's client (`ShmClient`), this library's C ABI (`cabi::CAbi`), and vdi-linux
//!   (`LibSqlVdi`, the binding made for Microsoft's libsqlvdi.so) over this library's own
//!   `libsqlvdi.so`, loaded with `dlopen` as a foreign library.
//! - Windows (under Wine in `cargo xtask sdk-test`): vdi-shm's client on its Windows backend,
//!   and vdi-win (`SqlVdi`, the COM binding made for Microsoft's sqlvdi.dll) over this
//!   library's COM server, which must be registered (`regsvr32 sqlvdi.dll`) for the `com`
//!   suite; it is skipped, saying so, when `VDI_SDK_COM_REGISTERED` is not set.

#![cfg(any(target_os = "linux", windows))]

#[cfg(target_os = "linux")]
use sqlvdi::cabi;

use std::thread;

use vdi_core::{
    ClientBackend, ClientCommand, ClientConfig, ClientDevice, ClientDeviceSet, CommandCode,
    Completion, Error, HResult, Timeout,
};
use vdi_engine::{BackupJob, Options, RestoreJob};

const WAIT: Timeout = Timeout::from_millis(30_000);

fn unique(backend: &str, tag: &str) -> String {
    format!("vdi-sdk-conf-{}-{backend}-{tag}", std::process::id())
}

fn hr<T>(r: Result<T, Error>) -> Option<HResult> {
    r.err().map(|e| e.hresult())
}

/// A backup of 1 MiB into memory, then a restore of it that the engine checks byte by byte.
fn backup_then_restore<B: ClientBackend>(b: &B, backend: &str) {
    let name = unique(backend, "backup");
    let set = b.create(None, &name, &ClientConfig::default()).unwrap();
    let options = Options::new(name.clone()).max_transfer_size(128 << 10);
    let engine =
        thread::spawn(move || vdi_engine::run_backup_shm(&options, &BackupJob::new(1 << 20)));
    assert!(set.configuration(WAIT).unwrap().is_backup());
    let dev = set.open_device(&name).unwrap();
    let mut stream = Vec::new();
    loop {
        match dev.command(WAIT) {
            Ok(cmd) => {
                let c = match cmd.code() {
                    CommandCode::WRITE => {
                        stream.extend_from_slice(cmd.data());
                        Completion::success(cmd.size())
                    }
                    CommandCode::FLUSH | CommandCode::CLEAR_ERROR | CommandCode::COMPLETE => {
                        Completion::success(0)
                    }
                    _ => Completion::not_supported(),
                };
                dev.complete(cmd, c).unwrap();
            }
            Err(Error::Closed) => break,
            Err(e) => panic!("GetCommand: {e}"),
        }
    }
    assert_eq!(hr(dev.command(Timeout::POLL)), Some(HResult::VD_E_CLOSE));
    set.close().unwrap();
    engine.join().unwrap().unwrap();
    assert!(stream.len() > 1 << 20);

    let name = unique(backend, "restore");
    let set = b.create(None, &name, &ClientConfig::default()).unwrap();
    let options = Options::new(name.clone()).max_transfer_size(128 << 10);
    let engine = thread::spawn(move || vdi_engine::run_restore_shm(&options, &RestoreJob::new()));
    assert!(!set.configuration(WAIT).unwrap().is_backup());
    let dev = set.open_device(&name).unwrap();
    let mut at = 0;
    loop {
        match dev.command(WAIT) {
            Ok(mut cmd) => {
                let c = if cmd.code() == CommandCode::READ {
                    let buf = cmd.data_mut();
                    let n = buf.len().min(stream.len() - at);
                    buf[..n].copy_from_slice(&stream[at..at + n]);
                    at += n;
                    if n < buf.len() {
                        Completion::eof(n as u32)
                    } else {
                        Completion::success(n as u32)
                    }
                } else {
                    Completion::success(0)
                };
                dev.complete(cmd, c).unwrap();
            }
            Err(Error::Closed) => break,
            Err(e) => panic!("GetCommand: {e}"),
        }
    }
    set.close().unwrap();
    let report = engine.join().unwrap().unwrap();
    assert!(report.verified);
}

/// Calls out of state get `VD_E_PROTOCOL`, before configuration and after Close.
fn wrong_states<B: ClientBackend>(b: &B, backend: &str) {
    let name = unique(backend, "states");
    let set = b.create(None, &name, &ClientConfig::default()).unwrap();
    assert_eq!(hr(set.open_device(&name)), Some(HResult::VD_E_PROTOCOL));
    assert_eq!(
        hr(set.configuration(Timeout::POLL)),
        Some(HResult::VD_E_TIMEOUT)
    );
    set.close().unwrap();
    assert_eq!(hr(set.close()), Some(HResult::VD_E_PROTOCOL));
    assert_eq!(
        hr(set.configuration(Timeout::POLL)),
        Some(HResult::VD_E_PROTOCOL)
    );
    assert_eq!(hr(set.signal_abort()), Some(HResult::VD_E_PROTOCOL));
    assert_eq!(hr(set.open_device(&name)), Some(HResult::VD_E_PROTOCOL));
    assert_eq!(
        hr(set.map_buffer_handle(vdi_core::BufferHandle(1), 1)),
        Some(HResult::VD_E_PROTOCOL)
    );
}

/// A name in use, bad names and bad configurations.
fn bad_create<B: ClientBackend>(b: &B, backend: &str) {
    let name = unique(backend, "taken");
    let set = b.create(None, &name, &ClientConfig::default()).unwrap();
    assert_eq!(
        hr(b.create(None, &name, &ClientConfig::default())),
        Some(HResult::VD_E_PROTOCOL)
    );
    for bad in ["", "a/b", &"x".repeat(200)] {
        assert_eq!(
            hr(b.create(None, bad, &ClientConfig::default())),
            Some(HResult::VD_E_INVALID),
            "{bad:?}"
        );
    }
    let too_many = ClientConfig {
        device_count: 65,
        ..ClientConfig::default()
    };
    assert_eq!(
        hr(b.create(None, &unique(backend, "65"), &too_many)),
        Some(HResult::VD_E_NOTSUPPORTED)
    );
    assert_eq!(
        hr(b.open_secondary(None, &unique(backend, "nobody"))),
        Some(HResult::VD_E_PROTOCOL)
    );
    set.close().unwrap();
}

/// SignalAbort ends every wait with `VD_E_ABORT`; Close still works.
fn abort_ends_waits<B: ClientBackend>(b: &B, backend: &str) {
    let name = unique(backend, "abort");
    let set = b.create(None, &name, &ClientConfig::default()).unwrap();
    set.signal_abort().unwrap();
    set.signal_abort().unwrap();
    assert_eq!(
        hr(set.configuration(Timeout::POLL)),
        Some(HResult::VD_E_ABORT)
    );
    assert_eq!(hr(set.open_device(&name)), Some(HResult::VD_E_ABORT));
    set.close().unwrap();
}

/// The C ABI alone: command pointers that are not active commands of the device (foreign,
/// NULL, completed already) get `VD_E_INVALID`; a completed command stays readable until the
/// device's next GetCommand; a byte count above the size is refused and leaves the command
/// active.
#[cfg(target_os = "linux")]
#[test]
fn c_abi_command_pointers_are_checked() {
    let b = cabi::CAbi::new();
    let name = unique("c_abi", "pointers");
    let set = b.create(None, &name, &ClientConfig::default()).unwrap();
    let options = Options::new(name.clone());
    let engine =
        thread::spawn(move || vdi_engine::run_backup_shm(&options, &BackupJob::new(256 << 10)));
    set.configuration(WAIT).unwrap();
    let dev = set.open_device(&name).unwrap();
    let invalid = HResult::VD_E_INVALID.0;
    let mut probed = false;
    loop {
        match dev.command(WAIT) {
            Ok(cmd) if !probed && cmd.code() == CommandCode::WRITE => {
                probed = true;
                let raw = cmd.raw();
                let size = u64::from(cmd.size());
                let mut foreign = vdi_core::VdcCommand {
                    command_code: 2,
                    size: cmd.size(),
                    position: 0,
                    buffer: std::ptr::null_mut(),
                };
                assert_eq!(dev.complete_ptr(&mut foreign, 0, size), invalid);
                assert_eq!(dev.complete_ptr(std::ptr::null_mut(), 0, size), invalid);
                assert_eq!(dev.complete_ptr(raw, 0, size + 1), invalid);
                assert_eq!(dev.complete_ptr(raw, 0, size), 0);
                // SAFETY: `raw` is the command just completed; the device has had no GetCommand since.
                assert_eq!(unsafe { cabi::code_of(raw) }, 2);
                assert_eq!(dev.complete_ptr(raw, 0, size), invalid);
                std::mem::forget(cmd); // completed through the raw pointer
            }
            Ok(cmd) => {
                let n = if cmd.code() == CommandCode::WRITE {
                    cmd.size()
                } else {
                    0
                };
                dev.complete(cmd, Completion::success(n)).unwrap();
            }
            Err(Error::Closed) => break,
            Err(e) => panic!("GetCommand: {e}"),
        }
    }
    assert!(probed);
    set.close().unwrap();
    engine.join().unwrap().unwrap();
}

/// The process umask as `/proc/self/status` gives it.
#[cfg(target_os = "linux")]
fn process_umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .expect("a Umask line");
    u32::from_str_radix(line.trim(), 8).unwrap()
}

/// vdi-linux sets the umask to 0 around `Create` only: creates from many threads at once
/// leave the process's umask as it was (each restores what it saw, so unserialized swaps
/// could leave it at 0 for good).
#[cfg(target_os = "linux")]
#[test]
fn linux_concurrent_creates_keep_the_umask() {
    let before = process_umask();
    if before == 0 {
        eprintln!("skipping: the umask is already 0, so a leak to 0 cannot be seen");
        return;
    }
    let b = linux();
    thread::scope(|s| {
        for t in 0..8 {
            let b = &b;
            s.spawn(move || {
                for i in 0..40 {
                    let name = unique("linux", &format!("umask-{t}-{i}"));
                    let set = b.create(None, &name, &ClientConfig::default()).unwrap();
                    set.close().unwrap();
                }
            });
        }
    });
    assert_eq!(format!("{:o}", process_umask()), format!("{before:o}"));
}

/// A buffer has one view in a process: mapping the handle of a command this process holds
/// fails (`VD_E_INVALID`), since the command's data is that buffer.
fn one_view_per_buffer<B: ClientBackend>(b: &B, backend: &str) {
    let name = unique(backend, "oneview");
    let set = b.create(None, &name, &ClientConfig::default()).unwrap();
    let options = Options::new(name.clone());
    let engine =
        thread::spawn(move || vdi_engine::run_backup_shm(&options, &BackupJob::new(256 << 10)));
    set.configuration(WAIT).unwrap();
    let dev = set.open_device(&name).unwrap();
    let mut probed = false;
    loop {
        match dev.command(WAIT) {
            Ok(cmd) => {
                let n = if cmd.code() == CommandCode::WRITE {
                    if !probed {
                        probed = true;
                        let handle = set.buffer_handle(&cmd).unwrap();
                        assert_eq!(
                            hr(set.map_buffer_handle(handle, cmd.size())),
                            Some(HResult::VD_E_INVALID)
                        );
                    }
                    cmd.size()
                } else {
                    0
                };
                dev.complete(cmd, Completion::success(n)).unwrap();
            }
            Err(Error::Closed) => break,
            Err(e) => panic!("GetCommand: {e}"),
        }
    }
    assert!(probed);
    set.close().unwrap();
    engine.join().unwrap().unwrap();
}

/// Close with a Write still held: `VD_E_OPEN` (the device is open; the set is aborted), and
/// the held command's data stays mapped until it is dropped (vdi-shm keeps the mapping;
/// vdi-linux defers the library's Close until the command is gone). Its bytes may change: after
/// the abort the server may reuse the buffer.
fn close_with_a_command_held<B: ClientBackend>(b: &B, backend: &str) {
    let name = unique(backend, "heldclose");
    let set = b.create(None, &name, &ClientConfig::default()).unwrap();
    let options = Options::new(name.clone());
    let engine =
        thread::spawn(move || vdi_engine::run_backup_shm(&options, &BackupJob::new(256 << 10)));
    set.configuration(WAIT).unwrap();
    let dev = set.open_device(&name).unwrap();
    let held = loop {
        let cmd = dev.command(WAIT).unwrap();
        if cmd.code() == CommandCode::WRITE {
            break cmd;
        }
        dev.complete(cmd, Completion::success(0)).unwrap();
    };
    let len = held.data().len();
    assert_eq!(hr(set.close()), Some(HResult::VD_E_OPEN));
    // Still mapped: reading it must not fault.
    let _ = std::hint::black_box(held.data().iter().fold(0u8, |a, &b| a ^ b));
    assert_eq!(held.data().len(), len);
    drop(held);
    drop((dev, set));
    // The engine sees the abort.
    assert!(engine.join().unwrap().is_err());
}

/// Whether the suite of a backend runs here (the COM server must be registered).
fn available(backend: &str) -> bool {
    if backend != "com" || std::env::var_os("VDI_SDK_COM_REGISTERED").is_some() {
        return true;
    }
    eprintln!("skipping the com suite: VDI_SDK_COM_REGISTERED is not set");
    false
}

macro_rules! suite {
    ($module:ident, $backend:expr) => {
        mod $module {
            #[test]
            fn backup_then_restore() {
                if super::available(stringify!($module)) {
                    super::backup_then_restore(&$backend, stringify!($module));
                }
            }

            #[test]
            fn wrong_states() {
                if super::available(stringify!($module)) {
                    super::wrong_states(&$backend, stringify!($module));
                }
            }

            #[test]
            fn bad_create() {
                if super::available(stringify!($module)) {
                    super::bad_create(&$backend, stringify!($module));
                }
            }

            #[test]
            fn one_view_per_buffer() {
                if super::available(stringify!($module)) {
                    super::one_view_per_buffer(&$backend, stringify!($module));
                }
            }

            #[test]
            fn close_with_a_command_held() {
                if super::available(stringify!($module)) {
                    super::close_with_a_command_held(&$backend, stringify!($module));
                }
            }

            #[test]
            fn abort_ends_waits() {
                if super::available(stringify!($module)) {
                    super::abort_ends_waits(&$backend, stringify!($module));
                }
            }
        }
    };
}

suite!(shm, vdi_shm::ShmClient::new());
#[cfg(target_os = "linux")]
suite!(c_abi, sqlvdi::cabi::CAbi::new());
#[cfg(target_os = "linux")]
suite!(linux, super::linux());
#[cfg(windows)]
suite!(com, vdi_win::SqlVdi::new());

/// vdi-linux over the libsqlvdi.so this build made.
#[cfg(target_os = "linux")]
fn linux() -> vdi_linux::LibSqlVdi {
    let path = vdi_testkit::built_sqlvdi_lib();
    vdi_linux::LibSqlVdi::load(&path).unwrap_or_else(|e| panic!("{e}"))
}
