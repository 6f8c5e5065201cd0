//! A backup in a local directory ([`LocalStore`]): what a backup may be written into, how its
//! manifest is stored (atomically and durably), and the only code that removes anything from
//! one.
//!
//! Rules: a backup goes into a new or empty directory, or replaces (with `--force`) an
//! incomplete backup the agent wrote, removing only the files its manifest names. A complete
//! backup, and any file the agent did not write, is never touched. A directory the agent
//! created for a backup that failed before anything was acknowledged to the engine is removed
//! again.

use std::{
    fs::{self, File},
    io::{self, ErrorKind, Read, Write},
    path::{Path, PathBuf},
};

use vdi_agent::manifest::{
    MANIFEST_FILE, MANIFEST_TMP_FILE, MAX_MANIFEST_LEN, Manifest, ManifestError, StripeEntry,
};

use super::{BackupStore, StripeInput};
use crate::{
    failure::{Failure, Outcome},
    output::StripeOutput,
};

/// A backup directory: one prepared for a new backup, or one that holds a backup.
#[derive(Debug)]
pub(crate) struct LocalStore {
    path: PathBuf,
    /// The agent created it (so it may remove it again when nothing came of the backup).
    created: bool,
}

impl LocalStore {
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
        let (state, ours) = super::check_replace(
            &path.display().to_string(),
            "directory",
            &entries,
            read_manifest(path),
            force,
            |m, name| owned_files(m).iter().any(|o| o == name),
        )?;
        remove_files(path, &ours)?;
        eprintln!(
            "vdi-agent: removed the {state} backup in {} (--force)",
            path.display()
        );
        Ok(Self {
            path: path.to_owned(),
            created: false,
        })
    }

    /// The backup directory `path`, or `None` when `path` is a file (a stripe).
    ///
    /// # Errors
    ///
    /// A usage error for a path that does not exist; an I/O error naming it.
    pub(crate) fn open(path: &Path) -> Outcome<Option<Self>> {
        let meta =
            fs::metadata(path).map_err(|e| look_failure(path, "no such directory or file", &e))?;
        Ok(meta.is_dir().then(|| Self {
            path: path.to_owned(),
            created: false,
        }))
    }

    /// Every subdirectory of `parent` that holds a manifest, sorted, with its name.
    ///
    /// # Errors
    ///
    /// A usage error when `parent` does not exist; an I/O error naming it.
    pub(crate) fn backups_in(parent: &Path) -> Outcome<Vec<(String, Self)>> {
        let read =
            fs::read_dir(parent).map_err(|e| look_failure(parent, "no such directory", &e))?;
        let mut dirs: Vec<_> = read
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir() && p.join(MANIFEST_FILE).exists())
            .collect();
        dirs.sort();
        Ok(dirs
            .into_iter()
            .map(|d| {
                let name = d.file_name().map_or_else(
                    || d.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                (
                    name,
                    Self {
                        path: d,
                        created: false,
                    },
                )
            })
            .collect())
    }
}

impl BackupStore for LocalStore {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn free_space(&self) -> io::Result<u64> {
        free_space(&self.path)
    }

    fn create_stripe(&self, file: &str) -> Outcome<(Box<dyn StripeOutput>, String)> {
        let path = self.path.join(file);
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Failure::io(format!("creating {}", path.display()), &e))?;
        Ok((Box::new(f), path.display().to_string()))
    }

    fn store_manifest(&self, manifest: &Manifest) -> io::Result<()> {
        write_manifest(&self.path, manifest)
    }

    /// Removes the files `manifest` names (or, without a manifest, nothing but the empty
    /// directory) and the directory itself if the agent created it.
    fn discard(&self, manifest: Option<&Manifest>) -> String {
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

    fn manifest(&self) -> Result<Manifest, ManifestError> {
        read_manifest(&self.path)
    }

    fn stripe_names(&self) -> Outcome<Vec<String>> {
        list(&self.path)
    }

    fn open_stripe_input(&self, entry: &StripeEntry) -> Outcome<StripeInput> {
        let path = self.path.join(&entry.file);
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
        Ok(StripeInput {
            label,
            input: Box::new(file),
            len,
        })
    }
}

/// Why `path` could not be looked at: a usage error saying `missing` when it does not exist,
/// else an I/O error naming it.
fn look_failure(path: &Path, missing: &str, e: &io::Error) -> Failure {
    if e.kind() == ErrorKind::NotFound {
        Failure::usage(format!("{}: {missing}", path.display()))
    } else {
        Failure::io(format!("reading {}", path.display()), e)
    }
}

/// Loads and validates `dir/manifest.json`, reading at most [`MAX_MANIFEST_LEN`] bytes.
///
/// # Errors
///
/// [`ManifestError::Missing`] when there is no manifest, [`ManifestError::Io`], and the
/// errors of [`Manifest::from_json`].
fn read_manifest(dir: &Path) -> Result<Manifest, ManifestError> {
    let path = dir.join(MANIFEST_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(ManifestError::Missing { dir: dir.into() });
        }
        Err(error) => return Err(ManifestError::Io { path, error }),
    };
    let mut bytes = Vec::new();
    if let Err(error) = file.take(MAX_MANIFEST_LEN + 1).read_to_end(&mut bytes) {
        return Err(ManifestError::Io { path, error });
    }
    Manifest::from_json(&bytes, &path)
}

/// Stores `manifest` as `dir/manifest.json`, atomically and durably: writes
/// [`MANIFEST_TMP_FILE`], syncs it, renames it over [`MANIFEST_FILE`], then syncs the
/// directory (on Unix; elsewhere the rename is left to the file system's journal).
///
/// # Errors
///
/// [`io::ErrorKind::InvalidInput`] for a manifest that does not validate (nothing is
/// written); otherwise the file system's error, with the path in the message.
fn write_manifest(dir: &Path, manifest: &Manifest) -> io::Result<()> {
    let json = manifest.to_json()?;
    let tmp = dir.join(MANIFEST_TMP_FILE);
    let path = dir.join(MANIFEST_FILE);
    let context = |what: &str, p: &Path, e: io::Error| {
        io::Error::new(e.kind(), format!("cannot {what} {}: {e}", p.display()))
    };
    let written = File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(&json)?;
            f.sync_all()
        })
        .map_err(|e| context("write", &tmp, e))
        .and_then(|()| fs::rename(&tmp, &path).map_err(|e| context("rename", &tmp, e)));
    if let Err(e) = written {
        // Best effort: a stale temporary file is harmless, it is replaced next time.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir).map_err(|e| context("sync the directory", dir, e))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
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

/// Bytes free for an unprivileged writer in the file system of `dir`, if the platform says.
#[cfg(unix)]
fn free_space(dir: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Bytes free in the file system of `dir`: unknown on this platform.
#[cfg(not(unix))]
fn free_space(_dir: &Path) -> io::Result<u64> {
    Err(io::Error::new(
        ErrorKind::Unsupported,
        "free space is not known here",
    ))
}

#[cfg(test)]
mod tests;
