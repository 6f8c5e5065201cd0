//! The command line.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use vdi_engine::units::{parse_duration, parse_size};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  any other failure
  2  usage error
  3  the engine failed or aborted the operation (its message is printed)
  4  no engine configured the set in time
  5  a stripe or the manifest is missing, corrupt or truncated
  6  an I/O error on the agent's own files (for example a full disk)";

/// A VDI backup agent: striped backups to files with compression and checksums, restores that
/// verify them, and a reference engine to run the whole job without SQL Server.
#[derive(Debug, Parser)]
#[command(name = "vdi-agent", version, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Do not draw progress bars (they are drawn only on a terminal anyway).
    #[arg(long, global = true)]
    pub(crate) no_progress: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Back up: serve the engine's devices into one stripe file each (or stdout).
    Backup(BackupArgs),
    /// Restore: serve stripe files back to the engine, checking every checksum on the way.
    Restore(RestoreArgs),
    /// Verify a backup directory (or a single stripe on stdin) without an engine.
    Verify(VerifyArgs),
    /// The whole job in one command: back up a pseudo-database through the reference engine,
    /// restore it (the engine checks every byte), verify the files, print the throughput.
    Demo(DemoArgs),
}

/// Where the engine comes from, and how the set is set up.
#[derive(Debug, Args)]
pub(crate) struct EngineArgs {
    /// The device set's name (the first VIRTUAL_DEVICE; the others are <SET>-stripe1, ...).
    /// Default: a unique name.
    #[arg(long)]
    pub(crate) set: Option<String>,
    /// Wait for an engine started by someone else (SQL Server running BACKUP/RESTORE ... TO
    /// VIRTUAL_DEVICE = '<SET>', ...), instead of starting the reference engine.
    #[arg(long)]
    pub(crate) external: bool,
    /// How long to wait for the engine to configure the set.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub(crate) connect_timeout: Duration,
    /// The client's serverTimeOut in milliseconds (0: none): an engine that sees no completion
    /// for two such intervals aborts.
    #[arg(long, default_value_t = 0)]
    pub(crate) server_timeout: u32,
    /// Also admit an engine running as this user id (SQL Server on Linux runs as mssql).
    #[arg(long)]
    pub(crate) admit_uid: Option<u32>,
    /// Also admit an engine whose group is this group id.
    #[arg(long)]
    pub(crate) admit_gid: Option<u32>,
    /// Reference engine only: BLOCKSIZE.
    #[arg(long, value_parser = parse_size, default_value = "64KiB")]
    pub(crate) block_size: u64,
    /// Reference engine only: MAXTRANSFERSIZE.
    #[arg(long, value_parser = parse_size, default_value = "4MiB")]
    pub(crate) max_transfer_size: u64,
    /// Reference engine only: BUFFERCOUNT (default: the engine's, from the device count).
    #[arg(long)]
    pub(crate) buffer_count: Option<u32>,
    /// Reference engine only: one more argument for it (repeat for several), for example
    /// --engine-arg=--abort-at=10 to inject a fault; see `vdi-engine --help`.
    #[arg(long = "engine-arg", allow_hyphen_values = true)]
    pub(crate) engine_args: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// The backup directory (created; must not hold a backup), or - for stdout (one device).
    pub(crate) target: PathBuf,
    /// Number of devices (stripes), 1 to 64.
    #[arg(short, long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) devices: u32,
    /// Compress each stripe with zstd at this level (1 to 19; 1 is fastest).
    #[arg(long, num_args = 0..=1, default_missing_value = "1", value_parser = clap::value_parser!(i32).range(1..=19))]
    pub(crate) zstd: Option<i32>,
    /// Do not ask for VDC_Complete; every Flush is then the durability point.
    #[arg(long)]
    pub(crate) no_request_complete: bool,
    /// Reference engine only: the size of the pseudo-database to back up.
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    pub(crate) size: u64,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
    /// Testing aid: stop answering after this many commands per device (a client that hangs).
    #[arg(long, hide = true)]
    pub(crate) stall_after: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The backup directory, or - for one stripe on stdin.
    pub(crate) source: PathBuf,
    /// Verify every stripe before starting the restore (reads the backup twice).
    #[arg(long)]
    pub(crate) verify_first: bool,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The backup directory, or - for one stripe on stdin.
    pub(crate) source: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Size of the pseudo-database.
    #[arg(long, value_parser = parse_size, default_value = "4GiB")]
    pub(crate) size: u64,
    /// Number of devices.
    #[arg(short, long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) devices: u32,
    /// Compress the stripes with zstd at this level.
    #[arg(long, num_args = 0..=1, default_missing_value = "1", value_parser = clap::value_parser!(i32).range(1..=19))]
    pub(crate) zstd: Option<i32>,
    /// Where to put the backup (default: a fresh directory in the system's temp dir, removed
    /// at the end).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Keep the backup directory.
    #[arg(long)]
    pub(crate) keep: bool,
    /// BLOCKSIZE.
    #[arg(long, value_parser = parse_size, default_value = "64KiB")]
    pub(crate) block_size: u64,
    /// MAXTRANSFERSIZE.
    #[arg(long, value_parser = parse_size, default_value = "4MiB")]
    pub(crate) max_transfer_size: u64,
}
