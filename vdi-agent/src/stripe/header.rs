//! The file header of a stripe ([`StripeHeader`]) and the codec its records use ([`Codec`]).

use std::fmt;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::{
    FLAG_ZSTD, FORMAT_VERSION, FORMAT_VERSION_1, HEADER_LEN, KNOWN_FLAGS, MAGIC, MAX_STRIPES,
    StripeError, array_at,
};

/// The format version of an encoded file header (not checked).
pub(super) fn format_version(b: &[u8; HEADER_LEN]) -> u16 {
    u16::from_le_bytes(array_at(b, 8))
}

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
    /// ([`Codec::header_flags`]). [`StripeWriter::new`](super::StripeWriter::new) sets them from its codec.
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
                "0 or 1 (format versions 1 and 2 define only bit 0, the zstd codec)".into(),
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
        let version = format_version(b);
        if version != FORMAT_VERSION && version != FORMAT_VERSION_1 {
            return Err(StripeError::UnsupportedVersion { found: version });
        }
        let header_len = u16::from_le_bytes(array_at(b, 10));
        if usize::from(header_len) != HEADER_LEN {
            return Err(StripeError::InvalidHeader {
                field: "header length",
                value: header_len.into(),
                allowed: format!("{HEADER_LEN} (format versions 1 and 2)"),
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
