//! Where a stripe goes and what durability means there ([`StripeOutput`]): a file, stdout, or
//! whatever a store writes a stripe into (`store`).

use std::{
    fs::File,
    io::{self, Write},
};

/// A stripe's destination: bytes in order, and a point at which everything written so far is
/// durable (the agent makes one at each Flush and Complete, after a checkpoint record).
pub(crate) trait StripeOutput: Write + Send {
    /// Makes everything written so far durable, or says why it cannot.
    fn sync(&mut self) -> io::Result<()>;
}

/// A stripe file: `fdatasync`.
impl StripeOutput for File {
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

/// Standard output (one device, piped to another program): everything is handed to the
/// reader, which is as far as this process can see.
impl StripeOutput for io::Stdout {
    fn sync(&mut self) -> io::Result<()> {
        self.flush()
    }
}
