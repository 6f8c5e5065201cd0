//! Why a stripe cannot be read: [`StripeError`], with the [`Position`] of a bad record and
//! what is wrong with it ([`RecordError`]).

use std::fmt;
use std::io;

use super::{Checkpoint, FORMAT_VERSION, HEADER_LEN, MAX_RECORD_LEN, TotalsField};

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

/// Why a stripe cannot be read. Offsets are file offsets (from the start of the file header).
///
/// The file header's errors come first; an error of one record is [`StripeError::Record`],
/// which names the record once ([`Position`]) and says what is wrong with it
/// ([`RecordError`]); the rest are about the input as a whole. An inner error is part of the
/// message, so `source` does not repeat it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StripeError {
    /// The input ended inside the file header.
    #[error("{}", truncated_header(*.found))]
    TruncatedHeader {
        /// The bytes there were (of [`HEADER_LEN`]).
        found: usize,
    },
    /// The input does not start with [`MAGIC`](super::MAGIC).
    #[error("not a stripe file: magic is \"{}\", expected \"VDISTRIP\"", .found.escape_ascii())]
    BadMagic {
        /// The first 8 bytes.
        found: [u8; 8],
    },
    /// The header's format version is not [`FORMAT_VERSION`].
    #[error(
        "unsupported stripe format version {found} (this build reads versions 1 to {FORMAT_VERSION})"
    )]
    UnsupportedVersion {
        /// The version in the file.
        found: u16,
    },
    /// The file header's checksum does not match its bytes.
    #[error(
        "stripe header checksum mismatch: the header records {recorded:#018x}, its bytes 0..56 \
         hash to {computed:#018x}"
    )]
    HeaderChecksum {
        /// The checksum the header records.
        recorded: u64,
        /// The checksum of the header's bytes.
        computed: u64,
    },
    /// A file header field is out of range.
    #[error("invalid stripe header: {field} is {value}, allowed {allowed}")]
    InvalidHeader {
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What it may be.
        allowed: String,
    },
    /// A record is bad.
    #[error("{at}: {error}")]
    Record {
        /// Which record.
        at: Position,
        /// What is wrong with it.
        error: RecordError,
    },
    /// The input ended before the stripe did: anywhere but right after a checkpoint, or, with
    /// expected totals, before their checkpoint.
    #[error(
        "stripe truncated after {raw_bytes} bytes of data in {data_records} data records (the \
         input ends at offset {file_bytes}), {}{}",
        LastCheckpoint(*.last_checkpoint),
        ExpectedCheckpoint(*.expected)
    )]
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
    #[error("cannot read the stripe at offset {offset}: {error}")]
    Io {
        /// The offset it failed at.
        offset: u64,
        /// Its error.
        error: io::Error,
    },
    /// The reader was used after it returned an error.
    #[error("the stripe reader already failed at offset {offset} and cannot go on")]
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

/// [`StripeError::TruncatedHeader`]'s message: none of the header is an empty input.
fn truncated_header(found: usize) -> String {
    if found == 0 {
        "empty input: no stripe header".into()
    } else {
        format!("stripe header truncated: {found} of {HEADER_LEN} bytes")
    }
}

/// The last checkpoint of a truncated stripe, in words.
struct LastCheckpoint(Option<Checkpoint>);

impl fmt::Display for LastCheckpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(c) => write!(
                f,
                "last checkpoint ({}) ends at offset {} after {} bytes of data",
                c.checkpoints, c.stored_bytes, c.raw_bytes
            ),
            None => f.write_str("no checkpoint"),
        }
    }
}

/// The checkpoint a truncated stripe was expected to reach, if there was one, in words.
struct ExpectedCheckpoint(Option<Checkpoint>);

impl fmt::Display for ExpectedCheckpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(e) => write!(
                f,
                "; expected checkpoint {} ending at offset {} after {} bytes of data",
                e.checkpoints, e.stored_bytes, e.raw_bytes
            ),
            None => Ok(()),
        }
    }
}

/// Which record of a stripe an error is about: displayed as `record 3 at offset 4096` or
/// `checkpoint 2 at offset 8192`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Position {
    /// A record, by the offset of its header and its number (counting every record from 0,
    /// data and checkpoint alike).
    Record {
        /// The record header's offset.
        offset: u64,
        /// The record's number.
        record: u64,
    },
    /// A checkpoint whose totals are wrong, by the offset of its record header and its number
    /// (from 1) as the reader counts them.
    Checkpoint {
        /// The checkpoint record's offset.
        offset: u64,
        /// The checkpoint's number.
        checkpoint: u64,
    },
}

impl Position {
    /// The offset of the record's header.
    pub fn offset(&self) -> u64 {
        match *self {
            Self::Record { offset, .. } | Self::Checkpoint { offset, .. } => offset,
        }
    }

    /// `error` at this position.
    pub(super) fn error(self, error: RecordError) -> StripeError {
        StripeError::Record { at: self, error }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Record { offset, record } => write!(f, "record {record} at offset {offset}"),
            Self::Checkpoint { offset, checkpoint } => {
                write!(f, "checkpoint {checkpoint} at offset {offset}")
            }
        }
    }
}

/// What is wrong with one record ([`StripeError::Record`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The record header's checksum does not match its bytes.
    #[error(
        "header checksum mismatch: the header records {recorded:#018x}, its bytes hash to \
         {computed:#018x}"
    )]
    HeaderChecksum {
        /// The checksum the header records.
        recorded: u64,
        /// The checksum of the header's bytes.
        computed: u64,
    },
    /// The record's kind is neither `DATA` nor `CKPT`.
    #[error("unknown record kind \"{}\", expected \"DATA\" or \"CKPT\"", .found.escape_ascii())]
    UnknownKind {
        /// The kind bytes.
        found: [u8; 4],
    },
    /// A data record's codec is neither 0 (stored) nor 1 (zstd).
    #[error("unknown codec {found}, expected 0 (stored) or 1 (zstd)")]
    UnknownCodec {
        /// The codec byte.
        found: u8,
    },
    /// A data record claims more than [`MAX_RECORD_LEN`] bytes (nothing is allocated for it).
    #[error(
        "claims {raw_len} raw bytes and {stored_len} stored bytes, more than the limit of \
         {MAX_RECORD_LEN}"
    )]
    TooLarge {
        /// The raw length it claims.
        raw_len: u32,
        /// The stored length it claims.
        stored_len: u32,
    },
    /// The record header's fields contradict each other or the format.
    #[error("{reason}")]
    InvalidHeader {
        /// What is wrong.
        reason: String,
    },
    /// The stored payload does not match its checksum.
    #[error(
        "payload checksum mismatch: the header records {recorded:#018x}, the payload hashes to \
         {computed:#018x}"
    )]
    PayloadChecksum {
        /// The checksum the record header records.
        recorded: u64,
        /// The checksum of the payload's bytes.
        computed: u64,
    },
    /// A zstd payload (whose checksum matched) does not decompress.
    #[error("zstd payload does not decompress: {reason}")]
    Decompress {
        /// zstd's message.
        reason: String,
    },
    /// A zstd payload decompresses (or declares that it does) to other than the raw length.
    #[error("zstd payload decompresses to {found} bytes, expected the raw length {expected}")]
    DecompressedLength {
        /// The record's raw length.
        expected: u64,
        /// The length zstd gave or declared.
        found: u64,
    },
    /// A checkpoint's totals differ from what the reader counted.
    #[error(
        "records {field} {}, but the stream read so far has {}",
        FieldValue(*.field, *.recorded),
        FieldValue(*.field, *.computed)
    )]
    CheckpointMismatch {
        /// The first field that differs.
        field: TotalsField,
        /// The value the checkpoint records.
        recorded: u64,
        /// The value the reader counted.
        computed: u64,
    },
    /// A checkpoint that should equal the expected totals (it is their checkpoint, or the
    /// stream went past them) does not.
    #[error(
        "does not match the expected totals: {field} expected {}, found {}",
        FieldValue(*.field, *.expected),
        FieldValue(*.field, *.found)
    )]
    ManifestMismatch {
        /// The first field that differs.
        field: TotalsField,
        /// The expected value.
        expected: u64,
        /// The checkpoint's value.
        found: u64,
    },
    /// A data record would take the stream past the expected totals before their checkpoint.
    #[error(
        "goes past the expected totals: {field} would reach {found}, expected {expected} at the \
         last checkpoint"
    )]
    BeyondExpected {
        /// The total it would exceed.
        field: TotalsField,
        /// The expected value.
        expected: u64,
        /// The least value the total would reach with this record.
        found: u64,
    },
}

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
            StripeError::Io { error, .. } => error.kind(),
            StripeError::Failed { .. } => io::ErrorKind::Other,
            _ => io::ErrorKind::InvalidData,
        };
        Self::new(kind, e)
    }
}
