//! The backup directory: what a backup may be written into, what is in one, and the only code
//! that removes anything from one.
//!
//! Rules: a backup goes into a new or empty directory, or replaces (with `--force`) an
//! incomplete backup the agent wrote, removing only the files its manifest names. A complete
//! backup, and any file the agent did not write, is never touched. A directory the agent
//! created for a backup that failed before anything was acknowledged to the engine is removed
//! again.

use std::{
    fs::{self, File},
    io::{self, ErrorKind},
    path::{Path, PathBuf},
};

use vdi_agent::{
    manifest::{MANIFEST_FILE, MANIFEST_TMP_FILE, Manifest, ManifestError, STRIPE_EXTENSION},
    stripe::{StripeHeader, StripeReader},
};

use crate::{
    failure::{Failure, Outcome},
    output::Input,
};

/// A directory prepared for a new backup.
#[derive(Debug)]
pub(crate) struct BackupDir {
    path: PathBuf,
    /// The agent created it (so it may remove it again when nothing came of the backup).
    created: bool,
}

impl BackupDir {
    /// Prepares `path` for a new backup: creates it, or checks that it is empty, or (with
    /// `force`) removes the incomplete backup the agent wrote there.
    ///
    /// # Errors
    ///
    /// A usage error for a path that is not a directory; an error naming what the directory
    /// holds when it is not empty (a complete backup, an incomplete one without `force`, files
    /// the agent did not write); an I/O error.
    pub(crate) fn prepare(path: &Path, force: bool) -> Outcome<Self> {
        match fs::metadata(path) {
            Ok(m) if !m.is_dir() => {
                return Err(Failure::usage(format!(
                    "{} is not a directory: a backup goes into a directory of its own",
                    path.display()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                fs::create_dir_all(path)
                    .map_err(|e| Failure::io(format!("creating {}", path.display()), &e))?;
                return Ok(Self {
                    path: path.to_owned(),
                    created: true,
                });
            }
            Err(e) => return Err(Failure::io(format!("reading {}", path.display()), &e)),
        }
        let entries = list(path)?;
        if entries.is_empty() {
            return Ok(Self {
                path: path.to_owned(),
                created: false,
            });
        }
        let manifest = match Manifest::load(path) {
            Ok(m) => m,
            Err(ManifestError::Missing { .. }) => {
                return Err(Failure::other(format!(
                    "{} is not empty and holds no backup of this agent (no {MANIFEST_FILE}): a \
                     backup goes into a new or empty directory; nothing was touched",
                    path.display()
                )));
            }
            Err(e) => {
                return Err(Failure::other(format!(
                    "{} is not empty and its manifest cannot be read ({e}): nothing was touched",
                    path.display()
                )));
            }
        };
        if manifest.state.is_complete() {
            return Err(Failure::other(format!(
                "{} holds a complete backup (created {}): choose another directory, or remove \
                 that backup first if you no longer need it",
                path.display(),
                rfc3339(manifest.created)
            )));
        }
        let ours = owned_files(&manifest);
        let foreign: Vec<&String> = entries.iter().filter(|e| !ours.contains(e)).collect();
        if !force {
            return Err(Failure::other(format!(
                "{} holds an {} backup ({}); to replace it, run the backup again with --force \
                 (it removes only the files that backup's manifest names)",
                path.display(),
                if manifest.state == vdi_agent::manifest::ManifestState::Aborted {
                    "aborted"
                } else {
                    "incomplete"
                },
                manifest
                    .incomplete_reason()
                    .unwrap_or_else(|| manifest.state.to_string())
            )));
        }
        if !foreign.is_empty() {
            return Err(Failure::other(format!(
                "{} also holds files the agent did not write ({}): --force removes only a \
                 backup's own files, so nothing was touched",
                path.display(),
                foreign
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        remove_files(path, &ours)?;
        eprintln!(
            "vdi-agent: removed the {} backup in {} (--force)",
            manifest.state,
            path.display()
        );
        Ok(Self {
            path: path.to_owned(),
            created: false,
        })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes what a backup that acknowledged nothing to the engine left: the files its
    /// manifest names (or, without a manifest, nothing but the empty directory) and the
    /// directory itself if the agent created it. Returns what it did, for the user.
    pub(crate) fn discard(&self, manifest: Option<&Manifest>) -> String {
        if let Some(m) = manifest
            && let Err(e) = remove_files(&self.path, &owned_files(m))
        {
            return format!("the files it wrote stay in {}: {e}", self.path.display());
        }
        if self.created {
            match fs::remove_dir(&self.path) {
                Ok(()) => format!("removed {}, which it had created", self.path.display()),
                Err(e) => format!("{} stays: {e}", self.path.display()),
            }
        } else if manifest.is_some() {
            format!("removed the files it wrote in {}", self.path.display())
        } else {
            format!("{} was left as it was", self.path.display())
        }
    }
}

/// The names of what a backup with `manifest` wrote into its directory.
fn owned_files(manifest: &Manifest) -> Vec<String> {
    let mut names: Vec<String> = manifest.stripes.iter().map(|s| s.file.clone()).collect();
    names.push(MANIFEST_FILE.to_owned());
    names.push(MANIFEST_TMP_FILE.to_owned());
    names
}

/// Removes `names` from `dir` where they exist; the manifest last, so that an interrupted
/// removal leaves a directory that still says what it is.
fn remove_files(dir: &Path, names: &[String]) -> Outcome {
    let (manifest, others): (Vec<&String>, Vec<&String>) =
        names.iter().partition(|n| n.as_str() == MANIFEST_FILE);
    for name in others.into_iter().chain(manifest) {
        let p = dir.join(name);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Failure::io(format!("removing {}", p.display()), &e)),
        }
    }
    Ok(())
}

/// The names in `dir`.
fn list(dir: &Path) -> Outcome<Vec<String>> {
    let read =
        fs::read_dir(dir).map_err(|e| Failure::io(format!("reading {}", dir.display()), &e))?;
    let mut names = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| Failure::io(format!("reading {}", dir.display()), &e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// What a path given to `verify`, `restore` or `info` is.
#[derive(Debug)]
pub(crate) enum Source {
    /// A backup directory and its manifest.
    Dir(PathBuf, Box<Manifest>),
    /// One stripe file.
    File(PathBuf),
}

impl Source {
    /// Looks at `path`: a directory must hold a readable manifest; a file is a stripe.
    ///
    /// # Errors
    ///
    /// A usage error for a path that does not exist; a data error (exit 5) for a directory
    /// whose manifest is missing or damaged; an I/O error naming the file when it cannot be
    /// read.
    pub(crate) fn open(path: &Path) -> Outcome<Self> {
        let meta = fs::metadata(path).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Failure::usage(format!("{}: no such directory or file", path.display()))
            } else {
                Failure::io(format!("reading {}", path.display()), &e)
            }
        })?;
        if !meta.is_dir() {
            return Ok(Self::File(path.to_owned()));
        }
        Ok(Self::Dir(path.to_owned(), Box::new(load_manifest(path)?)))
    }
}

/// Loads the manifest of `dir`: a damaged or missing one is a data error, one that cannot be
/// read an I/O error that names the file.
pub(crate) fn load_manifest(dir: &Path) -> Outcome<Manifest> {
    Manifest::load(dir).map_err(|e| match &e {
        ManifestError::Io { path, error } => {
            Failure::io(format!("reading {}", path.display()), error)
        }
        _ => Failure::data(e.to_string()),
    })
}

/// Refuses a backup directory that holds stripe files its manifest does not name (an extra
/// `stripe-04.vdis` is a sign of a mixed-up directory, never ignored in silence).
pub(crate) fn check_no_strays(dir: &Path, manifest: &Manifest) -> Outcome {
    let ours = owned_files(manifest);
    let suffix = format!(".{STRIPE_EXTENSION}");
    let strays: Vec<String> = list(dir)?
        .into_iter()
        .filter(|n| n.ends_with(&suffix) && !ours.iter().any(|o| o.eq_ignore_ascii_case(n)))
        .collect();
    if strays.is_empty() {
        return Ok(());
    }
    Err(Failure::data(format!(
        "{} holds stripe files its manifest does not name ({}; the manifest lists {} stripe{}): \
         the directory mixes backups",
        dir.display(),
        strays.join(", "),
        manifest.device_count,
        plural(manifest.device_count.into())
    )))
}

/// One stripe of a backup directory, opened and checked against the manifest (its header's
/// fields, its length) before a byte of data is read.
#[derive(Debug)]
pub(crate) struct OpenStripe {
    /// `stripe 2 (DIR/stripe-02.vdis)`.
    pub(crate) label: String,
    /// The reader, expecting the manifest's totals.
    pub(crate) reader: StripeReader<Input>,
    /// The raw bytes the manifest records.
    pub(crate) raw_bytes: u64,
}

/// Opens stripe `index` of the backup in `dir`.
///
/// # Errors
///
/// A data error (exit 5) for a missing or truncated file or a header that contradicts the
/// manifest (naming the field and both values); an I/O error naming the file.
pub(crate) fn open_stripe(dir: &Path, manifest: &Manifest, index: u32) -> Outcome<OpenStripe> {
    let Some(entry) = manifest.stripe(index) else {
        return Err(Failure::data(format!("the manifest has no stripe {index}")));
    };
    let path = dir.join(&entry.file);
    let label = format!("stripe {} ({})", entry.index, path.display());
    let file = File::open(&path).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            Failure::data(format!("{label} is missing: the backup set is incomplete"))
        } else {
            Failure::io(format!("opening {}", path.display()), &e)
        }
    })?;
    let len = file
        .metadata()
        .map_err(|e| Failure::io(format!("reading {}", path.display()), &e))?
        .len();
    if len < entry.stored_bytes {
        return Err(Failure::data(format!(
            "{label} is truncated: {len} bytes, the manifest says {}",
            entry.stored_bytes
        )));
    }
    let reader = StripeReader::with_expected(Input::File(file), entry.expected())
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

/// Bytes free for an unprivileged writer in the file system of `dir`, if the platform says.
#[cfg(unix)]
pub(crate) fn free_space(dir: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Bytes free in the file system of `dir`: unknown on this platform.
#[cfg(not(unix))]
pub(crate) fn free_space(_dir: &Path) -> io::Result<u64> {
    Err(io::Error::new(
        ErrorKind::Unsupported,
        "free space is not known here",
    ))
}
