//! Tests of the manifest: its JSON both ways, and every way a manifest can be refused (storing
//! it in a directory is tested with the agent's directory store).

use std::fs::{self, File};
use std::io;

use super::*;
use crate::stripe::{self, StripeReader, StripeWriter};

/// A backup of `n` stripes written to `dir` for real, and its manifest (not stored).
fn backup(dir: &Path, n: u32, codec: Codec) -> Manifest {
    let mut manifest = Manifest {
        format_version: MANIFEST_VERSION,
        tool: Tool::current(),
        backup_id: 0xfeed_beef_0000_1111_2222_3333_4444_5555,
        created: 1_700_000_000,
        set_name: "nightly".into(),
        device_count: n,
        block_size: 65536,
        max_transfer_size: 4 << 20,
        vdi_features: 1,
        codec,
        state: ManifestState::Flushed,
        stripes: Vec::new(),
        finished: None,
        end: None,
        engine_line: None,
        reason: None,
        uploads: Vec::new(),
    };
    for i in 0..n {
        let mut w = StripeWriter::new(Vec::new(), manifest.stripe_header(i), codec).unwrap();
        w.write_chunk(&vec![i as u8; 5000 + i as usize]).unwrap();
        w.checkpoint().unwrap();
        w.write_chunk(&[1, 2, 3]).unwrap();
        let (file, cp) = w.finish().unwrap();
        let entry = StripeEntry::from_checkpoint(i, &cp);
        fs::write(dir.join(&entry.file), file).unwrap();
        manifest.stripes.push(entry);
    }
    manifest
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Parses `json` as a manifest file's bytes.
fn load_json(json: &str) -> Result<Manifest, ManifestError> {
    Manifest::from_json(json.as_bytes(), Path::new(MANIFEST_FILE))
}

/// `manifest` written and read back as its store does, in JSON.
fn round_trip(manifest: &Manifest) -> (Manifest, String) {
    let json = manifest.to_json().unwrap();
    let loaded = Manifest::from_json(&json, Path::new(MANIFEST_FILE)).unwrap();
    (loaded, String::from_utf8(json).unwrap())
}

fn assert_style(s: &str) {
    assert!(!s.starts_with(|c: char| c.is_uppercase()), "{s}");
    assert!(!s.ends_with('.'), "{s}");
}

#[test]
fn store_and_load_round_trip() {
    for codec in [Codec::Stored, Codec::Zstd { level: 3 }] {
        let dir = tempdir();
        let mut manifest = backup(dir.path(), 3, codec);
        manifest.state = ManifestState::Flushed;
        assert_eq!(round_trip(&manifest).0, manifest);

        // Stored again over the first.
        manifest.mark_complete(
            EndConfirmation::FinalFlush,
            1_700_000_100,
            Some("BACKUP DATABASE successfully processed".into()),
        );
        let (loaded, json) = round_trip(&manifest);
        assert_eq!(loaded, manifest);

        assert!(json.contains("\"backup_id\": \"feedbeef000011112222333344445555\""));
        assert!(json.contains("\"state\": \"complete\""));
        assert!(json.contains("\"end\": \"final-flush\""), "{json}");
        assert!(json.contains("\"finished\": 1700000100"), "{json}");
        assert!(json.contains("\"file\": \"stripe-02.vdis\""));
        assert!(json.ends_with("}\n"));
        if codec != Codec::Stored {
            assert!(json.contains("\"name\": \"zstd\""), "{json}");
            assert!(json.contains("\"level\": 3"), "{json}");
        }

        // Every stripe verifies against its entry, and its header belongs to the backup.
        for i in 0..3 {
            let path = loaded.stripe_path(dir.path(), i).unwrap();
            let entry = loaded.stripe(i).unwrap();
            let file = File::open(path).unwrap();
            let reader = StripeReader::with_expected(file, entry.expected()).unwrap();
            assert_eq!(loaded.check_stripe_header(reader.header()).unwrap(), entry);
            assert_eq!(reader.finish().unwrap(), entry.expected());
        }
    }
}

#[test]
fn states_and_codecs_in_json() {
    for (state, s) in [
        (ManifestState::InProgress, "\"in-progress\""),
        (ManifestState::Flushed, "\"flushed\""),
        (ManifestState::Complete, "\"complete\""),
        (ManifestState::Aborted, "\"aborted\""),
    ] {
        assert_eq!(serde_json::to_string(&state).unwrap(), s);
        assert_eq!(state.to_string(), s.trim_matches('"'));
    }
    assert_eq!(
        serde_json::to_string(&Codec::Stored).unwrap(),
        r#"{"name":"stored"}"#
    );
    assert_eq!(
        serde_json::from_str::<Codec>(r#"{"name":"zstd","level":-3}"#).unwrap(),
        Codec::Zstd { level: -3 }
    );
    assert!(serde_json::from_str::<Codec>(r#"{"name":"lz4"}"#).is_err());
    assert!(serde_json::from_str::<Codec>(r#"{"name":"zstd"}"#).is_err());
}

#[test]
fn bad_json_is_refused() {
    let e = load_json("{not json").unwrap_err();
    assert!(matches!(e, ManifestError::Json { .. }), "{e}");
    let s = e.to_string();
    assert!(s.starts_with("bad JSON in "), "{s}");
    assert!(s.contains("line 1"), "{s}");
    let e = io::Error::from(e);
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(
        e.get_ref()
            .unwrap()
            .downcast_ref::<ManifestError>()
            .is_some()
    );

    assert!(matches!(
        load_json("").unwrap_err(),
        ManifestError::Json { .. }
    ));
    assert!(matches!(
        load_json("[]").unwrap_err(),
        ManifestError::Json { .. }
    ));
}

fn good_json() -> String {
    let dir = tempdir();
    let m = backup(dir.path(), 2, Codec::Zstd { level: 3 });
    serde_json::to_string_pretty(&m).unwrap()
}

#[test]
fn versions_fields_and_hex_are_checked() {
    let json = good_json();
    assert!(load_json(&json).is_ok());

    let e = load_json(&json.replace("\"format_version\": 2", "\"format_version\": 1")).unwrap_err();
    assert!(
        matches!(e, ManifestError::UnsupportedVersion { found: 1, .. }),
        "{e}"
    );
    let e = load_json(&json.replace("\"format_version\": 2", "\"format_version\": 3")).unwrap_err();
    assert!(
        matches!(e, ManifestError::UnsupportedVersion { found: 3, .. }),
        "{e}"
    );
    assert_style(&e.to_string());

    let e = load_json(&json.replace("\"set_name\"", "\"extra\": 1, \"set_name\"")).unwrap_err();
    assert!(matches!(e, ManifestError::Json { .. }), "{e}");

    let e = load_json(&json.replace("\"set_name\": \"nightly\",", "")).unwrap_err();
    assert!(matches!(e, ManifestError::Json { .. }), "{e}");

    for bad in [
        "\"xyz\"",
        "\"feedbeef00001111222233334444555\"",
        "\"+eedbeef000011112222333344445555\"",
        "\"feedbeef0000111122223333444455555\"",
        "12",
    ] {
        let changed = json.replace("\"feedbeef000011112222333344445555\"", bad);
        let e = load_json(&changed).unwrap_err();
        assert!(matches!(e, ManifestError::Json { .. }), "{bad}: {e}");
    }
    // Upper case hex is read.
    let upper = json.replace(
        "\"feedbeef000011112222333344445555\"",
        "\"FEEDBEEF000011112222333344445555\"",
    );
    assert!(load_json(&upper).is_ok());

    let mut m: Manifest = serde_json::from_str(&json).unwrap();
    m.stripes[0].stream_xxh3 = 0x1234;
    let s = serde_json::to_string(&m).unwrap();
    assert!(s.contains("\"stream_xxh3\":\"0000000000001234\""), "{s}");
    let long = s.replace("\"0000000000001234\"", "\"00000000000012340\"");
    assert!(load_json(&long).is_err());
}

fn problem(m: &Manifest) -> ManifestProblem {
    let p = m.validate().unwrap_err();
    assert_style(&p.to_string());
    // to_json refuses it, and from_json refuses it as written by another program.
    let e = m.to_json().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    match Manifest::from_json(&serde_json::to_vec(m).unwrap(), Path::new(MANIFEST_FILE)) {
        Err(ManifestError::Invalid { problem, .. }) => assert_eq!(problem, p),
        other => panic!("{other:?}"),
    }
    p
}

#[test]
fn file_names_that_could_escape_are_refused() {
    let dir = tempdir();
    let good = backup(dir.path(), 2, Codec::Stored);
    for name in [
        "../stripe-00.vdis",
        "/etc/passwd",
        "a/b",
        "a\\b",
        "..",
        ".",
        "",
        ".hidden",
        "C:stripe",
        "stripe-00.vdis.",
        "NUL",
        "con.txt",
        "Com1.vdis",
        "lpt9",
        "manifest.json",
        "Manifest.JSON.tmp",
        "stripe\0",
        "stripe 00",
        "str\u{f6}m",
        &"x".repeat(256),
    ] {
        let mut m = good.clone();
        m.stripes[1].file = name.into();
        assert!(m.stripe_path(dir.path(), 1).is_none(), "{name:?}");
        match problem(&m) {
            ManifestProblem::UnsafeFileName { index: 1, file, .. } => assert_eq!(file, name),
            other => panic!("{name:?}: {other}"),
        }
    }
    // Plain names are fine.
    for name in ["stripe-01.vdis", "a", "backup_1.part-2", "COM10", "console"] {
        let mut m = good.clone();
        m.stripes[1].file = name.into();
        m.validate().unwrap();
        assert_eq!(m.stripe_path(dir.path(), 1).unwrap(), dir.path().join(name));
    }
}

#[test]
fn stripe_indexes_must_be_each_there_once() {
    let dir = tempdir();
    let good = backup(dir.path(), 3, Codec::Stored);

    let mut m = good.clone();
    m.stripes[2].index = 0;
    m.stripes[2].file = "other.vdis".into();
    assert_eq!(problem(&m), ManifestProblem::DuplicateStripe(0));
    assert_eq!(
        ManifestProblem::DuplicateStripe(0).to_string(),
        "stripe 0 appears more than once"
    );

    let mut m = good.clone();
    m.stripes.pop();
    assert_eq!(problem(&m), ManifestProblem::MissingStripe(2));

    let mut m = good.clone();
    m.stripes[1].index = 3;
    assert!(matches!(
        problem(&m),
        ManifestProblem::StripeIndexOutOfRange {
            index: 3,
            device_count: 3
        }
    ));

    let mut m = good.clone();
    m.stripes[2].file = "STRIPE-00.vdis".into();
    assert!(matches!(
        problem(&m),
        ManifestProblem::DuplicateFileName {
            first: 0,
            second: 2,
            ..
        }
    ));

    // Order does not matter.
    let mut m = good.clone();
    m.stripes.reverse();
    m.validate().unwrap();
}

#[test]
fn impossible_values_are_refused() {
    let dir = tempdir();
    let good = backup(dir.path(), 2, Codec::Stored);

    let mut m = good.clone();
    m.device_count = 0;
    m.stripes.clear();
    assert_eq!(problem(&m), ManifestProblem::DeviceCount(0));
    let mut m = good.clone();
    m.block_size = 3000;
    assert_eq!(problem(&m), ManifestProblem::BlockSize(3000));
    let mut m = good.clone();
    m.max_transfer_size = 1 << 30;
    assert_eq!(problem(&m), ManifestProblem::MaxTransferSize(1 << 30));
    let mut m = good.clone();
    m.codec = Codec::Zstd { level: 99 };
    assert_eq!(problem(&m), ManifestProblem::ZstdLevel(99));

    let totals: [fn(&mut StripeEntry); 7] = [
        |e| e.checkpoints = 0,
        |e| {
            e.update(&Checkpoint::START);
            e.raw_bytes = 1;
        },
        |e| e.stored_bytes = 100,
        |e| e.stored_bytes = u64::MAX,
        |e| e.data_records = u64::MAX,
        |e| e.raw_bytes -= 1,
        |e| {
            e.raw_bytes = 0;
            e.data_records = 0;
            e.stored_bytes = (HEADER_LEN + CHECKPOINT_RECORD_LEN) as u64;
            e.checkpoints = 1;
            e.stream_xxh3 = 1;
        },
    ];
    for change in totals {
        let mut m = good.clone();
        change(&mut m.stripes[1]);
        assert!(
            matches!(
                problem(&m),
                ManifestProblem::ImpossibleTotals { index: 1, .. }
            ),
            "{:?}",
            m.stripes[1]
        );
    }
}

#[test]
fn stripe_headers_are_matched_to_the_backup() {
    let dir = tempdir();
    let m = backup(dir.path(), 2, Codec::Stored);
    let header = m.stripe_header(1);
    assert_eq!(m.check_stripe_header(&header).unwrap().index, 1);

    let other = StripeHeader {
        backup_id: 1,
        ..header
    };
    let p = m.check_stripe_header(&other).unwrap_err();
    assert!(
        matches!(
            p,
            ManifestProblem::HeaderMismatch {
                index: 1,
                field: "backup id",
                ..
            }
        ),
        "{p}"
    );
    assert_style(&p.to_string());
    let beyond = StripeHeader {
        index: 5,
        count: 6,
        ..header
    };
    assert!(m.check_stripe_header(&beyond).is_err());
}

#[test]
fn stripe_file_names() {
    assert_eq!(stripe_file_name(0), "stripe-00.vdis");
    assert_eq!(stripe_file_name(63), "stripe-63.vdis");
    for i in 0..MAX_STRIPES {
        check_file_name(&stripe_file_name(i)).unwrap();
    }
}

#[test]
fn a_new_manifest_is_in_progress_with_no_checkpoint() {
    let config = vdi_core::Config {
        device_count: 2,
        features: vdi_core::Features(3),
        prefix_zone_size: 0,
        alignment: 512,
        soft_file_mark_block_size: 0,
        eom_warning_size: 0,
        server_timeout: 0,
        block_size: 65536,
        max_io_depth: 4,
        max_transfer_size: 4 << 20,
        buffer_area_size: 0,
    };
    let mut m = Manifest::new(7, 1_700_000_000, "set", &config, Codec::Zstd { level: 3 });
    assert_eq!(m.state, ManifestState::InProgress);
    assert_eq!(m.vdi_features, 3);
    assert_eq!(m.stripes.len(), 2);
    assert_eq!(m.stripes[1], StripeEntry::new(1));
    assert_eq!(m.stripes[1].expected(), Checkpoint::START);
    assert_eq!(round_trip(&m).0, m);

    // A stripe whose header was written but no checkpoint yet reads as empty.
    let w = StripeWriter::new(Vec::new(), m.stripe_header(1), m.codec).unwrap();
    let file = w.into_inner();
    let entry = m.stripe(1).unwrap();
    assert_eq!(
        stripe::verify_expected(&file[..], entry.expected()).unwrap(),
        Checkpoint::START
    );

    // Then a checkpoint.
    let mut w = StripeWriter::new(Vec::new(), m.stripe_header(0), m.codec).unwrap();
    w.write_chunk(b"data").unwrap();
    let cp = w.checkpoint().unwrap();
    m.stripe_mut(0).unwrap().update(&cp);
    m.state = ManifestState::Flushed;
    let (loaded, _) = round_trip(&m);
    assert_eq!(loaded.stripe(0).unwrap().expected(), cp);
}

#[test]
fn state_fields_must_agree_with_the_state() {
    let dir = tempdir();
    let mut m = backup(dir.path(), 1, Codec::Stored);
    assert!(m.incomplete_reason().unwrap().contains("never confirmed"));
    m.state = ManifestState::Complete;
    assert_eq!(
        m.validate(),
        Err(ManifestProblem::StateFields(
            "a complete backup without `end`"
        ))
    );
    m.end = Some(EndConfirmation::VdcComplete);
    assert!(
        matches!(m.validate(), Err(ManifestProblem::StateFields(p)) if p.contains("did not enable"))
    );
    m.vdi_features |= vdi_core::Features::COMPLETE_ENABLED.bits();
    assert_eq!(m.validate(), Ok(()));
    assert!(m.incomplete_reason().is_none());
    m.state = ManifestState::Flushed;
    assert!(m.validate().is_err(), "`end` on a flushed backup");
    m.end = None;
    m.mark_aborted("interrupted by SIGINT (Ctrl-C)", 1_700_000_200);
    assert_eq!(m.validate(), Ok(()));
    let why = m.incomplete_reason().unwrap();
    assert!(why.contains("aborted (interrupted by SIGINT"), "{why}");
    assert!(why.contains("checkpoint 2"), "{why}");
    m.reason = None;
    assert!(m.validate().is_err(), "an aborted backup needs its reason");

    // What the engine confirmed is not taken back.
    let mut m = backup(dir.path(), 1, Codec::Stored);
    m.mark_complete(EndConfirmation::FinalFlush, 1, None);
    m.mark_aborted("later", 2);
    assert_eq!(m.state, ManifestState::Complete);
}

#[test]
fn a_header_whose_codec_or_block_size_differs_is_named() {
    let dir = tempdir();
    let m = backup(dir.path(), 2, Codec::Zstd { level: 3 });
    let mut h = m.stripe_header(1);
    assert_eq!(h.flags, stripe::FLAG_ZSTD);
    h.flags = 0;
    let e = m.check_stripe_header(&h).unwrap_err();
    assert_eq!(
        e.to_string(),
        "stripe 1's header does not belong to this backup: codec is stored, the manifest has zstd"
    );
    let mut h = m.stripe_header(1);
    h.block_size = 4096;
    let e = m.check_stripe_header(&h).unwrap_err().to_string();
    assert!(
        e.contains("block size is 4096, the manifest has 65536"),
        "{e}"
    );
}

#[test]
fn segments_and_open_uploads_round_trip_and_are_checked() {
    let dir = tempdir();
    let mut m = backup(dir.path(), 2, Codec::Stored);
    let id = m.backup_id;
    for s in &mut m.stripes {
        // Two segments that hold the stripe's stored bytes between them.
        let first = s.stored_bytes / 2;
        s.segments = vec![
            Segment {
                name: segment_name(&s.file, id, 1),
                bytes: first,
            },
            Segment {
                name: segment_name(&s.file, id, 2),
                bytes: s.stored_bytes - first,
            },
        ];
    }
    assert_eq!(
        m.stripes[0].segments[0].name,
        format!("stripe-00.vdis.{:016x}.000001", id >> 64)
    );
    assert!(is_segment_of(
        &m.stripes[0].segments[1].name,
        "stripe-00.vdis"
    ));
    assert!(!is_segment_of(
        &m.stripes[0].segments[1].name,
        "stripe-01.vdis"
    ));
    m.uploads = vec![OpenUpload {
        object: segment_name("stripe-01.vdis", id, 3),
        id: "upload-1".into(),
    }];
    let (loaded, json) = round_trip(&m);
    assert_eq!(loaded, m);
    assert!(
        json.contains("\"segments\"") && json.contains("\"uploads\""),
        "{json}"
    );

    let mut bad = m.clone();
    bad.stripes[1].segments[1].name = segment_name("stripe-01.vdis", id, 3);
    assert!(matches!(
        problem(&bad),
        ManifestProblem::Segments { index: 1, .. }
    ));
    let mut bad = m.clone();
    bad.stripes[0].segments[0].name = segment_name("stripe-00.vdis", id ^ (1 << 100), 1);
    assert!(
        matches!(problem(&bad), ManifestProblem::Segments { index: 0, .. }),
        "another backup's segment"
    );
    let mut bad = m.clone();
    bad.stripes[0].segments[1].bytes -= 1;
    let p = problem(&bad);
    assert!(p.to_string().contains("fewer than its"), "{p}");
    let mut bad = m.clone();
    bad.stripes[0].segments[0].bytes = 0;
    assert!(matches!(
        problem(&bad),
        ManifestProblem::Segments { index: 0, .. }
    ));
    let mut bad = m.clone();
    bad.uploads[0].object = "elsewhere/x".into();
    assert!(matches!(problem(&bad), ManifestProblem::Upload(_)));
    let mut bad = m;
    bad.uploads[0].id = "has space".into();
    assert!(matches!(problem(&bad), ManifestProblem::Upload(_)));
}
