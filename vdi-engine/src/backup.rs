//! BACKUP: writes the pseudo-database to every device of the client's set, as SQL Server does
//! (vdi-spec.md §9.1, §9.4, §7.3).

use std::{thread, time::Instant};

use tracing::debug;
use vdi_core::{
    CommandCode, Completion, CompletionCode, Features, ServerBackend, ServerBuffer, ServerCommand,
    ServerDevice, ServerDeviceSet,
};

use crate::{
    database::Database,
    error::EngineError,
    format::{Header, MAX_DATABASE_SIZE, StreamLayout},
    options::{BackupJob, Options, OptionsError},
    report::{EffectiveConfig, Operation, Report},
    run::{self, Device, PanicGuard, Pending, Pool, Run, tally},
};

/// What a backup device remembers besides the common state.
struct BackupDev<B> {
    /// The device's own block buffer for the header and the trailer.
    meta: Option<B>,
    /// Stream bytes the client took.
    bytes: u64,
}

/// Runs a BACKUP against the set `options.set_name` on `backend`.
///
/// The steps are SQL Server's: `Open` (retried for [`Options::wait_for_set`]),
/// `GetConfiguration`, `BeginConfiguration` with `VDF_WriteMedia` (and `VDF_CompleteEnabled`
/// when the client asked for `VDC_Complete` and [`Options::send_complete`] is set),
/// `RequestBuffers` (`BUFFERCOUNT` buffers of `MAXTRANSFERSIZE`, and one block per device for
/// the header and trailer), `OpenDevice` for every device, `EndConfiguration`; then each device's
/// stream ([`crate::format`]) as `VDC_Write` commands, with chunks handed their buffers in chunk
/// order across devices; the Flushes; `VDC_Complete` on every device once every final Flush
/// succeeded; `CloseDevice`; `Close`.
///
/// # Errors
///
/// An [`EngineError`] naming the cause: the set does not exist, a VDI call failed, the client
/// failed a command (e.g. `ERROR_DISK_FULL`), a timeout, an abort (by the client or the abort
/// fault). After a failed command the engine stops sending data, waits for the outstanding
/// commands, closes the devices and the set, as SQL Server does (vdi-spec.md §9.2).
pub fn run_backup<B: ServerBackend>(
    backend: &B,
    options: &Options,
    job: &BackupJob,
) -> Result<Report, EngineError> {
    options.validate()?;
    let block = u64::from(options.block_size);
    let size = job.size.div_ceil(block).saturating_mul(block);
    if size > MAX_DATABASE_SIZE {
        return Err(OptionsError::DatabaseSize(job.size).into());
    }
    let set = run::open(backend, options)?;
    let started = Instant::now();
    backup_on(&set, options, job, Database::new(job.seed, size), started)
}

fn backup_on<S: ServerDeviceSet>(
    set: &S,
    options: &Options,
    job: &BackupJob,
    db: Database,
    started: Instant,
) -> Result<Report, EngineError> {
    let client =
        run::client_config(set, options, &job.faults).inspect_err(|_| run::abandon(set))?;
    let n = client.device_count;
    let complete = options.send_complete && client.features.contains(Features::REQUEST_COMPLETE);
    let mut features = Features::WRITE_MEDIA;
    if complete {
        features |= Features::COMPLETE_ENABLED;
    }
    let server = run::server_config(options, features);
    let buffer_count = options.effective_buffer_count(n);
    let run::Configured {
        devices,
        names,
        mut buffers,
    } = run::configure(
        set,
        options,
        &client,
        &server,
        &[
            (options.max_transfer_size, buffer_count),
            (options.block_size, n),
        ],
    )
    .inspect_err(|_| run::abandon(set))?;
    let metas = buffers.pop().unwrap_or_default();
    let pool = Pool::new(buffers.pop().unwrap_or_default());
    let run = Run::new(set, options, client, job.faults.clone());
    let mut metas = metas.into_iter();
    let devs: Vec<Device<'_, S::Device, BackupDev<S::Buffer>>> = devices
        .iter()
        .zip(&names)
        .enumerate()
        .map(|(i, (d, name))| {
            Device::new(
                i as u32,
                name.clone(),
                d,
                BackupDev {
                    meta: metas.next(),
                    bytes: 0,
                },
            )
        })
        .collect();
    debug!(
        set = %options.set_name,
        devices = n,
        size = db.size(),
        buffer_count,
        complete,
        "backup starts"
    );

    thread::scope(|s| {
        let (run, pool, db) = (&run, &pool, &db);
        let completion: Vec<_> = devs
            .iter()
            .map(|dev| {
                s.spawn(move || {
                    let _guard = PanicGuard(run);
                    dev.completions(run, |dev, p, c, buffer| {
                        on_write(run, pool, dev, p, c, buffer);
                    });
                })
            })
            .collect();
        let senders: Vec<_> = devs
            .iter()
            .map(|dev| {
                s.spawn(move || {
                    let _guard = PanicGuard(run);
                    let header = Header::for_device(
                        db.seed(),
                        db.size(),
                        n,
                        dev.slot,
                        options.block_size,
                        options.max_transfer_size,
                    );
                    send_stream(run, pool, dev, db, &header.layout(), job.flushes, options)
                })
            })
            .collect();
        let finished: Vec<bool> = senders
            .into_iter()
            .map(|h| run::join(run, h) == Some(true))
            .collect();
        let all_sent = finished.iter().all(|&f| f);
        if complete && all_sent && !run.stopped() {
            // Every device's final Flush succeeded: the backup is complete; let every client
            // harden it (vdi-spec.md §7.3, VDC_Complete).
            let tags: Vec<_> = devs
                .iter()
                .map(|d| {
                    d.send(
                        run,
                        ServerCommand::control(CommandCode::COMPLETE),
                        Pending::control(CommandCode::COMPLETE),
                    )
                    .ok()
                })
                .collect();
            for (d, tag) in devs.iter().zip(tags) {
                match tag.and_then(|t| d.wait_for(run, t)) {
                    Some(c) if c.code == CompletionCode::SUCCESS => {}
                    Some(c) => run.fail(EngineError::CommandFailed {
                        device: d.name.clone(),
                        command: CommandCode::COMPLETE,
                        code: c.code,
                    }),
                    None => {}
                }
            }
        }
        run::drain(run, &devs);
        run::close_devices(run, &devs);
        for h in completion {
            run::join(run, h);
        }
        if !all_sent {
            // Every way a sender stops records its cause; this is the backstop.
            run.fail_weak(EngineError::Internal(
                "a device stopped sending without a recorded cause",
            ));
        }
    });
    run.close_set();
    let elapsed = started.elapsed();
    let (failure, warnings) = run.outcome();
    if let Some(e) = failure {
        return Err(e);
    }
    let mut report = Report {
        operation: Operation::Backup,
        config: EffectiveConfig {
            set_name: options.set_name.clone(),
            device_names: names,
            client,
            block_size: options.block_size,
            max_transfer_size: options.max_transfer_size,
            buffer_count,
            features: client.features | features,
            complete_enabled: complete,
            server_timeout: run.limits.server_timeout(),
        },
        database_bytes: db.size(),
        backup_id: db.seed(),
        device_bytes: Vec::with_capacity(devs.len()),
        commands: 0,
        flushes: 0,
        completes: 0,
        clear_errors: 0,
        elapsed,
        verified: false,
        warnings,
    };
    tally(&mut report, &devs, |x| x.bytes);
    debug!(?report, "backup done");
    Ok(report)
}

/// A Write completed: anything but success with every byte taken fails the backup.
fn on_write<S: ServerDeviceSet, D: ServerDevice>(
    run: &Run<'_, S>,
    pool: &Pool<D::Buffer>,
    dev: &Device<'_, D, BackupDev<D::Buffer>>,
    p: Pending,
    c: Completion,
    buffer: Option<D::Buffer>,
) {
    let ok = c.code == CompletionCode::SUCCESS && c.bytes_transferred == p.size;
    if !ok {
        let e = if c.code == CompletionCode::SUCCESS || c.bytes_transferred > p.size {
            EngineError::ByteCount {
                device: dev.name.clone(),
                command: p.code,
                size: p.size,
                bytes: c.bytes_transferred,
                code: c.code,
            }
        } else {
            EngineError::CommandFailed {
                device: dev.name.clone(),
                command: p.code,
                code: c.code,
            }
        };
        if matches!(
            c.code,
            CompletionCode::OPERATION_ABORTED | CompletionCode::IO_DEVICE
        ) {
            run.fail_weak(e);
        } else {
            run.fail(e);
        }
    }
    let mut st = dev.lock();
    if ok {
        st.extra.bytes += u64::from(p.size);
    }
    match buffer {
        Some(b) if p.meta => st.extra.meta = Some(b),
        Some(b) => {
            drop(st);
            pool.release(b);
        }
        None => {
            drop(st);
            run.abort(EngineError::Internal(
                "a Write came back without its buffer",
            ));
        }
    }
}

/// The chunk index before which extra Flush `j` (1-based, of `extra` + 1 in all) goes, for a
/// device with `chunks` chunks: evenly spaced.
fn flush_point(j: u32, flushes: u32, chunks: u64) -> u64 {
    (u128::from(j) * u128::from(chunks) / u128::from(flushes.max(1))) as u64
}

/// One device's sender: header, chunks (with the extra Flushes), trailer, final Flush.
/// `false` when the run stopped.
fn send_stream<S: ServerDeviceSet, D: ServerDevice>(
    run: &Run<'_, S>,
    pool: &Pool<D::Buffer>,
    dev: &Device<'_, D, BackupDev<D::Buffer>>,
    db: &Database,
    layout: &StreamLayout,
    flushes: u32,
    options: &Options,
) -> bool {
    let header = *layout.header();
    let n = u64::from(header.device_count);
    let mut cmd = 0u64;
    if !run.faults_before(dev, cmd) || !write_meta(run, dev, options, cmd, 0, |b| header.encode(b))
    {
        return false;
    }
    cmd += 1;
    let extra = flushes.saturating_sub(1);
    let mut next_flush = 1u32;
    let mut offset = u64::from(options.block_size);
    for k in 0..header.chunks {
        while next_flush <= extra && flush_point(next_flush, flushes, header.chunks) <= k {
            if !run.faults_before(dev, cmd) || !dev.control_ok(run, CommandCode::FLUSH) {
                return false;
            }
            cmd += 1;
            next_flush += 1;
        }
        if !run.faults_before(dev, cmd) {
            return false;
        }
        let (db_offset, len) = layout.chunk(k);
        let ticket = k * n + u64::from(dev.slot);
        let Some(mut buf) = pool.acquire(Some(ticket), &|| run.stopped()) else {
            return false;
        };
        match buf.as_mut_slice().get_mut(..len as usize) {
            Some(s) => db.fill(db_offset, s),
            None => {
                pool.release(buf);
                run.abort(EngineError::Internal(
                    "a buffer shorter than MAXTRANSFERSIZE",
                ));
                return false;
            }
        }
        let pending = Pending {
            code: CommandCode::WRITE,
            size: len,
            offset,
            seq: cmd,
            meta: false,
        };
        if let Err(e) = dev.send(run, ServerCommand::write(buf, len), pending) {
            if let Some(b) = e.into_buffer() {
                pool.release(b);
            }
            return false;
        }
        cmd += 1;
        offset += u64::from(len);
    }
    while next_flush <= extra {
        if !run.faults_before(dev, cmd) || !dev.control_ok(run, CommandCode::FLUSH) {
            return false;
        }
        cmd += 1;
        next_flush += 1;
    }
    let trailer = layout.trailer();
    if !run.faults_before(dev, cmd)
        || !write_meta(run, dev, options, cmd, offset, |b| trailer.encode(b))
    {
        return false;
    }
    cmd += 1;
    if flushes > 0 && (!run.faults_before(dev, cmd) || !dev.control_ok(run, CommandCode::FLUSH)) {
        return false;
    }
    true
}

/// Writes one block (header or trailer) from the device's own block buffer.
fn write_meta<S: ServerDeviceSet, D: ServerDevice>(
    run: &Run<'_, S>,
    dev: &Device<'_, D, BackupDev<D::Buffer>>,
    options: &Options,
    seq: u64,
    offset: u64,
    encode: impl FnOnce(&mut [u8]),
) -> bool {
    let mut buf = None;
    if !dev.wait_until(run, true, |st| {
        buf = st.extra.meta.take();
        buf.is_some()
    }) {
        return false;
    }
    let Some(mut buf) = buf else {
        return false;
    };
    let block = options.block_size;
    match buf.as_mut_slice().get_mut(..block as usize) {
        Some(s) => encode(s),
        None => {
            run.abort(EngineError::Internal(
                "a block buffer shorter than BLOCKSIZE",
            ));
            return false;
        }
    }
    let pending = Pending {
        code: CommandCode::WRITE,
        size: block,
        offset,
        seq,
        meta: true,
    };
    match dev.send(run, ServerCommand::write(buf, block), pending) {
        Ok(_) => true,
        Err(e) => {
            if let Some(b) = e.into_buffer() {
                dev.lock().extra.meta = Some(b);
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_are_evenly_spaced() {
        // 3 flushes over 9 chunks: extra ones before chunks 3 and 6.
        assert_eq!(flush_point(1, 3, 9), 3);
        assert_eq!(flush_point(2, 3, 9), 6);
        // More flushes than chunks: some fall together.
        assert_eq!(flush_point(1, 4, 1), 0);
        assert_eq!(flush_point(3, 4, 1), 0);
    }
}
