//! What `lbctl` prints: flows (both conntrack halves as one), SNAT translations, services with
//! their backends, counters; each serializable as JSON and printable as a table.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use lb_api::abi::{
    BackendKey, BackendValue, CtEntry, CtKey, CtKind, CtState, ServiceKey, ServiceValue, CT_F_DSR,
    CT_F_SNAT, CT_F_SRC_PORT_REWRITTEN, CT_F_TUNNEL, SVC_F_LOCAL, SVC_F_MAGLEV,
};
use lb_api::counters::{Counter, CounterSnapshot, DropReason};
use serde::Serialize;

use super::pinned::{ip_of, sock};

/// The protocol's name.
#[must_use]
pub fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        58 => "icmpv6",
        _ => "other",
    }
}

/// A conntrack state's name (`Established`), or `"-"` for an unknown value.
#[must_use]
pub fn state_name(s: u8) -> String {
    CtState::from_u8(s).map_or_else(|| "-".into(), |s| format!("{s:?}"))
}

/// One flow: its service entry and its reverse-NAT entry, shown together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowView {
    /// `tcp` / `udp` / ...
    pub proto: &'static str,
    /// The client's address and port.
    pub client: SocketAddr,
    /// The frontend the client connected to.
    pub service: SocketAddr,
    /// The backend chosen.
    pub backend: SocketAddr,
    /// The client's source as the backend sees it (after SNAT or a source-port rewrite).
    pub translated_source: Option<SocketAddr>,
    /// Conntrack state.
    pub state: String,
    /// Service id.
    pub service_id: u32,
    /// Backend id.
    pub backend_id: u32,
    /// Packets client → service.
    pub packets_orig: u32,
    /// Packets backend → client.
    pub packets_reply: u32,
    /// Seconds until the entry expires unless refreshed.
    pub expires_in_s: i64,
    /// `snat`, `dsr`, `tunnel`, `port-rewritten`.
    pub flags: Vec<&'static str>,
    /// Which halves exist: `both`, `service-only`, `reverse-only`.
    pub halves: &'static str,
}

/// Pairs conntrack entries into flows, at `now_ns` (the datapath's clock).
#[must_use]
pub fn flows(entries: &[(CtKey, CtEntry)], now_ns: u64) -> Vec<FlowView> {
    let by_key: HashMap<CtKey, &CtEntry> = entries.iter().map(|(k, e)| (*k, e)).collect();
    let mut out = Vec::new();
    for (k, e) in entries {
        let f = k.family;
        if k.kind == CtKind::Service as u8 {
            let rk = lb_conntrack::reverse_key_of(k, e);
            let reverse = by_key.contains_key(&rk);
            let translated = sock(&rk.dst, f, rk.dst_port);
            let client = sock(&k.src, f, k.src_port);
            out.push(FlowView {
                proto: proto_name(k.proto),
                client,
                service: sock(&k.dst, f, k.dst_port),
                backend: sock(&e.nat_addr, f, e.nat_port),
                translated_source: (translated != client).then_some(translated),
                state: state_name(e.state),
                service_id: e.service_id,
                backend_id: e.backend_id,
                packets_orig: e.packets_orig,
                packets_reply: e.packets_reply,
                expires_in_s: (e.expires_ns as i128 - now_ns as i128)
                    .clamp(i64::MIN as i128 * 1_000_000_000, i64::MAX as i128)
                    as i64
                    / 1_000_000_000,
                flags: flag_names(e.flags),
                halves: if reverse { "both" } else { "service-only" },
            });
        } else {
            let sk = lb_conntrack::service_key_of(k, e);
            if by_key.contains_key(&sk) {
                continue; // shown with its service entry
            }
            out.push(FlowView {
                proto: proto_name(k.proto),
                client: sock(&sk.src, f, sk.src_port),
                service: sock(&e.nat_addr, f, e.nat_port),
                backend: sock(&k.src, f, k.src_port),
                translated_source: Some(sock(&k.dst, f, k.dst_port)),
                state: state_name(e.state),
                service_id: e.service_id,
                backend_id: e.backend_id,
                packets_orig: e.packets_orig,
                packets_reply: e.packets_reply,
                expires_in_s: 0,
                flags: flag_names(e.flags),
                halves: "reverse-only",
            });
        }
    }
    out.sort_by_key(|a| (a.service, a.client));
    out
}

fn flag_names(f: u8) -> Vec<&'static str> {
    [
        (CT_F_SNAT, "snat"),
        (CT_F_DSR, "dsr"),
        (CT_F_TUNNEL, "tunnel"),
        (CT_F_SRC_PORT_REWRITTEN, "port-rewritten"),
    ]
    .into_iter()
    .filter(|(b, _)| f & b != 0)
    .map(|(_, n)| n)
    .collect()
}

/// `lbctl ct list` filters.
#[derive(Debug, Clone, Default)]
pub struct FlowFilter {
    /// Client, service, backend or translated address.
    pub addr: Option<IpAddr>,
    /// Any of the flow's ports.
    pub port: Option<u16>,
    /// `tcp` / `udp`.
    pub proto: Option<String>,
    /// State name, case-insensitive (`established`).
    pub state: Option<String>,
}

impl FlowFilter {
    /// Whether `f` passes.
    #[must_use]
    pub fn matches(&self, f: &FlowView) -> bool {
        let socks = [
            Some(f.client),
            Some(f.service),
            Some(f.backend),
            f.translated_source,
        ];
        self.addr
            .is_none_or(|a| socks.iter().flatten().any(|s| s.ip() == a))
            && self
                .port
                .is_none_or(|p| socks.iter().flatten().any(|s| s.port() == p))
            && self
                .proto
                .as_deref()
                .is_none_or(|p| p.eq_ignore_ascii_case(f.proto))
            && self
                .state
                .as_deref()
                .is_none_or(|s| squash(s) == squash(&f.state))
    }
}

/// A state name without case, `_` or `-` (`time_wait` is `TimeWait`).
fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// A service (frontend) and its backend slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceView {
    /// Service id.
    pub id: u32,
    /// `tcp` / `udp`.
    pub proto: &'static str,
    /// Frontend.
    pub frontend: SocketAddr,
    /// `random` / `maglev`.
    pub selection: &'static str,
    /// Only node-local backends.
    pub local: bool,
    /// Forwarding mode (`Snat`...).
    pub mode: String,
    /// Session affinity timeout (0: none).
    pub affinity_timeout_s: u32,
    /// Slots.
    pub slots: u32,
    /// Distinct backends in the slots, with their slot counts.
    pub backends: Vec<BackendSlots>,
}

/// A backend and how many slots it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendSlots {
    /// Backend id.
    pub id: u32,
    /// Address.
    pub addr: SocketAddr,
    /// Its node when another node.
    pub node: Option<IpAddr>,
    /// Slots it holds.
    pub slots: u32,
}

/// Joins services with their backend slots.
#[must_use]
pub fn services(
    services: &[(ServiceKey, ServiceValue)],
    backends: &[(BackendKey, BackendValue)],
) -> Vec<ServiceView> {
    services
        .iter()
        .map(|(k, v)| {
            let mut bs: Vec<BackendSlots> = Vec::new();
            // The slots of the set the service entry reads (an update writes the other set,
            // then flips the entry), `0..backend_count`.
            let in_force = |bk: &BackendKey| {
                (0..v.backend_count).contains(&(bk.slot & !BackendKey::SLOT_SET_B))
                    && v.slot_key(bk.slot & !BackendKey::SLOT_SET_B) == *bk
            };
            for (bk, b) in backends.iter().filter(|(bk, _)| bk.service_id == v.id) {
                if !in_force(bk) {
                    continue;
                }
                match bs.iter_mut().find(|x| x.id == b.id) {
                    Some(x) => x.slots += 1,
                    None => bs.push(BackendSlots {
                        id: b.id,
                        addr: sock(&b.addr, b.family, b.port),
                        node: (b.node != [0; 16]).then(|| ip_of(&b.node, b.family)),
                        slots: 1,
                    }),
                }
            }
            bs.sort_by_key(|b| b.id);
            ServiceView {
                id: v.id,
                proto: proto_name(k.proto),
                frontend: sock(&k.addr, k.family, k.port),
                selection: if v.flags & SVC_F_MAGLEV != 0 {
                    "maglev"
                } else {
                    "random"
                },
                local: v.flags & SVC_F_LOCAL != 0,
                mode: format!("{:?}", v.mode()),
                affinity_timeout_s: v.affinity_timeout_s,
                slots: v.backend_count,
                backends: bs,
            }
        })
        .collect()
}

/// One counter or drop reason and its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CounterView {
    /// `counter` or `drop`.
    pub kind: &'static str,
    /// Its metrics name.
    pub name: &'static str,
    /// Its value.
    pub value: u64,
}

/// Every counter and drop reason.
#[must_use]
pub fn counters(s: &CounterSnapshot) -> Vec<CounterView> {
    let mut v: Vec<CounterView> = Counter::ALL
        .iter()
        .map(|c| CounterView {
            kind: "counter",
            name: c.name(),
            value: s.get(*c),
        })
        .collect();
    v.extend(DropReason::ALL.iter().map(|r| CounterView {
        kind: "drop",
        name: r.name(),
        value: s.drops(*r),
    }));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_api::flow::v4_addr;

    /// A TCP flow 10.0.0.1:40000 -> 10.96.0.10:80 sent to 10.1.0.2:8080, SNAT'd to 10.250.0.1.
    fn flow() -> (CtKey, CtEntry) {
        let key = CtKey {
            src: v4_addr([10, 0, 0, 1]),
            dst: v4_addr([10, 96, 0, 10]),
            src_port: 40_000,
            dst_port: 80,
            proto: 6,
            family: 4,
            kind: CtKind::Service as u8,
            ..CtKey::default()
        };
        let entry = CtEntry {
            nat_addr: v4_addr([10, 1, 0, 2]),
            nat_port: 8080,
            snat_addr: v4_addr([10, 250, 0, 1]),
            flags: CT_F_SNAT,
            state: CtState::TimeWait as u8,
            proto: 6,
            family: 4,
            service_id: 3,
            backend_id: 1,
            expires_ns: 5_000_000_000,
            ..CtEntry::default()
        };
        (key, entry)
    }

    #[test]
    fn both_halves_are_one_flow_and_filters_apply() {
        let (k, e) = flow();
        let rk = lb_conntrack::reverse_key_of(&k, &e);
        // The reverse entry restores the service address and, under SNAT, the client's.
        let rev = CtEntry {
            nat_addr: k.dst,
            nat_port: 80,
            snat_addr: k.src,
            ..e
        };
        let v = flows(&[(k, e), (rk, rev)], 2_000_000_000);
        assert_eq!(v.len(), 1, "{v:?}");
        let f = &v[0];
        assert_eq!(f.halves, "both");
        assert_eq!(f.backend.to_string(), "10.1.0.2:8080");
        assert_eq!(
            f.translated_source.map(|s| s.to_string()),
            Some("10.250.0.1:40000".into())
        );
        assert_eq!((f.state.as_str(), f.expires_in_s), ("TimeWait", 3));
        assert_eq!(f.flags, vec!["snat"]);
        let pass = |filter: FlowFilter| filter.matches(f);
        assert!(pass(FlowFilter {
            state: Some("time_wait".into()),
            proto: Some("TCP".into()),
            addr: Some("10.250.0.1".parse().unwrap()),
            port: Some(8080),
        }));
        assert!(!pass(FlowFilter {
            state: Some("established".into()),
            ..FlowFilter::default()
        }));
        assert!(!pass(FlowFilter {
            proto: Some("udp".into()),
            ..FlowFilter::default()
        }));
        // A reverse entry alone (its service entry gone) is still shown.
        let v = flows(&[(rk, rev)], 0);
        assert_eq!((v.len(), v[0].halves), (1, "reverse-only"));
        assert_eq!(v[0].client.to_string(), "10.0.0.1:40000");
    }
}
