//! Per-protocol state machines, driven by packets in both directions.

use lb_api::abi::{CtEntry, CtState, Timeouts, CT_F_REPLY_SEEN};
use lb_api::flow::L4Proto;
use lb_api::wire::TcpFlags;

/// Direction of a packet relative to the flow's first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → service (the direction of the packet that created the entry).
    Original,
    /// Backend → client.
    Reply,
}

/// State of a new entry created by a packet of protocol `proto` with `tcp_flags`.
///
/// A TCP packet that is not a SYN creates an `Established` entry: the flow was picked up
/// mid-stream (after a restart or a table flush), and consistent backend selection lets it continue.
#[inline(always)]
#[must_use]
pub fn initial_state(proto: u8, tcp_flags: u8) -> CtState {
    match L4Proto::from_u8(proto) {
        Some(L4Proto::Tcp) => {
            if tcp_flags & TcpFlags::RST != 0 {
                CtState::Close
            } else if tcp_flags & (TcpFlags::SYN | TcpFlags::ACK) == TcpFlags::SYN {
                CtState::SynSent
            } else {
                CtState::Established
            }
        }
        Some(L4Proto::Udp) => CtState::UdpUnreplied,
        Some(L4Proto::Icmp | L4Proto::Icmpv6) => CtState::Icmp,
        None => CtState::Generic,
    }
}

/// The TCP state after a packet with `flags` travelling in `dir`.
#[inline(always)]
#[must_use]
pub fn tcp_next_state(state: CtState, dir: Direction, flags: u8) -> CtState {
    use CtState::{
        Close, CloseWait, Established, FinWait, LastAck, SynRecv, SynSent, SynSent2, TimeWait,
    };
    use Direction::{Original, Reply};

    let syn = flags & TcpFlags::SYN != 0;
    let ack = flags & TcpFlags::ACK != 0;
    let fin = flags & TcpFlags::FIN != 0;
    if flags & TcpFlags::RST != 0 {
        return Close;
    }
    match (state, dir) {
        // A new SYN on a finished flow: the client reuses the tuple (port reuse).
        (TimeWait | Close, Original) if syn && !ack => SynSent,
        (SynSent, Reply) if syn && ack => SynRecv,
        (SynSent, Reply) if syn => SynSent2,
        (SynSent2, Original) if syn && ack => SynRecv,
        (SynRecv, Original) if ack && !syn => {
            if fin {
                FinWait
            } else {
                Established
            }
        }
        (Established, Original) if fin => FinWait,
        (Established, Reply) if fin => CloseWait,
        (FinWait, Reply) if fin => LastAck,
        (CloseWait, Original) if fin => LastAck,
        (LastAck, _) if ack && !fin => TimeWait,
        (s, _) => s,
    }
}

/// Updates an entry for a packet seen at `now_ns`: state, counters, last-seen time and deadline.
#[inline(always)]
pub fn track(entry: &mut CtEntry, dir: Direction, tcp_flags: u8, now_ns: u64, timeouts: &Timeouts) {
    let state = CtState::from_u8(entry.state).unwrap_or(CtState::Generic);
    let next = match (L4Proto::from_u8(entry.proto), dir) {
        (Some(L4Proto::Tcp), _) => tcp_next_state(state, dir, tcp_flags),
        (Some(L4Proto::Udp), Direction::Reply) => CtState::UdpAssured,
        _ => state,
    };
    match dir {
        Direction::Original => entry.packets_orig = entry.packets_orig.wrapping_add(1),
        Direction::Reply => {
            entry.packets_reply = entry.packets_reply.wrapping_add(1);
            entry.flags |= CT_F_REPLY_SEEN;
        }
    }
    entry.state = next as u8;
    entry.last_seen_ns = now_ns;
    entry.expires_ns = now_ns.saturating_add(timeouts.of(next as u8));
}

#[cfg(test)]
mod tests {
    use super::*;
    use CtState::*;
    use Direction::*;

    const S: u8 = TcpFlags::SYN;
    const A: u8 = TcpFlags::ACK;
    const F: u8 = TcpFlags::FIN;
    const R: u8 = TcpFlags::RST;

    fn run(steps: &[(Direction, u8)]) -> CtState {
        let mut s = initial_state(6, steps[0].1);
        for &(d, f) in &steps[1..] {
            s = tcp_next_state(s, d, f);
        }
        s
    }

    #[test]
    fn handshake_and_active_close() {
        assert_eq!(run(&[(Original, S)]), SynSent);
        assert_eq!(run(&[(Original, S), (Reply, S | A)]), SynRecv);
        assert_eq!(
            run(&[(Original, S), (Reply, S | A), (Original, A)]),
            Established
        );
        let close = [
            (Original, S),
            (Reply, S | A),
            (Original, A),
            (Original, F | A),
            (Reply, F | A),
            (Original, A),
        ];
        assert_eq!(run(&close[..4]), FinWait);
        assert_eq!(run(&close[..5]), LastAck);
        assert_eq!(run(&close), TimeWait);
    }

    #[test]
    fn passive_close_rst_and_reuse() {
        let base = [(Original, S), (Reply, S | A), (Original, A)];
        let mut v = base.to_vec();
        v.push((Reply, F | A));
        assert_eq!(run(&v), CloseWait);
        v.push((Reply, R));
        assert_eq!(run(&v), Close);
        v.push((Original, S));
        assert_eq!(
            run(&v),
            SynSent,
            "a new SYN on a closed tuple restarts the flow"
        );
    }

    #[test]
    fn simultaneous_open() {
        assert_eq!(run(&[(Original, S), (Reply, S)]), SynSent2);
        assert_eq!(
            run(&[(Original, S), (Reply, S), (Original, S | A)]),
            SynRecv
        );
    }

    #[test]
    fn midstream_pickup_is_established() {
        assert_eq!(initial_state(6, A), Established);
        assert_eq!(initial_state(17, 0), UdpUnreplied);
    }
}
