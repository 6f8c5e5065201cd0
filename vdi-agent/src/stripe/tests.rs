//! Tests of the stripe format: round trips, every corruption and truncation of a small stripe,
//! expected totals, hostile headers, writers and readers that misbehave.

use std::io::{self, Read, Write};

use proptest::prelude::*;
use zstd::bulk::Compressor;

use super::*;

fn header() -> StripeHeader {
    StripeHeader {
        backup_id: 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        index: 1,
        count: 3,
        block_size: 512,
        max_transfer_size: 65536,
        created: 1_700_000_000,
        flags: 0,
    }
}

/// [`header`] of a stripe written with zstd.
fn zstd_header() -> StripeHeader {
    StripeHeader {
        flags: FLAG_ZSTD,
        ..header()
    }
}

/// Deterministic incompressible bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Compressible bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / 37) as u8))
        .collect()
}

/// Writes `chunks`, with a checkpoint after chunk `i` where `checkpoint_after[i]`, and a final
/// one. Returns the file and every checkpoint.
fn write_stripe(
    chunks: &[Vec<u8>],
    checkpoint_after: &[bool],
    codec: Codec,
) -> (Vec<u8>, Vec<Checkpoint>) {
    let mut w = StripeWriter::new(Vec::new(), header(), codec).unwrap();
    let mut cps = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        w.write_chunk(c).unwrap();
        if checkpoint_after.get(i).copied().unwrap_or(false) {
            let cp = w.checkpoint().unwrap();
            assert_eq!(cp, w.totals());
            assert_eq!(cp.stored_bytes, w.get_ref().len() as u64);
            cps.push(cp);
        }
    }
    let (file, last) = w.finish().unwrap();
    assert_eq!(last.stored_bytes, file.len() as u64);
    cps.push(last);
    (file, cps)
}

/// The stream hash of format version 2 up to `stored_bytes` of `file`, computed apart from the
/// reader: XXH3-64 of the data records' headers in order.
fn header_chain(file: &[u8], stored_bytes: u64) -> u64 {
    let mut headers = Vec::new();
    let mut at = HEADER_LEN;
    while at < stored_bytes as usize {
        let h = &file[at..at + RECORD_HEADER_LEN];
        let stored = u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize;
        if h[..4] == KIND_DATA {
            headers.extend_from_slice(h);
        }
        at += RECORD_HEADER_LEN + stored;
    }
    xxh3_64(&headers)
}

/// A small stripe of both kinds of data, with a checkpoint in the middle.
fn small_stripe(codec: Codec) -> (Vec<u8>, Vec<Checkpoint>, Vec<u8>) {
    let chunks = vec![pattern(300, 1), noise(200, 2), vec![9], pattern(1000, 3)];
    let (file, cps) = write_stripe(&chunks, &[false, true, false, false], codec);
    (file, cps, chunks.concat())
}

fn read_all(file: &[u8]) -> io::Result<Vec<u8>> {
    let mut reader = StripeReader::new(file).map_err(io::Error::from)?;
    let mut out = Vec::new();
    reader.read_to_end(&mut out)?;
    Ok(out)
}

/// Errors say what they mean in lowercase, without a trailing period.
fn assert_style(e: &StripeError) {
    let s = e.to_string();
    assert!(!s.is_empty());
    assert!(!s.starts_with(|c: char| c.is_uppercase()), "{s}");
    assert!(!s.ends_with('.'), "{s}");
}

fn codecs() -> [Codec; 3] {
    [
        Codec::Stored,
        Codec::Zstd { level: 1 },
        Codec::Zstd { level: 3 },
    ]
}

fn chunk_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..1500),
        (0usize..4000, any::<u8>()).prop_map(|(len, seed)| pattern(len, seed)),
        (any::<u8>(), 0usize..3000).prop_map(|(b, len)| vec![b; len]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(
        chunks in proptest::collection::vec(chunk_strategy(), 0..12),
        checkpoint_after in proptest::collection::vec(any::<bool>(), 12),
        codec in prop_oneof![
            Just(Codec::Stored),
            Just(Codec::Zstd { level: 1 }),
            Just(Codec::Zstd { level: 3 }),
            Just(Codec::Zstd { level: -5 }),
        ],
    ) {
        let (file, cps) = write_stripe(&chunks, &checkpoint_after, codec);
        let data = chunks.concat();
        let last = *cps.last().unwrap();
        prop_assert_eq!(last.raw_bytes, data.len() as u64);
        prop_assert_eq!(last.stream_hash, header_chain(&file, last.stored_bytes));
        prop_assert_eq!(last.data_records, chunks.iter().filter(|c| !c.is_empty()).count() as u64);
        prop_assert_eq!(last.checkpoints, cps.len() as u64);
        prop_assert_eq!(last.stored_bytes, file.len() as u64);

        // Through Read, from a slice.
        let mut reader = StripeReader::new(&file[..]).unwrap();
        prop_assert_eq!(reader.header(), &StripeHeader { flags: codec.header_flags(), ..header() });
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        prop_assert_eq!(&out, &data);
        prop_assert_eq!(reader.end(), Some(&last));
        prop_assert_eq!(reader.finish().unwrap(), last);

        // Record by record: one record per non-empty chunk.
        let mut reader = StripeReader::new(&file[..]).unwrap();
        let mut records = Vec::new();
        while let Some(chunk) = reader.read_chunk().unwrap() {
            records.push(chunk.to_vec());
        }
        let expected_records: Vec<_> = chunks.iter().filter(|c| !c.is_empty()).cloned().collect();
        prop_assert_eq!(records, expected_records);
        prop_assert_eq!(reader.finish().unwrap(), last);

        // Through a reader that gives a byte at a time and is interrupted in between.
        let mut reader = StripeReader::new(Dribble::new(&file)).unwrap();
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        prop_assert_eq!(&out, &data);

        prop_assert_eq!(verify(&file[..]).unwrap(), last);
        prop_assert_eq!(verify_expected(&file[..], last).unwrap(), last);

        // Every checkpoint is an end: of the file cut there, or of the whole file when expected.
        for cp in &cps {
            let prefix = &data[..cp.raw_bytes as usize];
            prop_assert_eq!(verify(&file[..cp.stored_bytes as usize]).unwrap(), *cp);
            let mut reader = StripeReader::with_expected(&file[..], *cp).unwrap();
            let mut out = Vec::new();
            reader.read_to_end(&mut out).unwrap();
            prop_assert_eq!(&out[..], prefix);
            prop_assert_eq!(cp.stream_hash, header_chain(&file, cp.stored_bytes));
            prop_assert_eq!(reader.finish().unwrap(), *cp);
        }
    }
}

/// A reader that yields one byte per call and an `Interrupted` error before every other byte.
struct Dribble<'a> {
    data: &'a [u8],
    interrupt: bool,
}

impl<'a> Dribble<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            interrupt: true,
        }
    }
}

impl Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.interrupt = !self.interrupt;
        if self.interrupt {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(self.data.len()).min(1);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn compressible_data_is_compressed_and_incompressible_is_stored() {
    let (file, cps) = write_stripe(&[vec![0; 100_000]], &[], Codec::Zstd { level: 3 });
    assert!(file.len() < 1000, "{}", file.len());
    assert_eq!(cps[0].raw_bytes, 100_000);

    let data = noise(100_000, 5);
    let (file, _) = write_stripe(std::slice::from_ref(&data), &[], Codec::Zstd { level: 3 });
    let overhead = HEADER_LEN + RECORD_HEADER_LEN + CHECKPOINT_RECORD_LEN;
    assert_eq!(file.len(), data.len() + overhead);
    assert_eq!(file[HEADER_LEN + 12], CODEC_STORED);
    assert_eq!(read_all(&file).unwrap(), data);
}

#[test]
fn empty_chunks_write_nothing_and_an_empty_stripe_verifies() {
    let mut w = StripeWriter::new(Vec::new(), header(), Codec::Zstd { level: 3 }).unwrap();
    w.write_chunk(&[]).unwrap();
    assert_eq!(w.totals().data_records, 0);
    let (file, cp) = w.finish().unwrap();
    assert_eq!(file.len(), HEADER_LEN + CHECKPOINT_RECORD_LEN);
    let expected = Checkpoint {
        raw_bytes: 0,
        data_records: 0,
        stored_bytes: file.len() as u64,
        checkpoints: 1,
        stream_hash: EMPTY_STREAM_HASH,
    };
    assert_eq!(cp, expected);
    assert_eq!(verify(&file[..]).unwrap(), expected);
    assert_eq!(read_all(&file).unwrap(), Vec::<u8>::new());
}

/// Flipping bits of any single byte of a stripe is detected: with and without expected
/// totals, through `verify` and through `Read`.
#[test]
fn every_single_byte_corruption_is_detected() {
    for codec in codecs() {
        let (file, cps, _) = small_stripe(codec);
        let last = *cps.last().unwrap();
        for offset in 0..file.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bad = file.clone();
                bad[offset] ^= mask;
                let e = verify(&bad[..]).expect_err(&format!("{codec:?}: offset {offset}"));
                assert_style(&e);
                let e = verify_expected(&bad[..], last).expect_err("with expected totals");
                assert_style(&e);
                assert!(
                    read_all(&bad).is_err(),
                    "{codec:?}: offset {offset} mask {mask}"
                );
            }
        }
    }
}

/// Every cut of a stripe is a truncation error, except exactly after a checkpoint without
/// expected totals, where the stripe ends at that checkpoint.
#[test]
fn every_truncation_is_detected() {
    for codec in codecs() {
        let (file, cps, _) = small_stripe(codec);
        let last = *cps.last().unwrap();
        for len in 0..=file.len() {
            let cut = &file[..len];
            match cps.iter().find(|cp| cp.stored_bytes == len as u64) {
                Some(cp) => assert_eq!(verify(cut).unwrap(), *cp),
                None => {
                    let e = verify(cut).expect_err(&format!("{codec:?}: length {len}"));
                    assert!(e.is_truncation(), "length {len}: {e}");
                    assert_style(&e);
                    let e = io::Error::from(e);
                    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
                    let e = read_all(cut).unwrap_err();
                    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
                }
            }
            if len < file.len() {
                let e = verify_expected(cut, last).unwrap_err();
                assert!(e.is_truncation(), "length {len} with expected totals: {e}");
            }
        }
    }
}

#[test]
fn truncation_names_the_data_and_the_last_checkpoint() {
    let (file, cps, _) = small_stripe(Codec::Stored);
    let mid = cps[0];
    let cut = &file[..mid.stored_bytes as usize + 40];
    let e = verify(cut).unwrap_err();
    match &e {
        StripeError::Truncated {
            file_bytes,
            raw_bytes,
            last_checkpoint,
            expected: None,
            ..
        } => {
            assert_eq!(*file_bytes, mid.stored_bytes + 40);
            // The 1-byte record after the checkpoint is whole; the next one is cut.
            assert_eq!(*raw_bytes, mid.raw_bytes + 1);
            assert_eq!(*last_checkpoint, Some(mid));
        }
        other => panic!("{other}"),
    }
    let s = e.to_string();
    assert!(
        s.contains("truncated after 501 bytes of data in 3 data records"),
        "{s}"
    );
    assert!(
        s.contains(&format!("ends at offset {}", mid.stored_bytes)),
        "{s}"
    );

    let e = verify(&file[..HEADER_LEN]).unwrap_err();
    assert!(e.to_string().contains("no checkpoint"), "{e}");
    assert!(matches!(
        verify(&file[..10]).unwrap_err(),
        StripeError::TruncatedHeader { found: 10 }
    ));
    assert_eq!(
        verify(&[][..]).unwrap_err().to_string(),
        "empty input: no stripe header"
    );
}

/// With expected totals, what follows their checkpoint is never read: trailing garbage, or
/// records written after it.
#[test]
fn expected_totals_end_the_stripe_at_their_checkpoint() {
    for codec in codecs() {
        let (file, cps, data) = small_stripe(codec);
        let (mid, last) = (cps[0], cps[1]);

        let mut garbage = file.clone();
        garbage.extend_from_slice(&noise(1000, 9));
        assert_eq!(verify_expected(&garbage[..], last).unwrap(), last);
        assert!(verify(&garbage[..]).is_err());

        // Only the data up to the middle checkpoint, although the file goes on.
        let mut reader = StripeReader::with_expected(&garbage[..], mid).unwrap();
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        assert_eq!(out, data[..mid.raw_bytes as usize]);
        let rest = reader.into_inner();
        assert_eq!(rest.len(), garbage.len() - mid.stored_bytes as usize);

        // Shorter than expected.
        let e = verify_expected(&file[..mid.stored_bytes as usize], last).unwrap_err();
        assert!(e.is_truncation(), "{e}");
        assert!(e.to_string().contains("expected checkpoint 2"), "{e}");
    }
}

#[test]
fn expected_totals_that_differ_are_errors() {
    let (file, cps, _) = small_stripe(Codec::Zstd { level: 3 });
    let last = cps[1];

    // The right checkpoint, the wrong hash.
    let wrong = Checkpoint {
        stream_hash: last.stream_hash ^ 1,
        ..last
    };
    let e = verify_expected(&file[..], wrong).unwrap_err();
    assert!(
        matches!(
            e,
            StripeError::Record {
                at: Position::Checkpoint { checkpoint: 2, .. },
                error: RecordError::ManifestMismatch {
                    field: TotalsField::StreamHash,
                    ..
                },
            }
        ),
        "{e}"
    );
    assert_style(&e);

    // Less data than the first record holds: refused before the record is yielded.
    let small = Checkpoint {
        raw_bytes: 10,
        ..last
    };
    let mut reader = StripeReader::with_expected(&file[..], small).unwrap();
    let e = reader.read_chunk().unwrap_err();
    assert!(
        matches!(
            e,
            StripeError::Record {
                at: Position::Record { record: 0, .. },
                error: RecordError::BeyondExpected {
                    field: TotalsField::RawBytes,
                    expected: 10,
                    found: 300,
                },
            }
        ),
        "{e}"
    );

    // A checkpoint count the stripe passes without matching.
    let early = Checkpoint {
        checkpoints: 1,
        ..last
    };
    let e = verify_expected(&file[..], early).unwrap_err();
    assert!(
        matches!(
            e,
            StripeError::Record {
                error: RecordError::ManifestMismatch { .. },
                ..
            }
        ),
        "{e}"
    );
}

/// Records moved, repeated or dropped, each intact, are caught at the next checkpoint.
#[test]
fn reordered_records_fail_at_the_checkpoint() {
    let chunks = vec![vec![1u8; 100], vec![2u8; 100], vec![3u8; 100]];
    let (file, _) = write_stripe(&chunks, &[], Codec::Stored);
    let rec = RECORD_HEADER_LEN + 100;
    let r = |i: usize| &file[HEADER_LEN + i * rec..HEADER_LEN + (i + 1) * rec];
    let tail = &file[HEADER_LEN + 3 * rec..];

    let swapped = [&file[..HEADER_LEN], r(1), r(0), r(2), tail].concat();
    let e = verify(&swapped[..]).unwrap_err();
    assert!(
        matches!(
            e,
            StripeError::Record {
                error: RecordError::CheckpointMismatch {
                    field: TotalsField::StreamHash,
                    ..
                },
                ..
            }
        ),
        "{e}"
    );
    let repeated = [&file[..HEADER_LEN], r(0), r(1), r(1), r(2), tail].concat();
    let e = verify(&repeated[..]).unwrap_err();
    assert!(
        matches!(
            e,
            StripeError::Record {
                error: RecordError::CheckpointMismatch {
                    field: TotalsField::RawBytes,
                    recorded: 300,
                    computed: 400,
                },
                ..
            }
        ),
        "{e}"
    );
    let dropped = [&file[..HEADER_LEN], r(0), r(2), tail].concat();
    assert!(verify(&dropped[..]).is_err());
}

/// A stripe with one data record made by hand (valid header checksum).
fn with_record(kind: [u8; 4], raw_len: usize, codec: u8, payload: &[u8]) -> Vec<u8> {
    let mut file = zstd_header().encode().to_vec();
    file.extend_from_slice(&record_header(
        kind,
        raw_len,
        payload.len(),
        codec,
        xxh3_64(payload),
    ));
    file.extend_from_slice(payload);
    file
}

/// Appends a checkpoint record of `totals`, made by hand (valid checksums).
fn push_checkpoint(file: &mut Vec<u8>, totals: &Checkpoint) {
    let body = totals.encode_body();
    file.extend_from_slice(&record_header(
        KIND_CHECKPOINT,
        CHECKPOINT_BODY_LEN,
        CHECKPOINT_BODY_LEN,
        CODEC_STORED,
        xxh3_64(&body),
    ));
    file.extend_from_slice(&body);
}

fn first_error(file: &[u8]) -> StripeError {
    let mut reader = StripeReader::new(file).unwrap();
    let e = reader.read_chunk().unwrap_err();
    assert_style(&e);
    e
}

/// A data record header with a valid checksum claiming 60 MiB, followed by 10 bytes: the
/// reader fails as truncated without having allocated anything near 60 MiB.
#[test]
fn claimed_length_is_not_allocated() {
    let mut file = header().encode().to_vec();
    let len = 60 << 20;
    file.extend_from_slice(&record_header(KIND_DATA, len, len, CODEC_STORED, 0));
    file.extend_from_slice(&[1; 10]);
    let mut reader = StripeReader::new(&file[..]).unwrap();
    let err = reader.read_chunk().unwrap_err();
    assert!(matches!(err, StripeError::Truncated { .. }), "{err}");
    assert!(
        reader.buf.capacity() <= 2 * GROW_STEP,
        "{}",
        reader.buf.capacity()
    );
}

/// Over the limit: refused from the header alone, nothing allocated.
#[test]
fn huge_claimed_length_is_refused() {
    let mut file = header().encode().to_vec();
    let huge = u32::MAX as usize;
    file.extend_from_slice(&record_header(KIND_DATA, huge, huge, CODEC_STORED, 0));
    let mut reader = StripeReader::new(&file[..]).unwrap();
    let e = reader.read_chunk().unwrap_err();
    assert!(
        matches!(
            e,
            StripeError::Record {
                at: Position::Record {
                    record: 0,
                    offset: 64,
                },
                error: RecordError::TooLarge {
                    raw_len: u32::MAX,
                    ..
                },
            }
        ),
        "{e}"
    );
    assert_eq!(reader.buf.capacity(), 0);
    assert_eq!(reader.stored.capacity(), 0);
    // The reader stays failed.
    assert!(matches!(
        reader.read_chunk().unwrap_err(),
        StripeError::Failed { .. }
    ));
    let e = io::Error::from(StripeError::Failed { offset: 1 });
    assert_eq!(e.kind(), io::ErrorKind::Other);

    // A zstd record claiming the maximum with a tiny payload allocates nothing before its
    // payload is checked.
    let mut file = zstd_header().encode().to_vec();
    file.extend_from_slice(&record_header(KIND_DATA, MAX_RECORD_LEN, 5, CODEC_ZSTD, 0));
    file.extend_from_slice(&[0; 5]);
    let mut reader = StripeReader::new(&file[..]).unwrap();
    let e = reader.read_chunk().unwrap_err();
    assert!(
        matches!(
            e,
            StripeError::Record {
                error: RecordError::PayloadChecksum { .. },
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(reader.buf.capacity(), 0);
}

#[test]
fn hostile_record_headers_are_refused() {
    let e = first_error(&with_record(*b"JUNK", 3, CODEC_STORED, b"abc"));
    assert!(
        matches!(
            &e,
            StripeError::Record {
                error: RecordError::UnknownKind { found },
                ..
            } if found == b"JUNK"
        ),
        "{e}"
    );
    let e = first_error(&with_record(KIND_DATA, 3, 7, b"abc"));
    assert!(
        matches!(
            e,
            StripeError::Record {
                error: RecordError::UnknownCodec { found: 7 },
                ..
            }
        ),
        "{e}"
    );
    // Stored with two lengths.
    let e = first_error(&with_record(KIND_DATA, 4, CODEC_STORED, b"abc"));
    assert!(
        matches!(
            e,
            StripeError::Record {
                error: RecordError::InvalidHeader { .. },
                ..
            }
        ),
        "{e}"
    );
    // Zstd that does not shrink.
    let e = first_error(&with_record(KIND_DATA, 3, CODEC_ZSTD, b"abc"));
    assert!(
        matches!(
            e,
            StripeError::Record {
                error: RecordError::InvalidHeader { .. },
                ..
            }
        ),
        "{e}"
    );
    // Empty data record.
    let e = first_error(&with_record(KIND_DATA, 0, CODEC_STORED, b""));
    assert!(
        matches!(
            e,
            StripeError::Record {
                error: RecordError::InvalidHeader { .. },
                ..
            }
        ),
        "{e}"
    );
    // Checkpoint of the wrong size.
    let e = first_error(&with_record(KIND_CHECKPOINT, 3, CODEC_STORED, b"abc"));
    assert!(
        matches!(
            e,
            StripeError::Record {
                error: RecordError::InvalidHeader { .. },
                ..
            }
        ),
        "{e}"
    );
    // Reserved bytes set (checksum recomputed).
    let mut file = with_record(KIND_DATA, 3, CODEC_STORED, b"abc");
    file[HEADER_LEN + 14] = 1;
    let sum = xxh3_64(&file[HEADER_LEN..HEADER_LEN + 24]);
    file[HEADER_LEN + 24..HEADER_LEN + 32].copy_from_slice(&sum.to_le_bytes());
    let e = first_error(&file);
    assert!(e.to_string().contains("reserved bytes 13..16"), "{e}");
    // A checkpoint that lies about the data (its own checksums valid).
    let body = Checkpoint {
        raw_bytes: 5,
        data_records: 0,
        stored_bytes: (HEADER_LEN + CHECKPOINT_RECORD_LEN) as u64,
        checkpoints: 1,
        stream_hash: EMPTY_STREAM_HASH,
    }
    .encode_body();
    let file = with_record(KIND_CHECKPOINT, CHECKPOINT_BODY_LEN, CODEC_STORED, &body);
    let e = verify(&file[..]).unwrap_err();
    assert!(
        matches!(
            e,
            StripeError::Record {
                at: Position::Checkpoint {
                    checkpoint: 1,
                    offset: 64,
                },
                error: RecordError::CheckpointMismatch {
                    field: TotalsField::RawBytes,
                    recorded: 5,
                    computed: 0,
                },
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "checkpoint 1 at offset 64: records raw bytes 5, but the stream read so far has 0"
    );
}

#[test]
fn bad_zstd_payloads_with_valid_checksums_are_errors() {
    // Not zstd at all.
    let e = first_error(&with_record(KIND_DATA, 100, CODEC_ZSTD, &[0xaa; 20]));
    assert!(
        matches!(
            e,
            StripeError::Record {
                error: RecordError::Decompress { .. } | RecordError::DecompressedLength { .. },
                ..
            }
        ),
        "{e}"
    );
    // A real frame of 100 bytes, declared as 200: refused from the frame's size.
    let frame = zstd::bulk::compress(&[4; 100], 3).unwrap();
    let e = first_error(&with_record(KIND_DATA, 200, CODEC_ZSTD, &frame));
    assert!(
        matches!(
            e,
            StripeError::Record {
                error: RecordError::DecompressedLength {
                    expected: 200,
                    found: 100,
                },
                ..
            }
        ),
        "{e}"
    );
    // Declared as 50: too small for the frame.
    let e = first_error(&with_record(KIND_DATA, 50, CODEC_ZSTD, &frame[..]));
    assert!(
        matches!(
            e,
            StripeError::Record {
                error: RecordError::DecompressedLength { .. } | RecordError::InvalidHeader { .. },
                ..
            }
        ),
        "{e}"
    );
    // A frame that does not record its size: decompressed, then the length is checked.
    let mut c = Compressor::new(3).unwrap();
    c.include_contentsize(false).unwrap();
    let frame = c.compress(&[4; 1000]).unwrap();
    assert!(frame.len() < 500);
    let e = first_error(&with_record(KIND_DATA, 999, CODEC_ZSTD, &frame));
    assert!(
        matches!(
            e,
            StripeError::Record {
                error: RecordError::Decompress { .. } | RecordError::DecompressedLength { .. },
                ..
            }
        ),
        "{e}"
    );
    let e = first_error(&with_record(KIND_DATA, 1001, CODEC_ZSTD, &frame));
    assert!(
        matches!(
            e,
            StripeError::Record {
                error: RecordError::DecompressedLength { found: 1000, .. },
                ..
            }
        ),
        "{e}"
    );
    // The same frame with the right length is fine.
    let mut ok = with_record(KIND_DATA, 1000, CODEC_ZSTD, &frame);
    let mut r = StripeReader::new(&ok[..]).unwrap();
    assert_eq!(r.read_chunk().unwrap().unwrap(), &[4; 1000]);
    let totals = Checkpoint {
        raw_bytes: 1000,
        data_records: 1,
        stored_bytes: ok.len() as u64 + CHECKPOINT_RECORD_LEN as u64,
        checkpoints: 1,
        stream_hash: xxh3_64(&ok[HEADER_LEN..HEADER_LEN + RECORD_HEADER_LEN]),
    };
    push_checkpoint(&mut ok, &totals);
    assert_eq!(verify(&ok[..]).unwrap().raw_bytes, 1000);
}

#[test]
fn file_headers_are_checked() {
    let good = header().encode();
    assert_eq!(StripeHeader::decode(&good).unwrap(), header());

    let mut bad = good;
    bad[0] = b'X';
    let e = StripeHeader::decode(&bad).unwrap_err();
    assert!(matches!(e, StripeError::BadMagic { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "not a stripe file: magic is \"XDISTRIP\", expected \"VDISTRIP\""
    );

    let mut bad = good;
    bad[8] = 3;
    let e = StripeHeader::decode(&bad).unwrap_err();
    assert!(
        matches!(e, StripeError::UnsupportedVersion { found: 3 }),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "unsupported stripe format version 3 (this build reads versions 1 to 2)"
    );

    let mut bad = good;
    bad[20] ^= 1;
    let e = StripeHeader::decode(&bad).unwrap_err();
    assert!(matches!(e, StripeError::HeaderChecksum { .. }), "{e}");

    // Out of range, each with its checksum made valid.
    type Change = fn(&mut StripeHeader);
    let cases: [(Change, &str); 7] = [
        (|h| h.index = 3, "stripe index"),
        (|h| h.count = 0, "stripe count"),
        (|h| h.count = 65, "stripe count"),
        (|h| h.block_size = 1000, "block size"),
        (|h| h.max_transfer_size = 1000, "max transfer size"),
        (|h| h.max_transfer_size = 8 << 20, "max transfer size"),
        (|h| h.flags = 2, "flags"),
    ];
    for (change, name) in cases {
        let mut h = header();
        change(&mut h);
        let e = StripeHeader::decode(&h.encode()).unwrap_err();
        assert!(
            matches!(e, StripeError::InvalidHeader { field, .. } if field == name),
            "{e}"
        );
        assert_style(&e);
        let e = StripeWriter::new(Vec::new(), h, Codec::Stored).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
    let e = StripeWriter::new(Vec::new(), header(), Codec::Zstd { level: 1000 }).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);

    // Through the reader, as an io::Error that keeps the StripeError.
    let mut file = [0u8; 100];
    file[..8].copy_from_slice(b"NOTASTRP");
    let e = io::Error::from(StripeReader::new(&file[..]).unwrap_err());
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    let inner = e.into_inner().unwrap().downcast::<StripeError>().unwrap();
    assert!(matches!(*inner, StripeError::BadMagic { .. }));
}

#[test]
fn read_errors_surface_as_io_errors_that_downcast() {
    let (file, _, _) = small_stripe(Codec::Stored);
    let mut bad = file.clone();
    bad[HEADER_LEN + RECORD_HEADER_LEN + 5] ^= 1;
    let mut reader = StripeReader::new(&bad[..]).unwrap();
    let mut out = Vec::new();
    let e = reader.read_to_end(&mut out).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(out.is_empty(), "nothing of a bad record is yielded");
    let inner = e.get_ref().unwrap().downcast_ref::<StripeError>().unwrap();
    assert!(
        matches!(
            inner,
            StripeError::Record {
                at: Position::Record {
                    offset: 64,
                    record: 0,
                },
                error: RecordError::PayloadChecksum { .. },
            }
        ),
        "{inner}"
    );
    // Later calls fail too.
    let e = reader.read(&mut [0; 10]).unwrap_err();
    let inner = e.get_ref().unwrap().downcast_ref::<StripeError>().unwrap();
    assert!(matches!(inner, StripeError::Failed { .. }), "{inner}");

    // An error of the inner reader keeps its kind.
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::PermissionDenied.into())
        }
    }
    let e = StripeReader::new(Broken).unwrap_err();
    assert!(matches!(e, StripeError::Io { offset: 0, .. }), "{e}");
    assert_eq!(io::Error::from(e).kind(), io::ErrorKind::PermissionDenied);
}

/// A writer that takes at most 7 bytes per call, is interrupted now and then, and can be made
/// to fail after a number of bytes.
struct Stingy {
    out: Vec<u8>,
    calls: usize,
    fail_after: Option<usize>,
    flushes: usize,
}

impl Stingy {
    fn new(fail_after: Option<usize>) -> Self {
        Self {
            out: Vec::new(),
            calls: 0,
            fail_after,
            flushes: 0,
        }
    }
}

impl Write for Stingy {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.calls.is_multiple_of(5) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let mut n = buf.len().min(7);
        if let Some(limit) = self.fail_after {
            if self.out.len() >= limit {
                return Err(io::Error::other("disk full"));
            }
            n = n.min(limit - self.out.len());
        }
        self.out.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flushes += 1;
        Ok(())
    }
}

#[test]
fn partial_writes_give_the_same_file() {
    let chunks = [pattern(5000, 1), noise(3000, 2), vec![1, 2, 3]];
    for codec in codecs() {
        let (expected, _) = write_stripe(&chunks, &[true, false, true], codec);
        let mut w = StripeWriter::new(Stingy::new(None), header(), codec).unwrap();
        w.write_chunk(&chunks[0]).unwrap();
        w.checkpoint().unwrap();
        w.write_chunk(&chunks[1]).unwrap();
        w.write_chunk(&chunks[2]).unwrap();
        w.checkpoint().unwrap();
        let (out, _) = w.finish().unwrap();
        assert_eq!(out.out, expected);
        assert_eq!(out.flushes, 3);
    }
}

#[test]
fn a_failed_writer_refuses_more_and_its_file_ends_at_the_last_checkpoint() {
    let data = noise(10_000, 4);
    let mut w = StripeWriter::new(Stingy::new(Some(6000)), header(), Codec::Stored).unwrap();
    w.write_chunk(&data[..1000]).unwrap();
    let cp = w.checkpoint().unwrap();
    assert!(w.write_chunk(&data[1000..]).is_err());
    assert!(w.write_chunk(&data[..10]).is_err());
    assert!(w.checkpoint().is_err());
    let out = w.into_inner().out;
    let e = verify(&out[..]).unwrap_err();
    match e {
        StripeError::Truncated {
            last_checkpoint, ..
        } => assert_eq!(last_checkpoint, Some(cp)),
        other => panic!("{other}"),
    }
    assert_eq!(verify(&out[..cp.stored_bytes as usize]).unwrap(), cp);
}

/// After warm-up, writing compressed records does not reallocate the scratch buffer.
#[test]
fn compression_scratch_is_reused() {
    let mut w = StripeWriter::new(Vec::new(), header(), Codec::Zstd { level: 1 }).unwrap();
    w.write_chunk(&[5; 65536]).unwrap();
    let cap = w.scratch.capacity();
    let ptr = w.scratch.as_ptr();
    for i in 0..10u8 {
        w.write_chunk(&pattern(65536, i)).unwrap();
    }
    assert_eq!(w.scratch.capacity(), cap);
    assert_eq!(w.scratch.as_ptr(), ptr);
}

/// A `read` with room for a whole stored record gets it straight from the input, checked,
/// with nothing through the reader's buffer; a smaller one gets what fits straight, the rest
/// through the buffer; damage and truncation found on the direct path are the same errors.
#[test]
fn stored_records_are_read_straight_into_a_buffer_that_fits_them() {
    let chunks = [noise(1000, 1), noise(500, 2), noise(2000, 3)];
    let (file, cps) = write_stripe(&chunks, &[true], Codec::Stored);
    let mut reader = StripeReader::new(&file[..]).unwrap();
    let mut out = vec![0u8; 4096];
    for c in &chunks {
        assert_eq!(reader.read(&mut out).unwrap(), c.len());
        assert_eq!(out[..c.len()], c[..]);
    }
    assert_eq!(reader.read(&mut out).unwrap(), 0);
    assert_eq!(
        reader.buf.capacity(),
        0,
        "nothing went through the reader's buffer"
    );
    assert_eq!(reader.finish().unwrap(), *cps.last().unwrap());

    // Smaller than the first record: what fits goes straight in, only the rest through the
    // reader's buffer; then straight in again at the next record.
    let mut reader = StripeReader::new(&file[..]).unwrap();
    assert_eq!(reader.read(&mut out[..700]).unwrap(), 700);
    assert_eq!(out[..700], chunks[0][..700]);
    assert_eq!(
        reader.buf.len(),
        300,
        "only the rest went through the reader's buffer"
    );
    assert_eq!(reader.read(&mut out).unwrap(), 300);
    assert_eq!(out[..300], chunks[0][700..]);
    assert_eq!(reader.read(&mut out).unwrap(), 500);
    assert_eq!(out[..500], chunks[1][..]);

    // A changed byte in the second record's payload: the first is served, the second fails.
    let second_payload = HEADER_LEN + RECORD_HEADER_LEN + 1000 + RECORD_HEADER_LEN;
    let mut bad = file.clone();
    bad[second_payload + 17] ^= 0x40;
    let mut reader = StripeReader::new(&bad[..]).unwrap();
    assert_eq!(reader.read(&mut out).unwrap(), 1000);
    let e = reader.read(&mut out).unwrap_err();
    let e = e
        .get_ref()
        .and_then(|e| e.downcast_ref::<StripeError>())
        .unwrap();
    assert!(
        matches!(
            e,
            StripeError::Record {
                error: RecordError::PayloadChecksum { .. },
                ..
            }
        ),
        "{e}"
    );
    assert!(reader.read(&mut out).is_err(), "the reader stays failed");

    // Cut in the middle of the second record's payload.
    let cut = &file[..second_payload + 100];
    let mut reader = StripeReader::new(cut).unwrap();
    assert_eq!(reader.read(&mut out).unwrap(), 1000);
    let e = reader.read(&mut out).unwrap_err();
    let e = e
        .get_ref()
        .and_then(|e| e.downcast_ref::<StripeError>())
        .unwrap();
    assert!(matches!(e, StripeError::Truncated { .. }), "{e}");
}

/// A stripe of format version 1, whose stream hash is of the raw data, as this module wrote
/// it before version 2: still read and checked, by direct and buffered reads alike; a stream
/// hash of the version 2 kind in it is a mismatch.
#[test]
fn format_version_1_is_still_read() {
    let chunks = [noise(1000, 1), pattern(3000, 2)];
    let v1 = |stream_hash: u64| {
        let mut file = header().encode();
        file[8..10].copy_from_slice(&FORMAT_VERSION_1.to_le_bytes());
        let sum = xxh3_64(&file[..56]);
        file[56..64].copy_from_slice(&sum.to_le_bytes());
        let mut file = file.to_vec();
        for c in &chunks {
            file.extend_from_slice(&record_header(
                KIND_DATA,
                c.len(),
                c.len(),
                CODEC_STORED,
                xxh3_64(c),
            ));
            file.extend_from_slice(c);
        }
        let totals = Checkpoint {
            raw_bytes: 4000,
            data_records: 2,
            stored_bytes: (file.len() + CHECKPOINT_RECORD_LEN) as u64,
            checkpoints: 1,
            stream_hash,
        };
        push_checkpoint(&mut file, &totals);
        (file, totals)
    };
    let (file, totals) = v1(xxh3_64(&chunks.concat()));
    assert_eq!(verify(&file[..]).unwrap(), totals);
    assert_eq!(read_all(&file).unwrap(), chunks.concat());
    let mut reader = StripeReader::new(&file[..]).unwrap();
    let mut small = [0u8; 100];
    reader.read_exact(&mut small).unwrap();
    assert_eq!(reader.finish().unwrap(), totals);

    // The same records with the stream hash version 2 would have: wrong for version 1.
    let (v2_hash, _) = v1(0);
    let (bad, _) = v1(header_chain(&v2_hash, v2_hash.len() as u64));
    let e = verify(&bad[..]).unwrap_err();
    assert!(
        matches!(
            e,
            StripeError::Record {
                error: RecordError::CheckpointMismatch {
                    field: TotalsField::StreamHash,
                    ..
                },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn read_chunk_and_read_mix() {
    let chunks = [pattern(1000, 1), noise(500, 2)];
    let (file, _) = write_stripe(&chunks, &[], Codec::Zstd { level: 3 });
    let mut reader = StripeReader::new(&file[..]).unwrap();
    let mut first = [0u8; 100];
    reader.read_exact(&mut first).unwrap();
    assert_eq!(first[..], chunks[0][..100]);
    assert_eq!(reader.read_chunk().unwrap().unwrap(), &chunks[0][100..]);
    assert_eq!(reader.read_chunk().unwrap().unwrap(), &chunks[1][..]);
    assert!(reader.read_chunk().unwrap().is_none());
    assert_eq!(reader.read(&mut first).unwrap(), 0);
    assert!(format!("{reader:?}").contains("StripeReader"));
}

#[test]
fn the_start_totals() {
    assert_eq!(EMPTY_STREAM_HASH, xxh3_64(&[]));
    let w = StripeWriter::new(Vec::new(), header(), Codec::Stored).unwrap();
    assert_eq!(w.totals(), Checkpoint::START);
    let file = w.into_inner();
    // Without expectations a header alone is truncated; expecting the start, it is complete,
    // and whatever follows is not read.
    assert!(verify(&file[..]).unwrap_err().is_truncation());
    assert_eq!(
        verify_expected(&file[..], Checkpoint::START).unwrap(),
        Checkpoint::START
    );
    let (file, _, _) = small_stripe(Codec::Stored);
    let mut reader = StripeReader::with_expected(&file[..], Checkpoint::START).unwrap();
    assert!(reader.read_chunk().unwrap().is_none());
    assert_eq!(reader.end(), Some(&Checkpoint::START));
    assert!(verify_expected(&file[..10], Checkpoint::START).is_err());
}

#[test]
fn readers_and_writers_can_move_to_other_threads() {
    fn send<T: Send>() {}
    send::<StripeWriter<std::fs::File>>();
    send::<StripeReader<std::fs::File>>();
}

#[test]
fn a_zstd_record_in_a_stored_stripe_is_refused() {
    let mut w = StripeWriter::new(Vec::new(), header(), Codec::Zstd { level: 3 }).unwrap();
    assert_eq!(w.header().flags, FLAG_ZSTD, "the writer records its codec");
    w.write_chunk(&[0; 10_000]).unwrap();
    let (mut file, _) = w.finish().unwrap();
    // The same file with the header claiming a stored stripe (its checksum made valid).
    file[..HEADER_LEN].copy_from_slice(&header().encode());
    let e = first_error(&file);
    assert!(
        e.to_string()
            .contains("zstd data record in a stripe whose header says its records are stored raw"),
        "{e}"
    );
    // And a stored writer never sets the flag, whatever the header said.
    let w = StripeWriter::new(Vec::new(), zstd_header(), Codec::Stored).unwrap();
    assert_eq!(w.header().flags, 0);
}
