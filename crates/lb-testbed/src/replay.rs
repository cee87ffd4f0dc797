//! The kernel datapath against the userspace engine on real traffic: the frames node-1's
//! programs received during a scenario, captured on node-1's bridge port in the order the bridge
//! delivered them, are replayed through an [`Engine`] set up like node-1
//! ([`crate::modes::engine_like`]); what the engine makes of them must be, byte for byte, what
//! node-1 put back on the LAN, and the engine must count what node-1's programs counted.
//!
//! What node-1's programs pass (`XDP_PASS`) its stack forwards, which lowers the outermost IP
//! header's TTL or hop limit by one (updating the IPv4 header checksum) and sets the Ethernet
//! addresses: the comparison applies the former to the engine's output and ignores the latter.
//! What the programs send back (`XDP_TX`, an ICMP too-big) leaves as they made it.
//!
//! Only frames the datapath acts on are compared: IP frames carrying TCP or UDP (VXLAN too) and
//! ICMP too-big errors; the rest (ARP, neighbour discovery, echo) the datapath passes untouched
//! to the stack, which answers them itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lb_api::counters::{Counter, CounterSnapshot, DropReason};
use lb_api::Verdict;
use lb_datapath::engine::Engine;

use crate::capture::RawFrame;
use crate::netns::{within, NodeChecksums};

/// A port nothing listens on in a node's namespace (discard).
const CLOSED_PORT: u16 = 9;

/// The counters a scenario's differential compares: those of translations and drops, which only
/// the scenario's packets move (the pass counters also move with the pod link's own chatter).
const COMPARED: [Counter; 10] = [
    Counter::ServiceNewFlow,
    Counter::ServiceEstablished,
    Counter::ReplyTranslated,
    Counter::Dropped,
    Counter::SourcePortRewritten,
    Counter::MtuExceeded,
    Counter::TunnelDecapsulated,
    Counter::TunnelEncapsulated,
    Counter::DsrCarrierAdded,
    Counter::BackendSideNewFlow,
];

const ETH_LEN: usize = 14;

/// From namespace `ns`, sends a UDP datagram to a closed port of `node` and waits (at most
/// `timeout`) for the node's refusal (ICMP port unreachable). The node sends it after whatever it
/// forwarded of the frames it received before the datagram, in order on one link: once the
/// refusal is back, a capture on that link holds the node's output for everything sent before.
/// A barrier that depends on no clock.
///
/// # Errors
/// If no refusal comes (a datagram answered, or nothing within `timeout`).
pub fn barrier(ns: &str, node: IpAddr, timeout: Duration) -> Result<()> {
    within(ns, || -> Result<()> {
        let any: IpAddr = if node.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        let sock = UdpSocket::bind(SocketAddr::new(any, 0)).context("barrier socket")?;
        sock.connect(SocketAddr::new(node, CLOSED_PORT))?;
        sock.set_read_timeout(Some(timeout))?;
        sock.send(b"barrier")?;
        let mut buf = [0u8; 64];
        match sock.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => bail!("no refusal from {node}:{CLOSED_PORT}: {e}"),
            Ok(_) => bail!("{node}:{CLOSED_PORT} answered: it is not closed"),
        }
    })?
}

/// The outermost IP protocol of an Ethernet frame without VLAN tags, and the offset of its IP
/// header.
fn ip_proto(frame: &[u8]) -> Option<(u8, usize)> {
    match u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) {
        0x0800 => Some((*frame.get(ETH_LEN + 9)?, ETH_LEN)),
        0x86dd => Some((*frame.get(ETH_LEN + 6)?, ETH_LEN)),
        _ => None,
    }
}

/// Whether the datapath acts on `frame`: TCP, UDP, or an ICMP too-big (IPv4 type 3 code 4,
/// ICMPv6 type 2). IPv6 extension headers are not followed: a DSR destination option counts as
/// acted on (its next header is what the scenarios carry).
#[must_use]
pub fn of_interest(frame: &[u8]) -> bool {
    let Some((proto, l3)) = ip_proto(frame) else {
        return false;
    };
    match proto {
        6 | 17 | 60 => true,
        1 => {
            let ihl = usize::from(frame.get(l3).map_or(0, |b| b & 0x0f)) * 4;
            frame.get(l3 + ihl) == Some(&3) && frame.get(l3 + ihl + 1) == Some(&4)
        }
        58 => frame.get(l3 + 40) == Some(&2),
        _ => false,
    }
}

/// `frame` as a router forwards it: outermost TTL / hop limit one lower, IPv4 header checksum
/// recomputed.
#[must_use]
pub fn forwarded(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    match u16::from_be_bytes([
        f.get(12).copied().unwrap_or(0),
        f.get(13).copied().unwrap_or(0),
    ]) {
        0x0800 => {
            let ihl = usize::from(f.get(ETH_LEN).map_or(0, |b| b & 0x0f)) * 4;
            if let Some(ttl) = f.get_mut(ETH_LEN + 8) {
                *ttl = ttl.saturating_sub(1);
            }
            if let Some(check) = f.get_mut(ETH_LEN + 10..ETH_LEN + 12) {
                check.copy_from_slice(&[0, 0]);
            }
            if let Some(header) = f.get(ETH_LEN..ETH_LEN + ihl) {
                let sum = internet_checksum(header).to_be_bytes();
                if let Some(check) = f.get_mut(ETH_LEN + 10..ETH_LEN + 12) {
                    check.copy_from_slice(&sum);
                }
            }
        }
        0x86dd => {
            if let Some(hop) = f.get_mut(ETH_LEN + 7) {
                *hop = hop.saturating_sub(1);
            }
        }
        _ => {}
    }
    f
}

/// RFC 1071 checksum of `bytes` (an independent oracle: not the datapath's own code).
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Completes the partial transport checksum of `frame` as a device without checksum offload
/// does ([`testing::complete_partial_checksum`]), of its innermost packet: a VXLAN packet (UDP to
/// 4789) carries the partial checksum's packet inside (its outer checksum was made for the
/// inner one as it will be).
fn complete_partial_checksum(frame: &mut [u8]) {
    use lb_api::wire::{parse, testing, SlicePacket};
    let Ok(p) = parse(&SlicePacket::new(frame)) else {
        return;
    };
    let inner = if p.tuple.proto == 17 && p.tuple.dst_port == lb_encap::VXLAN_PORT {
        p.l4_offset + 8 + lb_encap::VxlanHeader::LEN
    } else {
        0
    };
    if let Some(f) = frame.get_mut(inner..) {
        testing::complete_partial_checksum(f);
    }
}

/// The frame without its Ethernet addresses (the stack sets them when it forwards).
fn without_macs(frame: &[u8]) -> &[u8] {
    frame.get(12..).unwrap_or_default()
}

/// Replays node-1's captured input (`frames` with `outgoing` set: what the bridge sent node-1)
/// through `engine` and compares its outputs with node-1's (the others) and its counters with
/// `kernel`, node-1's counters over the same time. `node_checksums` says whether node-1's LAN
/// device completes the partial checksums of what it sends on (as the capture then shows them)
/// or passes them on as they are (the kernel's default offload).
///
/// # Errors
/// The first difference, with both frames in hex, or the counters that differ.
pub fn compare(
    engine: &mut Engine,
    frames: &[RawFrame],
    kernel: (&CounterSnapshot, &CounterSnapshot),
    node_checksums: NodeChecksums,
) -> Result<String, String> {
    let engine_before = *engine.counters();
    let mut expected = Vec::new();
    let mut inputs = 0usize;
    for f in frames.iter().filter(|f| f.outgoing) {
        let mut pkt = f.bytes.clone();
        let partial_before = engine.counters().get(Counter::ChecksumPartialAtXdp);
        let verdict = engine.process(&mut pkt);
        // A partial checksum (the client's, with the default offload) of a packet node-1
        // sends on leaves completed when its LAN device completes checksums in software, and
        // as it is with the default offload. A packet passed untouched goes to the stack as it
        // came.
        if node_checksums == NodeChecksums::Software
            && engine.counters().get(Counter::ChecksumPartialAtXdp) > partial_before
            && pkt != f.bytes
        {
            complete_partial_checksum(&mut pkt);
        }
        if !of_interest(&f.bytes) {
            continue;
        }
        inputs += 1;
        match verdict {
            // Passed untouched: the stack decides (it delivers or drops what is not translated).
            Verdict::Pass if pkt == f.bytes => {}
            Verdict::Pass => expected.push((forwarded(&pkt), "passed and forwarded")),
            Verdict::Tx => expected.push((pkt, "sent back")),
            Verdict::Drop => {}
        }
    }
    let observed: Vec<&[u8]> = frames
        .iter()
        .filter(|f| !f.outgoing && of_interest(&f.bytes))
        .map(|f| f.bytes.as_slice())
        .collect();
    for (i, ((want, how), got)) in expected.iter().zip(&observed).enumerate() {
        if without_macs(want) != without_macs(got) {
            return Err(format!(
                "frame {i} node-1 sent differs from the engine's ({how}):\n  kernel {}\n  engine {}",
                hex(got),
                hex(want)
            ));
        }
    }
    if expected.len() != observed.len() {
        return Err(format!(
            "node-1 sent {} frames of {inputs} it received, the engine {}; the first {} agree",
            observed.len(),
            expected.len(),
            expected.len().min(observed.len())
        ));
    }
    let mut differ = Vec::new();
    let engine_after = engine.counters();
    for c in COMPARED {
        let k = kernel.1.get(c).saturating_sub(kernel.0.get(c));
        let e = engine_after.get(c).saturating_sub(engine_before.get(c));
        if k != e {
            differ.push(format!("{} kernel {k} engine {e}", c.name()));
        }
    }
    for r in DropReason::ALL {
        let k = kernel.1.drops(r).saturating_sub(kernel.0.drops(r));
        let e = engine_after.drops(r).saturating_sub(engine_before.drops(r));
        if k != e {
            differ.push(format!("drop:{} kernel {k} engine {e}", r.name()));
        }
    }
    if !differ.is_empty() {
        return Err(format!(
            "the frames agree, the counters do not: {}",
            differ.join(", ")
        ));
    }
    if inputs == 0 {
        return Err("no frame of the scenario reached node-1".into());
    }
    Ok(format!(
        "{inputs} frames in, {} out, identical; counters agree",
        observed.len()
    ))
}

fn hex(b: &[u8]) -> String {
    let shown: String = b.iter().take(160).map(|x| format!("{x:02x}")).collect();
    if b.len() > 160 {
        format!("{shown}... ({} bytes)", b.len())
    } else {
        format!("{shown} ({} bytes)", b.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ethernet + IPv4 (TTL 64) + UDP, with a valid header checksum.
    fn udp_v4() -> Vec<u8> {
        let mut f = vec![0xaa; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0];
        ip.extend_from_slice(&[10, 210, 0, 10, 10, 96, 0, 10]);
        let c = internet_checksum(&ip).to_be_bytes();
        ip[10..12].copy_from_slice(&c);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0x9c, 0x40, 0, 80, 0, 8, 0, 0]);
        f
    }

    #[test]
    fn forwarding_lowers_the_ttl_and_keeps_the_ipv4_header_valid() {
        let f = forwarded(&udp_v4());
        assert_eq!(f[ETH_LEN + 8], 63);
        assert_eq!(internet_checksum(&f[ETH_LEN..ETH_LEN + 20]), 0);
        assert_eq!(f[ETH_LEN + 20..], udp_v4()[ETH_LEN + 20..]);
    }

    /// The comparison on frames it can judge without a kernel: node-1's input is a SYN to the
    /// VIP, its "output" what an identical engine made of it (agrees), the SYN untranslated
    /// (differs), or nothing (missing).
    #[test]
    fn the_comparison_accepts_the_engine_s_own_output_and_nothing_else() {
        use crate::testbed::{BACKENDS, BACKEND_PORT, CLIENT, VIP, VIP_PORT};
        use lb_api::flow::L4Proto;
        use lb_control::ServiceSpec;
        use std::net::SocketAddr;

        // The single-node scenario's service (`examples/src/scenario.rs`).
        let service = || ServiceSpec {
            id: 1,
            frontend: SocketAddr::from((VIP, VIP_PORT)),
            proto: L4Proto::Tcp,
            backends: BACKENDS
                .iter()
                .map(|b| SocketAddr::from((*b, BACKEND_PORT)).into())
                .collect(),
            ..Default::default()
        };
        use lb_api::wire::testing::tcp_v4_frame;
        use lb_api::wire::TcpFlags;

        let engine = || {
            let mut e = Engine::new(64);
            e.upsert_service(&service()).unwrap();
            e
        };
        let syn = tcp_v4_frame(
            CLIENT.octets(),
            40000,
            VIP.octets(),
            VIP_PORT,
            TcpFlags::SYN,
            b"",
        );
        let mut kernel = engine();
        let mut out = syn.clone();
        assert_eq!(kernel.process(&mut out), Verdict::Pass);
        assert_ne!(out, syn, "the SYN to the VIP is translated");
        let counted = (&CounterSnapshot::default(), kernel.counters());
        let input = RawFrame {
            outgoing: true,
            bytes: syn.clone(),
        };
        let output = |bytes: Vec<u8>| RawFrame {
            outgoing: false,
            bytes,
        };

        let same = [input.clone(), output(forwarded(&out))];
        let ok = compare(&mut engine(), &same, counted, NodeChecksums::Offload).unwrap();
        assert!(ok.contains("1 frames in, 1 out"), "{ok}");

        let untranslated = [input.clone(), output(forwarded(&syn))];
        let e = compare(
            &mut engine(),
            &untranslated,
            counted,
            NodeChecksums::Offload,
        )
        .unwrap_err();
        assert!(e.contains("differs"), "{e}");

        let not_forwarded = [input.clone(), output(out.clone())];
        let e = compare(
            &mut engine(),
            &not_forwarded,
            counted,
            NodeChecksums::Offload,
        )
        .unwrap_err();
        assert!(e.contains("differs"), "the TTL is not lowered: {e}");

        let e = compare(
            &mut engine(),
            std::slice::from_ref(&input),
            counted,
            NodeChecksums::Offload,
        )
        .unwrap_err();
        assert!(e.contains("node-1 sent 0 frames"), "{e}");

        let nothing_counted = (&CounterSnapshot::default(), &CounterSnapshot::default());
        let e = compare(
            &mut engine(),
            &same,
            nothing_counted,
            NodeChecksums::Offload,
        )
        .unwrap_err();
        assert!(e.contains("service_new_flow kernel 0 engine 1"), "{e}");
    }

    #[test]
    fn the_datapath_acts_on_tcp_udp_and_too_big_errors_only() {
        assert!(of_interest(&udp_v4()));
        let mut icmp = udp_v4();
        icmp[ETH_LEN + 9] = 1;
        icmp[ETH_LEN + 20] = 3;
        icmp[ETH_LEN + 21] = 4;
        assert!(of_interest(&icmp));
        icmp[ETH_LEN + 20] = 0; // echo reply
        assert!(!of_interest(&icmp));
        let mut arp = udp_v4();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(!of_interest(&arp));
    }
}
