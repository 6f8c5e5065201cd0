//! Arbitrary bytes as a peer's shared region: every check a process applies to what a peer
//! wrote must reject garbage without panicking, hanging or reading out of bounds. The same
//! bytes read as ring entries go through `CommandEntry::from_words` and
//! `CompletionEntry::from_words` directly.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vdi_shm::fuzzing::shared_region(data);
    vdi_shm::fuzzing::ring_entries(data);
});
