//! End to end with real traffic: a client namespace connects to the service VIP many times over
//! real TCP; the node's XDP/TC programs load-balance to two backend namespaces running real
//! servers and translate the replies back. Every sender keeps the kernel's default offloads
//! (partial checksums, TSO, GRO); the test runs twice: as it is, and with the node's own devices
//! completing checksums in software, where a wrong partial seed would fail the connections
//! instead of passing unchecked between veths. A bulk transfer of 8 MiB each way through the
//! VIP is compared byte for byte, next to the same transfer routed to a backend's own address.

use lb_api::abi::CtKind;
use lb_api::counters::Counter;
use lb_api::flow::v4_of;
use lb_examples::scenario;
use lb_testbed::netns::NodeChecksums;
use lb_testbed::testbed::{BACKENDS, CLIENT, VIP};

#[test]
fn real_tcp_through_the_vip_reaches_both_backends() {
    if !lb_testbed::gate::privileged_test("real_tcp_through_the_vip_reaches_both_backends") {
        return;
    }
    run("e2e", NodeChecksums::Offload);
}

#[test]
fn real_tcp_through_the_vip_with_software_checksums_on_the_node() {
    if !lb_testbed::gate::privileged_test(
        "real_tcp_through_the_vip_with_software_checksums_on_the_node",
    ) {
        return;
    }
    run("e2e-sw", NodeChecksums::Software);
}

fn run(tag: &str, checksums: NodeChecksums) {
    const N: usize = 40;
    let r = scenario::run_kernel(tag, N, checksums).expect("testbed and datapath set up");

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
    // The byte stream end to end, through the translation and through plain routing.
    let vip = r.bulk_vip.as_ref().expect("bulk transfer through the VIP");
    let routed = r
        .bulk_routed
        .as_ref()
        .expect("bulk transfer routed to backend-1");
    eprintln!(
        "e2e ({checksums:?} checksums on the node): {N} connections, served {:?}, XDP {}, \
         {} MiB each way: through the VIP {:.0} Mbit/s, routed {:.0} Mbit/s",
        r.served,
        r.xdp_mode,
        scenario::BULK_BYTES >> 20,
        vip.mbit_per_s(),
        routed.mbit_per_s()
    );
}
