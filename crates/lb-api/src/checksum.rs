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
