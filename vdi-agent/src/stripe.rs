//! Stripe files: the stream of one VDI device, as the agent stores it.
//!
//! A stripe is self-describing and streamable: it is written front to back and read front to
//! back, never seeked, so it works on a pipe as well as on a file. It is a file header followed
//! by records. Every record carries its own checksums, and checkpoint records, written at each
//! durability point (the agent writes one at each VDI Flush and Complete, and at the end),
//! carry the totals of the stream so far, which the reader checks against its own.
//!
//! All integers are little-endian. Checksums are XXH3-64 (seed 0).
//!
//! # File header ([`HEADER_LEN`] = 64 bytes)
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8  | magic `VDISTRIP` ([`MAGIC`]) |
//! | 8  | 2  | format version, 1 ([`FORMAT_VERSION`]) |
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
//! written), the checkpoint's number (1 for the first), and the XXH3-64 of the whole raw stream
//! so far.
//!
//! # Where a stripe ends
//!
//! Without expectations, a stripe is complete only if the input ends exactly after a checkpoint:
//! an end anywhere else is [`StripeError::Truncated`]. With the totals a manifest recorded
//! ([`StripeReader::with_expected`]), the stripe ends at the checkpoint equal to them, and
//! whatever follows it is not read: it was never acknowledged to the engine.
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

use std::fmt;
use std::io::{self, IoSlice, Read, Write};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};
use zstd::bulk::{Compressor, Decompressor};

/// The magic at the start of every stripe file.
pub const MAGIC: [u8; 8] = *b"VDISTRIP";
/// The format version this module writes and reads.
pub const FORMAT_VERSION: u16 = 1;
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
/// XXH3-64 of no bytes: the stream hash of a stripe with no data.
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

/// The identity and configuration of one stripe: the file header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StripeHeader {
    /// The backup's id: random per backup, the same in every stripe of one backup.
    pub backup_id: u128,
    /// This stripe's index (the VDI device's), below `count`.
    pub index: u32,
    /// The number of stripes in the backup (the VDI device count), 1..=64.
    pub count: u32,
    /// The VDI block size: a power of two in 512..=65536.
    pub block_size: u32,
    /// The VDI maximum transfer size: a multiple of 64 KiB in 64 KiB..=4 MiB.
    pub max_transfer_size: u32,
    /// When the backup started, in seconds since the unix epoch.
    pub created: u64,
    /// Format flags: [`FLAG_ZSTD`] for a stripe written with the zstd codec, else 0
    /// ([`Codec::header_flags`]). [`StripeWriter::new`] sets them from its codec.
    pub flags: u32,
}

impl StripeHeader {
    /// Checks the header's values: index below count, count in 1..=64, block size and maximum
    /// transfer size as VDI allows them, no flag but [`FLAG_ZSTD`].
    ///
    /// # Errors
    ///
    /// [`StripeError::InvalidHeader`] naming the first bad field.
    pub fn validate(&self) -> Result<(), StripeError> {
        let invalid = |field, value: u64, allowed: String| {
            Err(StripeError::InvalidHeader {
                field,
                value,
                allowed,
            })
        };
        if self.count == 0 || self.count > MAX_STRIPES {
            return invalid(
                "stripe count",
                self.count.into(),
                format!("1..={MAX_STRIPES}"),
            );
        }
        if self.index >= self.count {
            return invalid(
                "stripe index",
                self.index.into(),
                format!("0..{} (below the stripe count)", self.count),
            );
        }
        if vdi_core::validate_block_size(self.block_size).is_err() {
            return invalid(
                "block size",
                self.block_size.into(),
                "a power of two in 512..=65536".into(),
            );
        }
        if vdi_core::validate_max_transfer_size(self.max_transfer_size).is_err() {
            return invalid(
                "max transfer size",
                self.max_transfer_size.into(),
                "a multiple of 65536 in 65536..=4194304".into(),
            );
        }
        if self.flags & !KNOWN_FLAGS != 0 {
            return invalid(
                "flags",
                self.flags.into(),
                "0 or 1 (format version 1 defines only bit 0, the zstd codec)".into(),
            );
        }
        Ok(())
    }

    /// The header's 64 bytes, checksum included. Does not validate: see
    /// [`validate`](Self::validate).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..32].copy_from_slice(&self.backup_id.to_le_bytes());
        b[32..36].copy_from_slice(&self.index.to_le_bytes());
        b[36..40].copy_from_slice(&self.count.to_le_bytes());
        b[40..44].copy_from_slice(&self.block_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.max_transfer_size.to_le_bytes());
        b[48..56].copy_from_slice(&self.created.to_le_bytes());
        let sum = xxh3_64(&b[..56]);
        b[56..64].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Parses and checks a file header: magic, version, header length, checksum, then
    /// [`validate`](Self::validate).
    ///
    /// # Errors
    ///
    /// [`StripeError::BadMagic`], [`StripeError::UnsupportedVersion`],
    /// [`StripeError::HeaderChecksum`] or [`StripeError::InvalidHeader`].
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, StripeError> {
        let magic: [u8; 8] = array_at(b, 0);
        if magic != MAGIC {
            return Err(StripeError::BadMagic { found: magic });
        }
        let version = u16::from_le_bytes(array_at(b, 8));
        if version != FORMAT_VERSION {
            return Err(StripeError::UnsupportedVersion { found: version });
        }
        let header_len = u16::from_le_bytes(array_at(b, 10));
        if usize::from(header_len) != HEADER_LEN {
            return Err(StripeError::InvalidHeader {
                field: "header length",
                value: header_len.into(),
                allowed: format!("{HEADER_LEN} (format version 1)"),
            });
        }
        let recorded = u64::from_le_bytes(array_at(b, 56));
        let computed = xxh3_64(&b[..56]);
        if recorded != computed {
            return Err(StripeError::HeaderChecksum { recorded, computed });
        }
        let header = Self {
            flags: u32::from_le_bytes(array_at(b, 12)),
            backup_id: u128::from_le_bytes(array_at(b, 16)),
            index: u32::from_le_bytes(array_at(b, 32)),
            count: u32::from_le_bytes(array_at(b, 36)),
            block_size: u32::from_le_bytes(array_at(b, 40)),
            max_transfer_size: u32::from_le_bytes(array_at(b, 44)),
            created: u64::from_le_bytes(array_at(b, 48)),
        };
        header.validate()?;
        Ok(header)
    }
}

/// How data records are stored.
///
/// In the manifest it is `{"name": "stored"}` or `{"name": "zstd", "level": 3}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum Codec {
    /// Raw, as written.
    Stored,
    /// Each record compressed independently with zstd at this level (any level zstd accepts;
    /// 0 is zstd's default). A record that does not shrink is stored raw.
    Zstd {
        /// The zstd compression level.
        level: i32,
    },
}

impl Codec {
    /// The file-header flags of a stripe written with this codec: [`FLAG_ZSTD`] for zstd.
    pub fn header_flags(self) -> u32 {
        match self {
            Self::Stored => 0,
            Self::Zstd { .. } => FLAG_ZSTD,
        }
    }

    /// The codec's name as the manifest spells it: `stored` or `zstd`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Zstd { .. } => "zstd",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stored => f.write_str("stored"),
            Self::Zstd { level } => write!(f, "zstd level {level}"),
        }
    }
}

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
    /// XXH3-64 of the raw data stream.
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

/// A value of a [`TotalsField`], displayed in hex for the hash.
struct FieldValue(TotalsField, u64);

impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            TotalsField::StreamHash => write!(f, "{:#018x}", self.1),
            _ => write!(f, "{}", self.1),
        }
    }
}

/// Why a stripe cannot be read. Offsets are file offsets (from the start of the file header),
/// record numbers count every record from 0, data and checkpoint alike.
#[derive(Debug)]
#[non_exhaustive]
pub enum StripeError {
    /// The input ended inside the file header.
    TruncatedHeader {
        /// The bytes there were (of [`HEADER_LEN`]).
        found: usize,
    },
    /// The input does not start with [`MAGIC`].
    BadMagic {
        /// The first 8 bytes.
        found: [u8; 8],
    },
    /// The header's format version is not [`FORMAT_VERSION`].
    UnsupportedVersion {
        /// The version in the file.
        found: u16,
    },
    /// The file header's checksum does not match its bytes.
    HeaderChecksum {
        /// The checksum the header records.
        recorded: u64,
        /// The checksum of the header's bytes.
        computed: u64,
    },
    /// A file header field is out of range.
    InvalidHeader {
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What it may be.
        allowed: String,
    },
    /// A record header's checksum does not match its bytes.
    RecordHeaderChecksum {
        /// The record header's offset.
        offset: u64,
        /// The record's number.
        record: u64,
        /// The checksum the header records.
        recorded: u64,
        /// The checksum of the header's bytes.
        computed: u64,
    },
    /// A record's kind is neither `DATA` nor `CKPT`.
    UnknownRecordKind {
        /// The record header's offset.
        offset: u64,
        /// The record's number.
        record: u64,
        /// The kind bytes.
        found: [u8; 4],
    },
    /// A data record's codec is neither 0 (stored) nor 1 (zstd).
    UnknownCodec {
        /// The record header's offset.
        offset: u64,
        /// The record's number.
        record: u64,
        /// The codec byte.
        found: u8,
    },
    /// A data record claims more than [`MAX_RECORD_LEN`] bytes (nothing is allocated for it).
    RecordTooLarge {
        /// The record header's offset.
        offset: u64,
        /// The record's number.
        record: u64,
        /// The raw length it claims.
        raw_len: u32,
        /// The stored length it claims.
        stored_len: u32,
    },
    /// A record header's fields contradict each other or the format.
    InvalidRecordHeader {
        /// The record header's offset.
        offset: u64,
        /// The record's number.
        record: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record's stored payload does not match its checksum.
    PayloadChecksum {
        /// The record header's offset.
        offset: u64,
        /// The record's number.
        record: u64,
        /// The checksum the record header records.
        recorded: u64,
        /// The checksum of the payload's bytes.
        computed: u64,
    },
    /// A zstd payload (whose checksum matched) does not decompress.
    Decompress {
        /// The record header's offset.
        offset: u64,
        /// The record's number.
        record: u64,
        /// zstd's message.
        reason: String,
    },
    /// A zstd payload decompresses (or declares that it does) to other than the raw length.
    DecompressedLength {
        /// The record header's offset.
        offset: u64,
        /// The record's number.
        record: u64,
        /// The record's raw length.
        expected: u64,
        /// The length zstd gave or declared.
        found: u64,
    },
    /// A checkpoint's totals differ from what the reader counted.
    CheckpointMismatch {
        /// The checkpoint record's offset.
        offset: u64,
        /// The checkpoint's number (from 1) as the reader counts them.
        checkpoint: u64,
        /// The first field that differs.
        field: TotalsField,
        /// The value the checkpoint records.
        recorded: u64,
        /// The value the reader counted.
        computed: u64,
    },
    /// A checkpoint that should equal the expected totals (it is their checkpoint, or the stream
    /// went past them) does not.
    ManifestMismatch {
        /// The checkpoint record's offset.
        offset: u64,
        /// The checkpoint's number (from 1).
        checkpoint: u64,
        /// The first field that differs.
        field: TotalsField,
        /// The expected value.
        expected: u64,
        /// The checkpoint's value.
        found: u64,
    },
    /// A data record would take the stream past the expected totals before their checkpoint.
    BeyondExpected {
        /// The record header's offset.
        offset: u64,
        /// The record's number.
        record: u64,
        /// The total it would exceed.
        field: TotalsField,
        /// The expected value.
        expected: u64,
        /// The least value the total would reach with this record.
        found: u64,
    },
    /// The input ended before the stripe did: anywhere but right after a checkpoint, or, with
    /// expected totals, before their checkpoint.
    Truncated {
        /// Where the input ended (the bytes read).
        file_bytes: u64,
        /// The verified raw bytes before the incomplete record.
        raw_bytes: u64,
        /// The verified data records before the incomplete record.
        data_records: u64,
        /// The last checkpoint read, if any.
        last_checkpoint: Option<Checkpoint>,
        /// The expected totals, if the reader had them.
        expected: Option<Checkpoint>,
    },
    /// The inner reader failed.
    Io {
        /// The offset it failed at.
        offset: u64,
        /// Its error.
        source: io::Error,
    },
    /// The reader was used after it returned an error.
    Failed {
        /// The offset it had reached when it failed.
        offset: u64,
    },
}

impl StripeError {
    /// Whether the error says the input ended early ([`Self::Truncated`] or
    /// [`Self::TruncatedHeader`]), rather than that it is corrupt or unreadable.
    pub fn is_truncation(&self) -> bool {
        matches!(self, Self::Truncated { .. } | Self::TruncatedHeader { .. })
    }
}

impl fmt::Display for StripeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TruncatedHeader { found: 0 } => f.write_str("empty input: no stripe header"),
            Self::TruncatedHeader { found } => {
                write!(f, "stripe header truncated: {found} of {HEADER_LEN} bytes")
            }
            Self::BadMagic { found } => write!(
                f,
                "not a stripe file: magic is \"{}\", expected \"VDISTRIP\"",
                found.escape_ascii()
            ),
            Self::UnsupportedVersion { found } => write!(
                f,
                "unsupported stripe format version {found} (this build reads version {FORMAT_VERSION})"
            ),
            Self::HeaderChecksum { recorded, computed } => write!(
                f,
                "stripe header checksum mismatch: the header records {recorded:#018x}, \
                 its bytes 0..56 hash to {computed:#018x}"
            ),
            Self::InvalidHeader {
                field,
                value,
                allowed,
            } => write!(
                f,
                "invalid stripe header: {field} is {value}, allowed {allowed}"
            ),
            Self::RecordHeaderChecksum {
                offset,
                record,
                recorded,
                computed,
            } => write!(
                f,
                "record {record} at offset {offset}: header checksum mismatch: the header \
                 records {recorded:#018x}, its bytes hash to {computed:#018x}"
            ),
            Self::UnknownRecordKind {
                offset,
                record,
                found,
            } => write!(
                f,
                "record {record} at offset {offset}: unknown record kind \"{}\", expected \
                 \"DATA\" or \"CKPT\"",
                found.escape_ascii()
            ),
            Self::UnknownCodec {
                offset,
                record,
                found,
            } => write!(
                f,
                "record {record} at offset {offset}: unknown codec {found}, expected 0 (stored) \
                 or 1 (zstd)"
            ),
            Self::RecordTooLarge {
                offset,
                record,
                raw_len,
                stored_len,
            } => write!(
                f,
                "record {record} at offset {offset}: claims {raw_len} raw bytes and {stored_len} \
                 stored bytes, more than the limit of {MAX_RECORD_LEN}"
            ),
            Self::InvalidRecordHeader {
                offset,
                record,
                reason,
            } => write!(f, "record {record} at offset {offset}: {reason}"),
            Self::PayloadChecksum {
                offset,
                record,
                recorded,
                computed,
            } => write!(
                f,
                "record {record} at offset {offset}: payload checksum mismatch: the header \
                 records {recorded:#018x}, the payload hashes to {computed:#018x}"
            ),
            Self::Decompress {
                offset,
                record,
                reason,
            } => write!(
                f,
                "record {record} at offset {offset}: zstd payload does not decompress: {reason}"
            ),
            Self::DecompressedLength {
                offset,
                record,
                expected,
                found,
            } => write!(
                f,
                "record {record} at offset {offset}: zstd payload decompresses to {found} bytes, \
                 expected the raw length {expected}"
            ),
            Self::CheckpointMismatch {
                offset,
                checkpoint,
                field,
                recorded,
                computed,
            } => write!(
                f,
                "checkpoint {checkpoint} at offset {offset}: records {field} {}, but the stream \
                 read so far has {}",
                FieldValue(*field, *recorded),
                FieldValue(*field, *computed)
            ),
            Self::ManifestMismatch {
                offset,
                checkpoint,
                field,
                expected,
                found,
            } => write!(
                f,
                "checkpoint {checkpoint} at offset {offset} does not match the expected totals: \
                 {field} expected {}, found {}",
                FieldValue(*field, *expected),
                FieldValue(*field, *found)
            ),
            Self::BeyondExpected {
                offset,
                record,
                field,
                expected,
                found,
            } => write!(
                f,
                "record {record} at offset {offset} goes past the expected totals: {field} \
                 would reach {found}, expected {expected} at the last checkpoint"
            ),
            Self::Truncated {
                file_bytes,
                raw_bytes,
                data_records,
                last_checkpoint,
                expected,
            } => {
                write!(
                    f,
                    "stripe truncated after {raw_bytes} bytes of data in {data_records} data \
                     records (the input ends at offset {file_bytes}), "
                )?;
                match last_checkpoint {
                    Some(c) => write!(
                        f,
                        "last checkpoint ({}) ends at offset {} after {} bytes of data",
                        c.checkpoints, c.stored_bytes, c.raw_bytes
                    )?,
                    None => f.write_str("no checkpoint")?,
                }
                if let Some(e) = expected {
                    write!(
                        f,
                        "; expected checkpoint {} ending at offset {} after {} bytes of data",
                        e.checkpoints, e.stored_bytes, e.raw_bytes
                    )?;
                }
                Ok(())
            }
            Self::Io { offset, source } => {
                write!(f, "cannot read the stripe at offset {offset}: {source}")
            }
            Self::Failed { offset } => write!(
                f,
                "the stripe reader already failed at offset {offset} and cannot go on"
            ),
        }
    }
}

/// The inner I/O error is part of the message (`Display`), so `source` does not repeat it.
impl std::error::Error for StripeError {}

impl From<StripeError> for io::Error {
    /// [`io::ErrorKind::UnexpectedEof`] for truncation, the inner error's kind for
    /// [`StripeError::Io`], [`io::ErrorKind::Other`] for [`StripeError::Failed`], and
    /// [`io::ErrorKind::InvalidData`] for everything else; the [`StripeError`] is the inner
    /// error, for `downcast`.
    fn from(e: StripeError) -> Self {
        let kind = match &e {
            StripeError::Truncated { .. } | StripeError::TruncatedHeader { .. } => {
                io::ErrorKind::UnexpectedEof
            }
            StripeError::Io { source, .. } => source.kind(),
            StripeError::Failed { .. } => io::ErrorKind::Other,
            _ => io::ErrorKind::InvalidData,
        };
        Self::new(kind, e)
    }
}

/// `N` bytes of `b` from `at`. Only called with constant offsets inside fixed-size arrays.
fn array_at<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

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
    scratch: Vec<u8>,
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
        self.hasher.update(data);
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
                Err(source) => {
                    return Err(StripeError::Io {
                        offset: self.offset,
                        source,
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
/// [`StripeError`]) or record by record through [`read_chunk`](Self::read_chunk). A record's
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
    last_checkpoint: Option<Checkpoint>,
    /// The current record's raw data in `buf[..chunk_len]`, yielded up to `pos`.
    buf: Vec<u8>,
    chunk_len: usize,
    pos: usize,
    /// A compressed payload.
    stored: Vec<u8>,
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
        if self.pos == self.chunk_len && !self.advance()? {
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
            if !self.advance()? {
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

    /// Loads the next data record (`true`), or reaches the end (`false`).
    fn advance(&mut self) -> Result<bool, StripeError> {
        match self.state {
            ReaderState::Running => {}
            ReaderState::End(_) => return Ok(false),
            ReaderState::Failed { offset } => return Err(StripeError::Failed { offset }),
        }
        self.chunk_len = 0;
        self.pos = 0;
        self.next_record().inspect_err(|_| {
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

    fn next_record(&mut self) -> Result<bool, StripeError> {
        loop {
            let offset = self.src.offset;
            let record = self.data_records + self.checkpoints;
            let mut h = [0u8; RECORD_HEADER_LEN];
            let n = self.src.read_full(&mut h)?;
            if n < RECORD_HEADER_LEN {
                if n == 0
                    && self.expected.is_none()
                    && let Some(cp) = self.last_checkpoint
                    && cp.stored_bytes == offset
                {
                    self.state = ReaderState::End(cp);
                    return Ok(false);
                }
                return Err(self.truncated());
            }
            let recorded = u64::from_le_bytes(array_at(&h, 24));
            let computed = xxh3_64(&h[..24]);
            if recorded != computed {
                return Err(StripeError::RecordHeaderChecksum {
                    offset,
                    record,
                    recorded,
                    computed,
                });
            }
            let kind: [u8; 4] = array_at(&h, 0);
            let raw_len = u32::from_le_bytes(array_at(&h, 4));
            let stored_len = u32::from_le_bytes(array_at(&h, 8));
            let codec = h[12];
            let payload_hash = u64::from_le_bytes(array_at(&h, 16));
            let invalid = |reason: String| StripeError::InvalidRecordHeader {
                offset,
                record,
                reason,
            };
            if h[13..16] != [0; 3] {
                return Err(invalid(format!(
                    "reserved bytes 13..16 are {:02x?}, expected zero",
                    &h[13..16]
                )));
            }
            match kind {
                KIND_DATA => {
                    let spec = DataSpec {
                        offset,
                        record,
                        raw_len,
                        stored_len,
                        codec,
                        payload_hash,
                    };
                    self.read_data(spec)?;
                    return Ok(true);
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
                    if self.read_checkpoint(offset, record, payload_hash)? {
                        return Ok(false);
                    }
                }
                found => {
                    return Err(StripeError::UnknownRecordKind {
                        offset,
                        record,
                        found,
                    });
                }
            }
        }
    }

    /// Checks a data record's header, reads, checks and decodes its payload into `buf`.
    fn read_data(&mut self, d: DataSpec) -> Result<(), StripeError> {
        let DataSpec {
            offset,
            record,
            raw_len,
            stored_len,
            codec,
            payload_hash,
        } = d;
        let invalid = |reason: String| StripeError::InvalidRecordHeader {
            offset,
            record,
            reason,
        };
        if raw_len as usize > MAX_RECORD_LEN || stored_len as usize > MAX_RECORD_LEN {
            return Err(StripeError::RecordTooLarge {
                offset,
                record,
                raw_len,
                stored_len,
            });
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
                return Err(StripeError::UnknownCodec {
                    offset,
                    record,
                    found,
                });
            }
        }
        let (raw_len, stored_len) = (raw_len as usize, stored_len as usize);
        if let Some(e) = self.expected {
            let end = offset + (RECORD_HEADER_LEN + stored_len + CHECKPOINT_RECORD_LEN) as u64;
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
                return Err(StripeError::BeyondExpected {
                    offset,
                    record,
                    field,
                    expected,
                    found,
                });
            }
        }

        let target = if codec == CODEC_STORED {
            &mut self.buf
        } else {
            &mut self.stored
        };
        if !self.src.read_growing(target, stored_len)? {
            return Err(self.truncated());
        }
        let payload = &target[..stored_len];
        let computed = xxh3_64(payload);
        if computed != payload_hash {
            return Err(StripeError::PayloadChecksum {
                offset,
                record,
                recorded: payload_hash,
                computed,
            });
        }
        if codec == CODEC_ZSTD {
            self.decompress(offset, record, raw_len, stored_len)?;
        }
        self.hasher.update(&self.buf[..raw_len]);
        self.raw_bytes += raw_len as u64;
        self.data_records += 1;
        self.chunk_len = raw_len;
        self.pos = 0;
        Ok(())
    }

    /// Decompresses `stored[..stored_len]` into `buf[..raw_len]`, requiring exactly `raw_len`.
    fn decompress(
        &mut self,
        offset: u64,
        record: u64,
        raw_len: usize,
        stored_len: usize,
    ) -> Result<(), StripeError> {
        let payload = &self.stored[..stored_len];
        let length_error = |found: u64| StripeError::DecompressedLength {
            offset,
            record,
            expected: raw_len as u64,
            found,
        };
        let decompress_error = |reason: String| StripeError::Decompress {
            offset,
            record,
            reason,
        };
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
    fn read_checkpoint(
        &mut self,
        offset: u64,
        record: u64,
        payload_hash: u64,
    ) -> Result<bool, StripeError> {
        let mut body = [0u8; CHECKPOINT_BODY_LEN];
        if self.src.read_full(&mut body)? < CHECKPOINT_BODY_LEN {
            return Err(self.truncated());
        }
        let computed = xxh3_64(&body);
        if computed != payload_hash {
            return Err(StripeError::PayloadChecksum {
                offset,
                record,
                recorded: payload_hash,
                computed,
            });
        }
        let recorded = Checkpoint::decode_body(&body);
        let counted = Checkpoint {
            checkpoints: self.checkpoints + 1,
            ..self.totals()
        };
        if let Some((field, recorded, computed)) = recorded.first_difference(&counted) {
            return Err(StripeError::CheckpointMismatch {
                offset,
                checkpoint: counted.checkpoints,
                field,
                recorded,
                computed,
            });
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
                return Err(StripeError::ManifestMismatch {
                    offset,
                    checkpoint: counted.checkpoints,
                    field,
                    expected,
                    found,
                });
            }
        }
        Ok(false)
    }
}

/// A data record's header fields.
#[derive(Clone, Copy)]
struct DataSpec {
    offset: u64,
    record: u64,
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
        if self.pos == self.chunk_len && !self.advance()? {
            return Ok(0);
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

#[cfg(test)]
mod tests;
