//! Keeping a tracked flow's two conntrack entries in step: the reverse half refreshed (or
//! rebuilt), both halves forgotten once past their deadline. The layout of the pair (which key
//! and entry each half has) is derived in [`lb_conntrack`]'s pair module
//! ([`partner_key`], [`make_reverse`]), for the pipeline and GC alike.

use lb_api::abi::{CtEntry, CtKey};
use lb_api::counters::{Counter, Counters};
use lb_conntrack::{make_reverse, partner_key, ConntrackTable, InsertMode};

/// Keeps the reverse half of a tracked flow (service entry `e`, key `fkey`) in step: its timers
/// follow the service entry's; lost (deleted on its own), it is rebuilt from the service entry
/// (counted as [`Counter::ReverseEntryRebuilt`], or [`Counter::ReverseEntryRebuildFailed`]
/// when the table refuses it). A DSR flow
/// on the node that forwarded it has no reverse half (its replies go around this node). `None`
/// if the service entry is gone meanwhile.
///
/// A subprogram of its own in the kernel: the reverse key lives in its frame, not in
/// [`established`](super::tracked::established)'s, which is on the deepest call chain of the first stage.
#[inline(never)]
pub(super) fn refresh_reverse<T: ConntrackTable + Counters + ?Sized>(
    tables: &mut T,
    fkey: &CtKey,
    e: &mut CtEntry,
    now: u64,
) -> Option<()> {
    let Some(rk) = partner_key(fkey, e) else {
        return Some(());
    };
    match tables.get_mut(&rk) {
        Some(r) => {
            r.last_seen_ns = now;
            r.expires_ns = e.expires_ns;
        }
        None => {
            make_reverse(e, (&fkey.src, fkey.src_port), (&fkey.dst, fkey.dst_port));
            // Counted either way: a failed rebuild leaves the flow's replies untranslated.
            let counted = match tables.insert(&rk, e, InsertMode::NoExist) {
                Ok(()) => Counter::ReverseEntryRebuilt,
                Err(_) => Counter::ReverseEntryRebuildFailed,
            };
            tables.bump(counted.slot());
            *e = *tables.get_mut(fkey)?;
        }
    }
    Some(())
}

/// [`partner_key`] as a subprogram of its own in the kernel, so that its field selections do not
/// spill onto the reply path's frame, which is on the first stage's deepest call chain (inlined
/// into the established path, they once took it past the 512-byte stack).
#[inline(never)]
pub(super) fn partner_of(key: &CtKey, e: &CtEntry) -> Option<CtKey> {
    partner_key(key, e)
}

/// Removes the flow whose entry under `key` a lookup found past its deadline
/// ([`is_expired`](lb_conntrack::is_expired)), both halves, as GC would have, and counts it. The caller then goes on as if
/// the lookup had missed: GC may run long after a deadline, and until then a packet must not
/// revive a dead flow (its backend may be gone, its server's TIME_WAIT over).
///
/// Its own subprogram in the kernel (`inline(never)`), so the partner key it builds never
/// weighs on the caller's stack frame; it runs once per expired flow, not per packet.
#[inline(never)]
pub(super) fn forget_expired_flow<T: ConntrackTable + Counters + ?Sized>(
    tables: &mut T,
    key: &CtKey,
) {
    if let Some(e) = tables.get_mut(key) {
        let partner = partner_key(key, e);
        tables.remove(key);
        if let Some(p) = partner {
            tables.remove(&p);
        }
    }
    tables.bump(Counter::ConntrackExpiredAtLookup.slot());
}
