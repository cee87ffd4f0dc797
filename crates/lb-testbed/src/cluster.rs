//! Two nodes on one LAN, a client beside them, and a backend "pod" on each node — the topology the
//! forwarding modes (SNAT, DSR, VXLAN tunnel, hybrid) need, each piece in a namespace of its own:
//!
//! ```text
//!                 client 10.210.0.10  fd00:210::10
//!                          │ eth0
//!   lan:            ───── br0 ─────────────────────────
//!                   │ eth0                    │ eth0
//!   node-1 10.210.0.1  fd00:210::1    node-2 10.210.0.2  fd00:210::2
//!          10.211.1.1  fd00:211:1::1         10.211.2.1  fd00:211:2::1
//!                   │ pod1                    │ pod1
//!                   │ eth0                    │ eth0
//!   backend-1 10.211.1.2 fd00:211:1::2  backend-2 10.211.2.2 fd00:211:2::2
//! ```
//!
//! [`Cluster::with_nodes`] adds node-3 (10.210.0.3, fd00:210::3) on the same LAN, a frontend
//! without a pod: a client reaching the NodePorts of node-1 and node-3 at once reaches a backend
//! on neither, which is where two forwarded flows from one client port meet (incident 2).
//!
//! Routing, so that packets the datapath rewrites and returns with `XDP_PASS` land where each mode
//! needs them:
//! - the client routes the service VIPs ([`VIP_V4`], [`VIP_V6`]) via node-1, reaches both nodes'
//!   addresses on the LAN (NodePort), and each pod CIDR via the node hosting it;
//! - each node routes the other nodes' pod CIDRs via their LAN addresses; node-to-client traffic
//!   is on-link, so in DSR mode the backend's node returns replies straight to the client;
//! - backends route everything via their node; nodes forward (IPv4 and IPv6), `rp_filter` is off
//!   everywhere (DSR replies leave with the VIP as source), nodes accept received packets that
//!   carry their own IPv4 address as source (`accept_local`: what SNAT and the tunnel hand to the
//!   stack) and send no ICMP redirects, IPv6 addresses skip DAD;
//! - the datapath runs at XDP on the nodes' LAN interfaces and at TC on the pods' host-side
//!   veths; the peers of the LAN interfaces (the bridge ports) run the pass-only
//!   `lb_xdp_tx_peer`, so that packets the datapath sends back out (`XDP_TX`: ICMP too-big)
//!   arrive (`KernelDatapath::attach_xdp_tx_peer`, attached by [`crate::modes::deploy`]).
//!   Every device keeps the kernel's default offloads unless a test asks the nodes to complete
//!   checksums in software ([`Cluster::complete_checksums_in_software`]).
//!
//! Every address is inside namespaces this module creates; nothing else is ever a target. The
//! namespaces are removed when the [`Cluster`] drops, on Ctrl-C/SIGTERM
//! ([`crate::netns::remove_on_signal`]), and leftovers of a killed run by the next
//! [`Cluster::create`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::{
    in_ns, in_ns_output, ip, software_checksums, within, Namespaces, NodeChecksums,
};
use crate::traffic::{start_backends, BackendSite, Backends};

/// Prefix of every namespace the cluster creates.
pub const PREFIX: &str = "lbcl-";
/// The client's LAN address.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 10);
/// The client's LAN address (IPv6).
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x210, 0, 0, 0, 0, 0, 0x10);
/// Most nodes a cluster can have ([`Cluster::with_nodes`]).
pub const MAX_NODES: usize = 3;
/// The nodes' LAN addresses (node-1, node-2, and node-3 when the cluster has it): NodePorts and
/// the underlay.
pub const NODE_V4: [Ipv4Addr; MAX_NODES] = [
    Ipv4Addr::new(10, 210, 0, 1),
    Ipv4Addr::new(10, 210, 0, 2),
    Ipv4Addr::new(10, 210, 0, 3),
];
/// The nodes' LAN addresses (IPv6).
pub const NODE_V6: [Ipv6Addr; MAX_NODES] = [
    Ipv6Addr::new(0xfd00, 0x210, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 0x210, 0, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0xfd00, 0x210, 0, 0, 0, 0, 0, 3),
];
/// How many nodes host a backend pod (node-1 and node-2; node-3 is a frontend only).
pub const POD_NODES: usize = 2;
/// The backends' pod addresses (backend-1 on node-1, backend-2 on node-2).
pub const BACKEND_V4: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 211, 1, 2), Ipv4Addr::new(10, 211, 2, 2)];
/// The backends' pod addresses (IPv6).
pub const BACKEND_V6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0x211, 1, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0xfd00, 0x211, 2, 0, 0, 0, 0, 2),
];
/// The service VIP, routed by the client via node-1.
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The IPv6 service VIP, routed by the client via node-1.
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
/// The service port on the VIPs.
pub const VIP_PORT: u16 = 80;
/// The NodePort, on both nodes' LAN addresses.
pub const NODE_PORT: u16 = 30080;
/// Each node's LAN interface (and the client's).
pub const LAN_IF: &str = "eth0";
/// The bridge ports (in the LAN namespace) of the nodes' LAN links: what a node sends arrives
/// there, what the bridge sends the node leaves there.
pub const NODE_LAN_PORTS: [&str; MAX_NODES] = ["n1", "n2", "n3"];
/// The host side of the pod veth on each node.
pub const POD_IF: &str = "pod1";
/// Underlay MTU of every link.
pub const LAN_MTU: u16 = 1500;

/// IP family of a test case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The client's address in this family.
    #[must_use]
    pub fn client(self) -> IpAddr {
        self.pick(CLIENT_V4, CLIENT_V6)
    }

    /// Node `i`'s LAN address (0: node-1).
    #[must_use]
    pub fn node(self, i: usize) -> IpAddr {
        self.pick(NODE_V4[i % MAX_NODES], NODE_V6[i % MAX_NODES])
    }

    /// Backend `i`'s pod address (0: backend-1).
    #[must_use]
    pub fn backend(self, i: usize) -> IpAddr {
        self.pick(BACKEND_V4[i % 2], BACKEND_V6[i % 2])
    }

    /// The service VIP.
    #[must_use]
    pub fn vip(self) -> IpAddr {
        self.pick(VIP_V4, VIP_V6)
    }

    fn pick(self, v4: Ipv4Addr, v6: Ipv6Addr) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(v4),
            Family::V6 => IpAddr::V6(v6),
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// One node's identity as the datapath needs it: its own addresses, the underlay MTU, and its
/// peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddrs {
    /// This node's IPv4 LAN address.
    pub v4: Ipv4Addr,
    /// This node's IPv6 LAN address.
    pub v6: Ipv6Addr,
    /// Every other node's LAN addresses (IPv4, then IPv6, node by node): the nodes it exchanges
    /// tunnel packets with.
    pub peers: Vec<IpAddr>,
    /// Underlay MTU.
    pub mtu: u16,
}

/// Interface packet counters (from the kernel's per-device statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Packets received.
    pub rx_packets: u64,
    /// Packets transmitted.
    pub tx_packets: u64,
}

/// The two-node (or three-node) topology; dropping it removes every namespace.
#[derive(Debug)]
pub struct Cluster {
    /// The client's namespace.
    pub client: String,
    /// The namespace holding the LAN bridge.
    pub lan: String,
    /// The nodes' namespaces: node-1's, node-2's, and node-3's when the cluster has it.
    pub nodes: Vec<String>,
    /// backend-1's (on node-1) and backend-2's (on node-2) namespaces.
    pub backends: [String; 2],
    namespaces: Namespaces,
    /// Whether the nodes' own devices complete checksums in software.
    node_checksums: std::cell::Cell<NodeChecksums>,
}

impl Cluster {
    /// Builds the two-node topology. `tag` distinguishes concurrent users (tests) in one
    /// process.
    ///
    /// # Errors
    /// When a namespace, link, address or route cannot be created (not root, iproute2 or ethtool
    /// missing); whatever was created is removed again.
    pub fn create(tag: &str) -> Result<Self> {
        Self::with_nodes(tag, 2)
    }

    /// Builds the topology with `nodes` nodes (2 or 3): node-3 joins the LAN as a frontend
    /// without a pod, routing both pod CIDRs via their nodes. Two nodes give exactly
    /// [`Cluster::create`]'s topology.
    ///
    /// # Errors
    /// If `nodes` is not 2 or 3, or as [`Cluster::create`].
    pub fn with_nodes(tag: &str, nodes: usize) -> Result<Self> {
        if !(POD_NODES..=MAX_NODES).contains(&nodes) {
            bail!("a cluster has {POD_NODES} to {MAX_NODES} nodes, not {nodes}");
        }
        // Each node's namespace role is named like its bridge port (n1, n2, n3).
        let mut roles = vec!["lan", "c"];
        roles.extend(NODE_LAN_PORTS.iter().take(nodes));
        roles.extend(["b1", "b2"]);
        let ns = Namespaces::create(PREFIX, tag, &roles)?;
        let cluster = Cluster {
            client: ns.name("c"),
            lan: ns.name("lan"),
            nodes: NODE_LAN_PORTS
                .iter()
                .take(nodes)
                .map(|n| ns.name(n))
                .collect(),
            backends: [ns.name("b1"), ns.name("b2")],
            namespaces: ns,
            node_checksums: std::cell::Cell::new(NodeChecksums::Offload),
        };
        cluster
            .wire()
            .with_context(|| format!("building the {nodes}-node cluster {tag}"))?;
        Ok(cluster)
    }

    /// How the nodes' own devices transmit checksums: the kernel's default offload, or
    /// completed in software after [`Self::complete_checksums_in_software`].
    #[must_use]
    pub fn node_checksums(&self) -> NodeChecksums {
        self.node_checksums.get()
    }

    /// Every namespace of the cluster.
    #[must_use]
    pub fn namespaces(&self) -> &[String] {
        self.namespaces.all()
    }

    /// Makes every node's own devices (its LAN interface and its pod's host-side veth)
    /// complete transmit checksums in software ([`software_checksums`]), as a NIC without
    /// checksum offload or a tunnel device does: what a node sends on then carries the checksum
    /// its partial seed implies, so a wrong seed fails the connection instead of passing
    /// unchecked between veths. Client and pods keep the kernel's defaults.
    ///
    /// # Errors
    /// If ethtool is missing or fails.
    pub fn complete_checksums_in_software(&self) -> Result<()> {
        self.node_checksums.set(NodeChecksums::Software);
        for (i, node) in self.nodes.iter().enumerate() {
            software_checksums(node, LAN_IF)?;
            if i < POD_NODES {
                software_checksums(node, POD_IF)?;
            }
        }
        Ok(())
    }

    fn wire(&self) -> Result<()> {
        let lan = self.lan.as_str();
        ip(&["-n", lan, "link", "add", "br0", "type", "bridge"])?;
        // Without a multicast querier on the LAN, snooping could hold back IPv6 neighbour
        // discovery; a flat test LAN does not need it.
        ip(&[
            "-n",
            lan,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", lan, "link", "set", "br0", "up"])?;
        for ns in self.namespaces() {
            quiet_defaults(ns)?;
        }

        // The client and the nodes on the LAN: `eth0` inside each, a bridge port in `lan`.
        let mut lan_hosts = vec![(self.client.as_str(), "c", CLIENT_V4, CLIENT_V6)];
        for (i, node) in self.nodes.iter().enumerate() {
            lan_hosts.push((node.as_str(), NODE_LAN_PORTS[i], NODE_V4[i], NODE_V6[i]));
        }
        for (ns, port, v4, v6) in lan_hosts {
            ip(&[
                "-n", lan, "link", "add", port, "type", "veth", "peer", "name", LAN_IF, "netns", ns,
            ])?;
            ip(&["-n", lan, "link", "set", port, "master", "br0", "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", LAN_IF])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                LAN_IF,
                "nodad",
            ])?;
            ip(&["-n", ns, "link", "set", LAN_IF, "up"])?;
        }

        // A pod on node-1 and node-2: `pod1` on the node, `eth0` in the pod.
        for i in 0..POD_NODES {
            let (node, pod) = (self.nodes[i].as_str(), self.backends[i].as_str());
            let net = i + 1;
            let (gw4, gw6) = (pod_gateway_v4(i), pod_gateway_v6(i));
            ip(&[
                "-n", node, "link", "add", POD_IF, "type", "veth", "peer", "name", "eth0", "netns",
                pod,
            ])?;
            ip(&[
                "-n",
                node,
                "addr",
                "add",
                &format!("{gw4}/24"),
                "dev",
                POD_IF,
            ])?;
            ip(&[
                "-n",
                node,
                "addr",
                "add",
                &format!("{gw6}/64"),
                "dev",
                POD_IF,
                "nodad",
            ])?;
            ip(&["-n", node, "link", "set", POD_IF, "up"])?;
            let (b4, b6) = (BACKEND_V4[i], BACKEND_V6[i]);
            ip(&["-n", pod, "addr", "add", &format!("{b4}/24"), "dev", "eth0"])?;
            ip(&[
                "-n",
                pod,
                "addr",
                "add",
                &format!("{b6}/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            ip(&["-n", pod, "link", "set", "eth0", "up"])?;
            ip(&[
                "-n",
                pod,
                "route",
                "add",
                "default",
                "via",
                &gw4.to_string(),
            ])?;
            ip(&[
                "-n",
                pod,
                "-6",
                "route",
                "add",
                "default",
                "via",
                &gw6.to_string(),
            ])?;
            // The client reaches each pod CIDR through the node hosting it (plain routing checks).
            let c = self.client.as_str();
            ip(&[
                "-n",
                c,
                "route",
                "add",
                &format!("10.211.{net}.0/24"),
                "via",
                &NODE_V4[i].to_string(),
            ])?;
            ip(&[
                "-n",
                c,
                "-6",
                "route",
                "add",
                &format!("fd00:211:{net}::/64"),
                "via",
                &NODE_V6[i].to_string(),
            ])?;
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let node = node.as_str();
            // accept_local: after SNAT or VXLAN encapsulation in XDP, a packet carries the node's
            // own IPv4 address as source and is handed to the stack (XDP_PASS) to be routed; the
            // stack drops received packets with a local source as martians unless this is set.
            // No ICMP redirects: a node forwards the client's service traffic back out of the
            // LAN link it came in on, and each redirect would also take the tokens the node's
            // ICMP errors to the client are rate-limited by (shared per peer).
            for sysctl in [
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.conf.all.accept_local=1",
                "net.ipv4.conf.all.send_redirects=0",
                &format!("net.ipv4.conf.{LAN_IF}.send_redirects=0"),
            ] {
                in_ns(node, &["sysctl", "-qw", sysctl])?;
            }
            // Every other node's pod CIDR is behind that node.
            for peer in (0..POD_NODES).filter(|&p| p != i) {
                let peer_net = peer + 1;
                ip(&[
                    "-n",
                    node,
                    "route",
                    "add",
                    &format!("10.211.{peer_net}.0/24"),
                    "via",
                    &NODE_V4[peer].to_string(),
                ])?;
                ip(&[
                    "-n",
                    node,
                    "-6",
                    "route",
                    "add",
                    &format!("fd00:211:{peer_net}::/64"),
                    "via",
                    &NODE_V6[peer].to_string(),
                ])?;
            }
        }
        // The service VIPs via node-1 (where the client's traffic enters the cluster).
        let c = self.client.as_str();
        ip(&[
            "-n",
            c,
            "route",
            "add",
            &format!("{VIP_V4}/32"),
            "via",
            &NODE_V4[0].to_string(),
        ])?;
        ip(&[
            "-n",
            c,
            "-6",
            "route",
            "add",
            &format!("{VIP_V6}/128"),
            "via",
            &NODE_V6[0].to_string(),
        ])?;
        Ok(())
    }

    /// Node `i`'s identity (0: node-1) in a cluster of `nodes` nodes: every other node is a
    /// peer, so that tunnels between any two of them are accepted.
    #[must_use]
    pub fn node_addrs(i: usize, nodes: usize) -> NodeAddrs {
        let i = i % MAX_NODES;
        NodeAddrs {
            v4: NODE_V4[i],
            v6: NODE_V6[i],
            peers: (0..nodes.min(MAX_NODES))
                .filter(|&p| p != i)
                .flat_map(|p| [IpAddr::V4(NODE_V4[p]), IpAddr::V6(NODE_V6[p])])
                .collect(),
            mtu: LAN_MTU,
        }
    }

    /// Starts the TCP, UDP and HTTP servers of both backends on their IPv4 and IPv6 pod
    /// addresses ([`crate::traffic`]); they stop when the handle drops or after `lifetime`.
    ///
    /// # Errors
    /// If a server cannot bind.
    pub fn start_backends(&self, lifetime: Duration) -> Result<Backends> {
        let sites: Vec<BackendSite> = (0..2)
            .map(|i| BackendSite {
                ns: self.backends[i].clone(),
                name: format!("backend-{}", i + 1),
                addrs: vec![IpAddr::V4(BACKEND_V4[i]), IpAddr::V6(BACKEND_V6[i])],
            })
            .collect();
        start_backends(&sites, lifetime)
    }

    /// Runs `f` on this thread inside the client's namespace.
    ///
    /// # Errors
    /// If the namespace cannot be entered.
    pub fn in_client<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        within(&self.client, f)
    }

    /// Packet counters of interface `dev` in namespace `ns`.
    ///
    /// # Errors
    /// If the interface does not exist.
    pub fn link_stats(ns: &str, dev: &str) -> Result<LinkStats> {
        // `ip netns exec` mounts the namespace's own sysfs, so these are `dev` of `ns`.
        let read = |what: &str| -> Result<u64> {
            let path = format!("/sys/class/net/{dev}/statistics/{what}");
            let text = in_ns_output(ns, &["cat", &path])?;
            text.trim()
                .parse()
                .with_context(|| format!("parsing {path} in {ns}: {text:?}"))
        };
        Ok(LinkStats {
            rx_packets: read("rx_packets")?,
            tx_packets: read("tx_packets")?,
        })
    }

    /// The MAC address of `dev` in namespace `ns`.
    ///
    /// # Errors
    /// If the interface does not exist or its address cannot be parsed.
    pub fn mac(ns: &str, dev: &str) -> Result<[u8; 6]> {
        let text = in_ns_output(ns, &["cat", &format!("/sys/class/net/{dev}/address")])?;
        let mut mac = [0u8; 6];
        let mut parts = text.trim().split(':');
        for b in &mut mac {
            let part = parts.next().unwrap_or("");
            *b = u8::from_str_radix(part, 16)
                .with_context(|| format!("MAC of {dev} in {ns}: {text:?}"))?;
        }
        if parts.next().is_some() {
            bail!("MAC of {dev} in {ns} has more than 6 bytes: {text:?}");
        }
        Ok(mac)
    }
}

/// node-`i+1`'s address on its pod link (the pod's gateway).
#[must_use]
pub fn pod_gateway_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 211, (i % 2) as u8 + 1, 1)
}

/// node-`i+1`'s IPv6 address on its pod link (the pod's gateway).
#[must_use]
pub fn pod_gateway_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x211, (i % 2) as u16 + 1, 0, 0, 0, 0, 1)
}

/// Loopback up; reverse-path filtering off: DSR replies carry the VIP as source and tunnelled or
/// rewritten packets arrive on interfaces the strict check would reject; no duplicate address
/// detection, for the link-local addresses too: while it runs (about a second) a node cannot
/// resolve its IPv6 neighbours, and the first datagrams of a fresh cluster would be lost.
fn quiet_defaults(ns: &str) -> Result<()> {
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    for sysctl in [
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
    ] {
        in_ns(ns, &["sysctl", "-qw", sysctl])?;
    }
    Ok(())
}

/// The socket address of the service VIP in `family`.
#[must_use]
pub fn vip(family: Family) -> SocketAddr {
    SocketAddr::new(family.vip(), VIP_PORT)
}

/// The NodePort on node `i` (0: node-1) in `family`.
#[must_use]
pub fn node_port(family: Family, i: usize) -> SocketAddr {
    SocketAddr::new(family.node(i), NODE_PORT)
}
