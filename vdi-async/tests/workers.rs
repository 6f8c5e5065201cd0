//! The commands of a set consumed by worker processes: the primary (this test) takes each
//! device's commands in order through the async API and passes each Write's buffer handle to
//! one of three secondary processes, which map the buffer, check every byte and report back;
//! the primary completes the command, and acknowledges a Flush only once every Write before it
//! was reported. The engine runs in a fourth process. All of them are this test binary re-run
//! as `child` in a role.

mod common;

use std::{process::Stdio, time::Duration};

use common::{ChildProc, MSG_TAG, Outcome, Plan};
use futures::StreamExt;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
    sync::mpsc,
};
use vdi_async::{AsyncCommand, AsyncDevice, AsyncSet};
use vdi_core::{BufferHandle, ClientConfig, CommandCode, Completion, CompletionCode, MappedBuffer};
use vdi_shm::{ClientDevice, ClientSet, ShmClient};

/// How long a worker has to answer.
const SAY: Duration = Duration::from_secs(30);

/// The children: the engine, or a worker.
#[test]
fn child() {
    let Some(role) = common::role() else { return };
    common::init_tracing();
    common::watchdog(Duration::from_secs(90));
    match role.as_str() {
        "engine" => {
            let (name, plan) = Plan::from_env();
            let outcomes = common::serve_backup(&name, plan);
            assert!(
                outcomes.iter().all(|o| *o == Outcome::Ok),
                "engine outcomes: {outcomes:?}"
            );
        }
        "worker" => worker(&common::param("VDI_SET")),
        other => panic!("unknown role {other}"),
    }
}

/// A worker: joins the set as a secondary, says `ready`, then answers each line of stdin
/// `check HANDLE DEVICE OFFSET LEN` with `ok` or `bad`, after mapping the buffer and checking
/// its bytes; at end of input closes the set and says `closed`.
fn worker(name: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let set = AsyncSet::open_secondary(&ShmClient::new(), None, name)
            .await
            .expect("OpenInSecondary");
        assert!(set.configuration().await.unwrap().is_backup());
        common::tell_parent("ready");
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await.unwrap() {
            let w: Vec<u64> = line
                .split(' ')
                .skip(1)
                .map(|x| x.parse().unwrap())
                .collect();
            let [handle, device, offset, len] = w[..] else {
                panic!("bad request {line:?}")
            };
            let mapped = set
                .map_buffer_handle(BufferHandle(handle as u32), len as u32)
                .await
                .expect("MapBufferHandle");
            let data = mapped.as_slice();
            let ok = common::check(device as u32, offset, data);
            drop(mapped);
            common::tell_parent(if ok { "ok" } else { "bad" });
        }
        set.close().await.expect("secondary Close");
        common::tell_parent("closed");
    });
}

/// A worker process as the primary drives it.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    async fn spawn(name: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .env("VDI_ROLE", "worker")
            .env("VDI_SET", name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut w = Self {
            child,
            stdin,
            lines,
        };
        assert_eq!(w.recv().await, "ready");
        w
    }

    /// The worker's next message.
    async fn recv(&mut self) -> String {
        loop {
            let line = tokio::time::timeout(SAY, self.lines.next_line())
                .await
                .expect("the worker does not answer")
                .unwrap()
                .expect("the worker ended");
            if let Some((_, msg)) = line.split_once(MSG_TAG) {
                return msg.to_owned();
            }
        }
    }

    async fn ask(&mut self, line: &str) -> String {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.recv().await
    }

    async fn close(mut self) {
        drop(self.stdin);
        let mut rest = self.lines;
        let said = loop {
            let line = rest.next_line().await.unwrap().expect("no goodbye");
            if let Some((_, msg)) = line.split_once(MSG_TAG) {
                break msg.to_owned();
            }
        };
        assert_eq!(said, "closed");
        assert!(self.child.wait().await.unwrap().success(), "worker failed");
    }
}

/// A Write to be checked by a worker; `done` hears the verdict.
struct Job {
    command: AsyncCommand<ClientDevice>,
    offset: u64,
    done: mpsc::UnboundedSender<bool>,
}

/// Takes one device's commands in order and hands the Writes to the workers; acknowledges
/// Flush once every Write before it was reported good. Returns the bytes dispatched.
async fn dispatch(device: AsyncDevice<ClientDevice>, jobs: async_channel::Sender<Job>) -> u64 {
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let (mut offset, mut sent, mut reported) = (0u64, 0u64, 0u64);
    let mut commands = device.commands();
    while let Some(cmd) = commands.next().await {
        let cmd = cmd.unwrap();
        match cmd.code() {
            CommandCode::WRITE => {
                let size = u64::from(cmd.size());
                let job = Job {
                    command: cmd,
                    offset,
                    done: done_tx.clone(),
                };
                assert!(jobs.send(job).await.is_ok(), "workers are gone");
                offset += size;
                sent += 1;
            }
            CommandCode::FLUSH => {
                while reported < sent {
                    assert!(done.recv().await.unwrap(), "a worker found wrong bytes");
                    reported += 1;
                }
                cmd.complete(Completion::success(0)).unwrap();
            }
            _ => cmd.complete(Completion::not_supported()).unwrap(),
        }
    }
    offset
}

/// Drives one worker: checks each job's buffer there, then completes the command.
async fn drive(
    mut worker: Worker,
    set: AsyncSet<ClientSet>,
    jobs: async_channel::Receiver<Job>,
) -> u64 {
    let mut count = 0;
    while let Ok(job) = jobs.recv().await {
        // A handle is process-independent: the worker maps it in its own address space.
        let h = job.command.buffer_handle(&set).expect("GetBufferHandle");
        let (dev, size) = (job.command.device_index(), job.command.size());
        let answer = worker
            .ask(&format!("check {} {dev} {} {size}", h.0, job.offset))
            .await;
        let ok = answer == "ok";
        let c = if ok {
            Completion::success(size)
        } else {
            Completion::with_code(CompletionCode::IO_DEVICE)
        };
        job.command.complete(c).unwrap();
        let _ = job.done.send(ok);
        count += 1;
    }
    worker.close().await;
    count
}

/// Two devices' backups checked by three worker processes through buffer handles; the engine
/// sees every command succeed, every byte is checked in a worker, and all processes end well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_check_backup_buffers() {
    common::init_tracing();
    common::watchdog(Duration::from_secs(120));
    let plan = Plan {
        devices: 2,
        block: 4096,
        max_transfer: 128 << 10,
        depth: 4,
        bytes: 4 << 20,
    };
    let name = common::unique_name("workers");
    let cfg = ClientConfig {
        device_count: plan.devices,
        ..ClientConfig::default()
    };
    let set = AsyncSet::create(&ShmClient::new(), None, &name, &cfg)
        .await
        .unwrap();
    let engine = ChildProc::spawn("child", "engine", &plan.params(&name));
    set.configuration().await.unwrap();
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(Worker::spawn(&name).await);
    }
    let (jobs_tx, jobs_rx) = async_channel::bounded(8);
    let drivers: Vec<_> = workers
        .into_iter()
        .map(|w| tokio::spawn(drive(w, set.clone(), jobs_rx.clone())))
        .collect();
    drop(jobs_rx);
    let names: Vec<String> = (0..plan.devices)
        .map(|i| common::device_name(&name, i))
        .collect();
    let bytes = vdi_async::serve_all(&set, &names, move |device| {
        let jobs = jobs_tx.clone();
        async move { Ok::<_, vdi_core::Error>(dispatch(device, jobs).await) }
    })
    .await
    .unwrap();
    assert_eq!(bytes, vec![plan.bytes; 2]);
    // serve_all dropped its closure, and with it the last job sender: the drivers end.
    let mut jobs_done = 0;
    for d in drivers {
        jobs_done += d.await.unwrap();
    }
    let writes = plan.bytes.div_ceil(u64::from(plan.max_transfer)) * u64::from(plan.devices);
    assert_eq!(jobs_done, writes);
    set.close().await.unwrap();
    drop(set);
    let status = tokio::task::spawn_blocking(move || engine.wait(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(status.success(), "engine process failed");
}
