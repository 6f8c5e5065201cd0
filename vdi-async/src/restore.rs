//! Restore from a byte source, async or blocking: each Read filled in full, the final short one
//! answered with `ERROR_HANDLE_EOF`.

use std::{future::Future, io};

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::{Instrument, debug};
use vdi_core::{ClientDevice, CommandCode, Completion, CompletionCode};

use crate::{AsyncDevice, CommandStream, Summary, backup::io_error_code};

/// Serves a restore to `device` from `source` until the engine closes the device; returns what
/// was moved.
///
/// Each Read is filled in full from `source`, in stream order, directly into the engine's
/// buffer (reading as often as it takes: the engine's read sizes need not match anything the
/// source does). The read that meets the end of `source` is answered with the bytes it got and
/// `ERROR_HANDLE_EOF`, and so is every later Read (with 0 bytes). The engine may close the
/// device at any point, also before the end of `source` (RESTORE FILELISTONLY or HEADERONLY
/// read only the start): that is the normal end, not an error. ClearError and Flush are
/// answered with success, other commands with `ERROR_NOT_SUPPORTED`. A source error fails the
/// Read at hand and every later one with [`io_error_code`] of the error, and is returned once
/// the engine closed the device.
///
/// This must be the device's only consumer. The work runs in the device's span.
///
/// # Errors
///
/// The source's first error; an abort of the set (an [`io::Error`] wrapping the
/// [`vdi_core::Error`], kind `ConnectionAborted`).
///
/// # Cancel safety
///
/// Not resumable: dropping the future completes the Read in hand with
/// `ERROR_OPERATION_ABORTED`, which fails the restore (the engine sees an aborted I/O), and
/// loses the source's position.
pub async fn restore_from<D, R>(device: &AsyncDevice<D>, source: &mut R) -> io::Result<Summary>
where
    D: ClientDevice + 'static,
    R: AsyncRead + Unpin + Send + ?Sized,
{
    let span = device.span().clone();
    restore_loop(device.commands(), &mut AsyncSource(source))
        .instrument(span)
        .await
}

/// Serves a restore to `device` from a blocking `source`, on the calling thread, which it
/// blocks until the engine closes the device; returns what was moved. The rules are
/// [`restore_from`]'s; each Read is filled by `source.read` calls straight into the engine's
/// buffer, on this thread, so a source that can read into the buffer it is given (a file, a
/// verifying reader) moves each byte once.
///
/// For a source that blocks: call it on a thread of its own (`std::thread::spawn`, or
/// `tokio::task::spawn_blocking`), never on an async runtime's worker. It needs no runtime:
/// the device's commands are waited for as [`restore_from`] waits for them, with the
/// device's own waiter thread doing the waiting.
///
/// # Errors
///
/// As [`restore_from`].
pub fn restore_from_reader<D, R>(device: &AsyncDevice<D>, source: &mut R) -> io::Result<Summary>
where
    D: ClientDevice + 'static,
    R: io::Read + ?Sized,
{
    let _span = device.span().clone().entered();
    futures::executor::block_on(restore_loop(device.commands(), &mut BlockingSource(source)))
}

/// Where a restore's bytes come from.
trait Source {
    /// Reads into `buf` as `read` does.
    fn read_into<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + 'a;
}

/// An [`AsyncRead`] source.
struct AsyncSource<'r, R: ?Sized>(&'r mut R);

impl<R: AsyncRead + Unpin + ?Sized> Source for AsyncSource<'_, R> {
    fn read_into<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + 'a {
        self.0.read(buf)
    }
}

/// A blocking source, read on the thread that drives the loop.
struct BlockingSource<'r, R: ?Sized>(&'r mut R);

impl<R: io::Read + ?Sized> Source for BlockingSource<'_, R> {
    fn read_into<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + 'a {
        std::future::ready(self.0.read(buf))
    }
}

async fn restore_loop<D, S>(mut commands: CommandStream<D>, source: &mut S) -> io::Result<Summary>
where
    D: ClientDevice + 'static,
    S: Source,
{
    let mut summary = Summary::default();
    let mut failure: Option<(io::Error, CompletionCode)> = None;
    let mut at_end = false;
    while let Some(c) = commands.next().await {
        let mut c = c?;
        match c.code() {
            CommandCode::READ => {}
            CommandCode::CLEAR_ERROR | CommandCode::FLUSH => {
                c.complete(Completion::success(0))?;
                continue;
            }
            code => {
                debug!(code = ?code, "not supported");
                c.complete(Completion::not_supported())?;
                continue;
            }
        }
        if let Some((_, code)) = &failure {
            c.complete(Completion::with_code(*code))?;
            continue;
        }
        if at_end {
            c.complete(Completion::eof(0))?;
            continue;
        }
        let buf = c.data_mut();
        let want = buf.len();
        let mut filled = 0;
        let result = loop {
            if filled == want {
                break Ok(());
            }
            match source.read_into(&mut buf[filled..]).await {
                Ok(0) => {
                    at_end = true;
                    break Ok(());
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok(()) => {
                summary.bytes += filled as u64;
                summary.transfers += 1;
                let n = filled as u32;
                if at_end {
                    summary.completes = 1;
                    debug!(bytes = summary.bytes, "end of the source: ERROR_HANDLE_EOF");
                    c.complete(Completion::eof(n))?;
                } else {
                    c.complete(Completion::success(n))?;
                }
            }
            Err(e) => {
                debug!(error = %e, "the restore source failed; failing the device's reads");
                let code = io_error_code(&e);
                c.complete(Completion::with_code(code))?;
                failure = Some((e, code));
            }
        }
    }
    match failure {
        Some((e, _)) => Err(e),
        None => Ok(summary),
    }
}
