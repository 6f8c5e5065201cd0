//! Backups to object storage, against real servers on 127.0.0.1 (moto and s3s-fs for S3,
//! Azurite for Azure Blob) and a fault-injecting proxy in front of them; every restore is
//! checked byte for byte by the reference engine.
//!
//! The servers come from `cargo xtask objstore-test`; a plain `cargo test` has none and skips
//! these tests with a line saying so.

mod common;

use std::{
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{AGENT, ENGINE, Run, finish};
use serde_json::Value;
use vdi_testkit::{Azurite, Fault, FaultProxy, FaultRule, ObjstoreTools, S3Server, objstore_tools};

/// The servers, or `None` (and a line saying why) when this run has none.
fn tools() -> Option<ObjstoreTools> {
    let t = objstore_tools();
    if t.is_none() {
        eprintln!("skipping: no object-storage servers here; run cargo xtask objstore-test");
    }
    t
}

/// How the agent reaches one store: its environment (credentials under object_store's
/// names) and the flags that name the endpoint.
#[derive(Clone, Debug)]
struct Store {
    /// `s3://bucket` or `az://container`.
    base: String,
    env: Vec<(String, String)>,
    endpoint: String,
}

impl Store {
    fn s3(s3: &S3Server, bucket: &str) -> Self {
        Self::s3_at(s3, bucket, &s3.endpoint())
    }

    /// `s3` reached through `endpoint` (a proxy in front of it, or nothing at all).
    fn s3_at(s3: &S3Server, bucket: &str, endpoint: &str) -> Self {
        Self {
            base: format!("s3://{bucket}"),
            env: vec![
                ("AWS_ACCESS_KEY_ID".into(), s3.access_key().into()),
                ("AWS_SECRET_ACCESS_KEY".into(), s3.secret_key().into()),
                ("AWS_REGION".into(), s3.region().into()),
            ],
            endpoint: endpoint.to_owned(),
        }
    }

    fn azure(az: &Azurite, container: &str) -> Self {
        Self {
            base: format!("az://{container}"),
            env: vec![
                ("AZURE_STORAGE_ACCOUNT_NAME".into(), az.account().into()),
                ("AZURE_STORAGE_ACCOUNT_KEY".into(), az.key().into()),
            ],
            endpoint: az.endpoint(),
        }
    }

    fn url(&self, prefix: &str) -> String {
        format!("{}/{prefix}", self.base)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(AGENT);
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_ENDPOINT",
            "AWS_ENDPOINT_URL",
            "AZURE_STORAGE_ACCOUNT_NAME",
            "AZURE_STORAGE_ACCOUNT_KEY",
        ] {
            c.env_remove(var);
        }
        c.envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .args(["--endpoint", &self.endpoint, "--allow-http"])
            .stdin(Stdio::null());
        c
    }

    /// Runs the agent with `args` and this store's flags.
    fn agent(&self, args: &[&str]) -> Run {
        let out: Output = self.command(args).output().expect("start vdi-agent");
        finish(args, &out)
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vdi-agent")
    }

    /// `backup URL --devices N --size SIZE` with small transfers and 5 MiB parts (so that a
    /// few MiB make a multipart upload), and `extra`.
    fn backup(&self, prefix: &str, devices: u32, size: &str, extra: &[&str]) -> Run {
        let url = self.url(prefix);
        let devices = devices.to_string();
        let mut args = vec![
            "backup",
            &url,
            "--devices",
            &devices,
            "--size",
            size,
            "--part-size",
            "5MiB",
        ];
        args.extend(ENGINE);
        args.extend(extra);
        self.agent(&args)
    }

    fn restore(&self, prefix: &str, extra: &[&str]) -> Run {
        let url = self.url(prefix);
        let mut args = vec!["restore", &url];
        args.extend(ENGINE);
        args.extend(extra);
        self.agent(&args)
    }

    fn verify(&self, prefix: &str) -> Run {
        self.agent(&["verify", &self.url(prefix)])
    }

    fn manifest(&self, prefix: &str) -> Value {
        let i = self.agent(&["info", &self.url(prefix), "--json"]);
        assert_eq!(i.code, 0, "info: {}", i.stderr);
        let info: Value = serde_json::from_str(&i.stdout).expect("info JSON");
        info
    }
}

/// The manifest stored under `prefix`, read straight from the server.
fn stored_manifest(s3: &S3Server, bucket: &str, prefix: &str) -> Option<Value> {
    let key = format!("{prefix}/manifest.json");
    s3.objects(bucket, prefix)
        .iter()
        .any(|(k, _)| *k == key)
        .then(|| serde_json::from_slice(&s3.get_object(bucket, &key)).expect("manifest JSON"))
}

/// Waits (bounded: a failing test fails, it does not hang) until `ready` holds.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "gave up waiting for {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn wait_output(child: Child, args: &[&str]) -> Run {
    let out = child.wait_with_output().expect("wait for vdi-agent");
    finish(args, &out)
}

/// Backs up, verifies and restores through 1 and 4 devices, stored and with zstd.
fn round_trips(store: &Store, objects: impl Fn(&str) -> Vec<(String, u64)>) {
    for (devices, zstd) in [(1, false), (4, false), (1, true), (4, true)] {
        let prefix = format!("rt-{devices}-{}", if zstd { "zstd" } else { "stored" });
        let extra: &[&str] = if zstd { &["--zstd"] } else { &[] };
        let b = store.backup(&prefix, devices, "12MiB", extra);
        assert_eq!(b.code, 0, "backup {prefix}: {}", b.stderr);
        assert!(b.stderr.contains("in flight per stripe"), "{}", b.stderr);
        let stored = objects(&prefix);
        for i in 0..devices {
            let seg = format!("{prefix}/stripe-{i:02}.vdis.");
            assert!(
                stored
                    .iter()
                    .any(|(k, _)| k.starts_with(&seg) && k.ends_with(".000001")),
                "{seg}*.000001 in {stored:?}"
            );
        }
        let v = store.verify(&prefix);
        assert_eq!(v.code, 0, "verify {prefix}: {}", v.stderr);
        let r = store.restore(&prefix, &[]);
        assert_eq!(r.code, 0, "restore {prefix}: {}", r.stderr);
        assert!(r.stderr.contains("RESTORE DATABASE"), "{}", r.stderr);
        let m = store.manifest(&prefix);
        assert_eq!(m["state"], "complete");
    }
}

#[test]
fn s3_round_trips_one_and_four_devices_stored_and_zstd() {
    let Some(tools) = tools() else { return };
    let s3 = S3Server::moto(&tools);
    s3.create_bucket("bkt");
    let store = Store::s3(&s3, "bkt");
    round_trips(&store, |p| s3.objects("bkt", p));
    // Nothing left half-uploaded.
    assert_eq!(s3.multipart_uploads("bkt"), Vec::<(String, String)>::new());
}

#[test]
fn azure_round_trips_one_and_four_devices_stored_and_zstd() {
    let Some(tools) = tools() else { return };
    let az = Azurite::start(&tools);
    az.create_container("ctr");
    let store = Store::azure(&az, "ctr");
    round_trips(&store, |p| az.objects("ctr", p));
}

#[test]
fn a_flush_heavy_backup_makes_a_segment_per_flush() {
    let Some(tools) = tools() else { return };
    let s3 = S3Server::moto(&tools);
    s3.create_bucket("bkt");
    let store = Store::s3(&s3, "bkt");
    let b = store.backup("flushy", 2, "8MiB", &["--engine-arg=--flushes=6"]);
    assert_eq!(b.code, 0, "{}", b.stderr);
    let m = stored_manifest(&s3, "bkt", "flushy").expect("a manifest");
    for stripe in m["stripes"].as_array().expect("stripes") {
        let segments = stripe["segments"].as_array().expect("segments");
        // Six Flushes and the Complete: a segment each, a checkpoint record in each.
        assert!(segments.len() >= 6, "{stripe}");
        let total: u64 = segments.iter().map(|s| s["bytes"].as_u64().unwrap()).sum();
        assert_eq!(total, stripe["stored_bytes"].as_u64().unwrap(), "{stripe}");
    }
    let r = store.restore("flushy", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn no_server_wrong_credentials_and_a_missing_bucket_are_refused_before_the_backup() {
    let Some(tools) = tools() else { return };
    let s3 = S3Server::moto(&tools);
    s3.create_bucket("bkt");

    // No server: a port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let nowhere = Store::s3_at(&s3, "bkt", &closed);
    let b = nowhere.backup("x", 1, "1MiB", &["--retries", "1", "--retry-timeout", "2s"]);
    assert_eq!(b.code, 6, "{}", b.stderr);
    assert!(b.stderr.contains("cannot be reached"), "{}", b.stderr);
    assert!(
        !b.stderr.contains("BACKUP DATABASE"),
        "no engine: {}",
        b.stderr
    );

    // Wrong credentials: refused, and the secret never printed.
    let mut wrong = Store::s3(&s3, "bkt");
    wrong.env[1].1 = "not-the-secret-at-all".into();
    let b = wrong.backup("x", 1, "1MiB", &[]);
    assert_eq!(b.code, 6, "{}", b.stderr);
    assert!(
        b.stderr.contains("credentials were refused"),
        "{}",
        b.stderr
    );
    assert!(!b.stderr.contains("not-the-secret-at-all"));
    assert!(!b.stderr.contains(s3.secret_key()));
    assert!(
        !b.stderr.contains("BACKUP DATABASE"),
        "no engine: {}",
        b.stderr
    );

    // A missing bucket.
    let missing = Store::s3(&s3, "no-such-bucket");
    let b = missing.backup("x", 1, "1MiB", &[]);
    assert_eq!(b.code, 6, "{}", b.stderr);
    assert!(b.stderr.contains("does not exist"), "{}", b.stderr);
    assert!(
        !b.stderr.contains("BACKUP DATABASE"),
        "no engine: {}",
        b.stderr
    );

    assert_eq!(s3.objects("bkt", ""), Vec::<(String, u64)>::new());
}

#[test]
fn an_existing_backup_at_the_prefix_is_refused() {
    let Some(tools) = tools() else { return };
    let s3 = S3Server::moto(&tools);
    s3.create_bucket("bkt");
    let store = Store::s3(&s3, "bkt");
    assert_eq!(store.backup("once", 1, "1MiB", &[]).code, 0);
    let before = s3.objects("bkt", "once");
    for extra in [&[][..], &["--force"][..]] {
        let b = store.backup("once", 1, "1MiB", extra);
        assert_eq!(b.code, 1, "{}", b.stderr);
        assert!(b.stderr.contains("holds a complete backup"), "{}", b.stderr);
    }
    assert_eq!(s3.objects("bkt", "once"), before, "nothing was touched");
    // Something else under the prefix: refused too.
    s3.put_object("bkt", "other/notes.txt", b"mine");
    let b = store.backup("other", 1, "1MiB", &[]);
    assert_eq!(b.code, 1, "{}", b.stderr);
    assert!(
        b.stderr.contains("holds no backup of this agent"),
        "{}",
        b.stderr
    );
}

#[test]
fn throttling_is_retried_and_past_the_retry_budget_the_backup_fails_with_exit_6() {
    let Some(tools) = tools() else { return };
    let s3 = S3Server::moto(&tools);
    s3.create_bucket("bkt");
    let proxy = FaultProxy::start(s3.addr());
    let store = Store::s3_at(&s3, "bkt", &proxy.endpoint());

    // A few of each fault on the parts and the manifest: retried, the backup is good.
    proxy.add(
        FaultRule::new(Fault::SlowDown)
            .method("PUT")
            .query_contains("partNumber")
            .times(2),
    );
    proxy.add(
        FaultRule::new(Fault::InternalError)
            .method("PUT")
            .path_contains("manifest")
            .times(1),
    );
    proxy.add(
        FaultRule::new(Fault::Drop)
            .method("PUT")
            .query_contains("partNumber")
            .skip(1)
            .times(1),
    );
    let b = store.backup("retried", 2, "12MiB", &[]);
    assert_eq!(b.code, 0, "{}", b.stderr);
    assert!(
        proxy.injected() >= 3,
        "{} faults injected",
        proxy.injected()
    );
    proxy.clear();
    let r = store.restore("retried", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // Every part throttled: after the budget, a clean failure that leaves nothing behind.
    proxy.add(
        FaultRule::new(Fault::SlowDown)
            .method("PUT")
            .query_contains("partNumber"),
    );
    let b = store.backup(
        "throttled",
        2,
        "12MiB",
        &["--retries", "2", "--retry-timeout", "5s"],
    );
    assert_eq!(b.code, 6, "{}", b.stderr);
    assert!(
        b.stderr.contains("SlowDown") || b.stderr.contains("503"),
        "{}",
        b.stderr
    );
    proxy.clear();
    assert_eq!(s3.multipart_uploads("bkt"), Vec::<(String, String)>::new());
    assert_eq!(s3.objects("bkt", "throttled"), Vec::<(String, u64)>::new());
}

#[test]
fn a_deleted_or_truncated_segment_fails_verify_and_restore_with_exit_5() {
    let Some(tools) = tools() else { return };
    let s3 = S3Server::moto(&tools);
    s3.create_bucket("bkt");
    let store = Store::s3(&s3, "bkt");
    assert_eq!(
        store
            .backup("dmg", 2, "6MiB", &["--engine-arg=--flushes=3"])
            .code,
        0
    );
    let m = stored_manifest(&s3, "bkt", "dmg").expect("manifest");
    let name = m["stripes"][1]["segments"][1]["name"]
        .as_str()
        .expect("a second segment");
    let key = &format!("dmg/{name}");
    let whole = s3.get_object("bkt", key);

    s3.put_object("bkt", key, &whole[..whole.len() - 100]);
    for r in [store.verify("dmg"), store.restore("dmg", &[])] {
        assert_eq!(r.code, 5, "{}", r.stderr);
        assert!(r.stderr.contains(name), "{}", r.stderr);
        assert!(!r.stderr.contains("RESTORE DATABASE"), "{}", r.stderr);
    }

    s3.delete_object("bkt", key);
    for r in [store.verify("dmg"), store.restore("dmg", &[])] {
        assert_eq!(r.code, 5, "{}", r.stderr);
        assert!(r.stderr.contains("is missing"), "{}", r.stderr);
    }

    // The same length with a byte changed: the records' checksums catch it.
    let mut changed = whole.clone();
    let at = changed.len() / 2;
    changed[at] ^= 1;
    s3.put_object("bkt", key, &changed);
    let v = store.verify("dmg");
    assert_eq!(v.code, 5, "{}", v.stderr);
}

/// A 2-device backup of 40 MiB that flushes once halfway and goes silent for `silent` after
/// 7.5 MiB more per device (a 5 MiB part uploaded, the multipart upload open).
fn backup_paused_mid_upload(store: &Store, prefix: &str, silent: &str) -> (Child, Vec<String>) {
    let url = store.url(prefix);
    let silent = format!("--engine-arg=--silent-for={silent}");
    let mut args: Vec<String> = [
        "backup",
        &url,
        "--devices",
        "2",
        "--size",
        "40MiB",
        "--part-size",
        "5MiB",
        "--retries",
        "1",
        "--retry-timeout",
        "3s",
        "--engine-arg=--flushes=2",
        "--engine-arg=--silent-at=70",
        &silent,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(ENGINE.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    (store.spawn(&refs), args)
}

#[test]
fn the_server_killed_mid_upload_leaves_the_flushed_part_and_cleanup_tidies_it() {
    let Some(tools) = tools() else { return };
    let root = tempfile::tempdir().expect("temp dir");
    let mut s3 = S3Server::s3s_fs(&tools, root.path());
    s3.create_bucket("bkt");
    let store = Store::s3(&s3, "bkt");
    let (child, args) = backup_paused_mid_upload(&store, "killed", "10s");
    wait_until("the first Flush and an open upload", || {
        stored_manifest(&s3, "bkt", "killed").is_some_and(|m| {
            m["state"] == "flushed" && m["uploads"].as_array().is_some_and(|u| !u.is_empty())
        })
    });
    s3.kill();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let b = wait_output(child, &refs);
    assert_eq!(b.code, 6, "{}", b.stderr);

    s3.restart();
    let store = Store::s3(&s3, "bkt");
    let m = stored_manifest(&s3, "bkt", "killed").expect("the manifest");
    assert_eq!(m["state"], "flushed", "the last durable checkpoint: {m}");
    assert!(
        !s3.multipart_uploads("bkt").is_empty(),
        "an upload was left open"
    );

    let r = store.restore("killed", &[]);
    assert_eq!(r.code, 7, "{}", r.stderr);
    // The flushed part, asked for: sent checked, and the engine fails it partway.
    let r = store.restore("killed", &["--allow-incomplete"]);
    assert!(
        r.stderr.contains("restoring an incomplete backup"),
        "{}",
        r.stderr
    );
    assert_eq!(r.code, 3, "{}", r.stderr);

    let c = store.agent(&["cleanup", &store.url("killed")]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert!(c.stderr.contains("aborted"), "{}", c.stderr);
    assert_eq!(s3.multipart_uploads("bkt"), Vec::<(String, String)>::new());
    let m = stored_manifest(&s3, "bkt", "killed").expect("the manifest");
    assert!(m.get("uploads").is_none(), "{m}");
    let v = store.verify("killed");
    assert_eq!(
        v.code, 7,
        "still incomplete, every stripe checks out: {}",
        v.stderr
    );
}

#[test]
fn a_second_agent_on_the_same_prefix_is_refused() {
    let Some(tools) = tools() else { return };
    let s3 = S3Server::moto(&tools);
    s3.create_bucket("bkt");
    let store = Store::s3(&s3, "bkt");
    let (first, args) = backup_paused_mid_upload(&store, "shared", "4s");
    wait_until("the first agent's manifest", || {
        stored_manifest(&s3, "bkt", "shared").is_some_and(|m| m["state"] == "flushed")
    });
    // Without --force: refused, the first one's backup untouched.
    let b = store.backup("shared", 1, "1MiB", &[]);
    assert_eq!(b.code, 1, "{}", b.stderr);
    assert!(b.stderr.contains("incomplete backup"), "{}", b.stderr);
    // With --force it replaces the manifest; the first agent's next conditional write then
    // fails, so it never reports a backup that is no longer its own.
    let b = store.backup("shared", 1, "1MiB", &["--force"]);
    assert_eq!(b.code, 0, "{}", b.stderr);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = wait_output(first, &refs);
    assert_eq!(a.code, 6, "{}", a.stderr);
    assert!(a.stderr.contains("two agents"), "{}", a.stderr);
    let v = store.verify("shared");
    assert_eq!(
        v.code, 0,
        "the second agent's backup is whole: {}",
        v.stderr
    );
}

/// `VmHWM` of a running process, in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
fn sixty_four_devices_stay_under_the_memory_cap() {
    let Some(tools) = tools() else { return };
    let root = tempfile::tempdir().expect("temp dir");
    let s3 = S3Server::s3s_fs(&tools, root.path());
    s3.create_bucket("bkt");
    let store = Store::s3(&s3, "bkt");
    let cap: u64 = 1 << 30;
    let url = store.url("wide");
    let mut args = vec![
        "backup",
        &url,
        "--devices",
        "64",
        "--size",
        "768MiB",
        "--part-size",
        "5MiB",
        "--upload-memory",
        "1GiB",
    ];
    args.extend(ENGINE);
    let mut child = store
        .command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vdi-agent");
    let pid = child.id();
    let mut peak = 0;
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        assert!(start.elapsed() < Duration::from_secs(600), "backup hangs");
        peak = peak.max(peak_rss(pid).unwrap_or(0));
        thread::sleep(Duration::from_millis(20));
    }
    let b = wait_output(child, &args);
    assert_eq!(b.code, 0, "{}", b.stderr);
    println!(
        "64 devices, 768 MiB: the agent's peak memory {:.1} MiB, the cap {} MiB",
        peak as f64 / f64::from(1 << 20),
        cap >> 20
    );
    assert!(peak > 0, "the agent's memory was never read");
    assert!(peak < cap, "peak {peak} bytes over the cap {cap}");
    let v = store.verify("wide");
    assert_eq!(v.code, 0, "{}", v.stderr);
}
