//! The collision resolver on the backend's node, bad input and limits, the carriers behind
//! VLAN tags, IPv4 options and IPv6 extension headers, and GSO packets at TC.

use super::*;

/// The collision resolver on the backend's node: a client reaches the backend through node B's
/// own NodePort (plain DNAT on node B) and, with the same source port, through node A (DSR or
/// tunnel, keeping the client's address). The reply tuples collide; the flow node A forwarded
/// gets another source port on node B, and its replies get the original one back.
pub(crate) fn backend_side_collisions(cl: &mut Cluster) {
    // DSR.
    let cport = 42_000;
    cl.run(
        fx(
            Node::B,
            "collision (dsr): local NodePort flow",
            tcp_v4_frame(CLIENT, cport, NODE_B, NODEPORT_DSR, F::SYN, b""),
            pass(&[Counter::ServiceNewFlow]),
            Same,
        )
        .out(tcp_v4_frame(CLIENT, cport, BE, 8080, F::SYN, b"")),
    );
    let opt = dsr_v4_option(NODE_A, NODEPORT_DSR);
    let carried =
        |port, flags| with_ipv4_option(&tcp_v4_frame(CLIENT, port, BE, 8080, flags, b""), &opt);
    let o = cl.run(fx(
        Node::B,
        "collision (dsr): the same client port through node A: source port rewritten",
        carried(cport, F::SYN),
        pass(&[Counter::BackendSideNewFlow, Counter::SourcePortRewritten]),
        Same,
    ));
    // Keyed by the tuple the client sent, to node A's NodePort (the carrier names it).
    let e = cl.entry(
        Node::B,
        key(
            CtKind::Service,
            L4Proto::Tcp,
            ip(CLIENT),
            cport,
            ip(NODE_A),
            NODEPORT_DSR,
        ),
    );
    assert_eq!((e.nat_addr, e.nat_port), (addr16(ip(BE)), 8080));
    let port = e.rewritten_src_port;
    assert!(
        e.src_port_rewritten() && e.is_dsr() && e.is_backend_side(),
        "{e:?}"
    );
    assert!(COLLISION_PORTS.contains(&port), "{port}");
    assert_eq!(
        o.frame,
        carried(port, F::SYN),
        "the rewritten port, the carrier kept"
    );
    cl.run(
        fx(
            Node::B,
            "collision (dsr): next packet, port rewritten again",
            carried(cport, F::ACK),
            pass(&[Counter::ServiceEstablished]),
            Same,
        )
        .out(carried(port, F::ACK)),
    );
    cl.run(
        fx(
            Node::B,
            "collision (dsr): reply to the rewritten port: node A's service, the client's port",
            tcp_v4_frame(BE, 8080, CLIENT, port, F::SYN | F::ACK, b""),
            pass(&[Counter::ReplyTranslated]),
            Same,
        )
        .out(tcp_v4_frame(
            NODE_A,
            NODEPORT_DSR,
            CLIENT,
            cport,
            F::SYN | F::ACK,
            b"",
        )),
    );
    cl.run(
        fx(
            Node::B,
            "collision (dsr): reply of the local flow, untouched by the other",
            tcp_v4_frame(BE, 8080, CLIENT, cport, F::SYN | F::ACK, b""),
            pass(&[Counter::ReplyTranslated]),
            Same,
        )
        .out(tcp_v4_frame(
            NODE_B,
            NODEPORT_DSR,
            CLIENT,
            cport,
            F::SYN | F::ACK,
            b"",
        )),
    );

    // Tunnel.
    let cport = 42_001;
    cl.run(
        fx(
            Node::B,
            "collision (tunnel): local NodePort flow",
            tcp_v4_frame(CLIENT, cport, NODE_B, NODEPORT_TUN, F::SYN, b""),
            pass(&[Counter::ServiceNewFlow]),
            Same,
        )
        .out(tcp_v4_frame(CLIENT, cport, BE, 8080, F::SYN, b"")),
    );
    let inner = |port, flags| tcp_v4_frame(CLIENT, port, BE, 8080, flags, b"");
    let o = cl.run(fx(
        Node::B,
        "collision (tunnel): the same client port from node A: source port rewritten",
        with_macs(
            &vxlan_v4(NODE_A, NODE_B, 50_002, VNI, &inner(cport, F::SYN)),
            B_MAC,
            ROUTER_MAC,
        ),
        pass(&[
            Counter::TunnelDecapsulated,
            Counter::BackendSideNewFlow,
            Counter::SourcePortRewritten,
        ]),
        Same,
    ));
    let reply = |port| tcp_v4_frame(BE, 8080, CLIENT, port, F::SYN | F::ACK, b"");
    let e = cl.entry(
        Node::B,
        key_from(ip(NODE_A), L4Proto::Tcp, ip(CLIENT), cport, ip(BE), 8080),
    );
    let port = e.rewritten_src_port;
    assert!(COLLISION_PORTS.contains(&port), "{port}");
    assert_eq!(o.frame, with_macs(&inner(port, F::SYN), B_MAC, ROUTER_MAC));
    let o = cl.run(fx(
        Node::B,
        "collision (tunnel): reply to the rewritten port goes back through the tunnel, port restored",
        reply(port),
        pass(&[Counter::ReplyTranslated, Counter::TunnelEncapsulated]),
        Same,
    ));
    let s = u16::from_be_bytes([o.frame[34], o.frame[35]]);
    assert_eq!(o.frame, vxlan_v4(NODE_B, NODE_A, s, VNI, &reply(cport)));
    cl.run(
        fx(
            Node::B,
            "collision (tunnel): reply of the local flow",
            reply(cport),
            pass(&[Counter::ReplyTranslated]),
            Same,
        )
        .out(tcp_v4_frame(
            NODE_B,
            NODEPORT_TUN,
            CLIENT,
            cport,
            F::SYN | F::ACK,
            b"",
        )),
    );

    // Two frontends of node A, tunnel mode: node A holds both flows' reverse halves, so it
    // resolves the collision itself before encapsulating.
    let cport = 42_002;
    let first: &'static [Counter] = &[Counter::ServiceNewFlow, Counter::TunnelEncapsulated];
    let second: &'static [Counter] = &[
        Counter::ServiceNewFlow,
        Counter::SourcePortRewritten,
        Counter::TunnelEncapsulated,
    ];
    for (vport, expect, at_tc, name) in [
        (80, pass(first), Same, "first frontend"),
        (
            81,
            pass(second),
            Same,
            "second frontend, same client port: rewritten before encapsulation",
        ),
    ] {
        let o = cl.run(fx(
            Node::A,
            format!("collision (tunnel, node A): {name}"),
            tcp_v4_frame(CLIENT, cport, VIP_TUN, vport, F::SYN, b""),
            expect,
            at_tc,
        ));
        let e = cl.entry(
            Node::A,
            key(
                CtKind::Service,
                L4Proto::Tcp,
                ip(CLIENT),
                cport,
                ip(VIP_TUN),
                vport,
            ),
        );
        let port = if vport == 80 {
            cport
        } else {
            assert!(COLLISION_PORTS.contains(&e.rewritten_src_port), "{e:?}");
            e.rewritten_src_port
        };
        let s = u16::from_be_bytes([o.frame[34], o.frame[35]]);
        assert_eq!(
            o.frame,
            vxlan_v4(NODE_A, NODE_B, s, VNI, &inner(port, F::SYN))
        );
    }
}

/// Bad input and limits.
pub(crate) fn bad_input(cl: &mut Cluster) {
    let inner = tcp_v4_frame(CLIENT, 46_000, BE, 8080, F::SYN, b"");
    let vx = |src: [u8; 4], vni: u32, inner: &[u8]| {
        with_macs(
            &vxlan_v4(src, NODE_B, 50_003, vni, inner),
            B_MAC,
            ROUTER_MAC,
        )
    };
    cl.run(fx(
        Node::B,
        "vxlan from an address that is not a configured node",
        vx(STRANGER, VNI, &inner),
        dropped(DropReason::TunnelFromUnknownNode, &[]),
        Same,
    ));
    let mut no_i_flag = vx(NODE_A, VNI, &inner);
    no_i_flag[42] = 0;
    cl.run(fx(
        Node::B,
        "vxlan header without the I flag",
        no_i_flag,
        dropped(DropReason::BadTunnelHeader, &[]),
        Same,
    ));
    cl.run(fx(
        Node::B,
        "vxlan with another VNI",
        vx(NODE_A, VNI + 1, &inner),
        dropped(DropReason::BadTunnelHeader, &[]),
        Same,
    ));
    // UDP to the tunnel port carrying 4 bytes: a VXLAN header cut short (the UDP and IP lengths
    // agree with the frame, so it parses).
    let mut cut = udp_v4_frame(NODE_A, 50_004, NODE_B, 4789, &[0x08, 0, 0, 0]);
    cut = with_macs(&cut, B_MAC, ROUTER_MAC);
    cl.run(fx(
        Node::B,
        "vxlan header truncated",
        cut,
        dropped(DropReason::BadTunnelHeader, &[]),
        Same,
    ));
    cl.run(fx(
        Node::B,
        "vxlan with an inner frame shorter than Ethernet",
        vxlan_v4_macs(
            NODE_A,
            NODE_B,
            50_003,
            VNI,
            &inner[..10],
            (B_MAC, ROUTER_MAC),
        ),
        dropped(DropReason::BadTunnelHeader, &[]),
        Same,
    ));

    // The MTU: a packet that fits with the carrier goes; one byte more and the sender gets the
    // ICMP error with the MTU that leaves room for the carrier.
    let payload = |ip_len: usize, header: usize| vec![0x5a; ip_len - header];
    let fits = tcp_v4_frame(CLIENT, 45_000, VIP_DSR, 80, F::ACK, &payload(1492, 40));
    cl.run(
        fx(
            Node::A,
            "dsr v4: 1492 bytes + 8 of carrier fit the 1500 MTU",
            fits,
            pass(&[Counter::ServiceNewFlow, Counter::DsrCarrierAdded]),
            Same,
        )
        .out(with_ipv4_option(
            &tcp_v4_frame(CLIENT, 45_000, BE, 8080, F::ACK, &payload(1492, 40)),
            &dsr_v4_option(VIP_DSR, 80),
        )),
    );
    for (name, sent, from, mtu) in [
        (
            "dsr v4: 1493 bytes do not fit with the option",
            tcp_v4_frame(CLIENT, 45_001, VIP_DSR, 80, F::ACK, &payload(1493, 40)),
            ip(NODE_A),
            1492,
        ),
        (
            "dsr v4, established flow: too big",
            tcp_v4_frame(CLIENT, 45_000, VIP_DSR, 80, F::ACK, &payload(1500, 40)),
            ip(NODE_A),
            1492,
        ),
        (
            "tunnel v4: 1451 bytes do not fit with 50 of VXLAN",
            tcp_v4_frame(CLIENT, 45_002, VIP_TUN, 80, F::ACK, &payload(1451, 40)),
            ip(NODE_A),
            1450,
        ),
        (
            "tunnel v6: 1431 bytes do not fit with 70 of VXLAN over IPv6",
            tcp_v6_frame(
                client6(),
                45_004,
                vip6_tun(),
                80,
                F::ACK,
                &payload(1431, 60),
            ),
            ip6(node_a6()),
            1430,
        ),
        (
            "dsr v6: 1477 bytes do not fit with the 24-byte option",
            tcp_v6_frame(
                client6(),
                45_003,
                vip6_dsr(),
                80,
                F::ACK,
                &payload(1477, 60),
            ),
            ip6(node_a6()),
            1476,
        ),
    ] {
        let o = cl.run(
            fx(
                Node::A,
                name,
                sent.clone(),
                tx(&[Counter::MtuExceeded]),
                Same,
            )
            .out(too_big(&sent, from, mtu)),
        );
        let seen = oracle(name, &o.frame);
        let (ty, code, rest) = seen.icmp.expect("an ICMP error");
        if from.is_ipv4() {
            assert_eq!((ty, code), (3, 4), "fragmentation needed");
            assert_eq!(u16::from_be_bytes([rest[2], rest[3]]), mtu);
        } else {
            assert_eq!((ty, code), (2, 0), "packet too big");
            assert_eq!(u32::from_be_bytes(rest), u32::from(mtu));
        }
    }
    // No flow was created for the packets turned into errors.
    assert!(!cl.has_entry(
        Node::A,
        key(
            CtKind::Service,
            L4Proto::Tcp,
            ip(CLIENT),
            45_001,
            ip(VIP_DSR),
            80
        )
    ));

    // Node C has no IPv6 address: SNAT or the tunnel for an IPv6 flow cannot happen, nor can an
    // ICMPv6 error be sent from it.
    cl.run(fx(
        Node::C,
        "snat v6 on a node without an IPv6 address",
        tcp_v6_frame(client6(), 47_000, vip6_snat(), 80, F::SYN, b""),
        dropped(DropReason::NodeAddressMissing, &[]),
        Same,
    ));
    cl.run(fx(
        Node::C,
        "tunnel v6 on a node without an IPv6 address (no outer source)",
        tcp_v6_frame(client6(), 47_002, vip6_tun(), 80, F::SYN, b""),
        dropped(DropReason::NodeAddressMissing, &[]),
        Same,
    ));
    cl.run(fx(
        Node::C,
        "dsr v6 too big on a node without an IPv6 address (no ICMPv6 source)",
        tcp_v6_frame(
            client6(),
            47_001,
            vip6_dsr(),
            80,
            F::ACK,
            &payload(1477, 60),
        ),
        dropped(DropReason::NodeAddressMissing, &[]),
        Same,
    ));
    assert!(
        !cl.c.engine.conntrack().iter().any(|(k, _)| k.family == 6),
        "no IPv6 flow on node C"
    );
}

/// The carriers where the headers in front of them vary: VLAN tags, IPv4 options, IPv6
/// extension headers.
pub(crate) fn carrier_edge_cases(cl: &mut Cluster) {
    let q = |f: &[u8]| tagged(f, 0x8100, 7);
    let syn = |port, dst, dport| tcp_v4_frame(CLIENT, port, dst, dport, F::SYN, b"");
    let opt = dsr_v4_option(VIP_DSR, 80);

    let carried = q(&with_ipv4_option(&syn(48_000, BE, 8080), &opt));
    cl.run(
        fx(
            Node::A,
            "802.1Q-tagged dsr v4: carrier after the tag and the IPv4 header",
            q(&syn(48_000, VIP_DSR, 80)),
            pass(&[Counter::ServiceNewFlow, Counter::DsrCarrierAdded]),
            TC_TAGGED_NOT_CARRIED,
        )
        .out(carried.clone()),
    );
    cl.run(
        fx(
            Node::B,
            "802.1Q-tagged dsr v4 at the backend's node",
            carried.clone(),
            pass(&[Counter::BackendSideNewFlow]),
            Same,
        )
        .out(carried),
    );

    let inner = q(&syn(48_001, BE, 8080));
    let o = cl.run(fx(
        Node::A,
        "802.1Q-tagged tunnel v4: the tagged frame is the inner frame",
        q(&syn(48_001, VIP_TUN, 80)),
        pass(&[Counter::ServiceNewFlow, Counter::TunnelEncapsulated]),
        TC_TAGGED_NOT_CARRIED,
    ));
    if !cl.is_tc() {
        // (At TC the tagged frame was not carried.)
        let s = u16::from_be_bytes([o.frame[34], o.frame[35]]);
        assert_eq!(o.frame, vxlan_v4(NODE_A, NODE_B, s, VNI, &inner));
    }
    cl.run(
        fx(
            Node::B,
            "802.1Q-tagged inner frame decapsulated at the backend's node",
            with_macs(
                &vxlan_v4(NODE_A, NODE_B, 50_010, VNI, &inner),
                B_MAC,
                ROUTER_MAC,
            ),
            pass(&[Counter::TunnelDecapsulated, Counter::BackendSideNewFlow]),
            TC_TAGGED_INNER_NOT_DECAPSULATED,
        )
        .out(with_macs(&inner, B_MAC, ROUTER_MAC)),
    );

    let big = tcp_v4_frame(CLIENT, 48_002, VIP_DSR, 80, F::ACK, &[0x5a; 1493 - 40]);
    cl.run(
        fx(
            Node::A,
            "802.1Q-tagged dsr v4 too big: the ICMP error keeps the tag",
            q(&big),
            tx(&[Counter::MtuExceeded]),
            TC_TAGGED_TOO_BIG_NOT_SENT,
        )
        .out(q(&too_big(&big, ip(NODE_A), 1492))),
    );

    // IPv4 options already there: the carrier goes first, before them (an End-of-Option-List
    // among them would hide anything after it), while the header has room.
    let nops = [1u8; 4];
    let mut both = opt.to_vec();
    both.extend_from_slice(&nops);
    let carried = with_ipv4_option(&syn(48_003, BE, 8080), &both);
    cl.run(
        fx(
            Node::A,
            "dsr v4 with 4 bytes of IPv4 options: carrier added",
            with_ipv4_option(&syn(48_003, VIP_DSR, 80), &nops),
            pass(&[Counter::ServiceNewFlow, Counter::DsrCarrierAdded]),
            Same,
        )
        .out(carried.clone()),
    );
    cl.run(
        fx(
            Node::B,
            "dsr v4 with IPv4 options at the backend's node: the carrier is found",
            carried.clone(),
            pass(&[Counter::BackendSideNewFlow]),
            Same,
        )
        .out(carried),
    );
    // 36 bytes of options: 8 more do not fit the 60-byte IPv4 header. The flow exists, its
    // packet cannot be carried: dropped, at XDP as at TC.
    cl.run(fx(
        Node::A,
        "dsr v4 with 36 bytes of IPv4 options: no room for the carrier",
        with_ipv4_option(&syn(48_004, VIP_DSR, 80), &[1u8; 36]),
        // The flow is created and the packet translated before the carrier fails; it counts
        // as dropped only.
        dropped(DropReason::EncapFailed, &[]),
        Same,
    ));

    // IPv6: a hop-by-hop header must stay first, so the DSR header cannot go in front of it;
    // another destination options header stays, after the DSR one.
    let syn6 = |port, dst, dport| tcp_v6_frame(client6(), port, dst, dport, F::SYN, b"");
    cl.run(fx(
        Node::A,
        "dsr v6 behind a hop-by-hop header: no room for the carrier",
        with_ipv6_padn_ext(&syn6(48_005, vip6_dsr(), 80), 0),
        // The flow is created and the packet translated before the carrier fails; it counts
        // as dropped only.
        dropped(DropReason::EncapFailed, &[]),
        Same,
    ));
    let carried = with_ipv6_dsr(
        &with_ipv6_padn_ext(&syn6(48_006, be6(), 8080), 60),
        vip6_dsr(),
        80,
    );
    cl.run(
        fx(
            Node::A,
            "dsr v6 with a destination options header already: the carrier goes first",
            with_ipv6_padn_ext(&syn6(48_006, vip6_dsr(), 80), 60),
            pass(&[Counter::ServiceNewFlow, Counter::DsrCarrierAdded]),
            Same,
        )
        .out(carried.clone()),
    );
    cl.run(
        fx(
            Node::B,
            "dsr v6 with two destination options headers at the backend's node",
            carried.clone(),
            pass(&[Counter::BackendSideNewFlow]),
            Same,
        )
        .out(carried),
    );
}

/// TC only: GSO packets (a local sender's TCP data with segmentation offload, as one large
/// packet with its segment size in the skb). The MTU decision goes by the segments: the same
/// 3000-byte packet gets the ICMP error when its segments with the carrier exceed the MTU, and
/// is carried when they fit. (The kernel's test runner gives a GSO size no GSO type, and the
/// kernel resizes no such packet: there the carrier fails, in both worlds alike. With a TCP GSO
/// type it is added: the engine's tests show it.)
pub(crate) fn gso_at_tc(cl: &mut Cluster) {
    let payload = vec![0x5a; 2960];
    let big = |port, dst: IpAddr| frame(L4Proto::Tcp, ip(CLIENT), port, dst, 80, F::ACK, &payload);
    for (name, port, vip, gso, expect, out) in [
        (
            "dsr v4 gso: segments of 1460 bytes with 8 of carrier exceed the MTU",
            45_100,
            VIP_DSR,
            1460,
            tx(&[Counter::MtuExceeded]),
            Some(1492),
        ),
        (
            "dsr v4 gso: segments of 1400 bytes fit with the carrier (the runner's GSO packet \
             cannot grow)",
            45_101,
            VIP_DSR,
            1400,
            dropped(DropReason::EncapFailed, &[]),
            None,
        ),
        (
            "tunnel v4 gso: segments of 1420 bytes with 50 of VXLAN exceed the MTU",
            45_102,
            VIP_TUN,
            1420,
            tx(&[Counter::MtuExceeded]),
            Some(1450),
        ),
        (
            "tunnel v4 gso: segments of 1400 bytes fit with VXLAN (the runner's GSO packet \
             cannot grow)",
            45_103,
            VIP_TUN,
            1400,
            dropped(DropReason::EncapFailed, &[]),
            None,
        ),
    ] {
        let sent = big(port, ip(vip));
        cl.a.skb.gso_size = gso;
        let mut f = fx(Node::A, name, sent.clone(), expect, Same);
        if let Some(mtu) = out {
            f = f.out(too_big(&sent, ip(NODE_A), mtu));
        }
        cl.run(f);
        cl.a.skb.gso_size = 0;
    }
}
