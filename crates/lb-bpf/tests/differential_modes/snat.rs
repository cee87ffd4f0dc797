//! SNAT on node A: new flows, replies, the port allocator, ICMP errors about SNAT flows, and
//! the take-over of a TIME_WAIT port.

use super::*;

/// SNAT on node A for one family and protocol: a new flow leaves from node A's address (the
/// client's port kept, it is free), the next packet is established, the backend's reply goes
/// back to the client from the service; a second client with the same source port would take
/// the same (node, port): it gets a port of the SNAT range, and its reply goes back to it.
pub(crate) fn snat_scene(
    cl: &mut Cluster,
    proto: L4Proto,
    (client, client2, vip, node, be): (IpAddr, IpAddr, IpAddr, IpAddr, IpAddr),
    cport: u16,
) {
    let (vport, bport) = if proto == L4Proto::Tcp {
        (80, 8080)
    } else {
        (53, 5353)
    };
    let name = |s: &str| {
        format!(
            "snat {proto:?} {}: {s}",
            if vip.is_ipv4() { "v4" } else { "v6" }
        )
    };
    let f = |src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8| {
        frame(proto, src, sport, dst, dport, flags, b"query")
    };
    let r = |src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8| {
        frame(proto, src, sport, dst, dport, flags, b"answer")
    };

    cl.run(
        fx(
            Node::A,
            name("new flow leaves from the node address"),
            f(client, cport, vip, vport, F::SYN),
            pass(&[Counter::ServiceNewFlow, Counter::SnatAttempts1]),
            Same,
        )
        .out(f(node, cport, be, bport, F::SYN)),
    );
    let fwd = cl.entry(
        Node::A,
        key(CtKind::Service, proto, client, cport, vip, vport),
    );
    assert!(fwd.is_snat(), "{fwd:?}");
    let rev = cl.entry(
        Node::A,
        key(CtKind::ReverseNat, proto, be, bport, node, cport),
    );
    assert!(rev.is_snat(), "{rev:?}");
    cl.run(
        fx(
            Node::A,
            name("established"),
            f(client, cport, vip, vport, F::ACK),
            pass(&[Counter::ServiceEstablished]),
            Same,
        )
        .out(f(node, cport, be, bport, F::ACK)),
    );
    cl.run(
        fx(
            Node::A,
            name("reply goes back to the client from the service"),
            r(be, bport, node, cport, F::SYN | F::ACK),
            pass(&[Counter::ReplyTranslated]),
            Same,
        )
        .out(r(vip, vport, client, cport, F::SYN | F::ACK)),
    );
    // The second client's (node, port) is taken: the allocator reserves another port of the
    // SNAT range together with the reverse entry.
    let second = cl.run(fx(
        Node::A,
        name("second client, same port: a port of the SNAT range"),
        f(client2, cport, vip, vport, F::SYN),
        // The client's port (taken), then one random port of the range: 2 attempts.
        pass(&[Counter::ServiceNewFlow, Counter::SnatAttempts2]),
        Same,
    ));
    let e = cl.entry(
        Node::A,
        key(CtKind::Service, proto, client2, cport, vip, vport),
    );
    let port = e.rewritten_src_port;
    assert!(e.is_snat() && e.src_port_rewritten(), "{e:?}");
    assert!(SNAT_PORTS.contains(&port) && port != cport, "{port}");
    assert_eq!(second.frame, f(node, port, be, bport, F::SYN));
    let rev2 = cl.entry(
        Node::A,
        key(CtKind::ReverseNat, proto, be, bport, node, port),
    );
    assert_eq!(
        rev2.rewritten_src_port, cport,
        "the reply gets the port back"
    );
    cl.run(
        fx(
            Node::A,
            name("reply to the second client's port"),
            r(be, bport, node, port, F::SYN | F::ACK),
            pass(&[Counter::ReplyTranslated]),
            Same,
        )
        .out(r(vip, vport, client2, cport, F::SYN | F::ACK)),
    );
    cl.run(
        fx(
            Node::A,
            name("the first client keeps its port"),
            f(client, cport, vip, vport, F::ACK | F::PSH),
            pass(&[Counter::ServiceEstablished]),
            Same,
        )
        .out(f(node, cport, be, bport, F::ACK | F::PSH)),
    );
    cl.run(
        fx(
            Node::A,
            name("the second client's next packet"),
            f(client2, cport, vip, vport, F::ACK),
            pass(&[Counter::ServiceEstablished]),
            Same,
        )
        .out(f(node, port, be, bport, F::ACK)),
    );
}

/// ICMP errors about the SNAT flows of [`snat_scene`] (same arguments, run after it), on node
/// A. Towards the client, about a packet node A sent to the backend from its address and SNAT
/// port (the first client's port kept, the second client's a port of the SNAT range): the
/// quote and the outer destination become the client's again, and the outer source the service
/// when the backend itself answered. Towards the backend, about a reply the client got from
/// the service: the quote becomes backend → node A's address and SNAT port, the outer
/// destination the backend, and the outer source node A when the client itself answered. A
/// router in between keeps its own address. Quotes are whole or cut to 8 transport bytes.
///
/// Besides the two worlds agreeing and the output frame being the one built from scratch,
/// etherparse reads each translated error: valid outer and quoted checksums, and the client's
/// address and port in the quote, never node A's.
pub(crate) fn snat_icmp_scene(
    cl: &mut Cluster,
    proto: L4Proto,
    (client, client2, vip, node, be): (IpAddr, IpAddr, IpAddr, IpAddr, IpAddr),
    cport: u16,
) {
    use IcmpError::{PortUnreachable, TimeExceeded, TooBig};
    let (vport, bport) = if proto == L4Proto::Tcp {
        (80, 8080)
    } else {
        (53, 5353)
    };
    let name = |s: &str| {
        format!(
            "snat {proto:?} {}: {s}",
            if vip.is_ipv4() { "v4" } else { "v6" }
        )
    };
    let router = if vip.is_ipv4() {
        ip(ROUTER)
    } else {
        ip6(router6())
    };
    // The second client's port of the SNAT range (the first client kept its own).
    let port = cl
        .entry(
            Node::A,
            key(CtKind::Service, proto, client2, cport, vip, vport),
        )
        .rewritten_src_port;
    assert!(SNAT_PORTS.contains(&port) && port != cport, "{port}");
    // What the backend (TCP: too big, UDP: port unreachable) and a router (TCP: too big, UDP:
    // time exceeded) answer a packet from node A with.
    let (from_peer, from_router) = if proto == L4Proto::Tcp {
        (TooBig, TooBig)
    } else {
        (PortUnreachable, TimeExceeded)
    };
    // An error as it arrives and as it must leave: source, destination and the quoted
    // datagram's addresses and ports.
    struct Side {
        from: IpAddr,
        to: IpAddr,
        quoted: ((IpAddr, u16), (IpAddr, u16)),
    }
    let side = |from, to, src, dst| Side {
        from,
        to,
        quoted: (src, dst),
    };
    let cases = [
        (
            "error from the backend about the first client's flow (to the client)",
            from_peer,
            false,
            side(be, node, (node, cport), (be, bport)),
            side(vip, client, (client, cport), (vip, vport)),
        ),
        (
            "error from a router about the second client's flow, SNAT port (to the client)",
            from_router,
            true,
            side(router, node, (node, port), (be, bport)),
            side(router, client2, (client2, cport), (vip, vport)),
        ),
        (
            "port unreachable from the first client about a reply (to the backend)",
            PortUnreachable,
            false,
            side(client, vip, (vip, vport), (client, cport)),
            side(node, be, (be, bport), (node, cport)),
        ),
        (
            "time exceeded from a router about a reply to the second client (to the backend)",
            TimeExceeded,
            true,
            side(router, vip, (vip, vport), (client2, cport)),
            side(router, be, (be, bport), (node, port)),
        ),
    ];
    let error = |kind, s: &Side, cut| {
        let ((src, sport), (dst, dport)) = s.quoted;
        let quoted = frame(proto, src, sport, dst, dport, F::ACK, b"data");
        icmp_error(kind, s.from, s.to, &quoted, cut)
    };
    for (what, kind, cut, arrives, leaves) in cases {
        let what = name(what);
        let ct = cl.a.engine_conntrack();
        let o = cl.run(
            fx(
                Node::A,
                &what,
                error(kind, &arrives, cut),
                pass(&[Counter::IcmpErrorTranslated]),
                Same,
            )
            .out(error(kind, &leaves, cut)),
        );
        // Read back independently: valid checksums, and the quote names the flow as its
        // receiver knows it (the client's address and port towards the client, node A's
        // towards the backend).
        let seen = quote_oracle(&what, &o.frame);
        assert_eq!(
            seen,
            Quoted {
                outer: (leaves.from, leaves.to),
                src: leaves.quoted.0,
                dst: leaves.quoted.1,
            },
            "{what}: the translated error as etherparse reads it"
        );
        // An error does not keep a flow alive (and the kernel's table is the engine's).
        assert_eq!(cl.a.engine_conntrack(), ct, "{what}: conntrack changed");
        if leaves.to == be {
            assert_eq!(seen.dst.0, node, "{what}: quoted destination");
        } else {
            assert!(
                seen.src.0 != node && seen.src.0 == seen.outer.1,
                "{what}: the quote must come from the client the error goes to"
            );
        }
    }
}

pub(crate) fn snat(cl: &mut Cluster) {
    let v4 = (ip(CLIENT), ip(CLIENT2), ip(VIP_SNAT), ip(NODE_A), ip(BE));
    let v6 = (
        ip6(client6()),
        ip6(client6_2()),
        ip6(vip6_snat()),
        ip6(node_a6()),
        ip6(be6()),
    );
    for (proto, addrs, cport) in [
        (L4Proto::Tcp, v4, 40_000),
        (L4Proto::Udp, v4, 40_001),
        (L4Proto::Tcp, v6, 40_002),
        (L4Proto::Udp, v6, 40_003),
    ] {
        snat_scene(cl, proto, addrs, cport);
        snat_icmp_scene(cl, proto, addrs, cport);
    }
    // An error about a port of node A's SNAT range that no flow holds is not about a packet
    // node A translated: it passes untouched, counted as such.
    let unowned = *SNAT_PORTS.end();
    for (fam, node, be, router) in [
        ("v4", ip(NODE_A), ip(BE), ip(ROUTER)),
        ("v6", ip6(node_a6()), ip6(be6()), ip6(router6())),
    ] {
        for (proto, bport, from, kind, cut) in [
            (L4Proto::Udp, 5353, be, IcmpError::PortUnreachable, false),
            (L4Proto::Tcp, 8080, router, IcmpError::TooBig, true),
        ] {
            for kind_of in [CtKind::ReverseNat, CtKind::Service] {
                assert!(
                    !cl.has_entry(Node::A, key(kind_of, proto, be, bport, node, unowned)),
                    "port {unowned} is held"
                );
            }
            let quoted = frame(proto, node, unowned, be, bport, F::ACK, b"data");
            let e = icmp_error(kind, from, node, &quoted, cut);
            cl.run(
                fx(
                    Node::A,
                    format!("snat {proto:?} {fam}: {kind:?} about a SNAT port no flow holds"),
                    e.clone(),
                    pass(&[Counter::PassIcmpErrorNoFlow]),
                    Same,
                )
                .out(e),
            );
        }
    }

    // On the backend's node a SNAT flow is an ordinary packet between two addresses.
    cl.run(
        fx(
            Node::B,
            "snat flow arriving at the backend's node passes untouched",
            tcp_v4_frame(NODE_A, 40_000, BE, 8080, F::SYN, b""),
            pass(&[Counter::PassNotService]),
            Same,
        )
        .out(tcp_v4_frame(NODE_A, 40_000, BE, 8080, F::SYN, b"")),
    );

    // Node C's SNAT range is one port: once a flow holds it (and the client's own port), a
    // colliding flow finds no free port after the bounded tries and is dropped, leaving no
    // half of a pair behind.
    let syn = |c: [u8; 4]| tcp_v4_frame(c, C_SNAT_PORT, VIP_SNAT, 80, F::SYN, b"");
    cl.run(
        fx(
            Node::C,
            "snat: the client's port is node C's only SNAT port",
            syn(CLIENT),
            pass(&[Counter::ServiceNewFlow, Counter::SnatAttempts1]),
            Same,
        )
        .out(tcp_v4_frame(NODE_C, C_SNAT_PORT, BE, 8080, F::SYN, b"")),
    );
    cl.run(fx(
        Node::C,
        "snat: SNAT range exhausted (drop, nothing left behind)",
        syn(CLIENT2),
        dropped(DropReason::SnatPortsExhausted, &[]),
        Same,
    ));
    assert_eq!(
        cl.c.engine.conntrack().len(),
        2,
        "only the first flow's pair"
    );
    snat_take_over_scene(cl);
}

/// Node C's only SNAT port, held by a flow that closes: through TIME_WAIT the port stays its
/// own for anything but a SYN past its FIN (what the backend's TIME_WAIT socket accepts as a
/// new connection); such a SYN takes it over once the allocator's schedule found no free port.
pub(crate) fn snat_take_over_scene(cl: &mut Cluster) {
    let (client, vip, node, be) = (ip(CLIENT), ip(VIP_SNAT), ip(NODE_C), ip(BE));
    let from_client = |f| tcp_v4_frame(CLIENT, C_SNAT_PORT, VIP_SNAT, 80, f, b"");
    // Replies of both flows: the same tuple, to node C's port.
    let from_be = |f| tcp_v4_frame(BE, 8080, NODE_C, C_SNAT_PORT, f, b"");
    let steps: [(&str, Vec<u8>, Counter); 5] = [
        (
            "syn-ack",
            from_be(F::SYN | F::ACK),
            Counter::ReplyTranslated,
        ),
        ("ack", from_client(F::ACK), Counter::ServiceEstablished),
        (
            "client fin",
            from_client(F::FIN | F::ACK),
            Counter::ServiceEstablished,
        ),
        (
            "backend fin",
            from_be(F::FIN | F::ACK),
            Counter::ReplyTranslated,
        ),
        ("last ack", from_client(F::ACK), Counter::ServiceEstablished),
    ];
    for (name, frame, c) in steps {
        let expect = match c {
            Counter::ReplyTranslated => pass(&[Counter::ReplyTranslated]),
            _ => pass(&[Counter::ServiceEstablished]),
        };
        cl.run(fx(
            Node::C,
            format!("snat take-over: {name}"),
            frame,
            expect,
            Same,
        ));
    }
    let old = key(CtKind::Service, L4Proto::Tcp, client, C_SNAT_PORT, vip, 80);
    let e = cl.entry(Node::C, old);
    assert_eq!(
        e.state,
        CtState::TimeWait as u8,
        "the old flow is in TIME_WAIT"
    );
    assert_eq!(e.fin_seq_end, 1001, "just past the client's FIN (seq 1000)");

    let syn2 = |seq| tcp_v4_frame_seq(CLIENT2, C_SNAT_PORT, VIP_SNAT, 80, F::SYN, seq);
    // Not past the old flow's FIN: the backend would take it for an old segment.
    cl.run(fx(
        Node::C,
        "snat take-over: a SYN not past the old flow's FIN gets no port",
        syn2(1000),
        dropped(DropReason::SnatPortsExhausted, &[]),
        Same,
    ));
    // Not a SYN: only a new connection may take a port over.
    cl.run(fx(
        Node::C,
        "snat take-over: an ACK gets no port",
        tcp_v4_frame(CLIENT2, C_SNAT_PORT, VIP_SNAT, 80, F::ACK, b""),
        dropped(DropReason::SnatPortsExhausted, &[]),
        Same,
    ));
    // Past it: the port is taken over after the whole schedule (its own port, then 240).
    cl.run(
        fx(
            Node::C,
            "snat take-over: a SYN past the old flow's FIN takes the port over",
            syn2(5000),
            pass(&[
                Counter::ServiceNewFlow,
                Counter::SnatAttempts128,
                Counter::SnatTakeOvers,
            ]),
            Same,
        )
        .out(tcp_v4_frame_seq(
            NODE_C,
            C_SNAT_PORT,
            BE,
            8080,
            F::SYN,
            5000,
        )),
    );
    assert!(
        !cl.has_entry(Node::C, old),
        "the old flow's service entry is gone"
    );
    let rev = key(
        CtKind::ReverseNat,
        L4Proto::Tcp,
        be,
        8080,
        node,
        C_SNAT_PORT,
    );
    assert_eq!(
        cl.entry(Node::C, rev).snat_addr,
        addr16(ip(CLIENT2)),
        "the port is the new flow's"
    );
    assert_eq!(cl.c.engine.conntrack().len(), 2, "one pair: the new flow's");
    // Its replies reach the new client.
    cl.run(
        fx(
            Node::C,
            "snat take-over: the reply reaches the new client",
            from_be(F::SYN | F::ACK),
            pass(&[Counter::ReplyTranslated]),
            Same,
        )
        .out(tcp_v4_frame(
            VIP_SNAT,
            80,
            CLIENT2,
            C_SNAT_PORT,
            F::SYN | F::ACK,
            b"",
        )),
    );
}
