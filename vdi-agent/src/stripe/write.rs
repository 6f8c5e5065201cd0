//! Writing a stripe: [`StripeWriter`].

use std::fmt;
use std::io::{self, IoSlice, Write};

use xxhash_rust::xxh3::{Xxh3, xxh3_64};
use zstd::bulk::Compressor;

use super::{
    CHECKPOINT_BODY_LEN, CHECKPOINT_RECORD_LEN, CODEC_STORED, CODEC_ZSTD, Checkpoint, Codec,
    FLAG_ZSTD, HEADER_LEN, KIND_CHECKPOINT, KIND_DATA, MAX_RECORD_LEN, RECORD_HEADER_LEN,
    StripeHeader, record_header,
};

/// Writes all of `bufs` with `write_vectored` (one system call for header and payload where
/// the writer supports it), going on after partial writes.
fn write_all_vectored<W: Write>(w: &mut W, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "failed to write a whole stripe record",
                ));
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes a stripe: the file header, then one data record per [`write_chunk`] and one
/// checkpoint record per [`checkpoint`].
///
/// After an error the writer refuses further writes: the stripe's end is then unknown, and it
/// ends, for a reader, at its last checkpoint.
///
/// [`write_chunk`]: Self::write_chunk
/// [`checkpoint`]: Self::checkpoint
pub struct StripeWriter<W: Write> {
    inner: W,
    header: StripeHeader,
    codec: Codec,
    compressor: Option<Compressor<'static>>,
    /// The compressed record; reused, so it allocates only while records grow.
    pub(super) scratch: Vec<u8>,
    hasher: Box<Xxh3>,
    raw_bytes: u64,
    data_records: u64,
    stored_bytes: u64,
    checkpoints: u64,
    failed: bool,
}

impl<W: Write> fmt::Debug for StripeWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeWriter")
            .field("header", &self.header)
            .field("codec", &self.codec)
            .field("totals", &self.totals())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<W: Write> StripeWriter<W> {
    /// Writes the file header and returns the writer. The header's [`FLAG_ZSTD`] is set from
    /// `codec` ([`Codec::header_flags`]), whatever `header` says.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] for a header that does not
    /// [`validate`](StripeHeader::validate) or a zstd level outside zstd's range; the inner
    /// writer's error; zstd's if it cannot create its context.
    pub fn new(mut inner: W, mut header: StripeHeader, codec: Codec) -> io::Result<Self> {
        header.flags = (header.flags & !FLAG_ZSTD) | codec.header_flags();
        header
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let compressor = match codec {
            Codec::Stored => None,
            Codec::Zstd { level } => {
                let range = zstd::compression_level_range();
                if !range.contains(&level) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "zstd level {level} is outside {}..={}",
                            range.start(),
                            range.end()
                        ),
                    ));
                }
                Some(Compressor::new(level)?)
            }
        };
        inner.write_all(&header.encode())?;
        Ok(Self {
            inner,
            header,
            codec,
            compressor,
            scratch: Vec::new(),
            hasher: Box::new(Xxh3::new()),
            raw_bytes: 0,
            data_records: 0,
            stored_bytes: HEADER_LEN as u64,
            checkpoints: 0,
            failed: false,
        })
    }

    /// The file header written.
    pub fn header(&self) -> &StripeHeader {
        &self.header
    }

    /// The codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    fn check_failed(&self) -> io::Result<()> {
        if self.failed {
            Err(io::Error::other(
                "the stripe writer failed earlier: the stripe ends at its last checkpoint",
            ))
        } else {
            Ok(())
        }
    }

    /// Writes `data` as one data record (as several if it is longer than
    /// [`MAX_RECORD_LEN`]); empty data writes nothing.
    ///
    /// With zstd the record is compressed on its own, and stored raw unless that makes it
    /// smaller. Raw data is not copied: the record header and the data go to the writer with
    /// one `write_vectored` (repeated after partial writes).
    ///
    /// # Errors
    ///
    /// The inner writer's, or zstd's. The writer then refuses further writes.
    pub fn write_chunk(&mut self, data: &[u8]) -> io::Result<()> {
        self.check_failed()?;
        for piece in data.chunks(MAX_RECORD_LEN) {
            if let Err(e) = self.write_record(piece) {
                self.failed = true;
                return Err(e);
            }
        }
        Ok(())
    }

    fn write_record(&mut self, data: &[u8]) -> io::Result<()> {
        let (codec, payload): (u8, &[u8]) = match self.compressor.as_mut() {
            Some(compressor) => {
                self.scratch.clear();
                self.scratch.reserve(zstd::compress_bound(data.len()));
                compressor.compress_to_buffer(data, &mut self.scratch)?;
                if self.scratch.len() < data.len() {
                    (CODEC_ZSTD, self.scratch.as_slice())
                } else {
                    (CODEC_STORED, data)
                }
            }
            None => (CODEC_STORED, data),
        };
        let header = record_header(
            KIND_DATA,
            data.len(),
            payload.len(),
            codec,
            xxh3_64(payload),
        );
        write_all_vectored(
            &mut self.inner,
            &mut [IoSlice::new(&header), IoSlice::new(payload)],
        )?;
        self.stored_bytes += (RECORD_HEADER_LEN + payload.len()) as u64;
        self.raw_bytes += data.len() as u64;
        self.data_records += 1;
        // The stream hash chains the headers, which carry the payload's checksum: the data
        // itself is hashed once.
        self.hasher.update(&header);
        Ok(())
    }

    /// Writes a checkpoint record with the totals so far, then flushes the writer. Returns
    /// the totals, which are what a manifest records for this stripe once the file is durable:
    /// the caller syncs it (`get_ref().sync_data()` for a file) before acknowledging.
    ///
    /// # Errors
    ///
    /// The inner writer's. The writer then refuses further writes.
    pub fn checkpoint(&mut self) -> io::Result<Checkpoint> {
        self.check_failed()?;
        let cp = Checkpoint {
            stored_bytes: self.stored_bytes + CHECKPOINT_RECORD_LEN as u64,
            checkpoints: self.checkpoints + 1,
            ..self.totals()
        };
        let body = cp.encode_body();
        let header = record_header(
            KIND_CHECKPOINT,
            CHECKPOINT_BODY_LEN,
            CHECKPOINT_BODY_LEN,
            CODEC_STORED,
            xxh3_64(&body),
        );
        let result = write_all_vectored(
            &mut self.inner,
            &mut [IoSlice::new(&header), IoSlice::new(&body)],
        )
        .and_then(|()| {
            self.stored_bytes = cp.stored_bytes;
            self.checkpoints = cp.checkpoints;
            self.inner.flush()
        });
        match result {
            Ok(()) => Ok(cp),
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// The totals so far: raw bytes, data records, stored bytes (the file's length so far),
    /// checkpoints written, and the stream hash so far.
    pub fn totals(&self) -> Checkpoint {
        Checkpoint {
            raw_bytes: self.raw_bytes,
            data_records: self.data_records,
            stored_bytes: self.stored_bytes,
            checkpoints: self.checkpoints,
            stream_hash: self.hasher.digest(),
        }
    }

    /// The file's length so far, headers included (cheaper than [`totals`](Self::totals)).
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// Writes a final checkpoint, flushes, and returns the writer and the final totals.
    ///
    /// # Errors
    ///
    /// As [`checkpoint`](Self::checkpoint).
    pub fn finish(mut self) -> io::Result<(W, Checkpoint)> {
        let cp = self.checkpoint()?;
        Ok((self.inner, cp))
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The inner writer, mutably. Writing to it corrupts the stripe.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The inner writer, with no final checkpoint: what follows the last checkpoint is
    /// incomplete for a reader.
    pub fn into_inner(self) -> W {
        self.inner
    }
}
