//! Deterministic stream data: each device's stream is a sequence of 64-bit words that depends
//! only on the device's index and the word's position, so one side can write any part of it
//! and the other check it without either keeping the stream.

/// The splitmix64 mixing function: a different, well-spread `u64` for each input. Also a small
/// random number generator, fed its own output.
pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Fills `buf` with the stream bytes of device `device` starting at stream offset `offset`
/// (both multiples of 8).
///
/// # Panics
///
/// If `offset` or the length of `buf` is not a multiple of 8.
pub fn fill(device: u32, offset: u64, buf: &mut [u8]) {
    assert!(offset.is_multiple_of(8) && buf.len().is_multiple_of(8));
    let seed = u64::from(device) << 48;
    for (i, chunk) in buf.chunks_exact_mut(8).enumerate() {
        let v = splitmix(seed ^ (offset / 8 + i as u64));
        chunk.copy_from_slice(&v.to_le_bytes());
    }
}

/// Whether `buf` holds device `device`'s stream bytes from `offset`; `false` if `offset` or
/// the length of `buf` is not a multiple of 8.
pub fn check(device: u32, offset: u64, buf: &[u8]) -> bool {
    if !offset.is_multiple_of(8) || !buf.len().is_multiple_of(8) {
        return false;
    }
    let seed = u64::from(device) << 48;
    buf.chunks_exact(8)
        .enumerate()
        .all(|(i, chunk)| chunk == splitmix(seed ^ (offset / 8 + i as u64)).to_le_bytes())
}

/// The name of device `i` of set `set`: the first device has the set's name, device `i` is
/// `<set>-d<i>`.
pub fn device_name(set: &str, i: u32) -> String {
    if i == 0 {
        set.to_owned()
    } else {
        format!("{set}-d{i}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_accepts_what_fill_wrote_at_any_offset() {
        let mut whole = vec![0; 256];
        fill(3, 0, &mut whole);
        let mut part = vec![0; 64];
        fill(3, 128, &mut part);
        assert_eq!(part, whole[128..192]);
        assert!(check(3, 128, &part));
        assert!(!check(4, 128, &part), "another device's stream");
        assert!(!check(3, 120, &part), "another offset");
        assert!(
            !check(3, 4, &whole[4..68]),
            "an offset that is not a multiple of 8"
        );
    }

    #[test]
    fn first_device_has_the_set_name() {
        assert_eq!(device_name("s", 0), "s");
        assert_eq!(device_name("s", 7), "s-d7");
    }
}
