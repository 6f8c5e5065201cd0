//! The `vdi-engine` command line, in the library so that another binary can embed it: [`Cli`]
//! (clap derive), and [`run`] and [`run_with`], which return the exit code ([`Exit`]).
//!
//! ```
//! use clap::Parser;
//! use vdi_engine::cli::{Cli, Command};
//!
//! let cli = Cli::try_parse_from([
//!     "vdi-engine", "backup", "--set", "nightly", "--size", "1GiB", "--max-transfer-size", "1MiB",
//! ])?;
//! let Command::Backup(args) = &cli.command else { unreachable!() };
//! assert_eq!(args.size, 1 << 30);
//! assert_eq!(args.set.options().max_transfer_size, 1 << 20);
//! # Ok::<(), clap::Error>(())
//! ```

use std::{io::Write, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use vdi_core::CommandCode;

use crate::{
    error::{EngineError, Exit},
    options::{BackupJob, FaultPoint, Faults, Options, RestoreJob},
    report::Report,
    units::{Limit, parse_duration, parse_limit, parse_size, parse_size_u32},
};

const ABOUT: &str = "A reference VDI engine: does what SQL Server does during BACKUP and RESTORE \
                     to a virtual device set, so VDI clients can be tested without SQL Server";

const LONG_ABOUT: &str = "\
A reference VDI engine: does what SQL Server does during BACKUP and RESTORE to a virtual \
device set, so VDI clients can be tested without SQL Server.

Start the client first: it creates the device set (CreateEx) and waits in GetConfiguration; \
then run `vdi-engine backup` or `vdi-engine restore` with the set's name, as the client would \
run the BACKUP or RESTORE statement. The engine opens the set, configures it (BLOCKSIZE, \
MAXTRANSFERSIZE, BUFFERCOUNT), opens every device, and streams a deterministic \
pseudo-database: a header block, MAXTRANSFERSIZE chunks striped across the devices in step, \
a trailer block, Flush, Complete (if the client asked for it), CloseDevice. A restore reads \
the streams back with varying read sizes and checks every byte.

On success it prints SQL Server's completion message (3014) and exits 0.";

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure (a command failed, a VDI call failed, bad options)
  2  usage error
  3  the device set does not exist (start the client first, or use --wait-for-set)
  4  aborted by the client (SignalAbort, exit, or protocol violation)
  5  aborted by the engine (--abort-at)
  6  client timeout (no completion within twice serverTimeOut)
  7  data mismatch (the restored streams differ from the backup)";

/// The `vdi-engine` command line.
#[derive(Debug, Parser)]
#[command(
    name = "vdi-engine",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXIT_CODES,
    propagate_version = true
)]
pub struct Cli {
    /// The operation.
    #[command(subcommand)]
    pub command: Command,
    /// Print the configuration in effect and what was moved, to stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

/// The operations.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Back up a pseudo-database to the client's set (BACKUP DATABASE … TO VIRTUAL_DEVICE)
    #[command(after_help = EXIT_CODES)]
    Backup(BackupArgs),
    /// Read a backup back from the client's set and verify every byte (RESTORE DATABASE … FROM
    /// VIRTUAL_DEVICE)
    #[command(after_help = EXIT_CODES)]
    Restore(RestoreArgs),
}

/// `vdi-engine backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The device set and the configuration.
    #[command(flatten)]
    pub set: SetArgs,
    /// Database size, rounded up to the block size (e.g. 4096, 64KiB, 1GiB, 2G)
    #[arg(long, value_parser = parse_size, value_name = "BYTES", help_heading = "Backup")]
    pub size: u64,
    /// Seed of the pseudo-database, written as the backup id in the stream headers
    #[arg(long, default_value_t = 1, value_name = "N", help_heading = "Backup")]
    pub seed: u64,
    /// Flushes per device: the final one, and FLUSHES-1 more evenly spaced in each stream (as a
    /// FILESTREAM database does); 0 sends none
    #[arg(long, default_value_t = 1, value_name = "N", help_heading = "Backup")]
    pub flushes: u32,
    /// Never send VDC_Complete, even when the client asks for it (VDF_RequestComplete)
    #[arg(long, help_heading = "Backup")]
    pub no_complete: bool,
    /// Fault injection.
    #[command(flatten)]
    pub faults: FaultArgs,
}

impl BackupArgs {
    /// The options and the job these arguments describe.
    pub fn job(&self) -> (Options, BackupJob) {
        let mut options = self.set.options();
        options.send_complete = !self.no_complete;
        let job = BackupJob::new(self.size)
            .seed(self.seed)
            .flushes(self.flushes)
            .faults(self.faults.faults());
        (options, job)
    }
}

/// `vdi-engine restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The device set and the configuration.
    #[command(flatten)]
    pub set: SetArgs,
    /// Read only this many bytes of each stream (at least its header), then close the devices
    /// early, as RESTORE FILELISTONLY and HEADERONLY do
    #[arg(long, value_parser = parse_size, value_name = "BYTES", help_heading = "Restore")]
    pub stop_after: Option<u64>,
    /// Seed of the random read sizes
    #[arg(long, default_value_t = 1, value_name = "N", help_heading = "Restore")]
    pub seed: u64,
    /// Fault injection.
    #[command(flatten)]
    pub faults: FaultArgs,
}

impl RestoreArgs {
    /// The options and the job these arguments describe.
    pub fn job(&self) -> (Options, RestoreJob) {
        let mut job = RestoreJob::new()
            .read_seed(self.seed)
            .faults(self.faults.faults());
        job.stop_after = self.stop_after;
        (self.set.options(), job)
    }
}

/// The device set and its configuration (the statement's `WITH` options).
#[derive(Debug, Args)]
#[command(next_help_heading = "Device set and configuration")]
pub struct SetArgs {
    /// Name of the client's device set (the first VIRTUAL_DEVICE)
    #[arg(long = "set", value_name = "NAME")]
    pub set_name: String,
    /// Expected device count: fail if the client's deviceCount differs [default: the client's]
    #[arg(long, value_name = "N")]
    pub devices: Option<u32>,
    /// Device names in order, one per device, the first the set's name (repeat the flag)
    /// [default: NAME, NAME-stripe1, NAME-stripe2, …]
    #[arg(long = "device-name", value_name = "NAME")]
    pub device_names: Vec<String>,
    /// BLOCKSIZE: a power of two from 512 to 64KiB (a restore must use the backup's)
    #[arg(long, value_parser = parse_size_u32, default_value = "512", value_name = "BYTES")]
    pub block_size: u32,
    /// MAXTRANSFERSIZE: a multiple of 64KiB up to 4MiB
    #[arg(long, value_parser = parse_size_u32, default_value = "64KiB", value_name = "BYTES")]
    pub max_transfer_size: u32,
    /// BUFFERCOUNT: MAXTRANSFERSIZE buffers shared by all devices, at least one per device
    /// [default: 5 per device + 2]
    #[arg(long, value_name = "N")]
    pub buffer_count: Option<u32>,
    /// Keep retrying Open this long while the set does not exist [default: fail at once, as
    /// SQL Server does; 0: no limit]
    #[arg(long, value_parser = parse_limit, value_name = "DURATION")]
    pub wait_for_set: Option<Limit>,
    /// BeginConfiguration's timeout, and the bound on each device's first completion (0: no
    /// limit)
    #[arg(long, value_parser = parse_limit, default_value = "60s", value_name = "DURATION")]
    pub config_timeout: Limit,
    /// Override the client's serverTimeOut: abort after twice this with commands outstanding and
    /// none completing (0: no limit, whatever the client asked for)
    #[arg(long, value_parser = parse_limit, value_name = "DURATION")]
    pub server_timeout: Option<Limit>,
    /// Bound on a wait with commands outstanding and none completing when no serverTimeOut
    /// applies (0: no limit)
    #[arg(long, value_parser = parse_limit, default_value = "10m", value_name = "DURATION")]
    pub idle_limit: Limit,
}

impl SetArgs {
    /// The [`Options`] these arguments describe.
    pub fn options(&self) -> Options {
        let mut o = Options::new(self.set_name.clone())
            .block_size(self.block_size)
            .max_transfer_size(self.max_transfer_size)
            .wait_for_set(
                self.wait_for_set
                    .as_ref()
                    .map_or(Duration::ZERO, Limit::or_no_limit),
            )
            .config_timeout(self.config_timeout.or_no_limit())
            .idle_limit(self.idle_limit.or_no_limit())
            .device_names(self.device_names.clone());
        o.expected_devices = self.devices;
        o.buffer_count = self.buffer_count;
        // Zero is "no serverTimeOut" to the engine's options too.
        o.server_timeout = self
            .server_timeout
            .as_ref()
            .map(|l| l.get().unwrap_or(Duration::ZERO));
        o
    }
}

/// Fault injection: commands are counted per device from 0 (backup: the header Write, the data
/// Writes, the Flushes, the trailer Write; restore: the Reads).
#[derive(Debug, Args)]
#[command(next_help_heading = "Fault injection")]
pub struct FaultArgs {
    /// Before command N, send a command a pipe refuses (--error-command), then VDC_ClearError.
    /// Commands are counted per device from 0: a backup's Writes (header, data, trailer) and
    /// Flushes, a restore's Reads
    #[arg(long, value_name = "N")]
    pub error_at: Option<u64>,
    /// The command code the error fault sends (4: VDC_Rewind)
    #[arg(long, default_value_t = 4, value_name = "CODE")]
    pub error_command: u32,
    /// Call SignalAbort before command N (the run fails with exit code 5)
    #[arg(long, value_name = "N")]
    pub abort_at: Option<u64>,
    /// Before command N, send nothing for --silent-for (a client must keep waiting)
    #[arg(long, value_name = "N")]
    pub silent_at: Option<u64>,
    /// Length of the silent phase
    #[arg(long, value_parser = parse_duration, default_value = "5s", value_name = "DURATION")]
    pub silent_for: Duration,
    /// The device the faults apply to, by index [default: every device; the abort fires on the
    /// first to get there]
    #[arg(long, value_name = "N")]
    pub device: Option<u32>,
}

impl FaultArgs {
    /// The [`Faults`] these arguments describe.
    pub fn faults(&self) -> Faults {
        let point = |command| FaultPoint {
            command,
            device: self.device,
        };
        Faults {
            error_at: self.error_at.map(point),
            error_command: CommandCode(self.error_command),
            abort_at: self.abort_at.map(point),
            silent_at: self.silent_at.map(point),
            silent_for: self.silent_for,
        }
    }
}

/// Runs the command line, printing to the process's stdout and stderr; returns the exit code.
pub fn run(cli: Cli) -> Exit {
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    run_with(cli, &mut stdout.lock(), &mut stderr.lock())
}

/// Parses the process's arguments and runs them: the whole `vdi-engine` program.
pub fn main() -> ExitCode {
    match Cli::try_parse() {
        Ok(cli) => ExitCode::from(run(cli)),
        Err(e) => {
            let _ = e.print();
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(Exit::Usage.code()))
        }
    }
}

/// Runs the command line, printing the completion message to `out` and failures and warnings
/// to `err`; returns the exit code.
pub fn run_with(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
    let (verb, result) = match &cli.command {
        Command::Backup(args) => {
            let (options, job) = args.job();
            ("BACKUP", backup(&options, &job))
        }
        Command::Restore(args) => {
            let (options, job) = args.job();
            ("RESTORE", restore(&options, &job))
        }
    };
    match result {
        Ok(report) => {
            for w in &report.warnings {
                let _ = writeln!(err, "vdi-engine: warning: {w}");
            }
            if cli.verbose {
                describe(&report, err);
            }
            let _ = writeln!(out, "{}", report.message());
            let _ = out.flush();
            Exit::Success
        }
        Err(e) => {
            let _ = writeln!(err, "vdi-engine: {verb} failed: {e}");
            e.exit_code()
        }
    }
}

fn describe(r: &Report, err: &mut dyn Write) {
    let c = &r.config;
    let _ = writeln!(
        err,
        "vdi-engine: set '{}': {} devices, BLOCKSIZE {}, MAXTRANSFERSIZE {}, BUFFERCOUNT {}, features {:?}, serverTimeOut {:?}",
        c.set_name,
        c.device_names.len(),
        c.block_size,
        c.max_transfer_size,
        c.buffer_count,
        c.features,
        c.server_timeout
    );
    for (name, bytes) in c.device_names.iter().zip(&r.device_bytes) {
        let _ = writeln!(err, "vdi-engine: device '{name}': {bytes} bytes");
    }
    let _ = writeln!(
        err,
        "vdi-engine: backup id {}, database {} bytes, {} commands, {} flushes, {} completes, {} clear errors, verified: {}",
        r.backup_id,
        r.database_bytes,
        r.commands,
        r.flushes,
        r.completes,
        r.clear_errors,
        r.verified
    );
}

#[cfg(any(unix, windows))]
fn backup(options: &Options, job: &BackupJob) -> Result<Report, EngineError> {
    crate::run_backup_shm(options, job)
}

#[cfg(any(unix, windows))]
fn restore(options: &Options, job: &RestoreJob) -> Result<Report, EngineError> {
    crate::run_restore_shm(options, job)
}

#[cfg(not(any(unix, windows)))]
fn backup(_: &Options, _: &BackupJob) -> Result<Report, EngineError> {
    Err(EngineError::Unsupported)
}

#[cfg(not(any(unix, windows)))]
fn restore(_: &Options, _: &RestoreJob) -> Result<Report, EngineError> {
    Err(EngineError::Unsupported)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_become_options_jobs_and_faults() {
        let cli = Cli::try_parse_from([
            "vdi-engine",
            "backup",
            "--set",
            "s",
            "--size",
            "3MiB",
            "--block-size",
            "64KiB",
            "--max-transfer-size",
            "1MiB",
            "--buffer-count",
            "9",
            "--devices",
            "4",
            "--flushes",
            "3",
            "--no-complete",
            "--error-at",
            "2",
            "--silent-at",
            "1",
            "--silent-for",
            "500ms",
            "--device",
            "1",
            "--server-timeout",
            "200ms",
            "--wait-for-set",
            "30s",
        ])
        .unwrap();
        let Command::Backup(args) = cli.command else {
            panic!("backup expected");
        };
        let (o, job) = args.job();
        assert_eq!((o.block_size, o.max_transfer_size), (65536, 1 << 20));
        assert_eq!((o.buffer_count, o.expected_devices), (Some(9), Some(4)));
        assert_eq!(o.server_timeout, Some(Duration::from_millis(200)));
        assert_eq!(o.wait_for_set, Duration::from_secs(30));
        assert!(!o.send_complete);
        assert_eq!((job.size, job.flushes), (3 << 20, 3));
        assert_eq!(job.faults.error_at, Some(FaultPoint::on_device(2, 1)));
        assert_eq!(job.faults.silent_for, Duration::from_millis(500));
        assert!(job.faults.abort_at.is_none());

        let cli = Cli::try_parse_from([
            "vdi-engine",
            "restore",
            "--set",
            "s",
            "--stop-after",
            "100KiB",
            "--seed",
            "5",
        ])
        .unwrap();
        let Command::Restore(args) = cli.command else {
            panic!("restore expected");
        };
        let (_, job) = args.job();
        assert_eq!((job.stop_after, job.read_seed), (Some(100 << 10), 5));
        assert!(Cli::try_parse_from(["vdi-engine", "backup", "--set", "s"]).is_err());
        assert!(
            Cli::try_parse_from(["vdi-engine", "backup", "--set", "s", "--size", "x"]).is_err()
        );
    }

    #[test]
    fn failures_print_the_cause_and_return_their_code() {
        let cli =
            Cli::try_parse_from(["vdi-engine", "backup", "--set", "", "--size", "1M"]).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(run_with(cli, &mut out, &mut err), Exit::Failure);
        let err = String::from_utf8(err).unwrap();
        assert!(
            err.starts_with("vdi-engine: BACKUP failed: invalid options"),
            "{err}"
        );
        assert!(out.is_empty());
    }
}
