//! The control segment: what both sides share besides the buffers.
//!
//! ```text
//! offset        what
//! 0             header: magic, layout version, sizes, handle key, creator pid
//! 64            the client's half of the configuration (written at CreateEx)
//! 128           state words: set state (the futex GetConfiguration sleeps on), abort word
//! 192           the server's half of the configuration (written at EndConfiguration)
//! 256           segment table: the byte length of each buffer segment (0: none)
//! 4096          device blocks, DEVICE_STRIDE bytes each: flags, client pid, name,
//!               command ring (server -> client), completion ring (client -> server)
//! ...           descriptor table: DESCRIPTORS buffer descriptors of 16 bytes
//! ```
//!
//! Every field is a fixed-width atomic at an offset computed here from the device count, never
//! read from shared memory; the header's own copy of the sizes is only compared. The layout
//! changes only with [`LAYOUT_VERSION`].

use std::sync::Arc;

use vdi_core::{
    AbortReason, ClientConfig, CommandCode, Completion, CompletionCode, Error, Features,
    ProtocolReason, ServerConfig,
};

use crate::{
    ring::{ENTRY_WORDS, Entry, Ring, RingHeader, wake_all_sleepers},
    sync::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    sys::{self, FutexWake, Mapping},
};

/// "VDISHM" followed by the layout version, little-endian.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"VDISHM\x00\x02");
/// The version of this layout; peers must agree on it.
///
/// 2: ring entries of one 64-byte line each, with a per-slot publication word; no shared
/// `tail` (see the `ring` module).
pub(crate) const LAYOUT_VERSION: u32 = 2;
/// Commands that may be outstanding on one device: the capacity of each ring.
pub const QUEUE_DEPTH: u32 = 128;
/// Buffer descriptors in a set: the most buffers a set can have allocated at once.
pub const DESCRIPTORS: u32 = 16384;
/// Buffer segments a set can have (ids 0..=254).
pub const MAX_SEGMENTS: u32 = 255;

const DEVICE_BASE: usize = 4096;
const RING_HEADER: usize = size_of::<RingHeader>();
const RING_ENTRIES: usize = QUEUE_DEPTH as usize * size_of::<Entry>();
const DEV_SQ: usize = 128;
const DEV_CQ: usize = DEV_SQ + RING_HEADER + RING_ENTRIES;
const DEVICE_STRIDE: usize = (DEV_CQ + RING_HEADER + RING_ENTRIES).next_multiple_of(128);
const DESCRIPTOR_SIZE: usize = 16;
const SEGMENT_TABLE: usize = 256;

const _: () = {
    assert!(SEGMENT_TABLE + MAX_SEGMENTS as usize * 8 <= DEVICE_BASE);
    // Ring headers sit on their own 128-byte lines, entries on 64-byte lines of their own.
    assert!(RING_HEADER == 256 && size_of::<Entry>() == 64);
    assert!(DEVICE_BASE.is_multiple_of(128) && DEVICE_STRIDE.is_multiple_of(128));
    assert!(DEV_SQ.is_multiple_of(128) && DEV_CQ.is_multiple_of(128));
    assert!((DEV_SQ + RING_HEADER).is_multiple_of(64) && (DEV_CQ + RING_HEADER).is_multiple_of(64));
    // The device's flags, client pid and name fit below its command ring.
    assert!(D_NAME + vdi_core::MAX_NAME_LEN <= DEV_SQ);
    // 128 entries of 64 bytes per ring, two rings and their headers per device.
    assert!(DEVICE_STRIDE == 17_024);
};

// Header offsets.
const H_MAGIC: usize = 0;
const H_VERSION: usize = 8;
const H_DEVICE_COUNT: usize = 12;
const H_QUEUE_DEPTH: usize = 16;
const H_DESCRIPTORS: usize = 20;
const H_LEN: usize = 24;
const H_HANDLE_KEY: usize = 32;
const H_CREATOR_PID: usize = 36;
const H_CLIENT_CONFIG: usize = 64;
const H_STATE: usize = 128;
const H_ABORT: usize = 132;
const H_SERVER_CONFIG: usize = 192;

// Device block offsets.
const D_FLAGS: usize = 0;
const D_CLIENT_PID: usize = 4;
const D_NAME_LEN: usize = 8;
const D_NAME: usize = 16;

/// Device flag: the server opened the device (its name is valid).
pub(crate) const DEV_SERVER_OPEN: u32 = 1;
/// Device flag: the server closed the device (CloseDevice).
pub(crate) const DEV_CLOSED: u32 = 2;

/// Set state: created by the client, no server yet.
pub(crate) const STATE_CREATED: u32 = 0;
/// Set state: a server opened the set.
pub(crate) const STATE_CONNECTED: u32 = 1;
/// Set state: the server ended the configuration; the client may read it.
pub(crate) const STATE_CONFIGURED: u32 = 2;

/// Sizes and offsets of a control segment for `device_count` devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Devices in the set (1..=64).
    pub(crate) device_count: u32,
    descriptors: usize,
    /// The segment's length in bytes (a multiple of the page size).
    pub(crate) len: usize,
}

impl Layout {
    /// The layout for `device_count` devices (already validated as 1..=64).
    pub(crate) fn new(device_count: u32) -> Self {
        let descriptors = DEVICE_BASE + device_count as usize * DEVICE_STRIDE;
        let end = descriptors + DESCRIPTORS as usize * DESCRIPTOR_SIZE;
        Self {
            device_count,
            descriptors,
            len: end.next_multiple_of(sys::page_size()),
        }
    }

    /// The byte offsets of the words processes sleep on: the set state, and the `wake_seq` of
    /// both rings of every device (the platform layer may need a kernel object for each).
    pub(crate) fn wake_words(&self) -> Vec<usize> {
        let wake_seq = std::mem::offset_of!(RingHeader, wake_seq);
        let mut words = vec![H_STATE];
        for i in 0..self.device_count {
            let base = self.device(i);
            words.push(base + DEV_SQ + wake_seq);
            words.push(base + DEV_CQ + wake_seq);
        }
        words
    }

    fn device(&self, index: u32) -> usize {
        assert!(
            index < self.device_count,
            "layout: device index out of range"
        );
        DEVICE_BASE + index as usize * DEVICE_STRIDE
    }
}

/// A mapped control segment with typed accessors.
#[derive(Debug)]
pub(crate) struct Control {
    map: Arc<Mapping>,
    layout: Layout,
    /// This process's record of the abort: once set (here, or copied from shared memory), a
    /// peer storing 0 into the shared word cannot undo it.
    local_abort: AtomicU32,
    /// The peer at the other end of this process's connection went away.
    peer_gone: AtomicBool,
}

impl Control {
    /// Creates and initialises a control segment (the primary client, at CreateEx).
    pub(crate) fn create(
        name: &str,
        config: &ClientConfig,
        handle_key: u32,
    ) -> Result<Self, Error> {
        let layout = Layout::new(config.device_count);
        let map = Mapping::create(
            &format!("vdi-shm:{name}:control"),
            layout.len,
            &layout.wake_words(),
        )?;
        let c = Self::from_parts(map, layout);
        c.init(config, handle_key);
        Ok(c)
    }

    /// Writes the header of a fresh control segment.
    pub(crate) fn init(&self, config: &ClientConfig, handle_key: u32) {
        let c = self;
        let layout = self.layout;
        c.u32_at(H_VERSION).store(LAYOUT_VERSION, Ordering::Relaxed);
        c.u32_at(H_DEVICE_COUNT)
            .store(config.device_count, Ordering::Relaxed);
        c.u32_at(H_QUEUE_DEPTH)
            .store(QUEUE_DEPTH, Ordering::Relaxed);
        c.u32_at(H_DESCRIPTORS)
            .store(DESCRIPTORS, Ordering::Relaxed);
        c.u64_at(H_LEN).store(layout.len as u64, Ordering::Relaxed);
        c.u32_at(H_HANDLE_KEY).store(handle_key, Ordering::Relaxed);
        c.u32_at(H_CREATOR_PID)
            .store(sys::current_pid() as u32, Ordering::Relaxed);
        let cfg = [
            config.device_count,
            config.features.bits(),
            config.prefix_zone_size,
            config.alignment,
            config.soft_file_mark_block_size,
            config.eom_warning_size,
            config.server_timeout,
        ];
        for (i, v) in cfg.into_iter().enumerate() {
            c.u32_at(H_CLIENT_CONFIG + 4 * i)
                .store(v, Ordering::Relaxed);
        }
        // The magic last, with Release: a reader that sees it sees the rest.
        c.u64_at(H_MAGIC).store(MAGIC, Ordering::Release);
    }

    /// Maps the control segment of set `name` a peer sent and checks its header against this
    /// build's layout.
    pub(crate) fn open(
        attachment: sys::Attachment,
        name: &str,
        len: u64,
        device_count: u32,
    ) -> Result<Self, Error> {
        let misbehaved = Error::Protocol(ProtocolReason::PeerMisbehaved);
        if vdi_core::validate_device_count(device_count).is_err() {
            return Err(misbehaved);
        }
        let layout = Layout::new(device_count);
        if len != layout.len as u64 {
            return Err(Error::Protocol(ProtocolReason::VersionMismatch));
        }
        let map = Mapping::open(
            attachment,
            &format!("vdi-shm:{name}:control"),
            layout.len,
            &layout.wake_words(),
        )?;
        let c = Self::from_parts(map, layout);
        if c.u64_at(H_MAGIC).load(Ordering::Acquire) != MAGIC
            || c.u32_at(H_VERSION).load(Ordering::Relaxed) != LAYOUT_VERSION
            || c.u32_at(H_QUEUE_DEPTH).load(Ordering::Relaxed) != QUEUE_DEPTH
            || c.u32_at(H_DESCRIPTORS).load(Ordering::Relaxed) != DESCRIPTORS
        {
            return Err(Error::Protocol(ProtocolReason::VersionMismatch));
        }
        if c.u32_at(H_DEVICE_COUNT).load(Ordering::Relaxed) != device_count
            || c.u64_at(H_LEN).load(Ordering::Relaxed) != len
        {
            return Err(misbehaved);
        }
        Ok(c)
    }

    /// Every 64-bit word of the segment (for the fuzzer, which writes a peer's garbage).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn words(&self) -> &[AtomicU64] {
        self.map.slice(0, self.layout.len / 8)
    }

    fn from_parts(map: Mapping, layout: Layout) -> Self {
        Self {
            map: Arc::new(map),
            layout,
            local_abort: AtomicU32::new(0),
            peer_gone: AtomicBool::new(false),
        }
    }

    /// Records that the peer at the other end of this process's connection went away.
    pub(crate) fn set_peer_gone(&self) {
        self.peer_gone.store(true, Ordering::Release);
        self.wake_all();
    }

    /// Whether the peer at the other end of this process's connection went away.
    pub(crate) fn peer_gone(&self) -> bool {
        self.peer_gone.load(Ordering::Acquire)
    }

    /// The peer `who` (pid `pid`) at the other end of a connection of set `set` went away:
    /// unless the set had ended normally (or was aborted already), that aborts it.
    pub(crate) fn peer_went_away(&self, set: &str, who: &str, pid: i32) {
        if self.ended_normally() || self.abort_reason().is_some() {
            tracing::debug!(set, pid, "{who} disconnected");
            return;
        }
        tracing::warn!(
            set,
            pid, "the {who} went away before the set ended; aborting"
        );
        self.abort(AbortReason::PeerExited);
    }

    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        self.map.get(offset)
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        self.map.get(offset)
    }

    /// The mapping, to send its descriptor to a peer.
    pub(crate) fn mapping(&self) -> &Mapping {
        &self.map
    }

    /// The layout.
    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    /// Devices in the set.
    pub(crate) fn device_count(&self) -> u32 {
        self.layout.device_count
    }

    /// The per-set key of buffer handles.
    pub(crate) fn handle_key(&self) -> u32 {
        self.u32_at(H_HANDLE_KEY).load(Ordering::Relaxed)
    }

    /// The client's half of the configuration, as the header holds it (untrusted: validate).
    pub(crate) fn client_config(&self) -> ClientConfig {
        let v = |i: usize| self.u32_at(H_CLIENT_CONFIG + 4 * i).load(Ordering::Relaxed);
        ClientConfig {
            device_count: v(0),
            features: Features(v(1)),
            prefix_zone_size: v(2),
            alignment: v(3),
            soft_file_mark_block_size: v(4),
            eom_warning_size: v(5),
            server_timeout: v(6),
        }
    }

    /// The server's half, as the header holds it (untrusted: validate).
    pub(crate) fn server_config(&self) -> ServerConfig {
        let v = |i: usize| self.u32_at(H_SERVER_CONFIG + 4 * i).load(Ordering::Relaxed);
        ServerConfig {
            features: Features(v(0)),
            block_size: v(1),
            alignment: v(2),
            max_transfer_size: v(3),
            timeout: v(4),
        }
    }

    /// Writes the server's half (before publishing [`STATE_CONFIGURED`]).
    pub(crate) fn set_server_config(&self, s: &ServerConfig) {
        let vals = [
            s.features.bits(),
            s.block_size,
            s.alignment,
            s.max_transfer_size,
            s.timeout,
        ];
        for (i, v) in vals.into_iter().enumerate() {
            self.u32_at(H_SERVER_CONFIG + 4 * i)
                .store(v, Ordering::Relaxed);
        }
    }

    /// The set state word (also the futex GetConfiguration sleeps on).
    pub(crate) fn state(&self) -> &AtomicU32 {
        self.u32_at(H_STATE)
    }

    /// Publishes a new set state and wakes everyone sleeping on it.
    pub(crate) fn publish_state(&self, state: u32) {
        self.state().store(state, Ordering::Release);
        sys::futex_wake_all(self.state());
    }

    /// The abort reason, if the set was aborted: this process's latch, or what shared memory
    /// says (which is then latched, so a peer cannot clear it).
    pub(crate) fn abort_reason(&self) -> Option<AbortReason> {
        let local = self.local_abort.load(Ordering::Acquire);
        if local != 0 {
            return decode_abort(local);
        }
        let shared = self.u32_at(H_ABORT).load(Ordering::Acquire);
        if shared == 0 {
            return None;
        }
        let v =
            match self
                .local_abort
                .compare_exchange(0, shared, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => shared,
                Err(first) => first,
            };
        decode_abort(v)
    }

    /// Records an abort (the first reason wins), in this process and in shared memory, and wakes
    /// every sleeper of the set, in every process: the state word and both rings of every device.
    pub(crate) fn abort(&self, reason: AbortReason) {
        tracing::debug!(?reason, "abort recorded");
        let code = encode_abort(reason);
        let _ = self
            .local_abort
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        let _ = self
            .u32_at(H_ABORT)
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.wake_all();
    }

    /// Wakes every sleeper of the set.
    pub(crate) fn wake_all(&self) {
        sys::futex_wake_all(self.state());
        for i in 0..self.layout.device_count {
            wake_all_sleepers(&self.sq(i), &FutexWake);
            wake_all_sleepers(&self.cq(i), &FutexWake);
        }
    }

    /// The byte length of buffer segment `id` as the server published it (0: none).
    pub(crate) fn segment_len(&self, id: u32) -> &AtomicU64 {
        assert!(id < MAX_SEGMENTS, "layout: segment id out of range");
        self.u64_at(SEGMENT_TABLE + 8 * id as usize)
    }

    /// Device `index`'s flags ([`DEV_SERVER_OPEN`], [`DEV_CLOSED`]).
    pub(crate) fn device_flags(&self, index: u32) -> &AtomicU32 {
        self.u32_at(self.layout.device(index) + D_FLAGS)
    }

    /// Whether the server closed device `index` (CloseDevice). The server sets the flag after
    /// pushing its last command to the device.
    pub(crate) fn device_closed(&self, index: u32) -> bool {
        self.device_flags(index).load(Ordering::Acquire) & DEV_CLOSED != 0
    }

    /// Whether every device of the set was closed by the server: the set ended normally, and a
    /// peer that goes away now leaves nothing waiting.
    pub(crate) fn ended_normally(&self) -> bool {
        (0..self.device_count()).all(|i| self.device_closed(i))
    }

    /// The pid of the client process that opened device `index` (0: none).
    pub(crate) fn device_client(&self, index: u32) -> &AtomicU32 {
        self.u32_at(self.layout.device(index) + D_CLIENT_PID)
    }

    /// Writes device `index`'s name (the server, before setting [`DEV_SERVER_OPEN`]).
    pub(crate) fn set_device_name(&self, index: u32, name: &str) {
        let base = self.layout.device(index);
        let mut bytes = [0u8; vdi_core::MAX_NAME_LEN];
        let n = name.len().min(bytes.len());
        bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
        let words: &[AtomicU64] = self.map.slice(base + D_NAME, vdi_core::MAX_NAME_LEN / 8);
        for (w, chunk) in words.iter().zip(bytes.chunks_exact(8)) {
            w.store(
                u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])),
                Ordering::Relaxed,
            );
        }
        self.u32_at(base + D_NAME_LEN)
            .store(n as u32, Ordering::Relaxed);
    }

    /// Device `index`'s name, if the server opened it and the name is well-formed.
    pub(crate) fn device_name(&self, index: u32) -> Option<String> {
        let base = self.layout.device(index);
        if self.device_flags(index).load(Ordering::Acquire) & DEV_SERVER_OPEN == 0 {
            return None;
        }
        let len = self.u32_at(base + D_NAME_LEN).load(Ordering::Relaxed) as usize;
        if len > vdi_core::MAX_NAME_LEN {
            return None;
        }
        let words: &[AtomicU64] = self.map.slice(base + D_NAME, vdi_core::MAX_NAME_LEN / 8);
        let mut bytes = Vec::with_capacity(vdi_core::MAX_NAME_LEN);
        for w in words {
            bytes.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        bytes.truncate(len);
        let name = String::from_utf8(bytes).ok()?;
        vdi_core::validate_name(&name).ok()?;
        Some(name)
    }

    /// Device `index`'s command ring (server -> client).
    pub(crate) fn sq(&self, index: u32) -> Ring<'_> {
        let base = self.layout.device(index) + DEV_SQ;
        self.ring_at(base)
    }

    /// Device `index`'s completion ring (client -> server).
    pub(crate) fn cq(&self, index: u32) -> Ring<'_> {
        let base = self.layout.device(index) + DEV_CQ;
        self.ring_at(base)
    }

    fn ring_at(&self, base: usize) -> Ring<'_> {
        let header: &RingHeader = self.map.get(base);
        let entries: &[Entry] = self.map.slice(base + RING_HEADER, QUEUE_DEPTH as usize);
        Ring::new(header, entries).expect("layout: ring capacity is a power of two")
    }

    /// Descriptor `index`'s two words (see [`Descriptor`]).
    pub(crate) fn descriptor(&self, index: u32) -> Option<&[AtomicU64]> {
        (index < DESCRIPTORS).then(|| {
            self.map.slice(
                self.layout.descriptors + DESCRIPTOR_SIZE * index as usize,
                2,
            )
        })
    }
}

fn encode_abort(reason: AbortReason) -> u32 {
    match reason {
        AbortReason::Signalled => 1,
        AbortReason::PeerExited => 2,
        AbortReason::PeerMisbehaved => 3,
        AbortReason::ServerTimeout => 4,
        _ => 1,
    }
}

fn decode_abort(v: u32) -> Option<AbortReason> {
    match v {
        0 => None,
        2 => Some(AbortReason::PeerExited),
        3 => Some(AbortReason::PeerMisbehaved),
        4 => Some(AbortReason::ServerTimeout),
        // 1, and any garbage a peer wrote: the set is aborted either way.
        _ => Some(AbortReason::Signalled),
    }
}

/// A buffer descriptor as the server publishes it and a client validates it.
///
/// Word 0: generation (bits 0..16), live (bit 16), segment (bits 24..32), size (bits 32..64).
/// Word 1: data offset in the segment (bits 0..48), generation again (bits 48..64).
/// The server writes word 1, then word 0 with Release; a reader loads word 0 with Acquire, then
/// word 1, and accepts the pair only when both generations match the one it expects, so a
/// descriptor being rewritten is never read as a mix of two buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Descriptor {
    pub(crate) generation: u16,
    pub(crate) segment: u8,
    pub(crate) size: u32,
    pub(crate) offset: u64,
}

impl Descriptor {
    /// Publishes a live descriptor.
    pub(crate) fn publish(self, words: &[AtomicU64]) {
        let w1 = (self.offset & ((1 << 48) - 1)) | (u64::from(self.generation) << 48);
        let w0 = u64::from(self.generation)
            | (1 << 16)
            | (u64::from(self.segment) << 24)
            | (u64::from(self.size) << 32);
        words[1].store(w1, Ordering::Relaxed);
        words[0].store(w0, Ordering::Release);
    }

    /// Marks the descriptor free under a new generation.
    pub(crate) fn retire(words: &[AtomicU64], next_generation: u16) {
        words[0].store(u64::from(next_generation), Ordering::Release);
    }

    /// Reads a descriptor expected to be live with `generation`; `None` if it is not, or if it
    /// names a buffer of no bytes (the server allocates none: see `pool`).
    pub(crate) fn read(words: &[AtomicU64], generation: u16) -> Option<Self> {
        let w0 = words[0].load(Ordering::Acquire);
        let w1 = words[1].load(Ordering::Relaxed);
        let live = w0 & (1 << 16) != 0;
        if !live || w0 as u16 != generation || (w1 >> 48) as u16 != generation {
            return None;
        }
        if (w0 >> 32) == 0 {
            return None;
        }
        Some(Self {
            generation,
            segment: (w0 >> 24) as u8,
            size: (w0 >> 32) as u32,
            offset: w1 & ((1 << 48) - 1),
        })
    }
}

/// A command's tag as the server makes it: the slot of its table of commands in flight and the
/// slot's generation, so that a completion names exactly one command ever sent.
///
/// Word: slot (bits 0..32), generation (bits 32..64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

impl Tag {
    /// The tag's word, as command and completion entries carry it.
    pub(crate) fn to_word(self) -> u64 {
        u64::from(self.slot) | (u64::from(self.generation) << 32)
    }

    /// The tag a word names (every word names one; the server checks it against its table).
    pub(crate) fn from_word(word: u64) -> Self {
        Self {
            slot: word as u32,
            generation: (word >> 32) as u32,
        }
    }
}

/// The buffer a command entry names: a descriptor and the generation it must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BufferRef {
    pub(crate) index: u32,
    pub(crate) generation: u16,
}

/// One entry of a command ring (server -> client).
///
/// Word 0: code (bits 0..32), size (bits 32..64). Word 1: position. Word 2: tag (opaque to the
/// client, see [`Tag`]). Word 3: the buffer, for a command that has one: descriptor index
/// (bits 0..32), its generation (bits 32..48), and bit 48 set; 0 otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CommandEntry {
    pub(crate) code: CommandCode,
    pub(crate) size: u32,
    pub(crate) position: u64,
    pub(crate) tag: u64,
    pub(crate) buffer: Option<BufferRef>,
}

/// Word 3's flag: the command names a buffer.
const HAS_BUFFER: u64 = 1 << 48;

impl CommandEntry {
    /// The entry's words, as the server pushes them.
    pub(crate) fn to_words(self) -> [u64; ENTRY_WORDS] {
        let buffer = self.buffer.map_or(0, |b| {
            u64::from(b.index) | (u64::from(b.generation) << 32) | HAS_BUFFER
        });
        [
            u64::from(self.code.0) | (u64::from(self.size) << 32),
            self.position,
            self.tag,
            buffer,
        ]
    }

    /// The entry a peer's words describe; `None` when they cannot be one: the buffer flag
    /// disagrees with the code (a command with a buffer names one, any other names none).
    /// Whether the buffer it names is live, large enough and in bounds is checked where it is
    /// mapped (`client::parse_command`).
    pub(crate) fn from_words(w: [u64; ENTRY_WORDS]) -> Option<Self> {
        let code = CommandCode(w[0] as u32);
        let has_buffer = w[3] & HAS_BUFFER != 0;
        if has_buffer != code.has_buffer() {
            return None;
        }
        Some(Self {
            code,
            size: (w[0] >> 32) as u32,
            position: w[1],
            tag: w[2],
            buffer: has_buffer.then(|| BufferRef {
                index: w[3] as u32,
                generation: (w[3] >> 32) as u16,
            }),
        })
    }
}

/// One entry of a completion ring (client -> server).
///
/// Word 0: the command's tag. Word 1: completion code (bits 0..32), bytes transferred (bits
/// 32..64). Word 2: position. Word 3: 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompletionEntry {
    pub(crate) tag: u64,
    pub(crate) completion: Completion,
}

impl CompletionEntry {
    /// The entry's words, as the client pushes them.
    pub(crate) fn to_words(self) -> [u64; ENTRY_WORDS] {
        let c = &self.completion;
        [
            self.tag,
            u64::from(c.code.0) | (u64::from(c.bytes_transferred) << 32),
            c.position,
            0,
        ]
    }

    /// The entry a peer's words describe. Every four words are one: what a completion may say
    /// depends on the command it completes, which the server checks against its own table of
    /// commands in flight (the tag names a live one; no more bytes than the command's size).
    pub(crate) fn from_words(w: [u64; ENTRY_WORDS]) -> Self {
        Self {
            tag: w[0],
            completion: Completion {
                code: CompletionCode(w[1] as u32),
                bytes_transferred: (w[1] >> 32) as u32,
                position: w[2],
            },
        }
    }
}

#[cfg(test)]
mod entry_tests {
    use proptest::prelude::*;
    use vdi_core::{CommandCode, CompletionCode};

    use super::{BufferRef, CommandEntry, CompletionEntry, Tag};

    #[test]
    fn command_entries_round_trip_and_the_flag_follows_the_code() {
        let write = CommandEntry {
            code: CommandCode::WRITE,
            size: 65536,
            position: 7,
            tag: Tag {
                slot: 3,
                generation: 9,
            }
            .to_word(),
            buffer: Some(BufferRef {
                index: 16383,
                generation: 0xFFFF,
            }),
        };
        assert_eq!(CommandEntry::from_words(write.to_words()), Some(write));
        let flush = CommandEntry {
            code: CommandCode::FLUSH,
            size: 0,
            position: 0,
            tag: 1,
            buffer: None,
        };
        assert_eq!(CommandEntry::from_words(flush.to_words()), Some(flush));
        // A buffer flag the code contradicts, either way.
        let mut w = write.to_words();
        w[3] = 0;
        assert_eq!(CommandEntry::from_words(w), None);
        let mut w = flush.to_words();
        w[3] = 1 << 48;
        assert_eq!(CommandEntry::from_words(w), None);
    }

    proptest! {
        /// Whatever a peer writes, an accepted entry re-encodes to words that decode to it.
        #[test]
        fn decoded_entries_re_encode(w in any::<[u64; 4]>()) {
            if let Some(e) = CommandEntry::from_words(w) {
                prop_assert_eq!(CommandEntry::from_words(e.to_words()), Some(e));
                prop_assert_eq!(e.code.has_buffer(), e.buffer.is_some());
            }
            let c = CompletionEntry::from_words(w);
            prop_assert_eq!(CompletionEntry::from_words(c.to_words()), c);
            prop_assert_eq!(Tag::from_word(w[0]).to_word(), w[0]);
            prop_assert_eq!(c.completion.code, CompletionCode(w[1] as u32));
        }
    }
}
