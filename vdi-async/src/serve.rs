//! Serving every device of a set at once.

use std::future::Future;

use tokio::task::JoinSet;
use tracing::{Instrument, warn};
use vdi_core::{ClientDeviceSet, Error};

use crate::{AsyncDevice, AsyncSet};

/// Opens the devices `names` of `set` and serves each with `serve`, all at once, one task per
/// device; returns the results in the order of `names`.
///
/// The engine synchronizes the streams of a set: `GetCommand` on one device may wait until
/// another device made progress, so devices served one after another can deadlock. Each task
/// runs in its device's span on the current runtime.
///
/// When a device fails to open or a task returns an error, the set is aborted
/// ([`AsyncSet::signal_abort`]), so the other devices' streams end with the abort; once every
/// task has ended, the first error is returned. A task that panics aborts the set and the panic
/// resumes here.
///
/// # Errors
///
/// The first error of `OpenDevice` or of a task.
///
/// # Cancel safety
///
/// Dropping the future aborts the tasks; their commands in hand are completed with
/// `ERROR_OPERATION_ABORTED`, and so is every command the engine sends the devices after that,
/// so the engine sees the backup or restore fail at once, and the set can still be closed.
pub async fn serve_all<S, I, N, F, Fut, T, E>(
    set: &AsyncSet<S>,
    names: I,
    mut serve: F,
) -> Result<Vec<T>, E>
where
    S: ClientDeviceSet + 'static,
    I: IntoIterator<Item = N>,
    N: AsRef<str>,
    F: FnMut(AsyncDevice<S::Device>) -> Fut,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let mut devices = Vec::new();
    for name in names {
        match set.open_device(name.as_ref()).await {
            Ok(d) => devices.push(d),
            Err(e) => {
                warn!(parent: set.span(), device = name.as_ref(), error = %e, "OpenDevice failed; aborting the set");
                let _ = set.signal_abort();
                return Err(e.into());
            }
        }
    }
    let mut results: Vec<Option<T>> = devices.iter().map(|_| None).collect();
    let mut tasks = JoinSet::new();
    for (i, device) in devices.into_iter().enumerate() {
        let span = device.span().clone();
        let fut = serve(device);
        tasks.spawn(async move { (i, fut.await) }.instrument(span));
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, Ok(t))) => results[i] = Some(t),
            Ok((_, Err(e))) => {
                if first_error.is_none() {
                    warn!(parent: set.span(), "a device failed; aborting the set");
                    let _ = set.signal_abort();
                    first_error = Some(e);
                }
            }
            Err(e) => {
                let _ = set.signal_abort();
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
                // Cancelled: only the runtime shutting down does that.
                first_error.get_or_insert_with(|| {
                    E::from(Error::System(vdi_core::SystemError {
                        call: "JoinSet",
                        code: 0,
                    }))
                });
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(results.into_iter().flatten().collect()),
    }
}
