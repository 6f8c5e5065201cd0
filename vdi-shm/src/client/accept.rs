//! The primary client's accept loop, on its monitor thread: accepts the server and secondary
//! clients, checks their credentials, hands them the control segment, forwards the server's
//! buffer segments to the secondaries, and watches them all.

use std::{
    io::ErrorKind,
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{debug, warn};
use vdi_core::{AbortReason, Error, HResult};

use crate::{
    Options,
    client::Shared,
    layout::STATE_CREATED,
    monitor::{HANDSHAKE_LIMIT, Monitor},
    segments::map_announced,
    sync::Ordering,
    sys::{self, Socket, Waitable},
    wire::{MSG_LEN, Msg, Role, WIRE_VERSION},
};

/// Connections accepted per turn of the monitor loop, so a flood cannot starve the peers.
const ACCEPT_BURST: usize = 16;
/// Peers that have connected but not said hello, at most; more are closed at once.
const MAX_PENDING: usize = 32;

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
                        match map_announced(&shared.control, &shared.name, id, len, fds) {
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
                    Some(Role::Server) => shared.control.peer_went_away(&shared.name, "server", p.pid),
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

