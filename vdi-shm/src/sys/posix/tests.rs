//! Tests of the portable backend: names and files of the rendezvous directory, its checks,
//! framed messages with descriptors, wake-ups, and peers in other processes.

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    ptr,
};

use super::*;
use crate::sync::AtomicUsize;

/// A name no other test (or test process) uses.
fn unique(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "posix-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh scratch directory of this process.
fn scratch(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(what));
    std::fs::create_dir(&dir).unwrap();
    dir
}

const MISBEHAVED: Error = Error::Protocol(ProtocolReason::PeerMisbehaved);

/// Not a test of its own: the child process of `stale_socket_of_a_killed_listener_...`,
/// which listens under `VDI_POSIX_CHILD_LISTEN` and waits to be killed.
#[test]
fn child_listener() {
    let Ok(name) = std::env::var("VDI_POSIX_CHILD_LISTEN") else {
        return;
    };
    let _listener = Socket::listen(&name).unwrap();
    println!("listening");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn stale_socket_of_a_killed_listener_does_not_block_the_name() {
    let name = unique("stale");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sys::imp::tests::child_listener", "--nocapture"])
        .env("VDI_POSIX_CHILD_LISTEN", &name)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The test harness talks first; the child says "listening" once it holds the name.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while line.trim() != "listening" {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the child ended");
    }
    // Alive: the name is taken, and a connection reaches the child.
    assert_eq!(
        Socket::listen(&name).unwrap_err(),
        Error::Protocol(ProtocolReason::AlreadyExists)
    );
    assert!(Socket::connect(&name).is_ok());
    assert_eq!(leftovers(&name), (0, 1));
    // SIGKILL: the socket file stays, but nobody listens and nobody holds the lock.
    child.kill().unwrap();
    child.wait().unwrap();
    let paths = set_paths(&name, false).unwrap().unwrap();
    assert!(paths.sock.exists() && paths.lock.exists());
    assert_eq!(Socket::connect(&name).unwrap_err(), ConnectError::NotFound);
    // The name can be created again, and connected to; dropping removes both files.
    let listener = Socket::listen(&name).unwrap();
    assert!(Socket::connect(&name).is_ok());
    drop(listener);
    assert!(!paths.sock.exists() && !paths.lock.exists());
    assert_eq!(leftovers(&name), (0, 0));
}

#[test]
fn stale_files_of_other_names_are_swept() {
    let dir = rendezvous_dir(true).unwrap().unwrap();
    let stale = SetPaths::new(dir, &unique("swept"));
    std::fs::write(&stale.sock, b"").unwrap();
    std::fs::write(&stale.lock, b"").unwrap();
    let name = unique("sweeper");
    let _listener = Socket::listen(&name).unwrap();
    assert!(!stale.sock.exists() && !stale.lock.exists());
}

#[test]
fn a_listener_drop_frees_the_name() {
    let name = unique("drop");
    let listener = Socket::listen(&name).unwrap();
    assert_eq!(
        Socket::listen(&name).unwrap_err(),
        Error::Protocol(ProtocolReason::AlreadyExists)
    );
    drop(listener);
    assert_eq!(Socket::connect(&name).unwrap_err(), ConnectError::NotFound);
    drop(Socket::listen(&name).unwrap());
}

#[test]
fn bad_directories_are_refused() {
    let uid = rustix::process::geteuid().as_raw();
    let base = scratch("dirs");
    let good = base.join("good");
    assert_eq!(
        resolve_dir(good.clone(), uid, true).unwrap(),
        Some(good.clone())
    );
    let mode = std::fs::metadata(&good).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "created owner-only");
    // Someone else's directory (checked as if we were another user).
    assert_eq!(check_dir(&good, uid.wrapping_add(1)), Err(Error::Security));
    // Writable by the group or by others.
    for mode in [0o770, 0o702, 0o777] {
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(
            resolve_dir(good.clone(), uid, true),
            Err(Error::Security),
            "{mode:o}"
        );
    }
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A symbolic link to a good directory, and a file.
    let link = base.join("link");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    assert_eq!(resolve_dir(link, uid, true), Err(Error::Security));
    let file = base.join("file");
    std::fs::write(&file, b"").unwrap();
    assert_eq!(resolve_dir(file, uid, true), Err(Error::Security));
    // Missing, and not to be created: no set there.
    assert_eq!(resolve_dir(base.join("missing"), uid, false), Ok(None));
    // The directory depends on the user alone, not on the environment.
    #[cfg(not(target_vendor = "apple"))]
    assert_eq!(user_dir(1234), PathBuf::from("/tmp/vdi-shm.1-1234"));
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn every_name_up_to_the_limit_fits() {
    let dir = PathBuf::from(format!("/tmp/{DIR_NAME}-{}", u32::MAX));
    let long = "n".repeat(vdi_core::MAX_NAME_LEN);
    let longer = format!("{}m", &long[1..]);
    for name in [long.as_str(), longer.as_str(), "#short", "short"] {
        let p = SetPaths::new(dir.clone(), name);
        assert!(p.sock.as_os_str().len() < SUN_PATH_MAX, "{name}");
        assert!(unix_addr(&p.sock).is_ok());
    }
    // Short names are kept; long ones and those starting with '#' are hashed, distinctly.
    assert_eq!(stem(&dir, "short"), "short");
    assert_eq!(stem(&dir, &long).len(), HASHED_STEM_LEN);
    assert_ne!(stem(&dir, &long), stem(&dir, &longer));
    assert_ne!(stem(&dir, "#short"), "#short");
    // Where the filesystem folds case and normalization (Apple), only names of
    // [a-z0-9._-] are kept; the others are hashed from their exact bytes.
    for name in ["nightly", "db-1.full_2"] {
        assert_eq!(stem_for(&dir, name, true), name);
    }
    let mut seen = std::collections::HashSet::new();
    for name in [
        "Nightly",
        "NIGHTLY",
        "caf\u{e9}",
        "cafe\u{301}",
        "a b",
        "nightly",
    ] {
        let s = stem_for(&dir, name, true);
        assert!(name == "nightly" || s.len() == HASHED_STEM_LEN, "{name}");
        assert!(seen.insert(s), "{name}: two names, one stem");
        // Elsewhere these names are kept as they are.
        assert_eq!(stem_for(&dir, name, false), name);
    }
    // A path no sockaddr holds is the name error.
    let too_long = dir.join("x".repeat(200));
    assert!(matches!(
        unix_addr(&too_long),
        Err(Error::Invalid(InvalidReason::Name(
            vdi_core::NameError::TooLong(_)
        )))
    ));
    // And the longest name works end to end.
    let name = format!("{}{}", unique("long"), "x".repeat(vdi_core::MAX_NAME_LEN));
    let name = &name[name.len() - vdi_core::MAX_NAME_LEN..];
    let listener = Socket::listen(name).unwrap();
    assert!(Socket::connect(name).is_ok());
    drop(listener);
}

#[test]
fn a_wake_wakes_every_waiter_of_the_word() {
    let page = page_size();
    let a = Arc::new(Mapping::create("vdi-shm:posix-test:wake", page, &[0, 64]).unwrap());
    // A second mapping of the same object, as a peer process would have.
    let b = Arc::new(
        Mapping::open(
            a.attachment().unwrap(),
            "vdi-shm:posix-test:wake",
            page,
            &[64, 0],
        )
        .unwrap(),
    );
    const WAIT: Duration = Duration::from_secs(60);
    let waiters: Vec<_> = (0..6)
        .map(|i| {
            let m = Arc::clone(if i % 2 == 0 { &a } else { &b });
            std::thread::spawn(move || {
                let word: &AtomicU32 = m.get(0);
                let start = Instant::now();
                while word.load(Ordering::SeqCst) == 0 {
                    futex_wait(word, 0, WAIT);
                    assert!(start.elapsed() < WAIT, "a waiter slept out its timeout");
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    // A wake of another word wakes nobody for good: they go back to sleep.
    b.get::<AtomicU32>(64).store(1, Ordering::SeqCst);
    futex_wake_all(b.get(64));
    std::thread::sleep(Duration::from_millis(20));
    a.get::<AtomicU32>(0).store(1, Ordering::SeqCst);
    futex_wake_all(b.get(0));
    for w in waiters {
        w.join().unwrap();
    }
}

#[test]
fn a_wait_on_a_changed_word_returns_at_once() {
    let page = page_size();
    let a = Mapping::create("vdi-shm:posix-test:changed", page, &[0]).unwrap();
    let word: &AtomicU32 = a.get(0);
    // A pending wake of long ago is drained, not taken for a new one.
    futex_wake_all(word);
    word.store(5, Ordering::SeqCst);
    futex_wait(word, 4, Duration::from_secs(60));
    // Words that are no wake words wait on this process's own condition variable.
    let local = Arc::new(AtomicU32::new(0));
    let l = Arc::clone(&local);
    let t = std::thread::spawn(move || {
        while l.load(Ordering::SeqCst) == 0 {
            futex_wait(&l, 0, Duration::from_secs(60));
        }
    });
    std::thread::sleep(Duration::from_millis(20));
    local.store(1, Ordering::SeqCst);
    futex_wake_all(&local);
    t.join().unwrap();
}

#[test]
fn a_drain_reads_until_the_socket_is_empty() {
    let (rx, tx) = socket_pair().unwrap();
    // Several reads' worth, in pieces.
    for _ in 0..5 {
        rustix::net::send(&tx, &[1; 40], SendFlags::empty()).unwrap();
    }
    assert!(drain(rx.as_fd()));
    let mut buf = [0u8; 1];
    assert_eq!(
        rustix::net::recv(&rx, &mut buf, RecvFlags::DONTWAIT).unwrap_err(),
        Errno::AGAIN
    );
    // More than the limit lets one drain take: what is left stays for the next.
    rustix::net::send(&tx, &[1; 64 * DRAIN_LIMIT + 1], SendFlags::empty()).unwrap();
    assert!(drain(rx.as_fd()));
    assert!(drain(rx.as_fd()));
    // A closed peer end: the socket stays readable for good.
    drop(tx);
    assert!(!drain(rx.as_fd()));
}

#[test]
fn a_shrunk_or_malformed_object_is_refused() {
    let page = page_size();
    let len = 4 * page;
    let map = Mapping::create("vdi-shm:posix-test:shrunk", len, &[0]).unwrap();
    let att = map.attachment().unwrap();
    // Our own mapping goes first: shrinking under it would be the very SIGBUS we refuse.
    drop(map);
    // Where the system lets the size change at all (not macOS; not FreeBSD's sealed
    // objects), a smaller object is refused.
    if rustix::fs::ftruncate(&att.object, (len - page) as u64).is_ok() {
        assert_eq!(Mapping::open(att, "t", len, &[0]).unwrap_err(), MISBEHAVED);
    }
    // Wrong sizes, counts of wake objects, or a wake object that is no socket.
    let map = Mapping::create("vdi-shm:posix-test:shrunk", len, &[0]).unwrap();
    assert_eq!(
        Mapping::open(map.attachment().unwrap(), "t", 2 * len, &[0]).unwrap_err(),
        MISBEHAVED
    );
    assert_eq!(
        Mapping::open(map.attachment().unwrap(), "t", len, &[]).unwrap_err(),
        MISBEHAVED
    );
    let mut att = map.attachment().unwrap();
    att.wake[0] = map.object.try_clone().unwrap();
    assert_eq!(Mapping::open(att, "t", len, &[0]).unwrap_err(), MISBEHAVED);
}

#[test]
#[cfg(target_os = "linux")]
fn files_and_directories_are_no_shared_memory() {
    let len = 4 * page_size();
    let open = |object: OwnedFd| {
        Mapping::open(
            Attachment {
                object,
                wake: Vec::new(),
            },
            "t",
            len,
            &[],
        )
    };
    // A regular file of the right size, on a disk filesystem (next to the test binary),
    // opened read-write: a peer could truncate it under our mapping.
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    let on_tmpfs = rustix::fs::statfs(dir.as_path()).unwrap().f_type as u64 == 0x0102_1994;
    if on_tmpfs {
        eprintln!("{} is on tmpfs: no disk file to refuse", dir.display());
    } else {
        let path = dir.join(unique("regular-file"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file.set_len(len as u64).unwrap();
        assert_eq!(open(file.into()).unwrap_err(), MISBEHAVED);
    }
    // A directory.
    let scratch_dir = scratch("dir-object");
    let dir = rustix::fs::open(
        scratch_dir.as_path(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    assert_eq!(open(dir).unwrap_err(), MISBEHAVED);
    std::fs::remove_dir(&scratch_dir).unwrap();
    // A shared memory object opened read-only: it cannot be mapped for writing.
    let map = Mapping::create("vdi-shm:posix-test:read-only", len, &[]).unwrap();
    let proc_path = format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&map.object)
    );
    if let Ok(ro) = rustix::fs::open(proc_path.as_str(), OFlags::RDONLY, Mode::empty()) {
        assert_eq!(open(ro).unwrap_err(), MISBEHAVED);
    }
    // And the real thing passes.
    assert!(open(map.attachment().unwrap().object).is_ok());
}

/// A message's length and how many attachments it carried.
fn counts(r: io::Result<(usize, Vec<Attachment>)>) -> (usize, usize) {
    let (n, atts) = r.unwrap();
    (n, atts.len())
}

/// A connected pair through the rendezvous: (listener, connecting end, accepted end).
fn pair(what: &str) -> (Socket, Socket, Socket) {
    let name = unique(what);
    let listener = Socket::listen(&name).unwrap();
    let client = Socket::connect(&name).unwrap();
    assert!(poll(&[listener.waitable()], Some(Duration::from_secs(5)))[0].readable);
    let server = listener.accept().unwrap();
    (listener, client, server)
}

#[test]
fn a_control_segment_of_64_devices_travels_in_frames() {
    let (_l, client, server) = pair("frames");
    let page = page_size();
    let words: Vec<usize> = (0..129).map(|i| i * 8).collect();
    let map = Mapping::create("vdi-shm:posix-test:frames", 4 * page, &words).unwrap();
    client.send(b"hello", Some(&map)).unwrap();
    client.send(b"again", None).unwrap();
    let mut buf = [0u8; 32];
    let (n, mut atts) = server.recv(&mut buf).unwrap();
    assert_eq!((&buf[..n], atts.len()), (&b"hello"[..], 1));
    let att = atts.remove(0);
    assert_eq!(att.wake.len(), 2 * words.len());
    let peer = Mapping::open(att, "vdi-shm:posix-test:frames", 4 * page, &words).unwrap();
    assert_eq!(counts(server.recv(&mut buf)), (5, 0));
    assert_eq!(&buf[..5], b"again");
    // The wake objects are the creator's: the last word wakes across the two mappings.
    let last = 128 * 8;
    let t = std::thread::spawn(move || {
        let word: &AtomicU32 = peer.get(last);
        while word.load(Ordering::SeqCst) == 0 {
            futex_wait(word, 0, Duration::from_secs(60));
        }
    });
    std::thread::sleep(Duration::from_millis(20));
    map.get::<AtomicU32>(last).store(1, Ordering::SeqCst);
    futex_wake_all(map.get(last));
    t.join().unwrap();
    // The end of the connection.
    drop(client);
    assert_eq!(counts(server.recv(&mut buf)), (0, 0));
}

#[test]
fn garbage_and_half_frames() {
    let (_l, client, server) = pair("garbage");
    server.set_nonblocking().unwrap();
    let mut buf = [0u8; 32];
    // Half a header: nothing yet, and no blocking.
    rustix::net::send(&client.fd, &FRAME_MAGIC.to_le_bytes(), SendFlags::empty()).unwrap();
    assert_eq!(
        server.recv(&mut buf).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    // The rest of a frame of 3 bytes.
    rustix::net::send(&client.fd, &[3, 0, 0, 0, 0, 0, 7, 8, 9], SendFlags::empty()).unwrap();
    assert_eq!(counts(server.recv(&mut buf)), (3, 0));
    assert_eq!(&buf[..3], &[7, 8, 9]);
    // A payload longer than any message, or a wrong magic: the stream is unusable.
    rustix::net::send(
        &client.fd,
        &[0x44, 0x56, 200, 0, 0, 0, 0, 0],
        SendFlags::empty(),
    )
    .unwrap();
    assert_eq!(
        server.recv(&mut buf).unwrap_err().kind(),
        ErrorKind::InvalidData
    );
    let (_l, client, server) = pair("garbage");
    rustix::net::send(&client.fd, &[0; 8], SendFlags::empty()).unwrap();
    assert_eq!(
        server.recv(&mut buf).unwrap_err().kind(),
        ErrorKind::InvalidData
    );
    // A message with no payload, which would read as the end of the connection: refused
    // on receipt, and never sent.
    let (_l, client, server) = pair("garbage");
    rustix::net::send(
        &client.fd,
        &[0x44, 0x56, 0, 0, 0, 0, 0, 0],
        SendFlags::empty(),
    )
    .unwrap();
    assert_eq!(
        server.recv(&mut buf).unwrap_err().kind(),
        ErrorKind::InvalidData
    );
    assert!(client.send(b"", None).is_err());
    // Descriptors declared but not sent.
    let (_l, client, server) = pair("garbage");
    rustix::net::send(
        &client.fd,
        &[0x44, 0x56, 1, 0, 1, 0, 0, 0, 9],
        SendFlags::empty(),
    )
    .unwrap();
    assert_eq!(
        server.recv(&mut buf).unwrap_err().kind(),
        ErrorKind::InvalidData
    );
    // A blocking receive waits for the rest of a message that comes a little later...
    let (_l, client, server) = pair("garbage");
    rustix::net::send(
        &client.fd,
        &[0x44, 0x56, 2, 0, 0, 0, 0, 0],
        SendFlags::empty(),
    )
    .unwrap();
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        rustix::net::send(&client.fd, &[1, 2], SendFlags::empty()).unwrap();
        client
    });
    assert_eq!(counts(server.recv(&mut buf)), (2, 0));
    assert_eq!(&buf[..2], &[1, 2]);
    drop(late.join().unwrap());
    // ... and gives up on a peer that sends half a message.
    let (_l, client, server) = pair("garbage");
    rustix::net::send(&client.fd, &[0x44], SendFlags::empty()).unwrap();
    assert_eq!(
        server.recv(&mut buf).unwrap_err().kind(),
        ErrorKind::TimedOut
    );
}

extern "C" fn ignore_signal(_: libc::c_int) {}

#[test]
fn a_blocking_receive_outlasts_signals() {
    // A handler that does nothing, without SA_RESTART: poll fails with EINTR either way.
    // SAFETY: `action` is zeroed (a valid sigaction) and then given an empty mask and a
    // handler that is async-signal-safe (it does nothing); SIGUSR1 is used by nothing else
    // in this test process.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = 0;
        libc::sigemptyset(&raw mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &raw const action, ptr::null_mut()),
            0
        );
    }
    let (_l, client, server) = pair("signals");
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 32];
        server.recv(&mut buf).map(|(n, _)| buf[..n].to_vec())
    });
    let target = std::os::unix::thread::JoinHandleExt::as_pthread_t(&receiver);
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(5));
        // SAFETY: `target` is a thread not yet joined (its handle is held until after the
        // last signal), so its pthread_t is valid even if it has ended.
        unsafe { libc::pthread_kill(target, libc::SIGUSR1) };
    }
    client.send(b"after the signals", None).unwrap();
    assert_eq!(receiver.join().unwrap().unwrap(), b"after the signals");
}

#[test]
fn peers_are_this_user() {
    let (_l, client, server) = pair("cred");
    let uid = rustix::process::geteuid().as_raw();
    for s in [&client, &server] {
        let cred = s.peer_cred().unwrap();
        assert_eq!(cred.uid, uid);
        assert!(admitted(&cred, &Options::default()));
    }
    let stranger = PeerCred {
        pid: 0,
        uid: uid.wrapping_add(1),
        gid: u32::MAX - 1,
    };
    assert!(!admitted(&stranger, &Options::default()));
}
