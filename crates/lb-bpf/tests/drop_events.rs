//! Drop events from the kernel programs: malformed and no-backend packets sent with
//! BPF_PROG_TEST_RUN come back from the ring buffer with the right reason, flow, time and
//! interface; a full ring loses events and counts them.

mod common;

use lb_api::counters::{Counter, DropReason};
use lb_api::events::DropEvent;
use lb_api::flow::{v4_addr, L4Proto};
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_bpf::{KernelDatapath, Program};
use lb_control::{default_config, ServiceSpec};

const NOW: u64 = 7_000_000_000_000;
const CLIENT: [u8; 4] = [10, 0, 0, 1];
const EMPTY_VIP: [u8; 4] = [10, 96, 0, 12];

fn setup() -> KernelDatapath {
    let mut dp = KernelDatapath::load().unwrap_or_else(|e| panic!("{e}"));
    dp.set_config(&lb_api::abi::DatapathConfig {
        fixed_now_ns: NOW,
        ..default_config(1)
    })
    .unwrap();
    dp.upsert_service(&ServiceSpec {
        id: 3,
        frontend: "10.96.0.12:80".parse().unwrap(),
        proto: L4Proto::Tcp,
        backends: vec![],
        ..Default::default()
    })
    .unwrap();
    dp.reset_counters().unwrap();
    // A fresh load has an empty ring; drain anyway so that the test reads only its own events.
    dp.drain_drop_events().unwrap();
    dp
}

fn loopback_ifindex() -> u32 {
    // SAFETY: a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c"lo".as_ptr()) }
}

#[test]
fn malformed_and_no_backend_drops_come_back_with_reason_and_flow() {
    if !common::privileged("malformed_and_no_backend_drops_come_back_with_reason_and_flow") {
        return;
    }
    let mut dp = setup();
    for program in [Program::Xdp, Program::Tc] {
        // A reset to a service without backends: not answered (a SYN would be, with a reset).
        let syn = tcp_v4_frame(CLIENT, 40000, EMPTY_VIP, 80, TcpFlags::RST, b"");
        // TCP data offset 4: parsing stops at TCP, after the addresses and before the ports.
        let mut bad_doff = tcp_v4_frame(CLIENT, 40001, EMPTY_VIP, 80, TcpFlags::SYN, b"");
        bad_doff[14 + 20 + 12] = 4 << 4;
        // To no service: passed, no event.
        let other = tcp_v4_frame(CLIENT, 40002, [10, 0, 0, 2], 80, TcpFlags::SYN, b"");
        for (frame, verdict) in [
            (&syn, Verdict::Drop),
            (&bad_doff, Verdict::Drop),
            (&other, Verdict::Pass),
        ] {
            let out = dp.test_run(program, frame, 1).unwrap();
            assert_eq!(out.verdict, verdict, "{}", program.name());
        }

        let events = dp.drain_drop_events().unwrap();
        let proto = L4Proto::Tcp as u8;
        let expect = |reason, src_port, dst_port| DropEvent {
            timestamp_ns: NOW,
            reason,
            ifindex: loopback_ifindex(),
            src: v4_addr(CLIENT),
            dst: v4_addr(EMPTY_VIP),
            src_port,
            dst_port,
            proto,
            family: 4,
            pad: [0; 2],
        };
        assert_eq!(
            events,
            vec![
                expect(DropReason::NoBackend, 40000, 80),
                expect(DropReason::BadTcpHeaderLength, 0, 0),
            ],
            "{}",
            program.name()
        );
        assert!(dp.drain_drop_events().unwrap().is_empty(), "drained");
    }
    assert_eq!(dp.counters().unwrap().get(Counter::DropEventsLost), 0);
}

#[test]
fn a_full_ring_loses_new_events_and_counts_them() {
    if !common::privileged("a_full_ring_loses_new_events_and_counts_them") {
        return;
    }
    let mut dp = setup();
    let mut bad_ihl = tcp_v4_frame(CLIENT, 40000, EMPTY_VIP, 80, TcpFlags::SYN, b"");
    bad_ihl[14] = 0x44;
    // 256 KiB of 64-byte slots (56-byte record + 8-byte header): the kernel keeps the producer
    // strictly less than the ring's size ahead of the consumer, so 4095 events fit.
    const SENT: u32 = 5_000;
    let out = dp.test_run(Program::Xdp, &bad_ihl, SENT).unwrap();
    assert_eq!(out.verdict, Verdict::Drop);

    let events = dp.drain_drop_events().unwrap();
    let lost = dp.counters().unwrap().get(Counter::DropEventsLost);
    assert_eq!(events.len(), 4095);
    assert_eq!(events.len() as u64 + lost, u64::from(SENT));
    assert!(events
        .iter()
        .all(|e| e.reason == DropReason::BadIpHeaderLength && e.timestamp_ns == NOW));
    assert_eq!(
        dp.counters().unwrap().drops(DropReason::BadIpHeaderLength),
        u64::from(SENT),
        "every drop is counted, recorded or not"
    );

    // Drained, the ring takes events again.
    dp.test_run(Program::Xdp, &bad_ihl, 1).unwrap();
    assert_eq!(dp.drain_drop_events().unwrap().len(), 1);
}
