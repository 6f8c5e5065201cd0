//! The control-plane messages exchanged over the rendezvous socket.
//!
//! Every message is 32 bytes, little-endian, with a tag in its first word; descriptors travel
//! beside it (`SCM_RIGHTS`). The socket carries only set-up and new buffer segments; commands
//! and completions go through the rings in shared memory.
//!
//! | message | fields | descriptors |
//! |---|---|---|
//! | `Hello` (peer → primary) | version, role | – |
//! | `Welcome` (primary → peer) | status (an HRESULT), control length, device count | control memfd when status is 0 |
//! | `Segment` (server → primary → secondaries) | segment id, length | segment memfd |

use vdi_core::HResult;

/// The size of every message.
pub(crate) const MSG_LEN: usize = 32;
/// The wire protocol version (the layout version of the control segment).
pub(crate) const WIRE_VERSION: u32 = crate::layout::LAYOUT_VERSION;

const TAG_HELLO: u32 = 0x4845_4C4F;
const TAG_WELCOME: u32 = 0x5745_4C43;
const TAG_SEGMENT: u32 = 0x5345_474D;

/// Who is connecting to the primary client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The server side (the engine).
    Server,
    /// A secondary client process.
    Secondary,
}

/// A decoded message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Msg {
    /// The first message of a connecting peer.
    Hello {
        /// The peer's wire version.
        version: u32,
        /// The peer's role.
        role: Role,
    },
    /// The primary's answer; with status 0, the control memfd comes with it.
    Welcome {
        /// `S_OK`, or why the peer was refused.
        status: HResult,
        /// The control segment's length.
        control_len: u64,
        /// Devices in the set.
        device_count: u32,
    },
    /// A new buffer segment; its memfd comes with it.
    Segment {
        /// The segment id (0..=254).
        id: u32,
        /// Its length in bytes.
        len: u64,
    },
}

impl Msg {
    /// Encodes the message.
    pub(crate) fn encode(&self) -> [u8; MSG_LEN] {
        let mut b = [0u8; MSG_LEN];
        let (tag, a, c, d) = match *self {
            Self::Hello { version, role } => (
                TAG_HELLO,
                version,
                u64::from(matches!(role, Role::Secondary)),
                0,
            ),
            Self::Welcome {
                status,
                control_len,
                device_count,
            } => (TAG_WELCOME, status.0 as u32, control_len, device_count),
            Self::Segment { id, len } => (TAG_SEGMENT, id, len, 0),
        };
        b[0..4].copy_from_slice(&tag.to_le_bytes());
        b[4..8].copy_from_slice(&a.to_le_bytes());
        b[8..16].copy_from_slice(&c.to_le_bytes());
        b[16..20].copy_from_slice(&d.to_le_bytes());
        b
    }

    /// Decodes a message; `None` for anything malformed (wrong length, unknown tag or role).
    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != MSG_LEN {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[8..16]);
        let c = u64::from_le_bytes(w);
        match u32_at(0) {
            TAG_HELLO => {
                let role = match c {
                    0 => Role::Server,
                    1 => Role::Secondary,
                    _ => return None,
                };
                Some(Self::Hello {
                    version: u32_at(4),
                    role,
                })
            }
            TAG_WELCOME => Some(Self::Welcome {
                status: HResult(u32_at(4) as i32),
                control_len: c,
                device_count: u32_at(16),
            }),
            TAG_SEGMENT => Some(Self::Segment {
                id: u32_at(4),
                len: c,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for m in [
            Msg::Hello {
                version: 1,
                role: Role::Server,
            },
            Msg::Hello {
                version: 7,
                role: Role::Secondary,
            },
            Msg::Welcome {
                status: HResult::VD_E_PROTOCOL,
                control_len: 1 << 40,
                device_count: 64,
            },
            Msg::Segment {
                id: 254,
                len: u64::MAX,
            },
        ] {
            assert_eq!(Msg::decode(&m.encode()), Some(m));
        }
    }

    #[test]
    fn garbage_is_rejected_not_panicking() {
        assert_eq!(Msg::decode(&[]), None);
        assert_eq!(Msg::decode(&[0xFF; 31]), None);
        assert_eq!(Msg::decode(&[0xFF; 32]), None);
        let mut hello = Msg::Hello {
            version: 1,
            role: Role::Server,
        }
        .encode();
        hello[8] = 9;
        assert_eq!(Msg::decode(&hello), None);
    }
}
