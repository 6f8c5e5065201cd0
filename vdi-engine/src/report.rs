//! What a successful run reports: [`Report`], with the configuration in effect
//! ([`EffectiveConfig`]) and any [`Warning`].

use core::fmt;
use std::time::Duration;

use vdi_core::{ClientConfig, CommandCode, Features};

use crate::{database::PAGE_SIZE, options::FaultPoint};

/// Which operation ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// BACKUP DATABASE.
    Backup,
    /// RESTORE DATABASE: every stream read to its end.
    Restore,
    /// RESTORE FILELISTONLY (or HEADERONLY): the start of each stream read, then the devices
    /// closed early.
    RestoreFileListOnly,
}

impl Operation {
    /// The statement's words: `BACKUP DATABASE`, `RESTORE DATABASE`, `RESTORE FILELISTONLY`.
    pub const fn statement(self) -> &'static str {
        match self {
            Self::Backup => "BACKUP DATABASE",
            Self::Restore => "RESTORE DATABASE",
            Self::RestoreFileListOnly => "RESTORE FILELISTONLY",
        }
    }
}

/// The configuration the run used.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EffectiveConfig {
    /// The set's name.
    pub set_name: String,
    /// The device names, in device order.
    pub device_names: Vec<String>,
    /// What the client asked for (`CreateEx`).
    pub client: ClientConfig,
    /// `BLOCKSIZE`.
    pub block_size: u32,
    /// `MAXTRANSFERSIZE`.
    pub max_transfer_size: u32,
    /// `BUFFERCOUNT` in effect.
    pub buffer_count: u32,
    /// The features the client's `GetConfiguration` sees (client bits and the server's).
    pub features: Features,
    /// Whether `VDC_Complete` was enabled.
    pub complete_enabled: bool,
    /// The `serverTimeOut` in effect (the engine's override or the client's), if any.
    pub server_timeout: Option<Duration>,
}

/// Something odd that did not fail the run.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Warning {
    /// The error fault's command was completed with success: the client claims to support it,
    /// so no `VDC_ClearError` followed.
    FaultCommandAccepted {
        /// The device.
        device: String,
        /// The command sent.
        command: CommandCode,
    },
    /// A fault never fired: its command index lies past the end of the device's plan.
    FaultNotFired {
        /// Which fault.
        fault: &'static str,
        /// Where it was to fire.
        at: FaultPoint,
    },
    /// A restored stream was written with another `MAXTRANSFERSIZE` than the restore uses
    /// (allowed; vdi-spec.md §9.7).
    MaxTransferSizeDiffers {
        /// The backup's.
        backup: u32,
        /// The restore's.
        restore: u32,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FaultCommandAccepted { device, command } => write!(
                f,
                "device '{device}': the client completed {command:?} with success (a pipe-like device should refuse it); no VDC_ClearError sent"
            ),
            Self::FaultNotFired { fault, at } => {
                write!(
                    f,
                    "the {fault} fault at {at} never fired: the plan is shorter"
                )
            }
            Self::MaxTransferSizeDiffers { backup, restore } => write!(
                f,
                "the backup used MAXTRANSFERSIZE {backup}, the restore uses {restore}"
            ),
        }
    }
}

/// What a successful BACKUP or RESTORE did.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Report {
    /// The operation.
    pub operation: Operation,
    /// The configuration in effect.
    pub config: EffectiveConfig,
    /// The database's size (a multiple of the block size).
    pub database_bytes: u64,
    /// The backup id (the database's seed).
    pub backup_id: u64,
    /// Stream bytes moved per device (header, data and trailer), in device order.
    pub device_bytes: Vec<u64>,
    /// Commands sent, on all devices (data, control and fault commands).
    pub commands: u64,
    /// `VDC_Flush` commands completed, on all devices.
    pub flushes: u64,
    /// `VDC_Complete` commands completed, on all devices.
    pub completes: u64,
    /// `VDC_ClearError` commands completed, on all devices.
    pub clear_errors: u64,
    /// From `Open` to `Close`.
    pub elapsed: Duration,
    /// Restore: whether every byte of every stream was read and verified (false after an early
    /// close). Backup: always false.
    pub verified: bool,
    /// Oddities that did not fail the run.
    pub warnings: Vec<Warning>,
}

impl Report {
    /// The bytes the message counts: the database for a backup or a full restore, the bytes
    /// read for a partial restore.
    pub fn processed_bytes(&self) -> u64 {
        match self.operation {
            Operation::RestoreFileListOnly => self.device_bytes.iter().sum(),
            _ => self.database_bytes,
        }
    }

    /// Pages of 8 KiB processed.
    pub fn pages(&self) -> u64 {
        self.processed_bytes().div_ceil(PAGE_SIZE as u64)
    }

    /// SQL Server's completion message (message 3014), e.g. `BACKUP DATABASE successfully
    /// processed 131072 pages in 1.234 seconds (850.123 MB/sec).`
    pub fn message(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(0.001);
        let mb = self.processed_bytes() as f64 / (1024.0 * 1024.0);
        format!(
            "{} successfully processed {} pages in {:.3} seconds ({:.3} MB/sec).",
            self.operation.statement(),
            self.pages(),
            secs,
            mb / secs
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}
