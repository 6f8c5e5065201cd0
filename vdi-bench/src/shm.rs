//! Ours: vdi-shm between two processes. The parent creates the set (as the backup agent would)
//! and is the server (the engine); the child, a secondary client, serves every device on its
//! own thread: it checksums the data of each Write and completes every command.

use std::{
    sync::{Barrier, Mutex},
    thread,
    time::Instant,
};

use vdi_core::{
    ClientBackend, ClientCommand, ClientConfig, ClientDevice, ClientDeviceSet, CommandCode,
    Completion, CompletionCode, Error as VdiError, ServerBackend, ServerBuffer, ServerCommand,
    ServerConfig, ServerDevice, ServerDeviceSet, Timeout,
};
use vdi_shm::{Options, ShmClient, ShmServer};

use crate::util::{self, Context, Count, Error, Peer, Result};

/// How long any one call may wait before the run is declared stuck.
pub(crate) const WAIT: Timeout = Timeout::from_millis(60_000);
/// The block size of every set here.
const BLOCK: u32 = 64 * 1024;
/// Spins that keep a waiter spinning for the whole of a back-to-back round trip (milliseconds).
pub(crate) const SPIN_ALWAYS: u32 = 1_000_000;

/// Which client API the client process serves its devices through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Client {
    /// vdi-shm's Rust API (`ShmClient`).
    Rust,
    /// vdi-sdk's C ABI (`sqlvdi::cabi::CAbi`): every call through the `extern "C"` functions
    /// that libsqlvdi.so's C++ classes forward to.
    CAbi,
}

impl Client {
    /// The child role that serves the devices this way.
    fn role(self) -> &'static str {
        match self {
            Self::Rust => "shm-client",
            Self::CAbi => "cabi-client",
        }
    }
}

/// The name of device `i` of the set `set`.
pub(crate) fn device_name(set: &str, i: u32) -> String {
    if i == 0 {
        set.to_owned()
    } else {
        format!("{set}-d{i}")
    }
}

/// A configured set with its client process running.
#[derive(Debug)]
pub(crate) struct Pair {
    /// The set's name.
    pub(crate) name: String,
    primary: vdi_shm::ClientSet,
    /// The server side of the set.
    pub(crate) server: vdi_shm::ServerSet,
    /// The server side of every device, in order.
    pub(crate) devices: Vec<vdi_shm::ServerDevice>,
    peer: Option<Peer>,
}

impl Pair {
    /// Creates a set of `devices` devices whose server asks for `buffers` buffers of
    /// `transfer` bytes, and starts the client process (`client_spins` spins before a wait
    /// sleeps; `server_spins` likewise for the server here), which serves the devices through
    /// vdi-shm's Rust API.
    pub(crate) fn open(
        devices: u32,
        transfer: u32,
        buffers: u32,
        server_spins: u32,
        client_spins: u32,
    ) -> Result<Self> {
        Self::open_with(
            Client::Rust,
            devices,
            transfer,
            buffers,
            server_spins,
            client_spins,
        )
    }

    /// [`Pair::open`] with the client process serving through `client`.
    pub(crate) fn open_with(
        client: Client,
        devices: u32,
        transfer: u32,
        buffers: u32,
        server_spins: u32,
        client_spins: u32,
    ) -> Result<Self> {
        let name = util::unique_name("shm");
        let config = ClientConfig {
            device_count: devices,
            ..ClientConfig::default()
        };
        let primary = ShmClient::new()
            .create(None, &name, &config)
            .context("vdi-shm create")?;
        let server = ShmServer::with_options(Options::default().spins(server_spins))
            .open(None, &name)
            .context("vdi-shm open")?;
        server
            .begin_configuration(&ServerConfig::backup(BLOCK, transfer.max(BLOCK)))
            .context("begin configuration")?;
        if buffers > 0 {
            server
                .request_buffers(transfer, 0, buffers)
                .context("request buffers")?;
        }
        let devs = (0..devices)
            .map(|i| server.open_device(&device_name(&name, i)))
            .collect::<Result<Vec<_>, _>>()
            .context("server open device")?;
        server.end_configuration().context("end configuration")?;
        primary
            .configuration(WAIT)
            .context("client configuration")?;
        let peer = Peer::spawn(
            client.role(),
            &[name.clone(), client_spins.to_string(), devices.to_string()],
            None,
        )?;
        Ok(Self {
            name,
            primary,
            server,
            devices: devs,
            peer: Some(peer),
        })
    }

    /// Closes the devices (the client sees the end of each), waits for the client process,
    /// closes the set.
    pub(crate) fn close(mut self) -> Result<()> {
        for d in &self.devices {
            d.close().context("close device")?;
        }
        if let Some(peer) = self.peer.take() {
            peer.finish()?;
        }
        self.devices.clear();
        self.server.close().context("server close")?;
        self.primary.close().context("client close")
    }

    /// The bytes of shared memory this set maps: (control segment, buffer segments), read from
    /// `/proc/self/maps` (the server maps every segment of the set).
    pub(crate) fn shared_bytes(&self) -> Result<(u64, u64)> {
        let maps = std::fs::read_to_string("/proc/self/maps").context("read /proc/self/maps")?;
        let prefix = format!("/memfd:vdi-shm:{}:", self.name);
        let mut seen: Vec<(String, u64)> = Vec::new();
        for line in maps.lines() {
            let Some(pos) = line.find(&prefix) else {
                continue;
            };
            let tag = line[pos + prefix.len()..]
                .trim_end_matches(" (deleted)")
                .to_owned();
            let range = line.split_whitespace().next().unwrap_or("");
            let (a, b) = range.split_once('-').unwrap_or(("0", "0"));
            let len =
                u64::from_str_radix(b, 16).unwrap_or(0) - u64::from_str_radix(a, 16).unwrap_or(0);
            match seen.iter_mut().find(|(t, _)| *t == tag) {
                Some((_, l)) => *l = (*l).max(len),
                None => seen.push((tag, len)),
            }
        }
        let control = seen
            .iter()
            .filter(|(t, _)| t == "control")
            .map(|(_, l)| l)
            .sum();
        let buffers = seen
            .iter()
            .filter(|(t, _)| t.starts_with("segment"))
            .map(|(_, l)| l)
            .sum();
        Ok((control, buffers))
    }
}

fn send_control(dev: &vdi_shm::ServerDevice) -> Result<()> {
    dev.send(ServerCommand::control(CommandCode::FLUSH))
        .map_err(|e| Error::msg(format!("send: {}", e.error)))?;
    Ok(())
}

fn completion(dev: &vdi_shm::ServerDevice) -> Result<Option<vdi_shm::Buffer>> {
    let c = dev.completion(WAIT).context("completion")?;
    if c.completion.code != CompletionCode::SUCCESS {
        return Err(Error::msg(format!(
            "the client completed a command with {:?}",
            c.completion.code
        )));
    }
    Ok(c.buffer)
}

/// Round trips on device 0 of `pair`: send a control command, wait for its completion.
pub(crate) fn round_trips_on(pair: &Pair, count: Count) -> Result<Vec<u64>> {
    let dev = &pair.devices[0];
    let mut samples = Vec::with_capacity(count.n);
    let start = Instant::now();
    let mut i = 0;
    while !count.done(samples.len(), start) {
        count.pause();
        let t = Instant::now();
        send_control(dev)?;
        completion(dev)?;
        let ns = util::ns_since(t);
        if count.timed(i, start) {
            samples.push(ns);
        }
        i += 1;
    }
    Ok(samples)
}

/// Round trips between the server (spinning) and a one-device client spinning `client_spins`
/// times before it sleeps.
pub(crate) fn round_trips(count: Count, client_spins: u32) -> Result<Vec<u64>> {
    round_trips_with(Client::Rust, count, client_spins)
}

/// [`round_trips`] with the client serving through `client`.
pub(crate) fn round_trips_with(
    client: Client,
    count: Count,
    client_spins: u32,
) -> Result<Vec<u64>> {
    let pair = Pair::open_with(client, 1, BLOCK, 0, SPIN_ALWAYS, client_spins)?;
    let samples = round_trips_on(&pair, count)?;
    pair.close()?;
    Ok(samples)
}

/// Commands through every device at once: the server sends one control command to each device,
/// then takes each completion, `per_device` times. Nanoseconds per command.
pub(crate) fn all_devices_busy(pair: &Pair, per_device: usize) -> Result<f64> {
    let t = Instant::now();
    for _ in 0..per_device {
        for d in &pair.devices {
            send_control(d)?;
        }
        for d in &pair.devices {
            completion(d)?;
        }
    }
    Ok(t.elapsed().as_nanos() as f64 / (per_device * pair.devices.len()) as f64)
}

/// A backup through `devices` devices: on its own thread per device, the server fills each of
/// `depth` buffers of `transfer` bytes and sends it; the client checksums it and completes.
/// `total` bytes in all, timed from when every device has warmed up (each buffer sent once)
/// until the last completion. GB/s.
pub(crate) fn stream(devices: u32, transfer: u32, depth: u32, total: u64) -> Result<f64> {
    stream_with(Client::Rust, devices, transfer, depth, total)
}

/// [`stream`] with the client serving through `client`.
pub(crate) fn stream_with(
    client: Client,
    devices: u32,
    transfer: u32,
    depth: u32,
    total: u64,
) -> Result<f64> {
    let per_device =
        (total / u64::from(devices) / u64::from(transfer)).max(1) * u64::from(transfer);
    let pair = Pair::open_with(client, devices, transfer, devices * depth, 2000, 2000)?;
    let barrier = Barrier::new(devices as usize);
    let errors = Mutex::new(Vec::<String>::new());
    // (start, end) of each device thread's timed part, CLOCK_MONOTONIC ns.
    let stamps = Mutex::new(Vec::<(u64, u64)>::new());
    let fail = |e: Error| {
        errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e.to_string());
    };
    thread::scope(|s| {
        for dev in &pair.devices {
            let (server, barrier, stamps, fail) = (&pair.server, &barrier, &stamps, &fail);
            s.spawn(move || {
                let r = (|| -> Result<Vec<vdi_shm::Buffer>> {
                    let mut free = (0..depth)
                        .map(|_| server.allocate_buffer(transfer, 0))
                        .collect::<Result<Vec<_>, _>>()
                        .context("allocate buffer")?;
                    // Warm-up: every buffer once through the client and back.
                    let mut x = 0u64;
                    for mut b in free.drain(..) {
                        x = util::fill(b.as_mut_slice(), x);
                        dev.send(ServerCommand::write(b, transfer))
                            .map_err(|e| Error::msg(format!("send: {}", e.error)))?;
                    }
                    for _ in 0..depth {
                        free.push(
                            completion(dev)?.context("a Write came back without its buffer")?,
                        );
                    }
                    Ok(free)
                })();
                let free = r.map_err(fail).ok();
                barrier.wait();
                let Some(mut free) = free else { return };
                let start = util::mono_ns();
                let r = (|| -> Result<()> {
                    let mut sent = 0u64;
                    let mut x = 0u64;
                    while sent < per_device {
                        let mut b = match free.pop() {
                            Some(b) => b,
                            None => {
                                completion(dev)?.context("a Write came back without its buffer")?
                            }
                        };
                        x = util::fill(b.as_mut_slice(), x);
                        dev.send(ServerCommand::write(b, transfer))
                            .map_err(|e| Error::msg(format!("send: {}", e.error)))?;
                        sent += u64::from(transfer);
                    }
                    while dev.outstanding() > 0 {
                        completion(dev)?;
                    }
                    Ok(())
                })();
                match r {
                    Ok(()) => stamps
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((start, util::mono_ns())),
                    Err(e) => fail(e),
                }
            });
        }
    });
    let stamps = stamps.into_inner().unwrap_or_else(|p| p.into_inner());
    let starts: Vec<u64> = stamps.iter().map(|s| s.0).collect();
    let elapsed = util::span(&starts, stamps.iter().map(|s| s.1).max().unwrap_or(0));
    let errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = errors.first() {
        return Err(Error::msg(format!("vdi-shm streaming: {e}")));
    }
    pair.close()?;
    Ok(util::gbps(per_device * u64::from(devices), elapsed))
}

/// The client process: `args` = [set name, spins, devices]. Joins the set as a secondary
/// through `client`, serves each device on its own thread until the server closes it.
pub(crate) fn client_child(client: Client, args: &[String]) -> Result<()> {
    let spins: u32 = util::arg(args, 1, "spins")?;
    let options = Options::default().spins(spins);
    match client {
        Client::Rust => serve_child(&ShmClient::with_options(options), args),
        Client::CAbi => serve_child(&sqlvdi::cabi::CAbi::with_options(options), args),
    }
}

fn serve_child<B: ClientBackend>(backend: &B, args: &[String]) -> Result<()>
where
    B::Set: Sync,
    <B::Set as ClientDeviceSet>::Device: Send,
{
    let name: String = util::arg(args, 0, "set name")?;
    let devices: u32 = util::arg(args, 2, "devices")?;
    let set = backend
        .open_secondary(None, &name)
        .context("join the set as a secondary")?;
    let results: Vec<Result<u64>> = thread::scope(|s| {
        let handles: Vec<_> = (0..devices)
            .map(|i| {
                let set = &set;
                let dev_name = device_name(&name, i);
                s.spawn(move || -> Result<u64> {
                    let dev = set.open_device(&dev_name).context("client open device")?;
                    let mut sum = 0u64;
                    loop {
                        match dev.command(WAIT) {
                            Ok(cmd) => {
                                if cmd.code() == CommandCode::WRITE {
                                    sum = sum.wrapping_add(util::checksum(cmd.data()));
                                }
                                let n = cmd.size();
                                dev.complete(cmd, Completion::success(n))
                                    .context("complete")?;
                            }
                            Err(VdiError::Closed) => return Ok(sum),
                            Err(e) => return Err(Error::msg(format!("GetCommand: {e}"))),
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::msg("device thread panicked")))
            })
            .collect()
    });
    let mut sum = 0u64;
    for r in results {
        sum = sum.wrapping_add(r?);
    }
    std::hint::black_box(sum);
    set.close().context("client close")
}
