//! Growing and shrinking a packet inside it: the room operations every carrier is written
//! against ([`AdjustHead`]), and their implementation by the packet's head and tail.

use lb_api::wire::{EthernetHeader, Ipv6Header, PacketAccess};
use lb_api::IpFamily;

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
/// `bpf_xdp_adjust_tail`, and the userspace [`HeadroomPacket`](super::HeadroomPacket)), or by
/// room inserted and removed inside it (TC's `bpf_skb_adjust_room`, `bpf_skb_change_tail`).
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
