//! A backup between two processes over vdi-shm: the client side in this process, the server
//! side (a minimal engine) in a child process started from this same program.
//!
//! The client creates the set, starts the engine, waits for the configuration, and serves every
//! device on its own thread, checking every byte of each stream in order; the engine writes a
//! deterministic stream to each device in `MAXTRANSFERSIZE` transfers, then Flush and
//! CloseDevice. At the end it prints the bytes moved and the rate.
//!
//! Run it with `cargo run --release -p examples --example shm-backup [GIB] [DEVICES]`
//! (default: 1 GiB through 4 devices).

use std::{
    process::{Command, ExitCode},
    thread,
    time::Instant,
};

use vdi_core::{
    ClientBackend, ClientCommand, ClientConfig, ClientDevice, ClientDeviceSet, CommandCode,
    Completion, CompletionCode, Error, ServerBackend, ServerBuffer, ServerCommand, ServerConfig,
    ServerDevice, ServerDeviceSet, Timeout,
};
use vdi_shm::{ShmClient, ShmServer};

const BLOCK: u32 = 65536;
const MAX_TRANSFER: u32 = 4 << 20;
const DEPTH: u32 = 3;
const WAIT: Timeout = Timeout::from_millis(60_000);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let gib: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1.0);
    let devices: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(4);
    let per_device = ((gib * (1u64 << 30) as f64) as u64 / u64::from(devices)) / u64::from(BLOCK)
        * u64::from(BLOCK);
    let result = match std::env::var("VDI_EXAMPLE_SET") {
        Ok(name) => engine(&name, devices, per_device),
        Err(_) => client(devices, per_device),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shm-backup: {e}");
            ExitCode::FAILURE
        }
    }
}

fn device_name(set: &str, i: u32) -> String {
    if i == 0 {
        set.to_owned()
    } else {
        format!("{set}-stripe{i}")
    }
}

/// The client side: create, start the engine, serve every device, check every byte.
fn client(devices: u32, per_device: u64) -> Result<(), Box<dyn std::error::Error>> {
    let name = format!("shm-backup-example-{}", std::process::id());
    let config = ClientConfig {
        device_count: devices,
        ..ClientConfig::default()
    };
    let set = ShmClient::new().create(None, &name, &config)?;
    let mut engine = Command::new(std::env::current_exe()?)
        .args(std::env::args().skip(1))
        .env("VDI_EXAMPLE_SET", &name)
        .spawn()?;
    let cfg = set.configuration(WAIT)?;
    println!(
        "configured: {} devices, block {} KiB, max transfer {} MiB, {:?}",
        cfg.device_count,
        cfg.block_size >> 10,
        cfg.max_transfer_size >> 20,
        cfg.features
    );
    let start = Instant::now();
    let received: Vec<u64> = thread::scope(|s| {
        let handles: Vec<_> = (0..devices)
            .map(|i| {
                let dev = set.open_device(&device_name(&name, i));
                s.spawn(move || -> Result<u64, Error> { serve_device(&dev?, i) })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("device thread"))
            .collect::<Result<_, _>>()
    })?;
    let elapsed = start.elapsed();
    set.close()?;
    if !engine.wait()?.success() {
        return Err("the engine process failed".into());
    }
    let total: u64 = received.iter().sum();
    if received.iter().any(|&r| r != per_device) {
        return Err(
            format!("received {received:?} bytes, expected {per_device} per device").into(),
        );
    }
    println!(
        "backed up {:.2} GiB through {devices} devices between two processes in {:.2} s: {:.2} GB/s, every byte checked",
        total as f64 / (1u64 << 30) as f64,
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64() / 1e9
    );
    Ok(())
}

fn serve_device(dev: &vdi_shm::ClientDevice, index: u32) -> Result<u64, Error> {
    let mut offset = 0u64;
    loop {
        let cmd = match dev.command(WAIT) {
            Ok(c) => c,
            Err(Error::Closed) => return Ok(offset),
            Err(e) => return Err(e),
        };
        match cmd.code() {
            CommandCode::WRITE => {
                if !check(index, offset, cmd.data()) {
                    eprintln!("device {index}: wrong bytes at offset {offset}");
                    dev.complete(cmd, Completion::with_code(CompletionCode::IO_DEVICE))?;
                    return Err(Error::DeviceError);
                }
                offset += u64::from(cmd.size());
                let n = cmd.size();
                dev.complete(cmd, Completion::success(n))?;
            }
            CommandCode::FLUSH | CommandCode::CLEAR_ERROR => {
                dev.complete(cmd, Completion::success(0))?;
            }
            _ => dev.complete(cmd, Completion::not_supported())?,
        }
    }
}

/// The server side: a minimal engine writing a deterministic stream to every device.
fn engine(name: &str, devices: u32, per_device: u64) -> Result<(), Box<dyn std::error::Error>> {
    let set = ShmServer::new().open(None, name)?;
    set.begin_configuration(&ServerConfig::backup(BLOCK, MAX_TRANSFER))?;
    set.request_buffers(MAX_TRANSFER, 0, DEPTH * devices)?;
    let devs = (0..devices)
        .map(|i| set.open_device(&device_name(name, i)))
        .collect::<Result<Vec<_>, _>>()?;
    set.end_configuration()?;
    let mut buffers = (0..DEPTH * devices)
        .map(|_| set.allocate_buffer(MAX_TRANSFER, 0))
        .collect::<Result<Vec<_>, _>>()?;
    thread::scope(|s| {
        let handles: Vec<_> = devs
            .iter()
            .enumerate()
            .map(|(i, dev)| {
                let mine: Vec<_> = buffers.drain(..DEPTH as usize).collect();
                s.spawn(move || write_stream(dev, i as u32, mine, per_device))
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("engine device thread"))
    })?;
    set.close()?;
    Ok(())
}

fn write_stream(
    dev: &vdi_shm::ServerDevice,
    index: u32,
    mut free: Vec<vdi_shm::Buffer>,
    total: u64,
) -> Result<(), Error> {
    let mut offset = 0;
    while offset < total {
        let mut buf = match free.pop() {
            Some(b) => b,
            None => take(dev)?,
        };
        let n = (total - offset).min(u64::from(MAX_TRANSFER)) as u32;
        fill(index, offset, &mut buf.as_mut_slice()[..n as usize]);
        dev.send(ServerCommand::write(buf, n))
            .map_err(|e| e.error)?;
        offset += u64::from(n);
    }
    while dev.outstanding() > 0 {
        take(dev)?;
    }
    dev.send(ServerCommand::control(CommandCode::FLUSH))
        .map_err(|e| e.error)?;
    dev.completion(WAIT)?;
    dev.close()
}

fn take(dev: &vdi_shm::ServerDevice) -> Result<vdi_shm::Buffer, Error> {
    let c = dev.completion(WAIT)?;
    if c.completion.code != CompletionCode::SUCCESS {
        return Err(Error::DeviceError);
    }
    c.buffer.ok_or(Error::DeviceError)
}

/// The stream's 8-byte word at word index `i` of device `d`: cheap to make and to check.
fn word(d: u32, i: u64) -> u64 {
    (i ^ (u64::from(d) << 56)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn fill(d: u32, offset: u64, buf: &mut [u8]) {
    for (k, w) in buf.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&word(d, offset / 8 + k as u64).to_le_bytes());
    }
}

fn check(d: u32, offset: u64, buf: &[u8]) -> bool {
    buf.chunks_exact(8)
        .enumerate()
        .all(|(k, w)| w == word(d, offset / 8 + k as u64).to_le_bytes())
}
