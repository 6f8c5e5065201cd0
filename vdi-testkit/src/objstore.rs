//! Real object-storage servers for tests: S3 ([`S3Server`]: moto or s3s-fs) and Azure Blob
//! ([`Azurite`]), each started on `127.0.0.1` on a free port, in a temporary directory of its
//! own, and killed when dropped.
//!
//! The servers are installed by `cargo xtask objstore-test` under `target/objstore/`, which
//! names them to the tests in environment variables ([`objstore_tools`]). A plain `cargo test`
//! has none of them: [`objstore_tools`] then returns `None` and the test prints a skip line and
//! returns, unless [`OBJSTORE_REQUIRED_ENV`] is set (as the xtask stage sets it), when a missing
//! tool fails the test.
//!
//! ```no_run
//! use vdi_testkit::{S3Server, objstore_tools};
//!
//! let Some(tools) = objstore_tools() else {
//!     println!("skipping: no object-storage servers; run cargo xtask objstore-test");
//!     return;
//! };
//! let s3 = S3Server::moto(&tools);
//! s3.create_bucket("backups");
//! s3.put_object("backups", "a/b", b"data");
//! assert_eq!(s3.objects("backups", "a/"), vec![("a/b".to_owned(), 4)]);
//! ```
//!
//! - moto checks credentials: it is started with its IAM checks off, a user with an access key
//!   and an allow-all policy is made, and the checks are turned on (`/moto-api/reset-auth` with
//!   a count of 0, the server-side form of `INITIAL_NO_AUTH_ACTION_COUNT=0`). From then on every
//!   request must be signed with [`S3Server::access_key`] and [`S3Server::secret_key`]. moto
//!   keeps its data in memory: [`S3Server::restart`] brings back the same credentials (moto's
//!   random generator is seeded), the same port and no data.
//! - s3s-fs checks signatures against the one key pair it is given, and keeps its data in a
//!   directory, which survives [`S3Server::restart`].
//! - Azurite checks Shared Key signatures with the well-known `devstoreaccount1` key, keeps its
//!   data in a directory (surviving [`Azurite::restart`], but not all of it a SIGKILL: see
//!   [`Azurite::kill`]), and runs with its telemetry off.
//!
//! The helpers that look at or change what a server stores ([`S3Server::objects`],
//! [`S3Server::put_object`], ...) run a small Python script (`objstore_helper.py`, with boto3
//! and azure-storage-blob from the same venv as moto), each call bounded by
//! [`HELPER_TIMEOUT`].
//!
//! Every failure panics with what the server wrote to its log (kept in the temporary directory).

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Set (to anything) when the object-storage tests must run: a missing tool then fails them
/// instead of skipping them. `cargo xtask objstore-test` sets it.
pub const OBJSTORE_REQUIRED_ENV: &str = "VDI_OBJSTORE_REQUIRED";
/// The path of moto's `moto_server`.
pub const MOTO_SERVER_ENV: &str = "VDI_MOTO_SERVER";
/// The path of the `s3s-fs` binary.
pub const S3S_FS_ENV: &str = "VDI_S3S_FS";
/// The path of Azurite's `azurite-blob`.
pub const AZURITE_BLOB_ENV: &str = "VDI_AZURITE_BLOB";
/// The python of the venv that holds moto, boto3 and azure-storage-blob.
pub const OBJSTORE_PYTHON_ENV: &str = "VDI_OBJSTORE_PYTHON";

/// The longest wait for a server to answer HTTP after it is started.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest wait for one helper call ([`S3Server::objects`], ...).
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest wait for a server to exit after SIGTERM ([`S3Server::restart`]).
pub const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The pause between two readiness probes.
const POLL: Duration = Duration::from_millis(50);
/// How much of a log a panic message shows.
const LOG_TAIL: usize = 4000;

/// The helper script, run as `python -c`.
const HELPER: &str = include_str!("objstore_helper.py");

/// The Azurite storage account (the emulator's well-known one).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// The well-known key of [`AZURITE_ACCOUNT`], published with the emulator.
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The installed servers, as `cargo xtask objstore-test` names them.
#[derive(Debug, Clone)]
pub struct ObjstoreTools {
    /// moto's `moto_server` ([`MOTO_SERVER_ENV`]).
    pub moto_server: PathBuf,
    /// The `s3s-fs` binary ([`S3S_FS_ENV`]).
    pub s3s_fs: PathBuf,
    /// Azurite's `azurite-blob` ([`AZURITE_BLOB_ENV`]).
    pub azurite_blob: PathBuf,
    /// The venv's python, with boto3 and azure-storage-blob ([`OBJSTORE_PYTHON_ENV`]).
    pub python: PathBuf,
}

/// The installed servers named by the environment, or `None` when none is named and
/// [`OBJSTORE_REQUIRED_ENV`] is not set (a plain `cargo test`: the caller prints a skip line
/// naming `cargo xtask objstore-test` and returns).
///
/// # Panics
///
/// When some are named and others not, when a named file does not exist, or when
/// [`OBJSTORE_REQUIRED_ENV`] is set and any is missing.
pub fn objstore_tools() -> Option<ObjstoreTools> {
    let vars = [
        MOTO_SERVER_ENV,
        S3S_FS_ENV,
        AZURITE_BLOB_ENV,
        OBJSTORE_PYTHON_ENV,
    ];
    let values: Vec<Option<PathBuf>> = vars
        .iter()
        .map(|v| {
            std::env::var_os(v)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .collect();
    let required = std::env::var_os(OBJSTORE_REQUIRED_ENV).is_some();
    let missing: Vec<&str> = vars
        .iter()
        .zip(&values)
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| *n)
        .collect();
    if missing.len() == vars.len() && !required {
        return None;
    }
    assert!(
        missing.is_empty(),
        "object-storage tools missing from the environment: {} (run cargo xtask objstore-test)",
        missing.join(", ")
    );
    for (name, path) in vars.iter().zip(&values) {
        let path = path.as_ref().expect("checked above");
        assert!(
            path.is_file(),
            "{name}={} does not exist (run cargo xtask objstore-test)",
            path.display()
        );
    }
    let mut values = values.into_iter().map(|v| v.expect("checked above"));
    Some(ObjstoreTools {
        moto_server: values.next().expect("four values"),
        s3s_fs: values.next().expect("four values"),
        azurite_blob: values.next().expect("four values"),
        python: values.next().expect("four values"),
    })
}

/// A fresh directory under the system's temporary directory, removed by [`Drop`].
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "vdi-objstore-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A port on 127.0.0.1 that was free a moment ago: bound, read and released.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

/// The last [`LOG_TAIL`] bytes of a log, for panic messages.
fn tail(path: &Path) -> String {
    let text = fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(LOG_TAIL);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

/// One plain HTTP/1.0 request to `addr` (`Connection: close`), bounded by `timeout`; the
/// status code and body.
fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let head = format!(
        "{method} {target} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:.200}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A server process: how to start it, and the running child.
#[derive(Debug)]
struct Proc {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
}

impl Proc {
    /// Starts the server on `addr` and waits (up to [`START_TIMEOUT`]) until it answers
    /// HTTP.
    fn start(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("{}: {e}", self.log.display()));
        let err = log.try_clone().expect("clone log file");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if http(self.addr, "GET", "/", b"", Duration::from_secs(2)).is_ok() {
                return;
            }
            let child = self.child.as_mut().expect("started");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                panic!(
                    "{} exited ({status}) before answering on {}; its log:\n{}",
                    self.name,
                    self.addr,
                    tail(&self.log)
                );
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "{} did not answer on {} within {START_TIMEOUT:?}; its log:\n{}",
                    self.name,
                    self.addr,
                    tail(&self.log)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// SIGKILL, and the wait for the child.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, so that the server saves what it holds in memory and exits, and the wait for
    /// it (up to [`SERVER_STOP_TIMEOUT`], then SIGKILL).
    fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        // std has SIGKILL only; `kill` is procps' (or the shell's) command.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + SERVER_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return;
            }
            thread::sleep(POLL);
        }
        self.kill();
    }

    /// Stops the server (gracefully, if it still runs) and starts it again on the same port:
    /// a few tries while the old socket is released.
    fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpListener::bind(self.addr).is_err() && Instant::now() < deadline {
            thread::sleep(POLL);
        }
        self.start();
    }

    fn panic_with_log(&self, what: &str) -> ! {
        panic!("{what}; {} log:\n{}", self.name, tail(&self.log))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the helper script with `env` and `args`, `input` on its stdin, bounded by
/// [`HELPER_TIMEOUT`]; its stdout, or `Err` with its stderr.
fn run_helper(
    python: &Path,
    env: &[(&str, String)],
    args: &[&str],
    input: &[u8],
) -> Result<Vec<u8>, String> {
    let mut cmd = Command::new(python);
    cmd.arg("-c")
        .arg(HELPER)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let mut stdin = child.stdin.take().expect("piped");
    let input = input.to_vec();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().expect("piped");
    let out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let mut stderr = child.stderr.take().expect("piped");
    let err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + HELPER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the helper") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("object-storage helper {args:?} ran past {HELPER_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if status.success() {
        Ok(out)
    } else {
        Err(format!(
            "helper {args:?} failed ({status}):\n{}",
            String::from_utf8_lossy(&err)
        ))
    }
}

/// Lines of `name<TAB>size` into pairs.
fn parse_pairs(out: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect()
}

fn parse_sizes(out: &[u8]) -> Vec<(String, u64)> {
    parse_pairs(out)
        .into_iter()
        .map(|(k, s)| {
            let n = s.parse().unwrap_or_else(|_| panic!("size {s:?} of {k}"));
            (k, n)
        })
        .collect()
}

/// One line of a capability probe ([`S3Server::probe`], [`Azurite::probe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    /// What was tried.
    pub what: String,
    /// Whether the server behaved as the real service does.
    pub supported: bool,
    /// What it answered.
    pub detail: String,
}

fn parse_probe(out: &[u8]) -> Vec<Capability> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, '\t');
            Some(Capability {
                what: f.next()?.to_owned(),
                supported: f.next()? == "yes",
                detail: f.next().unwrap_or("").to_owned(),
            })
        })
        .collect()
}

/// Which S3 server.
#[derive(Debug, Clone, PartialEq, Eq)]
enum S3Kind {
    Moto,
    /// s3s-fs, with its data directory.
    S3sFs(PathBuf),
}

/// Decodes unpadded URL-safe base64 (s3s-fs's file names).
fn base64_url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The open multipart uploads in an s3s-fs data directory, which 0.14.1 cannot list
/// (ListMultipartUploads answers 501): each has `.upload-<id>.json`, and
/// `.bucket-<b64>.object-<b64>.upload-<id>.metadata.json` names its bucket and key.
fn s3s_fs_uploads(root: &Path, bucket: &str) -> Vec<(String, String)> {
    let decode = |s: &str| base64_url_decode(s).map(|b| String::from_utf8_lossy(&b).into_owned());
    let mut out: Vec<(String, String)> = fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| {
            let rest = name
                .strip_prefix(".bucket-")?
                .strip_suffix(".metadata.json")?;
            let (b, rest) = rest.split_once(".object-")?;
            let (k, id) = rest.split_once(".upload-")?;
            let open = root.join(format!(".upload-{id}.json")).exists();
            (open && decode(b)? == bucket).then(|| Some((decode(k)?, id.to_owned())))?
        })
        .collect();
    out.sort();
    out
}

/// An S3-compatible server on 127.0.0.1 (moto or s3s-fs) that checks request signatures;
/// dropping it kills the server and waits for it.
///
/// For object_store's `AmazonS3Builder`: `.with_endpoint(s3.endpoint())` (or a
/// [`FaultProxy`](crate::FaultProxy)'s, in front of it) `.with_allow_http(true)
/// .with_access_key_id(s3.access_key()).with_secret_access_key(s3.secret_key())
/// .with_region(s3.region()).with_bucket_name(..)`, and `.with_conditional_put(
/// S3ConditionalPut::ETagMatch)` for `PutMode::Create` and `Update` (both servers honour
/// `If-None-Match: *` and `If-Match`). Checked with object_store 0.14.2 against both servers,
/// directly and through the proxy.
#[derive(Debug)]
pub struct S3Server {
    kind: S3Kind,
    proc: Proc,
    python: PathBuf,
    access_key: String,
    secret_key: String,
    // Declared last: dropped after the process that writes to it.
    _dir: TempDir,
}

/// The seed of moto's random generator, so that a restarted moto hands out the same key.
const MOTO_SEED: u32 = 20_261_207;

impl S3Server {
    /// moto (`moto_server`), with its IAM checks on: a request signed with anything but
    /// [`access_key`](Self::access_key) and [`secret_key`](Self::secret_key) is refused (403).
    ///
    /// # Panics
    ///
    /// If it does not start, or the user and key cannot be made.
    pub fn moto(tools: &ObjstoreTools) -> Self {
        let dir = TempDir::new("moto");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let proc = Proc {
            name: "moto_server",
            program: tools.moto_server.clone(),
            args: vec![
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                addr.port().to_string(),
            ],
            env: vec![("PYTHONUNBUFFERED".into(), "1".into())],
            log: dir.0.join("moto.log"),
            addr,
            child: None,
        };
        let mut s = Self {
            kind: S3Kind::Moto,
            proc,
            python: tools.python.clone(),
            access_key: String::new(),
            secret_key: String::new(),
            _dir: dir,
        };
        s.proc.start();
        s.moto_setup();
        s
    }

    /// Makes moto's user and key, then turns its checks on.
    fn moto_setup(&mut self) {
        let addr = self.proc.addr;
        let post =
            |target: &str, body: &[u8]| match http(addr, "POST", target, body, HELPER_TIMEOUT) {
                Ok((200, _)) => {}
                Ok((status, body)) => self
                    .proc
                    .panic_with_log(&format!("moto {target}: {status} {body:.300}")),
                Err(e) => self.proc.panic_with_log(&format!("moto {target}: {e}")),
            };
        post(&format!("/moto-api/seed?a={MOTO_SEED}"), b"");
        // Checks off for the setup (a restarted moto starts with them off again).
        post("/moto-api/reset-auth", b"inf");
        let out = self
            .helper(&["iam-setup"], b"")
            .unwrap_or_else(|e| self.proc.panic_with_log(&e));
        let line = String::from_utf8_lossy(&out).trim().to_owned();
        let (key, secret) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("moto iam-setup printed {line:?}"));
        if !self.access_key.is_empty() && (key != self.access_key || secret != self.secret_key) {
            panic!(
                "the restarted moto handed out another key ({key}, not {})",
                self.access_key
            );
        }
        self.access_key = key.to_owned();
        self.secret_key = secret.to_owned();
        post("/moto-api/reset-auth", b"0");
    }

    /// s3s-fs, serving the directory `root` (made if missing) with one key pair, whose
    /// signatures it checks. What it stores stays in `root`, across [`restart`](Self::restart)
    /// and across servers.
    ///
    /// # Panics
    ///
    /// If it does not start.
    pub fn s3s_fs(tools: &ObjstoreTools, root: &Path) -> Self {
        fs::create_dir_all(root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
        let dir = TempDir::new("s3s-fs");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let access_key = "VDITESTS3SFSKEY".to_owned();
        let secret_key = "vdi-test-s3s-fs-secret".to_owned();
        let proc = Proc {
            name: "s3s-fs",
            program: tools.s3s_fs.clone(),
            args: vec![
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                addr.port().to_string(),
                "--access-key".into(),
                access_key.clone(),
                "--secret-key".into(),
                secret_key.clone(),
                root.display().to_string(),
            ],
            env: vec![],
            log: dir.0.join("s3s-fs.log"),
            addr,
            child: None,
        };
        let mut s = Self {
            kind: S3Kind::S3sFs(root.to_path_buf()),
            proc,
            python: tools.python.clone(),
            access_key,
            secret_key,
            _dir: dir,
        };
        s.proc.start();
        s
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.proc.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.proc.addr
    }

    /// The access key id it accepts.
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The secret key it accepts.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The region to sign for (`us-east-1`).
    pub fn region(&self) -> &str {
        "us-east-1"
    }

    /// Its log so far (stdout and stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.proc.log).unwrap_or_default()
    }

    /// Kills the server now (SIGKILL), as a crash would; [`restart`](Self::restart) starts it
    /// again.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Stops the server if it runs (SIGTERM, waiting up to [`SERVER_STOP_TIMEOUT`]) and starts
    /// it again on the same port with the same credentials. s3s-fs keeps its data; moto starts
    /// empty.
    ///
    /// # Panics
    ///
    /// If it does not start again.
    pub fn restart(&mut self) {
        self.proc.restart();
        if self.kind == S3Kind::Moto {
            self.moto_setup();
        }
    }

    fn env(&self, endpoint: &str) -> Vec<(&'static str, String)> {
        vec![
            ("OBJ_KIND", "s3".into()),
            ("OBJ_ENDPOINT", endpoint.to_owned()),
            ("OBJ_KEY", self.access_key.clone()),
            ("OBJ_SECRET", self.secret_key.clone()),
            ("OBJ_REGION", self.region().to_owned()),
        ]
    }

    fn helper(&self, args: &[&str], input: &[u8]) -> Result<Vec<u8>, String> {
        self.helper_at(&self.endpoint(), args, input)
    }

    fn helper_at(&self, endpoint: &str, args: &[&str], input: &[u8]) -> Result<Vec<u8>, String> {
        run_helper(&self.python, &self.env(endpoint), args, input)
    }

    fn must(&self, args: &[&str], input: &[u8]) -> Vec<u8> {
        self.helper(args, input)
            .unwrap_or_else(|e| self.proc.panic_with_log(&e))
    }

    /// Creates a bucket.
    ///
    /// # Panics
    ///
    /// If the server refuses.
    pub fn create_bucket(&self, name: &str) {
        self.must(&["create", name], b"");
    }

    /// The objects under `prefix` in `bucket`: key and size, in key order.
    ///
    /// # Panics
    ///
    /// If the listing fails.
    pub fn objects(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        parse_sizes(&self.must(&["list", bucket, prefix], b""))
    }

    /// The bytes of an object.
    ///
    /// # Panics
    ///
    /// If it cannot be read.
    pub fn get_object(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.must(&["get", bucket, key], b"")
    }

    /// Stores `data` as `key` (a whole object, replacing any: a shorter one truncates it).
    ///
    /// # Panics
    ///
    /// If the server refuses.
    pub fn put_object(&self, bucket: &str, key: &str, data: &[u8]) {
        self.must(&["put", bucket, key], data);
    }

    /// Deletes an object.
    ///
    /// # Panics
    ///
    /// If the server refuses.
    pub fn delete_object(&self, bucket: &str, key: &str) {
        self.must(&["delete", bucket, key], b"");
    }

    /// The open (neither completed nor aborted) multipart uploads of `bucket`: key and upload
    /// id, in key order. s3s-fs cannot list them (ListMultipartUploads is not implemented in
    /// 0.14.1): for it they are read from its data directory.
    ///
    /// # Panics
    ///
    /// If the listing fails.
    pub fn multipart_uploads(&self, bucket: &str) -> Vec<(String, String)> {
        match &self.kind {
            S3Kind::S3sFs(root) => s3s_fs_uploads(root, bucket),
            S3Kind::Moto => parse_pairs(&self.must(&["uploads", bucket], b"")),
        }
    }

    /// Starts a multipart upload of `key` and leaves it open; its upload id.
    ///
    /// # Panics
    ///
    /// If the server refuses.
    pub fn start_multipart_upload(&self, bucket: &str, key: &str) -> String {
        let out = self.must(&["start-upload", bucket, key], b"");
        String::from_utf8_lossy(&out).trim().to_owned()
    }

    /// Runs one helper operation (`create`, `list`, `put`, `get`, `delete`, `uploads`) against
    /// `endpoint` instead of the server itself (a [`FaultProxy`](crate::FaultProxy) in front
    /// of it), signed with this server's credentials; stdout, or `Err` with the client's error.
    pub fn request_via(
        &self,
        endpoint: &str,
        args: &[&str],
        input: &[u8],
    ) -> Result<Vec<u8>, String> {
        self.helper_at(endpoint, args, input)
    }

    /// Runs one helper operation as [`request_via`](Self::request_via) does, to the server
    /// itself but signed with `secret` instead of the right secret key.
    pub fn request_with_secret(&self, secret: &str, args: &[&str]) -> Result<Vec<u8>, String> {
        let mut env = self.env(&self.endpoint());
        env.retain(|(k, _)| *k != "OBJ_SECRET");
        env.push(("OBJ_SECRET", secret.to_owned()));
        run_helper(&self.python, &env, args, b"")
    }

    /// Tries what the agent's writes may rely on, in `bucket`, under `p/`: conditional puts
    /// (`If-None-Match: *`, `If-Match`), multipart uploads with 5 MiB parts, ranged GETs, and
    /// whether `x-amz-checksum-sha256` and `-crc32` are validated.
    ///
    /// # Panics
    ///
    /// If the helper itself fails (a probe that fails is a line that says so).
    pub fn probe(&self, bucket: &str) -> Vec<Capability> {
        parse_probe(&self.must(&["probe", bucket], b""))
    }
}

/// Azurite's Blob service on 127.0.0.1, with Shared Key checks on; dropping it kills the
/// server and waits for it.
///
/// For object_store's `MicrosoftAzureBuilder`: `.with_account(AZURITE_ACCOUNT)
/// .with_access_key(AZURITE_KEY).with_endpoint(azurite.endpoint()).with_allow_http(true)`
/// (`with_use_emulator(true)` would instead take the address from `AZURITE_BLOB_STORAGE_URL`,
/// one value for the whole process). Checked with object_store 0.14.2, directly and through a
/// [`FaultProxy`](crate::FaultProxy) (`http://127.0.0.1:PROXY/devstoreaccount1`).
#[derive(Debug)]
pub struct Azurite {
    proc: Proc,
    python: PathBuf,
    // Declared last: dropped after the process that writes to it.
    _dir: TempDir,
}

impl Azurite {
    /// Starts `azurite-blob` with its data in a fresh temporary directory.
    ///
    /// # Panics
    ///
    /// If it does not start.
    pub fn start(tools: &ObjstoreTools) -> Self {
        let dir = TempDir::new("azurite");
        let data = dir.0.join("data");
        fs::create_dir_all(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let proc = Proc {
            name: "azurite-blob",
            program: tools.azurite_blob.clone(),
            args: vec![
                "--blobHost".into(),
                "127.0.0.1".into(),
                "--blobPort".into(),
                addr.port().to_string(),
                "--location".into(),
                data.display().to_string(),
                "--silent".into(),
                "--disableTelemetry".into(),
                "--disableProductStyleUrl".into(),
                "--skipApiVersionCheck".into(),
            ],
            env: vec![],
            log: dir.0.join("azurite.log"),
            addr,
            child: None,
        };
        let mut s = Self {
            proc,
            python: tools.python.clone(),
            _dir: dir,
        };
        s.proc.start();
        s
    }

    /// The Blob endpoint with the account's path, `http://127.0.0.1:PORT/devstoreaccount1`, as
    /// object_store's `MicrosoftAzureBuilder::with_endpoint` and Azure's SDKs want it.
    pub fn endpoint(&self) -> String {
        format!("http://{}/{AZURITE_ACCOUNT}", self.proc.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.proc.addr
    }

    /// The storage account, [`AZURITE_ACCOUNT`].
    pub fn account(&self) -> &str {
        AZURITE_ACCOUNT
    }

    /// The account's key, [`AZURITE_KEY`].
    pub fn key(&self) -> &str {
        AZURITE_KEY
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.proc.log).unwrap_or_default()
    }

    /// Kills the server now (SIGKILL), as a crash would. Azurite keeps its metadata (which
    /// containers, blobs and blocks exist) in memory and saves it every 5 s: changes of the
    /// last 5 s before a kill are lost, the blocks' bytes being on disk already.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Stops the server if it runs (SIGTERM: Azurite saves its metadata and exits) and starts
    /// it again on the same port, with the same data.
    ///
    /// # Panics
    ///
    /// If it does not start again.
    pub fn restart(&mut self) {
        self.proc.restart();
    }

    fn env(&self, endpoint: &str) -> Vec<(&'static str, String)> {
        vec![
            ("OBJ_KIND", "azure".into()),
            ("OBJ_ENDPOINT", endpoint.to_owned()),
            ("OBJ_ACCOUNT", AZURITE_ACCOUNT.into()),
            ("OBJ_KEY", AZURITE_KEY.into()),
        ]
    }

    fn must(&self, args: &[&str], input: &[u8]) -> Vec<u8> {
        run_helper(&self.python, &self.env(&self.endpoint()), args, input)
            .unwrap_or_else(|e| self.proc.panic_with_log(&e))
    }

    /// Runs one helper operation (`create`, `list`, `put`, `get`, `delete`) against `endpoint`
    /// (with the account path, like [`endpoint`](Self::endpoint)) instead of the server
    /// itself; stdout, or `Err` with the client's error.
    pub fn request_via(
        &self,
        endpoint: &str,
        args: &[&str],
        input: &[u8],
    ) -> Result<Vec<u8>, String> {
        run_helper(&self.python, &self.env(endpoint), args, input)
    }

    /// Creates a container.
    ///
    /// # Panics
    ///
    /// If the server refuses.
    pub fn create_container(&self, name: &str) {
        self.must(&["create", name], b"");
    }

    /// The blobs under `prefix` in `container`: name and size, in name order.
    ///
    /// # Panics
    ///
    /// If the listing fails.
    pub fn objects(&self, container: &str, prefix: &str) -> Vec<(String, u64)> {
        parse_sizes(&self.must(&["list", container, prefix], b""))
    }

    /// The bytes of a blob.
    ///
    /// # Panics
    ///
    /// If it cannot be read.
    pub fn get_object(&self, container: &str, name: &str) -> Vec<u8> {
        self.must(&["get", container, name], b"")
    }

    /// Stores `data` as blob `name`, replacing any.
    ///
    /// # Panics
    ///
    /// If the server refuses.
    pub fn put_object(&self, container: &str, name: &str, data: &[u8]) {
        self.must(&["put", container, name], data);
    }

    /// Deletes a blob.
    ///
    /// # Panics
    ///
    /// If the server refuses.
    pub fn delete_object(&self, container: &str, name: &str) {
        self.must(&["delete", container, name], b"");
    }

    /// Tries, in `container` under `p/`: Put Blob with `If-None-Match: *` and `If-Match`, Put
    /// Block and Put Block List (also conditional), ranged GETs, and Content-MD5 validation.
    ///
    /// # Panics
    ///
    /// If the helper itself fails.
    pub fn probe(&self, container: &str) -> Vec<Capability> {
        parse_probe(&self.must(&["probe", container], b""))
    }
}
