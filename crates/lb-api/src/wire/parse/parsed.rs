//! What a parse found: offsets, the flow tuple, TCP and ICMP details, fragments ([`Parsed`]).

use super::MAX_VLAN_TAGS;
use crate::flow::{FlowTuple, IpFamily};

/// Whether, and which part of, a fragmented datagram a packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Fragment {
    /// Not a fragment.
    #[default]
    None = 0,
    /// The first fragment (offset 0, more to come): it carries the transport header.
    First = 1,
    /// A later fragment: no transport header, ports unknown (zero in the tuple).
    Later = 2,
}

/// ICMP details of an ICMPv4/ICMPv6 packet (all zero for other protocols).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IcmpInfo {
    /// Message type.
    pub ty: u8,
    /// Message code.
    pub code: u8,
    /// Offset of the quoted (inner) IP header of an error message, zero for other messages.
    /// [`quoted_tuple`](super::quoted_tuple) parses it.
    pub quote_offset: u16,
}

/// Offsets and identity of a parsed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// The packet's 5-tuple. Ports are zero for protocols without ports and for later fragments;
    /// ICMP echo requests and replies carry their identifier in both ports.
    pub tuple: FlowTuple,
    /// Offset of the IP header.
    pub l3_offset: usize,
    /// Offset of the transport header (for a later fragment: of the fragment's payload).
    pub l4_offset: usize,
    /// TCP flags (zero for other protocols).
    pub tcp_flags: u8,
    /// TCP sequence number (zero for other protocols).
    pub tcp_seq: u32,
    /// TCP: the sequence number just past this segment (its data, SYN and FIN each count),
    /// netfilter's `td_end`. Zero for other protocols.
    pub tcp_seq_end: u32,
    /// Tag control information of the VLAN tags, outermost first (`vlan_count` are valid).
    pub vlan_tci: [u16; MAX_VLAN_TAGS],
    /// How many VLAN tags the frame carries (0..=2).
    pub vlan_count: u8,
    /// Length of the IP packet (IPv4 total length; IPv6 40 + payload length).
    pub ip_len: u16,
    /// Fragment position.
    pub fragment: Fragment,
    /// ICMP type, code and quote offset.
    pub icmp: IcmpInfo,
    /// Offset of the first IPv6 destination options header (DSR carrier), zero if none.
    pub ipv6_dest_opts: u16,
    /// The transport checksum is partial (`CHECKSUM_PARTIAL`), as the datapath found by the
    /// field where the hook cannot see the skb's state (see
    /// [`PacketAccess::partial_by_field`](crate::wire::PacketAccess::partial_by_field)). The parser
    /// leaves it `false`; rewrites pass it on to the checksum updates.
    pub checksum_partial: bool,
    /// IPv4: the header's folded one's-complement sum, its checksum included (0xffff when the
    /// checksum is right; 0 for IPv6). The parser checks it after reading it back from here:
    /// in the kernel the parse result lives in map memory, and a value read from there does
    /// not make the verifier track the header fields it came from precisely (compared where it
    /// was computed, it took the first stage past its million instructions).
    pub ipv4_header_sum: u16,
    /// The packet's GSO segment size
    /// ([`PacketAccess::gso_size`](crate::wire::PacketAccess::gso_size); zero: not a GSO
    /// packet), as the datapath noted it for its MTU decisions. The parser leaves it zero.
    pub gso_size: u16,
}

impl Parsed {
    /// A value to parse into (see [`parse_into`](super::parse_into)).
    pub const EMPTY: Parsed = Parsed {
        tuple: FlowTuple {
            src: [0; 16],
            dst: [0; 16],
            src_port: 0,
            dst_port: 0,
            proto: 0,
            family: 0,
        },
        l3_offset: 0,
        l4_offset: 0,
        tcp_flags: 0,
        tcp_seq: 0,
        tcp_seq_end: 0,
        vlan_tci: [0; MAX_VLAN_TAGS],
        vlan_count: 0,
        ip_len: 0,
        fragment: Fragment::None,
        icmp: IcmpInfo {
            ty: 0,
            code: 0,
            quote_offset: 0,
        },
        ipv6_dest_opts: 0,
        checksum_partial: false,
        ipv4_header_sum: 0,
        gso_size: 0,
    };

    /// The address family of the packet.
    #[inline(always)]
    #[must_use]
    pub const fn family(&self) -> IpFamily {
        if self.tuple.family == IpFamily::V6 as u8 {
            IpFamily::V6
        } else {
            IpFamily::V4
        }
    }
}
