//! Conntrack metrics: one struct filled from the userspace table or from the kernel map (through
//! `lb_bpf::conntrack_gc`), so both worlds report the same figures under the same names.

use core::time::Duration;

use lb_api::abi::{CtEntry, CtKey, CtKind, CtState, CT_STATES};
use lb_api::flow::L4Proto;

use crate::table::TableStats;

/// Figures of the garbage collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcStats {
    /// Sweeps run.
    pub runs: u64,
    /// Entries visited by the last sweep.
    pub last_scanned: u64,
    /// Entries deleted by the last sweep (both halves of a flow count).
    pub last_deleted: u64,
    /// Wall time of the last sweep.
    pub last_duration: Duration,
    /// Entries visited over all sweeps.
    pub total_scanned: u64,
    /// Entries deleted over all sweeps.
    pub total_deleted: u64,
    /// Expired entries a sweep left alone because a packet refreshed them before deletion.
    pub total_refreshed: u64,
    /// Interval until the next sweep, as adapted by the last one.
    pub interval: Duration,
}

/// Flows (service entries) per protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProtoCounts {
    /// TCP.
    pub tcp: u64,
    /// UDP.
    pub udp: u64,
    /// ICMP and ICMPv6.
    pub icmp: u64,
    /// Anything else.
    pub other: u64,
}

/// A snapshot of a conntrack table's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConntrackMetrics {
    /// Maximum number of entries.
    pub capacity: u64,
    /// Entries held (service + reverse-NAT).
    pub entries: u64,
    /// Service entries (one per flow).
    pub service_entries: u64,
    /// Reverse-NAT entries (one per flow).
    pub reverse_entries: u64,
    /// Flows per state (service entries), indexed by [`CtState`].
    pub by_state: [u64; CT_STATES],
    /// Flows per protocol.
    pub by_proto: ProtoCounts,
    /// Flows whose deadline has passed at the snapshot's time but that GC has not collected yet.
    pub expired: u64,
    /// Insert failures and evictions. From the kernel, `insert_failures_full` is the
    /// `conntrack_full` drop counter and evictions are always zero (the map never evicts).
    pub table: TableStats,
    /// Garbage-collector figures.
    pub gc: GcStats,
}

impl ConntrackMetrics {
    /// Counts entries (as read from either world) at `now_ns`.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a CtKey, &'a CtEntry)>,
        capacity: u64,
        now_ns: u64,
    ) -> Self {
        let mut m = Self {
            capacity,
            ..Self::default()
        };
        for (k, e) in entries {
            m.add(k, e, now_ns);
        }
        m
    }

    /// Adds one entry to the counts.
    pub fn add(&mut self, key: &CtKey, entry: &CtEntry, now_ns: u64) {
        self.entries += 1;
        if key.kind != CtKind::Service as u8 {
            self.reverse_entries += 1;
            return;
        }
        self.service_entries += 1;
        if let Some(slot) = self.by_state.get_mut(entry.state as usize) {
            *slot += 1;
        }
        if entry.expires_ns <= now_ns {
            self.expired += 1;
        }
        match L4Proto::from_u8(key.proto) {
            Some(L4Proto::Tcp) => self.by_proto.tcp += 1,
            Some(L4Proto::Udp) => self.by_proto.udp += 1,
            Some(L4Proto::Icmp | L4Proto::Icmpv6) => self.by_proto.icmp += 1,
            None => self.by_proto.other += 1,
        }
    }

    /// Flows in `state`.
    #[must_use]
    pub fn in_state(&self, state: CtState) -> u64 {
        self.by_state.get(state as usize).copied().unwrap_or(0)
    }

    /// Fill level in per-mille of capacity (0 for a table of capacity 0).
    #[must_use]
    pub fn utilization_permille(&self) -> u64 {
        self.entries
            .saturating_mul(1000)
            .checked_div(self.capacity)
            .unwrap_or(0)
    }
}
