//! `vdi-agent backup`: each device's stream into a stripe file (or stdout), with a writer thread
//! per stripe that compresses, checksums and hardens it at every Flush and Complete.

use std::{
    io::{self, ErrorKind, IsTerminal},
    path::Path,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use vdi_agent::{
    manifest::{EndConfirmation, Manifest, ManifestState, stripe_file_name},
    stripe::{Checkpoint, Codec, StripeHeader, StripeWriter},
};
use vdi_async::{AsyncSet, BackupSink, backup_to};
use vdi_core::{
    AbortReason, ClientBackend, ClientConfig, ClientDeviceSet, Config, Features, Timeout,
    stripe_device_name,
};

use crate::{
    backend::Hints,
    cli::BackupArgs,
    engine::{self, Engine},
    failure::{Exit, Failure, Outcome},
    interrupt::Interrupt,
    output::StripeOutput,
    progress::{Counters, Progress},
    set_name,
    store::{self, BackupStore, plural},
    units::{bytes, rate},
};

/// What a finished backup reports.
#[derive(Debug)]
pub(crate) struct BackupReport {
    pub(crate) raw_bytes: u64,
    pub(crate) stored_bytes: u64,
    pub(crate) elapsed: Duration,
    pub(crate) devices: u32,
    pub(crate) codec: Codec,
    /// How the engine confirmed the end, if it did.
    pub(crate) end: Option<EndConfirmation>,
    pub(crate) engine_line: Option<String>,
}

/// Runs `vdi-agent backup` over the client backend `backend`.
pub(crate) async fn run<B>(
    backend: &B,
    hints: Hints,
    args: &BackupArgs,
    progress: bool,
    interrupt: &Interrupt,
) -> Outcome<BackupReport>
where
    B: ClientBackend + Clone + 'static,
    B::Set: ClientDeviceSet + 'static,
{
    let to_stdout = args.target.as_os_str() == "-";
    if to_stdout && args.devices != 1 {
        return Err(Failure::usage(
            "a backup to stdout has one device; give a directory for more (--devices)",
        ));
    }
    if to_stdout && io::stdout().is_terminal() {
        return Err(Failure::usage(
            "refusing to write a backup to a terminal: redirect stdout to a file or a pipe \
             (vdi-agent backup - ... > db.vdis)",
        ));
    }
    let dir = if to_stdout {
        None
    } else {
        Some(store::prepare(
            &args.target,
            args.force,
            &args.objects,
            args.devices,
        )?)
    };
    if let Some(d) = &dir
        && !args.engine.external
    {
        check_free_space(d.as_ref(), args).map_err(|f| f.and(&d.discard(None)))?;
    }
    let name = set_name(args.engine.set.as_deref())
        .map_err(|f| f.and(&dir.as_ref().map_or(String::new(), |d| d.discard(None))))?;
    let codec = args
        .zstd
        .map_or(Codec::Stored, |level| Codec::Zstd { level });
    let shared = Arc::new(SharedManifest {
        store: dir.clone(),
        manifest: Mutex::new(None),
    });
    // The first manifest, before the set exists: storing it proves the store takes writes (in
    // an object store: the bucket, the credentials, and that no backup is there already). Its
    // configuration is the one asked for until the engine's is known.
    shared.start(Manifest::new(
        new_backup_id(&name),
        now(),
        &name,
        &Config {
            device_count: args.devices,
            features: Features::empty(),
            prefix_zone_size: 0,
            alignment: 0,
            soft_file_mark_block_size: 0,
            eom_warning_size: 0,
            server_timeout: 0,
            block_size: args.engine.block_size.unwrap_or(512),
            max_io_depth: 4,
            max_transfer_size: args.engine.max_transfer_size.unwrap_or(64 * 1024),
            buffer_area_size: 0,
        },
        codec,
    ))?;
    let discard = |f: Failure| -> Failure {
        let left = shared.abort(&f.message);
        f.and(&left)
    };
    let mut features = Features::LIKE_PIPE;
    if !args.no_request_complete {
        features |= Features::REQUEST_COMPLETE;
    }
    let client_config = ClientConfig {
        device_count: args.devices,
        features,
        server_timeout: crate::server_timeout_ms(&args.engine)?,
        ..ClientConfig::default()
    };
    let set = AsyncSet::create(backend, None, &name, &client_config)
        .await
        .map_err(|e| {
            discard(Failure::other(format!(
                "cannot create the device set '{name}': {}",
                hints.create_failure(&e)
            )))
        })?;
    let mut engine = Engine::start(
        "backup",
        &name,
        args.devices,
        &args.engine,
        &["--size".to_owned(), args.size.to_string()],
        hints,
    )
    .map_err(discard)?;
    if args.engine.external {
        eprintln!(
            "vdi-agent: set '{name}' is ready ({}); run:\n  {}",
            hints.backend,
            engine::statement("backup", &args.engine, &name, args.devices, None, None)
        );
    }
    let guard = interrupt.abort_on_signal(&set);
    let result = serve(&set, &mut engine, args, &shared, &name, progress).await;
    if result.is_err() {
        let _ = set.signal_abort();
    }
    let _ = set.close().await;
    drop(guard);
    let end = engine.finish(Duration::from_secs(60)).await;
    let outcome = match (result, end) {
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
            Ok(report)
        }
    };
    match outcome {
        Ok(report) => match report.end {
            Some(end) => {
                shared.complete(end, report.engine_line.clone())?;
                Ok(report)
            }
            None => {
                let why = "the engine closed the devices without confirming the end of the \
                           backup (no VDC_Complete, or data after the last Flush)";
                let left = shared.abort(why);
                Err(Failure::incomplete(format!("{why}; {left}")))
            }
        },
        Err(f) => {
            let reason = match interrupt.fired() {
                Some(signal) => format!("interrupted by {signal}"),
                None => f.message.clone(),
            };
            let left = shared.abort(&reason);
            Err(match interrupt.fired() {
                Some(signal) => Interrupt::failure(signal, "backup", &left),
                None => f.and(&left),
            })
        }
    }
}

/// Refuses a stored backup of known size that cannot fit; warns for a compressed one.
fn check_free_space(store: &dyn BackupStore, args: &BackupArgs) -> Outcome {
    let Ok(free) = store.free_space() else {
        return Ok(());
    };
    // Each Write is a record of at least 64 KiB: its 32-byte header is under 0.05%; a
    // checkpoint per Flush and the per-device header and trailer blocks add a little.
    let need = args
        .size
        .saturating_add(args.size / 2048)
        .saturating_add(u64::from(args.devices) * 256 * 1024);
    if free >= need {
        return Ok(());
    }
    if args.zstd.is_some() {
        eprintln!(
            "vdi-agent: warning: {} has {} free and the database is {}: the backup fits only if \
             zstd shrinks it enough",
            store.location(),
            bytes(free),
            bytes(args.size)
        );
        return Ok(());
    }
    Err(Failure::new(
        Exit::Io,
        format!(
            "not enough free space: {} has {} free, the backup needs about {}; free space, \
             choose another directory, or compress (--zstd)",
            store.location(),
            bytes(free),
            bytes(need)
        ),
    ))
}

/// The manifest, shared by the writer threads and the end of the backup: each barrier updates
/// its stripe and stores it; the end marks it complete or aborted, under the same lock.
#[derive(Debug)]
struct SharedManifest {
    /// Where the backup goes; `None` for a backup to stdout, which has no manifest.
    store: Option<Arc<dyn BackupStore>>,
    manifest: Mutex<Option<Manifest>>,
}

impl SharedManifest {
    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, Option<Manifest>>> {
        self.manifest
            .lock()
            .map_err(|_| io::Error::other("manifest lock poisoned"))
    }

    /// Stores the first manifest of the backup (kept, if the backup goes to stdout, for its
    /// identity). A failure removes what preparing the store made.
    fn start(&self, m: Manifest) -> Outcome {
        if let Some(store) = &self.store
            && let Err(e) = store.store_manifest(&m)
        {
            let f = Failure::io(format!("writing the manifest in {}", store.location()), &e);
            return Err(f.and(&store.discard(None)));
        }
        *self.lock().map_err(|e| Failure::other(e.to_string()))? = Some(m);
        Ok(())
    }

    /// Records the engine's configuration in the manifest and stores it; returns the backup's
    /// id, start time and codec, for the stripe headers.
    fn configure(&self, config: &Config) -> Outcome<(u128, u64, Codec)> {
        let mut guard = self.lock().map_err(|e| Failure::other(e.to_string()))?;
        let Some(m) = guard.as_mut() else {
            return Err(Failure::other("the backup has no manifest"));
        };
        let (id, created, codec) = (m.backup_id, m.created, m.codec);
        *m = Manifest::new(id, created, m.set_name.clone(), config, codec);
        if let Some(store) = &self.store {
            store.store_manifest(m).map_err(|e| {
                Failure::io(format!("writing the manifest in {}", store.location()), &e)
            })?;
        }
        Ok((id, created, codec))
    }

    fn record(&self, index: u32, cp: &Checkpoint) -> io::Result<()> {
        let (Some(store), mut guard) = (&self.store, self.lock()?) else {
            return Ok(());
        };
        let Some(m) = guard.as_mut() else {
            return Ok(());
        };
        if let Some(s) = m.stripe_mut(index) {
            s.update(cp);
        }
        if m.state == ManifestState::InProgress {
            m.state = ManifestState::Flushed;
        }
        store.store_manifest(m)
    }

    /// Marks the backup complete.
    fn complete(&self, end: EndConfirmation, engine_line: Option<String>) -> Outcome {
        let (Some(store), mut guard) = (
            &self.store,
            self.lock().map_err(|e| Failure::other(e.to_string()))?,
        ) else {
            return Ok(());
        };
        let Some(m) = guard.as_mut() else {
            return Err(Failure::other(
                "the backup ended before its manifest was written",
            ));
        };
        m.mark_complete(end, now(), engine_line);
        store
            .store_manifest(m)
            .map_err(|e| Failure::io(format!("writing the manifest in {}", store.location()), &e))
    }

    /// Records that the backup failed for `reason`, or removes it when nothing in it was ever
    /// acknowledged to the engine; returns what is left, for the user.
    fn abort(&self, reason: &str) -> String {
        let Some(store) = &self.store else {
            return "the stripe on stdout is incomplete".to_owned();
        };
        let mut guard = match self.lock() {
            Ok(g) => g,
            Err(e) => return format!("the manifest was not updated: {e}"),
        };
        match guard.as_mut() {
            None => store.discard(None),
            Some(m) if m.state == ManifestState::InProgress => {
                format!(
                    "nothing was acknowledged to the engine, so {}",
                    store.discard(Some(m))
                )
            }
            Some(m) => {
                m.mark_aborted(reason, now());
                match store.store_manifest(m) {
                    Ok(()) => format!(
                        "{} holds an aborted backup ({} up to checkpoint {}); replace it with \
                         --force",
                        store.location(),
                        bytes(m.raw_bytes()),
                        m.min_checkpoints()
                    ),
                    Err(e) => format!(
                        "the manifest could not be marked aborted ({e}); it says {}",
                        m.state
                    ),
                }
            }
        }
    }
}

/// Unix seconds now.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The stream length device `index` carries in a backup of the reference engine.
pub(crate) fn engine_stream_len(size: u64, config: &Config, index: u32) -> u64 {
    let database = size.div_ceil(u64::from(config.block_size)) * u64::from(config.block_size);
    vdi_engine::format::Header::for_device(
        0,
        database,
        config.device_count,
        index,
        config.block_size,
        config.max_transfer_size,
    )
    .layout()
    .stream_len()
}

async fn serve<S: ClientDeviceSet + 'static>(
    set: &AsyncSet<S>,
    engine: &mut Engine,
    args: &BackupArgs,
    manifest: &Arc<SharedManifest>,
    name: &str,
    progress: bool,
) -> Outcome<BackupReport> {
    let config = engine
        .configuration(set, &args.engine.connect_timeout, "backup")
        .await?;
    check_config(&config, args)?;
    let (backup_id, created, codec) = manifest.configure(&config)?;
    let counters = Counters::new(config.device_count);
    let mut devices = Vec::new();
    for i in 0..config.device_count {
        let dev_name = stripe_device_name(name, i);
        let device = set
            .open_device(&dev_name)
            .await
            .map_err(|e| open_failure("backup", &dev_name, e, engine.hints()))?;
        let (output, label): (Box<dyn StripeOutput>, String) = match &manifest.store {
            Some(store) => store.create_stripe(&stripe_file_name(i))?,
            None => (Box::new(io::stdout()), "stdout".to_owned()),
        };
        let header = StripeHeader {
            backup_id,
            index: i,
            count: config.device_count,
            block_size: config.block_size,
            max_transfer_size: config.max_transfer_size,
            created,
            flags: codec.header_flags(),
        };
        let sink = StripeSink::start(
            i,
            label,
            output,
            header,
            codec,
            Arc::clone(manifest),
            Arc::clone(&counters),
            args.stall_after.map(|after| Stall {
                after,
                set: set.clone(),
            }),
        )?;
        devices.push((device, sink));
    }
    let expected = (!args.engine.external).then(|| {
        (0..config.device_count)
            .map(|i| engine_stream_len(args.size, &config, i))
            .collect()
    });
    let bars = Progress::start(
        "backup",
        &counters,
        expected,
        progress,
        codec != Codec::Stored,
    );
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
    let mut raw = 0;
    let mut stored = 0;
    let mut all_completed = true;
    let mut all_flushed = true;
    let mut first_sink_error: Option<Failure> = None;
    let mut first_device_error: Option<(u32, io::Error)> = None;
    for (i, (r, sink)) in results.into_iter().enumerate() {
        let i = i as u32;
        match sink.finish().await {
            Ok(end) => {
                raw += end.totals.raw_bytes;
                stored += end.totals.stored_bytes;
                all_completed &= end.completed;
                all_flushed &= !end.unflushed;
                if end.unflushed && r.is_ok() {
                    eprintln!(
                        "vdi-agent: warning: the engine closed device {i} without a final Flush; \
                         the data after the last Flush was never acknowledged"
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
    let end = if config.complete_enabled() {
        (all_completed && all_flushed).then_some(EndConfirmation::VdcComplete)
    } else {
        all_flushed.then_some(EndConfirmation::FinalFlush)
    };
    Ok(BackupReport {
        raw_bytes: raw,
        stored_bytes: stored,
        elapsed,
        devices: config.device_count,
        codec,
        end,
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
pub(crate) fn open_failure(
    operation: &str,
    device: &str,
    e: vdi_core::Error,
    hints: Hints,
) -> Failure {
    match abort_words(&e) {
        Some(words) => Failure::engine(format!(
            "{words} while device '{device}' was being opened for the {operation}{}",
            hints
                .early_abort
                .map_or(String::new(), |h| format!(". {h}"))
        )),
        None => Failure::other(format!("cannot open device '{device}': {e}")),
    }
}

/// What an abort means, in the user's words: a dead engine is not a SignalAbort.
fn abort_words(e: &vdi_core::Error) -> Option<&'static str> {
    match e {
        vdi_core::Error::Aborted(AbortReason::PeerExited) => Some("the engine died"),
        vdi_core::Error::Aborted(AbortReason::PeerMisbehaved) => {
            Some("the engine broke the protocol in shared memory")
        }
        vdi_core::Error::Aborted(AbortReason::ServerTimeout) => {
            Some("the engine timed out waiting for the agent (serverTimeOut)")
        }
        vdi_core::Error::Aborted(_) => Some("the engine aborted the operation (SignalAbort)"),
        _ => None,
    }
}

/// What a device's failure means for the user (one device named).
pub(crate) fn device_failure(operation: &str, device: u32, e: &io::Error) -> Failure {
    let vdi = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<vdi_core::Error>());
    match vdi.and_then(abort_words) {
        Some(words) => Failure::engine(format!(
            "{words} while device {device} was running the {operation}"
        )),
        None if e.kind() == ErrorKind::ConnectionAborted => Failure::engine(format!(
            "the {operation} was aborted while device {device} was running"
        )),
        None => Failure::engine(format!("device {device} failed: {e}")),
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
        /// A `VDC_Complete` (not a Flush).
        complete: bool,
        reply: oneshot::Sender<io::Result<()>>,
    },
}

/// How a writer thread ended.
#[derive(Debug)]
struct WriterEnd {
    totals: Checkpoint,
    /// Data came after the last Flush or Complete (hardened at the close, never acknowledged).
    unflushed: bool,
    /// The last barrier was a `VDC_Complete`, with no data after it.
    completed: bool,
}

/// The [`BackupSink`] of one device: hands the engine's buffers (no copy) to the stripe's writer
/// thread, which frees them once written; a Flush or Complete waits for the thread to harden
/// the stripe and the manifest.
#[derive(Debug)]
struct StripeSink<S: ClientDeviceSet + 'static> {
    index: u32,
    label: String,
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<thread::JoinHandle<Result<WriterEnd, io::Error>>>,
    error: Arc<Mutex<Option<(ErrorKind, String)>>>,
    stall: Option<Stall<S>>,
    commands: u64,
}

/// Testing aid: stop answering after `after` commands, until the set is aborted.
#[derive(Debug)]
struct Stall<S: ClientDeviceSet + 'static> {
    after: u64,
    set: AsyncSet<S>,
}

/// How many Writes may wait for a stripe's writer thread.
const WRITER_QUEUE: usize = 8;

impl<S: ClientDeviceSet + 'static> StripeSink<S> {
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site, all values distinct"
    )]
    fn start(
        index: u32,
        label: String,
        output: Box<dyn StripeOutput>,
        header: StripeHeader,
        codec: Codec,
        manifest: Arc<SharedManifest>,
        counters: Arc<Counters>,
        stall: Option<Stall<S>>,
    ) -> Outcome<Self> {
        let writer = StripeWriter::new(output, header, codec)
            .map_err(|e| Failure::io(format!("writing {label}"), &e))?;
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let error = Arc::new(Mutex::new(None));
        let thread_error = Arc::clone(&error);
        let thread = thread::Builder::new()
            .name(format!("stripe-{index}"))
            .spawn(move || {
                let r = write_stripe(index, writer, rx, &manifest, &counters);
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
            // GetConfiguration answers VD_E_ABORT once the set is aborted (spec section 6), on
            // every backend; on a configured set it does not wait.
            while !stall
                .set
                .inner()
                .configuration(Timeout::from(Duration::ZERO))
                .is_err_and(|e| e.is_abort())
            {
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

    async fn barrier(&mut self, complete: bool) -> io::Result<()> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Barrier { complete, reply }).await?;
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
impl<S: ClientDeviceSet + 'static> BackupSink for StripeSink<S> {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.send(Job::Data(data)).await
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.barrier(false).await
    }

    async fn complete(&mut self) -> io::Result<()> {
        self.barrier(true).await
    }
}

/// The writer thread: data records as they come, a checkpoint, fsync and manifest update at
/// each barrier, a last checkpoint at the end if data came after the last barrier.
fn write_stripe(
    index: u32,
    mut writer: StripeWriter<Box<dyn StripeOutput>>,
    mut rx: mpsc::Receiver<Job>,
    manifest: &SharedManifest,
    counters: &Counters,
) -> io::Result<WriterEnd> {
    let mut last = writer.totals();
    let mut completed = false;
    let mut stored = writer.stored_bytes();
    while let Some(job) = rx.blocking_recv() {
        match job {
            Job::Data(data) => {
                writer.write_chunk(&data)?;
                let now = writer.stored_bytes();
                counters.add(index, data.len() as u64, now - stored);
                stored = now;
                completed = false;
                // Dropping the bytes completes the engine's Write.
                drop(data);
            }
            Job::Barrier { complete, reply } => {
                let r = harden(index, &mut writer, Some(manifest));
                completed = complete && r.is_ok();
                let now = writer.stored_bytes();
                counters.add(index, 0, now - stored);
                stored = now;
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
        completed: completed && !unflushed,
    })
}

fn harden(
    index: u32,
    writer: &mut StripeWriter<Box<dyn StripeOutput>>,
    manifest: Option<&SharedManifest>,
) -> io::Result<Checkpoint> {
    let cp = writer.checkpoint()?;
    writer.get_mut().sync()?;
    if let Some(m) = manifest {
        m.record(index, &cp)?;
    }
    Ok(cp)
}

/// Prints the summary of a backup: lines on stderr, or with `json` one JSON document on stdout.
pub(crate) fn print_report(r: &BackupReport, target: &Path, json: bool) {
    let ratio = if r.stored_bytes > 0 {
        r.raw_bytes as f64 / r.stored_bytes as f64
    } else {
        1.0
    };
    let target = if target.as_os_str() == "-" {
        "stdout".to_owned()
    } else {
        target.display().to_string()
    };
    if json {
        crate::print_json(&serde_json::json!({
            "operation": "backup",
            "state": if r.end.is_some() { "complete" } else { "incomplete" },
            "target": target,
            "devices": r.devices,
            "codec": r.codec,
            "raw_bytes": r.raw_bytes,
            "stored_bytes": r.stored_bytes,
            "ratio": ratio,
            "seconds": r.elapsed.as_secs_f64(),
            "bytes_per_second": r.raw_bytes as f64 / r.elapsed.as_secs_f64().max(1e-9),
            "end": r.end,
            "engine_line": r.engine_line,
        }));
        return;
    }
    eprintln!(
        "backup: {} through {} device{} in {:.2} s ({}); stored {} (ratio {ratio:.2}) in {target}",
        bytes(r.raw_bytes),
        r.devices,
        plural(r.devices.into()),
        r.elapsed.as_secs_f64(),
        rate(r.raw_bytes, r.elapsed),
        bytes(r.stored_bytes),
    );
    if let Some(line) = &r.engine_line
        && !line.is_empty()
    {
        eprintln!("engine: {line}");
    }
}
