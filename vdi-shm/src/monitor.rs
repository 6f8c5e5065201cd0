//! The monitor thread each process of a set runs, and the connection handshake.
//!
//! The monitor owns the process's sockets and blocks in `poll` on them; it never touches the
//! rings. The primary client's monitor accepts the server and secondary clients, checks their
//! credentials, hands them the control segment, and forwards the server's buffer segments to
//! the secondaries. Every monitor notices when the process at the other end of its connection
//! goes away (the kernel hangs the socket up, also on SIGKILL): unless the set had ended
//! normally, it records an abort in shared memory and wakes every sleeper of the set, so the
//! survivor's waits return `VD_E_ABORT` at once rather than after a timeout.

use std::{
    io::ErrorKind,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracing::{debug, warn};
use vdi_core::{AbortReason, Error, HResult, ProtocolReason};

use crate::{
    Options,
    client::Shared,
    layout::{Control, MAX_SEGMENTS, STATE_CREATED},
    sys::{self, Attachment, Mapping, Notifier, Socket, Waitable},
    wire::{MSG_LEN, Msg, Role, WIRE_VERSION},
};

/// How long a connecting peer has to say hello, and a connecting side waits for the answer.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(5);
/// The largest buffer segment a client maps (1 TiB).
const MAX_SEGMENT_LEN: u64 = 1 << 40;

/// Connections accepted per turn of the monitor loop, so a flood cannot starve the peers.
const ACCEPT_BURST: usize = 16;
/// Peers that have connected but not said hello, at most; more are closed at once.
const MAX_PENDING: usize = 32;

/// A running monitor thread.
#[derive(Debug)]
pub(crate) struct Monitor {
    notifier: Arc<Notifier>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    fn spawn(
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

struct Peer {
    sock: Socket,
    /// `None` until the peer said hello.
    role: Option<Role>,
    since: Instant,
    pid: i32,
}

/// The primary client's monitor: accepts peers, hands out the control segment, forwards
/// segments, and watches the server and the secondaries.
pub(crate) fn spawn_primary(
    shared: Arc<Shared>,
    listener: Socket,
    options: Options,
) -> Result<Monitor, Error> {
    let name = shared.name.clone();
    Monitor::spawn(&name, move |notifier, stop| {
        let mut peers: Vec<Peer> = Vec::new();
        let mut accept_paused_until = Instant::now();
        let mut server_seen = false;
        while !stop.load(Ordering::Acquire) {
            // While accepting is paused, the notifier stands in for the (still readable) listener.
            let listen_fd = if Instant::now() < accept_paused_until {
                notifier.waitable()
            } else {
                listener.waitable()
            };
            let mut fds: Vec<Waitable<'_>> = vec![notifier.waitable(), listen_fd];
            fds.extend(peers.iter().map(|p| p.sock.waitable()));
            let timeout = if Instant::now() < accept_paused_until {
                Duration::from_millis(100)
            } else {
                Duration::from_secs(1)
            };
            let ready = sys::poll(&fds, Some(timeout));
            drop(fds);
            if ready[0].readable {
                notifier.drain();
            }
            if stop.load(Ordering::Acquire) {
                break;
            }
            if ready[1].readable && Instant::now() >= accept_paused_until {
                for _ in 0..ACCEPT_BURST {
                    let sock = match listener.accept() {
                        Ok(s) => s,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => {
                            // Out of descriptors, say: the listener stays readable, so pause
                            // accepting instead of spinning.
                            accept_paused_until = Instant::now() + Duration::from_millis(100);
                            break;
                        }
                    };
                    let Ok(cred) = sock.peer_cred() else { continue };
                    if !sys::admitted(&cred, &options) {
                        warn!(set = %shared.name, peer = ?cred, "refused a connection from another user");
                        let _ = sock.send(&welcome_error(HResult::VD_E_SECURITY), None);
                        continue;
                    }
                    if peers.iter().filter(|p| p.role.is_none()).count() >= MAX_PENDING {
                        continue;
                    }
                    if sock.set_nonblocking().is_ok() {
                        peers.push(Peer {
                            sock,
                            role: None,
                            since: Instant::now(),
                            pid: cred.pid,
                        });
                    }
                }
            }
            let mut gone = Vec::new();
            let mut new_segments = Vec::new();
            for (i, peer) in peers.iter_mut().enumerate() {
                let r = ready.get(2 + i).copied().unwrap_or_default();
                if !r.readable && !r.hangup {
                    if peer.role.is_none() && peer.since.elapsed() > HANDSHAKE_LIMIT {
                        gone.push(i);
                    }
                    continue;
                }
                let mut buf = [0u8; MSG_LEN];
                // Descriptors are taken only from the server (its segments); anything another
                // peer sends is discarded by the kernel.
                let received = if peer.role == Some(Role::Server) {
                    peer.sock.recv(&mut buf)
                } else {
                    peer.sock
                        .recv_no_attachments(&mut buf)
                        .map(|n| (n, Vec::new()))
                };
                let (n, fds) = match received {
                    Ok((0, _)) => {
                        gone.push(i);
                        continue;
                    }
                    Ok(x) => x,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        if r.hangup {
                            gone.push(i);
                        }
                        continue;
                    }
                    Err(_) => {
                        gone.push(i);
                        continue;
                    }
                };
                match (peer.role, Msg::decode(&buf[..n])) {
                    (None, Some(Msg::Hello { version, role })) => {
                        let status = if version != WIRE_VERSION {
                            HResult::VD_E_PROTOCOL
                        } else if shared.aborted() {
                            HResult::VD_E_ABORT
                        } else {
                            match role {
                                Role::Server
                                    if !server_seen
                                        && shared.control.state().load(Ordering::Acquire)
                                            == STATE_CREATED =>
                                {
                                    HResult::S_OK
                                }
                                Role::Secondary if shared.is_configured() => HResult::S_OK,
                                _ => HResult::VD_E_PROTOCOL,
                            }
                        };
                        if status != HResult::S_OK {
                            let _ = peer.sock.send(&welcome_error(status), None);
                            gone.push(i);
                            continue;
                        }
                        let welcome = Msg::Welcome {
                            status,
                            control_len: shared.control.layout().len as u64,
                            device_count: shared.control.device_count(),
                        };
                        if peer
                            .sock
                            .send(&welcome.encode(), Some(shared.control.mapping()))
                            .is_err()
                        {
                            gone.push(i);
                            continue;
                        }
                        if role == Role::Secondary {
                            for (id, map) in shared.segments.all() {
                                let m = Msg::Segment {
                                    id,
                                    len: map.len() as u64,
                                };
                                let _ = peer.sock.send(&m.encode(), Some(&map));
                            }
                        } else {
                            server_seen = true;
                        }
                        debug!(set = %shared.name, ?role, pid = peer.pid, "peer joined");
                        peer.role = Some(role);
                    }
                    (Some(Role::Server), Some(Msg::Segment { id, len })) => {
                        match map_segment(&shared.control, &shared.name, id, len, fds) {
                            Ok(map) => new_segments.push((id, map)),
                            Err(()) => {
                                warn!(set = %shared.name, id, len, "the server sent an invalid segment; aborting");
                                shared.control.abort(AbortReason::PeerMisbehaved);
                            }
                        }
                    }
                    _ => {
                        // A message out of place. A pending peer is dropped; the server or a
                        // secondary sending garbage is ignored (the rings carry the protocol).
                        if peer.role.is_none() {
                            gone.push(i);
                        }
                    }
                }
            }
            for (id, map) in new_segments {
                let m = Msg::Segment {
                    id,
                    len: map.len() as u64,
                };
                for p in peers.iter().filter(|p| p.role == Some(Role::Secondary)) {
                    let _ = p.sock.send(&m.encode(), Some(&map));
                }
                if !shared.segments.insert(id, map) {
                    shared.control.abort(AbortReason::PeerMisbehaved);
                }
            }
            gone.dedup();
            for i in gone.into_iter().rev() {
                let p = peers.remove(i);
                match p.role {
                    Some(Role::Server) => peer_gone(&shared.control, &shared.name, "server", p.pid),
                    Some(Role::Secondary) => {
                        shared.secondaries_lost.fetch_add(1, Ordering::AcqRel);
                        debug!(set = %shared.name, pid = p.pid, "a secondary client disconnected");
                    }
                    None => {}
                }
            }
        }
        // Dropping the listener frees the name; dropping the sockets tells the peers.
        drop(listener);
    })
}

fn welcome_error(status: HResult) -> [u8; MSG_LEN] {
    Msg::Welcome {
        status,
        control_len: 0,
        device_count: 0,
    }
    .encode()
}

/// Maps a segment the server announced, after checking it against the segment table.
fn map_segment(
    control: &Control,
    set: &str,
    id: u32,
    len: u64,
    mut fds: Vec<Attachment>,
) -> Result<Mapping, ()> {
    if id >= MAX_SEGMENTS || len == 0 || len > MAX_SEGMENT_LEN || fds.len() != 1 {
        return Err(());
    }
    if control.segment_len(id).load(Ordering::Acquire) != len {
        return Err(());
    }
    let len = usize::try_from(len).map_err(|_| ())?;
    let tag = format!("vdi-shm:{set}:segment{id}");
    Mapping::open(fds.remove(0), &tag, len, &[]).map_err(|_| ())
}

/// The peer at the other end of a connection went away.
pub(crate) fn peer_gone(control: &Control, set: &str, who: &str, pid: i32) {
    if control.ended_normally() || control.abort_reason().is_some() {
        debug!(set, pid, "{who} disconnected");
        return;
    }
    warn!(
        set,
        pid, "the {who} went away before the set ended; aborting"
    );
    control.abort(AbortReason::PeerExited);
}

/// A secondary client's monitor: maps the segments the primary forwards and watches the
/// primary.
pub(crate) fn spawn_secondary(shared: Arc<Shared>, sock: Socket) -> Result<Monitor, Error> {
    let name = shared.name.clone();
    sock.set_nonblocking()?;
    Monitor::spawn(&name, move |notifier, stop| {
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
            match sock.recv(&mut buf) {
                Ok((0, _)) => {
                    peer_gone(&shared.control, &shared.name, "primary client", pid);
                    break;
                }
                Ok((n, fds)) => {
                    if let Some(Msg::Segment { id, len }) = Msg::decode(&buf[..n]) {
                        let ok = map_segment(&shared.control, &shared.name, id, len, fds)
                            .is_ok_and(|map| shared.segments.insert(id, map));
                        if !ok {
                            shared.control.abort(AbortReason::PeerMisbehaved);
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    peer_gone(&shared.control, &shared.name, "primary client", pid);
                    break;
                }
            }
        }
    })
}

/// The server's monitor: watches the primary client's connection.
pub(crate) fn spawn_server(
    control: Arc<Control>,
    set: String,
    sock: Arc<Socket>,
) -> Result<Monitor, Error> {
    sock.set_nonblocking()?;
    Monitor::spawn(&set.clone(), move |notifier, stop| {
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
            // The client sends nothing after the handshake; anything it does is ignored. The
            // end of the connection (or any failure but "nothing there") means it is gone.
            let ended = match sock.recv_no_attachments(&mut buf) {
                Ok(n) => n == 0,
                Err(e) => e.kind() != ErrorKind::WouldBlock,
            };
            if ended {
                // Latched first: the server's own state (commands outstanding) decides
                // whether a clean-looking end still strands it.
                control.set_peer_gone();
                peer_gone(&control, &set, "client", pid);
                break;
            }
        }
    })
}
