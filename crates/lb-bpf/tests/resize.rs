//! Resizing pinned tables: a load with other sizes migrates every entry of the resized tables
//! into maps of the new size and re-pins them; shrinking below the entries a table holds is
//! refused by name. (With live connections through attached programs: `examples/tests/resize.rs`.)

use lb_api::flow::L4Proto;
use lb_api::tables::{self, Table};
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::TcpFlags;
use lb_bpf::{Error, KernelDatapath, LoadOptions, Program};
use lb_control::{default_config, ServiceSpec, TableSizes};
use lb_testbed::gate::privileged_test;

struct Uninstall(String);
impl Drop for Uninstall {
    fn drop(&mut self) {
        let _ = KernelDatapath::uninstall(&self.0);
    }
}

fn sizes(conntrack: u32, services: u32) -> TableSizes {
    TableSizes {
        conntrack,
        services,
        backends: 4096,
        nodes: 16,
        ..TableSizes::small()
    }
}

fn opts(dir: &str, sizes: TableSizes) -> LoadOptions {
    LoadOptions {
        pin_dir: Some(dir.into()),
        ..LoadOptions::with_sizes(sizes)
    }
}

fn svc(id: u32) -> ServiceSpec {
    ServiceSpec {
        id,
        frontend: format!("10.96.{}.{}:80", id / 256, id % 256)
            .parse()
            .unwrap(),
        proto: L4Proto::Tcp,
        backends: vec![
            "10.1.0.2:8080".parse().unwrap(),
            "10.1.0.3:8080".parse().unwrap(),
        ],
        ..Default::default()
    }
}

fn pinned_size(dir: &str, table: Table) -> u32 {
    aya::maps::MapInfo::from_pin(format!("{dir}/maps/{}", table.name))
        .unwrap()
        .max_entries()
}

#[test]
fn a_resized_load_keeps_every_entry_and_repins_the_new_maps() {
    if !privileged_test("a_resized_load_keeps_every_entry_and_repins_the_new_maps") {
        return;
    }
    let dir = format!("/sys/fs/bpf/lb-test-resize-{}", std::process::id());
    let _cleanup = Uninstall(dir.clone());
    let _ = KernelDatapath::uninstall(&dir);

    let mut dp = KernelDatapath::load_with(&opts(&dir, sizes(1024, 64))).unwrap();
    dp.set_config(&default_config(3)).unwrap();
    for id in 1..=40 {
        dp.upsert_service(&svc(id)).unwrap();
    }
    // 100 flows to service 1: 200 conntrack entries.
    for port in 0..100 {
        let syn = tcp_v4_frame(
            [10, 0, 0, 1],
            20_000 + port,
            [10, 96, 0, 1],
            80,
            TcpFlags::SYN,
            b"",
        );
        dp.test_run(Program::Xdp, &syn, 1).unwrap();
    }
    let ct_before = dp.conntrack_entries().unwrap();
    assert_eq!(ct_before.len(), 200);
    assert!(dp.migration().is_none());
    drop(dp);

    // Grow conntrack, shrink services (40 entries fit into 48).
    let dp = KernelDatapath::load_with(&opts(&dir, sizes(4096, 48))).unwrap();
    let report = dp.migration().expect("two tables were resized").clone();
    let moved: Vec<_> = report
        .tables
        .iter()
        .map(|t| (t.table, t.from, t.to, t.copied, t.entries_after))
        .collect();
    assert_eq!(
        moved,
        [
            ("LB_CT", 1024, 4096, 200, 200),
            ("LB_SERVICES", 64, 48, 40, 40)
        ]
    );
    assert_eq!(report.links_swapped, 0, "nothing was attached");
    assert_eq!(
        dp.conntrack_entries().unwrap(),
        ct_before,
        "every entry, unchanged"
    );
    assert_eq!(dp.max_entries(tables::CONNTRACK).unwrap(), 4096);
    assert_eq!(pinned_size(&dir, tables::CONNTRACK), 4096);
    assert_eq!(pinned_size(&dir, tables::SERVICES), 48);
    // The services carried over: a new flow to the last one is translated.
    let syn = tcp_v4_frame(
        [10, 0, 0, 1],
        30_000,
        [10, 96, 0, 40],
        80,
        TcpFlags::SYN,
        b"",
    );
    let out = dp.test_run(Program::Xdp, &syn, 1).unwrap();
    assert_eq!(out.verdict, lb_api::Verdict::Pass);
    assert_eq!(dp.conntrack_entries().unwrap().len(), 202);
    drop(dp);

    // Loading the new sizes again reuses the pins: no migration.
    let dp = KernelDatapath::load_with(&opts(&dir, sizes(4096, 48))).unwrap();
    assert!(dp.migration().is_none());
    assert_eq!(dp.conntrack_entries().unwrap().len(), 202);
}

#[test]
fn shrinking_below_the_live_entries_is_refused_by_name() {
    if !privileged_test("shrinking_below_the_live_entries_is_refused_by_name") {
        return;
    }
    let dir = format!("/sys/fs/bpf/lb-test-shrink-{}", std::process::id());
    let _cleanup = Uninstall(dir.clone());
    let _ = KernelDatapath::uninstall(&dir);
    let mut dp = KernelDatapath::load_with(&opts(&dir, sizes(1024, 16))).unwrap();
    dp.set_config(&default_config(3)).unwrap();
    for id in 1..=10 {
        dp.upsert_service(&svc(id)).unwrap();
    }
    drop(dp);
    let e = KernelDatapath::load_with(&opts(&dir, sizes(1024, 5))).unwrap_err();
    let msg = e.to_string();
    match e {
        Error::ResizeBelowEntries {
            map,
            pinned,
            requested,
            entries,
            knob,
        } => assert_eq!(
            (map, pinned, requested, entries, knob),
            ("LB_SERVICES", 16, 5, 10, "TableSizes::services")
        ),
        other => panic!("{other}"),
    }
    assert!(msg.contains("at least 10"), "{msg}");
    // Nothing changed: the old sizes still load, with the services.
    let dp = KernelDatapath::load_with(&opts(&dir, sizes(1024, 16))).unwrap();
    assert!(dp.migration().is_none());
    assert_eq!(pinned_size(&dir, tables::SERVICES), 16);
}
