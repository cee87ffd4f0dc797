//! Running a stage of the pipeline over a packet with the kernel maps.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_api::counters::{Counters, DropReason};
use lb_api::Verdict;
use lb_datapath::Step;

use crate::maps::{LB_CONFIG, LB_SCRATCH};
use crate::packet::DirectPacket;
use crate::tables::KernelTables;

/// The stage of the pipeline a program runs.
#[derive(Clone, Copy)]
pub(crate) enum Stage {
    /// [`lb_datapath::process_tracked`].
    Tracked,
    /// [`lb_datapath::process_new`].
    NewFlow,
}

/// Runs `stage` over the packet with the kernel maps; `None` when the first stage hands the
/// packet on to the new-flow stage.
#[inline(always)]
pub(crate) fn run<const TC: bool>(pkt: &mut DirectPacket<TC>, stage: Stage) -> Option<Verdict> {
    let mut tables = KernelTables;
    let (Some(cfg), Some(scratch)) = (LB_CONFIG.get(0), LB_SCRATCH.get_ptr_mut(0)) else {
        tables.bump(DropReason::NotConfigured.slot());
        return Some(Verdict::Pass);
    };
    // SAFETY: the per-CPU slot is used by this program run only (a CPU runs one at a time, and
    // a tail call stays on the CPU), for the duration of this call; the new-flow stage reads
    // what the first stage of the same packet left there.
    let scratch = unsafe { &mut *scratch };
    // The coarse clock (CLOCK_MONOTONIC_COARSE, one tick behind at most): conntrack's timeouts
    // are seconds, and it costs a few ns where `bpf_ktime_get_ns` costs about 25. The engine
    // reads the same clock (`lb_conntrack::MonotonicClock`).
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions. The pipeline calls it only for
    // packets that touch conntrack.
    let clock = || unsafe { bpf_ktime_get_coarse_ns() };
    match stage {
        Stage::Tracked => {
            match lb_datapath::process_tracked(pkt, cfg, &clock, &mut tables, scratch) {
                Step::Done(v) => Some(v),
                Step::NewFlow => None,
            }
        }
        Stage::NewFlow => Some(lb_datapath::process_new(
            pkt,
            cfg,
            &clock,
            &mut tables,
            scratch,
        )),
    }
}

/// The new-flow stage could not be reached: the packet is dropped, counted.
#[inline(always)]
pub(crate) fn stage_missing() -> Verdict {
    lb_datapath::count_drop(&mut KernelTables, DropReason::NewFlowStageMissing)
}
