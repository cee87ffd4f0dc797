//! The lb-dataplane eBPF programs.
//!
//! Each program is a thin adapter: it wraps the hook's packet in a [`PacketAccess`] over
//! `data`/`data_end`, the kernel maps in the logic crates' table traits, and calls
//! [`lb_datapath::process`], the same function the userspace engine runs.
//!
//! Programs:
//! * `lb_xdp`: the pipeline at XDP (ingress, before the stack allocates an skb): its first stage
//!   (parse, ICMP errors, replies, tracked flows), then a tail call into `lb_xdp_new_flow`, the
//!   new-flow stage, for a packet of no tracked flow. Two programs, because the verifier's
//!   budget is a million instructions per program and the new-flow stage (the SNAT allocator's
//!   schedule) needs most of one.
//! * `lb_tc`, `lb_tc_new_flow`: the pipeline at TC (clsact ingress or egress), for interfaces or
//!   directions XDP cannot serve. Carriers, decapsulation and ICMP errors go through the kernel's
//!   skb helpers (`bpf_skb_adjust_room` with the encapsulation flags, `bpf_skb_change_tail`),
//!   which keep a GSO packet segmentable; ICMP errors go back out by `bpf_redirect`.
//! * `lb_xdp_parse_only`: parses and passes; the baseline benchmarks are set against.
//! * `lb_ct_sweep`: the conntrack GC's delete step, run by the GC with `BPF_PROG_TEST_RUN`
//!   (`sweep.rs`).
//!
//! Files: `maps.rs` (the maps, sized from [`lb_api::tables`], where every table is declared),
//! `tables.rs` (the maps behind the logic crates' table traits), `packet.rs` (packet access over
//! `data`/`data_end` and the kernel's resize and checksum helpers), `stage.rs` (running a stage
//! of the pipeline), `events.rs` (drop events), `xdp.rs` and `tc.rs` (the programs).
#![no_std]
#![no_main]

mod events;
mod maps;
mod packet;
mod stage;
mod sweep;
mod tables;
mod tc;
mod xdp;

/// zerocopy as lb-api re-exports it (this crate does not depend on it directly).
mod zerocopy_shim {
    pub use lb_api::__zerocopy::network_endian::U16;
    pub use lb_api::__zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
