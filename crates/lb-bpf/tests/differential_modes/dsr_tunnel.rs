//! DSR, the VXLAN tunnel and hybrid, on the node that picks the backend and on the backend's
//! node.

use super::*;

/// DSR for one family: node A's packets carry the service address to node B; node A keeps no
/// reverse half; node B records the flow from the carrier, and the backend's reply leaves node
/// B from the service address.
pub(crate) fn dsr_scene(cl: &mut Cluster, v6: bool, cport: u16) {
    let (client, vip, be) = if v6 {
        (ip6(client6()), ip6(vip6_dsr()), ip6(be6()))
    } else {
        (ip(CLIENT), ip(VIP_DSR), ip(BE))
    };
    let fam = if v6 { "v6" } else { "v4" };
    let t = |src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8| {
        frame(L4Proto::Tcp, src, sport, dst, dport, flags, b"")
    };
    let carried = |flags| {
        let f = t(client, cport, be, 8080, flags);
        match vip {
            IpAddr::V4(s) => with_ipv4_option(&f, &dsr_v4_option(s.octets(), 80)),
            IpAddr::V6(s) => with_ipv6_dsr(&f, s.octets(), 80),
        }
    };
    let o = cl.run(
        fx(
            Node::A,
            format!("dsr {fam}: new flow gets the carrier"),
            t(client, cport, vip, 80, F::SYN),
            pass(&[Counter::ServiceNewFlow, Counter::DsrCarrierAdded]),
            Same,
        )
        .out(carried(F::SYN)),
    );
    let seen = oracle("dsr carrier", &o.frame);
    match vip {
        IpAddr::V4(s) => assert_eq!(seen.ipv4_options, dsr_v4_option(s.octets(), 80)),
        IpAddr::V6(s) => {
            let opts = seen.ipv6_dest_opts.expect("a destination options header");
            assert_eq!(opts[2..4], [0x1b, 20], "option type and length");
            assert_eq!(opts[4..20], s.octets(), "service address");
            assert_eq!(opts[20..22], 80u16.to_be_bytes(), "service port");
        }
    }
    let fwd = cl.entry(
        Node::A,
        key(CtKind::Service, L4Proto::Tcp, client, cport, vip, 80),
    );
    assert!(fwd.is_dsr() && !fwd.is_backend_side(), "{fwd:?}");
    assert!(
        !cl.has_entry(
            Node::A,
            key(CtKind::ReverseNat, L4Proto::Tcp, be, 8080, client, cport)
        ),
        "DSR replies do not come back to node A: no reverse half"
    );
    cl.run(
        fx(
            Node::A,
            format!("dsr {fam}: established packet gets the carrier too"),
            t(client, cport, vip, 80, F::ACK),
            pass(&[Counter::ServiceEstablished, Counter::DsrCarrierAdded]),
            Same,
        )
        .out(carried(F::ACK)),
    );

    // Node B: the carrier creates the backend-side entry; the packet goes on unchanged.
    cl.run(
        fx(
            Node::B,
            format!("dsr {fam}: backend's node records the flow from the carrier"),
            carried(F::SYN),
            pass(&[Counter::BackendSideNewFlow]),
            Same,
        )
        .out(carried(F::SYN)),
    );
    let rev = cl.entry(
        Node::B,
        key(CtKind::ReverseNat, L4Proto::Tcp, be, 8080, client, cport),
    );
    assert!(rev.is_dsr() && rev.is_backend_side(), "{rev:?}");
    assert_eq!(
        (rev.nat_addr, rev.nat_port),
        (addr16(vip), 80),
        "the service address came with the carrier"
    );
    // The service half is keyed by the tuple the client sent (the carrier names the service),
    // and holds the backend.
    let fwd = cl.entry(
        Node::B,
        key(CtKind::Service, L4Proto::Tcp, client, cport, vip, 80),
    );
    assert_eq!((fwd.nat_addr, fwd.nat_port), (addr16(be), 8080));
    cl.run(
        fx(
            Node::B,
            format!("dsr {fam}: established at the backend's node"),
            carried(F::ACK),
            pass(&[Counter::ServiceEstablished]),
            Same,
        )
        .out(carried(F::ACK)),
    );
    cl.run(
        fx(
            Node::B,
            format!("dsr {fam}: backend's reply leaves from the service address"),
            t(be, 8080, client, cport, F::SYN | F::ACK),
            pass(&[Counter::ReplyTranslated]),
            Same,
        )
        .out(t(vip, 80, client, cport, F::SYN | F::ACK)),
    );
}

pub(crate) fn dsr(cl: &mut Cluster) {
    dsr_scene(cl, false, 41_000);
    dsr_scene(cl, true, 41_001);
    // UDP in DSR mode too.
    cl.run(
        fx(
            Node::A,
            "dsr v4 udp: new flow gets the carrier",
            udp_v4_frame(CLIENT, 41_002, VIP_DSR, 53, b"query"),
            pass(&[Counter::ServiceNewFlow, Counter::DsrCarrierAdded]),
            Same,
        )
        .out(with_ipv4_option(
            &udp_v4_frame(CLIENT, 41_002, BE, 5353, b"query"),
            &dsr_v4_option(VIP_DSR, 53),
        )),
    );
    cl.run(fx(
        Node::B,
        "dsr v4 udp: backend's node records the flow",
        with_ipv4_option(
            &udp_v4_frame(CLIENT, 41_002, BE, 5353, b"query"),
            &dsr_v4_option(VIP_DSR, 53),
        ),
        pass(&[Counter::BackendSideNewFlow]),
        Same,
    ));
    cl.run(
        fx(
            Node::B,
            "dsr v4 udp: reply leaves from the service address",
            udp_v4_frame(BE, 5353, CLIENT, 41_002, b"answer"),
            pass(&[Counter::ReplyTranslated]),
            Same,
        )
        .out(udp_v4_frame(VIP_DSR, 53, CLIENT, 41_002, b"answer")),
    );
}

/// The tunnel over IPv4: node A encapsulates to node B; node B decapsulates (from a configured
/// peer), records the flow, and sends the backend's reply back through the tunnel; node A
/// decapsulates the reply and translates it back to the client.
pub(crate) fn tunnel(cl: &mut Cluster) {
    let v4 = (ip(CLIENT), ip(BE), ip(VIP_TUN), ip(NODE_A), ip(NODE_B));
    let v6 = (
        ip6(client6()),
        ip6(be6()),
        ip6(vip6_tun()),
        ip6(node_a6()),
        ip6(node_b6()),
    );
    for (proto, cport, vport, bport, (client, be, vip, node_a, node_b)) in [
        (L4Proto::Tcp, 43_000, 80, 8080, v4),
        (L4Proto::Udp, 43_001, 53, 5353, v4),
        (L4Proto::Tcp, 43_002, 80, 8080, v6),
        (L4Proto::Udp, 43_003, 53, 5353, v6),
    ] {
        let fam = if client.is_ipv4() { "v4" } else { "v6" };
        let p = format!("tunnel {fam} {proto:?}");
        let t = |src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8| {
            frame(proto, src, sport, dst, dport, flags, b"data")
        };
        let inner = |flags| t(client, cport, be, bport, flags);
        let mut sport = None;
        const NEW: &[Counter] = &[Counter::ServiceNewFlow, Counter::TunnelEncapsulated];
        const EST: &[Counter] = &[Counter::ServiceEstablished, Counter::TunnelEncapsulated];
        for (what, flags, counters, at_tc) in [
            (
                "new flow encapsulated to the backend's node",
                F::SYN,
                NEW,
                Same,
            ),
            ("established, encapsulated", F::ACK, EST, Same),
        ] {
            let o = cl.run(fx(
                Node::A,
                format!("{p}: {what}"),
                t(client, cport, vip, vport, flags),
                pass(counters),
                at_tc,
            ));
            // The outer source port comes from the flow hash: in the dynamic range, the
            // same for every packet of the flow.
            let s = outer_sport(&o.frame);
            assert!(s >= 49_152, "{s}");
            assert_eq!(*sport.get_or_insert(s), s, "one outer source port per flow");
            assert_eq!(o.frame, vxlan(node_a, node_b, s, VNI, &inner(flags)));
            let seen = oracle(&p, &o.frame);
            assert_eq!(seen.vxlan.map(|v| v.0), Some(VNI));
        }
        assert!(cl.has_entry(
            Node::A,
            key(CtKind::ReverseNat, proto, be, bport, client, cport)
        ));

        // Node B: the outer frame as the router delivers it.
        let from_a = |flags| {
            with_macs(
                &vxlan(node_a, node_b, 50_000, VNI, &inner(flags)),
                B_MAC,
                ROUTER_MAC,
            )
        };
        cl.run(
            fx(
                Node::B,
                format!("{p}: decapsulated from a peer, backend-side flow recorded"),
                from_a(F::SYN),
                pass(&[Counter::TunnelDecapsulated, Counter::BackendSideNewFlow]),
                Same,
            )
            .out(with_macs(&inner(F::SYN), B_MAC, ROUTER_MAC)),
        );
        let rev = cl.entry(
            Node::B,
            key(CtKind::ReverseNat, proto, be, bport, client, cport),
        );
        assert!(rev.replies_through_tunnel(), "{rev:?}");
        assert_eq!(
            rev.tunnel_peer,
            addr16(node_a),
            "the reply goes back to node A"
        );
        // The service half is keyed by the tuple and the node the flow came from.
        let fwd = cl.entry(Node::B, key_from(node_a, proto, client, cport, be, bport));
        assert_eq!(fwd.tunnel_peer, addr16(node_a));
        assert!(!cl.has_entry(
            Node::B,
            key(CtKind::Service, proto, client, cport, be, bport)
        ));
        cl.run(
            fx(
                Node::B,
                format!("{p}: established, decapsulated"),
                from_a(F::ACK),
                pass(&[Counter::TunnelDecapsulated, Counter::ServiceEstablished]),
                Same,
            )
            .out(with_macs(&inner(F::ACK), B_MAC, ROUTER_MAC)),
        );
        let reply = t(be, bport, client, cport, F::SYN | F::ACK);
        let o = cl.run(fx(
            Node::B,
            format!("{p}: backend's reply goes back through the tunnel"),
            reply.clone(),
            pass(&[Counter::ReplyTranslated, Counter::TunnelEncapsulated]),
            Same,
        ));
        let s = outer_sport(&o.frame);
        assert!(s >= 49_152, "{s}");
        assert_eq!(o.frame, vxlan(node_b, node_a, s, VNI, &reply));
        // Node A: the tunnelled reply, decapsulated and translated back to the client.
        cl.run(
            fx(
                Node::A,
                format!("{p}: tunnelled reply decapsulated and translated to the client"),
                with_macs(
                    &vxlan(node_b, node_a, 50_001, VNI, &reply),
                    A_MAC,
                    ROUTER_MAC,
                ),
                pass(&[Counter::TunnelDecapsulated, Counter::ReplyTranslated]),
                Same,
            )
            .out(with_macs(
                &t(vip, vport, client, cport, F::SYN | F::ACK),
                A_MAC,
                ROUTER_MAC,
            )),
        );
    }
}

/// Hybrid: TCP takes DSR, UDP takes SNAT.
pub(crate) fn hybrid(cl: &mut Cluster) {
    cl.run(
        fx(
            Node::A,
            "hybrid tcp: DSR carrier",
            tcp_v4_frame(CLIENT, 44_000, VIP_HYB, 80, F::SYN, b""),
            pass(&[Counter::ServiceNewFlow, Counter::DsrCarrierAdded]),
            Same,
        )
        .out(with_ipv4_option(
            &tcp_v4_frame(CLIENT, 44_000, BE, 8080, F::SYN, b""),
            &dsr_v4_option(VIP_HYB, 80),
        )),
    );
    let e = cl.entry(
        Node::A,
        key(
            CtKind::Service,
            L4Proto::Tcp,
            ip(CLIENT),
            44_000,
            ip(VIP_HYB),
            80,
        ),
    );
    assert!(e.is_dsr() && !e.is_snat(), "{e:?}");
    cl.run(
        fx(
            Node::A,
            "hybrid udp: SNAT",
            udp_v4_frame(CLIENT, 44_001, VIP_HYB, 53, b"query"),
            pass(&[Counter::ServiceNewFlow, Counter::SnatAttempts1]),
            Same,
        )
        .out(udp_v4_frame(NODE_A, 44_001, BE, 5353, b"query")),
    );
    let e = cl.entry(
        Node::A,
        key(
            CtKind::Service,
            L4Proto::Udp,
            ip(CLIENT),
            44_001,
            ip(VIP_HYB),
            53,
        ),
    );
    assert!(e.is_snat() && !e.is_dsr(), "{e:?}");
    cl.run(
        fx(
            Node::A,
            "hybrid udp: reply back to the client",
            udp_v4_frame(BE, 5353, NODE_A, 44_001, b"answer"),
            pass(&[Counter::ReplyTranslated]),
            Same,
        )
        .out(udp_v4_frame(VIP_HYB, 53, CLIENT, 44_001, b"answer")),
    );
}
