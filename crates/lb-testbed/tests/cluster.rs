//! The two-node topology by plain routing, before any program is attached: the client reaches
//! each backend pod over IPv4 and IPv6, TCP, UDP and HTTP, each backend sees the client's own
//! address, the nodes' addresses answer (NodePort reachability), and replies of backend-2 come
//! back from node-2 without touching node-1.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lb_api::flow::L4Proto;
use lb_testbed::capture::Capture;
use lb_testbed::cluster::{Cluster, Family, LAN_IF, VIP_V4, VIP_V6};
use lb_testbed::matrix::{self, Expectation, Leg, SeenPort};
use lb_testbed::traffic::{
    connect, http_get, request, saw_prefix, start_backends, udp_request, BackendSite, Conversation,
    BACKEND_PORT, HTTP_PORT,
};

use lb_testbed::gate::privileged_test as privileged;

const TIMEOUT: Duration = Duration::from_secs(3);

#[test]
fn plain_routing_reaches_both_pods_in_both_families() {
    if !privileged("plain_routing_reaches_both_pods_in_both_families") {
        return;
    }
    let cluster = Cluster::create("route").expect("cluster");
    let servers = cluster
        .start_backends(Duration::from_secs(60))
        .expect("servers");
    let node1_before = Cluster::link_stats(&cluster.nodes[0], LAN_IF).unwrap();

    for family in Family::ALL {
        let client = family.client();
        for b in 0..2 {
            let name = format!("backend-{}", b + 1);
            let target = SocketAddr::new(family.backend(b), BACKEND_PORT);
            let tcp = cluster
                .in_client(|| request(target, 0, b, TIMEOUT))
                .unwrap()
                .unwrap_or_else(|e| panic!("{family} TCP to {target}: {e:#}"));
            assert!(
                tcp.starts_with(&saw_prefix(&name, client)),
                "{family} TCP to {target}: {tcp}"
            );
            let udp = cluster
                .in_client(|| udp_request(target, 0, b, TIMEOUT))
                .unwrap()
                .unwrap_or_else(|e| panic!("{family} UDP to {target}: {e:#}"));
            assert!(
                udp.starts_with(&saw_prefix(&name, client)),
                "{family} UDP to {target}: {udp}"
            );
            let http = cluster
                .in_client(|| http_get(SocketAddr::new(family.backend(b), HTTP_PORT), TIMEOUT))
                .unwrap()
                .unwrap();
            assert!(
                http.starts_with("HTTP/1.1 200 OK\r\n")
                    && http.contains(&saw_prefix(&name, client)),
                "{family} HTTP to backend-{}: {http:?}",
                b + 1
            );
        }
        // Nothing listens on the nodes' port 1: a refused connection proves the address answers.
        for n in 0..2 {
            let target = SocketAddr::new(family.node(n), 1);
            let err = cluster
                .in_client(|| connect(target, 0, TIMEOUT))
                .unwrap()
                .expect_err("nothing listens on port 1");
            let refused = err.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
            });
            assert!(
                refused,
                "{family} node-{}: expected a refusal, got {err:#}",
                n + 1
            );
        }
    }

    // Traffic to and from backend-2 went client <-> node-2 directly: node-1 forwarded none of it.
    // Only its own refusals and neighbour discovery can have crossed node-1's LAN port.
    let node1_after = Cluster::link_stats(&cluster.nodes[0], LAN_IF).unwrap();
    let tx = node1_after.tx_packets - node1_before.tx_packets;
    assert!(
        tx < 40,
        "node-1 sent {tx} packets: traffic of backend-2 crossed node-1"
    );
    let served = servers.stop();
    assert_eq!(
        served,
        vec![2, 2],
        "each backend served one TCP request per family"
    );
}

/// The nodes route the other node's pod CIDR via the LAN: backend-1 reaches backend-2 and sees its
/// own pod address arrive unchanged.
#[test]
fn pod_to_pod_across_nodes() {
    if !privileged("pod_to_pod_across_nodes") {
        return;
    }
    let cluster = Cluster::create("p2p").expect("cluster");
    let _servers = cluster
        .start_backends(Duration::from_secs(60))
        .expect("servers");
    for family in Family::ALL {
        let target = SocketAddr::new(family.backend(1), BACKEND_PORT);
        let answer =
            lb_testbed::netns::within(&cluster.backends[0], || request(target, 0, 0, TIMEOUT))
                .unwrap()
                .unwrap_or_else(|e| panic!("{family} backend-1 -> backend-2: {e:#}"));
        assert!(
            answer.starts_with(&saw_prefix("backend-2", family.backend(0))),
            "{family}: {answer}"
        );
    }
}

/// The observation tools the mode tests rely on, checked where the answer is known: the client's
/// packet socket attributes each pod's replies to the node hosting it, and one client port holds
/// connections to both pods at once.
#[test]
fn replies_are_attributed_to_the_delivering_node_and_one_port_reaches_both_pods() {
    if !privileged("replies_are_attributed_to_the_delivering_node_and_one_port_reaches_both_pods") {
        return;
    }
    let cluster = Cluster::create("obs").expect("cluster");
    let _servers = cluster
        .start_backends(Duration::from_secs(60))
        .expect("servers");
    let macs = [
        Cluster::mac(&cluster.nodes[0], LAN_IF).unwrap(),
        Cluster::mac(&cluster.nodes[1], LAN_IF).unwrap(),
    ];
    assert_ne!(macs[0], macs[1]);
    for family in Family::ALL {
        let capture = Capture::start(&cluster.client, LAN_IF, Duration::from_secs(20)).unwrap();
        let port = if family == Family::V4 { 42001 } else { 42002 };
        let mut convs: Vec<Conversation> = (0..2)
            .map(|b| {
                let target = SocketAddr::new(family.backend(b), BACKEND_PORT);
                Conversation::open(&cluster.client, target, port, TIMEOUT)
                    .unwrap_or_else(|e| panic!("{family} port {port} to {target}: {e:#}"))
            })
            .collect();
        for (b, conv) in convs.iter_mut().enumerate() {
            assert_eq!(conv.local_addr().unwrap().port(), port);
            let answer = conv.ask("hello").unwrap();
            assert!(
                answer.starts_with(&saw_prefix(&format!("backend-{}", b + 1), family.client())),
                "{answer}"
            );
        }
        drop(convs);
        let frames = capture.stop();
        for (b, mac) in macs.iter().enumerate() {
            let from_pod: Vec<_> = frames
                .iter()
                .filter(|f| {
                    !f.outgoing && f.src == SocketAddr::new(family.backend(b), BACKEND_PORT)
                })
                .collect();
            assert!(
                !from_pod.is_empty(),
                "{family}: no frame from backend-{}",
                b + 1
            );
            assert!(
                from_pod
                    .iter()
                    .all(|f| f.eth_src == *mac && f.dst.port() == port),
                "{family}: backend-{}'s replies must come from node-{}: {from_pod:?}",
                b + 1,
                b + 1
            );
        }
        assert!(
            frames.iter().any(|f| f.outgoing && f.src.port() == port),
            "{family}: the client's own frames are seen as outgoing"
        );
    }
}

/// The path-MTU observation of the mode tests, where the answer is known: with node-2's route to
/// its pod narrowed to 1400 bytes (a locked route MTU, so neither endpoint's MSS reflects it and
/// forwarding honours it), a large request to backend-2 makes node-2 send ICMP "fragmentation
/// needed" / ICMPv6 "packet too big" announcing 1400, the client's capture sees it from node-2,
/// and TCP completes with smaller segments.
#[test]
fn a_narrow_route_yields_icmp_too_big_and_tcp_completes() {
    if !privileged("a_narrow_route_yields_icmp_too_big_and_tcp_completes") {
        return;
    }
    let cluster = Cluster::create("pmtu").expect("cluster");
    let _servers = cluster
        .start_backends(Duration::from_secs(60))
        .expect("servers");
    let n2 = cluster.nodes[1].as_str();
    // `replace` at the kernel's own metric (0 for IPv4, 256 for IPv6) swaps the connected route.
    for (v, net, metric) in [
        ("-4", "10.211.2.0/24", "0"),
        ("-6", "fd00:211:2::/64", "256"),
    ] {
        lb_testbed::netns::ip(&[
            "-n", n2, v, "route", "replace", net, "dev", "pod1", "metric", metric, "mtu", "lock",
            "1400",
        ])
        .unwrap();
    }
    let node2 = Cluster::mac(&cluster.nodes[1], LAN_IF).unwrap();
    let payload = "y".repeat(4000);
    for family in Family::ALL {
        let capture = Capture::start(&cluster.client, LAN_IF, Duration::from_secs(20)).unwrap();
        let target = SocketAddr::new(family.backend(1), BACKEND_PORT);
        let answer = Conversation::open(&cluster.client, target, 0, Duration::from_secs(10))
            .and_then(|mut c| c.ask(&payload));
        let frames = capture.stop();
        let answer =
            answer.unwrap_or_else(|e| panic!("{family}: large request did not complete: {e:#}"));
        assert!(answer.ends_with(&payload), "{family}: answer cut");
        let too_big: Vec<_> = frames
            .iter()
            .filter(|f| !f.outgoing)
            .filter_map(|f| {
                f.icmp
                    .filter(|i| i.is_too_big(family == Family::V6))
                    .map(|i| (i.mtu, f.eth_src))
            })
            .collect();
        assert!(
            !too_big.is_empty()
                && too_big
                    .iter()
                    .all(|&(mtu, mac)| mtu == 1400 && mac == node2),
            "{family}: expected ICMP too-big announcing 1400 from node-2, saw {too_big:?}"
        );
    }
}

/// After SNAT or VXLAN encapsulation in XDP, node-1 hands the stack a packet whose source is its
/// own address, to be routed on. Such a packet, sent here by the client with node-1's address
/// forged as source (IP_TRANSPARENT), must reach backend-1 rather than be dropped as a martian.
#[test]
fn a_node_forwards_packets_carrying_its_own_ipv4_source() {
    if !privileged("a_node_forwards_packets_carrying_its_own_ipv4_source") {
        return;
    }
    let cluster = Cluster::create("local").expect("cluster");
    let capture = Capture::start(&cluster.backends[0], "eth0", Duration::from_secs(10)).unwrap();
    let src = SocketAddr::new(Family::V4.node(0), 45000);
    let dst = SocketAddr::new(Family::V4.backend(0), BACKEND_PORT);
    cluster
        .in_client(|| forged_udp(src, dst))
        .unwrap()
        .expect("sending with a forged source");
    // Two hops on veths: well under a second; the capture is then stopped.
    std::thread::sleep(Duration::from_millis(500));
    let frames = capture.stop();
    assert!(
        frames.iter().any(|f| f.src == src && f.dst == dst),
        "node-1 dropped a packet carrying its own source address: {frames:?}"
    );
}

/// The IPv6 side of the same: a frame injected at the client (a packet socket, since the stack
/// will not send from a foreign IPv6 source) carrying node-1's IPv6 address as source must be
/// forwarded by node-1 to backend-1.
#[test]
fn a_node_forwards_packets_carrying_its_own_ipv6_source() {
    if !privileged("a_node_forwards_packets_carrying_its_own_ipv6_source") {
        return;
    }
    let cluster = Cluster::create("local6").expect("cluster");
    let capture = Capture::start(&cluster.backends[0], "eth0", Duration::from_secs(10)).unwrap();
    let src = SocketAddr::new(Family::V6.node(0), 45000);
    let dst = SocketAddr::new(Family::V6.backend(0), BACKEND_PORT);
    // A control frame from the client's own address tells a broken injection from a drop.
    let control = SocketAddr::new(Family::V6.client(), 45001);
    let macs = (
        Cluster::mac(&cluster.nodes[0], LAN_IF).unwrap(),
        Cluster::mac(&cluster.client, LAN_IF).unwrap(),
    );
    for from in [control, src] {
        let frame = udp6_frame(macs.0, macs.1, from, dst, b"forged");
        lb_testbed::capture::inject(&cluster.client, LAN_IF, &frame).expect("injecting");
    }
    std::thread::sleep(Duration::from_millis(500));
    let frames = capture.stop();
    let arrived = |from: SocketAddr| frames.iter().any(|f| f.src == from && f.dst == dst);
    assert!(
        arrived(control),
        "the control frame did not arrive: {frames:?}"
    );
    assert!(
        arrived(src),
        "node-1 dropped an IPv6 packet carrying its own source address: {frames:?}"
    );
}

/// An Ethernet + IPv6 + UDP frame with a correct UDP checksum.
fn udp6_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv6 addresses expected");
    };
    let udp_len = u16::try_from(8 + payload.len()).unwrap();
    let mut udp = Vec::new();
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    // Checksum over the pseudo-header (addresses, length, next header) and the datagram.
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&s.octets());
    add(&d.octets());
    add(&u32::from(udp_len).to_be_bytes());
    add(&[0, 0, 0, 17]);
    add(&udp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(sum as u16);
    udp[6..8].copy_from_slice(&(if csum == 0 { 0xffff } else { csum }).to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[17, 64]);
    f.extend_from_slice(&s.octets());
    f.extend_from_slice(&d.octets());
    f.extend_from_slice(&udp);
    f
}

/// Sends one UDP datagram from `src`, an IPv4 address this host does not own.
fn forged_udp(src: SocketAddr, dst: SocketAddr) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let SocketAddr::V4(src4) = src else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    // SAFETY: plain socket creation; the fd is owned by the UdpSocket right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let sock = unsafe { std::net::UdpSocket::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: valid fd, an int option of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_IP,
            libc::IP_TRANSPARENT,
            std::ptr::from_ref(&one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_in is plain data; all-zero is valid.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_port = src4.port().to_be();
    sin.sin_addr.s_addr = u32::from_ne_bytes(src4.ip().octets());
    // SAFETY: `sin` is a sockaddr_in of the size passed; IP_TRANSPARENT allows a foreign address.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            std::ptr::from_ref(&sin).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    sock.send_to(b"forged", dst).map(|_| ())
}

/// The mode matrix's checks where the answer is known: plain routing that behaves like DSR (the
/// VIP is an address of backend-2, routed client -> node-1 -> node-2 -> backend-2, and backend-2
/// answers from it straight via node-2). The DSR expectation must pass every check; a SNAT
/// expectation must fail the address and reply-path checks, so they can tell the modes apart.
#[test]
fn the_matrix_checks_pass_dsr_by_plain_routing_and_tell_it_from_snat() {
    if !privileged("the_matrix_checks_pass_dsr_by_plain_routing_and_tell_it_from_snat") {
        return;
    }
    let cluster = Cluster::create("emu").expect("cluster");
    let (n1, n2, b2) = (
        cluster.nodes[0].as_str(),
        cluster.nodes[1].as_str(),
        cluster.backends[1].as_str(),
    );
    let ip = lb_testbed::netns::ip;
    for family in Family::ALL {
        let (vip, host) = match family {
            Family::V4 => (format!("{VIP_V4}"), "/32"),
            Family::V6 => (format!("{VIP_V6}"), "/128"),
        };
        let v = if family == Family::V4 { "-4" } else { "-6" };
        ip(&[
            "-n",
            b2,
            v,
            "addr",
            "add",
            &format!("{vip}{host}"),
            "dev",
            "lo",
        ])
        .unwrap();
        let via1 = family.node(1).to_string();
        ip(&["-n", n1, v, "route", "add", &vip, "via", &via1]).unwrap();
        let via2 = family.backend(1).to_string();
        ip(&["-n", n2, v, "route", "add", &vip, "via", &via2]).unwrap();
    }
    let _pods = cluster.start_backends(Duration::from_secs(60)).unwrap();
    let _vip_server = start_backends(
        &[BackendSite {
            ns: b2.to_string(),
            name: "backend-2".into(),
            addrs: vec![IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)],
        }],
        Duration::from_secs(60),
    )
    .unwrap();
    let macs = [
        Cluster::mac(n1, LAN_IF).unwrap(),
        Cluster::mac(n2, LAN_IF).unwrap(),
    ];
    let mut failures = Vec::new();
    let mut port = 43000;
    for family in Family::ALL {
        let target = SocketAddr::new(family.vip(), BACKEND_PORT);
        for proto in [L4Proto::Tcp, L4Proto::Udp] {
            // Two destinations at backend-2 (the VIP and its pod address): no tuple collides.
            let client = Leg {
                addr: family.client(),
                port: SeenPort::Kept,
            };
            let dsr = Expectation {
                seen: family.client(),
                reply_via: 1,
                adds_bytes: false,
                same_port: [client; 2],
            };
            let mut checks = matrix::traffic(&cluster, proto, target, dsr, &macs);
            port += 1;
            let both = [target, SocketAddr::new(family.backend(1), BACKEND_PORT)];
            checks.push((
                "same client port",
                matrix::same_port(&cluster, proto, port, both, dsr.same_port),
            ));
            if proto == L4Proto::Tcp {
                checks.push(("path MTU", matrix::path_mtu(&cluster, target, false, &macs)));
            }
            for (check, res) in checks {
                if let Err(e) = res {
                    failures.push(format!("{family} {proto:?} {check}: {e}"));
                }
            }
            // The same traffic judged by the SNAT expectation fails where SNAT differs.
            let snat = Expectation {
                seen: family.node(0),
                reply_via: 0,
                ..dsr
            };
            let judged = matrix::traffic(&cluster, proto, target, snat, &macs);
            for (check, res) in &judged {
                let should_fail = matches!(*check, "client address" | "reply path");
                if should_fail == res.is_ok() {
                    failures.push(format!(
                        "{family} {proto:?} {check} under the SNAT expectation: {res:?}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Dropping the cluster removes every namespace it created.
#[test]
fn dropping_the_cluster_removes_its_namespaces() {
    if !privileged("dropping_the_cluster_removes_its_namespaces") {
        return;
    }
    let cluster = Cluster::create("drop").expect("cluster");
    let names = cluster.namespaces().to_vec();
    assert_eq!(names.len(), 6);
    let listed = || {
        String::from_utf8(
            std::process::Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
    };
    let before = listed();
    assert!(
        names.iter().all(|n| before.contains(n.as_str())),
        "{before}"
    );
    drop(cluster);
    let after = listed();
    assert!(
        names.iter().all(|n| !after.contains(n.as_str())),
        "left behind: {after}"
    );
}
