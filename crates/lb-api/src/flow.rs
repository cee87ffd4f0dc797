//! Flow identity: the 5-tuple every layer keys on, address families, protocols and the flow hash.

/// Address family of a tuple or key. IPv4 addresses occupy the first 4 bytes of a 16-byte address
/// field and the remaining 12 bytes are zero, so one key layout serves both families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum IpFamily {
    /// IPv4.
    V4 = 4,
    /// IPv6.
    V6 = 6,
}

/// IP protocol numbers the datapath distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum L4Proto {
    /// ICMP for IPv4.
    Icmp = 1,
    /// TCP.
    Tcp = 6,
    /// UDP.
    Udp = 17,
    /// ICMPv6.
    Icmpv6 = 58,
}

impl L4Proto {
    /// The protocol for an IP protocol number, if the datapath knows it.
    #[must_use]
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Icmp),
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            58 => Some(Self::Icmpv6),
            _ => None,
        }
    }
}

/// A 16-byte address field holding an IPv4 address in its first 4 bytes.
#[inline(always)]
#[must_use]
pub const fn v4_addr(a: [u8; 4]) -> [u8; 16] {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// The IPv4 address stored in the first 4 bytes of a 16-byte address field.
#[inline(always)]
#[must_use]
pub const fn v4_of(a: &[u8; 16]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}

/// The 5-tuple of a packet as parsed: addresses, ports (host order), protocol and family.
///
/// For protocols without ports (ICMP echo, generic IP) the ports carry the protocol's own
/// identifier or zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C, align(8))]
pub struct FlowTuple {
    /// Source address (see [`IpFamily`] for the IPv4 layout).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port, host byte order.
    pub src_port: u16,
    /// Destination port, host byte order.
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// [`IpFamily`] as its `u8` value.
    pub family: u8,
}

impl FlowTuple {
    /// The tuple of the reply direction: addresses and ports swapped.
    #[inline(always)]
    #[must_use]
    pub const fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            proto: self.proto,
            family: self.family,
        }
    }

    /// A 32-bit hash of the tuple, seeded, identical in userspace and in the kernel.
    ///
    /// Used to pick a backend (`hash % backend_count`) and, for VXLAN, the outer source port.
    /// It is a multiply-xorshift mix (murmur3's finalizer) over the tuple's 32-bit words: cheap,
    /// branch-free, and with a fixed number of steps, which the verifier needs.
    ///
    /// Not inlined: inlined, LLVM hoists the tuple's byte loads to the top of the caller and keeps
    /// them alive across its helper calls, spilling each onto the 512-byte BPF stack.
    #[inline(never)]
    #[must_use]
    pub fn hash(&self, seed: u32) -> u32 {
        let mut h = seed ^ 0x9e37_79b9;
        let mut i = 0;
        while i < 4 {
            let j = i * 4;
            // `j + 3 < 16` for every `i < 4`, so these indexes are in bounds; written with
            // `get` to keep the function free of panics.
            let s = word(&self.src, j);
            let d = word(&self.dst, j);
            h = mix(h ^ s);
            h = mix(h ^ d);
            i += 1;
        }
        h = mix(h ^ ((u32::from(self.src_port) << 16) | u32::from(self.dst_port)));
        h = mix(h ^ ((u32::from(self.proto) << 8) | u32::from(self.family)));
        h
    }
}

#[inline(always)]
fn word(a: &[u8; 16], j: usize) -> u32 {
    let b = |k: usize| u32::from(a.get(j + k).copied().unwrap_or(0));
    (b(0) << 24) | (b(1) << 16) | (b(2) << 8) | b(3)
}

#[inline(always)]
const fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(sport: u16) -> FlowTuple {
        FlowTuple {
            src: v4_addr([10, 0, 0, 1]),
            dst: v4_addr([10, 96, 0, 10]),
            src_port: sport,
            dst_port: 80,
            proto: 6,
            family: 4,
        }
    }

    #[test]
    fn reversed_twice_is_identity() {
        assert_eq!(t(1234).reversed().reversed(), t(1234));
        assert_ne!(t(1234).reversed(), t(1234));
    }

    #[test]
    fn hash_spreads_source_ports_evenly_over_two_buckets() {
        let mut buckets = [0u32; 2];
        for p in 1024..3072u16 {
            buckets[(t(p).hash(7) % 2) as usize] += 1;
        }
        // 2048 flows: a fair split is 1024 each; allow 10 %.
        assert!(buckets[0].abs_diff(buckets[1]) < 205, "{buckets:?}");
    }

    #[test]
    fn hash_depends_on_seed() {
        assert_ne!(t(1).hash(1), t(1).hash(2));
    }
}
