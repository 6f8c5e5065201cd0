//! Peer death: the client or the server process is SIGKILLed at several points of a set's life
//! (waiting for the configuration, configuring, mid-stream, holding commands), and the survivor's
//! calls must return `VD_E_ABORT` (reason: the peer exited) without a hang, hand back every
//! outstanding command's buffer, and leave no mapping or socket behind once it closes. Also: a
//! dead creator's name can be created again, opening a name nobody created fails at once, and a
//! primary client learns that a secondary client process died.
//!
//! Every peer is a real process: this test binary re-run as `child` in a role (`VDI_ROLE`),
//! talking to the parent over its stdin and stdout. Detection latencies are printed (run with
//! `--nocapture` to see them), never asserted.

#![cfg(any(target_os = "linux", windows))]

mod common;

use std::{
    thread,
    time::{Duration, Instant},
};

use common::{PipedChild, Plan, WAIT};
use vdi_core::{
    AbortReason, ClientBackend, ClientCommand, ClientConfig, ClientDevice, ClientDeviceSet,
    ClientSetState, CommandCode, Completion, CompletionCode, Error, InvalidReason, ProtocolReason,
    SendError, ServerBackend, ServerBuffer, ServerCommand, ServerConfig, ServerDevice,
    ServerDeviceSet,
};
use vdi_shm::{ShmClient, ShmServer};

/// The abort every survivor must see.
const PEER_EXITED: Error = Error::Aborted(AbortReason::PeerExited);
/// How long a child has to say what the parent waits for.
const SAY: Duration = Duration::from_secs(30);
/// How long a poll for a peer's death may last before the test fails (a hang, not a timing).
const DETECT_LIMIT: Duration = Duration::from_secs(30);

/// A small backup plan: one device, 4 KiB blocks, 64 KiB transfers.
fn plan(depth: u32, bytes: u64) -> Plan {
    Plan {
        devices: 1,
        block: 4096,
        max_transfer: 64 << 10,
        depth,
        bytes,
    }
}

/// Blocks until the parent closes this child's stdin (or dies).
fn wait_for_parent() {
    while common::from_parent().is_some() {}
}

/// The children, by role.
#[test]
fn child() {
    let Some(role) = common::role() else { return };
    common::init_tracing();
    // A child whose parent died must not linger.
    common::watchdog(Duration::from_secs(120));
    let name = common::param("VDI_SET");
    match role.as_str() {
        // Server: opens the set, says so, then waits to be killed.
        "server_open" => {
            let _set = ShmServer::new().open(None, &name).expect("server open");
            common::tell_parent("opened");
            wait_for_parent();
        }
        // Server: an endless backup (the parent kills it mid-stream).
        "server_backup" => {
            let (_, plan) = Plan::from_env();
            let r = common::serve_backup(&name, plan);
            eprintln!("server backup ended: {r:?}");
        }
        // Server: configures a backup, says so, closes its device and the set on "close".
        "server_configure" => {
            let (_, plan) = Plan::from_env();
            let (set, devices) =
                common::open_and_configure(&name, &plan, true).expect("server configure");
            common::tell_parent("configured");
            assert_eq!(common::from_parent().as_deref(), Some("close"));
            for d in &devices {
                d.close().expect("CloseDevice");
            }
            set.close().expect("server Close");
            drop((devices, set));
            common::tell_parent("closed");
            wait_for_parent();
        }
        // Client: creates the set, says so, then waits for the configuration until killed.
        "client_create" => {
            let set = ShmClient::new()
                .create(None, &name, &ClientConfig::default())
                .expect("create");
            common::tell_parent("created");
            loop {
                match set.configuration(WAIT) {
                    Err(Error::Timeout) => {}
                    other => {
                        eprintln!("client configuration: {other:?}");
                        break;
                    }
                }
            }
            wait_for_parent();
        }
        // Client: takes VDI_HOLD Write commands, checks them, and never completes them.
        "client_hold" => {
            let hold = common::param_u64("VDI_HOLD");
            let set = ShmClient::new()
                .create(None, &name, &ClientConfig::default())
                .expect("create");
            common::tell_parent("created");
            set.configuration(WAIT).expect("configuration");
            let dev = set.open_device(&name).expect("open device");
            let mut held = Vec::new();
            let mut offset = 0u64;
            while (held.len() as u64) < hold {
                let cmd = dev.command(WAIT).expect("command");
                assert_eq!(cmd.code(), CommandCode::WRITE);
                assert!(common::check(0, offset, cmd.data()), "bytes at {offset}");
                offset += u64::from(cmd.size());
                held.push(cmd);
            }
            common::tell_parent(&format!("holding {}", held.len()));
            wait_for_parent();
            drop(held);
        }
        // Client: a backup that checks every byte, until killed.
        "client_backup" => {
            let set = ShmClient::new()
                .create(None, &name, &ClientConfig::default())
                .expect("create");
            common::tell_parent("created");
            set.configuration(WAIT).expect("configuration");
            let r = common::client_backup(&set, &name, 1);
            eprintln!("client backup ended: {r:?}");
            wait_for_parent();
        }
        // Secondary client: joins the set, says so, then waits to be killed.
        "secondary_join" => {
            let _set = ShmClient::new()
                .open_secondary(None, &name)
                .expect("open_secondary");
            common::tell_parent("joined");
            wait_for_parent();
        }
        other => panic!("unknown role {other}"),
    }
}

fn spawn(role: &str, params: &[(&str, String)]) -> PipedChild {
    PipedChild::spawn("child", role, params)
}

/// Kills `child` and returns when it was killed (just before SIGKILL).
fn kill(child: PipedChild) -> Instant {
    let t = Instant::now();
    child.kill();
    t
}

/// Calls `probe` until it fails, at most [`DETECT_LIMIT`]; returns the error and prints how
/// long after `killed` it came.
fn until_error(what: &str, killed: Instant, mut probe: impl FnMut() -> Result<(), Error>) -> Error {
    let deadline = Instant::now() + DETECT_LIMIT;
    loop {
        if let Err(e) = probe() {
            eprintln!("detection latency ({what}): {:?}", killed.elapsed());
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no error within {DETECT_LIMIT:?} of the peer's death"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// As [`assert_nothing_left`], after the set's creator was killed: the portable Unix backend
/// may still show the dead creator's socket file, which no longer holds the name, until the
/// next set created by this user sweeps it away (see `common::STALE_SOCKET_FILE`).
fn assert_nothing_left_but_stale(name: &str) {
    let (mapped, sockets) = common::leftovers(name);
    assert!(
        mapped == 0 && (sockets == 0 || (common::STALE_SOCKET_FILE && sockets == 1)),
        "mappings or sockets of {name} left behind: {:?}",
        (mapped, sockets)
    );
}

fn assert_nothing_left(name: &str) {
    common::assert_no_leftovers(name);
}

#[test]
fn server_killed_while_client_waits_for_configuration() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    let name = common::unique_name("pd-cfgwait");
    let set = ShmClient::new()
        .create(None, &name, &ClientConfig::default())
        .unwrap();
    let server = spawn("server_open", &[("VDI_SET", name.clone())]);
    server.expect("opened", SAY);
    // The server opened the set but does not configure it: the wait runs on.
    assert_eq!(
        set.configuration(vdi_core::Timeout::from_millis(20)),
        Err(Error::Timeout)
    );
    let (result, killed) = thread::scope(|s| {
        let killer = s.spawn(move || {
            // Give the main thread time to block in GetConfiguration.
            thread::sleep(Duration::from_millis(100));
            kill(server)
        });
        let result = set.configuration(WAIT);
        let returned = Instant::now();
        let killed = killer.join().unwrap();
        (result, returned.saturating_duration_since(killed))
    });
    eprintln!("detection latency (GetConfiguration): {killed:?}");
    assert_eq!(result, Err(PEER_EXITED));
    assert_eq!(set.state(), ClientSetState::Aborted);
    assert_eq!(set.configuration(WAIT), Err(PEER_EXITED));
    assert_eq!(set.open_device(&name).unwrap_err(), PEER_EXITED);
    assert_eq!(set.close(), Ok(()));
    drop(set);
    assert_nothing_left(&name);
}

#[test]
fn server_killed_mid_stream() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    let name = common::unique_name("pd-srvmid");
    let set = ShmClient::new()
        .create(None, &name, &ClientConfig::default())
        .unwrap();
    // An endless backup: the server never finishes on its own.
    let server = spawn("server_backup", &plan(4, 1 << 40).params(&name));
    assert!(set.configuration(WAIT).unwrap().is_backup());
    let dev = set.open_device(&name).unwrap();
    let mut offset = 0u64;
    for _ in 0..16 {
        let cmd = dev.command(WAIT).unwrap();
        assert_eq!(cmd.code(), CommandCode::WRITE);
        assert!(common::check(0, offset, cmd.data()), "bytes at {offset}");
        offset += u64::from(cmd.size());
        let n = cmd.size();
        dev.complete(cmd, Completion::success(n)).unwrap();
    }
    // Take two more (the server keeps 4 outstanding) and hold them while the server dies.
    let mut held = vec![dev.command(WAIT).unwrap(), dev.command(WAIT).unwrap()];
    let killed = kill(server);
    // Commands already queued may still come; then GetCommand reports the abort.
    let mut taken = 0;
    let err = loop {
        match dev.command(WAIT) {
            Ok(cmd) => {
                taken += 1;
                assert!(taken <= vdi_shm::QUEUE_DEPTH, "commands keep coming");
                held.push(cmd);
            }
            Err(e) => break e,
        }
    };
    eprintln!(
        "detection latency (GetCommand): {:?} ({} commands held)",
        killed.elapsed(),
        held.len()
    );
    assert_eq!(err, PEER_EXITED);
    assert_eq!(dev.command(WAIT).unwrap_err(), PEER_EXITED);
    assert_eq!(set.state(), ClientSetState::Aborted);
    // Completing a held command is answered with the abort; dropping one is harmless.
    let first = held.remove(0);
    let n = first.size();
    assert_eq!(
        dev.complete(first, Completion::success(n)),
        Err(PEER_EXITED)
    );
    drop(held);
    assert_eq!(set.close(), Ok(()));
    drop((dev, set));
    assert_nothing_left(&name);
}

#[test]
fn client_killed_holding_commands() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    let name = common::unique_name("pd-hold");
    const HOLD: u32 = 3;
    let client = spawn(
        "client_hold",
        &[("VDI_SET", name.clone()), ("VDI_HOLD", HOLD.to_string())],
    );
    client.expect("created", SAY);
    let p = plan(HOLD, 1 << 20);
    let (set, mut devices) = common::open_and_configure(&name, &p, true).unwrap();
    let dev = devices.pop().unwrap();
    let mut tags = Vec::new();
    let mut offset = 0u64;
    for _ in 0..HOLD {
        let mut buf = set.allocate_buffer(p.max_transfer, 0).unwrap();
        common::fill(0, offset, buf.as_mut_slice());
        tags.push(dev.send(ServerCommand::write(buf, p.max_transfer)).unwrap());
        offset += u64::from(p.max_transfer);
    }
    client.expect(&format!("holding {HOLD}"), SAY);
    assert_eq!(dev.outstanding(), HOLD);
    let killed = kill(client);
    // Each outstanding command completes with ERROR_OPERATION_ABORTED and its buffer.
    let mut buffers = Vec::new();
    for i in 0..HOLD {
        let c = dev.completion(WAIT).unwrap();
        if i == 0 {
            eprintln!("detection latency (completion): {:?}", killed.elapsed());
        }
        assert_eq!(c.code, CommandCode::WRITE);
        assert_eq!(c.completion, Completion::aborted());
        assert_eq!(c.completion.code, CompletionCode::OPERATION_ABORTED);
        assert_eq!(c.completion.code.0, 995);
        let pos = tags.iter().position(|&t| t == c.tag).expect("a tag sent");
        tags.remove(pos);
        buffers.push(c.buffer.expect("the buffer comes back"));
    }
    assert!(tags.is_empty());
    assert_eq!(dev.outstanding(), 0);
    assert_eq!(dev.completion(WAIT).unwrap_err(), PEER_EXITED);
    // Sends fail with the abort and hand the command back.
    let buf = buffers.pop().unwrap();
    let SendError { error, command } = dev
        .send(ServerCommand::write(buf, p.block))
        .expect_err("send after the client died");
    assert_eq!(error, PEER_EXITED);
    assert!(command.buffer.is_some(), "the buffer comes back");
    assert_eq!(
        dev.send(ServerCommand::control(CommandCode::FLUSH))
            .unwrap_err()
            .error,
        PEER_EXITED
    );
    assert_eq!(dev.close(), Err(PEER_EXITED));
    assert_eq!(set.close(), Ok(()));
    drop((command, buffers, dev, devices, set));
    assert_nothing_left_but_stale(&name);
}

#[test]
fn client_killed_mid_stream() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    let name = common::unique_name("pd-climid");
    let mut client = Some(spawn("client_backup", &[("VDI_SET", name.clone())]));
    client.as_ref().unwrap().expect("created", SAY);
    let p = plan(4, 1 << 40);
    let (set, mut devices) = common::open_and_configure(&name, &p, true).unwrap();
    let dev = devices.pop().unwrap();
    let mut free: Vec<_> = (0..p.depth)
        .map(|_| set.allocate_buffer(p.max_transfer, 0).unwrap())
        .collect();
    let mut offset = 0u64;
    let mut succeeded = 0u32;
    let mut killed: Option<Instant> = None;
    let mut first_abort: Option<Instant> = None;
    // Stream until 20 writes succeeded, kill the client, and go on until the abort shows.
    let err = loop {
        if succeeded == 20 && killed.is_none() {
            killed = Some(kill(client.take().unwrap()));
        }
        if let Some(mut buf) = free.pop() {
            common::fill(0, offset, buf.as_mut_slice());
            match dev.send(ServerCommand::write(buf, p.max_transfer)) {
                Ok(_) => offset += u64::from(p.max_transfer),
                Err(SendError { error, command }) => {
                    assert!(killed.is_some(), "send failed before the kill: {error}");
                    free.push(command.buffer.expect("the buffer comes back"));
                    break error;
                }
            }
            continue;
        }
        match dev.completion(WAIT) {
            Ok(c) => {
                free.push(c.buffer.expect("the buffer comes back"));
                if c.completion.code == CompletionCode::SUCCESS {
                    succeeded += 1;
                } else {
                    assert!(killed.is_some(), "{:?} before the kill", c.completion);
                    assert_eq!(c.completion, Completion::aborted());
                    first_abort.get_or_insert_with(Instant::now);
                }
            }
            Err(e) => {
                assert!(killed.is_some(), "completion failed before the kill: {e}");
                break e;
            }
        }
    };
    let killed = killed.unwrap();
    let seen = first_abort.unwrap_or_else(Instant::now);
    eprintln!(
        "detection latency (send/completion): {:?}",
        seen.saturating_duration_since(killed)
    );
    assert_eq!(err, PEER_EXITED);
    // Whatever is still outstanding completes with ERROR_OPERATION_ABORTED, buffer and all.
    while dev.outstanding() > 0 {
        let c = dev.completion(WAIT).unwrap();
        assert_eq!(c.completion, Completion::aborted());
        free.push(c.buffer.expect("the buffer comes back"));
    }
    assert_eq!(free.len(), p.depth as usize, "every buffer came back");
    assert_eq!(dev.completion(WAIT).unwrap_err(), PEER_EXITED);
    let buf = free.pop().unwrap();
    let e = dev.send(ServerCommand::write(buf, p.block)).unwrap_err();
    assert_eq!(e.error, PEER_EXITED);
    free.extend(e.command.buffer);
    assert_eq!(dev.close(), Err(PEER_EXITED));
    assert_eq!(set.close(), Ok(()));
    drop((free, dev, devices, set));
    assert_nothing_left_but_stale(&name);
}

#[test]
fn client_killed_before_begin_configuration() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    let name = common::unique_name("pd-conn");
    let client = spawn("client_create", &[("VDI_SET", name.clone())]);
    client.expect("created", SAY);
    let set = ShmServer::new().open(None, &name).unwrap();
    assert_eq!(set.configuration().unwrap(), ClientConfig::default());
    let killed = kill(client);
    let err = until_error("server GetConfiguration", killed, || {
        set.configuration().map(drop)
    });
    assert_eq!(err, PEER_EXITED);
    assert_eq!(
        set.begin_configuration(&ServerConfig::backup(4096, 64 << 10)),
        Err(PEER_EXITED)
    );
    assert_eq!(set.end_configuration(), Err(PEER_EXITED));
    assert_eq!(set.close(), Ok(()));
    drop(set);
    assert_nothing_left_but_stale(&name);
}

#[test]
fn client_killed_while_server_configures() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    let name = common::unique_name("pd-config");
    let client = spawn("client_create", &[("VDI_SET", name.clone())]);
    client.expect("created", SAY);
    let set = ShmServer::new().open(None, &name).unwrap();
    set.begin_configuration(&ServerConfig::backup(4096, 64 << 10))
        .unwrap();
    set.request_buffers(64 << 10, 0, 4).unwrap();
    let killed = kill(client);
    // Requests during the configuration are only summed, so asking again is harmless.
    let err = until_error("server RequestBuffers", killed, || {
        set.request_buffers(64 << 10, 0, 1)
    });
    assert_eq!(err, PEER_EXITED);
    assert_eq!(set.configuration().unwrap_err(), PEER_EXITED);
    assert_eq!(set.open_device(&name).unwrap_err(), PEER_EXITED);
    assert_eq!(set.end_configuration(), Err(PEER_EXITED));
    assert_eq!(set.close(), Ok(()));
    drop(set);
    assert_nothing_left_but_stale(&name);
}

#[test]
fn dead_creator_leaves_no_stale_set() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    let name = common::unique_name("pd-stale");
    let creator = spawn("client_create", &[("VDI_SET", name.clone())]);
    creator.expect("created", SAY);
    // While the creator lives, the name is taken and its socket is visible.
    assert_eq!(
        ShmClient::new()
            .create(None, &name, &ClientConfig::default())
            .unwrap_err(),
        Error::Protocol(ProtocolReason::AlreadyExists)
    );
    assert_eq!(common::leftovers(&name), (0, 1));
    kill(creator);
    // The kernel freed the name with the process: nothing to open, nothing left (but, for a
    // while, the portable Unix backend's socket file, which no longer holds the name).
    assert_nothing_left_but_stale(&name);
    assert_eq!(
        ShmServer::new().open(None, &name).unwrap_err(),
        Error::Invalid(InvalidReason::NoSuchSet)
    );
    let set = ShmClient::new()
        .create(None, &name, &ClientConfig::default())
        .expect("the dead creator's name can be created again");
    assert_eq!(set.state(), ClientSetState::Configurable);
    assert_eq!(set.close(), Ok(()));
    drop(set);
    assert_nothing_left(&name);
}

#[test]
fn open_of_a_name_nobody_created_fails_at_once() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    let name = common::unique_name("pd-nobody");
    // No retry and no wait: the watchdog turns a hang into a failure.
    assert_eq!(
        ShmServer::new().open(None, &name).unwrap_err(),
        Error::Invalid(InvalidReason::NoSuchSet)
    );
    assert_nothing_left(&name);
}

#[test]
fn primary_learns_that_a_secondary_died() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    let name = common::unique_name("pd-secondary");
    let set = ShmClient::new()
        .create(None, &name, &ClientConfig::default())
        .unwrap();
    let mut server = spawn("server_configure", &plan(2, 0).params(&name));
    assert!(set.configuration(WAIT).unwrap().is_backup());
    server.expect("configured", SAY);
    let secondary = spawn("secondary_join", &[("VDI_SET", name.clone())]);
    secondary.expect("joined", SAY);
    assert_eq!(set.secondaries_lost(), 0);
    let killed = kill(secondary);
    let deadline = Instant::now() + DETECT_LIMIT;
    while set.secondaries_lost() == 0 {
        assert!(
            Instant::now() < deadline,
            "the primary did not notice the secondary's death"
        );
        thread::sleep(Duration::from_millis(1));
    }
    eprintln!(
        "detection latency (secondaries_lost): {:?}",
        killed.elapsed()
    );
    assert_eq!(set.secondaries_lost(), 1);
    // VDI itself does not abort for a secondary: the set goes on and ends normally.
    assert_eq!(set.state(), ClientSetState::Initializing);
    let dev = set.open_device(&name).unwrap();
    server.send("close");
    assert_eq!(dev.command(WAIT).unwrap_err(), Error::Closed);
    server.expect("closed", SAY);
    assert_eq!(set.secondaries_lost(), 1);
    assert_eq!(set.close(), Ok(()));
    drop((dev, set));
    assert!(server.wait(SAY).success(), "server process failed");
    assert_nothing_left(&name);
}
