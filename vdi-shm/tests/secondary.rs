//! Secondary client processes (`OpenInSecondary`) and buffer handles across processes: a buffer
//! of a command the primary holds is passed as a handle (`GetBufferHandle`) to a secondary
//! process, mapped there (`MapBufferHandle`), filled or checked there, and completed by the
//! primary, while a third process, the server, checks every byte; a handle of another set or of
//! a buffer the server freed and reallocated is rejected; joining before the set is configured
//! or a name nobody created is refused; and the `mprocess` pattern: one device per secondary
//! process, each running its own command loop of a backup.
//!
//! The test process is the primary client. The server and the secondaries are this test binary
//! re-run as `child` in a role (`VDI_ROLE`); handles and answers travel over the secondaries'
//! stdin and stdout.

#![cfg(any(target_os = "linux", windows))]

mod common;

use std::time::Duration;

use common::{ChildProc, PipedChild, Plan, WAIT};
use vdi_core::{
    BufferHandle, ClientBackend, ClientCommand, ClientConfig, ClientDevice, ClientDeviceSet,
    CommandCode, Completion, Error, Features, HResult, InvalidReason, MappedBuffer, ProtocolReason,
    ServerBackend, ServerBuffer, ServerCommand, ServerConfig, ServerDevice, ServerDeviceSet,
};
use vdi_shm::{ClientSet, ShmClient, ShmServer};

/// How long a child has to answer.
const SAY: Duration = Duration::from_secs(30);

/// The children, by role.
#[test]
fn child() {
    let Some(role) = common::role() else { return };
    common::init_tracing();
    // A child whose parent died must not linger.
    common::watchdog(Duration::from_secs(120));
    let name = common::param("VDI_SET");
    match role.as_str() {
        "server_restore" => {
            let (_, plan) = Plan::from_env();
            let totals = common::serve_restore(&name, plan).expect("server restore");
            assert!(
                totals.iter().all(|&t| t == plan.bytes),
                "restored {totals:?}, expected {}",
                plan.bytes
            );
        }
        "server_backup" => {
            let (_, plan) = Plan::from_env();
            common::serve_backup(&name, plan).expect("server backup");
        }
        "server_realloc" => server_realloc(&name),
        "server_on_cue" => server_on_cue(&name),
        "secondary_worker" => secondary_worker(&name),
        "secondary_device" => secondary_device(&name),
        "try_join" => match ShmClient::new().open_secondary(None, &name) {
            Ok(set) => {
                common::tell_parent("ok");
                set.close().expect("secondary Close");
            }
            Err(e) => common::tell_parent(&format!("err {e:?}")),
        },
        other => panic!("unknown role {other}"),
    }
}

/// Server: two full reads of one device; between them it frees the first buffer and allocates
/// another (in the freed place), so the first buffer's handle goes stale.
fn server_realloc(name: &str) {
    let plan = realloc_plan();
    let (set, devices) = common::open_and_configure(name, &plan, false).expect("configure");
    let dev = &devices[0];
    let n = plan.max_transfer;
    let mut buf = set.allocate_buffer(n, 0).expect("allocate");
    for round in 0..2u64 {
        if round == 1 {
            set.free_buffer(buf).expect("free");
            buf = set.allocate_buffer(n, 0).expect("allocate again");
        }
        dev.send(ServerCommand::read(buf, n)).expect("send read");
        let c = dev.completion(WAIT).expect("completion");
        assert_eq!(c.completion, Completion::success(n), "read {round}");
        buf = c.buffer.expect("the buffer comes back");
        assert!(
            common::check(0, round * u64::from(n), &buf.as_slice()[..n as usize]),
            "read {round}: wrong bytes"
        );
    }
    dev.close().expect("CloseDevice");
    set.close().expect("server Close");
}

fn realloc_plan() -> Plan {
    Plan {
        devices: 1,
        block: 4096,
        max_transfer: 64 << 10,
        depth: 1,
        bytes: 128 << 10,
    }
}

/// Server: opens and begins the configuration, says "configuring"; ends it on "end" and says
/// "configured"; closes on "close" and says "closed".
fn server_on_cue(name: &str) {
    let set = ShmServer::new().open(None, name).expect("open");
    set.begin_configuration(&ServerConfig::backup(4096, 64 << 10))
        .expect("begin configuration");
    set.request_buffers(64 << 10, 0, 1)
        .expect("request buffers");
    let dev = set.open_device(name).expect("open device");
    common::tell_parent("configuring");
    assert_eq!(common::from_parent().as_deref(), Some("end"));
    set.end_configuration().expect("end configuration");
    common::tell_parent("configured");
    assert_eq!(common::from_parent().as_deref(), Some("close"));
    dev.close().expect("CloseDevice");
    set.close().expect("server Close");
    common::tell_parent("closed");
    while common::from_parent().is_some() {}
}

/// A secondary that maps handles the parent sends and fills or checks the buffers.
///
/// If `VDI_FIRST` is set, that request runs right after `OpenInSecondary` (before anything
/// else) and its answer is the first message. Then it calls `GetConfiguration`, says
/// `ready backup` or `ready restore`, and answers each line of stdin:
/// - `fill H DEV OFF LEN`: fills the first LEN bytes of the buffer of handle H with device
///   DEV's stream from OFF; answers `ok` or `err <error>`;
/// - `check H DEV OFF LEN`: checks them; answers `ok`, `bad` or `err <error>`;
/// - `map H [LEN]`: only maps LEN bytes (0 if not given); answers `ok` or `err <error>`;
/// - `close`: closes the set; answers `closed <result>`, then `mapped <count>` (this
///   process's mappings of the set left).
fn secondary_worker(name: &str) {
    let set = ShmClient::new()
        .open_secondary(None, name)
        .expect("open_secondary");
    if let Ok(first) = std::env::var("VDI_FIRST") {
        common::tell_parent(&serve_request(&set, &first));
    }
    let config = set.configuration(WAIT).expect("secondary GetConfiguration");
    common::tell_parent(if config.is_backup() {
        "ready backup"
    } else {
        "ready restore"
    });
    while let Some(line) = common::from_parent() {
        if line == "close" {
            let r = set.close();
            drop(set);
            common::tell_parent(&format!("closed {r:?}"));
            common::tell_parent(&format!("mapped {}", common::leftovers(name).0));
            break;
        }
        common::tell_parent(&serve_request(&set, &line));
    }
}

fn serve_request(set: &ClientSet, line: &str) -> String {
    let words: Vec<&str> = line.split(' ').collect();
    let num = |i: usize| -> u64 {
        words
            .get(i)
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("bad request {line:?}"))
    };
    let handle = BufferHandle(num(1) as u32);
    let len = match words[0] {
        "map" if words.len() == 2 => 0,
        "map" => num(2) as u32,
        _ => num(4) as u32,
    };
    let mut mapped = match set.map_buffer_handle(handle, len) {
        Ok(m) => m,
        Err(e) => {
            // A diagnostic only (the answer is the first result): does the map work later?
            let t = std::time::Instant::now();
            let later = loop {
                let r = set.map_buffer_handle(handle, len).map(drop);
                if r.is_ok() || t.elapsed() > Duration::from_millis(200) {
                    break r;
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            eprintln!(
                "secondary: map of {handle:?} failed: {e:?}; after {:?}: {later:?}",
                t.elapsed()
            );
            return format!("err {e:?}");
        }
    };
    assert_eq!(mapped.handle(), handle);
    match words[0] {
        "map" => "ok".into(),
        "fill" | "check" => {
            let (device, offset, len) = (num(2) as u32, num(3), num(4) as usize);
            assert_eq!(
                len,
                mapped.as_slice().len(),
                "{line}: the view is as long as asked"
            );
            if words[0] == "fill" {
                common::fill(device, offset, mapped.as_mut_slice());
                "ok".into()
            } else if common::check(device, offset, mapped.as_slice()) {
                "ok".into()
            } else {
                "bad".into()
            }
        }
        other => panic!("unknown request {other}"),
    }
}

/// The mprocess secondary: joins, opens device `VDI_DEVICE` (after `GetConfiguration` if
/// `VDI_CONFIG_FIRST` is 1, else before it), runs the device's backup checking every byte, and
/// closes. Says `opened` (or `open err <error>`), `received <result>`, `closed <result>` and
/// `mapped <count>`.
fn secondary_device(name: &str) {
    let index = common::param_u64("VDI_DEVICE") as u32;
    let config_first = common::param("VDI_CONFIG_FIRST") == "1";
    let set = ShmClient::new()
        .open_secondary(None, name)
        .expect("open_secondary");
    if config_first {
        assert!(set.configuration(WAIT).expect("configuration").is_backup());
    }
    let dev = match set.open_device(&common::device_name(name, index)) {
        Ok(d) => d,
        Err(e) => {
            common::tell_parent(&format!("open err {e:?}"));
            return;
        }
    };
    common::tell_parent("opened");
    if !config_first {
        assert!(set.configuration(WAIT).expect("configuration").is_backup());
    }
    let r = backup_device(&dev);
    common::tell_parent(&format!("received {r:?}"));
    drop(dev);
    let r = set.close();
    drop(set);
    common::tell_parent(&format!("closed {r:?}"));
    common::tell_parent(&format!("mapped {}", common::leftovers(name).0));
}

/// One device's side of a backup: checks every byte in stream order, acknowledges Flush;
/// returns the bytes received.
fn backup_device(dev: &vdi_shm::ClientDevice) -> Result<u64, Error> {
    let index = ClientDevice::index(dev);
    let mut offset = 0u64;
    loop {
        let cmd = match dev.command(WAIT) {
            Ok(c) => c,
            Err(Error::Closed) => return Ok(offset),
            Err(e) => return Err(e),
        };
        match cmd.code() {
            CommandCode::WRITE => {
                assert!(
                    common::check(index, offset, cmd.data()),
                    "device {index}: wrong bytes at offset {offset}"
                );
                offset += u64::from(cmd.size());
                let n = cmd.size();
                dev.complete(cmd, Completion::success(n))?;
            }
            CommandCode::FLUSH => dev.complete(cmd, Completion::success(0))?,
            _ => dev.complete(cmd, Completion::not_supported())?,
        }
    }
}

fn spawn_server(role: &str, name: &str, plan: &Plan) -> ChildProc {
    ChildProc::spawn("child", role, &plan.params(name))
}

fn spawn_worker(name: &str, first: Option<String>) -> PipedChild {
    let mut params = vec![("VDI_SET", name.to_owned())];
    if let Some(f) = first {
        params.push(("VDI_FIRST", f));
    }
    PipedChild::spawn("child", "secondary_worker", &params)
}

/// Asks a secondary whether it can join `name` now; returns its answer.
fn try_join(name: &str) -> String {
    let child = PipedChild::spawn("child", "try_join", &[("VDI_SET", name.to_owned())]);
    let answer = child.recv(SAY);
    assert!(child.wait(SAY).success(), "try_join process failed");
    answer
}

fn err_line(e: Error) -> String {
    format!("err {e:?}")
}

/// Closes a worker and checks it left nothing mapped.
fn close_worker(mut worker: PipedChild) {
    worker.send("close");
    worker.expect("closed Ok(())", SAY);
    worker.expect("mapped 0", SAY);
    assert!(worker.wait(SAY).success(), "secondary process failed");
}

fn create(name: &str, devices: u32) -> ClientSet {
    let cfg = ClientConfig {
        device_count: devices,
        ..ClientConfig::default()
    };
    ShmClient::new().create(None, name, &cfg).unwrap()
}

/// The primary's side of a restore whose Read buffers a secondary fills: takes each Read,
/// passes its handle to `worker`, completes it, from stream offset `offset` to `bytes`;
/// returns the offset reached.
fn restore_through(
    set: &ClientSet,
    dev: &vdi_shm::ClientDevice,
    worker: &mut PipedChild,
    mut offset: u64,
    bytes: u64,
) -> u64 {
    loop {
        let cmd = match dev.command(WAIT) {
            Ok(c) => c,
            Err(Error::Closed) => return offset,
            Err(e) => panic!("GetCommand: {e}"),
        };
        assert_eq!(cmd.code(), CommandCode::READ);
        let h = set.buffer_handle(&cmd).unwrap();
        let want = u64::from(cmd.size());
        let n = want.min(bytes - offset);
        worker.send(&format!("fill {} 0 {offset} {n}", h.0));
        worker.expect("ok", SAY);
        offset += n;
        let c = if n == want {
            Completion::success(n as u32)
        } else {
            Completion::eof(n as u32)
        };
        dev.complete(cmd, c).unwrap();
    }
}

/// The primary's side of a restore it fills itself, from stream offset `offset` to `bytes`.
fn restore_in_place(dev: &vdi_shm::ClientDevice, mut offset: u64, bytes: u64) {
    loop {
        let mut cmd = match dev.command(WAIT) {
            Ok(c) => c,
            Err(Error::Closed) => break,
            Err(e) => panic!("GetCommand: {e}"),
        };
        assert_eq!(cmd.code(), CommandCode::READ);
        let want = u64::from(cmd.size());
        let n = want.min(bytes - offset);
        common::fill(0, offset, &mut cmd.data_mut()[..n as usize]);
        offset += n;
        let c = if n == want {
            Completion::success(n as u32)
        } else {
            Completion::eof(n as u32)
        };
        dev.complete(cmd, c).unwrap();
    }
    assert_eq!(offset, bytes);
}

/// A restore whose Read buffers a secondary fills by handle; the primary completes them and
/// the server checks every byte.
#[test]
fn secondary_fills_restore_buffers_by_handle() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    let name = common::unique_name("sec-restore");
    let plan = Plan {
        devices: 1,
        block: 4096,
        max_transfer: 256 << 10,
        depth: 1,
        bytes: (4 << 20) + 4096 * 3,
    };
    let set = create(&name, 1);
    let server = spawn_server("server_restore", &name, &plan);
    let config = set.configuration(WAIT).unwrap();
    assert!(config.features.contains(Features::READ_MEDIA));
    let mut worker = spawn_worker(&name, None);
    worker.expect("ready restore", SAY);
    let dev = set.open_device(&name).unwrap();
    let restored = restore_through(&set, &dev, &mut worker, 0, plan.bytes);
    assert_eq!(restored, plan.bytes);
    close_worker(worker);
    assert_eq!(set.close(), Ok(()));
    drop((dev, set));
    assert!(server.wait(SAY).success(), "server process failed");
    common::assert_no_leftovers(&name);
}

/// A secondary checks every Write of a backup by handle; the primary completes them.
#[test]
fn secondary_checks_backup_buffers_by_handle() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    let name = common::unique_name("sec-backup");
    let plan = Plan {
        devices: 1,
        block: 4096,
        max_transfer: 256 << 10,
        depth: 3,
        bytes: 4 << 20,
    };
    let set = create(&name, 1);
    let server = spawn_server("server_backup", &name, &plan);
    assert!(set.configuration(WAIT).unwrap().is_backup());
    let mut worker = spawn_worker(&name, None);
    worker.expect("ready backup", SAY);
    let dev = set.open_device(&name).unwrap();
    let mut offset = 0u64;
    let mut flushes = 0;
    loop {
        let cmd = match dev.command(WAIT) {
            Ok(c) => c,
            Err(Error::Closed) => break,
            Err(e) => panic!("GetCommand: {e}"),
        };
        match cmd.code() {
            CommandCode::WRITE => {
                let h = set.buffer_handle(&cmd).unwrap();
                worker.send(&format!("check {} 0 {offset} {}", h.0, cmd.size()));
                worker.expect("ok", SAY);
                offset += u64::from(cmd.size());
                let n = cmd.size();
                dev.complete(cmd, Completion::success(n)).unwrap();
            }
            CommandCode::FLUSH => {
                assert_eq!(
                    set.buffer_handle(&cmd),
                    Err(Error::Invalid(InvalidReason::Buffer)),
                    "a command without a buffer has no handle"
                );
                flushes += 1;
                dev.complete(cmd, Completion::success(0)).unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((offset, flushes), (plan.bytes, 1));
    close_worker(worker);
    assert_eq!(set.close(), Ok(()));
    drop((dev, set));
    assert!(server.wait(SAY).success(), "server process failed");
    common::assert_no_leftovers(&name);
}

/// A secondary maps a handle it got before joining right after `OpenInSecondary` returns.
#[test]
fn secondary_maps_a_handle_right_after_joining() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    let name = common::unique_name("sec-early");
    // BUFFERCOUNT 16 of 1 MiB, as a real restore might ask: one 16 MiB segment.
    let plan = Plan {
        devices: 1,
        block: 65536,
        max_transfer: 1 << 20,
        depth: 16,
        bytes: (1 << 20) + 65536 * 3,
    };
    let set = create(&name, 1);
    let server = spawn_server("server_restore", &name, &plan);
    set.configuration(WAIT).unwrap();
    let dev = set.open_device(&name).unwrap();
    let cmd = dev.command(WAIT).unwrap();
    assert_eq!(cmd.code(), CommandCode::READ);
    let h = set.buffer_handle(&cmd).unwrap();
    let n = cmd.size();
    let mut worker = spawn_worker(&name, Some(format!("fill {} 0 0 {n}", h.0)));
    worker.expect("ok", SAY);
    worker.expect("ready restore", SAY);
    dev.complete(cmd, Completion::success(n)).unwrap();
    // The rest of the stream, through the same secondary.
    let end = restore_through(&set, &dev, &mut worker, u64::from(n), plan.bytes);
    assert_eq!(end, plan.bytes);
    close_worker(worker);
    assert_eq!(set.close(), Ok(()));
    drop((dev, set));
    assert!(server.wait(SAY).success(), "server process failed");
    common::assert_no_leftovers(&name);
}

/// A handle of set B is no handle of set A: rejected with `VD_E_INVALID` in the primary and in
/// a secondary of A.
#[test]
fn handle_of_another_set_is_rejected() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    let (name_a, name_b) = (common::unique_name("sec-a"), common::unique_name("sec-b"));
    let plan = Plan {
        devices: 1,
        block: 4096,
        max_transfer: 64 << 10,
        depth: 1,
        bytes: (192 << 10) + 4096,
    };
    let (a, b) = (create(&name_a, 1), create(&name_b, 1));
    let server_a = spawn_server("server_restore", &name_a, &plan);
    let server_b = spawn_server("server_restore", &name_b, &plan);
    a.configuration(WAIT).unwrap();
    b.configuration(WAIT).unwrap();
    let mut worker = spawn_worker(&name_a, None);
    worker.expect("ready restore", SAY);
    let (dev_a, dev_b) = (
        a.open_device(&name_a).unwrap(),
        b.open_device(&name_b).unwrap(),
    );

    // A's own first buffer maps in A's secondary (a control for the rejections below).
    let cmd_a = dev_a.command(WAIT).unwrap();
    let h_a = a.buffer_handle(&cmd_a).unwrap();
    let n_a = cmd_a.size();
    worker.send(&format!("fill {} 0 0 {n_a}", h_a.0));
    worker.expect("ok", SAY);
    dev_a.complete(cmd_a, Completion::success(n_a)).unwrap();

    let mut cmd_b = dev_b.command(WAIT).unwrap();
    let h_b = b.buffer_handle(&cmd_b).unwrap();
    // While this process holds the command, mapping its buffer here again would make two
    // writable views of the same bytes: refused.
    assert_eq!(
        b.map_buffer_handle(h_b, cmd_b.size()).unwrap_err(),
        Error::Invalid(InvalidReason::BufferHandle)
    );
    let invalid = a.buffer_handle(&cmd_b).unwrap_err();
    assert_eq!(invalid, Error::Invalid(InvalidReason::NotActiveCommand));
    assert_eq!(invalid.hresult(), HResult::VD_E_INVALID);
    let invalid = a.map_buffer_handle(h_b, cmd_b.size()).unwrap_err();
    assert_eq!(invalid, Error::Invalid(InvalidReason::BufferHandle));
    assert_eq!(invalid.hresult(), HResult::VD_E_INVALID);
    worker.send(&format!("map {}", h_b.0));
    worker.expect(&err_line(invalid), SAY);
    worker.send(&format!("fill {} 0 0 {}", h_b.0, cmd_b.size()));
    worker.expect(&err_line(invalid), SAY);

    // Both restores then run to their end: A's through the secondary, B's in place.
    let n = cmd_b.size();
    common::fill(0, 0, cmd_b.data_mut());
    dev_b.complete(cmd_b, Completion::success(n)).unwrap();
    restore_in_place(&dev_b, u64::from(n), plan.bytes);
    assert_eq!(
        restore_through(&a, &dev_a, &mut worker, u64::from(n_a), plan.bytes),
        plan.bytes
    );
    close_worker(worker);
    assert_eq!(a.close(), Ok(()));
    assert_eq!(b.close(), Ok(()));
    drop((dev_a, dev_b, a, b));
    assert!(server_a.wait(SAY).success(), "server A failed");
    assert!(server_b.wait(SAY).success(), "server B failed");
    common::assert_no_leftovers(&name_a);
    common::assert_no_leftovers(&name_b);
}

/// The server frees a buffer and allocates another in its place: the old handle is stale and
/// rejected with `VD_E_INVALID`, in the secondary and in the primary; the new one works.
#[test]
fn stale_handle_is_rejected() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    let name = common::unique_name("sec-stale");
    let plan = realloc_plan();
    let set = create(&name, 1);
    let server = spawn_server("server_realloc", &name, &plan);
    set.configuration(WAIT).unwrap();
    let mut worker = spawn_worker(&name, None);
    worker.expect("ready restore", SAY);
    let dev = set.open_device(&name).unwrap();
    let n = plan.max_transfer;

    let cmd1 = dev.command(WAIT).unwrap();
    assert_eq!((cmd1.code(), cmd1.size()), (CommandCode::READ, n));
    let h1 = set.buffer_handle(&cmd1).unwrap();
    worker.send(&format!("fill {} 0 0 {n}", h1.0));
    worker.expect("ok", SAY);
    dev.complete(cmd1, Completion::success(n)).unwrap();

    // Sent after the server freed the first buffer and allocated the second.
    let cmd2 = dev.command(WAIT).unwrap();
    assert_eq!((cmd2.code(), cmd2.size()), (CommandCode::READ, n));
    let h2 = set.buffer_handle(&cmd2).unwrap();
    assert_ne!(h1, h2);
    eprintln!(
        "stale handle {h1:?}, new handle {h2:?} (same descriptor: {})",
        (h1.0 ^ h2.0) & 0xFFFF == 0
    );
    let stale = Error::Invalid(InvalidReason::BufferHandle);
    assert_eq!(stale.hresult(), HResult::VD_E_INVALID);
    worker.send(&format!("map {}", h1.0));
    worker.expect(&err_line(stale), SAY);
    worker.send(&format!("fill {} 0 {n} {n}", h1.0));
    worker.expect(&err_line(stale), SAY);
    assert_eq!(set.map_buffer_handle(h1, n).unwrap_err(), stale);
    // A view longer than the buffer is refused; the live handle still maps afterwards.
    let too_long = Error::Invalid(InvalidReason::TransferSize);
    assert_eq!(too_long.hresult(), HResult::VD_E_INVALID);
    worker.send(&format!("map {} {}", h2.0, u32::MAX));
    worker.expect(&err_line(too_long), SAY);
    worker.send(&format!("fill {} 0 {n} {n}", h2.0));
    worker.expect("ok", SAY);
    dev.complete(cmd2, Completion::success(n)).unwrap();
    assert_eq!(dev.command(WAIT).unwrap_err(), Error::Closed);

    close_worker(worker);
    assert_eq!(set.close(), Ok(()));
    drop((dev, set));
    assert!(server.wait(SAY).success(), "server process failed");
    common::assert_no_leftovers(&name);
}

/// `OpenInSecondary` is refused (`VD_E_PROTOCOL`) before the set is configured, and for a name
/// nobody created; it succeeds once the primary has its configuration.
#[test]
fn open_secondary_before_configuration_or_of_unknown_name_fails() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    let name = common::unique_name("sec-early-join");
    let not_ready = err_line(Error::Protocol(ProtocolReason::NotReady));
    assert_eq!(
        Error::Protocol(ProtocolReason::NotReady).hresult(),
        HResult::VD_E_PROTOCOL
    );
    // A name nobody created.
    assert_eq!(try_join(&common::unique_name("sec-nobody")), not_ready);
    let set = create(&name, 1);
    // Created, no server yet.
    assert_eq!(try_join(&name), not_ready);
    // The server is configuring.
    let mut server = PipedChild::spawn("child", "server_on_cue", &[("VDI_SET", name.clone())]);
    server.expect("configuring", SAY);
    assert_eq!(try_join(&name), not_ready);
    // Configured, and the primary has its configuration: a secondary may join.
    server.send("end");
    server.expect("configured", SAY);
    assert!(set.configuration(WAIT).unwrap().is_backup());
    assert_eq!(try_join(&name), "ok");
    let dev = set.open_device(&name).unwrap();
    server.send("close");
    assert_eq!(dev.command(WAIT).unwrap_err(), Error::Closed);
    server.expect("closed", SAY);
    assert_eq!(set.close(), Ok(()));
    drop((dev, set));
    assert!(server.wait(SAY).success(), "server process failed");
    common::assert_no_leftovers(&name);
}

/// Starts the secondaries of the mprocess pattern, one per device 1..devices.
fn spawn_device_secondaries(name: &str, devices: u32, config_first: bool) -> Vec<PipedChild> {
    (1..devices)
        .map(|i| {
            PipedChild::spawn(
                "child",
                "secondary_device",
                &[
                    ("VDI_SET", name.to_owned()),
                    ("VDI_DEVICE", i.to_string()),
                    ("VDI_CONFIG_FIRST", u8::from(config_first).to_string()),
                ],
            )
        })
        .collect()
}

/// The mprocess pattern: the primary serves device 0, and each of 3 secondary processes opens
/// its own device and runs its own command loop of a backup; every byte is checked.
#[test]
fn mprocess_backup_one_device_per_secondary() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    mprocess(true);
}

/// As `mprocess_backup_one_device_per_secondary`, with each secondary opening its device
/// before its (optional, vdi-spec.md §9.5) `GetConfiguration`.
#[test]
fn mprocess_secondaries_open_device_before_get_configuration() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(60));
    mprocess(false);
}

fn mprocess(config_first: bool) {
    let name = common::unique_name(if config_first {
        "sec-mprocess"
    } else {
        "sec-mprocess-open-first"
    });
    let plan = Plan {
        devices: 4,
        block: 4096,
        max_transfer: 128 << 10,
        depth: 2,
        bytes: 2 << 20,
    };
    let set = create(&name, plan.devices);
    let server = spawn_server("server_backup", &name, &plan);
    assert!(set.configuration(WAIT).unwrap().is_backup());
    let secondaries = spawn_device_secondaries(&name, plan.devices, config_first);
    let dev = set.open_device(&name).unwrap();
    let mine = backup_device(&dev);
    assert_eq!(mine, Ok(plan.bytes));
    // Every secondary's whole story, so that a failure shows all of them.
    let expected = [
        "opened".to_owned(),
        format!("received Ok({})", plan.bytes),
        "closed Ok(())".to_owned(),
        "mapped 0".to_owned(),
    ];
    let stories: Vec<Vec<String>> = secondaries
        .iter()
        .map(|s| {
            let mut story = Vec::new();
            while story.len() < expected.len() {
                let line = s.recv(SAY);
                let failed = line.starts_with("open err");
                story.push(line);
                if failed {
                    break;
                }
            }
            story
        })
        .collect();
    assert_eq!(stories, vec![expected.to_vec(); secondaries.len()]);
    for s in secondaries {
        assert!(s.wait(SAY).success(), "secondary process failed");
    }
    assert_eq!(set.close(), Ok(()));
    drop((dev, set));
    assert!(server.wait(SAY).success(), "server process failed");
    common::assert_no_leftovers(&name);
}
