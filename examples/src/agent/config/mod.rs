//! The agent's configuration file: TOML a person writes, checked into what the datapath takes
//! ([`Plan`]: a `DatapathConfig`, `TableSizes`, the attach points, this node, GC, metrics and
//! where services come from). Every error names the key and how to fix it.
//!
//! ```
//! use lb_examples::agent::config::{AgentConfig, Hook};
//!
//! let cfg = AgentConfig::from_toml("lb-agent.toml", r#"
//! [datapath]
//! pin_dir = "/sys/fs/bpf/lb"
//! forwarding_mode = "snat"
//!
//! [timeouts]
//! preset = "calico"
//! TCPEstablished = "1h"
//! TCPFinsSeen = "auto"
//!
//! [tables]
//! conntrack = 65536
//!
//! [[attach]]
//! interface = "eth0"
//! hook = "xdp"
//!
//! [node]
//! name = "node-a"
//! address_v4 = "10.250.0.1"
//!
//! [sources]
//! manifests = "/etc/lb-agent/manifests"
//! "#).unwrap();
//! let plan = cfg.plan(&lb_conntrack::NoAutoSource).unwrap();
//! assert_eq!(plan.sizes.conntrack, 65536);
//! assert_eq!(plan.datapath.timeouts.of(lb_api::abi::CtState::Established as u8), 3_600_000_000_000);
//! assert_eq!(plan.attach[0].hook, Hook::Xdp);
//! assert_eq!(plan.datapath.node_v4, [10, 250, 0, 1]);
//!
//! // A typo is refused with the key and its place.
//! let e = AgentConfig::from_toml("x.toml", "[tables]\nconntrak = 1\n").unwrap_err();
//! let cause = std::error::Error::source(&e).unwrap().to_string();
//! assert!(cause.contains("conntrak") && cause.contains("line 2"), "{cause}");
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use lb_api::abi::DatapathConfig;
use lb_conntrack::{AutoSource, GcConfig, Knob, Timeout, TimeoutError, TimeoutPolicy};
use lb_control::{ConfigError, ForwardingMode, NodeSpec, PortRange, SizeError, TableSizes};

mod file;
pub use file::{
    AgentConfig, AttachSection, DatapathSection, GcSection, MetricsSection, NodeSection,
    SourcesSection, TablesSection, TimeoutsSection,
};

/// What a configuration file is refused for: the key, the value and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("reading {path} failed: check the path given with --config")]
    Read {
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type (the message names the key, line
    /// and column).
    #[error("{origin} is not a valid configuration (the cause names the key, line and column)")]
    Toml {
        /// The file.
        origin: String,
        /// The parser's error.
        #[source]
        source: toml::de::Error,
    },
    /// A value of the right type that breaks a rule.
    #[error("key `{key}` = {value:?}: {fix}")]
    Invalid {
        /// The key's path (`node.snat_ports`).
        key: String,
        /// The value given.
        value: String,
        /// The rule and how to meet it.
        fix: String,
    },
    /// A conntrack timeout refused by the timeout policy.
    #[error("key `timeouts.{knob}`: fix the value (a duration like \"30s\", \"2m\", \"1h\", or \"auto\")")]
    Timeout {
        /// The knob.
        knob: String,
        /// The policy's error.
        #[source]
        source: TimeoutError,
    },
    /// Table sizes refused (the cause names the table and the `tables.*` key).
    #[error("section `[tables]`: the sizes are refused")]
    Sizes(#[source] SizeError),
    /// The node refused (the cause names the field, a key of `[node]`).
    #[error("section `[node]`: the node is refused")]
    Node(#[source] ConfigError),
}

fn invalid(key: &str, value: impl std::fmt::Display, fix: &str) -> ConfigFileError {
    ConfigFileError::Invalid {
        key: key.into(),
        value: value.to_string(),
        fix: fix.into(),
    }
}

/// How a program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// XDP, native where the driver supports it, else generic.
    Xdp,
    /// XDP in generic (skb) mode only.
    XdpGeneric,
    /// TC ingress.
    TcIngress,
    /// TC egress.
    TcEgress,
}

/// One attach point of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachPoint {
    /// The interface.
    pub interface: String,
    /// The hook.
    pub hook: Hook,
    /// The network namespace (`None`: the agent's).
    pub netns: Option<String>,
}

/// The checked configuration: what the agent loads, attaches and runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The datapath configuration (timeouts, seed, node fields, port ranges).
    pub datapath: DatapathConfig,
    /// Table sizes.
    pub sizes: TableSizes,
    /// The tables' memory limit.
    pub memory_limit: Option<u64>,
    /// Pin directory.
    pub pin_dir: PathBuf,
    /// Attach points, in order.
    pub attach: Vec<AttachPoint>,
    /// This node's name.
    pub node_name: String,
    /// This node as configured (addresses may come from its `Node` object instead: see
    /// [`Plan::node_from`]).
    pub node: NodeSpec,
    /// Default forwarding mode.
    pub forwarding_mode: ForwardingMode,
    /// NodePort addresses (empty: the node's).
    pub nodeport_addresses: Vec<IpAddr>,
    /// Conntrack GC.
    pub gc: GcConfig,
    /// The metrics listener.
    pub metrics: Option<SocketAddr>,
    /// Manifest directory.
    pub manifests: Option<PathBuf>,
    /// Whether to watch the Kubernetes API.
    pub kubernetes: bool,
    /// Manifest poll interval.
    pub poll_interval: Duration,
    /// Least time between programming rounds.
    pub min_sync_period: Duration,
    /// The proxy name services are selected by.
    pub service_proxy_name: Option<String>,
    /// Timeout warnings (a timeout below the host's, say), to log.
    pub warnings: Vec<String>,
}

impl AgentConfig {
    /// Parses a configuration; `origin` names it in errors.
    ///
    /// # Errors
    /// [`ConfigFileError::Toml`] naming the key, line and column.
    pub fn from_toml(origin: &str, text: &str) -> Result<Self, ConfigFileError> {
        toml::from_str(text).map_err(|source| ConfigFileError::Toml {
            origin: origin.into(),
            source,
        })
    }

    /// Reads and parses a file.
    ///
    /// # Errors
    /// [`ConfigFileError::Read`] or those of [`Self::from_toml`].
    pub fn read(path: &std::path::Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_toml(&path.display().to_string(), &text)
    }

    /// Checks every value and builds the [`Plan`]; `auto` timeouts are read from `auto`
    /// (`lb_conntrack::ProcSysctl::system()` on a node).
    ///
    /// # Errors
    /// The first [`ConfigFileError`], naming the key.
    pub fn plan(&self, auto: &dyn AutoSource) -> Result<Plan, ConfigFileError> {
        let mut datapath = lb_control::default_config(self.datapath.hash_seed);
        let (timeouts, warnings) = self.timeouts.check(auto)?;
        datapath.timeouts = timeouts;
        if let Some(r) = &self.datapath.source_port_rewrite {
            let range = port_range("datapath.source_port_rewrite", r)?;
            datapath.src_port_min = range.min;
            datapath.src_port_max = range.max;
        }
        if let Some(t) = self.datapath.source_port_tries {
            if !(1..=32).contains(&t) {
                return Err(invalid(
                    "datapath.source_port_tries",
                    t,
                    "use 1..=32 (default 3)",
                ));
            }
            datapath.src_port_tries = t;
        }
        let forwarding_mode = match self.datapath.forwarding_mode.to_ascii_lowercase().as_str() {
            "snat" => ForwardingMode::Snat,
            "dsr" => ForwardingMode::Dsr,
            "tunnel" => ForwardingMode::Tunnel,
            "hybrid" => ForwardingMode::Hybrid,
            other => {
                return Err(invalid(
                    "datapath.forwarding_mode",
                    other,
                    "use \"snat\", \"dsr\", \"tunnel\" or \"hybrid\"",
                ))
            }
        };
        let t = &self.tables;
        let d = TableSizes::default();
        let sizes = TableSizes {
            conntrack: t.conntrack.unwrap_or(d.conntrack),
            services: t.services.unwrap_or(d.services),
            backends: t.backends.unwrap_or(d.backends),
            nodes: t.nodes.unwrap_or(d.nodes),
            xdp_partial: t.xdp_partial.unwrap_or(d.xdp_partial),
            drop_events_bytes: t.drop_events_bytes.unwrap_or(d.drop_events_bytes),
            affinity: t.affinity.unwrap_or(d.affinity),
            backends_by_addr: t.backends_by_addr.unwrap_or(d.backends_by_addr),
        };
        sizes
            .validate(t.memory_limit_bytes)
            .map_err(ConfigFileError::Sizes)?;
        let attach = self
            .attach
            .iter()
            .enumerate()
            .map(|(i, a)| a.point(i))
            .collect::<Result<Vec<_>, _>>()?;
        let node = self.node.spec()?;
        if node.address_v4.is_some() || node.address_v6.is_some() {
            node.validate().map_err(ConfigFileError::Node)?;
            node.apply(&mut datapath);
        }
        let metrics = match self.metrics.listen.trim() {
            "" => None,
            s => Some(s.parse().map_err(|_| {
                invalid(
                    "metrics.listen",
                    s,
                    "give an address and port like \"127.0.0.1:9967\", or \"\" for none",
                )
            })?),
        };
        let gc_default = GcConfig::default();
        let gc = GcConfig {
            initial_interval: duration(
                "gc.initial_interval",
                self.gc.initial_interval.as_deref(),
                gc_default.initial_interval,
            )?,
            min_interval: duration(
                "gc.min_interval",
                self.gc.min_interval.as_deref(),
                gc_default.min_interval,
            )?,
            max_interval: duration(
                "gc.max_interval",
                self.gc.max_interval.as_deref(),
                gc_default.max_interval,
            )?,
        };
        if gc.min_interval > gc.max_interval || gc.min_interval.is_zero() {
            return Err(invalid(
                "gc.min_interval",
                format!("{:?}", gc.min_interval),
                "must be non-zero and at most gc.max_interval",
            ));
        }
        let s = &self.sources;
        if s.manifests.is_none() && !s.kubernetes {
            return Err(invalid(
                "sources",
                "none",
                "set `manifests = \"DIR\"` or `kubernetes = true` (or both)",
            ));
        }
        let poll_interval = duration(
            "sources.poll_interval",
            s.poll_interval.as_deref(),
            Duration::from_secs(2),
        )?;
        let min_sync_period = duration(
            "sources.min_sync_period",
            s.min_sync_period.as_deref(),
            Duration::from_secs(1),
        )?;
        let node_name = match &self.node.name {
            Some(n) if !n.is_empty() => n.clone(),
            Some(_) => return Err(invalid("node.name", "", "give this node's name")),
            None => hostname().ok_or_else(|| {
                invalid(
                    "node.name",
                    "(unset)",
                    "the host name is unreadable: set it",
                )
            })?,
        };
        Ok(Plan {
            datapath,
            sizes,
            memory_limit: t.memory_limit_bytes,
            pin_dir: self.datapath.pin_dir.clone(),
            attach,
            node_name,
            node,
            forwarding_mode,
            nodeport_addresses: self.node.nodeport_addresses.clone(),
            gc,
            metrics,
            manifests: s.manifests.clone(),
            kubernetes: s.kubernetes,
            poll_interval,
            min_sync_period,
            service_proxy_name: s.service_proxy_name.clone(),
            warnings,
        })
    }
}

impl Plan {
    /// This node's spec: the configured fields over the one from its `Node` object (`from_api`),
    /// peers joined.
    #[must_use]
    pub fn node_from(&self, from_api: Option<&NodeSpec>) -> NodeSpec {
        let mut n = from_api.cloned().unwrap_or_default();
        let c = &self.node;
        n.address_v4 = c.address_v4.or(n.address_v4);
        n.address_v6 = c.address_v6.or(n.address_v6);
        n.peers.extend(c.peers.iter().copied());
        n.peers.sort();
        n.peers.dedup();
        n.vni = c.vni;
        n.tunnel_port = c.tunnel_port;
        n.underlay_mtu = c.underlay_mtu;
        n.snat_ports = c.snat_ports;
        n
    }
}

impl TimeoutsSection {
    fn check(
        &self,
        auto: &dyn AutoSource,
    ) -> Result<(lb_api::abi::Timeouts, Vec<String>), ConfigFileError> {
        let mut p = match self
            .preset
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("netfilter") => TimeoutPolicy::netfilter(),
            Some("calico") => TimeoutPolicy::calico(),
            Some("cilium") => TimeoutPolicy::cilium(),
            Some(other) => {
                return Err(invalid(
                    "timeouts.preset",
                    other,
                    "use \"netfilter\", \"calico\" or \"cilium\"",
                ))
            }
        };
        for (k, v) in &self.knobs {
            let knob: Knob = k.parse().map_err(|_| {
                invalid(
                    &format!("timeouts.{k}"),
                    v,
                    "unknown knob: use TCPSynSent, TCPEstablished, TCPFinsSeen, TCPResetSeen, \
                     UDPTimeout, GenericTimeout or ICMPTimeout",
                )
            })?;
            p.set_str(knob.name(), v)
                .map_err(|source| ConfigFileError::Timeout {
                    knob: k.clone(),
                    source,
                })?;
        }
        let checked = p.check(auto).map_err(|source| ConfigFileError::Timeout {
            knob: "*".into(),
            source,
        })?;
        let warnings = checked.warnings().map(ToString::to_string).collect();
        Ok((checked.timeouts, warnings))
    }
}

impl AttachSection {
    fn point(&self, i: usize) -> Result<AttachPoint, ConfigFileError> {
        if self.interface.is_empty() || self.interface.len() >= 16 {
            return Err(invalid(
                &format!("attach[{i}].interface"),
                &self.interface,
                "an interface name of 1 to 15 bytes",
            ));
        }
        let hook = match (self.hook.as_str(), self.xdp_mode.as_deref()) {
            ("xdp", None | Some("native")) => Hook::Xdp,
            ("xdp", Some("generic")) => Hook::XdpGeneric,
            ("xdp", Some(m)) => {
                return Err(invalid(
                    &format!("attach[{i}].xdp_mode"),
                    m,
                    "use \"native\" or \"generic\"",
                ))
            }
            ("tc-ingress", None) => Hook::TcIngress,
            ("tc-egress", None) => Hook::TcEgress,
            ("tc-ingress" | "tc-egress", Some(m)) => {
                return Err(invalid(
                    &format!("attach[{i}].xdp_mode"),
                    m,
                    "xdp_mode applies to hook = \"xdp\" only: remove it",
                ))
            }
            (h, _) => {
                return Err(invalid(
                    &format!("attach[{i}].hook"),
                    h,
                    "use \"xdp\", \"tc-ingress\" or \"tc-egress\"",
                ))
            }
        };
        Ok(AttachPoint {
            interface: self.interface.clone(),
            hook,
            netns: self.netns.clone(),
        })
    }
}

impl NodeSection {
    fn spec(&self) -> Result<NodeSpec, ConfigFileError> {
        let d = NodeSpec::default();
        let snat_ports = match &self.snat_ports {
            Some(r) => port_range("node.snat_ports", r)?,
            None => d.snat_ports,
        };
        Ok(NodeSpec {
            address_v4: self.address_v4,
            address_v6: self.address_v6,
            peers: self.peers.clone(),
            vni: self.vni.unwrap_or(d.vni),
            tunnel_port: self.tunnel_port.unwrap_or(d.tunnel_port),
            underlay_mtu: self.underlay_mtu.unwrap_or(d.underlay_mtu),
            snat_ports,
        })
    }
}

/// Parses `"min-max"`.
fn port_range(key: &str, s: &str) -> Result<PortRange, ConfigFileError> {
    let fix = "a range \"min-max\" with 1 <= min <= max <= 65535";
    let (a, b) = s.split_once('-').ok_or_else(|| invalid(key, s, fix))?;
    let r = PortRange {
        min: a.trim().parse().map_err(|_| invalid(key, s, fix))?,
        max: b.trim().parse().map_err(|_| invalid(key, s, fix))?,
    };
    r.validate("range").map_err(|_| invalid(key, s, fix))?;
    Ok(r)
}

/// Parses a duration like `"10s"` (the timeouts' syntax, without `auto`).
fn duration(key: &str, s: Option<&str>, default: Duration) -> Result<Duration, ConfigFileError> {
    let Some(s) = s else {
        return Ok(default);
    };
    match s.parse::<Timeout>() {
        Ok(Timeout::Fixed(d)) => Ok(d),
        _ => Err(invalid(key, s, "a duration like \"10s\", \"5m\" or \"1h\"")),
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}
