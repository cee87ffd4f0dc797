//! Drop events: written into the ring buffer after the pipeline returns.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_api::counters::Counter;
use lb_api::events::DropEvent;

use crate::maps::{LB_CONFIG, LB_DROP_REASON, LB_EVENTS, LB_SCRATCH};
use crate::tables::bump;

/// Writes the drop event of the packet the pipeline just dropped straight into a reserved
/// ring-buffer slot: a subprogram of its own, called after the pipeline (so its frame adds to
/// the program's only), reading the reason and the parsed flow from their per-CPU slots. A full
/// ring loses the event, counted as `drop_events_lost`.
#[inline(never)]
pub(crate) fn emit_drop_event(ifindex: u32) {
    let (Some(reason), Some(scratch)) = (LB_DROP_REASON.get(0), LB_SCRATCH.get(0)) else {
        return;
    };
    let tuple = &scratch.parsed.tuple;
    let Some(mut slot) = LB_EVENTS.reserve::<DropEvent>(0) else {
        bump(Counter::DropEventsLost.slot());
        return;
    };
    // The same time the pipeline stamps conntrack with (the config's fixed time in tests).
    let now = match LB_CONFIG.get(0) {
        Some(cfg) if cfg.fixed_now_ns != 0 => cfg.fixed_now_ns,
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        _ => unsafe { bpf_ktime_get_ns() },
    };
    let p = slot.as_mut_ptr();
    // SAFETY: `p` points at a reserved, 8-aligned ring slot of `size_of::<DropEvent>()` bytes
    // owned by this program until submit; every field is written before the submit, so
    // userspace never sees uninitialized bytes.
    unsafe {
        (&raw mut (*p).timestamp_ns).write(now);
        (&raw mut (*p).reason).write(*reason);
        (&raw mut (*p).ifindex).write(ifindex);
        (&raw mut (*p).src).write(tuple.src);
        (&raw mut (*p).dst).write(tuple.dst);
        (&raw mut (*p).src_port).write(tuple.src_port);
        (&raw mut (*p).dst_port).write(tuple.dst_port);
        (&raw mut (*p).proto).write(tuple.proto);
        (&raw mut (*p).family).write(tuple.family);
        (&raw mut (*p).pad).write([0; 2]);
    }
    slot.submit(0);
}
