//! Device sets as async values: create or join, wait for the configuration, open devices,
//! abort, close.

use std::{
    fmt,
    sync::{Arc, OnceLock},
};

use tracing::{Span, debug, info_span, warn};
use vdi_core::{
    BufferHandle, ClientBackend, ClientConfig, ClientDeviceSet, Config, Error, SystemError, Timeout,
};

use crate::{AsyncDevice, device::SLICE};

/// A device set for async code: a cheap handle ([`Clone`], an [`Arc`] inside) around a set of
/// any `vdi-core` client backend.
///
/// Calls that may wait (`GetConfiguration`, `Close`, joining as a secondary, mapping a handle)
/// run on tokio's blocking pool, in slices of at most 100 ms where the call itself waits, so
/// no runtime worker thread ever blocks on VDI. Each device opened gets its own waiter thread
/// ([`AsyncDevice`]).
///
/// Dropping the last handle drops the backend's set; with the shared-memory backend that closes
/// it (and aborts it if devices are still open).
pub struct AsyncSet<S> {
    shared: Arc<SetShared<S>>,
}

struct SetShared<S> {
    set: S,
    name: String,
    span: Span,
    config: OnceLock<Config>,
}

impl<S> Clone for AsyncSet<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> fmt::Debug for AsyncSet<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncSet")
            .field("name", &self.shared.name)
            .field("config", &self.shared.config.get())
            .finish_non_exhaustive()
    }
}

impl<S: ClientDeviceSet + 'static> AsyncSet<S> {
    /// Wraps a set created or joined by other means. `name` is for the `vdi_set` span and logs.
    pub fn from_set(set: S, name: &str) -> Self {
        Self {
            shared: Arc::new(SetShared {
                set,
                name: name.to_owned(),
                span: info_span!("vdi_set", name = %name),
                config: OnceLock::new(),
            }),
        }
    }

    /// `CreateEx`: creates the set `name` for the instance `instance` (`None`: the default
    /// instance) with the client's half of the configuration.
    ///
    /// # Errors
    ///
    /// As the backend's `create`: `VD_E_NOTSUPPORTED`, `VD_E_INVALID`, `VD_E_PROTOCOL` (a set of
    /// that name exists), `VD_E_INSTANCE_NAME`.
    ///
    /// # Cancel safety
    ///
    /// The call runs on the blocking pool and finishes even if this future is dropped; a set
    /// created for a dropped future is closed again at once (or, if the future was dropped just
    /// as the set was handed over, dropped, which closes it in the shared-memory backend). So
    /// after a drop the set either was never created or no longer exists.
    pub async fn create<B>(
        backend: &B,
        instance: Option<&str>,
        name: &str,
        config: &ClientConfig,
    ) -> Result<Self, Error>
    where
        B: ClientBackend<Set = S> + Clone + 'static,
    {
        let backend = backend.clone();
        let instance = instance.map(str::to_owned);
        let owned = name.to_owned();
        let config = *config;
        let set = run_blocking_owned(move || backend.create(instance.as_deref(), &owned, &config))
            .await?;
        let this = Self::from_set(set, name);
        debug!(parent: &this.shared.span, devices = config.device_count, "device set created");
        Ok(this)
    }

    /// `OpenInSecondaryEx`: joins the configured set `name` from another process.
    ///
    /// # Errors
    ///
    /// As the backend's `open_secondary`: `VD_E_PROTOCOL` when no such set is ready for
    /// secondaries, `VD_E_ABORT`.
    ///
    /// # Cancel safety
    ///
    /// As [`create`](Self::create): a set joined for a dropped future is closed again at once,
    /// which leaves the primary's set as it was.
    pub async fn open_secondary<B>(
        backend: &B,
        instance: Option<&str>,
        name: &str,
    ) -> Result<Self, Error>
    where
        B: ClientBackend<Set = S> + Clone + 'static,
    {
        let backend = backend.clone();
        let instance = instance.map(str::to_owned);
        let owned = name.to_owned();
        let set =
            run_blocking_owned(move || backend.open_secondary(instance.as_deref(), &owned)).await?;
        let this = Self::from_set(set, name);
        debug!(parent: &this.shared.span, "joined as a secondary client");
        Ok(this)
    }

    /// The set's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The set's `vdi_set` span.
    pub fn span(&self) -> &Span {
        &self.shared.span
    }

    /// The backend's set.
    pub fn inner(&self) -> &S {
        &self.shared.set
    }

    /// The configuration, if [`configuration`](Self::configuration) has returned it.
    pub fn config(&self) -> Option<Config> {
        self.shared.config.get().copied()
    }

    /// `GetConfiguration`: waits, without a time limit, until the engine has configured the set.
    /// Wrap it in [`tokio::time::timeout`] for a limit.
    ///
    /// # Errors
    ///
    /// `VD_E_ABORT`, `VD_E_PROTOCOL` (the set was closed).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. It waits in calls of at most 100 ms on the blocking pool; a
    /// dropped future leaves at most one such call, which ends harmlessly, and the
    /// configuration can be awaited again.
    pub async fn configuration(&self) -> Result<Config, Error> {
        loop {
            if let Some(c) = self.shared.config.get() {
                return Ok(*c);
            }
            let shared = Arc::clone(&self.shared);
            match run_blocking(move || shared.set.configuration(Timeout::from(SLICE))).await {
                Ok(config) => {
                    if self.shared.config.set(config).is_ok() {
                        debug!(parent: &self.shared.span, features = ?config.features, block = config.block_size, max_transfer = config.max_transfer_size, devices = config.device_count, "configured");
                    }
                    return Ok(config);
                }
                Err(Error::Timeout) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// `OpenDevice`: opens the device `name` (the first device has the set's name) and starts
    /// its waiter thread.
    ///
    /// `OpenDevice` does not wait in either backend, so it runs on the calling task.
    ///
    /// # Errors
    ///
    /// `VD_E_OPEN` (all are open), `VD_E_PROTOCOL` (not configured, or already open),
    /// `VD_E_INVALID` (no such device), `VD_E_ABORT`, [`Error::System`] when the waiter thread
    /// cannot be started.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: it completes in its first poll, so a dropped future either
    /// opened nothing or was never polled.
    pub async fn open_device(&self, name: &str) -> Result<AsyncDevice<S::Device>, Error> {
        let device = self.shared.set.open_device(name)?;
        AsyncDevice::new(device, name, &self.shared.span)
    }

    /// `MapBufferHandle`: this process's view of the first `len` bytes of the buffer a handle
    /// names (from another process's
    /// [`AsyncCommand::buffer_handle`](crate::AsyncCommand::buffer_handle), which sends the
    /// command's size along with it). See
    /// [`ClientDeviceSet::map_buffer_handle`](vdi_core::ClientDeviceSet::map_buffer_handle).
    ///
    /// # Errors
    ///
    /// `VD_E_INVALID` for a handle of another set or of a freed buffer, or a `len` larger
    /// than the buffer.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: a mapping made for a dropped future is dropped (unmapped).
    pub async fn map_buffer_handle(
        &self,
        handle: BufferHandle,
        len: u32,
    ) -> Result<S::Mapped, Error>
    where
        S::Mapped: 'static,
    {
        let shared = Arc::clone(&self.shared);
        run_blocking(move || shared.set.map_buffer_handle(handle, len)).await
    }

    /// `SignalAbort`: every wait on either side returns `VD_E_ABORT`; every device's stream
    /// yields the abort and ends. It does not wait.
    ///
    /// # Errors
    ///
    /// `VD_E_PROTOCOL` if the set was closed.
    pub fn signal_abort(&self) -> Result<(), Error> {
        warn!(parent: &self.shared.span, "SignalAbort");
        self.shared.set.signal_abort()
    }

    /// `Close`: releases the set. Devices the engine has not closed make it answer `VD_E_OPEN`
    /// and abort the set.
    ///
    /// # Errors
    ///
    /// `VD_E_OPEN`, `VD_E_PROTOCOL` (already closed).
    ///
    /// # Cancel safety
    ///
    /// The call runs on the blocking pool and finishes even if this future is dropped: the set
    /// is closed either way, only the result is lost.
    pub async fn close(&self) -> Result<(), Error> {
        let shared = Arc::clone(&self.shared);
        let r = run_blocking(move || shared.set.close()).await;
        debug!(parent: &self.shared.span, result = ?r, "Close");
        r
    }
}

/// Runs `f` on the blocking pool and returns its result; a panic in `f` resumes here.
async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => match e.try_into_panic() {
            Ok(p) => std::panic::resume_unwind(p),
            Err(_) => Err(runtime_gone()),
        },
    }
}

/// Runs `f`, which makes a set, on the blocking pool; if the caller's future was dropped by
/// the time the set exists, closes the set again.
async fn run_blocking_owned<S: ClientDeviceSet + 'static>(
    f: impl FnOnce() -> Result<S, Error> + Send + 'static,
) -> Result<S, Error> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::task::spawn_blocking(move || {
        if let Err(Ok(set)) = tx.send(f()) {
            debug!("the future that made this set was dropped; closing it");
            let _ = set.close();
        }
    });
    match rx.await {
        Ok(r) => r,
        Err(_) => match task.await {
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            _ => Err(runtime_gone()),
        },
    }
}

/// The error for a blocking task the runtime cancelled (it is shutting down).
fn runtime_gone() -> Error {
    Error::System(SystemError {
        call: "spawn_blocking",
        code: 0,
    })
}
