//! `vdi-agent restore`: each stripe back to its device, through a reader thread that checks
//! every record's checksum before the engine sees a byte of it.

use std::{
    io::{self, IsTerminal, Read},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    thread,
    time::{Duration, Instant},
};

use bytes::{Buf, Bytes};
use tokio::{
    io::{AsyncRead, ReadBuf},
    sync::mpsc,
};
use vdi_agent::{
    manifest::ManifestState,
    stripe::{Checkpoint, StripeReader},
};
use vdi_async::{AsyncSet, restore_from};
use vdi_core::{
    ClientBackend, ClientConfig, ClientDeviceSet, Config, Features, stripe_device_name,
};

use crate::{
    backend::Hints,
    backup::{device_failure, on_every_device, open_failure},
    cli::{EngineArgs, RestoreArgs},
    engine::Engine,
    failure::{Failure, Outcome},
    interrupt::Interrupt,
    progress::{Counters, Progress},
    set_name,
    store::{self, plural, stripe_of},
    units::{bytes, rate},
    verify,
};

/// What a finished restore reports.
#[derive(Debug)]
pub(crate) struct RestoreReport {
    pub(crate) bytes: u64,
    pub(crate) elapsed: Duration,
    pub(crate) devices: u32,
    /// Stripes the engine stopped reading before their end (RESTORE FILELISTONLY/HEADERONLY).
    pub(crate) ended_early: Vec<u32>,
    pub(crate) engine_line: Option<String>,
}

/// One stripe to serve: where it comes from and what the manifest expects of it.
#[derive(Debug)]
struct Source {
    label: String,
    reader: StripeReader<Box<dyn Read + Send>>,
    expected_bytes: Option<u64>,
}

/// Runs `vdi-agent restore` over the client backend `backend`.
pub(crate) async fn run<B>(
    backend: &B,
    hints: Hints,
    args: &RestoreArgs,
    progress: bool,
    interrupt: &Interrupt,
) -> Outcome<RestoreReport>
where
    B: ClientBackend + Clone + 'static,
    B::Set: ClientDeviceSet + 'static,
{
    let (sources, block_size, max_transfer_size) = if args.source.as_os_str() == "-" {
        if io::stdin().is_terminal() {
            return Err(Failure::usage(
                "refusing to read a backup from a terminal: redirect stdin from a stripe file \
                 or a pipe (vdi-agent restore - ... < db.vdis)",
            ));
        }
        let stdin: Box<dyn Read + Send> = Box::new(io::stdin());
        let reader = StripeReader::new(stdin).map_err(|e| Failure::data(format!("stdin: {e}")))?;
        let h = *reader.header();
        if h.count != 1 {
            return Err(Failure::data(format!(
                "stdin holds {} of a striped backup: restore the backup's directory instead",
                stripe_of(&h)
            )));
        }
        (
            vec![Source {
                label: "stdin".to_owned(),
                reader,
                expected_bytes: None,
            }],
            h.block_size,
            h.max_transfer_size,
        )
    } else {
        open_dir(args, progress).await?
    };
    let engine_args = engine_args_for(&args.engine, block_size, max_transfer_size)?;
    let devices = sources.len() as u32;
    let name = set_name(args.engine.set.as_deref())?;
    let client_config = ClientConfig {
        device_count: devices,
        features: Features::LIKE_PIPE,
        server_timeout: crate::server_timeout_ms(&args.engine)?,
        ..ClientConfig::default()
    };
    let set = AsyncSet::create(backend, None, &name, &client_config)
        .await
        .map_err(|e| {
            Failure::other(format!(
                "cannot create the device set '{name}': {}",
                hints.create_failure(&e)
            ))
        })?;
    let mut engine = Engine::start("restore", &name, devices, &engine_args, &[], hints)?;
    if args.engine.external {
        eprintln!(
            "vdi-agent: set '{name}' is ready ({}); run:\n  {}",
            hints.backend,
            crate::engine::statement(
                "restore",
                &args.engine,
                &name,
                devices,
                Some(block_size),
                Some(max_transfer_size)
            )
        );
    }
    let guard = interrupt.abort_on_signal(&set);
    let result = serve(
        &set,
        &mut engine,
        args,
        sources,
        block_size,
        &name,
        progress,
    )
    .await;
    if result.is_err() {
        let _ = set.signal_abort();
    }
    let _ = set.close().await;
    drop(guard);
    let end = engine.finish(Duration::from_secs(60)).await;
    let outcome = match (result, end) {
        (Err(f), Some(end)) if f.exit == crate::failure::Exit::Engine && !end.success => {
            Err(Failure::engine(format!("{f}: {}", end.reason())))
        }
        (Err(f), _) => Err(f),
        (Ok(_), Some(end)) if !end.success => Err(Failure::engine(format!(
            "the engine failed the restore: {}",
            end.reason()
        ))),
        (Ok(mut report), end) => {
            report.engine_line = end.map(|e| e.stdout.trim().to_owned());
            Ok(report)
        }
    };
    match (outcome, interrupt.fired()) {
        (Err(_), Some(signal)) => Err(Interrupt::failure(
            signal,
            "restore",
            "the database being restored is incomplete: run the restore again",
        )),
        (o, _) => o,
    }
}

/// The engine's arguments for a restore of a backup taken with `block_size` and
/// `max_transfer_size`: the backup's values, which a value the user gave must not contradict.
fn engine_args_for(
    args: &EngineArgs,
    block_size: u32,
    max_transfer_size: u32,
) -> Outcome<EngineArgs> {
    if let Some(given) = args.block_size
        && given != block_size
    {
        return Err(Failure::usage(format!(
            "--block-size {given} contradicts the backup, which was taken with BLOCKSIZE \
             {block_size}: a restore uses the backup's block size (leave the flag out)"
        )));
    }
    let mut out = args.clone();
    out.block_size = Some(block_size);
    // MAXTRANSFERSIZE may differ between backup and restore (the engine reads in any sizes);
    // without one given, the backup's is the natural choice.
    out.max_transfer_size = Some(args.max_transfer_size.unwrap_or(max_transfer_size));
    Ok(out)
}

/// Opens every stripe of a backup directory, checking what can be checked before the engine
/// starts: the manifest (a backup the engine never confirmed is refused unless the user allows
/// it), no stray stripe files, each file's length and header against the manifest; with
/// `--verify-first`, every record.
async fn open_dir(args: &RestoreArgs, progress: bool) -> Outcome<(Vec<Source>, u32, u32)> {
    let (store, manifest) = match store::Source::open(&args.source, Some(&args.objects))? {
        store::Source::Backup(store, m) => (store, *m),
        store::Source::File(p) => {
            return Err(Failure::usage(format!(
                "{} is a file: restore takes a backup directory, or - for one stripe on stdin",
                p.display()
            )));
        }
    };
    if let Some(why) = manifest.incomplete_reason() {
        if !args.allow_incomplete || manifest.state == ManifestState::InProgress {
            return Err(Failure::incomplete(format!(
                "refusing to restore {}: {why}. Restoring it would start a RESTORE that must \
                 fail partway{}",
                store.location(),
                if manifest.state == ManifestState::InProgress {
                    ""
                } else {
                    " (--allow-incomplete restores what was acknowledged anyway, to salvage data)"
                }
            )));
        }
        eprintln!("vdi-agent: warning: restoring an incomplete backup (--allow-incomplete): {why}");
    }
    store::check_no_strays(store.as_ref(), &manifest)?;
    if args.verify_first {
        verify::verify_backup(&store, &manifest, progress, false).await?;
    }
    let mut sources = Vec::new();
    for entry in &manifest.stripes {
        let open = store::open_stripe(store.as_ref(), &manifest, entry.index)?;
        sources.push(Source {
            label: open.label,
            reader: open.reader,
            expected_bytes: Some(open.raw_bytes),
        });
    }
    Ok((sources, manifest.block_size, manifest.max_transfer_size))
}

async fn serve<S: ClientDeviceSet + 'static>(
    set: &AsyncSet<S>,
    engine: &mut Engine,
    args: &RestoreArgs,
    sources: Vec<Source>,
    block_size: u32,
    name: &str,
    progress: bool,
) -> Outcome<RestoreReport> {
    let config = engine
        .configuration(set, &args.engine.connect_timeout, "restore")
        .await?;
    check_config(&config, sources.len() as u32, block_size)?;
    let counters = Counters::new(config.device_count);
    let expected: Option<Vec<u64>> = sources.iter().map(|s| s.expected_bytes).collect();
    let mut devices = Vec::new();
    for (i, source) in sources.into_iter().enumerate() {
        let i = i as u32;
        let dev_name = stripe_device_name(name, i);
        let device = set
            .open_device(&dev_name)
            .await
            .map_err(|e| open_failure("restore", &dev_name, e, engine.hints()))?;
        devices.push((
            device,
            StripeSource::start(i, source, Arc::clone(&counters))?,
        ));
    }
    let bars = Progress::start("restore", &counters, expected, progress, false);
    let start = Instant::now();
    let results = on_every_device(devices, |(device, mut source)| async move {
        let r = restore_from(&device, &mut source.reader).await;
        (r, source)
    })
    .await?;
    let elapsed = start.elapsed();
    bars.finish();
    let mut total = 0;
    let mut ended_early = Vec::new();
    let mut first_data_error = None;
    let mut first_device_error = None;
    for (i, (r, source)) in results.into_iter().enumerate() {
        let i = i as u32;
        let label = source.label.clone();
        let end = source.finish().await;
        match end {
            Ok(Some(_)) => {}
            Ok(None) => ended_early.push(i),
            Err(e) => {
                first_data_error.get_or_insert_with(|| Failure::data(format!("{label}: {e}")));
            }
        }
        match r {
            Ok(summary) => total += summary.bytes,
            Err(e) => {
                first_device_error.get_or_insert((i, e));
            }
        }
    }
    if let Some(f) = first_data_error {
        return Err(f);
    }
    if let Some((i, e)) = first_device_error {
        return Err(device_failure("restore", i, &e));
    }
    Ok(RestoreReport {
        bytes: total,
        elapsed,
        devices: config.device_count,
        ended_early,
        engine_line: None,
    })
}

fn check_config(config: &Config, devices: u32, block_size: u32) -> Outcome {
    if config.features.contains(Features::WRITE_MEDIA) {
        return Err(Failure::engine(
            "the engine is running a BACKUP, not a RESTORE (VDF_WriteMedia is set)",
        ));
    }
    if config.device_count != devices {
        return Err(Failure::engine(format!(
            "the set has {} devices, the backup {devices}",
            config.device_count
        )));
    }
    if config.block_size != block_size {
        return Err(Failure::engine(format!(
            "the engine's BLOCKSIZE is {} but the backup was taken with {block_size}; a restore \
             must use the backup's BLOCKSIZE",
            config.block_size
        )));
    }
    Ok(())
}

/// A stripe's reader thread and the async reader the device's task reads it through.
#[derive(Debug)]
struct StripeSource {
    label: String,
    reader: ChannelReader,
    thread: Option<thread::JoinHandle<Result<Option<Checkpoint>, String>>>,
}

/// How many records may wait between the reader thread and the device.
const READER_QUEUE: usize = 4;

impl StripeSource {
    fn start(index: u32, source: Source, counters: Arc<Counters>) -> Outcome<Self> {
        let (tx, rx) = mpsc::channel(READER_QUEUE);
        let label = source.label.clone();
        let thread = thread::Builder::new()
            .name(format!("stripe-{index}"))
            .spawn(move || read_stripe(source.reader, &tx))
            .map_err(|e| Failure::other(format!("cannot start a reader thread: {e}")))?;
        Ok(Self {
            label,
            reader: ChannelReader {
                index,
                rx,
                current: Bytes::new(),
                done: false,
                counters,
            },
            thread: Some(thread),
        })
    }

    /// The verified totals, `None` if the engine stopped before the end, or the stripe's error.
    async fn finish(mut self) -> Result<Option<Checkpoint>, String> {
        // Unblocks the thread if it still waits to hand over a record.
        drop(self.reader);
        let Some(t) = self.thread.take() else {
            return Err("finished twice".to_owned());
        };
        match tokio::task::spawn_blocking(move || t.join()).await {
            Ok(Ok(r)) => r,
            _ => Err("the reader thread panicked".to_owned()),
        }
    }
}

/// The reader thread: records out as they are verified; at the end, the verified totals.
fn read_stripe(
    mut reader: StripeReader<Box<dyn Read + Send>>,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> Result<Option<Checkpoint>, String> {
    loop {
        match reader.read_chunk() {
            Ok(Some(chunk)) => {
                if tx.blocking_send(Ok(Bytes::copy_from_slice(chunk))).is_err() {
                    // The device ended first: the engine stopped reading early.
                    return Ok(None);
                }
            }
            Ok(None) => return Ok(Some(reader.totals())),
            Err(e) => {
                let msg = e.to_string();
                let _ = tx.blocking_send(Err(io::Error::from(e)));
                return Err(msg);
            }
        }
    }
}

/// An [`AsyncRead`] over the records a reader thread sends.
#[derive(Debug)]
struct ChannelReader {
    index: u32,
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    done: bool,
    counters: Arc<Counters>,
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.current.is_empty() {
                let n = self.current.len().min(buf.remaining());
                buf.put_slice(&self.current[..n]);
                self.current.advance(n);
                self.counters.add(self.index, n as u64, 0);
                return Poll::Ready(Ok(()));
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(b))) => self.current = b,
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Prints the summary of a restore: lines on stderr, or with `json` one JSON document on
/// stdout.
pub(crate) fn print_report(r: &RestoreReport, json: bool) {
    if json {
        crate::print_json(&serde_json::json!({
            "operation": "restore",
            "devices": r.devices,
            "raw_bytes": r.bytes,
            "seconds": r.elapsed.as_secs_f64(),
            "bytes_per_second": r.bytes as f64 / r.elapsed.as_secs_f64().max(1e-9),
            "ended_early": r.ended_early,
            "engine_line": r.engine_line,
        }));
        return;
    }
    eprintln!(
        "restore: {} through {} device{} in {:.2} s ({}); every record's checksum verified",
        bytes(r.bytes),
        r.devices,
        plural(r.devices.into()),
        r.elapsed.as_secs_f64(),
        rate(r.bytes, r.elapsed),
    );
    if !r.ended_early.is_empty() {
        let list: Vec<String> = r.ended_early.iter().map(u32::to_string).collect();
        eprintln!(
            "restore: the engine stopped reading device{} {} before the end (as RESTORE \
             FILELISTONLY or HEADERONLY do); the rest of {} was not read",
            plural(r.ended_early.len() as u64),
            list.join(", "),
            if r.ended_early.len() == 1 {
                "that stripe"
            } else {
                "those stripes"
            }
        );
    }
    if let Some(line) = &r.engine_line
        && !line.is_empty()
    {
        eprintln!("engine: {line}");
    }
}
