//! The rendezvous directory: where a set's socket and lock files live, how a name becomes a
//! file stem, and the `flock` that holds a name while its creator lives.

use super::*;

/// The rendezvous directory, chosen from the (effective) user alone, never from the
/// environment, so every process of the user finds the same one: on macOS `vdi-shm.1` in the
/// user's private temporary directory (see [`darwin_user_temp_dir`]), elsewhere (and when that
/// one is unavailable or too long for a socket path) `/tmp/vdi-shm.1-<uid>`. Created (0700)
/// when `create`; `Ok(None)` when it does not exist and `create` is false.
pub(super) fn rendezvous_dir(create: bool) -> Result<Option<PathBuf>, Error> {
    let uid = rustix::process::geteuid().as_raw();
    resolve_dir(user_dir(uid), uid, create)
}

/// The rendezvous directory's path for `uid` (see [`rendezvous_dir`]).
pub(super) fn user_dir(uid: u32) -> PathBuf {
    #[cfg(target_vendor = "apple")]
    if let Some(dir) = darwin_user_temp_dir()
        .map(|t| t.join(DIR_NAME))
        .filter(|d| d.as_os_str().len() + 1 + HASHED_STEM_LEN + SUFFIX_LEN < SUN_PATH_MAX)
    {
        return dir;
    }
    PathBuf::from(format!("/tmp/{DIR_NAME}-{uid}"))
}

/// The user's private temporary directory on macOS (`/var/folders/../T/`), as
/// `confstr(_CS_DARWIN_USER_TEMP_DIR)` reports it: made by the system for the effective user,
/// owned by it and mode 0700, and not taken from `TMPDIR`. Unlike a name under `/tmp`, no
/// other user can create our directory inside it first.
#[cfg(target_vendor = "apple")]
pub(super) fn darwin_user_temp_dir() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut buf = [0u8; 1024];
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes, and confstr writes at most that
    // many (a NUL-terminated string, truncated to fit); it returns the size the whole value
    // needs, its NUL included, or 0 when there is none.
    let n = unsafe {
        libc::confstr(
            libc::_CS_DARWIN_USER_TEMP_DIR,
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 2 || n > buf.len() {
        return None;
    }
    let dir = PathBuf::from(std::ffi::OsStr::from_bytes(&buf[..n - 1]));
    dir.is_absolute().then_some(dir)
}

/// Creates `dir` if asked and missing, then checks it (see [`check_dir`]).
pub(super) fn resolve_dir(dir: PathBuf, uid: u32, create: bool) -> Result<Option<PathBuf>, Error> {
    if create {
        match rustix::fs::mkdir(dir.as_path(), Mode::RWXU) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(os_error("mkdir", e)),
        }
    } else if let Err(Errno::NOENT) = rustix::fs::statat(CWD, dir.as_path(), AtFlags::empty()) {
        return Ok(None);
    }
    check_dir(&dir, uid)?;
    Ok(Some(dir))
}

/// The file stem of set `name` in `dir` (see [`stem_for`]), by this system's rule: on Apple
/// systems the filesystem is taken to fold case and Unicode normalization.
pub(super) fn stem(dir: &Path, name: &str) -> String {
    stem_for(dir, name, cfg!(target_vendor = "apple"))
}

/// The file stem of set `name` in `dir`: the name itself when its socket path fits, it does
/// not start with `#`, and, when `folding` (the filesystem may take names that differ in case
/// or Unicode normalization for one, as APFS and HFS+ do by default), it is all of
/// `[a-z0-9._-]`; else `#` and 32 hex digits of a 128-bit hash of its exact bytes. Set names
/// are case-sensitive, so on such a filesystem "Nightly" and "nightly" would otherwise share
/// files; hashed, they do not, and no kept name can equal a hashed stem (which starts with `#`).
pub(super) fn stem_for(dir: &Path, name: &str, folding: bool) -> String {
    let fits = dir.as_os_str().len() + 1 + name.len() + SUFFIX_LEN < SUN_PATH_MAX;
    let foldable = folding
        && !name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'));
    if fits && !foldable && !name.starts_with('#') {
        return name.to_owned();
    }
    // FNV-1a, twice with different offsets: stable across builds and processes (std's hashers
    // are not promised to be), and collisions among one user's names are not a threat (the
    // directory is theirs alone).
    let fnv = |seed: u64| {
        name.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
        })
    };
    let hashed = format!(
        "#{:016x}{:016x}",
        fnv(0xCBF2_9CE4_8422_2325),
        fnv(0x6C62_272E_07BB_0142)
    );
    debug_assert_eq!(hashed.len(), HASHED_STEM_LEN);
    hashed
}

/// The paths of set `name`'s socket and lock files, and its directory; `None` when the
/// directory does not exist and `create` is false.
pub(super) fn set_paths(name: &str, create: bool) -> Result<Option<SetPaths>, Error> {
    let Some(dir) = rendezvous_dir(create)? else {
        return Ok(None);
    };
    Ok(Some(SetPaths::new(dir, name)))
}

#[derive(Debug)]
pub(super) struct SetPaths {
    pub(super) dir: PathBuf,
    pub(super) sock: PathBuf,
    pub(super) lock: PathBuf,
}

impl SetPaths {
    pub(super) fn new(dir: PathBuf, name: &str) -> Self {
        let stem = stem(&dir, name);
        Self {
            sock: dir.join(format!("{stem}.sock")),
            lock: dir.join(format!("{stem}.lock")),
            dir,
        }
    }
}

/// Takes the exclusive lock on `path` without waiting, creating the file if `create`:
/// `Ok(None)` when a live process holds it (or, without `create`, when there is no file).
///
/// With `create` (a `listen`), a lock found held is tried again, [`LOCK_RETRIES`] times a
/// millisecond apart, the path opened anew each time: its holder may be another process's
/// [`sweep_stale`], which holds a dead listener's lock only while it removes that listener's
/// files, and the name is then free. A live listener holds it throughout: `AlreadyExists`.
pub(super) fn take_lock(path: &Path, create: bool) -> Result<Option<OwnedFd>, Error> {
    let flags = OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let mut busy = 0;
    let mut relocks = 0;
    while relocks < 8 {
        let fd = match rustix::fs::open(
            path,
            if create {
                flags | OFlags::CREATE
            } else {
                flags
            },
            Mode::RUSR | Mode::WUSR,
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if !create => return Ok(None),
            Err(e) => return Err(os_error("open(lock)", e)),
        };
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) if create && busy < LOCK_RETRIES => {
                busy += 1;
                drop(fd);
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(Errno::WOULDBLOCK) => return Ok(None),
            Err(e) => return Err(os_error("flock", e)),
        }
        // Its last holder may have unlinked the file between our open and our lock: the lock
        // counts only if the path still names the file we locked.
        let ours = rustix::fs::fstat(&fd).map_err(|e| os_error("fstat", e))?;
        if let Ok(now) = rustix::fs::statat(CWD, path, AtFlags::SYMLINK_NOFOLLOW)
            && (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino)
        {
            return Ok(Some(fd));
        }
        relocks += 1;
    }
    Err(os_error("flock", Errno::AGAIN))
}

/// Removes the files of names whose lock nobody holds (their listener died), at most
/// [`SWEEP_LIMIT`] of them. It never creates a lock file: one it created could make a
/// listener arriving at that moment find the name taken.
pub(super) fn sweep_stale(dir: &Path, except: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if removed >= SWEEP_LIMIT {
            break;
        }
        let path = entry.path();
        if path == except || path.extension().is_none_or(|e| e != "lock") {
            continue;
        }
        if let Ok(Some(lock)) = take_lock(&path, false) {
            let _ = rustix::fs::unlink(path.with_extension("sock"));
            let _ = rustix::fs::unlink(path.as_path());
            drop(lock);
            removed += 1;
        }
    }
}

/// Test support: what is left of set `name`: this process's mappings of its shared memory,
/// and whether its socket file exists (1) or not (0), live or stale.
pub(crate) fn leftovers(name: &str) -> (usize, usize) {
    let prefix = format!("vdi-shm:{name}:");
    let mapped = MAPPINGS.count_tagged(&prefix);
    let file = match set_paths(name, false) {
        Ok(Some(p)) => usize::from(
            rustix::fs::statat(CWD, p.sock.as_path(), AtFlags::SYMLINK_NOFOLLOW).is_ok(),
        ),
        _ => 0,
    };
    (mapped, file)
}
