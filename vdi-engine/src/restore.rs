//! RESTORE: reads every device's stream back and checks every byte against the regenerated
//! backup, as SQL Server reads a backup set (vdi-spec.md §9.7, §9.8).

use std::{sync::Mutex, thread, time::Instant};

use tracing::debug;
use vdi_core::{
    CommandCode, Completion, CompletionCode, Features, ServerBackend, ServerBuffer, ServerCommand,
    ServerDevice, ServerDeviceSet,
};

use crate::{
    database::{Database, PAGE_SIZE, PageStamp},
    error::EngineError,
    format::{Header, Region, StreamLayout},
    options::{Options, RestoreJob},
    report::{EffectiveConfig, Operation, Report, Warning},
    run::{self, Device, PanicGuard, Pending, Pool, Rng, Run, lock, tally},
};

/// The read that met the end of the data.
#[derive(Clone, Copy, Debug)]
struct End {
    seq: u64,
    /// Where the read began.
    start: u64,
    /// Where the data ended.
    at: u64,
    had_bytes: bool,
}

/// What a restore device remembers besides the common state.
#[derive(Default)]
struct RestoreDev {
    /// The first read (the header) was handled.
    header_done: bool,
    /// The stream's layout, from its header.
    layout: Option<StreamLayout>,
    /// The read that met the end of the data.
    end: Option<End>,
    /// The last read (sequence, offset) answered with all its bytes.
    last_full: Option<(u64, u64)>,
    /// Reads answered `ERROR_IO_DEVICE` with no data (after the end, the device may be in
    /// IO-ERROR).
    io_device: Vec<u64>,
    /// Bytes received.
    bytes: u64,
    /// Bytes asked for, when the sender stopped.
    requested: u64,
}

/// The headers seen so far, across devices.
struct Registry {
    first: Option<(Header, String)>,
    owners: Vec<Option<String>>,
}

/// What one device's stream must hold.
struct Expected {
    layout: StreamLayout,
    db: Database,
    header: Vec<u8>,
    trailer: Vec<u8>,
}

/// Runs a RESTORE from the set `options.set_name` on `backend`.
///
/// The steps are SQL Server's: `Open`, `GetConfiguration`, `BeginConfiguration` with
/// `VDF_ReadMedia`, `RequestBuffers`, `OpenDevice` for every device, `EndConfiguration`; then
/// `VDC_Read` commands on every device at once, of random sizes (seeded by
/// [`RestoreJob::read_seed`]) among the multiples of `BLOCKSIZE` up to `MAXTRANSFERSIZE`, with
/// several outstanding per device (prefetch), the `BUFFERCOUNT` buffers shared by all devices.
/// Each stream's header comes first: devices may present the streams in any order, but every
/// stream of the backup must appear exactly once, with the same backup id and parameters, and
/// the `BLOCKSIZE` of the backup. Then every byte is checked against the regenerated stream,
/// trailer included, up to the end of the data (the read answered `ERROR_HANDLE_EOF` or
/// `ERROR_NO_DATA_DETECTED`; later reads may answer the same with no data, or
/// `ERROR_IO_DEVICE`). With [`RestoreJob::stop_after`], only the start of each stream is read
/// and the devices are closed early (RESTORE FILELISTONLY).
///
/// # Errors
///
/// An [`EngineError`] naming the cause, e.g. [`EngineError::Mismatch`] with the device and the
/// stream offset, [`EngineError::Truncated`], [`EngineError::TooLong`], [`EngineError::Header`],
/// or any error of [`run_backup`](crate::run_backup).
pub fn run_restore<B: ServerBackend>(
    backend: &B,
    options: &Options,
    job: &RestoreJob,
) -> Result<Report, EngineError> {
    options.validate()?;
    let set = run::open(backend, options)?;
    let started = Instant::now();
    restore_on(&set, options, job, started)
}

fn restore_on<S: ServerDeviceSet>(
    set: &S,
    options: &Options,
    job: &RestoreJob,
    started: Instant,
) -> Result<Report, EngineError> {
    let client =
        run::client_config(set, options, &job.faults).inspect_err(|_| run::abandon(set))?;
    let n = client.device_count;
    let server = run::server_config(options, Features::READ_MEDIA);
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
        &[(options.max_transfer_size, buffer_count)],
    )
    .inspect_err(|_| run::abandon(set))?;
    let pool = Pool::new(buffers.pop().unwrap_or_default());
    // Each device may hold its share of the buffers: prefetch without starving the others.
    let depth = (buffer_count / n.max(1)).max(1) as usize;
    let block = u64::from(options.block_size);
    let limit = job
        .stop_after
        .map(|b| b.div_ceil(block).saturating_mul(block).max(block));
    let run = Run::new(set, options, client, job.faults.clone());
    let registry = Mutex::new(Registry {
        first: None,
        owners: vec![None; n as usize],
    });
    let devs: Vec<Device<'_, S::Device, RestoreDev>> = devices
        .iter()
        .zip(&names)
        .enumerate()
        .map(|(i, (d, name))| Device::new(i as u32, name.clone(), d, RestoreDev::default()))
        .collect();
    debug!(
        set = %options.set_name,
        devices = n,
        buffer_count,
        depth,
        ?limit,
        "restore starts"
    );

    let mut verified = true;
    thread::scope(|s| {
        let (run, pool, registry) = (&run, &pool, &registry);
        let completion: Vec<_> = devs
            .iter()
            .map(|dev| {
                s.spawn(move || {
                    let _guard = PanicGuard(run);
                    let mut expected = None;
                    dev.completions(run, |dev, p, c, buffer| {
                        on_read(
                            run,
                            pool,
                            registry,
                            options,
                            dev,
                            &mut expected,
                            p,
                            c,
                            buffer,
                        );
                    });
                })
            })
            .collect();
        let senders: Vec<_> = devs
            .iter()
            .map(|dev| {
                s.spawn(move || {
                    let _guard = PanicGuard(run);
                    read_stream(run, pool, dev, options, depth, limit, job.read_seed);
                })
            })
            .collect();
        for h in senders {
            run::join(run, h);
        }
        run::drain(run, &devs);
        if !run.stopped() {
            for d in &devs {
                verified &= check_end(run, d, limit);
            }
        }
        run::close_devices(run, &devs);
        for h in completion {
            run::join(run, h);
        }
    });
    run.close_set();
    let elapsed = started.elapsed();
    let (failure, warnings) = run.outcome();
    if let Some(e) = failure {
        return Err(e);
    }
    let first = lock(&registry).first.as_ref().map(|(h, _)| *h);
    let mut report = Report {
        operation: if job.stop_after.is_some() {
            Operation::RestoreFileListOnly
        } else {
            Operation::Restore
        },
        config: EffectiveConfig {
            set_name: options.set_name.clone(),
            device_names: names,
            client,
            block_size: options.block_size,
            max_transfer_size: options.max_transfer_size,
            buffer_count,
            features: client.features | Features::READ_MEDIA,
            complete_enabled: false,
            server_timeout: run.limits.server_timeout(),
        },
        database_bytes: first.map_or(0, |h| h.database_size),
        backup_id: first.map_or(0, |h| h.backup_id),
        device_bytes: Vec::with_capacity(devs.len()),
        commands: 0,
        flushes: 0,
        completes: 0,
        clear_errors: 0,
        elapsed,
        verified,
        warnings,
    };
    tally(&mut report, &devs, |x| x.bytes);
    debug!(?report, "restore done");
    Ok(report)
}

/// One device's sender: the header read, then reads of random sizes, several outstanding,
/// until the end of the data (or `limit`).
fn read_stream<S: ServerDeviceSet, D: ServerDevice>(
    run: &Run<'_, S>,
    pool: &Pool<D::Buffer>,
    dev: &Device<'_, D, RestoreDev>,
    options: &Options,
    depth: usize,
    limit: Option<u64>,
    seed: u64,
) {
    let block = options.block_size;
    let blocks = u64::from((options.max_transfer_size / block).max(1));
    let mut rng = Rng::new(seed ^ u64::from(dev.slot).wrapping_mul(0xA076_1D64_78BD_642F));
    let mut seq = 0u64;
    let mut offset = 0u64;
    loop {
        if limit.is_some_and(|l| offset >= l) {
            break;
        }
        let mut ended = false;
        // The header is read alone: the rest waits until it has been parsed.
        let ready = dev.wait_until(run, true, |st| {
            ended = st.extra.end.is_some();
            ended || (st.outstanding() < depth && (seq == 0 || st.extra.header_done))
        });
        if !ready || ended || !run.faults_before(dev, seq) {
            break;
        }
        let Some(buf) = pool.acquire(None, &|| run.stopped()) else {
            break;
        };
        let mut size = block.saturating_mul(1 + (rng.next() % blocks) as u32);
        if let Some(l) = limit {
            size = size.min(u32::try_from(l - offset).unwrap_or(u32::MAX));
        }
        let pending = Pending {
            code: CommandCode::READ,
            size,
            offset,
            seq,
            meta: false,
        };
        if let Err(e) = dev.send(run, ServerCommand::read(buf, size), pending) {
            if let Some(b) = e.into_buffer() {
                pool.release(b);
            }
            break;
        }
        seq += 1;
        offset += u64::from(size);
    }
    dev.lock().extra.requested = offset;
}

/// How a read was answered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Every byte asked for.
    Full,
    /// The end of the data, with the bytes before it.
    End,
    /// `ERROR_IO_DEVICE` with no data.
    IoDevice,
    /// Anything else (the run has failed).
    Bad,
}

/// A Read completed: classify, verify its bytes, track the end of the data.
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of one restore, passed down"
)]
fn on_read<S: ServerDeviceSet, D: ServerDevice>(
    run: &Run<'_, S>,
    pool: &Pool<D::Buffer>,
    registry: &Mutex<Registry>,
    options: &Options,
    dev: &Device<'_, D, RestoreDev>,
    expected: &mut Option<Expected>,
    p: Pending,
    c: Completion,
    buffer: Option<D::Buffer>,
) {
    let Some(buf) = buffer else {
        run.abort(EngineError::Internal("a Read came back without its buffer"));
        dev.lock().extra.header_done = true;
        return;
    };
    let bytes = c.bytes_transferred;
    let byte_count = || EngineError::ByteCount {
        device: dev.name.clone(),
        command: p.code,
        size: p.size,
        bytes,
        code: c.code,
    };
    let answer = if bytes > p.size {
        run.fail(byte_count());
        Answer::Bad
    } else {
        match c.code {
            CompletionCode::SUCCESS if bytes == p.size => Answer::Full,
            CompletionCode::SUCCESS => {
                run.fail(byte_count());
                Answer::Bad
            }
            CompletionCode::HANDLE_EOF | CompletionCode::NO_DATA_DETECTED => Answer::End,
            CompletionCode::IO_DEVICE if bytes == 0 => Answer::IoDevice,
            code => {
                let e = EngineError::CommandFailed {
                    device: dev.name.clone(),
                    command: p.code,
                    code,
                };
                if code == CompletionCode::OPERATION_ABORTED {
                    run.fail_weak(e);
                } else {
                    run.fail(e);
                }
                Answer::Bad
            }
        }
    };
    let with_data = matches!(answer, Answer::Full | Answer::End);
    if with_data && !run.stopped() {
        match buf.as_slice().get(..bytes as usize) {
            None => run.abort(EngineError::Internal("a read buffer shorter than the read")),
            Some(data) => {
                if p.seq == 0 {
                    match expect(run, registry, options, dev, data) {
                        Ok(e) => *expected = Some(e),
                        Err(e) => run.fail(e),
                    }
                }
                if let Some(e) = expected.as_ref()
                    && let Err(err) = verify(&dev.name, e, p.offset, data)
                {
                    run.fail(err);
                }
            }
        }
    }
    let mut st = dev.lock();
    let x = &mut st.extra;
    if p.seq == 0 {
        x.header_done = true;
        x.layout = expected.as_ref().map(|e| e.layout);
    }
    if with_data {
        x.bytes += u64::from(bytes);
    }
    let after_end = |offset| EngineError::DataAfterEnd {
        device: dev.name.clone(),
        offset,
    };
    match answer {
        Answer::Full => {
            if x.last_full.is_none_or(|(s, _)| s < p.seq) {
                x.last_full = Some((p.seq, p.offset));
            }
            if x.end.is_some_and(|e| e.seq < p.seq) {
                run.fail(after_end(p.offset));
            }
        }
        Answer::End => {
            let this = End {
                seq: p.seq,
                start: p.offset,
                at: p.offset + u64::from(bytes),
                had_bytes: bytes > 0,
            };
            if let Some((s, offset)) = x.last_full
                && s > p.seq
            {
                run.fail(after_end(offset));
            }
            match x.end {
                None => x.end = Some(this),
                Some(e) if p.seq < e.seq => {
                    if e.had_bytes {
                        run.fail(after_end(e.start));
                    }
                    x.end = Some(this);
                }
                Some(_) if bytes > 0 => run.fail(after_end(p.offset)),
                Some(_) => {}
            }
        }
        Answer::IoDevice => x.io_device.push(p.seq),
        Answer::Bad => {}
    }
    drop(st);
    pool.release(buf);
}

/// Parses and checks a stream's header (the first bytes of its first read), registers the
/// stream, and returns what the stream must hold.
fn expect<S: ServerDeviceSet, D: ServerDevice>(
    run: &Run<'_, S>,
    registry: &Mutex<Registry>,
    options: &Options,
    dev: &Device<'_, D, RestoreDev>,
    data: &[u8],
) -> Result<Expected, EngineError> {
    let device = || dev.name.clone();
    let header_error = |error| EngineError::Header {
        device: device(),
        error,
    };
    let mismatch = |field, expected: u64, found: u64| EngineError::HeaderMismatch {
        device: device(),
        field,
        expected,
        found,
    };
    let h = Header::parse_fields(data).map_err(header_error)?;
    // BLOCKSIZE must be the backup's (vdi-spec.md §9.7).
    if h.block_size != options.block_size {
        return Err(mismatch(
            "block size",
            options.block_size.into(),
            h.block_size.into(),
        ));
    }
    Header::parse(data).map_err(header_error)?;
    if h.device_count != run.client.device_count {
        return Err(mismatch(
            "device count",
            run.client.device_count.into(),
            h.device_count.into(),
        ));
    }
    let mut reg = lock(registry);
    match &reg.first {
        Some((first, _)) => {
            if h.backup_id != first.backup_id {
                return Err(mismatch("backup id", first.backup_id, h.backup_id));
            }
            if h.database_size != first.database_size {
                return Err(mismatch(
                    "database size",
                    first.database_size,
                    h.database_size,
                ));
            }
            if h.max_transfer_size != first.max_transfer_size {
                return Err(mismatch(
                    "max transfer size",
                    first.max_transfer_size.into(),
                    h.max_transfer_size.into(),
                ));
            }
        }
        None => {
            reg.first = Some((h, device()));
            if h.max_transfer_size != options.max_transfer_size {
                run.warn(Warning::MaxTransferSizeDiffers {
                    backup: h.max_transfer_size,
                    restore: options.max_transfer_size,
                });
            }
        }
    }
    match reg.owners.get_mut(h.device_index as usize) {
        Some(Some(other)) => {
            return Err(EngineError::DuplicateStream {
                device: device(),
                index: h.device_index,
                other: other.clone(),
            });
        }
        Some(slot) => *slot = Some(device()),
        None => {
            return Err(mismatch(
                "device index",
                u64::from(run.client.device_count).saturating_sub(1),
                h.device_index.into(),
            ));
        }
    }
    drop(reg);
    debug!(device = %dev.name, stream = h.device_index, "header read");
    let layout = h.layout();
    let mut trailer = vec![0; h.block_size as usize];
    layout.trailer().encode(&mut trailer);
    Ok(Expected {
        layout,
        db: Database::new(h.backup_id, h.database_size),
        header: h.to_block(),
        trailer,
    })
}

/// The index of the first byte where `got` and `want` differ.
fn first_diff(got: &[u8], want: &[u8]) -> Option<usize> {
    got.iter().zip(want).position(|(a, b)| a != b)
}

/// Checks `data`, read at stream offset `offset`, against the stream `e`.
fn verify(device: &str, e: &Expected, offset: u64, data: &[u8]) -> Result<(), EngineError> {
    let layout = &e.layout;
    let len = layout.stream_len();
    let block = u64::from(layout.header().block_size);
    let mts = u64::from(layout.header().max_transfer_size);
    let trailer_at = layout.trailer_offset();
    let mut pos = 0usize;
    while pos < data.len() {
        let abs = offset + pos as u64;
        let rest = &data[pos..];
        if abs >= len {
            return Err(EngineError::TooLong {
                device: device.to_owned(),
                expected: len,
            });
        }
        let take = |left: u64| usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
        let (n, bad) = if abs < block {
            let from = abs as usize;
            let n = take(block - abs);
            let want = e.header.get(from..from + n).unwrap_or(&[]);
            (n, first_diff(&rest[..n], want).map(|i| (i, want[i])))
        } else if abs < trailer_at {
            let x = abs - block;
            let n = take((mts - x % mts).min(trailer_at - abs));
            let db_offset = layout.database_offset(x);
            let bad = e.db.mismatch(db_offset, &rest[..n]);
            (n, bad.map(|i| (i, e.db.byte_at(db_offset + i as u64))))
        } else {
            let from = (abs - trailer_at) as usize;
            let n = take(len - abs);
            let want = e.trailer.get(from..from + n).unwrap_or(&[]);
            (n, first_diff(&rest[..n], want).map(|i| (i, want[i])))
        };
        if let Some((i, expected)) = bad {
            let at = abs + i as u64;
            let region = layout.region(at).unwrap_or(Region::Trailer);
            return Err(EngineError::Mismatch {
                device: device.to_owned(),
                offset: at,
                region,
                expected,
                found: rest[i],
                found_page: found_page(e, region, at, offset, data),
            });
        }
        if n == 0 {
            break;
        }
        pos += n;
    }
    Ok(())
}

/// The page the data at a mismatch claims to be, when its page header lies in this read and
/// names another page than expected.
fn found_page(
    e: &Expected,
    region: Region,
    at: u64,
    offset: u64,
    data: &[u8],
) -> Option<PageStamp> {
    let Region::Data { database_offset } = region else {
        return None;
    };
    let page_start = at.checked_sub(database_offset % PAGE_SIZE as u64)?;
    let from = usize::try_from(page_start.checked_sub(offset)?).ok()?;
    let stamp = PageStamp::read(data.get(from..)?)?;
    let want = PageStamp {
        page: database_offset / PAGE_SIZE as u64,
        seed: e.db.seed(),
    };
    (stamp != want).then_some(stamp)
}

/// After the last completion of a full restore: the end of the data must be the stream's end.
/// Returns whether every byte of the stream was verified.
fn check_end<S: ServerDeviceSet, D: ServerDevice>(
    run: &Run<'_, S>,
    dev: &Device<'_, D, RestoreDev>,
    limit: Option<u64>,
) -> bool {
    let st = dev.lock();
    let x = &st.extra;
    let Some(layout) = x.layout else {
        run.fail(EngineError::Internal("no header was read"));
        return false;
    };
    let len = layout.stream_len();
    let io_device = |seq: &u64| {
        debug!(device = %dev.name, seq, "a read before the end of the data answered ERROR_IO_DEVICE");
        EngineError::CommandFailed {
            device: dev.name.clone(),
            command: CommandCode::READ,
            code: CompletionCode::IO_DEVICE,
        }
    };
    match x.end {
        Some(e) => {
            if let Some(s) = x.io_device.iter().find(|&&s| s < e.seq) {
                run.fail(io_device(s));
                return false;
            }
            if e.at < limit.map_or(len, |l| l.min(len)) {
                run.fail(EngineError::Truncated {
                    device: dev.name.clone(),
                    expected: len,
                    got: e.at,
                });
                return false;
            }
            e.at >= len
        }
        None => {
            if let Some(s) = x.io_device.first() {
                run.fail(io_device(s));
                return false;
            }
            if limit.is_none() {
                run.fail(EngineError::Internal(
                    "the reads stopped before the end of the data",
                ));
                return false;
            }
            x.requested >= len
        }
    }
}
