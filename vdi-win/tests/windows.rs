//! What needs a COM runtime: apartments and activation through `CoCreateInstance` (Windows, or
//! Wine via `cargo xtask wine-test`).

#![cfg(windows)]

mod fake;

use std::{ptr, sync::Arc, thread};

use fake::{Fake, FakeActivator};
use vdi_core::{ClientConfig, ClientDeviceSet, Error, HResult, Timeout};
use vdi_win::{
    Cause, Op, SqlVdi,
    raw::{E_NOT_SUPPORTED, RPC_E_CHANGED_MODE},
};
use windows_sys::Win32::System::Com::{
    COINIT_APARTMENTTHREADED, COINIT_MULTITHREADED, CoInitializeEx, CoUninitialize,
};

/// `CoInitializeEx` on this thread.
fn co_initialize(mode: i32) -> HResult {
    // SAFETY: the reserved pointer is null; the caller balances a success with `co_uninitialize`.
    HResult(unsafe { CoInitializeEx(ptr::null(), mode as u32) })
}

fn co_uninitialize() {
    // SAFETY: balances a successful `co_initialize` on this thread.
    unsafe { CoUninitialize() };
}

fn backend() -> (Arc<Fake>, SqlVdi) {
    let fake = Fake::new(0);
    (fake.clone(), SqlVdi::with_activator(FakeActivator(fake)))
}

#[test]
fn sqlvdi_activation_reports_a_missing_registration() {
    let result = SqlVdi::new().create_set(None, "vdi-win-test", &ClientConfig::default());
    match result {
        Err(e) => {
            println!("{e}");
            assert_ne!(e.hresult(), E_NOT_SUPPORTED, "{e}");
            if std::env::var_os("VDI_WIN_EXPECT_NO_SQLVDI").is_some() {
                // Wine has no sqlvdi.dll: the real `CoCreateInstance` answers "class not
                // registered", and the message says what to do.
                assert_eq!(e.op(), Op::CoCreateInstance, "{e}");
                assert_eq!(e.cause(), Some(Cause::ClassNotRegistered), "{e}");
                assert!(
                    e.to_string().contains("sqlvdi.dll is not registered"),
                    "{e}"
                );
            } else {
                assert!(e.cause().is_some(), "no cause named: {e}");
            }
        }
        // A machine with SQL Server and an elevated test run: a real set.
        Ok(set) => set.close().unwrap(),
    }
}

#[test]
fn a_single_threaded_apartment_is_refused() {
    let (fake, vdi) = backend();
    let set = vdi
        .create_set(None, "Set-1", &ClientConfig::default())
        .unwrap();
    let set = Arc::new(set);
    let (vdi2, set2) = (vdi.clone(), Arc::clone(&set));
    thread::spawn(move || {
        assert_eq!(co_initialize(COINIT_APARTMENTTHREADED), HResult::S_OK);
        let e = vdi2
            .create_set(None, "Set-2", &ClientConfig::default())
            .unwrap_err();
        assert_eq!((e.op(), e.hresult()), (Op::CreateEx, RPC_E_CHANGED_MODE));
        assert_eq!(e.cause(), Some(Cause::SingleThreadedApartment));
        assert!(e.to_string().contains("single-threaded"), "{e}");
        assert_eq!(
            set2.configuration(Timeout::POLL).unwrap_err(),
            Error::Other(RPC_E_CHANGED_MODE)
        );
        co_uninitialize();
    })
    .join()
    .unwrap();
    assert_eq!(
        fake.methods(),
        ["CreateEx"],
        "nothing reached the fake from the STA"
    );
    set.configuration(Timeout::POLL).unwrap();
}

#[test]
fn each_call_leaves_the_thread_as_it_found_it() {
    let (_fake, vdi) = backend();
    thread::spawn(move || {
        // A thread with no COM: the call enters the MTA and leaves it again, so the thread
        // can still choose a single-threaded apartment afterwards.
        let set = vdi
            .create_set(None, "Set-1", &ClientConfig::default())
            .unwrap();
        set.configuration(Timeout::POLL).unwrap();
        assert_eq!(co_initialize(COINIT_APARTMENTTHREADED), HResult::S_OK);
        co_uninitialize();
        // A thread already in the MTA: the call's own entry is S_FALSE, and balanced.
        assert_eq!(co_initialize(COINIT_MULTITHREADED), HResult::S_OK);
        set.close().unwrap();
        assert_eq!(co_initialize(COINIT_MULTITHREADED), HResult::S_FALSE);
        co_uninitialize();
        co_uninitialize();
    })
    .join()
    .unwrap();
}
