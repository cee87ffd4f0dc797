//! The datapath configuration a control plane starts from.

use lb_api::abi::DatapathConfig;
use lb_conntrack::TimeoutPolicy;

/// A datapath configuration with netfilter's timeouts and the given hash seed; every other field
/// zero (its default: see [`DatapathConfig`]). Node fields are set by
/// [`NodeSpec::apply`](crate::NodeSpec::apply) (through
/// [`Dataplane::set_node`](crate::Dataplane::set_node)); tests change the rest with struct update
/// syntax (`DatapathConfig { fixed_now_ns: 1, ..default_config(7) }`).
#[must_use]
pub fn default_config(hash_seed: u32) -> DatapathConfig {
    DatapathConfig {
        timeouts: TimeoutPolicy::netfilter().to_timeouts(),
        fixed_now_ns: 0,
        hash_seed,
        flags: 0,
        src_port_min: 0,
        src_port_max: 0,
        src_port_tries: 0,
        node_v4: [0; 4],
        vni: 0,
        node_v6: [0; 16],
        tunnel_port: 0,
        mtu: 0,
        snat_port_min: 0,
        snat_port_max: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_has_netfilter_timeouts_the_seed_and_no_node() {
        let c = default_config(42);
        assert_eq!(c.hash_seed, 42);
        assert_eq!(c.timeouts, TimeoutPolicy::netfilter().to_timeouts());
        assert_eq!((c.node_v4, c.node_v6, c.fixed_now_ns), ([0; 4], [0; 16], 0));
    }
}
