//! `vdi-agent demo`: the whole job in one command.

use std::path::PathBuf;

use crate::{
    backup,
    cli::{BackupArgs, DemoArgs, EngineArgs, RestoreArgs},
    failure::{Failure, Outcome},
    restore, verify,
};

/// Backs up a pseudo-database through the reference engine, restores it (the engine checks every
/// byte), verifies the stripes, and prints what each step moved and how fast.
pub(crate) async fn run(args: &DemoArgs, progress: bool) -> Outcome {
    let (dir, temp) = match &args.dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("vdi-agent-demo-")
                .tempdir()
                .map_err(|e| Failure::io("creating a temporary directory", &e))?;
            (t.path().join("backup"), Some(t))
        }
    };
    let engine = |set: &str| EngineArgs {
        set: Some(set.to_owned()),
        external: false,
        connect_timeout: std::time::Duration::from_secs(60),
        server_timeout: 0,
        admit_uid: None,
        admit_gid: None,
        block_size: args.block_size,
        max_transfer_size: args.max_transfer_size,
        buffer_count: None,
        engine_args: Vec::new(),
    };
    let pid = std::process::id();
    eprintln!(
        "demo: backing up a {} pseudo-database through {} devices to {}{}",
        crate::units::bytes(args.size),
        args.devices,
        dir.display(),
        args.zstd
            .map_or(String::new(), |l| format!(" with zstd level {l}"))
    );
    let b = backup::run(
        &BackupArgs {
            target: dir.clone(),
            devices: args.devices,
            zstd: args.zstd,
            no_request_complete: false,
            size: args.size,
            engine: engine(&format!("vdi-demo-backup-{pid}")),
            stall_after: None,
        },
        progress,
    )
    .await?;
    backup::print_report(&b, &dir);
    let r = restore::run(
        &RestoreArgs {
            source: dir.clone(),
            verify_first: false,
            engine: engine(&format!("vdi-demo-restore-{pid}")),
        },
        progress,
    )
    .await?;
    restore::print_report(&r);
    let dir2: PathBuf = dir.clone();
    tokio::task::spawn_blocking(move || verify::verify_dir(&dir2, true))
        .await
        .map_err(|e| Failure::other(format!("verify failed: {e}")))??;
    match temp {
        Some(t) if !args.keep => {
            let _ = t.close();
        }
        Some(t) => {
            let _ = t.keep();
            eprintln!("demo: the backup stays in {}", dir.display());
        }
        None => eprintln!("demo: the backup stays in {}", dir.display()),
    }
    eprintln!(
        "demo: ok. backup {}, restore {} (the engine checked every byte it read)",
        crate::units::rate(b.raw_bytes, b.elapsed),
        crate::units::rate(r.bytes, r.elapsed)
    );
    Ok(())
}
