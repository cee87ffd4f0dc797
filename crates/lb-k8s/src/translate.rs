//! The translation: Services, EndpointSlices and Nodes → frontends ([`ServiceSpec`]s), this
//! node's [`NodeSpec`], health-check ports, and an [`Issue`] for every field not expressed.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Node, Service};

use crate::node::node_addresses;
pub use crate::node::node_spec;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use lb_api::flow::L4Proto;
use lb_control::{
    BackendSpec, NodeSpec, ServiceSpec, SessionAffinity, TrafficPolicy, AFFINITY_DEFAULT_TIMEOUT_S,
};

use crate::annotations::{self as ann, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, LABEL_ZONE};
use crate::endpoints::{choose, endpoints_of, index_slices, Endpoint, Locality};
use crate::issue::{Issue, IssueKind, ObjectRef};
use crate::{frontend_key, FrontendKey, IdAllocator};

/// What the translation needs to know about this node and this proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// This node's name (the `Node` object's, and endpoints' `nodeName`).
    pub node_name: String,
    /// kube-proxy's `--service-proxy-name` rule: `None` takes services without the
    /// `service.kubernetes.io/service-proxy-name` label (kube-proxy's behaviour); `Some(name)`
    /// takes only services with that label set to `name`.
    pub service_proxy_name: Option<String>,
    /// The addresses NodePorts listen on; empty: this node's `InternalIP` and `ExternalIP`
    /// addresses from its `Node` object.
    pub nodeport_addresses: Vec<IpAddr>,
    /// Forwarding mode of services without the [`ANNOTATION_FORWARDING_MODE`] annotation.
    ///
    /// [`ANNOTATION_FORWARDING_MODE`]: crate::ANNOTATION_FORWARDING_MODE
    pub forwarding_mode: lb_control::ForwardingMode,
}

/// Which of a service's addresses a frontend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    /// `spec.clusterIPs[]`.
    ClusterIp,
    /// `spec.externalIPs[]`.
    ExternalIp,
    /// `status.loadBalancer.ingress[].ip`.
    LoadBalancer,
    /// `spec.ports[].nodePort` on a node address.
    NodePort,
}

/// One frontend of a service port, ready to program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    /// The service's namespace.
    pub namespace: String,
    /// The service's name.
    pub name: String,
    /// The service port's name (empty when unnamed).
    pub port_name: String,
    /// Which address it is.
    pub kind: FrontendKind,
    /// The spec (validated; its id from the [`IdAllocator`]).
    pub spec: ServiceSpec,
}

/// A health-check NodePort (`spec.healthCheckNodePort` of an `externalTrafficPolicy: Local`
/// service): load balancers ask it whether this node has local endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The service's namespace.
    pub namespace: String,
    /// The service's name.
    pub name: String,
    /// The port to answer on.
    pub port: u16,
    /// Endpoints on this node taking new flows (200 when > 0, else 503).
    pub local_endpoints: usize,
}

/// A service passed over by kube-proxy's rules (not an error: another proxy or nobody serves it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The service.
    pub object: ObjectRef,
    /// The rule.
    pub reason: &'static str,
}

/// Everything a set of objects translates to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Translation {
    /// The frontends, sorted by service, port, kind and address.
    pub frontends: Vec<Frontend>,
    /// This node's identity from its `Node` object (`None` when the object is absent).
    pub node: Option<NodeSpec>,
    /// Health-check ports to serve.
    pub health_checks: Vec<HealthCheck>,
    /// Services passed over by the selection rules.
    pub skipped: Vec<Skipped>,
    /// Fields not (fully) expressed, each naming the object and field.
    pub issues: Vec<Issue>,
}

/// Translates the objects into frontends with kube-proxy's rules. Deterministic for the same
/// objects and `ids`; ids of frontends that no longer exist are released from `ids`.
#[must_use]
pub fn translate(
    services: &[Service],
    slices: &[EndpointSlice],
    nodes: &[Node],
    opts: &Options,
    ids: &mut IdAllocator,
) -> Translation {
    let mut t = Translation::default();
    let node_addrs = node_addresses(nodes);
    let me = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(opts.node_name.as_str()));
    let zone = me
        .and_then(|n| n.metadata.labels.as_ref())
        .and_then(|l| l.get(LABEL_ZONE))
        .map(String::as_str);
    t.node = node_spec(nodes, &opts.node_name);
    let nodeport_addrs: Vec<IpAddr> = if opts.nodeport_addresses.is_empty() {
        node_addrs.get(&opts.node_name).cloned().unwrap_or_default()
    } else {
        opts.nodeport_addresses.clone()
    };
    let here = Locality {
        node_name: &opts.node_name,
        zone,
    };
    let by_service = index_slices(slices);
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
    let mut owners: BTreeMap<FrontendKey, String> = BTreeMap::new();
    for svc in sorted {
        let ctx = Ctx {
            svc,
            default_mode: opts.forwarding_mode,
            here,
            node_addrs: &node_addrs,
            nodeport_addrs: &nodeport_addrs,
        };
        if let Some(reason) = skip_reason(svc, opts) {
            t.skipped.push(Skipped {
                object: ctx.object(),
                reason,
            });
            continue;
        }
        let key = (ctx.namespace(), ctx.name());
        let svc_slices = by_service.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        ctx.frontends(svc_slices, ids, &mut owners, &mut t);
    }
    let live: std::collections::BTreeSet<FrontendKey> = t
        .frontends
        .iter()
        .map(|f| frontend_key(f.spec.frontend, f.spec.proto))
        .collect();
    ids.retain(|k| live.contains(k));
    t
}

/// kube-proxy's `ShouldSkipService` and its informers' label selector.
fn skip_reason(svc: &Service, opts: &Options) -> Option<&'static str> {
    let labels = svc.metadata.labels.as_ref();
    let proxy = labels.and_then(|l| l.get(LABEL_SERVICE_PROXY_NAME));
    match (&opts.service_proxy_name, proxy) {
        (None, Some(_)) => return Some("labelled for another proxy (service-proxy-name)"),
        (Some(mine), p) if p != Some(mine) => {
            return Some("not labelled with this proxy's service-proxy-name")
        }
        _ => {}
    }
    if labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS)) {
        return Some("headless (service.kubernetes.io/headless label)");
    }
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Some("type ExternalName (DNS only)");
    }
    match spec.cluster_ip.as_deref() {
        None | Some("") | Some("None") => Some("headless (no cluster IP)"),
        _ => None,
    }
}

struct Ctx<'a> {
    svc: &'a Service,
    default_mode: lb_control::ForwardingMode,
    here: Locality<'a>,
    node_addrs: &'a BTreeMap<String, Vec<IpAddr>>,
    nodeport_addrs: &'a [IpAddr],
}

/// What every frontend of a service port shares.
struct PortPlan {
    port_name: String,
    proto: L4Proto,
    eps: Vec<Endpoint>,
    template: ServiceSpec,
}

impl Ctx<'_> {
    fn namespace(&self) -> String {
        self.svc.metadata.namespace.clone().unwrap_or_default()
    }
    fn name(&self) -> String {
        self.svc.metadata.name.clone().unwrap_or_default()
    }
    fn object(&self) -> ObjectRef {
        ObjectRef {
            kind: "Service",
            namespace: self.namespace(),
            name: self.name(),
        }
    }
    fn issue(&self, field: impl Into<String>, kind: IssueKind) -> Issue {
        Issue {
            object: self.object(),
            field: field.into(),
            kind,
        }
    }
    fn unsupported(&self, field: &str, what: &str, effect: &str) -> Issue {
        self.issue(
            field,
            IssueKind::Unsupported {
                what: what.into(),
                effect: effect.into(),
            },
        )
    }
    fn invalid(&self, field: &str, value: impl Into<String>, rule: impl Into<String>) -> Issue {
        self.issue(
            field,
            IssueKind::Invalid {
                value: value.into(),
                rule: rule.into(),
            },
        )
    }

    fn frontends(
        &self,
        slices: &[&EndpointSlice],
        ids: &mut IdAllocator,
        owners: &mut BTreeMap<FrontendKey, String>,
        t: &mut Translation,
    ) {
        let Some(spec) = self.svc.spec.as_ref() else {
            return;
        };
        let annotations = self.svc.metadata.annotations.as_ref();
        let selection = match ann::selection(annotations) {
            Ok(s) => s,
            Err((key, value, rule)) => {
                t.issues.push(self.invalid(
                    &format!("metadata.annotations[{key}]"),
                    value,
                    format!("{rule}; the service is not programmed"),
                ));
                return;
            }
        };
        let mode = match ann::forwarding_mode(annotations, self.default_mode) {
            Ok(m) => m,
            Err((key, value, rule)) => {
                t.issues.push(self.invalid(
                    &format!("metadata.annotations[{key}]"),
                    value,
                    format!("{rule}; the service is not programmed"),
                ));
                return;
            }
        };
        let affinity = match spec.session_affinity.as_deref() {
            Some("ClientIP") => {
                let timeout = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds);
                match timeout.map(u32::try_from) {
                    None => SessionAffinity::ClientIp {
                        timeout_s: AFFINITY_DEFAULT_TIMEOUT_S,
                    },
                    Some(Ok(timeout_s)) => SessionAffinity::ClientIp { timeout_s },
                    Some(Err(_)) => {
                        t.issues.push(self.invalid(
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            format!("{timeout:?}"),
                            "1..=86400 seconds; the service is not programmed",
                        ));
                        return;
                    }
                }
            }
            _ => SessionAffinity::None,
        };
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let topology = spec.traffic_distribution.is_some()
            || annotations
                .and_then(|a| a.get(ann::ANNOTATION_TOPOLOGY_MODE))
                .is_some_and(|m| m.eq_ignore_ascii_case("auto"));
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        let has_nodeports = ty == "NodePort" || ty == "LoadBalancer";
        let source_ranges = spec
            .load_balancer_source_ranges
            .as_ref()
            .is_some_and(|r| !r.is_empty());
        if source_ranges {
            t.issues.push(self.unsupported(
                "spec.loadBalancerSourceRanges",
                "client source-range filtering",
                "the load-balancer ingress frontends (not opened to every client)",
            ));
        }
        let cluster_ips: Vec<String> = match &spec.cluster_ips {
            Some(v) if !v.is_empty() => v.clone(),
            _ => spec.cluster_ip.clone().into_iter().collect(),
        };
        let mut local_eps: std::collections::BTreeSet<IpAddr> = Default::default();
        for (pi, p) in spec.ports.iter().flatten().enumerate() {
            let proto_s = p.protocol.as_deref().unwrap_or("TCP");
            let proto = match proto_s {
                "TCP" => L4Proto::Tcp,
                "UDP" => L4Proto::Udp,
                other => {
                    t.issues.push(self.unsupported(
                        &format!("spec.ports[{pi}].protocol"),
                        &format!("protocol {other}"),
                        "this port's frontends",
                    ));
                    continue;
                }
            };
            let Ok(port) = u16::try_from(p.port).map_err(|_| ()).and_then(|x| {
                if x == 0 {
                    Err(())
                } else {
                    Ok(x)
                }
            }) else {
                t.issues.push(self.invalid(
                    &format!("spec.ports[{pi}].port"),
                    p.port.to_string(),
                    "a port is 1..=65535",
                ));
                continue;
            };
            let port_name = p.name.clone().unwrap_or_default();
            let eps = endpoints_of(slices, &port_name, proto_s, &mut t.issues);
            let plan = PortPlan {
                port_name,
                proto,
                eps,
                template: ServiceSpec {
                    proto,
                    selection,
                    affinity,
                    mode,
                    ..ServiceSpec::default()
                },
            };
            for (i, ip) in cluster_ips.iter().enumerate() {
                match ip.parse::<IpAddr>() {
                    Ok(ip) => self.push(
                        &plan,
                        FrontendKind::ClusterIp,
                        SocketAddr::new(ip, port),
                        internal_local,
                        topology,
                        (ids, owners, t),
                    ),
                    Err(_) => t.issues.push(self.invalid(
                        &format!("spec.clusterIPs[{i}]"),
                        ip.clone(),
                        "an IP address",
                    )),
                }
            }
            for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
                match ip.parse::<IpAddr>() {
                    Ok(ip) => self.push(
                        &plan,
                        FrontendKind::ExternalIp,
                        SocketAddr::new(ip, port),
                        external_local,
                        topology,
                        (ids, owners, t),
                    ),
                    Err(_) => t.issues.push(self.invalid(
                        &format!("spec.externalIPs[{i}]"),
                        ip.clone(),
                        "an IP address",
                    )),
                }
            }
            let ingress = self
                .svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref());
            for (i, ing) in ingress.into_iter().flatten().enumerate() {
                let field = format!("status.loadBalancer.ingress[{i}]");
                if ing.ip_mode.as_deref() == Some("Proxy") {
                    // kube-proxy leaves Proxy-mode ingress to the load balancer itself.
                    continue;
                }
                let Some(ip) = ing.ip.as_deref() else {
                    if ing.hostname.is_some() {
                        t.issues.push(self.unsupported(
                            &format!("{field}.hostname"),
                            "a hostname ingress (kube-proxy ignores it too)",
                            "that ingress",
                        ));
                    }
                    continue;
                };
                if source_ranges {
                    continue;
                }
                match ip.parse::<IpAddr>() {
                    Ok(ip) => self.push(
                        &plan,
                        FrontendKind::LoadBalancer,
                        SocketAddr::new(ip, port),
                        external_local,
                        topology,
                        (ids, owners, t),
                    ),
                    Err(_) => {
                        t.issues
                            .push(self.invalid(&format!("{field}.ip"), ip, "an IP address"))
                    }
                }
            }
            let node_port = p.node_port.unwrap_or(0);
            if has_nodeports && node_port != 0 {
                match u16::try_from(node_port) {
                    Ok(np) => {
                        for &a in self.nodeport_addrs {
                            self.push(
                                &plan,
                                FrontendKind::NodePort,
                                SocketAddr::new(a, np),
                                external_local,
                                topology,
                                (ids, owners, t),
                            );
                        }
                    }
                    Err(_) => t.issues.push(self.invalid(
                        &format!("spec.ports[{pi}].nodePort"),
                        node_port.to_string(),
                        "a port is 1..=65535",
                    )),
                }
            }
            for (e, st) in choose(&plan.eps, true, false, self.here) {
                if st == lb_control::BackendState::Active {
                    local_eps.insert(e.addr.ip());
                }
            }
        }
        if external_local && has_nodeports {
            if let Some(hc) = spec.health_check_node_port.filter(|p| *p != 0) {
                match u16::try_from(hc) {
                    Ok(port) => t.health_checks.push(HealthCheck {
                        namespace: self.namespace(),
                        name: self.name(),
                        port,
                        local_endpoints: local_eps.len(),
                    }),
                    Err(_) => t.issues.push(self.invalid(
                        "spec.healthCheckNodePort",
                        hc.to_string(),
                        "a port is 1..=65535",
                    )),
                }
            }
        }
    }

    /// Adds the frontend at `addr` with the endpoints of its family chosen for `local`.
    fn push(
        &self,
        plan: &PortPlan,
        kind: FrontendKind,
        addr: SocketAddr,
        local: bool,
        topology: bool,
        (ids, owners, t): (
            &mut IdAllocator,
            &mut BTreeMap<FrontendKey, String>,
            &mut Translation,
        ),
    ) {
        let family: Vec<Endpoint> = plan
            .eps
            .iter()
            .filter(|e| e.addr.is_ipv4() == addr.is_ipv4())
            .cloned()
            .collect();
        let backends: Vec<BackendSpec> = choose(&family, local, topology, self.here)
            .into_iter()
            .map(|(e, state)| BackendSpec {
                addr: e.addr,
                weight: 1,
                state,
                node: self.backend_node(&e, addr.is_ipv4()),
            })
            .collect();
        let key = frontend_key(addr, plan.proto);
        let me = format!("{}/{}", self.namespace(), self.name());
        let shown = format!("{addr}/{}", crate::endpoints::proto_name(plan.proto));
        if let Some(owner) = owners.get(&key) {
            t.issues.push(self.issue(
                format!("spec.ports[{}]", plan.port_name),
                IssueKind::Conflict {
                    frontend: shown,
                    owner: owner.clone(),
                },
            ));
            return;
        }
        let mut spec = ServiceSpec {
            frontend: addr,
            backends,
            external_traffic_policy: if local {
                TrafficPolicy::Local
            } else {
                TrafficPolicy::Cluster
            },
            ..plan.template.clone()
        };
        spec.id = ids.id(key);
        if let Err(source) = spec.validate() {
            t.issues.push(self.issue(
                format!("spec.ports[{}]", plan.port_name),
                IssueKind::Refused {
                    frontend: shown,
                    source,
                },
            ));
            return;
        }
        owners.insert(key, me);
        t.frontends.push(Frontend {
            namespace: self.namespace(),
            name: self.name(),
            port_name: plan.port_name.clone(),
            kind,
            spec,
        });
    }

    /// The node address of an endpoint on another node (its family preferred); `None` on this
    /// node or when the node is unknown (then reached as a plain DNAT to the pod address).
    fn backend_node(&self, e: &Endpoint, v4: bool) -> Option<IpAddr> {
        let node = e.node_name.as_deref()?;
        if node == self.here.node_name {
            return None;
        }
        let addrs = self.node_addrs.get(node)?;
        addrs
            .iter()
            .find(|a| a.is_ipv4() == v4)
            .or_else(|| addrs.first())
            .copied()
    }
}
