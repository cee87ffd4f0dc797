//! Kubernetes `Service`, `EndpointSlice` and `Node` objects translated into lb-dataplane's
//! service specs with kube-proxy's rules, as a pure function ([`translate`]).
//!
//! ```
//! use lb_k8s::{translate, FrontendKind, IdAllocator, Objects, Options};
//!
//! let mut objects = Objects::default();
//! objects.add_yaml("example", r#"
//! apiVersion: v1
//! kind: Service
//! metadata: {name: web, namespace: default}
//! spec:
//!   clusterIP: 10.96.0.10
//!   clusterIPs: [10.96.0.10]
//!   ports: [{name: http, port: 80, protocol: TCP, targetPort: http}]
//! ---
//! apiVersion: discovery.k8s.io/v1
//! kind: EndpointSlice
//! metadata: {name: web-abc, namespace: default, labels: {kubernetes.io/service-name: web}}
//! addressType: IPv4
//! ports: [{name: http, port: 8080, protocol: TCP}]
//! endpoints:
//! - addresses: [10.1.0.2]
//!   conditions: {ready: true, serving: true, terminating: false}
//!   nodeName: node-a
//! "#).unwrap();
//! let opts = Options { node_name: "node-a".into(), ..Options::default() };
//! let t = translate(&objects.services, &objects.slices, &objects.nodes, &opts,
//!                   &mut IdAllocator::default());
//! let f = &t.frontends[0];
//! assert_eq!((f.kind, f.spec.frontend.to_string()), (FrontendKind::ClusterIp, "10.96.0.10:80".into()));
//! // The named target port `http` resolved through the slice.
//! assert_eq!(f.spec.backends[0].addr.to_string(), "10.1.0.2:8080");
//! assert!(t.issues.is_empty());
//! ```
//!
//! The rules (kube-proxy's, `pkg/proxy`):
//! - Services labelled `service.kubernetes.io/service-proxy-name` belong to another proxy
//!   ([`Options::service_proxy_name`] selects the label value this proxy takes); headless
//!   services (label `service.kubernetes.io/headless`, `clusterIP: None`) and `ExternalName`
//!   services are passed over ([`Translation::skipped`]).
//! - Slices join their service by the `kubernetes.io/service-name` label in its namespace; a
//!   service port matches a slice port by name and protocol, and the slice's port number is the
//!   resolved (possibly named) target port. Each address family's frontends take the slices of
//!   that family (dual-stack: one frontend per `clusterIPs[]` entry).
//! - Ready endpoints take new flows; when none is, serving-and-terminating ones do (the
//!   terminating fallback); other serving-and-terminating endpoints keep their established
//!   flows (`BackendState::Terminating`).
//! - `externalTrafficPolicy: Local` (external IPs, load-balancer ingress, NodePorts) and
//!   `internalTrafficPolicy: Local` (cluster IPs) keep only this node's endpoints.
//! - Topology (`trafficDistribution`, or the `service.kubernetes.io/topology-mode: Auto`
//!   annotation): when every ready endpoint carries hints, those hinted for this node, else for
//!   its zone, take new flows.
//! - NodePorts listen on [`Options::nodeport_addresses`] (default: the node's addresses);
//!   `status.loadBalancer.ingress[].ip` with `ipMode: Proxy` is left to the load balancer.
//! - `sessionAffinity: ClientIP` with its timeout; the annotations
//!   [`ANNOTATION_SELECTION`] (`random` / `maglev`), [`ANNOTATION_MAGLEV_TABLE_SIZE`] and
//!   [`ANNOTATION_FORWARDING_MODE`] choose what kube-proxy has no field for.
//!
//! What the SDK cannot express yet is reported as an [`Issue`] naming the object and field,
//! and the part it concerns is not programmed (so that nothing is served more openly than
//! asked): `spec.loadBalancerSourceRanges` (the load-balancer frontends are left out), `SCTP`
//! ports, `FQDN` slices, hostname ingress. Invalid values are [`IssueKind::Invalid`], frontends
//! the datapath refuses [`IssueKind::Refused`], two services on one frontend
//! [`IssueKind::Conflict`].
//!
//! Fields read and with no effect on a datapath, as in kube-proxy: `spec.selector`
//! (the endpoint controller's), `spec.publishNotReadyAddresses` (reflected in the slices'
//! conditions), `appProtocol`, `spec.ipFamilies` (the addresses say their family).

mod annotations;
mod endpoints;
mod ids;
mod issue;
mod manifests;
mod node;
mod translate;

pub use annotations::{
    ANNOTATION_FORWARDING_MODE, ANNOTATION_MAGLEV_TABLE_SIZE, ANNOTATION_SELECTION,
    ANNOTATION_TOPOLOGY_MODE, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, LABEL_ZONE,
};
pub use endpoints::{proto_name, Endpoint, LABEL_SERVICE_NAME};
pub use ids::{frontend_key, FrontendKey, IdAllocator};
pub use issue::{Issue, IssueKind, ObjectRef};
pub use k8s_openapi;
pub use manifests::{ManifestError, Objects};
pub use translate::{
    node_spec, translate, Frontend, FrontendKind, HealthCheck, Options, Skipped, Translation,
};
