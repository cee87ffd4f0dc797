//! Growing and shrinking a packet ([`AdjustHead`], [`HeadroomPacket`]), and VXLAN (RFC 7348)
//! encapsulation and decapsulation with IPv4 or IPv6 outer headers.
//!
//! * `room`: the room operations the carriers are written against, and their implementation by
//!   a packet's head and tail (XDP, userspace).
//! * `headroom`: [`HeadroomPacket`], the userspace packet.
//! * `config`: [`TunnelConfig`], [`OuterAddrs`], [`EncapError`], [`DecapError`].
//! * `encap`: [`vxlan_encap_offloaded`] (what the datapath runs), [`vxlan_encap`], and the outer
//!   headers every UDP tunnel shares.
//! * `decap`: [`vxlan_decap_parsed`] (what the datapath runs), [`vxlan_decap`].

mod config;
mod decap;
mod encap;
mod headroom;
mod room;

pub use config::{DecapError, EncapError, OuterAddrs, TunnelConfig, VxlanConfig};
pub(crate) use decap::strip_tunnel;
pub use decap::{vxlan_decap, vxlan_decap_parsed};
pub(crate) use encap::push_udp_tunnel;
pub use encap::{
    vxlan_encap, vxlan_encap_offloaded, InnerChecksum, MAX_LINK_PADDING, MAX_OFFLOADED_HEADERS,
};
pub use headroom::HeadroomPacket;
pub use room::{
    insert_room_at_head, remove_room_at_head, truncate_at_tail, AdjustHead, Room, MAX_ROOM_AT,
};

#[cfg(test)]
mod tests;
