//! `vdi-agent restore`: each stripe back to its device, read on a thread of the device's own
//! straight into the engine's buffers, every record's checksum checked before the engine's
//! Read is completed.

use std::{
    io::{self, IsTerminal, Read},
    sync::Arc,
    time::{Duration, Instant},
};

use vdi_agent::{
    manifest::ManifestState,
    stripe::{Checkpoint, StripeReader},
};
use vdi_async::{AsyncDevice, AsyncSet, Summary, restore_from_reader};
use vdi_core::{
    ClientBackend, ClientConfig, ClientDevice, ClientDeviceSet, Config, Features,
    stripe_device_name,
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
        devices.push((device, StripeSource::new(i, source, Arc::clone(&counters))));
    }
    let bars = Progress::start("restore", &counters, expected, progress, false);
    let start = Instant::now();
    let results = on_every_device(devices, |(device, source)| async move {
        let served = tokio::task::spawn_blocking(move || source.serve(&device)).await;
        served.map_err(|e| format!("the reader thread failed: {e}"))
    })
    .await?;
    let elapsed = start.elapsed();
    bars.finish();
    let mut total = 0;
    let mut ended_early = Vec::new();
    let mut first_data_error = None;
    let mut first_device_error = None;
    for (i, served) in results.into_iter().enumerate() {
        let i = i as u32;
        let (r, source) = served.map_err(Failure::other)?;
        let label = source.label.clone();
        let end = source.finish();
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

/// A stripe served to its device: the verifying reader, read straight into the engine's
/// buffers by [`restore_from_reader`] on a thread of the device's own, and what it met.
#[derive(Debug)]
struct StripeSource {
    index: u32,
    label: String,
    reader: StripeReader<Box<dyn Read + Send>>,
    counters: Arc<Counters>,
    /// The stripe's verified end was reached.
    ended: bool,
    /// The stripe's first error.
    error: Option<String>,
}

impl StripeSource {
    fn new(index: u32, source: Source, counters: Arc<Counters>) -> Self {
        Self {
            index,
            label: source.label,
            reader: source.reader,
            counters,
            ended: false,
            error: None,
        }
    }

    /// Serves the device to its end, on the calling thread (one that may block).
    fn serve<D: ClientDevice + 'static>(
        mut self,
        device: &AsyncDevice<D>,
    ) -> (io::Result<Summary>, Self) {
        let r = restore_from_reader(device, &mut self);
        (r, self)
    }

    /// The verified totals, `None` if the engine stopped before the end, or the stripe's error.
    fn finish(self) -> Result<Option<Checkpoint>, String> {
        match self.error {
            Some(e) => Err(e),
            None if self.ended => Ok(Some(self.reader.totals())),
            None => Ok(None),
        }
    }
}

impl Read for StripeSource {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self.reader.read(out) {
            Ok(0) if !out.is_empty() => {
                self.ended = true;
                Ok(0)
            }
            Ok(n) => {
                self.counters.add(self.index, n as u64, 0);
                Ok(n)
            }
            Err(e) => {
                self.error.get_or_insert_with(|| e.to_string());
                Err(e)
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
