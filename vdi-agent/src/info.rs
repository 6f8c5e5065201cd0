//! `vdi-agent info` and `vdi-agent list`: what a backup is, from its manifest alone (no stripe
//! is read: `verify` does that), for people or, with `--json`, in a stable machine-readable
//! form.

use std::path::Path;

use serde_json::{Value, json};
use vdi_agent::manifest::Manifest;

use crate::{
    cli::ObjectArgs,
    failure::{Failure, Outcome},
    store::{self, BackupStore, LocalStore, plural, rfc3339},
    units::bytes,
};

/// The stable JSON form of a backup's description (`info --json`, and each entry of
/// `list --json`). Fields are only ever added.
fn describe(store: &dyn BackupStore, m: &Manifest) -> Value {
    let raw = m.raw_bytes();
    let stored = m.stored_bytes();
    json!({
        "path": store.location(),
        "state": m.state,
        "good": m.state.is_complete(),
        "incomplete_reason": m.incomplete_reason(),
        "backup_id": format!("{:032x}", m.backup_id),
        "set_name": m.set_name,
        "database_bytes": raw,
        "stored_bytes": stored,
        "ratio": if stored > 0 { raw as f64 / stored as f64 } else { 1.0 },
        "devices": m.device_count,
        "block_size": m.block_size,
        "max_transfer_size": m.max_transfer_size,
        "codec": m.codec,
        "created": rfc3339(m.created),
        "finished": m.finished.map(rfc3339),
        "end": m.end,
        "engine_line": m.engine_line,
        "reason": m.reason,
        "checkpoints": m.min_checkpoints(),
        "tool": m.tool,
    })
}

/// Runs `vdi-agent info DIR`.
pub(crate) fn info(dir: &Path, objects: Option<&ObjectArgs>, json: bool) -> Outcome {
    let (store, m) = match store::Source::open(dir, objects)? {
        store::Source::Backup(store, m) => (store, m),
        store::Source::File(p) => {
            return Err(Failure::usage(format!(
                "{} is a file: info takes a backup directory (verify reads a single stripe)",
                p.display()
            )));
        }
    };
    if json {
        crate::print_json(&describe(store.as_ref(), &m));
        return Ok(());
    }
    let raw = m.raw_bytes();
    let stored = m.stored_bytes();
    let mut lines = vec![
        ("backup", store.location()),
        (
            "state",
            match m.incomplete_reason() {
                None => "complete".to_owned(),
                Some(why) => format!("{} (incomplete: {why})", m.state),
            },
        ),
        ("database", bytes(raw)),
        (
            "stored",
            format!(
                "{} (ratio {:.2})",
                bytes(stored),
                if stored > 0 {
                    raw as f64 / stored as f64
                } else {
                    1.0
                }
            ),
        ),
        (
            "devices",
            format!("{} stripe{}", m.device_count, plural(m.device_count.into())),
        ),
        ("block size", m.block_size.to_string()),
        ("transfer size", m.max_transfer_size.to_string()),
        ("codec", m.codec.to_string()),
        ("set", m.set_name.clone()),
        ("created", rfc3339(m.created)),
        (
            "finished",
            m.finished.map_or_else(|| "-".to_owned(), rfc3339),
        ),
    ];
    if let Some(end) = m.end {
        lines.push(("confirmed by", end.to_string()));
    }
    if let Some(line) = &m.engine_line {
        lines.push(("engine", line.clone()));
    }
    lines.push(("backup id", format!("{:032x}", m.backup_id)));
    for (k, v) in lines {
        println!("{k:>13}: {v}");
    }
    Ok(())
}

/// Runs `vdi-agent list PARENT`: every subdirectory that holds a manifest, sorted by name.
pub(crate) fn list(parent: &Path, json: bool) -> Outcome {
    let out: Vec<_> = LocalStore::backups_in(parent)?
        .into_iter()
        .map(|(name, store)| {
            let m = store.manifest();
            (name, store, m)
        })
        .collect();
    if json {
        let entries: Vec<Value> = out
            .iter()
            .map(|(_, store, m)| match m {
                Ok(m) => describe(store, m),
                Err(e) => json!({
                    "path": store.location(),
                    "state": "damaged",
                    "good": false,
                    "error": e.to_string(),
                }),
            })
            .collect();
        crate::print_json(&Value::Array(entries));
        return Ok(());
    }
    for (name, _, m) in &out {
        match m {
            Ok(m) => println!(
                "{name:<24} {:<11} {:>10} {:>2} stripe{} {:<13} created {}",
                m.state.to_string(),
                bytes(m.raw_bytes()),
                m.device_count,
                plural(m.device_count.into()),
                m.codec.name(),
                rfc3339(m.created)
            ),
            Err(e) => println!("{name:<24} damaged     {e}"),
        }
    }
    if out.is_empty() {
        eprintln!("list: no backups in {}", parent.display());
    }
    Ok(())
}
