//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use vdi_engine::units::{Limit, parse_limit, parse_size};

/// The exit codes, for `--help` (the values are `failure::Exit`'s).
pub(crate) const EXIT_CODES: &str = "\
Exit codes:
  0  success (for verify: the backup is complete and every record checks out)
  1  any other failure
  2  usage error (a bad flag or value, a directory that does not exist, a --backend sqlvdi
     library that cannot be loaded), found before anything starts
  3  the engine failed, aborted the operation, or died (its message is printed)
  4  no engine configured the set in time
  5  a stripe or the manifest is missing, corrupt, truncated, or contradicts the other
  6  an I/O error on the agent's own files (for example a full disk)
  7  the backup is incomplete: the engine never confirmed its end (it was aborted or
     interrupted, or the agent died), so verify does not call it good and restore refuses it
     (see restore --allow-incomplete)
  8  interrupted (Ctrl-C or SIGTERM): the agent aborted the operation and said what is left

Backup states (in manifest.json, shown by `vdi-agent info`):
  complete     the engine confirmed the end (VDC_Complete, or the final Flush of an engine
               that does not send it): the only good state
  flushed      the engine was told some data is durable, but never confirmed the end: the
               agent stopped (killed, or the machine went down) before it did
  in-progress  the backup stopped before its first Flush: nothing in it is usable
  aborted      the backup failed or was interrupted, and the agent recorded why

Sizes: 4096, 64KiB, 1.5GiB, 2MB (KiB/MiB/GiB/TiB and K/M/G/T are powers of 1024, KB/MB/GB/TB
powers of 1000). Durations: 500ms, 5s, 2m, 1m30s, or a bare number of seconds; 0 means no
limit for every timeout.";

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
    /// Print the result (backup, restore, verify, info, list) as one JSON document on stdout,
    /// in a stable form, instead of lines on stderr.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Back up: serve the engine's devices into one stripe file each (or stdout).
    #[command(after_help = EXIT_CODES)]
    Backup(BackupArgs),
    /// Restore: serve stripe files back to the engine, checking every checksum on the way.
    #[command(after_help = EXIT_CODES)]
    Restore(RestoreArgs),
    /// Verify a backup directory, a single stripe file, or one stripe on stdin, without an
    /// engine; only a complete backup verifies as good.
    #[command(after_help = EXIT_CODES)]
    Verify(VerifyArgs),
    /// Describe a backup: its state, sizes, configuration and times.
    #[command(after_help = EXIT_CODES)]
    Info(InfoArgs),
    /// List the backups in a directory, one line each.
    List(ListArgs),
    /// After a crash, tidy a backup in an object store: abort the multipart uploads its
    /// manifest records as open and delete the segments written after its last checkpoint.
    /// The backup itself (what its manifest names) stays.
    #[command(after_help = EXIT_CODES)]
    Cleanup(CleanupArgs),
    /// The whole job in one command: back up a pseudo-database through the reference engine,
    /// restore it (the engine checks every byte), verify the files, print the throughput.
    Demo(DemoArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions(CompletionsArgs),
    /// Print the manual page (roff) to stdout: `vdi-agent man > vdi-agent.1`.
    Man,
}

/// Where the engine comes from, and how the set is set up.
#[derive(Clone, Debug, Args)]
pub(crate) struct EngineArgs {
    /// The device set's name (the first VIRTUAL_DEVICE; the others are <SET>-stripe1, ...).
    /// Default: a unique name.
    #[arg(long)]
    pub(crate) set: Option<String>,
    /// Wait for an engine started by someone else (SQL Server running BACKUP/RESTORE ... TO
    /// VIRTUAL_DEVICE = '<SET>', ...), instead of starting the reference engine.
    #[arg(long)]
    pub(crate) external: bool,
    /// The VDI client library the agent speaks through: shm (this project's shared memory, what
    /// the reference engine speaks), sqlvdi (SQL Server's own: libsqlvdi.so on Linux,
    /// sqlvdi.dll on Windows), or auto: sqlvdi with --external where it is installed, else shm.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub(crate) backend: BackendChoice,
    /// Linux, --backend sqlvdi: the library [default: $VDI_SQLVDI_LIB, else
    /// /opt/mssql/lib/libsqlvdi.so, where mssql-server installs it].
    #[arg(long, value_name = "PATH")]
    pub(crate) sqlvdi_lib: Option<PathBuf>,
    /// With --external: the database the printed BACKUP or RESTORE statement names.
    #[arg(long, value_name = "NAME")]
    pub(crate) database: Option<String>,
    /// How long to wait for the engine to configure the set (0: no limit).
    #[arg(long, value_parser = parse_limit, default_value = "60s", value_name = "DURATION")]
    pub(crate) connect_timeout: Limit,
    /// The client's serverTimeOut: an engine that sees no completion for two such intervals
    /// aborts (0: none).
    #[arg(long, value_parser = parse_limit, default_value = "0", value_name = "DURATION")]
    pub(crate) server_timeout: Limit,
    /// Also admit an engine running as this user id (SQL Server on Linux runs as mssql).
    #[arg(long)]
    pub(crate) admit_uid: Option<u32>,
    /// Also admit an engine whose group is this group id.
    #[arg(long)]
    pub(crate) admit_gid: Option<u32>,
    /// Reference engine only: BLOCKSIZE, a power of two from 512 to 64KiB [default: the
    /// engine's, 512, as SQL Server's; restore: the backup's]
    #[arg(long, value_parser = parse_block_size, value_name = "BYTES")]
    pub(crate) block_size: Option<u32>,
    /// MAXTRANSFERSIZE, a multiple of 64KiB up to 4MiB, for the reference engine, or for the
    /// statement printed with --external [default: reference engine: its own, 64KiB, as SQL
    /// Server's; --external: 4MiB, the fastest; restore: the backup's]
    #[arg(long, value_parser = parse_max_transfer_size, value_name = "BYTES")]
    pub(crate) max_transfer_size: Option<u32>,
    /// BUFFERCOUNT, at least one per device, for the reference engine, or for the statement
    /// printed with --external [default: reference engine: its own, 5 per device + 2;
    /// --external: 4 per device, each of MAXTRANSFERSIZE bytes of SQL Server's memory]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096), value_name = "N")]
    pub(crate) buffer_count: Option<u32>,
    /// Reference engine only: one more argument for it (repeat for several), for example
    /// --engine-arg=--abort-at=10 to inject a fault; see `vdi-engine --help`.
    #[arg(long = "engine-arg", allow_hyphen_values = true)]
    pub(crate) engine_args: Vec<String>,
}

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackendChoice {
    /// sqlvdi with --external where it is installed, else shm.
    Auto,
    /// vdi-shm, this project's shared memory.
    Shm,
    /// SQL Server's own client library.
    Sqlvdi,
}

/// A BLOCKSIZE as VDI allows it.
fn parse_block_size(s: &str) -> Result<u32, String> {
    let n = vdi_engine::units::parse_size_u32(s).map_err(|e| e.to_string())?;
    vdi_core::validate_block_size(n)
        .map(|()| n)
        .map_err(|_| format!("{s} is not a power of two from 512 to 64KiB"))
}

/// A MAXTRANSFERSIZE as VDI allows it.
fn parse_max_transfer_size(s: &str) -> Result<u32, String> {
    let n = vdi_engine::units::parse_size_u32(s).map_err(|e| e.to_string())?;
    vdi_core::validate_max_transfer_size(n)
        .map(|()| n)
        .map_err(|_| format!("{s} is not a multiple of 64KiB from 64KiB to 4MiB"))
}

#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// The backup directory (created; must be empty, or hold an incomplete backup and
    /// --force), or - for stdout (one device, not a terminal).
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
    /// Replace an incomplete or aborted backup in the target directory: removes only the files
    /// that backup's manifest names (never a complete backup, never other files).
    #[arg(long)]
    pub(crate) force: bool,
    /// Reference engine only: the size of the pseudo-database to back up.
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    pub(crate) size: u64,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
    #[command(flatten)]
    pub(crate) objects: ObjectArgs,
    /// Testing aid: stop answering after this many commands per device (a client that hangs).
    #[arg(long, hide = true)]
    pub(crate) stall_after: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The backup directory, or - for one stripe on stdin (not a terminal).
    pub(crate) source: PathBuf,
    /// Verify every stripe before starting the restore (reads the backup twice).
    #[arg(long)]
    pub(crate) verify_first: bool,
    /// Restore a backup the engine never confirmed (flushed or aborted): only what its last
    /// acknowledged Flush hardened is sent, and that is not a whole database: SQL Server will
    /// fail such a RESTORE partway, after it has begun to overwrite the target database. Use it
    /// only to salvage data, never WITH REPLACE over a database you want to keep.
    #[arg(long)]
    pub(crate) allow_incomplete: bool,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
    #[command(flatten)]
    pub(crate) objects: ObjectArgs,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The backup directory (or s3:// or az:// URL), one stripe file of it, or - for one
    /// stripe on stdin.
    pub(crate) source: PathBuf,
    #[command(flatten)]
    pub(crate) objects: ObjectArgs,
}

#[derive(Debug, Args)]
pub(crate) struct InfoArgs {
    /// The backup directory, or s3:// or az:// URL.
    pub(crate) dir: PathBuf,
    #[command(flatten)]
    pub(crate) objects: ObjectArgs,
}

#[derive(Debug, Args)]
pub(crate) struct CleanupArgs {
    /// The backup's s3:// or az:// URL.
    pub(crate) url: PathBuf,
    #[command(flatten)]
    pub(crate) objects: ObjectArgs,
}

/// Where a backup in an object store is reached, and how it is transferred. Credentials,
/// region and the like come from the environment under the object_store crate's names
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, ...;
/// `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_USE_EMULATOR`,
/// ...) and never appear in the manifest or in messages.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Object storage (s3://bucket/prefix, az://container/prefix)")]
pub(crate) struct ObjectArgs {
    /// The service's URL, for an S3-compatible or local server (http://127.0.0.1:9000)
    /// [default: the environment's, else the provider's]
    #[arg(long, value_name = "URL")]
    pub(crate) endpoint: Option<String>,
    /// Allow plain HTTP to the endpoint (a server on this host).
    #[arg(long)]
    pub(crate) allow_http: bool,
    /// The size of each uploaded part and of each ranged read (at least 5MiB); made smaller
    /// when --upload-memory needs it.
    #[arg(long, value_parser = parse_size, default_value = "16MiB", value_name = "BYTES")]
    pub(crate) part_size: u64,
    /// The most memory the parts being filled, sent and read may take, whatever the device
    /// count.
    #[arg(long, value_parser = parse_size, default_value = "256MiB", value_name = "BYTES")]
    pub(crate) upload_memory: u64,
    /// How often a failed request (a 5xx, a throttling answer, a dropped connection) is
    /// retried, with exponential backoff, before the operation fails.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub(crate) retries: usize,
    /// Stop retrying a request after this long from its first attempt (0: no limit).
    #[arg(long, value_parser = parse_limit, default_value = "3m", value_name = "DURATION")]
    pub(crate) retry_timeout: Limit,
    /// The longest a single request may take (0: no limit).
    #[arg(long, value_parser = parse_limit, default_value = "60s", value_name = "DURATION")]
    pub(crate) request_timeout: Limit,
    /// The checksum S3 checks on every upload.
    #[arg(long, value_enum, default_value_t = TransferChecksum::Sha256)]
    pub(crate) checksum: TransferChecksum,
}

impl Default for ObjectArgs {
    /// The command line's defaults (for `demo`, which has no object storage flags).
    fn default() -> Self {
        /// Just the flags, parsed from nothing.
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            objects: ObjectArgs,
        }
        Only::parse_from(["vdi-agent"]).objects
    }
}

/// `--checksum`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum TransferChecksum {
    /// SHA-256 of every part and object, checked by the server.
    Sha256,
    /// None beyond TCP's (and the stripe's own records, checked at every read).
    None,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// The directory whose subdirectories hold backups.
    pub(crate) parent: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell.
    pub(crate) shell: clap_complete::Shell,
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
    #[arg(long, value_parser = parse_block_size, default_value = "64KiB")]
    pub(crate) block_size: u32,
    /// MAXTRANSFERSIZE (the demo asks for the largest; SQL Server's default is 64KiB).
    #[arg(long, value_parser = parse_max_transfer_size, default_value = "4MiB")]
    pub(crate) max_transfer_size: u32,
}
