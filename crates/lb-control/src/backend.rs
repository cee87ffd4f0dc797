//! A backend of a service: where its flows go, how much of them, and whether it takes new ones.

use std::net::{IpAddr, SocketAddr};

use crate::TrafficPolicy;
#[cfg(doc)]
use lb_api::abi::ForwardingMode;

/// Whether a backend takes new flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendState {
    /// Ready: takes new flows.
    #[default]
    Active,
    /// Being deleted: keeps its existing flows (they live in conntrack), gets no new ones.
    /// (Kubernetes: an endpoint with `terminating: true, serving: false`.)
    Terminating,
    /// Being deleted but still serving (Kubernetes: `terminating: true, serving: true`): keeps
    /// its existing flows, and takes new ones only while the service has no [`Active`]
    /// backend that may take them, as kube-proxy falls back to serving-terminating endpoints.
    ///
    /// [`Active`]: BackendState::Active
    ServingTerminating,
}

/// A backend: address, weight, state, and the node it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendSpec {
    /// Pod address and target port.
    pub addr: SocketAddr,
    /// Relative weight of new flows; 0 takes none. Default 1.
    pub weight: u16,
    /// Active or terminating.
    pub state: BackendState,
    /// The address of the node the backend runs on, when that is another node: packets to it
    /// are forwarded in the service's [`ForwardingMode`], and `externalTrafficPolicy: Local`
    /// skips it. `None` (the default): this node, plain DNAT.
    pub node: Option<IpAddr>,
}

impl From<SocketAddr> for BackendSpec {
    fn from(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: 1,
            state: BackendState::Active,
            node: None,
        }
    }
}

impl core::str::FromStr for BackendSpec {
    type Err = std::net::AddrParseError;
    /// Parses `ip:port` into an active, weight-1 backend on this node.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<SocketAddr>().map(Self::from)
    }
}

impl BackendSpec {
    /// Whether the backend may receive new flows under `policy`.
    #[must_use]
    pub fn takes_new_flows(&self, policy: TrafficPolicy) -> bool {
        self.state == BackendState::Active
            && self.weight > 0
            && (policy == TrafficPolicy::Cluster || self.node.is_none())
    }

    /// Whether the backend may receive new flows under `policy` when no active one may: a
    /// serving-terminating backend of weight > 0 the policy allows.
    #[must_use]
    pub fn takes_fallback_flows(&self, policy: TrafficPolicy) -> bool {
        self.state == BackendState::ServingTerminating
            && self.weight > 0
            && (policy == TrafficPolicy::Cluster || self.node.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parsed_backend_is_active_local_and_of_weight_one() {
        let b: BackendSpec = "10.1.0.1:8080".parse().unwrap();
        assert_eq!((b.weight, b.state, b.node), (1, BackendState::Active, None));
        assert!(b.takes_new_flows(TrafficPolicy::Local));
        let remote = BackendSpec {
            node: Some("10.250.0.2".parse().unwrap()),
            ..b
        };
        assert!(remote.takes_new_flows(TrafficPolicy::Cluster));
        assert!(!remote.takes_new_flows(TrafficPolicy::Local));
        assert!("10.1.0.1".parse::<BackendSpec>().is_err());
    }
}
