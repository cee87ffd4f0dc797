//! The translation of real manifests (as `kubectl get -o yaml` prints them, in `fixtures/`):
//! every field the translation reads appears there and is checked here.

use std::net::{IpAddr, SocketAddr};

use lb_api::flow::L4Proto;
use lb_control::{BackendState, ForwardingMode, Selection, SessionAffinity, TrafficPolicy};
use lb_k8s::{
    translate, Frontend, FrontendKind, IdAllocator, IssueKind, Objects, Options, Translation,
};

fn fixtures() -> Objects {
    let mut o = Objects::default();
    for f in ["nodes.yaml", "services.yaml", "endpointslices.yaml"] {
        let path = format!("{}/tests/fixtures/{f}", env!("CARGO_MANIFEST_DIR"));
        o.add_yaml(f, &std::fs::read_to_string(path).unwrap())
            .unwrap();
    }
    o
}

fn opts() -> Options {
    Options {
        node_name: "node-a".into(),
        ..Options::default()
    }
}

fn run(o: &Objects, opts: &Options, ids: &mut IdAllocator) -> Translation {
    translate(&o.services, &o.slices, &o.nodes, opts, ids)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn find<'a>(t: &'a Translation, frontend: &str, proto: L4Proto) -> &'a Frontend {
    t.frontends
        .iter()
        .find(|f| f.spec.frontend == sa(frontend) && f.spec.proto == proto)
        .unwrap_or_else(|| panic!("no frontend {frontend}: {:#?}", t.frontends))
}

/// (backend, state, node) of a frontend, sorted.
fn backends(f: &Frontend) -> Vec<(String, BackendState, Option<IpAddr>)> {
    let mut v: Vec<_> = f
        .spec
        .backends
        .iter()
        .map(|b| (b.addr.to_string(), b.state, b.node))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

#[test]
fn the_fixtures_parse_into_every_object() {
    let o = fixtures();
    assert_eq!(
        (o.services.len(), o.slices.len(), o.nodes.len()),
        (10, 9, 2)
    );
    assert!(o.other_kinds.is_empty());
}

#[test]
fn cluster_ips_are_dual_stack_with_named_ports_conditions_and_affinity() {
    let t = run(&fixtures(), &opts(), &mut IdAllocator::default());
    let web = find(&t, "10.96.0.10:80", L4Proto::Tcp);
    assert_eq!(
        (web.kind, web.port_name.as_str()),
        (FrontendKind::ClusterIp, "http")
    );
    // targetPort `http-alt` resolved by the slices to 8081; 10.1.0.2 appears in two slices
    // (once); 10.1.1.4 is terminating but serving (keeps flows); 10.1.0.5 is neither.
    assert_eq!(
        backends(web),
        vec![
            ("10.1.0.2:8081".into(), BackendState::Active, None),
            (
                "10.1.1.3:8081".into(),
                BackendState::Active,
                ip("10.250.0.2")
            ),
            (
                "10.1.1.4:8081".into(),
                BackendState::Terminating,
                ip("10.250.0.2")
            ),
        ]
    );
    assert_eq!(
        web.spec.affinity,
        SessionAffinity::ClientIp { timeout_s: 600 }
    );
    assert_eq!(web.spec.selection, Selection::Random);
    assert_eq!(web.spec.external_traffic_policy, TrafficPolicy::Cluster);
    // The IPv6 cluster IP takes the IPv6 slice only.
    let web6 = find(&t, "[fd00:96::10]:80", L4Proto::Tcp);
    assert_eq!(
        backends(web6),
        vec![("[fd01::2]:8081".into(), BackendState::Active, None)]
    );
    assert_ne!(web.spec.id, web6.spec.id);
}

#[test]
fn external_frontends_follow_the_external_policy_and_annotations() {
    let t = run(&fixtures(), &opts(), &mut IdAllocator::default());
    // Cluster IP of a Local-external service: internal policy Cluster, both endpoints.
    let c = find(&t, "10.96.0.20:443", L4Proto::Tcp);
    assert_eq!(c.spec.backends.len(), 2);
    assert_eq!(c.spec.selection, Selection::Maglev { table_size: 251 });
    assert_eq!(c.spec.mode, ForwardingMode::Dsr);
    let local = vec![("10.1.0.20:8443".to_string(), BackendState::Active, None)];
    for (addr, kind) in [
        ("198.51.100.7:443", FrontendKind::ExternalIp),
        ("192.0.2.50:443", FrontendKind::LoadBalancer),
        ("10.250.0.1:30443", FrontendKind::NodePort),
        ("203.0.113.1:30443", FrontendKind::NodePort),
    ] {
        let f = find(&t, addr, L4Proto::Tcp);
        assert_eq!(f.kind, kind, "{addr}");
        assert_eq!(backends(f), local, "{addr}: only this node's endpoint");
        assert_eq!(f.spec.external_traffic_policy, TrafficPolicy::Local);
    }
    // The IPv6 node address gets the NodePort too, with no IPv4 backends.
    assert!(find(&t, "[fd00::1]:30443", L4Proto::Tcp)
        .spec
        .backends
        .is_empty());
    assert_eq!(t.health_checks.len(), 1);
    let hc = &t.health_checks[0];
    assert_eq!(
        (hc.name.as_str(), hc.port, hc.local_endpoints),
        ("api", 32100, 1)
    );
    // The node's own identity.
    let node = t.node.as_ref().unwrap();
    assert_eq!(node.address_v4, Some("10.250.0.1".parse().unwrap()));
    assert_eq!(node.address_v6, Some("fd00::1".parse().unwrap()));
    assert_eq!(
        node.peers,
        vec![ip("10.250.0.2").unwrap(), ip("fd00::2").unwrap()]
    );
}

#[test]
fn internal_local_fallback_and_topology() {
    let t = run(&fixtures(), &opts(), &mut IdAllocator::default());
    for proto in [L4Proto::Udp, L4Proto::Tcp] {
        let dns = find(&t, "10.96.0.53:53", proto);
        assert_eq!(
            backends(dns),
            vec![("10.1.0.53:53".into(), BackendState::Active, None)]
        );
        assert_eq!(dns.spec.external_traffic_policy, TrafficPolicy::Local);
    }
    // No ready endpoint: the serving terminating one takes new flows; the not-serving one none.
    let d = find(&t, "10.96.0.30:8080", L4Proto::Tcp);
    assert_eq!(d.port_name, "");
    assert_eq!(
        backends(d),
        vec![("10.1.0.30:8080".into(), BackendState::Active, None)]
    );
    // Zone hints: endpoints hinted for zone-a take new flows; the other keeps its flows.
    let z = find(&t, "10.96.0.40:9000", L4Proto::Tcp);
    assert_eq!(
        backends(z),
        vec![
            ("10.1.0.40:9000".into(), BackendState::Active, None),
            (
                "10.1.1.40:9000".into(),
                BackendState::Terminating,
                ip("10.250.0.2")
            ),
            (
                "10.1.1.41:9000".into(),
                BackendState::Active,
                ip("10.250.0.2")
            ),
        ]
    );
    // On node-b, the zone-b hint.
    let tb = run(
        &fixtures(),
        &Options {
            node_name: "node-b".into(),
            ..Options::default()
        },
        &mut IdAllocator::default(),
    );
    let zb = find(&tb, "10.96.0.40:9000", L4Proto::Tcp);
    let active: Vec<_> = backends(zb)
        .into_iter()
        .filter(|b| b.1 == BackendState::Active)
        .map(|b| b.0)
        .collect();
    assert_eq!(active, vec!["10.1.1.40:9000".to_string()]);
}

#[test]
fn what_cannot_be_expressed_is_reported_by_field_and_left_out() {
    let t = run(&fixtures(), &opts(), &mut IdAllocator::default());
    let fields: Vec<(String, String, bool)> = t
        .issues
        .iter()
        .map(|i| (i.object.name.clone(), i.field.clone(), i.is_unsupported()))
        .collect();
    let has = |name: &str, field: &str, unsupported: bool| {
        assert!(
            fields.contains(&(name.into(), field.into(), unsupported)),
            "missing issue {name} {field}: {fields:#?}"
        )
    };
    has("restricted", "spec.loadBalancerSourceRanges", true);
    has(
        "restricted",
        "status.loadBalancer.ingress[1].hostname",
        true,
    );
    has("restricted", "spec.ports[1].protocol", true);
    has("restricted-fqdn-k9d", "addressType", true);
    has(
        "misannotated",
        "metadata.annotations[lb.dataplane.io/selection]",
        false,
    );
    assert_eq!(fields.len(), 5, "{fields:#?}");
    let msg = t.issues[0].to_string();
    assert!(msg.contains("field `"), "{msg}");
    // Source ranges: the load-balancer frontends are not opened; the rest is served.
    assert!(!t
        .frontends
        .iter()
        .any(|f| f.spec.frontend.ip() == ip("192.0.2.60").unwrap()));
    assert!(
        !t.frontends
            .iter()
            .any(|f| f.spec.frontend.ip() == ip("192.0.2.61").unwrap()),
        "ipMode Proxy"
    );
    find(&t, "10.96.0.60:80", L4Proto::Tcp);
    find(&t, "10.250.0.1:30080", L4Proto::Tcp);
    assert!(!t.frontends.iter().any(|f| f.name == "misannotated"));
    let mut skipped: Vec<_> = t.skipped.iter().map(|s| s.object.name.as_str()).collect();
    skipped.sort_unstable();
    assert_eq!(skipped, vec!["db", "elsewhere", "upstream"]);
    // web 2, api 6, dns 2, draining 1, zoned 1, restricted 4.
    assert_eq!(t.frontends.len(), 16);
}

#[test]
fn the_default_forwarding_mode_yields_to_the_annotation() {
    let mut p = opts();
    p.forwarding_mode = ForwardingMode::Tunnel;
    let t = run(&fixtures(), &p, &mut IdAllocator::default());
    assert_eq!(
        find(&t, "10.96.0.10:80", L4Proto::Tcp).spec.mode,
        ForwardingMode::Tunnel
    );
    assert_eq!(
        find(&t, "10.96.0.20:443", L4Proto::Tcp).spec.mode,
        ForwardingMode::Dsr,
        "annotated"
    );
}

#[test]
fn the_service_proxy_name_selects_the_other_proxys_services() {
    let o = fixtures();
    let mut p = opts();
    p.service_proxy_name = Some("other-proxy".into());
    let t = run(&o, &p, &mut IdAllocator::default());
    let names: std::collections::BTreeSet<_> =
        t.frontends.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["elsewhere"]);
    // Its slice-less port has no backends (not an error: kube-proxy rejects its traffic).
    assert!(t.frontends[0].spec.backends.is_empty());
}

#[test]
fn ids_are_stable_and_released_and_conflicts_are_reported() {
    let mut o = fixtures();
    let mut ids = IdAllocator::default();
    let first = run(&o, &opts(), &mut ids);
    let again = run(&o, &opts(), &mut ids);
    assert_eq!(first.frontends, again.frontends);
    let web_id = find(&first, "10.96.0.10:80", L4Proto::Tcp).spec.id;
    // Remove `api` (sorted before `web`): web keeps its id, api's ids are released.
    o.services
        .retain(|s| s.metadata.name.as_deref() != Some("api"));
    let t = run(&o, &opts(), &mut ids);
    assert_eq!(find(&t, "10.96.0.10:80", L4Proto::Tcp).spec.id, web_id);
    assert_eq!(ids.keys().count(), t.frontends.len());
    // A second service claiming web's cluster IP and port: reported, not programmed.
    let mut dup = o
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("web"))
        .unwrap()
        .clone();
    dup.metadata.name = Some("zz-copy".into());
    o.services.push(dup);
    let t = run(&o, &opts(), &mut ids);
    assert!(t.issues.iter().any(|i| i.object.name == "zz-copy"
        && matches!(&i.kind, IssueKind::Conflict { owner, .. } if owner == "shop/web")));
    assert_eq!(find(&t, "10.96.0.10:80", L4Proto::Tcp).name, "web");
}

#[test]
fn a_malformed_manifest_names_the_document_and_object() {
    let mut o = Objects::default();
    let e = o.add_yaml("bad.yaml", "kind: Service\n  x: [").unwrap_err();
    assert!(e.to_string().contains("bad.yaml"), "{e}");
    let e = o
        .add_yaml(
            "schema.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: eighty}]}\n",
        )
        .unwrap_err();
    let msg = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(
        msg.contains("\"s\"") && msg.contains("schema.yaml"),
        "{msg}"
    );
    o.add_yaml(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
    )
    .unwrap();
    assert_eq!(o.other_kinds, vec!["v1/ConfigMap".to_string()]);
}
