//! The engine on the other side: the reference engine in a child process (this same binary,
//! `vdi-agent __engine ...`), or an external one (SQL Server) that the user starts.

use std::{process::Stdio, time::Duration};

use tokio::{
    io::AsyncReadExt,
    process::{Child, Command},
    task::JoinHandle,
};
use vdi_async::AsyncSet;
use vdi_core::{ClientDeviceSet, Config, Error};

use vdi_engine::units::Limit;

use crate::{
    backend::Hints,
    cli::EngineArgs,
    failure::{Exit, Failure, Outcome},
};

/// The first argument that makes this binary run the reference engine instead of the agent.
pub(crate) const ENGINE_ARG: &str = "__engine";

/// The engine of one operation, and what to tell the user when it does not come.
#[derive(Debug)]
pub(crate) struct Engine {
    side: Side,
    hints: Hints,
    /// The set's devices, for messages.
    devices: u32,
}

/// Where the engine runs.
#[derive(Debug)]
enum Side {
    /// The reference engine, our child.
    Builtin(Box<EngineChild>),
    /// Someone else's engine; all we know of it is what VDI tells.
    External,
}

/// The reference engine running in a child process; killed if dropped while running.
#[derive(Debug)]
pub(crate) struct EngineChild {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    end: Option<EngineEnd>,
}

/// How the reference engine ended.
#[derive(Clone, Debug)]
pub(crate) struct EngineEnd {
    /// Whether it exited with status 0.
    pub(crate) success: bool,
    /// Its exit code, if it exited (not killed by a signal).
    pub(crate) code: Option<i32>,
    /// The signal that killed it, if one did.
    pub(crate) signal: Option<i32>,
    /// What it printed on stdout (the "successfully processed" line).
    pub(crate) stdout: String,
    /// What it printed on stderr (its error).
    pub(crate) stderr: String,
}

impl EngineEnd {
    /// The engine's own words on why it failed, or a description of its exit.
    pub(crate) fn reason(&self) -> String {
        let err = self.stderr.trim();
        if !err.is_empty() {
            return err
                .lines()
                .map(|l| l.trim_start_matches("vdi-engine: "))
                .collect::<Vec<_>>()
                .join("; ");
        }
        match (self.code, self.signal) {
            (Some(c), _) => format!("the reference engine exited with code {c}"),
            (None, Some(sig)) => format!("the engine died (killed by signal {sig})"),
            (None, None) => "the engine died".to_owned(),
        }
    }
}

impl Engine {
    /// Starts the reference engine for `mode` ("backup" or "restore") unless the user asked for
    /// an external one.
    pub(crate) fn start(
        mode: &str,
        set: &str,
        devices: u32,
        args: &EngineArgs,
        extra: &[String],
        hints: Hints,
    ) -> Outcome<Self> {
        if args.external {
            return Ok(Self {
                side: Side::External,
                hints,
                devices,
            });
        }
        let exe = std::env::current_exe().map_err(|e| {
            Failure::other(format!(
                "cannot find this program to start the reference engine: {e}"
            ))
        })?;
        let mut cmd = Command::new(exe);
        cmd.arg(ENGINE_ARG)
            .arg(mode)
            .arg("--set")
            .arg(set)
            .arg("--devices")
            .arg(devices.to_string());
        // Not given: the engine's own defaults (SQL Server's), the same as `vdi-engine`'s.
        if let Some(n) = args.block_size {
            cmd.arg("--block-size").arg(n.to_string());
        }
        if let Some(n) = args.max_transfer_size {
            cmd.arg("--max-transfer-size").arg(n.to_string());
        }
        if let Some(n) = args.buffer_count {
            cmd.arg("--buffer-count").arg(n.to_string());
        }
        cmd.args(extra)
            .args(&args.engine_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| Failure::other(format!("cannot start the reference engine: {e}")))?;
        let stdout = collect(child.stdout.take());
        let stderr = collect(child.stderr.take());
        Ok(Self {
            side: Side::Builtin(Box::new(EngineChild {
                child,
                stdout: Some(stdout),
                stderr: Some(stderr),
                end: None,
            })),
            hints,
            devices,
        })
    }

    /// Waits until the engine configured the set; fails with a message that names the likely
    /// cause when nobody does so within `timeout`, or when the reference engine exits first.
    pub(crate) async fn configuration<S>(
        &mut self,
        set: &AsyncSet<S>,
        timeout: &Limit,
        operation: &str,
    ) -> Outcome<Config>
    where
        S: ClientDeviceSet + 'static,
    {
        let wait = tokio::time::timeout(timeout.or_no_limit(), set.configuration());
        let hints = self.hints;
        let result = match &mut self.side {
            Side::External => wait.await,
            Side::Builtin(child) => {
                tokio::select! {
                    r = wait => r,
                    status = child.child.wait() => {
                        let _ = status;
                        let end = self.finish(Duration::from_secs(5)).await;
                        return Err(Failure::engine(format!(
                            "the reference engine exited before configuring the set: {}",
                            end.map_or_else(|| "no message".to_owned(), |e| e.reason())
                        )));
                    }
                }
            }
        };
        match result {
            Ok(Ok(config)) => Ok(config),
            Ok(Err(Error::Aborted(_))) => Err(Failure::engine(format!(
                "the {operation} was aborted before the engine configured the set{}",
                hints
                    .early_abort
                    .map_or(String::new(), |h| format!(". {h}"))
            ))),
            Ok(Err(e)) => Err(Failure::other(format!("GetConfiguration failed: {e}"))),
            Err(_) => Err(Failure::new(
                Exit::NoEngine,
                format!(
                    "no engine configured the set '{}' within {timeout}. Is the statement running \
                     ({} DATABASE ... {} {}), {}? A long wait for locks or file creation needs a \
                     longer --connect-timeout",
                    set.name(),
                    operation.to_ascii_uppercase(),
                    if operation == "backup" { "TO" } else { "FROM" },
                    device_clause(set.name(), self.devices),
                    hints.access,
                ),
            )),
        }
    }

    /// What to tell the user about this engine.
    pub(crate) fn hints(&self) -> Hints {
        self.hints
    }

    /// Waits (at most `limit`) for the reference engine to exit and returns how it ended; kills
    /// it when it does not. `None` for an external engine.
    pub(crate) async fn finish(&mut self, limit: Duration) -> Option<EngineEnd> {
        let Side::Builtin(child) = &mut self.side else {
            return None;
        };
        if let Some(end) = &child.end {
            return Some(end.clone());
        }
        let status = match tokio::time::timeout(limit, child.child.wait()).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(_)) | Err(_) => {
                let _ = child.child.kill().await;
                None
            }
        };
        let mut stdout = String::new();
        if let Some(h) = child.stdout.take() {
            stdout = h.await.unwrap_or_default();
        }
        let mut stderr = String::new();
        if let Some(h) = child.stderr.take() {
            stderr = h.await.unwrap_or_default();
        }
        if status.is_none() {
            stderr.push_str(&format!(
                "the reference engine did not exit within {} s and was killed",
                limit.as_secs()
            ));
        }
        let end = EngineEnd {
            success: status.is_some_and(|s| s.success()),
            code: status.and_then(|s| s.code()),
            signal: status.and_then(exit_signal),
            stdout,
            stderr,
        };
        child.end = Some(end.clone());
        Some(end)
    }
}

/// The signal that ended a process, where there are signals.
#[cfg(unix)]
fn exit_signal(status: std::process::ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(&status)
}

#[cfg(not(unix))]
fn exit_signal(_status: std::process::ExitStatus) -> Option<i32> {
    None
}

/// Reads a child's pipe to the end in the background.
fn collect<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    pipe: Option<R>,
) -> JoinHandle<String> {
    tokio::spawn(async move {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf).await;
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        s
    })
}

/// `VIRTUAL_DEVICE = 'a', VIRTUAL_DEVICE = 'a-stripe1', ...` for the user's statement.
pub(crate) fn device_clause(name: &str, devices: u32) -> String {
    (0..devices)
        .map(|i| {
            format!(
                "VIRTUAL_DEVICE = '{}'",
                vdi_core::stripe_device_name(name, i)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The T-SQL statement an external engine must run for the set `name` of `devices` devices,
/// ready to paste: `BACKUP DATABASE [db] TO VIRTUAL_DEVICE = ... WITH MAXTRANSFERSIZE = ...,
/// BUFFERCOUNT = ...` (and `RESTORE ... FROM ...` with the backup's `block_size`).
///
/// MAXTRANSFERSIZE defaults to 4MiB (`max_transfer_size`: a restore's default, the backup's),
/// the largest and fastest, and BUFFERCOUNT to 4 per device: enough for SQL Server to fill one
/// buffer while the agent writes the others, at 16MiB of SQL Server's memory per device.
pub(crate) fn statement(
    operation: &str,
    args: &EngineArgs,
    name: &str,
    devices: u32,
    block_size: Option<u32>,
    max_transfer_size: Option<u32>,
) -> String {
    let database = args.database.as_deref().map_or_else(
        || "[<database>]".to_owned(),
        |d| format!("[{}]", d.replace(']', "]]")),
    );
    let max_transfer = args
        .max_transfer_size
        .or(max_transfer_size)
        .unwrap_or(vdi_core::MAX_TRANSFER_SIZE);
    let buffers = args
        .buffer_count
        .unwrap_or_else(|| devices.saturating_mul(4));
    let mut with = Vec::new();
    if let Some(b) = block_size {
        with.push(format!("BLOCKSIZE = {b}"));
    }
    with.push(format!("MAXTRANSFERSIZE = {max_transfer}"));
    with.push(format!("BUFFERCOUNT = {buffers}"));
    let (verb, prep) = if operation == "backup" {
        ("BACKUP", "TO")
    } else {
        ("RESTORE", "FROM")
    };
    format!(
        "{verb} DATABASE {database} {prep} {} WITH {}",
        device_clause(name, devices),
        with.join(", ")
    )
}
