//! Which neighbour delivered each frame: a packet socket on one interface records the Ethernet
//! source and the IP/port tuple of every TCP and UDP frame, and the type, code and MTU of every
//! ICMP/ICMPv6 error. The mode tests use it at the client to
//! tell whether a reply came straight from the backend's node (DSR) or back through the ingress
//! node — an observation independent of the datapath's own counters.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::within;

/// Most frames one capture keeps (the rest are counted, not stored).
const MAX_FRAMES: usize = 100_000;

/// One captured TCP, UDP or ICMP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Ethernet source: the neighbour that put the frame on the link.
    pub eth_src: [u8; 6],
    /// IP protocol (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6).
    pub proto: u8,
    /// IP source and transport source port (port 0 for ICMP).
    pub src: SocketAddr,
    /// IP destination and transport destination port (port 0 for ICMP).
    pub dst: SocketAddr,
    /// Whether this host sent it (rather than received it).
    pub outgoing: bool,
    /// For ICMP and ICMPv6: type, code and the MTU field.
    pub icmp: Option<Icmp>,
}

/// The head of an ICMP or ICMPv6 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmp {
    /// Type (IPv4 3 + code 4: fragmentation needed; IPv6 2: packet too big).
    pub kind: u8,
    /// Code.
    pub code: u8,
    /// The MTU the message announces (IPv4: next-hop MTU, bytes 6-7; IPv6: bytes 4-7); 0 for
    /// other messages.
    pub mtu: u32,
}

impl Icmp {
    /// Whether this says "too big for the path" (IPv4 fragmentation needed, IPv6 packet too big).
    #[must_use]
    pub fn is_too_big(&self, v6: bool) -> bool {
        if v6 {
            self.kind == 2
        } else {
            self.kind == 3 && self.code == 4
        }
    }
}

/// One frame as it was on the wire, with its direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// Whether this host sent it (rather than received it).
    pub outgoing: bool,
    /// The frame's bytes from the Ethernet header on (at most 2048).
    pub bytes: Vec<u8>,
}

/// A running capture; [`Capture::stop`] returns what it saw: [`Frame`] summaries, or the whole
/// frames ([`Capture::start_raw`]).
#[derive(Debug)]
pub struct Capture<T = Frame> {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<T>>>,
}

impl Capture<Frame> {
    /// Starts capturing on `dev` in namespace `ns`, for `lifetime` at most. Frames sent or
    /// received after this returns are seen.
    ///
    /// # Errors
    /// If the packet socket cannot be opened or bound (not root, no such interface).
    pub fn start(ns: &str, dev: &str, lifetime: Duration) -> Result<Self> {
        Self::spawn(ns, dev, lifetime, parse)
    }
}

impl Capture<RawFrame> {
    /// As [`Capture::start`], keeping every frame whole.
    ///
    /// # Errors
    /// If the packet socket cannot be opened or bound (not root, no such interface).
    pub fn start_raw(ns: &str, dev: &str, lifetime: Duration) -> Result<Self> {
        Self::spawn(ns, dev, lifetime, |b, outgoing| {
            Some(RawFrame {
                outgoing,
                bytes: b.to_vec(),
            })
        })
    }
}

impl<T: Send + 'static> Capture<T> {
    fn spawn(
        ns: &str,
        dev: &str,
        lifetime: Duration,
        keep: fn(&[u8], bool) -> Option<T>,
    ) -> Result<Self> {
        let fd =
            within(ns, || open(dev))?.with_context(|| format!("capturing on {dev} in {ns}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || read_frames(&fd, &s, lifetime, keep));
        Ok(Capture {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the capture and returns the frames, in arrival order.
    #[must_use]
    pub fn stop(mut self) -> Vec<T> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl<T> Drop for Capture<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open(dev: &str) -> Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket creation; the fd is owned right below.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if raw < 0 {
        bail!("packet socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let name = std::ffi::CString::new(dev).context("interface name")?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {dev}");
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = i32::try_from(ifindex).context("ifindex")?;
    // SAFETY: `sll` is a sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&sll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        bail!(
            "binding the packet socket to {dev}: {}",
            std::io::Error::last_os_error()
        );
    }
    // Reads wake up every 50 ms to check `stop`.
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: valid fd and a timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        bail!("SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sends one raw Ethernet `frame` out of `dev` in namespace `ns` — for frames the stack would not
/// build, such as one with a foreign source address.
///
/// # Errors
/// If the packet socket cannot be opened or the frame is not sent whole.
pub fn inject(ns: &str, dev: &str, frame: &[u8]) -> Result<()> {
    let fd = within(ns, || open(dev))?.with_context(|| format!("injecting on {dev} in {ns}"))?;
    // SAFETY: `frame` is valid for its length; the socket is bound to `dev`.
    let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    if usize::try_from(n).ok() != Some(frame.len()) {
        bail!(
            "sending a {}-byte frame on {dev}: {}",
            frame.len(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Reads frames until stopped (or `lifetime` is over), then what is still queued in the socket:
/// a short exchange may be over before this thread first runs, and its frames must count.
fn read_frames<T>(
    fd: &OwnedFd,
    stop: &AtomicBool,
    lifetime: Duration,
    keep: fn(&[u8], bool) -> Option<T>,
) -> Vec<T> {
    let deadline = Instant::now() + lifetime;
    let mut frames = Vec::new();
    let mut buf = [0u8; 2048];
    // After the stop: non-blocking reads until the queue is empty, at most this many.
    let mut drain = MAX_FRAMES;
    // Every read returns a frame or times out after 50 ms: a bound on the count as well as the
    // time, whatever the clock does.
    let timeouts = usize::try_from(lifetime.as_millis() / 50).unwrap_or(usize::MAX);
    let mut reads = timeouts.saturating_add(4 * MAX_FRAMES);
    loop {
        reads = reads.saturating_sub(1);
        let stopping = stop.load(Ordering::Relaxed) || Instant::now() >= deadline || reads == 0;
        if stopping {
            if drain == 0 {
                break;
            }
            drain -= 1;
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `from` are valid for the sizes passed.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                if stopping { libc::MSG_DONTWAIT } else { 0 },
                std::ptr::from_mut(&mut from).cast(),
                &mut len,
            )
        };
        let Ok(n) = usize::try_from(n) else {
            if stopping {
                break; // the queue is empty
            }
            continue; // timeout or EINTR: check stop and the deadline
        };
        let outgoing = from.sll_pkttype == libc::PACKET_OUTGOING;
        if let Some(f) = keep(buf.get(..n).unwrap_or_default(), outgoing) {
            if frames.len() < MAX_FRAMES {
                frames.push(f);
            }
        }
    }
    frames
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Ethernet + IPv4 (any header length) or IPv6 (no extension headers) + TCP/UDP ports.
fn parse(b: &[u8], outgoing: bool) -> Option<Frame> {
    let eth_src: [u8; 6] = b.get(6..12)?.try_into().ok()?;
    let ip = b.get(14..)?;
    let (proto, src, dst, l4) = match u16_at(b, 12)? {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (
                *ip.get(9)?,
                IpAddr::V4(Ipv4Addr::from(src)),
                IpAddr::V4(Ipv4Addr::from(dst)),
                ip.get(ihl..)?,
            )
        }
        0x86dd => {
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (
                *ip.get(6)?,
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                ip.get(40..)?,
            )
        }
        _ => return None,
    };
    let (ports, icmp) = match proto {
        6 | 17 => ((u16_at(l4, 0)?, u16_at(l4, 2)?), None),
        1 | 58 => {
            let (kind, code) = (*l4.first()?, *l4.get(1)?);
            let mtu = match (proto, kind, code) {
                (1, 3, 4) => u32::from(u16_at(l4, 6)?),
                (58, 2, _) => u32::from(u16_at(l4, 4)?) << 16 | u32::from(u16_at(l4, 6)?),
                _ => 0,
            };
            ((0, 0), Some(Icmp { kind, code, mtu }))
        }
        _ => return None,
    };
    Some(Frame {
        eth_src,
        proto,
        src: SocketAddr::new(src, ports.0),
        dst: SocketAddr::new(dst, ports.1),
        outgoing,
        icmp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut f = vec![0xaa; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 7]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    #[test]
    fn tcp_over_ipv4_with_options_gives_the_tuple_and_the_sender() {
        let mut f = eth(0x0800);
        // IHL 6 (one option word), proto 6, 10.96.0.10 -> 10.210.0.10.
        f.extend_from_slice(&[0x46, 0, 0, 48, 0, 0, 0x40, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&[10, 96, 0, 10, 10, 210, 0, 10, 1, 1, 1, 1]);
        f.extend_from_slice(&[0, 80, 0x9c, 0x40]);
        f.extend_from_slice(&[0; 16]);
        let fr = parse(&f, false).unwrap();
        assert_eq!(fr.eth_src, [2, 0, 0, 0, 0, 7]);
        assert_eq!(fr.src, "10.96.0.10:80".parse().unwrap());
        assert_eq!(fr.dst, "10.210.0.10:40000".parse().unwrap());
        assert_eq!((fr.proto, fr.icmp), (6, None));
    }

    #[test]
    fn icmp_fragmentation_needed_and_icmpv6_packet_too_big_give_their_mtu() {
        let mut f = eth(0x0800);
        f.extend_from_slice(&[0x45, 0, 0, 56, 0, 0, 0, 0, 64, 1, 0, 0]);
        f.extend_from_slice(&[10, 210, 0, 1, 10, 210, 0, 10]);
        f.extend_from_slice(&[3, 4, 0, 0, 0, 0, 0x05, 0xa0]); // next-hop MTU 1440
        let i = parse(&f, false).unwrap().icmp.unwrap();
        assert!(i.is_too_big(false) && i.mtu == 1440);

        let mut f = eth(0x86dd);
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 58, 64]);
        f.extend_from_slice(&[0xfd; 32]);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0x05, 0x78]); // MTU 1400
        let i = parse(&f, false).unwrap().icmp.unwrap();
        assert!(i.is_too_big(true) && i.mtu == 1400);
        assert!(!i.is_too_big(false));
    }

    #[test]
    fn truncated_and_foreign_frames_are_skipped() {
        assert_eq!(parse(&[0; 10], false), None);
        assert_eq!(parse(&eth(0x0806), false), None); // ARP
        let mut f = eth(0x0800);
        f.extend_from_slice(&[0x45, 0, 0, 20]);
        assert_eq!(parse(&f, false), None);
    }
}
