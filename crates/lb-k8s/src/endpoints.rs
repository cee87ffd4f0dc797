//! Endpoints of a service port, gathered from its EndpointSlices, and kube-proxy's choice of
//! which of them take new flows (ready; serving-and-terminating as the fallback; node-local for
//! a `Local` policy; topology hints when usable).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use lb_api::flow::L4Proto;
use lb_control::BackendState;

use crate::issue::{Issue, IssueKind, ObjectRef};

/// The label joining an EndpointSlice to its Service (same namespace).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// One endpoint of a service port, as its slice describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Address and (resolved target) port.
    pub addr: SocketAddr,
    /// `conditions.ready` (absent: true).
    pub ready: bool,
    /// `conditions.serving` (absent: as `ready`).
    pub serving: bool,
    /// `conditions.terminating` (absent: false).
    pub terminating: bool,
    /// `nodeName`.
    pub node_name: Option<String>,
    /// `hints.forZones[].name` (`None`: no zone hints).
    pub zone_hints: Option<Vec<String>>,
    /// `hints.forNodes[].name` (`None`: no node hints).
    pub node_hints: Option<Vec<String>>,
}

/// The slices of every service, by (namespace, service name).
pub(crate) fn index_slices(
    slices: &[EndpointSlice],
) -> BTreeMap<(String, String), Vec<&EndpointSlice>> {
    let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        let labels = s.metadata.labels.as_ref();
        // A slice without the label belongs to no service (custom slices): kube-proxy ignores it.
        let Some(svc) = labels.and_then(|l| l.get(LABEL_SERVICE_NAME)) else {
            continue;
        };
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        by_service.entry((ns, svc.clone())).or_default().push(s);
    }
    by_service
}

fn slice_ref(s: &EndpointSlice) -> ObjectRef {
    ObjectRef {
        kind: "EndpointSlice",
        namespace: s.metadata.namespace.clone().unwrap_or_default(),
        name: s.metadata.name.clone().unwrap_or_default(),
    }
}

/// The endpoints of the service port named `port_name` with `proto`, over the service's slices,
/// deduplicated by address (the first slice naming an address wins, as kube-proxy's cache).
/// Slices of an address type other than IPv4/IPv6, and malformed addresses, become issues.
pub(crate) fn endpoints_of(
    slices: &[&EndpointSlice],
    port_name: &str,
    proto: &str,
    issues: &mut Vec<Issue>,
) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::new();
    for s in slices {
        if s.address_type != "IPv4" && s.address_type != "IPv6" {
            issues.push(Issue {
                object: slice_ref(s),
                field: "addressType".into(),
                kind: IssueKind::Unsupported {
                    what: format!("address type {}", s.address_type),
                    effect: "the slice's endpoints".into(),
                },
            });
            continue;
        }
        // Named target ports: the slice carries the number the name resolved to in each pod.
        let port = s.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && p.protocol.as_deref().unwrap_or("TCP") == proto
        });
        let Some(port) = port.and_then(|p| p.port) else {
            continue;
        };
        let Ok(port) = u16::try_from(port) else {
            issues.push(invalid(
                s,
                "ports[].port",
                port.to_string(),
                "a port is 1..=65535",
            ));
            continue;
        };
        for (i, e) in s.endpoints.iter().enumerate() {
            // kube-proxy uses the first address: the others are the same pod's.
            let Some(a) = e.addresses.first() else {
                continue;
            };
            let ip: IpAddr = match a.parse() {
                Ok(ip) => ip,
                Err(_) => {
                    issues.push(invalid(
                        s,
                        &format!("endpoints[{i}].addresses[0]"),
                        a.clone(),
                        "an IP address of the slice's addressType",
                    ));
                    continue;
                }
            };
            if ip.is_ipv4() != (s.address_type == "IPv4") {
                issues.push(invalid(
                    s,
                    &format!("endpoints[{i}].addresses[0]"),
                    a.clone(),
                    "an address of the slice's addressType",
                ));
                continue;
            }
            let addr = SocketAddr::new(ip, port);
            if out.iter().any(|o| o.addr == addr) {
                continue;
            }
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let hints = e.hints.as_ref();
            out.push(Endpoint {
                addr,
                ready,
                serving: c.and_then(|c| c.serving).unwrap_or(ready),
                terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                node_name: e.node_name.clone(),
                zone_hints: hints
                    .and_then(|h| h.for_zones.as_ref())
                    .map(|z| z.iter().map(|z| z.name.clone()).collect()),
                node_hints: hints
                    .and_then(|h| h.for_nodes.as_ref())
                    .map(|n| n.iter().map(|n| n.name.clone()).collect()),
            });
        }
    }
    out
}

fn invalid(s: &EndpointSlice, field: &str, value: String, rule: &str) -> Issue {
    Issue {
        object: slice_ref(s),
        field: field.into(),
        kind: IssueKind::Invalid {
            value,
            rule: rule.into(),
        },
    }
}

/// Where this node is, for node-local policies and topology hints.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Locality<'a> {
    pub node_name: &'a str,
    pub zone: Option<&'a str>,
}

/// kube-proxy's choice (`CategorizeEndpoints`) for one frontend: which endpoints take new flows
/// (`Active`) and which keep only their flows (`Terminating`); the rest are left out.
///
/// - `local`: only endpoints on this node (traffic policy `Local`).
/// - Otherwise, if `topology` and every ready endpoint carries hints: those hinted for this
///   node (`forNodes`), else for its zone (`forZones`), when any are.
/// - Ready endpoints take new flows; when none is ready, serving-and-terminating ones do (the
///   terminating fallback); other serving-and-terminating endpoints keep their flows.
pub(crate) fn choose(
    eps: &[Endpoint],
    local: bool,
    topology: bool,
    here: Locality<'_>,
) -> Vec<(Endpoint, BackendState)> {
    let candidates: Vec<&Endpoint> = eps
        .iter()
        .filter(|e| !local || e.node_name.as_deref() == Some(here.node_name))
        .collect();
    let mut ready: Vec<&Endpoint> = candidates.iter().copied().filter(|e| e.ready).collect();
    if topology && !local && !ready.is_empty() {
        let by_node: Vec<&Endpoint> = ready
            .iter()
            .copied()
            .filter(|e| {
                e.node_hints
                    .as_ref()
                    .is_some_and(|n| n.iter().any(|n| n == here.node_name))
            })
            .collect();
        let by_zone: Vec<&Endpoint> = ready
            .iter()
            .copied()
            .filter(|e| {
                e.zone_hints
                    .as_ref()
                    .is_some_and(|z| here.zone.is_some_and(|me| z.iter().any(|z| z == me)))
            })
            .collect();
        let all_hinted = ready.iter().all(|e| e.zone_hints.is_some());
        let all_node_hinted = ready.iter().all(|e| e.node_hints.is_some());
        if all_node_hinted && !by_node.is_empty() {
            ready = by_node;
        } else if all_hinted && !by_zone.is_empty() {
            ready = by_zone;
        }
    }
    let fallback = ready.is_empty();
    let mut out = Vec::new();
    for e in candidates {
        let serving_terminating = e.serving && e.terminating;
        let active = if fallback {
            serving_terminating
        } else {
            ready.iter().any(|r| r.addr == e.addr)
        };
        if active {
            out.push((e.clone(), BackendState::Active));
        } else if serving_terminating || e.ready {
            // Terminating, or ready but outside the topology's choice: keeps its flows only.
            out.push((e.clone(), BackendState::Terminating));
        }
    }
    out
}

/// The protocol name of `proto` in the Kubernetes API.
#[must_use]
pub fn proto_name(proto: L4Proto) -> &'static str {
    match proto {
        L4Proto::Udp => "UDP",
        _ => "TCP",
    }
}
