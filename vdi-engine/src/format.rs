//! The stream the engine writes to each device, and reads back: one header block, the device's
//! data chunks, one trailer block.
//!
//! The database ([`Database`](crate::database::Database)) is cut into chunks of
//! `MAXTRANSFERSIZE` bytes (the last one shorter, a multiple of `BLOCKSIZE`); chunk `i` goes to
//! device `i % N`. Device `d`'s stream is:
//!
//! | part | size | content |
//! |---|---|---|
//! | header | `BLOCKSIZE` | [`Header`]: magic `VDIENG_H`, format version, backup id (the seed), database size, device count, device index, block size, max transfer size, this device's chunk count, checksum; zeros to the end of the block |
//! | data | the device's chunks | chunks `d`, `d + N`, `d + 2N`, … back to back |
//! | trailer | `BLOCKSIZE` | [`Trailer`]: magic `VDIENG_T`, format version, device index, data bytes, backup id, chunk count, checksum; zeros |
//!
//! All integers are little-endian; checksums are FNV-1a 64 over the bytes before them. Parsing
//! checks every field and never panics: garbage is a [`FormatError`].
//!
//! ```
//! use vdi_engine::format::Header;
//!
//! let h = Header::for_device(42, 1 << 20, 4, 1, 512, 65536);
//! let block = h.to_block();
//! assert_eq!(Header::parse(&block), Ok(h));
//! assert_eq!(h.layout().data_bytes(), 4 * 65536);
//! assert!(Header::parse(&block[..100]).is_err());
//! ```

use core::fmt;

/// The magic at the start of a header block.
pub const HEADER_MAGIC: [u8; 8] = *b"VDIENG_H";
/// The magic at the start of a trailer block.
pub const TRAILER_MAGIC: [u8; 8] = *b"VDIENG_T";
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The bytes of a header covered by its fields and checksum (the rest of the block is zero).
pub const HEADER_LEN: usize = 64;
/// The bytes of a trailer covered by its fields and checksum.
pub const TRAILER_LEN: usize = 48;
/// The largest database the format accepts (1 PiB); larger sizes in a header are garbage.
pub const MAX_DATABASE_SIZE: u64 = 1 << 50;

/// Why a header or trailer block was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Fewer bytes than the block needs.
    #[error("the block is {got} bytes long, {needed} needed")]
    TooShort {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// The magic is not the header's (or trailer's).
    #[error("bad magic: not a vdi-engine stream")]
    BadMagic,
    /// A format version this crate does not read.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u32),
    /// The stored checksum does not match the fields.
    #[error("bad checksum: stored {stored:#018x}, computed {computed:#018x}")]
    BadChecksum {
        /// The checksum stored in the block.
        stored: u64,
        /// The checksum of the fields.
        computed: u64,
    },
    /// A field holds a value outside its range.
    #[error("field {field} holds invalid value {value}")]
    Field {
        /// The field's name.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// The fields contradict each other.
    #[error("inconsistent fields: {0}")]
    Inconsistent(&'static str),
    /// A byte after the fields is not zero.
    #[error("non-zero padding at offset {offset}")]
    Padding {
        /// Its offset in the block.
        offset: usize,
    },
}

/// FNV-1a 64.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    b.get(i..i + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    b.get(i..i + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// The number of `MAXTRANSFERSIZE` chunks of a database of `database_size` bytes.
pub const fn chunk_count(database_size: u64, max_transfer_size: u32) -> u64 {
    if max_transfer_size == 0 {
        0
    } else {
        database_size.div_ceil(max_transfer_size as u64)
    }
}

/// The number of chunks device `index` of `devices` carries, of `chunks` in all.
pub const fn device_chunks(chunks: u64, devices: u32, index: u32) -> u64 {
    if devices == 0 {
        return 0;
    }
    let n = devices as u64;
    chunks / n + ((index as u64) < chunks % n) as u64
}

/// A device stream's header block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The backup id: the seed of the database.
    pub backup_id: u64,
    /// The database's size in bytes (a multiple of the block size).
    pub database_size: u64,
    /// The number of devices (streams) of the backup.
    pub device_count: u32,
    /// This stream's index, 0..device_count.
    pub device_index: u32,
    /// The block size of the backup.
    pub block_size: u32,
    /// The max transfer size of the backup (the chunk size).
    pub max_transfer_size: u32,
    /// The chunks this device carries.
    pub chunks: u64,
}

impl Header {
    /// The header of device `device_index` of a backup with these parameters (the chunk count
    /// computed).
    pub const fn for_device(
        backup_id: u64,
        database_size: u64,
        device_count: u32,
        device_index: u32,
        block_size: u32,
        max_transfer_size: u32,
    ) -> Self {
        Self {
            backup_id,
            database_size,
            device_count,
            device_index,
            block_size,
            max_transfer_size,
            chunks: device_chunks(
                chunk_count(database_size, max_transfer_size),
                device_count,
                device_index,
            ),
        }
    }

    /// Writes the header into `block` (the fields, then zeros to the end of `block`; a block
    /// shorter than [`HEADER_LEN`] receives what fits).
    pub fn encode(&self, block: &mut [u8]) {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&HEADER_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.backup_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.database_size.to_le_bytes());
        b[32..36].copy_from_slice(&self.device_count.to_le_bytes());
        b[36..40].copy_from_slice(&self.device_index.to_le_bytes());
        b[40..44].copy_from_slice(&self.block_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.max_transfer_size.to_le_bytes());
        b[48..56].copy_from_slice(&self.chunks.to_le_bytes());
        let sum = checksum(&b[..56]);
        b[56..64].copy_from_slice(&sum.to_le_bytes());
        let n = block.len().min(HEADER_LEN);
        block[..n].copy_from_slice(&b[..n]);
        block[n..].fill(0);
    }

    /// The header as a block of `block_size` bytes.
    pub fn to_block(&self) -> Vec<u8> {
        let mut v = vec![0; self.block_size.max(HEADER_LEN as u32) as usize];
        self.encode(&mut v);
        v
    }

    /// Parses a header from the first bytes of a stream (at least the header's block size),
    /// checking that the rest of its block is zero.
    ///
    /// # Errors
    ///
    /// A [`FormatError`] naming the first check that failed.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let h = Self::parse_fields(bytes)?;
        let block = h.block_size as usize;
        if bytes.len() < block {
            return Err(FormatError::TooShort {
                needed: block,
                got: bytes.len(),
            });
        }
        if let Some(i) = bytes[HEADER_LEN..block].iter().position(|&b| b != 0) {
            return Err(FormatError::Padding {
                offset: HEADER_LEN + i,
            });
        }
        Ok(h)
    }

    /// Parses and checks the header's fields ([`HEADER_LEN`] bytes), not the rest of its
    /// block.
    ///
    /// # Errors
    ///
    /// A [`FormatError`] naming the first check that failed.
    pub fn parse_fields(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() < HEADER_LEN {
            return Err(FormatError::TooShort {
                needed: HEADER_LEN,
                got: bytes.len(),
            });
        }
        if bytes[..8] != HEADER_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = u32_at(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let len = u32_at(bytes, 12);
        if len as usize != HEADER_LEN {
            return Err(FormatError::Field {
                field: "header length",
                value: u64::from(len),
            });
        }
        let stored = u64_at(bytes, 56);
        let computed = checksum(&bytes[..56]);
        if stored != computed {
            return Err(FormatError::BadChecksum { stored, computed });
        }
        let h = Self {
            backup_id: u64_at(bytes, 16),
            database_size: u64_at(bytes, 24),
            device_count: u32_at(bytes, 32),
            device_index: u32_at(bytes, 36),
            block_size: u32_at(bytes, 40),
            max_transfer_size: u32_at(bytes, 44),
            chunks: u64_at(bytes, 48),
        };
        h.validate()?;
        Ok(h)
    }

    /// Checks the fields' ranges and their consistency.
    ///
    /// # Errors
    ///
    /// [`FormatError::Field`] or [`FormatError::Inconsistent`].
    pub fn validate(&self) -> Result<(), FormatError> {
        let field = |field, value: u64| Err(FormatError::Field { field, value });
        if vdi_core::validate_device_count(self.device_count).is_err() {
            return field("device count", u64::from(self.device_count));
        }
        if self.device_index >= self.device_count {
            return field("device index", u64::from(self.device_index));
        }
        if vdi_core::validate_block_size(self.block_size).is_err() {
            return field("block size", u64::from(self.block_size));
        }
        if vdi_core::validate_max_transfer_size(self.max_transfer_size).is_err() {
            return field("max transfer size", u64::from(self.max_transfer_size));
        }
        if self.database_size > MAX_DATABASE_SIZE {
            return field("database size", self.database_size);
        }
        if !self
            .database_size
            .is_multiple_of(u64::from(self.block_size))
        {
            return Err(FormatError::Inconsistent(
                "the database size is not a multiple of the block size",
            ));
        }
        let expected = Self::for_device(
            self.backup_id,
            self.database_size,
            self.device_count,
            self.device_index,
            self.block_size,
            self.max_transfer_size,
        );
        if self.chunks != expected.chunks {
            return Err(FormatError::Inconsistent(
                "the chunk count does not match the database size and device count",
            ));
        }
        Ok(())
    }

    /// The layout of this device's stream.
    pub const fn layout(&self) -> StreamLayout {
        StreamLayout { header: *self }
    }
}

/// A device stream's trailer block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// The device (stream) index.
    pub device_index: u32,
    /// The bytes of data (between header and trailer) on this device.
    pub data_bytes: u64,
    /// The backup id.
    pub backup_id: u64,
    /// The chunks on this device.
    pub chunks: u64,
}

impl Trailer {
    /// Writes the trailer into `block` (the fields, then zeros).
    pub fn encode(&self, block: &mut [u8]) {
        let mut b = [0u8; TRAILER_LEN];
        b[..8].copy_from_slice(&TRAILER_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.device_index.to_le_bytes());
        b[16..24].copy_from_slice(&self.data_bytes.to_le_bytes());
        b[24..32].copy_from_slice(&self.backup_id.to_le_bytes());
        b[32..40].copy_from_slice(&self.chunks.to_le_bytes());
        let sum = checksum(&b[..40]);
        b[40..48].copy_from_slice(&sum.to_le_bytes());
        let n = block.len().min(TRAILER_LEN);
        block[..n].copy_from_slice(&b[..n]);
        block[n..].fill(0);
    }

    /// Parses a trailer block (every byte after the fields must be zero).
    ///
    /// # Errors
    ///
    /// A [`FormatError`] naming the first check that failed.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() < TRAILER_LEN {
            return Err(FormatError::TooShort {
                needed: TRAILER_LEN,
                got: bytes.len(),
            });
        }
        if bytes[..8] != TRAILER_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = u32_at(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let stored = u64_at(bytes, 40);
        let computed = checksum(&bytes[..40]);
        if stored != computed {
            return Err(FormatError::BadChecksum { stored, computed });
        }
        if let Some(i) = bytes[TRAILER_LEN..].iter().position(|&b| b != 0) {
            return Err(FormatError::Padding {
                offset: TRAILER_LEN + i,
            });
        }
        Ok(Self {
            device_index: u32_at(bytes, 12),
            data_bytes: u64_at(bytes, 16),
            backup_id: u64_at(bytes, 24),
            chunks: u64_at(bytes, 32),
        })
    }
}

/// Which part of a device stream an offset falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// The header block.
    Header,
    /// The data, at this offset of the database.
    Data {
        /// The database offset.
        database_offset: u64,
    },
    /// The trailer block.
    Trailer,
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header => f.write_str("in the header"),
            Self::Data { database_offset } => write!(
                f,
                "in the data, database offset {database_offset} (page {})",
                database_offset / crate::database::PAGE_SIZE as u64
            ),
            Self::Trailer => f.write_str("in the trailer"),
        }
    }
}

/// Where everything lies in one device's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLayout {
    header: Header,
}

impl StreamLayout {
    /// The header this layout follows.
    pub const fn header(&self) -> &Header {
        &self.header
    }

    const fn block(&self) -> u64 {
        self.header.block_size as u64
    }

    const fn mts(&self) -> u64 {
        self.header.max_transfer_size as u64
    }

    /// The size of chunk `k` of this device (its `k`-th), and its offset in the database.
    pub const fn chunk(&self, k: u64) -> (u64, u32) {
        let h = &self.header;
        let i = k
            .saturating_mul(h.device_count as u64)
            .saturating_add(h.device_index as u64);
        let offset = i.saturating_mul(self.mts());
        let left = h.database_size.saturating_sub(offset);
        let len = if left < self.mts() { left } else { self.mts() };
        (offset, len as u32)
    }

    /// The bytes of data on this device.
    pub const fn data_bytes(&self) -> u64 {
        let h = &self.header;
        if h.chunks == 0 {
            return 0;
        }
        let (_, last) = self.chunk(h.chunks - 1);
        (h.chunks - 1)
            .saturating_mul(self.mts())
            .saturating_add(last as u64)
    }

    /// Where the trailer begins.
    pub const fn trailer_offset(&self) -> u64 {
        self.block().saturating_add(self.data_bytes())
    }

    /// The whole stream's length: header, data and trailer.
    pub const fn stream_len(&self) -> u64 {
        self.trailer_offset().saturating_add(self.block())
    }

    /// The trailer of this stream.
    pub const fn trailer(&self) -> Trailer {
        Trailer {
            device_index: self.header.device_index,
            data_bytes: self.data_bytes(),
            backup_id: self.header.backup_id,
            chunks: self.header.chunks,
        }
    }

    /// The region `offset` falls in (`None` past the end).
    pub const fn region(&self, offset: u64) -> Option<Region> {
        if offset < self.block() {
            Some(Region::Header)
        } else if offset < self.trailer_offset() {
            Some(Region::Data {
                database_offset: self.database_offset(offset - self.block()),
            })
        } else if offset < self.stream_len() {
            Some(Region::Trailer)
        } else {
            None
        }
    }

    /// The database offset of byte `x` of this device's data.
    pub const fn database_offset(&self, x: u64) -> u64 {
        if self.mts() == 0 {
            return 0;
        }
        let k = x / self.mts();
        let (chunk, _) = self.chunk(k);
        chunk.saturating_add(x % self.mts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header::for_device(99, 10 * 65536 + 4096, 4, 2, 4096, 65536)
    }

    #[test]
    fn header_and_trailer_round_trip() {
        let h = header();
        assert_eq!(h.chunks, 3); // chunks 2, 6, 10 (the short last one)
        let block = h.to_block();
        assert_eq!(block.len(), 4096);
        assert_eq!(Header::parse(&block), Ok(h));
        let l = h.layout();
        assert_eq!(l.data_bytes(), 2 * 65536 + 4096);
        assert_eq!(l.stream_len(), 4096 * 2 + 2 * 65536 + 4096);
        assert_eq!(l.chunk(2), (10 * 65536, 4096));
        assert_eq!(l.database_offset(65536 + 5), 6 * 65536 + 5);
        let mut t = vec![0; 4096];
        l.trailer().encode(&mut t);
        assert_eq!(Trailer::parse(&t), Ok(l.trailer()));
        assert_eq!(l.region(0), Some(Region::Header));
        assert_eq!(l.region(l.trailer_offset()), Some(Region::Trailer));
        assert_eq!(l.region(l.stream_len()), None);
    }

    #[test]
    fn the_chunks_of_all_devices_cover_the_database() {
        for (size, devices) in [(0u64, 1u32), (512, 3), (65536 * 7 + 512, 4), (65536 * 8, 4)] {
            let mut total = 0;
            for d in 0..devices {
                total += Header::for_device(1, size, devices, d, 512, 65536)
                    .layout()
                    .data_bytes();
            }
            assert_eq!(total, size, "size {size}, {devices} devices");
        }
    }

    #[test]
    fn garbage_is_rejected_with_a_typed_error() {
        let good = header().to_block();
        assert_eq!(
            Header::parse(&[]),
            Err(FormatError::TooShort { needed: 64, got: 0 })
        );
        assert_eq!(Header::parse(&[0; 4096]), Err(FormatError::BadMagic));
        let mut b = good.clone();
        b[20] ^= 1;
        assert!(matches!(
            Header::parse(&b),
            Err(FormatError::BadChecksum { .. })
        ));
        let mut b = good.clone();
        b[1000] = 7;
        assert_eq!(
            Header::parse(&b),
            Err(FormatError::Padding { offset: 1000 })
        );
        assert!(matches!(
            Header::parse(&good[..1000]),
            Err(FormatError::TooShort { needed: 4096, .. })
        ));
        // Valid checksum over absurd fields.
        for bad in [
            Header {
                device_count: 0,
                ..header()
            },
            Header {
                device_index: 4,
                ..header()
            },
            Header {
                block_size: 1000,
                ..header()
            },
            Header {
                max_transfer_size: 1,
                ..header()
            },
            Header {
                database_size: u64::MAX,
                ..header()
            },
            Header {
                database_size: 100,
                ..header()
            },
            Header {
                chunks: 77,
                ..header()
            },
        ] {
            let mut b = vec![0; 4096];
            bad.encode(&mut b);
            assert!(Header::parse(&b).is_err(), "{bad:?}");
        }
        let mut t = vec![0; 512];
        header().layout().trailer().encode(&mut t);
        t[30] ^= 1;
        assert!(matches!(
            Trailer::parse(&t),
            Err(FormatError::BadChecksum { .. })
        ));
        assert_eq!(Trailer::parse(&good), Err(FormatError::BadMagic));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x = 0x1234_5678_u64;
        for len in 0..600 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = Header::parse(&bytes);
            let _ = Trailer::parse(&bytes);
            let mut with_magic = bytes.clone();
            if with_magic.len() >= 8 {
                with_magic[..8].copy_from_slice(&HEADER_MAGIC);
                let _ = Header::parse(&with_magic);
            }
        }
    }
}
