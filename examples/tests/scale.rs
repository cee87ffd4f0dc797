//! Cluster scale: the datapath loaded with the default table sizes takes 50,000 services and
//! serves real TCP connections to the last one programmed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lb_api::abi::CtKind;
use lb_api::flow::L4Proto;
use lb_bpf::KernelDatapath;
use lb_control::{default_config, ServiceSpec};
use lb_examples::scenario;
use lb_testbed::gate::privileged_test;
use lb_testbed::testbed::{Testbed, BACKENDS, BACKEND_PORT};

const SERVICES: u32 = 50_000;

/// Service `id`: frontend 10.96.0.0/16 + id, port 80 (the client's default route leads every
/// such address to the node); `backends` behind it.
fn service(id: u32, backends: Vec<SocketAddr>) -> ServiceSpec {
    let [_, _, hi, lo] = id.to_be_bytes();
    ServiceSpec {
        id,
        frontend: ([10, 96, hi, lo], 80).into(),
        proto: L4Proto::Tcp,
        backends: backends.into_iter().map(Into::into).collect(),
        ..Default::default()
    }
}

#[test]
fn default_sizes_take_50k_services_and_serve_the_last_one() {
    if !privileged_test("default_sizes_take_50k_services_and_serve_the_last_one") {
        return;
    }
    let bed = Testbed::create("scl").unwrap();
    let mut dp = KernelDatapath::load().unwrap();
    dp.set_config(&default_config(5)).unwrap();
    let real: Vec<SocketAddr> = BACKENDS
        .iter()
        .map(|b| SocketAddr::from((*b, BACKEND_PORT)))
        .collect();
    let elsewhere: Vec<SocketAddr> = vec![
        "10.1.0.2:8080".parse().unwrap(),
        "10.1.0.3:8080".parse().unwrap(),
    ];
    let t0 = Instant::now();
    for id in 1..SERVICES {
        dp.upsert_service(&service(id, elsewhere.clone())).unwrap();
    }
    let last = service(SERVICES, real);
    dp.upsert_service(&last).unwrap();
    eprintln!(
        "programmed {SERVICES} services (2 backends each) in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    scenario::attach(&mut dp, &bed).unwrap();
    let _servers = bed.start_backends(Duration::from_secs(60)).unwrap();

    let answers = bed
        .requests(last.frontend, 4, Duration::from_secs(5))
        .unwrap();
    for a in &answers {
        let a = a.as_ref().unwrap();
        assert!(a.starts_with("backend-"), "answered by a backend: {a}");
    }
    // The flows are the last service's: their conntrack entries name its backends.
    let translated = dp
        .conntrack_entries()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| {
            k.kind == CtKind::Service as u8 && k.dst_port == 80 && k.dst[..4] == [10, 96, 195, 80]
        })
        .count();
    assert_eq!(translated, 4, "one service entry per connection");
}
