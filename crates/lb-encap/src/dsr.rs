//! DSR carriers: how the node that picked a backend tells the backend's node the service address
//! the reply must come from, without tunnelling the packet.
//!
//! * IPv4: an IP option of type 0x9A, 8 bytes: type, length, service port, service address
//!   (Cilium's layout).
//! * IPv6: a destination options header with one option of type 0x1B: the service address and
//!   port (Cilium's layout, 24 bytes with two Pad1).
//! * Geneve: an option of class [`DSR_GENEVE_CLASS`], type [`DSR_GENEVE_TYPE`] (critical): the
//!   service address and port (Cilium's class, type and layout).
//!
//! The TCP/UDP checksums do not change: neither carrier is part of the pseudo-header.

use lb_api::checksum;
use lb_api::wire::{Fragment, Ipv4Header, Ipv6Header, PacketAccess, Parsed, IPV6_HOP_BY_HOP};
use lb_api::IpFamily;
use zerocopy::network_endian::U16;

use crate::mtu::wire_ip_len;
use crate::opaque;
use crate::tunnel::{AdjustHead, EncapError, Room, MAX_ROOM_AT};

/// IPv4 option type of the DSR option (copied flag set, class 0, number 26).
pub const DSR_IPV4_OPT_TYPE: u8 = 0x9a;
/// Length of the IPv4 DSR option.
pub const DSR_IPV4_OPT_LEN: usize = 8;
/// IPv6 destination option type of the DSR option.
pub const DSR_IPV6_OPT_TYPE: u8 = 0x1b;
/// Length of the IPv6 destination options header carrying the DSR option.
pub const DSR_IPV6_EXT_LEN: usize = 24;
/// Geneve option class of the DSR option: Cilium's registered class (IANA's Geneve option
/// class registry), so a Cilium backend node reads our carrier and we read its.
pub const DSR_GENEVE_CLASS: u16 = 0x014b;
/// Geneve option type of the DSR option: Cilium's type 1 with the critical bit (0x80) set, so a
/// receiver that does not know the option drops the packet instead of answering from the
/// backend's address.
pub const DSR_GENEVE_TYPE: u8 = 0x81;

/// The service address a DSR carrier brings to the backend's node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DsrTarget {
    /// Address family.
    pub family: IpFamily,
    /// Service address (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Service port.
    pub port: u16,
}

impl DsrTarget {
    /// An IPv4 service.
    #[must_use]
    pub const fn v4(addr: [u8; 4], port: u16) -> Self {
        Self {
            family: IpFamily::V4,
            addr: lb_api::flow::v4_addr(addr),
            port,
        }
    }

    /// An IPv6 service.
    #[must_use]
    pub const fn v6(addr: [u8; 16], port: u16) -> Self {
        Self {
            family: IpFamily::V6,
            addr,
            port,
        }
    }

    /// Geneve option data in Cilium's layout: address (4 or 16 bytes), port, two zero bytes of
    /// padding. Returns the buffer
    /// and how many of its bytes are used (8 or 20).
    #[must_use]
    pub fn geneve_data(&self) -> ([u8; 20], usize) {
        let mut d = [0u8; 20];
        let n = if self.family == IpFamily::V4 { 4 } else { 16 };
        for (dst, src) in d.iter_mut().zip(self.addr.iter().take(n)) {
            *dst = *src;
        }
        for (dst, src) in d.iter_mut().skip(n).zip(self.port.to_be_bytes()) {
            *dst = src;
        }
        (d, n + 4)
    }

    pub(crate) fn from_geneve_data<P: PacketAccess + ?Sized>(
        pkt: &P,
        off: usize,
        len: usize,
    ) -> Option<Self> {
        let port_at = |n: usize| -> Option<u16> {
            let port: [u8; 2] = pkt.load(off + n)?;
            Some(u16::from_be_bytes(port))
        };
        match len {
            8 => Some(Self::v4(pkt.load(off)?, port_at(4)?)),
            20 => Some(Self::v6(pkt.load(off)?, port_at(16)?)),
            _ => None,
        }
    }
}

/// Adds the IPv4 DSR option to the packet `parsed` describes (client → backend, after DNAT), as
/// the first option.
///
/// # Errors
/// [`EncapError::MtuExceeded`] if 8 more bytes do not fit `mtu`; [`EncapError::Malformed`] if the
/// packet is not IPv4, is a fragment, or its header has no room for 8 more option bytes.
pub fn dsr_v4_insert<P: AdjustHead + ?Sized>(
    pkt: &mut P,
    parsed: &Parsed,
    target: &DsrTarget,
    mtu: u16,
) -> Result<(), EncapError> {
    let (l3, l4) = (parsed.l3_offset, parsed.l4_offset);
    if parsed.family() != IpFamily::V4 || parsed.fragment != Fragment::None || l4 < l3 + 20 {
        return Err(EncapError::Malformed);
    }
    let ihl = (l4 - l3) / 4;
    // The option goes first, right after the fixed header: after the existing options it
    // could follow an End-of-Option-List, past which readers (Linux, dsr_extract) stop.
    let at = l3 + Ipv4Header::LEN;
    if ihl + 2 > 15 || at > MAX_ROOM_AT {
        return Err(EncapError::Malformed);
    }
    check_mtu(wire_ip_len(parsed, pkt.gso_size()), DSR_IPV4_OPT_LEN, mtu)?;
    pkt.insert_room(at, DSR_IPV4_OPT_LEN, Room::IpHeader)
        .ok_or(EncapError::NoHeadroom)?;
    let write = |pkt: &mut P| -> Option<()> {
        // Opaque offsets: each access keeps its own bounds check (the moves' imply them, which
        // the optimizer would use and the verifier cannot follow).
        let (l3, at) = (opaque(l3), opaque(at));
        let p = target.port.to_be_bytes();
        let a = target.addr;
        pkt.store(
            at,
            &[DSR_IPV4_OPT_TYPE, 8, p[0], p[1], a[0], a[1], a[2], a[3]],
        )?;
        let mut ip: Ipv4Header = pkt.load(l3)?;
        ip.version_ihl += 2;
        ip.total_len = U16::new(ip.total_len.get() + DSR_IPV4_OPT_LEN as u16);
        ip.check = U16::new(0);
        pkt.store(l3, &ip)?;
        let c = checksum::finish(checksum::sum_packet(pkt, l3, (ihl + 2) * 4, 0)?);
        pkt.store(opaque(l3 + 10), &U16::new(c))
    };
    write(pkt).ok_or(EncapError::Malformed)
}

/// Refuses growing an IP packet that leaves as packets of at most `wire_len` bytes
/// ([`wire_ip_len`]) by `added` past `mtu`, saying how large the inner packet may be.
fn check_mtu(wire_len: usize, added: usize, mtu: u16) -> Result<(), EncapError> {
    let needed = wire_len + added;
    if needed > usize::from(mtu) {
        return Err(EncapError::MtuExceeded {
            needed: needed.min(0xffff) as u16,
            inner_mtu: mtu.saturating_sub(added as u16),
        });
    }
    Ok(())
}

/// Adds the IPv6 DSR destination options header right after the fixed IPv6 header.
///
/// # Errors
/// As [`dsr_v4_insert`]; also [`EncapError::Malformed`] when a hop-by-hop header comes first
/// (it must stay first).
pub fn dsr_v6_insert<P: AdjustHead + ?Sized>(
    pkt: &mut P,
    parsed: &Parsed,
    target: &DsrTarget,
    mtu: u16,
) -> Result<(), EncapError> {
    let l3 = parsed.l3_offset;
    let at = l3 + Ipv6Header::LEN;
    if parsed.family() != IpFamily::V6 || at > MAX_ROOM_AT {
        return Err(EncapError::Malformed);
    }
    let fixed: [u8; 8] = pkt.load(l3).ok_or(EncapError::Malformed)?;
    if fixed[6] == IPV6_HOP_BY_HOP {
        return Err(EncapError::Malformed);
    }
    check_mtu(wire_ip_len(parsed, pkt.gso_size()), DSR_IPV6_EXT_LEN, mtu)?;
    pkt.insert_room(at, DSR_IPV6_EXT_LEN, Room::IpHeader)
        .ok_or(EncapError::NoHeadroom)?;
    let write = |pkt: &mut P| -> Option<()> {
        // Opaque offsets: as in `dsr_v4_insert`.
        let l3 = opaque(l3);
        let mut ip: Ipv6Header = pkt.load(l3)?;
        let next = ip.next_header;
        ip.next_header = lb_api::wire::IPV6_DEST_OPTS;
        ip.payload_len = U16::new(ip.payload_len.get() + DSR_IPV6_EXT_LEN as u16);
        pkt.store(l3, &ip)?;
        // Opaque offsets: each store keeps its own bounds check (see `opaque`).
        pkt.store(opaque(at), &[next, 2, DSR_IPV6_OPT_TYPE, 20])?;
        pkt.store(opaque(at + 4), &target.addr)?;
        let p = target.port.to_be_bytes();
        // Port, then two Pad1 options.
        pkt.store(opaque(at + 20), &[p[0], p[1], 0, 0])
    };
    write(pkt).ok_or(EncapError::Malformed)
}

/// Backend side: the service address a DSR carrier (IPv4 option or IPv6 destination option)
/// brought, if the packet has one.
#[must_use]
pub fn dsr_extract<P: PacketAccess + ?Sized>(pkt: &P, parsed: &Parsed) -> Option<DsrTarget> {
    if parsed.family() == IpFamily::V4 {
        let mut off = parsed.l3_offset + 20;
        let end = parsed.l4_offset;
        let mut i = 0;
        while i < 40 && off < end {
            let t: u8 = pkt.load(off)?;
            match t {
                0 => return None,
                1 => off += 1,
                _ => {
                    let hdr: [u8; 2] = pkt.load(off)?;
                    let len = usize::from(hdr[1]);
                    if len < 2 || off + len > end {
                        return None;
                    }
                    if t == DSR_IPV4_OPT_TYPE && len == DSR_IPV4_OPT_LEN {
                        let o: [u8; 8] = pkt.load(off)?;
                        return Some(DsrTarget::v4(
                            [o[4], o[5], o[6], o[7]],
                            u16::from_be_bytes([o[2], o[3]]),
                        ));
                    }
                    off += len;
                }
            }
            i += 1;
        }
        None
    } else {
        let d = usize::from(parsed.ipv6_dest_opts);
        // Zero means none; a header starts after the fixed IPv6 header. (Compared with a
        // variable, not with 0: LLVM would merge `d == 0` and `load`'s `d > 512` into one range
        // check on a copy of `d`, from which the verifier learns nothing about `d` itself.)
        if d < parsed.l3_offset + 40 {
            return None;
        }
        let h: [u8; 2] = pkt.load(d)?;
        let end = d + (usize::from(h[1]) + 1) * 8;
        let mut off = d + 2;
        let mut i = 0;
        while i < 16 && off < end {
            let t: u8 = pkt.load(off)?;
            if t == 0 {
                off += 1;
            } else {
                let o: [u8; 2] = pkt.load(off)?;
                let len = usize::from(o[1]);
                if t == DSR_IPV6_OPT_TYPE && len == 20 {
                    let addr: [u8; 16] = pkt.load(off + 2)?;
                    let port: [u8; 2] = pkt.load(off + 18)?;
                    return Some(DsrTarget::v6(addr, u16::from_be_bytes(port)));
                }
                off += 2 + len;
            }
            i += 1;
        }
        None
    }
}
