//! Test support shared by vdi-shm's multi-process tests: small server (engine) and client
//! (agent) drivers, and checks that a set left nothing behind. Child processes in a role and
//! deterministic stream data come from `vdi-testkit`, re-exported here.
//!
//! A test that needs another process re-runs its own test binary with `--exact <child test>`
//! and the role in `VDI_ROLE`; the child test does nothing unless `VDI_ROLE` is set.

#![allow(dead_code, reason = "each test file uses a part of the support module")]

use std::{
    thread,
    time::{Duration, Instant},
};

use vdi_core::{
    ClientCommand, ClientDevice, ClientDeviceSet, CommandCode, Completion, CompletionCode, Error,
    ServerBuffer, ServerCommand, ServerDevice, ServerDeviceSet, Timeout,
};
use vdi_shm::{ClientSet, ShmServer};
use vdi_testkit::OpenRetry;
#[allow(unused_imports, reason = "each test file uses a part of the kit")]
pub(crate) use vdi_testkit::{
    ChildProc, PipedChild, Plan, check, device_name, fill, from_parent, init_tracing, param,
    param_u64, role, tell_parent, watchdog,
};

/// Generous bound for any single wait in a test; a hang fails instead of blocking CI.
pub(crate) const WAIT: Timeout = Timeout::from_millis(30_000);

/// How long, and how often, [`open_and_configure`] tries to open a set not created yet.
const OPEN: OpenRetry = OpenRetry {
    within: Duration::from_secs(30),
    every: Duration::from_millis(5),
};

/// A set name unique to this process and call (`vdi-test-<tag>-<pid>-<n>`).
pub(crate) fn unique_name(tag: &str) -> String {
    vdi_testkit::unique_name("vdi-test", tag)
}

/// Opens `name` as the server and configures it for `plan`, retrying the open until the client
/// has created the set.
pub(crate) fn open_and_configure(
    name: &str,
    plan: &Plan,
    backup: bool,
) -> Result<(vdi_shm::ServerSet, Vec<vdi_shm::ServerDevice>), Error> {
    let config = plan.server_config(backup);
    vdi_testkit::open_and_configure(&ShmServer::new(), name, plan, &config, OPEN)
}

/// The server side of a backup: writes `plan.bytes` of each device's stream in transfers of
/// `max_transfer`, keeps up to `depth` commands outstanding per device, then Flush and
/// CloseDevice. Every device runs on its own thread.
pub(crate) fn serve_backup(name: &str, plan: Plan) -> Result<(), Error> {
    let (set, devices) = open_and_configure(name, &plan, true)?;
    let mut buffers = Vec::new();
    for _ in 0..plan.depth * plan.devices {
        buffers.push(set.allocate_buffer(plan.max_transfer, 0)?);
    }
    thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, dev) in devices.iter().enumerate() {
            let mine: Vec<_> = buffers.drain(..plan.depth as usize).collect();
            handles.push(s.spawn(move || backup_device(i as u32, dev, mine, &plan)));
        }
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("device thread panicked"))
    })?;
    set.close()
}

fn backup_device(
    index: u32,
    dev: &vdi_shm::ServerDevice,
    mut free: Vec<vdi_shm::Buffer>,
    plan: &Plan,
) -> Result<(), Error> {
    let mut offset = 0u64;
    while offset < plan.bytes {
        let mut buf = match free.pop() {
            Some(b) => b,
            None => {
                let c = dev.completion(WAIT)?;
                if c.completion.code != CompletionCode::SUCCESS {
                    return Err(Error::DeviceError);
                }
                c.buffer.expect("write buffer comes back")
            }
        };
        let n = (plan.bytes - offset).min(u64::from(plan.max_transfer)) as u32;
        fill(index, offset, &mut buf.as_mut_slice()[..n as usize]);
        dev.send(ServerCommand::write(buf, n))
            .map_err(|e| e.error)?;
        offset += u64::from(n);
    }
    while dev.outstanding() > 0 {
        let c = dev.completion(WAIT)?;
        if c.completion.code != CompletionCode::SUCCESS {
            return Err(Error::DeviceError);
        }
    }
    dev.send(ServerCommand::control(CommandCode::FLUSH))
        .map_err(|e| e.error)?;
    let c = dev.completion(WAIT)?;
    assert_eq!(
        (c.code, c.completion.code),
        (CommandCode::FLUSH, CompletionCode::SUCCESS)
    );
    dev.close()
}

/// The server side of a restore: reads each device's stream in sizes that vary between the
/// block size and `max_transfer` and checks every byte, until the client answers
/// `ERROR_HANDLE_EOF`; returns the bytes read per device.
pub(crate) fn serve_restore(name: &str, plan: Plan) -> Result<Vec<u64>, Error> {
    let (set, devices) = open_and_configure(name, &plan, false)?;
    let mut buffers = Vec::new();
    for _ in 0..plan.devices {
        buffers.push(set.allocate_buffer(plan.max_transfer, 0)?);
    }
    let totals = thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, dev) in devices.iter().enumerate() {
            let buf = buffers.pop().expect("a buffer per device");
            handles.push(s.spawn(move || restore_device(i as u32, dev, buf, &plan)));
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("device thread panicked"))
            .collect::<Result<Vec<_>, _>>()
    })?;
    set.close()?;
    Ok(totals)
}

fn restore_device(
    index: u32,
    dev: &vdi_shm::ServerDevice,
    mut buf: vdi_shm::Buffer,
    plan: &Plan,
) -> Result<u64, Error> {
    let blocks = plan.max_transfer / plan.block;
    let mut offset = 0u64;
    let mut k = u64::from(index);
    loop {
        // Read sizes vary: 1..=blocks blocks, not the backup's write sizes.
        k = k
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = plan.block * (1 + ((k >> 33) as u32 % blocks));
        dev.send(ServerCommand::read(buf, n)).map_err(|e| e.error)?;
        let c = dev.completion(WAIT)?;
        buf = c.buffer.expect("read buffer comes back");
        let got = c.completion.bytes_transferred;
        assert!(
            check(index, offset, &buf.as_slice()[..got as usize]),
            "device {index}: wrong bytes at offset {offset}"
        );
        offset += u64::from(got);
        match c.completion.code {
            CompletionCode::SUCCESS if got == n => {}
            CompletionCode::HANDLE_EOF => break,
            other => panic!("device {index}: read answered {other:?} with {got} of {n} bytes"),
        }
    }
    dev.close()?;
    Ok(offset)
}

/// Opens every device of set `name` and runs `serve` on each, one thread per device (the
/// engine synchronizes its streams, so devices must be served at once); returns the results in
/// device order.
pub(crate) fn serve_devices<T: Send>(
    set: &ClientSet,
    name: &str,
    devices: u32,
    serve: impl Fn(&vdi_shm::ClientDevice) -> Result<T, Error> + Sync,
) -> Result<Vec<T>, Error> {
    let devs = (0..devices)
        .map(|i| set.open_device(&device_name(name, i)))
        .collect::<Result<Vec<_>, _>>()?;
    let serve = &serve;
    thread::scope(|s| {
        let handles: Vec<_> = devs.iter().map(|dev| s.spawn(move || serve(dev))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("device thread panicked"))
            .collect()
    })
}

/// The client side of a backup: serves every device on its own thread, checks every byte in
/// stream order, acknowledges Flush; returns the bytes received per device.
pub(crate) fn client_backup(set: &ClientSet, name: &str, devices: u32) -> Result<Vec<u64>, Error> {
    serve_devices(set, name, devices, |dev| {
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
                        check(index, offset, cmd.data()),
                        "device {index}: wrong bytes at offset {offset}"
                    );
                    offset += u64::from(cmd.size());
                    let n = cmd.size();
                    dev.complete(cmd, Completion::success(n))?;
                }
                CommandCode::FLUSH | CommandCode::CLEAR_ERROR | CommandCode::COMPLETE => {
                    dev.complete(cmd, Completion::success(0))?;
                }
                _ => dev.complete(cmd, Completion::not_supported())?,
            }
        }
    })
}

/// The client side of a restore: fills each Read from the device's stream until `bytes`, then
/// answers the short final read with `ERROR_HANDLE_EOF`.
pub(crate) fn client_restore(
    set: &ClientSet,
    name: &str,
    devices: u32,
    bytes: u64,
) -> Result<(), Error> {
    serve_devices(set, name, devices, |dev| {
        let index = ClientDevice::index(dev);
        let mut offset = 0u64;
        loop {
            let mut cmd = match dev.command(WAIT) {
                Ok(c) => c,
                Err(Error::Closed) => return Ok(()),
                Err(e) => return Err(e),
            };
            if cmd.code() != CommandCode::READ {
                dev.complete(cmd, Completion::not_supported())?;
                continue;
            }
            let want = u64::from(cmd.size());
            let n = want.min(bytes - offset);
            fill(index, offset, &mut cmd.data_mut()[..n as usize]);
            offset += n;
            let c = if n == want {
                Completion::success(n as u32)
            } else {
                Completion::eof(n as u32)
            };
            dev.complete(cmd, c)?;
        }
    })
    .map(drop)
}

/// Asserts that nothing of set `name` is left ([`leftovers`] is `(0, 0)`). The kernel frees a
/// dead process's sockets asynchronously (a socket with a message in flight that carries a
/// descriptor waits for the `AF_UNIX` garbage collector), so this looks again, for a bounded
/// while, before it fails.
pub(crate) fn assert_no_leftovers(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = leftovers(name);
        if left == (0, 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "mappings or sockets of {name} left behind: {left:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Counts what is left of set `name`: this process's mappings of its memfds (named
/// `vdi-shm:<name>:...`), and the abstract sockets bound under its name anywhere.
#[cfg(all(target_os = "linux", not(feature = "portable-unix")))]
pub(crate) fn leftovers(name: &str) -> (usize, usize) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let tag = format!("memfd:vdi-shm:{name}:");
    let mapped = maps.lines().filter(|l| l.contains(&tag)).count();
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let needle = format!("@vdi-shm.1/{name}");
    let sockets = unix
        .lines()
        .filter(|l| l.split_whitespace().last() == Some(needle.as_str()))
        .count();
    (mapped, sockets)
}

/// Counts what is left of set `name`: this process's mappings of its shared memory, and
/// whether its rendezvous exists (0 or 1): on Windows its pipe (`\\.\pipe\vdi-shm.1\<name>`),
/// with the portable Unix backend its socket file, live or stale.
#[cfg(any(
    windows,
    all(unix, any(not(target_os = "linux"), feature = "portable-unix"))
))]
pub(crate) fn leftovers(name: &str) -> (usize, usize) {
    vdi_shm::leftovers(name)
}

/// Whether [`leftovers`] may count the rendezvous of a set whose creator was killed: not where
/// the system frees the name (Linux's abstract sockets, Windows' pipes); with the portable Unix
/// backend, the dead creator's socket file stays (it no longer holds the name: its lock went
/// with the process) until the next set this user creates sweeps it away.
pub(crate) const STALE_SOCKET_FILE: bool = cfg!(all(
    unix,
    any(not(target_os = "linux"), feature = "portable-unix")
));
