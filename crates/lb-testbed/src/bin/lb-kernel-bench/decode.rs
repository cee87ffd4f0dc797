//! The independent decoder of `lb-kernel-bench --modes`: what etherparse reads in an output
//! frame (addresses, ports, the DSR carrier, the VXLAN header, with every checksum checked),
//! and what a row's output must decode to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{anyhow, bail, ensure, Context, Result};
use etherparse::{Ipv6ExtensionSlice, NetSlice, SlicedPacket, TransportSlice};

/// The VXLAN UDP port (RFC 7348) the carriers use.
pub const VXLAN_PORT: u16 = 4789;

/// A packet as etherparse decodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The service address of a DSR carrier (IPv4 option 0x9a, IPv6 destination option 0x1b).
    pub dsr: Option<SocketAddr>,
    /// The VXLAN outer headers, when the TCP packet is encapsulated.
    pub outer: Option<Outer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outer {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dst_port: u16,
    pub vni: u32,
}

/// Decodes an Ethernet frame carrying TCP, possibly VXLAN-encapsulated, checking the IPv4
/// header and TCP checksums.
pub fn decode(frame: &[u8]) -> Result<View> {
    let p = SlicedPacket::from_ethernet(frame).map_err(|e| anyhow!("etherparse: {e}"))?;
    let (src, dst, dsr) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            ensure!(
                h.to_header().calc_header_checksum() == h.header_checksum(),
                "IPv4 header checksum is wrong"
            );
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                dsr_v4(h.options())?,
            )
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            let mut dsr = None;
            for ext in ip.extensions().clone() {
                if let Ipv6ExtensionSlice::DestinationOptions(d) = ext {
                    dsr = dsr.or(dsr_v6(d.payload())?);
                }
            }
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                dsr,
            )
        }
        None => bail!("no IP header"),
    };
    match &p.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let want = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => tcp.calc_checksum_ipv4(s.octets(), d.octets()),
                (IpAddr::V6(s), IpAddr::V6(d)) => tcp.calc_checksum_ipv6(s.octets(), d.octets()),
                _ => bail!("mixed address families"),
            }
            .map_err(|e| anyhow!("TCP checksum: {e}"))?;
            ensure!(want == tcp.checksum(), "TCP checksum is wrong");
            Ok(View {
                src: SocketAddr::new(src, tcp.source_port()),
                dst: SocketAddr::new(dst, tcp.destination_port()),
                dsr,
                outer: None,
            })
        }
        Some(TransportSlice::Udp(udp)) if udp.destination_port() == VXLAN_PORT => {
            ensure!(dsr.is_none(), "a DSR carrier on a VXLAN packet");
            let vx = udp.payload();
            // IPv4: zero (none, RFC 7348) or right; IPv6: right, and zero is invalid.
            let sum = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    udp.to_header()
                        .calc_checksum_ipv4_raw(s.octets(), d.octets(), vx)
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    udp.to_header()
                        .calc_checksum_ipv6_raw(s.octets(), d.octets(), vx)
                }
                _ => bail!("mixed address families"),
            }
            .map_err(|e| anyhow!("outer UDP checksum: {e}"))?;
            ensure!(
                udp.checksum() == sum || (udp.checksum() == 0 && src.is_ipv4()),
                "outer UDP checksum {:#06x}, expected {sum:#06x}",
                udp.checksum()
            );
            ensure!(
                vx.len() >= 8 && vx[0] == 0x08,
                "VXLAN header without the I flag"
            );
            let mut inner = decode(&vx[8..]).context("inner frame")?;
            ensure!(inner.outer.is_none(), "VXLAN in VXLAN");
            inner.outer = Some(Outer {
                src,
                dst,
                dst_port: udp.destination_port(),
                vni: u32::from_be_bytes([0, vx[4], vx[5], vx[6]]),
            });
            Ok(inner)
        }
        other => bail!("neither TCP nor VXLAN: {other:?}"),
    }
}

/// The DSR target in IPv4 options: type 0x9a, length 8, port, address.
fn dsr_v4(opts: &[u8]) -> Result<Option<SocketAddr>> {
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => break,
            1 => i += 1,
            t => {
                let len = usize::from(*opts.get(i + 1).context("truncated IPv4 option")?);
                let o = opts
                    .get(i..i + len)
                    .context("IPv4 option past the header")?;
                ensure!(len >= 2, "IPv4 option of length {len}");
                if t == 0x9a {
                    ensure!(len == 8, "DSR option of length {len}");
                    let ip = Ipv4Addr::new(o[4], o[5], o[6], o[7]);
                    return Ok(Some(SocketAddr::new(
                        ip.into(),
                        u16::from_be_bytes([o[2], o[3]]),
                    )));
                }
                i += len;
            }
        }
    }
    Ok(None)
}

/// The DSR target in an IPv6 destination options header's options: type 0x1b, length 20,
/// address, port.
fn dsr_v6(opts: &[u8]) -> Result<Option<SocketAddr>> {
    let mut i = 0;
    while i < opts.len() {
        if opts[i] == 0 {
            i += 1;
            continue;
        }
        let len = usize::from(*opts.get(i + 1).context("truncated IPv6 option")?);
        let o = opts
            .get(i + 2..i + 2 + len)
            .context("IPv6 option past its header")?;
        if opts[i] == 0x1b {
            ensure!(len == 20, "DSR option of length {len}");
            let mut a = [0u8; 16];
            a.copy_from_slice(&o[..16]);
            return Ok(Some(SocketAddr::new(
                Ipv6Addr::from(a).into(),
                u16::from_be_bytes([o[16], o[17]]),
            )));
        }
        i += 2 + len;
    }
    Ok(None)
}

/// What a row's output must decode to.
pub struct Want {
    pub src: SocketAddr,
    /// With a source port the kernel draws at random (a SNAT port outside the client's own):
    /// the range the source port must lie in, instead of `src`'s port.
    pub src_ports: Option<(u16, u16)>,
    /// The destination: one of these (a new flow's backend is picked by hash).
    pub dst: Vec<SocketAddr>,
    pub dsr: Option<SocketAddr>,
    pub outer: Option<Outer>,
}

impl Want {
    pub fn check(&self, v: &View) -> Result<()> {
        let src_ok = match self.src_ports {
            None => v.src == self.src,
            Some((lo, hi)) => v.src.ip() == self.src.ip() && (lo..=hi).contains(&v.src.port()),
        };
        ensure!(
            src_ok && self.dst.contains(&v.dst) && v.dsr == self.dsr && v.outer == self.outer,
            "output {v:?}, expected src {} (port range {:?}), dst one of {:?}, DSR carrier {:?}, \
             outer {:?}",
            self.src,
            self.src_ports,
            self.dst,
            self.dsr,
            self.outer
        );
        Ok(())
    }
}
