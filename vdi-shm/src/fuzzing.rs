//! Fuzzing entry points (feature `fuzzing`): the code that reads a peer's shared memory, fed
//! with arbitrary bytes. Used by `fuzz/fuzz_targets/shared_region.rs` (`cargo xtask fuzz`).

use std::{
    sync::{Mutex, OnceLock, PoisonError},
    time::Duration,
};

use vdi_core::{ClientConfig, Config, ServerConfig};

use crate::{
    client::parse_command,
    layout::{CommandEntry, CompletionEntry, Control, DESCRIPTORS, Descriptor, QUEUE_DEPTH, Tag},
    queue::{self, RingIndex},
    segments::Segments,
    sync::Ordering,
    sys::{Attachment, Mapping},
    wait::LazyDeadline,
};

struct Fixture {
    control: Control,
    segments: Segments,
}

/// One cached control segment per device count (1..=4) and one 64 KiB buffer segment: creating
/// memfds on every input would make the fuzzer slow.
fn fixture(devices: u32) -> &'static Mutex<Fixture> {
    static FIXTURES: OnceLock<Vec<Mutex<Fixture>>> = OnceLock::new();
    let all = FIXTURES.get_or_init(|| {
        (1..=4)
            .map(|n| {
                let cfg = ClientConfig {
                    device_count: n,
                    ..ClientConfig::default()
                };
                let control = Control::create(&format!("fuzz{n}"), &cfg, 0x1234_5678)
                    .expect("fuzz fixture: control segment");
                let segments = Segments::new();
                let map = Mapping::create("vdi-shm:fuzz:segment0", 64 * 1024, &[])
                    .expect("fuzz fixture: buffer segment");
                segments.insert(0, map);
                Mutex::new(Fixture { control, segments })
            })
            .collect()
    });
    &all[(devices as usize - 1).min(3)]
}

/// Treats `data` as what a misbehaving peer wrote into a device set's control segment, then
/// runs every check a process applies to it: the header check of `Open`/`OpenInSecondary`, the
/// configuration rules, device names, the rings' slot publication words and consumer heads,
/// command entries with their buffer descriptors (touching every byte of the buffer views they
/// yield), completion entries, and descriptors. It must never panic, hang, or touch memory
/// outside the mappings.
///
/// The first byte picks the device count (1..=4) and the mode: raw bytes laid over the header,
/// or (offset, value) patches applied to a valid segment, which reaches deeper code.
pub fn shared_region(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let devices = u32::from(first & 3) + 1;
    let fx = fixture(devices)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let words = fx.control.words();
    for w in words {
        w.store(0, Ordering::Relaxed);
    }
    let cfg = ClientConfig {
        device_count: devices,
        ..ClientConfig::default()
    };
    fx.control.init(&cfg, 0x1234_5678);
    if first & 4 == 0 {
        for (w, chunk) in words.iter().zip(rest.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            w.store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
    } else {
        for patch in rest.chunks_exact(12) {
            let at = u32::from_le_bytes([patch[0], patch[1], patch[2], patch[3]]) as usize;
            let mut v = [0u8; 8];
            v.copy_from_slice(&patch[4..12]);
            words[at % words.len()].store(u64::from_le_bytes(v), Ordering::Relaxed);
        }
    }
    let Ok(fd) = fx.control.mapping().attachment() else {
        return;
    };
    check(fd, &fx, devices, rest);
}

fn check(fd: Attachment, fx: &Fixture, devices: u32, data: &[u8]) {
    let len = fx.control.layout().len as u64;
    let Ok(control) = Control::open(fd, &format!("fuzz{devices}"), len, devices) else {
        return;
    };
    let client = control.client_config();
    let _ = client.validate();
    let server = control.server_config();
    let cfg = Config::combine(&client, &server).unwrap_or_else(|_| {
        Config::combine(
            &ClientConfig {
                device_count: devices,
                ..ClientConfig::default()
            },
            &ServerConfig::backup(512, 65536),
        )
        .expect("a valid configuration")
    });
    let _ = control.abort_reason();
    for i in 0..devices {
        let _ = control.device_name(i);
        let mut idx = RingIndex::default();
        // A wait that spins briefly (and, its deadline passed, never sleeps) reads the next
        // slot's publication word as a waiting GetCommand does.
        let mut deadline = LazyDeadline::new(vdi_core::Timeout::from_millis(0));
        let _ = queue::wait(&control.sq(i), idx, 2, &mut deadline, &|| false);
        for _ in 0..=QUEUE_DEPTH + 1 {
            match queue::pop(&control.sq(i), &mut idx) {
                Ok(Some(words)) => {
                    let Some(entry) = CommandEntry::from_words(words) else {
                        continue;
                    };
                    if let Some(mut p) =
                        parse_command(&control, &cfg, &fx.segments, entry, Duration::ZERO, &|| {
                            false
                        })
                    {
                        p.touch();
                    }
                }
                Ok(None) | Err(()) => break,
            }
        }
        let mut idx = RingIndex::default();
        for _ in 0..=QUEUE_DEPTH + 1 {
            match queue::pop(&control.cq(i), &mut idx) {
                // The server matches a completion's tag against its own table of commands in
                // flight, which a peer cannot write; nothing else trusts the entry.
                Ok(Some(words)) => {
                    let _ = Tag::from_word(CompletionEntry::from_words(words).tag);
                }
                Ok(None) | Err(()) => break,
            }
        }
        // The producers' side: the server pushes commands and the client completions, each
        // checking the consumer's `head` when its own view of the ring says full (so more
        // pushes than the ring holds reach that check).
        for ring in [control.sq(i), control.cq(i)] {
            let mut idx = RingIndex::default();
            for n in 0..=QUEUE_DEPTH + 1 {
                if queue::push(&ring, &mut idx, [u64::from(n); 4]).is_err() {
                    break;
                }
            }
        }
    }
    for chunk in data.chunks_exact(6).take(64) {
        let index =
            u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) % (DESCRIPTORS + 8);
        let generation = u16::from_le_bytes([chunk[4], chunk[5]]);
        if let Some(words) = control.descriptor(index) {
            let _ = Descriptor::read(words, generation);
        }
    }
}

/// Treats `data` as the words of ring entries a misbehaving peer wrote, 32 bytes each, and
/// decodes every one as both sides do ([`CommandEntry::from_words`],
/// [`CompletionEntry::from_words`]): never a panic, and an entry accepted re-encodes to words
/// that decode to the same entry.
pub fn ring_entries(data: &[u8]) {
    for chunk in data.chunks(32) {
        let mut bytes = [0u8; 32];
        bytes[..chunk.len()].copy_from_slice(chunk);
        let words: [u64; 4] = std::array::from_fn(|i| {
            u64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().unwrap_or([0; 8]))
        });
        if let Some(c) = CommandEntry::from_words(words) {
            assert_eq!(CommandEntry::from_words(c.to_words()), Some(c));
        }
        let c = CompletionEntry::from_words(words);
        assert_eq!(CompletionEntry::from_words(c.to_words()), c);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Random raw bytes and random patches: no panic, no hang, no out-of-bounds access.
        #[test]
        fn shared_region_survives_garbage(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            super::shared_region(&data);
            super::ring_entries(&data);
        }

        /// Patches aimed at the rings and descriptors of a valid segment.
        #[test]
        fn shared_region_survives_targeted_patches(
            devices in 0u8..4,
            patches in proptest::collection::vec((0u32..60_000, any::<u64>()), 0..64),
        ) {
            let mut data = vec![devices | 4];
            for (at, v) in patches {
                data.extend_from_slice(&at.to_le_bytes());
                data.extend_from_slice(&v.to_le_bytes());
            }
            super::shared_region(&data);
        }
    }
}
