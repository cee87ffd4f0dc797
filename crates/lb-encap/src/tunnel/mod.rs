//! Growing and shrinking a packet at its head, and VXLAN (RFC 7348) encapsulation and
//! decapsulation with IPv4 or IPv6 outer headers.

use lb_api::checksum;
use lb_api::wire::{
    parse, EthernetHeader, Ipv4Header, Ipv6Header, PacketAccess, ParseError, UdpHeader, ETH_P_IPV4,
    ETH_P_IPV6,
};
use lb_api::IpFamily;
use zerocopy::network_endian::U16;

use crate::{vxlan_source_port, VxlanHeader, VXLAN_PORT};

/// What room a packet gets or loses ([`AdjustHead::insert_room`],
/// [`AdjustHead::remove_room`]): the kernel at TC keeps the skb's metadata (its protocol, GSO
/// type and size, inner header offsets) right by it. XDP and the userspace packets only move
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// Inside the network headers, after the fixed IPv4/IPv6 header: an IPv4 option, an IPv6
    /// extension header. The packet stays of its family and protocol.
    IpHeader,
    /// In front of the network header, after the link header: headers of the packet's own
    /// family (an ICMP error's IP and ICMP headers in front of its quote).
    BeforeIp,
    /// A UDP tunnel's outer network, UDP and tunnel headers and the inner Ethernet header, in
    /// front of the inner network header; the outer network header of this family.
    UdpTunnel(IpFamily),
    /// Removing a UDP tunnel's outer headers (and the inner Ethernet header, which the caller
    /// writes back): the inner network header, now the packet's, is of this family (`None`:
    /// not IP, such as a VLAN-tagged inner frame, which TC refuses: it cannot give the packet
    /// that protocol).
    UdpTunnelDecap(Option<IpFamily>),
}

impl Room {
    /// `BPF_F_ADJ_ROOM_FIXED_GSO`.
    pub const FIXED_GSO: u64 = 1;
    /// `BPF_F_ADJ_ROOM_ENCAP_L3_IPV4`.
    pub const ENCAP_L3_IPV4: u64 = 1 << 1;
    /// `BPF_F_ADJ_ROOM_ENCAP_L3_IPV6`.
    pub const ENCAP_L3_IPV6: u64 = 1 << 2;
    /// `BPF_F_ADJ_ROOM_ENCAP_L4_UDP`.
    pub const ENCAP_L4_UDP: u64 = 1 << 4;
    /// `BPF_F_ADJ_ROOM_ENCAP_L2_ETH`.
    pub const ENCAP_L2_ETH: u64 = 1 << 6;
    /// `BPF_F_ADJ_ROOM_DECAP_L3_IPV4`.
    pub const DECAP_L3_IPV4: u64 = 1 << 7;
    /// `BPF_F_ADJ_ROOM_DECAP_L3_IPV6`.
    pub const DECAP_L3_IPV6: u64 = 1 << 8;
    /// `BPF_F_ADJ_ROOM_ENCAP_L2(len)`: the inner link header's length.
    pub const fn encap_l2(len: u64) -> u64 {
        (len & 0xff) << 56
    }

    /// The flags of `bpf_skb_adjust_room` for this room at TC.
    ///
    /// Always `FIXED_GSO`: the datapath decides a carried GSO packet's MTU by its segments
    /// with the carrier added ([`crate::mtu::wire_ip_len`]), so the segments keep their size
    /// and each grows by the carrier, as the packets the sender would have sent one by one
    /// would; the kernel would otherwise shrink them by the carrier's length, and it resizes
    /// a UDP GSO packet only with a fixed size. A tunnel's flags make the kernel mark the
    /// packet as encapsulated (inner header offsets, `SKB_GSO_UDP_TUNNEL`, the outer protocol),
    /// so that it still segments a GSO packet right; decapsulation's set the inner family as
    /// the packet's protocol.
    #[must_use]
    pub const fn tc_flags(self) -> u64 {
        match self {
            Room::IpHeader | Room::BeforeIp | Room::UdpTunnelDecap(None) => Self::FIXED_GSO,
            Room::UdpTunnel(outer) => {
                let l3 = match outer {
                    IpFamily::V4 => Self::ENCAP_L3_IPV4,
                    IpFamily::V6 => Self::ENCAP_L3_IPV6,
                };
                Self::FIXED_GSO
                    | l3
                    | Self::ENCAP_L4_UDP
                    | Self::ENCAP_L2_ETH
                    | Self::encap_l2(EthernetHeader::LEN as u64)
            }
            Room::UdpTunnelDecap(Some(IpFamily::V4)) => Self::FIXED_GSO | Self::DECAP_L3_IPV4,
            Room::UdpTunnelDecap(Some(IpFamily::V6)) => Self::FIXED_GSO | Self::DECAP_L3_IPV6,
        }
    }
}

/// Largest `at` of [`AdjustHead::insert_room`] and [`AdjustHead::remove_room`] where the
/// bytes in front move by [`insert_room_at_head`] and [`remove_room_at_head`]: the end of an
/// IPv6 header behind two VLAN tags. It bounds their loops.
pub const MAX_ROOM_AT: usize = EthernetHeader::LEN + 8 + Ipv6Header::LEN;

/// A packet that can grow and shrink: by its head and tail (XDP's `bpf_xdp_adjust_head`,
/// `bpf_xdp_adjust_tail`, and the userspace [`HeadroomPacket`]), or by room inserted and
/// removed inside it (TC's `bpf_skb_adjust_room`, `bpf_skb_change_tail`).
///
/// The carriers, decapsulation and the ICMP errors use [`Self::insert_room`],
/// [`Self::remove_room`] and [`Self::truncate`] only, which mean the same in every world:
/// one implementation of each carrier serves XDP, TC and userspace.
pub trait AdjustHead: PacketAccess {
    /// Moves the start of the packet by `delta` bytes: negative grows the packet at its head
    /// (new bytes are unspecified), positive removes bytes from its head. `None` (nothing changed)
    /// if there is not enough headroom or packet, or the hook cannot (TC).
    fn adjust_head(&mut self, delta: i32) -> Option<()>;

    /// Moves the end of the packet by `delta` bytes (positive grows, negative truncates), like
    /// `bpf_xdp_adjust_tail`. `None` (nothing changed) if the buffer does not allow it.
    fn adjust_tail(&mut self, delta: i32) -> Option<()>;

    /// Whether the packet can change length at all (at TC: whether it is plain IPv4/IPv6 behind
    /// its Ethernet header, what the kernel's helpers resize). Paths that would have to add a
    /// carrier or make an ICMP error refuse such a packet before changing any state.
    fn resizable(&self) -> bool {
        true
    }

    /// Inserts `len` bytes of room after the first `at` bytes of the packet: those `at` bytes
    /// move `len` bytes toward the head, the rest stays where it is. The room's bytes are
    /// unspecified: the caller writes them. `room` says what the room is for. `None` (nothing
    /// changed) if the packet cannot grow there.
    ///
    /// By default [`insert_room_at_head`]: the head grows and the `at` bytes move (at most
    /// [`MAX_ROOM_AT`]; `len` at least 8). At TC the kernel's `bpf_skb_adjust_room` does it, for `at`
    /// at the end of the Ethernet header (14) or of the fixed IP header only.
    fn insert_room(&mut self, at: usize, len: usize, room: Room) -> Option<()> {
        let _ = room;
        insert_room_at_head(self, at, len)
    }

    /// Removes the `len` bytes after the first `at` bytes of the packet: those `at` bytes move
    /// `len` bytes toward the tail. `None` (nothing changed) if the packet cannot shrink there.
    ///
    /// By default [`remove_room_at_head`]; at TC `bpf_skb_adjust_room`, as
    /// [`Self::insert_room`].
    fn remove_room(&mut self, at: usize, len: usize, room: Room) -> Option<()> {
        let _ = room;
        remove_room_at_head(self, at, len)
    }

    /// Cuts the packet to its first `len` bytes (`len` at most its length). `None` (nothing
    /// changed) if it cannot. By default through [`Self::adjust_tail`]; at TC
    /// `bpf_skb_change_tail`, after which the packet is no GSO packet any more.
    fn truncate(&mut self, len: usize) -> Option<()> {
        truncate_at_tail(self, len)
    }
}

/// [`AdjustHead::insert_room`] by [`AdjustHead::adjust_head`] and a bounded move of the `at`
/// bytes ([`MAX_ROOM_AT`] at most, none or at least 8), 8 at a time. The room holds what the
/// headroom held.
#[inline(always)]
pub fn insert_room_at_head<P: AdjustHead + ?Sized>(
    pkt: &mut P,
    at: usize,
    len: usize,
) -> Option<()> {
    if !room_fits(pkt, at, len, 0) {
        return None;
    }
    pkt.adjust_head(-(len as i32))?;
    // Front to back: a chunk is read before anything at or after it is written (`len` >= 8).
    // The last chunk ends at `at` and may overlap the one before it.
    let mut i = 0;
    while i + MOVE_CHUNK < at {
        let w: [u8; MOVE_CHUNK] = pkt.load(len + i)?;
        pkt.store(i, &w)?;
        i += MOVE_CHUNK;
    }
    if at != 0 {
        let last = at - MOVE_CHUNK;
        let w: [u8; MOVE_CHUNK] = pkt.load(len + last)?;
        // Opaque: the store keeps its own bounds check (the load's implies it, which the
        // optimizer would use and the verifier cannot follow).
        pkt.store(crate::opaque(last), &w)?;
    }
    Some(())
}

/// [`AdjustHead::remove_room`] by a bounded move of the `at` bytes ([`MAX_ROOM_AT`] at most,
/// none or at least 8), 8 at a time from the last, and [`AdjustHead::adjust_head`].
#[inline(always)]
pub fn remove_room_at_head<P: AdjustHead + ?Sized>(
    pkt: &mut P,
    at: usize,
    len: usize,
) -> Option<()> {
    // Opaque: otherwise the optimizer derives the moves' offsets from the caller's (a tunnel's
    // header offsets) and reuses their bounds checks, which the verifier cannot follow.
    let len = crate::opaque(len);
    if !room_fits(pkt, at, len, len) {
        return None;
    }
    // Back to front: a chunk is read before anything at or before it is written (`len` >= 8).
    // The last chunk starts at 0 and may overlap the one before it.
    let mut i = at;
    while i > MOVE_CHUNK {
        i -= MOVE_CHUNK;
        let w: [u8; MOVE_CHUNK] = pkt.load(i)?;
        pkt.store(len + i, &w)?;
    }
    if at != 0 {
        let w: [u8; MOVE_CHUNK] = pkt.load(0)?;
        pkt.store(len, &w)?;
    }
    pkt.adjust_head(len as i32)
}

/// Bytes [`insert_room_at_head`] and [`remove_room_at_head`] move at a time.
const MOVE_CHUNK: usize = 8;

/// Whether the moves of [`insert_room_at_head`] and [`remove_room_at_head`] can be done and stay
/// inside the packet (`removed` of its bytes go) and the bytes the datapath may touch
/// ([`lb_api::wire::MAX_HEADER_OFFSET`]), so that none of them fails half-way.
#[inline(always)]
fn room_fits<P: PacketAccess + ?Sized>(pkt: &P, at: usize, len: usize, removed: usize) -> bool {
    at <= MAX_ROOM_AT
        && (at == 0 || at >= MOVE_CHUNK)
        && (MOVE_CHUNK..=lb_api::wire::MAX_HEADER_OFFSET).contains(&len)
        && at + removed <= pkt.len()
        && at + len <= lb_api::wire::MAX_HEADER_OFFSET
}

/// [`AdjustHead::truncate`] by [`AdjustHead::adjust_tail`].
#[inline(always)]
pub fn truncate_at_tail<P: AdjustHead + ?Sized>(pkt: &mut P, len: usize) -> Option<()> {
    let cur = pkt.len();
    if len > cur {
        return None;
    }
    if len == cur {
        return Some(());
    }
    pkt.adjust_tail(-((cur - len) as i32))
}

/// [`PacketAccess`] + [`AdjustHead`] over a caller's buffer with headroom before the frame.
#[derive(Debug)]
pub struct HeadroomPacket<'a> {
    buf: &'a mut [u8],
    start: usize,
    end: usize,
    /// See [`PacketAccess::partial_by_field`].
    partial_by_field: bool,
}

impl<'a> HeadroomPacket<'a> {
    /// A frame of `len` bytes stored at `buf[headroom..headroom + len]`. `None` if it does not fit.
    pub fn new(buf: &'a mut [u8], headroom: usize, len: usize) -> Option<Self> {
        let end = headroom.checked_add(len)?;
        if end > buf.len() {
            return None;
        }
        Some(Self {
            buf,
            start: headroom,
            end,
            partial_by_field: false,
        })
    }

    /// The packet as XDP sees it on a device that hands up local senders' packets as they are
    /// (a veth): its checksum may be partial, and only its field tells
    /// ([`PacketAccess::partial_by_field`]).
    #[must_use]
    pub fn on_virtual_device(mut self, virtual_device: bool) -> Self {
        self.partial_by_field = virtual_device;
        self
    }

    /// The frame's bytes.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or(&[])
    }
}

impl PacketAccess for HeadroomPacket<'_> {
    fn len(&self) -> usize {
        self.end - self.start
    }

    fn load<T: zerocopy::FromBytes + zerocopy::KnownLayout + zerocopy::Immutable + Copy>(
        &self,
        offset: usize,
    ) -> Option<T> {
        let a = self.start.checked_add(offset)?;
        let b = a.checked_add(core::mem::size_of::<T>())?;
        if b > self.end {
            return None;
        }
        T::read_from_bytes(self.buf.get(a..b)?).ok()
    }

    fn store<T: zerocopy::IntoBytes + zerocopy::Immutable>(
        &mut self,
        offset: usize,
        value: &T,
    ) -> Option<()> {
        let a = self.start.checked_add(offset)?;
        let b = a.checked_add(core::mem::size_of::<T>())?;
        if b > self.end {
            return None;
        }
        self.buf.get_mut(a..b)?.copy_from_slice(value.as_bytes());
        Some(())
    }

    fn partial_by_field(&self) -> bool {
        self.partial_by_field
    }

    const MAY_HIDE_PARTIAL: bool = true;
}

impl AdjustHead for HeadroomPacket<'_> {
    fn adjust_head(&mut self, delta: i32) -> Option<()> {
        let start = if delta < 0 {
            self.start.checked_sub(delta.unsigned_abs() as usize)?
        } else {
            self.start.checked_add(delta as usize)?
        };
        if start > self.end {
            return None;
        }
        self.start = start;
        Some(())
    }

    fn adjust_tail(&mut self, delta: i32) -> Option<()> {
        let end = if delta < 0 {
            self.end.checked_sub(delta.unsigned_abs() as usize)?
        } else {
            self.end.checked_add(delta as usize)?
        };
        if end < self.start || end > self.buf.len() {
            return None;
        }
        self.end = end;
        Some(())
    }
}

/// Outer addresses of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OuterAddrs {
    /// IPv4 outer header.
    V4 {
        /// This node.
        src: [u8; 4],
        /// The remote tunnel endpoint.
        dst: [u8; 4],
    },
    /// IPv6 outer header.
    V6 {
        /// This node.
        src: [u8; 16],
        /// The remote tunnel endpoint.
        dst: [u8; 16],
    },
}

/// What a UDP tunnel (VXLAN, Geneve) writes in front of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelConfig {
    /// Virtual network identifier (24 bits).
    pub vni: u32,
    /// Outer UDP destination port (4789 for VXLAN, 6081 for Geneve by default).
    pub port: u16,
    /// Outer Ethernet source.
    pub src_mac: [u8; 6],
    /// Outer Ethernet destination (next hop).
    pub dst_mac: [u8; 6],
    /// Outer IP addresses.
    pub outer: OuterAddrs,
    /// MTU of the underlay: the largest outer IP packet.
    pub mtu: u16,
}

/// The VXLAN configuration is a [`TunnelConfig`] with port 4789 by default.
pub type VxlanConfig = TunnelConfig;

impl TunnelConfig {
    /// Defaults: VXLAN port 4789, MTU 1500.
    #[must_use]
    pub const fn new(vni: u32, outer: OuterAddrs, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Self {
        Self {
            vni,
            port: VXLAN_PORT,
            src_mac,
            dst_mac,
            outer,
            mtu: 1500,
        }
    }

    /// Outer Ethernet, IP and UDP header bytes.
    #[must_use]
    pub const fn outer_len(&self) -> usize {
        let ip = match self.outer {
            OuterAddrs::V4 { .. } => Ipv4Header::LEN,
            OuterAddrs::V6 { .. } => Ipv6Header::LEN,
        };
        EthernetHeader::LEN + ip + UdpHeader::LEN
    }

    /// Bytes a VXLAN encapsulation adds in front of the inner frame.
    #[must_use]
    pub const fn overhead(&self) -> usize {
        self.outer_len() + VxlanHeader::LEN
    }
}

/// Why an encapsulation was not done (the packet is unchanged, but for
/// [`EncapError::Malformed`] after the packet grew: see the functions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncapError {
    /// The outer packet would be `needed` bytes, more than the MTU; `inner_mtu` is the largest
    /// inner IP packet that fits (the value for ICMP "fragmentation needed" / "packet too big").
    MtuExceeded {
        /// Outer IP packet length that was needed.
        needed: u16,
        /// Largest inner IP packet that fits.
        inner_mtu: u16,
    },
    /// The packet could not grow (no headroom; at TC the kernel refuses packets that are not
    /// plain IPv4/IPv6 after their Ethernet header, such as VLAN-tagged ones, and GSO packets
    /// it could not segment any more).
    NoHeadroom,
    /// The packet is too long to checksum or does not parse.
    Malformed,
}

/// Why a decapsulation was refused (the packet is unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecapError {
    /// The outer headers did not parse.
    Parse(ParseError),
    /// Not UDP to the tunnel port (or a fragment).
    NotTunnel,
    /// VXLAN header without the I flag.
    BadFlags,
    /// An IPv6 outer UDP checksum of zero (invalid in IPv6).
    ZeroUdpChecksumV6,
    /// A valid tunnel packet that could not shrink (at TC the kernel refuses packets that are
    /// not plain IPv4/IPv6 after their Ethernet header, such as VLAN-tagged ones).
    CannotShrink,
    /// The VNI is not the one expected (`found` holds it).
    VniMismatch {
        /// VNI carried by the packet.
        found: u32,
    },
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> std::vec::Vec<u8> {
        (0..n).map(|i| i as u8).collect()
    }

    extern crate std;

    #[test]
    fn room_moves_the_bytes_in_front_and_keeps_the_rest() {
        for at in [0usize, 8, 13, 14, 16, 34, 54, 62] {
            for len in [8usize, 24, 50, 70] {
                let f = frame(100);
                let mut buf = std::vec![0xeeu8; 128 + f.len()];
                buf[128..].copy_from_slice(&f);
                let mut p = HeadroomPacket::new(&mut buf, 128, f.len()).unwrap();
                p.insert_room(at, len, Room::BeforeIp).unwrap();
                let b = p.bytes().to_vec();
                assert_eq!(b.len(), f.len() + len);
                assert_eq!(&b[..at], &f[..at], "at {at} len {len}: the front");
                assert_eq!(&b[at + len..], &f[at..], "at {at} len {len}: the rest");
                // And out again.
                p.remove_room(at, len, Room::UdpTunnelDecap(None)).unwrap();
                assert_eq!(p.bytes(), &f[..], "at {at} len {len}: removed again");
            }
        }
    }

    #[test]
    fn room_refuses_what_it_cannot_move_and_changes_nothing() {
        let f = frame(40);
        let mut buf = std::vec![0u8; 64 + f.len()];
        buf[64..].copy_from_slice(&f);
        let mut p = HeadroomPacket::new(&mut buf, 64, f.len()).unwrap();
        assert!(p.insert_room(MAX_ROOM_AT + 2, 8, Room::IpHeader).is_none());
        assert!(
            p.insert_room(4, 8, Room::IpHeader).is_none(),
            "fewer than 8 bytes in front"
        );
        assert!(
            p.insert_room(14, 4, Room::IpHeader).is_none(),
            "room under 8 bytes"
        );
        assert!(
            p.insert_room(14, 65, Room::IpHeader).is_none(),
            "no headroom"
        );
        assert!(
            p.remove_room(14, 30, Room::IpHeader).is_none(),
            "past the end"
        );
        assert_eq!(p.bytes(), &f[..]);
        p.truncate(20).unwrap();
        assert_eq!(p.bytes(), &f[..20]);
        assert!(p.truncate(21).is_none());
    }
}
