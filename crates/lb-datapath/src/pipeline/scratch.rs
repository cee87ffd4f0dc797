//! The per-packet working state the pipeline keeps off the kernel's 512-byte stack.

use lb_api::abi::{BackendValue, CtEntry, CtKey};
use lb_api::wire::Parsed;

/// Per-packet working state too large for the kernel stack; see [`process`](super::process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Scratch {
    /// The packet's parse result; after [`process`](super::process) it still holds the flow as far as it was
    /// parsed, which the callers put into drop events.
    pub parsed: Parsed,
    /// The conntrack entry a path is building or working from.
    pub entry: CtEntry,
    /// A conntrack key a path is building (the reverse-NAT key of a new flow).
    pub key: CtKey,
    /// The peer node a tunnelled packet came from.
    pub peer: [u8; 16],
    /// The outcome counter of a path whose packet is still to be carried to its peer node,
    /// while the carrier is added (the path returned it in its outcome). Kept here, in map
    /// memory in the kernel, rather than on the stack: the verifier does not track it, so the
    /// carrier's code is verified once, not once per path.
    pub carry_counter: u8,
    /// Non-zero when the packet came out of the node-to-node tunnel (set by
    /// [`process_tracked`](super::process_tracked) for [`process_new`](super::process_new)).
    pub tunnelled: u8,
    /// The SNAT allocator's working state.
    pub snat: SnatScratch,
}

/// The SNAT allocator's working state in the [`Scratch`] area (and the backend the new flow
/// goes to): map memory in the kernel, which
/// the verifier does not track. Values it tracked would split the states it walks: the
/// attempts count after the loop would make it walk the rest of the path once for every
/// attempt the loop can end at, a noted port every later attempt's state in two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct SnatScratch {
    /// Attempts of the allocation for the flow being created. Written after the allocator's
    /// loop and read back from here before the histogram is counted.
    pub attempts: u32,
    /// The port whose flow in TIME_WAIT the allocator noted, to take over when the schedule
    /// finds no free port (zero: none).
    pub time_wait_port: u16,
    /// The service key of the flow holding a port looked at for a take-over.
    pub holder: CtKey,
    /// The backend chosen for the new flow (by session affinity or the flow hash), read by the
    /// new-flow path: here rather than in that path's frame, the deepest of its stage.
    pub backend: BackendValue,
}

impl Default for Scratch {
    fn default() -> Self {
        Self {
            parsed: Parsed::EMPTY,
            entry: CtEntry::default(),
            key: CtKey::default(),
            peer: [0; 16],
            carry_counter: 0,
            tunnelled: 0,
            snat: SnatScratch::default(),
        }
    }
}
