//! Ctrl-C and SIGTERM: once the agent is running, either one aborts the operation in progress
//! (SignalAbort to the engine), which then ends like any other abort, says so, and exits with
//! [`Exit::Interrupted`](crate::failure::Exit::Interrupted), instead of dying with the files in
//! an unknown state.

use tokio::sync::watch;
use vdi_async::AsyncSet;
use vdi_core::ClientDeviceSet;

use crate::failure::{Exit, Failure};

/// The process's interrupt: which signal came, if one did.
#[derive(Clone, Debug)]
pub(crate) struct Interrupt {
    rx: watch::Receiver<Option<&'static str>>,
}

impl Interrupt {
    /// Starts listening for SIGINT and SIGTERM (Ctrl-C and the console's close event
    /// elsewhere). From now on they no longer kill the process: they are reported here.
    pub(crate) fn listen() -> Self {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let name = wait_for_signal().await;
            let _ = tx.send(Some(name));
        });
        Self { rx }
    }

    /// The signal that came, if one did: `"SIGINT (Ctrl-C)"` or `"SIGTERM"`.
    pub(crate) fn fired(&self) -> Option<&'static str> {
        *self.rx.borrow()
    }

    /// Waits until a signal comes.
    pub(crate) async fn wait(&self) -> &'static str {
        let mut rx = self.rx.clone();
        let fired = rx
            .wait_for(Option::is_some)
            .await
            .map(|v| v.unwrap_or("a signal"));
        match fired {
            Ok(name) => name,
            // The listener is gone: no signal will ever be reported.
            Err(_) => std::future::pending().await,
        }
    }

    /// Aborts `set` when a signal comes, until the returned guard is dropped.
    pub(crate) fn abort_on_signal<S>(&self, set: &AsyncSet<S>) -> AbortGuard
    where
        S: ClientDeviceSet + 'static,
    {
        let me = self.clone();
        let set = set.clone();
        AbortGuard(tokio::spawn(async move {
            me.wait().await;
            let _ = set.signal_abort();
        }))
    }

    /// The failure of an operation that `signal` interrupted, with what is left.
    pub(crate) fn failure(signal: &str, operation: &str, left: &str) -> Failure {
        Failure::new(
            Exit::Interrupted,
            format!("interrupted by {signal}: the {operation} was aborted; {left}"),
        )
    }
}

/// Stops aborting a set on a signal when dropped.
#[derive(Debug)]
pub(crate) struct AbortGuard(tokio::task::JoinHandle<()>);

impl Drop for AbortGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT (Ctrl-C)",
        _ = term.recv() => "SIGTERM",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    match tokio::signal::ctrl_c().await {
        Ok(()) => "Ctrl-C",
        Err(_) => std::future::pending().await,
    }
}
