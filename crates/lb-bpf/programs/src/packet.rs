//! Packet access for the programs: [`PacketAccess`] over `data`/`data_end`, and the kernel's
//! helpers to resize a packet and update its checksums.

use core::mem::size_of;

use aya_ebpf::bindings::{__sk_buff, bpf_adj_room_mode, xdp_md};
use aya_ebpf::helpers::{
    bpf_l4_csum_replace, bpf_skb_adjust_room, bpf_skb_change_tail, bpf_xdp_adjust_head,
    bpf_xdp_adjust_tail,
};
use lb_api::checksum::l4_flags;
use lb_api::wire::{PacketAccess, MAX_HEADER_OFFSET};
use lb_encap::{AdjustHead, Room};

use crate::maps::LB_XDP_PARTIAL;
use crate::zerocopy_shim::{self, FromBytes, Immutable, IntoBytes, KnownLayout};

/// [`PacketAccess`] over `data`/`data_end`: every access is checked against `data_end` with a
/// pointer comparison the verifier can follow. At XDP (`TC` false; `ctx` the `xdp_md`) the
/// packet grows and shrinks at its head and tail ([`AdjustHead`]'s room operations move the
/// bytes in front); at TC (`ctx` the `__sk_buff`) room is inserted and removed inside the
/// packet by `bpf_skb_adjust_room` and the packet cut by `bpf_skb_change_tail`, which keep the
/// skb's metadata (GSO, protocol, inner headers) right, and its checksums are updated through
/// the kernel's helpers, which know the skb's checksum state.
pub(crate) struct DirectPacket<const TC: bool> {
    /// `data`.
    pub(crate) start: usize,
    /// `data_end`.
    pub(crate) end: usize,
    /// The program's context (null: none, as for the parse-only baseline).
    pub(crate) ctx: *mut core::ffi::c_void,
}

/// The XDP packet.
pub(crate) type XdpPacket = DirectPacket<false>;
/// The TC packet.
pub(crate) type TcPacket = DirectPacket<true>;

impl<const TC: bool> DirectPacket<TC> {
    /// Re-reads `data`/`data_end` after the packet moved (or a helper that may move it ran:
    /// the verifier forgets every packet pointer after such a call).
    #[inline(always)]
    fn reload(&mut self) {
        if TC {
            // SAFETY: `ctx` is the program's `__sk_buff`, valid for the whole run.
            let skb = unsafe { &*self.ctx.cast::<__sk_buff>() };
            self.start = skb.data as usize;
            self.end = skb.data_end as usize;
        } else {
            // SAFETY: `ctx` is the program's `xdp_md`, valid for the whole run.
            let md = unsafe { &*self.ctx.cast::<xdp_md>() };
            self.start = md.data as usize;
            self.end = md.data_end as usize;
        }
    }
}

impl<const TC: bool> DirectPacket<TC> {
    /// `bpf_skb_adjust_room` by `len_diff` bytes at `at`: after the Ethernet header
    /// (`BPF_ADJ_ROOM_MAC`) or after the fixed IPv4/IPv6 header, by the skb's protocol
    /// (`BPF_ADJ_ROOM_NET`); nowhere else (a VLAN-tagged packet's protocol is its tag's, which
    /// the helper refuses anyway).
    #[inline(always)]
    fn adjust_room(&mut self, at: usize, len_diff: i32, room: Room) -> Option<()> {
        // SAFETY: `ctx` is the program's `__sk_buff`; `protocol` is a readable field.
        let protocol = unsafe { (*self.ctx.cast::<__sk_buff>()).protocol };
        let base = if protocol == u32::from(0x0800u16.to_be()) {
            20
        } else if protocol == u32::from(0x86ddu16.to_be()) {
            40
        } else {
            return None;
        };
        let mode = if at == 14 {
            bpf_adj_room_mode::BPF_ADJ_ROOM_MAC
        } else if at == 14 + base {
            bpf_adj_room_mode::BPF_ADJ_ROOM_NET
        } else {
            return None;
        };
        // SAFETY: `ctx` is the program's `__sk_buff`; the helper checks the packet and the
        // flags itself and fails without changing anything.
        let r = unsafe { bpf_skb_adjust_room(self.ctx.cast(), len_diff, mode, room.tc_flags()) };
        self.reload();
        (r == 0).then_some(())
    }
}

impl<const TC: bool> AdjustHead for DirectPacket<TC> {
    #[inline(always)]
    fn adjust_head(&mut self, delta: i32) -> Option<()> {
        if TC || self.ctx.is_null() {
            return None;
        }
        // SAFETY: `ctx` is the program's context; the helper checks the headroom and the new
        // start itself and fails without changing anything.
        if unsafe { bpf_xdp_adjust_head(self.ctx.cast(), delta) } != 0 {
            return None;
        }
        self.reload();
        Some(())
    }

    #[inline(always)]
    fn adjust_tail(&mut self, delta: i32) -> Option<()> {
        if TC || self.ctx.is_null() {
            return None;
        }
        // SAFETY: as above; the helper checks the tailroom and the minimum length.
        if unsafe { bpf_xdp_adjust_tail(self.ctx.cast(), delta) } != 0 {
            return None;
        }
        self.reload();
        Some(())
    }

    /// At TC, an IPv4 or IPv6 packet (the skb's protocol): the kernel resizes no other (a
    /// VLAN-tagged packet's protocol is its tag's). At XDP any packet (but the parse-only
    /// baseline's, which has no context).
    #[inline(always)]
    fn resizable(&self) -> bool {
        if !TC {
            return !self.ctx.is_null();
        }
        // SAFETY: `ctx` is the program's `__sk_buff`; `protocol` is a readable field.
        let protocol = unsafe { (*self.ctx.cast::<__sk_buff>()).protocol };
        protocol == u32::from(0x0800u16.to_be()) || protocol == u32::from(0x86ddu16.to_be())
    }

    #[inline(always)]
    fn insert_room(&mut self, at: usize, len: usize, room: Room) -> Option<()> {
        if !TC {
            return lb_encap::insert_room_at_head(self, at, len);
        }
        if len > 0xfff {
            return None;
        }
        self.adjust_room(at, len as i32, room)
    }

    /// At TC, not to an inner frame that is not IP: the kernel keeps the skb's protocol (the
    /// outer family's) and could set no other, so the stack would misread the frame.
    #[inline(always)]
    fn remove_room(&mut self, at: usize, len: usize, room: Room) -> Option<()> {
        if !TC {
            return lb_encap::remove_room_at_head(self, at, len);
        }
        if len > 0xfff || room == Room::UdpTunnelDecap(None) {
            return None;
        }
        self.adjust_room(at, -(len as i32), room)
    }

    #[inline(always)]
    fn truncate(&mut self, len: usize) -> Option<()> {
        if !TC {
            return lb_encap::truncate_at_tail(self, len);
        }
        if len > self.len() {
            return None;
        }
        // SAFETY: `ctx` is the program's `__sk_buff`; the helper checks the length and fails
        // without changing anything.
        let r = unsafe { bpf_skb_change_tail(self.ctx.cast(), len as u32, 0) };
        self.reload();
        (r == 0).then_some(())
    }
}

impl<const TC: bool> PacketAccess for DirectPacket<TC> {
    #[inline(always)]
    fn len(&self) -> usize {
        if TC && !self.ctx.is_null() {
            // The whole packet: a GSO packet (TSO from a pod, GRO-merged segments) is mostly
            // outside the linear part the program sees; its headers are pulled in
            // (`tc_packet`), the rest is there all the same.
            // SAFETY: `ctx` is the program's `__sk_buff`; `len` is a readable field.
            return unsafe { (*self.ctx.cast::<__sk_buff>()).len } as usize;
        }
        self.end - self.start
    }

    #[inline(always)]
    fn load<T: FromBytes + KnownLayout + Immutable + Copy>(&self, offset: usize) -> Option<T> {
        if offset > MAX_HEADER_OFFSET {
            return None;
        }
        let p = self.start + offset;
        if p + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: `p .. p + size_of::<T>()` lies inside the packet (checked against `end`), and
        // `T: FromBytes` accepts any bytes; the read is unaligned-safe.
        Some(unsafe { core::ptr::read_unaligned(p as *const T) })
    }

    #[inline(always)]
    fn store<T: IntoBytes + Immutable>(&mut self, offset: usize, value: &T) -> Option<()> {
        if offset > MAX_HEADER_OFFSET {
            return None;
        }
        let p = self.start + offset;
        if p + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: `p .. p + size_of::<T>()` lies inside the writable packet buffer.
        unsafe { core::ptr::write_unaligned(p as *mut T, core::ptr::read(value)) };
        Some(())
    }

    /// At XDP on a device the loader registered (a veth): XDP cannot see the skb's checksum
    /// state there. TC can (its helper reads it), and a NIC hands up no partial checksums.
    const MAY_HIDE_PARTIAL: bool = !TC;

    #[inline(always)]
    fn partial_by_field(&self) -> bool {
        if TC || self.ctx.is_null() {
            return false;
        }
        // SAFETY: `ctx` is the program's `xdp_md`; `ingress_ifindex` is a readable field.
        let ifindex = unsafe { (*self.ctx.cast::<xdp_md>()).ingress_ifindex };
        LB_XDP_PARTIAL.get_ptr(&ifindex).is_some()
    }

    /// At TC the skb's `gso_size`; XDP sees no GSO packets.
    #[inline(always)]
    fn gso_size(&self) -> u16 {
        if !TC {
            return 0;
        }
        // SAFETY: `ctx` is the program's `__sk_buff`; `gso_size` is a readable field.
        unsafe { (*self.ctx.cast::<__sk_buff>()).gso_size as u16 }
    }

    /// At TC through `bpf_l4_csum_replace`, which knows the skb's checksum state (complete,
    /// partial, or `CHECKSUM_COMPLETE` with its sum to keep right); at XDP, by the state the
    /// pipeline found by the field (`FOUND_PARTIAL`, [`lb_api::checksum::l4_replace`]).
    #[inline(always)]
    fn l4_csum_replace(&mut self, at: usize, from: u32, to: u32, flags: u64) -> Option<()> {
        if !TC {
            let check: zerocopy_shim::U16 = self.load(at)?;
            let partial = flags >> 63 != 0; // FOUND_PARTIAL, without a branch
            let c = lb_api::checksum::l4_replace(check.get(), partial, from, to, flags);
            return self.store(at, &zerocopy_shim::U16::new(c));
        }
        if at > MAX_HEADER_OFFSET {
            return None;
        }
        // The helper sums the values as they lie in memory (network order).
        let flags = flags & l4_flags::KERNEL_MASK;
        let (from, to) = if flags & l4_flags::SIZE_MASK == 4 {
            (u64::from(from.to_be()), u64::from(to.to_be()))
        } else {
            (
                u64::from((from as u16).to_be()),
                u64::from((to as u16).to_be()),
            )
        };
        // SAFETY: `ctx` is the program's `__sk_buff`; the helper checks the offset against the
        // packet and fails without writing.
        let r = unsafe { bpf_l4_csum_replace(self.ctx.cast(), at as u32, from, to, flags) };
        self.reload();
        (r == 0).then_some(())
    }
}
