//! Sizes and durations as the command lines of the engine and the agent take them (one syntax
//! for both): `64KiB`, `1.5GiB`, `2MB`, `512`; `500ms`, `5s`, `2m`, `1m30s`, `30` (seconds); and
//! timeouts ([`Limit`]), where `0` means no limit.

use core::fmt;
use std::time::Duration;

/// A size or duration the command line could not read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{input}' is not {what}")]
pub struct UnitError {
    input: String,
    what: &'static str,
}

/// A byte count: a number, with a fraction if you like (`1.5GiB`), and an optional suffix.
/// `K`/`KiB` (1024), `M`/`MiB`, `G`/`GiB`, `T`/`TiB` are binary; `KB`, `MB`, `GB`, `TB` are
/// decimal (so `64mb` is 64 000 000 bytes and `64MiB` is 67 108 864); `B` or nothing is bytes.
/// Case does not matter. A fraction must come out as whole bytes.
///
/// # Errors
///
/// A [`UnitError`] for anything else, or a value that overflows 64 bits.
///
/// ```
/// use vdi_engine::units::parse_size;
/// assert_eq!(parse_size("64KiB"), Ok(65536));
/// assert_eq!(parse_size("1G"), Ok(1 << 30));
/// assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
/// assert_eq!(parse_size("2MB"), Ok(2_000_000));
/// assert_eq!(parse_size("4096"), Ok(4096));
/// assert!(parse_size("12 apples").is_err());
/// assert!(parse_size("1.5").is_err()); // not whole bytes
/// ```
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let err = || UnitError {
        input: s.to_owned(),
        what: "a size (e.g. 4096, 64KiB, 1.5GiB, 2MB: KiB/MiB/GiB/TiB and K/M/G/T are powers of \
               1024, KB/MB/GB/TB powers of 1000)",
    };
    let t = s.trim();
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = (&t[..end], t[end..].trim().to_ascii_lowercase());
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
    scaled(number, mult).ok_or_else(err)
}

/// `number` (digits, optionally with one `.` and more digits) times `mult`, if that is a whole
/// number that fits 64 bits.
fn scaled(number: &str, mult: u64) -> Option<u64> {
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || (number.contains('.') && frac.is_empty()) {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let mut total = u128::from(whole).checked_mul(u128::from(mult))?;
    if !frac.is_empty() {
        // Exact: frac / 10^len * mult must be whole.
        let digits = frac.len().min(30);
        let frac_n: u128 = frac[..digits].parse().ok()?;
        if frac[digits..].bytes().any(|b| b != b'0') {
            return None;
        }
        let scale = 10u128.checked_pow(u32::try_from(digits).ok()?)?;
        let part = frac_n.checked_mul(u128::from(mult))?;
        if part % scale != 0 {
            return None;
        }
        total = total.checked_add(part / scale)?;
    }
    u64::try_from(total).ok()
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

/// A duration, as every timeout and duration flag of the engine and the agent takes it: one or
/// more numbers each with a unit, `ms`, `s`, `m` or `h` (`500ms`, `5s`, `2m`, `1m30s`,
/// `1h 5m`), or a bare number, which is seconds.
///
/// # Errors
///
/// A [`UnitError`] for anything else, or a value that overflows.
///
/// ```
/// use std::time::Duration;
/// use vdi_engine::units::parse_duration;
/// assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
/// assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let err = || UnitError {
        input: s.to_owned(),
        what: "a duration (e.g. 500ms, 5s, 2m, 1m30s; a bare number is seconds)",
    };
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map(Duration::from_secs).map_err(|_| err());
    }
    let mut rest = t;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let end = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        let n: u64 = rest[..end].parse().map_err(|_| err())?;
        rest = rest[end..].trim_start();
        let unit_end = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let part = match rest[..unit_end].to_ascii_lowercase().as_str() {
            "ms" => Duration::from_millis(n),
            "s" | "sec" | "secs" => Duration::from_secs(n),
            "m" | "min" | "mins" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
            _ => return Err(err()),
        };
        total = total.checked_add(part).ok_or_else(err)?;
        rest = rest[unit_end..].trim_start();
        parts += 1;
    }
    if parts == 0 {
        return Err(err());
    }
    Ok(total)
}

/// A timeout as a flag gives it: a duration in [`parse_duration`]'s syntax, where `0` (in any
/// unit) means no limit, the same for every timeout flag; it prints as it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    limit: Option<Duration>,
    given: String,
}

impl Limit {
    /// A limit of `d` (`Duration::ZERO`: none), printed as `given`.
    pub fn new(d: Duration, given: impl Into<String>) -> Self {
        Self {
            limit: (!d.is_zero()).then_some(d),
            given: given.into(),
        }
    }

    /// The limit, or `None` for no limit.
    pub fn get(&self) -> Option<Duration> {
        self.limit
    }

    /// The limit as a duration, where no limit is one far longer than any run
    /// ([`NO_LIMIT`]), for code that needs a number.
    pub fn or_no_limit(&self) -> Duration {
        self.limit.unwrap_or(NO_LIMIT)
    }
}

/// How long "no limit" lasts where a duration is needed: about 136 years.
pub const NO_LIMIT: Duration = Duration::from_secs(u32::MAX as u64);

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.limit {
            Some(_) => f.write_str(&self.given),
            None => f.write_str("no limit"),
        }
    }
}

impl std::str::FromStr for Limit {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, UnitError> {
        parse_limit(s)
    }
}

/// A [`Limit`]: [`parse_duration`]'s syntax, `0` for no limit.
///
/// # Errors
///
/// As [`parse_duration`].
///
/// ```
/// use std::time::Duration;
/// use vdi_engine::units::parse_limit;
/// assert_eq!(parse_limit("1m30s")?.get(), Some(Duration::from_secs(90)));
/// assert_eq!(parse_limit("1m30s")?.to_string(), "1m30s");
/// assert_eq!(parse_limit("0")?.get(), None);
/// assert_eq!(parse_limit("0ms")?.get(), None);
/// # Ok::<(), vdi_engine::units::UnitError>(())
/// ```
pub fn parse_limit(s: &str) -> Result<Limit, UnitError> {
    parse_duration(s).map(|d| Limit::new(d, s.trim()))
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
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h 5m 2s"), Ok(Duration::from_secs(3902)));
        assert_eq!(
            parse_duration("2m500ms"),
            Ok(Duration::from_millis(120_500))
        );
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5s3").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn fractional_sizes() {
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("0.5k"), Ok(512));
        assert_eq!(parse_size("2.25MB"), Ok(2_250_000));
        assert_eq!(parse_size("1.000"), Ok(1));
        assert!(parse_size("1.5").is_err());
        assert!(parse_size("1.").is_err());
        assert!(parse_size(".5G").is_err());
        assert!(parse_size("1.2.3G").is_err());
        assert!(parse_size("0.0000000001K").is_err());
    }
}
