//! `vdi-agent restore`: each stripe back to its device, through a reader thread that checks
//! every record's checksum before the engine sees a byte of it.

use std::{
    fs,
    io::{self, ErrorKind},
    path::{Path, PathBuf},
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
    manifest::{Manifest, ManifestState},
    stripe::{Checkpoint, StripeReader},
};
use vdi_async::{AsyncSet, restore_from};
use vdi_core::{ClientConfig, Config, Features, stripe_device_name};
use vdi_shm::ClientSet;

use crate::{
    backup::{device_failure, on_every_device, open_failure},
    cli::RestoreArgs,
    engine::Engine,
    failure::{Failure, Outcome},
    output::Input,
    progress::{Counters, Progress},
    set_name, shm_client,
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
    reader: StripeReader<Input>,
    expected_bytes: Option<u64>,
}

/// Runs `vdi-agent restore`.
pub(crate) async fn run(args: &RestoreArgs, progress: bool) -> Outcome<RestoreReport> {
    let (sources, block_size) = if args.source.as_os_str() == "-" {
        let reader = StripeReader::new(Input::Stdin(io::stdin()))
            .map_err(|e| Failure::data(format!("stdin: {e}")))?;
        let block = reader.header().block_size;
        (
            vec![Source {
                label: "stdin".to_owned(),
                reader,
                expected_bytes: None,
            }],
            block,
        )
    } else {
        open_dir(&args.source, args.verify_first)?
    };
    let devices = sources.len() as u32;
    let name = set_name(args.engine.set.as_deref())?;
    let client_config = ClientConfig {
        device_count: devices,
        features: Features::LIKE_PIPE,
        server_timeout: args.engine.server_timeout,
        ..ClientConfig::default()
    };
    let set = AsyncSet::create(&shm_client(&args.engine), None, &name, &client_config)
        .await
        .map_err(|e| Failure::other(format!("cannot create the device set '{name}': {e}")))?;
    let mut engine = Engine::start("restore", &name, devices, &args.engine, &[])?;
    if args.engine.external {
        eprintln!(
            "vdi-agent: set '{name}' is ready; run RESTORE DATABASE ... FROM {}",
            crate::backup::device_clause(&name, devices)
        );
    }
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
    let end = engine.finish(Duration::from_secs(60)).await;
    match (result, end) {
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
    }
}

/// Opens every stripe of a backup directory, checking what can be checked before the engine
/// starts: the manifest, that each file exists with the length and header the manifest says.
fn open_dir(dir: &Path, verify_first: bool) -> Outcome<(Vec<Source>, u32)> {
    let manifest = Manifest::load(dir).map_err(|e| Failure::data(e.to_string()))?;
    match manifest.state {
        ManifestState::Complete => {}
        ManifestState::Flushed => eprintln!(
            "vdi-agent: warning: the backup in {} did not complete (the engine never confirmed it); restoring what its last Flush hardened",
            dir.display()
        ),
        ManifestState::InProgress => {
            return Err(Failure::data(format!(
                "the backup in {} never reached its first Flush: there is nothing durable to restore",
                dir.display()
            )));
        }
    }
    if verify_first {
        verify::verify_dir(dir, false)?;
    }
    let mut sources = Vec::new();
    for entry in &manifest.stripes {
        let path: PathBuf = dir.join(&entry.file);
        let label = format!("stripe {} ({})", entry.index, path.display());
        let file = fs::File::open(&path).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Failure::data(format!("{label} is missing: the backup set is incomplete"))
            } else {
                Failure::io(format!("opening {label}"), &e)
            }
        })?;
        let len = file
            .metadata()
            .map_err(|e| Failure::io(format!("reading {label}"), &e))?
            .len();
        if len < entry.stored_bytes {
            return Err(Failure::data(format!(
                "{label} is truncated: {len} bytes, the manifest says {}",
                entry.stored_bytes
            )));
        }
        let reader = StripeReader::with_expected(Input::File(file), entry.expected())
            .map_err(|e| Failure::data(format!("{label}: {e}")))?;
        let h = reader.header();
        if h.backup_id != manifest.backup_id || h.index != entry.index {
            return Err(Failure::data(format!(
                "{label} belongs to another backup or stripe (id {:032x}, stripe {}; the \
                 manifest says {:032x}, stripe {})",
                h.backup_id, h.index, manifest.backup_id, entry.index
            )));
        }
        sources.push(Source {
            label,
            reader,
            expected_bytes: Some(entry.raw_bytes),
        });
    }
    Ok((sources, manifest.block_size))
}

async fn serve(
    set: &AsyncSet<ClientSet>,
    engine: &mut Engine,
    args: &RestoreArgs,
    sources: Vec<Source>,
    block_size: u32,
    name: &str,
    progress: bool,
) -> Outcome<RestoreReport> {
    let config = engine
        .configuration(set, args.engine.connect_timeout, "restore")
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
            .map_err(|e| open_failure("restore", &dev_name, e))?;
        devices.push((
            device,
            StripeSource::start(i, source, Arc::clone(&counters))?,
        ));
    }
    let bars = Progress::start("restore", &counters, expected, progress);
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
    mut reader: StripeReader<Input>,
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
                self.counters.add(self.index, n as u64);
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

/// Prints the summary of a restore.
pub(crate) fn print_report(r: &RestoreReport) {
    eprintln!(
        "restore: {} through {} device{} in {:.2} s ({}); every record's checksum verified",
        bytes(r.bytes),
        r.devices,
        if r.devices == 1 { "" } else { "s" },
        r.elapsed.as_secs_f64(),
        rate(r.bytes, r.elapsed),
    );
    if !r.ended_early.is_empty() {
        eprintln!(
            "restore: the engine stopped reading device(s) {:?} before the end (as RESTORE \
             FILELISTONLY or HEADERONLY do); the rest of those stripes was not read",
            r.ended_early
        );
    }
    if let Some(line) = &r.engine_line
        && !line.is_empty()
    {
        eprintln!("engine: {line}");
    }
}
