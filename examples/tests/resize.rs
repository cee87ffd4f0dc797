//! Resizing the tables without an outage: an agent restarts with larger (then smaller) conntrack
//! and services tables (then smaller ones) while long-lived connections talk and a stream of short connections runs
//! through the datapath. The loader migrates the pinned tables' entries into maps of the new
//! sizes and swaps its programs into the pinned links; no connection fails, no TCP reset is sent
//! (the namespaces' own `OutRsts` counters), every flow's conntrack entries carry over.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_api::abi::CtKind;
use lb_api::tables;
use lb_bpf::{KernelDatapath, LoadOptions};
use lb_control::{default_config, TableSizes};
use lb_examples::scenario;
use lb_testbed::gate::privileged_test;
use lb_testbed::netns::in_ns_output;
use lb_testbed::testbed::{Conversation, Testbed, VIP, VIP_PORT};

struct Uninstall(PathBuf);
impl Drop for Uninstall {
    fn drop(&mut self) {
        let _ = KernelDatapath::uninstall(&self.0);
    }
}

/// TCP resets sent from namespace `ns` so far (`Tcp: OutRsts` of its /proc/net/snmp).
fn out_rsts(ns: &str) -> u64 {
    let snmp = in_ns_output(ns, &["cat", "/proc/net/snmp"]).unwrap();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "OutRsts")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

fn sizes(conntrack: u32, services: u32) -> TableSizes {
    TableSizes {
        conntrack,
        services,
        ..TableSizes::small()
    }
}

/// The short connections: one request per connection, one after the other, until `stop`.
/// Returns (answered, failures with their errors).
fn short_connections(
    client: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    std::thread::spawn(move || {
        let vip = SocketAddr::from((VIP, VIP_PORT));
        let deadline = Instant::now() + Duration::from_secs(120);
        lb_testbed::netns::within(&client, || {
            let (mut ok, mut failed) = (0, Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && i < 200_000 {
                match lb_testbed::traffic::request(vip, 0, i, Duration::from_secs(5)) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(format!("{e:#}")),
                }
                i += 1;
                // A few hundred connections a second: enough to be mid-handshake at the swap,
                // few enough that closed flows (kept until GC) fit the tables.
                std::thread::sleep(Duration::from_millis(2));
            }
            (ok, failed)
        })
        .unwrap()
    })
}

/// The long-lived connections: each asks in turn until `stop`; every answer must come from the
/// backend it first reached. Returns (answers, failures).
fn long_lived_talk(
    mut convs: Vec<(Conversation, String)>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut ok, mut failed) = (0, Vec::new());
        let mut round = 0;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && round < 100_000 {
            for (c, backend) in &mut convs {
                match c.ask(&format!("round {round}")) {
                    Ok(a) if a.starts_with(backend.as_str()) => ok += 1,
                    Ok(a) => failed.push(format!("moved: {a} (was {backend})")),
                    Err(e) => failed.push(format!("{e:#}")),
                }
            }
            round += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        (ok, failed)
    })
}

#[test]
fn tables_resize_under_live_connections_without_resets() {
    if !privileged_test("tables_resize_under_live_connections_without_resets") {
        return;
    }
    let dir = PathBuf::from(format!(
        "/sys/fs/bpf/lb-test-resize-live-{}",
        std::process::id()
    ));
    let _cleanup = Uninstall(dir.clone());
    let bed = Testbed::create("rsz").unwrap();
    let opts = |s: TableSizes| LoadOptions {
        pin_dir: Some(dir.clone()),
        ..LoadOptions::with_sizes(s)
    };

    let mut dp = KernelDatapath::load_with(&opts(sizes(128 * 1024, 1024))).unwrap();
    dp.set_config(&default_config(11)).unwrap();
    scenario::program(&mut dp, 11).unwrap();
    scenario::attach(&mut dp, &bed).unwrap();
    let servers = bed.start_backends(Duration::from_secs(150)).unwrap();
    let vip = SocketAddr::from((VIP, VIP_PORT));

    let mut convs = Vec::new();
    let mut ports = Vec::new();
    for i in 0..8 {
        let mut c = bed.connect(vip, Duration::from_secs(5)).unwrap();
        let first = c.ask(&format!("hello {i}")).unwrap();
        let backend = first.split(" saw ").next().unwrap().to_string();
        ports.push(c.local_addr().unwrap().port());
        convs.push((c, backend));
    }
    // The long-lived flows' service entries: key -> created_ns.
    let flows = |dp: &KernelDatapath| {
        let mut v: Vec<_> = dp
            .conntrack_entries()
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.kind == CtKind::Service as u8 && ports.contains(&k.src_port))
            .map(|(k, e)| (k.src_port, e.created_ns, e.nat_addr, e.nat_port))
            .collect();
        v.sort_unstable();
        v
    };
    let flows_before = flows(&dp);
    assert_eq!(flows_before.len(), 8);
    let rsts = |bed: &Testbed| -> u64 {
        out_rsts(&bed.client) + bed.backends.iter().map(|b| out_rsts(b)).sum::<u64>()
    };
    let rsts_before = rsts(&bed);

    let stop = Arc::new(AtomicBool::new(false));
    let short = short_connections(bed.client.clone(), Arc::clone(&stop));
    let long = long_lived_talk(convs, Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(500));

    // Restart with 2x conntrack and 8x services, then shrink both.
    let mut reports = Vec::new();
    for (ct, svcs) in [(256 * 1024, 8 * 1024), (192 * 1024, 512)] {
        drop(dp);
        dp = KernelDatapath::load_with(&opts(sizes(ct, svcs))).unwrap();
        let report = dp.migration().expect("resized").clone();
        scenario::attach(&mut dp, &bed).unwrap();
        assert_eq!(dp.max_entries(tables::CONNTRACK).unwrap(), ct);
        assert_eq!(dp.max_entries(tables::SERVICES).unwrap(), svcs);
        reports.push(report);
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    let (short_ok, short_failed) = short.join().unwrap();
    let (long_ok, long_failed) = long.join().unwrap();
    let rsts_after = rsts(&bed);
    let flows_after = flows(&dp);
    let _ = servers.stop();

    for r in &reports {
        eprintln!("{r:?}");
    }
    eprintln!(
        "short connections answered: {short_ok}, long-lived answers: {long_ok}, resets: {}",
        rsts_after - rsts_before
    );
    assert!(
        short_failed.is_empty(),
        "failed short connections: {short_failed:?}"
    );
    assert!(
        long_failed.is_empty(),
        "long-lived connections: {long_failed:?}"
    );
    assert_eq!(rsts_after, rsts_before, "TCP resets were sent");
    assert!(short_ok > 0 && long_ok > 0);
    assert_eq!(
        flows_after, flows_before,
        "the long-lived flows' entries carried over"
    );
    for r in &reports {
        assert_eq!(r.links_swapped, 3, "XDP on n0, TC on n1 and n2: {r:?}");
        let names: Vec<_> = r.tables.iter().map(|t| t.table).collect();
        assert_eq!(names, ["LB_CT", "LB_SERVICES"]);
        let svc = &r.tables[1];
        assert_eq!(
            (svc.copied, svc.entries_after),
            (3, 3),
            "the scenario's 3 services"
        );
        let ct = &r.tables[0];
        assert!(ct.copied >= 16 && ct.entries_after >= 16, "{ct:?}");
    }
}
