//! The configuration file's sections as written (serde): unknown keys are refused by name.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::Deserialize;

#[cfg(doc)]
use lb_control::TableSizes;

/// The configuration file, as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `[datapath]`.
    #[serde(default)]
    pub datapath: DatapathSection,
    /// `[timeouts]`: a preset and knobs (Calico's names: `TCPSynSent`, `TCPEstablished`,
    /// `TCPFinsSeen`, `TCPResetSeen`, `UDPTimeout`, `GenericTimeout`, `ICMPTimeout`), each a
    /// duration or `"auto"` (the kernel's netfilter value).
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    /// `[tables]`: table sizes (entries; bytes for the drop-event ring).
    #[serde(default)]
    pub tables: TablesSection,
    /// `[[attach]]`: where the programs run.
    #[serde(default)]
    pub attach: Vec<AttachSection>,
    /// `[node]`.
    #[serde(default)]
    pub node: NodeSection,
    /// `[gc]`: conntrack GC's adaptive interval.
    #[serde(default)]
    pub gc: GcSection,
    /// `[metrics]`.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// `[sources]`: where services come from.
    #[serde(default)]
    pub sources: SourcesSection,
}

/// `[datapath]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatapathSection {
    /// Where maps and links are pinned (kept across agent restarts). Default `/sys/fs/bpf/lb`.
    pub pin_dir: PathBuf,
    /// Seed of the backend-picking hash. Keep it across restarts.
    pub hash_seed: u32,
    /// Forwarding mode of services without the `lb.dataplane.io/forwarding-mode` annotation:
    /// `snat` (default), `dsr`, `tunnel`, `hybrid`.
    pub forwarding_mode: String,
    /// Source-port collision rewrite range, `"min-max"` (default `"20000-29999"`).
    pub source_port_rewrite: Option<String>,
    /// Random ports the collision resolver tries (1..=32, default 3).
    pub source_port_tries: Option<u32>,
}

impl Default for DatapathSection {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from("/sys/fs/bpf/lb"),
            hash_seed: 0x5eed,
            forwarding_mode: "snat".into(),
            source_port_rewrite: None,
            source_port_tries: None,
        }
    }
}

/// `[timeouts]` (unknown knob names are refused by [`AgentConfig::plan`], naming the key: serde
/// cannot deny unknown fields next to a flattened map).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct TimeoutsSection {
    /// `netfilter` (default), `calico` or `cilium`.
    pub preset: Option<String>,
    /// Knob overrides by name.
    #[serde(flatten)]
    pub knobs: std::collections::BTreeMap<String, String>,
}

/// `[tables]`: any size not given keeps [`TableSizes::default`].
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TablesSection {
    /// Conntrack entries (two per flow).
    pub conntrack: Option<u32>,
    /// Services (frontends).
    pub services: Option<u32>,
    /// Backend slots of all services.
    pub backends: Option<u32>,
    /// Peer nodes.
    pub nodes: Option<u32>,
    /// XDP devices with partial checksums.
    pub xdp_partial: Option<u32>,
    /// The drop-event ring in bytes (a power-of-two multiple of 4096).
    pub drop_events_bytes: Option<u32>,
    /// Session-affinity entries (client address and service).
    pub affinity: Option<u32>,
    /// Active backends of all services by address (one per backend and service).
    pub backends_by_addr: Option<u32>,
    /// The memory the tables may take, in bytes (refused with the largest table named).
    pub memory_limit_bytes: Option<u64>,
}

/// One `[[attach]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AttachSection {
    /// The interface name.
    pub interface: String,
    /// `xdp`, `tc-ingress` or `tc-egress`.
    pub hook: String,
    /// For `xdp`: `native` (default; falls back to `generic` when the driver has none) or
    /// `generic`.
    pub xdp_mode: Option<String>,
    /// Attach inside this network namespace (`/run/netns/NAME`): for a node that is itself a
    /// namespace (tests, demos). Default: the agent's own.
    pub netns: Option<String>,
}

/// `[node]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// This node's name (endpoints' `nodeName`). Default: the host name.
    pub name: Option<String>,
    /// This node's IPv4 address between nodes (default: from its `Node` object).
    pub address_v4: Option<Ipv4Addr>,
    /// This node's IPv6 address between nodes.
    pub address_v6: Option<Ipv6Addr>,
    /// The other nodes' addresses (added to those from `Node` objects).
    #[serde(default)]
    pub peers: Vec<IpAddr>,
    /// VXLAN network identifier (default 1).
    pub vni: Option<u32>,
    /// Tunnel UDP port (default 4789).
    pub tunnel_port: Option<u16>,
    /// MTU between nodes (default 1500).
    pub underlay_mtu: Option<u16>,
    /// SNAT source ports, `"min-max"` (default `"32768-60999"`).
    pub snat_ports: Option<String>,
    /// Addresses NodePorts listen on (default: the node's addresses).
    #[serde(default)]
    pub nodeport_addresses: Vec<IpAddr>,
}

/// `[gc]`: durations like `"10s"`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GcSection {
    /// Interval before the first adaptation (default 5m).
    pub initial_interval: Option<String>,
    /// Shortest interval (default 10s).
    pub min_interval: Option<String>,
    /// Longest interval (default 12h).
    pub max_interval: Option<String>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Where `/metrics` and `/healthz` are served (default `127.0.0.1:9967`; `""`: not served).
    pub listen: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9967".into(),
        }
    }
}

/// `[sources]`: a manifest directory, the Kubernetes API, or both.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SourcesSection {
    /// A directory of YAML manifests (Services, EndpointSlices, Nodes), watched for changes.
    pub manifests: Option<PathBuf>,
    /// Watch the Kubernetes API (in-cluster or `KUBECONFIG` credentials).
    #[serde(default)]
    pub kubernetes: bool,
    /// How often the manifest directory is read (default 2s).
    pub poll_interval: Option<String>,
    /// The least time between two programming rounds (default 1s; changes are batched).
    pub min_sync_period: Option<String>,
    /// Take only services labelled `service.kubernetes.io/service-proxy-name` with this value.
    pub service_proxy_name: Option<String>,
}
