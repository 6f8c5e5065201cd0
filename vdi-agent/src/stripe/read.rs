//! Reading and checking a stripe: [`StripeReader`], [`verify`] and [`verify_expected`].

use std::fmt;
use std::io::{self, Read};

use xxhash_rust::xxh3::{Xxh3, xxh3_64};
use zstd::bulk::Decompressor;

use super::header::format_version;
use super::{
    CHECKPOINT_BODY_LEN, CHECKPOINT_RECORD_LEN, CODEC_STORED, CODEC_ZSTD, Checkpoint, FLAG_ZSTD,
    FORMAT_VERSION_1, GROW_STEP, HEADER_LEN, KIND_CHECKPOINT, KIND_DATA, MAX_RECORD_LEN, Position,
    RECORD_HEADER_LEN, RecordError, StripeError, StripeHeader, TotalsField, array_at,
};

/// The inner reader and the bytes read from it.
struct Source<R> {
    inner: R,
    offset: u64,
}

impl<R: Read> Source<R> {
    /// Fills `buf` unless the input ends first; returns the bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, StripeError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    let n = n.min(buf.len() - filled);
                    filled += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    return Err(StripeError::Io {
                        offset: self.offset,
                        error,
                    });
                }
            }
        }
        Ok(filled)
    }

    /// Reads `len` bytes into `buf[..len]`, growing `buf` only as the bytes arrive (a header
    /// that claims much more than the input holds allocates little). Returns whether all
    /// `len` bytes were there.
    fn read_growing(&mut self, buf: &mut Vec<u8>, len: usize) -> Result<bool, StripeError> {
        let mut filled = 0;
        while filled < len {
            if filled == buf.len() {
                let target = len.min(buf.len().saturating_mul(2).max(GROW_STEP));
                buf.resize(target, 0);
            }
            let end = len.min(buf.len());
            let n = self.read_full(&mut buf[filled..end])?;
            filled += n;
            if filled < end {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// What loading the next record did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loaded {
    /// The record's raw data is in the reader's buffer.
    Buffered,
    /// This many bytes of the record's raw data went straight into the caller's buffer (the
    /// rest, if any, is in the reader's).
    Direct(usize),
    /// The stripe ended.
    End,
}

#[derive(Clone, Copy, Debug)]
enum ReaderState {
    Running,
    /// At a valid end, with the checkpoint that ends the stripe.
    End(Checkpoint),
    Failed {
        offset: u64,
    },
}

/// Reads a stripe, checking everything as it goes, with bounded memory: one buffer for a
/// record's raw data and one for a compressed payload, each at most [`MAX_RECORD_LEN`] and no
/// larger than the largest record read. A buffer grows as a payload's bytes arrive, not to the
/// length its header claims, and a decompression buffer is sized only once the compressed
/// payload's checksum has matched.
///
/// It yields the raw stream through [`Read`] (whose errors are [`io::Error`]s wrapping a
/// [`StripeError`]) or record by record through [`read_chunk`](Self::read_chunk). A `read`
/// that starts at a stored record's beginning reads as much of its payload as fits straight
/// into the caller's buffer (the rest into the reader's own, for the next reads) and checks
/// the whole record before it returns: what fits is never copied (on an error the caller's
/// buffer may hold the damaged bytes). A record's
/// data is yielded only once its checksums have matched; the stream as a whole is confirmed
/// only at checkpoints, so a consumer should treat what follows the last good checkpoint as
/// unconfirmed until the reader reaches its end. The end comes only where the stripe is
/// complete: `read` returns `Ok(0)`, `read_chunk` `Ok(None)`, [`finish`](Self::finish) the
/// totals.
///
/// An error ends the stream: every later call fails with [`StripeError::Failed`]. The reader
/// does not buffer its input; a record costs two reads of the inner reader (header, payload),
/// so wrapping it in a `BufReader` pays only for stripes of small records.
pub struct StripeReader<R> {
    src: Source<R>,
    header: StripeHeader,
    expected: Option<Checkpoint>,
    raw_bytes: u64,
    data_records: u64,
    checkpoints: u64,
    hasher: Box<Xxh3>,
    /// Format version 1: the stream hash is of the raw data, not of the record headers.
    hashes_raw_data: bool,
    last_checkpoint: Option<Checkpoint>,
    /// The current record's raw data in `buf[..chunk_len]`, yielded up to `pos`.
    pub(super) buf: Vec<u8>,
    chunk_len: usize,
    pos: usize,
    /// A compressed payload.
    pub(super) stored: Vec<u8>,
    decompressor: Option<Decompressor<'static>>,
    state: ReaderState,
}

impl<R> fmt::Debug for StripeReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeReader")
            .field("header", &self.header)
            .field("offset", &self.src.offset)
            .field("totals", &self.totals())
            .field("last_checkpoint", &self.last_checkpoint)
            .field("expected", &self.expected)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<R> StripeReader<R> {
    /// The file header.
    pub fn header(&self) -> &StripeHeader {
        &self.header
    }

    /// The expected totals, if given.
    pub fn expected(&self) -> Option<&Checkpoint> {
        self.expected.as_ref()
    }

    /// The totals of the records read so far (checksums matched; the stream is confirmed only
    /// up to [`last_checkpoint`](Self::last_checkpoint)). `stored_bytes` is the input read.
    pub fn totals(&self) -> Checkpoint {
        Checkpoint {
            raw_bytes: self.raw_bytes,
            data_records: self.data_records,
            stored_bytes: self.src.offset,
            checkpoints: self.checkpoints,
            stream_hash: self.hasher.digest(),
        }
    }

    /// The last checkpoint read and confirmed, if any.
    pub fn last_checkpoint(&self) -> Option<&Checkpoint> {
        self.last_checkpoint.as_ref()
    }

    /// The final totals, once the reader has reached the stripe's end.
    pub fn end(&self) -> Option<&Checkpoint> {
        match &self.state {
            ReaderState::End(cp) => Some(cp),
            _ => None,
        }
    }

    /// The inner reader.
    pub fn get_ref(&self) -> &R {
        &self.src.inner
    }

    /// The inner reader, mutably. Reading from it corrupts the stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.src.inner
    }

    /// The inner reader. After the end with expected totals, it is positioned right after
    /// their checkpoint.
    pub fn into_inner(self) -> R {
        self.src.inner
    }
}

impl<R: Read> StripeReader<R> {
    /// Reads and checks the file header. The stripe ends where the input ends, which must be
    /// right after a checkpoint.
    ///
    /// # Errors
    ///
    /// [`StripeError::TruncatedHeader`], [`StripeError::Io`], or any error of
    /// [`StripeHeader::decode`].
    pub fn new(inner: R) -> Result<Self, StripeError> {
        Self::open(inner, None)
    }

    /// Reads and checks the file header; the stripe ends at the checkpoint equal to
    /// `expected` (from the manifest: [`StripeEntry::expected`]), and the input after it is
    /// never read. [`Checkpoint::START`] ends it right after the header. Input that ends before it, a data record that would go past it, or a
    /// checkpoint that should be it but differs, is an error.
    ///
    /// [`StripeEntry::expected`]: crate::manifest::StripeEntry::expected
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn with_expected(inner: R, expected: Checkpoint) -> Result<Self, StripeError> {
        Self::open(inner, Some(expected))
    }

    fn open(inner: R, expected: Option<Checkpoint>) -> Result<Self, StripeError> {
        let mut src = Source { inner, offset: 0 };
        let mut bytes = [0u8; HEADER_LEN];
        let found = src.read_full(&mut bytes)?;
        if found < HEADER_LEN {
            return Err(StripeError::TruncatedHeader { found });
        }
        let header = StripeHeader::decode(&bytes)?;
        let hashes_raw_data = format_version(&bytes) == FORMAT_VERSION_1;
        let state = match expected {
            Some(Checkpoint::START) => ReaderState::End(Checkpoint::START),
            _ => ReaderState::Running,
        };
        Ok(Self {
            src,
            header,
            expected,
            raw_bytes: 0,
            data_records: 0,
            checkpoints: 0,
            hasher: Box::new(Xxh3::new()),
            hashes_raw_data,
            last_checkpoint: None,
            buf: Vec::new(),
            chunk_len: 0,
            pos: 0,
            stored: Vec::new(),
            decompressor: None,
            state,
        })
    }

    /// The next data record's raw data (or what `read` has left of the current one), checked;
    /// `None` at the stripe's end. Stored records are read straight into the reader's buffer
    /// and returned from it, with no other copy.
    ///
    /// # Errors
    ///
    /// Any [`StripeError`] but the header's.
    pub fn read_chunk(&mut self) -> Result<Option<&[u8]>, StripeError> {
        if self.pos == self.chunk_len && self.advance(None)? == Loaded::End {
            return Ok(None);
        }
        let start = self.pos;
        self.pos = self.chunk_len;
        Ok(Some(&self.buf[start..self.chunk_len]))
    }

    /// Reads and checks the rest of the stripe (data not yet yielded is discarded) and returns
    /// its final totals.
    ///
    /// # Errors
    ///
    /// Any [`StripeError`] but the header's.
    pub fn finish(mut self) -> Result<Checkpoint, StripeError> {
        loop {
            self.pos = self.chunk_len;
            if self.advance(None)? == Loaded::End {
                break;
            }
        }
        match self.state {
            ReaderState::End(cp) => Ok(cp),
            // advance() returns false only at the end.
            ReaderState::Running | ReaderState::Failed { .. } => Err(StripeError::Failed {
                offset: self.src.offset,
            }),
        }
    }

    /// Loads the next data record (a stored one as far as it fits into `direct`, if given), or
    /// reaches the end.
    fn advance(&mut self, direct: Option<&mut [u8]>) -> Result<Loaded, StripeError> {
        match self.state {
            ReaderState::Running => {}
            ReaderState::End(_) => return Ok(Loaded::End),
            ReaderState::Failed { offset } => return Err(StripeError::Failed { offset }),
        }
        self.chunk_len = 0;
        self.pos = 0;
        self.next_record(direct).inspect_err(|_| {
            self.state = ReaderState::Failed {
                offset: self.src.offset,
            };
        })
    }

    fn truncated(&self) -> StripeError {
        StripeError::Truncated {
            file_bytes: self.src.offset,
            raw_bytes: self.raw_bytes,
            data_records: self.data_records,
            last_checkpoint: self.last_checkpoint,
            expected: self.expected,
        }
    }

    fn next_record(&mut self, mut direct: Option<&mut [u8]>) -> Result<Loaded, StripeError> {
        loop {
            let offset = self.src.offset;
            let at = Position::Record {
                offset,
                record: self.data_records + self.checkpoints,
            };
            let mut h = [0u8; RECORD_HEADER_LEN];
            let n = self.src.read_full(&mut h)?;
            if n < RECORD_HEADER_LEN {
                if n == 0
                    && self.expected.is_none()
                    && let Some(cp) = self.last_checkpoint
                    && cp.stored_bytes == offset
                {
                    self.state = ReaderState::End(cp);
                    return Ok(Loaded::End);
                }
                return Err(self.truncated());
            }
            let recorded = u64::from_le_bytes(array_at(&h, 24));
            let computed = xxh3_64(&h[..24]);
            if recorded != computed {
                return Err(at.error(RecordError::HeaderChecksum { recorded, computed }));
            }
            let kind: [u8; 4] = array_at(&h, 0);
            let raw_len = u32::from_le_bytes(array_at(&h, 4));
            let stored_len = u32::from_le_bytes(array_at(&h, 8));
            let codec = h[12];
            let payload_hash = u64::from_le_bytes(array_at(&h, 16));
            let invalid = |reason: String| at.error(RecordError::InvalidHeader { reason });
            if h[13..16] != [0; 3] {
                return Err(invalid(format!(
                    "reserved bytes 13..16 are {:02x?}, expected zero",
                    &h[13..16]
                )));
            }
            match kind {
                KIND_DATA => {
                    let spec = DataSpec {
                        header: h,
                        at,
                        raw_len,
                        stored_len,
                        codec,
                        payload_hash,
                    };
                    return self.read_data(spec, direct.take());
                }
                KIND_CHECKPOINT => {
                    if codec != CODEC_STORED
                        || raw_len as usize != CHECKPOINT_BODY_LEN
                        || stored_len as usize != CHECKPOINT_BODY_LEN
                    {
                        return Err(invalid(format!(
                            "checkpoint record with codec {codec}, raw length {raw_len} and \
                             stored length {stored_len}, expected 0, {CHECKPOINT_BODY_LEN} and \
                             {CHECKPOINT_BODY_LEN}"
                        )));
                    }
                    if self.read_checkpoint(at, payload_hash)? {
                        return Ok(Loaded::End);
                    }
                }
                found => {
                    return Err(at.error(RecordError::UnknownKind { found }));
                }
            }
        }
    }

    /// Checks a data record's header, reads, checks and decodes its payload into `buf`, or,
    /// when it is stored raw, into `direct` as far as it fits and the rest into `buf`.
    fn read_data(&mut self, d: DataSpec, direct: Option<&mut [u8]>) -> Result<Loaded, StripeError> {
        let DataSpec {
            header,
            at,
            raw_len,
            stored_len,
            codec,
            payload_hash,
        } = d;
        let invalid = |reason: String| at.error(RecordError::InvalidHeader { reason });
        if raw_len as usize > MAX_RECORD_LEN || stored_len as usize > MAX_RECORD_LEN {
            return Err(at.error(RecordError::TooLarge {
                raw_len,
                stored_len,
            }));
        }
        if raw_len == 0 {
            return Err(invalid("empty data record (raw length 0)".into()));
        }
        match codec {
            CODEC_STORED if stored_len != raw_len => {
                return Err(invalid(format!(
                    "stored data record with raw length {raw_len} but stored length {stored_len}"
                )));
            }
            CODEC_ZSTD if self.header.flags & FLAG_ZSTD == 0 => {
                return Err(invalid(
                    "zstd data record in a stripe whose header says its records are stored raw"
                        .into(),
                ));
            }
            CODEC_ZSTD if stored_len == 0 || stored_len >= raw_len => {
                return Err(invalid(format!(
                    "zstd data record stores {stored_len} bytes for {raw_len} raw bytes: \
                     compressed records are always smaller and never empty"
                )));
            }
            CODEC_STORED | CODEC_ZSTD => {}
            found => {
                return Err(at.error(RecordError::UnknownCodec { found }));
            }
        }
        let (raw_len, stored_len) = (raw_len as usize, stored_len as usize);
        if let Some(e) = self.expected {
            let end = at.offset() + (RECORD_HEADER_LEN + stored_len + CHECKPOINT_RECORD_LEN) as u64;
            let beyond = [
                (
                    TotalsField::RawBytes,
                    e.raw_bytes,
                    self.raw_bytes + raw_len as u64,
                ),
                (
                    TotalsField::DataRecords,
                    e.data_records,
                    self.data_records + 1,
                ),
                (TotalsField::StoredBytes, e.stored_bytes, end),
            ]
            .into_iter()
            .find(|&(_, expected, found)| found > expected);
            if let Some((field, expected, found)) = beyond {
                return Err(at.error(RecordError::BeyondExpected {
                    field,
                    expected,
                    found,
                }));
            }
        }

        if codec == CODEC_ZSTD {
            if !self.src.read_growing(&mut self.stored, stored_len)? {
                return Err(self.truncated());
            }
            check_payload(at, payload_hash, xxh3_64(&self.stored[..stored_len]))?;
            self.decompress(at, raw_len, stored_len)?;
            self.hasher.update(if self.hashes_raw_data {
                &self.buf[..raw_len]
            } else {
                &header
            });
            self.raw_bytes += raw_len as u64;
            self.data_records += 1;
            self.chunk_len = raw_len;
            self.pos = 0;
            return Ok(Loaded::Buffered);
        }
        // Stored: as much as fits goes straight into the caller's buffer, the rest into ours;
        // the whole record is checked before any of it is returned.
        let out = direct.unwrap_or_default();
        let head = out.len().min(raw_len);
        let out = &mut out[..head];
        if self.src.read_full(out)? < head {
            return Err(self.truncated());
        }
        let tail = raw_len - head;
        if tail > 0 && !self.src.read_growing(&mut self.buf, tail)? {
            return Err(self.truncated());
        }
        let rest = &self.buf[..tail];
        let computed = match (head, tail) {
            (0, _) => xxh3_64(rest),
            (_, 0) => xxh3_64(out),
            _ => {
                let mut h = Xxh3::new();
                h.update(out);
                h.update(rest);
                h.digest()
            }
        };
        check_payload(at, payload_hash, computed)?;
        if self.hashes_raw_data {
            self.hasher.update(out);
            self.hasher.update(rest);
        } else {
            self.hasher.update(&header);
        }
        self.raw_bytes += raw_len as u64;
        self.data_records += 1;
        self.chunk_len = tail;
        self.pos = 0;
        Ok(if head > 0 {
            Loaded::Direct(head)
        } else {
            Loaded::Buffered
        })
    }

    /// Decompresses `stored[..stored_len]` into `buf[..raw_len]`, requiring exactly `raw_len`.
    fn decompress(
        &mut self,
        at: Position,
        raw_len: usize,
        stored_len: usize,
    ) -> Result<(), StripeError> {
        let payload = &self.stored[..stored_len];
        let length_error = |found: u64| {
            at.error(RecordError::DecompressedLength {
                expected: raw_len as u64,
                found,
            })
        };
        let decompress_error = |reason: String| at.error(RecordError::Decompress { reason });
        // Refuse a frame that declares another size before allocating for it.
        if let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(payload)
            && declared != raw_len as u64
        {
            return Err(length_error(declared));
        }
        if self.buf.len() < raw_len {
            self.buf.resize(raw_len, 0);
        }
        let mut decompressor = match self.decompressor.take() {
            Some(d) => d,
            None => Decompressor::new()
                .map_err(|e| decompress_error(format!("cannot create a zstd context: {e}")))?,
        };
        let result = decompressor.decompress_to_buffer(payload, &mut self.buf[..raw_len]);
        self.decompressor = Some(decompressor);
        let n = result.map_err(|e| decompress_error(e.to_string()))?;
        if n != raw_len {
            return Err(length_error(n as u64));
        }
        Ok(())
    }

    /// Reads and checks a checkpoint's body; returns whether the stripe ends here.
    fn read_checkpoint(&mut self, at: Position, payload_hash: u64) -> Result<bool, StripeError> {
        let mut body = [0u8; CHECKPOINT_BODY_LEN];
        if self.src.read_full(&mut body)? < CHECKPOINT_BODY_LEN {
            return Err(self.truncated());
        }
        check_payload(at, payload_hash, xxh3_64(&body))?;
        let recorded = Checkpoint::decode_body(&body);
        let counted = Checkpoint {
            checkpoints: self.checkpoints + 1,
            ..self.totals()
        };
        let checkpoint_at = Position::Checkpoint {
            offset: at.offset(),
            checkpoint: counted.checkpoints,
        };
        if let Some((field, recorded, computed)) = recorded.first_difference(&counted) {
            return Err(checkpoint_at.error(RecordError::CheckpointMismatch {
                field,
                recorded,
                computed,
            }));
        }
        self.checkpoints = counted.checkpoints;
        self.last_checkpoint = Some(counted);
        if let Some(e) = self.expected {
            if counted == e {
                self.state = ReaderState::End(counted);
                return Ok(true);
            }
            let past = counted.checkpoints >= e.checkpoints
                || counted.stored_bytes >= e.stored_bytes
                || counted.raw_bytes > e.raw_bytes
                || counted.data_records > e.data_records;
            if past && let Some((field, expected, found)) = e.first_difference(&counted) {
                return Err(checkpoint_at.error(RecordError::ManifestMismatch {
                    field,
                    expected,
                    found,
                }));
            }
        }
        Ok(false)
    }
}

/// A payload's checksum error unless `computed` is the `recorded` one.
fn check_payload(at: Position, recorded: u64, computed: u64) -> Result<(), StripeError> {
    if computed == recorded {
        Ok(())
    } else {
        Err(at.error(RecordError::PayloadChecksum { recorded, computed }))
    }
}

/// A data record's header fields.
#[derive(Clone, Copy)]
struct DataSpec {
    header: [u8; RECORD_HEADER_LEN],
    at: Position,
    raw_len: u32,
    stored_len: u32,
    codec: u8,
    payload_hash: u64,
}

impl<R: Read> Read for StripeReader<R> {
    /// Yields the raw stream; `Ok(0)` only at the stripe's valid end (or for an empty `out`).
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.chunk_len {
            match self.advance(Some(&mut *out))? {
                Loaded::End => return Ok(0),
                Loaded::Direct(n) => return Ok(n),
                Loaded::Buffered => {}
            }
        }
        let n = out.len().min(self.chunk_len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads a whole stripe, checking everything, and returns its final totals (the stripe must
/// end right after a checkpoint).
///
/// # Errors
///
/// Any [`StripeError`].
pub fn verify<R: Read>(inner: R) -> Result<Checkpoint, StripeError> {
    StripeReader::new(inner)?.finish()
}

/// Reads a stripe up to the checkpoint equal to `expected`, checking everything; returns
/// `expected`.
///
/// # Errors
///
/// Any [`StripeError`].
pub fn verify_expected<R: Read>(inner: R, expected: Checkpoint) -> Result<Checkpoint, StripeError> {
    StripeReader::with_expected(inner, expected)?.finish()
}
