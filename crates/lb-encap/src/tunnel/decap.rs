//! VXLAN decapsulation, and the removal of outer headers every UDP tunnel shares.

use lb_api::wire::{parse, EthernetHeader, UdpHeader, ETH_P_IPV4, ETH_P_IPV6};
use lb_api::IpFamily;

use super::{AdjustHead, DecapError, Room};
use crate::VxlanHeader;

/// Removes the outer headers of a VXLAN packet to UDP port `port`, leaving the inner Ethernet
/// frame. Returns the VNI. With `expected_vni` set, other VNIs are refused.
///
/// # Errors
/// A [`DecapError`] saying why the packet is not (acceptable) VXLAN; the packet is unchanged.
pub fn vxlan_decap<P: AdjustHead + ?Sized>(
    pkt: &mut P,
    port: u16,
    expected_vni: Option<u32>,
) -> Result<u32, DecapError> {
    let p = parse(pkt).map_err(DecapError::Parse)?;
    vxlan_decap_parsed(pkt, &p, port, expected_vni)
}

/// [`vxlan_decap`] of a packet already parsed into `p` (the datapath's parse result, which
/// lives off the kernel stack).
///
/// # Errors
/// As [`vxlan_decap`].
#[inline(always)]
pub fn vxlan_decap_parsed<P: AdjustHead + ?Sized>(
    pkt: &mut P,
    p: &lb_api::wire::Parsed,
    port: u16,
    expected_vni: Option<u32>,
) -> Result<u32, DecapError> {
    if p.tuple.proto != 17 || p.tuple.dst_port != port || p.fragment != lb_api::wire::Fragment::None
    {
        return Err(DecapError::NotTunnel);
    }
    if p.family() == IpFamily::V6 {
        let udp: UdpHeader = pkt.load(p.l4_offset).ok_or(DecapError::NotTunnel)?;
        if udp.check.get() == 0 {
            return Err(DecapError::ZeroUdpChecksumV6);
        }
    }
    let vx_off = p.l4_offset + UdpHeader::LEN;
    let vx: VxlanHeader = pkt.load(vx_off).ok_or(DecapError::NotTunnel)?;
    if !vx.is_valid() {
        return Err(DecapError::BadFlags);
    }
    let vni = vx.vni();
    if let Some(want) = expected_vni {
        if want != vni {
            return Err(DecapError::VniMismatch { found: vni });
        }
    }
    let strip = vx_off + VxlanHeader::LEN;
    // The inner frame lies inside the outer datagram: bytes past its end (link padding, or a
    // trailer someone appended) are no inner frame.
    if strip + EthernetHeader::LEN > p.l3_offset + usize::from(p.ip_len) {
        return Err(DecapError::NotTunnel);
    }
    strip_tunnel(pkt, strip)?;
    Ok(vni)
}

/// Removes the `strip` bytes of outer headers in front of a tunnel's inner Ethernet frame:
/// the room from the end of the outer Ethernet header to the inner network header goes
/// ([`Room::UdpTunnelDecap`]), and the inner Ethernet header is written over the outer one.
#[inline(always)]
pub(crate) fn strip_tunnel<P: AdjustHead + ?Sized>(
    pkt: &mut P,
    strip: usize,
) -> Result<(), DecapError> {
    let inner: EthernetHeader = pkt.load(strip).ok_or(DecapError::NotTunnel)?;
    let family = match inner.ether_type.get() {
        ETH_P_IPV4 => Some(IpFamily::V4),
        ETH_P_IPV6 => Some(IpFamily::V6),
        _ => None,
    };
    pkt.remove_room(EthernetHeader::LEN, strip, Room::UdpTunnelDecap(family))
        .ok_or(DecapError::CannotShrink)?;
    pkt.store(0, &inner).ok_or(DecapError::CannotShrink)
}
