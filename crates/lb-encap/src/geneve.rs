//! Geneve (RFC 8926): an 8-byte base header, then TLV options, then the inner Ethernet frame.
//!
//! **Not run by the datapath yet.** The node-to-node tunnel of the pipeline (kernel and engine)
//! is VXLAN ([`vxlan_encap_offloaded`](crate::vxlan_encap_offloaded),
//! [`vxlan_decap_parsed`](crate::vxlan_decap_parsed)), and its DSR carriers are the IP options
//! of [`crate::dsr`]. This module is the Geneve carrier that DESIGN.md lists for interoperating
//! with Cilium (the DSR option travels in [`GeneveOption`]s and comes back as
//! [`GeneveInfo::dsr`]): an encoder and decoder written against [`AdjustHead`] like the VXLAN
//! ones, so the eBPF programs can run them unchanged, and checked by tshark and etherparse
//! (`tests/tshark.rs`, `tests/carriers.rs`) and by the `encap_roundtrip` fuzz target. Wiring
//! Geneve into the pipeline is future work.

use lb_api::wire::{parse, Fragment, UdpHeader};
use zerocopy::network_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::dsr::{DsrTarget, DSR_GENEVE_CLASS, DSR_GENEVE_TYPE};
use crate::tunnel::{
    push_udp_tunnel, strip_tunnel, AdjustHead, DecapError, EncapError, TunnelConfig,
};

/// IANA UDP port of Geneve.
pub const GENEVE_PORT: u16 = 6081;
/// Protocol type of an inner Ethernet frame (Transparent Ethernet Bridging).
pub const ETH_P_TEB: u16 = 0x6558;
/// Longest options area the header can announce (6-bit length in 4-byte words).
pub const MAX_OPTIONS_LEN: usize = 63 * 4;

/// Geneve base header.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct GeneveHeader {
    /// Version (2 bits, 0) and options length in 4-byte words (6 bits).
    pub ver_opt_len: u8,
    /// O (control packet, 0x80) and C (critical options present, 0x40) flags.
    pub flags: u8,
    /// Protocol type of the payload.
    pub protocol: U16,
    /// VNI (24 bits) and a reserved byte.
    pub vni_reserved: [u8; 4],
}

impl GeneveHeader {
    /// Size on the wire.
    pub const LEN: usize = 8;

    /// Options length in bytes.
    #[must_use]
    pub const fn options_len(&self) -> usize {
        (self.ver_opt_len & 0x3f) as usize * 4
    }

    /// The 24-bit VNI.
    #[must_use]
    pub const fn vni(&self) -> u32 {
        u32::from_be_bytes([
            0,
            self.vni_reserved[0],
            self.vni_reserved[1],
            self.vni_reserved[2],
        ])
    }
}

/// One Geneve option: class, type and data (a multiple of 4 bytes, at most 124).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneveOption<'a> {
    /// Option class (who defines the type).
    pub class: u16,
    /// Type (high bit: critical).
    pub ty: u8,
    /// Data, a multiple of 4 bytes.
    pub data: &'a [u8],
}

/// The critical bit of an option type: a receiver that does not know the option must drop the
/// packet (RFC 8926).
pub const GENEVE_OPT_TYPE_CRITICAL: u8 = 0x80;
/// The header's C flag: critical options are present.
pub const GENEVE_F_CRITICAL: u8 = 0x40;

/// At most this many options are written or scanned (loops are bounded).
pub const MAX_OPTIONS: usize = 8;

fn options_len(options: &[GeneveOption<'_>]) -> Option<usize> {
    let mut total = 0usize;
    for o in options.iter().take(MAX_OPTIONS) {
        if o.data.len() % 4 != 0 || o.data.len() > 124 {
            return None;
        }
        total += 4 + o.data.len();
    }
    if options.len() > MAX_OPTIONS || total > MAX_OPTIONS_LEN {
        return None;
    }
    Some(total)
}

/// Encapsulates the Ethernet frame in `pkt` in Geneve with `options`.
///
/// # Errors
/// [`EncapError::Malformed`] for options that cannot be encoded (data not a multiple of 4,
/// too long, more than [`MAX_OPTIONS`]); otherwise as [`crate::vxlan_encap`].
pub fn geneve_encap<P: AdjustHead + ?Sized>(
    pkt: &mut P,
    cfg: &TunnelConfig,
    options: &[GeneveOption<'_>],
    flow_hash: u32,
) -> Result<(), EncapError> {
    let opt_len = options_len(options).ok_or(EncapError::Malformed)?;
    // RFC 8926: the C flag says that an option with the critical bit in its type follows.
    let critical = options
        .iter()
        .take(MAX_OPTIONS)
        .any(|o| o.ty & GENEVE_OPT_TYPE_CRITICAL != 0);
    let flags = if critical { GENEVE_F_CRITICAL } else { 0 };
    let wire = crate::mtu::frame_on_wire(pkt);
    push_udp_tunnel(
        pkt,
        cfg,
        GeneveHeader::LEN + opt_len,
        flow_hash,
        wire,
        None,
        |pkt, at| {
            let v = cfg.vni.to_be_bytes();
            pkt.store(
                at,
                &GeneveHeader {
                    ver_opt_len: (opt_len / 4) as u8,
                    flags,
                    protocol: U16::new(ETH_P_TEB),
                    vni_reserved: [v[1], v[2], v[3], 0],
                },
            )?;
            let mut off = at + GeneveHeader::LEN;
            for o in options.iter().take(MAX_OPTIONS) {
                let c = o.class.to_be_bytes();
                pkt.store(off, &[c[0], c[1], o.ty, (o.data.len() / 4) as u8])?;
                off += 4;
                for w in o.data.chunks_exact(4) {
                    let w: [u8; 4] = w.try_into().ok()?;
                    pkt.store(off, &w)?;
                    off += 4;
                }
            }
            Some(())
        },
    )
}

/// What a Geneve decapsulation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneveInfo {
    /// The VNI.
    pub vni: u32,
    /// The DSR option's service address, if the packet carried one.
    pub dsr: Option<DsrTarget>,
}

/// Removes the outer headers and Geneve header (with options) of a packet to UDP `port`,
/// returning the VNI and the DSR option if present.
///
/// # Errors
/// As [`crate::vxlan_decap`]; [`DecapError::BadFlags`] for a version other than 0 or a payload
/// that is not Ethernet.
pub fn geneve_decap<P: AdjustHead + ?Sized>(
    pkt: &mut P,
    port: u16,
) -> Result<GeneveInfo, DecapError> {
    let p = parse(pkt).map_err(DecapError::Parse)?;
    if p.tuple.proto != 17 || p.tuple.dst_port != port || p.fragment != Fragment::None {
        return Err(DecapError::NotTunnel);
    }
    let at = p.l4_offset + UdpHeader::LEN;
    let h: GeneveHeader = pkt.load(at).ok_or(DecapError::NotTunnel)?;
    if h.ver_opt_len >> 6 != 0 || h.protocol.get() != ETH_P_TEB {
        return Err(DecapError::BadFlags);
    }
    let opts_end = at + GeneveHeader::LEN + h.options_len();
    let mut dsr = None;
    let mut off = at + GeneveHeader::LEN;
    let mut i = 0;
    while i < MAX_OPTIONS && off < opts_end {
        let oh: [u8; 4] = pkt.load(off).ok_or(DecapError::NotTunnel)?;
        let len = usize::from(oh[3] & 0x1f) * 4;
        if u16::from_be_bytes([oh[0], oh[1]]) == DSR_GENEVE_CLASS && oh[2] == DSR_GENEVE_TYPE {
            dsr = DsrTarget::from_geneve_data(pkt, off + 4, len);
        }
        off += 4 + len;
        i += 1;
    }
    if off != opts_end || pkt.len() < opts_end + lb_api::wire::EthernetHeader::LEN {
        return Err(DecapError::NotTunnel);
    }
    strip_tunnel(pkt, opts_end)?;
    Ok(GeneveInfo { vni: h.vni(), dsr })
}
