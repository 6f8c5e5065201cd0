//! The pseudo-database the engine backs up: a deterministic stream of bytes, generated page by
//! page from a seed, so that any byte range can be regenerated on its own.
//!
//! A database of `size` bytes is a sequence of 8 KiB pages (the last one cut short). Every page
//! is a function of the seed and its page number only:
//!
//! | bytes | content |
//! |---|---|
//! | 0..8 | the magic `VDIEPAGE` |
//! | 8..16 | the page number (little-endian) |
//! | 16..24 | the seed (the backup id) |
//! | 24..32 | a check word derived from both |
//! | 32..4096 | structured rows: 63 records of 64 bytes (a row id, a name from a small table, a fixed text), then padding |
//! | 4096..8192 | pseudo-random bytes (splitmix64, seeded by the seed and the page number) |
//!
//! Half of each page is incompressible and half repeats, so the stream compresses roughly 2:1
//! with zstd, like a real database with some free space and repetitive rows. Since each page
//! names itself and its seed, data put at the wrong place (or from another backup) shows as a
//! mismatch that [`PageStamp::read`] can identify.
//!
//! ```
//! use vdi_engine::database::{Database, PAGE_SIZE};
//!
//! let db = Database::new(42, 3 * PAGE_SIZE as u64);
//! let mut whole = vec![0; 3 * PAGE_SIZE];
//! db.fill(0, &mut whole);
//! // Any range regenerates on its own.
//! let mut part = vec![0; 1000];
//! db.fill(5000, &mut part);
//! assert_eq!(&whole[5000..6000], &part[..]);
//! assert_eq!(db.mismatch(5000, &part), None);
//! ```

/// The size of a page (8 KiB, as SQL Server's).
pub const PAGE_SIZE: usize = 8192;

/// The magic at the start of every page.
pub const PAGE_MAGIC: [u8; 8] = *b"VDIEPAGE";

/// The page header: magic, page number, seed, check word.
const PAGE_HEADER: usize = 32;
/// Where the pseudo-random half begins.
const RANDOM_START: usize = PAGE_SIZE / 2;
/// The size of one structured record.
const RECORD: usize = 64;
/// Records per page.
const RECORDS: usize = (RANDOM_START - PAGE_HEADER) / RECORD;
/// The golden-ratio increment of splitmix64.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

const NAMES: [&[u8; 24]; 8] = [
    b"Contoso Ltd.            ",
    b"Fabrikam, Inc.          ",
    b"Northwind Traders       ",
    b"Adventure Works Cycles  ",
    b"Tailspin Toys           ",
    b"Wide World Importers    ",
    b"Litware, Inc.           ",
    b"Proseware, Inc.         ",
];
const ROW_TEXT: &[u8; 32] = b"status=OPEN;region=EU-WEST;qty=0";

/// The 8 bytes of a chunk of exactly 8.
fn array8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    a
}

/// The splitmix64 finalizer: a fast, well-mixing 64-bit hash.
const fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The key of page `page` of the database seeded with `seed`.
const fn page_key(seed: u64, page: u64) -> u64 {
    mix(seed ^ mix(page.wrapping_add(GOLDEN)))
}

/// What the header of a page says: which page of which database it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageStamp {
    /// The page number.
    pub page: u64,
    /// The seed (the backup id) of the database the page belongs to.
    pub seed: u64,
}

impl PageStamp {
    /// Reads the stamp from the first 32 bytes of a page; `None` unless they hold a valid page
    /// header (magic and check word).
    pub fn read(bytes: &[u8]) -> Option<Self> {
        let header = bytes.get(..PAGE_HEADER)?;
        if header.get(..8)? != PAGE_MAGIC {
            return None;
        }
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(header.get(i..i + 8)?.try_into().ok()?))
        };
        let (page, seed, check) = (word(8)?, word(16)?, word(24)?);
        (check == page_key(seed, page)).then_some(Self { page, seed })
    }
}

/// A deterministic pseudo-database of `size` bytes generated from `seed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Database {
    seed: u64,
    size: u64,
}

impl Database {
    /// The database of `size` bytes generated from `seed`.
    pub const fn new(seed: u64, size: u64) -> Self {
        Self { seed, size }
    }

    /// The seed (used as the backup id).
    pub const fn seed(&self) -> u64 {
        self.seed
    }

    /// The size in bytes.
    pub const fn size(&self) -> u64 {
        self.size
    }

    /// The number of pages, the last one possibly partial.
    pub const fn pages(&self) -> u64 {
        self.size.div_ceil(PAGE_SIZE as u64)
    }

    /// Writes the whole of page `page` into `out` (whether or not the page lies inside the
    /// database's size).
    pub fn page(&self, page: u64, out: &mut [u8; PAGE_SIZE]) {
        let (rows, random) = out.split_at_mut(RANDOM_START);
        let key = self.rows(page, rows);
        let mut state = key;
        for word in random.chunks_exact_mut(8) {
            state = state.wrapping_add(GOLDEN);
            word.copy_from_slice(&mix(state).to_le_bytes());
        }
    }

    /// Writes the structured half of page `page` (its first [`RANDOM_START`] bytes) into
    /// `out`, and returns the page's key, which seeds the random half.
    fn rows(&self, page: u64, out: &mut [u8]) -> u64 {
        let key = page_key(self.seed, page);
        out[..8].copy_from_slice(&PAGE_MAGIC);
        out[8..16].copy_from_slice(&page.to_le_bytes());
        out[16..24].copy_from_slice(&self.seed.to_le_bytes());
        out[24..32].copy_from_slice(&key.to_le_bytes());
        let rows = &mut out[PAGE_HEADER..RANDOM_START];
        let (records, rest) = rows.split_at_mut(RECORDS * RECORD);
        let first_row = page.wrapping_mul(RECORDS as u64);
        for (r, rec) in records.chunks_exact_mut(RECORD).enumerate() {
            let row = first_row.wrapping_add(r as u64);
            rec[..8].copy_from_slice(&row.to_le_bytes());
            let name = NAMES[(mix(key ^ r as u64) % NAMES.len() as u64) as usize];
            rec[8..32].copy_from_slice(name);
            rec[32..64].copy_from_slice(ROW_TEXT);
            rec[63] = b'0' + (row % 10) as u8;
        }
        rest.fill(b' ');
        key
    }

    /// [`mismatch`](Self::mismatch) of one whole page inside the database: the structured
    /// half generated and compared, the random half compared word by word as it is generated,
    /// never written. The index in `got` of the first wrong byte.
    fn page_mismatch(&self, page: u64, got: &[u8; PAGE_SIZE]) -> Option<usize> {
        let mut rows = [0u8; RANDOM_START];
        let key = self.rows(page, &mut rows);
        let (got_rows, got_random) = got.split_at(RANDOM_START);
        if got_rows != rows {
            return got_rows.iter().zip(rows).position(|(a, b)| *a != b);
        }
        let mut state = key;
        for (i, word) in got_random.chunks_exact(8).enumerate() {
            state = state.wrapping_add(GOLDEN);
            let diff = u64::from_le_bytes(array8(word)) ^ mix(state);
            if diff != 0 {
                // Little-endian: the lowest differing byte of the word comes first.
                return Some(RANDOM_START + i * 8 + (diff.trailing_zeros() / 8) as usize);
            }
        }
        None
    }

    /// Fills `buf` with the database's bytes from `offset` on. Bytes at or past the end of the
    /// database are zero.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let mut scratch = [0u8; PAGE_SIZE];
        let mut pos = 0usize;
        while pos < buf.len() {
            let abs = offset.saturating_add(pos as u64);
            if abs >= self.size {
                buf[pos..].fill(0);
                return;
            }
            let page = abs / PAGE_SIZE as u64;
            let within = (abs % PAGE_SIZE as u64) as usize;
            let n = (PAGE_SIZE - within)
                .min(buf.len() - pos)
                .min(usize::try_from(self.size - abs).unwrap_or(usize::MAX));
            let out = &mut buf[pos..pos + n];
            if let Ok(whole) = <&mut [u8; PAGE_SIZE]>::try_from(&mut *out) {
                self.page(page, whole);
            } else {
                self.page(page, &mut scratch);
                out.copy_from_slice(&scratch[within..within + n]);
            }
            pos += n;
        }
    }

    /// The index in `data` of the first byte that differs from the database's bytes at
    /// `offset`, or `None` when all of `data` matches.
    pub fn mismatch(&self, offset: u64, data: &[u8]) -> Option<usize> {
        let mut scratch = [0u8; PAGE_SIZE];
        let mut pos = 0usize;
        while pos < data.len() {
            let abs = offset.saturating_add(pos as u64);
            let within = (abs % PAGE_SIZE as u64) as usize;
            let n = (PAGE_SIZE - within).min(data.len() - pos);
            if let Ok(whole) = <&[u8; PAGE_SIZE]>::try_from(&data[pos..pos + n])
                && abs.saturating_add(PAGE_SIZE as u64) <= self.size
            {
                if let Some(i) = self.page_mismatch(abs / PAGE_SIZE as u64, whole) {
                    return Some(pos + i);
                }
                pos += n;
                continue;
            }
            if abs >= self.size {
                scratch.fill(0);
            } else {
                self.page(abs / PAGE_SIZE as u64, &mut scratch);
                let valid = usize::try_from(self.size - abs).unwrap_or(usize::MAX);
                if valid < n {
                    // Past the end the database is zero (the final page is cut short).
                    scratch[within + valid..].fill(0);
                }
            }
            let got = &data[pos..pos + n];
            let want = &scratch[within..within + n];
            if got != want {
                let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
                return Some(pos + i);
            }
            pos += n;
        }
        None
    }

    /// The database's byte at `offset` (zero past the end).
    pub fn byte_at(&self, offset: u64) -> u8 {
        let mut b = [0u8; 1];
        self.fill(offset, &mut b);
        b[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_regenerate_as_the_whole() {
        let db = Database::new(7, 5 * PAGE_SIZE as u64 - 512);
        let mut whole = vec![0u8; db.size() as usize];
        db.fill(0, &mut whole);
        for (off, len) in [
            (0, 1),
            (1, 8191),
            (8191, 2),
            (100, 20_000),
            (8192, 8192),
            (30_000, 10),
        ] {
            let mut part = vec![0u8; len];
            db.fill(off as u64, &mut part);
            assert_eq!(&whole[off..off + len], &part[..], "range {off}+{len}");
            assert_eq!(db.mismatch(off as u64, &part), None);
        }
        // Past the end: zeros.
        let mut tail = vec![1u8; 1024];
        db.fill(db.size() - 512, &mut tail);
        assert!(tail[512..].iter().all(|&b| b == 0));
        assert_eq!(&tail[..512], &whole[whole.len() - 512..]);
        assert_eq!(db.mismatch(db.size() - 512, &tail), None);
    }

    #[test]
    fn mismatch_finds_the_first_wrong_byte() {
        let db = Database::new(1, 4 * PAGE_SIZE as u64);
        let mut data = vec![0u8; 3 * PAGE_SIZE];
        db.fill(1000, &mut data);
        data[9000] ^= 0x40;
        assert_eq!(db.mismatch(1000, &data), Some(9000));
        assert_eq!(db.byte_at(10_000), data[9000] ^ 0x40);
    }

    /// Whole pages are compared without generating their random half into memory: a change
    /// anywhere, in either half, at any byte of a word, is found at its exact place.
    #[test]
    fn mismatch_in_whole_pages_is_exact() {
        let db = Database::new(5, 6 * PAGE_SIZE as u64);
        let mut data = vec![0u8; 4 * PAGE_SIZE];
        db.fill(PAGE_SIZE as u64, &mut data);
        assert_eq!(db.mismatch(PAGE_SIZE as u64, &data), None);
        for at in [
            0, 31, 32, 4095, 4096, 4097, 4103, 5000, 8191, 8192, 20_000, 32_767,
        ] {
            for mask in [0x01u8, 0x80] {
                let mut bad = data.clone();
                bad[at] ^= mask;
                assert_eq!(db.mismatch(PAGE_SIZE as u64, &bad), Some(at), "byte {at}");
            }
        }
        // The first of two changes.
        let mut bad = data.clone();
        bad[9000] ^= 1;
        bad[7000] ^= 1;
        assert_eq!(db.mismatch(PAGE_SIZE as u64, &bad), Some(7000));
        // The last whole page is cut short by the database's end: compared the other way.
        let short = Database::new(5, 4 * PAGE_SIZE as u64 - 100);
        let mut tail = vec![0u8; PAGE_SIZE];
        short.fill(3 * PAGE_SIZE as u64, &mut tail);
        assert_eq!(short.mismatch(3 * PAGE_SIZE as u64, &tail), None);
        tail[PAGE_SIZE - 50] = 1;
        assert_eq!(
            short.mismatch(3 * PAGE_SIZE as u64, &tail),
            Some(PAGE_SIZE - 50)
        );
    }

    #[test]
    fn pages_differ_by_seed_and_number_and_carry_their_stamp() {
        let (a, b) = (Database::new(1, 1 << 20), Database::new(2, 1 << 20));
        let (mut pa, mut pb, mut pa2) = ([0u8; PAGE_SIZE], [0u8; PAGE_SIZE], [0u8; PAGE_SIZE]);
        a.page(3, &mut pa);
        b.page(3, &mut pb);
        a.page(4, &mut pa2);
        assert_ne!(pa[RANDOM_START..], pb[RANDOM_START..]);
        assert_ne!(pa[RANDOM_START..], pa2[RANDOM_START..]);
        assert_eq!(PageStamp::read(&pa), Some(PageStamp { page: 3, seed: 1 }));
        assert_eq!(PageStamp::read(&pb), Some(PageStamp { page: 3, seed: 2 }));
        pa[9] ^= 1;
        assert_eq!(PageStamp::read(&pa), None);
        assert_eq!(PageStamp::read(&[0u8; 10]), None);
    }

    #[test]
    fn about_half_of_a_page_repeats() {
        let db = Database::new(9, PAGE_SIZE as u64);
        let mut p = [0u8; PAGE_SIZE];
        db.page(0, &mut p);
        // The structured half holds few distinct 8-byte words; the random half almost only
        // distinct ones.
        let distinct = |s: &[u8]| {
            let mut v: Vec<&[u8]> = s.chunks_exact(8).collect();
            v.sort_unstable();
            v.dedup();
            v.len()
        };
        assert!(distinct(&p[PAGE_HEADER..RANDOM_START]) < 150);
        assert_eq!(distinct(&p[RANDOM_START..]), (PAGE_SIZE - RANDOM_START) / 8);
    }
}
