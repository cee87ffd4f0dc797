//! Per-protocol state machines, driven by packets in both directions.
//!
//! TCP follows netfilter's `tcp_conntracks` table (nf_conntrack_proto_tcp.c) state for state,
//! without its sequence-window checks: a packet is classified as SYN, SYN+ACK, FIN, ACK, RST or
//! none, and the (direction, class, state) triple gives the next state, "ignore" or "invalid".
//! Netfilter's states mean what was *seen on the wire*, not socket states: `FinWait` is "a FIN
//! was seen", `CloseWait` "that FIN was acknowledged", `LastAck` "FINs seen both ways",
//! `TimeWait` "the last FIN was acknowledged".
//!
//! UDP is unreplied until a reply is seen, then assured. ICMP echo flows are keyed by their
//! identifier ([`icmp_echo_tuple`]) and stay in `Icmp`. Anything else is `Generic`.

use lb_api::abi::{CtEntry, CtState, Timeouts, CT_F_REPLY_SEEN};
use lb_api::flow::{FlowTuple, L4Proto};
use lb_api::wire::TcpFlags;

/// Direction of a packet relative to the flow's first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client → service (the direction of the packet that created the entry).
    Original,
    /// Backend → client.
    Reply,
}

impl Direction {
    /// Both directions.
    pub const BOTH: [Direction; 2] = [Direction::Original, Direction::Reply];
}

/// The TCP states of netfilter's table, in [`CtState`] order (the table's columns).
pub const TCP_STATES: [CtState; 9] = [
    CtState::SynSent,
    CtState::SynRecv,
    CtState::Established,
    CtState::FinWait,
    CtState::CloseWait,
    CtState::LastAck,
    CtState::TimeWait,
    CtState::Close,
    CtState::SynSent2,
];

/// One edge of the TCP state graph: a packet of `class` travelling in `dir` moves a flow in
/// `from` to `to` (which may equal `from`: the timer restarts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpEdge {
    /// State before the packet.
    pub from: CtState,
    /// Direction of the packet.
    pub dir: Direction,
    /// The packet's class.
    pub class: TcpPacketClass,
    /// State after it.
    pub to: CtState,
}

/// Every edge of the TCP state graph: each cell of [`tcp_transition`]'s table that is a
/// [`TcpTransition::To`] (ignored and invalid cells are not edges). Tests generate their
/// fixtures from this, so a new edge gets a fixture.
pub fn tcp_edges() -> impl Iterator<Item = TcpEdge> {
    TCP_STATES.into_iter().flat_map(|from| {
        Direction::BOTH.into_iter().flat_map(move |dir| {
            TcpPacketClass::ALL.into_iter().filter_map(move |class| {
                match tcp_transition(from, dir, class) {
                    TcpTransition::To(to) => Some(TcpEdge {
                        from,
                        dir,
                        class,
                        to,
                    }),
                    TcpTransition::Ignore | TcpTransition::Invalid => None,
                }
            })
        })
    })
}

/// A TCP packet's class for the state machine (netfilter's `get_conntrack_index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpPacketClass {
    /// SYN without ACK.
    Syn,
    /// SYN with ACK.
    SynAck,
    /// FIN (without SYN or RST).
    Fin,
    /// ACK only.
    Ack,
    /// RST (wins over every other flag).
    Rst,
    /// None of the above.
    None,
}

impl TcpPacketClass {
    /// Every class, in the order of netfilter's table rows.
    pub const ALL: [TcpPacketClass; 6] = [
        Self::Syn,
        Self::SynAck,
        Self::Fin,
        Self::Ack,
        Self::Rst,
        Self::None,
    ];

    /// TCP flags of a typical packet of this class (FIN and RST with ACK, as stacks send them).
    #[must_use]
    pub const fn flags(self) -> u8 {
        match self {
            Self::Syn => TcpFlags::SYN,
            Self::SynAck => TcpFlags::SYN | TcpFlags::ACK,
            Self::Fin => TcpFlags::FIN | TcpFlags::ACK,
            Self::Ack => TcpFlags::ACK,
            Self::Rst => TcpFlags::RST | TcpFlags::ACK,
            Self::None => 0,
        }
    }

    /// Classifies TCP flags; RST first, then SYN, FIN and ACK, like netfilter.
    #[inline(always)]
    #[must_use]
    pub const fn of(flags: u8) -> Self {
        if flags & TcpFlags::RST != 0 {
            Self::Rst
        } else if flags & TcpFlags::SYN != 0 {
            if flags & TcpFlags::ACK != 0 {
                Self::SynAck
            } else {
                Self::Syn
            }
        } else if flags & TcpFlags::FIN != 0 {
            Self::Fin
        } else if flags & TcpFlags::ACK != 0 {
            Self::Ack
        } else {
            Self::None
        }
    }
}

/// Result of feeding one TCP packet to the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpTransition {
    /// The flow moves to (or stays in) this state; its timer restarts with that state's timeout.
    To(CtState),
    /// A packet netfilter ignores (a retransmitted SYN+ACK, an ACK to a half-open flow): state and
    /// timer unchanged.
    Ignore,
    /// A packet that does not fit the flow (a SYN+ACK from the client, a FIN before the
    /// handshake): state and timer unchanged.
    Invalid,
}

/// The netfilter transition for a TCP packet of class `class` travelling in `dir` on a flow in
/// `state`. Non-TCP states are invalid.
#[inline(always)]
#[must_use]
pub const fn tcp_transition(
    state: CtState,
    dir: Direction,
    class: TcpPacketClass,
) -> TcpTransition {
    use CtState::{
        Close as CL, CloseWait as CW, Established as ES, FinWait as FW, LastAck as LA,
        SynRecv as SR, SynSent as SS, SynSent2 as S2, TimeWait as TW,
    };
    use TcpPacketClass as P;
    use TcpTransition::{Ignore as IG, Invalid as IV, To};
    match (dir, class) {
        (_, P::Rst) => match state {
            SS | SR | ES | FW | CW | LA | TW | CL | S2 => To(CL),
            _ => IV,
        },
        (_, P::None) => IV,
        (Direction::Original, P::Syn) => match state {
            // A SYN on a finished flow: the client reuses the tuple, the flow restarts.
            SS | TW | CL => To(SS),
            S2 => To(S2),
            SR | ES | FW | CW | LA => IG,
            _ => IV,
        },
        (Direction::Original, P::SynAck) => match state {
            // The client answers the server's SYN in a simultaneous open.
            SR | S2 => To(SR),
            _ => IV,
        },
        (Direction::Original, P::Ack) => match state {
            SR | ES => To(ES),
            FW | CW => To(CW),
            LA | TW => To(TW),
            CL => To(CL),
            _ => IV,
        },
        (Direction::Reply, P::Syn) => match state {
            // Simultaneous open: both sides sent a SYN.
            SS | S2 => To(S2),
            // Reopened by the other side.
            TW => To(SS),
            _ => IV,
        },
        (Direction::Reply, P::SynAck) => match state {
            SS | S2 => To(SR),
            SR | ES | FW | CW | LA | TW | CL => IG,
            _ => IV,
        },
        (Direction::Reply, P::Ack) => match state {
            SR => To(SR),
            ES => To(ES),
            FW | CW => To(CW),
            LA | TW => To(TW),
            CL => To(CL),
            SS | S2 => IG,
            _ => IV,
        },
        (_, P::Fin) => match state {
            SR | ES => To(FW),
            FW | CW | LA => To(LA),
            TW => To(TW),
            CL => To(CL),
            _ => IV,
        },
    }
}

/// State of a new entry created by a packet of protocol `proto` with `tcp_flags`.
///
/// A TCP packet that is not a SYN creates an `Established` entry (a FIN a `FinWait`, a RST a
/// `Close` one): the flow was picked up mid-stream (after a restart or a table flush), and
/// consistent backend selection lets it continue, like netfilter's `nf_conntrack_tcp_loose`.
#[inline(always)]
#[must_use]
pub fn initial_state(proto: u8, tcp_flags: u8) -> CtState {
    match L4Proto::from_u8(proto) {
        Some(L4Proto::Tcp) => match TcpPacketClass::of(tcp_flags) {
            TcpPacketClass::Rst => CtState::Close,
            TcpPacketClass::Syn => CtState::SynSent,
            TcpPacketClass::Fin => CtState::FinWait,
            TcpPacketClass::SynAck | TcpPacketClass::Ack | TcpPacketClass::None => {
                CtState::Established
            }
        },
        Some(L4Proto::Udp) => CtState::UdpUnreplied,
        Some(L4Proto::Icmp | L4Proto::Icmpv6) => CtState::Icmp,
        None => CtState::Generic,
    }
}

/// The TCP state after a packet with `flags` travelling in `dir` (ignored and invalid packets
/// leave the state as it is).
#[inline(always)]
#[must_use]
pub fn tcp_next_state(state: CtState, dir: Direction, flags: u8) -> CtState {
    match tcp_transition(state, dir, TcpPacketClass::of(flags)) {
        TcpTransition::To(s) => s,
        TcpTransition::Ignore | TcpTransition::Invalid => state,
    }
}

/// netfilter's transition, except for one-sided flows: when replies bypass this hook (DSR,
/// asymmetric routing) the client's ACK is the only proof of a completed handshake. netfilter,
/// which sees both directions, calls an ACK in SYN_SENT invalid; left there, a one-sided flow
/// would expire under steady traffic. Without a reply ever seen, it establishes the flow.
#[inline(always)]
fn one_sided(
    t: TcpTransition,
    state: CtState,
    dir: Direction,
    tcp_flags: u8,
    reply_seen: bool,
) -> TcpTransition {
    let ack_in_syn_sent = matches!(
        (state, dir, TcpPacketClass::of(tcp_flags)),
        (CtState::SynSent, Direction::Original, TcpPacketClass::Ack)
    );
    if matches!(t, TcpTransition::Invalid) && ack_in_syn_sent && !reply_seen {
        TcpTransition::To(CtState::Established)
    } else {
        t
    }
}

/// What [`track`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackOutcome {
    /// State (possibly unchanged) and timer updated.
    Updated,
    /// A SYN reopened a finished TCP flow (port reuse): the entry restarted as a new flow.
    Restarted,
    /// The packet was ignored or invalid for the flow's TCP state: counters updated, state and
    /// timer left alone (a stray packet must not keep a dead flow alive).
    Untouched,
}

/// Updates an entry for a packet seen at `now_ns`: state, counters, last-seen time and deadline.
#[inline(always)]
pub fn track(
    entry: &mut CtEntry,
    dir: Direction,
    tcp_flags: u8,
    now_ns: u64,
    timeouts: &Timeouts,
) -> TrackOutcome {
    let state = CtState::from_u8(entry.state).unwrap_or(CtState::Generic);
    let mut outcome = TrackOutcome::Updated;
    let next = match L4Proto::from_u8(entry.proto) {
        Some(L4Proto::Tcp) => match one_sided(
            tcp_transition(state, dir, TcpPacketClass::of(tcp_flags)),
            state,
            dir,
            tcp_flags,
            entry.reply_seen(),
        ) {
            TcpTransition::To(s) => {
                if s == CtState::SynSent && matches!(state, CtState::TimeWait | CtState::Close) {
                    outcome = TrackOutcome::Restarted;
                }
                s
            }
            TcpTransition::Ignore | TcpTransition::Invalid => {
                outcome = TrackOutcome::Untouched;
                state
            }
        },
        Some(L4Proto::Udp) => match dir {
            Direction::Reply => CtState::UdpAssured,
            Direction::Original => state,
        },
        _ => state,
    };
    if matches!(outcome, TrackOutcome::Restarted) {
        entry.created_ns = now_ns;
        entry.packets_orig = 0;
        entry.packets_reply = 0;
        entry.flags &= !CT_F_REPLY_SEEN;
    }
    match dir {
        Direction::Original => entry.packets_orig = entry.packets_orig.wrapping_add(1),
        Direction::Reply => {
            entry.packets_reply = entry.packets_reply.wrapping_add(1);
            entry.flags |= CT_F_REPLY_SEEN;
        }
    }
    if matches!(outcome, TrackOutcome::Untouched) {
        return outcome;
    }
    entry.state = next as u8;
    // LLVM computes `next` from packed lookup tables, proves it in range and drops or hoists the
    // bounds check of `Timeouts::of`; the eBPF verifier cannot follow that proof and rejects the
    // map-value offset. Re-reading the stored state through a volatile load hides the proof, and
    // clamping it (out-of-range values mean `Generic`, as in `Timeouts::of`) bounds the index
    // before the address is computed.
    // SAFETY: `&entry.state` is a valid, aligned reference to an initialized `u8`.
    let state_now = unsafe { core::ptr::read_volatile(&entry.state) };
    let idx = state_now.min(CtState::Generic as u8);
    entry.last_seen_ns = now_ns;
    entry.expires_ns = now_ns.saturating_add(timeouts.of(idx));
    outcome
}

/// ICMP echo (ping) type numbers: which direction an echo message travels in, if it is one.
/// Other ICMP messages (errors) are not flows of their own.
#[inline(always)]
#[must_use]
pub const fn icmp_echo_direction(proto: u8, icmp_type: u8) -> Option<Direction> {
    match (proto, icmp_type) {
        (1, 8) | (58, 128) => Some(Direction::Original),
        (1, 0) | (58, 129) => Some(Direction::Reply),
        _ => None,
    }
}

/// The conntrack tuple of an ICMP echo message: flows are told apart by the echo identifier,
/// carried in the source port of requests and the destination port of replies, so that a reply's
/// tuple is exactly the [`FlowTuple::reversed`] of its request's. `None` for non-echo messages.
#[inline(always)]
#[must_use]
pub const fn icmp_echo_tuple(
    src: [u8; 16],
    dst: [u8; 16],
    proto: u8,
    family: u8,
    icmp_type: u8,
    identifier: u16,
) -> Option<FlowTuple> {
    let (src_port, dst_port) = match icmp_echo_direction(proto, icmp_type) {
        Some(Direction::Original) => (identifier, 0),
        Some(Direction::Reply) => (0, identifier),
        None => return None,
    };
    Some(FlowTuple {
        src,
        dst,
        src_port,
        dst_port,
        proto,
        family,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TimeoutPolicy;
    #[allow(unused_imports)]
    use std::{format, prelude::rust_2021::*, vec};
    use CtState::*;
    use Direction::*;
    use TcpPacketClass as P;
    use TcpTransition::{Ignore as IG, Invalid as IV, To};

    const S: u8 = TcpFlags::SYN;
    const A: u8 = TcpFlags::ACK;
    const F: u8 = TcpFlags::FIN;
    const R: u8 = TcpFlags::RST;

    const CLASSES: [TcpPacketClass; 6] = TcpPacketClass::ALL;

    /// netfilter's `tcp_conntracks` (Linux 6.x), columns sSS sSR sES sFW sCW sLA sTW sCL sS2, rows
    /// syn synack fin ack rst none: the oracle every transition is checked against.
    #[rustfmt::skip]
    fn oracle(dir: Direction) -> [[TcpTransition; 9]; 6] {
        let (ss, sr, es, fw, cw, la, tw, cl, s2) =
            (To(SynSent), To(SynRecv), To(Established), To(FinWait), To(CloseWait), To(LastAck),
             To(TimeWait), To(Close), To(SynSent2));
        match dir {
            Original => [
                /*syn*/    [ss, IG, IG, IG, IG, IG, ss, ss, s2],
                /*synack*/ [IV, sr, IV, IV, IV, IV, IV, IV, sr],
                /*fin*/    [IV, fw, fw, la, la, la, tw, cl, IV],
                /*ack*/    [IV, es, es, cw, cw, tw, tw, cl, IV],
                /*rst*/    [cl, cl, cl, cl, cl, cl, cl, cl, cl],
                /*none*/   [IV, IV, IV, IV, IV, IV, IV, IV, IV],
            ],
            Reply => [
                /*syn*/    [s2, IV, IV, IV, IV, IV, ss, IV, s2],
                /*synack*/ [sr, IG, IG, IG, IG, IG, IG, IG, sr],
                /*fin*/    [IV, fw, fw, la, la, la, tw, cl, IV],
                /*ack*/    [IG, sr, es, cw, cw, tw, tw, cl, IG],
                /*rst*/    [cl, cl, cl, cl, cl, cl, cl, cl, cl],
                /*none*/   [IV, IV, IV, IV, IV, IV, IV, IV, IV],
            ],
        }
    }

    #[test]
    fn every_tcp_transition_matches_netfilter() {
        let mut checked = 0;
        for dir in [Original, Reply] {
            let table = oracle(dir);
            for (ci, class) in CLASSES.iter().enumerate() {
                for (si, state) in TCP_STATES.iter().enumerate() {
                    let want = table[ci][si];
                    let got = tcp_transition(*state, dir, *class);
                    assert_eq!(got, want, "{dir:?} {class:?} in {state:?}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 2 * 6 * 9);
    }

    #[test]
    fn edges_are_the_to_cells_and_classes_round_trip() {
        let edges: Vec<TcpEdge> = tcp_edges().collect();
        let to_cells = [Original, Reply]
            .iter()
            .flat_map(|&d| oracle(d).into_iter().flatten())
            .filter(|t| matches!(t, To(_)))
            .count();
        assert_eq!(edges.len(), to_cells);
        for e in &edges {
            assert_eq!(tcp_transition(e.from, e.dir, e.class), To(e.to));
        }
        for c in TcpPacketClass::ALL {
            assert_eq!(TcpPacketClass::of(c.flags()), c);
        }
    }

    #[test]
    fn non_tcp_states_are_invalid_for_tcp_packets() {
        for s in [UdpUnreplied, UdpAssured, Icmp, Generic] {
            for c in CLASSES {
                assert_eq!(tcp_transition(s, Original, c), IV, "{s:?} {c:?}");
            }
        }
    }

    #[test]
    fn packet_classes() {
        assert_eq!(TcpPacketClass::of(S), P::Syn);
        assert_eq!(TcpPacketClass::of(S | A), P::SynAck);
        assert_eq!(TcpPacketClass::of(F | A), P::Fin);
        assert_eq!(TcpPacketClass::of(A), P::Ack);
        assert_eq!(TcpPacketClass::of(R | A | S), P::Rst);
        assert_eq!(TcpPacketClass::of(0), P::None);
    }

    fn run(steps: &[(Direction, u8)]) -> CtState {
        let mut s = initial_state(6, steps[0].1);
        for &(d, f) in &steps[1..] {
            s = tcp_next_state(s, d, f);
        }
        s
    }

    #[test]
    fn handshake_and_active_close() {
        let close = [
            (Original, S),
            (Reply, S | A),
            (Original, A),
            (Original, F | A),
            (Reply, A),
            (Reply, F | A),
            (Original, A),
        ];
        let want = [
            SynSent,
            SynRecv,
            Established,
            FinWait,
            CloseWait,
            LastAck,
            TimeWait,
        ];
        for (n, w) in want.iter().enumerate() {
            assert_eq!(run(&close[..=n]), *w, "after {} packets", n + 1);
        }
    }

    #[test]
    fn passive_close_rst_and_reuse() {
        let mut v = vec![(Original, S), (Reply, S | A), (Original, A)];
        v.push((Reply, F | A));
        assert_eq!(run(&v), FinWait);
        v.push((Reply, R));
        assert_eq!(run(&v), Close);
        v.push((Original, S));
        assert_eq!(
            run(&v),
            SynSent,
            "a SYN on a closed tuple restarts the flow"
        );
    }

    #[test]
    fn simultaneous_open() {
        assert_eq!(run(&[(Original, S), (Reply, S)]), SynSent2);
        assert_eq!(
            run(&[(Original, S), (Reply, S), (Original, S | A)]),
            SynRecv
        );
        assert_eq!(run(&[(Original, S), (Reply, S), (Reply, S | A)]), SynRecv);
    }

    #[test]
    fn initial_states() {
        assert_eq!(initial_state(6, S), SynSent);
        assert_eq!(initial_state(6, A), Established);
        assert_eq!(initial_state(6, F | A), FinWait);
        assert_eq!(initial_state(6, R), Close);
        assert_eq!(initial_state(17, 0), UdpUnreplied);
        assert_eq!(initial_state(1, 0), Icmp);
        assert_eq!(initial_state(58, 0), Icmp);
        assert_eq!(initial_state(47, 0), Generic);
    }

    fn entry(state: CtState, proto: u8) -> CtEntry {
        CtEntry {
            state: state as u8,
            proto,
            created_ns: 1,
            last_seen_ns: 1,
            expires_ns: 2,
            ..Default::default()
        }
    }

    #[test]
    fn track_sets_deadline_from_the_new_state() {
        let t = TimeoutPolicy::netfilter().to_timeouts();
        let mut e = entry(SynSent, 6);
        assert_eq!(track(&mut e, Reply, S | A, 10, &t), TrackOutcome::Updated);
        assert_eq!(e.state, SynRecv as u8);
        assert_eq!(e.expires_ns, 10 + t.of(SynRecv as u8));
        assert!(e.reply_seen());
        assert_eq!((e.packets_orig, e.packets_reply), (0, 1));
    }

    #[test]
    fn track_leaves_timer_alone_on_invalid_packets() {
        let t = TimeoutPolicy::netfilter().to_timeouts();
        let mut e = entry(SynSent, 6);
        assert_eq!(track(&mut e, Original, F, 10, &t), TrackOutcome::Untouched);
        assert_eq!(
            (e.state, e.last_seen_ns, e.expires_ns),
            (SynSent as u8, 1, 2)
        );
        assert_eq!(e.packets_orig, 1);
    }

    #[test]
    fn one_sided_flows_establish_on_the_clients_ack() {
        let t = TimeoutPolicy::calico().to_timeouts();
        let mut e = entry(SynSent, 6);
        assert_eq!(track(&mut e, Original, A, 10, &t), TrackOutcome::Updated);
        assert_eq!(e.state, Established as u8);
        assert_eq!(e.expires_ns, 10 + t.of(Established as u8));
        // With a reply seen, netfilter's table applies: an ACK in SYN_SENT is invalid.
        let mut e = entry(SynSent, 6);
        e.flags = CT_F_REPLY_SEEN;
        assert_eq!(track(&mut e, Original, A, 10, &t), TrackOutcome::Untouched);
        assert_eq!(e.state, SynSent as u8);
    }

    #[test]
    fn track_restarts_a_reused_tuple() {
        let t = TimeoutPolicy::netfilter().to_timeouts();
        let mut e = entry(TimeWait, 6);
        e.packets_orig = 7;
        e.flags = CT_F_REPLY_SEEN;
        assert_eq!(track(&mut e, Original, S, 50, &t), TrackOutcome::Restarted);
        assert_eq!(e.state, SynSent as u8);
        assert_eq!(
            (e.created_ns, e.packets_orig, e.reply_seen()),
            (50, 1, false)
        );
    }

    #[test]
    fn udp_becomes_assured_on_reply() {
        let t = TimeoutPolicy::netfilter().to_timeouts();
        let mut e = entry(UdpUnreplied, 17);
        track(&mut e, Original, 0, 5, &t);
        assert_eq!(e.state, UdpUnreplied as u8);
        assert_eq!(e.expires_ns, 5 + t.of(UdpUnreplied as u8));
        track(&mut e, Reply, 0, 6, &t);
        assert_eq!(e.state, UdpAssured as u8);
        assert_eq!(e.expires_ns, 6 + t.of(UdpAssured as u8));
        track(&mut e, Original, 0, 7, &t);
        assert_eq!(e.state, UdpAssured as u8, "assured stays assured");
    }

    #[test]
    fn icmp_and_generic_keep_their_state() {
        let t = TimeoutPolicy::netfilter().to_timeouts();
        for (s, p) in [(Icmp, 1), (Generic, 47)] {
            let mut e = entry(s, p);
            track(&mut e, Reply, 0, 9, &t);
            assert_eq!(e.state, s as u8);
            assert_eq!(e.expires_ns, 9 + t.of(s as u8));
        }
    }

    #[test]
    fn icmp_echo_is_keyed_by_identifier() {
        let (a, b) = ([1; 16], [2; 16]);
        let req = icmp_echo_tuple(a, b, 1, 4, 8, 77).unwrap();
        let rep = icmp_echo_tuple(b, a, 1, 4, 0, 77).unwrap();
        assert_eq!(req.reversed(), rep);
        assert_ne!(icmp_echo_tuple(a, b, 1, 4, 8, 78), Some(req));
        assert_eq!(
            icmp_echo_tuple(a, b, 1, 4, 3, 77),
            None,
            "errors are no flows"
        );
        assert_eq!(icmp_echo_direction(58, 128), Some(Original));
        assert_eq!(icmp_echo_direction(58, 129), Some(Reply));
    }
}
