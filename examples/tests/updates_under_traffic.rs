//! Service updates under real traffic, through the kernel datapath between namespaces (the
//! testbed of `lb_testbed::testbed`: a client, a node, two backends running real servers).
//!
//! * A service flips between two backend sets (backend-1 taking new flows and backend-2
//!   draining, then the reverse) thousands of times while client threads open short TCP
//!   connections and long-lived connections keep talking: no connection fails, every new
//!   connection whose first packet met one set lands on that set's backend, and no established
//!   connection moves.
//! * A backend removed from a UDP service: the client's next datagram, on the same socket, is
//!   answered by a live backend; a TCP connection to a removed backend is reset on its next
//!   segment; both are counted in `ct_backend_removed`.
//!
//! Figures: `cargo test -p lb-examples --test updates_under_traffic -- --nocapture`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_api::abi::CtKind;
use lb_api::counters::Counter;
use lb_api::flow::v4_of;
use lb_bpf::KernelDatapath;
use lb_control::{BackendState, Dataplane, ServiceSpec};
use lb_examples::scenario::{self, service, udp_service};
use lb_testbed::testbed::{Conversation, Testbed, BACKENDS, VIP, VIP_PORT};
use lb_testbed::traffic::udp_exchange;

/// Short connections per client thread: at least this many, and on until the flips are done.
const SHORT_PER_THREAD: usize = 300;
/// At most this many per client thread.
const MAX_SHORT_PER_THREAD: usize = 20_000;
/// Flips at least (the clients keep connecting until then).
const MIN_FLIPS: u64 = 5_000;
/// Client threads opening short connections.
const CLIENT_THREADS: usize = 3;
/// Long-lived connections, opened before the flips, asked again all along.
const LONG_LIVED: usize = 6;
/// Bounds of the flipping loop.
const MAX_FLIPS: u64 = 500_000;
const MAX_RUN: Duration = Duration::from_secs(90);

fn vip() -> SocketAddr {
    SocketAddr::from((VIP, VIP_PORT))
}

/// The TCP service with backend `active` (0 or 1) taking new flows and the other draining.
fn set(active: usize) -> ServiceSpec {
    let mut s = service();
    for (i, b) in s.backends.iter_mut().enumerate() {
        if i != active {
            b.state = BackendState::Terminating;
        }
    }
    s
}

/// The backend an answer names (`backend-N saw ...`): 0 or 1.
fn backend_of(answer: &str) -> Option<usize> {
    let n: usize = answer
        .strip_prefix("backend-")?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    n.checked_sub(1)
}

/// One short connection: connect, one request, read the answer to the end. The flip
/// generation before the SYN and after the handshake.
fn short(i: usize, gen: &AtomicU64) -> anyhow::Result<(u64, u64, String)> {
    let g0 = gen.load(SeqCst);
    let mut s = TcpStream::connect_timeout(&vip(), Duration::from_secs(3))?;
    let g1 = gen.load(SeqCst);
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(format!("request {i}\n").as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    anyhow::ensure!(!answer.is_empty(), "empty answer");
    Ok((g0, g1, answer))
}

#[test]
fn a_service_flipping_between_backend_sets_fails_no_connection_and_moves_none() {
    if !lb_testbed::gate::privileged_test(
        "a_service_flipping_between_backend_sets_fails_no_connection_and_moves_none",
    ) {
        return;
    }
    let bed = Testbed::create("flip").unwrap();
    let mut dp = KernelDatapath::load().unwrap();
    scenario::program(&mut dp, 11).unwrap();
    scenario::attach(&mut dp, &bed).unwrap();
    let servers = bed
        .start_backends(MAX_RUN + Duration::from_secs(30))
        .unwrap();

    // Long-lived connections over both backends (both take new flows until the first flip).
    let mut long: Vec<(Conversation, usize)> = (0..LONG_LIVED)
        .map(|i| {
            let mut c = bed.connect(vip(), Duration::from_secs(3)).unwrap();
            let b = backend_of(&c.ask(&format!("hello {i}")).unwrap()).unwrap();
            (c, b)
        })
        .collect();
    // Generation 0: set 0 in force. A flip makes the generation odd while it writes, even
    // again once the service entry reads the new set: an even generation g means set (g/2)%2.
    Dataplane::upsert_service(&mut dp, &set(0)).unwrap();
    let gen = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let flipped = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENT_THREADS)
        .map(|t| {
            let (gen, ns, flipped) = (Arc::clone(&gen), bed.client.clone(), Arc::clone(&flipped));
            std::thread::spawn(move || {
                Testbed::within(&ns, || {
                    (0..MAX_SHORT_PER_THREAD)
                        .take_while(|i| *i < SHORT_PER_THREAD || !flipped.load(SeqCst))
                        .map(|i| short(t * MAX_SHORT_PER_THREAD + i, &gen))
                        .collect::<Vec<_>>()
                })
                .unwrap()
            })
        })
        .collect();
    let talker = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut asks = 0usize;
            let mut moved = Vec::new();
            // Bounded by the flipping loop's bounds (it sets `stop`) and by count.
            while !stop.load(SeqCst) && asks < 100_000 {
                for (i, (c, b)) in long.iter_mut().enumerate() {
                    match c.ask(&format!("still {i}")) {
                        Ok(a) if backend_of(&a) == Some(*b) => {}
                        other => moved.push(format!("connection {i} (backend {b}): {other:?}")),
                    }
                    asks += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (asks, moved)
        })
    };

    let start = Instant::now();
    let mut flips = 0u64;
    let mut flip_time = Duration::ZERO;
    while (flips < MIN_FLIPS || clients.iter().any(|c| !c.is_finished()))
        && flips < MAX_FLIPS
        && start.elapsed() < MAX_RUN
    {
        if flips == MIN_FLIPS {
            flipped.store(true, SeqCst);
        }
        flips += 1;
        gen.fetch_add(1, SeqCst);
        let t = Instant::now();
        Dataplane::upsert_service(&mut dp, &set((flips % 2) as usize)).unwrap();
        flip_time += t.elapsed();
        gen.fetch_add(1, SeqCst);
        // A pause, so that many connections see one set from SYN to handshake.
        std::thread::sleep(Duration::from_micros(50));
    }
    let elapsed = start.elapsed();
    flipped.store(true, SeqCst);
    stop.store(true, SeqCst);
    let results: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let (asks, moved) = talker.join().unwrap();

    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| format!("{e:#}"))
        .collect();
    let mut checked = 0;
    let mut outside = Vec::new();
    for (g0, g1, answer) in results.iter().flatten() {
        // One set in force from before the SYN to after the handshake: it is the one.
        if g0 == g1 && g0.is_multiple_of(2) {
            checked += 1;
            let want = ((g0 / 2) % 2) as usize;
            if backend_of(answer) != Some(want) {
                outside.push(format!("generation {g0} (set {want}): {answer}"));
            }
        }
    }
    let counters = dp.counters().unwrap();
    let conntrack = dp.conntrack_entries().unwrap();
    let served = servers.stop();
    println!(
        "{flips} flips in {elapsed:.2?} ({:.0} flips/s with a 50 µs pause; {:.1} µs per update), \
         {} short connections ({checked} checked against the set in force at their SYN), \
         {} failed, {} outside the set; {LONG_LIVED} long-lived connections asked {asks} times, \
         {} moved; connections served per backend {served:?}",
        flips as f64 / elapsed.as_secs_f64(),
        flip_time.as_secs_f64() * 1e6 / flips as f64,
        results.len(),
        failed.len(),
        outside.len(),
        moved.len(),
    );
    assert!(
        flips >= 1000,
        "only {flips} flips: the clients were too quick"
    );
    assert!(failed.is_empty(), "failed connections: {failed:?}");
    assert!(
        outside.is_empty(),
        "new flows outside their set: {outside:?}"
    );
    assert!(
        checked > results.len() / 4,
        "too few connections checked: {checked}"
    );
    assert!(moved.is_empty(), "established connections moved: {moved:?}");
    // No backend left the service: no flow was deleted; every flow points at a backend.
    assert_eq!(counters.get(Counter::CtBackendRemoved), 0);
    assert!(conntrack
        .iter()
        .filter(|(k, _)| k.kind == CtKind::Service as u8)
        .all(|(_, e)| BACKENDS.iter().any(|b| v4_of(&e.nat_addr) == b.octets())));
}

#[test]
fn a_removed_backends_udp_client_moves_on_and_its_tcp_connection_is_reset() {
    if !lb_testbed::gate::privileged_test(
        "a_removed_backends_udp_client_moves_on_and_its_tcp_connection_is_reset",
    ) {
        return;
    }
    let bed = Testbed::create("rmbe").unwrap();
    let mut dp = KernelDatapath::load().unwrap();
    scenario::program(&mut dp, 12).unwrap();
    scenario::attach(&mut dp, &bed).unwrap();
    let servers = bed.start_backends(Duration::from_secs(60)).unwrap();

    // One UDP socket keeps sending: one flow, to one backend.
    let sock = Testbed::within(&bed.client, || std::net::UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .unwrap();
    let ask = |i| udp_exchange(&sock, vip(), i, Duration::from_secs(2)).unwrap();
    let first = backend_of(&ask(0)).unwrap();
    for i in 1..5 {
        assert_eq!(backend_of(&ask(i)), Some(first), "one flow, one backend");
    }
    // A long-lived TCP connection on that backend.
    let mut tcp = loop {
        let mut c = bed.connect(vip(), Duration::from_secs(3)).unwrap();
        if backend_of(&c.ask("hello").unwrap()) == Some(first) {
            break c;
        }
    };

    // The backend leaves both services.
    let mut udp = udp_service();
    udp.backends.remove(first);
    let mut tcp_svc = service();
    tcp_svc.backends.remove(first);
    Dataplane::upsert_service(&mut dp, &udp).unwrap();
    Dataplane::upsert_service(&mut dp, &tcp_svc).unwrap();
    let removed = dp.counters().unwrap().get(Counter::CtBackendRemoved);
    assert!(
        removed >= 2,
        "the UDP flow and the TCP connection: {removed}"
    );
    let gone = BACKENDS[first].octets();
    assert!(dp
        .conntrack_entries()
        .unwrap()
        .iter()
        .all(|(_, e)| v4_of(&e.nat_addr) != gone || e.is_backend_side()));

    // The next datagram, same socket, lands on the live backend.
    let live = 1 - first;
    for i in 5..10 {
        assert_eq!(backend_of(&ask(i)), Some(live), "datagram {i}");
    }
    // The TCP connection's next segment reaches the live backend, which has no such
    // connection: the client sees a reset (or the connection closed), not a hang.
    let r = tcp.ask("after removal");
    assert!(
        r.is_err(),
        "the connection to a removed backend ended: {r:?}"
    );
    println!(
        "removed backend-{}: {removed} flows deleted; UDP moved to backend-{}; TCP: {:#}",
        first + 1,
        live + 1,
        r.unwrap_err()
    );
    // New connections go to the live backend.
    let answers = bed.requests(vip(), 10, Duration::from_secs(3)).unwrap();
    for a in &answers {
        assert_eq!(backend_of(a.as_ref().unwrap()), Some(live));
    }
    drop(servers);
}
