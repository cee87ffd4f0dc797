//! Incremental checksum updates (IPv4 and IPv6 addresses) equal a full recomputation.
#![no_main]

use lb_api::checksum::{checksum, l4_checksum_v6, update_u128, update_u32};
use libfuzzer_sys::fuzz_target;

fn same(a: u16, b: u16) -> bool {
    // 0x0000 and 0xffff are the same value in one's complement.
    a == b || (a ^ b) == 0xffff && (a == 0 || a == 0xffff)
}

fuzz_target!(|input: ([u8; 16], [u8; 16], [u8; 16], u8, Vec<u8>)| {
    let (src, dst, new, at, mut data) = input;
    let before = l4_checksum_v6(&src, &dst, 17, &data);
    assert!(same(update_u128(before, dst, new), l4_checksum_v6(&src, &new, 17, &data)));
    if data.len() >= 8 {
        let at = usize::from(at) % (data.len() / 2 - 1) * 2;
        let full = checksum(&data);
        let old: [u8; 4] = data[at..at + 4].try_into().unwrap();
        let n4 = [new[0], new[1], new[2], new[3]];
        data[at..at + 4].copy_from_slice(&n4);
        assert!(same(update_u32(full, old, n4), checksum(&data)));
    }
});
