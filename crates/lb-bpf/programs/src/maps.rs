//! The kernel tables, sized from their [`lb_api::tables`] entries (where every table is declared
//! once: its kind, sizes, pinning and doc). aya-ebpf names a map after its static, so each
//! static's name is its registry name; the loader's `tests/tables.rs` checks that every entry is
//! here with its registered kind, key, value and size.

use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf};
use lb_api::abi::{
    AffinityKey, AffinityValue, BackendAddrKey, BackendKey, BackendValue, CtEntry, CtKey,
    DatapathConfig, NodeKey, ServiceKey, ServiceValue,
};
use lb_api::counters::DropReason;
use lb_api::tables;

/// Conntrack entries: service entries and reverse-NAT entries.
#[map]
pub(crate) static LB_CT: HashMap<CtKey, CtEntry> =
    HashMap::with_max_entries(tables::CONNTRACK.default_max_entries, 0);
/// Services by frontend.
#[map]
pub(crate) static LB_SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(tables::SERVICES.default_max_entries, 0);
/// Backend slots.
#[map]
pub(crate) static LB_BACKENDS: HashMap<BackendKey, BackendValue> =
    HashMap::with_max_entries(tables::BACKENDS.default_max_entries, 0);
/// Peer nodes: tunnel packets are accepted from these only.
#[map]
pub(crate) static LB_NODES: HashMap<NodeKey, u32> =
    HashMap::with_max_entries(tables::NODES.default_max_entries, 0);
/// XDP devices whose packets may carry partial checksums that only their field shows (veths:
/// their peer's local senders use checksum offload), by interface index; set by the loader.
#[map]
pub(crate) static LB_XDP_PARTIAL: HashMap<u32, u8> =
    HashMap::with_max_entries(tables::XDP_PARTIAL.default_max_entries, 0);
/// The datapath configuration (one entry).
#[map]
pub(crate) static LB_CONFIG: Array<DatapathConfig> =
    Array::with_max_entries(tables::CONFIG.default_max_entries, 0);
/// Counters, per CPU; userspace sums them.
#[map]
pub(crate) static LB_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(tables::COUNTERS.default_max_entries, 0);

/// Drop events for userspace (`KernelDatapath::drain_drop_events`): 256 KiB, 4095 records.
/// Not pinned: its records are transient, and a restarted loader reads its own program's.
#[map]
pub(crate) static LB_EVENTS: RingBuf =
    RingBuf::with_byte_size(tables::DROP_EVENTS.default_max_entries, 0);

/// Why the packet being processed was dropped (per CPU; valid when the pipeline said Drop).
/// Never pinned, like the scratch slot.
#[map]
pub(crate) static LB_DROP_REASON: PerCpuArray<DropReason> =
    PerCpuArray::with_max_entries(tables::DROP_REASON.default_max_entries, 0);

/// Per-packet working state of the pipeline (parse result, entry under construction): too large
/// for the 512-byte stack. Never pinned: its contents do not outlive a packet.
#[map]
pub(crate) static LB_SCRATCH: PerCpuArray<lb_datapath::Scratch> =
    PerCpuArray::with_max_entries(tables::SCRATCH.default_max_entries, 0);

/// The XDP pipeline's later stages, for tail calls: slot [`NEW_FLOW_STAGE`] holds
/// `lb_xdp_new_flow` (set by the loader). A program array serves programs of one type only,
/// hence one per hook.
#[map]
pub(crate) static LB_XDP_STAGES: ProgramArray =
    ProgramArray::with_max_entries(tables::XDP_STAGES.default_max_entries, 0);
/// The TC pipeline's later stages: slot [`NEW_FLOW_STAGE`] holds `lb_tc_new_flow`.
#[map]
pub(crate) static LB_TC_STAGES: ProgramArray =
    ProgramArray::with_max_entries(tables::TC_STAGES.default_max_entries, 0);
/// The new-flow stage's slot in the stage arrays.
pub(crate) const NEW_FLOW_STAGE: u32 = 0;

/// Session affinity: the backend a client was last sent to per service, and when (an LRU
/// hash: when full, the least recently used entries go).
#[map]
pub(crate) static LB_AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(tables::AFFINITY.default_max_entries, 0);
/// Each service's active backends by address and port.
#[map]
pub(crate) static LB_BE_BY_ADDR: HashMap<BackendAddrKey, BackendValue> =
    HashMap::with_max_entries(tables::BACKENDS_BY_ADDR.default_max_entries, 0);
/// Conntrack keys the GC's scan found expired, one batch per run of `lb_ct_sweep`.
#[map]
pub(crate) static LB_CT_SWEEP: Array<CtKey> =
    Array::with_max_entries(tables::CT_SWEEP.default_max_entries, 0);
