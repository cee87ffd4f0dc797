//! The IPv4 header checksum check: the fixed header from its copy, the options from the packet.

use crate::wire::headers::Ipv4Header;
use crate::wire::PacketAccess;

/// The folded one's-complement sum of the IPv4 header `ip` (its fixed 20 bytes, already read)
/// and of its options (`len` - 20 bytes at `l3` + 20), its checksum included: 0xffff for a
/// right header. The fixed part is summed from the copy, without touching the packet again;
/// the options, rare, in [`ipv4_options_sum`]. 0 if the options are not all there (the caller
/// checked that they are).
#[inline(always)]
pub(super) fn ipv4_header_sum<P: PacketAccess + ?Sized>(
    pkt: &P,
    ip: &Ipv4Header,
    l3: usize,
    len: usize,
) -> u16 {
    let h = ip.version_ihl;
    let mut sum = u32::from(u16::from_be_bytes([h, ip.tos]))
        + u32::from(ip.total_len.get())
        + u32::from(ip.id.get())
        + u32::from(ip.frag_off.get())
        + u32::from(u16::from_be_bytes([ip.ttl, ip.proto]))
        + u32::from(ip.check.get())
        + u32::from(u16::from_be_bytes([ip.src[0], ip.src[1]]))
        + u32::from(u16::from_be_bytes([ip.src[2], ip.src[3]]))
        + u32::from(u16::from_be_bytes([ip.dst[0], ip.dst[1]]))
        + u32::from(u16::from_be_bytes([ip.dst[2], ip.dst[3]]));
    if len > Ipv4Header::LEN {
        match ipv4_options_sum(pkt, l3 + Ipv4Header::LEN, len - Ipv4Header::LEN) {
            Some(o) => sum += o,
            None => return 0,
        }
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The sum of `len` bytes of IPv4 options (at most 40, a multiple of 4) at `at`, four bytes a
/// step. Not inlined: a BPF subprogram of its own, so that the kernel's verifier walks its loop
/// once per call, not through the rest of the parser.
#[inline(never)]
fn ipv4_options_sum<P: PacketAccess + ?Sized>(pkt: &P, at: usize, len: usize) -> Option<u32> {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 10 && i * 4 < len {
        let [a, b, c, d] = pkt.load::<[u8; 4]>(at + i * 4)?;
        sum += u32::from(u16::from_be_bytes([a, b])) + u32::from(u16::from_be_bytes([c, d]));
        i += 1;
    }
    Some(sum)
}
