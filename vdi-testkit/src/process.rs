//! Child processes in a role: the test binary re-run to run one of its tests as a peer, the
//! lines parent and child send each other, and the small things around them (set names,
//! tracing, a watchdog).

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

/// The environment variable that holds a child's role.
const ROLE_VAR: &str = "VDI_ROLE";

/// The tag before each message a child writes for its parent on stdout; the test harness's own
/// output on the same stream lacks it.
pub const MSG_TAG: &str = "@vdi-msg ";

/// A set name unique to this process and call: `<prefix>-<tag>-<pid>-<n>`.
///
/// Each crate's tests keep a prefix of their own, so that the sets of two test binaries running
/// at once never meet, and a search for what a set left behind finds only that set's.
pub fn unique_name(prefix: &str, tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{tag}-{}-{n}", std::process::id())
}

/// Turns on tracing output for the test (`RUST_LOG`, default `warn`); a second call does
/// nothing.
pub fn init_tracing() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// The role this process was started in (`VDI_ROLE`), if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// A parameter passed to a child (an environment variable).
///
/// # Panics
///
/// If the parent did not pass `key`.
pub fn param(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("child parameter {key} missing"))
}

/// A numeric parameter passed to a child.
///
/// # Panics
///
/// If the parent did not pass `key`, or passed something other than a number.
pub fn param_u64(key: &str) -> u64 {
    param(key)
        .parse()
        .unwrap_or_else(|_| panic!("child parameter {key} is not a number"))
}

/// The command that re-runs this test binary for test `test` alone, in `role`, with `params`
/// as environment variables; the caller chooses stdin and stdout.
fn child_command(test: &str, role: &str, params: &[(&str, String)]) -> Command {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE_VAR, role);
    for (k, v) in params {
        cmd.env(k, v);
    }
    cmd
}

/// A child process running test `test` of this binary in `role`; killed when dropped.
#[derive(Debug)]
pub struct ChildProc {
    child: Option<Child>,
}

impl ChildProc {
    /// Starts the child, its stdin empty and its stdout the parent's.
    ///
    /// # Panics
    ///
    /// If the child cannot be started.
    pub fn spawn(test: &str, role: &str, params: &[(&str, String)]) -> Self {
        let mut cmd = child_command(test, role, params);
        cmd.stdin(Stdio::null());
        Self::from(cmd.spawn().expect("spawn child test process"))
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Waits for the child to exit, at most `limit`.
    ///
    /// # Panics
    ///
    /// If the child is still running after `limit` (it is killed first).
    pub fn wait(mut self, limit: Duration) -> ExitStatus {
        self.wait_within(limit)
            .unwrap_or_else(|| panic!("child process did not exit within {limit:?}"))
    }

    /// Waits for the child to exit, at most `limit`; `None` if it was still running then, and
    /// has been killed and reaped since.
    ///
    /// # Panics
    ///
    /// If the child was already waited for.
    pub fn wait_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the child (SIGKILL on Unix, TerminateProcess on Windows) and reaps it.
    pub fn kill(mut self) {
        self.kill_and_reap();
    }

    fn kill_and_reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl From<Child> for ChildProc {
    /// Takes charge of a child started otherwise (another program, or other pipes): it is
    /// killed when dropped as well.
    fn from(child: Child) -> Self {
        Self { child: Some(child) }
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// A child process (as [`ChildProc`]) whose stdin and stdout are pipes to the parent: the
/// parent sends it lines with [`PipedChild::send`] and reads its messages with
/// [`PipedChild::recv`]; the child uses [`tell_parent`] and [`from_parent`]. Whatever else the
/// child writes to stdout goes to the parent's stderr, marked with the child's pid.
#[derive(Debug)]
pub struct PipedChild {
    proc: ChildProc,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl PipedChild {
    /// Starts the child with piped stdin and stdout; killed when dropped.
    ///
    /// # Panics
    ///
    /// If the child cannot be started.
    pub fn spawn(test: &str, role: &str, params: &[(&str, String)]) -> Self {
        let mut cmd = child_command(test, role, params);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn child test process");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("child stdout");
        let pid = child.id();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness may have begun the line ("test child ... ").
                if let Some((_, msg)) = line.split_once(MSG_TAG) {
                    if tx.send(msg.to_owned()).is_err() {
                        break;
                    }
                } else if !line.is_empty() {
                    eprintln!("[child {pid}] {line}");
                }
            }
        });
        Self {
            proc: ChildProc::from(child),
            stdin,
            lines,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// Sends the child one line (no newline in `line`).
    ///
    /// # Panics
    ///
    /// If `line` holds a newline, or the child's stdin is closed.
    pub fn send(&mut self, line: &str) {
        assert!(!line.contains('\n'), "one line at a time");
        let stdin = self.stdin.as_mut().expect("child stdin open");
        writeln!(stdin, "{line}").expect("write to child stdin");
        stdin.flush().expect("flush child stdin");
    }

    /// The child's next message.
    ///
    /// # Panics
    ///
    /// If none comes within `limit`, or the child ends first.
    pub fn recv(&self, limit: Duration) -> String {
        match self.lines.recv_timeout(limit) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("child {} sent nothing within {limit:?}", self.pid())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("child {} ended without the message expected", self.pid())
            }
        }
    }

    /// Waits for the child's next message and checks that it is `expected`.
    ///
    /// # Panics
    ///
    /// As [`PipedChild::recv`], and if the message is another.
    pub fn expect(&self, expected: &str, limit: Duration) {
        let got = self.recv(limit);
        assert_eq!(
            got,
            expected,
            "unexpected message from child {}",
            self.pid()
        );
    }

    /// Closes the child's stdin (it reads end of file), then waits for it to exit, at most
    /// `limit`.
    ///
    /// # Panics
    ///
    /// If the child is still running after `limit` (it is killed first).
    pub fn wait(mut self, limit: Duration) -> ExitStatus {
        drop(self.stdin.take());
        self.proc.wait(limit)
    }

    /// Kills the child (SIGKILL on Unix, TerminateProcess on Windows) and reaps it.
    pub fn kill(self) {
        self.proc.kill();
    }
}

/// In a child: sends `msg` (one line) to the parent on stdout.
///
/// # Panics
///
/// If `msg` holds a newline, or stdout is closed.
pub fn tell_parent(msg: &str) {
    assert!(!msg.contains('\n'), "one line at a time");
    let mut out = std::io::stdout().lock();
    writeln!(out, "{MSG_TAG}{msg}").expect("write to parent");
    out.flush().expect("flush to parent");
}

/// In a child: the next line the parent sent on stdin; `None` at end of file.
pub fn from_parent() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end_matches('\n').to_owned()),
    }
}

/// Fails the whole test process if it is still running after `limit` (a watchdog: a deadlock
/// becomes a failure, not a hung CI job): prints why and exits with status 101.
pub fn watchdog(limit: Duration) {
    thread::spawn(move || {
        thread::sleep(limit);
        eprintln!("watchdog: test still running after {limit:?}; aborting");
        std::process::exit(101);
    });
}
