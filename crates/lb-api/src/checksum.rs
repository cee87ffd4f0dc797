//! Internet checksums: incremental updates (RFC 1624) for rewrites, and full computation for
//! emitted headers and as a test oracle.
//!
//! Values are the checksum field read as a big-endian `u16`. The arithmetic is one's complement,
//! so it does not care about byte order as long as the field and the data words agree.

#[inline(always)]
const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Updates checksum `check` for a 16-bit word of the covered data changing from `old` to `new`
/// (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
#[inline(always)]
#[must_use]
pub const fn update_u16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u32 + (!old) as u32 + new as u32;
    !fold(sum)
}

/// Updates `check` for a 4-byte field (an IPv4 address) changing from `old` to `new`.
#[inline(always)]
#[must_use]
pub const fn update_u32(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let o1 = u16::from_be_bytes([old[0], old[1]]);
    let o2 = u16::from_be_bytes([old[2], old[3]]);
    let n1 = u16::from_be_bytes([new[0], new[1]]);
    let n2 = u16::from_be_bytes([new[2], new[3]]);
    let sum = (!check) as u32 + (!o1) as u32 + (!o2) as u32 + n1 as u32 + n2 as u32;
    !fold(sum)
}

/// Updates a UDP-over-IPv4 checksum: a zero field means "no checksum" and stays zero, and a
/// computed zero is sent as `0xffff` (RFC 768).
#[inline(always)]
#[must_use]
pub const fn udp_v4_fixup(check: u16, updated: u16) -> u16 {
    if check == 0 {
        0
    } else if updated == 0 {
        0xffff
    } else {
        updated
    }
}

/// One's-complement sum of `data` (odd trailing byte padded with zero), not yet complemented.
#[must_use]
pub fn sum(data: &[u8], initial: u32) -> u32 {
    let mut acc = u64::from(initial);
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        if let [a, b] = c {
            acc += u64::from(u16::from_be_bytes([*a, *b]));
        }
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while acc > 0xffff_ffff {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    acc as u32
}

/// The Internet checksum of `data` (for an IPv4 header: with its checksum field zeroed).
#[must_use]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// TCP/UDP checksum over the IPv4 pseudo-header and `segment` (checksum field zeroed).
#[must_use]
pub fn l4_checksum_v4(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let l = (segment.len() as u16).to_be_bytes();
    let pseudo = [
        src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3], 0, proto, l[0], l[1],
    ];
    !fold(sum(segment, sum(&pseudo, 0)))
}

/// Updates `check` for a 16-byte field (an IPv6 address) changing from `old` to `new`: the
/// rewrite of an IPv6 source or destination, for TCP, UDP and ICMPv6 (whose checksums cover the
/// pseudo-header).
#[inline(always)]
#[must_use]
pub fn update_u128(check: u16, old: [u8; 16], new: [u8; 16]) -> u16 {
    let mut sum = u32::from(!check);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        if let ([a, b], [c, d]) = (o, n) {
            sum +=
                u32::from(!u16::from_be_bytes([*a, *b])) + u32::from(u16::from_be_bytes([*c, *d]));
        }
    }
    !fold(sum)
}

/// Updates a UDP-over-IPv6 checksum: zero is not a valid value in IPv6 (RFC 8200 8.1), so a
/// computed zero is sent as `0xffff`. (ICMPv6 and TCP need no fix-up: zero is a valid result.)
#[inline(always)]
#[must_use]
pub const fn udp_v6_fixup(updated: u16) -> u16 {
    if updated == 0 {
        0xffff
    } else {
        updated
    }
}

/// Whether a received UDP checksum field is acceptable without verification rules of its own:
/// IPv4 allows zero ("no checksum"), IPv6 does not.
#[inline(always)]
#[must_use]
pub const fn udp_zero_allowed(v6: bool) -> bool {
    !v6
}

/// The IPv6 pseudo-header's sum (RFC 8200 8.1): addresses, upper-layer length, next header.
///
/// Not inlined: unrolled into its callers it spills a register per word onto the 512-byte BPF
/// stack of each of them.
#[inline(never)]
#[must_use]
pub fn pseudo_sum_v6(src: &[u8; 16], dst: &[u8; 16], next_header: u8, len: u32) -> u32 {
    let mut sum = 0u32;
    for w in src.chunks_exact(2).chain(dst.chunks_exact(2)) {
        if let [a, b] = w {
            sum += u32::from(u16::from_be_bytes([*a, *b]));
        }
    }
    sum + (len >> 16) + (len & 0xffff) + u32::from(next_header)
}

/// The IPv4 pseudo-header's sum: addresses, zero, protocol, transport length.
#[inline(always)]
#[must_use]
pub const fn pseudo_sum_v4(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u32 {
    u16::from_be_bytes([src[0], src[1]]) as u32
        + u16::from_be_bytes([src[2], src[3]]) as u32
        + u16::from_be_bytes([dst[0], dst[1]]) as u32
        + u16::from_be_bytes([dst[2], dst[3]]) as u32
        + proto as u32
        + len as u32
}

/// Flags of [`PacketAccess::l4_csum_replace`](crate::wire::PacketAccess::l4_csum_replace):
/// the kernel's `bpf_l4_csum_replace` flags bit for bit, so that the TC program hands them to
/// the helper unchanged.
pub mod l4_flags {
    /// The change is given as a sum difference ([`super::diff_u32`], [`super::diff_u128`]) in
    /// `to` (`from` is zero), not as a field's old and new value.
    pub const DIFF: u64 = 0;
    /// The changed field is 2 bytes (a port).
    pub const SIZE_2: u64 = 2;
    /// The changed field is 4 bytes.
    pub const SIZE_4: u64 = 4;
    /// The field's size bits.
    pub const SIZE_MASK: u64 = 0xf;
    /// The change is in the pseudo-header (an address): a partial checksum's seed covers it,
    /// so the seed changes with it (`BPF_F_PSEUDO_HDR`).
    pub const PSEUDO_HDR: u64 = 1 << 4;
    /// UDP: a zero field means "no checksum" and stays zero; a result of zero is written as
    /// `0xffff` (`BPF_F_MARK_MANGLED_0`).
    pub const MARK_MANGLED_0: u64 = 1 << 5;
    /// With [`MARK_MANGLED_0`]: update a zero field too (IPv6 UDP, where zero is not "no
    /// checksum") (`BPF_F_MARK_ENFORCE`).
    pub const MARK_ENFORCE: u64 = 1 << 6;
    /// The packet is IPv6: a pseudo-header change does not change the sum of a
    /// `CHECKSUM_COMPLETE` skb (no IP header checksum cancels it there) (`BPF_F_IPV6`).
    pub const IPV6: u64 = 1 << 7;
    /// Not a kernel flag: the datapath found the checksum partial by its field
    /// ([`crate::wire::Parsed::checksum_partial`]) where the hook cannot see the skb's state
    /// (XDP). The TC program, whose helper knows the state, never passes it on.
    pub const FOUND_PARTIAL: u64 = 1 << 63;
    /// The bits the kernel's helper takes.
    pub const KERNEL_MASK: u64 = 0xff;
}

/// The one's-complement sum difference of a 4-byte field changing from `old` to `new`
/// (`~old + new`, folded): what [`l4_flags::DIFF`] updates take.
#[inline(always)]
#[must_use]
pub const fn diff_u32(old: [u8; 4], new: [u8; 4]) -> u32 {
    !update_u32(0xffff, old, new) as u32
}

/// The sum difference of the packet's field at `at` changing to `new` (4 or 16 bytes: an
/// address), read word by word from the packet: no copy of the old field on the stack.
/// `None` if the field is outside the packet.
///
/// Not inlined: in the kernel it is a BPF subprogram of its own, whose loads of the 16 bytes
/// of an IPv6 address do not spill onto the frame of the rewrite that calls it (which is on
/// the deepest call chain of the pipeline).
#[inline(never)]
pub fn field_diff<P: crate::wire::PacketAccess + ?Sized>(
    pkt: &P,
    at: usize,
    new: &[u8],
) -> Option<u32> {
    let mut sum = 0u32;
    for (i, w) in new.chunks_exact(2).enumerate() {
        let old: [u8; 2] = pkt.load(at + 2 * i)?;
        if let [a, b] = w {
            sum += u32::from(!u16::from_be_bytes(old)) + u32::from(u16::from_be_bytes([*a, *b]));
        }
    }
    Some(u32::from(fold(sum)))
}

/// [`diff_u32`] of a 16-byte field (an IPv6 address).
#[inline(always)]
#[must_use]
pub fn diff_u128(old: [u8; 16], new: [u8; 16]) -> u32 {
    u32::from(!update_u128(0xffff, old, new))
}

/// The transport checksum field `check` after a covered field changed from `from` to `to`
/// (big-endian values of the size `flags` gives, see [`l4_flags`]; with [`l4_flags::DIFF`],
/// `to` is the sum difference): what the kernel's `bpf_l4_csum_replace` writes, for a packet
/// whose checksum is complete or, with `partial`, `CHECKSUM_PARTIAL`.
///
/// A partial checksum's field holds the sum of the pseudo-header only; the device (or the
/// stack) adds the rest when the packet leaves. So an address change moves that sum the other
/// way round from a complete checksum's update (`seed - from + to`), and a port change does
/// not touch it at all: the port is summed later, as it is then.
#[inline(always)]
#[must_use]
pub fn l4_replace(check: u16, partial: bool, from: u32, to: u32, flags: u64) -> u16 {
    let mangled_0 = flags & l4_flags::MARK_MANGLED_0 != 0;
    if mangled_0 && flags & l4_flags::MARK_ENFORCE == 0 && check == 0 {
        return 0;
    }
    let diff = match flags & l4_flags::SIZE_MASK {
        l4_flags::SIZE_4 => diff_u32(from.to_be_bytes(), to.to_be_bytes()),
        l4_flags::SIZE_2 => u32::from(!(from as u16)) + (to & 0xffff),
        _ => to,
    };
    // Branch-free in `partial` (the kernel's verifier would walk both ways of every update):
    // a complete checksum is the complement of its sum, a partial one the sum itself; a
    // partial one takes no change outside the pseudo-header.
    let keep = 0u16.wrapping_sub(u16::from(partial)); // all ones when partial
    let diff = u32::from(fold(diff));
    let diff = if flags & l4_flags::PSEUDO_HDR != 0 {
        diff
    } else {
        diff & u32::from(!keep)
    };
    let c = fold(u32::from(check ^ !keep) + diff) ^ !keep;
    if mangled_0 && c == 0 {
        0xffff
    } else {
        c
    }
}

/// Whether a TCP/UDP checksum field `check` holds its packet's pseudo-header sum
/// (`pseudo_sum`, unfolded), which is what a partial checksum (`CHECKSUM_PARTIAL`) looks like
/// on the wire of a virtual device. A complete checksum equals it with odds of about 1 in
/// 65536; the XDP hook, which cannot see the skb's state, hands such packets to TC.
#[inline(always)]
#[must_use]
pub const fn looks_partial(check: u16, pseudo_sum: u32) -> bool {
    check == fold(pseudo_sum)
}

/// Folds a 32-bit one's-complement sum and complements it: the value of a checksum field.
#[inline(always)]
#[must_use]
pub const fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// Longest span [`sum_packet`] adds up (a jumbo frame); the bound of its loop.
pub const MAX_SUM_LEN: usize = 9216;

/// One's-complement sum of `len` packet bytes from `offset`, through [`PacketAccess`]
/// (bounded loop: at most [`MAX_SUM_LEN`] bytes). `None` if the span leaves the packet or is
/// longer than the bound.
///
/// [`PacketAccess`]: crate::wire::PacketAccess
#[inline(always)]
pub fn sum_packet<P: crate::wire::PacketAccess + ?Sized>(
    pkt: &P,
    offset: usize,
    len: usize,
    initial: u32,
) -> Option<u32> {
    if len > MAX_SUM_LEN {
        return None;
    }
    let mut acc = u64::from(initial);
    let mut i = 0;
    while i + 1 < len {
        // Opaque to the optimizer: otherwise LLVM may prove the whole span in bounds once and
        // drop the per-access check, which the BPF verifier needs to see on every access.
        let w: [u8; 2] = pkt.load(core::hint::black_box(offset + i))?;
        acc += u64::from(u16::from_be_bytes(w));
        i += 2;
    }
    if i < len {
        // The odd last byte, read as the second of the pair that ends with it: LLVM turns the
        // bounds check of a one-byte read at a variable offset into `data_end > p`, from which
        // the BPF verifier learns no range (it rejects the read).
        let at = offset + i;
        let b = if at == 0 {
            pkt.load::<u8>(0)?
        } else {
            pkt.load::<[u8; 2]>(core::hint::black_box(at - 1))?[1]
        };
        acc += u64::from(u16::from_be_bytes([b, 0]));
    }
    while acc > 0xffff_ffff {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    Some(acc as u32)
}

/// TCP/UDP/ICMPv6 checksum over the IPv6 pseudo-header and `segment` (checksum field zeroed).
#[must_use]
pub fn l4_checksum_v6(src: &[u8; 16], dst: &[u8; 16], next_header: u8, segment: &[u8]) -> u16 {
    let pseudo = pseudo_sum_v6(src, dst, next_header, segment.len() as u32);
    !fold(sum(segment, pseudo))
}

/// Checksum of an IPv4 header to be emitted (`header` with its checksum field zeroed, options
/// included). Not inlined, for the same reason as [`pseudo_sum_v6`].
#[inline(never)]
#[must_use]
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    checksum(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn incremental_equals_full_recomputation(mut data in proptest::collection::vec(any::<u8>(), 8..64),
                                                  at in 0usize..3, new in any::<[u8; 4]>()) {
            let full_before = checksum(&data);
            let old: [u8; 4] = data[at * 2..at * 2 + 4].try_into().unwrap();
            data[at * 2..at * 2 + 4].copy_from_slice(&new);
            let inc = update_u32(full_before, old, new);
            let full_after = checksum(&data);
            // 0x0000 and 0xffff are the same value in one's complement.
            prop_assert!(inc == full_after || (inc ^ full_after) == 0xffff && (inc == 0 || inc == 0xffff),
                "inc {inc:#x} full {full_after:#x}");
        }
    }

    fn same(a: u16, b: u16) -> bool {
        a == b || (a ^ b) == 0xffff && (a == 0 || a == 0xffff)
    }

    proptest! {
        #[test]
        fn incremental_v6_address_equals_full(seg in proptest::collection::vec(any::<u8>(), 8..80),
                                              src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(),
                                              new in any::<[u8; 16]>()) {
            let before = l4_checksum_v6(&src, &dst, 58, &seg);
            let inc = update_u128(before, dst, new);
            prop_assert!(same(inc, l4_checksum_v6(&src, &new, 58, &seg)));
        }

        #[test]
        fn sum_packet_equals_slice_sum(mut data in proptest::collection::vec(any::<u8>(), 0..200),
                                       off in 0usize..20) {
            let off = off.min(data.len());
            let expect = sum(&data[off..], 7);
            let len = data.len() - off;
            let p = crate::wire::SlicePacket::new(&mut data);
            prop_assert_eq!(fold(sum_packet(&p, off, len, 7).unwrap()), fold(expect));
        }
    }

    #[test]
    fn udp_zero_rules() {
        assert_eq!(udp_v6_fixup(0), 0xffff);
        assert_eq!(udp_v4_fixup(0, 0x1234), 0, "IPv4 'no checksum' stays");
        assert_eq!(udp_v4_fixup(1, 0), 0xffff);
        assert!(udp_zero_allowed(false) && !udp_zero_allowed(true));
    }

    #[test]
    fn v6_pseudo_header_matches_smoltcp() {
        use smoltcp::wire::{Icmpv6Packet, Ipv6Address};
        let src = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let dst = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let mut msg = [128u8, 0, 0, 0, 0x12, 0x34, 0, 1, 1, 2, 3];
        let c = l4_checksum_v6(&src, &dst, 58, &msg);
        msg[2..4].copy_from_slice(&c.to_be_bytes());
        let p = Icmpv6Packet::new_checked(&msg[..]).unwrap();
        assert!(p.verify_checksum(&Ipv6Address::from(src), &Ipv6Address::from(dst)));
    }

    #[test]
    fn known_ipv4_header_checksum() {
        // Classic example header: checksum 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0x00,
            0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
    }
}
