//! `vdi-agent`: the backup agent (the client side of VDI) as a command-line tool.
//!
//! - `backup` creates a device set, waits for the engine (the reference engine it starts
//!   itself, or SQL Server with `--external`), and streams each device into a stripe file of
//!   its own (or stdout), optionally zstd-compressed, with checksummed records, and hardens
//!   stripes and manifest (fsync) at every Flush and Complete before acknowledging them.
//! - `restore` streams the stripes back, checking each record before the engine sees it.
//! - `verify` checks a backup without an engine.
//! - `demo` runs backup, restore and verify of a pseudo-database through the reference engine.
//!
//! The stripe format and the manifest are in the `vdi_agent` library.

#![forbid(unsafe_code)]

#[cfg(target_os = "linux")]
mod backup;
mod cli;
#[cfg(target_os = "linux")]
mod demo;
#[cfg(target_os = "linux")]
mod engine;
mod failure;
#[cfg(target_os = "linux")]
mod output;
#[cfg(target_os = "linux")]
mod progress;
#[cfg(target_os = "linux")]
mod restore;
mod units;
#[cfg(target_os = "linux")]
mod verify;

use std::process::ExitCode;

use clap::Parser;

use crate::{
    cli::{Cli, Command},
    failure::{Failure, Outcome},
};

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == engine::ENGINE_ARG)
    {
        return run_engine();
    }
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vdi-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("vdi-agent: {f}");
            f.exit_code()
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: errors only; the agent reports failures
/// itself).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(target_os = "linux")]
async fn run(cli: Cli) -> Outcome {
    use std::io::IsTerminal;
    let progress = !cli.no_progress && std::io::stderr().is_terminal();
    match cli.command {
        Command::Backup(args) => {
            let report = backup::run(&args, progress).await?;
            backup::print_report(&report, &args.target);
            Ok(())
        }
        Command::Restore(args) => {
            let report = restore::run(&args, progress).await?;
            restore::print_report(&report);
            Ok(())
        }
        Command::Verify(args) => {
            tokio::task::spawn_blocking(move || verify::verify_dir(&args.source, true))
                .await
                .map_err(|e| Failure::other(format!("verify failed: {e}")))?
                .map(|_| ())
        }
        Command::Demo(args) => demo::run(&args, progress).await,
    }
}

#[cfg(not(target_os = "linux"))]
async fn run(_cli: Cli) -> Outcome {
    Err(Failure::other(
        "this platform is not supported yet: the shared-memory transport runs on Linux",
    ))
}

/// The reference engine, when this binary was started as one (`vdi-agent __engine ...`).
#[cfg(target_os = "linux")]
fn run_engine() -> ExitCode {
    let args = std::iter::once("vdi-engine".into()).chain(std::env::args_os().skip(2));
    match vdi_engine::cli::Cli::try_parse_from(args) {
        Ok(cli) => ExitCode::from(vdi_engine::cli::run(cli)),
        Err(e) => {
            let _ = e.print();
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(vdi_engine::cli::exit::USAGE))
        }
    }
}

/// A set name: the user's, checked, or a unique one.
#[cfg(target_os = "linux")]
pub(crate) fn set_name(given: Option<&str>) -> Outcome<String> {
    match given {
        Some(n) => {
            vdi_core::validate_name(n)
                .map_err(|e| Failure::other(format!("bad set name '{n}': {e}")))?;
            Ok(n.to_owned())
        }
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            Ok(format!("vdi-agent-{}-{nanos:08x}", std::process::id()))
        }
    }
}

/// The shared-memory client, admitting the users the command line names.
#[cfg(target_os = "linux")]
pub(crate) fn shm_client(args: &cli::EngineArgs) -> vdi_shm::ShmClient {
    let mut options = vdi_shm::Options::default();
    if let Some(uid) = args.admit_uid {
        options = options.admit_uid(uid);
    }
    if let Some(gid) = args.admit_gid {
        options = options.admit_gid(gid);
    }
    vdi_shm::ShmClient::with_options(options)
}
