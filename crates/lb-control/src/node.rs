//! This node's identity in a cluster, and the port ranges it translates to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::vec::Vec;

use lb_api::abi::{DatapathConfig, NodeKey};

use crate::{addr_bytes, ConfigError};

/// A range of ports, inclusive (`min..=max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub min: u16,
    /// Last port.
    pub max: u16,
}

impl PortRange {
    /// Checks that the range is non-empty and does not include port 0.
    ///
    /// # Errors
    /// [`ConfigError::EmptyPortRange`] naming `field`.
    pub fn validate(&self, field: &'static str) -> Result<(), ConfigError> {
        if self.min == 0 || self.min > self.max {
            return Err(ConfigError::EmptyPortRange {
                field,
                min: self.min,
                max: self.max,
            });
        }
        Ok(())
    }
}

/// This node's identity in a cluster: its addresses (the SNAT source and the tunnel endpoint),
/// its peers (the only sources of tunnel packets it accepts), and the tunnel's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// This node's IPv4 address on the network between nodes.
    pub address_v4: Option<Ipv4Addr>,
    /// This node's IPv6 address on the network between nodes.
    pub address_v6: Option<Ipv6Addr>,
    /// The other nodes' addresses.
    pub peers: Vec<IpAddr>,
    /// VXLAN network identifier of the node-to-node tunnel (24 bits). Default 1.
    pub vni: u32,
    /// UDP port of the tunnel. Default 4789.
    pub tunnel_port: u16,
    /// MTU of the interface between nodes: encapsulated packets and DSR carriers that would
    /// exceed it get ICMP "fragmentation needed" / "packet too big". Default 1500.
    pub underlay_mtu: u16,
    /// Source ports SNAT translates to. Default 32768-60999.
    pub snat_ports: PortRange,
}

impl Default for NodeSpec {
    fn default() -> Self {
        Self {
            address_v4: None,
            address_v6: None,
            peers: Vec::new(),
            vni: 1,
            tunnel_port: lb_api::abi::DEFAULT_TUNNEL_PORT,
            underlay_mtu: 1500,
            snat_ports: PortRange {
                min: lb_api::abi::DEFAULT_SNAT_PORT_MIN,
                max: lb_api::abi::DEFAULT_SNAT_PORT_MAX,
            },
        }
    }
}

impl NodeSpec {
    /// Checks the spec.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field and the rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.address_v4.is_none() && self.address_v6.is_none() {
            return Err(ConfigError::NoNodeAddress);
        }
        let own = self
            .address_v4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.address_v6.map(IpAddr::V6))
            .map(|a| ("address", a));
        for (field, addr) in own.chain(self.peers.iter().map(|p| ("peers", *p))) {
            if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
                return Err(ConfigError::BadNodeAddress { field, addr });
            }
        }
        if self.vni > 0x00ff_ffff {
            return Err(ConfigError::VniTooLarge { vni: self.vni });
        }
        if self.tunnel_port == 0 {
            return Err(ConfigError::ZeroPort {
                field: "tunnel_port",
            });
        }
        let min = if self.address_v6.is_some() { 1280 } else { 576 };
        if self.underlay_mtu < min {
            return Err(ConfigError::MtuTooSmall {
                mtu: self.underlay_mtu,
                min,
            });
        }
        self.snat_ports.validate("snat_ports")
    }

    /// Writes the node's fields into a datapath configuration.
    pub fn apply(&self, cfg: &mut DatapathConfig) {
        cfg.node_v4 = self.address_v4.map_or([0; 4], |a| a.octets());
        cfg.node_v6 = self.address_v6.map_or([0; 16], |a| a.octets());
        cfg.vni = self.vni;
        cfg.tunnel_port = self.tunnel_port;
        cfg.mtu = self.underlay_mtu;
        cfg.snat_port_min = self.snat_ports.min;
        cfg.snat_port_max = self.snat_ports.max;
    }

    /// The peer table's keys.
    #[must_use]
    pub fn peer_keys(&self) -> Vec<NodeKey> {
        self.peers
            .iter()
            .map(|p| NodeKey {
                addr: addr_bytes(*p).0,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_needs_an_address_and_a_valid_tunnel() {
        let mut n = NodeSpec::default();
        assert_eq!(n.validate(), Err(ConfigError::NoNodeAddress));
        n.address_v4 = Some([192, 168, 1, 10].into());
        n.validate().unwrap();
        n.vni = 1 << 24;
        assert_eq!(n.validate(), Err(ConfigError::VniTooLarge { vni: 1 << 24 }));
        n.vni = 1;
        n.address_v6 = Some("fd00::10".parse().unwrap());
        n.underlay_mtu = 1279;
        assert_eq!(
            n.validate(),
            Err(ConfigError::MtuTooSmall {
                mtu: 1279,
                min: 1280
            })
        );
        n.underlay_mtu = 1500;
        n.peers.push("127.0.0.1".parse().unwrap());
        assert!(matches!(
            n.validate(),
            Err(ConfigError::BadNodeAddress { field: "peers", .. })
        ));
        n.peers = vec!["192.168.1.11".parse().unwrap()];
        let mut cfg = crate::default_config(0);
        n.apply(&mut cfg);
        assert_eq!(
            (cfg.node_v4, cfg.vni, cfg.mtu),
            ([192, 168, 1, 10], 1, 1500)
        );
        assert_eq!(n.peer_keys().len(), 1);
    }
}
