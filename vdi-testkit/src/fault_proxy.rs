//! A fault-injecting HTTP/1.1 proxy for the object-storage tests ([`FaultProxy`]): it sits
//! between a client and a server on 127.0.0.1, forwards each request as it came (the `Host`
//! header too, so SigV4 and Shared Key signatures made for the proxy's address still hold),
//! and, where a [`FaultRule`] says so, answers with a [`Fault`] instead.
//!
//! It understands what object-storage clients send over plain HTTP/1.1: keep-alive
//! connections, request bodies with `Content-Length` or chunked, `Expect: 100-continue` (the
//! proxy answers `100 Continue` itself, reads the body, and drops the server's own interim
//! responses), and responses delimited by `Content-Length`, chunked or by the end of the
//! connection. Each client connection gets its own connection to the server.
//!
//! Threads and `std::net` only. Every socket wait is short and rechecks whether the proxy is
//! stopping, so dropping it ends every thread within [`STOP_TIMEOUT`].

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// The longest wait, when a [`FaultProxy`] is dropped, for its threads to end.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a blocked thread checks whether the proxy is stopping.
const TICK: Duration = Duration::from_millis(50);
/// The longest wait for the server to answer one request (past it, the client connection is
/// closed with no answer).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest request or response head.
const MAX_HEAD: usize = 64 * 1024;

/// What the proxy does instead of (or to) a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `503 Slow Down`, with S3's `<Error><Code>SlowDown</Code>..` body and Azure's
    /// `x-ms-error-code: ServerBusy` header; the request does not reach the server.
    SlowDown,
    /// `500 Internal Server Error`, with S3's `InternalError` body and Azure's
    /// `x-ms-error-code: InternalError`; the request does not reach the server.
    InternalError,
    /// The request is read whole, then the connection is closed with no response; the request
    /// does not reach the server.
    Drop,
    /// The request is forwarded and the server's response read, then held this long before it
    /// is sent (a very long stall holds it until the proxy is dropped). The server has done
    /// the work: a client that gives up meanwhile does not know it.
    Stall(Duration),
}

/// When the proxy injects a [`Fault`]: requests that match every condition given (`None`
/// matches anything), after the first `skip` of them, `times` times.
///
/// Rules are tried in the order they were added; every rule a request matches counts it, and
/// the first that is due injects its fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    /// The fault to inject.
    pub fault: Fault,
    /// The request method (`PUT`, `GET`, ...), compared exactly.
    pub method: Option<String>,
    /// A part of the path (the request target before `?`).
    pub path_contains: Option<String>,
    /// A part of the query (after `?`), e.g. `uploadId=` or `comp=blocklist`.
    pub query_contains: Option<String>,
    /// How many matching requests go through untouched first.
    pub skip: u64,
    /// How many faults to inject; `u64::MAX` for every matching request after `skip`.
    pub times: u64,
}

impl FaultRule {
    /// `fault` for every request, from the first on, until cleared; narrow it with the
    /// builder methods.
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            method: None,
            path_contains: None,
            query_contains: None,
            skip: 0,
            times: u64::MAX,
        }
    }

    /// Only requests with this method.
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_owned());
        self
    }

    /// Only requests whose path contains `part`.
    pub fn path_contains(mut self, part: &str) -> Self {
        self.path_contains = Some(part.to_owned());
        self
    }

    /// Only requests whose query contains `part`.
    pub fn query_contains(mut self, part: &str) -> Self {
        self.query_contains = Some(part.to_owned());
        self
    }

    /// Lets the first `n` matching requests through.
    pub fn skip(mut self, n: u64) -> Self {
        self.skip = n;
        self
    }

    /// Injects `n` faults, then lets matching requests through again.
    pub fn times(mut self, n: u64) -> Self {
        self.times = n;
        self
    }

    fn matches(&self, req: &Request) -> bool {
        let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        self.method.as_ref().is_none_or(|m| *m == req.method)
            && self.path_contains.as_ref().is_none_or(|p| path.contains(p))
            && self
                .query_contains
                .as_ref()
                .is_none_or(|q| query.contains(q))
    }
}

/// A rule and what it has counted.
#[derive(Debug)]
struct RuleState {
    rule: FaultRule,
    seen: u64,
    injected: u64,
}

/// What the proxy's threads share.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    rules: Mutex<Vec<RuleState>>,
    injected: AtomicU64,
    forwarded: AtomicU64,
    requests: Mutex<Vec<String>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The fault due for `req`, counting it in every rule it matches.
    fn decide(&self, req: &Request) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let mut due = None;
        for r in rules.iter_mut().filter(|r| r.rule.matches(req)) {
            r.seen += 1;
            if due.is_none() && r.seen > r.rule.skip && r.injected < r.rule.times {
                r.injected += 1;
                due = Some(r.rule.fault);
            }
        }
        due
    }
}

/// The proxy: listens on 127.0.0.1 on a port of its own and forwards to one server; dropping
/// it stops every thread (bounded by [`STOP_TIMEOUT`]).
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream`, with no rules (it forwards everything).
    ///
    /// # Panics
    ///
    /// If it cannot listen on 127.0.0.1.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("fault proxy: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fault proxy: local address");
        listener
            .set_nonblocking(true)
            .expect("fault proxy: non-blocking listener");
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || accept_loop(&listener, upstream, &s))
            .expect("fault proxy: spawn");
        Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT`, for the client.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds a rule after the others.
    pub fn add(&self, rule: FaultRule) {
        self.shared
            .rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(RuleState {
                rule,
                seen: 0,
                injected: 0,
            });
    }

    /// Removes every rule (the counters stay).
    pub fn clear(&self) {
        self.shared
            .rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.shared.injected.load(Ordering::Relaxed)
    }

    /// Requests forwarded to the server so far (stalled ones included).
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// Every request seen so far, as `METHOD target`, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.acceptor.take() {
            join_bounded(h, Instant::now() + STOP_TIMEOUT);
        }
    }
}

/// Joins `h` if it ends before `deadline`; otherwise leaves it (it ends on its own at its next
/// check of the stop flag).
fn join_bounded(h: JoinHandle<()>, deadline: Instant) {
    while !h.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    if h.is_finished() {
        let _ = h.join();
    }
}

fn accept_loop(listener: &TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stopping() {
        match listener.accept() {
            Ok((client, _)) => {
                let s = Arc::clone(shared);
                if let Ok(h) = thread::Builder::new()
                    .name("fault-proxy-conn".into())
                    .spawn(move || {
                        let _ = serve(client, upstream, &s);
                    })
                {
                    conns.push(h);
                }
                conns.retain(|h| !h.is_finished());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5))
            }
            Err(_) => thread::sleep(TICK),
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for h in conns {
        join_bounded(h, deadline);
    }
}

/// A socket read through a buffer, whose waits recheck the stop flag.
struct Conn<'a> {
    stream: TcpStream,
    buf: Vec<u8>,
    shared: &'a Shared,
    /// The longest silence tolerated (`None`: any, until the proxy stops).
    patience: Option<Duration>,
}

impl<'a> Conn<'a> {
    fn new(stream: TcpStream, shared: &'a Shared, patience: Option<Duration>) -> io::Result<Self> {
        stream.set_read_timeout(Some(TICK))?;
        stream.set_write_timeout(Some(UPSTREAM_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::new(),
            shared,
            patience,
        })
    }

    /// Reads more into the buffer; `Ok(0)` at the end of the stream.
    fn fill(&mut self) -> io::Result<usize> {
        let start = Instant::now();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if self.shared.stopping() {
                return Err(io::Error::other("proxy stopping"));
            }
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.patience.is_some_and(|p| start.elapsed() > p) {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// A head (up to and including the blank line); `None` at a clean end of stream.
    fn head(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                return Ok(Some(self.buf.drain(..end + 4).collect()));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(io::Error::other("head too long"));
            }
            if self.fill()? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// Exactly `n` bytes.
    fn exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// One line, with its CRLF.
    fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                return Ok(self.buf.drain(..end + 2).collect());
            }
            if self.buf.len() > MAX_HEAD {
                return Err(io::Error::other("line too long"));
            }
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// A chunked body, as it came (chunks, last chunk, trailers).
    fn chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let line = self.line()?;
            let text = String::from_utf8_lossy(&line);
            let size = text.trim().split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {size:?}")))?;
            out.extend_from_slice(&line);
            if size == 0 {
                loop {
                    let trailer = self.line()?;
                    out.extend_from_slice(&trailer);
                    if trailer == b"\r\n" {
                        return Ok(out);
                    }
                }
            }
            out.extend(self.exact(size + 2)?);
        }
    }

    /// Everything until the end of the stream.
    fn until_end(&mut self) -> io::Result<Vec<u8>> {
        while self.fill()? > 0 {}
        Ok(std::mem::take(&mut self.buf))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A parsed head: its first line's parts and its headers.
#[derive(Debug)]
struct Request {
    method: String,
    target: String,
}

/// The headers of a head, names lowercased.
fn headers(head: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(head)
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

fn header<'h>(hs: &'h [(String, String)], name: &str) -> Option<&'h str> {
    hs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn has_token(hs: &[(String, String)], name: &str, token: &str) -> bool {
    hs.iter()
        .filter(|(k, _)| k == name)
        .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// The body that follows a request head with headers `hs`.
fn request_body(conn: &mut Conn<'_>, hs: &[(String, String)]) -> io::Result<Vec<u8>> {
    if has_token(hs, "transfer-encoding", "chunked") {
        return conn.chunked();
    }
    let n = match header(hs, "content-length") {
        Some(v) => v
            .parse()
            .map_err(|_| io::Error::other(format!("bad content-length {v:?}")))?,
        None => 0,
    };
    conn.exact(n)
}

/// Serves one client connection until it closes, the proxy stops, or something fails.
fn serve(client: TcpStream, upstream: SocketAddr, shared: &Shared) -> io::Result<()> {
    let mut client = Conn::new(client, shared, None)?;
    let mut server: Option<Conn<'_>> = None;
    loop {
        let Some(head) = client.head()? else {
            return Ok(());
        };
        let first = String::from_utf8_lossy(&head)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        let mut parts = first.split_whitespace();
        let req = Request {
            method: parts.next().unwrap_or("").to_owned(),
            target: parts.next().unwrap_or("").to_owned(),
        };
        let version = parts.next().unwrap_or("HTTP/1.1").to_owned();
        let hs = headers(&head);
        if has_token(&hs, "expect", "100-continue") {
            client.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = request_body(&mut client, &hs)?;
        let client_close = has_token(&hs, "connection", "close")
            || (version == "HTTP/1.0" && !has_token(&hs, "connection", "keep-alive"));
        shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{} {}", req.method, req.target));

        let fault = shared.decide(&req);
        let stall = match fault {
            Some(Fault::SlowDown) => {
                shared.injected.fetch_add(1, Ordering::Relaxed);
                client.stream.write_all(&error_response(
                    503,
                    "Slow Down",
                    "SlowDown",
                    "ServerBusy",
                    "Please reduce your request rate.",
                ))?;
                if client_close {
                    let _ = client.stream.shutdown(Shutdown::Both);
                    return Ok(());
                }
                continue;
            }
            Some(Fault::InternalError) => {
                shared.injected.fetch_add(1, Ordering::Relaxed);
                client.stream.write_all(&error_response(
                    500,
                    "Internal Server Error",
                    "InternalError",
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                ))?;
                if client_close {
                    let _ = client.stream.shutdown(Shutdown::Both);
                    return Ok(());
                }
                continue;
            }
            Some(Fault::Drop) => {
                shared.injected.fetch_add(1, Ordering::Relaxed);
                let _ = client.stream.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(Fault::Stall(d)) => {
                shared.injected.fetch_add(1, Ordering::Relaxed);
                Some(d)
            }
            None => None,
        };

        // Forward, on the connection kept from the last request if the server kept it. A kept
        // connection the server has meanwhile closed (an idle keep-alive timeout) fails on the
        // first write or read: the request is then sent once more, on a new connection.
        let mut answer = None;
        if let Some(mut s) = server.take() {
            let sent = s
                .stream
                .write_all(&head)
                .and_then(|()| s.stream.write_all(&body));
            if sent.is_ok()
                && let Ok(r) = read_response(&mut s, &req.method)
            {
                answer = Some(r);
                server = Some(s);
            }
        }
        let (response, server_close) = match answer {
            Some(r) => r,
            None => {
                let stream = TcpStream::connect_timeout(&upstream, UPSTREAM_TIMEOUT)?;
                let mut s = Conn::new(stream, shared, Some(UPSTREAM_TIMEOUT))?;
                s.stream.write_all(&head)?;
                s.stream.write_all(&body)?;
                let r = read_response(&mut s, &req.method)?;
                server = Some(s);
                r
            }
        };
        shared.forwarded.fetch_add(1, Ordering::Relaxed);
        if server_close {
            server = None;
        }
        if let Some(d) = stall {
            let until = Instant::now() + d;
            while Instant::now() < until {
                if shared.stopping() {
                    return Ok(());
                }
                thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
            }
        }
        client.stream.write_all(&response)?;
        if client_close || server_close {
            let _ = client.stream.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}

/// Reads the server's final response (dropping interim `1xx` ones); the bytes to send, and
/// whether the server's connection ends with it.
fn read_response(s: &mut Conn<'_>, method: &str) -> io::Result<(Vec<u8>, bool)> {
    loop {
        let head = s.head()?.ok_or(io::ErrorKind::UnexpectedEof)?;
        let text = String::from_utf8_lossy(&head);
        let first = text.lines().next().unwrap_or("");
        let mut parts = first.split_whitespace();
        let version = parts.next().unwrap_or("");
        let status: u16 = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let hs = headers(&head);
        let close = has_token(&hs, "connection", "close")
            || (version == "HTTP/1.0" && !has_token(&hs, "connection", "keep-alive"));
        let mut out = head.clone();
        if method == "HEAD" || status == 204 || status == 304 {
            return Ok((out, close));
        }
        if has_token(&hs, "transfer-encoding", "chunked") {
            out.extend(s.chunked()?);
            return Ok((out, close));
        }
        if let Some(v) = header(&hs, "content-length") {
            let n = v
                .parse()
                .map_err(|_| io::Error::other(format!("bad content-length {v:?}")))?;
            out.extend(s.exact(n)?);
            return Ok((out, close));
        }
        out.extend(s.until_end()?);
        return Ok((out, true));
    }
}

/// An error response in both dialects: S3's XML body and Azure's `x-ms-error-code`.
fn error_response(
    status: u16,
    reason: &str,
    s3_code: &str,
    azure_code: &str,
    message: &str,
) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{s3_code}</Code><Message>{message}</Message><RequestId>vdi-fault-proxy</RequestId></Error>"
    );
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nx-ms-error-code: {azure_code}\r\nx-amz-request-id: vdi-fault-proxy\r\nRetry-After: 0\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}
