//! A small VDI client for the engine's tests: creates a set, serves every device on its own
//! thread (keeping a backup's stream in memory, or serving a stream back for a restore), and
//! records what each device saw. Also runs the `vdi-engine` binary as a separate process. Set
//! names, tracing and the child process's lifetime come from `vdi-testkit`.

#![allow(dead_code, reason = "each test file uses a part of the support module")]

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use vdi_core::{
    ClientBackend, ClientCommand, ClientConfig, ClientDevice, ClientDeviceSet, CommandCode,
    Completion, CompletionCode, Config, Error, Features, Timeout,
};
use vdi_engine::{
    database::Database,
    format::{Header, chunk_count},
};
use vdi_shm::{ClientSet, ShmClient};
use vdi_testkit::ChildProc;
pub(crate) use vdi_testkit::init_tracing;

/// The bound of every wait in a test: a hang fails instead of blocking.
pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// A set name unique to this process and call (`vdi-engine-test-<tag>-<pid>-<n>`).
pub(crate) fn unique(tag: &str) -> String {
    vdi_testkit::unique_name("vdi-engine-test", tag)
}

/// Creates a set of `devices` devices with `features` and `server_timeout` (ms).
pub(crate) fn create(
    name: &str,
    devices: u32,
    features: Features,
    server_timeout: u32,
) -> ClientSet {
    let cfg = ClientConfig {
        device_count: devices,
        features,
        server_timeout,
        ..ClientConfig::default()
    };
    ShmClient::new()
        .create(None, name, &cfg)
        .expect("create the device set")
}

/// How a device ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// `VD_E_CLOSE`: the normal end.
    Closed,
    /// `VD_E_ABORT`.
    Aborted,
    /// The test's own bound ran out.
    GaveUp,
    /// Another error.
    Failed(Error),
}

/// What one device saw.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// The codes of the commands, in the order received.
    pub(crate) codes: Vec<CommandCode>,
    /// The sizes of the Reads, in order.
    pub(crate) read_sizes: Vec<u32>,
    /// A backup: the stream written. A restore: unused.
    pub(crate) stream: Vec<u8>,
    /// A restore: the bytes served.
    pub(crate) served: u64,
    /// How the device ended.
    pub(crate) end: End,
}

impl Seen {
    /// A device that saw nothing and ended as `end`.
    fn ending(end: End) -> Self {
        Self {
            codes: Vec::new(),
            read_sizes: Vec::new(),
            stream: Vec::new(),
            served: 0,
            end,
        }
    }

    /// How many commands of `code` the device saw.
    pub(crate) fn count(&self, code: CommandCode) -> usize {
        self.codes.iter().filter(|&&c| c == code).count()
    }
}

/// How the client behaves.
#[derive(Clone)]
pub(crate) struct Behaviour {
    /// A restore: the stream served on each device (by device index).
    pub(crate) streams: Vec<Vec<u8>>,
    /// The answer to commands other than Read, Write, Flush, ClearError and Complete.
    pub(crate) unsupported: Completion,
    /// A backup: answer the Write with this index (counted from 0 per device) with this.
    pub(crate) fail_write: Option<(usize, Completion)>,
    /// A restore: the answer to reads after the one that met the end.
    pub(crate) after_eof: Completion,
    /// A restore: the code of the read that meets the end.
    pub(crate) eof_code: CompletionCode,
    /// A restore: hold the first read after the header until the next read arrives, then
    /// complete the later one first (checks prefetch and out-of-order completions).
    pub(crate) hold_second_read: bool,
    /// Call SignalAbort on the set after this many commands on device 0.
    pub(crate) abort_after: Option<usize>,
    /// Serve the devices one after another instead of at once.
    pub(crate) in_turn: bool,
    /// How long one GetCommand waits.
    pub(crate) poll: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            streams: Vec::new(),
            unsupported: Completion::not_supported(),
            fail_write: None,
            after_eof: Completion::eof(0),
            eof_code: CompletionCode::HANDLE_EOF,
            hold_second_read: false,
            abort_after: None,
            in_turn: false,
            poll: Duration::from_millis(100),
        }
    }
}

impl Behaviour {
    /// Serves `streams` back for a restore.
    pub(crate) fn restore(streams: Vec<Vec<u8>>) -> Self {
        Self {
            streams,
            ..Self::default()
        }
    }
}

/// Waits for the configuration, opens every device and serves them as `b` says; returns what
/// each device saw, in device order, with the configuration. `devices` is the count the set was
/// created with: an engine that aborts before this (slow) client has read the configuration
/// leaves no configuration (`None`) and every device `End::Aborted`, as the protocol allows.
pub(crate) fn serve(
    set: &ClientSet,
    name: &str,
    devices: u32,
    b: &Behaviour,
) -> (Option<Config>, Vec<Seen>) {
    let cfg = match set.configuration(Timeout::from(WAIT)) {
        Ok(cfg) => cfg,
        Err(Error::Aborted(_)) => {
            let _ = set.close();
            let aborted = (0..devices).map(|_| Seen::ending(End::Aborted)).collect();
            return (None, aborted);
        }
        Err(e) => panic!("the engine configures the set: {e:?}"),
    };
    // A device the engine aborted before it was opened ends `Aborted` without being served.
    let devices: Vec<_> = (0..cfg.device_count)
        .map(
            |i| match set.open_device(&vdi_core::stripe_device_name(name, i)) {
                Ok(d) => Ok(d),
                Err(Error::Aborted(_)) => Err(Seen::ending(End::Aborted)),
                Err(e) => panic!("open device {i}: {e:?}"),
            },
        )
        .collect();
    let serve_one = |d: &Result<vdi_shm::ClientDevice, Seen>| match d {
        Ok(d) => serve_device(set, d, b),
        Err(aborted) => aborted.clone(),
    };
    let seen = if b.in_turn {
        devices.iter().map(serve_one).collect()
    } else {
        thread::scope(|s| {
            let handles: Vec<_> = devices
                .iter()
                .map(|d| s.spawn(move || serve_one(d)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("device thread"))
                .collect()
        })
    };
    let _ = set.close();
    (Some(cfg), seen)
}

fn serve_device(set: &ClientSet, dev: &vdi_shm::ClientDevice, b: &Behaviour) -> Seen {
    let index = dev.index() as usize;
    let mut seen = Seen::ending(End::GaveUp);
    let empty = Vec::new();
    let source = b.streams.get(index).unwrap_or(&empty);
    let mut pos = 0usize;
    let mut eof = false;
    let mut writes = 0usize;
    let mut held: Option<(vdi_shm::Command, Completion)> = None;
    let deadline = Instant::now() + WAIT;
    let timeout = Timeout::from(b.poll);
    // Fills a read from the stream; returns its completion.
    let fill = |cmd: &mut vdi_shm::Command, pos: &mut usize, eof: &mut bool| -> Completion {
        if *eof {
            return b.after_eof;
        }
        let want = cmd.size() as usize;
        let n = want.min(source.len() - *pos);
        cmd.data_mut()[..n].copy_from_slice(&source[*pos..*pos + n]);
        *pos += n;
        if n < want {
            *eof = true;
            Completion {
                code: b.eof_code,
                bytes_transferred: n as u32,
                position: 0,
            }
        } else {
            Completion::success(n as u32)
        }
    };
    loop {
        if Instant::now() > deadline {
            break;
        }
        let mut cmd = match dev.command(timeout) {
            Ok(c) => c,
            Err(Error::Timeout) => continue,
            Err(Error::Closed) => {
                seen.end = End::Closed;
                break;
            }
            Err(Error::Aborted(_)) => {
                seen.end = End::Aborted;
                break;
            }
            Err(e) => {
                seen.end = End::Failed(e);
                break;
            }
        };
        seen.codes.push(cmd.code());
        if index == 0 && b.abort_after == Some(seen.codes.len()) {
            set.signal_abort().expect("SignalAbort");
        }
        let completion = match cmd.code() {
            CommandCode::WRITE => {
                let c = match b.fail_write {
                    Some((n, c)) if n == writes => c,
                    _ => {
                        seen.stream.extend_from_slice(cmd.data());
                        Completion::success(cmd.size())
                    }
                };
                writes += 1;
                c
            }
            CommandCode::READ => {
                seen.read_sizes.push(cmd.size());
                if b.hold_second_read && seen.read_sizes.len() == 2 && held.is_none() {
                    // Fill it now (stream order); complete it after the next read.
                    let c = fill(&mut cmd, &mut pos, &mut eof);
                    seen.served = pos as u64;
                    held = Some((cmd, c));
                    continue;
                }
                let c = fill(&mut cmd, &mut pos, &mut eof);
                seen.served = pos as u64;
                c
            }
            CommandCode::FLUSH | CommandCode::CLEAR_ERROR | CommandCode::COMPLETE => {
                Completion::success(0)
            }
            _ => b.unsupported,
        };
        if dev.complete(cmd, completion).is_err() {
            // The set was aborted: GetCommand says so next.
            continue;
        }
        if let Some((h, c)) = held.take() {
            let _ = dev.complete(h, c);
        }
    }
    seen
}

/// The stream the engine writes to device `index` of `devices` for a database of `size` bytes
/// (already a multiple of `block`) from `seed`.
pub(crate) fn expected_stream(
    seed: u64,
    size: u64,
    devices: u32,
    index: u32,
    block: u32,
    mts: u32,
) -> Vec<u8> {
    let h = Header::for_device(seed, size, devices, index, block, mts);
    let layout = h.layout();
    let db = Database::new(seed, size);
    let mut v = h.to_block();
    for k in 0..h.chunks {
        let (off, len) = layout.chunk(k);
        let start = v.len();
        v.resize(start + len as usize, 0);
        db.fill(off, &mut v[start..]);
    }
    let start = v.len();
    v.resize(start + block as usize, 0);
    layout.trailer().encode(&mut v[start..]);
    assert_eq!(v.len() as u64, layout.stream_len());
    assert!(chunk_count(size, mts) >= h.chunks);
    v
}

/// The `vdi-engine` binary running in its own process, its output going to files; killed
/// when dropped.
pub(crate) struct Engine {
    proc: ChildProc,
    out: PathBuf,
    err: PathBuf,
}

/// How an engine process ended.
#[derive(Debug)]
pub(crate) struct Exit {
    /// The exit code.
    pub(crate) code: Option<i32>,
    /// Its stdout.
    pub(crate) stdout: String,
    /// Its stderr.
    pub(crate) stderr: String,
}

impl Engine {
    /// Starts `vdi-engine args…`.
    pub(crate) fn start(args: &[&str]) -> Self {
        let dir = std::env::temp_dir();
        let tag = unique("out");
        let out = dir.join(format!("{tag}.stdout"));
        let err = dir.join(format!("{tag}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_vdi-engine"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).expect("stdout file"))
            .stderr(fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("start vdi-engine");
        Self {
            proc: ChildProc::from(child),
            out,
            err,
        }
    }

    /// Waits for the process to end (killing it after [`WAIT`]).
    pub(crate) fn wait(mut self) -> Exit {
        let status = self
            .proc
            .wait_within(WAIT)
            .unwrap_or_else(|| panic!("vdi-engine did not end within {WAIT:?}"));
        let exit = Exit {
            code: status.code(),
            stdout: fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: fs::read_to_string(&self.err).unwrap_or_default(),
        };
        if exit.code != Some(0) {
            eprintln!("vdi-engine exited {:?}: {}", exit.code, exit.stderr);
        }
        exit
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The process, if still running, is killed as `proc` drops, after this.
        let _ = fs::remove_file(&self.out);
        let _ = fs::remove_file(&self.err);
    }
}

/// A backup through the `vdi-engine` process: creates the set, starts the engine with `args`
/// (after `backup --set NAME`), serves the devices; returns the engine's exit, the
/// configuration (`None` if the engine aborted before it was read) and what each device saw.
pub(crate) fn backup_process(
    tag: &str,
    devices: u32,
    features: Features,
    args: &[&str],
    b: &Behaviour,
) -> (Exit, Option<Config>, Vec<Seen>) {
    let name = unique(tag);
    let set = create(&name, devices, features, 0);
    let mut all = vec!["backup", "--set", name.as_str()];
    all.extend_from_slice(args);
    let engine = Engine::start(&all);
    let (cfg, seen) = serve(&set, &name, devices, b);
    (engine.wait(), cfg, seen)
}

/// A restore through the `vdi-engine` process, serving `b.streams`.
pub(crate) fn restore_process(tag: &str, args: &[&str], b: &Behaviour) -> (Exit, Vec<Seen>) {
    let name = unique(tag);
    let set = create(&name, b.streams.len() as u32, Features::LIKE_PIPE, 0);
    let mut all = vec!["restore", "--set", name.as_str()];
    all.extend_from_slice(args);
    let engine = Engine::start(&all);
    let (_, seen) = serve(&set, &name, b.streams.len() as u32, b);
    (engine.wait(), seen)
}
