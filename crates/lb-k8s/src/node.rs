//! Nodes: every node's addresses (NodePorts, backends' nodes) and this node's [`NodeSpec`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use lb_control::NodeSpec;

/// Every node's addresses, `InternalIP` ones first, then `ExternalIP`.
pub(crate) fn node_addresses(nodes: &[Node]) -> BTreeMap<String, Vec<IpAddr>> {
    let mut m = BTreeMap::new();
    for n in nodes {
        let Some(name) = n.metadata.name.clone() else {
            continue;
        };
        let addrs = n.status.as_ref().and_then(|s| s.addresses.as_ref());
        let mut v: Vec<IpAddr> = Vec::new();
        for ty in ["InternalIP", "ExternalIP"] {
            v.extend(
                addrs
                    .into_iter()
                    .flatten()
                    .filter(|a| a.type_ == ty)
                    .filter_map(|a| a.address.parse::<IpAddr>().ok()),
            );
        }
        m.insert(name, v);
    }
    m
}

/// This node's [`NodeSpec`]: its first `InternalIP` of each family, the other nodes' internal
/// addresses as peers, the rest at the defaults. `None` without a `Node` named `node_name`.
#[must_use]
pub fn node_spec(nodes: &[Node], node_name: &str) -> Option<NodeSpec> {
    let internal = |n: &Node| -> Vec<IpAddr> {
        n.status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect()
    };
    let me = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(node_name))?;
    let mine = internal(me);
    let mut spec = NodeSpec {
        address_v4: mine.iter().find_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        }),
        address_v6: mine.iter().find_map(|a| match a {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        }),
        ..NodeSpec::default()
    };
    for n in nodes {
        if n.metadata.name.as_deref() != Some(node_name) {
            spec.peers.extend(internal(n));
        }
    }
    spec.peers.sort();
    spec.peers.dedup();
    Some(spec)
}
