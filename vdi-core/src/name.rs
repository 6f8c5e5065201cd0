//! Names of device sets and devices, and the rules that keep them inside the library's own
//! namespace of shared-memory objects.

use core::fmt;

/// The longest name accepted, in bytes of UTF-8 (96).
///
/// Microsoft's limit is that of a `CreateFileMapping` name; ours is chosen so that a name plus
/// the library's prefix fits every platform's object namespace (a Unix socket address holds 107
/// bytes), while a GUID (36 characters) with a product prefix fits comfortably.
pub const MAX_NAME_LEN: usize = 96;

/// A broken naming rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    TooLong(usize),
    /// The name holds `/` or `\`, which could reach outside the library's namespace.
    PathSeparator,
    /// The name holds NUL or another control character.
    ControlCharacter,
    /// The name is `.` or `..`.
    DotName,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("the name is empty"),
            Self::TooLong(n) => write!(
                f,
                "the name is {n} bytes long, over the limit of {MAX_NAME_LEN}"
            ),
            Self::PathSeparator => f.write_str("the name contains a path separator ('/' or '\\')"),
            Self::ControlCharacter => f.write_str("the name contains NUL or a control character"),
            Self::DotName => f.write_str("the name is '.' or '..'"),
        }
    }
}

impl std::error::Error for NameError {}

/// Checks a device-set or device name.
///
/// Names are case-sensitive and compared byte for byte.
///
/// # Errors
///
/// The first rule broken, as a [`NameError`].
///
/// ```
/// use vdi_core::{validate_name, NameError};
/// assert!(validate_name("Contoso-7c9e6679-7425-40de-944b-e07fc1f90ae7").is_ok());
/// assert_eq!(validate_name("../etc"), Err(NameError::PathSeparator));
/// assert_eq!(validate_name("a\0b"), Err(NameError::ControlCharacter));
/// ```
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if name == "." || name == ".." {
        return Err(NameError::DotName);
    }
    for c in name.chars() {
        if c == '/' || c == '\\' {
            return Err(NameError::PathSeparator);
        }
        if c.is_control() {
            return Err(NameError::ControlCharacter);
        }
    }
    Ok(())
}

/// The conventional name of device `index` of the set `set`, used by this project's agent,
/// reference engine and examples: device 0 has the set's name (as VDI requires), device `i > 0`
/// is `<set>-stripe<i>`.
///
/// With SQL Server the names are whatever the `VIRTUAL_DEVICE = '...'` clauses say; this is only
/// a convention both sides of this project share. A set name of up to 87 bytes leaves room for
/// the suffix of device 63 within [`MAX_NAME_LEN`].
///
/// ```
/// use vdi_core::stripe_device_name;
/// assert_eq!(stripe_device_name("nightly", 0), "nightly");
/// assert_eq!(stripe_device_name("nightly", 3), "nightly-stripe3");
/// ```
pub fn stripe_device_name(set: &str, index: u32) -> String {
    if index == 0 {
        set.to_owned()
    } else {
        format!("{set}-stripe{index}")
    }
}
