//! Every error path the specification lists, from the client's side and the server's, over the
//! real backend (shared memory, sockets, monitor threads), with both sides in this process.
//! Also the IO-ERROR rules and the abort rules of vdi-spec.md §6 and §9.2.

#![cfg(any(target_os = "linux", windows))]

mod common;

use std::{thread, time::Duration};

use common::WAIT;
use vdi_core::{
    AbortReason, BufferHandle, ClientBackend, ClientCommand, ClientConfig, ClientDevice,
    ClientDeviceSet, CommandCode, Completion, CompletionCode, ConfigError, Error, Features,
    HResult, InvalidReason, ServerBackend, ServerBuffer, ServerCommand, ServerConfig, ServerDevice,
    ServerDeviceSet, Timeout,
};
use vdi_shm::{ClientSet, ShmClient, ShmServer};

fn hr<T: std::fmt::Debug>(r: Result<T, Error>) -> HResult {
    r.expect_err("expected an error").hresult()
}

struct Pair {
    name: String,
    client: ClientSet,
    server: vdi_shm::ServerSet,
    sdevs: Vec<vdi_shm::ServerDevice>,
    cdevs: Vec<vdi_shm::ClientDevice>,
}

/// A configured set with `devices` devices open on both sides.
fn pair(devices: u32, client_cfg: ClientConfig, server_cfg: ServerConfig, buffers: u32) -> Pair {
    common::init_tracing();
    let name = common::unique_name("err");
    let client_cfg = ClientConfig {
        device_count: devices,
        ..client_cfg
    };
    let client = ShmClient::new().create(None, &name, &client_cfg).unwrap();
    let server = ShmServer::new().open(None, &name).unwrap();
    server.begin_configuration(&server_cfg).unwrap();
    if buffers > 0 {
        server
            .request_buffers(server_cfg.max_transfer_size, 0, buffers)
            .unwrap();
    }
    let sdevs = (0..devices)
        .map(|i| server.open_device(&common::device_name(&name, i)).unwrap())
        .collect();
    server.end_configuration().unwrap();
    client.configuration(WAIT).unwrap();
    let cdevs = (0..devices)
        .map(|i| client.open_device(&common::device_name(&name, i)).unwrap())
        .collect();
    Pair {
        name,
        client,
        server,
        sdevs,
        cdevs,
    }
}

fn backup_pair(devices: u32, buffers: u32) -> Pair {
    pair(
        devices,
        ClientConfig::default(),
        ServerConfig::backup(512, 65536),
        buffers,
    )
}

#[test]
fn create_errors() {
    let c = ShmClient::new();
    let name = common::unique_name("create");
    let bad = ClientConfig {
        device_count: 0,
        ..ClientConfig::default()
    };
    assert_eq!(
        c.create(None, &name, &bad).unwrap_err(),
        Error::Config(ConfigError::DeviceCount(0))
    );
    let bad = ClientConfig {
        features: Features::WRITE_MEDIA,
        ..ClientConfig::default()
    };
    assert_eq!(hr(c.create(None, &name, &bad)), HResult::VD_E_NOTSUPPORTED);
    assert_eq!(
        hr(c.create(None, "a/b", &ClientConfig::default())),
        HResult::VD_E_INVALID
    );
    assert_eq!(
        hr(c.create(None, "", &ClientConfig::default())),
        HResult::VD_E_INVALID
    );
    assert_eq!(
        hr(c.create(None, &"x".repeat(97), &ClientConfig::default())),
        HResult::VD_E_INVALID
    );
    assert_eq!(
        hr(c.create(Some("MSSQLSERVER2"), &name, &ClientConfig::default())),
        HResult::VD_E_INSTANCE_NAME
    );
    let set = c.create(None, &name, &ClientConfig::default()).unwrap();
    assert_eq!(
        hr(c.create(None, &name, &ClientConfig::default())),
        HResult::VD_E_PROTOCOL
    );
    set.close().unwrap();
    // After Close the name is free again.
    let again = c.create(None, &name, &ClientConfig::default()).unwrap();
    again.close().unwrap();
}

#[test]
fn configuration_timeout_abort_and_protocol() {
    let name = common::unique_name("cfg");
    let set = ShmClient::new()
        .create(None, &name, &ClientConfig::default())
        .unwrap();
    assert_eq!(
        set.configuration(Timeout::POLL).unwrap_err(),
        Error::Timeout
    );
    assert_eq!(
        set.configuration(Timeout::from_millis(20)).unwrap_err(),
        Error::Timeout
    );
    // OpenDevice before the configuration: PROTOCOL.
    assert_eq!(hr(set.open_device(&name)), HResult::VD_E_PROTOCOL);
    // A waiting GetConfiguration returns VD_E_ABORT when another thread aborts.
    thread::scope(|s| {
        let waiter = s.spawn(|| set.configuration(Timeout::INFINITE));
        thread::sleep(Duration::from_millis(20));
        set.signal_abort().unwrap();
        assert_eq!(
            waiter.join().unwrap().unwrap_err(),
            Error::Aborted(AbortReason::Signalled)
        );
    });
    assert_eq!(hr(set.open_device(&name)), HResult::VD_E_ABORT);
    // Close is allowed after an abort; then everything answers PROTOCOL.
    set.close().unwrap();
    assert_eq!(hr(set.configuration(Timeout::POLL)), HResult::VD_E_PROTOCOL);
    assert_eq!(hr(set.signal_abort()), HResult::VD_E_PROTOCOL);
    assert_eq!(hr(set.close()), HResult::VD_E_PROTOCOL);
}

#[test]
fn server_open_errors() {
    let s = ShmServer::new();
    assert_eq!(
        s.open(None, &common::unique_name("nobody")).unwrap_err(),
        Error::Invalid(InvalidReason::NoSuchSet)
    );
    assert_eq!(hr(s.open(None, "bad\\name")), HResult::VD_E_INVALID);
    assert_eq!(hr(s.open(Some("INST"), "x")), HResult::VD_E_INSTANCE_NAME);
    // A second server for the same set is refused.
    let name = common::unique_name("twoservers");
    let set = ShmClient::new()
        .create(None, &name, &ClientConfig::default())
        .unwrap();
    let first = s.open(None, &name).unwrap();
    assert_eq!(hr(s.open(None, &name)), HResult::VD_E_PROTOCOL);
    drop(first);
    drop(set);
}

#[test]
fn server_configuration_errors() {
    let name = common::unique_name("scfg");
    let client_cfg = ClientConfig {
        device_count: 2,
        ..ClientConfig::default()
    };
    let _set = ShmClient::new().create(None, &name, &client_cfg).unwrap();
    let s = ShmServer::new().open(None, &name).unwrap();
    assert_eq!(s.configuration().unwrap(), client_cfg);
    // Calls before BeginConfiguration.
    assert_eq!(hr(s.request_buffers(65536, 0, 1)), HResult::VD_E_PROTOCOL);
    assert_eq!(hr(s.end_configuration()), HResult::VD_E_PROTOCOL);
    assert_eq!(hr(s.allocate_buffer(65536, 0)), HResult::VD_E_PROTOCOL);
    assert_eq!(hr(s.open_device(&name)), HResult::VD_E_PROTOCOL);
    // Values that break a rule.
    assert_eq!(
        s.begin_configuration(&ServerConfig::backup(1000, 65536))
            .unwrap_err(),
        Error::Config(ConfigError::BlockSize(1000))
    );
    let complete = ServerConfig {
        features: Features::WRITE_MEDIA | Features::COMPLETE_ENABLED,
        ..ServerConfig::backup(512, 65536)
    };
    assert_eq!(
        s.begin_configuration(&complete).unwrap_err(),
        Error::Config(ConfigError::CompleteNotRequested)
    );
    s.begin_configuration(&ServerConfig::backup(4096, 65536))
        .unwrap();
    assert_eq!(
        hr(s.begin_configuration(&ServerConfig::backup(4096, 65536))),
        HResult::VD_E_PROTOCOL
    );
    // Bad buffer requests.
    assert_eq!(hr(s.request_buffers(0, 0, 1)), HResult::VD_E_INVALID);
    assert_eq!(hr(s.request_buffers(5 << 20, 0, 1)), HResult::VD_E_INVALID);
    assert_eq!(hr(s.request_buffers(65536, 3, 1)), HResult::VD_E_INVALID);
    assert_eq!(
        hr(s.request_buffers(65536, 1 << 17, 1)),
        HResult::VD_E_INVALID
    );
    // Far more memory than the machine has: VD_E_MEMORY, and the set stays configurable.
    s.request_buffers(4 << 20, 0, 4_000_000).unwrap();
    assert_eq!(hr(s.end_configuration()), HResult::VD_E_MEMORY);
    s.request_buffers(65536, 0, 2).unwrap();
    // Device names: the first device carries the set's name; names are unique.
    assert_eq!(hr(s.open_device("not-the-set")), HResult::VD_E_INVALID);
    s.open_device(&name).unwrap();
    assert_eq!(hr(s.open_device(&name)), HResult::VD_E_INVALID);
    s.open_device("second").unwrap();
    assert_eq!(hr(s.open_device("third")), HResult::VD_E_OPEN);
    s.end_configuration().unwrap();
    assert_eq!(hr(s.end_configuration()), HResult::VD_E_PROTOCOL);
    assert_eq!(s.query_available_buffers(65536, 0).unwrap(), 2);
    // Allocation: out of space, bad size, bad alignment.
    let a = s.allocate_buffer(65536, 0).unwrap();
    let b = s.allocate_buffer(65536, 4096).unwrap();
    assert!(s.is_shared_buffer(a.as_ptr()));
    assert!(!s.is_shared_buffer(std::ptr::null()));
    assert_eq!(hr(s.allocate_buffer(65536, 0)), HResult::VD_E_MEMORY);
    assert_eq!(hr(s.allocate_buffer(0, 0)), HResult::VD_E_INVALID);
    assert_eq!(hr(s.allocate_buffer(512, 12)), HResult::VD_E_INVALID);
    // Buffers are aligned to the set's alignment (the block size here).
    assert_eq!(a.as_ptr() as usize % 4096, 0);
    s.free_buffer(a).unwrap();
    assert_eq!(s.query_available_buffers(65536, 0).unwrap(), 1);
    // After configuration, a request allocates at once.
    s.request_buffers(65536, 0, 3).unwrap();
    assert_eq!(s.query_available_buffers(65536, 0).unwrap(), 4);
    s.free_buffer(b).unwrap();
}

#[test]
fn free_buffer_of_another_set_is_invalid() {
    let p1 = backup_pair(1, 1);
    let p2 = backup_pair(1, 1);
    let b = p1.server.allocate_buffer(65536, 0).unwrap();
    assert_eq!(hr(p2.server.free_buffer(b)), HResult::VD_E_INVALID);
}

#[test]
fn device_open_errors() {
    let p = backup_pair(2, 0);
    assert_eq!(
        hr(p.client.open_device("no-such-device")),
        HResult::VD_E_INVALID
    );
    drop(p);
    let name = common::unique_name("devopen");
    let set = ShmClient::new()
        .create(
            None,
            &name,
            &ClientConfig {
                device_count: 2,
                ..ClientConfig::default()
            },
        )
        .unwrap();
    let s = ShmServer::new().open(None, &name).unwrap();
    s.begin_configuration(&ServerConfig::backup(512, 65536))
        .unwrap();
    s.open_device(&name).unwrap();
    s.open_device("two").unwrap();
    s.end_configuration().unwrap();
    set.configuration(WAIT).unwrap();
    assert_eq!(hr(set.open_device("three")), HResult::VD_E_INVALID);
    assert_eq!(hr(set.open_device("a/b")), HResult::VD_E_INVALID);
    let d0 = set.open_device(&name).unwrap();
    assert_eq!(hr(set.open_device(&name)), HResult::VD_E_PROTOCOL);
    let d1 = set.open_device("two").unwrap();
    assert_eq!(hr(set.open_device("two")), HResult::VD_E_OPEN);
    drop((d0, d1));
}

#[test]
fn get_command_timeout_close_and_complete_errors() {
    let p = backup_pair(2, 2);
    let (d0, d1) = (&p.cdevs[0], &p.cdevs[1]);
    assert_eq!(d0.command(Timeout::POLL).unwrap_err(), Error::Timeout);
    assert_eq!(
        d0.command(Timeout::from_millis(10)).unwrap_err(),
        Error::Timeout
    );
    let buf = p.server.allocate_buffer(65536, 0).unwrap();
    // The server's size checks: more than the buffer, not a multiple of the block size, no
    // buffer for a Write, a buffer for a Flush.
    let e = p.sdevs[0]
        .send(ServerCommand::write(buf, 1000))
        .unwrap_err();
    assert_eq!(e.error, Error::Invalid(InvalidReason::TransferSize));
    let e = p.sdevs[0]
        .send(ServerCommand {
            size: 65536 * 2,
            ..e.command
        })
        .unwrap_err();
    assert_eq!(e.error.hresult(), HResult::VD_E_INVALID);
    let buf = e.command.buffer.unwrap();
    let e = p.sdevs[0]
        .send(ServerCommand {
            code: CommandCode::WRITE,
            size: 512,
            position: 0,
            buffer: None,
        })
        .unwrap_err();
    assert_eq!(e.error, Error::Invalid(InvalidReason::Buffer));
    let e = p.sdevs[0]
        .send(ServerCommand {
            code: CommandCode::FLUSH,
            size: 0,
            position: 0,
            buffer: Some(buf),
        })
        .unwrap_err();
    let buf = e.command.buffer.unwrap();

    p.sdevs[0].send(ServerCommand::write(buf, 512)).unwrap();
    let cmd = d0.command(WAIT).unwrap();
    assert_eq!(
        (cmd.code(), cmd.size(), cmd.data().len()),
        (CommandCode::WRITE, 512, 512)
    );
    // A command of device 0 completed on device 1: VD_E_INVALID (the command, dropped, then
    // completes on its own device with ERROR_OPERATION_ABORTED).
    assert_eq!(
        hr(d1.complete(cmd, Completion::success(512))),
        HResult::VD_E_INVALID
    );
    let c = p.sdevs[0].completion(WAIT).unwrap();
    assert_eq!(c.completion.code, CompletionCode::OPERATION_ABORTED);
    // That was an error completion: the device is in IO-ERROR until a ClearError.
    clear_error(&p.sdevs[0], d0);
    // More bytes than asked for: VD_E_INVALID.
    p.sdevs[0]
        .send(ServerCommand::write(c.buffer.unwrap(), 512))
        .unwrap();
    let cmd = d0.command(WAIT).unwrap();
    assert_eq!(
        hr(d0.complete(cmd, Completion::success(513))),
        HResult::VD_E_INVALID
    );
    let c = p.sdevs[0].completion(WAIT).unwrap();
    assert_eq!(c.completion.code, CompletionCode::OPERATION_ABORTED);
    clear_error(&p.sdevs[0], d0);
    // Buffer handles: a command without a buffer has none.
    p.sdevs[0]
        .send(ServerCommand::control(CommandCode::FLUSH))
        .unwrap();
    let flush = d0.command(WAIT).unwrap();
    assert_eq!(hr(p.client.buffer_handle(&flush)), HResult::VD_E_INVALID);
    d0.complete(flush, Completion::success(0)).unwrap();
    p.sdevs[0].completion(WAIT).unwrap();
    assert_eq!(
        hr(p.client.map_buffer_handle(BufferHandle(0xDEAD_BEEF), 1)),
        HResult::VD_E_INVALID
    );
    // CloseDevice: GetCommand drains, then VD_E_CLOSE, every time after.
    p.sdevs[1]
        .send(ServerCommand::control(CommandCode::FLUSH))
        .unwrap();
    p.sdevs[1].close().unwrap();
    assert_eq!(hr(p.sdevs[1].close()), HResult::VD_E_PROTOCOL);
    let e = p.sdevs[1]
        .send(ServerCommand::control(CommandCode::FLUSH))
        .unwrap_err();
    assert_eq!(e.error.hresult(), HResult::VD_E_PROTOCOL);
    let flush = d1.command(WAIT).unwrap();
    assert_eq!(flush.code(), CommandCode::FLUSH);
    d1.complete(flush, Completion::success(0)).unwrap();
    assert_eq!(d1.command(WAIT).unwrap_err(), Error::Closed);
    assert_eq!(d1.command(Timeout::POLL).unwrap_err(), Error::Closed);
    p.sdevs[1].completion(WAIT).unwrap();
    assert_eq!(
        p.sdevs[1].completion(Timeout::POLL).unwrap_err(),
        Error::Closed
    );
    // Close with a device still open: VD_E_OPEN, and the server sees an abort.
    assert_eq!(hr(p.client.close()), HResult::VD_E_OPEN);
    let e = p.sdevs[0]
        .send(ServerCommand::control(CommandCode::FLUSH))
        .unwrap_err();
    assert_eq!(e.error.hresult(), HResult::VD_E_ABORT);
    // The set is aborted now, so the server's Close is clean (vdi-spec.md §6: Close in Abort).
    p.server.close().unwrap();
    let _ = &p.name;
}

/// Sends ClearError and has the client acknowledge it.
fn clear_error(s: &vdi_shm::ServerDevice, c: &vdi_shm::ClientDevice) {
    let e = s
        .send(ServerCommand::control(CommandCode::FLUSH))
        .unwrap_err();
    assert_eq!(e.error, Error::DeviceError);
    s.send(ServerCommand::control(CommandCode::CLEAR_ERROR))
        .unwrap();
    let cmd = c.command(WAIT).unwrap();
    assert_eq!(cmd.code(), CommandCode::CLEAR_ERROR);
    c.complete(cmd, Completion::success(0)).unwrap();
    assert_eq!(s.completion(WAIT).unwrap().code, CommandCode::CLEAR_ERROR);
}

#[test]
fn queue_full_gives_busy() {
    let p = backup_pair(1, 0);
    let mut sent = 0;
    let err = loop {
        match p.sdevs[0].send(ServerCommand::control(CommandCode::FLUSH)) {
            Ok(_) => sent += 1,
            Err(e) => break e.error,
        }
    };
    assert_eq!(err, Error::Busy);
    assert_eq!(sent, vdi_shm::QUEUE_DEPTH);
    // Completing one makes room for one.
    let cmd = p.cdevs[0].command(WAIT).unwrap();
    p.cdevs[0].complete(cmd, Completion::success(0)).unwrap();
    p.sdevs[0].completion(WAIT).unwrap();
    p.sdevs[0]
        .send(ServerCommand::control(CommandCode::FLUSH))
        .unwrap();
}

/// vdi-spec.md §6: after an error completion the server may send only ClearError; commands
/// queued but not handed out are completed with ERROR_IO_DEVICE unseen; ClearError waits for
/// the commands outstanding at the error; a successful ClearError resumes.
#[test]
fn io_error_state_across_both_sides() {
    let p = backup_pair(1, 4);
    let (s, c) = (&p.sdevs[0], &p.cdevs[0]);
    for _ in 0..3 {
        let b = p.server.allocate_buffer(65536, 0).unwrap();
        s.send(ServerCommand::write(b, 65536)).unwrap();
    }
    let first = c.command(WAIT).unwrap();
    let second = c.command(WAIT).unwrap();
    // The client fails the first write: the device enters IO-ERROR.
    c.complete(first, Completion::with_code(CompletionCode::DISK_FULL))
        .unwrap();
    let done = s.completion(WAIT).unwrap();
    assert_eq!(done.completion.code, CompletionCode::DISK_FULL);
    // The server may now send only ClearError.
    let b = p.server.allocate_buffer(65536, 0).unwrap();
    let e = s.send(ServerCommand::write(b, 65536)).unwrap_err();
    assert_eq!(e.error, Error::DeviceError);
    s.send(ServerCommand::control(CommandCode::CLEAR_ERROR))
        .unwrap();
    // The third write was queued but not handed out: it completes with 1117 unseen, and the
    // ClearError is held while the second write is outstanding.
    assert_eq!(
        c.command(Timeout::from_millis(50)).unwrap_err(),
        Error::Timeout
    );
    let unseen = s.completion(WAIT).unwrap();
    assert_eq!(
        (unseen.code, unseen.completion.code),
        (CommandCode::WRITE, CompletionCode::IO_DEVICE)
    );
    c.complete(second, Completion::success(65536)).unwrap();
    s.completion(WAIT).unwrap();
    let clear = c.command(WAIT).unwrap();
    assert_eq!(clear.code(), CommandCode::CLEAR_ERROR);
    c.complete(clear, Completion::success(0)).unwrap();
    let cleared = s.completion(WAIT).unwrap();
    assert_eq!(cleared.code, CommandCode::CLEAR_ERROR);
    // Active again.
    s.send(ServerCommand::write(e.command.buffer.unwrap(), 65536))
        .unwrap();
    let w = c.command(WAIT).unwrap();
    assert_eq!(w.code(), CommandCode::WRITE);
    c.complete(w, Completion::success(65536)).unwrap();
    assert_eq!(
        s.completion(WAIT).unwrap().completion.code,
        CompletionCode::SUCCESS
    );
}

/// vdi-spec.md §9.2: SignalAbort from either side; waits return VD_E_ABORT; outstanding
/// commands complete with 995 on the server's side; later completions are ignored; buffers
/// stay usable by their holder until Close.
#[test]
fn abort_from_either_side() {
    for client_aborts in [true, false] {
        let p = backup_pair(2, 2);
        let b = p.server.allocate_buffer(65536, 0).unwrap();
        p.sdevs[0].send(ServerCommand::write(b, 65536)).unwrap();
        let mut held = p.cdevs[0].command(WAIT).unwrap();
        thread::scope(|sc| {
            let waiter = sc.spawn(|| p.cdevs[1].command(Timeout::INFINITE));
            let swaiter = sc.spawn(|| p.sdevs[1].completion(Timeout::INFINITE));
            thread::sleep(Duration::from_millis(20));
            if client_aborts {
                p.client.signal_abort().unwrap();
            } else {
                p.server.signal_abort().unwrap();
            }
            assert_eq!(hr(waiter.join().unwrap()), HResult::VD_E_ABORT);
            assert_eq!(hr(swaiter.join().unwrap()), HResult::VD_E_ABORT);
        });
        // The held buffer is still usable by its holder.
        held.data_mut()[0] = 7;
        assert_eq!(
            hr(p.cdevs[0].complete(held, Completion::success(65536))),
            HResult::VD_E_ABORT
        );
        let c = p.sdevs[0].completion(WAIT).unwrap();
        assert_eq!(c.completion.code, CompletionCode::OPERATION_ABORTED);
        assert!(
            c.buffer.is_some(),
            "the buffer comes back with the abort completion"
        );
        assert_eq!(hr(p.sdevs[0].completion(WAIT)), HResult::VD_E_ABORT);
        let e = p.sdevs[0]
            .send(ServerCommand::control(CommandCode::FLUSH))
            .unwrap_err();
        assert_eq!(e.error.hresult(), HResult::VD_E_ABORT);
        assert_eq!(hr(p.sdevs[0].close()), HResult::VD_E_ABORT);
        assert_eq!(hr(p.cdevs[0].command(Timeout::POLL)), HResult::VD_E_ABORT);
        assert_eq!(
            hr(p.client.configuration(Timeout::POLL)),
            HResult::VD_E_ABORT
        );
        // Both sides can close an aborted set cleanly.
        p.client.close().unwrap();
        p.server.close().unwrap();
    }
}

#[test]
fn dropped_command_completes_with_operation_aborted() {
    let p = backup_pair(1, 1);
    let b = p.server.allocate_buffer(65536, 0).unwrap();
    p.sdevs[0].send(ServerCommand::write(b, 65536)).unwrap();
    drop(p.cdevs[0].command(WAIT).unwrap());
    let c = p.sdevs[0].completion(WAIT).unwrap();
    assert_eq!(c.completion.code, CompletionCode::OPERATION_ABORTED);
}

/// Several client threads take and complete commands of one device at once.
#[test]
fn many_threads_drain_one_device() {
    let p = backup_pair(1, 0);
    let total = 5000u32;
    thread::scope(|sc| {
        let dev = &p.cdevs[0];
        let workers: Vec<_> = (0..4)
            .map(|_| {
                sc.spawn(move || {
                    let mut n = 0u32;
                    loop {
                        match dev.command(WAIT) {
                            Ok(cmd) => {
                                dev.complete(cmd, Completion::success(0)).unwrap();
                                n += 1;
                            }
                            Err(Error::Closed) => return n,
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            })
            .collect();
        let s = &p.sdevs[0];
        let mut sent = 0;
        let mut done = 0;
        while done < total {
            while sent < total && s.outstanding() < vdi_shm::QUEUE_DEPTH {
                s.send(ServerCommand::control(CommandCode::FLUSH)).unwrap();
                sent += 1;
            }
            s.completion(WAIT).unwrap();
            done += 1;
        }
        s.close().unwrap();
        let per: Vec<u32> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        assert_eq!(per.iter().sum::<u32>(), total, "{per:?}");
    });
}

#[test]
fn prefix_zone_lies_below_the_data() {
    let p = pair(
        1,
        ClientConfig {
            prefix_zone_size: 100,
            alignment: 8192,
            ..ClientConfig::default()
        },
        ServerConfig::backup(512, 65536),
        1,
    );
    let cfg = p.client.configuration(WAIT).unwrap();
    assert_eq!((cfg.alignment, cfg.prefix_zone_size), (8192, 100));
    let mut b = p.server.allocate_buffer(65536, 0).unwrap();
    b.as_mut_slice().fill(0xAB);
    p.sdevs[0].send(ServerCommand::write(b, 65536)).unwrap();
    let mut cmd = p.cdevs[0].command(WAIT).unwrap();
    let data = cmd.data().as_ptr() as usize;
    assert_eq!(
        data % 8192,
        0,
        "the data zone is aligned to the client's alignment"
    );
    let prefix = cmd.prefix_zone();
    assert_eq!(prefix.len(), 100);
    assert_eq!(
        prefix.as_ptr() as usize + 100,
        data,
        "the prefix zone ends where the data starts"
    );
    prefix.fill(0x11);
    assert!(
        cmd.data().iter().all(|&x| x == 0xAB),
        "writing the prefix leaves the data alone"
    );
    p.cdevs[0]
        .complete(cmd, Completion::success(65536))
        .unwrap();
}

/// One thread takes commands and another completes them (as an async layer or a thread pool
/// does) while the server reuses each buffer the moment it comes back: the buffer must be free
/// in the client when the completion is published, or the next command naming it would look
/// like a server handing out a buffer twice.
#[test]
fn buffer_reused_at_once_while_another_thread_waits() {
    let p = backup_pair(1, 4);
    let (tx, rx) = std::sync::mpsc::channel::<vdi_shm::Command>();
    let dev = &p.cdevs[0];
    thread::scope(|sc| {
        sc.spawn(move || {
            for c in rx {
                thread::sleep(Duration::from_micros(300));
                let n = c.size();
                let _ = dev.complete(c, Completion::success(n));
            }
        });
        let taker = sc.spawn(move || {
            let mut taken = 0u32;
            loop {
                match dev.command(WAIT) {
                    Ok(c) => {
                        taken += 1;
                        tx.send(c).unwrap();
                    }
                    Err(Error::Closed) => return Ok(taken),
                    Err(e) => return Err(e),
                }
            }
        });
        let s = &p.sdevs[0];
        let mut free: Vec<_> = (0..4)
            .map(|_| p.server.allocate_buffer(65536, 0).unwrap())
            .collect();
        for i in 0..2000u32 {
            let mut b = match free.pop() {
                Some(b) => b,
                None => s.completion(WAIT).unwrap().buffer.unwrap(),
            };
            b.as_mut_slice().fill(i as u8);
            s.send(ServerCommand::write(b, 65536)).unwrap();
        }
        while s.outstanding() > 0 {
            assert_eq!(
                s.completion(WAIT).unwrap().completion.code,
                CompletionCode::SUCCESS
            );
        }
        s.close().unwrap();
        assert_eq!(taker.join().unwrap(), Ok(2000));
    });
}

/// After the primary closes, its name can be created again at once, even while a server still
/// holds its (now dead) connection to the old set.
#[test]
fn name_is_free_after_close_while_the_server_lingers() {
    let name = common::unique_name("linger");
    let set = ShmClient::new()
        .create(None, &name, &ClientConfig::default())
        .unwrap();
    let server = ShmServer::new().open(None, &name).unwrap();
    set.close().unwrap();
    drop(set);
    let again = ShmClient::new()
        .create(None, &name, &ClientConfig::default())
        .expect("the name is free once the primary closed");
    again.close().unwrap();
    drop(server);
}

/// After the last device returned VD_E_CLOSE the set is NormallyTerminated, and GetCommand
/// answers what vdi-core's machine answers there, on every thread: VD_E_CLOSE again for the
/// device that ended (see `ClientSetMachine::check_get_command`).
#[test]
fn get_command_after_the_set_terminated_answers_the_machine() {
    let p = backup_pair(1, 0);
    p.sdevs[0].close().unwrap();
    assert_eq!(p.cdevs[0].command(WAIT).unwrap_err(), Error::Closed);
    assert_eq!(
        p.client.state(),
        vdi_core::ClientSetState::NormallyTerminated
    );
    let mut machine = vdi_core::ClientSetMachine::new();
    machine.create(1).unwrap();
    machine.configured();
    machine.open_device(0, false, false).unwrap();
    machine.device_closed(0);
    let expected = machine.check_get_command(0);
    assert_eq!(expected, Err(Error::Closed));
    thread::scope(|sc| {
        for _ in 0..2 {
            sc.spawn(|| {
                for timeout in [Timeout::POLL, WAIT] {
                    assert_eq!(p.cdevs[0].command(timeout).map(|_| ()), expected);
                }
            });
        }
    });
    assert_eq!(p.client.close(), Ok(()));
}

/// GetBufferHandle on a set that is no longer open: VD_E_PROTOCOL (vdi-spec.md §4), as
/// MapBufferHandle.
#[test]
fn buffer_handle_of_a_closed_set_is_a_protocol_error() {
    let p = backup_pair(1, 1);
    let b = p.server.allocate_buffer(65536, 0).unwrap();
    p.sdevs[0].send(ServerCommand::write(b, 65536)).unwrap();
    let cmd = p.cdevs[0].command(WAIT).unwrap();
    let handle = p.client.buffer_handle(&cmd).unwrap();
    // Closed with the device still open: VD_E_OPEN, and the set is gone all the same.
    assert_eq!(hr(p.client.close()), HResult::VD_E_OPEN);
    let wrong = |call| Error::Protocol(vdi_core::ProtocolReason::WrongState(call));
    assert_eq!(
        p.client.buffer_handle(&cmd).unwrap_err(),
        wrong(vdi_core::Call::GetBufferHandle)
    );
    assert_eq!(
        p.client.map_buffer_handle(handle, 65536).unwrap_err(),
        wrong(vdi_core::Call::MapBufferHandle)
    );
    drop(cmd);
}
