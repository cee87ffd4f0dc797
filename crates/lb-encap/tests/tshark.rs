//! Geneve, the DSR carriers and the MTU errors decoded by an independent decoder: tshark
//! (Wireshark's dissectors). This kernel has no geneve driver, so tshark is the peer here.
//!
//! Needs the Debian package `tshark`; [`ensure_tshark`] installs it non-interactively when it is
//! missing and the test runs as root.

use std::process::Command;

use lb_api::flow::v4_addr;
use lb_api::wire::testing::{tcp_v4_frame, udp_v4_frame};
use lb_api::wire::{parse, SlicePacket};
use lb_encap::dsr::{dsr_v4_insert, dsr_v6_insert, DsrTarget, DSR_GENEVE_CLASS, DSR_GENEVE_TYPE};
use lb_encap::geneve::{geneve_encap, GeneveOption, GENEVE_PORT};
use lb_encap::mtu::icmp_too_big;
use lb_encap::{HeadroomPacket, OuterAddrs, TunnelConfig};

/// Makes sure `tshark` runs: installs the Debian package `tshark` (non-interactive) when it is
/// missing and we are root. Returns false (and says so) if it cannot; under `CI=true` that is a
/// failure.
pub fn ensure_tshark() -> bool {
    let works = || {
        Command::new("tshark")
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works() {
        return true;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        let _ = Command::new("sh")
            .args([
                "-c",
                "echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections; \
                 DEBIAN_FRONTEND=noninteractive apt-get install -y tshark",
            ])
            .status();
        if works() {
            return true;
        }
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "tshark is missing and could not be installed, CI=true");
    eprintln!("SKIPPED: tshark missing (apt-get install tshark)");
    false
}

/// Writes frames as a pcap file (Ethernet link type) and returns tshark's fields, one line per
/// frame, fields separated by '|'.
fn tshark_fields(name: &str, frames: &[Vec<u8>], fields: &[&str]) -> Vec<Vec<String>> {
    let mut pcap = Vec::new();
    pcap.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    pcap.extend_from_slice(&2u16.to_le_bytes());
    pcap.extend_from_slice(&4u16.to_le_bytes());
    pcap.extend_from_slice(&[0; 8]);
    pcap.extend_from_slice(&65535u32.to_le_bytes());
    pcap.extend_from_slice(&1u32.to_le_bytes());
    for f in frames {
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&(f.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&(f.len() as u32).to_le_bytes());
        pcap.extend_from_slice(f);
    }
    let path = std::env::temp_dir().join(format!("lb-encap-{name}-{}.pcap", std::process::id()));
    std::fs::write(&path, &pcap).unwrap();
    let mut cmd = Command::new("tshark");
    cmd.args(["-n", "-r"]).arg(&path).args([
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
        "-o",
        "tcp.check_checksum:TRUE",
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=;",
    ]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().unwrap();
    if std::env::var_os("LB_KEEP_PCAP").is_none() {
        let _ = std::fs::remove_file(&path);
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

fn headroom(frame: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 128 + frame.len()];
    b[128..].copy_from_slice(frame);
    b
}

#[test]
fn tshark_decodes_geneve_with_options() {
    if !ensure_tshark() {
        return;
    }
    let inner = tcp_v4_frame([10, 0, 0, 1], 40000, [10, 1, 0, 2], 8080, 0x02, b"");
    let target = DsrTarget::v4([10, 96, 0, 10], 80);
    let (d, n) = target.geneve_data();
    let opts = [GeneveOption {
        class: DSR_GENEVE_CLASS,
        ty: DSR_GENEVE_TYPE,
        data: &d[..n],
    }];
    let mut cfg = TunnelConfig::new(
        0x0012_3456,
        OuterAddrs::V4 {
            src: [192, 168, 1, 1],
            dst: [192, 168, 1, 2],
        },
        [2, 0, 0, 0, 0, 0xa],
        [2, 0, 0, 0, 0, 0xb],
    );
    cfg.port = GENEVE_PORT;
    let mut frames = Vec::new();
    for outer in [
        cfg.outer,
        OuterAddrs::V6 {
            src: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            dst: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        },
    ] {
        let mut c = cfg;
        c.outer = outer;
        let mut b = headroom(&inner);
        let mut p = HeadroomPacket::new(&mut b, 128, inner.len()).unwrap();
        geneve_encap(&mut p, &c, &opts, 7).unwrap();
        frames.push(p.bytes().to_vec());
    }
    let rows = tshark_fields(
        "geneve",
        &frames,
        &[
            "geneve.vni",
            "geneve.option.class",
            "geneve.option.type",
            "geneve.option.length",
            "geneve.option.unknown.data",
            "udp.checksum.status",
            "ip.src",
            "tcp.dstport",
            "geneve.flags.critical",
        ],
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in &rows {
        assert_eq!(r[0], "0x123456", "{r:?}");
        // Cilium's class and critical type, and the header's C flag for it.
        assert_eq!(r[1], "0x014b", "{r:?}");
        assert_eq!(r[2], "0x81", "{r:?}");
        assert!(matches!(r[8].as_str(), "1" | "True"), "C flag: {r:?}");
        assert!(r[3].split(';').all(|l| l == "12"), "{r:?}");
        assert_eq!(r[4], "0a60000a00500000", "10.96.0.10, port 80, pad: {r:?}");
        assert!(r[6].ends_with("10.0.0.1"), "inner IPv4 decoded: {r:?}");
        assert_eq!(r[7], "8080", "{r:?}");
    }
    // IPv4 outer: zero UDP checksum ("not present", status 3); IPv6 outer: good (1).
    assert_eq!(rows[0][5], "3", "{:?}", rows[0]);
    assert_eq!(rows[1][5], "1", "{:?}", rows[1]);
}

#[test]
fn tshark_decodes_dsr_carriers_and_too_big_errors() {
    if !ensure_tshark() {
        return;
    }
    let f4 = tcp_v4_frame([10, 0, 0, 1], 40000, [10, 1, 0, 2], 8080, 0x02, b"syn");
    let parsed = parse(&SlicePacket::new(&mut f4.clone())).unwrap();
    let mut b = headroom(&f4);
    let mut p = HeadroomPacket::new(&mut b, 128, f4.len()).unwrap();
    dsr_v4_insert(&mut p, &parsed, &DsrTarget::v4([10, 96, 0, 10], 80), 1500).unwrap();
    let dsr4 = p.bytes().to_vec();

    let mut f6 = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .tcp(40000, 8080, 1, 1000)
        .write(&mut f6, b"syn")
        .unwrap();
    let parsed = parse(&SlicePacket::new(&mut f6.clone())).unwrap();
    let mut b = headroom(&f6);
    let mut p = HeadroomPacket::new(&mut b, 128, f6.len()).unwrap();
    let svc6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
    dsr_v6_insert(&mut p, &parsed, &DsrTarget::v6(svc6, 443), 1500).unwrap();
    let dsr6 = p.bytes().to_vec();

    let big = udp_v4_frame([10, 0, 0, 1], 5000, [10, 1, 0, 2], 53, &[7u8; 1472]);
    let mut b = headroom(&big);
    let mut p = HeadroomPacket::new(&mut b, 128, big.len()).unwrap();
    icmp_too_big(&mut p, 1450, v4_addr([10, 0, 0, 254])).unwrap();
    let icmp4 = p.bytes().to_vec();

    let mut big6 = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .udp(5000, 53)
        .write(&mut big6, &[1u8; 1400])
        .unwrap();
    let mut b = headroom(&big6);
    let mut p = HeadroomPacket::new(&mut b, 128, big6.len()).unwrap();
    icmp_too_big(&mut p, 1430, [0xfc; 16]).unwrap();
    let icmp6 = p.bytes().to_vec();

    let rows = tshark_fields(
        "carriers",
        &[dsr4, dsr6, icmp4, icmp6],
        &[
            "ip.hdr_len",
            "ip.len",
            "ip.checksum.status",
            "tcp.checksum.status",
            "ipv6.opt.type",
            "ipv6.opt.length",
            "icmp.type",
            "icmp.code",
            "icmp.mtu",
            "icmp.checksum.status",
            "icmpv6.type",
            "icmpv6.mtu",
            "icmpv6.checksum.status",
            "udp.srcport",
        ],
    );
    assert_eq!(rows.len(), 4, "{rows:?}");
    let (d4, d6, i4, i6) = (&rows[0], &rows[1], &rows[2], &rows[3]);
    assert_eq!(
        (
            d4[0].as_str(),
            d4[1].as_str(),
            d4[2].as_str(),
            d4[3].as_str()
        ),
        ("28", "51", "1", "1"),
        "IPv4 header grew by the 8-byte option; IP and TCP checksums good: {d4:?}"
    );
    assert!(
        d6[4].split(';').any(|t| t == "0x1b"),
        "IPv6 option 0x1B: {d6:?}"
    );
    assert!(d6[5].split(';').any(|t| t == "20"), "{d6:?}");
    assert_eq!(d6[3], "1", "TCP checksum still good: {d6:?}");
    assert_eq!(
        (
            i4[6].as_str(),
            i4[7].as_str(),
            i4[8].as_str(),
            i4[9].as_str()
        ),
        ("3", "4", "1450", "1"),
        "frag needed: {i4:?}"
    );
    assert_eq!(i4[13], "5000", "the quote's UDP header is decoded: {i4:?}");
    assert_eq!(
        (i6[10].as_str(), i6[11].as_str(), i6[12].as_str()),
        ("2", "1430", "1"),
        "packet too big: {i6:?}"
    );
}
