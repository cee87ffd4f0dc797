//! The table registry ([`lb_api::tables`]) and the compiled object agree: every registered table
//! is a map of the object with the registered kind, key size, value size and size, and the object
//! has no map the registry lacks. The programs must name their maps with literals (aya-ebpf's
//! `#[map(name = ...)]`), so this is where a mismatch is caught. No privileges needed.

use std::mem::size_of;

use lb_api::tables;

fn object() -> aya_obj::Object {
    aya_obj::Object::parse(lb_bpf::PROGRAMS_OBJECT).expect("the embedded object parses")
}

#[test]
fn every_registered_table_is_in_the_object_with_its_shape() {
    let obj = object();
    for t in tables::ALL {
        let m = obj.maps.get(t.name).unwrap_or_else(|| {
            panic!(
                "{}: registered in lb_api::tables but not in the object; declare it in \
                 crates/lb-bpf/programs/src/maps.rs",
                t.name
            )
        });
        // The one value size lb-api cannot name: the pipeline's scratch area.
        let value_size = t.value_size.unwrap_or_else(|| {
            assert_eq!(
                t.name,
                tables::SCRATCH.name,
                "only the scratch area is sized elsewhere"
            );
            size_of::<lb_datapath::Scratch>() as u32
        });
        assert_eq!(
            (m.map_type(), m.key_size(), m.value_size(), m.max_entries()),
            (
                t.kind.bpf_map_type(),
                t.key_size,
                value_size,
                t.default_max_entries
            ),
            "{}: (type, key size, value size, max entries) in the object vs the registry",
            t.name
        );
    }
}

#[test]
fn the_object_has_no_unregistered_table() {
    let obj = object();
    let mut names: Vec<&String> = obj.maps.keys().collect();
    names.sort();
    for name in names {
        // Sections the compiler makes (.rodata, .bss, .data) are no tables.
        if name.starts_with('.') {
            continue;
        }
        assert!(
            tables::by_name(name).is_some(),
            "map {name} is in the object but not in lb_api::tables: register it there"
        );
    }
}

#[test]
fn state_tables_are_pinned_and_per_packet_ones_are_not() {
    use tables::*;
    for t in [
        CONNTRACK,
        SERVICES,
        BACKENDS,
        NODES,
        CONFIG,
        COUNTERS,
        XDP_PARTIAL,
    ] {
        assert_eq!(t.pinning, Pinning::Reused, "{}", t.name);
    }
    for t in [SCRATCH, DROP_REASON, DROP_EVENTS] {
        assert_eq!(t.pinning, Pinning::Never, "{}", t.name);
    }
}
