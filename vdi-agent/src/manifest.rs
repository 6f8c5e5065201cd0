//! The backup manifest: `manifest.json` in the backup directory.
//!
//! It records the backup's identity and configuration, its state, and for each stripe the
//! totals at its last checkpoint that was made durable (the values a reader expects:
//! [`StripeEntry::expected`]), or [`Checkpoint::START`] before its first. The agent stores it
//! after every durability point, replacing it atomically and durably (in a directory: write
//! [`MANIFEST_TMP_FILE`], sync, rename, sync the directory), so the stored manifest always
//! describes stripes that hold at least what it says. This module is the format
//! ([`Manifest::to_json`], [`Manifest::from_json`]); the agent's stores do the I/O.
//!
//! ```json
//! {
//!   "format_version": 2,
//!   "tool": { "name": "vdi-agent", "version": "0.1.0" },
//!   "backup_id": "0123456789abcdef0123456789abcdef",
//!   "created": 1700000000,
//!   "set_name": "nightly",
//!   "device_count": 1,
//!   "block_size": 65536,
//!   "max_transfer_size": 4194304,
//!   "vdi_features": 1,
//!   "codec": { "name": "zstd", "level": 3 },
//!   "state": "complete",
//!   "finished": 1700000042,
//!   "end": "vdc-complete",
//!   "stripes": [
//!     {
//!       "index": 0,
//!       "file": "stripe-00.vdis",
//!       "raw_bytes": 1048576,
//!       "data_records": 1,
//!       "stored_bytes": 4242,
//!       "stream_xxh3": "0123456789abcdef",
//!       "checkpoints": 2
//!     }
//!   ]
//! }
//! ```
//!
//! Loading is strict: unknown fields, a version other than [`MANIFEST_VERSION`], and values
//! that contradict each other ([`Manifest::validate`]) are errors, and a stripe's file name is
//! a plain name that cannot leave the directory.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::stripe::{
    CHECKPOINT_RECORD_LEN, Checkpoint, Codec, EMPTY_STREAM_HASH, HEADER_LEN, MAX_RECORD_LEN,
    MAX_STRIPES, RECORD_HEADER_LEN, StripeHeader,
};

/// The manifest's file name in the backup directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The temporary file a directory store writes before renaming it over [`MANIFEST_FILE`].
pub const MANIFEST_TMP_FILE: &str = "manifest.json.tmp";
/// The manifest format version this module writes and reads.
///
/// Version 2 added the state `aborted` and the fields `finished`, `end`, `engine_line` and
/// `reason`, and goes with stripes whose header records the codec ([`crate::stripe::FLAG_ZSTD`]).
pub const MANIFEST_VERSION: u32 = 2;
/// The largest manifest [`Manifest::from_json`] takes (1 MiB; one of 64 stripes takes about
/// 20 KiB).
pub const MAX_MANIFEST_LEN: u64 = 1024 * 1024;
/// The tool name this crate writes.
pub const TOOL_NAME: &str = "vdi-agent";
/// The extension of stripe files.
pub const STRIPE_EXTENSION: &str = "vdis";
/// The longest stripe file name accepted.
const MAX_FILE_NAME_LEN: usize = 255;

/// The usual file name of a stripe: `stripe-00.vdis` for index 0.
pub fn stripe_file_name(index: u32) -> String {
    format!("stripe-{index:02}.{STRIPE_EXTENSION}")
}

/// The program that wrote a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
}

impl Tool {
    /// This crate: [`TOOL_NAME`] at its package version.
    pub fn current() -> Self {
        Self {
            name: TOOL_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// How far a backup got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ManifestState {
    /// The backup is running, or stopped before it was flushed: the stripes hold durable
    /// checkpoints, but the engine has not been told they are.
    InProgress,
    /// The engine's last Flush was acknowledged: every stripe is durable up to its recorded
    /// checkpoint, but the engine has not confirmed the end of the backup (the agent is still
    /// running, or it died).
    Flushed,
    /// Complete: the engine confirmed the end of the backup ([`Manifest::end`] says how).
    Complete,
    /// The backup failed or was interrupted, and the agent said so ([`Manifest::reason`] says
    /// why). The stripes hold what the last acknowledged checkpoint recorded.
    Aborted,
}

impl ManifestState {
    /// Whether the backup is good: only a [`Complete`](Self::Complete) one is.
    pub fn is_complete(self) -> bool {
        self == Self::Complete
    }
}

impl fmt::Display for ManifestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InProgress => "in-progress",
            Self::Flushed => "flushed",
            Self::Complete => "complete",
            Self::Aborted => "aborted",
        })
    }
}

/// How the engine confirmed the end of a complete backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndConfirmation {
    /// Every device received `VDC_Complete` (the client asked for it with
    /// `VDF_RequestComplete` and the engine enabled it).
    VdcComplete,
    /// The engine does not send `VDC_Complete`: every device's last data was acknowledged by a
    /// Flush, then the engine closed every device and reported success.
    FinalFlush,
}

impl fmt::Display for EndConfirmation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::VdcComplete => "VDC_Complete on every device",
            Self::FinalFlush => {
                "a final Flush on every device (the engine does not send VDC_Complete)"
            }
        })
    }
}

/// One stripe in the manifest: its file and its totals at a durable checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeEntry {
    /// The stripe's index.
    pub index: u32,
    /// The file name in the backup directory: a plain name of ASCII letters, digits, `.`, `_`
    /// and `-` (see [`Manifest::validate`]).
    pub file: String,
    /// Raw bytes of data up to the checkpoint.
    pub raw_bytes: u64,
    /// Data records up to the checkpoint.
    pub data_records: u64,
    /// The file's length at the checkpoint, headers included.
    pub stored_bytes: u64,
    /// The stripe's stream hash at the checkpoint ([`Checkpoint::stream_hash`]; 16 hex digits
    /// in JSON).
    #[serde(with = "hex_u64")]
    pub stream_xxh3: u64,
    /// Checkpoints up to and including this one.
    pub checkpoints: u64,
    /// In an object store: the segment objects that hold the stripe's bytes, in order (a
    /// segment ends at each Flush and Complete). They hold at least
    /// [`stored_bytes`](Self::stored_bytes) together. Empty in a directory, where the stripe is
    /// the one file [`file`](Self::file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<Segment>,
}

/// One segment object of a stripe in an object store: [`segment_name`]`(file, backup_id, n)`,
/// with `n` counting from 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    /// The object's name under the backup's prefix.
    pub name: String,
    /// Its length as stored.
    pub bytes: u64,
}

/// A multipart upload the agent started and has not completed: what `vdi-agent cleanup`
/// aborts when the agent died before it could.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenUpload {
    /// The segment object being uploaded.
    pub object: String,
    /// The store's upload id.
    pub id: String,
}

/// The name of segment `n` (from 1) of stripe `file` of backup `backup_id`:
/// `stripe-00.vdis.5c69b2ab073aff64.000001`. The backup's id (its high 64 bits) is in the
/// name so that two backups never write the same object: an agent that still runs after
/// another replaced its backup (`--force`) can write only objects of its own, which the new
/// manifest does not name.
pub fn segment_name(file: &str, backup_id: u128, n: u32) -> String {
    format!("{file}.{:016x}.{n:06}", backup_id >> 64)
}

/// Whether `name` is a segment of stripe `file` of any backup: `file.`, 16 hex digits, `.`,
/// and six to ten digits.
pub fn is_segment_of(name: &str, file: &str) -> bool {
    let Some((id, n)) = name
        .strip_prefix(file)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.split_once('.'))
    else {
        return false;
    };
    id.len() == 16
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && (6..=10).contains(&n.len())
        && n.bytes().all(|b| b.is_ascii_digit())
}

impl StripeEntry {
    /// An entry for stripe `index` with its usual file name ([`stripe_file_name`]) and no
    /// checkpoint yet ([`Checkpoint::START`]).
    pub fn new(index: u32) -> Self {
        Self::from_checkpoint(index, &Checkpoint::START)
    }

    /// An entry for stripe `index` with its usual file name ([`stripe_file_name`]) and the
    /// totals of `checkpoint`.
    pub fn from_checkpoint(index: u32, checkpoint: &Checkpoint) -> Self {
        let mut entry = Self {
            index,
            file: stripe_file_name(index),
            raw_bytes: 0,
            data_records: 0,
            stored_bytes: 0,
            stream_xxh3: 0,
            checkpoints: 0,
            segments: Vec::new(),
        };
        entry.update(checkpoint);
        entry
    }

    /// Records the totals of a newer checkpoint.
    pub fn update(&mut self, checkpoint: &Checkpoint) {
        self.raw_bytes = checkpoint.raw_bytes;
        self.data_records = checkpoint.data_records;
        self.stored_bytes = checkpoint.stored_bytes;
        self.stream_xxh3 = checkpoint.stream_hash;
        self.checkpoints = checkpoint.checkpoints;
    }

    /// The totals a [`StripeReader`](crate::stripe::StripeReader) expects:
    /// `StripeReader::with_expected(file, entry.expected())`.
    pub fn expected(&self) -> Checkpoint {
        Checkpoint {
            raw_bytes: self.raw_bytes,
            data_records: self.data_records,
            stored_bytes: self.stored_bytes,
            checkpoints: self.checkpoints,
            stream_hash: self.stream_xxh3,
        }
    }
}

/// The manifest of one backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub format_version: u32,
    /// The program that wrote it.
    pub tool: Tool,
    /// The backup's id, as in every stripe header (32 hex digits in JSON).
    #[serde(with = "hex_u128")]
    pub backup_id: u128,
    /// When the backup started, in seconds since the unix epoch, as in every stripe header.
    pub created: u64,
    /// The VDI device set's name.
    pub set_name: String,
    /// The number of devices, and of stripes (1..=64).
    pub device_count: u32,
    /// The VDI block size.
    pub block_size: u32,
    /// The VDI maximum transfer size.
    pub max_transfer_size: u32,
    /// The VDI features of the configuration (the `VDF_*` bits).
    pub vdi_features: u32,
    /// How the stripes store their data.
    pub codec: Codec,
    /// How far the backup got.
    pub state: ManifestState,
    /// One entry per stripe, each index once.
    pub stripes: Vec<StripeEntry>,
    /// When the backup ended (complete or aborted), in seconds since the unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<u64>,
    /// How the engine confirmed the end: set exactly when the state is
    /// [`Complete`](ManifestState::Complete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<EndConfirmation>,
    /// The engine's own completion message, when it printed one (the reference engine's, or
    /// SQL Server's 3014 line when the caller passes it on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_line: Option<String>,
    /// Why an [`Aborted`](ManifestState::Aborted) backup ended: set exactly in that state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// In an object store: the multipart uploads open when this manifest was stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uploads: Vec<OpenUpload>,
}

impl Manifest {
    /// A manifest in state [`ManifestState::InProgress`] for a backup of `config` (device count,
    /// block size, maximum transfer size, features), written by [`Tool::current`], with one
    /// entry per device: the usual file name and no checkpoint yet ([`StripeEntry::new`]).
    pub fn new(
        backup_id: u128,
        created: u64,
        set_name: impl Into<String>,
        config: &vdi_core::Config,
        codec: Codec,
    ) -> Self {
        Self {
            format_version: MANIFEST_VERSION,
            tool: Tool::current(),
            backup_id,
            created,
            set_name: set_name.into(),
            device_count: config.device_count,
            block_size: config.block_size,
            max_transfer_size: config.max_transfer_size,
            vdi_features: config.features.bits(),
            codec,
            state: ManifestState::InProgress,
            stripes: (0..config.device_count.min(MAX_STRIPES))
                .map(StripeEntry::new)
                .collect(),
            finished: None,
            end: None,
            engine_line: None,
            reason: None,
            uploads: Vec::new(),
        }
    }

    /// Marks the backup complete: the engine confirmed its end as `end`, at `finished`.
    pub fn mark_complete(
        &mut self,
        end: EndConfirmation,
        finished: u64,
        engine_line: Option<String>,
    ) {
        self.state = ManifestState::Complete;
        self.end = Some(end);
        self.finished = Some(finished);
        self.engine_line = engine_line.filter(|l| !l.is_empty());
        self.reason = None;
    }

    /// Marks the backup aborted for `reason`, at `finished`. A complete backup stays complete:
    /// what the engine confirmed is not taken back by a later failure of the agent.
    pub fn mark_aborted(&mut self, reason: impl Into<String>, finished: u64) {
        if self.state == ManifestState::Complete {
            return;
        }
        self.state = ManifestState::Aborted;
        self.reason = Some(reason.into());
        self.finished = Some(finished);
        self.end = None;
    }

    /// The raw bytes every stripe holds up to its recorded checkpoint.
    pub fn raw_bytes(&self) -> u64 {
        self.stripes.iter().map(|s| s.raw_bytes).sum()
    }

    /// The bytes every stripe file holds up to its recorded checkpoint.
    pub fn stored_bytes(&self) -> u64 {
        self.stripes.iter().map(|s| s.stored_bytes).sum()
    }

    /// The fewest checkpoints any stripe has recorded.
    pub fn min_checkpoints(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.checkpoints)
            .min()
            .unwrap_or(0)
    }

    /// Why the backup is not good, for people, or `None` for a complete one: its state, what
    /// the stripes hold, and up to which checkpoint.
    pub fn incomplete_reason(&self) -> Option<String> {
        let held = format!(
            "the stripes hold {} raw bytes up to checkpoint {} (the last one the engine was \
             told is durable)",
            self.raw_bytes(),
            self.min_checkpoints()
        );
        match self.state {
            ManifestState::Complete => None,
            ManifestState::InProgress => Some(
                "the backup never reached its first Flush (the agent stopped or is still \
                 running): nothing in it was ever acknowledged to the engine"
                    .to_owned(),
            ),
            ManifestState::Flushed => Some(format!(
                "the engine never confirmed the end of the backup (the agent stopped before it \
                 did, or is still running); {held}"
            )),
            ManifestState::Aborted => Some(format!(
                "the backup was aborted ({}); {held}",
                self.reason.as_deref().unwrap_or("no reason recorded")
            )),
        }
    }

    /// Parses and validates a manifest's bytes (at most [`MAX_MANIFEST_LEN`]); `path` names
    /// where they came from, for errors. Reading them is the store's part
    /// (`vdi-agent`'s `store`).
    ///
    /// # Errors
    ///
    /// [`ManifestError::TooLarge`], [`ManifestError::UnsupportedVersion`],
    /// [`ManifestError::Json`] for bad JSON or a field missing, unknown or out of its type's
    /// range, [`ManifestError::Invalid`] for values that [`validate`](Self::validate) refuses.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self, ManifestError> {
        let path = path.to_owned();
        if bytes.len() as u64 > MAX_MANIFEST_LEN {
            return Err(ManifestError::TooLarge { path });
        }
        /// Just the version, so that another version's layout is reported as such.
        #[derive(Deserialize)]
        struct Probe {
            format_version: u64,
        }
        if let Ok(probe) = serde_json::from_slice::<Probe>(bytes)
            && probe.format_version != u64::from(MANIFEST_VERSION)
        {
            return Err(ManifestError::UnsupportedVersion {
                path,
                found: probe.format_version,
            });
        }
        let manifest: Self = match serde_json::from_slice(bytes) {
            Ok(m) => m,
            Err(error) => return Err(ManifestError::Json { path, error }),
        };
        if let Err(problem) = manifest.validate() {
            return Err(ManifestError::Invalid { path, problem });
        }
        Ok(manifest)
    }

    /// The manifest as its store writes it: pretty JSON and a final newline. Storing it
    /// atomically and durably is the store's part (`vdi-agent`'s `store`).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] for a manifest that does not
    /// [`validate`](Self::validate).
    pub fn to_json(&self) -> io::Result<Vec<u8>> {
        self.validate()
            .map_err(|p| io::Error::new(io::ErrorKind::InvalidInput, p))?;
        let mut json = serde_json::to_vec_pretty(self)?;
        json.push(b'\n');
        Ok(json)
    }

    /// Checks that the values agree: device count, block size, maximum transfer size and zstd
    /// level in range; exactly one entry per stripe index below the device count; safe,
    /// distinct file names; and totals a stripe of this codec could have at a checkpoint, or
    /// [`Checkpoint::START`].
    ///
    /// A file name must be 1 to 255 ASCII letters, digits, `.`, `_` and `-`, not start or end
    /// with a dot, not be a Windows device name (`CON`, `NUL`, `COM1`, ...) and not be the
    /// manifest's own names; names are distinct without regard to case.
    ///
    /// # Errors
    ///
    /// The first [`ManifestProblem`] found.
    pub fn validate(&self) -> Result<(), ManifestProblem> {
        if self.device_count == 0 || self.device_count > MAX_STRIPES {
            return Err(ManifestProblem::DeviceCount(self.device_count));
        }
        if vdi_core::validate_block_size(self.block_size).is_err() {
            return Err(ManifestProblem::BlockSize(self.block_size));
        }
        if vdi_core::validate_max_transfer_size(self.max_transfer_size).is_err() {
            return Err(ManifestProblem::MaxTransferSize(self.max_transfer_size));
        }
        if let Codec::Zstd { level } = self.codec
            && !zstd::compression_level_range().contains(&level)
        {
            return Err(ManifestProblem::ZstdLevel(level));
        }
        let mut seen = [false; MAX_STRIPES as usize];
        for (i, entry) in self.stripes.iter().enumerate() {
            let index = entry.index;
            if index >= self.device_count {
                return Err(ManifestProblem::StripeIndexOutOfRange {
                    index,
                    device_count: self.device_count,
                });
            }
            // Below the device count, so below MAX_STRIPES.
            if std::mem::replace(&mut seen[index as usize], true) {
                return Err(ManifestProblem::DuplicateStripe(index));
            }
            if let Err(reason) = check_file_name(&entry.file) {
                return Err(ManifestProblem::UnsafeFileName {
                    index,
                    file: entry.file.clone(),
                    reason,
                });
            }
            if let Some(first) = self.stripes[..i]
                .iter()
                .find(|e| e.file.eq_ignore_ascii_case(&entry.file))
            {
                return Err(ManifestProblem::DuplicateFileName {
                    file: entry.file.clone(),
                    first: first.index,
                    second: index,
                });
            }
            if let Err(reason) = check_totals(&entry.expected(), self.codec) {
                return Err(ManifestProblem::ImpossibleTotals { index, reason });
            }
            if let Err(reason) = check_segments(entry, self.backup_id) {
                return Err(ManifestProblem::Segments { index, reason });
            }
        }
        if let Some(u) = self.uploads.iter().find(|u| {
            !self
                .stripes
                .iter()
                .any(|s| is_segment_of(&u.object, &s.file))
                || u.id.is_empty()
                || u.id.len() > 1024
                || !u.id.bytes().all(|b| b.is_ascii_graphic())
        }) {
            return Err(ManifestProblem::Upload(u.object.clone()));
        }
        if let Some(missing) = (0..self.device_count).find(|&i| !seen[i as usize]) {
            return Err(ManifestProblem::MissingStripe(missing));
        }
        let state_fields = match self.state {
            ManifestState::Complete if self.end.is_none() => {
                Some("a complete backup without `end`")
            }
            ManifestState::Aborted if self.reason.is_none() => {
                Some("an aborted backup without `reason`")
            }
            ManifestState::Complete | ManifestState::Aborted => None,
            _ if self.end.is_some() => Some("`end` on a backup that is not complete"),
            _ if self.reason.is_some() => Some("`reason` on a backup that is not aborted"),
            _ => None,
        };
        if let Some(problem) = state_fields {
            return Err(ManifestProblem::StateFields(problem));
        }
        if self.state == ManifestState::Complete
            && self.end == Some(EndConfirmation::VdcComplete)
            && self.vdi_features & vdi_core::Features::COMPLETE_ENABLED.bits() == 0
        {
            return Err(ManifestProblem::StateFields(
                "`end` says VDC_Complete, but the configuration did not enable it",
            ));
        }
        Ok(())
    }

    /// The entry of stripe `index`.
    pub fn stripe(&self, index: u32) -> Option<&StripeEntry> {
        self.stripes.iter().find(|e| e.index == index)
    }

    /// The entry of stripe `index`, mutably.
    pub fn stripe_mut(&mut self, index: u32) -> Option<&mut StripeEntry> {
        self.stripes.iter_mut().find(|e| e.index == index)
    }

    /// The path of stripe `index`'s file in `dir`, if the entry exists and its name is safe.
    pub fn stripe_path(&self, dir: impl AsRef<Path>, index: u32) -> Option<PathBuf> {
        let entry = self.stripe(index)?;
        check_file_name(&entry.file).ok()?;
        Some(dir.as_ref().join(&entry.file))
    }

    /// The file header stripe `index` of this backup has (no flags).
    pub fn stripe_header(&self, index: u32) -> StripeHeader {
        StripeHeader {
            backup_id: self.backup_id,
            index,
            count: self.device_count,
            block_size: self.block_size,
            max_transfer_size: self.max_transfer_size,
            created: self.created,
            flags: self.codec.header_flags(),
        }
    }

    /// Checks that a stripe's file header belongs to this backup; returns the stripe's entry.
    ///
    /// # Errors
    ///
    /// [`ManifestProblem::HeaderMismatch`] naming the first field that differs from
    /// [`stripe_header`](Self::stripe_header), or [`ManifestProblem::StripeIndexOutOfRange`].
    pub fn check_stripe_header(
        &self,
        header: &StripeHeader,
    ) -> Result<&StripeEntry, ManifestProblem> {
        let index = header.index;
        let Some(entry) = self.stripe(index) else {
            return Err(ManifestProblem::StripeIndexOutOfRange {
                index,
                device_count: self.device_count,
            });
        };
        let want = self.stripe_header(index);
        let fields = [
            (
                "backup id",
                format!("{:032x}", want.backup_id),
                format!("{:032x}", header.backup_id),
            ),
            (
                "stripe count",
                want.count.to_string(),
                header.count.to_string(),
            ),
            (
                "block size",
                want.block_size.to_string(),
                header.block_size.to_string(),
            ),
            (
                "max transfer size",
                want.max_transfer_size.to_string(),
                header.max_transfer_size.to_string(),
            ),
            (
                "creation time",
                want.created.to_string(),
                header.created.to_string(),
            ),
            (
                "codec",
                codec_of_flags(want.flags).to_owned(),
                codec_of_flags(header.flags).to_owned(),
            ),
        ];
        match fields.into_iter().find(|(_, m, s)| m != s) {
            Some((field, manifest, stripe)) => Err(ManifestProblem::HeaderMismatch {
                index,
                field,
                manifest,
                stripe,
            }),
            None => Ok(entry),
        }
    }
}

/// The codec a stripe header's flags name, for messages.
fn codec_of_flags(flags: u32) -> &'static str {
    if flags & crate::stripe::FLAG_ZSTD != 0 {
        "zstd"
    } else {
        "stored"
    }
}

/// Why `name` is not a safe stripe file name, if it is not.
fn check_file_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > MAX_FILE_NAME_LEN {
        return Err("is longer than 255 bytes");
    }
    if name.contains(['/', '\\']) {
        return Err("contains a path separator");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("contains a character other than ASCII letters, digits, '.', '_' and '-'");
    }
    if name.starts_with('.') {
        return Err("starts with a dot");
    }
    if name.ends_with('.') {
        return Err("ends with a dot");
    }
    if name.eq_ignore_ascii_case(MANIFEST_FILE) || name.eq_ignore_ascii_case(MANIFEST_TMP_FILE) {
        return Err("is the manifest's own name");
    }
    let stem = name.split('.').next().unwrap_or(name);
    let reserved = ["CON", "PRN", "AUX", "NUL"]
        .iter()
        .any(|r| stem.eq_ignore_ascii_case(r))
        || (stem.len() == 4
            && (stem[..3].eq_ignore_ascii_case("COM") || stem[..3].eq_ignore_ascii_case("LPT"))
            && matches!(stem.as_bytes()[3], b'1'..=b'9'));
    if reserved {
        return Err("is a reserved device name on Windows");
    }
    Ok(())
}

/// Why `entry`'s segments cannot be those of its stripe: each is the next [`segment_name`]
/// of its file from 1, and together they hold at least the stored bytes.
fn check_segments(entry: &StripeEntry, backup_id: u128) -> Result<(), String> {
    if entry.segments.is_empty() {
        return Ok(());
    }
    let mut total: u64 = 0;
    for (i, seg) in entry.segments.iter().enumerate() {
        let want = u32::try_from(i + 1)
            .map(|n| segment_name(&entry.file, backup_id, n))
            .unwrap_or_default();
        if seg.name != want {
            return Err(format!(
                "segment {} is named {:?}, expected {want:?}",
                i + 1,
                seg.name
            ));
        }
        if seg.bytes == 0 {
            return Err(format!("segment {:?} is empty", seg.name));
        }
        total = total.saturating_add(seg.bytes);
    }
    if total < entry.stored_bytes {
        return Err(format!(
            "its segments hold {total} bytes, fewer than its {} stored bytes",
            entry.stored_bytes
        ));
    }
    Ok(())
}

/// Why `cp` cannot be the totals of a stripe stored with `codec`, if it cannot.
fn check_totals(cp: &Checkpoint, codec: Codec) -> Result<(), String> {
    if *cp == Checkpoint::START {
        return Ok(());
    }
    if cp.checkpoints == 0 {
        return Err(format!(
            "no checkpoint, but totals other than those of an empty stripe ({} raw bytes, {} \
             data records, {} stored bytes, stream hash {:016x})",
            cp.raw_bytes, cp.data_records, cp.stored_bytes, cp.stream_hash
        ));
    }
    let overhead = cp
        .data_records
        .checked_mul(RECORD_HEADER_LEN as u64)
        .and_then(|d| {
            cp.checkpoints
                .checked_mul(CHECKPOINT_RECORD_LEN as u64)
                .and_then(|c| c.checked_add(d))
        })
        .and_then(|o| o.checked_add(HEADER_LEN as u64));
    let Some(payload) = overhead.and_then(|o| cp.stored_bytes.checked_sub(o)) else {
        return Err(format!(
            "{} stored bytes cannot hold the file header, {} data records and {} checkpoints",
            cp.stored_bytes, cp.data_records, cp.checkpoints
        ));
    };
    if payload < cp.data_records {
        return Err(format!(
            "{payload} bytes of payload cannot hold {} data records (each stores at least 1)",
            cp.data_records
        ));
    }
    if payload > cp.raw_bytes {
        return Err(format!(
            "{payload} bytes of payload for {} raw bytes: records never grow",
            cp.raw_bytes
        ));
    }
    if cp.data_records.saturating_mul(MAX_RECORD_LEN as u64) < cp.raw_bytes {
        return Err(format!(
            "{} raw bytes do not fit in {} data records of at most {MAX_RECORD_LEN}",
            cp.raw_bytes, cp.data_records
        ));
    }
    if codec == Codec::Stored && payload != cp.raw_bytes {
        return Err(format!(
            "{payload} bytes of payload for {} raw bytes, but the codec stores data raw",
            cp.raw_bytes
        ));
    }
    if cp.raw_bytes == 0 && cp.stream_hash != EMPTY_STREAM_HASH {
        return Err(format!(
            "no data, but stream hash {:016x} is not that of nothing ({EMPTY_STREAM_HASH:016x})",
            cp.stream_hash
        ));
    }
    Ok(())
}

/// Why a manifest's values do not hold together.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestProblem {
    /// The device count is not in 1..=64.
    #[error("device count {0} is not in 1..={MAX_STRIPES}")]
    DeviceCount(u32),
    /// The block size is not a power of two in 512..=65536.
    #[error("block size {0} is not a power of two in 512..=65536")]
    BlockSize(u32),
    /// The maximum transfer size is not a multiple of 64 KiB in 64 KiB..=4 MiB.
    #[error("max transfer size {0} is not a multiple of 65536 in 65536..=4194304")]
    MaxTransferSize(u32),
    /// The zstd level is outside zstd's range.
    #[error(
        "zstd level {0} is not in {lo}..={hi}",
        lo = zstd::compression_level_range().start(),
        hi = zstd::compression_level_range().end()
    )]
    ZstdLevel(i32),
    /// A stripe index is not below the device count.
    #[error("stripe index {index} is not below the device count {device_count}")]
    StripeIndexOutOfRange {
        /// The index.
        index: u32,
        /// The device count.
        device_count: u32,
    },
    /// Two entries have this index.
    #[error("stripe {0} appears more than once")]
    DuplicateStripe(u32),
    /// No entry has this index.
    #[error("stripe {0} is missing")]
    MissingStripe(u32),
    /// A file name could name something outside the directory, or is otherwise unsafe.
    #[error("stripe {index}: file name {file:?} {reason}")]
    UnsafeFileName {
        /// The stripe's index.
        index: u32,
        /// The name.
        file: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two stripes have the same file name (without regard to case).
    #[error("stripes {first} and {second} both use the file {file:?}")]
    DuplicateFileName {
        /// The name.
        file: String,
        /// The first stripe that has it.
        first: u32,
        /// The second.
        second: u32,
    },
    /// A stripe's totals are impossible for the format or the codec.
    #[error("stripe {index}: {reason}")]
    ImpossibleTotals {
        /// The stripe's index.
        index: u32,
        /// Why.
        reason: String,
    },
    /// The state and the fields that go with it disagree.
    #[error("{0}")]
    StateFields(&'static str),
    /// A stripe's segment list is not one its store could have written.
    #[error("stripe {index}: {reason}")]
    Segments {
        /// The stripe's index.
        index: u32,
        /// Why.
        reason: String,
    },
    /// An open upload names no segment of a stripe of the backup, or has a bad id.
    #[error("the open upload of {0:?} is not one of a segment of this backup, or its id is bad")]
    Upload(String),
    /// A stripe's file header does not belong to this backup.
    #[error(
        "stripe {index}'s header does not belong to this backup: {field} is {stripe}, the \
         manifest has {manifest}"
    )]
    HeaderMismatch {
        /// The stripe's index.
        index: u32,
        /// The first field that differs.
        field: &'static str,
        /// The manifest's value.
        manifest: String,
        /// The stripe header's value.
        stripe: String,
    },
}

/// Why a manifest cannot be loaded. An inner error is part of the message, so `source` does
/// not repeat it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// There is no `manifest.json` in the directory (or no directory).
    #[error(
        "no {MANIFEST_FILE} in {}: not a backup directory, or the backup never reached its \
         first Flush",
        .dir.display()
    )]
    Missing {
        /// The directory.
        dir: PathBuf,
    },
    /// Reading it failed.
    #[error("cannot read {}: {error}", .path.display())]
    Io {
        /// The manifest's path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// It is larger than [`MAX_MANIFEST_LEN`].
    #[error("{} is larger than {MAX_MANIFEST_LEN} bytes: not a backup manifest", .path.display())]
    TooLarge {
        /// The manifest's path.
        path: PathBuf,
    },
    /// It is not JSON, or not a manifest (a field missing, unknown, or of the wrong type).
    #[error("bad JSON in {}: {error}", .path.display())]
    Json {
        /// The manifest's path.
        path: PathBuf,
        /// serde_json's error, with line and column.
        error: serde_json::Error,
    },
    /// Its format version is not [`MANIFEST_VERSION`].
    #[error(
        "{} has manifest format version {found}, this build reads version {MANIFEST_VERSION}",
        .path.display()
    )]
    UnsupportedVersion {
        /// The manifest's path.
        path: PathBuf,
        /// The version it has.
        found: u64,
    },
    /// Its values do not hold together.
    #[error("inconsistent manifest {}: {problem}", .path.display())]
    Invalid {
        /// The manifest's path.
        path: PathBuf,
        /// What is wrong.
        problem: ManifestProblem,
    },
}

impl From<ManifestError> for io::Error {
    /// [`io::ErrorKind::NotFound`] for a missing manifest, the inner error's kind for
    /// [`ManifestError::Io`], [`io::ErrorKind::InvalidData`] otherwise; the [`ManifestError`]
    /// is the inner error.
    fn from(e: ManifestError) -> Self {
        let kind = match &e {
            ManifestError::Missing { .. } => io::ErrorKind::NotFound,
            ManifestError::Io { error, .. } => error.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        Self::new(kind, e)
    }
}

/// Parses exactly `digits` hex digits (either case).
fn parse_hex(s: &str, digits: usize) -> Option<u128> {
    if s.len() == digits && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        u128::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

fn hex_error<E: serde::de::Error>(s: &str, digits: usize) -> E {
    if s.len() <= 2 * digits {
        E::custom(format_args!("expected {digits} hex digits, found {s:?}"))
    } else {
        E::custom(format_args!(
            "expected {digits} hex digits, found a string of {} bytes",
            s.len()
        ))
    }
}

/// A `u128` as 32 lowercase hex digits.
mod hex_u128 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{v:032x}"))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_hex(&s, 32).ok_or_else(|| super::hex_error(&s, 32))
    }
}

/// A `u64` as 16 lowercase hex digits.
mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{v:016x}"))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_hex(&s, 16)
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| super::hex_error(&s, 16))
    }
}

#[cfg(test)]
mod tests;
