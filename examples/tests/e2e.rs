//! End to end with real traffic: a client namespace connects to the service VIP many times over
//! real TCP; the node's XDP/TC programs load-balance to two backend namespaces running real
//! servers and translate the replies back.

use lb_api::abi::CtKind;
use lb_api::counters::Counter;
use lb_api::flow::v4_of;
use lb_examples::scenario;
use lb_examples::testbed::{BACKENDS, CLIENT, VIP};

#[test]
fn real_tcp_through_the_vip_reaches_both_backends() {
    if !lb_bpf::is_privileged() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "needs root (BPF, network namespaces) but CI=true: privileged tests must not be skipped in CI");
        eprintln!("SKIPPED real_tcp_through_the_vip_reaches_both_backends: needs root");
        return;
    }
    const N: usize = 40;
    let r = scenario::run_kernel("e2e", N).expect("testbed and datapath set up");

    let answers: Vec<&String> = r.answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    let failures: Vec<String> = r
        .answers
        .iter()
        .filter_map(|a| a.as_ref().err())
        .map(|e| format!("{e:#}"))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {N} requests failed: {failures:?}",
        failures.len()
    );
    assert_eq!(answers.len(), N);
    // Both backends answered, and each saw the client's own address (no SNAT in this mode).
    for b in 1..=2 {
        let tag = format!("backend-{b} saw {CLIENT}:");
        assert!(
            answers.iter().any(|a| a.starts_with(&tag)),
            "no answer from backend-{b}: {answers:?}"
        );
    }
    assert!(
        r.served.iter().all(|n| *n > 0) && r.served.iter().sum::<usize>() == N,
        "served {:?}",
        r.served
    );

    // The conntrack table shows every flow: a service entry to the VIP with a backend, and its
    // reverse-NAT entry.
    let service_entries: Vec<_> = r
        .conntrack
        .iter()
        .filter(|(k, _)| {
            k.kind == CtKind::Service as u8 && v4_of(&k.dst) == VIP.octets() && k.proto == 6
        })
        .collect();
    assert_eq!(
        service_entries.len(),
        N,
        "one TCP service entry per connection"
    );
    for (_, e) in &service_entries {
        assert!(
            BACKENDS.iter().any(|b| v4_of(&e.nat_addr) == b.octets()),
            "entry points at a backend"
        );
        assert!(
            e.packets_orig >= 3 && e.packets_reply >= 2,
            "both directions counted: {e:?}"
        );
    }
    // A UDP flow per client port: each datagram leaves from a fresh socket on an ephemeral port,
    // and the kernel may hand out a port twice (two datagrams, one flow). The servers report the
    // port they saw.
    let udp_flows = {
        let mut seen: Vec<&str> = r
            .udp_answers
            .iter()
            .flatten()
            .filter_map(|a| a.split(" saw ").nth(1)?.split(": ").next())
            .collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    };
    let reverse = r
        .conntrack
        .iter()
        .filter(|(k, _)| k.kind == CtKind::ReverseNat as u8)
        .count();
    assert_eq!(
        reverse,
        N + udp_flows,
        "one reverse-NAT entry per TCP connection and per UDP flow ({udp_flows} client ports)"
    );

    // UDP: every datagram answered, from the VIP (checked by the client), by both backends, each
    // seeing the client's address; each flow assured (a reply was seen).
    let udp_fail: Vec<String> = r
        .udp_answers
        .iter()
        .filter_map(|a| a.as_ref().err())
        .map(|e| format!("{e:#}"))
        .collect();
    assert!(
        udp_fail.is_empty(),
        "{} of {N} UDP datagrams unanswered: {udp_fail:?}",
        udp_fail.len()
    );
    for b in 1..=2 {
        let tag = format!("backend-{b} saw {CLIENT}:");
        assert!(
            r.udp_answers.iter().flatten().any(|a| a.starts_with(&tag)),
            "no UDP answer from backend-{b}: {:?}",
            r.udp_answers
        );
    }
    let udp_entries: Vec<_> = r
        .conntrack
        .iter()
        .filter(|(k, _)| k.kind == CtKind::Service as u8 && k.proto == 17)
        .collect();
    assert_eq!(
        udp_entries.len(),
        udp_flows,
        "one UDP service entry per datagram flow (client port)"
    );
    assert!(
        udp_entries
            .iter()
            .all(|(_, e)| e.state == lb_api::abi::CtState::UdpAssured as u8),
        "UDP flows assured after the reply"
    );

    assert_eq!(
        r.counters.get(Counter::ServiceNewFlow),
        (N + udp_flows) as u64
    );
    assert!(r.counters.get(Counter::ReplyTranslated) >= 2 * N as u64);
    assert_eq!(
        r.counters.get(Counter::Dropped),
        0,
        "nothing dropped: {:?}",
        r.counters
    );
    eprintln!(
        "e2e: {N} connections, served {:?}, XDP {}",
        r.served, r.xdp_mode
    );
}
