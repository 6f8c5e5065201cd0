//! Where a stripe goes (a file or stdout) and where it comes from (a file or stdin), with what
//! durability means for each.

use std::{
    fs::File,
    io::{self, Read, Write},
};

/// A stripe's destination.
#[derive(Debug)]
pub(crate) enum Output {
    /// A stripe file.
    File(File),
    /// Standard output (one device, piped to another program).
    Stdout(io::Stdout),
}

impl Output {
    /// Makes everything written so far durable: `fdatasync` for a file; for stdout, everything
    /// is handed to the reader, which is as far as this process can see.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        match self {
            Self::File(f) => f.sync_data(),
            Self::Stdout(s) => s.flush(),
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::File(f) => f.write(buf),
            Self::Stdout(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Self::File(f) => f.write_vectored(bufs),
            Self::Stdout(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::File(f) => f.flush(),
            Self::Stdout(s) => s.flush(),
        }
    }
}

/// A stripe's source.
#[derive(Debug)]
pub(crate) enum Input {
    /// A stripe file.
    File(File),
    /// Standard input.
    Stdin(io::Stdin),
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::File(f) => f.read(buf),
            Self::Stdin(s) => s.read(buf),
        }
    }
}
