//! Sizes and durations as the command line takes them: `64KiB`, `1M`, `512`; `500ms`, `5s`,
//! `2m`.

use core::fmt;
use std::time::Duration;

/// A size or duration the command line could not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitError {
    input: String,
    what: &'static str,
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' is not {}", self.input, self.what)
    }
}

impl std::error::Error for UnitError {}

/// Splits `s` into its number and its (trimmed, lowercase) suffix.
fn split(s: &str) -> Option<(u64, String)> {
    let s = s.trim();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n = s[..end].parse().ok()?;
    Some((n, s[end..].trim().to_ascii_lowercase()))
}

/// A byte count: a number with an optional suffix. `K`/`KiB` (1024), `M`/`MiB`, `G`/`GiB`,
/// `T`/`TiB` are binary; `KB`, `MB`, `GB`, `TB` are decimal; `B` or nothing is bytes. Case does
/// not matter.
///
/// # Errors
///
/// A [`UnitError`] for anything else, or a value that overflows 64 bits.
///
/// ```
/// use vdi_engine::units::parse_size;
/// assert_eq!(parse_size("64KiB"), Ok(65536));
/// assert_eq!(parse_size("1G"), Ok(1 << 30));
/// assert_eq!(parse_size("2MB"), Ok(2_000_000));
/// assert_eq!(parse_size("4096"), Ok(4096));
/// assert!(parse_size("12 apples").is_err());
/// ```
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let err = || UnitError {
        input: s.to_owned(),
        what: "a size (e.g. 4096, 64KiB, 1M, 2GiB)",
    };
    let (n, suffix) = split(s).ok_or_else(err)?;
    let mult: u64 = match suffix.as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

/// A byte count that fits 32 bits (block sizes, transfer sizes).
///
/// # Errors
///
/// As [`parse_size`], or a value above `u32::MAX`.
pub fn parse_size_u32(s: &str) -> Result<u32, UnitError> {
    let n = parse_size(s)?;
    u32::try_from(n).map_err(|_| UnitError {
        input: s.to_owned(),
        what: "a size below 4 GiB",
    })
}

fn parse_duration_with(s: &str, plain_is_ms: bool) -> Result<Duration, UnitError> {
    let err = || UnitError {
        input: s.to_owned(),
        what: "a duration (e.g. 500ms, 5s, 2m)",
    };
    let (n, suffix) = split(s).ok_or_else(err)?;
    Ok(match suffix.as_str() {
        "" if plain_is_ms => Duration::from_millis(n),
        "" | "s" | "sec" | "secs" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" | "min" | "mins" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
        _ => return Err(err()),
    })
}

/// A duration: a number with `ms`, `s`, `m` or `h`; a plain number is seconds.
///
/// # Errors
///
/// A [`UnitError`] for anything else.
///
/// ```
/// use std::time::Duration;
/// use vdi_engine::units::parse_duration;
/// assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
/// assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    parse_duration_with(s, false)
}

/// A duration where a plain number is milliseconds (as `serverTimeOut` is counted).
///
/// # Errors
///
/// A [`UnitError`] for anything else.
///
/// ```
/// use std::time::Duration;
/// use vdi_engine::units::parse_millis;
/// assert_eq!(parse_millis("200"), Ok(Duration::from_millis(200)));
/// assert_eq!(parse_millis("2s"), Ok(Duration::from_secs(2)));
/// ```
pub fn parse_millis(s: &str) -> Result<Duration, UnitError> {
    parse_duration_with(s, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("").is_err());
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert!(parse_size_u32("4GiB").is_err());
        assert_eq!(parse_size_u32("4MiB"), Ok(4 << 20));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_millis("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("1.5s").is_err());
    }
}
