//! Who may take part: the user of a peer's process token, the pipe's owner-only DACL, and
//! whether a peer is admitted.

use super::*;

/// The string SID of the user of `process`'s token (`S-1-5-21-...`).
pub(super) fn process_user(process: RawHandle) -> Result<String, Error> {
    let mut token: HANDLE = ptr::null_mut();
    // SAFETY: `process` is a process handle the caller holds open (or the current-process
    // pseudo-handle); `token` receives a new handle.
    if unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut token) } == 0 {
        return Err(last_os_error("OpenProcessToken"));
    }
    // SAFETY: a handle OpenProcessToken just returned.
    let token = unsafe { owned(token, "OpenProcessToken")? };
    let mut len = 0u32;
    // SAFETY: a size query: no buffer, and `len` receives the size needed.
    let _ = unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            ptr::null_mut(),
            0,
            &mut len,
        )
    };
    if last_error() != ERROR_INSUFFICIENT_BUFFER || len == 0 {
        return Err(last_os_error("GetTokenInformation"));
    }
    // u64 words: the buffer must be aligned for TOKEN_USER, which holds a pointer.
    let mut buf = vec![0u64; (len as usize).div_ceil(8)];
    // SAFETY: `buf` has room for `len` bytes, as the size query asked.
    if unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            buf.as_mut_ptr().cast(),
            len,
            &mut len,
        )
    } == 0
    {
        return Err(last_os_error("GetTokenInformation"));
    }
    // SAFETY: the call filled `buf` with a TOKEN_USER (aligned: u64 storage), whose SID
    // pointer points into `buf`, which lives until the end of this function.
    let sid = unsafe { (*buf.as_ptr().cast::<TOKEN_USER>()).User.Sid };
    let mut text: *mut u16 = ptr::null_mut();
    // SAFETY: `sid` is a valid SID (above); `text` receives a LocalAlloc'd string.
    if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 || text.is_null() {
        return Err(last_os_error("ConvertSidToStringSidW"));
    }
    // SAFETY: `text` is a NUL-terminated UTF-16 string the call allocated; it is read up to
    // the NUL, then freed once.
    let s = unsafe {
        let n = (0..).take_while(|&i| *text.add(i) != 0).count();
        let s = String::from_utf16_lossy(std::slice::from_raw_parts(text, n));
        LocalFree(text.cast());
        s
    };
    Ok(s)
}

/// The user of this process, as a string SID (computed once).
pub(super) fn current_user() -> Result<&'static str, Error> {
    static USER: OnceLock<Result<String, Error>> = OnceLock::new();
    USER.get_or_init(|| {
        // SAFETY: GetCurrentProcess returns a pseudo-handle; nothing is created.
        process_user(unsafe { GetCurrentProcess() })
    })
    .as_deref()
    .map_err(|e| *e)
}

/// A self-relative security descriptor whose DACL admits only this process's user.
pub(super) struct OwnerOnly(PSECURITY_DESCRIPTOR);

// SAFETY: the descriptor is allocated once, never written after, and never freed (it lives for
// the process); reading it from several threads is fine.
unsafe impl Send for OwnerOnly {}
// SAFETY: as for Send.
unsafe impl Sync for OwnerOnly {}

/// Security attributes for the pipe: an owner-only DACL, not inheritable.
pub(super) fn owner_only() -> Result<SECURITY_ATTRIBUTES, Error> {
    static SD: OnceLock<Result<OwnerOnly, Error>> = OnceLock::new();
    let sd = SD
        .get_or_init(|| {
            // Protected (P: no inherited entries), one entry: Generic All for this user.
            let sddl = wide(&format!("D:P(A;;GA;;;{})", current_user()?));
            let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
            // SAFETY: `sddl` is NUL-terminated; `sd` receives a LocalAlloc'd descriptor, kept
            // for the life of the process.
            let ok = unsafe {
                ConvertStringSecurityDescriptorToSecurityDescriptorW(
                    sddl.as_ptr(),
                    SDDL_REVISION_1,
                    &mut sd,
                    ptr::null_mut(),
                )
            };
            if ok == 0 || sd.is_null() {
                return Err(last_os_error(
                    "ConvertStringSecurityDescriptorToSecurityDescriptorW",
                ));
            }
            Ok(OwnerOnly(sd))
        })
        .as_ref()
        .map_err(|e| *e)?;
    Ok(SECURITY_ATTRIBUTES {
        nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: sd.0,
        bInheritHandle: 0,
    })
}


/// The identity of the process at the other end of a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerCred {
    /// Process id.
    pub(crate) pid: i32,
    /// Whether its token's user is this process's user.
    pub(crate) same_user: bool,
}

/// Whether a peer may join: on Windows, only this process's user (see the module docs; the
/// Linux uid and gid options do not apply).
pub(crate) fn admitted(cred: &PeerCred, options: &Options) -> bool {
    let _ = options;
    cred.same_user
}
