//! `vdi-agent verify`: reads every stripe of a backup and checks it against itself (record
//! checksums, checkpoints, the stream hash) and against the manifest (every field a stripe
//! header also carries, no stray stripe files), without an engine. Only a complete backup
//! verifies as good: an incomplete one is checked as far as it goes, then reported as
//! incomplete (exit 7).

use std::{
    fs,
    io::{self, IsTerminal, Read},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use vdi_agent::{manifest::Manifest, stripe::StripeReader};

use crate::{
    cli::VerifyArgs,
    failure::{Failure, Outcome},
    progress::{Counters, Progress},
    store::{self, BackupStore, plural, stripe_of},
    units::{bytes, rate},
};

/// What a verify found, for the summary.
#[derive(Debug)]
struct Verified {
    what: String,
    raw_bytes: u64,
    stripes: u32,
    state: String,
    elapsed: Duration,
}

/// Runs `vdi-agent verify`.
pub(crate) async fn run(args: &VerifyArgs, progress: bool, json: bool) -> Outcome {
    let source = args.source.clone();
    let start = Instant::now();
    if source.as_os_str() == "-" {
        if io::stdin().is_terminal() {
            return Err(Failure::usage(
                "refusing to read a stripe from a terminal: redirect stdin from a stripe file",
            ));
        }
        return verify_one(Box::new(io::stdin()), "stdin".to_owned(), start, json).await;
    }
    match store::Source::open(&source, Some(&args.objects))? {
        store::Source::File(path) => {
            let file = fs::File::open(&path)
                .map_err(|e| Failure::io(format!("opening {}", path.display()), &e))?;
            verify_one(Box::new(file), path.display().to_string(), start, json).await
        }
        store::Source::Backup(store, manifest) => {
            store::check_no_strays(store.as_ref(), &manifest)?;
            let raw = verify_backup(&store, &manifest, progress, !json).await?;
            if let Some(why) = manifest.incomplete_reason() {
                return Err(Failure::incomplete(format!(
                    "incomplete: {} is not a good backup: {why}. Every stripe checks out up to \
                     that checkpoint",
                    store.location()
                )));
            }
            summary(
                &Verified {
                    what: store.location(),
                    raw_bytes: raw,
                    stripes: manifest.device_count,
                    state: manifest.state.to_string(),
                    elapsed: start.elapsed(),
                },
                json,
            )
        }
    }
}

/// Prints a good verify's summary.
fn summary(v: &Verified, json: bool) -> Outcome {
    if json {
        crate::print_json(&serde_json::json!({
            "operation": "verify",
            "source": v.what,
            "state": v.state,
            "stripes": v.stripes,
            "raw_bytes": v.raw_bytes,
            "seconds": v.elapsed.as_secs_f64(),
            "bytes_per_second": v.raw_bytes as f64 / v.elapsed.as_secs_f64().max(1e-9),
        }));
    } else {
        eprintln!(
            "verify: {}: ok, {} in {} stripe{} ({} backup, {:.2} s, {})",
            v.what,
            bytes(v.raw_bytes),
            v.stripes,
            plural(v.stripes.into()),
            v.state,
            v.elapsed.as_secs_f64(),
            rate(v.raw_bytes, v.elapsed)
        );
    }
    Ok(())
}

/// Verifies one stripe read without its manifest, off the runtime's threads, and prints its
/// summary ("stripe i of n (name)").
async fn verify_one(
    input: Box<dyn Read + Send>,
    name: String,
    start: Instant,
    json: bool,
) -> Outcome {
    let (what, raw_bytes) = tokio::task::spawn_blocking(move || {
        let reader = StripeReader::new(input).map_err(|e| Failure::data(format!("{name}: {e}")))?;
        let label = format!("{} ({name})", stripe_of(reader.header()));
        let totals = reader
            .finish()
            .map_err(|e| Failure::data(format!("{label}: {e}")))?;
        Ok::<_, Failure>((label, totals.raw_bytes))
    })
    .await
    .map_err(|e| Failure::other(format!("verify failed: {e}")))??;
    summary(
        &Verified {
            what,
            raw_bytes,
            stripes: 1,
            state: "stripe".to_owned(),
            elapsed: start.elapsed(),
        },
        json,
    )
}

/// Verifies every stripe of the backup in `store` against `manifest`, up to the checkpoint the
/// manifest records, with a progress bar when `progress`; prints a line per stripe when
/// `print`. Returns the raw bytes verified.
///
/// # Errors
///
/// The first stripe's failure (a data error for damage, an I/O error naming the file); every
/// stripe's failure is printed when `print`.
pub(crate) async fn verify_backup(
    store: &Arc<dyn BackupStore>,
    manifest: &Manifest,
    progress: bool,
    print: bool,
) -> Outcome<u64> {
    let counters = Counters::new(manifest.device_count);
    let expected = manifest.stripes.iter().map(|s| s.raw_bytes).collect();
    let bars = Progress::start("verify", &counters, Some(expected), progress, false);
    let store = Arc::clone(store);
    let m = manifest.clone();
    let c = Arc::clone(&counters);
    let results = tokio::task::spawn_blocking(move || check_stripes(store.as_ref(), &m, &c))
        .await
        .map_err(|e| Failure::other(format!("verify failed: {e}")))?;
    bars.finish();
    let mut first_error = None;
    let mut total = 0;
    for r in results {
        match r {
            Ok((label, raw)) => {
                total += raw;
                if print {
                    eprintln!("verify: {label}: {} ok", bytes(raw));
                }
            }
            Err(f) => {
                if print {
                    eprintln!("verify: {f}");
                }
                first_error.get_or_insert(f);
            }
        }
    }
    match first_error {
        Some(f) => Err(f),
        None => Ok(total),
    }
}

/// Reads every stripe, one thread each.
fn check_stripes(
    store: &dyn BackupStore,
    manifest: &Manifest,
    counters: &Counters,
) -> Vec<Outcome<(String, u64)>> {
    thread::scope(|s| {
        let handles: Vec<_> = manifest
            .stripes
            .iter()
            .map(|entry| {
                s.spawn(move || {
                    let mut open = store::open_stripe(store, manifest, entry.index)?;
                    loop {
                        match open.reader.read_chunk() {
                            Ok(Some(chunk)) => counters.add(entry.index, chunk.len() as u64, 0),
                            Ok(None) => break,
                            Err(e) => return Err(Failure::data(format!("{}: {e}", open.label))),
                        }
                    }
                    let totals = open
                        .reader
                        .finish()
                        .map_err(|e| Failure::data(format!("{}: {e}", open.label)))?;
                    Ok((open.label, totals.raw_bytes))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Failure::other("a verify thread panicked")))
            })
            .collect()
    })
}
