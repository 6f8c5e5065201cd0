//! `vdi-agent verify`: reads every stripe of a backup and checks it against itself (record
//! checksums, checkpoints, the stream hash) and against the manifest, without an engine.

use std::{
    fs,
    io::{self, ErrorKind},
    path::Path,
    thread,
    time::Instant,
};

use vdi_agent::{manifest::Manifest, stripe::StripeReader};

use crate::{
    failure::{Failure, Outcome},
    output::Input,
    units::{bytes, rate},
};

/// Verifies the backup in `dir` (or one stripe on stdin for `-`); prints a line per stripe when
/// `print` is set.
pub(crate) fn verify_dir(dir: &Path, print: bool) -> Outcome<u64> {
    let start = Instant::now();
    if dir.as_os_str() == "-" {
        let reader = StripeReader::new(Input::Stdin(io::stdin()))
            .map_err(|e| Failure::data(format!("stdin: {e}")))?;
        let totals = reader
            .finish()
            .map_err(|e| Failure::data(format!("stdin: {e}")))?;
        if print {
            eprintln!(
                "verify: stdin: {} in {} records, ok",
                bytes(totals.raw_bytes),
                totals.data_records
            );
        }
        return Ok(totals.raw_bytes);
    }
    let manifest = Manifest::load(dir).map_err(|e| Failure::data(e.to_string()))?;
    let results: Vec<Result<String, Failure>> = thread::scope(|s| {
        let handles: Vec<_> = manifest
            .stripes
            .iter()
            .map(|entry| {
                let manifest = &manifest;
                s.spawn(move || {
                    let path = dir.join(&entry.file);
                    let label = format!("stripe {} ({})", entry.index, path.display());
                    let file = fs::File::open(&path).map_err(|e| {
                        if e.kind() == ErrorKind::NotFound {
                            Failure::data(format!("{label} is missing"))
                        } else {
                            Failure::io(format!("opening {label}"), &e)
                        }
                    })?;
                    let reader = StripeReader::with_expected(Input::File(file), entry.expected())
                        .map_err(|e| Failure::data(format!("{label}: {e}")))?;
                    let h = reader.header();
                    if h.backup_id != manifest.backup_id || h.index != entry.index {
                        return Err(Failure::data(format!(
                            "{label} belongs to another backup or stripe"
                        )));
                    }
                    let totals = reader
                        .finish()
                        .map_err(|e| Failure::data(format!("{label}: {e}")))?;
                    Ok(format!(
                        "{label}: {} in {} records, ok",
                        bytes(totals.raw_bytes),
                        totals.data_records
                    ))
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
    });
    let mut first_error = None;
    for r in results {
        match r {
            Ok(line) => {
                if print {
                    eprintln!("verify: {line}");
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
    if let Some(f) = first_error {
        return Err(f);
    }
    let total: u64 = manifest.stripes.iter().map(|s| s.raw_bytes).sum();
    if print {
        let elapsed = start.elapsed();
        eprintln!(
            "verify: {} in {} stripes ok ({:?} backup, {:.2} s, {})",
            bytes(total),
            manifest.stripes.len(),
            manifest.state,
            elapsed.as_secs_f64(),
            rate(total, elapsed)
        );
    }
    Ok(total)
}
