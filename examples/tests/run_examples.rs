//! Runs every example as a child process, with small sizes, and checks its exit status and a
//! key line of its output: the examples really work end to end, across processes.
//!
//! Integration tests get no `CARGO_BIN_EXE_*` for examples, so the binaries are looked up next
//! to this test's own binary: `target/<profile>/deps/run_examples-<hash>` →
//! `target/<profile>/examples/<name>`. `cargo test -p examples` builds the examples before it
//! runs the tests.

#![cfg(target_os = "linux")]

use std::{
    io::Read,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Longer than any example takes with these sizes (each takes well under a second), so only a
/// hang trips it.
const LIMIT: Duration = Duration::from_secs(60);

/// What a finished example did.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// The example binary `name`, built by cargo next to this test.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/run_examples-<hash> -> target/<profile>/examples/<name>
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join(name))
        .expect("the test binary lies in target/<profile>/deps");
    assert!(
        path.is_file(),
        "example binary {} not found: these tests run the example binaries that \
         `cargo test -p examples` builds; build them with `cargo build -p examples --examples` \
         (same profile as the tests) or run the tests through `cargo test -p examples`",
        path.display()
    );
    path
}

/// Runs the example `name` with `args`, killing it if it takes longer than [`LIMIT`].
fn run(name: &str, args: &[&str]) -> Run {
    let start = Instant::now();
    let mut child = Command::new(example(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start example {name}: {e}"));
    let stdout = drain(&mut child, true);
    let stderr = drain(&mut child, false);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("example {name} {args:?} did not finish within {LIMIT:?}");
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("cannot wait for example {name}: {e}"),
        }
    };
    let elapsed = start.elapsed();
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    eprintln!("{name} {args:?}: {status} in {elapsed:.2?}");
    Run {
        success: status.success(),
        stdout,
        stderr,
        elapsed,
    }
}

/// Reads the child's stdout (or stderr) to its end on a thread.
fn drain(child: &mut Child, stdout: bool) -> thread::JoinHandle<String> {
    let mut pipe: Box<dyn Read + Send> = if stdout {
        Box::new(child.stdout.take().expect("piped stdout"))
    } else {
        Box::new(child.stderr.take().expect("piped stderr"))
    };
    thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    })
}

/// Runs `name` and asserts that it succeeded and printed every one of `expected`.
fn check(name: &str, args: &[&str], expected: &[&str]) {
    let r = run(name, args);
    let shown = format!("--- stdout\n{}--- stderr\n{}", r.stdout, r.stderr);
    assert!(r.success, "example {name} {args:?} failed\n{shown}");
    for line in expected {
        assert!(
            r.stdout.contains(line),
            "example {name} {args:?} did not print {line:?}\n{shown}"
        );
    }
    assert!(r.elapsed < LIMIT);
}

#[test]
fn simple_client() {
    check(
        "simple-client",
        &["2"],
        &[
            "BACKUP DATABASE successfully processed 256 pages",
            "RESTORE DATABASE successfully processed 256 pages",
            "Every byte of the stream verified.",
            "simple-client: backup and restore succeeded",
        ],
    );
}

#[test]
fn thread_per_device() {
    check(
        "thread-per-device",
        &["4", "4"],
        &[
            "Every byte of all 4 streams verified.",
            "thread-per-device: backup and restore through 4 devices succeeded",
        ],
    );
}

#[test]
fn process_per_device() {
    check(
        "process-per-device",
        &["4", "3"],
        &[
            "secondary process",
            "every checksum matched",
            "Every byte of all 3 streams verified.",
            "process-per-device: backup and restore through 3 devices, one process each, succeeded",
        ],
    );
}

/// The primary fails on purpose: its SignalAbort stops the engine and every secondary, and
/// the run ends at once with a failure instead of hanging.
#[test]
fn process_per_device_abort() {
    let r = run("process-per-device", &["4", "3", "fail"]);
    let shown = format!("--- stdout\n{}--- stderr\n{}", r.stdout, r.stderr);
    assert!(
        !r.success,
        "the failing primary exited with success\n{shown}"
    );
    for line in [
        "failing on purpose",
        "the client aborted the operation (SignalAbort)",
        "secondary of device 1",
        "secondary of device 2",
    ] {
        assert!(r.stderr.contains(line), "no {line:?} on stderr\n{shown}");
    }
    assert!(r.elapsed < Duration::from_secs(20), "{shown}");
}

#[test]
fn tokio_service() {
    check(
        "tokio-service",
        &["2"],
        &[
            "request 1: backed up 2099200 bytes and restored 2099200 through 2 devices",
            "request 2: backed up 2100224 bytes and restored 2100224 through 3 devices",
            "tokio-service: both requests succeeded",
        ],
    );
}

#[test]
fn protocol_walk() {
    check(
        "protocol-walk",
        &[],
        &[
            "client Close -> Ok(())",
            "an aborted set: GetConfiguration ->",
        ],
    );
}

#[test]
fn shm_backup() {
    check(
        "shm-backup",
        &["0.01", "2"],
        &[
            "through 2 devices between two processes",
            "every byte checked",
        ],
    );
}

#[test]
fn async_workers() {
    check(
        "async-workers",
        &["4", "2", "2"],
        &["through 2 devices", "every byte checked in a worker"],
    );
}

/// A deadline shorter than the work: the service aborts the set (SignalAbort) and answers the
/// request with the error, at once.
#[test]
fn tokio_service_deadline() {
    let r = run("tokio-service", &["64", "20"]);
    let shown = format!("--- stdout\n{}--- stderr\n{}", r.stdout, r.stderr);
    assert!(!r.success, "the service met a 20 ms deadline\n{shown}");
    assert!(r.stderr.contains("not done within 20ms"), "{shown}");
    assert!(r.elapsed < Duration::from_secs(20), "{shown}");
}
