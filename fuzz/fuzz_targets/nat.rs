//! Arbitrary service updates (weights, states, Maglev/random, traffic policy, removals)
//! interleaved with client packets and the backends' replies: no panic, and every translated
//! request's reply is translated back to exactly the original tuple reversed (frontend →
//! client ip:port), including when the source port was rewritten to resolve a collision.
#![no_main]

use lb_api::counters::Counter;
use lb_api::flow::{v4_addr, FlowTuple, L4Proto};
use lb_api::wire::testing::{tcp_v4_frame, udp_v4_frame};
use lb_api::wire::{parse, SlicePacket, TcpFlags};
use lb_api::Verdict;
use lb_conntrack::ManualClock;
use lb_control::{
    default_config, BackendSpec, BackendState, Selection, ServiceSpec, TrafficPolicy,
};
use lb_datapath::engine::Engine;
use libfuzzer_sys::fuzz_target;

/// Frontends (two node addresses, one ClusterIP) share ports so that collisions happen.
const FRONTENDS: [[u8; 4]; 3] = [[192, 168, 1, 10], [192, 168, 1, 11], [10, 96, 0, 10]];

fn tuple_of(frame: &mut [u8]) -> Option<FlowTuple> {
    let pkt = SlicePacket::new(frame);
    parse(&pkt).ok().map(|p| p.tuple)
}

fn frame(udp: bool, s: [u8; 4], sp: u16, d: [u8; 4], dp: u16, flags: u8) -> Vec<u8> {
    if udp {
        udp_v4_frame(s, sp, d, dp, b"x")
    } else {
        tcp_v4_frame(s, sp, d, dp, flags, b"x")
    }
}

fuzz_target!(|data: &[u8]| {
    let mut cfg = default_config(u32::from(data.first().copied().unwrap_or(0)));
    // A small rewrite range, so that unresolved collisions are reached too.
    cfg.src_port_min = 20_000;
    cfg.src_port_max = 20_007;
    let mut engine = Engine::with_clock(128, cfg, ManualClock::new(1));
    let mut chunks = data.chunks_exact(6);
    for c in &mut chunks {
        let (op, a, b, x, y, z) = (c[0], c[1], c[2], c[3], c[4], c[5]);
        match op % 8 {
            // Upsert one of three services, one per frontend address.
            0 | 1 => {
                let fe = usize::from(a) % FRONTENDS.len();
                let n = usize::from(b % 6);
                let backends = (0..n)
                    .map(|i| {
                        let bits = x.rotate_left(i as u32);
                        BackendSpec {
                            addr: ([10, 1, 0, 1 + i as u8], 8080).into(),
                            weight: u16::from(bits & 3),
                            state: if bits & 4 != 0 {
                                BackendState::Terminating
                            } else {
                                BackendState::Active
                            },
                            // Some on another node (its address), the rest on this one.
                            node: (bits & 8 != 0).then(|| [10, 250, 0, 2].into()),
                        }
                    })
                    .collect();
                let spec = ServiceSpec {
                    id: 1 + fe as u32,
                    frontend: (FRONTENDS[fe], 80).into(),
                    proto: if y & 1 == 0 { L4Proto::Tcp } else { L4Proto::Udp },
                    backends,
                    selection: if y & 2 == 0 {
                        Selection::Random
                    } else {
                        Selection::Maglev { table_size: 251 }
                    },
                    external_traffic_policy: if y & 4 == 0 {
                        TrafficPolicy::Cluster
                    } else {
                        TrafficPolicy::Local
                    },
                    ..Default::default()
                };
                // Invalid specs (all weights zero) are refused with an error, never a panic.
                let _ = engine.upsert_service(&spec);
                let _ = z;
            }
            2 => {
                let fe = usize::from(a) % FRONTENDS.len();
                for proto in [L4Proto::Tcp, L4Proto::Udp] {
                    engine.remove_service(&ServiceSpec {
                        id: 1 + fe as u32,
                        frontend: (FRONTENDS[fe], 80).into(),
                        proto,
                        ..Default::default()
                    });
                }
            }
            // A client packet, and the backend's reply if it was translated.
            _ => {
                let udp = op & 8 != 0;
                let client = [172, 16, 0, a % 4];
                let sport = 40_000 + u16::from(b % 4);
                let fe = FRONTENDS[usize::from(x) % FRONTENDS.len()];
                let flags = if udp { 0 } else { y | TcpFlags::SYN };
                let orig = frame(udp, client, sport, fe, 80, flags);
                let mut req = orig.clone();
                let before = *engine.counters();
                let v = engine.process(&mut req);
                let after = *engine.counters();
                let translated = after.get(Counter::ServiceNewFlow)
                    + after.get(Counter::ServiceEstablished)
                    > before.get(Counter::ServiceNewFlow) + before.get(Counter::ServiceEstablished);
                if v != Verdict::Pass || !translated {
                    continue;
                }
                let out = tuple_of(&mut req).expect("a translated packet still parses");
                assert_eq!(out.src, v4_addr(client), "client address preserved");
                // The backend answers the translated packet.
                let mut reply = frame(
                    udp,
                    lb_api::flow::v4_of(&out.dst),
                    out.dst_port,
                    client,
                    out.src_port,
                    TcpFlags::SYN | TcpFlags::ACK,
                );
                assert_eq!(engine.process(&mut reply), Verdict::Pass);
                let back = tuple_of(&mut reply).expect("a translated reply still parses");
                let want = tuple_of(&mut orig.clone()).unwrap().reversed();
                assert_eq!(back, want, "reverse translation restores the original tuple");
            }
        }
        engine.clock().advance(u64::from(z) * 1_000_000_000);
    }
});
