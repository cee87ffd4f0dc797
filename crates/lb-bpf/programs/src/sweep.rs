//! The delete step of a conntrack GC sweep, in the kernel: `lb_ct_sweep`, run by the GC with
//! `BPF_PROG_TEST_RUN` (it is never attached). For each key of the batch in `LB_CT_SWEEP`, it
//! re-reads the entry and deletes its flow by the pair rules if it is still dead
//! ([`lb_conntrack::reap`], the function the engine's sweep decides with): the check and the
//! delete are nanoseconds apart, where a sweep by syscalls left microseconds for a packet to
//! refresh a flow that was then deleted.
//!
//! The run's packet carries its arguments and results (little-endian): bytes 0..8 the time to
//! sweep at (the datapath's clock), 8..12 the number of keys in the batch; the program writes
//! the entries deleted at 12..16 and the entries kept because a packet refreshed them at 16..20.
//! A shorter packet is left alone. The verdict is always `XDP_PASS`.

use aya_ebpf::bindings::xdp_action;
use aya_ebpf::macros::xdp;
use aya_ebpf::programs::XdpContext;
use lb_api::tables::CT_SWEEP;
use lb_conntrack::{reap, Reaped};

use crate::maps::LB_CT_SWEEP;
use crate::tables::KernelTables;

/// Bytes of the run's packet the program reads and writes.
const ARGS_LEN: usize = 20;

/// The sweep's delete step for one batch (see the module docs).
#[xdp]
pub fn lb_ct_sweep(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + ARGS_LEN > end {
        return xdp_action::XDP_PASS;
    }
    let args = start as *mut u8;
    // SAFETY: the 20 bytes at `start` are packet memory (checked against `data_end` above);
    // unaligned reads and writes of plain integers.
    let (now, count) = unsafe {
        (
            core::ptr::read_unaligned(args.cast::<u64>()),
            core::ptr::read_unaligned(args.add(8).cast::<u32>()),
        )
    };
    let mut tables = KernelTables;
    let (mut deleted, mut refreshed) = (0u32, 0u32);
    for i in 0..CT_SWEEP.default_max_entries {
        if i >= count {
            break;
        }
        let Some(key) = LB_CT_SWEEP.get(i) else {
            break;
        };
        let key = *key;
        match reap(&mut tables, &key, now) {
            Reaped::Deleted(n) => deleted += n,
            Reaped::Refreshed => refreshed += 1,
            Reaped::Kept | Reaped::Gone => {}
        }
    }
    // SAFETY: as above.
    unsafe {
        core::ptr::write_unaligned(args.add(12).cast::<u32>(), deleted);
        core::ptr::write_unaligned(args.add(16).cast::<u32>(), refreshed);
    }
    xdp_action::XDP_PASS
}
