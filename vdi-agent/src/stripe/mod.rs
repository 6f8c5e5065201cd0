//! Stripe files: the stream of one VDI device, as the agent stores it.
//!
//! A stripe is self-describing and streamable: it is written front to back and read front to
//! back, never seeked, so it works on a pipe as well as on a file. It is a file header followed
//! by records. Every record carries its own checksums, and checkpoint records, written at each
//! durability point (the agent writes one at each VDI Flush and Complete, and at the end),
//! carry the totals of the stream so far, which the reader checks against its own.
//!
//! The stream hash chains the records: in format version 2 it is the XXH3-64 of the data
//! records' 32-byte headers, in order, each of which carries its payload's checksum, so the
//! data is hashed once (by its record's checksum) and still every byte, the records' order and
//! their count are covered at each checkpoint. (The raw data of a zstd record is what zstd
//! decodes from its checked payload, to exactly the raw length the header gives.) Version 1,
//! which this module still reads but no longer writes, hashed the raw data instead: a second
//! pass over every byte.
//!
//! All integers are little-endian. Checksums are XXH3-64 (seed 0).
//!
//! # File header ([`HEADER_LEN`] = 64 bytes)
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8  | magic `VDISTRIP` ([`MAGIC`]) |
//! | 8  | 2  | format version: 2 ([`FORMAT_VERSION`]), or 1 (read, not written) |
//! | 10 | 2  | header length, 64 |
//! | 12 | 4  | flags: bit 0 ([`FLAG_ZSTD`]) set when the stripe was written with the zstd codec; no other bit is defined |
//! | 16 | 16 | backup id (random per backup, the same in every stripe of a backup) |
//! | 32 | 4  | stripe index (below the stripe count) |
//! | 36 | 4  | stripe count (1..=64) |
//! | 40 | 4  | block size (a power of two in 512..=65536) |
//! | 44 | 4  | maximum transfer size (a multiple of 64 KiB in 64 KiB..=4 MiB) |
//! | 48 | 8  | creation time, unix seconds |
//! | 56 | 8  | XXH3-64 of bytes 0..56 |
//!
//! # Records ([`RECORD_HEADER_LEN`] = 32-byte header, then the payload)
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 4 | kind: `DATA` or `CKPT` |
//! | 4  | 4 | raw length (data: 1..=[`MAX_RECORD_LEN`]; checkpoint: 40) |
//! | 8  | 4 | stored length: the payload's length in the file |
//! | 12 | 1 | codec: 0 = stored raw (stored length = raw length), 1 = zstd (stored < raw; only in a stripe whose header has [`FLAG_ZSTD`]) |
//! | 13 | 3 | reserved, 0 |
//! | 16 | 8 | XXH3-64 of the stored payload |
//! | 24 | 8 | XXH3-64 of bytes 0..24 of this header |
//!
//! A data record's payload is its data, raw or as one independent zstd frame. A checkpoint's
//! payload ([`CHECKPOINT_BODY_LEN`] = 40 bytes, stored raw) is five `u64`: the raw bytes of data
//! so far, the data records so far, the stored bytes (the file's length once this record is
//! written), the checkpoint's number (1 for the first), and the stream hash so far (XXH3-64 of
//! the data record headers so far; in version 1, of the raw data so far).
//!
//! # Where a stripe ends
//!
//! Without expectations, a stripe is complete only if the input ends exactly after a checkpoint:
//! an end anywhere else is [`StripeError::Truncated`]. With the totals a manifest recorded
//! ([`StripeReader::with_expected`]), the stripe ends at the checkpoint equal to them, and
//! whatever follows it is not read: it was never acknowledged to the engine.
//!
//! # Where the code is
//!
//! The file header and the codec are in `header`, the writer in `write`, the reader in `read`,
//! and [`StripeError`] in `error`: an error of one record names it once ([`Position`]) and says
//! what is wrong with it ([`RecordError`]). The totals ([`Checkpoint`]) and the record header
//! both sides share are here.
//!
//! # Examples
//!
//! ```
//! use std::io::Read;
//! use vdi_agent::stripe::{Codec, FLAG_ZSTD, StripeHeader, StripeReader, StripeWriter};
//!
//! let header = StripeHeader {
//!     backup_id: 0x1234,
//!     index: 0,
//!     count: 1,
//!     block_size: 65536,
//!     max_transfer_size: 4 << 20,
//!     created: 1_700_000_000,
//!     flags: 0,
//! };
//! let mut writer = StripeWriter::new(Vec::new(), header, Codec::Zstd { level: 3 })?;
//! writer.write_chunk(&[7; 100_000])?;
//! let (file, totals) = writer.finish()?;
//!
//! let mut reader = StripeReader::with_expected(&file[..], totals)?;
//! // The writer records its codec in the header.
//! assert_eq!(reader.header(), &StripeHeader { flags: FLAG_ZSTD, ..header });
//! let mut data = Vec::new();
//! reader.read_to_end(&mut data)?;
//! assert_eq!(data, vec![7; 100_000]);
//! assert_eq!(reader.finish()?, totals);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod header;
mod read;
mod write;

use std::fmt;

use xxhash_rust::xxh3::xxh3_64;

pub use error::{Position, RecordError, StripeError};
pub use header::{Codec, StripeHeader};
pub use read::{StripeReader, verify, verify_expected};
pub use write::StripeWriter;

/// The magic at the start of every stripe file.
pub const MAGIC: [u8; 8] = *b"VDISTRIP";
/// The format version this module writes (it reads this one and [`FORMAT_VERSION_1`]).
pub const FORMAT_VERSION: u16 = 2;
/// The first format version, still read: its stream hash is of the raw data.
pub const FORMAT_VERSION_1: u16 = 1;
/// The length of the file header.
pub const HEADER_LEN: usize = 64;
/// The length of a record header.
pub const RECORD_HEADER_LEN: usize = 32;
/// The length of a checkpoint record's payload.
pub const CHECKPOINT_BODY_LEN: usize = 40;
/// The length of a whole checkpoint record, header and payload.
pub const CHECKPOINT_RECORD_LEN: usize = RECORD_HEADER_LEN + CHECKPOINT_BODY_LEN;
/// The largest raw or stored length of one data record (64 MiB).
///
/// [`StripeWriter::write_chunk`] splits larger chunks; the agent writes one record per VDI
/// Write, at most 4 MiB.
pub const MAX_RECORD_LEN: usize = 64 * 1024 * 1024;
/// The most stripes a backup may have (VDI's device limit).
pub const MAX_STRIPES: u32 = vdi_core::MAX_DEVICES;
/// XXH3-64 of no bytes: the stream hash of a stripe with no data (in every version).
pub const EMPTY_STREAM_HASH: u64 = 0x2d06_8005_38d3_94c2;

const _: () = assert!(MAX_RECORD_LEN < u32::MAX as usize);

/// The file-header flag of a stripe written with [`Codec::Zstd`]: its data records may be zstd
/// frames. Without it every data record is stored raw, and a zstd record is damage.
pub const FLAG_ZSTD: u32 = 1;
/// Every flag format version 1 defines.
const KNOWN_FLAGS: u32 = FLAG_ZSTD;

const KIND_DATA: [u8; 4] = *b"DATA";
const KIND_CHECKPOINT: [u8; 4] = *b"CKPT";
const CODEC_STORED: u8 = 0;
const CODEC_ZSTD: u8 = 1;
/// How much a record buffer grows at least per step while its payload arrives: the buffer
/// grows with the bytes actually read, never to a length a header merely claims.
const GROW_STEP: usize = 256 * 1024;

/// The totals of a stripe at a point in its stream: what a checkpoint records, what the
/// writer and reader count, and what a manifest expects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Checkpoint {
    /// Bytes of raw (uncompressed) data.
    pub raw_bytes: u64,
    /// Data records.
    pub data_records: u64,
    /// Bytes of the stripe file, headers included: the file's length at this point.
    pub stored_bytes: u64,
    /// Checkpoint records, this one included (at a checkpoint, its 1-based number).
    pub checkpoints: u64,
    /// The stream hash: XXH3-64 of the data records' headers (format version 1: of the raw
    /// data), in stream order.
    pub stream_hash: u64,
}

impl Checkpoint {
    /// The totals of a stripe right after its file header, before any record: what a manifest
    /// records for a stripe with no checkpoint yet. A reader expecting them ends the stripe
    /// right after the header.
    pub const START: Self = Self {
        raw_bytes: 0,
        data_records: 0,
        stored_bytes: HEADER_LEN as u64,
        checkpoints: 0,
        stream_hash: EMPTY_STREAM_HASH,
    };

    fn encode_body(&self) -> [u8; CHECKPOINT_BODY_LEN] {
        let mut b = [0u8; CHECKPOINT_BODY_LEN];
        b[0..8].copy_from_slice(&self.raw_bytes.to_le_bytes());
        b[8..16].copy_from_slice(&self.data_records.to_le_bytes());
        b[16..24].copy_from_slice(&self.stored_bytes.to_le_bytes());
        b[24..32].copy_from_slice(&self.checkpoints.to_le_bytes());
        b[32..40].copy_from_slice(&self.stream_hash.to_le_bytes());
        b
    }

    fn decode_body(b: &[u8; CHECKPOINT_BODY_LEN]) -> Self {
        Self {
            raw_bytes: u64::from_le_bytes(array_at(b, 0)),
            data_records: u64::from_le_bytes(array_at(b, 8)),
            stored_bytes: u64::from_le_bytes(array_at(b, 16)),
            checkpoints: u64::from_le_bytes(array_at(b, 24)),
            stream_hash: u64::from_le_bytes(array_at(b, 32)),
        }
    }

    /// The first field (in the order raw bytes, data records, stream hash, stored bytes,
    /// checkpoints) where `self` and `other` differ, with `self`'s and `other`'s values.
    pub fn first_difference(&self, other: &Self) -> Option<(TotalsField, u64, u64)> {
        [
            (TotalsField::RawBytes, self.raw_bytes, other.raw_bytes),
            (
                TotalsField::DataRecords,
                self.data_records,
                other.data_records,
            ),
            (TotalsField::StreamHash, self.stream_hash, other.stream_hash),
            (
                TotalsField::StoredBytes,
                self.stored_bytes,
                other.stored_bytes,
            ),
            (
                TotalsField::Checkpoints,
                self.checkpoints,
                other.checkpoints,
            ),
        ]
        .into_iter()
        .find(|&(_, a, b)| a != b)
    }
}

/// A field of [`Checkpoint`], as errors name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TotalsField {
    /// [`Checkpoint::raw_bytes`].
    RawBytes,
    /// [`Checkpoint::data_records`].
    DataRecords,
    /// [`Checkpoint::stored_bytes`].
    StoredBytes,
    /// [`Checkpoint::checkpoints`].
    Checkpoints,
    /// [`Checkpoint::stream_hash`].
    StreamHash,
}

impl fmt::Display for TotalsField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::RawBytes => "raw bytes",
            Self::DataRecords => "data records",
            Self::StoredBytes => "stored bytes",
            Self::Checkpoints => "checkpoint count",
            Self::StreamHash => "stream hash",
        })
    }
}

/// `N` bytes of `b` from `at`. Only called with constant offsets inside fixed-size arrays.
fn array_at<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

/// A record header: `kind`, the lengths, the codec and the payload's checksum, then the
/// header's own checksum (the table in the module docs).
fn record_header(
    kind: [u8; 4],
    raw_len: usize,
    stored_len: usize,
    codec: u8,
    payload_hash: u64,
) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&kind);
    // Both at most MAX_RECORD_LEN, below u32::MAX (asserted above).
    h[4..8].copy_from_slice(&(raw_len as u32).to_le_bytes());
    h[8..12].copy_from_slice(&(stored_len as u32).to_le_bytes());
    h[12] = codec;
    // 13..16 reserved, zero.
    h[16..24].copy_from_slice(&payload_hash.to_le_bytes());
    let sum = xxh3_64(&h[..24]);
    h[24..32].copy_from_slice(&sum.to_le_bytes());
    h
}

#[cfg(test)]
mod tests;
