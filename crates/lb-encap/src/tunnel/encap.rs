//! VXLAN (RFC 7348) encapsulation with an IPv4 or IPv6 outer header, and the outer UDP
//! header and checksum every UDP tunnel shares.

use lb_api::checksum;
use lb_api::wire::{
    EthernetHeader, Ipv4Header, Ipv6Header, PacketAccess, UdpHeader, ETH_P_IPV4, ETH_P_IPV6,
};
use lb_api::IpFamily;
use zerocopy::network_endian::U16;

use super::{AdjustHead, EncapError, OuterAddrs, Room, TunnelConfig, VxlanConfig};
use crate::{vxlan_source_port, VxlanHeader};

/// Encapsulates the Ethernet frame in `pkt` in VXLAN: outer Ethernet, IPv4/IPv6, UDP (source
/// port from `flow_hash`), VXLAN header. IPv4 outer UDP checksum is zero (RFC 7348); IPv6 outer
/// UDP checksum is computed (zero is invalid in IPv6).
///
/// # Errors
/// [`EncapError::MtuExceeded`] when the result would not fit the underlay MTU.
pub fn vxlan_encap<P: AdjustHead + ?Sized>(
    pkt: &mut P,
    cfg: &VxlanConfig,
    flow_hash: u32,
) -> Result<(), EncapError> {
    let wire = crate::mtu::frame_on_wire(pkt);
    push_udp_tunnel(
        pkt,
        cfg,
        VxlanHeader::LEN,
        flow_hash,
        wire,
        None,
        |pkt, at| pkt.store(at, &VxlanHeader::new(cfg.vni)),
    )
}

/// [`vxlan_encap`] with the IPv6 outer UDP checksum derived from the inner packet's own
/// transport checksum instead of summed over the whole inner packet (local checksum offload,
/// as Linux's UDP tunnels do): only the outer UDP and VXLAN headers and the inner headers up to
/// the transport header are read, whatever the packet's length. An IPv4 outer header has no
/// UDP checksum, so `inner` is not used then.
///
/// The outer checksum is right exactly when the inner transport checksum is; a receiver that
/// checks the outer one drops exactly the packets whose inner checksum is wrong, as it would
/// have after decapsulation.
///
/// # Errors
/// As [`vxlan_encap`]; [`EncapError::Malformed`] if the inner headers are longer than
/// [`MAX_OFFLOADED_HEADERS`] or the link padding after the inner datagram longer than
/// [`MAX_LINK_PADDING`].
pub fn vxlan_encap_offloaded<P: AdjustHead + ?Sized>(
    pkt: &mut P,
    cfg: &VxlanConfig,
    flow_hash: u32,
    inner: &InnerChecksum,
) -> Result<(), EncapError> {
    push_udp_tunnel(
        pkt,
        cfg,
        VxlanHeader::LEN,
        flow_hash,
        inner.wire_end,
        Some(inner),
        |pkt, at| pkt.store(at, &VxlanHeader::new(cfg.vni)),
    )
}

/// Longest inner L2 + L3 headers [`vxlan_encap_offloaded`] sums (Ethernet, two VLAN tags, IPv6
/// and 98 bytes of extension headers): the bound of its loop.
pub const MAX_OFFLOADED_HEADERS: usize = 160;

/// Longest link padding after the inner datagram (a minimum-size Ethernet frame's) that
/// [`vxlan_encap_offloaded`] sums.
pub const MAX_LINK_PADDING: usize = 64;

/// What [`vxlan_encap_offloaded`] needs to know of the inner packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerChecksum {
    /// Offset of the inner transport header in the frame being encapsulated (even: the headers
    /// before it are all of even length).
    pub l4_offset: usize,
    /// End of the inner IP datagram in the frame; bytes after it are link padding.
    pub ip_end: usize,
    /// One's-complement sum of the inner transport segment, checksum field included, as its
    /// checksum implies: the complement of its pseudo-header's sum ([`InnerChecksum::new`]).
    pub l4_sum: u32,
    /// End of the largest frame the packet is on the wire, which the MTU is checked against:
    /// `ip_end` for a packet that leaves whole, the end of its first segment for a GSO packet
    /// ([`InnerChecksum::on_wire`], [`crate::mtu::wire_ip_len`]).
    pub wire_end: usize,
}

impl InnerChecksum {
    /// The inner packet's transport segment from `l4_offset` to `ip_end`, whose checksum covers
    /// `pseudo_sum` (its pseudo-header's sum, e.g. [`checksum::pseudo_sum_v6`]).
    #[must_use]
    pub const fn new(l4_offset: usize, ip_end: usize, pseudo_sum: u32) -> Self {
        Self {
            l4_offset,
            ip_end,
            l4_sum: checksum::finish(pseudo_sum) as u32,
            wire_end: ip_end,
        }
    }

    /// The same packet leaving as segments whose largest frame ends at `wire_end` (a GSO
    /// packet: the offset of its IP header plus [`crate::mtu::wire_ip_len`]).
    #[must_use]
    pub const fn on_wire(self, wire_end: usize) -> Self {
        Self { wire_end, ..self }
    }
}

/// The one's-complement sum of an encapsulated packet's outer UDP segment from offset `l4`
/// (`udp_len` bytes, the inner frame starting at `inner_at`) plus `initial`: from the inner
/// transport checksum when `inner` is given, else over every byte.
fn udp_segment_sum<P: PacketAccess + ?Sized>(
    pkt: &P,
    l4: usize,
    udp_len: usize,
    inner_at: usize,
    inner: Option<&InnerChecksum>,
    initial: u32,
) -> Option<u32> {
    let Some(inner) = inner else {
        return checksum::sum_packet(pkt, l4, udp_len, initial);
    };
    let end = l4 + udp_len;
    let seg_start = inner_at + inner.l4_offset;
    let seg_end = inner_at + inner.ip_end;
    if inner.l4_offset > MAX_OFFLOADED_HEADERS
        || inner.l4_offset % 2 != 0
        || seg_end < seg_start
        || seg_end > end
        || end - seg_end > MAX_LINK_PADDING
    {
        return None;
    }
    // Outer UDP + tunnel header + inner headers, then the segment as its checksum implies.
    let head = checksum::sum_packet(pkt, l4, seg_start - l4, initial)?;
    let mut s = head + inner.l4_sum;
    if seg_end < end {
        // Folded to 16 bits (the complement of a finished checksum).
        let pad = u32::from(!checksum::finish(checksum::sum_packet(
            pkt,
            seg_end,
            end - seg_end,
            0,
        )?));
        // Summed from its own start; in the segment it starts at an odd offset if the
        // datagram's length is odd, where its bytes weigh the other way round.
        s += if (seg_end - l4) % 2 == 1 {
            ((pad & 0xff) << 8) | (pad >> 8)
        } else {
            pad
        };
    }
    Some(s)
}

/// Grows `pkt` by the outer headers plus `tunnel_len` bytes of tunnel header (written by
/// `write_tunnel` at the offset it is given), then fills in the UDP checksum (IPv6). The room
/// goes after the frame's Ethernet header ([`Room::UdpTunnel`]), which becomes the outer one,
/// and a copy of it becomes the inner one. `wire_frame` is the length of the largest frame the
/// packet leaves as (its segments', for a GSO packet), which the MTU is checked against.
///
/// Once the packet grew, a failure (a write outside the packet: not reached by a frame that
/// passed the checks before) leaves it partly rewritten: drop it.
pub(crate) fn push_udp_tunnel<P: AdjustHead + ?Sized>(
    pkt: &mut P,
    cfg: &TunnelConfig,
    tunnel_len: usize,
    flow_hash: u32,
    wire_frame: usize,
    inner_checksum: Option<&InnerChecksum>,
    write_tunnel: impl FnOnce(&mut P, usize) -> Option<()>,
) -> Result<(), EncapError> {
    let inner = pkt.len();
    let overhead = cfg.outer_len() + tunnel_len;
    let wire_ip_len = wire_frame.min(inner) + overhead - EthernetHeader::LEN;
    if wire_ip_len > usize::from(cfg.mtu) {
        let inner_mtu = usize::from(cfg.mtu).saturating_sub(overhead);
        return Err(EncapError::MtuExceeded {
            needed: wire_ip_len.min(0xffff) as u16,
            inner_mtu: inner_mtu as u16,
        });
    }
    let outer_ip_len = inner + overhead - EthernetHeader::LEN;
    if outer_ip_len > checksum::MAX_SUM_LEN && inner_checksum.is_none() {
        return Err(EncapError::Malformed);
    }
    let outer_family = match cfg.outer {
        OuterAddrs::V4 { .. } => IpFamily::V4,
        OuterAddrs::V6 { .. } => IpFamily::V6,
    };
    // The frame's Ethernet header: the inner frame's, copied behind the outer headers.
    let inner_eth: EthernetHeader = pkt.load(0).ok_or(EncapError::Malformed)?;
    pkt.insert_room(EthernetHeader::LEN, overhead, Room::UdpTunnel(outer_family))
        .ok_or(EncapError::NoHeadroom)?;
    let write = |pkt: &mut P| -> Option<()> {
        pkt.store(overhead, &inner_eth)?;
        let (ether_type, l4) = match cfg.outer {
            OuterAddrs::V4 { .. } => (ETH_P_IPV4, EthernetHeader::LEN + Ipv4Header::LEN),
            OuterAddrs::V6 { .. } => (ETH_P_IPV6, EthernetHeader::LEN + Ipv6Header::LEN),
        };
        pkt.store(
            0,
            &EthernetHeader {
                dst: cfg.dst_mac,
                src: cfg.src_mac,
                ether_type: U16::new(ether_type),
            },
        )?;
        let udp_len = (outer_ip_len - (l4 - EthernetHeader::LEN)) as u16;
        pkt.store(
            l4,
            &UdpHeader {
                src_port: U16::new(vxlan_source_port(flow_hash)),
                dst_port: U16::new(cfg.port),
                len: U16::new(udp_len),
                check: U16::new(0),
            },
        )?;
        write_tunnel(pkt, l4 + UdpHeader::LEN)?;
        match cfg.outer {
            OuterAddrs::V4 { src, dst } => {
                let mut ip = Ipv4Header {
                    version_ihl: 0x45,
                    tos: 0,
                    total_len: U16::new(outer_ip_len as u16),
                    id: U16::new(0),
                    frag_off: U16::new(0x4000),
                    ttl: 64,
                    proto: 17,
                    check: U16::new(0),
                    src,
                    dst,
                };
                ip.check = U16::new(checksum::ipv4_header_checksum(
                    zerocopy::IntoBytes::as_bytes(&ip),
                ));
                pkt.store(EthernetHeader::LEN, &ip)?;
            }
            OuterAddrs::V6 { src, dst } => {
                pkt.store(
                    EthernetHeader::LEN,
                    &Ipv6Header {
                        vtc_flow: [0x60, 0, 0, 0],
                        payload_len: U16::new(udp_len),
                        next_header: 17,
                        hop_limit: 64,
                        src,
                        dst,
                    },
                )?;
                let pseudo = checksum::pseudo_sum_v6(&src, &dst, 17, u32::from(udp_len));
                let s = udp_segment_sum(
                    pkt,
                    l4,
                    usize::from(udp_len),
                    overhead,
                    inner_checksum,
                    pseudo,
                )?;
                let c = checksum::udp_v6_fixup(checksum::finish(s));
                pkt.store(crate::opaque(l4 + UdpHeader::CHECK_OFFSET), &U16::new(c))?;
            }
        }
        Some(())
    };
    write(pkt).ok_or(EncapError::Malformed)
}
