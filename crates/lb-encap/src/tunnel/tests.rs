//! The room operations over the userspace packet.

use super::*;

fn frame(n: usize) -> std::vec::Vec<u8> {
    (0..n).map(|i| i as u8).collect()
}

extern crate std;

#[test]
fn room_moves_the_bytes_in_front_and_keeps_the_rest() {
    for at in [0usize, 8, 13, 14, 16, 34, 54, 62] {
        for len in [8usize, 24, 50, 70] {
            let f = frame(100);
            let mut buf = std::vec![0xeeu8; 128 + f.len()];
            buf[128..].copy_from_slice(&f);
            let mut p = HeadroomPacket::new(&mut buf, 128, f.len()).unwrap();
            p.insert_room(at, len, Room::BeforeIp).unwrap();
            let b = p.bytes().to_vec();
            assert_eq!(b.len(), f.len() + len);
            assert_eq!(&b[..at], &f[..at], "at {at} len {len}: the front");
            assert_eq!(&b[at + len..], &f[at..], "at {at} len {len}: the rest");
            // And out again.
            p.remove_room(at, len, Room::UdpTunnelDecap(None)).unwrap();
            assert_eq!(p.bytes(), &f[..], "at {at} len {len}: removed again");
        }
    }
}

#[test]
fn room_refuses_what_it_cannot_move_and_changes_nothing() {
    let f = frame(40);
    let mut buf = std::vec![0u8; 64 + f.len()];
    buf[64..].copy_from_slice(&f);
    let mut p = HeadroomPacket::new(&mut buf, 64, f.len()).unwrap();
    assert!(p.insert_room(MAX_ROOM_AT + 2, 8, Room::IpHeader).is_none());
    assert!(
        p.insert_room(4, 8, Room::IpHeader).is_none(),
        "fewer than 8 bytes in front"
    );
    assert!(
        p.insert_room(14, 4, Room::IpHeader).is_none(),
        "room under 8 bytes"
    );
    assert!(
        p.insert_room(14, 65, Room::IpHeader).is_none(),
        "no headroom"
    );
    assert!(
        p.remove_room(14, 30, Room::IpHeader).is_none(),
        "past the end"
    );
    assert_eq!(p.bytes(), &f[..]);
    p.truncate(20).unwrap();
    assert_eq!(p.bytes(), &f[..20]);
    assert!(p.truncate(21).is_none());
}
