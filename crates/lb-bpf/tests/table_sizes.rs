//! Table sizes at load: the kernel's maps have the sizes the loader is given, a pinned map of
//! another size is refused by name when migration is off (`tests/resize.rs` migrates), and a full table is refused with the same
//! [`ConfigError::TableFull`] by the kernel and the userspace engine.

use std::time::Instant;

use lb_api::flow::L4Proto;
use lb_api::tables::{self, Table};
use lb_bpf::{Error, KernelDatapath, LoadOptions, Resize};
use lb_conntrack::ManualClock;
use lb_control::{
    default_config, ConfigError, Dataplane, DataplaneError, NodeSpec, Selection, ServiceSpec,
    TableSizes,
};
use lb_datapath::engine::Engine;
use lb_testbed::gate::privileged_test;

/// Small sizes, none equal to the compiled-in ones, so that reading them back proves they were
/// applied.
fn small() -> TableSizes {
    TableSizes {
        conntrack: 1000,
        services: 3,
        backends: 300,
        nodes: 2,
        xdp_partial: 7,
        drop_events_bytes: 8 * 4096,
        affinity: 11,
        backends_by_addr: 13,
    }
}

fn max_entries_of_every_sized_table(dp: &KernelDatapath) -> Vec<(&'static str, u32)> {
    let sized: Vec<Table> = dp.table_sizes().entries().iter().map(|e| e.0).collect();
    sized
        .into_iter()
        .map(|t| (t.name, dp.max_entries(t).unwrap()))
        .collect()
}

#[test]
fn maps_have_the_sizes_they_are_loaded_with() {
    if !privileged_test("maps_have_the_sizes_they_are_loaded_with") {
        return;
    }
    let dp = KernelDatapath::load_with(&LoadOptions::with_sizes(small())).unwrap();
    let want: Vec<(&str, u32)> = small().entries().iter().map(|e| (e.0.name, e.1)).collect();
    assert_eq!(max_entries_of_every_sized_table(&dp), want);
    // Tables the sizes do not cover keep the compiled-in size.
    assert_eq!(
        dp.max_entries(tables::CONFIG).unwrap(),
        tables::CONFIG.default_max_entries
    );
}

/// Load time and what it costs at the production defaults (printed; the figures in the
/// README): `cargo test -p lb-bpf --test table_sizes -- --nocapture`.
#[test]
fn production_defaults_load_and_report_their_sizes() {
    if !privileged_test("production_defaults_load_and_report_their_sizes") {
        return;
    }
    for (what, opts) in [
        ("small", LoadOptions::with_sizes(TableSizes::small())),
        ("default", LoadOptions::default()),
    ] {
        let before = mem_available();
        let t = Instant::now();
        let dp = KernelDatapath::load_with(&opts).unwrap();
        let took = t.elapsed();
        println!(
            "load with {what} sizes: {took:?}, estimated table memory {} MiB, MemAvailable fell \
             by {} MiB",
            opts.sizes.memory_bytes() >> 20,
            before.saturating_sub(mem_available()) >> 20
        );
        let want: Vec<(&str, u32)> = opts
            .sizes
            .entries()
            .iter()
            .map(|e| (e.0.name, e.1))
            .collect();
        assert_eq!(max_entries_of_every_sized_table(&dp), want);
    }
    let dp = KernelDatapath::load().unwrap();
    assert_eq!(dp.table_sizes(), &TableSizes::default());
}

/// MemAvailable from /proc/meminfo, bytes.
fn mem_available() -> u64 {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn invalid_sizes_load_nothing() {
    // Checked before anything is loaded: no privileges needed.
    let e = KernelDatapath::load_with(&LoadOptions::with_sizes(TableSizes {
        services: 0,
        ..small()
    }))
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Sizes(lb_control::SizeError::TooSmall {
                table: "LB_SERVICES",
                ..
            })
        ),
        "{e}"
    );
    let e = KernelDatapath::load_with(&LoadOptions {
        memory_limit: Some(1 << 20),
        ..LoadOptions::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("TableSizes::conntrack"), "{e}");
}

#[test]
fn a_pinned_map_of_another_size_is_refused_by_name_when_migration_is_off() {
    if !privileged_test("a_pinned_map_of_another_size_is_refused_by_name_when_migration_is_off") {
        return;
    }
    let dir = format!("/sys/fs/bpf/lb-test-sizes-{}", std::process::id());
    let _ = KernelDatapath::uninstall(&dir);
    let opts = LoadOptions {
        pin_dir: Some(dir.clone().into()),
        resize: Resize::Refuse,
        ..LoadOptions::with_sizes(small())
    };
    let first = KernelDatapath::load_with(&opts).unwrap();
    drop(first);
    // The same sizes: reused.
    let again = KernelDatapath::load_with(&opts).unwrap();
    drop(again);
    let bigger = LoadOptions {
        sizes: TableSizes {
            services: 5,
            ..small()
        },
        ..opts.clone()
    };
    let e = KernelDatapath::load_with(&bigger).unwrap_err();
    let msg = e.to_string();
    KernelDatapath::uninstall(&dir).unwrap();
    match e {
        Error::PinnedMapSize {
            map,
            pinned,
            requested,
            knob,
            ..
        } => assert_eq!(
            (map, pinned, requested, knob),
            ("LB_SERVICES", 3, 5, "TableSizes::services")
        ),
        other => panic!("{other}"),
    }
    assert!(
        msg.contains("uninstall")
            && msg.contains("TableSizes::services = 3")
            && msg.contains("Resize::Migrate"),
        "{msg}"
    );
}

fn svc(id: u32, selection: Selection) -> ServiceSpec {
    ServiceSpec {
        id,
        frontend: format!("10.96.0.{id}:80").parse().unwrap(),
        proto: L4Proto::Tcp,
        backends: vec![
            "10.1.0.2:8080".parse().unwrap(),
            "10.1.0.3:8080".parse().unwrap(),
        ],
        selection,
        ..Default::default()
    }
}

/// The same programming through `&mut dyn Dataplane`: what each call returned.
fn program(dp: &mut dyn Dataplane) -> Vec<Result<(), ConfigError>> {
    let cfg = |r: Result<(), DataplaneError>| {
        r.map_err(|e| e.config().cloned().unwrap_or_else(|| panic!("{e}")))
    };
    let mut out = vec![cfg(dp.set_config(&default_config(1)))];
    // Services 1..=3 fit, 4 does not; replacing 3 does.
    for id in 1..=4 {
        out.push(cfg(dp.upsert_service(&svc(id, Selection::Random))));
    }
    out.push(cfg(dp.upsert_service(&svc(3, Selection::Random))));
    // A Maglev table of 251 slots fits the 300 (249 new slots beside 6), one of 509 does not.
    out.push(cfg(
        dp.upsert_service(&svc(2, Selection::Maglev { table_size: 251 }))
    ));
    out.push(cfg(
        dp.upsert_service(&svc(1, Selection::Maglev { table_size: 509 }))
    ));
    // Two peers fit the nodes table, a third does not.
    let node = |n: u8| NodeSpec {
        address_v4: Some([192, 168, 1, 10].into()),
        peers: (1..=n).map(|i| [192, 168, 1, 10 + i].into()).collect(),
        ..NodeSpec::default()
    };
    out.push(cfg(dp.set_node(&node(2))));
    out.push(cfg(dp.set_node(&node(3))));
    out
}

#[test]
fn kernel_and_engine_refuse_the_same_programming_of_full_tables() {
    if !privileged_test("kernel_and_engine_refuse_the_same_programming_of_full_tables") {
        return;
    }
    let mut engine = Engine::with_sizes(&small(), default_config(1), ManualClock::new(1));
    let mut kernel = KernelDatapath::load_with(&LoadOptions::with_sizes(small())).unwrap();
    let from_engine = program(&mut engine);
    let from_kernel = program(&mut kernel);
    assert_eq!(from_engine, from_kernel);
    let full = |table, capacity, knob| {
        Err(ConfigError::TableFull {
            table,
            capacity,
            knob,
        })
    };
    assert_eq!(
        from_engine[4],
        full("LB_SERVICES", 3, "TableSizes::services")
    );
    assert_eq!(from_engine[5], Ok(()));
    assert_eq!(from_engine[6], Ok(()));
    assert_eq!(
        from_engine[7],
        full("LB_BACKENDS", 300, "TableSizes::backends")
    );
    assert_eq!(from_engine[8], Ok(()));
    assert_eq!(from_engine[9], full("LB_NODES", 2, "TableSizes::nodes"));
    let msg = from_engine[7].clone().unwrap_err().to_string();
    assert!(
        msg.contains("LB_BACKENDS") && msg.contains("300") && msg.contains("TableSizes::backends"),
        "{msg}"
    );
}
