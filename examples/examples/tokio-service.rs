//! A tokio service that embeds the async API (`vdi-async`): a service task takes "backup
//! requests" from an mpsc channel (standing in for an HTTP or gRPC API) and runs each one on
//! its own task, concurrently: a striped backup into one file per device, then the restore
//! from those files, which the engine verifies byte for byte. `main` sends two requests at
//! once to show that it is a service.
//!
//! For each BACKUP or RESTORE of a request, the calls in order (§4 for each, §10 for the
//! sequence, §9.4 for why all devices are served at once):
//!
//! 1. `CreateEx`: [`AsyncSet::create`] (runs on tokio's blocking pool).
//! 2. Start the engine: with SQL Server, `BACKUP DATABASE … TO VIRTUAL_DEVICE = '<set>',
//!    VIRTUAL_DEVICE = '<set>-stripe1', …`; here the reference engine in a child process
//!    (`examples::engine`), through [`tokio::process`].
//! 3. `GetConfiguration`: [`AsyncSet::configuration`], with a time limit (as sqlpipe and pbsgui
//!    do) in case the statement never reaches the engine.
//! 4. `OpenDevice` for every device and the command loops, all at once:
//!    [`vdi_async::serve_all`], a task per device, running [`vdi_async::backup_to`] into a
//!    [`BackupSink`] of our own that writes a `tokio::fs::File` and calls `sync_all` before a
//!    Flush or Complete is acknowledged (the engine must never be told that data is durable
//!    when it is not), or [`vdi_async::restore_from`] reading the file back (`ERROR_HANDLE_EOF`
//!    at its end).
//! 5. `Close`: [`AsyncSet::close`]; then the engine's exit status, the statement's result
//!    (§9.1).
//!
//! Cancellation: each BACKUP or RESTORE races a deadline and ctrl-c. If either comes first, the
//! work is dropped and the service calls `SignalAbort` ([`AsyncSet::signal_abort`]): the engine
//! and every device stop at once (§9.2), the set is closed, and the request is answered with the
//! error.
//!
//! Run it with `cargo run -p examples --example tokio-service [MIB] [DEADLINE_MS]` (default:
//! 16 MiB per request, a deadline of 60 s; try a deadline of 50 ms with 256 MiB to see the
//! cancellation, or press ctrl-c).

use std::{
    io,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use examples::{
    BoxError,
    engine::{self, EngineCommand},
};
use tokio::{fs::File, io::AsyncWriteExt, sync::mpsc, sync::oneshot, task::JoinSet};
use vdi_async::{AsyncDevice, AsyncSet, BackupSink, Summary, backup_to, restore_from, serve_all};
use vdi_core::{ClientConfig, Features};
use vdi_shm::{ClientDevice, ShmClient};

/// The limit on `GetConfiguration`.
const CONFIG_LIMIT: Duration = Duration::from_secs(10);

/// A request to the service: back up a database of `size` bytes through `devices` devices, then
/// restore it.
struct Request {
    id: u32,
    size: u64,
    devices: u32,
    /// The limit on the BACKUP, and on the RESTORE.
    deadline: Duration,
}

type Reply = oneshot::Sender<Result<String, BoxError>>;

fn main() -> ExitCode {
    if let Some(code) = engine::run_if_engine() {
        return code;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib = args.first().map_or(Ok(16), |a| a.parse::<u64>());
    let deadline = args.get(1).map_or(Ok(60_000), |a| a.parse::<u64>());
    let (Ok(mib @ 1..), Ok(deadline)) = (mib, deadline.map(Duration::from_millis)) else {
        eprintln!("usage: tokio-service [MIB] [DEADLINE_MS]");
        return ExitCode::FAILURE;
    };
    let runtime = tokio::runtime::Runtime::new().map_err(BoxError::from);
    match runtime.and_then(|rt| rt.block_on(run(mib << 20, deadline))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio-service: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(size: u64, deadline: Duration) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let (requests, inbox) = mpsc::channel(8);
    let service = tokio::spawn(service(inbox, dir.path().to_owned()));
    let ask = |id, devices| {
        let requests = requests.clone();
        async move {
            let (reply, answer) = oneshot::channel();
            let request = Request {
                id,
                size,
                devices,
                deadline,
            };
            let sent = requests.send((request, reply)).await;
            sent.map_err(|_| "the service stopped")?;
            answer
                .await
                .map_err(|_| "the service dropped the request")?
        }
    };
    // Two clients of the service at the same time.
    let (a, b) = tokio::join!(ask(1, 2), ask(2, 3));
    drop(requests);
    service.await?;
    println!("request 1: {}\nrequest 2: {}", a?, b?);
    println!("tokio-service: both requests succeeded");
    Ok(())
}

/// The service: a task per request, until every sender is gone.
async fn service(mut inbox: mpsc::Receiver<(Request, Reply)>, dir: PathBuf) {
    let mut tasks = JoinSet::new();
    while let Some((request, reply)) = inbox.recv().await {
        let stem = dir.join(format!("request{}", request.id));
        tasks.spawn(async move {
            let _ = reply.send(backup_and_restore(request, stem).await);
        });
    }
    tasks.join_all().await;
}

/// One request: a BACKUP into the files `<stem>.stripe<i>.bak`, then a RESTORE from them.
async fn backup_and_restore(request: Request, stem: PathBuf) -> Result<String, BoxError> {
    let name = format!("tokio-service-{}-{}", std::process::id(), request.id);
    let backup = EngineCommand::backup(&name, request.size);
    let backed_up = session(&name, &request, &stem, backup, backup_file).await?;
    let name = format!("{name}-restore");
    let restore = EngineCommand::restore(&name);
    let restored = session(&name, &request, &stem, restore, restore_file).await?;
    let devices = request.devices;
    Ok(format!(
        "backed up {backed_up} bytes and restored {restored} through {devices} devices"
    ))
}

/// A device's backup into its file.
async fn backup_file(device: AsyncDevice<ClientDevice>, path: PathBuf) -> io::Result<Summary> {
    backup_to(&device, &mut FileSink(File::create(path).await?)).await
}

/// A device's restore from its file.
async fn restore_file(device: AsyncDevice<ClientDevice>, path: PathBuf) -> io::Result<Summary> {
    restore_from(&device, &mut File::open(path).await?).await
}

/// One BACKUP or RESTORE of `request`, each device served by `serve` on its own task with its
/// own file.
async fn session<F, Fut>(
    name: &str,
    request: &Request,
    stem: &Path,
    statement: EngineCommand,
    mut serve: F,
) -> Result<u64, BoxError>
where
    F: FnMut(AsyncDevice<ClientDevice>, PathBuf) -> Fut,
    Fut: Future<Output = io::Result<Summary>> + Send + 'static,
{
    let (devices, deadline) = (request.devices, request.deadline);
    let config = ClientConfig {
        device_count: devices,
        features: Features::REQUEST_COMPLETE,
        ..ClientConfig::default()
    };
    let set = AsyncSet::create(&ShmClient::new(), None, name, &config).await?;
    let mut engine = tokio::process::Command::from(statement.command()?)
        .kill_on_drop(true)
        .spawn()?;
    let names: Vec<String> = (0..devices)
        .map(|i| vdi_core::stripe_device_name(name, i))
        .collect();
    let work = async {
        tokio::time::timeout(CONFIG_LIMIT, set.configuration())
            .await
            .map_err(|_| {
                format!("{name}: the engine did not configure the set within {CONFIG_LIMIT:?}")
            })??;
        let summaries = serve_all(&set, &names, |device| {
            let path = stem.with_extension(format!("stripe{}.bak", device.index()));
            serve(device, path)
        })
        .await?;
        Ok::<_, BoxError>(summaries.iter().map(|s| s.bytes).sum())
    };
    let result = tokio::select! {
        r = work => r,
        () = tokio::time::sleep(deadline) => Err(format!("{name}: not done within {deadline:?}").into()),
        Ok(()) = tokio::signal::ctrl_c() => Err(format!("{name}: cancelled (ctrl-c)").into()),
    };
    if result.is_err() {
        // SignalAbort: the engine and every device stop now (§9.2).
        let _ = set.signal_abort();
    }
    let closed = set.close().await;
    let status = engine.wait().await?;
    let bytes = result?;
    closed?;
    if !status.success() {
        return Err(format!("the engine failed on {name} ({status})").into());
    }
    Ok(bytes)
}

/// A device's backup into a file; durable before a Flush or Complete is acknowledged.
struct FileSink(File);

#[async_trait]
impl BackupSink for FileSink {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.0.write_all(&data).await
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.0.flush().await?;
        self.0.sync_all().await
    }

    async fn complete(&mut self) -> io::Result<()> {
        // The whole backup is written: a real service would also record it in its catalog.
        self.sync().await
    }
}
