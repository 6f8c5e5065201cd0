//! Backup as bytes in stream order: a reader ([`BackupReader`]) and a driver into a sink
//! ([`backup_to`], [`BackupSink`]), both acknowledging Flush and Complete only once the data
//! before them is durable.

use std::{
    fmt, io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::{Instrument, debug};
use vdi_core::{ClientDevice, CommandCode, Completion, CompletionCode};

use crate::{AsyncCommand, AsyncDevice, CommandStream, command::Verdict};

/// The completion code that reports an I/O error of the user's storage to the engine:
/// `ERROR_DISK_FULL` for [`io::ErrorKind::StorageFull`] (and `QuotaExceeded`), else
/// `ERROR_IO_DEVICE`.
pub fn io_error_code(e: &io::Error) -> CompletionCode {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => CompletionCode::DISK_FULL,
        _ => CompletionCode::IO_DEVICE,
    }
}

/// Completes `c`, turning a failure of `CompleteCommand` into an I/O error.
fn finish<D: ClientDevice>(c: AsyncCommand<D>, completion: Completion) -> io::Result<()> {
    c.complete(completion).map_err(io::Error::from)
}

/// Answers a command that is neither data nor a barrier: ClearError with success, anything
/// else with `ERROR_NOT_SUPPORTED`.
fn answer_other<D: ClientDevice>(c: AsyncCommand<D>) -> io::Result<()> {
    if c.code() == CommandCode::CLEAR_ERROR {
        finish(c, Completion::success(0))
    } else {
        debug!(code = ?c.code(), device = %c.device_name(), "not supported");
        finish(c, Completion::not_supported())
    }
}

/// The Write commands of a device as one byte stream, in stream order: [`AsyncRead`] and
/// [`AsyncBufRead`].
///
/// [`poll_fill_buf`](AsyncBufRead::poll_fill_buf) hands out the current Write's data in place
/// (no copy); a Write is completed with success once all of its bytes were consumed. ClearError
/// is completed with success and commands other than Write, Flush and Complete with
/// `ERROR_NOT_SUPPORTED`, as they come.
///
/// # Barriers
///
/// Flush and Complete are durability barriers, which the reader does not acknowledge: at one,
/// it stops, and reads return 0 bytes (as at the end), until the caller takes the barrier
/// with [`take_barrier`](Self::take_barrier), makes everything it read so far durable, and
/// completes the command itself. Reading then goes on. After a read of 0 bytes,
/// `take_barrier` returns `None` only at the true end of the stream (`VD_E_CLOSE`):
///
/// ```no_run
/// # use tokio::io::AsyncWrite;
/// # async fn make_durable<W>(_: &mut W) -> std::io::Result<()> { Ok(()) }
/// # async fn run<W: AsyncWrite + Unpin>(device: vdi_async::AsyncDevice<vdi_shm::ClientDevice>, mut file: W) -> std::io::Result<()> {
/// use vdi_core::Completion;
/// let mut reader = vdi_async::BackupReader::new(&device);
/// loop {
///     tokio::io::copy_buf(&mut reader, &mut file).await?;
///     let Some(barrier) = reader.take_barrier() else { break };
///     make_durable(&mut file).await?; // e.g. File::sync_all
///     barrier.complete(Completion::success(0))?;
/// }
/// # Ok(()) }
/// ```
///
/// A barrier dropped without being completed is completed with `ERROR_OPERATION_ABORTED`,
/// which fails the backup: the engine is never told that data is durable when it is not.
///
/// The reader must be the device's only consumer for the bytes to be in stream order. The
/// engine may keep several Writes outstanding: they wait, in order, until the reader takes
/// them.
///
/// # Cancel safety
///
/// Reads are cancel safe: a read future dropped before it returned consumed nothing.
pub struct BackupReader<D: ClientDevice> {
    stream: CommandStream<D>,
    current: Option<AsyncCommand<D>>,
    pos: usize,
    barrier: Option<AsyncCommand<D>>,
    ended: bool,
    error: Option<io::Error>,
    bytes: u64,
}

impl<D: ClientDevice> BackupReader<D> {
    /// A reader of `device`'s Write commands.
    pub fn new(device: &AsyncDevice<D>) -> Self {
        Self::from_stream(device.commands())
    }

    /// A reader of the commands of `stream`, which must be the device's only consumer.
    pub fn from_stream(stream: CommandStream<D>) -> Self {
        Self {
            stream,
            current: None,
            pos: 0,
            barrier: None,
            ended: false,
            error: None,
            bytes: 0,
        }
    }

    /// The Flush or Complete at which the reader stopped, if it did; reading resumes after it.
    ///
    /// Complete it (with success) only once the data read before it is durable.
    pub fn take_barrier(&mut self) -> Option<AsyncCommand<D>> {
        self.barrier.take()
    }

    /// Whether the reader stopped at a barrier that was not yet taken.
    pub fn at_barrier(&self) -> bool {
        self.barrier.is_some()
    }

    /// Whether the stream ended: the engine closed the device, or it was aborted.
    pub fn is_ended(&self) -> bool {
        self.ended && self.current.is_none() && self.barrier.is_none()
    }

    /// The bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    /// Takes a command from the stream.
    fn accept(&mut self, c: AsyncCommand<D>) -> io::Result<()> {
        match c.code() {
            CommandCode::WRITE if !c.data().is_empty() => {
                self.current = Some(c);
                self.pos = 0;
                Ok(())
            }
            CommandCode::WRITE => finish(c, Completion::success(0)),
            CommandCode::FLUSH | CommandCode::COMPLETE => {
                self.barrier = Some(c);
                Ok(())
            }
            _ => answer_other(c),
        }
    }
}

impl<D: ClientDevice> AsyncBufRead for BackupReader<D> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        loop {
            if let Some(e) = this.error.take() {
                return Poll::Ready(Err(e));
            }
            if this.current.is_some() {
                break;
            }
            if this.barrier.is_some() || this.ended {
                return Poll::Ready(Ok(&[]));
            }
            match ready!(Pin::new(&mut this.stream).poll_next(cx)) {
                None => this.ended = true,
                Some(Err(e)) => {
                    this.ended = true;
                    return Poll::Ready(Err(e.into()));
                }
                Some(Ok(c)) => this.accept(c)?,
            }
        }
        let data = this.current.as_ref().map_or(&[][..], |c| c.data());
        Poll::Ready(Ok(&data[this.pos..]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        let Some(c) = &this.current else { return };
        let len = c.data().len();
        this.pos = (this.pos + amt).min(len);
        if this.pos == len
            && let Some(c) = this.current.take()
        {
            this.bytes += len as u64;
            let size = c.size();
            if let Err(e) = finish(c, Completion::success(size)) {
                this.error = Some(e);
            }
        }
    }
}

impl<D: ClientDevice> AsyncRead for BackupReader<D> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let data = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = data.len().min(buf.remaining());
        buf.put_slice(&data[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl<D: ClientDevice> fmt::Debug for BackupReader<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupReader")
            .field("device", &self.stream.device_name())
            .field("bytes", &self.bytes)
            .field("at_barrier", &self.barrier.is_some())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// Where [`backup_to`] puts a backup: the stream's data in order, and the durability barriers.
///
/// Object safe (through `async-trait`), so drivers take `&mut dyn BackupSink`.
#[async_trait]
pub trait BackupSink: Send {
    /// Takes the next bytes of the stream. They share the engine's buffer (no copy): the Write
    /// is completed with success when the last clone of `data` is dropped (and not before this
    /// call returned: the driver holds a clone until then, so that an error can still fail the
    /// Write). So a sink may keep the bytes while its own write is in flight, and holding them
    /// pushes back on the engine.
    /// A sink must release them without waiting for more data (the device's bound caps how
    /// many Writes can be outstanding).
    ///
    /// An error fails this Write (and every later data command) with [`io_error_code`].
    ///
    /// # Cancel safety
    ///
    /// [`backup_to`] drops this future only when it is dropped itself; the Write then completes
    /// (with success) once the bytes are dropped, and the barrier after it is never
    /// acknowledged.
    async fn write(&mut self, data: Bytes) -> io::Result<()>;

    /// Makes everything written so far durable (for a Flush); the Flush is acknowledged only
    /// after this returns `Ok`.
    ///
    /// # Cancel safety
    ///
    /// [`backup_to`] drops this future only when it is dropped itself; the Flush is then
    /// completed with `ERROR_OPERATION_ABORTED`, never with success.
    async fn sync(&mut self) -> io::Result<()>;

    /// Finishes and hardens the backup (for a Complete, sent when the engine has sent all the
    /// data); the Complete is acknowledged only after this returns `Ok`. By default, `sync`.
    ///
    /// # Cancel safety
    ///
    /// As [`sync`](Self::sync).
    async fn complete(&mut self) -> io::Result<()> {
        self.sync().await
    }
}

/// A [`BackupSink`] over any [`AsyncWrite`]: `write` is `write_all`, `sync` and `complete` are
/// `flush`.
///
/// The data is as durable as the writer's `flush` makes it: a pipe or a socket after `flush`
/// has handed everything to the peer; a `tokio::fs::File` needs `sync_all` as well, which a
/// sink of your own calls in `sync`.
#[derive(Debug)]
pub struct WriterSink<W> {
    writer: W,
}

impl<W> WriterSink<W> {
    /// A sink writing to `writer`.
    pub fn new(writer: W) -> Self {
        Self { writer }
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.writer
    }
}

#[async_trait]
impl<W: AsyncWrite + Unpin + Send> BackupSink for WriterSink<W> {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.writer.write_all(&data).await
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.writer.flush().await
    }
}

/// What a backup or restore driver moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Stream bytes moved.
    pub bytes: u64,
    /// Data commands (Write or Read) served.
    pub transfers: u64,
    /// Flush commands acknowledged.
    pub flushes: u64,
    /// Complete commands acknowledged (backup), or `1` if the source reached its end (restore).
    pub completes: u64,
}

/// Serves a backup from `device` into `sink` until the engine closes the device; returns what
/// was moved.
///
/// Writes go to [`BackupSink::write`] in stream order, zero-copy; a Flush is acknowledged only
/// after [`BackupSink::sync`] and a Complete only after [`BackupSink::complete`] returned `Ok`.
/// When the sink fails, the command at hand is completed with [`io_error_code`] of the error,
/// and so is every later Write, Flush and Complete (the engine ends the backup), and the first
/// error is returned once the engine closed the device. ClearError is answered with success,
/// other commands with `ERROR_NOT_SUPPORTED`.
///
/// This must be the device's only consumer. The work runs in the device's span.
///
/// # Errors
///
/// The sink's first error; an abort of the set (an [`io::Error`] wrapping the
/// [`vdi_core::Error`], kind `ConnectionAborted`).
///
/// # Cancel safety
///
/// Not resumable. Dropping the future completes the command in hand with
/// `ERROR_OPERATION_ABORTED` (a Write whose bytes the sink still holds completes when the sink
/// drops them), which fails the backup: the engine sees an aborted I/O, never a false success.
pub async fn backup_to<D>(
    device: &AsyncDevice<D>,
    sink: &mut (dyn BackupSink + '_),
) -> io::Result<Summary>
where
    D: ClientDevice + 'static,
{
    let span = device.span().clone();
    backup_loop(device.commands(), sink).instrument(span).await
}

async fn backup_loop<D: ClientDevice + 'static>(
    mut commands: CommandStream<D>,
    sink: &mut (dyn BackupSink + '_),
) -> io::Result<Summary> {
    let mut summary = Summary::default();
    let mut failure: Option<(io::Error, CompletionCode)> = None;
    while let Some(c) = commands.next().await {
        let c = c?;
        let code = c.code();
        match code {
            CommandCode::WRITE | CommandCode::FLUSH | CommandCode::COMPLETE => {}
            _ => {
                answer_other(c)?;
                continue;
            }
        }
        if let Some((_, failed)) = &failure {
            finish(c, Completion::with_code(*failed))?;
            continue;
        }
        let result = if code == CommandCode::WRITE {
            let size = u64::from(c.size());
            let verdict = Arc::new(Verdict::default());
            let bytes = match c.into_bytes_with_verdict(Some(Arc::clone(&verdict))) {
                Ok(b) => b,
                Err(c) => {
                    answer_other(c)?;
                    continue;
                }
            };
            // Held until the sink answered, so that a failure can still set the verdict.
            let keep = bytes.clone();
            let r = sink.write(bytes).await;
            if let Err(e) = &r {
                verdict.fail(io_error_code(e));
            }
            drop(keep);
            summary.bytes += size;
            summary.transfers += 1;
            r
        } else {
            let r = if code == CommandCode::FLUSH {
                sink.sync().await
            } else {
                sink.complete().await
            };
            match &r {
                Ok(()) => {
                    if code == CommandCode::FLUSH {
                        summary.flushes += 1;
                    } else {
                        summary.completes += 1;
                    }
                    finish(c, Completion::success(0))?;
                }
                Err(e) => finish(c, Completion::with_code(io_error_code(e)))?,
            }
            r
        };
        if let Err(e) = result {
            debug!(error = %e, "the backup sink failed; failing the device's commands");
            let code = io_error_code(&e);
            failure = Some((e, code));
        }
    }
    match failure {
        Some((e, _)) => Err(e),
        None => Ok(summary),
    }
}
