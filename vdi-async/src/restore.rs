//! Restore from a byte source: each Read filled in full, the final short one answered with
//! `ERROR_HANDLE_EOF`.

use std::io;

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
    restore_loop(device.commands(), source)
        .instrument(span)
        .await
}

async fn restore_loop<D, R>(mut commands: CommandStream<D>, source: &mut R) -> io::Result<Summary>
where
    D: ClientDevice + 'static,
    R: AsyncRead + Unpin + Send + ?Sized,
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
            match source.read(&mut buf[filled..]).await {
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
