//! The configuration of a device set (`VDConfig`) and its rules (vdi-spec.md §3).
//!
//! A configuration has two halves set at different times: the client's half ([`ClientConfig`]),
//! given to `CreateEx`, and the server's half ([`ServerConfig`]), given to `BeginConfiguration`.
//! Each half is validated where it is set; [`Config::combine`] then forms what the client's
//! `GetConfiguration` returns.

use core::fmt;

use crate::Features;

/// The smallest block size (512 bytes).
pub const MIN_BLOCK_SIZE: u32 = 512;
/// The largest block size and the largest alignment (64 KiB).
pub const MAX_BLOCK_SIZE: u32 = 64 * 1024;
/// The largest alignment a client or server may ask for (64 KiB).
pub const MAX_ALIGNMENT: u32 = 64 * 1024;
/// The unit and smallest value of the maximum transfer size (64 KiB).
pub const TRANSFER_UNIT: u32 = 64 * 1024;
/// The largest maximum transfer size (4 MiB).
pub const MAX_TRANSFER_SIZE: u32 = 4 * 1024 * 1024;
/// The most devices a set may have.
pub const MAX_DEVICES: u32 = 64;
/// The largest prefix zone this implementation accepts (64 KiB).
///
/// The specification sets no limit. Every buffer carries its prefix zone, so a huge one would
/// multiply the shared memory; 64 KiB is far more than any header a client puts there.
pub const MAX_PREFIX_ZONE: u32 = 64 * 1024;
/// `maxIODepth` as every server reports it (deprecated, always 4).
pub const MAX_IO_DEPTH: u32 = 4;

/// A broken configuration rule: one variant per rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `deviceCount` is outside 1..=64.
    DeviceCount(u32),
    /// The block size is not a power of two in 512..=65536.
    BlockSize(u32),
    /// The alignment is not a power of two.
    AlignmentNotPowerOfTwo(u32),
    /// The server's alignment is below the block size.
    AlignmentBelowBlockSize {
        /// The alignment asked for.
        alignment: u32,
        /// The block size.
        block_size: u32,
    },
    /// The alignment is above 64 KiB.
    AlignmentTooLarge(u32),
    /// The maximum transfer size is not a multiple of 64 KiB in 64 KiB..=4 MiB.
    MaxTransferSize(u32),
    /// The prefix zone is larger than [`MAX_PREFIX_ZONE`].
    PrefixZoneTooLarge(u32),
    /// The mode bits form none of the supported combinations (pipe, tape, disk, each with its
    /// allowed options; vdi-spec.md §3.2).
    UnsupportedMode(Features),
    /// Bits no header defines.
    UnknownFeatures(Features),
    /// The client set bits that only the server sets (`VDF_WriteMedia`, `VDF_ReadMedia`,
    /// `VDF_CompleteEnabled`).
    ServerOnlyFeatures(Features),
    /// The server's features name neither `VDF_WriteMedia` nor `VDF_ReadMedia`, or hold bits a
    /// server does not set.
    ServerFeatures(Features),
    /// The server enabled `VDC_Complete` but the client did not ask for it.
    CompleteNotRequested,
    /// A COM implementation returned `VD_E_NOTSUPPORTED` with no more detail.
    Unspecified,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DeviceCount(n) => write!(f, "device count {n} is outside 1..=64"),
            Self::BlockSize(n) => write!(f, "block size {n} is not a power of two in 512..=65536"),
            Self::AlignmentNotPowerOfTwo(n) => write!(f, "alignment {n} is not a power of two"),
            Self::AlignmentBelowBlockSize {
                alignment,
                block_size,
            } => {
                write!(
                    f,
                    "alignment {alignment} is below the block size {block_size}"
                )
            }
            Self::AlignmentTooLarge(n) => write!(f, "alignment {n} is above 64 KiB"),
            Self::MaxTransferSize(n) => {
                write!(
                    f,
                    "max transfer size {n} is not a multiple of 64 KiB in 64 KiB..=4 MiB"
                )
            }
            Self::PrefixZoneTooLarge(n) => write!(f, "prefix zone {n} is above 64 KiB"),
            Self::UnsupportedMode(b) => {
                write!(
                    f,
                    "feature bits {b:?} form no supported pipe, tape or disk mode"
                )
            }
            Self::UnknownFeatures(b) => write!(f, "unknown feature bits {:#x}", b.0),
            Self::ServerOnlyFeatures(b) => {
                write!(f, "feature bits {b:?} are set only by the server")
            }
            Self::ServerFeatures(b) => write!(
                f,
                "server features {b:?} must be VDF_WriteMedia and/or VDF_ReadMedia, optionally VDF_CompleteEnabled"
            ),
            Self::CompleteNotRequested => f.write_str(
                "VDF_CompleteEnabled set but the client did not set VDF_RequestComplete",
            ),
            Self::Unspecified => f.write_str("no detail given"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The client's half of the configuration, given to `CreateEx`.
///
/// ```
/// use vdi_core::{ClientConfig, Features};
/// let cfg = ClientConfig { device_count: 4, features: Features::REQUEST_COMPLETE, ..ClientConfig::default() };
/// cfg.validate()?;
/// assert!(ClientConfig { device_count: 65, ..cfg }.validate().is_err());
/// # Ok::<(), vdi_core::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The number of devices, 1..=64.
    pub device_count: u32,
    /// The `VDF_*` bits the client supports (the mode, and `VDF_RequestComplete` etc.).
    pub features: Features,
    /// Bytes the client reserves directly below each buffer's data zone for its own use.
    pub prefix_zone_size: u32,
    /// The alignment the client needs for data zones; 0 or a power of two up to 64 KiB.
    pub alignment: u32,
    /// The size of a soft filemark (only with `VDF_FileMarks`); 0 means hard filemarks.
    pub soft_file_mark_block_size: u32,
    /// The size of the end-of-media warning zone; 0 means none.
    pub eom_warning_size: u32,
    /// How long, in ms, the client may take to respond; 0 means no limit.
    pub server_timeout: u32,
}

impl Default for ClientConfig {
    /// One pipe-like device with no prefix zone, no alignment wish and no server timeout.
    fn default() -> Self {
        Self {
            device_count: 1,
            features: Features::LIKE_PIPE,
            prefix_zone_size: 0,
            alignment: 0,
            soft_file_mark_block_size: 0,
            eom_warning_size: 0,
            server_timeout: 0,
        }
    }
}

impl ClientConfig {
    /// Checks every client-side rule.
    ///
    /// # Errors
    ///
    /// The first rule broken, as a [`ConfigError`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_device_count(self.device_count)?;
        validate_client_features(self.features)?;
        if self.alignment != 0 {
            validate_alignment_bounds(self.alignment)?;
        }
        if self.prefix_zone_size > MAX_PREFIX_ZONE {
            return Err(ConfigError::PrefixZoneTooLarge(self.prefix_zone_size));
        }
        Ok(())
    }
}

/// The server's half of the configuration, given to `BeginConfiguration`.
///
/// ```
/// use vdi_core::ServerConfig;
/// let s = ServerConfig::backup(64 * 1024, 1024 * 1024);
/// s.validate()?;
/// assert_eq!(s.effective_alignment(), 64 * 1024);
/// # Ok::<(), vdi_core::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// `VDF_WriteMedia` and/or `VDF_ReadMedia`, optionally `VDF_CompleteEnabled`.
    pub features: Features,
    /// The block size: a power of two in 512..=65536.
    pub block_size: u32,
    /// The alignment of data zones: 0 (the block size) or a power of two in block size..=64 KiB.
    pub alignment: u32,
    /// The largest transfer: a multiple of 64 KiB in 64 KiB..=4 MiB.
    pub max_transfer_size: u32,
    /// How long, in ms, the server waits for the primary client; 0 means no limit.
    pub timeout: u32,
}

impl ServerConfig {
    /// A backup (`VDF_WriteMedia`) with the given block size and maximum transfer size.
    pub const fn backup(block_size: u32, max_transfer_size: u32) -> Self {
        Self {
            features: Features::WRITE_MEDIA,
            block_size,
            alignment: 0,
            max_transfer_size,
            timeout: 0,
        }
    }

    /// A restore (`VDF_ReadMedia`) with the given block size and maximum transfer size.
    pub const fn restore(block_size: u32, max_transfer_size: u32) -> Self {
        Self {
            features: Features::READ_MEDIA,
            ..Self::backup(block_size, max_transfer_size)
        }
    }

    /// The alignment the server asked for, with 0 read as the block size.
    pub const fn effective_alignment(&self) -> u32 {
        if self.alignment == 0 {
            self.block_size
        } else {
            self.alignment
        }
    }

    /// Checks every server-side rule that does not depend on the client's half.
    ///
    /// # Errors
    ///
    /// The first rule broken, as a [`ConfigError`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        let f = self.features;
        if !f.intersects(Features::WRITE_MEDIA | Features::READ_MEDIA)
            || f.difference(Features::SERVER_BITS).bits() != 0
        {
            return Err(ConfigError::ServerFeatures(f));
        }
        validate_block_size(self.block_size)?;
        if self.alignment != 0 {
            validate_alignment_bounds(self.alignment)?;
            if self.alignment < self.block_size {
                return Err(ConfigError::AlignmentBelowBlockSize {
                    alignment: self.alignment,
                    block_size: self.block_size,
                });
            }
        }
        validate_max_transfer_size(self.max_transfer_size)
    }

    /// Checks this half against the client's: `VDF_CompleteEnabled` only if it was requested.
    ///
    /// # Errors
    ///
    /// [`ConfigError::CompleteNotRequested`], or any error of [`ServerConfig::validate`].
    pub fn validate_for(&self, client: &ClientConfig) -> Result<(), ConfigError> {
        self.validate()?;
        if self.features.contains(Features::COMPLETE_ENABLED)
            && !client.features.contains(Features::REQUEST_COMPLETE)
        {
            return Err(ConfigError::CompleteNotRequested);
        }
        Ok(())
    }
}

/// The whole configuration: what the client's `GetConfiguration` returns (`VDConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The number of devices.
    pub device_count: u32,
    /// The client's bits plus the server's (`VDF_WriteMedia`, `VDF_ReadMedia`, ...).
    pub features: Features,
    /// Bytes below each data zone reserved for the client.
    pub prefix_zone_size: u32,
    /// The alignment of every data zone: the larger of the client's and the server's.
    pub alignment: u32,
    /// The soft filemark size (`VDF_FileMarks` only).
    pub soft_file_mark_block_size: u32,
    /// The end-of-media warning zone.
    pub eom_warning_size: u32,
    /// The client's response limit in ms; 0 means none.
    pub server_timeout: u32,
    /// The block size: every transfer is a multiple of it.
    pub block_size: u32,
    /// Deprecated; always 4.
    pub max_io_depth: u32,
    /// The largest transfer, excluding the prefix zone.
    pub max_transfer_size: u32,
    /// Deprecated; `max_transfer_size * 4 * device_count`.
    pub buffer_area_size: u32,
}

impl Config {
    /// Forms the final configuration from the two halves, after checking both.
    ///
    /// # Errors
    ///
    /// The first rule either half breaks.
    ///
    /// ```
    /// use vdi_core::{ClientConfig, Config, Features, ServerConfig};
    /// let client = ClientConfig { alignment: 4096, ..ClientConfig::default() };
    /// let cfg = Config::combine(&client, &ServerConfig::backup(512, 65536))?;
    /// assert_eq!(cfg.alignment, 4096);
    /// assert!(cfg.features.contains(Features::WRITE_MEDIA));
    /// # Ok::<(), vdi_core::ConfigError>(())
    /// ```
    pub fn combine(client: &ClientConfig, server: &ServerConfig) -> Result<Self, ConfigError> {
        client.validate()?;
        server.validate_for(client)?;
        Ok(Self {
            device_count: client.device_count,
            features: client.features | server.features,
            prefix_zone_size: client.prefix_zone_size,
            alignment: client.alignment.max(server.effective_alignment()),
            soft_file_mark_block_size: client.soft_file_mark_block_size,
            eom_warning_size: client.eom_warning_size,
            server_timeout: client.server_timeout,
            block_size: server.block_size,
            max_io_depth: MAX_IO_DEPTH,
            max_transfer_size: server.max_transfer_size,
            buffer_area_size: server
                .max_transfer_size
                .saturating_mul(4)
                .saturating_mul(client.device_count),
        })
    }

    /// The client's half of this configuration.
    pub const fn client(&self) -> ClientConfig {
        ClientConfig {
            device_count: self.device_count,
            features: self.features.difference(Features::SERVER_BITS),
            prefix_zone_size: self.prefix_zone_size,
            alignment: self.alignment,
            soft_file_mark_block_size: self.soft_file_mark_block_size,
            eom_warning_size: self.eom_warning_size,
            server_timeout: self.server_timeout,
        }
    }

    /// Whether this is a backup (the server set `VDF_WriteMedia`).
    pub const fn is_backup(&self) -> bool {
        self.features.contains(Features::WRITE_MEDIA)
    }

    /// Whether the server will send `VDC_Complete`.
    pub const fn complete_enabled(&self) -> bool {
        self.features.contains(Features::COMPLETE_ENABLED)
    }

    /// The `#[repr(C)]` form, as COM and the Linux SDK take it.
    pub const fn to_raw(&self) -> VdConfig {
        VdConfig {
            device_count: self.device_count,
            features: self.features.0,
            prefix_zone_size: self.prefix_zone_size,
            alignment: self.alignment,
            soft_file_mark_block_size: self.soft_file_mark_block_size,
            eom_warning_size: self.eom_warning_size,
            server_time_out: self.server_timeout,
            block_size: self.block_size,
            max_io_depth: self.max_io_depth,
            max_transfer_size: self.max_transfer_size,
            buffer_area_size: self.buffer_area_size,
        }
    }

    /// Reads the `#[repr(C)]` form, unchanged (no rule is checked: this is what a peer said).
    pub const fn from_raw(raw: &VdConfig) -> Self {
        Self {
            device_count: raw.device_count,
            features: Features(raw.features),
            prefix_zone_size: raw.prefix_zone_size,
            alignment: raw.alignment,
            soft_file_mark_block_size: raw.soft_file_mark_block_size,
            eom_warning_size: raw.eom_warning_size,
            server_timeout: raw.server_time_out,
            block_size: raw.block_size,
            max_io_depth: raw.max_io_depth,
            max_transfer_size: raw.max_transfer_size,
            buffer_area_size: raw.buffer_area_size,
        }
    }
}

impl ClientConfig {
    /// The `#[repr(C)]` form as `CreateEx` takes it (the server's fields zero).
    pub const fn to_raw(&self) -> VdConfig {
        VdConfig {
            device_count: self.device_count,
            features: self.features.0,
            prefix_zone_size: self.prefix_zone_size,
            alignment: self.alignment,
            soft_file_mark_block_size: self.soft_file_mark_block_size,
            eom_warning_size: self.eom_warning_size,
            server_time_out: self.server_timeout,
            block_size: 0,
            max_io_depth: 0,
            max_transfer_size: 0,
            buffer_area_size: 0,
        }
    }
}

/// `VDConfig` exactly as `vdi.h` lays it out: eleven 32-bit fields, 44 bytes, 4-byte aligned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VdConfig {
    /// `deviceCount`.
    pub device_count: u32,
    /// `features`.
    pub features: u32,
    /// `prefixZoneSize`.
    pub prefix_zone_size: u32,
    /// `alignment`.
    pub alignment: u32,
    /// `softFileMarkBlockSize`.
    pub soft_file_mark_block_size: u32,
    /// `EOMWarningSize`.
    pub eom_warning_size: u32,
    /// `serverTimeOut`.
    pub server_time_out: u32,
    /// `blockSize`.
    pub block_size: u32,
    /// `maxIODepth`.
    pub max_io_depth: u32,
    /// `maxTransferSize`.
    pub max_transfer_size: u32,
    /// `bufferAreaSize`.
    pub buffer_area_size: u32,
}

const _: () = assert!(size_of::<VdConfig>() == 44);
const _: () = assert!(align_of::<VdConfig>() == 4);

/// `VDC_Command` exactly as `vdi.h` lays it out: 24 bytes on 64-bit targets, with `position` at
/// offset 8 and `buffer` at offset 16.
///
/// The pointer is only carried, never dereferenced, by this crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct VdcCommand {
    /// `commandCode`.
    pub command_code: u32,
    /// `size` (overloaded by some commands).
    pub size: u32,
    /// `position` (`DWORDLONG`).
    pub position: u64,
    /// `buffer`.
    pub buffer: *mut u8,
}

#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(size_of::<VdcCommand>() == 24);
    assert!(core::mem::offset_of!(VdcCommand, command_code) == 0);
    assert!(core::mem::offset_of!(VdcCommand, size) == 4);
    assert!(core::mem::offset_of!(VdcCommand, position) == 8);
    assert!(core::mem::offset_of!(VdcCommand, buffer) == 16);
};

/// Checks `deviceCount`.
///
/// # Errors
///
/// [`ConfigError::DeviceCount`] outside 1..=64.
pub const fn validate_device_count(n: u32) -> Result<(), ConfigError> {
    if n >= 1 && n <= MAX_DEVICES {
        Ok(())
    } else {
        Err(ConfigError::DeviceCount(n))
    }
}

/// Checks a block size.
///
/// # Errors
///
/// [`ConfigError::BlockSize`] unless a power of two in 512..=65536.
pub const fn validate_block_size(n: u32) -> Result<(), ConfigError> {
    if n.is_power_of_two() && n >= MIN_BLOCK_SIZE && n <= MAX_BLOCK_SIZE {
        Ok(())
    } else {
        Err(ConfigError::BlockSize(n))
    }
}

/// Checks that a nonzero alignment is a power of two up to 64 KiB.
///
/// # Errors
///
/// [`ConfigError::AlignmentNotPowerOfTwo`] or [`ConfigError::AlignmentTooLarge`].
pub const fn validate_alignment_bounds(n: u32) -> Result<(), ConfigError> {
    if !n.is_power_of_two() {
        Err(ConfigError::AlignmentNotPowerOfTwo(n))
    } else if n > MAX_ALIGNMENT {
        Err(ConfigError::AlignmentTooLarge(n))
    } else {
        Ok(())
    }
}

/// Checks a maximum transfer size.
///
/// # Errors
///
/// [`ConfigError::MaxTransferSize`] unless a multiple of 64 KiB in 64 KiB..=4 MiB.
pub const fn validate_max_transfer_size(n: u32) -> Result<(), ConfigError> {
    if n >= TRANSFER_UNIT && n <= MAX_TRANSFER_SIZE && n.is_multiple_of(TRANSFER_UNIT) {
        Ok(())
    } else {
        Err(ConfigError::MaxTransferSize(n))
    }
}

/// Checks the feature bits a client gives to `CreateEx`: known bits only, none of the server's,
/// and a supported mode (vdi-spec.md §3.2): pipe (optionally removable), tape (exactly
/// `VDF_LikeTape`), or disk (`VDF_RandomAccess`, optionally removable); `VDF_Discard`,
/// `VDF_SnapshotPrepare`, `VDF_RequestComplete` and the undocumented header bits may be added to
/// any mode.
///
/// # Errors
///
/// [`ConfigError::UnknownFeatures`], [`ConfigError::ServerOnlyFeatures`] or
/// [`ConfigError::UnsupportedMode`].
pub const fn validate_client_features(f: Features) -> Result<(), ConfigError> {
    let unknown = f.unknown_bits();
    if unknown.0 != 0 {
        return Err(ConfigError::UnknownFeatures(unknown));
    }
    let server = f.intersection(Features::SERVER_BITS);
    if server.0 != 0 {
        return Err(ConfigError::ServerOnlyFeatures(server));
    }
    let mode = f.intersection(Features::MODE_BITS);
    match mode.0 {
        // Pipe, pipe + removable, tape, disk, disk + removable.
        0x0 | 0x1 | 0x173 | 0x200 | 0x201 => Ok(()),
        _ => Err(ConfigError::UnsupportedMode(mode)),
    }
}
