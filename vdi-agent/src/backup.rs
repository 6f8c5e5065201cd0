//! `vdi-agent backup`: each device's stream into a stripe file (or stdout), with a writer thread
//! per stripe that compresses, checksums and hardens it at every Flush and Complete.

use std::{
    fs,
    io::{self, ErrorKind},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use vdi_agent::{
    manifest::{Manifest, ManifestState, stripe_file_name},
    stripe::{Checkpoint, Codec, StripeHeader, StripeWriter},
};
use vdi_async::{AsyncSet, BackupSink, backup_to};
use vdi_core::{ClientConfig, ClientSetState, Config, Features, stripe_device_name};
use vdi_shm::ClientSet;

use crate::{
    cli::BackupArgs,
    engine::Engine,
    failure::{Exit, Failure, Outcome},
    output::Output,
    progress::{Counters, Progress},
    set_name, shm_client,
    units::{bytes, rate},
};

/// What a finished backup reports.
#[derive(Debug)]
pub(crate) struct BackupReport {
    /// Each stripe's final totals, in device order.
    pub(crate) stripes: Vec<Checkpoint>,
    pub(crate) raw_bytes: u64,
    pub(crate) stored_bytes: u64,
    pub(crate) elapsed: Duration,
    pub(crate) devices: u32,
    pub(crate) engine_line: Option<String>,
}

/// Runs `vdi-agent backup`.
pub(crate) async fn run(args: &BackupArgs, progress: bool) -> Outcome<BackupReport> {
    let to_stdout = args.target.as_os_str() == "-";
    if to_stdout && args.devices != 1 {
        return Err(Failure::other(
            "a backup to stdout has one device; give a directory for more (--devices)",
        ));
    }
    let dir = (!to_stdout).then(|| args.target.clone());
    if let Some(d) = &dir {
        prepare_dir(d)?;
    }
    let name = set_name(args.engine.set.as_deref())?;
    let mut features = Features::LIKE_PIPE;
    if !args.no_request_complete {
        features |= Features::REQUEST_COMPLETE;
    }
    let client_config = ClientConfig {
        device_count: args.devices,
        features,
        server_timeout: args.engine.server_timeout,
        ..ClientConfig::default()
    };
    let set = AsyncSet::create(&shm_client(&args.engine), None, &name, &client_config)
        .await
        .map_err(|e| Failure::other(format!("cannot create the device set '{name}': {e}")))?;
    let mut engine = Engine::start(
        "backup",
        &name,
        args.devices,
        &args.engine,
        &["--size".to_owned(), args.size.to_string()],
    )?;
    if args.engine.external {
        eprintln!(
            "vdi-agent: set '{name}' is ready; run BACKUP DATABASE ... TO {}",
            device_clause(&name, args.devices)
        );
    }
    let result = serve(&set, &mut engine, args, dir.as_deref(), &name, progress).await;
    if result.is_err() {
        let _ = set.signal_abort();
    }
    let _ = set.close().await;
    let end = engine.finish(Duration::from_secs(60)).await;
    match (result, end) {
        (Err(f), Some(end)) if f.exit == Exit::Engine && !end.success => {
            Err(Failure::engine(format!("{f}: {}", end.reason())))
        }
        (Err(f), _) => Err(f),
        (Ok(_), Some(end)) if !end.success => Err(Failure::engine(format!(
            "the engine failed the backup: {}",
            end.reason()
        ))),
        (Ok(mut report), end) => {
            report.engine_line = end.map(|e| e.stdout.trim().to_owned());
            if let Some(d) = &dir {
                finish_manifest(d, &report.stripes)?;
            }
            Ok(report)
        }
    }
}

/// `VIRTUAL_DEVICE = 'a', VIRTUAL_DEVICE = 'a-stripe1', ...` for the user's statement.
pub(crate) fn device_clause(name: &str, devices: u32) -> String {
    (0..devices)
        .map(|i| format!("VIRTUAL_DEVICE = '{}'", stripe_device_name(name, i)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Creates the backup directory, refusing one that holds anything.
fn prepare_dir(dir: &Path) -> Outcome {
    fs::create_dir_all(dir).map_err(|e| Failure::io(format!("creating {}", dir.display()), &e))?;
    let mut entries =
        fs::read_dir(dir).map_err(|e| Failure::io(format!("reading {}", dir.display()), &e))?;
    if entries.next().is_some() {
        return Err(Failure::other(format!(
            "{} is not empty: a backup goes into a new or empty directory, so that no earlier \
             backup is overwritten",
            dir.display()
        )));
    }
    Ok(())
}

/// Marks the manifest complete once the engine reported success.
/// Stripes the engine closed without a final Flush were hardened at the close; the manifest
/// takes their final totals now that the engine has confirmed the backup.
fn finish_manifest(dir: &Path, stripes: &[Checkpoint]) -> Outcome {
    let mut m = Manifest::load(dir).map_err(|e| Failure::data(e.to_string()))?;
    for (i, cp) in stripes.iter().enumerate() {
        if let Some(entry) = m.stripe_mut(i as u32) {
            entry.update(cp);
        }
    }
    m.state = ManifestState::Complete;
    m.store(dir)
        .map_err(|e| Failure::io(format!("writing the manifest in {}", dir.display()), &e))
}

/// The manifest shared by the writer threads: each barrier updates its stripe and stores it.
#[derive(Debug)]
struct SharedManifest {
    dir: PathBuf,
    manifest: Mutex<Manifest>,
}

impl SharedManifest {
    fn record(&self, index: u32, cp: &Checkpoint) -> io::Result<()> {
        let mut m = self
            .manifest
            .lock()
            .map_err(|_| io::Error::other("manifest lock poisoned"))?;
        if let Some(s) = m.stripes.iter_mut().find(|s| s.index == index) {
            s.update(cp);
        }
        if m.state == ManifestState::InProgress {
            m.state = ManifestState::Flushed;
        }
        m.store(&self.dir)
    }
}

async fn serve(
    set: &AsyncSet<ClientSet>,
    engine: &mut Engine,
    args: &BackupArgs,
    dir: Option<&Path>,
    name: &str,
    progress: bool,
) -> Outcome<BackupReport> {
    let config = engine
        .configuration(set, args.engine.connect_timeout, "backup")
        .await?;
    check_config(&config, args)?;
    let backup_id = new_backup_id(name);
    let codec = args
        .zstd
        .map_or(Codec::Stored, |level| Codec::Zstd { level });
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let manifest = match dir {
        Some(d) => {
            let m = Manifest::new(backup_id, created, name, &config, codec);
            m.store(d)
                .map_err(|e| Failure::io(format!("writing the manifest in {}", d.display()), &e))?;
            Some(Arc::new(SharedManifest {
                dir: d.to_owned(),
                manifest: Mutex::new(m),
            }))
        }
        None => None,
    };
    let counters = Counters::new(config.device_count);
    let mut devices = Vec::new();
    for i in 0..config.device_count {
        let dev_name = stripe_device_name(name, i);
        let device = set
            .open_device(&dev_name)
            .await
            .map_err(|e| open_failure("backup", &dev_name, e))?;
        let (output, label) = match dir {
            Some(d) => {
                let path = d.join(stripe_file_name(i));
                let f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| Failure::io(format!("creating {}", path.display()), &e))?;
                (Output::File(f), path.display().to_string())
            }
            None => (Output::Stdout(io::stdout()), "stdout".to_owned()),
        };
        let header = StripeHeader {
            backup_id,
            index: i,
            count: config.device_count,
            block_size: config.block_size,
            max_transfer_size: config.max_transfer_size,
            created,
            flags: 0,
        };
        let sink = StripeSink::start(
            i,
            label,
            output,
            header,
            codec,
            manifest.clone(),
            Arc::clone(&counters),
            args.stall_after.map(|after| Stall {
                after,
                set: set.clone(),
            }),
        )?;
        devices.push((device, sink));
    }
    let expected = (!args.engine.external).then(|| {
        let per = args.size.div_ceil(u64::from(config.device_count));
        vec![per; config.device_count as usize]
    });
    let bars = Progress::start("backup", &counters, expected, progress);
    let start = Instant::now();
    let results = on_every_device(devices, |(device, mut sink)| async move {
        let r = backup_to(&device, &mut sink).await;
        (r, sink)
    })
    .await?;
    let elapsed = start.elapsed();
    bars.finish();
    // Each writer finishes its stripe (a last checkpoint if the engine closed the device without
    // a final Flush) and reports its totals or its error.
    let mut stripes = Vec::with_capacity(results.len());
    let mut raw = 0;
    let mut stored = 0;
    let mut first_sink_error: Option<Failure> = None;
    let mut first_device_error: Option<(u32, io::Error)> = None;
    for (i, (r, sink)) in results.into_iter().enumerate() {
        let i = i as u32;
        match sink.finish().await {
            Ok(end) => {
                stripes.push(end.totals);
                raw += end.totals.raw_bytes;
                stored += end.totals.stored_bytes;
                if end.unflushed && r.is_ok() {
                    eprintln!(
                        "vdi-agent: warning: the engine closed device {i} without a final Flush; \
                         the stripe was hardened at the close"
                    );
                }
            }
            Err(f) => {
                first_sink_error.get_or_insert(f);
            }
        }
        if let Err(e) = r {
            first_device_error.get_or_insert((i, e));
        }
    }
    if let Some(f) = first_sink_error {
        return Err(f);
    }
    if let Some((i, e)) = first_device_error {
        return Err(device_failure("backup", i, &e));
    }
    Ok(BackupReport {
        stripes,
        raw_bytes: raw,
        stored_bytes: stored,
        elapsed,
        devices: config.device_count,
        engine_line: None,
    })
}

/// Runs `serve` on every device at once, each in a task of its own (every device must be
/// served concurrently: the engine keeps them in step), and returns their results in device
/// order.
pub(crate) async fn on_every_device<T, F, Fut>(
    devices: Vec<T>,
    serve: F,
) -> Outcome<Vec<Fut::Output>>
where
    F: Fn(T) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let tasks: Vec<_> = devices
        .into_iter()
        .map(|d| tokio::spawn(serve(d)))
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(
            t.await
                .map_err(|e| Failure::other(format!("a device task failed: {e}")))?,
        );
    }
    Ok(results)
}

/// Why `OpenDevice` failed, for the user: an abort is the engine's doing.
pub(crate) fn open_failure(operation: &str, device: &str, e: vdi_core::Error) -> Failure {
    if e.is_abort() {
        Failure::engine(format!(
            "the {operation} was aborted (SignalAbort) while device '{device}' was being opened"
        ))
    } else {
        Failure::other(format!("cannot open device '{device}': {e}"))
    }
}

/// What a device's failure means for the user.
pub(crate) fn device_failure(operation: &str, device: u32, e: &io::Error) -> Failure {
    if e.kind() == ErrorKind::ConnectionAborted {
        Failure::engine(format!(
            "the {operation} was aborted (SignalAbort) while device {device} was running"
        ))
    } else {
        Failure::engine(format!("device {device} failed: {e}"))
    }
}

fn check_config(config: &Config, args: &BackupArgs) -> Outcome {
    if !config.features.contains(Features::WRITE_MEDIA) {
        return Err(Failure::engine(
            "the engine is running a RESTORE, not a BACKUP (VDF_WriteMedia is not set)",
        ));
    }
    if config.device_count != args.devices {
        return Err(Failure::engine(format!(
            "the set has {} devices, not {}",
            config.device_count, args.devices
        )));
    }
    if !args.no_request_complete && !config.complete_enabled() {
        eprintln!(
            "vdi-agent: note: the engine will not send VDC_Complete (it needs SQL Server 2012 SP3 \
             CU5, 2014 SP1 CU10, 2016 CU4 or later); every Flush is hardened as the end of the \
             backup"
        );
    }
    Ok(())
}

/// A backup id unique to this backup: time, process and set name mixed.
fn new_backup_id(name: &str) -> u128 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mixed =
        xxhash_rust::xxh3::xxh3_128(format!("{now}/{}/{name}", std::process::id()).as_bytes());
    mixed ^ now
}

/// Work for a stripe's writer thread.
#[derive(Debug)]
enum Job {
    Data(Bytes),
    Barrier {
        reply: oneshot::Sender<io::Result<()>>,
    },
}

/// How a writer thread ended.
#[derive(Debug)]
struct WriterEnd {
    totals: Checkpoint,
    /// Data came after the last Flush or Complete (hardened at the close).
    unflushed: bool,
}

/// The [`BackupSink`] of one device: hands the engine's buffers (no copy) to the stripe's writer
/// thread, which frees them once written; a Flush or Complete waits for the thread to harden
/// the stripe and the manifest.
#[derive(Debug)]
struct StripeSink {
    index: u32,
    label: String,
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<thread::JoinHandle<Result<WriterEnd, io::Error>>>,
    error: Arc<Mutex<Option<(ErrorKind, String)>>>,
    stall: Option<Stall>,
    commands: u64,
}

/// Testing aid: stop answering after `after` commands, until the set is aborted.
#[derive(Debug)]
struct Stall {
    after: u64,
    set: AsyncSet<ClientSet>,
}

/// How many Writes may wait for a stripe's writer thread.
const WRITER_QUEUE: usize = 8;

impl StripeSink {
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site, all values distinct"
    )]
    fn start(
        index: u32,
        label: String,
        output: Output,
        header: StripeHeader,
        codec: Codec,
        manifest: Option<Arc<SharedManifest>>,
        counters: Arc<Counters>,
        stall: Option<Stall>,
    ) -> Outcome<Self> {
        let writer = StripeWriter::new(output, header, codec)
            .map_err(|e| Failure::io(format!("writing {label}"), &e))?;
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let error = Arc::new(Mutex::new(None));
        let thread_error = Arc::clone(&error);
        let thread = thread::Builder::new()
            .name(format!("stripe-{index}"))
            .spawn(move || {
                let r = write_stripe(index, writer, rx, manifest.as_deref(), &counters);
                if let Err(e) = &r
                    && let Ok(mut slot) = thread_error.lock()
                {
                    *slot = Some((e.kind(), e.to_string()));
                }
                r
            })
            .map_err(|e| Failure::other(format!("cannot start a writer thread: {e}")))?;
        Ok(Self {
            index,
            label,
            tx: Some(tx),
            thread: Some(thread),
            error,
            stall,
            commands: 0,
        })
    }

    /// The writer thread's error, for a command that arrives after it failed.
    fn thread_error(&self) -> io::Error {
        match self.error.lock().ok().and_then(|s| s.clone()) {
            Some((kind, msg)) => io::Error::new(kind, msg),
            None => io::Error::other("the stripe's writer thread ended"),
        }
    }

    async fn send(&mut self, job: Job) -> io::Result<()> {
        self.commands += 1;
        if let Some(stall) = &self.stall
            && self.commands > stall.after
        {
            // Testing aid: a client that stops answering, until the engine gives up (its
            // serverTimeOut) and aborts the set.
            while stall.set.inner().state() != ClientSetState::Aborted {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return Err(io::Error::new(
                ErrorKind::ConnectionAborted,
                "the set was aborted",
            ));
        }
        let Some(tx) = &self.tx else {
            return Err(self.thread_error());
        };
        if tx.send(job).await.is_err() {
            return Err(self.thread_error());
        }
        Ok(())
    }

    async fn barrier(&mut self) -> io::Result<()> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Barrier { reply }).await?;
        match answer.await {
            Ok(r) => r,
            Err(_) => Err(self.thread_error()),
        }
    }

    /// Ends the writer thread and returns its totals, or the failure of the stripe.
    async fn finish(mut self) -> Outcome<WriterEnd> {
        self.tx = None;
        let Some(thread) = self.thread.take() else {
            return Err(Failure::other("the stripe was finished twice"));
        };
        let label = self.label.clone();
        let joined = tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|e| Failure::other(format!("joining the writer of {label}: {e}")))?;
        match joined {
            Ok(Ok(end)) => Ok(end),
            Ok(Err(e)) => Err(Failure::io(format!("writing {}", self.label), &e)),
            Err(_) => Err(Failure::other(format!(
                "the writer thread of stripe {} panicked",
                self.index
            ))),
        }
    }
}

#[async_trait]
impl BackupSink for StripeSink {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.send(Job::Data(data)).await
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.barrier().await
    }

    async fn complete(&mut self) -> io::Result<()> {
        self.barrier().await
    }
}

/// The writer thread: data records as they come, a checkpoint, fsync and manifest update at
/// each barrier, a last checkpoint at the end if data came after the last barrier.
fn write_stripe(
    index: u32,
    mut writer: StripeWriter<Output>,
    mut rx: mpsc::Receiver<Job>,
    manifest: Option<&SharedManifest>,
    counters: &Counters,
) -> io::Result<WriterEnd> {
    let mut last = writer.totals();
    while let Some(job) = rx.blocking_recv() {
        match job {
            Job::Data(data) => {
                writer.write_chunk(&data)?;
                counters.add(index, data.len() as u64);
                // Dropping the bytes completes the engine's Write.
                drop(data);
            }
            Job::Barrier { reply } => {
                let r = harden(index, &mut writer, manifest);
                let failed = r
                    .as_ref()
                    .err()
                    .map(|e| io::Error::new(e.kind(), e.to_string()));
                if let Ok(cp) = &r {
                    last = *cp;
                }
                let _ = reply.send(r.map(|_| ()));
                if let Some(e) = failed {
                    return Err(e);
                }
            }
        }
    }
    // Data after the last Flush was never confirmed: the stripe file is made whole (a last
    // checkpoint, fsync), but the manifest keeps the last confirmed checkpoint until the engine
    // reports success (see `finish_manifest`).
    let unflushed = writer.totals() != last;
    if unflushed {
        last = harden(index, &mut writer, None)?;
    }
    Ok(WriterEnd {
        totals: last,
        unflushed,
    })
}

fn harden(
    index: u32,
    writer: &mut StripeWriter<Output>,
    manifest: Option<&SharedManifest>,
) -> io::Result<Checkpoint> {
    let cp = writer.checkpoint()?;
    writer.get_mut().sync()?;
    if let Some(m) = manifest {
        m.record(index, &cp)?;
    }
    Ok(cp)
}

/// Prints the summary of a backup.
pub(crate) fn print_report(r: &BackupReport, target: &Path) {
    let ratio = if r.stored_bytes > 0 {
        r.raw_bytes as f64 / r.stored_bytes as f64
    } else {
        1.0
    };
    eprintln!(
        "backup: {} through {} device{} in {:.2} s ({}); stored {} (ratio {ratio:.2}) in {}",
        bytes(r.raw_bytes),
        r.devices,
        if r.devices == 1 { "" } else { "s" },
        r.elapsed.as_secs_f64(),
        rate(r.raw_bytes, r.elapsed),
        bytes(r.stored_bytes),
        if target.as_os_str() == "-" {
            "stdout".to_owned()
        } else {
            target.display().to_string()
        }
    );
    if let Some(line) = &r.engine_line
        && !line.is_empty()
    {
        eprintln!("engine: {line}");
    }
}
