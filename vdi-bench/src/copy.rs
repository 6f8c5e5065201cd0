//! The kernel-copy transports: pipes and Unix domain sockets.
//!
//! - **Streaming**, the way stdout-based VDI tools move a backup: one pipe (a FIFO, so each
//!   device gets its own) or one stream socket per device; on its own thread per device the
//!   parent fills a buffer of the transfer size and writes it; the child reads whole transfers
//!   and checksums them. Default pipe and socket buffer sizes, as such tools get.
//! - **Round trip** over a Unix stream socket: 8 bytes each way, the parent polling with
//!   non-blocking reads; the child either polls too (spinning) or blocks in `read` (asleep).

use std::{
    io::{ErrorKind, Read, Write},
    os::{
        linux::net::SocketAddrExt,
        unix::{
            fs::OpenOptionsExt,
            net::{SocketAddr, UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
    sync::{Barrier, Mutex},
    thread,
    time::{Duration, Instant},
};

use crate::util::{self, Context, Count, Error, Peer, Result, Watchdog};

/// Which kernel transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// A pipe (FIFO) per device.
    Pipe,
    /// A Unix stream socket per device.
    Socket,
}

impl Via {
    fn role(self) -> &'static str {
        match self {
            Self::Pipe => "pipe-sink",
            Self::Socket => "socket-sink",
        }
    }
}

fn abstract_addr(name: &str) -> Result<SocketAddr> {
    SocketAddr::from_abstract_name(name.as_bytes()).context("abstract socket address")
}

/// Accepts `n` connections, failing if `peer` dies or nothing comes for a minute.
fn accept_n(listener: &UnixListener, n: usize, peer: &mut Peer) -> Result<Vec<UnixStream>> {
    listener
        .set_nonblocking(true)
        .context("non-blocking listener")?;
    let start = Instant::now();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).context("blocking socket")?;
                out.push(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                peer.check_alive()?;
                if start.elapsed() > Duration::from_secs(60) {
                    return Err(Error::msg("no connection from the child for 60 s"));
                }
                thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(Error::msg(format!("accept: {e}"))),
        }
    }
    Ok(out)
}

/// A scratch directory for FIFOs, removed on drop.
#[derive(Debug)]
struct FifoDir(PathBuf);

impl FifoDir {
    fn new(devices: u32) -> Result<Self> {
        let dir = std::env::temp_dir().join(util::unique_name("fifo"));
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let this = Self(dir);
        for i in 0..devices {
            let p = this.fifo(i);
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &p,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            )
            .with_context(|| format!("mkfifo {}", p.display()))?;
        }
        Ok(this)
    }

    fn fifo(&self, i: u32) -> PathBuf {
        fifo_path(&self.0, i)
    }
}

impl Drop for FifoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fifo_path(dir: &Path, i: u32) -> PathBuf {
    dir.join(format!("device{i}"))
}

/// Opens a FIFO for writing once the child has opened it for reading (a plain open would block
/// for ever if the child died first).
fn open_fifo_writer(path: &Path) -> Result<std::fs::File> {
    let start = Instant::now();
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path)
        {
            Ok(f) => {
                rustix::fs::fcntl_setfl(&f, rustix::fs::OFlags::empty())
                    .context("clear O_NONBLOCK")?;
                return Ok(f);
            }
            // ENXIO: no reader yet.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) => {
                if start.elapsed() > Duration::from_secs(60) {
                    return Err(Error::msg(format!(
                        "no reader on {} for 60 s",
                        path.display()
                    )));
                }
                thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(Error::msg(format!("open {}: {e}", path.display()))),
        }
    }
}

/// Streams `total` bytes through `devices` pipes or sockets in writes of `transfer` bytes; each
/// writer first sends `depth` transfers untimed. Timed from when every device has warmed up
/// until the child has read and checksummed the last byte. GB/s.
pub(crate) fn stream(via: Via, devices: u32, transfer: u32, depth: u32, total: u64) -> Result<f64> {
    let per_device =
        (total / u64::from(devices) / u64::from(transfer)).max(1) * u64::from(transfer);
    let name = util::unique_name("copy");
    let (fifos, listener) = match via {
        Via::Pipe => (Some(FifoDir::new(devices)?), None),
        Via::Socket => (
            None,
            Some(UnixListener::bind_addr(&abstract_addr(&name)?).context("bind")?),
        ),
    };
    let target = match &fifos {
        Some(d) => d.0.to_string_lossy().into_owned(),
        None => name.clone(),
    };
    let mut peer = Peer::spawn(
        via.role(),
        &[target, devices.to_string(), transfer.to_string()],
        None,
    )?;
    let mut writers: Vec<Box<dyn Write + Send>> = Vec::new();
    match (&fifos, &listener) {
        (Some(dir), _) => {
            for i in 0..devices {
                writers.push(Box::new(open_fifo_writer(&dir.fifo(i))?));
            }
        }
        (None, Some(l)) => {
            for s in accept_n(l, devices as usize, &mut peer)? {
                writers.push(Box::new(s));
            }
        }
        (None, None) => unreachable!("one transport is always set up"),
    }
    let barrier = Barrier::new(devices as usize);
    let errors = Mutex::new(Vec::<String>::new());
    let starts = Mutex::new(Vec::<u64>::new());
    thread::scope(|s| {
        for mut w in writers {
            let (barrier, errors, starts) = (&barrier, &errors, &starts);
            s.spawn(move || {
                let mut buf = vec![0u8; transfer as usize];
                let mut x = 0u64;
                let mut send = |n: u64| -> Result<()> {
                    for _ in 0..n {
                        x = util::fill(&mut buf, x);
                        w.write_all(&buf).context("write")?;
                    }
                    Ok(())
                };
                let warm = send(u64::from(depth));
                barrier.wait();
                starts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(util::mono_ns());
                let r = warm.and_then(|()| send(per_device / u64::from(transfer)));
                if let Err(e) = r {
                    errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(e.to_string());
                }
                // Dropping the writer closes it: the child reads the end.
            });
        }
    });
    // Every writer is done and closed; the clock stops when the child has read and checksummed
    // the last byte (its own CLOCK_MONOTONIC stamp).
    let done = peer.read_line();
    let errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = errors.first() {
        return Err(Error::msg(format!("{via:?} streaming: {e}")));
    }
    let done = done?;
    let end: u64 = done
        .strip_prefix("done ")
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("the sink answered {done:?}"))?;
    let starts = starts.into_inner().unwrap_or_else(|p| p.into_inner());
    let elapsed = util::span(&starts, end);
    peer.finish()?;
    Ok(util::gbps(per_device * u64::from(devices), elapsed))
}

/// The child side of [`stream`]: `args` = [FIFO directory or socket name, devices, transfer].
/// Reads every device to its end on its own thread, checksumming whole transfers, then prints
/// `done <CLOCK_MONOTONIC ns>`.
pub(crate) fn sink_child(via: Via, args: &[String]) -> Result<()> {
    let target: String = util::arg(args, 0, "fifo directory or socket name")?;
    let devices: u32 = util::arg(args, 1, "devices")?;
    let transfer: u32 = util::arg(args, 2, "transfer")?;
    let results: Vec<Result<u64>> = thread::scope(|s| {
        let handles: Vec<_> = (0..devices)
            .map(|i| {
                let target = &target;
                s.spawn(move || -> Result<u64> {
                    let mut r: Box<dyn Read> = match via {
                        Via::Pipe => {
                            let p = fifo_path(Path::new(target), i);
                            Box::new(
                                std::fs::File::open(&p)
                                    .with_context(|| format!("open {}", p.display()))?,
                            )
                        }
                        Via::Socket => Box::new(
                            UnixStream::connect_addr(&abstract_addr(target)?).context("connect")?,
                        ),
                    };
                    let mut buf = vec![1u8; transfer as usize];
                    let mut sum = 0u64;
                    loop {
                        let mut got = 0;
                        while got < buf.len() {
                            match r.read(&mut buf[got..]) {
                                Ok(0) => break,
                                Ok(n) => got += n,
                                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                                Err(e) => return Err(Error::msg(format!("read: {e}"))),
                            }
                        }
                        if got == 0 {
                            return Ok(sum);
                        }
                        if got < buf.len() {
                            return Err(Error::msg("the stream ended inside a transfer"));
                        }
                        sum = sum.wrapping_add(util::checksum(&buf));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::msg("sink thread panicked")))
            })
            .collect()
    });
    let mut sum = 0u64;
    for r in results {
        sum = sum.wrapping_add(r?);
    }
    std::hint::black_box(sum);
    util::tell_parent(&format!("done {}", util::mono_ns()));
    Ok(())
}

/// Round trips of 8 bytes over a Unix stream socket, as `count` says; the parent polls
/// (non-blocking reads). The child polls too when `spin`, else blocks in `read`.
pub(crate) fn round_trips(count: Count, spin: bool) -> Result<Vec<u64>> {
    let name = util::unique_name("uds");
    let listener = UnixListener::bind_addr(&abstract_addr(&name)?).context("bind")?;
    let mode = if spin { "spin" } else { "sleep" };
    let mut peer = Peer::spawn("socket-echo", &[name, mode.to_owned()], None)?;
    let mut sock = accept_n(&listener, 1, &mut peer)?
        .pop()
        .context("no connection")?;
    sock.set_nonblocking(true).context("non-blocking socket")?;
    let mut samples = Vec::with_capacity(count.n);
    let start = Instant::now();
    let mut i = 0usize;
    while !count.done(samples.len(), start) {
        count.pause();
        let t = Instant::now();
        sock.write_all(&(i as u64).to_le_bytes()).context("write")?;
        let got = poll_read_u64(&mut sock, &mut peer)?;
        if got != i as u64 {
            return Err(Error::msg(format!("socket echo: sent {i}, got {got}")));
        }
        let ns = util::ns_since(t);
        if count.timed(i, start) {
            samples.push(ns);
        }
        i += 1;
    }
    drop(sock);
    peer.finish()?;
    Ok(samples)
}

/// Reads 8 bytes from a non-blocking socket, spinning on `WouldBlock`.
fn poll_read_u64(sock: &mut UnixStream, peer: &mut Peer) -> Result<u64> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    let mut dog = Watchdog::new("socket round trip");
    while got < 8 {
        match sock.read(&mut buf[got..]) {
            Ok(0) => return Err(Error::msg("the socket peer hung up")),
            Ok(k) => got += k,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                std::hint::spin_loop();
                if dog.tick() {
                    dog.check()?;
                    peer.check_alive()?;
                }
            }
            Err(e) => return Err(Error::msg(format!("read: {e}"))),
        }
    }
    Ok(u64::from_le_bytes(buf))
}

/// The child side of [`round_trips`]: `args` = [socket name, `spin` or `sleep`]. Echoes every
/// 8 bytes until the parent hangs up.
pub(crate) fn echo_child(args: &[String]) -> Result<()> {
    let name: String = util::arg(args, 0, "socket name")?;
    let spin = util::arg::<String>(args, 1, "mode")? == "spin";
    let mut sock = UnixStream::connect_addr(&abstract_addr(&name)?).context("connect")?;
    sock.set_nonblocking(spin).context("socket mode")?;
    let mut buf = [0u8; 8];
    loop {
        let mut got = 0;
        while got < 8 {
            match sock.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(()),
                Ok(0) => return Err(Error::msg("the parent hung up inside a message")),
                Ok(k) => got += k,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    std::hint::spin_loop();
                }
                Err(e) => return Err(Error::msg(format!("read: {e}"))),
            }
        }
        let mut off = 0;
        while off < 8 {
            match sock.write(&buf[off..]) {
                Ok(k) => off += k,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    std::hint::spin_loop();
                }
                Err(e) => return Err(Error::msg(format!("write: {e}"))),
            }
        }
    }
}
