//! Tunnel ingress: a VXLAN packet from a peer node to this node's tunnel port is decapsulated,
//! and its inner packet goes on through the pipeline as if received.

use lb_api::abi::{DatapathConfig, NodeKey};
use lb_api::counters::{Counter, Counters, DropReason};
use lb_api::flow::{v4_of, FlowTuple, IpFamily, L4Proto};
use lb_api::wire::{parse_into, Disposition, EthernetHeader, Parsed};
use lb_api::Verdict;
use lb_encap::{vxlan_decap_parsed, AdjustHead, DecapError};
use lb_nat::ServiceTable;

use super::{drop, pass, untranslated};

/// Whether `t` is UDP to this node's tunnel endpoint. A subprogram of its own in the kernel,
/// comparing addresses as integers: inlined, its byte-wise compares spilled some 130 bytes onto
/// the program's frame, which every path's frame adds to.
#[inline(never)]
pub(super) fn is_tunnel(t: &FlowTuple, cfg: &DatapathConfig) -> bool {
    if t.proto != L4Proto::Udp as u8 || t.dst_port != cfg.tunnel_port() {
        return false;
    }
    if t.family == IpFamily::V6 as u8 {
        let node = u128::from_ne_bytes(cfg.node_v6);
        node != 0 && u128::from_ne_bytes(t.dst) == node
    } else {
        let node = u32::from_ne_bytes(cfg.node_v4);
        node != 0 && u32::from_ne_bytes(v4_of(&t.dst)) == node
    }
}

/// A VXLAN packet to this node's tunnel port: accepted from configured peer nodes only,
/// decapsulated, and the inner frame re-parsed into `parsed`. `None`: the inner packet goes on
/// through the pipeline (`peer` holds the node it came from).
#[inline(never)]
pub(super) fn tunnel_ingress<P, T>(
    pkt: &mut P,
    cfg: &DatapathConfig,
    tables: &mut T,
    parsed: &mut Parsed,
    peer: &mut [u8; 16],
) -> Option<Verdict>
where
    P: AdjustHead + ?Sized,
    T: ServiceTable + Counters + ?Sized,
{
    *peer = parsed.tuple.src;
    if !tables.is_peer_node(&NodeKey { addr: *peer }) {
        return Some(drop(tables, DropReason::TunnelFromUnknownNode));
    }

    let Some(outer) = pkt.load::<EthernetHeader>(0) else {
        return Some(drop(tables, DropReason::Truncated));
    };
    match vxlan_decap_parsed(pkt, parsed, cfg.tunnel_port(), Some(cfg.vni)) {
        Ok(_) => {}
        // A valid tunnel packet that could not shrink (at TC: one the kernel cannot resize,
        // such as a VLAN-tagged one).
        Err(DecapError::CannotShrink) => return Some(drop(tables, DropReason::EncapFailed)),
        Err(_) => return Some(drop(tables, DropReason::BadTunnelHeader)),
    }
    // The inner frame carries the MACs of the far side; the stack takes it only when it is
    // addressed to this node, as the outer frame was.
    let Some(mut inner) = pkt.load::<EthernetHeader>(0) else {
        return Some(drop(tables, DropReason::BadTunnelHeader));
    };
    inner.dst = outer.dst;
    inner.src = outer.src;
    if pkt.store(0, &inner).is_none() {
        return Some(drop(tables, DropReason::BadTunnelHeader));
    }
    tables.bump(Counter::TunnelDecapsulated.slot());
    *parsed = Parsed::EMPTY;
    if let Err(e) = parse_into(pkt, parsed) {
        return Some(match e.disposition() {
            Disposition::Pass(c) => pass(tables, c),
            Disposition::Drop(r) => drop(tables, r),
        });
    }
    untranslated(tables, parsed)
}
