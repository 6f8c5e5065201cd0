//! Transport benchmarks between two processes: command round trips and streaming.
//!
//! Run with `cargo bench -p vdi-shm --bench transport` (add `-- quick` for a short run). The
//! parent is the server (engine); the child, this binary re-run with `VDI_BENCH_ROLE`, is the
//! client. Each process is pinned to its own core. What it measures:
//!
//! - **Round trip**: the server sends a command, the client takes and completes it, the server
//!   sees the completion; p50 / p99 / p99.9 over many round trips, with both sides spinning and
//!   with the client asleep (it never spins, so every command wakes it). Beside them, the floors
//!   measured the same way between the same two processes: one cache line bounced with spinning
//!   atomics, and a futex ping-pong that always sleeps.
//! - **Streaming**: a one-device backup; the server fills each buffer, the client reads all of it
//!   (a checksum) and completes; GB/s for 1 MiB and 4 MiB transfers, beside the pipeline bound,
//!   the slower of fill-alone and checksum-alone on one core.
//!
//! Linux only: the floors use shared futexes and `/dev/shm`, and the processes pin themselves
//! with `sched_setaffinity`. Elsewhere the binary says so and exits.

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("the vdi-shm transport benchmarks run on Linux only");
}

#[cfg(target_os = "linux")]
mod linux {
    use std::{
        hint::black_box,
        process::{Command, Stdio},
        sync::atomic::{AtomicU32, AtomicU64, Ordering},
        time::Instant,
    };

    use vdi_core::{
        ClientBackend, ClientCommand, ClientConfig, ClientDevice, ClientDeviceSet, CommandCode,
        Completion, Error, ServerBackend, ServerBuffer, ServerCommand, ServerConfig, ServerDevice,
        ServerDeviceSet, Timeout,
    };
    use vdi_shm::{Options, ShmClient, ShmServer};

    const WAIT: Timeout = Timeout::from_millis(60_000);

    fn pin(cpu: usize) {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }

    fn quick() -> bool {
        std::env::args().any(|a| a == "quick")
    }

    pub(crate) fn main() {
        if let Ok(role) = std::env::var("VDI_BENCH_ROLE") {
            pin(1);
            child(&role);
            return;
        }
        pin(0);
        let n = if quick() { 20_000 } else { 200_000 };
        println!(
            "# vdi-shm transport benchmarks ({} round trips per row)\n",
            n
        );
        println!("| round trip (two processes) | p50 | p99 | p99.9 | mean |");
        println!("|---|---|---|---|---|");
        row(
            "cache line ping-pong (floor, spinning)",
            &floor("cacheline", n),
        );
        row(
            "vdi-shm, both sides spinning",
            &round_trip(n, Options::default().spins(1_000_000)),
        );
        let slow = (n / 50).max(2_000);
        row(
            "futex ping-pong (floor, always sleeping)",
            &floor("futex", slow),
        );
        row("vdi-shm, client asleep", &round_trip_asleep(slow));
        println!();
        println!("| streaming, 1 device | transfer | GB/s | pipeline bound GB/s | ratio |");
        println!("|---|---|---|---|---|");
        let total: u64 = if quick() { 1 << 30 } else { 4 << 30 };
        for mts in [1u32 << 20, 4 << 20] {
            // Interleaved (A B A B ...) so the machine's drift hits both alike; medians of five.
            let (mut rates, mut bounds) = (Vec::new(), Vec::new());
            for _ in 0..5 {
                rates.push(stream(mts, total));
                bounds.push(pipeline_bound(mts as usize));
            }
            let (rate, bound) = (median(&mut rates), median(&mut bounds));
            println!(
                "| server fills, client checksums | {} MiB | {rate:.2} | {bound:.2} | {:.2} |",
                mts >> 20,
                rate / bound
            );
        }
    }

    fn median(v: &mut [f64]) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    fn row(name: &str, samples: &[u64]) {
        let mut s = samples.to_vec();
        s.sort_unstable();
        let pct = |p: f64| s[((s.len() as f64 * p) as usize).min(s.len() - 1)];
        let mean = s.iter().sum::<u64>() as f64 / s.len() as f64;
        println!(
            "| {name} | {} | {} | {} | {} |",
            fmt_ns(pct(0.50) as f64),
            fmt_ns(pct(0.99) as f64),
            fmt_ns(pct(0.999) as f64),
            fmt_ns(mean)
        );
    }

    fn fmt_ns(ns: f64) -> String {
        if ns >= 10_000.0 {
            format!("{:.1} µs", ns / 1000.0)
        } else {
            format!("{ns:.0} ns")
        }
    }

    fn spawn_child(role: &str, extra: &[(&str, String)]) -> std::process::Child {
        let mut cmd = Command::new(std::env::current_exe().expect("bench binary"));
        cmd.env("VDI_BENCH_ROLE", role).stdin(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        if quick() {
            cmd.arg("quick");
        }
        cmd.spawn().expect("spawn bench child")
    }

    fn child(role: &str) {
        let name = std::env::var("VDI_BENCH_SET").expect("set name");
        match role {
            "client" => {
                let spins: u32 = std::env::var("VDI_BENCH_SPINS").unwrap().parse().unwrap();
                let set = ShmClient::with_options(Options::default().spins(spins))
                    .open_secondary(None, &name)
                    .expect("join the set");
                let dev = set.open_device(&name).expect("open device");
                let mut sum = 0u64;
                loop {
                    match dev.command(WAIT) {
                        Ok(cmd) => {
                            if cmd.code() == CommandCode::WRITE {
                                sum = sum.wrapping_add(checksum(cmd.data()));
                            }
                            let n = cmd.size();
                            dev.complete(cmd, Completion::success(n)).expect("complete");
                        }
                        Err(Error::Closed) => break,
                        Err(e) => panic!("client: {e}"),
                    }
                }
                black_box(sum);
                let _ = set.close();
            }
            "cacheline" | "futex" => floor_child(role, &name),
            other => panic!("unknown role {other}"),
        }
    }

    /// A server and a client set for `name`, with the client in a child process joined as a
    /// secondary (the primary here only creates the set, as the backup agent would).
    fn with_pair<R>(
        mts: u32,
        buffers: u32,
        client_spins: u32,
        server: Options,
        body: impl FnOnce(&vdi_shm::ServerSet, &vdi_shm::ServerDevice) -> R,
    ) -> R {
        let name = format!(
            "bench-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        );
        let primary = ShmClient::new()
            .create(None, &name, &ClientConfig::default())
            .expect("create");
        let srv = ShmServer::with_options(server)
            .open(None, &name)
            .expect("open");
        srv.begin_configuration(&ServerConfig::backup(65536, mts))
            .expect("begin");
        srv.request_buffers(mts, 0, buffers).expect("buffers");
        let dev = srv.open_device(&name).expect("device");
        srv.end_configuration().expect("end");
        primary.configuration(WAIT).expect("configured");
        let mut child = spawn_child(
            "client",
            &[
                ("VDI_BENCH_SET", name.clone()),
                ("VDI_BENCH_SPINS", client_spins.to_string()),
            ],
        );
        let r = body(&srv, &dev);
        dev.close().expect("close device");
        assert!(
            child.wait().expect("child").success(),
            "client process failed"
        );
        srv.close().expect("close");
        primary.close().expect("close client");
        r
    }

    fn round_trip(n: usize, client: Options) -> Vec<u64> {
        with_pair(
            65536,
            1,
            client.spins,
            Options::default().spins(1_000_000),
            |_, dev| {
                let mut samples = Vec::with_capacity(n);
                // Warm up, and wait for the client process to be running.
                for _ in 0..1000 {
                    dev.send(ServerCommand::control(CommandCode::FLUSH))
                        .unwrap();
                    dev.completion(WAIT).unwrap();
                }
                for _ in 0..n {
                    let t = Instant::now();
                    dev.send(ServerCommand::control(CommandCode::FLUSH))
                        .unwrap();
                    dev.completion(WAIT).unwrap();
                    samples.push(t.elapsed().as_nanos() as u64);
                }
                samples
            },
        )
    }

    /// Round trips to a client that never spins, each sent after a pause long enough for the
    /// client to be asleep in the kernel (the server spins through the pause, so only the client's
    /// wake-up is measured).
    fn round_trip_asleep(n: usize) -> Vec<u64> {
        with_pair(
            65536,
            1,
            0,
            Options::default().spins(1_000_000),
            |_, dev| {
                let mut samples = Vec::with_capacity(n);
                for i in 0..n + 100 {
                    let pause = Instant::now();
                    while pause.elapsed() < std::time::Duration::from_micros(300) {
                        std::hint::spin_loop();
                    }
                    let t = Instant::now();
                    dev.send(ServerCommand::control(CommandCode::FLUSH))
                        .unwrap();
                    dev.completion(WAIT).unwrap();
                    if i >= 100 {
                        samples.push(t.elapsed().as_nanos() as u64);
                    }
                }
                samples
            },
        )
    }

    fn stream(mts: u32, total: u64) -> f64 {
        let depth = 4;
        let spins: u32 = std::env::var("VDI_BENCH_STREAM_SPINS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2000);
        with_pair(
            mts,
            depth,
            spins,
            Options::default().spins(spins),
            |srv, dev| {
                let mut free: Vec<_> = (0..depth)
                    .map(|_| srv.allocate_buffer(mts, 0).unwrap())
                    .collect();
                let mut sent = 0u64;
                let mut x = 0u64;
                let t = Instant::now();
                while sent < total {
                    let mut b = match free.pop() {
                        Some(b) => b,
                        None => dev.completion(WAIT).unwrap().buffer.unwrap(),
                    };
                    x = fill(b.as_mut_slice(), x);
                    dev.send(ServerCommand::write(b, mts)).unwrap();
                    sent += u64::from(mts);
                }
                while dev.outstanding() > 0 {
                    dev.completion(WAIT).unwrap();
                }
                total as f64 / t.elapsed().as_secs_f64() / 1e9
            },
        )
    }

    /// Writes a running counter into every 8-byte word (about memset speed).
    fn fill(buf: &mut [u8], mut x: u64) -> u64 {
        for w in buf.chunks_exact_mut(8) {
            w.copy_from_slice(&x.to_le_bytes());
            x = x.wrapping_add(1);
        }
        x
    }

    /// Sums every 8-byte word: reads every byte of the buffer.
    fn checksum(buf: &[u8]) -> u64 {
        buf.chunks_exact(8).fold(0u64, |a, w| {
            a.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()))
        })
    }

    /// The slower of fill-alone and checksum-alone over a ring of four buffers of `len` bytes.
    fn pipeline_bound(len: usize) -> f64 {
        let mut bufs = vec![vec![0u8; len]; 4];
        let rounds = (1usize << 30) / len;
        let mut x = 0;
        let t = Instant::now();
        for i in 0..rounds {
            x = fill(&mut bufs[i % 4], x);
        }
        let fill_rate = (rounds * len) as f64 / t.elapsed().as_secs_f64() / 1e9;
        let t = Instant::now();
        let mut s = 0u64;
        for i in 0..rounds {
            s = s.wrapping_add(checksum(&bufs[i % 4]));
        }
        black_box(s);
        let sum_rate = (rounds * len) as f64 / t.elapsed().as_secs_f64() / 1e9;
        fill_rate.min(sum_rate)
    }

    /// Shared memory for the floors: a file in /dev/shm mapped by both processes.
    fn floor_map(name: &str, create: bool) -> memmap2::MmapMut {
        let path = format!("/dev/shm/{name}");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(&path)
            .expect("floor file");
        if create {
            file.set_len(4096).expect("size floor file");
        }
        // SAFETY: the file is private to this benchmark (a unique name in /dev/shm, never resized
        // after creation), and both processes access it only through atomics.
        unsafe { memmap2::MmapMut::map_mut(&file) }.expect("map floor file")
    }

    fn words(map: &memmap2::MmapMut) -> (&AtomicU32, &AtomicU32) {
        let base = map.as_ptr();
        // SAFETY: the mapping is 4096 bytes and page-aligned, so offsets 0 and 128 hold aligned
        // u32s inside it; the memory is only ever accessed atomically, by both processes.
        unsafe {
            (
                &*base.cast::<AtomicU32>(),
                &*base.add(128).cast::<AtomicU32>(),
            )
        }
    }

    fn floor(kind: &str, n: usize) -> Vec<u64> {
        let name = format!("vdi-bench-floor-{}", std::process::id());
        let map = floor_map(&name, true);
        let (ping, pong) = words(&map);
        let mut child = spawn_child(
            kind,
            &[
                ("VDI_BENCH_SET", name.clone()),
                ("VDI_BENCH_N", (n + 1000).to_string()),
            ],
        );
        let mut samples = Vec::with_capacity(n);
        for i in 1..=(n + 1000) as u32 {
            let t = Instant::now();
            ping.store(i, Ordering::Release);
            if kind == "futex" {
                rustix::thread::futex::wake(ping, rustix::thread::futex::Flags::empty(), 1).ok();
                while pong.load(Ordering::Acquire) != i {
                    let _ = rustix::thread::futex::wait(
                        pong,
                        rustix::thread::futex::Flags::empty(),
                        i - 1,
                        None,
                    );
                }
            } else {
                while pong.load(Ordering::Acquire) != i {
                    std::hint::spin_loop();
                }
            }
            if i > 1000 {
                samples.push(t.elapsed().as_nanos() as u64);
            }
        }
        assert!(child.wait().expect("child").success());
        let _ = std::fs::remove_file(format!("/dev/shm/{name}"));
        samples
    }

    fn floor_child(kind: &str, name: &str) {
        let n: u32 = std::env::var("VDI_BENCH_N").unwrap().parse().unwrap();
        let map = floor_map(name, false);
        let (ping, pong) = words(&map);
        for i in 1..=n {
            if kind == "futex" {
                while ping.load(Ordering::Acquire) != i {
                    let _ = rustix::thread::futex::wait(
                        ping,
                        rustix::thread::futex::Flags::empty(),
                        i - 1,
                        None,
                    );
                }
                pong.store(i, Ordering::Release);
                rustix::thread::futex::wake(pong, rustix::thread::futex::Flags::empty(), 1).ok();
            } else {
                while ping.load(Ordering::Acquire) != i {
                    std::hint::spin_loop();
                }
                pong.store(i, Ordering::Release);
            }
        }
        let _ = AtomicU64::new(0);
    }
}
