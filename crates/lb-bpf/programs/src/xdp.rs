//! The XDP programs: the pipeline's two stages, the parse-only baseline, and the pass-only
//! program for the peer of a veth that runs the pipeline.

use aya_ebpf::bindings::xdp_action;
use aya_ebpf::macros::xdp;
use aya_ebpf::programs::XdpContext;
use lb_api::wire::parse;
use lb_api::Verdict;

use crate::events::emit_drop_event;
use crate::maps::{LB_XDP_STAGES, NEW_FLOW_STAGE};
use crate::packet::{DirectPacket, XdpPacket};
use crate::stage::{run, stage_missing, Stage};

/// The XDP action of a verdict (a drop writes its event).
#[inline(always)]
fn xdp_action_of(ctx: &XdpContext, v: Verdict) -> u32 {
    match v {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => {
            emit_drop_event(ctx.ingress_ifindex() as u32);
            xdp_action::XDP_DROP
        }
        Verdict::Tx => xdp_action::XDP_TX,
    }
}

#[inline(always)]
fn xdp_packet(ctx: &XdpContext) -> XdpPacket {
    DirectPacket {
        start: ctx.data(),
        end: ctx.data_end(),
        ctx: ctx.ctx.cast(),
    }
}

/// The pipeline at XDP: its first stage, then a tail call into [`lb_xdp_new_flow`] for a packet
/// of no tracked flow.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let v = match run(&mut xdp_packet(&ctx), Stage::Tracked) {
        Some(v) => v,
        None => {
            // SAFETY: `ctx` is this program's context; on success the call does not return.
            unsafe { LB_XDP_STAGES.tail_call(&ctx, NEW_FLOW_STAGE) };
            stage_missing()
        }
    };
    xdp_action_of(&ctx, v)
}

/// The pipeline's new-flow stage at XDP, tail-called by [`lb_xdp`].
#[xdp]
pub fn lb_xdp_new_flow(ctx: XdpContext) -> u32 {
    let v = run(&mut xdp_packet(&ctx), Stage::NewFlow).unwrap_or(Verdict::Pass);
    xdp_action_of(&ctx, v)
}

/// Parse only, then pass: the baseline the pipeline's cost is measured against.
#[xdp]
pub fn lb_xdp_parse_only(ctx: XdpContext) -> u32 {
    let pkt = XdpPacket {
        start: ctx.data(),
        end: ctx.data_end(),
        ctx: core::ptr::null_mut(),
    };
    match parse(&pkt) {
        Ok(p) => {
            // Keep the parse from being optimized away.
            if p.tuple.proto == 0xff {
                return xdp_action::XDP_DROP;
            }
            xdp_action::XDP_PASS
        }
        Err(_) => xdp_action::XDP_PASS,
    }
}

/// Passes every packet. Attached to the peer of a veth that runs [`lb_xdp`]: a veth delivers
/// the frames its XDP program sends back with `XDP_TX` (ICMP errors) to a peer that runs an XDP
/// program of its own; without one they wait in the peer's queue (Linux 6.18 wakes the peer's
/// NAPI after `XDP_TX` only when the peer has an XDP program).
#[xdp]
pub fn lb_xdp_tx_peer(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
