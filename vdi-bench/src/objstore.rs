//! The main job against a local S3 server: `vdi-agent backup s3://...` and `restore` through
//! 4 devices, each against the same server's throughput for the same bytes moved by
//! object_store alone (4 multipart uploads of the stripes' sizes, the agent's part size and
//! parts in flight; 4 readers of ranged GETs of the agent's read size), interleaved.
//!
//! The server is s3s-fs (Rust, signatures checked, its data on tmpfs so that no disk is the
//! bound), the binary `cargo xtask objstore-test` installs; `cargo xtask bench` names it in
//! `VDI_S3S_FS`. Without it the rows are skipped with a line saying so.

use std::{
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use object_store::{
    ObjectStore, ObjectStoreExt, WriteMultipart, aws::AmazonS3Builder, path::Path as ObjPath,
};

use crate::{
    job::{Row, Samples},
    plan::Plan,
    util::{self, Context, Error, Result},
};

/// The devices of the object-storage rows.
const DEVICES: u32 = 4;
/// The agent's plan for 4 devices in its default 256 MiB (three quarters of it for parts):
/// 16 MiB parts, 2 in flight per stripe uploading, 1 reading (with one more read queued).
const PART: usize = 16 << 20;
const UP_IN_FLIGHT: usize = 2;
const DOWN_IN_FLIGHT: usize = 1;
const KEY: &str = "VDIBENCHKEY";
const SECRET: &str = "VDIBENCHSECRET";
const BUCKET: &str = "bench";

/// s3s-fs on a free port, its data in `root`; killed when dropped.
struct Server {
    child: Child,
    endpoint: String,
}

impl Server {
    fn start(binary: &Path, root: &Path) -> Result<Self> {
        fs::create_dir_all(root.join(BUCKET))
            .with_context(|| format!("create {}", root.display()))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("a free port")?
            .port();
        let child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", KEY, "--secret-key", SECRET])
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let mut s = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            if start.elapsed() > Duration::from_secs(30)
                || s.child.try_wait().ok().flatten().is_some()
            {
                return Err(Error::msg("s3s-fs did not start"));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(s)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The two rows, or none (and why) when s3s-fs is not installed.
pub(crate) fn rows(plan: &Plan, agent: &Path) -> Result<Vec<Row>> {
    if !agent.is_file() {
        eprintln!(
            "  main job: the S3 rows skipped: {} is not built",
            agent.display()
        );
        return Ok(Vec::new());
    }
    let Some(binary) = std::env::var_os("VDI_S3S_FS").map(PathBuf::from) else {
        eprintln!(
            "  main job: the S3 rows skipped: no VDI_S3S_FS (`cargo xtask bench` sets it once \
             `cargo xtask objstore-test` has installed s3s-fs)"
        );
        return Ok(Vec::new());
    };
    let root = PathBuf::from("/dev/shm").join(util::unique_name("s3"));
    let r = measure(plan, agent, &binary, &root);
    let _ = fs::remove_dir_all(&root);
    r
}

fn measure(plan: &Plan, agent: &Path, binary: &Path, root: &Path) -> Result<Vec<Row>> {
    let server = Server::start(binary, root)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("a runtime")?;
    let store: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id(KEY)
            .with_secret_access_key(SECRET)
            .with_endpoint(&server.endpoint)
            .with_allow_http(true)
            .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
            .build()
            .map_err(|e| Error::msg(format!("object_store: {e}")))?,
    );
    let size = plan.job_bytes;
    let transfer = plan.job_transfers.first().copied().unwrap_or(1 << 20);
    let env = [
        ("AWS_ACCESS_KEY_ID", KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_REGION", "us-east-1"),
    ];
    let flags = |extra: &[String]| -> Vec<String> {
        let mut f = vec![
            format!("--endpoint={}", server.endpoint),
            "--allow-http".to_owned(),
            format!("--max-transfer-size={transfer}"),
        ];
        f.extend_from_slice(extra);
        f
    };
    let mut b = Samples::default();
    let mut r = Samples::default();
    let mut stored = 0;
    let mut last: Vec<(String, u64)> = Vec::new();
    for round in 0..plan.job_rounds {
        let prefix = format!("round{round}");
        let url = PathBuf::from(format!("s3://{BUCKET}/{prefix}"));
        let agent_backup = |b: &mut Samples| -> Result<Vec<(String, u64)>> {
            b.run_env(
                agent,
                "backup",
                &url,
                &flags(&[
                    format!("--devices={DEVICES}"),
                    format!("--size={size}"),
                    format!("--buffer-count={}", DEVICES * 4),
                ]),
                &env,
            )?;
            segments(root, &prefix)
        };
        let alone_up = |b: &mut Samples, sizes: &[(String, u64)]| -> Result<()> {
            let t = Instant::now();
            runtime.block_on(upload(&store, &format!("plain{round}"), sizes))?;
            b.io.push(t.elapsed());
            Ok(())
        };
        let sizes = if round % 2 == 0 {
            let s = agent_backup(&mut b)?;
            alone_up(&mut b, &s)?;
            s
        } else {
            // The plain upload needs the sizes first: the last round's (the same backup).
            alone_up(&mut b, &last)?;
            agent_backup(&mut b)?
        };
        stored = sizes.iter().map(|(_, n)| n).sum();
        let agent_restore = |r: &mut Samples| r.run_env(agent, "restore", &url, &flags(&[]), &env);
        let alone_down = |r: &mut Samples| -> Result<()> {
            let t = Instant::now();
            runtime.block_on(download(&store, &format!("plain{round}"), &sizes))?;
            r.io.push(t.elapsed());
            Ok(())
        };
        if round % 2 == 0 {
            agent_restore(&mut r)?;
            alone_down(&mut r)?;
        } else {
            alone_down(&mut r)?;
            agent_restore(&mut r)?;
        }
        for old in [format!("round{round}"), format!("plain{round}")] {
            let _ = fs::remove_dir_all(root.join(BUCKET).join(old));
        }
        last = sizes;
        eprintln!(
            "  main job S3 {DEVICES} devices, round {}/{}: backup {:.2}s, object_store upload {:.2}s; restore {:.2}s, object_store download {:.2}s",
            round + 1,
            plan.job_rounds,
            b.agent[round].as_secs_f64(),
            b.io[round].as_secs_f64(),
            r.agent[round].as_secs_f64(),
            r.io[round].as_secs_f64(),
        );
    }
    let mut rows = Vec::new();
    for (op, s) in [("backup-s3", &mut b), ("restore-s3", &mut r)] {
        s.cpu = vec![Duration::ZERO; plan.job_rounds];
        let mut row = s.row(op, "tmpfs", DEVICES, transfer, stored, plan.job_rounds);
        row.cpu_gbps = f64::NAN;
        row.bound = "object_store";
        rows.push(row);
    }
    Ok(rows)
}

/// The objects of the backup under `prefix`, one per stripe with all its segments' bytes:
/// `(stripe file, bytes)`, read from s3s-fs's directory.
fn segments(root: &Path, prefix: &str) -> Result<Vec<(String, u64)>> {
    let dir = root.join(BUCKET).join(prefix);
    let mut per: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for e in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let e = e.context("read a directory entry")?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(at) = name.find(".vdis.") {
            let len = e.metadata().context("stat a segment")?.len();
            *per.entry(name[..at + 5].to_owned()).or_default() += len;
        }
    }
    Ok(per.into_iter().collect())
}

/// Uploads one object per stripe of the same size, concurrently, each as the agent does: parts
/// of [`PART`], [`UP_IN_FLIGHT`] at a time, from a filled buffer.
async fn upload(store: &Arc<dyn ObjectStore>, prefix: &str, sizes: &[(String, u64)]) -> Result<()> {
    let chunk = bytes::Bytes::from(vec![0x5a; PART]);
    let jobs = sizes.iter().map(|(name, len)| {
        let store = Arc::clone(store);
        let path = ObjPath::from(format!("{prefix}/{name}"));
        let chunk = chunk.clone();
        let len = *len;
        async move {
            let up = store.put_multipart(&path).await?;
            let mut w = WriteMultipart::new_with_chunk_size(up, PART);
            let mut left = len;
            while left > 0 {
                w.wait_for_capacity(UP_IN_FLIGHT).await?;
                let n = usize::try_from(left.min(PART as u64)).unwrap_or(PART);
                w.put(chunk.slice(..n));
                left -= n as u64;
            }
            w.finish().await.map(drop)
        }
    });
    let results = futures::future::join_all(jobs).await;
    for r in results {
        r.map_err(|e| Error::msg(format!("object_store upload: {e}")))?;
    }
    Ok(())
}

/// Reads every object back with ranged GETs of [`PART`], [`DOWN_IN_FLIGHT`] at a time per object,
/// in order, concurrently.
async fn download(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    sizes: &[(String, u64)],
) -> Result<()> {
    let jobs = sizes.iter().map(|(name, len)| {
        let store = Arc::clone(store);
        let path = ObjPath::from(format!("{prefix}/{name}"));
        let len = *len;
        async move {
            let ranges = (0..len.div_ceil(PART as u64)).map(|i| {
                let start = i * PART as u64;
                start..(start + PART as u64).min(len)
            });
            let mut got = stream::iter(ranges)
                .map(|r| {
                    let store = Arc::clone(&store);
                    let path = path.clone();
                    async move { store.get_range(&path, r).await }
                })
                .buffered(DOWN_IN_FLIGHT);
            let mut total = 0u64;
            while let Some(b) = got.next().await {
                total += b?.len() as u64;
            }
            if total == len {
                Ok(())
            } else {
                Err(object_store::Error::Generic {
                    store: "bench",
                    source: format!("read {total} of {len} bytes").into(),
                })
            }
        }
    });
    for r in futures::future::join_all(jobs).await {
        r.map_err(|e| Error::msg(format!("object_store download: {e}")))?;
    }
    Ok(())
}
