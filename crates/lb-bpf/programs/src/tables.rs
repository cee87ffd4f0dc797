//! The kernel maps behind the logic crates' table traits: conntrack, services, randomness and
//! counters.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_api::abi::{
    AffinityKey, AffinityValue, BackendAddrKey, BackendKey, BackendValue, CtEntry, CtKey, NodeKey,
    ServiceKey, ServiceValue,
};
use lb_api::counters::{Counters, DropReason};
use lb_conntrack::{ConntrackTable, InsertError, InsertMode};
use lb_nat::{RandomSource, ServiceTable};

use crate::maps::{
    LB_AFFINITY, LB_BACKENDS, LB_BE_BY_ADDR, LB_COUNTERS, LB_CT, LB_DROP_REASON, LB_NODES,
    LB_SERVICES,
};

/// The kernel maps behind the logic crates' table traits.
pub(crate) struct KernelTables;

impl ConntrackTable for KernelTables {
    #[inline(always)]
    fn get_mut(&mut self, key: &CtKey) -> Option<&mut CtEntry> {
        // SAFETY: the pointer comes from a successful map lookup and points at a value of the
        // map's value type, valid for the rest of this program run (RCU); the `&mut self` borrow
        // keeps this program from handing out a second reference to it.
        LB_CT.get_ptr_mut(key).map(|p| unsafe { &mut *p })
    }

    #[inline(always)]
    fn insert(
        &mut self,
        key: &CtKey,
        entry: &CtEntry,
        mode: InsertMode,
    ) -> Result<(), InsertError> {
        let flags = match mode {
            InsertMode::NoExist => 1, // BPF_NOEXIST
            InsertMode::Any => 0,     // BPF_ANY
        };
        LB_CT.insert(key, entry, flags).map_err(|e| match e as i32 {
            -17 => InsertError::Exists, // EEXIST
            -7 => InsertError::Full,    // E2BIG
            other => InsertError::Other(other),
        })
    }

    #[inline(always)]
    fn remove(&mut self, key: &CtKey) -> bool {
        LB_CT.remove(key).is_ok()
    }
}

impl ServiceTable for KernelTables {
    #[inline(always)]
    fn service(&self, key: &ServiceKey) -> Option<ServiceValue> {
        // SAFETY: the value is copied out while the RCU-protected lookup result is valid.
        unsafe { LB_SERVICES.get(key).copied() }
    }

    #[inline(always)]
    fn backend(&self, key: &BackendKey) -> Option<BackendValue> {
        // SAFETY: as above.
        unsafe { LB_BACKENDS.get(key).copied() }
    }

    #[inline(always)]
    fn is_peer_node(&self, key: &NodeKey) -> bool {
        LB_NODES.get_ptr(key).is_some()
    }

    #[inline(always)]
    fn backend_by_addr(&self, key: &BackendAddrKey) -> Option<BackendValue> {
        // SAFETY: the value is copied out while the RCU-protected lookup result is valid.
        unsafe { LB_BE_BY_ADDR.get(key).copied() }
    }

    #[inline(always)]
    fn affinity(&self, key: &AffinityKey) -> Option<AffinityValue> {
        // SAFETY: as above.
        unsafe { LB_AFFINITY.get(key).copied() }
    }

    #[inline(always)]
    fn set_affinity(&mut self, key: &AffinityKey, value: &AffinityValue) {
        // An LRU hash makes room by evicting: an insert fails only without memory, and then
        // the client's next flow picks by hash again.
        let _ = LB_AFFINITY.insert(key, value, 0);
    }
}

impl RandomSource for KernelTables {
    #[inline(always)]
    fn random_u32(&mut self) -> u32 {
        // SAFETY: bpf_get_prandom_u32 has no preconditions.
        unsafe { bpf_get_prandom_u32() }
    }
}

impl Counters for KernelTables {
    #[inline(always)]
    fn bump(&mut self, slot: u32) {
        bump(slot);
    }

    #[inline(always)]
    fn drop_event(&mut self, reason: DropReason) {
        // Only noted here, in a map slot: the event is written after the pipeline returns, so
        // that no path's frame grows (main + new flow + rewrite is at the 512-byte limit).
        if let Some(p) = LB_DROP_REASON.get_ptr_mut(0) {
            // SAFETY: this CPU's slot, used by one program run at a time.
            unsafe { *p = reason };
        }
    }
}

#[inline(always)]
pub(crate) fn bump(slot: u32) {
    if let Some(p) = LB_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot is only written by programs running on this CPU, one at a time.
        unsafe { *p += 1 };
    }
}
