//! Who may take part: the rendezvous directory must be this user's alone, and a peer's
//! credentials (`SO_PEERCRED` or `getpeereid`) must be admitted.

use super::*;

/// Why a rendezvous directory was refused: a warning that names it, then `VD_E_SECURITY`.
pub(super) fn refuse(dir: &Path, why: &str) -> Error {
    warn!(
        "refusing the rendezvous directory {}: {why}; no set can be created or joined as this \
         user until it is removed",
        dir.display()
    );
    Error::Security
}

/// Checks that `dir` is a directory (not a symlink) owned by `uid` that nobody else may write.
pub(super) fn check_dir(dir: &Path, uid: u32) -> Result<(), Error> {
    let st = rustix::fs::statat(CWD, dir, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| os_error("lstat", e))?;
    let owner = st.st_uid;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {}
        FileType::Symlink => {
            return Err(refuse(
                dir,
                &format!("it is a symbolic link (made by uid {owner}), not a directory"),
            ));
        }
        _ => {
            return Err(refuse(
                dir,
                &format!("it is no directory (made by uid {owner})"),
            ));
        }
    }
    if owner != uid {
        return Err(refuse(
            dir,
            &format!("another user (uid {owner}) created it, not this one (uid {uid})"),
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(refuse(
            dir,
            &format!(
                "its group or others may write to it (mode {:o})",
                st.st_mode & 0o777
            ),
        ));
    }
    Ok(())
}

/// The credentials of the process at the other end of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerCred {
    /// Process id (0 where the system does not tell).
    pub(crate) pid: i32,
    /// Effective user id.
    pub(crate) uid: u32,
    /// Effective group id.
    pub(crate) gid: u32,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
pub(super) fn peer_cred(fd: BorrowedFd<'_>) -> Result<PeerCred, Error> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given; the kernel writes at
    // most `len` bytes of a `struct ucred`, and every bit pattern is a valid libc::ucred
    // (three plain integers).
    let r = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if r != 0 || len as usize != size_of::<libc::ucred>() {
        return Err(io_error(
            "getsockopt(SO_PEERCRED)",
            &io::Error::last_os_error(),
        ));
    }
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(super) fn peer_cred(fd: BorrowedFd<'_>) -> Result<PeerCred, Error> {
    let (mut uid, mut gid) = (0, 0);
    // SAFETY: `uid` and `gid` are valid for writes; the call fills them for a connected
    // AF_UNIX socket, which `fd` is (borrowed for the call).
    let r = unsafe {
        libc::getpeereid(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &raw mut uid,
            &raw mut gid,
        )
    };
    if r != 0 {
        return Err(io_error("getpeereid", &io::Error::last_os_error()));
    }
    Ok(PeerCred { pid: 0, uid, gid })
}

/// Whether a peer with these credentials may join: this process's (effective) user, or an
/// admitted user or group (which cannot reach the user's directory: see the module docs).
pub(crate) fn admitted(cred: &PeerCred, options: &Options) -> bool {
    let uid = rustix::process::geteuid().as_raw();
    cred.uid == uid || options.admit_uid == Some(cred.uid) || options.admit_gid == Some(cred.gid)
}
