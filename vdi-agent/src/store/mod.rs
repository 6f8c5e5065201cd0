//! Where backups live: the [`BackupStore`] trait, which backup, restore, verify and info go
//! through, and what they do the same way over any store (checking a stripe against its
//! manifest, refusing stray stripes).
//!
//! One implementation today: a local directory ([`local::LocalStore`]). The trait is shaped
//! so that an object store (S3 or Azure segments) is a second one without a change to backup
//! or restore: a stripe's [`StripeOutput`] may end a segment object at each
//! [`sync`](StripeOutput::sync) (a Flush or Complete), [`store_manifest`] may be a
//! conditional write (create-if-absent for the first, if-match the version it wrote after),
//! and a stripe's input may chain segments read with ranged requests; whatever a store
//! writes, [`discard`] removes only that.
//!
//! [`store_manifest`]: BackupStore::store_manifest
//! [`discard`]: BackupStore::discard

pub(crate) mod local;
pub(crate) mod object;

use std::{
    fmt,
    io::{self, Read},
    path::{Path, PathBuf},
    sync::Arc,
};

use vdi_agent::{
    manifest::{
        MANIFEST_FILE, Manifest, ManifestError, ManifestState, STRIPE_EXTENSION, StripeEntry,
    },
    stripe::{StripeHeader, StripeReader},
};

pub(crate) use self::local::LocalStore;
use crate::{
    cli::ObjectArgs,
    failure::{Failure, Outcome},
    output::StripeOutput,
};

/// A place that holds one backup: its manifest and its stripes.
///
/// A store that was [prepared](prepare) for a new backup takes the writing calls; one
/// [opened](Source::open) holds a backup to read. Its errors are [`Failure`]s that name what
/// failed in the user's words.
pub(crate) trait BackupStore: fmt::Debug + Send + Sync {
    /// Where the backup is, for messages and reports: a directory's path (or a URL).
    fn location(&self) -> String;

    /// Bytes free for the backup, if the store knows.
    ///
    /// # Errors
    ///
    /// Why it cannot tell.
    fn free_space(&self) -> io::Result<u64>;

    /// Creates stripe `file` of a new backup; returns its output and its label for messages.
    ///
    /// # Errors
    ///
    /// An I/O failure naming the stripe.
    fn create_stripe(&self, file: &str) -> Outcome<(Box<dyn StripeOutput>, String)>;

    /// Stores `manifest`, replacing the one stored before, atomically and durably: once this
    /// returns, the stored manifest is this one, whatever happens next.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] for a manifest that does not validate (nothing is
    /// stored); otherwise the store's error, naming what failed.
    fn store_manifest(&self, manifest: &Manifest) -> io::Result<()>;

    /// Removes what a backup that acknowledged nothing to the engine left: what `manifest`
    /// names (with none, only what preparing the store made). Returns what it did, for the
    /// user.
    fn discard(&self, manifest: Option<&Manifest>) -> String;

    /// Loads and validates the backup's manifest.
    ///
    /// # Errors
    ///
    /// The [`ManifestError`] ([`ManifestError::Missing`] when there is none).
    fn manifest(&self) -> Result<Manifest, ManifestError>;

    /// The names of every stripe-like object in the store (ending in
    /// `.`[`STRIPE_EXTENSION`]), named by the manifest or not.
    ///
    /// # Errors
    ///
    /// An I/O failure naming the store.
    fn stripe_names(&self) -> Outcome<Vec<String>>;

    /// Opens the stripe of `entry` for reading.
    ///
    /// # Errors
    ///
    /// A data failure (exit 5) for a missing stripe; an I/O failure naming it.
    fn open_stripe_input(&self, entry: &StripeEntry) -> Outcome<StripeInput>;

    /// [`manifest`](Self::manifest) as a failure for the user: a damaged or missing one is a
    /// data error, one that cannot be read an I/O error that names it.
    ///
    /// # Errors
    ///
    /// As said.
    fn load_manifest(&self) -> Outcome<Manifest> {
        self.manifest().map_err(|e| match &e {
            ManifestError::Io { path, error } => {
                Failure::io(format!("reading {}", path.display()), error)
            }
            _ => Failure::data(e.to_string()),
        })
    }
}

/// A stripe opened for reading, before its header is read.
pub(crate) struct StripeInput {
    /// `stripe 2 (DIR/stripe-02.vdis)`.
    pub(crate) label: String,
    /// Its bytes.
    pub(crate) input: Box<dyn Read + Send>,
    /// Its length as stored.
    pub(crate) len: u64,
}

impl fmt::Debug for StripeInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeInput")
            .field("label", &self.label)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Prepares `target` for a new backup of `devices` stripes: a directory
/// ([`LocalStore::prepare`]) or, for an `s3://` or `az://` URL, a prefix of an object store
/// (`object::BucketStore::prepare`).
///
/// # Errors
///
/// As those.
pub(crate) fn prepare(
    target: &Path,
    force: bool,
    objects: &ObjectArgs,
    devices: u32,
) -> Outcome<Arc<dyn BackupStore>> {
    if let Some(store) = object_store(target, Some(objects), devices)? {
        return Ok(Arc::new(store.prepare(force)?));
    }
    Ok(Arc::new(LocalStore::prepare(target, force)?))
}

/// The object store `target` names, if it is an `s3://` or `az://` URL.
///
/// # Errors
///
/// A usage error for a malformed URL, settings object_store refuses, or a URL given to a
/// command that takes a directory only (`objects` is `None`).
pub(crate) fn object_store(
    target: &Path,
    objects: Option<&ObjectArgs>,
    devices: u32,
) -> Outcome<Option<object::BucketStore>> {
    let Some(url) = target
        .to_str()
        .map(object::ObjectUrl::parse)
        .transpose()?
        .flatten()
    else {
        return Ok(None);
    };
    let Some(objects) = objects else {
        return Err(Failure::usage(format!(
            "{url}: this command works on a local directory only"
        )));
    };
    object::BucketStore::connect(&url, objects, devices).map(Some)
}

/// Checks that a non-empty place may take a new backup: it must hold a backup of this agent
/// (`manifest`) that is not complete, `force` must be given, and every name in it (`names`)
/// must be that backup's (`is_ours`). Returns the backup's state and the names to remove.
/// `location` and `kind` ("directory", "prefix") are for the messages.
///
/// # Errors
///
/// A failure naming what is there, and that nothing was touched.
pub(crate) fn check_replace(
    location: &str,
    kind: &str,
    names: &[String],
    manifest: Result<Manifest, ManifestError>,
    force: bool,
    is_ours: impl Fn(&Manifest, &str) -> bool,
) -> Outcome<(ManifestState, Vec<String>)> {
    let manifest = match manifest {
        Ok(m) => m,
        Err(ManifestError::Missing { .. }) => {
            return Err(Failure::other(format!(
                "{location} is not empty and holds no backup of this agent (no \
                 {MANIFEST_FILE}): a backup goes into a new or empty {kind}; nothing was touched"
            )));
        }
        Err(e) => {
            return Err(Failure::other(format!(
                "{location} is not empty and its manifest cannot be read ({e}): nothing was \
                 touched"
            )));
        }
    };
    if manifest.state.is_complete() {
        return Err(Failure::other(format!(
            "{location} holds a complete backup (created {}): choose another {kind}, or remove \
             that backup first if you no longer need it",
            rfc3339(manifest.created)
        )));
    }
    if !force {
        return Err(Failure::other(format!(
            "{location} holds an {} backup ({}); to replace it, run the backup again with \
             --force (it removes only the files that backup's manifest names)",
            if manifest.state == ManifestState::Aborted {
                "aborted"
            } else {
                "incomplete"
            },
            manifest
                .incomplete_reason()
                .unwrap_or_else(|| manifest.state.to_string())
        )));
    }
    let (ours, foreign): (Vec<String>, Vec<String>) =
        names.iter().cloned().partition(|n| is_ours(&manifest, n));
    if !foreign.is_empty() {
        return Err(Failure::other(format!(
            "{location} also holds files the agent did not write ({}): --force removes only a \
             backup's own files, so nothing was touched",
            foreign.join(", ")
        )));
    }
    Ok((manifest.state, ours))
}

/// What a path given to `verify`, `restore` or `info` is.
#[derive(Debug)]
pub(crate) enum Source {
    /// A backup and its manifest.
    Backup(Arc<dyn BackupStore>, Box<Manifest>),
    /// One stripe file.
    File(PathBuf),
}

impl Source {
    /// Looks at `path`: a directory must hold a readable manifest; a file is a stripe.
    ///
    /// # Errors
    ///
    /// A usage error for a path that does not exist; a data error (exit 5) for a backup
    /// whose manifest is missing or damaged; an I/O error naming the file when it cannot be
    /// read.
    pub(crate) fn open(path: &Path, objects: Option<&ObjectArgs>) -> Outcome<Self> {
        if let Some(mut store) = object_store(path, objects, 1)? {
            let manifest = store.load_manifest()?;
            store.replan(manifest.device_count)?;
            return Ok(Self::Backup(Arc::new(store), Box::new(manifest)));
        }
        let Some(store) = LocalStore::open(path)? else {
            return Ok(Self::File(path.to_owned()));
        };
        let manifest = store.load_manifest()?;
        Ok(Self::Backup(Arc::new(store), Box::new(manifest)))
    }
}

/// Refuses a backup that holds stripes its manifest does not name (an extra `stripe-04.vdis`
/// is a sign of a mixed-up backup, never ignored in silence).
pub(crate) fn check_no_strays(store: &dyn BackupStore, manifest: &Manifest) -> Outcome {
    let suffix = format!(".{STRIPE_EXTENSION}");
    let strays: Vec<String> = store
        .stripe_names()?
        .into_iter()
        .filter(|n| {
            n.ends_with(&suffix)
                && !manifest
                    .stripes
                    .iter()
                    .any(|s| s.file.eq_ignore_ascii_case(n))
        })
        .collect();
    if strays.is_empty() {
        return Ok(());
    }
    Err(Failure::data(format!(
        "{} holds stripe files its manifest does not name ({}; the manifest lists {} stripe{}): \
         the directory mixes backups",
        store.location(),
        strays.join(", "),
        manifest.device_count,
        plural(manifest.device_count.into())
    )))
}

/// One stripe of a backup, opened and checked against the manifest (its header's fields, its
/// length) before a byte of data is read.
#[derive(Debug)]
pub(crate) struct OpenStripe {
    /// `stripe 2 (DIR/stripe-02.vdis)`.
    pub(crate) label: String,
    /// The reader, expecting the manifest's totals.
    pub(crate) reader: StripeReader<Box<dyn Read + Send>>,
    /// The raw bytes the manifest records.
    pub(crate) raw_bytes: u64,
}

/// Opens stripe `index` of the backup in `store`.
///
/// # Errors
///
/// A data error (exit 5) for a missing or truncated stripe or a header that contradicts the
/// manifest (naming the field and both values); an I/O error naming the stripe.
pub(crate) fn open_stripe(
    store: &dyn BackupStore,
    manifest: &Manifest,
    index: u32,
) -> Outcome<OpenStripe> {
    let Some(entry) = manifest.stripe(index) else {
        return Err(Failure::data(format!("the manifest has no stripe {index}")));
    };
    let StripeInput { label, input, len } = store.open_stripe_input(entry)?;
    if len < entry.stored_bytes {
        return Err(Failure::data(format!(
            "{label} is truncated: {len} bytes, the manifest says {}",
            entry.stored_bytes
        )));
    }
    let reader = StripeReader::with_expected(input, entry.expected())
        .map_err(|e| Failure::data(format!("{label}: {e}")))?;
    manifest
        .check_stripe_header(reader.header())
        .map_err(|p| Failure::data(format!("{label}: {p}")))?;
    if reader.header().index != index {
        return Err(Failure::data(format!(
            "{label} is stripe {} of another place in the backup",
            reader.header().index
        )));
    }
    Ok(OpenStripe {
        label,
        reader,
        raw_bytes: entry.raw_bytes,
    })
}

/// "stripe 2 of 4", for a stripe read without its manifest.
pub(crate) fn stripe_of(h: &StripeHeader) -> String {
    format!("stripe {} of {}", h.index, h.count)
}

/// `""` for one, `"s"` otherwise.
pub(crate) fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Unix seconds as RFC 3339 in UTC.
pub(crate) fn rfc3339(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t).to_string()
}
