//! `vdi-agent`: the backup agent (the client side of VDI) as a command-line tool.
//!
//! - `backup` creates a device set, waits for the engine (the reference engine it starts
//!   itself, or SQL Server with `--external`), and streams each device into a stripe file of
//!   its own (or stdout), optionally zstd-compressed, with checksummed records, and hardens
//!   stripes and manifest (fsync) at every Flush and Complete before acknowledging them.
//! - `restore` streams the stripes back, checking each record before the engine sees it.
//! - `verify` checks a backup without an engine; only a complete one verifies as good.
//! - `info` and `list` describe backups from their manifests.
//! - `demo` runs backup, restore and verify of a pseudo-database through the reference engine.
//! - `completions` and `man` print a shell completion script and the manual page.
//!
//! The stripe format and the manifest are in the `vdi_agent` library.

#![forbid(unsafe_code)]

#[cfg(any(unix, windows))]
mod backend;
#[cfg(any(unix, windows))]
mod backup;
mod cli;
#[cfg(any(unix, windows))]
mod demo;
#[cfg(any(unix, windows))]
mod engine;
mod failure;
mod info;
#[cfg(any(unix, windows))]
mod interrupt;
mod output;
mod progress;
#[cfg(any(unix, windows))]
mod restore;
mod store;
mod units;
mod verify;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::{
    cli::{Cli, Command},
    failure::{Failure, Outcome},
};

fn main() -> ExitCode {
    #[cfg(any(unix, windows))]
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == engine::ENGINE_ARG)
    {
        return run_engine();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
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

/// Runs a command. Ctrl-C and SIGTERM abort a backup or restore through the engine (the
/// operation says what is left); any other command just stops.
#[cfg(any(unix, windows))]
async fn run(cli: Cli) -> Outcome {
    use std::io::IsTerminal;
    let progress = !cli.no_progress && std::io::stderr().is_terminal();
    let json = cli.json;
    let interrupt = interrupt::Interrupt::listen();
    let work = async {
        match &cli.command {
            Command::Backup(args) => {
                if json && args.target.as_os_str() == "-" {
                    return Err(Failure::usage(
                        "--json prints on stdout, where `backup -` writes the stripe: use one",
                    ));
                }
                let client = backend::Client::choose(&args.engine)?;
                let hints = client.hints();
                let report = backend::with_client!(client, b => {
                    backup::run(&b, hints, args, progress, &interrupt).await?
                });
                backup::print_report(&report, &args.target, json);
                Ok(())
            }
            Command::Restore(args) => {
                let client = backend::Client::choose(&args.engine)?;
                let hints = client.hints();
                let report = backend::with_client!(client, b => {
                    restore::run(&b, hints, args, progress, &interrupt).await?
                });
                restore::print_report(&report, json);
                Ok(())
            }
            Command::Demo(args) => demo::run(args, progress, &interrupt).await,
            other => run_local(other, progress, json).await,
        }
    };
    tokio::select! {
        r = work => r,
        signal = interrupt.wait(), if !aborts_itself(&cli.command) => Err(Failure::new(
            failure::Exit::Interrupted,
            format!("interrupted by {signal}"),
        )),
    }
}

/// Whether a command handles Ctrl-C itself (it has an engine to abort and files to mark).
#[cfg(any(unix, windows))]
fn aborts_itself(c: &Command) -> bool {
    matches!(
        c,
        Command::Backup(_) | Command::Restore(_) | Command::Demo(_)
    )
}

/// The commands that need no engine, on every platform.
async fn run_local(command: &Command, progress: bool, json: bool) -> Outcome {
    match command {
        Command::Verify(args) => verify::run(args, progress, json).await,
        Command::Info(args) => info::info(&args.dir, Some(&args.objects), json),
        Command::Cleanup(args) => cleanup(args),
        Command::List(args) => info::list(&args.parent, json),
        Command::Completions(args) => {
            let mut cmd = Cli::command();
            clap_complete::generate(args.shell, &mut cmd, "vdi-agent", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(|e| Failure::io("writing the manual page", &e)),
        Command::Backup(_) | Command::Restore(_) | Command::Demo(_) => Err(Failure::other(
            "this platform is not supported: the shared-memory transport runs on Unix and Windows",
        )),
    }
}

#[cfg(not(any(unix, windows)))]
async fn run(cli: Cli) -> Outcome {
    let progress = !cli.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    run_local(&cli.command, progress, cli.json).await
}

/// `vdi-agent cleanup URL`.
fn cleanup(args: &cli::CleanupArgs) -> Outcome {
    let Some(store) = store::object_store(&args.url, Some(&args.objects), 1)? else {
        return Err(Failure::usage(format!(
            "{}: cleanup takes an s3:// or az:// URL (a directory needs none: a backup there \
             leaves nothing behind but its own files)",
            args.url.display()
        )));
    };
    eprintln!("vdi-agent: {}", store.cleanup()?);
    Ok(())
}

/// Prints `value` as one pretty JSON document on stdout.
pub(crate) fn print_json(value: &serde_json::Value) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("vdi-agent: cannot print JSON: {e}"),
    }
}

/// The client's serverTimeOut in milliseconds (0: none), as the command line gives it.
#[cfg(any(unix, windows))]
pub(crate) fn server_timeout_ms(args: &cli::EngineArgs) -> Outcome<u32> {
    match args.server_timeout.get() {
        None => Ok(0),
        Some(d) => u32::try_from(d.as_millis().max(1)).map_err(|_| {
            Failure::usage(format!(
                "--server-timeout {} is longer than serverTimeOut can say (about 49 days)",
                args.server_timeout
            ))
        }),
    }
}

/// The reference engine, when this binary was started as one (`vdi-agent __engine ...`).
#[cfg(any(unix, windows))]
fn run_engine() -> ExitCode {
    let args = std::iter::once("vdi-engine".into()).chain(std::env::args_os().skip(2));
    match vdi_engine::cli::Cli::try_parse_from(args) {
        Ok(cli) => ExitCode::from(vdi_engine::cli::run(cli)),
        Err(e) => {
            let _ = e.print();
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(vdi_engine::Exit::Usage.code()))
        }
    }
}

/// A set name: the user's, checked, or a unique one.
#[cfg(any(unix, windows))]
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
