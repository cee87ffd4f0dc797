//! What every path gets besides the packet and the tables ([`Ctx`]), and what it returns
//! ([`Outcome`]).

use core::cell::Cell;

use lb_api::abi::{BackendValue, CtKey, DatapathConfig};
use lb_api::wire::Parsed;
use lb_api::Verdict;

use super::scratch::SnatScratch;

/// What every path needs besides the packet and the tables. Bundled so that each path is a
/// function of at most five arguments: in the kernel the paths are separate BPF subprograms
/// (`inline(never)`), which the BPF calling convention limits to five register arguments, and
/// which give each path its own stack frame instead of one frame holding all of them.
pub(super) struct Ctx<'a, C> {
    /// The packet's parse result.
    pub(super) parsed: &'a Parsed,
    /// The datapath's configuration.
    pub(super) cfg: &'a DatapathConfig,
    /// The caller's clock (see [`Ctx::now`]).
    pub(super) clock: &'a C,
    /// With `tunnelled`: the peer node the packet was decapsulated from.
    pub(super) peer: &'a [u8; 16],
    /// The packet came out of the node-to-node tunnel.
    pub(super) tunnelled: bool,
    /// See [`Scratch::snat`](super::Scratch::snat): one pointer for its fields (the context
    /// lives on the stack).
    pub(super) snat: &'a Cell<SnatScratch>,
}

impl<C> Ctx<'_, C> {
    /// [`SnatScratch::attempts`].
    #[inline(always)]
    pub(super) fn attempts(&self) -> &Cell<u32> {
        // SAFETY: `Cell<T>` has the layout of `T`, so a field of the `Cell`'s value is a
        // `Cell` of the field's type, with the same interior mutability (as
        // `Cell::as_slice_of_cells` does for slices).
        unsafe { &*(&raw mut (*self.snat.as_ptr()).attempts).cast::<Cell<u32>>() }
    }

    /// [`SnatScratch::time_wait_port`].
    #[inline(always)]
    pub(super) fn time_wait_port(&self) -> &Cell<u16> {
        // SAFETY: as in `attempts`.
        unsafe { &*(&raw mut (*self.snat.as_ptr()).time_wait_port).cast::<Cell<u16>>() }
    }

    /// [`SnatScratch::backend`]: the new flow's backend, once chosen.
    #[inline(always)]
    pub(super) fn backend(&self) -> &Cell<BackendValue> {
        // SAFETY: as in `attempts`.
        unsafe { &*(&raw mut (*self.snat.as_ptr()).backend).cast::<Cell<BackendValue>>() }
    }

    /// [`SnatScratch::holder`].
    #[inline(always)]
    pub(super) fn holder(&self) -> &Cell<CtKey> {
        // SAFETY: as in `attempts`.
        unsafe { &*(&raw mut (*self.snat.as_ptr()).holder).cast::<Cell<CtKey>>() }
    }
}

impl<C: Fn() -> u64> Ctx<'_, C> {
    /// Now: the config's fixed time when set, the clock otherwise. Read once per path, only
    /// where the path is about to write conntrack.
    #[inline(always)]
    pub(super) fn now(&self) -> u64 {
        super::now_ns(self.cfg, self.clock)
    }
}

/// What a path did with its packet: its one result, returned by value. A path that may not
/// apply to a packet returns `Option<Outcome>` (`None`: the next path's turn).
///
/// One byte (the carried outcomes are variants of their own rather than a counter payload, so
/// that the enum packs into [`Verdict`]'s spare values): the BPF subprograms return it in a
/// register, fully initialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Done with: the verdict, its counters bumped.
    Done(Verdict),
    /// The packet would exceed the underlay MTU once carried (the carrier per the flags of the
    /// scratch entry): it becomes the ICMP error its sender needs.
    TooBig,
    /// A reply translated (on the backend's node of a tunnelled flow: left as it is), to be
    /// carried back through the tunnel, then counted as `reply_translated`.
    CarryReply,
    /// A packet of a tracked flow translated, to be carried to the backend's node, then counted
    /// as `service_established`.
    CarryEstablished,
    /// The first packet of a flow translated and the flow recorded, to be carried to the
    /// backend's node, then counted as `service_new_flow`.
    CarryNewFlow,
    /// The first packet of a flow to a service without a usable backend: to be rejected
    /// (turned into a TCP reset or an ICMP "port unreachable" to the client) by the new-flow
    /// stage.
    Reject,
}

// A path's result fits one register, with "not this path's packet" (`None`) in the same byte.
const _: () = assert!(core::mem::size_of::<Option<Outcome>>() == 1);
