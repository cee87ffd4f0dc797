//! The TC (clsact) programs: the pipeline's two stages.

use aya_ebpf::bindings::{BPF_F_INGRESS, TC_ACT_OK, TC_ACT_SHOT};
use aya_ebpf::helpers::bpf_redirect;
use aya_ebpf::macros::classifier;
use aya_ebpf::programs::TcContext;
use lb_api::wire::MAX_HEADER_OFFSET;
use lb_api::Verdict;

use crate::events::emit_drop_event;
use crate::maps::{LB_TC_STAGES, NEW_FLOW_STAGE};
use crate::packet::{DirectPacket, TcPacket};
use crate::stage::{run, stage_missing, Stage};

/// The TC action of a verdict (a drop writes its event). A packet the pipeline sends back (the
/// ICMP error it made of a packet too big for its carrier) goes back the way it came: at
/// ingress (the device it came in on is the skb's, `skb_iif` equals it) out of that device, a
/// redirect that works on a veth with its default settings (unlike `XDP_TX`, which needs NAPI
/// at the peer); at egress (the sender is on this host's side) into that device's ingress, so
/// the stack delivers it to the sender or routes it there.
#[inline(always)]
fn tc_action_of(ctx: &TcContext, v: Verdict) -> i32 {
    match v {
        Verdict::Pass => TC_ACT_OK,
        Verdict::Tx => {
            // SAFETY: `skb` is the context pointer the kernel passed to this program;
            // `ifindex` and `ingress_ifindex` are readable fields of `__sk_buff`.
            let (ifindex, came_in) =
                unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).ingress_ifindex) };
            let flags = if came_in == ifindex {
                0
            } else {
                u64::from(BPF_F_INGRESS)
            };
            // SAFETY: bpf_redirect has no preconditions; it returns TC_ACT_REDIRECT, or
            // TC_ACT_SHOT for flags it does not know.
            unsafe { bpf_redirect(ifindex, flags) as i32 }
        }
        Verdict::Drop => {
            // SAFETY: `skb` is the context pointer the kernel passed to this program; `ifindex`
            // is a readable field of `__sk_buff`.
            emit_drop_event(unsafe { (*ctx.skb.skb).ifindex });
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn tc_packet(ctx: &TcContext) -> TcPacket {
    // Make the headers linear so that direct packet access sees them.
    let want = core::cmp::min(ctx.len(), MAX_HEADER_OFFSET as u32);
    let _ = ctx.pull_data(want);
    DirectPacket {
        start: ctx.data(),
        end: ctx.data_end(),
        ctx: ctx.skb.skb.cast(),
    }
}

/// The pipeline at TC (clsact): its first stage, then a tail call into [`lb_tc_new_flow`] for a
/// packet of no tracked flow.
#[classifier]
pub fn lb_tc(ctx: TcContext) -> i32 {
    let mut pkt = tc_packet(&ctx);
    let v = run(&mut pkt, Stage::Tracked);
    // The context again from the packet (a stack slot) rather than kept in a register across
    // the pipeline: one value less for this frame to keep, which is on the deepest call chain.
    let ctx = TcContext::new(pkt.ctx.cast());
    let v = match v {
        Some(v) => v,
        None => {
            // SAFETY: as in `lb_xdp`.
            unsafe { LB_TC_STAGES.tail_call(&ctx, NEW_FLOW_STAGE) };
            stage_missing()
        }
    };
    tc_action_of(&ctx, v)
}

/// The pipeline's new-flow stage at TC, tail-called by [`lb_tc`].
#[classifier]
pub fn lb_tc_new_flow(ctx: TcContext) -> i32 {
    let v = run(&mut tc_packet(&ctx), Stage::NewFlow).unwrap_or(Verdict::Pass);
    tc_action_of(&ctx, v)
}
