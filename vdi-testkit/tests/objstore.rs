//! The object-storage test kit against the real servers: moto, s3s-fs and Azurite start, store
//! and list; moto and s3s-fs refuse a wrong secret; s3s-fs and Azurite keep their data across a
//! restart; the fault proxy forwards signed requests and injects each fault as configured; and
//! a capability probe of each server (printed, and written to `VDI_OBJSTORE_REPORT` when set).
//!
//! The servers come from `cargo xtask objstore-test`; under a plain `cargo test` every test
//! prints a skip line and passes.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::Mutex,
    time::Duration,
};

use vdi_testkit::{
    Azurite, Capability, Fault, FaultProxy, FaultRule, ObjstoreTools, S3Server, objstore_tools,
    unique_name,
};

/// The servers, or `None` after printing why the test is skipped.
fn tools(test: &str) -> Option<ObjstoreTools> {
    let tools = objstore_tools();
    if tools.is_none() {
        println!("skipping {test}: no object-storage servers; run cargo xtask objstore-test");
    }
    tools
}

/// A directory of its own under the system's temporary directory.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name("vdi-objstore-test", tag));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn refused_with(result: Result<Vec<u8>, String>, want: &str) {
    match result {
        Ok(out) => panic!(
            "accepted, expected {want}: {:?}",
            String::from_utf8_lossy(&out)
        ),
        Err(e) => assert!(e.contains(want), "expected {want} in:\n{e}"),
    }
}

#[test]
fn moto_stores_lists_and_checks_credentials() {
    let Some(tools) = tools("moto_stores_lists_and_checks_credentials") else {
        return;
    };
    let mut s3 = S3Server::moto(&tools);
    assert!(s3.endpoint().starts_with("http://127.0.0.1:"));
    s3.create_bucket("vdi");
    s3.put_object("vdi", "set/a", b"hello");
    s3.put_object("vdi", "set/b", &[7; 1000]);
    s3.put_object("vdi", "other", b"x");
    assert_eq!(s3.get_object("vdi", "set/a"), b"hello");
    assert_eq!(
        s3.objects("vdi", "set/"),
        vec![("set/a".to_owned(), 5), ("set/b".to_owned(), 1000)]
    );
    s3.put_object("vdi", "set/b", &[7; 10]);
    s3.delete_object("vdi", "set/a");
    assert_eq!(s3.objects("vdi", "set/"), vec![("set/b".to_owned(), 10)]);

    let id = s3.start_multipart_upload("vdi", "big");
    assert_eq!(s3.multipart_uploads("vdi"), vec![("big".to_owned(), id)]);

    // A wrong secret is refused, the right one accepted (just above).
    refused_with(
        s3.request_with_secret("not-the-secret", &["list", "vdi", ""]),
        "403",
    );

    // A restart keeps the port and the credentials; moto's data is gone.
    let (endpoint, key) = (s3.endpoint(), s3.access_key().to_owned());
    s3.restart();
    assert_eq!((s3.endpoint(), s3.access_key()), (endpoint, key.as_str()));
    s3.create_bucket("vdi");
    assert_eq!(s3.objects("vdi", ""), vec![]);
    refused_with(
        s3.request_with_secret("not-the-secret", &["list", "vdi", ""]),
        "403",
    );
}

#[test]
fn s3s_fs_checks_credentials_and_keeps_data_across_restart() {
    let Some(tools) = tools("s3s_fs_checks_credentials_and_keeps_data_across_restart") else {
        return;
    };
    let root = scratch("s3s-fs");
    let mut s3 = S3Server::s3s_fs(&tools, &root);
    s3.create_bucket("vdi");
    s3.put_object("vdi", "set/a", b"hello");
    s3.put_object("vdi", "set/b", &[1; 4096]);
    let id = s3.start_multipart_upload("vdi", "big");
    refused_with(
        s3.request_with_secret("not-the-secret", &["list", "vdi", ""]),
        "403",
    );

    s3.kill();
    s3.restart();
    assert_eq!(
        s3.objects("vdi", "set/"),
        vec![("set/a".to_owned(), 5), ("set/b".to_owned(), 4096)]
    );
    assert_eq!(s3.get_object("vdi", "set/a"), b"hello");
    // Truncation, as a test that damages a backup does it.
    s3.put_object("vdi", "set/b", &[1; 100]);
    assert_eq!(s3.objects("vdi", "set/b"), vec![("set/b".to_owned(), 100)]);
    assert_eq!(s3.multipart_uploads("vdi"), vec![("big".to_owned(), id)]);
    drop(s3);
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn azurite_stores_lists_and_keeps_data_across_restart() {
    let Some(tools) = tools("azurite_stores_lists_and_keeps_data_across_restart") else {
        return;
    };
    let mut az = Azurite::start(&tools);
    assert!(az.endpoint().ends_with("/devstoreaccount1"));
    az.create_container("vdi");
    az.put_object("vdi", "set/a", b"hello");
    az.put_object("vdi", "set/b", &[2; 3000]);
    az.put_object("vdi", "other", b"x");
    assert_eq!(az.get_object("vdi", "set/a"), b"hello");
    assert_eq!(
        az.objects("vdi", "set/"),
        vec![("set/a".to_owned(), 5), ("set/b".to_owned(), 3000)]
    );
    // A graceful restart (a SIGKILL loses Azurite's last 5 s of metadata: Azurite::kill).
    az.restart();
    az.delete_object("vdi", "set/a");
    assert_eq!(az.objects("vdi", "set/"), vec![("set/b".to_owned(), 3000)]);
}

#[test]
fn the_proxy_forwards_signed_requests_to_every_server() {
    let Some(tools) = tools("the_proxy_forwards_signed_requests_to_every_server") else {
        return;
    };
    let root = scratch("proxy-s3s");
    for s3 in [S3Server::moto(&tools), S3Server::s3s_fs(&tools, &root)] {
        let proxy = FaultProxy::start(s3.addr());
        s3.create_bucket("vdi");
        // Signed for the proxy's host:port, checked by the server against the same Host.
        s3.request_via(&proxy.endpoint(), &["put", "vdi", "k"], &[9; 100_000])
            .unwrap_or_else(|e| panic!("put through the proxy: {e}"));
        let out = s3
            .request_via(&proxy.endpoint(), &["get", "vdi", "k"], b"")
            .unwrap_or_else(|e| panic!("get through the proxy: {e}"));
        assert_eq!(out, vec![9; 100_000]);
        let out = s3
            .request_via(&proxy.endpoint(), &["list", "vdi", ""], b"")
            .unwrap_or_else(|e| panic!("list through the proxy: {e}"));
        assert_eq!(String::from_utf8_lossy(&out), "k\t100000\n");
        assert_eq!(proxy.injected(), 0);
        assert!(proxy.forwarded() >= 3, "{:?}", proxy.requests());
    }
    let az = Azurite::start(&tools);
    let proxy = FaultProxy::start(az.addr());
    let via = format!("{}/{}", proxy.endpoint(), az.account());
    az.request_via(&via, &["create", "vdi"], b"")
        .unwrap_or_else(|e| panic!("create through the proxy: {e}"));
    az.request_via(&via, &["put", "vdi", "k"], &[3; 50_000])
        .unwrap_or_else(|e| panic!("put through the proxy: {e}"));
    assert_eq!(az.objects("vdi", ""), vec![("k".to_owned(), 50_000)]);
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn the_proxy_injects_each_fault_as_configured() {
    let Some(tools) = tools("the_proxy_injects_each_fault_as_configured") else {
        return;
    };
    let root = scratch("faults");
    let s3 = S3Server::s3s_fs(&tools, &root);
    s3.create_bucket("vdi");
    let proxy = FaultProxy::start(s3.addr());
    let via = proxy.endpoint();
    let put = |key: &str| s3.request_via(&via, &["put", "vdi", key], b"data");

    // SlowDown once, for PUTs only: the next PUT goes through.
    proxy.add(FaultRule::new(Fault::SlowDown).method("PUT").times(1));
    refused_with(put("a"), "SlowDown");
    put("a").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(proxy.injected(), 1);
    assert_eq!(s3.objects("vdi", ""), vec![("a".to_owned(), 4)]);

    // InternalError after letting one matching request through.
    proxy.clear();
    proxy.add(
        FaultRule::new(Fault::InternalError)
            .path_contains("/vdi/b")
            .skip(1)
            .times(1),
    );
    put("b").unwrap_or_else(|e| panic!("{e}"));
    refused_with(put("b"), "InternalError");
    put("b").unwrap_or_else(|e| panic!("{e}"));
    put("c").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(proxy.injected(), 2);

    // Drop: the request never reaches the server, the client sees the connection close.
    proxy.clear();
    proxy.add(FaultRule::new(Fault::Drop).path_contains("/vdi/d"));
    let err = put("d").expect_err("a dropped connection");
    assert!(!err.contains("SlowDown"), "{err}");
    assert_eq!(proxy.injected(), 3);
    proxy.clear();
    assert_eq!(
        s3.objects("vdi", "")
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>(),
        ["a", "b", "c"]
    );

    // Stall: forwarded, answered late; the server has the object either way.
    proxy.add(
        FaultRule::new(Fault::Stall(Duration::from_millis(300)))
            .method("PUT")
            .times(1),
    );
    put("e").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(proxy.injected(), 4);
    assert_eq!(s3.objects("vdi", "e"), vec![("e".to_owned(), 4)]);

    // A stall far longer than the client waits: the client gives up, the server has the
    // object, and dropping the proxy ends the held response.
    proxy.clear();
    proxy.add(FaultRule::new(Fault::Stall(Duration::from_secs(3600))).path_contains("/vdi/held"));
    {
        let mut s = TcpStream::connect(proxy.addr()).expect("connect to the proxy");
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s.write_all(format!("GET /vdi/held HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.addr()).as_bytes())
            .unwrap();
        let mut byte = [0u8; 1];
        let err = s.read(&mut byte).expect_err("the response is held");
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{err}"
        );
    }
    assert!(proxy.requests().contains(&"GET /vdi/held".to_owned()));

    // A query rule, seen on raw requests (unsigned: the server's 403 is forwarded as is).
    proxy.clear();
    proxy.add(FaultRule::new(Fault::SlowDown).query_contains("uploads"));
    let (status, _) = raw(proxy.addr(), "GET /vdi?uploads HTTP/1.1", b"", false);
    assert_eq!(status, 503);
    let (status, body) = raw(proxy.addr(), "GET /vdi?list-type=2 HTTP/1.1", b"", false);
    assert_eq!(status, 403, "{body}");
    // Expect: 100-continue.
    let (status, body) = raw(proxy.addr(), "PUT /vdi/f HTTP/1.1", b"body", true);
    assert_eq!(status, 403, "{body}");
    drop(proxy);
    let _ = fs::remove_dir_all(&root);
}

/// One request by hand on a keep-alive connection, then a second on the same connection;
/// the first's status and body (`Expect: 100-continue` waits for the interim response).
fn raw(addr: SocketAddr, line: &str, body: &[u8], expect: bool) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "{line}\r\nHost: {addr}\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if expect {
            "Expect: 100-continue\r\n"
        } else {
            ""
        }
    );
    s.write_all(head.as_bytes()).unwrap();
    if expect {
        let mut interim = [0u8; 25];
        s.read_exact(&mut interim).expect("100 Continue");
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    s.write_all(body).unwrap();
    let response = read_one(&mut s);
    // The connection is kept: a second request on it is answered too.
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        rest.starts_with(b"HTTP/1.1 "),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    response
}

/// One response with a Content-Length body.
fn read_one(s: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("response head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head[9..12].parse().expect("status code");
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    s.read_exact(&mut body).expect("response body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The probes' report, one block per server, in the order they finished.
static REPORT: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn report(server: &str, caps: &[Capability]) {
    let mut block = format!("## {server}\n");
    for c in caps {
        block.push_str(&format!(
            "| {} | {} | {} |\n",
            c.what,
            if c.supported { "yes" } else { "no" },
            c.detail
        ));
    }
    println!("{block}");
    let mut all = REPORT.lock().unwrap_or_else(|e| e.into_inner());
    all.push(block);
    if let Some(path) = std::env::var_os("VDI_OBJSTORE_REPORT") {
        let _ = fs::write(path, all.join("\n"));
    }
}

#[test]
fn capabilities_of_each_server() {
    let Some(tools) = tools("capabilities_of_each_server") else {
        return;
    };
    let moto = S3Server::moto(&tools);
    moto.create_bucket("probe");
    let caps = moto.probe("probe");
    report("moto", &caps);
    drop(moto);

    let root = scratch("probe");
    let s3s = S3Server::s3s_fs(&tools, &root);
    s3s.create_bucket("probe");
    let s3s_caps = s3s.probe("probe");
    report("s3s-fs", &s3s_caps);
    drop(s3s);
    let _ = fs::remove_dir_all(&root);

    let az = Azurite::start(&tools);
    az.create_container("probe");
    let az_caps = az.probe("probe");
    report("Azurite", &az_caps);

    // What every S3 test relies on, on every server.
    for caps in [&caps, &s3s_caps] {
        assert_eq!(caps.len(), 6, "{caps:?}");
        for c in caps
            .iter()
            .filter(|c| c.what.starts_with("multipart") || c.what.starts_with("ranged"))
        {
            assert!(c.supported, "{c:?}");
        }
    }
    assert_eq!(az_caps.len(), 6, "{az_caps:?}");
}
