//! The kernel's own `vxlan` device as the real peer of lb-encap's VXLAN code, both directions:
//!
//! 1. A frame our `vxlan_encap` emits, written to a veth with an AF_PACKET socket in namespace A,
//!    is decapsulated by the vxlan device in namespace B and delivered to a UDP socket there.
//! 2. A datagram sent through B's vxlan device is captured in A with an AF_PACKET socket and
//!    `vxlan_decap` turns it into the inner frame the kernel built.
//!
//! Namespaces are uniquely named and removed by a Drop guard on every exit path; every loop is
//! bounded in count and in time; traffic goes only to addresses inside these namespaces.

mod common;

use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lb_api::wire::{parse, SlicePacket};
use lb_encap::{vxlan_decap, vxlan_encap, HeadroomPacket, OuterAddrs, VxlanConfig, VXLAN_PORT};

const VNI: u32 = 42;
const A_OUTER: [u8; 4] = [10, 201, 0, 1];
const B_OUTER: [u8; 4] = [10, 201, 0, 2];
const A_INNER: [u8; 4] = [10, 202, 0, 1];
const B_INNER: [u8; 4] = [10, 202, 0, 2];
const VX_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb2];
const A_INNER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa1];

/// Two namespaces and a veth pair between them; deleted on drop.
struct Netns {
    a: String,
    b: String,
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn output(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Netns {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let ns = Self {
            a: format!("lbvxa-{id}"),
            b: format!("lbvxb-{id}"),
        };
        // Constructed before the first command so that Drop cleans up whatever was made.
        run(&["ip", "netns", "add", &ns.a]);
        run(&["ip", "netns", "add", &ns.b]);
        run(&[
            "ip", "link", "add", "va", "netns", &ns.a, "type", "veth", "peer", "name", "vb",
            "netns", &ns.b,
        ]);
        let a = |cmd: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", &ns.a];
            v.extend_from_slice(cmd);
            run(&v);
        };
        let b = |cmd: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", &ns.b];
            v.extend_from_slice(cmd);
            run(&v);
        };
        a(&["ip", "addr", "add", "10.201.0.1/24", "dev", "va"]);
        a(&["ip", "link", "set", "va", "up"]);
        a(&["ip", "link", "set", "lo", "up"]);
        b(&["ip", "addr", "add", "10.201.0.2/24", "dev", "vb"]);
        b(&["ip", "link", "set", "vb", "up"]);
        b(&["ip", "link", "set", "lo", "up"]);
        b(&[
            "ip",
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            "42",
            "dstport",
            "4789",
            "local",
            "10.201.0.2",
            "remote",
            "10.201.0.1",
            "dev",
            "vb",
        ]);
        b(&["ip", "link", "set", "vx0", "address", "02:00:00:00:00:b2"]);
        b(&["ip", "addr", "add", "10.202.0.2/24", "dev", "vx0"]);
        b(&["ip", "link", "set", "vx0", "up"]);
        b(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
        b(&["sysctl", "-qw", "net.ipv4.conf.vx0.rp_filter=0"]);
        // No ARP through the tunnel: the inner peer's MAC is known.
        b(&[
            "ip",
            "neigh",
            "add",
            "10.202.0.1",
            "lladdr",
            "02:00:00:00:00:a1",
            "dev",
            "vx0",
            "nud",
            "permanent",
        ]);
        ns
    }

    fn mac(&self, ns: &str, dev: &str) -> [u8; 6] {
        let s = output(&[
            "ip",
            "netns",
            "exec",
            ns,
            "cat",
            &format!("/sys/class/net/{dev}/address"),
        ]);
        let v: Vec<u8> = s
            .split(':')
            .map(|x| u8::from_str_radix(x, 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`; sockets it creates stay in it.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on a valid namespace fd changes only this thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// An AF_PACKET socket bound to `dev`, with a receive timeout.
fn packet_socket(dev: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(dev).unwrap();
    // SAFETY: name is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(ifindex > 0, "no {dev}");
    // SAFETY: sockaddr_ll is plain old data; zero is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll and its size is passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: tv is a valid timeval and its size is passed.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    fd
}

fn send_frame(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: frame is a valid buffer of the given length.
    let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(
        n,
        frame.len() as isize,
        "send: {}",
        std::io::Error::last_os_error()
    );
}

fn recv_frame(fd: &OwnedFd, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: buf is a valid writable buffer of the given length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    (n > 0).then_some(n as usize)
}

fn cfg(a_mac: [u8; 6], b_mac: [u8; 6]) -> VxlanConfig {
    VxlanConfig::new(
        VNI,
        OuterAddrs::V4 {
            src: A_OUTER,
            dst: B_OUTER,
        },
        a_mac,
        b_mac,
    )
}

#[test]
fn our_vxlan_and_the_kernel_vxlan_device_understand_each_other() {
    if !common::privileged("our_vxlan_and_the_kernel_vxlan_device_understand_each_other") {
        return;
    }
    let ns = Netns::new();
    let (a_mac, b_mac) = (ns.mac(&ns.a, "va"), ns.mac(&ns.b, "vb"));
    let pkt_a = in_netns(&ns.a, || packet_socket("va"));

    // 1. Ours → kernel.
    let rx = in_netns(&ns.b, || {
        let s = UdpSocket::bind("10.202.0.2:5555").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    });
    let payload = b"hello through our vxlan";
    let mut inner = lb_api::wire::testing::udp_v4_frame(A_INNER, 4444, B_INNER, 5555, payload);
    inner[0..6].copy_from_slice(&VX_MAC);
    inner[6..12].copy_from_slice(&A_INNER_MAC);
    let headroom = 64;
    let mut buf = vec![0u8; headroom + inner.len()];
    buf[headroom..].copy_from_slice(&inner);
    let mut p = HeadroomPacket::new(&mut buf, headroom, inner.len()).unwrap();
    vxlan_encap(&mut p, &cfg(a_mac, b_mac), 0x1234_5678).unwrap();
    let frame = p.bytes().to_vec();
    let mut got = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    for _ in 0..10 {
        if Instant::now() > deadline {
            break;
        }
        send_frame(&pkt_a, &frame);
        let mut b = [0u8; 256];
        if let Ok((n, from)) = rx.recv_from(&mut b) {
            got = Some((b[..n].to_vec(), from));
            break;
        }
    }
    let (data, from) = got.expect("the kernel vxlan device delivered our encapsulated datagram");
    assert_eq!(data, payload);
    assert_eq!(from, "10.202.0.1:4444".parse().unwrap());

    // 2. Kernel → ours.
    let tx = in_netns(&ns.b, || UdpSocket::bind("10.202.0.2:0").unwrap());
    let kpayload = b"hello from the kernel vxlan";
    let mut decapped = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    'outer: for _ in 0..10 {
        tx.send_to(kpayload, "10.202.0.1:6666").unwrap();
        for _ in 0..50 {
            if Instant::now() > deadline {
                break 'outer;
            }
            let mut b = vec![0u8; 2048];
            let Some(n) = recv_frame(&pkt_a, &mut b) else {
                break;
            };
            let mut hp = HeadroomPacket::new(&mut b, 0, n).unwrap();
            if let Ok(vni) = vxlan_decap(&mut hp, VXLAN_PORT, None) {
                let inner = hp.bytes();
                // The device also tunnels its own traffic (IPv6 neighbour discovery, MLD): keep
                // only the IPv4/UDP datagram this test sent.
                let is_ours = inner.len() > 34 && inner[12..14] == [0x08, 0x00] && inner[23] == 17;
                if is_ours {
                    decapped = Some((vni, inner.to_vec()));
                    break 'outer;
                }
            }
        }
    }
    let (vni, mut inner) = decapped.expect("captured and decapsulated a kernel vxlan frame");
    assert_eq!(vni, VNI);
    assert_eq!(
        &inner[0..6],
        &A_INNER_MAC,
        "inner destination: the static neighbour"
    );
    assert_eq!(&inner[6..12], &VX_MAC, "inner source: the vxlan device");
    let parsed = parse(&SlicePacket::new(&mut inner)).unwrap();
    assert_eq!(&parsed.tuple.src[..4], &B_INNER);
    assert_eq!(&parsed.tuple.dst[..4], &A_INNER);
    assert_eq!(parsed.tuple.dst_port, 6666);
    assert_eq!(&inner[parsed.l4_offset + 8..], kpayload);
}
