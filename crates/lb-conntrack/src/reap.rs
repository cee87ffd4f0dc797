//! The sweep's last step for one entry it found expired: decide again, just before the delete,
//! whether the flow is still dead, and delete it by the pair rules. One function for both worlds
//! ([`reap_decision`]): the engine's sweep and the sweep of the kernel map, which runs it inside a
//! BPF program (`lb_ct_sweep`) so that the check and the delete are nanoseconds apart rather
//! than two syscalls.

use lb_api::abi::{CtEntry, CtKey, CtKind};

use crate::pair::partner_key;
use crate::table::{is_expired, ConntrackTable};

/// What a sweep does with an entry it found expired, decided again just before the delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapDecision {
    /// Keep it: a packet refreshed it, or (a reverse entry) its service entry is alive and owns
    /// the pair's fate.
    Keep,
    /// Delete it alone: a reverse entry whose service entry is gone (an orphan).
    DeleteSelf,
    /// Delete the flow: the entry and its partner (a reverse entry's expired service entry is
    /// deleted first, so no instant sees a service entry without its reverse half).
    DeleteBoth,
}

/// The pair rules of GC for the entry `entry` under `key` at `now_ns`: an entry not past its
/// deadline stays; an expired service entry goes with its partner; an expired reverse entry
/// stays while its service entry (`service`, the entry under its
/// [`partner_key`]; not read for a service entry) is alive, goes with it when it has expired,
/// and alone when it is gone.
#[inline(always)]
#[must_use]
pub fn reap_decision(
    key: &CtKey,
    entry: &CtEntry,
    service: Option<&CtEntry>,
    now_ns: u64,
) -> ReapDecision {
    if !is_expired(entry, now_ns) {
        return ReapDecision::Keep;
    }
    if key.kind != CtKind::ReverseNat as u8 {
        return ReapDecision::DeleteBoth;
    }
    match service {
        Some(s) if !is_expired(s, now_ns) => ReapDecision::Keep,
        Some(_) => ReapDecision::DeleteBoth,
        None => ReapDecision::DeleteSelf,
    }
}

/// What [`reap`] did with one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    /// The key had no entry (gone with its partner already, or deleted by a packet).
    Gone,
    /// The entry stays: a packet refreshed it since the scan.
    Refreshed,
    /// The entry stays, past its deadline: a reverse entry whose service entry is alive.
    Kept,
    /// This many entries were deleted (the entry and, by the pair rules, its partner).
    Deleted(u32),
}

/// Re-reads the entry under `key` in `tables` and deletes its flow if [`reap_decision`] says
/// so: the delete step of a sweep, over any [`ConntrackTable`] (the kernel's sweep program
/// runs it over the conntrack map).
#[inline(always)]
pub fn reap<T: ConntrackTable + ?Sized>(tables: &mut T, key: &CtKey, now_ns: u64) -> Reaped {
    let Some(e) = tables.get_mut(key) else {
        return Reaped::Gone;
    };
    let e = *e;
    let partner = partner_key(key, &e);
    let reverse = key.kind == CtKind::ReverseNat as u8;
    let service = match (&partner, reverse) {
        (Some(p), true) => tables.get_mut(p).map(|s| *s),
        _ => None,
    };
    match reap_decision(key, &e, service.as_ref(), now_ns) {
        ReapDecision::Keep if !is_expired(&e, now_ns) => Reaped::Refreshed,
        ReapDecision::Keep => Reaped::Kept,
        ReapDecision::DeleteSelf => Reaped::Deleted(u32::from(tables.remove(key))),
        ReapDecision::DeleteBoth => {
            let mut n = 0;
            if reverse {
                if let Some(p) = &partner {
                    n += u32::from(tables.remove(p));
                }
                n += u32::from(tables.remove(key));
            } else {
                n += u32::from(tables.remove(key));
                if let Some(p) = &partner {
                    n += u32::from(tables.remove(p));
                }
            }
            Reaped::Deleted(n)
        }
    }
}
