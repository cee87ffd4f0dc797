//! The two entries of a flow: a service entry (client → service tuple, owns state and timers)
//! and a reverse-NAT entry (backend → client tuple). Whoever deletes one deletes the other, so a
//! pair is never left half-present.
//!
//! The derivations of that layout live here, for the pipeline (which creates and maintains the
//! pairs) and for GC alike: [`partner_key`] (either entry's partner: [`reverse_key_of`] a
//! service entry, [`service_key_of`] a reverse entry), [`reverse_key`] (the reverse entry's key
//! of a new flow) and [`make_reverse`] (the reverse entry from the service entry).

use lb_api::abi::{CtEntry, CtKey, CtKind};
use lb_api::flow::FlowTuple;

/// The key of a flow's other entry: the reverse-NAT key for a service entry, the service key for
/// a reverse-NAT entry. `None` for a key of unknown kind, and for the service entry of a DSR
/// flow on the node that forwarded it (its replies never come back there: no reverse half).
///
/// This is the layout the pipeline creates, on every node alike:
/// * service entry, keyed by the tuple the client sent (to the service address), holding the
///   backend (`nat_addr`, `nat_port`): its reverse entry is keyed by the reply backend → client
///   as the backend sees the client, i.e. from this node's address under SNAT (`snat_addr`) and
///   from the rewritten port when the source port was rewritten;
/// * reverse entry: its service entry is keyed by the client's original address (`snat_addr`
///   under SNAT) and port (`rewritten_src_port` when rewritten) to the address the client sent
///   to, which replies get as their source (`nat_addr`, `nat_port`).
///
/// On the backend's node of a flow another node translated, "the tuple the client sent" is
/// what reaches this node: under DSR the service address comes with the carrier (so it is the
/// client's own tuple), through the tunnel it is the backend, and the key's
/// [`origin`](CtKey::origin) is the node the flow came from (`tunnel_peer`).
#[inline(always)]
#[must_use]
pub fn partner_key(key: &CtKey, entry: &CtEntry) -> Option<CtKey> {
    if key.kind == CtKind::Service as u8 {
        if entry.is_dsr() && !entry.is_backend_side() {
            return None;
        }
        Some(reverse_key_of(key, entry))
    } else if key.kind == CtKind::ReverseNat as u8 {
        Some(service_key_of(key, entry))
    } else {
        None
    }
}

/// The reverse-NAT key of the flow of service entry `entry` (under `key`): the reply from the
/// backend (`nat_addr`, `nat_port`) to the client as the backend sees it (see [`partner_key`]).
#[inline(always)]
#[must_use]
pub fn reverse_key_of(key: &CtKey, entry: &CtEntry) -> CtKey {
    let t = key.tuple();
    let reply = FlowTuple {
        src: entry.nat_addr,
        src_port: entry.nat_port,
        dst: if entry.is_snat() {
            entry.snat_addr
        } else {
            t.src
        },
        dst_port: if entry.src_port_rewritten() {
            entry.rewritten_src_port
        } else {
            t.src_port
        },
        ..t
    };
    CtKey::new(&reply, CtKind::ReverseNat)
}

/// The service key of the flow of reverse-NAT entry `entry` (under `key`): from the client's
/// original address and port to the address it sent to (see [`partner_key`]).
#[inline(always)]
#[must_use]
pub fn service_key_of(key: &CtKey, entry: &CtEntry) -> CtKey {
    let t = key.tuple();
    let client = FlowTuple {
        src: if entry.is_snat() {
            entry.snat_addr
        } else {
            t.dst
        },
        src_port: if entry.src_port_rewritten() {
            entry.rewritten_src_port
        } else {
            t.dst_port
        },
        dst: entry.nat_addr,
        dst_port: entry.nat_port,
        ..t
    };
    let mut k = CtKey::new(&client, CtKind::Service);
    if entry.replies_through_tunnel() {
        k.origin = entry.tunnel_peer;
    }
    k
}

/// Key of the reverse-NAT entry of a flow of tuple `t`: the tuple the backend replies with, to
/// the address and port the flow's packets carry as source (after SNAT or a port rewrite).
#[inline(always)]
#[must_use]
pub fn reverse_key(
    t: &FlowTuple,
    client: &[u8; 16],
    client_port: u16,
    backend: &[u8; 16],
    backend_port: u16,
) -> CtKey {
    let reply = FlowTuple {
        src: *backend,
        src_port: backend_port,
        dst: *client,
        dst_port: client_port,
        ..*t
    };
    CtKey::new(&reply, CtKind::ReverseNat)
}

/// Turns a flow's service entry into its reverse-NAT entry: same timers; the address the
/// client sent to (`dst`: the service's; through the tunnel, the backend's) to restore as the
/// replies' source; the client's original port and (SNAT) address (`src`) to restore as their
/// destination. `src` and `dst` are the address and port fields of the service entry's key.
#[inline(always)]
pub fn make_reverse(e: &mut CtEntry, src: (&[u8; 16], u16), dst: (&[u8; 16], u16)) {
    e.nat_addr = *dst.0;
    e.nat_port = dst.1;
    if e.src_port_rewritten() {
        e.rewritten_src_port = src.1;
    }
    if e.is_snat() {
        e.snat_addr = *src.0;
    }
    e.packets_orig = 0;
    e.packets_reply = 0;
}

#[cfg(test)]
mod rewritten_tests {
    use super::*;
    use lb_api::abi::CT_F_SRC_PORT_REWRITTEN;
    use lb_api::flow::v4_addr;

    /// The pipeline's layout for a flow whose client port 40000 was rewritten to 27685.
    #[test]
    fn partners_of_a_rewritten_flow_use_the_rewritten_port() {
        let client = FlowTuple {
            src: v4_addr([10, 0, 0, 1]),
            dst: v4_addr([10, 96, 0, 11]),
            src_port: 40000,
            dst_port: 80,
            proto: 6,
            family: 4,
        };
        let skey = CtKey::new(&client, CtKind::Service);
        let sentry = CtEntry {
            nat_addr: v4_addr([10, 1, 0, 2]),
            nat_port: 8080,
            rewritten_src_port: 27685,
            flags: CT_F_SRC_PORT_REWRITTEN,
            ..CtEntry::default()
        };
        let rkey = partner_key(&skey, &sentry).unwrap();
        assert_eq!((rkey.src_port, rkey.dst_port), (8080, 27685));
        let rentry = CtEntry {
            nat_addr: client.dst,
            nat_port: 80,
            rewritten_src_port: 40000,
            flags: CT_F_SRC_PORT_REWRITTEN,
            ..CtEntry::default()
        };
        assert_eq!(partner_key(&rkey, &rentry), Some(skey));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_api::flow::v4_addr;
    #[allow(unused_imports)]
    use std::{format, prelude::rust_2021::*, vec};

    /// A SNAT flow: the reverse entry holds the client's address and port; the partners are
    /// each other's, whichever way derived.
    #[test]
    fn partners_of_a_snat_flow_go_through_the_node_address() {
        use lb_api::abi::{CT_F_SNAT, CT_F_SRC_PORT_REWRITTEN};
        let client = FlowTuple {
            src: v4_addr([10, 0, 0, 1]),
            dst: v4_addr([10, 96, 0, 10]),
            src_port: 40000,
            dst_port: 80,
            proto: 6,
            family: 4,
        };
        let node = v4_addr([192, 168, 1, 10]);
        let sk = CtKey::new(&client, CtKind::Service);
        let mut se = CtEntry {
            nat_addr: v4_addr([10, 1, 0, 2]),
            nat_port: 8080,
            snat_addr: node,
            rewritten_src_port: 33000,
            flags: CT_F_SNAT | CT_F_SRC_PORT_REWRITTEN,
            ..Default::default()
        };
        let rk = reverse_key_of(&sk, &se);
        assert_eq!(partner_key(&sk, &se), Some(rk));
        assert_eq!((rk.src, rk.src_port), (se.nat_addr, 8080));
        assert_eq!((rk.dst, rk.dst_port), (node, 33000));
        // The reverse entry as the pipeline makes it from the service entry.
        make_reverse(&mut se, (&client.src, client.src_port), (&client.dst, 80));
        assert_eq!(se.snat_addr, client.src);
        assert_eq!(se.rewritten_src_port, 40000);
        assert_eq!(service_key_of(&rk, &se), sk);
        assert_eq!(partner_key(&rk, &se), Some(sk));
    }

    /// On the backend's node of a tunnelled flow, the service key carries the node the flow
    /// came from.
    #[test]
    fn the_service_key_of_a_tunnelled_flow_names_its_origin() {
        use lb_api::abi::{CT_F_BACKEND_SIDE, CT_F_TUNNEL};
        let peer = v4_addr([192, 168, 1, 11]);
        let reply = FlowTuple {
            src: v4_addr([10, 1, 0, 2]),
            dst: v4_addr([10, 0, 0, 1]),
            src_port: 8080,
            dst_port: 40000,
            proto: 17,
            family: 4,
        };
        let rk = CtKey::new(&reply, CtKind::ReverseNat);
        let re = CtEntry {
            nat_addr: reply.src,
            nat_port: 8080,
            tunnel_peer: peer,
            flags: CT_F_BACKEND_SIDE | CT_F_TUNNEL,
            ..Default::default()
        };
        let sk = service_key_of(&rk, &re);
        assert_eq!(sk, CtKey::from_origin(&reply.reversed(), peer));
        assert_eq!(partner_key(&rk, &re), Some(sk));
    }

    #[test]
    fn partners_are_mutual() {
        let client = FlowTuple {
            src: v4_addr([10, 0, 0, 1]),
            dst: v4_addr([10, 96, 0, 10]),
            src_port: 40000,
            dst_port: 80,
            proto: 6,
            family: 4,
        };
        let sk = CtKey::new(&client, CtKind::Service);
        let se = CtEntry {
            nat_addr: v4_addr([10, 1, 0, 2]),
            nat_port: 8080,
            ..Default::default()
        };
        let rk = partner_key(&sk, &se).unwrap();
        assert_eq!(rk.kind, CtKind::ReverseNat as u8);
        assert_eq!((rk.src_port, rk.dst_port), (8080, 40000));
        let re = CtEntry {
            nat_addr: client.dst,
            nat_port: client.dst_port,
            ..Default::default()
        };
        assert_eq!(partner_key(&rk, &re), Some(sk));
        let odd = CtKey { kind: 9, ..sk };
        assert_eq!(partner_key(&odd, &se), None);
    }
}
