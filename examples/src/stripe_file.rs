//! One device served from or to a file of its own: the command loop that thread-per-device and
//! process-per-device share (the way Microsoft's mthread.cpp and mprocess.cpp serve a stripe).

use std::{
    fs::File,
    io::{self, Read, Write},
    path::Path,
};

use vdi_core::{
    ClientCommand, ClientDevice, CommandCode, Completion, CompletionCode, Error, Timeout,
};

use crate::BoxError;

/// How long one GetCommand waits before it is simply called again.
const WAIT: Timeout = Timeout::from_millis(1000);

/// One device's command loop on its own file: Writes appended (`backup`), or Reads filled.
pub fn serve_stripe(
    device: &vdi_shm::ClientDevice,
    path: &Path,
    backup: bool,
) -> Result<u64, BoxError> {
    let mut file = if backup {
        File::create(path)?
    } else {
        File::open(path)?
    };
    let (mut bytes, mut at_end) = (0u64, false);
    loop {
        let mut cmd = match device.command(WAIT) {
            Ok(cmd) => cmd,
            Err(Error::Closed) => return Ok(bytes),
            Err(Error::Timeout) => continue,
            Err(e) => return Err(format!("GetCommand: {e}").into()),
        };
        let size = cmd.size();
        let result = match cmd.code() {
            CommandCode::WRITE => file
                .write_all(cmd.data())
                .map(|()| Completion::success(size)),
            CommandCode::READ if at_end => Ok(Completion::eof(0)),
            CommandCode::READ => read_full(&mut file, cmd.data_mut()).map(|n| {
                at_end = n < size as usize;
                if at_end {
                    Completion::eof(n as u32)
                } else {
                    Completion::success(n as u32)
                }
            }),
            CommandCode::FLUSH | CommandCode::COMPLETE => {
                file.sync_all().map(|()| Completion::success(0))
            }
            CommandCode::CLEAR_ERROR => Ok(Completion::success(0)),
            _ => Ok(Completion::not_supported()),
        };
        match result {
            Ok(completion) => {
                bytes += u64::from(completion.bytes_transferred);
                device
                    .complete(cmd, completion)
                    .map_err(|e| format!("CompleteCommand: {e}"))?;
            }
            Err(e) => {
                let failed = Completion::with_code(CompletionCode::IO_DEVICE);
                device
                    .complete(cmd, failed)
                    .map_err(|e| format!("CompleteCommand: {e}"))?;
                return Err(format!("{}: {e}", path.display()).into());
            }
        }
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
pub fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
