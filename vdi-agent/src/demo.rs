//! `vdi-agent demo`: the whole job in one command.

use vdi_engine::units::parse_limit;

use crate::{
    backend, backup,
    cli::{BackendChoice, BackupArgs, DemoArgs, EngineArgs, ObjectArgs, RestoreArgs},
    failure::{Failure, Outcome},
    interrupt::Interrupt,
    restore, store, verify,
};

/// Backs up a pseudo-database through the reference engine, restores it (the engine checks every
/// byte), verifies the stripes, and prints what each step moved and how fast. Its temporary
/// directory is removed however it ends (Ctrl-C included), unless `--keep`.
pub(crate) async fn run(args: &DemoArgs, progress: bool, interrupt: &Interrupt) -> Outcome {
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
    let limit = |s: &str| parse_limit(s).map_err(|e| Failure::other(e.to_string()));
    let (connect_timeout, server_timeout) = (limit("60s")?, limit("0")?);
    let engine = |set: &str, block: Option<u32>| EngineArgs {
        set: Some(set.to_owned()),
        external: false,
        backend: BackendChoice::Shm,
        sqlvdi_lib: None,
        database: None,
        connect_timeout: connect_timeout.clone(),
        server_timeout: server_timeout.clone(),
        admit_uid: None,
        admit_gid: None,
        block_size: block,
        max_transfer_size: Some(args.max_transfer_size),
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
    let backup_args = BackupArgs {
        target: dir.clone(),
        devices: args.devices,
        zstd: args.zstd,
        no_request_complete: false,
        force: false,
        size: args.size,
        engine: engine(&format!("vdi-demo-backup-{pid}"), Some(args.block_size)),
        objects: ObjectArgs::default(),
        stall_after: None,
    };
    let b = backup::run(
        &backend::shm_client(&backup_args.engine),
        backend::SHM_HINTS,
        &backup_args,
        progress,
        interrupt,
    )
    .await?;
    backup::print_report(&b, &dir, false);
    let restore_args = RestoreArgs {
        source: dir.clone(),
        verify_first: false,
        allow_incomplete: false,
        engine: engine(&format!("vdi-demo-restore-{pid}"), None),
        objects: ObjectArgs::default(),
    };
    let r = restore::run(
        &backend::shm_client(&restore_args.engine),
        backend::SHM_HINTS,
        &restore_args,
        progress,
        interrupt,
    )
    .await?;
    restore::print_report(&r, false);
    let (store, manifest) = match store::Source::open(&dir, None)? {
        store::Source::Backup(store, m) => (store, m),
        store::Source::File(p) => {
            return Err(Failure::other(format!("{} is a file", p.display())));
        }
    };
    let start = std::time::Instant::now();
    let verified = tokio::select! {
        v = verify::verify_backup(&store, &manifest, progress, false) => v?,
        signal = interrupt.wait() => {
            return Err(Interrupt::failure(signal, "demo", "its temporary directory is removed"));
        }
    };
    eprintln!(
        "verify: {} in {} stripe{} ok ({})",
        crate::units::bytes(verified),
        manifest.device_count,
        store::plural(manifest.device_count.into()),
        crate::units::rate(verified, start.elapsed())
    );
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
