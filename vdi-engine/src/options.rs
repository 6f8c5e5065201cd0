//! What the engine is asked to do: the configuration SQL Server takes from the `WITH` options of
//! BACKUP and RESTORE ([`Options`]), the two jobs ([`BackupJob`], [`RestoreJob`]) and the faults
//! to inject ([`Faults`]).

use core::fmt;
use std::time::Duration;

use vdi_core::{CommandCode, ConfigError, NameError};

use crate::format::MAX_DATABASE_SIZE;

/// SQL Server's default `BLOCKSIZE` for a virtual device (512 bytes; vdi-spec.md §3.1).
pub const DEFAULT_BLOCK_SIZE: u32 = 512;
/// SQL Server's default `MAXTRANSFERSIZE` for VDI when the statement gives none (64 KiB;
/// vdi-spec.md §3.1, §14.6).
pub const DEFAULT_MAX_TRANSFER_SIZE: u32 = 64 * 1024;
/// The default bound on the wait for the client's first completion on each device.
pub const DEFAULT_CONFIG_TIMEOUT: Duration = Duration::from_secs(60);
/// The default bound on a wait with commands outstanding and none completing, when no
/// `serverTimeOut` applies.
pub const DEFAULT_IDLE_LIMIT: Duration = Duration::from_secs(600);

/// SQL Server's default `BUFFERCOUNT` for `devices` devices: about
/// `devices * 4 + devices + 2` (the suggested I/O depth of 4 per device, one more per device, and
/// two for the database files; vdi-spec.md §14.6).
pub const fn default_buffer_count(devices: u32) -> u32 {
    devices.saturating_mul(5).saturating_add(2)
}

/// The configuration of one BACKUP or RESTORE: what SQL Server takes from the statement's `WITH`
/// options and from the `VIRTUAL_DEVICE` clauses.
///
/// [`Options::default`] holds SQL Server's defaults and an empty set name; [`Options::new`]
/// names the set. Fields are public; the methods named like them set them in a chain.
///
/// ```
/// use std::time::Duration;
/// use vdi_engine::Options;
///
/// let o = Options::new("nightly")
///     .max_transfer_size(1 << 20)
///     .buffer_count(16)
///     .wait_for_set(Duration::from_secs(5));
/// assert_eq!(o.block_size, 512);
/// assert_eq!(o.device_name(2), "nightly-stripe2");
/// o.validate()?;
/// # Ok::<(), vdi_engine::OptionsError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// The device set's name (the first `VIRTUAL_DEVICE` clause).
    pub set_name: String,
    /// The instance name given to `Open` (`None`: the default instance).
    pub instance: Option<String>,
    /// Explicit device names, one per device, the first equal to the set's name. Empty: the
    /// project's convention, [`vdi_core::stripe_device_name`].
    pub device_names: Vec<String>,
    /// The device count the statement names; the run fails if the client's `deviceCount`
    /// differs. `None`: take the client's.
    pub expected_devices: Option<u32>,
    /// `BLOCKSIZE`: a power of two in 512..=65536.
    pub block_size: u32,
    /// `MAXTRANSFERSIZE`: a multiple of 64 KiB in 64 KiB..=4 MiB.
    pub max_transfer_size: u32,
    /// `BUFFERCOUNT`: the `MAXTRANSFERSIZE` buffers shared by all devices. `None`: SQL Server's
    /// default, [`default_buffer_count`]. Never fewer than the devices.
    pub buffer_count: Option<u32>,
    /// How long to keep retrying `Open` while the client's set does not exist. Zero (the
    /// default) fails at once, as SQL Server does (its error 3041).
    pub wait_for_set: Duration,
    /// Passed to `BeginConfiguration` as its timeout, and the engine's bound on the wait for
    /// the client's first completion on each device (the client must take the configuration,
    /// open the device and answer) when no `serverTimeOut` applies.
    pub config_timeout: Duration,
    /// Overrides the client's `serverTimeOut`: with commands outstanding and none completing
    /// for twice this long, the engine aborts the operation. `Some(0)` disables it; `None`
    /// honours the client's value. A backend that applies the client's value itself (vdi-shm
    /// does, as sqlvdi.dll does) may still abort first when the client's value is smaller.
    pub server_timeout: Option<Duration>,
    /// The bound on a wait with commands outstanding and none completing when no
    /// `serverTimeOut` applies (SQL Server would wait forever; the engine does not).
    pub idle_limit: Duration,
    /// Sends `VDC_Complete` at the end of a backup when the client asked for it with
    /// `VDF_RequestComplete` (default `true`, as current SQL Server versions do).
    pub send_complete: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            set_name: String::new(),
            instance: None,
            device_names: Vec::new(),
            expected_devices: None,
            block_size: DEFAULT_BLOCK_SIZE,
            max_transfer_size: DEFAULT_MAX_TRANSFER_SIZE,
            buffer_count: None,
            wait_for_set: Duration::ZERO,
            config_timeout: DEFAULT_CONFIG_TIMEOUT,
            server_timeout: None,
            idle_limit: DEFAULT_IDLE_LIMIT,
            send_complete: true,
        }
    }
}

impl Options {
    /// SQL Server's defaults for the set `set_name`.
    pub fn new(set_name: impl Into<String>) -> Self {
        Self {
            set_name: set_name.into(),
            ..Self::default()
        }
    }

    /// Sets [`Options::block_size`].
    pub fn block_size(mut self, bytes: u32) -> Self {
        self.block_size = bytes;
        self
    }

    /// Sets [`Options::max_transfer_size`].
    pub fn max_transfer_size(mut self, bytes: u32) -> Self {
        self.max_transfer_size = bytes;
        self
    }

    /// Sets [`Options::buffer_count`].
    pub fn buffer_count(mut self, count: u32) -> Self {
        self.buffer_count = Some(count);
        self
    }

    /// Sets [`Options::expected_devices`].
    pub fn expected_devices(mut self, devices: u32) -> Self {
        self.expected_devices = Some(devices);
        self
    }

    /// Sets [`Options::device_names`].
    pub fn device_names(mut self, names: Vec<String>) -> Self {
        self.device_names = names;
        self
    }

    /// Sets [`Options::wait_for_set`].
    pub fn wait_for_set(mut self, wait: Duration) -> Self {
        self.wait_for_set = wait;
        self
    }

    /// Sets [`Options::config_timeout`].
    pub fn config_timeout(mut self, timeout: Duration) -> Self {
        self.config_timeout = timeout;
        self
    }

    /// Sets [`Options::server_timeout`].
    pub fn server_timeout(mut self, timeout: Duration) -> Self {
        self.server_timeout = Some(timeout);
        self
    }

    /// Sets [`Options::idle_limit`].
    pub fn idle_limit(mut self, limit: Duration) -> Self {
        self.idle_limit = limit;
        self
    }

    /// Sets [`Options::send_complete`].
    pub fn send_complete(mut self, send: bool) -> Self {
        self.send_complete = send;
        self
    }

    /// The name of device `index`: the explicit name if given, else
    /// [`vdi_core::stripe_device_name`].
    pub fn device_name(&self, index: u32) -> String {
        self.device_names
            .get(index as usize)
            .cloned()
            .unwrap_or_else(|| vdi_core::stripe_device_name(&self.set_name, index))
    }

    /// The buffer count in effect for `devices` devices: the one given or SQL Server's default,
    /// and never fewer than the devices.
    pub fn effective_buffer_count(&self, devices: u32) -> u32 {
        self.buffer_count
            .unwrap_or_else(|| default_buffer_count(devices))
            .max(devices)
    }

    /// Checks everything that does not depend on the client's configuration.
    ///
    /// # Errors
    ///
    /// The first rule broken, as an [`OptionsError`].
    pub fn validate(&self) -> Result<(), OptionsError> {
        vdi_core::validate_name(&self.set_name).map_err(OptionsError::SetName)?;
        for (i, name) in self.device_names.iter().enumerate() {
            vdi_core::validate_name(name).map_err(|error| OptionsError::DeviceName {
                index: i as u32,
                error,
            })?;
        }
        if let Some(first) = self.device_names.first()
            && *first != self.set_name
        {
            return Err(OptionsError::FirstDeviceName);
        }
        if let Some(n) = self.expected_devices {
            vdi_core::validate_device_count(n).map_err(OptionsError::Config)?;
        }
        vdi_core::validate_block_size(self.block_size).map_err(OptionsError::Config)?;
        vdi_core::validate_max_transfer_size(self.max_transfer_size)
            .map_err(OptionsError::Config)?;
        if self.buffer_count == Some(0) {
            return Err(OptionsError::BufferCount);
        }
        Ok(())
    }
}

/// A device and a command index where a fault fires.
///
/// Commands are counted per device, from 0, over the commands of the operation's plan: for a
/// backup the header Write, the data Writes, the Flushes and the trailer Write; for a restore
/// the Reads. The commands a fault itself sends are not counted. A fault "at command `n`" fires
/// just before plan command `n` is sent (so after `n` commands were sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultPoint {
    /// The plan command index on the device.
    pub command: u64,
    /// The device (its index in the set); `None` is every device (the abort fault fires on the
    /// first device that gets there).
    pub device: Option<u32>,
}

impl FaultPoint {
    /// At command `command` of every device.
    pub const fn at(command: u64) -> Self {
        Self {
            command,
            device: None,
        }
    }

    /// At command `command` of device `device` only.
    pub const fn on_device(command: u64, device: u32) -> Self {
        Self {
            command,
            device: Some(device),
        }
    }

    /// Whether the fault fires before plan command `command` of device `device`.
    pub fn hits(&self, device: u32, command: u64) -> bool {
        self.command == command && self.device.is_none_or(|d| d == device)
    }
}

impl fmt::Display for FaultPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.device {
            Some(d) => write!(f, "command {} of device {d}", self.command),
            None => write!(f, "command {} of every device", self.command),
        }
    }
}

/// The faults to inject (vdi-spec.md §6, §9.2, §9.3).
///
/// ```
/// use std::time::Duration;
/// use vdi_engine::{FaultPoint, Faults};
///
/// let mut f = Faults::default();
/// f.error_at = Some(FaultPoint::on_device(3, 0));
/// f.silent_at = Some(FaultPoint::at(0));
/// f.silent_for = Duration::from_secs(2);
/// assert!(f.abort_at.is_none());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Faults {
    /// Error then `VDC_ClearError`: sends [`Faults::error_command`], which a pipe-like client
    /// refuses (its error puts the device in IO-ERROR), then `VDC_ClearError`, which the client
    /// must complete with success; then carries on. A client that accepts the command instead is
    /// noted in the report's warnings, and no ClearError follows.
    pub error_at: Option<FaultPoint>,
    /// The command the error fault sends (default `VDC_Rewind`, which a pipe does not support).
    pub error_command: CommandCode,
    /// Calls `SignalAbort`; the run fails with [`Aborted`](crate::EngineError::Aborted) by
    /// [`AbortedBy::Fault`](crate::AbortedBy::Fault).
    pub abort_at: Option<FaultPoint>,
    /// Sends nothing on the device for [`Faults::silent_for`] (a long restore zeroes its files
    /// before the first read; a client must keep waiting).
    pub silent_at: Option<FaultPoint>,
    /// The length of the silent phase.
    pub silent_for: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            error_at: None,
            error_command: CommandCode::REWIND,
            abort_at: None,
            silent_at: None,
            silent_for: Duration::from_secs(5),
        }
    }
}

impl Faults {
    /// The devices the faults name, to check against the device count.
    pub(crate) fn devices(&self) -> impl Iterator<Item = u32> + '_ {
        [self.error_at, self.abort_at, self.silent_at]
            .into_iter()
            .flatten()
            .filter_map(|p| p.device)
    }
}

/// A BACKUP: what database to write.
///
/// ```
/// use vdi_engine::BackupJob;
/// let job = BackupJob::new(8 << 20).seed(7).flushes(3);
/// assert_eq!(job.size, 8 << 20);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupJob {
    /// The database size in bytes, rounded up to the block size.
    pub size: u64,
    /// The seed of the pseudo-database; also the backup id in the stream headers.
    pub seed: u64,
    /// Flushes per device: the final one after the trailer, and `flushes - 1` more at evenly
    /// spaced points of each device's stream (a FILESTREAM database flushes more than once;
    /// vdi-spec.md §7.3). 0 sends none.
    pub flushes: u32,
    /// The faults to inject.
    pub faults: Faults,
}

impl BackupJob {
    /// A backup of a database of `size` bytes, seed 1, one Flush, no faults.
    pub fn new(size: u64) -> Self {
        Self {
            size,
            seed: 1,
            flushes: 1,
            faults: Faults::default(),
        }
    }

    /// Sets [`BackupJob::seed`].
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets [`BackupJob::flushes`].
    pub fn flushes(mut self, flushes: u32) -> Self {
        self.flushes = flushes;
        self
    }

    /// Sets [`BackupJob::faults`].
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }
}

/// A RESTORE: how to read the streams back.
///
/// ```
/// use vdi_engine::RestoreJob;
/// let filelistonly = RestoreJob::new().stop_after(64 * 1024);
/// assert_eq!(filelistonly.stop_after, Some(65536));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreJob {
    /// Reads only this many bytes per device (at least the header; rounded up to the block
    /// size), then closes the devices early, as RESTORE FILELISTONLY and HEADERONLY do
    /// (vdi-spec.md §9.7). `None` reads everything.
    pub stop_after: Option<u64>,
    /// The seed of the random read sizes.
    pub read_seed: u64,
    /// The faults to inject.
    pub faults: Faults,
}

impl Default for RestoreJob {
    fn default() -> Self {
        Self::new()
    }
}

impl RestoreJob {
    /// A full restore with read-size seed 1 and no faults.
    pub fn new() -> Self {
        Self {
            stop_after: None,
            read_seed: 1,
            faults: Faults::default(),
        }
    }

    /// Sets [`RestoreJob::stop_after`].
    pub fn stop_after(mut self, bytes: u64) -> Self {
        self.stop_after = Some(bytes);
        self
    }

    /// Sets [`RestoreJob::read_seed`].
    pub fn read_seed(mut self, seed: u64) -> Self {
        self.read_seed = seed;
        self
    }

    /// Sets [`RestoreJob::faults`].
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }
}

/// A rule the options or the job break.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// The set name breaks a naming rule.
    #[error("bad set name: {0}")]
    SetName(NameError),
    /// A device name breaks a naming rule.
    #[error("bad name for device {index}: {error}")]
    DeviceName {
        /// The device's index.
        index: u32,
        /// The rule broken.
        error: NameError,
    },
    /// The first explicit device name is not the set's name.
    #[error("the first device name must be the set's name (vdi-spec.md §4)")]
    FirstDeviceName,
    /// A block size, max transfer size or device count outside its range.
    #[error("{0}")]
    Config(ConfigError),
    /// A buffer count of zero.
    #[error("the buffer count must be at least 1")]
    BufferCount,
    /// The database size is larger than the format allows.
    #[error("database size {0} is larger than the {MAX_DATABASE_SIZE} bytes supported")]
    DatabaseSize(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_sql_servers() {
        let o = Options::new("s");
        assert_eq!((o.block_size, o.max_transfer_size), (512, 65536));
        assert_eq!(o.effective_buffer_count(4), 22);
        assert_eq!(o.clone().buffer_count(2).effective_buffer_count(4), 4);
        assert!(o.send_complete);
        assert_eq!(o.wait_for_set, Duration::ZERO);
        o.validate().unwrap();
    }

    #[test]
    fn bad_options_are_rejected() {
        assert!(matches!(
            Options::new("").validate(),
            Err(OptionsError::SetName(_))
        ));
        assert!(Options::new("s").block_size(1000).validate().is_err());
        assert!(Options::new("s").block_size(128 * 1024).validate().is_err());
        assert!(
            Options::new("s")
                .max_transfer_size(65536 + 512)
                .validate()
                .is_err()
        );
        assert!(
            Options::new("s")
                .max_transfer_size(8 << 20)
                .validate()
                .is_err()
        );
        assert_eq!(
            Options::new("s").buffer_count(0).validate(),
            Err(OptionsError::BufferCount)
        );
        assert_eq!(
            Options::new("s").device_names(vec!["x".into()]).validate(),
            Err(OptionsError::FirstDeviceName)
        );
        assert!(Options::new("s").expected_devices(65).validate().is_err());
    }

    #[test]
    fn fault_points() {
        assert!(FaultPoint::at(3).hits(7, 3));
        assert!(!FaultPoint::at(3).hits(7, 4));
        assert!(FaultPoint::on_device(3, 1).hits(1, 3));
        assert!(!FaultPoint::on_device(3, 1).hits(0, 3));
    }
}
