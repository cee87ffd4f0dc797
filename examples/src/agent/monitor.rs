//! Drop events as the agent streams them to `lbctl monitor` (one JSON object per line), and the
//! packet headers a pcap file gets for each (the event carries the flow, not the packet: the
//! headers are rebuilt from it, enough for tshark to show who was dropped and why).

use std::net::IpAddr;

use lb_api::events::DropEvent;
use serde::{Deserialize, Serialize};

use super::pinned::ip_of;
use super::views::proto_name;

/// One drop event, as streamed and printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropView {
    /// The datapath's clock, ns.
    pub timestamp_ns: u64,
    /// The drop reason's metrics name.
    pub reason: String,
    /// The interface index it arrived on.
    pub ifindex: u32,
    /// IP protocol number.
    pub proto: u8,
    /// `tcp` / `udp` / ...
    pub proto_name: String,
    /// Source address (unspecified when the packet was not parsed that far).
    pub src: IpAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub dst_port: u16,
}

impl From<&DropEvent> for DropView {
    fn from(e: &DropEvent) -> Self {
        let family = if e.family == 6 { 6 } else { 4 };
        Self {
            timestamp_ns: e.timestamp_ns,
            reason: e.reason.name().into(),
            ifindex: e.ifindex,
            proto: e.proto,
            proto_name: proto_name(e.proto).into(),
            src: ip_of(&e.src, family),
            src_port: e.src_port,
            dst: ip_of(&e.dst, family),
            dst_port: e.dst_port,
        }
    }
}

impl DropView {
    /// The IP and transport headers of the dropped packet's flow (no payload), for a pcap file
    /// of link type RAW.
    #[must_use]
    pub fn headers(&self) -> Vec<u8> {
        use etherparse::PacketBuilder;
        let ip = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
            _ => PacketBuilder::ipv4([0; 4], [0; 4], 64),
        };
        let mut out = Vec::new();
        let res = match self.proto {
            6 => ip
                .tcp(self.src_port, self.dst_port, 0, 0)
                .write(&mut out, &[]),
            17 => ip.udp(self.src_port, self.dst_port).write(&mut out, &[]),
            _ => return out,
        };
        if res.is_err() {
            out.clear();
        }
        out
    }
}
