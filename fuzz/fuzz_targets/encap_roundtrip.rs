//! VXLAN and Geneve encap → decap is the identity for any inner frame, outer family and VNI.
#![no_main]

use lb_encap::geneve::{geneve_decap, geneve_encap, GeneveOption, GENEVE_PORT};
use lb_encap::{vxlan_decap, vxlan_encap, HeadroomPacket, OuterAddrs, TunnelConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u32, u32, bool, bool, Vec<u8>)| {
    let (vni, hash, six, geneve, inner) = input;
    let vni = vni & 0x00ff_ffff;
    let outer = if six {
        OuterAddrs::V6 { src: [0xfd; 16], dst: [0xfe; 16] }
    } else {
        OuterAddrs::V4 { src: [10, 0, 0, 1], dst: [10, 0, 0, 2] }
    };
    let mut cfg = TunnelConfig::new(vni, outer, [2; 6], [4; 6]);
    cfg.mtu = 9000;
    let headroom = 256;
    let mut buf = vec![0u8; headroom + inner.len()];
    buf[headroom..].copy_from_slice(&inner);
    let mut p = HeadroomPacket::new(&mut buf, headroom, inner.len()).unwrap();
    if geneve {
        cfg.port = GENEVE_PORT;
        let opt = [GeneveOption { class: 0x0102, ty: 1, data: &[1, 2, 3, 4] }];
        if geneve_encap(&mut p, &cfg, &opt, hash).is_err() {
            return;
        }
        let mut out = p.bytes().to_vec();
        let n = out.len();
        let mut q = HeadroomPacket::new(&mut out, 0, n).unwrap();
        let info = geneve_decap(&mut q, GENEVE_PORT).expect("our own Geneve decapsulates");
        assert_eq!(info.vni, vni);
        assert_eq!(q.bytes(), &inner[..]);
    } else {
        if vxlan_encap(&mut p, &cfg, hash).is_err() {
            return;
        }
        let mut out = p.bytes().to_vec();
        let n = out.len();
        let mut q = HeadroomPacket::new(&mut out, 0, n).unwrap();
        assert_eq!(vxlan_decap(&mut q, cfg.port, Some(vni)), Ok(vni));
        assert_eq!(q.bytes(), &inner[..]);
    }
});
