//! Tests of the directory store's manifest I/O: atomic replacement, a missing or oversized
//! manifest, and failures that leave nothing behind.

use vdi_agent::{
    manifest::{EndConfirmation, ManifestState},
    stripe::Codec,
};

use super::*;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A valid manifest of a new backup of two stripes.
fn manifest() -> Manifest {
    let client = vdi_core::ClientConfig {
        device_count: 2,
        ..vdi_core::ClientConfig::default()
    };
    let server = vdi_core::ServerConfig::backup(65536, 4 << 20);
    let config = vdi_core::Config::combine(&client, &server).unwrap();
    Manifest::new(7, 1_700_000_000, "set", &config, Codec::Zstd { level: 3 })
}

#[test]
fn store_and_load_round_trip() {
    let dir = tempdir();
    let mut m = manifest();
    write_manifest(dir.path(), &m).unwrap();
    assert!(!dir.path().join(MANIFEST_TMP_FILE).exists());
    assert_eq!(read_manifest(dir.path()).unwrap(), m);

    // Stored again over the first.
    m.state = ManifestState::Flushed;
    m.mark_complete(EndConfirmation::FinalFlush, 1_700_000_100, None);
    write_manifest(dir.path(), &m).unwrap();
    assert!(!dir.path().join(MANIFEST_TMP_FILE).exists());
    assert_eq!(read_manifest(dir.path()).unwrap(), m);
    let json = fs::read(dir.path().join(MANIFEST_FILE)).unwrap();
    assert_eq!(json, m.to_json().unwrap());
}

#[test]
fn a_missing_manifest_says_so() {
    let dir = tempdir();
    let e = read_manifest(dir.path()).unwrap_err();
    assert!(matches!(e, ManifestError::Missing { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "no manifest.json in {}: not a backup directory, or the backup never reached its \
             first Flush",
            dir.path().display()
        )
    );
    let e = read_manifest(&dir.path().join("nowhere")).unwrap_err();
    assert!(matches!(e, ManifestError::Missing { .. }), "{e}");
    assert_eq!(io::Error::from(e).kind(), ErrorKind::NotFound);
}

#[test]
fn too_large_a_file_is_not_read_whole() {
    let dir = tempdir();
    let big = vec![b' '; MAX_MANIFEST_LEN as usize + 1];
    fs::write(dir.path().join(MANIFEST_FILE), big).unwrap();
    let e = read_manifest(dir.path()).unwrap_err();
    assert!(matches!(e, ManifestError::TooLarge { .. }), "{e}");
}

#[test]
fn a_manifest_that_does_not_validate_is_not_written() {
    let dir = tempdir();
    let mut m = manifest();
    m.device_count = 0;
    let e = write_manifest(dir.path(), &m).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(!dir.path().join(MANIFEST_FILE).exists());
}

#[test]
fn store_fails_cleanly_where_it_cannot_write() {
    let dir = tempdir();
    let m = manifest();
    let e = write_manifest(&dir.path().join("nowhere"), &m).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("manifest.json.tmp"), "{e}");
}
