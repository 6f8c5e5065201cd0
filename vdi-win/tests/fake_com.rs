//! The sqlvdi backend against a fake COM object: slot order, arguments, reference counts, state
//! checks and error mapping. Needs no COM runtime, so it runs natively on Linux and, for
//! `x86_64-pc-windows-gnu`, under Wine (`cargo xtask wine-test`).

mod fake;

use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use fake::{Call, Fake, FakeActivator};
use vdi_core::{
    AbortReason, BufferHandle, ClientBackend, ClientCommand, ClientConfig, ClientDevice,
    ClientDeviceSet, ClientSetState, CommandCode, Completion, CompletionCode, Error, Features,
    HResult, InvalidReason, MappedBuffer, ProtocolReason, Timeout,
};
use vdi_win::{
    Cause, Op, SqlVdi, SqlVdiCommand, SqlVdiDevice, SqlVdiMapped, SqlVdiSet,
    raw::{IClientVirtualDevice, IClientVirtualDeviceSet, IClientVirtualDeviceSet2, Interface},
};

const PREFIX: usize = 16;

fn config() -> ClientConfig {
    ClientConfig {
        device_count: 2,
        features: Features::REQUEST_COMPLETE,
        prefix_zone_size: PREFIX as u32,
        alignment: 4096,
        server_timeout: 1234,
        ..ClientConfig::default()
    }
}

fn backend() -> (Arc<Fake>, SqlVdi) {
    let fake = Fake::new(PREFIX);
    let vdi = SqlVdi::with_activator(FakeActivator(Arc::clone(&fake)));
    (fake, vdi)
}

/// A set created, configured, with its first device open; the calls so far forgotten.
fn active() -> (Arc<Fake>, SqlVdiSet, SqlVdiDevice) {
    let (fake, vdi) = backend();
    let set = vdi.create_set(None, "Set-1", &config()).unwrap();
    set.configuration(Timeout::POLL).unwrap();
    let device = set.open_device("Set-1").unwrap();
    fake.clear();
    (fake, set, device)
}

fn hr<T>(r: Result<T, Error>) -> HResult {
    match r {
        Ok(_) => HResult::S_OK,
        Err(e) => e.hresult(),
    }
}

#[test]
fn send_and_sync_as_the_traits_require() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<SqlVdi>();
    send_sync::<SqlVdiSet>();
    send_sync::<SqlVdiDevice>();
    send::<SqlVdiCommand>();
    send::<SqlVdiMapped>();
}

#[test]
fn each_slot_is_hit_with_its_arguments() {
    let (fake, vdi) = backend();
    let set = vdi
        .create_set(Some("SQL2022"), "Set-Ünï-1", &config())
        .unwrap();
    let cfg = set.configuration(Timeout::from_millis(5000)).unwrap();
    assert_eq!(cfg.block_size, 65536);
    assert!(cfg.is_backup());
    assert_eq!(set.state(), ClientSetState::Initializing);

    let device = set.open_device("Set-Ünï-1").unwrap();
    assert_eq!(device.index(), 0);
    let second = set.open_device("stripe-2").unwrap();
    assert_eq!(second.index(), 1);

    fake.push_command(CommandCode::WRITE, 64, 0);
    let cmd = device.command(Timeout::INFINITE).unwrap();
    fake.push_command(CommandCode::SET_POSITION, 2, 777);
    let pos = second.command(Timeout::from_millis(250)).unwrap();
    device
        .complete(
            cmd,
            Completion {
                code: CompletionCode::SUCCESS,
                bytes_transferred: 64,
                position: 0,
            },
        )
        .unwrap();
    second.complete(pos, Completion::position(4242)).unwrap();
    set.signal_abort().unwrap();
    set.close().unwrap();

    let (cmd0, _) = fake.command_ptrs(0);
    let (cmd1, _) = fake.command_ptrs(1);
    let calls: Vec<Call> = fake
        .calls()
        .into_iter()
        .filter(|c| !matches!(c, Call::QueryInterface { .. }))
        .collect();
    let [
        create,
        get_config,
        open0,
        open1,
        get0,
        get1,
        done0,
        done1,
        abort,
        close,
    ] = &calls[..]
    else {
        panic!("unexpected calls: {calls:#?}");
    };
    assert_eq!(
        create,
        &Call::CreateEx {
            instance: Some("SQL2022".into()),
            name: "Set-Ünï-1".into(),
            config: config().to_raw(),
        }
    );
    assert_eq!(get_config, &Call::GetConfiguration { timeout: 5000 });
    assert_eq!(
        open0,
        &Call::OpenDevice {
            name: "Set-Ünï-1".into()
        }
    );
    assert_eq!(
        open1,
        &Call::OpenDevice {
            name: "stripe-2".into()
        }
    );
    assert_eq!(
        get0,
        &Call::GetCommand {
            device: 1,
            timeout: u32::MAX
        }
    );
    let Call::GetCommand { device: 2, timeout } = get1 else {
        panic!("{get1:?}");
    };
    assert!((200..=250).contains(timeout), "{timeout}");
    assert_eq!(
        done0,
        &Call::CompleteCommand {
            device: 1,
            cmd: cmd0,
            code: 0,
            bytes: 64,
            position: 0
        }
    );
    assert_eq!(
        done1,
        &Call::CompleteCommand {
            device: 2,
            cmd: cmd1,
            code: 0,
            bytes: 0,
            position: 4242
        }
    );
    assert_eq!((abort, close), (&Call::SignalAbort, &Call::Close));
}

#[test]
fn default_instance_is_a_null_name() {
    let (fake, vdi) = backend();
    for instance in [None, Some("")] {
        let set = vdi.create(instance, "Set-1", &config()).unwrap();
        set.close().unwrap();
    }
    let instances: Vec<_> = fake
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::CreateEx { instance, .. } => Some(instance),
            _ => None,
        })
        .collect();
    assert_eq!(instances, [None, None]);
}

#[test]
fn command_data_is_the_shared_buffer() {
    let (fake, _set, device) = active();
    fake.push_command(CommandCode::WRITE, 100, 0);
    let mut cmd = device.command(Timeout::POLL).unwrap();
    let (_, buffer) = fake.command_ptrs(0);
    assert_eq!(
        (cmd.code(), cmd.size(), cmd.position()),
        (CommandCode::WRITE, 100, 0)
    );
    assert_eq!(cmd.data().as_ptr() as usize, buffer);
    assert!(cmd.data().iter().enumerate().all(|(i, &b)| b == i as u8));
    assert_eq!(cmd.prefix_zone().len(), PREFIX);
    assert_eq!(cmd.prefix_zone().as_ptr() as usize, buffer - PREFIX);
    assert!(cmd.prefix_zone().iter().all(|&b| b == 0xEE));

    // A Read is filled in place, prefix zone included.
    fake.push_command(CommandCode::READ, 8, 0);
    let mut read = device.command(Timeout::POLL).unwrap();
    read.data_mut().copy_from_slice(b"restored");
    read.prefix_zone().fill(7);
    device.complete(read, Completion::eof(8)).unwrap();
    let (data, prefix) = fake.command_bytes(1);
    assert_eq!(&data, b"restored");
    assert_eq!(prefix, [7; PREFIX]);

    // Commands without a buffer overload `size`: they expose no data.
    fake.push_command(CommandCode::SKIP_MARKS, 3, 0);
    let mut skip = device.command(Timeout::POLL).unwrap();
    assert_eq!(skip.size(), 3);
    assert!(skip.data().is_empty() && skip.data_mut().is_empty() && skip.prefix_zone().is_empty());
    device.complete(skip, Completion::not_supported()).unwrap();
    device.complete(cmd, Completion::success(100)).unwrap();
}

/// A Write larger than the set's `maxTransferSize` (1 MiB here) is the library breaking the
/// protocol: its size is not trusted to describe the buffer, so it is completed with
/// `ERROR_OPERATION_ABORTED` and the set aborted, never handed out with a data zone.
#[test]
fn a_command_above_the_transfer_size_is_refused() {
    let (fake, set, device) = active();
    fake.push_command(CommandCode::WRITE, (1 << 20) + 1, 0);
    assert_eq!(hr(device.command(Timeout::POLL)), HResult::VD_E_ABORT);
    let calls = fake.calls();
    assert!(
        calls.iter().any(|c| matches!(
            c,
            Call::CompleteCommand {
                code: 995,
                bytes: 0,
                ..
            }
        )),
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|c| matches!(c, Call::SignalAbort)),
        "{calls:?}"
    );
    assert_eq!(set.state(), ClientSetState::Aborted);
}

#[test]
fn references_balance_when_the_wrappers_drop() {
    let (fake, vdi) = backend();
    let set = vdi.create_set(None, "Set-1", &config()).unwrap();
    set.configuration(Timeout::POLL).unwrap();
    let device = set.open_device("Set-1").unwrap();
    let clone = device.clone();
    assert_eq!(fake.refs(), [1, 1], "an Arc clone takes no COM reference");
    fake.push_command(CommandCode::FLUSH, 0, 0);
    let cmd = clone.command(Timeout::POLL).unwrap();
    drop((device, clone));
    assert_eq!(fake.refs(), [1, 1], "a live command keeps its device");
    drop(set);
    assert_eq!(fake.refs(), [1, 1], "and its set");
    drop(cmd);
    assert_eq!(fake.refs(), [0, 0]);
    // The set was closed first, which ended its commands: nothing is completed after Close.
    assert_eq!(fake.methods().last(), Some(&"Close"));
}

#[test]
fn clone_is_add_ref_and_drop_is_release() {
    let fake = Fake::new(0);
    // SAFETY: a fresh fake set object, whose one reference passes to the wrapper.
    let set = unsafe { IClientVirtualDeviceSet2::from_raw(fake.new_set()) };
    let copy = set.clone();
    assert_eq!(fake.refs(), [2]);
    let base: IClientVirtualDeviceSet = set.cast().unwrap();
    assert_eq!(fake.refs(), [3]);
    assert_eq!(
        fake.calls(),
        [Call::QueryInterface {
            object: set.as_raw() as usize,
            iid: IClientVirtualDeviceSet::IID
        }]
    );
    assert_eq!(
        set.cast::<IClientVirtualDevice>().unwrap_err(),
        HResult::E_NOINTERFACE
    );
    // Deref to the base interface reaches the base slots, with no reference taken.
    assert_eq!(set.close(), HResult::S_OK);
    assert_eq!(fake.refs(), [3]);
    drop((copy, base));
    assert_eq!(fake.refs(), [1]);
    let raw = set.into_raw();
    assert_eq!(fake.refs(), [1], "into_raw keeps the reference");
    // SAFETY: the reference `into_raw` gave up, taken back once.
    drop(unsafe { IClientVirtualDeviceSet2::from_raw(raw) });
    assert_eq!(fake.refs(), [0]);
}

#[test]
fn activation_errors_name_their_cause() {
    let (fake, vdi) = backend();
    for code in [
        HResult::REGDB_E_CLASSNOTREG,
        HResult::CLASS_E_CLASSNOTAVAILABLE,
    ] {
        fake.fail_next("CoCreateInstance", code);
        let e = vdi.create_set(None, "Set-1", &config()).unwrap_err();
        assert_eq!((e.op(), e.hresult()), (Op::CoCreateInstance, code));
        assert_eq!(e.cause(), Some(Cause::ClassNotRegistered));
        assert!(
            e.to_string().contains(
                "sqlvdi.dll is not registered, or its bitness differs from this 64-bit process"
            ),
            "{e}"
        );
        // Through the trait: the same code.
        fake.fail_next("CoCreateInstance", code);
        assert_eq!(hr(vdi.create(None, "Set-1", &config())), code);
    }
    fake.fail_next("CoCreateInstance", HResult::E_NOINTERFACE);
    let e = vdi.open_secondary_set(None, "Set-1").unwrap_err();
    assert_eq!(e.cause(), Some(Cause::NoSet2Interface));
    assert!(fake.calls().is_empty(), "nothing reached a set");
}

#[test]
fn create_ex_errors_name_their_cause() {
    let (fake, vdi) = backend();
    fake.fail_next("CreateEx", HResult::E_ACCESSDENIED);
    let e = vdi.create_set(None, "Set-1", &config()).unwrap_err();
    assert_eq!(
        (e.op(), e.cause()),
        (Op::CreateEx, Some(Cause::AccessDenied))
    );
    assert!(e.to_string().contains("run as an administrator"), "{e}");
    assert_eq!(
        std::io::Error::from(e).kind(),
        std::io::ErrorKind::PermissionDenied
    );

    fake.fail_next("CreateEx", HResult::VD_E_INSTANCE_NAME);
    let e = vdi
        .create_set(Some("NOSUCH"), "Set-1", &config())
        .unwrap_err();
    assert_eq!(e.error(), Error::InstanceName);
    assert!(
        e.to_string().contains(
            "instance name not recognized: give the instance name without the machine prefix"
        ),
        "{e}"
    );

    // A machine prefix is refused before sqlvdi is even activated.
    fake.clear();
    let e = vdi
        .create_set(Some(r"HOST\SQL2022"), "Set-1", &config())
        .unwrap_err();
    assert_eq!(
        (e.error(), e.cause()),
        (Error::InstanceName, Some(Cause::InstanceName))
    );
    assert_eq!(fake.refs().len(), 2, "no third object was activated");

    fake.fail_next("CreateEx", HResult::VD_E_PROTOCOL);
    assert_eq!(
        vdi.create(None, "Set-1", &config()).unwrap_err(),
        Error::Protocol(ProtocolReason::AlreadyExists)
    );
    fake.fail_next("CreateEx", HResult::VD_E_SECURITY);
    let e = vdi.create_set(None, "Set-1", &config()).unwrap_err();
    assert_eq!(e.cause(), Some(Cause::Security));
    // Every failed set was released.
    assert!(fake.refs().iter().all(|&r| r == 0), "{:?}", fake.refs());
}

#[test]
fn local_rules_answer_like_every_backend() {
    let (fake, vdi) = backend();
    // Checked before COM, as vdi-shm checks them.
    assert!(matches!(
        vdi.create(None, "a/b", &config()),
        Err(Error::Invalid(InvalidReason::Name(_)))
    ));
    let bad = ClientConfig {
        device_count: 65,
        ..config()
    };
    assert_eq!(
        hr(vdi.create(None, "Set-1", &bad)),
        HResult::VD_E_NOTSUPPORTED
    );
    assert!(fake.calls().is_empty());

    let set = vdi.create_set(None, "Set-1", &config()).unwrap();
    fake.clear();
    // Configurable: no device may be opened yet.
    assert_eq!(
        set.open_device("Set-1").unwrap_err(),
        Error::Protocol(ProtocolReason::WrongState(vdi_core::Call::OpenDevice))
    );
    set.configuration(Timeout::POLL).unwrap();
    let device = set.open_device("Set-1").unwrap();
    assert_eq!(
        set.open_device("Set-1").unwrap_err(),
        Error::Protocol(ProtocolReason::DeviceAlreadyOpen)
    );
    set.close().unwrap();
    // Closed: nothing reaches sqlvdi any more, whose device interfaces Close invalidated.
    fake.clear();
    let wrong = |call| Error::Protocol(ProtocolReason::WrongState(call));
    assert_eq!(
        set.configuration(Timeout::POLL).unwrap_err(),
        wrong(vdi_core::Call::GetConfiguration)
    );
    assert_eq!(
        device.command(Timeout::POLL).unwrap_err(),
        wrong(vdi_core::Call::GetCommand)
    );
    assert_eq!(
        set.signal_abort().unwrap_err(),
        wrong(vdi_core::Call::SignalAbort)
    );
    assert_eq!(set.close().unwrap_err(), wrong(vdi_core::Call::Close));
    assert_eq!(
        set.map_buffer_handle(BufferHandle(1), 1).unwrap_err(),
        wrong(vdi_core::Call::MapBufferHandle)
    );
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
}

#[test]
fn every_vd_e_code_from_sqlvdi_maps_to_its_error() {
    let codes = [
        HResult::VD_E_NOTOPEN,
        HResult::VD_E_TIMEOUT,
        HResult::VD_E_SECURITY,
        HResult::VD_E_INVALID,
        HResult::VD_E_INSTANCE_NAME,
        HResult::VD_E_NOTSUPPORTED,
        HResult::VD_E_MEMORY,
        HResult::VD_E_UNEXPECTED,
        HResult::VD_E_PROTOCOL,
        HResult::VD_E_OPEN,
        HResult::VD_E_CLOSE,
        HResult::VD_E_BUSY,
        HResult::VD_E_ABORT,
    ];
    for code in codes {
        let (fake, set, device) = active();
        fake.fail_next("GetCommand", code);
        let e = device.command(Timeout::POLL).unwrap_err();
        assert_eq!(e.hresult(), code, "{code:?}");
        assert_eq!(Some(e), Error::from_hresult(code), "{code:?}");
        drop((set, device));
    }
    // The call narrows the reason where the code has one meaning for it.
    let (fake, set, device) = active();
    fake.fail_next("OpenDevice", HResult::VD_E_INVALID);
    assert_eq!(
        set.open_device("nosuch").unwrap_err(),
        Error::Invalid(InvalidReason::DeviceName)
    );
    fake.fail_next("OpenDevice", HResult::VD_E_OPEN);
    assert_eq!(set.open_device("other").unwrap_err(), Error::Open);
    fake.push_command(CommandCode::FLUSH, 0, 0);
    let cmd = device.command(Timeout::POLL).unwrap();
    fake.fail_next("CompleteCommand", HResult::VD_E_INVALID);
    assert_eq!(
        device.complete(cmd, Completion::success(0)).unwrap_err(),
        Error::Invalid(InvalidReason::NotActiveCommand)
    );
    // An unknown HRESULT is kept as it is.
    let odd = HResult(0x8007_0017_u32 as i32);
    fake.fail_next("GetConfiguration", odd);
    assert_eq!(
        set.configuration(Timeout::POLL).unwrap_err(),
        Error::Other(odd)
    );
}

#[test]
fn configuration_timeout_says_what_is_missing() {
    let (fake, vdi) = backend();
    let set = vdi.create_set(None, "Set-1", &config()).unwrap();
    fake.fail_next("GetConfiguration", HResult::VD_E_TIMEOUT);
    assert_eq!(
        set.configuration(Timeout::from_millis(10)).unwrap_err(),
        Error::Timeout
    );
    assert_eq!(
        set.state(),
        ClientSetState::Configurable,
        "a timeout changes nothing"
    );
    set.configuration(Timeout::POLL).unwrap();
    assert_eq!(set.state(), ClientSetState::Initializing);
    let e = vdi_win::WinError::from_hresult(Op::GetConfiguration, HResult::VD_E_TIMEOUT);
    assert_eq!(e.cause(), Some(Cause::ConfigurationTimeout));
}

#[test]
fn an_abort_from_sqlvdi_is_remembered() {
    let (fake, set, device) = active();
    fake.fail_next("GetCommand", HResult::VD_E_ABORT);
    assert_eq!(
        device.command(Timeout::POLL).unwrap_err(),
        Error::Aborted(AbortReason::Signalled)
    );
    assert_eq!(set.state(), ClientSetState::Aborted);
    fake.clear();
    assert!(device.command(Timeout::POLL).unwrap_err().is_abort());
    assert!(set.open_device("x").unwrap_err().is_abort());
    assert!(fake.calls().is_empty());
    set.close().unwrap();
    assert_eq!(fake.methods(), ["Close"]);
}

#[test]
fn vd_e_close_ends_the_device_for_good() {
    let (fake, set, device) = active();
    fake.fail_next("GetCommand", HResult::VD_E_CLOSE);
    assert_eq!(
        device.command(Timeout::INFINITE).unwrap_err(),
        Error::Closed
    );
    assert_eq!(set.state(), ClientSetState::NormallyTerminated);
    assert_eq!(device.command(Timeout::POLL).unwrap_err(), Error::Closed);
    assert_eq!(fake.methods(), ["GetCommand"], "the second answer is local");
    set.close().unwrap();
}

#[test]
fn dropped_and_misrouted_commands_complete_as_aborted() {
    let (fake, set, device) = active();
    fake.push_command(CommandCode::WRITE, 10, 0);
    let cmd = device.command(Timeout::POLL).unwrap();
    drop(cmd);
    let (ptr0, _) = fake.command_ptrs(0);
    assert_eq!(
        fake.calls().last(),
        Some(&Call::CompleteCommand {
            device: 1,
            cmd: ptr0,
            code: 995,
            bytes: 0,
            position: 0
        })
    );

    // More bytes than the command's size: refused, then aborted as it drops.
    fake.push_command(CommandCode::READ, 10, 0);
    let cmd = device.command(Timeout::POLL).unwrap();
    assert_eq!(
        device.complete(cmd, Completion::success(11)).unwrap_err(),
        Error::Invalid(InvalidReason::BytesTransferred)
    );
    let Some(Call::CompleteCommand { code: 995, .. }) = fake.calls().last().cloned() else {
        panic!("{:?}", fake.calls());
    };

    // Another device's command: refused, and completed on its own device.
    set.open_device("stripe-2").unwrap();
    let other = set.open_device("stripe-3");
    assert!(other.is_err(), "two devices only");
    let second = set.open_device("stripe-2");
    assert!(second.is_err());
    fake.push_command(CommandCode::FLUSH, 0, 0);
    let cmd = device.command(Timeout::POLL).unwrap();
    let (fake2, set2, device2) = active();
    assert_eq!(
        device2.complete(cmd, Completion::success(0)).unwrap_err(),
        Error::Invalid(InvalidReason::NotActiveCommand)
    );
    assert!(fake2.methods().is_empty());
    let Some(Call::CompleteCommand {
        device: 1,
        code: 995,
        ..
    }) = fake.calls().last().cloned()
    else {
        panic!("{:?}", fake.calls());
    };
    drop((set2, device2));
}

#[test]
fn buffer_handles() {
    let (fake, set, device) = active();
    fake.push_command(CommandCode::WRITE, 32, 0);
    let cmd = device.command(Timeout::POLL).unwrap();
    let (_, buffer) = fake.command_ptrs(0);
    let handle = set.buffer_handle(&cmd).unwrap();
    assert_eq!(handle, BufferHandle(100));
    assert_eq!(fake.calls().last(), Some(&Call::GetBufferHandle { buffer }));

    // While this process holds the command, a view of its buffer from the handle would be a
    // second view of the same bytes: refused, after sqlvdi has checked the handle.
    assert_eq!(
        set.map_buffer_handle(handle, 32).unwrap_err(),
        Error::Invalid(InvalidReason::Buffer)
    );
    assert_eq!(
        fake.calls().last(),
        Some(&Call::MapBufferHandle { handle: 100 })
    );
    assert_eq!(
        set.map_buffer_handle(BufferHandle(7), 32).unwrap_err(),
        Error::Invalid(InvalidReason::BufferHandle)
    );
    // Once the command is completed here, the buffer is free in this process (as it is, all
    // along, in a secondary process that receives the handle and the command's size).
    device.complete(cmd, Completion::success(32)).unwrap();
    let mut mapped = set.map_buffer_handle(handle, 32).unwrap();
    assert_eq!(mapped.handle(), handle);
    assert_eq!(mapped.as_slice(), fake.command_bytes(0).0);
    // One view at a time: the same handle again, or a shorter view of the same bytes.
    assert_eq!(
        set.map_buffer_handle(handle, 4).unwrap_err(),
        Error::Invalid(InvalidReason::Buffer)
    );
    mapped.as_mut_slice().fill(0x5A);
    assert_eq!(fake.command_bytes(0).0, [0x5A; 32]);
    drop(mapped);
    // Longer than maxTransferSize: refused before sqlvdi is asked.
    fake.clear();
    assert_eq!(
        set.map_buffer_handle(handle, (1 << 20) + 1).unwrap_err(),
        Error::Invalid(InvalidReason::TransferSize)
    );
    assert!(fake.calls().is_empty());
    // Up to maxTransferSize, and an empty view, map.
    assert_eq!(
        set.map_buffer_handle(handle, 1 << 20)
            .unwrap()
            .as_slice()
            .len(),
        1 << 20
    );
    assert!(
        set.map_buffer_handle(handle, 0)
            .unwrap()
            .as_slice()
            .is_empty()
    );

    // No buffer, no handle; no call.
    fake.push_command(CommandCode::FLUSH, 0, 0);
    let flush = device.command(Timeout::POLL).unwrap();
    fake.clear();
    assert_eq!(
        set.buffer_handle(&flush).unwrap_err(),
        Error::Invalid(InvalidReason::Buffer)
    );
    assert!(fake.calls().is_empty());
    device.complete(flush, Completion::success(0)).unwrap();
}

#[test]
fn secondary_joins_and_learns_its_prefix_zone() {
    let (fake, vdi) = backend();
    let set = vdi.open_secondary_set(Some("SQL2022"), "Set-1").unwrap();
    assert_eq!(
        fake.calls().last(),
        Some(&Call::OpenInSecondaryEx {
            instance: Some("SQL2022".into()),
            name: "Set-1".into()
        })
    );
    fake.server_config.lock().unwrap().prefix_zone_size = PREFIX as u32;
    let device = set.open_device("stripe-2").unwrap();
    fake.push_command(CommandCode::WRITE, 4, 0);
    let mut cmd = device.command(Timeout::POLL).unwrap();
    assert_eq!(cmd.prefix_zone().len(), PREFIX);
    device.complete(cmd, Completion::success(4)).unwrap();
    fake.fail_next("OpenInSecondaryEx", HResult::VD_E_PROTOCOL);
    assert_eq!(
        vdi.open_secondary(None, "Set-1").unwrap_err(),
        Error::Protocol(ProtocolReason::NotReady)
    );
}

#[test]
fn get_command_calls_take_turns_within_their_timeouts() {
    let (fake, _set, device) = active();
    fake.block_get_command();
    let waiter = {
        let device = device.clone();
        thread::spawn(move || device.command(Timeout::INFINITE).map(drop))
    };
    let start = Instant::now();
    while !fake.methods().contains(&"GetCommand") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "GetCommand never called"
        );
        thread::sleep(Duration::from_millis(1));
    }
    // The other thread is inside GetCommand: this one waits its 20 ms, then times out.
    assert_eq!(
        device.command(Timeout::from_millis(20)).unwrap_err(),
        Error::Timeout
    );
    assert_eq!(device.command(Timeout::POLL).unwrap_err(), Error::Timeout);
    assert_eq!(fake.methods(), ["GetCommand"]);
    fake.push_command(CommandCode::FLUSH, 0, 0);
    fake.unblock();
    waiter.join().unwrap().unwrap();
    // Completed on the other thread, as it dropped.
    assert_eq!(fake.methods(), ["GetCommand", "CompleteCommand"]);
}

/// sqlvdi's Close frees the buffers: while this process still holds a command's buffer, Close
/// answers as the machine does (`VD_E_OPEN`, after SignalAbort, for a device still open) and
/// sqlvdi's Close waits until the command and the set are gone, so the data stays readable.
#[test]
fn close_waits_for_the_buffers_this_process_holds() {
    let (fake, set, device) = active();
    fake.push_command(CommandCode::WRITE, 64, 0);
    let cmd = device.command(Timeout::POLL).unwrap();
    fake.clear();
    assert_eq!(set.close().unwrap_err(), Error::Open);
    assert_eq!(fake.methods(), ["SignalAbort"]);
    assert!(cmd.data().iter().enumerate().all(|(i, &b)| b == i as u8));
    drop((set, device));
    assert_eq!(fake.methods(), ["SignalAbort"]);
    // Dropped after Close: nothing is completed, and the last view is gone.
    drop(cmd);
    assert_eq!(fake.methods(), ["SignalAbort", "Close"]);
}

/// Close never frees a device under a GetCommand in progress: it ends the wait with
/// SignalAbort (a device is still open), and calls sqlvdi's Close once GetCommand returned.
#[test]
fn close_waits_for_a_get_command_in_progress() {
    let (fake, set, device) = active();
    fake.block_get_command();
    let waiter = {
        let device = device.clone();
        thread::spawn(move || device.command(Timeout::INFINITE).map(drop))
    };
    let wait_for = |method: &str| {
        let start = Instant::now();
        while !fake.methods().contains(&method) {
            assert!(start.elapsed() < Duration::from_secs(10), "no {method}");
            thread::sleep(Duration::from_millis(1));
        }
    };
    wait_for("GetCommand");
    let closer = thread::spawn(move || set.close());
    wait_for("SignalAbort");
    thread::sleep(Duration::from_millis(20));
    assert_eq!(fake.methods(), ["GetCommand", "SignalAbort"]);
    fake.unblock();
    assert!(waiter.join().unwrap().is_err());
    // sqlvdi's own answer (the fake's: S_OK).
    closer.join().unwrap().unwrap();
    assert_eq!(fake.methods(), ["GetCommand", "SignalAbort", "Close"]);
}

/// Two Closes that both wait for a GetCommand in progress: one closes the set, the other is
/// answered `VD_E_PROTOCOL` without reaching sqlvdi.
#[test]
fn concurrent_closes_reach_sqlvdi_once() {
    let (fake, set, device) = active();
    fake.block_get_command();
    let waiter = {
        let device = device.clone();
        thread::spawn(move || device.command(Timeout::INFINITE).map(drop))
    };
    let start = Instant::now();
    while !fake.methods().contains(&"GetCommand") {
        assert!(start.elapsed() < Duration::from_secs(10), "no GetCommand");
        thread::sleep(Duration::from_millis(1));
    }
    let set = Arc::new(set);
    let closers: Vec<_> = (0..2)
        .map(|_| {
            let set = Arc::clone(&set);
            thread::spawn(move || hr(set.close()))
        })
        .collect();
    thread::sleep(Duration::from_millis(20));
    fake.unblock();
    assert!(waiter.join().unwrap().is_err());
    let mut answers: Vec<_> = closers.into_iter().map(|c| c.join().unwrap()).collect();
    answers.sort_by_key(|h| h.0);
    assert_eq!(answers, [HResult::VD_E_PROTOCOL, HResult::S_OK]);
    let closes = fake.methods().iter().filter(|m| **m == "Close").count();
    assert_eq!(closes, 1, "{:?}", fake.methods());
}

#[test]
fn commands_complete_from_other_threads() {
    let (fake, set, device) = active();
    for _ in 0..4 {
        fake.push_command(CommandCode::WRITE, 8, 0);
    }
    let cmds: Vec<_> = (0..4)
        .map(|_| device.command(Timeout::POLL).unwrap())
        .collect();
    let handles: Vec<_> = cmds
        .into_iter()
        .map(|cmd| {
            let device = device.clone();
            thread::spawn(move || device.complete(cmd, Completion::success(8)))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let completed = fake
        .methods()
        .into_iter()
        .filter(|m| *m == "CompleteCommand")
        .count();
    assert_eq!(completed, 4);
    set.close().unwrap();
}

#[cfg(not(windows))]
#[test]
fn sqlvdi_itself_is_unsupported_off_windows() {
    let e = SqlVdi::new()
        .create_set(None, "Set-1", &config())
        .unwrap_err();
    assert_eq!(e.cause(), Some(Cause::UnsupportedPlatform));
    assert!(
        e.to_string().contains("unsupported on this platform"),
        "{e}"
    );
    assert_eq!(
        std::io::Error::from(e).kind(),
        std::io::ErrorKind::Unsupported
    );
    assert!(SqlVdi::new().open_secondary(None, "Set-1").is_err());
}

/// After the device returned VD_E_CLOSE and the set is NormallyTerminated, GetCommand answers
/// what vdi-core's machine answers there (VD_E_CLOSE again for the device that ended), with no
/// call into sqlvdi.
#[test]
fn get_command_after_the_end_answers_the_machine() {
    let (fake, set, device) = active();
    fake.fail_next("GetCommand", HResult::VD_E_CLOSE);
    assert_eq!(device.command(Timeout::POLL).unwrap_err(), Error::Closed);
    assert_eq!(set.state(), ClientSetState::NormallyTerminated);
    let mut machine = vdi_core::ClientSetMachine::new();
    machine.create(1).unwrap();
    machine.configured();
    machine.open_device(0, false, false).unwrap();
    machine.device_closed(0);
    assert_eq!(machine.state(), ClientSetState::NormallyTerminated);
    fake.clear();
    for timeout in [Timeout::POLL, Timeout::INFINITE] {
        assert_eq!(
            device.command(timeout).map(|_| ()),
            machine.check_get_command(0)
        );
    }
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    set.close().unwrap();
}

/// GetBufferHandle on a set that is no longer open: VD_E_PROTOCOL (vdi-spec.md §4), as
/// MapBufferHandle, without a call into sqlvdi.
#[test]
fn buffer_handle_of_a_closed_set_is_a_protocol_error() {
    let (fake, set, device) = active();
    fake.push_command(CommandCode::WRITE, 32, 0);
    let cmd = device.command(Timeout::POLL).unwrap();
    let handle = set.buffer_handle(&cmd).unwrap();
    // Closed with the device still open (whatever sqlvdi says of that): the set is gone.
    let _ = set.close();
    assert_eq!(set.state(), ClientSetState::DoesNotExist);
    fake.clear();
    let wrong = |call| Error::Protocol(ProtocolReason::WrongState(call));
    assert_eq!(
        set.buffer_handle(&cmd).unwrap_err(),
        wrong(vdi_core::Call::GetBufferHandle)
    );
    assert_eq!(
        set.map_buffer_handle(handle, 32).unwrap_err(),
        wrong(vdi_core::Call::MapBufferHandle)
    );
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    drop(cmd);
}
