//! Finding and loading the library: the path (a flag, `VDI_SQLVDI_LIB`, or SQL Server's own),
//! a check of the file's ELF header before `dlopen` (so a file that is not a library, or one
//! built for another machine, is named as such), and the members the shim needs.

#![deny(unsafe_code)]

use std::{
    ffi::CString,
    fs, io,
    io::Read,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use crate::raw::{Library, ShimLoadError};

/// Where SQL Server on Linux installs its VDI client library.
pub const DEFAULT_PATH: &str = "/opt/mssql/lib/libsqlvdi.so";

/// The environment variable that names the library when no path is given.
pub const PATH_ENV: &str = "VDI_SQLVDI_LIB";

/// Why a library could not be loaded. Each names the path and the cause.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No file at the path.
    #[error(
        "{}: no such file: install SQL Server's VDI client library (mssql-server puts it at {DEFAULT_PATH}) or name it with --sqlvdi-lib or {PATH_ENV}",
        path.display()
    )]
    NotFound {
        /// The path tried.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("{}: cannot read it: {source}", path.display())]
    Unreadable {
        /// The path tried.
        path: PathBuf,
        /// What reading said.
        source: io::Error,
    },
    /// The file is not an ELF shared library.
    #[error("{}: not a shared library ({what})", path.display())]
    NotALibrary {
        /// The path tried.
        path: PathBuf,
        /// What the file is instead.
        what: String,
    },
    /// The library was built for another machine.
    #[error("{}: built for {found}, but this process is {expected}", path.display())]
    WrongArchitecture {
        /// The path tried.
        path: PathBuf,
        /// The library's architecture.
        found: String,
        /// This process's.
        expected: &'static str,
    },
    /// `dlopen` refused it (a missing dependency, ...).
    #[error("{}: dlopen failed: {message}", path.display())]
    Dlopen {
        /// The path tried.
        path: PathBuf,
        /// `dlerror`'s message.
        message: String,
    },
    /// A member of the SDK's classes is missing.
    #[error(
        "{}: has no {member}: not a VDI client library with the Linux SDK's interface, or an incompatible version",
        path.display()
    )]
    MissingSymbol {
        /// The path tried.
        path: PathBuf,
        /// The member's declaration and mangled name.
        member: String,
    },
}

/// The path to load: `given`, else `VDI_SQLVDI_LIB`, else [`DEFAULT_PATH`].
pub fn resolve(given: Option<&Path>) -> PathBuf {
    given
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(PATH_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

/// Loads the library at `path` once per process (a second load of the same path, as given,
/// returns the first).
pub(crate) fn load(path: &Path) -> Result<&'static Library, LoadError> {
    static LOADED: Mutex<Vec<(PathBuf, &'static Library)>> = Mutex::new(Vec::new());
    let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, lib)) = loaded.iter().find(|(p, _)| p == path) {
        return Ok(lib);
    }
    check_elf(path)?;
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| LoadError::NotFound {
        path: path.to_path_buf(),
    })?;
    let lib = Library::load(&c_path).map_err(|e| match e {
        ShimLoadError::Dlopen(message) => LoadError::Dlopen {
            path: path.to_path_buf(),
            message,
        },
        ShimLoadError::Missing(member) => LoadError::MissingSymbol {
            path: path.to_path_buf(),
            member,
        },
    })?;
    let lib: &'static Library = Box::leak(Box::new(lib));
    loaded.push((path.to_path_buf(), lib));
    Ok(lib)
}

/// Checks that `path` is an ELF shared object for this process's machine.
fn check_elf(path: &Path) -> Result<(), LoadError> {
    let p = || path.to_path_buf();
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(LoadError::NotFound { path: p() });
        }
        Err(source) => return Err(LoadError::Unreadable { path: p(), source }),
    };
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(LoadError::NotALibrary {
            path: p(),
            what: "a directory".into(),
        });
    }
    let mut header = [0u8; 20];
    let mut got = 0;
    while got < header.len() {
        match file.read(&mut header[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(source) => return Err(LoadError::Unreadable { path: p(), source }),
        }
    }
    let not = |what: &str| LoadError::NotALibrary {
        path: p(),
        what: what.to_owned(),
    };
    if got < header.len() || &header[..4] != b"\x7fELF" {
        return Err(not("no ELF header"));
    }
    let class = header[4];
    let little = header[5] == 1;
    let half = |i: usize| {
        let b = [header[i], header[i + 1]];
        if little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    };
    let machine = machine_name(class, half(18));
    let expected = this_machine();
    if machine != expected || little != cfg!(target_endian = "little") {
        return Err(LoadError::WrongArchitecture {
            path: p(),
            found: machine,
            expected,
        });
    }
    // ET_DYN: a shared object (ET_EXEC and ET_REL cannot be loaded).
    match half(16) {
        3 => Ok(()),
        1 => Err(not("an ELF relocatable object, not a shared object")),
        2 => Err(not("an ELF executable, not a shared object")),
        4 => Err(not("an ELF core dump")),
        t => Err(not(&format!("ELF file type {t}"))),
    }
}

/// A name for an ELF class and machine.
fn machine_name(class: u8, machine: u16) -> String {
    let bits = match class {
        1 => "32-bit",
        2 => "64-bit",
        _ => "unknown-class",
    };
    let name = match machine {
        3 => "x86",
        62 => "x86_64",
        40 => "arm",
        183 => "aarch64",
        243 => "riscv",
        21 => "powerpc64",
        22 => "s390",
        m => return format!("{bits} ELF machine {m}"),
    };
    match (class, machine) {
        (2, 62 | 183) | (1, 3 | 40) => name.to_owned(),
        _ => format!("{bits} {name}"),
    }
}

/// This process's machine, as [`machine_name`] names it.
fn this_machine() -> &'static str {
    if cfg!(target_arch = "x86_64") {
        "x86_64"
    } else if cfg!(target_arch = "aarch64") {
        "aarch64"
    } else if cfg!(target_arch = "x86") {
        "x86"
    } else if cfg!(target_arch = "arm") {
        "arm"
    } else {
        std::env::consts::ARCH
    }
}

#[cfg(test)]
mod tests {
    use super::{LoadError, check_elf, machine_name};

    fn elf(class: u8, machine: u16, kind: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = class;
        h[5] = 1;
        h[16..18].copy_from_slice(&kind.to_le_bytes());
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn headers_are_classified() {
        let dir = std::env::temp_dir().join(format!("vdi-linux-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let case = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            check_elf(&p)
        };
        assert!(matches!(
            case("text", b"not a library at all\n"),
            Err(LoadError::NotALibrary { .. })
        ));
        assert!(matches!(
            case("empty", b""),
            Err(LoadError::NotALibrary { .. })
        ));
        let e = case("arm64", &elf(2, 183, 3)).unwrap_err();
        assert!(
            e.to_string()
                .contains("built for aarch64, but this process is x86_64"),
            "{e}"
        );
        let e = case("i386", &elf(1, 3, 3)).unwrap_err();
        assert!(e.to_string().contains("built for x86,"), "{e}");
        let e = case("exec", &elf(2, 62, 2)).unwrap_err();
        assert!(e.to_string().contains("an ELF executable"), "{e}");
        assert!(case("ok", &elf(2, 62, 3)).is_ok());
        assert!(matches!(
            check_elf(&dir.join("absent")),
            Err(LoadError::NotFound { .. })
        ));
        assert!(matches!(
            check_elf(&dir),
            Err(LoadError::NotALibrary { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(machine_name(2, 9999), "64-bit ELF machine 9999");
    }
}
