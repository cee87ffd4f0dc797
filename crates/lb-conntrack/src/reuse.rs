//! Tuple reuse: does a new SYN collide with a flow that closed recently?
//!
//! When a finished flow's entry outlives the server's TIME_WAIT socket (TCPFinsSeen ≥ the hosts'
//! 60 s TIME_WAIT), a SYN reusing its tuple finds the entry and this check tells the
//! source-port-collision resolver to rewrite the source port. When the entry was reclaimed
//! earlier, the SYN looks [`TupleReuse::Fresh`] and reaches a TIME_WAIT socket, which may answer
//! with a RST: the premature-reclaim incident.

use lb_api::abi::{CtEntry, CtState};

/// What a SYN's tuple is to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TupleReuse {
    /// No entry: a new flow, as far as conntrack knows.
    Fresh,
    /// The tuple belongs to a live flow (handshaking or established, not expired): the SYN is a
    /// retransmission or belongs to that flow.
    LiveFlow,
    /// The tuple's flow closed `closed_ns_ago` ns ago; the server may hold it in TIME_WAIT for
    /// another `time_wait_left_ns` ns. Reusing it toward the same backend risks a RST: the
    /// collision resolver should pick another source port.
    RecentlyClosed {
        /// Time since the flow's last packet.
        closed_ns_ago: u64,
        /// Remaining lifetime of the server's TIME_WAIT socket.
        time_wait_left_ns: u64,
    },
    /// The entry is of a flow that closed longer ago than the hosts' TIME_WAIT, or expired: safe
    /// to reuse.
    Reusable,
}

/// Classifies a SYN's tuple from the entry found under it (`None`: no entry), at `now_ns`, for
/// hosts whose TCP TIME_WAIT lasts `host_time_wait_ns` (Linux: 60 s, [`crate::HOST_TCP_TIME_WAIT`]).
#[inline(always)]
#[must_use]
pub fn tuple_reuse(entry: Option<&CtEntry>, now_ns: u64, host_time_wait_ns: u64) -> TupleReuse {
    let Some(e) = entry else {
        return TupleReuse::Fresh;
    };
    let closing = CtState::from_u8(e.state).is_some_and(CtState::is_closing);
    if closing {
        let ago = now_ns.saturating_sub(e.last_seen_ns);
        if ago < host_time_wait_ns {
            return TupleReuse::RecentlyClosed {
                closed_ns_ago: ago,
                time_wait_left_ns: host_time_wait_ns - ago,
            };
        }
        return TupleReuse::Reusable;
    }
    if e.expires_ns <= now_ns {
        TupleReuse::Reusable
    } else {
        TupleReuse::LiveFlow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::prelude::rust_2021::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn classifies() {
        let tw = CtEntry {
            state: CtState::TimeWait as u8,
            last_seen_ns: 100 * S,
            expires_ns: 220 * S,
            ..Default::default()
        };
        assert_eq!(tuple_reuse(None, 0, 60 * S), TupleReuse::Fresh);
        assert_eq!(
            tuple_reuse(Some(&tw), 130 * S, 60 * S),
            TupleReuse::RecentlyClosed {
                closed_ns_ago: 30 * S,
                time_wait_left_ns: 30 * S
            }
        );
        assert_eq!(
            tuple_reuse(Some(&tw), 160 * S, 60 * S),
            TupleReuse::Reusable
        );
        let est = CtEntry {
            state: CtState::Established as u8,
            expires_ns: 10 * S,
            ..Default::default()
        };
        assert_eq!(tuple_reuse(Some(&est), 5 * S, 60 * S), TupleReuse::LiveFlow);
        assert_eq!(
            tuple_reuse(Some(&est), 10 * S, 60 * S),
            TupleReuse::Reusable
        );
    }
}
