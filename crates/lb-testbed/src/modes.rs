//! The datapath deployed on every node of a [`Cluster`](crate::cluster::Cluster) in one
//! forwarding mode: each node loads its own [`KernelDatapath`] (its own maps, its own pin
//! directory), knows its identity (addresses, MTU, peers: every other node), carries every
//! service (kube-proxy's model: each node serves every VIP and its own NodePort), and has XDP on
//! its LAN interface and on the host side of its pod veth (node-3 has none).
//!
//! The end-to-end mode matrix (`tests/modes.rs`), the mode benchmark (`lb-mode-bench`) and the
//! demo share this one deployment, so they measure and show the same thing.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use lb_api::flow::L4Proto;
use lb_bpf::KernelDatapath;

use crate::cluster::Family;

/// How a node forwards a service's flow to a backend on another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Source NAT to the ingress node's address: replies come back through it; the backend sees
    /// the node's address.
    Snat,
    /// Direct server return: the service address rides along to the backend's node, which answers
    /// the client directly with the service address as source; the backend sees the client.
    Dsr,
    /// VXLAN between the nodes, keeping the client address; replies return through the tunnel.
    Tunnel,
    /// DSR for TCP, SNAT for UDP.
    Hybrid,
}

impl Mode {
    /// Every mode, in the order reports list them.
    pub const ALL: [Mode; 4] = [Mode::Snat, Mode::Dsr, Mode::Tunnel, Mode::Hybrid];

    /// What a flow of `proto` does in this mode (hybrid resolves to DSR or SNAT).
    #[must_use]
    pub fn effective(self, proto: L4Proto) -> Mode {
        match (self, proto) {
            (Mode::Hybrid, L4Proto::Tcp) => Mode::Dsr,
            (Mode::Hybrid, _) => Mode::Snat,
            (m, _) => m,
        }
    }

    /// Whether a backend on another node sees the client's own address.
    #[must_use]
    pub fn keeps_client_address(self, proto: L4Proto) -> bool {
        self.effective(proto) != Mode::Snat
    }

    /// Whether replies skip the ingress node.
    #[must_use]
    pub fn direct_return(self, proto: L4Proto) -> bool {
        self.effective(proto) == Mode::Dsr
    }

    /// Lower-case name, as given on command lines.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Mode::Snat => "snat",
            Mode::Dsr => "dsr",
            Mode::Tunnel => "tunnel",
            Mode::Hybrid => "hybrid",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Mode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| anyhow::anyhow!("unknown mode {s:?}: use snat, dsr, tunnel or hybrid"))
    }
}

/// Where a service's frontend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frontend {
    /// The service VIP (routed by the client via node-1), this port.
    Vip(u16),
    /// The NodePort on every node's own LAN address, this port.
    NodePort(u16),
}

/// One service of a deployment: frontend, protocol, target port, and which backends (0:
/// backend-1 on node-1, 1: backend-2 on node-2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    /// Where clients connect.
    pub frontend: Frontend,
    /// Address family.
    pub family: Family,
    /// TCP or UDP.
    pub proto: L4Proto,
    /// The backends' port.
    pub target_port: u16,
    /// Indices of the backends.
    pub backends: Vec<usize>,
}

impl ServicePlan {
    /// The frontend address clients use on node `node` (0: node-1).
    #[must_use]
    pub fn frontend_on(&self, node: usize) -> SocketAddr {
        match self.frontend {
            Frontend::Vip(port) => SocketAddr::new(self.family.vip(), port),
            Frontend::NodePort(port) => SocketAddr::new(self.family.node(node), port),
        }
    }
}

/// The datapath running on every node; dropping it detaches and unloads everything (and removes
/// the pin directories).
pub struct Deployment {
    /// Each node's datapath, node-1's first (`None` while a node's loader is "restarting").
    pub nodes: Vec<Option<KernelDatapath>>,
    /// The per-node pin directories.
    pub pin_dirs: Vec<PathBuf>,
    /// The XDP mode each node's programs run in (native or generic).
    pub xdp_modes: Vec<&'static str>,
    /// The forwarding mode.
    pub mode: Mode,
    plans: Vec<ServicePlan>,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("mode", &self.mode)
            .field("pin_dirs", &self.pin_dirs)
            .field("xdp_modes", &self.xdp_modes)
            .finish_non_exhaustive()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for (dp, dir) in self.nodes.iter_mut().zip(&self.pin_dirs) {
            drop(dp.take());
            let _ = KernelDatapath::uninstall(dir);
        }
    }
}

impl Deployment {
    /// The services this deployment carries.
    #[must_use]
    pub fn plans(&self) -> &[ServicePlan] {
        &self.plans
    }
}

pub use with_modes::{deploy, engine_like, restart_node};

mod with_modes {
    //! Everything that speaks the loader's forwarding-mode API: one place to adapt when it moves.

    use std::net::SocketAddr;
    use std::path::PathBuf;

    use anyhow::{Context, Result};
    use aya::programs::{TcAttachType, XdpMode};
    use lb_api::abi::DatapathConfig;
    use lb_bpf::KernelDatapath;
    use lb_conntrack::MonotonicClock;
    use lb_control::default_config;
    use lb_control::{BackendSpec, ForwardingMode, NodeSpec, ServiceSpec};
    use lb_datapath::engine::Engine;

    use super::{Deployment, Mode, ServicePlan};
    use crate::cluster::{Cluster, LAN_IF, NODE_LAN_PORTS, POD_IF, POD_NODES};
    use crate::netns::within;

    fn forwarding(mode: Mode) -> ForwardingMode {
        match mode {
            Mode::Snat => ForwardingMode::Snat,
            Mode::Dsr => ForwardingMode::Dsr,
            Mode::Tunnel => ForwardingMode::Tunnel,
            Mode::Hybrid => ForwardingMode::Hybrid,
        }
    }

    /// The services of node `node`: every plan, NodePorts on the node's own address.
    fn specs(mode: Mode, plans: &[ServicePlan], node: usize) -> Vec<ServiceSpec> {
        plans
            .iter()
            .enumerate()
            .map(|(i, p)| ServiceSpec {
                id: u32::try_from(i + 1).unwrap_or(u32::MAX),
                frontend: p.frontend_on(node),
                proto: p.proto,
                mode: forwarding(mode),
                backends: p
                    .backends
                    .iter()
                    .map(|&b| BackendSpec {
                        // `None`: on this node (plain DNAT); otherwise the hosting node's
                        // address in the service's family.
                        node: (b != node).then(|| p.family.node(b)),
                        ..BackendSpec::from(SocketAddr::new(p.family.backend(b), p.target_port))
                    })
                    .collect(),
                ..Default::default()
            })
            .collect()
    }

    /// Node `node`'s identity in a cluster of `nodes` nodes.
    fn node_spec(node: usize, nodes: usize) -> NodeSpec {
        let me = Cluster::node_addrs(node, nodes);
        NodeSpec {
            address_v4: Some(me.v4),
            address_v6: Some(me.v6),
            underlay_mtu: me.mtu,
            peers: me.peers,
            ..NodeSpec::default()
        }
    }

    /// Node `node`'s datapath configuration before its identity: netfilter's timeouts, a hash
    /// seed of its own.
    fn node_config(node: usize) -> DatapathConfig {
        default_config(std::process::id() ^ node as u32)
    }

    /// A userspace engine set up as node `node`'s kernel datapath in `d`: the same
    /// configuration, identity and services, so that the packets the node's programs saw can be
    /// replayed through it and the results compared ([`crate::replay`]).
    ///
    /// # Errors
    /// If the engine refuses the node's identity or a service (then so would the kernel have).
    pub fn engine_like(d: &Deployment, node: usize) -> Result<Engine> {
        let mut engine = Engine::with_clock(4096, node_config(node), MonotonicClock);
        // The node's XDP runs on a veth, registered for partial checksums by `attach_xdp`.
        engine.set_xdp_virtual_device(true);
        engine.set_node(&node_spec(node, d.nodes.len()))?;
        for spec in specs(d.mode, &d.plans, node) {
            engine.upsert_service(&spec)?;
        }
        Ok(engine)
    }

    /// Prefix of the pin directories under /sys/fs/bpf.
    const PIN_PREFIX: &str = "lb-cluster-";

    fn pin_dir(tag: &str, node: usize) -> PathBuf {
        PathBuf::from(format!(
            "/sys/fs/bpf/{PIN_PREFIX}{tag}-n{}-{}",
            node + 1,
            std::process::id()
        ))
    }

    /// Uninstalls pin directories of runs whose process is gone (killed before its deployment
    /// dropped): their programs detached with their namespaces, but pinned maps would stay.
    fn remove_leftover_pins() {
        let Ok(dir) = std::fs::read_dir("/sys/fs/bpf") else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(PIN_PREFIX) {
                continue;
            }
            let pid = name.rsplit('-').next().and_then(|p| p.parse::<i32>().ok());
            // SAFETY: kill with signal 0 only checks whether the process exists.
            let alive = pid.is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
            if !alive {
                let _ = KernelDatapath::uninstall(entry.path());
            }
        }
    }

    /// Loads (or, after a restart, takes over) node `node`'s datapath and attaches it.
    fn load_node(
        cluster: &Cluster,
        dir: &PathBuf,
        mode: Mode,
        plans: &[ServicePlan],
        node: usize,
    ) -> Result<(KernelDatapath, &'static str)> {
        let mut dp = KernelDatapath::load_pinned(dir)
            .with_context(|| format!("loading node-{}'s datapath", node + 1))?;
        dp.set_config(&node_config(node))?;
        dp.set_node(&node_spec(node, cluster.nodes.len()))
            .with_context(|| format!("node-{}'s identity", node + 1))?;
        for spec in specs(mode, plans, node) {
            dp.upsert_service(&spec)
                .with_context(|| format!("service {} on node-{}", spec.frontend, node + 1))?;
        }
        // XDP on the LAN (the node's "NIC"); TC at ingress of the pod's host-side veth, as
        // CNIs attach to pods: there the kernel's helpers see the pod's partial checksums and
        // GSO packets, and an ICMP error goes back to the pod by redirect, which a veth with
        // the default settings delivers. Only nodes with a pod have a pod link. The LAN
        // interface's peer (the bridge port) runs the pass-only program, so that the ICMP
        // errors the XDP pipeline sends back with XDP_TX reach it.
        let xdp = within(&cluster.nodes[node], || -> Result<&'static str> {
            let native = dp.attach_xdp(LAN_IF, XdpMode::Driver).is_ok();
            if !native {
                dp.attach_xdp(LAN_IF, XdpMode::Skb)
                    .with_context(|| format!("attaching XDP to {LAN_IF} on node-{}", node + 1))?;
            }
            if node < POD_NODES {
                dp.attach_tc(POD_IF, TcAttachType::Ingress)
                    .with_context(|| format!("attaching TC to {POD_IF} on node-{}", node + 1))?;
            }
            Ok(if native {
                "native (driver)"
            } else {
                "generic (skb)"
            })
        })??;
        if xdp == "native (driver)" {
            let port = NODE_LAN_PORTS[node];
            within(&cluster.lan, || {
                dp.attach_xdp_tx_peer(port, XdpMode::Driver)
            })?
            .with_context(|| format!("attaching the XDP_TX peer program to {port}"))?;
        }
        Ok((dp, xdp))
    }

    /// Deploys `mode` with `plans` on every node of `cluster`. `tag` keeps pin directories of
    /// concurrent deployments apart.
    ///
    /// # Errors
    /// If a datapath cannot be loaded, configured or attached.
    pub fn deploy(
        cluster: &Cluster,
        mode: Mode,
        plans: &[ServicePlan],
        tag: &str,
    ) -> Result<Deployment> {
        remove_leftover_pins();
        let count = cluster.nodes.len();
        let mut d = Deployment {
            nodes: (0..count).map(|_| None).collect(),
            pin_dirs: (0..count).map(|n| pin_dir(tag, n)).collect(),
            xdp_modes: vec![""; count],
            mode,
            plans: plans.to_vec(),
        };
        for node in 0..count {
            let (dp, xdp) = load_node(cluster, &d.pin_dirs[node], mode, plans, node)?;
            d.nodes[node] = Some(dp);
            d.xdp_modes[node] = xdp;
        }
        Ok(d)
    }

    /// Restarts node `node`'s loader: the old one exits (pinned links keep the programs
    /// attached, pinned maps keep the flows), a new one takes them over.
    ///
    /// # Errors
    /// If the new loader cannot take over.
    pub fn restart_node(cluster: &Cluster, d: &mut Deployment, node: usize) -> Result<()> {
        drop(d.nodes[node].take());
        let (dp, xdp) = load_node(cluster, &d.pin_dirs[node], d.mode, &d.plans, node)?;
        d.nodes[node] = Some(dp);
        d.xdp_modes[node] = xdp;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_is_dsr_for_tcp_and_snat_for_udp() {
        assert_eq!(Mode::Hybrid.effective(L4Proto::Tcp), Mode::Dsr);
        assert_eq!(Mode::Hybrid.effective(L4Proto::Udp), Mode::Snat);
        assert!(Mode::Hybrid.direct_return(L4Proto::Tcp));
        assert!(!Mode::Hybrid.keeps_client_address(L4Proto::Udp));
        assert!(Mode::Tunnel.keeps_client_address(L4Proto::Udp));
        assert!(!Mode::Tunnel.direct_return(L4Proto::Tcp));
        assert!(!Mode::Snat.keeps_client_address(L4Proto::Tcp));
    }

    #[test]
    fn modes_parse_from_their_names_and_unknown_ones_are_refused() {
        for m in Mode::ALL {
            assert_eq!(m.name().parse::<Mode>().unwrap(), m);
        }
        let e = "ipvs".parse::<Mode>().unwrap_err().to_string();
        assert!(e.contains("ipvs") && e.contains("snat"), "{e}");
    }
}
