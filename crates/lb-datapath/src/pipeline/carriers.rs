//! The carriers to the peer node: the DSR carrier (an IPv4 option or IPv6 destination option
//! with the service address) and the VXLAN tunnel; whether a packet still fits the underlay MTU
//! with its carrier, and the ICMP error its sender gets when it does not.

use lb_api::abi::{CtEntry, DatapathConfig, CT_F_DSR};
use lb_api::checksum;
use lb_api::counters::{Counter, Counters, DropReason};
use lb_api::flow::{v4_of, IpFamily};
use lb_api::wire::{EthernetHeader, PacketAccess, Parsed};
use lb_api::Verdict;
use lb_encap::dsr::{dsr_v4_insert, dsr_v6_insert, DsrTarget};
use lb_encap::mtu::{icmp_too_big_parsed, wire_ip_len};
use lb_encap::{vxlan_encap_offloaded, AdjustHead, InnerChecksum, OuterAddrs, TunnelConfig};

use super::context::Ctx;
use super::drop;

/// Bytes a packet grows by on its way to the peer node (`flags`: the `CT_F_*` flags of its
/// flow, or of the flow a new one will be): the DSR carrier, or the VXLAN outer headers
/// (Ethernet of the inner frame, IP, UDP, VXLAN).
#[inline(always)]
const fn carrier_len(flags: u8, v6: bool) -> usize {
    match (flags & CT_F_DSR != 0, v6) {
        (true, false) => lb_encap::dsr::DSR_IPV4_OPT_LEN,
        (true, true) => lb_encap::dsr::DSR_IPV6_EXT_LEN,
        (false, false) => EthernetHeader::LEN + 20 + 8 + lb_encap::VxlanHeader::LEN,
        (false, true) => EthernetHeader::LEN + 40 + 8 + lb_encap::VxlanHeader::LEN,
    }
}

/// Whether the packet, carried to the peer node per `flags` (DSR carrier or tunnel), would
/// exceed the underlay MTU: by its length, or, for a GSO packet (TC), by its segments'
/// ([`wire_ip_len`]): they are what leaves, each with the carrier.
#[inline(always)]
pub(super) fn exceeds_mtu<C>(ctx: &Ctx<'_, C>, flags: u8) -> bool {
    let parsed = ctx.parsed;
    let added = carrier_len(flags, parsed.tuple.family == IpFamily::V6 as u8);
    wire_ip_len(parsed, parsed.gso_size) + added > usize::from(ctx.cfg.mtu())
}

/// Turns a packet [`exceeds_mtu`] refused into the ICMP "fragmentation needed" / ICMPv6 "packet
/// too big" its sender needs, from this node, with the MTU that leaves room for the carrier
/// (`flags`), quoting the packet as the sender sent it (no path rewrote it), and returns the
/// verdict that sends it back.
#[inline(never)]
pub(super) fn too_big<P, T, C>(pkt: &mut P, ctx: &Ctx<'_, C>, tables: &mut T, flags: u8) -> Verdict
where
    P: AdjustHead + ?Sized,
    T: Counters + ?Sized,
{
    let t = &ctx.parsed.tuple;
    let from = ctx.cfg.node_addr(t.family);
    if from == [0; 16] {
        return drop(tables, DropReason::NodeAddressMissing);
    }
    if !pkt.resizable() {
        return drop(tables, DropReason::EncapFailed);
    }
    let added = carrier_len(flags, t.family == IpFamily::V6 as u8);
    let inner_mtu = usize::from(ctx.cfg.mtu()).saturating_sub(added) as u16;
    if icmp_too_big_parsed(pkt, ctx.parsed, inner_mtu, &from).is_none() {
        return drop(tables, DropReason::EncapFailed);
    }
    // The outcome: the error is on its way (when it could not be built, the drop is).
    tables.bump(Counter::MtuExceeded.slot());
    Verdict::Tx
}

/// Carries a translated packet of entry `e`'s flow to the peer node: adds the DSR carrier with
/// the service address (the packet's original destination), or VXLAN-encapsulates it to
/// `e.tunnel_peer`. The packet's MACs stay: the outer packet is routed by this node's stack.
#[inline(never)]
pub(super) fn to_peer<P, T, C>(
    pkt: &mut P,
    ctx: &Ctx<'_, C>,
    tables: &mut T,
    e: &CtEntry,
) -> Result<(), Verdict>
where
    P: AdjustHead + ?Sized,
    T: Counters + ?Sized,
    C: Fn() -> u64,
{
    let (done, c) = if e.is_dsr() {
        (
            dsr_carry(pkt, ctx.parsed, ctx.cfg),
            Counter::DsrCarrierAdded,
        )
    } else {
        let peer = &e.tunnel_peer;
        (
            tunnel_carry(pkt, ctx.parsed, ctx.cfg, peer),
            Counter::TunnelEncapsulated,
        )
    };
    if !done {
        return Err(drop(tables, DropReason::EncapFailed));
    }
    tables.bump(c.slot());
    Ok(())
}

/// Adds the DSR carrier with the service address (the packet's original destination).
///
/// Returns whether it did: a `bool`, not the error, because a returned enum whose payload the
/// caller ignores reaches the verifier as a partly uninitialized register.
#[inline(never)]
fn dsr_carry<P: AdjustHead + ?Sized>(pkt: &mut P, parsed: &Parsed, cfg: &DatapathConfig) -> bool {
    let t = &parsed.tuple;
    if t.family == IpFamily::V6 as u8 {
        dsr_v6_insert(pkt, parsed, &DsrTarget::v6(t.dst, t.dst_port), cfg.mtu()).is_ok()
    } else {
        let target = DsrTarget::v4(v4_of(&t.dst), t.dst_port);
        dsr_v4_insert(pkt, parsed, &target, cfg.mtu()).is_ok()
    }
}

/// VXLAN-encapsulates the packet to `peer`, from this node's address. The frame's MACs become
/// the outer frame's: the outer packet is routed by this node's stack. Returns whether it did
/// (see [`dsr_carry`]).
#[inline(never)]
fn tunnel_carry<P: AdjustHead + ?Sized>(
    pkt: &mut P,
    parsed: &Parsed,
    cfg: &DatapathConfig,
    peer: &[u8; 16],
) -> bool {
    let t = &parsed.tuple;
    let Some(eth) = pkt.load::<EthernetHeader>(0) else {
        return false;
    };
    // The underlay is of the flow's family: an IPv6 flow goes to the peer's IPv6 address.
    let outer = if t.family == IpFamily::V6 as u8 {
        OuterAddrs::V6 {
            src: cfg.node_v6,
            dst: *peer,
        }
    } else {
        OuterAddrs::V4 {
            src: cfg.node_v4,
            dst: v4_of(peer),
        }
    };
    // An IPv6 outer UDP checksum may not be zero; it is derived from the inner one (a sum over
    // the whole packet would exceed the verifier's budget and the bytes a program may read).
    let Some(inner) = inner_checksum(pkt, parsed) else {
        return false;
    };
    let mut tc = TunnelConfig::new(cfg.vni, outer, eth.src, eth.dst);
    tc.port = cfg.tunnel_port();
    tc.mtu = cfg.mtu();
    vxlan_encap_offloaded(pkt, &tc, t.hash(cfg.hash_seed), &inner).is_ok()
}

/// The packet's inner transport segment, as [`vxlan_encap_offloaded`] needs it: where it is
/// and the sum of its pseudo-header, from the addresses the packet carries now (translated).
#[inline(never)]
fn inner_checksum<P: PacketAccess + ?Sized>(pkt: &P, parsed: &Parsed) -> Option<InnerChecksum> {
    let ip_end = parsed.l3_offset + usize::from(parsed.ip_len);
    let wire_end = parsed.l3_offset + wire_ip_len(parsed, parsed.gso_size);
    Some(InnerChecksum::new(parsed.l4_offset, ip_end, pseudo_sum(pkt, parsed)?).on_wire(wire_end))
}

/// The sum of the packet's transport pseudo-header (addresses, protocol, transport length),
/// unfolded. The addresses are summed in place, not copied onto the stack.
#[inline(always)]
pub(super) fn pseudo_sum<P: PacketAccess + ?Sized>(pkt: &P, parsed: &Parsed) -> Option<u32> {
    let l3 = parsed.l3_offset;
    let ip_end = l3 + usize::from(parsed.ip_len);
    let l4_len = ip_end.checked_sub(parsed.l4_offset)? as u32;
    let (addrs_at, addrs_len) = if parsed.tuple.family == IpFamily::V6 as u8 {
        (l3 + 8, 32)
    } else {
        (l3 + 12, 8)
    };
    let addrs = checksum::sum_packet(pkt, addrs_at, addrs_len, 0)?;
    Some(addrs + (l4_len >> 16) + (l4_len & 0xffff) + u32::from(parsed.tuple.proto))
}
