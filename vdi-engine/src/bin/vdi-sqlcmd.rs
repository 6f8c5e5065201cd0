//! `vdi-sqlcmd`: a stand-in for `sqlcmd` that runs the reference engine in SQL Server's place.
//!
//! A VDI client built for SQL Server on Linux starts `sqlcmd ... -Q "BACKUP DATABASE db TO
//! VIRTUAL_DEVICE='<set>' WITH ..."` once it has created its set; one built for Windows runs
//! `osql -E -b -S . -Q"BACKUP ..."`. Installed on `PATH` as `sqlcmd` (or beside the client as
//! `osql.exe`), this program reads the `-Q` (or `-q`) statement, apart from its flag or joined
//! to it ([`vdi_engine::statement`]), runs
//! `vdi-engine backup` or `restore` with the set's name, every device name in order and the
//! statement's `MAXTRANSFERSIZE`, `BLOCKSIZE` and `BUFFERCOUNT`, prints what the engine prints
//! (SQL Server's message 3014 on success), and exits with the engine's exit code. Every other
//! `sqlcmd` flag (`-U`, `-P`, `-S`, `-E`, `-b`, ...) is accepted and ignored.
//!
//! The engine's other inputs come from the environment:
//!
//! - `VDI_SQLCMD_SIZE`: the database size of a backup (default `16MiB`);
//! - `VDI_SQLCMD_SEED`: the pseudo-database's seed (default 1);
//! - `VDI_SQLCMD_ENGINE_ARGS`: more `vdi-engine` flags, split at whitespace (fault injection,
//!   for instance `--silent-at 3 --silent-for 500ms`);
//! - `VDI_SQLCMD_LOG`: a file to which a line `<backup|restore> exit=<code> devices=<n>` is
//!   appended per run, for callers (such as Microsoft's Linux sample) that do not pass the exit
//!   code on.
//!
//! The engine waits up to 30 s for the set to exist (`--wait-for-set`), since a client may
//! start `sqlcmd` before or after `Create`.

#![forbid(unsafe_code)]

use std::{env, io::Write, process::ExitCode};

use clap::Parser;
use vdi_engine::{
    Exit,
    cli::{self, Cli},
    statement::Statement,
};

/// The statement: the argument after `-Q` (or `-q`), or the rest of an argument that starts
/// with it (`-Q"BACKUP ..."`, as `osql` takes it and Microsoft's Windows samples pass it).
fn query_of(args: &[String]) -> Option<&str> {
    args.iter().enumerate().find_map(|(i, a)| match a.as_str() {
        "-Q" | "-q" => args.get(i + 1).map(String::as_str),
        _ => a.strip_prefix("-Q").or_else(|| a.strip_prefix("-q")),
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let Some(query) = query_of(&args) else {
        eprintln!("vdi-sqlcmd: no -Q \"statement\" given");
        return Exit::Usage.into();
    };
    let statement = match Statement::parse(query) {
        Ok(s) => s,
        Err(e) => {
            println!("Msg 102, Level 15, State 1, Server vdi-sqlcmd, Line 1\n{e}: {query}");
            return Exit::Failure.into();
        }
    };
    let mut engine = vec!["vdi-engine".to_owned()];
    engine.extend(statement.engine_args());
    engine.extend(["--wait-for-set".to_owned(), "30s".to_owned()]);
    if statement.verb == vdi_engine::statement::Verb::Backup {
        let size = env::var("VDI_SQLCMD_SIZE").unwrap_or_else(|_| "16MiB".to_owned());
        engine.extend(["--size".to_owned(), size]);
        if let Ok(seed) = env::var("VDI_SQLCMD_SEED") {
            engine.extend(["--seed".to_owned(), seed]);
        }
    }
    if let Ok(extra) = env::var("VDI_SQLCMD_ENGINE_ARGS") {
        engine.extend(extra.split_whitespace().map(str::to_owned));
    }
    let code = match Cli::try_parse_from(&engine) {
        Ok(cli) => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let mut err = Vec::new();
            let code = cli::run_with(cli, &mut out, &mut err).code();
            // sqlcmd prints the server's errors on its standard output.
            let _ = out.write_all(&err);
            let _ = out.flush();
            code
        }
        Err(e) => {
            println!("vdi-sqlcmd: bad engine arguments {engine:?}: {e}");
            Exit::Usage.code()
        }
    };
    if let Ok(log) = env::var("VDI_SQLCMD_LOG") {
        let verb = engine[1].as_str();
        let line = format!("{verb} exit={code} devices={}\n", statement.devices.len());
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            eprintln!("vdi-sqlcmd: cannot append to {log}: {e}");
        }
    }
    ExitCode::from(code)
}
