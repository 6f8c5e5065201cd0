//! The monitor thread each process of a set runs, its one [`watch`] loop, and the connection
//! handshake.
//!
//! The monitor owns the process's sockets and blocks in `poll` on them; it never touches the
//! rings. A secondary client's and the server's monitor [`watch`] their connection to the
//! primary; the primary client's runs the accept loop of `client::accept` on the same thread
//! machinery. Every monitor notices when the process at the other end of its connection goes
//! away (the kernel hangs the socket up, also on SIGKILL): unless the set had ended normally, it
//! records an abort in shared memory ([`Control::peer_went_away`]) and wakes every sleeper of
//! the set, so the survivor's waits return `VD_E_ABORT` at once rather than after a timeout.

use std::{
    io::ErrorKind,
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

use tracing::warn;
use vdi_core::{AbortReason, Error, HResult, ProtocolReason};

use crate::{
    Options,
    layout::Control,
    sync::{AtomicBool, Ordering},
    sys::{self, Attachment, Notifier, Socket},
    wire::{MSG_LEN, Msg, Role, WIRE_VERSION},
};

/// How long a connecting peer has to say hello, and a connecting side waits for the answer.
pub(crate) const HANDSHAKE_LIMIT: Duration = Duration::from_secs(5);
/// A running monitor thread.
#[derive(Debug)]
pub(crate) struct Monitor {
    notifier: Arc<Notifier>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    pub(crate) fn spawn(
        name: &str,
        body: impl FnOnce(Arc<Notifier>, Arc<AtomicBool>) + Send + 'static,
    ) -> Result<Self, Error> {
        let notifier = Arc::new(Notifier::new()?);
        let stop = Arc::new(AtomicBool::new(false));
        let (n, s) = (Arc::clone(&notifier), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name(format!("vdi-monitor {name}"))
            .spawn(move || body(n, s))
            .map_err(|e| {
                Error::System(vdi_core::SystemError {
                    call: "thread spawn",
                    code: e.raw_os_error().unwrap_or(0),
                })
            })?;
        Ok(Self {
            notifier,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread, which closes its sockets, and waits for it.
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        self.notifier.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Stops the monitor held in `slot`, if it still runs (Close, or the drop of a set).
pub(crate) fn stop_in(slot: &std::sync::Mutex<Option<Monitor>>) {
    let monitor = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(m) = monitor {
        m.stop();
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.notifier.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects as `role` to the primary of set `set`: sends `Hello`, waits for `Welcome`, maps the
/// control segment.
pub(crate) fn handshake(
    sock: Socket,
    set: &str,
    role: Role,
    options: &Options,
) -> Result<(Control, Socket), Error> {
    // Anyone could have taken the name first (the abstract namespace has no permissions).
    // Only a listener run by an admitted user gets our data.
    let cred = sock.peer_cred()?;
    if !sys::admitted(&cred, options) {
        warn!(peer = ?cred, "the set's listener runs as another user; refusing it");
        return Err(Error::Security);
    }
    sock.send(
        &Msg::Hello {
            version: WIRE_VERSION,
            role,
        }
        .encode(),
        None,
    )?;
    let ready = sys::poll(&[sock.waitable()], Some(HANDSHAKE_LIMIT));
    if !ready[0].readable {
        // The primary accepted nothing within the limit: a stuck or foreign listener.
        return Err(Error::Protocol(ProtocolReason::NotReady));
    }
    let mut buf = [0u8; MSG_LEN];
    let (n, mut fds) = sock
        .recv(&mut buf)
        .map_err(|e| sys::io_error("recvmsg", &e))?;
    let Some(Msg::Welcome {
        status,
        control_len,
        device_count,
    }) = Msg::decode(&buf[..n])
    else {
        return Err(Error::Protocol(ProtocolReason::PeerMisbehaved));
    };
    if status != HResult::S_OK {
        return Err(match status {
            HResult::VD_E_PROTOCOL => Error::Protocol(ProtocolReason::NotReady),
            HResult::VD_E_ABORT => Error::Aborted(AbortReason::Signalled),
            HResult::VD_E_SECURITY => Error::Security,
            other => Error::from_hresult(other)
                .unwrap_or(Error::Protocol(ProtocolReason::PeerMisbehaved)),
        });
    }
    if fds.len() != 1 {
        return Err(Error::Protocol(ProtocolReason::PeerMisbehaved));
    }
    let control = Control::open(fds.remove(0), set, control_len, device_count)?;
    Ok((control, sock))
}

/// The one loop of a monitor that watches a connection (a secondary client's to the primary,
/// the server's to the primary): hands each message to `on_message` (with the descriptors it
/// carried, when `attachments`; otherwise the kernel discards them), and calls `on_gone` with
/// the peer's pid once the peer went away (the end of the connection, or any failure of it but
/// "nothing there"), then ends.
pub(crate) fn watch(
    name: &str,
    sock: Arc<Socket>,
    attachments: bool,
    mut on_message: impl FnMut(&[u8], Vec<Attachment>) + Send + 'static,
    on_gone: impl FnOnce(i32) + Send + 'static,
) -> Result<Monitor, Error> {
    sock.set_nonblocking()?;
    Monitor::spawn(name, move |notifier, stop| {
        let pid = sock.peer_cred().map(|c| c.pid).unwrap_or(0);
        while !stop.load(Ordering::Acquire) {
            let ready = sys::poll(&[notifier.waitable(), sock.waitable()], None);
            if ready[0].readable {
                notifier.drain();
                continue;
            }
            if !ready[1].readable && !ready[1].hangup {
                continue;
            }
            let mut buf = [0u8; MSG_LEN];
            let received = if attachments {
                sock.recv(&mut buf)
            } else {
                sock.recv_no_attachments(&mut buf).map(|n| (n, Vec::new()))
            };
            match received {
                Ok((0, _)) => {
                    on_gone(pid);
                    break;
                }
                Ok((n, fds)) => on_message(&buf[..n], fds),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    on_gone(pid);
                    break;
                }
            }
        }
    })
}
