//! The kernel tables (eBPF maps), declared once: name, kind, key and value sizes, default size,
//! whether they are pinned, and what they hold.
//!
//! The programs (`crates/lb-bpf/programs`) size their maps from here, the loader (`lb-bpf`) pins,
//! reuses, checks and opens them by these entries, and a test of the loader checks that every
//! entry exists in the compiled object with exactly this kind, key size, value size and size
//! (and that the object has no map missing here). Adding a table starts with one entry in the
//! [`ALL`] table below; `docs/extending.md` walks through the rest.
//!
//! ```
//! use lb_api::tables::{self, MapKind, Pinning};
//!
//! let ct = tables::CONNTRACK;
//! assert_eq!(ct.name, "LB_CT");
//! assert_eq!(ct.kind, MapKind::Hash);
//! assert_eq!(ct.key_size as usize, core::mem::size_of::<lb_api::abi::CtKey>());
//! assert_eq!(ct.pinning, Pinning::Reused);
//! // Every table, each once.
//! assert!(tables::ALL.iter().any(|t| t.name == "LB_SERVICES"));
//! assert_eq!(tables::by_name("LB_CT"), Some(&tables::CONNTRACK));
//! ```
//!
//! Sizes: [`Table::default_max_entries`] is the size compiled into the object, the one place a
//! table's default size is set: the production size (at least Cilium's defaults), which
//! `lb_control::TableSizes::default` reads. The loader creates every sizable table with the
//! size its `TableSizes` gives (aya's `EbpfLoader::map_max_entries`) without touching the
//! programs; a pinned table keeps the size it was created with, which the loader compares
//! against the size asked for.

use core::mem::size_of;

use crate::abi::{
    AffinityKey, AffinityValue, BackendAddrKey, BackendKey, BackendValue, CtEntry, CtKey,
    DatapathConfig, NodeKey, ServiceKey, ServiceValue,
};
use crate::counters::{DropReason, COUNTER_SLOTS};

/// The kind of an eBPF map, as far as the datapath uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapKind {
    /// `BPF_MAP_TYPE_HASH`, preallocated.
    Hash,
    /// `BPF_MAP_TYPE_LRU_HASH`: a hash that evicts its least recently used entries when full.
    LruHash,
    /// `BPF_MAP_TYPE_ARRAY`.
    Array,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`.
    PerCpuArray,
    /// `BPF_MAP_TYPE_RINGBUF` (no key or value; its size is in bytes).
    RingBuf,
    /// `BPF_MAP_TYPE_PROG_ARRAY`: programs for tail calls.
    ProgramArray,
}

impl MapKind {
    /// The kernel's `bpf_map_type` number.
    #[must_use]
    pub const fn bpf_map_type(self) -> u32 {
        match self {
            Self::Hash => 1,
            Self::Array => 2,
            Self::ProgramArray => 3,
            Self::PerCpuArray => 6,
            Self::RingBuf => 27,
            Self::LruHash => 9,
        }
    }
}

/// What becomes of a table across a loader restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pinning {
    /// Pinned under the pin directory's `maps/` and reused by the next loader after a check that
    /// its shape is this build's: state that must survive a restart (conntrack, services,
    /// configuration, counters).
    Reused,
    /// Pinned once its programs are attached and replaced by every loader: a stage array, which
    /// names one load's programs and is emptied when nothing holds it any more.
    PerLoad,
    /// Never pinned: per-packet or transient contents.
    Never,
}

/// One kernel table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Table {
    /// The map's name in the object (and its file name under the pin directory).
    pub name: &'static str,
    /// Its kind.
    pub kind: MapKind,
    /// Size of a key in bytes (`u32` indexes for arrays; 0 for a ring buffer).
    pub key_size: u32,
    /// Size of a value in bytes (0 for a ring buffer); `None` when the value type lives in a
    /// crate above this one (the pipeline's scratch area, `lb_datapath::Scratch`), whose size
    /// the loader's test checks there.
    pub value_size: Option<u32>,
    /// The size the programs declare (entries; bytes for a ring buffer): the default, set here
    /// only.
    pub default_max_entries: u32,
    /// Whether and how it is pinned.
    pub pinning: Pinning,
    /// What it holds (the same text as the constant's doc).
    pub doc: &'static str,
}

/// Declares the tables: a constant per table (its doc is the table's [`Table::doc`]) and [`ALL`].
///
/// Each entry: `/// doc`, `CONST = "MAP_NAME": Kind<Key, Value>[default size] pinning;` with
/// `_` for a value type this crate cannot name and `()` for none.
macro_rules! tables {
    (
        $(
            $(#[doc = $doc:literal])*
            $CONST:ident = $name:literal: $kind:ident<$K:tt, $V:tt>[$max:expr] $pin:ident;
        )*
    ) => {
        $(
            $(#[doc = $doc])*
            pub const $CONST: Table = Table {
                name: $name,
                kind: MapKind::$kind,
                key_size: size_of::<$K>() as u32,
                value_size: tables!(@value_size $V),
                default_max_entries: $max,
                pinning: Pinning::$pin,
                doc: concat!($($doc, "\n"),*),
            };
        )*

        /// Every kernel table, in declaration order.
        pub const ALL: [Table; [$($name),*].len()] = [$($CONST),*];
    };
    (@value_size _) => { None };
    (@value_size $V:tt) => { Some(size_of::<$V>() as u32) };
}

tables! {
    /// Conntrack entries: service entries and reverse-NAT entries, by flow tuple. A flow takes
    /// two, so the default 768Ki entries (Cilium's 512Ki TCP + 256Ki other) hold 393,216 flows.
    CONNTRACK = "LB_CT": Hash<CtKey, CtEntry>[768 * 1024] Reused;
    /// Services by frontend: 64Ki by default (Cilium's).
    SERVICES = "LB_SERVICES": Hash<ServiceKey, ServiceValue>[64 * 1024] Reused;
    /// Backend slots, by service and slot: by default room for 64 Maglev services of 16,381
    /// slots (random selection takes one slot per backend).
    BACKENDS = "LB_BACKENDS": Hash<BackendKey, BackendValue>[64 * 16_381] Reused;
    /// Peer nodes: tunnel packets are accepted from these only.
    NODES = "LB_NODES": Hash<NodeKey, u32>[16 * 1024] Reused;
    /// XDP devices whose packets may carry partial checksums that only their field shows (veths:
    /// their peer's local senders use checksum offload), by interface index; set by the loader.
    XDP_PARTIAL = "LB_XDP_PARTIAL": Hash<u32, u8>[1_024] Reused;
    /// The datapath configuration (one entry).
    CONFIG = "LB_CONFIG": Array<u32, DatapathConfig>[1] Reused;
    /// Counters, per CPU, by slot (`lb_api::counters`); userspace sums them.
    COUNTERS = "LB_COUNTERS": PerCpuArray<u32, u64>[COUNTER_SLOTS] Reused;
    /// Drop events for userspace (`DropEvent` records): 256 KiB, 4095 records. Transient: a
    /// restarted loader reads its own programs' ring.
    DROP_EVENTS = "LB_EVENTS": RingBuf<(), ()>[256 * 1024] Never;
    /// Why the packet being processed was dropped, per CPU (valid when the pipeline said Drop),
    /// read when its drop event is written.
    DROP_REASON = "LB_DROP_REASON": PerCpuArray<u32, DropReason>[1] Never;
    /// Per-packet working state of the pipeline, per CPU (parse result, entry under
    /// construction): too large for the 512-byte stack. Its contents do not outlive a packet.
    SCRATCH = "LB_SCRATCH": PerCpuArray<u32, _>[1] Never;
    /// The XDP pipeline's later stages, for tail calls: slot 0 holds `lb_xdp_new_flow` (set by
    /// the loader). A program array serves programs of one type only, hence one per hook.
    XDP_STAGES = "LB_XDP_STAGES": ProgramArray<u32, u32>[1] PerLoad;
    /// The TC pipeline's later stages: slot 0 holds `lb_tc_new_flow`.
    TC_STAGES = "LB_TC_STAGES": ProgramArray<u32, u32>[1] PerLoad;
    /// Session affinity (`SessionAffinity::ClientIp`): the backend a client was last sent to per
    /// service, and when. An LRU hash: when full, the kernel evicts the least recently used
    /// entries (that client's next flow picks a backend by hash and is recorded again); expired
    /// entries are replaced at lookup and removed by the affinity GC. 64Ki clients by default.
    AFFINITY = "LB_AFFINITY": LruHash<AffinityKey, AffinityValue>[64 * 1024] Reused;
    /// Each affinity service's active backends by address and port: where an affinity entry's
    /// backend is found, and whether it is still in the set. 64Ki by default (one per backend
    /// and service with session affinity, not per slot).
    BACKENDS_BY_ADDR = "LB_BE_BY_ADDR": Hash<BackendAddrKey, BackendValue>[64 * 1024] Reused;
    /// Conntrack keys the GC's scan found expired, for the sweep program (`lb_ct_sweep`) to
    /// re-check and delete in the kernel: one batch per run. Written by the GC only.
    CT_SWEEP = "LB_CT_SWEEP": Array<u32, CtKey>[64] Never;
}

/// The table named `name` in the object, if it is one of [`ALL`].
#[must_use]
pub fn by_name(name: &str) -> Option<&'static Table> {
    ALL.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_fit_the_kernel() {
        for (i, t) in ALL.iter().enumerate() {
            // BPF_OBJ_NAME_LEN is 16 with the terminating NUL.
            assert!(
                t.name.len() < 16,
                "{}: map names have at most 15 bytes",
                t.name
            );
            assert!(
                ALL.iter().skip(i + 1).all(|u| u.name != t.name),
                "{} declared twice",
                t.name
            );
            assert!(!t.doc.is_empty(), "{} has no doc", t.name);
            assert!(t.default_max_entries > 0, "{}", t.name);
        }
    }

    #[test]
    fn shapes_follow_the_kind() {
        for t in ALL {
            match t.kind {
                MapKind::RingBuf => {
                    assert_eq!((t.key_size, t.value_size), (0, Some(0)), "{}", t.name);
                    assert!(t.default_max_entries.is_power_of_two(), "{}", t.name);
                }
                MapKind::Array | MapKind::PerCpuArray | MapKind::ProgramArray => {
                    assert_eq!(t.key_size, 4, "{}: arrays are indexed by u32", t.name);
                }
                MapKind::Hash | MapKind::LruHash => assert!(t.key_size > 0, "{}", t.name),
            }
            if t.kind == MapKind::ProgramArray {
                assert_eq!(t.pinning, Pinning::PerLoad, "{}", t.name);
            }
        }
        assert_eq!(COUNTERS.default_max_entries, COUNTER_SLOTS);
        assert_eq!(by_name("LB_NOPE"), None);
    }
}
