//! The client side of the traffic: requests, datagrams and connections to the backends'
//! servers, from a chosen local port or any, in the caller's namespace.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::FromRawFd;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::within;

/// What an answer starts with when `backend` saw the client address `client`
/// (`backend-1 saw 10.0.0.1:` or `backend-1 saw [fd00::1]:`).
#[must_use]
pub fn saw_prefix(backend: &str, client: IpAddr) -> String {
    // A SocketAddr with port 0 formats the address the way the servers print it.
    let shown = SocketAddr::new(client, 0).to_string();
    let addr = shown.trim_end_matches('0').trim_end_matches(':');
    format!("{backend} saw {addr}:")
}

fn unspecified(target: SocketAddr) -> IpAddr {
    if target.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    }
}

/// Sends one UDP datagram from `local_port` (0: any) to `target` and returns the answer, which
/// must come from `target` itself. Runs in the caller's namespace.
///
/// # Errors
/// If nothing answers within `timeout`, or the answer comes from another address.
pub fn udp_request(
    target: SocketAddr,
    local_port: u16,
    i: usize,
    timeout: Duration,
) -> Result<String> {
    let sock = UdpSocket::bind(SocketAddr::new(unspecified(target), local_port))
        .context("binding a client UDP socket")?;
    udp_exchange(&sock, target, i, timeout)
}

/// Sends `datagram <i>` on `sock` to `target`; returns the answer from `target`.
///
/// # Errors
/// If nothing answers within `timeout`, or the answer comes from another address.
pub fn udp_exchange(
    sock: &UdpSocket,
    target: SocketAddr,
    i: usize,
    timeout: Duration,
) -> Result<String> {
    sock.set_read_timeout(Some(timeout))?;
    sock.send_to(format!("datagram {i}").as_bytes(), target)
        .with_context(|| format!("send to {target}"))?;
    let mut buf = [0u8; 512];
    let (n, from) = sock
        .recv_from(&mut buf)
        .with_context(|| format!("no UDP answer from {target}"))?;
    if from != target {
        bail!("answer came from {from}, not from the service {target}");
    }
    Ok(String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned())
}

/// One TCP request: connects (from `local_port`, 0: any), sends `request <i>`, half-closes and
/// returns the answer. Runs in the caller's namespace.
///
/// # Errors
/// If the connection fails or no answer arrives within `timeout`.
pub fn request(target: SocketAddr, local_port: u16, i: usize, timeout: Duration) -> Result<String> {
    let mut s = connect(target, local_port, timeout)?;
    s.write_all(format!("request {i}\n").as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .context("reading the answer")?;
    if answer.is_empty() {
        bail!("empty answer from {target}");
    }
    Ok(answer.trim().to_string())
}

/// One HTTP/1.1 `GET /` with `Connection: close`; returns the whole response (head and body).
/// Runs in the caller's namespace.
///
/// # Errors
/// If the connection fails, the response is not `200 OK`, or nothing arrives within `timeout`.
pub fn http_get(target: SocketAddr, timeout: Duration) -> Result<String> {
    let mut s = connect(target, 0, timeout)?;
    let host = match target.ip() {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .with_context(|| format!("reading the HTTP response of {target}"))?;
    if !out.starts_with("HTTP/1.1 200 OK\r\n") {
        bail!("{target} answered {out:?}, not 200 OK");
    }
    Ok(out)
}

/// Connects to `target`, from `local_port` when it is not 0, with read/write timeouts of
/// `timeout`.
///
/// Binding a fixed port sets `SO_REUSEADDR`, so one client port can open connections to several
/// destinations at once — what a client reaching NodePorts on several nodes does, and what makes
/// the tuples collide at a backend that sees the client's own address.
///
/// # Errors
/// If the socket cannot be bound or the connection fails within `timeout`.
pub fn connect(target: SocketAddr, local_port: u16, timeout: Duration) -> Result<TcpStream> {
    let s = if local_port == 0 {
        TcpStream::connect_timeout(&target, timeout)
    } else {
        connect_from(target, local_port, timeout)
    }
    .with_context(|| format!("connect to {target} (local port {local_port})"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

fn connect_from(
    target: SocketAddr,
    local_port: u16,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let family = if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket creation; the fd is owned by the TcpStream below on every path.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns; the stream closes it when dropped.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros().min(999_999) as i32),
    };
    let local = SocketAddr::new(unspecified(target), local_port);
    // SAFETY: valid fd, option values of the sizes passed; SO_SNDTIMEO bounds connect().
    unsafe {
        check(libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            std::ptr::from_ref(&one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        ))?;
        check(libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            std::ptr::from_ref(&tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        ))?;
    }
    with_sockaddr(local, |sa, len| {
        // SAFETY: `sa` points to a sockaddr of `len` bytes for the call's duration.
        check(unsafe { libc::bind(fd, sa, len) })
    })?;
    with_sockaddr(target, |sa, len| {
        // SAFETY: as above.
        check(unsafe { libc::connect(fd, sa, len) })
    })?;
    Ok(stream)
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Calls `f` with `addr` as a C `sockaddr` and its length.
fn with_sockaddr<T>(
    addr: SocketAddr,
    f: impl FnOnce(*const libc::sockaddr, libc::socklen_t) -> T,
) -> T {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
            let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            f(
                std::ptr::from_ref(&sin).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above for sockaddr_in6.
            let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            f(
                std::ptr::from_ref(&sin6).cast(),
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

/// A long-lived TCP connection, one line out, one line back.
#[derive(Debug)]
pub struct Conversation {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conversation {
    /// Opens a conversation inside namespace `ns` (from `local_port`, 0: any).
    ///
    /// # Errors
    /// If the namespace cannot be entered or the connection fails within `timeout`.
    pub fn open(ns: &str, target: SocketAddr, local_port: u16, timeout: Duration) -> Result<Self> {
        let stream = within(ns, || connect(target, local_port, timeout))??;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Conversation { stream, reader })
    }

    /// Sends `line` and returns the answer line.
    ///
    /// # Errors
    /// If the connection fails or no answer arrives within the connection's timeout.
    pub fn ask(&mut self, line: &str) -> Result<String> {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .context("sending")?;
        let mut answer = String::new();
        self.reader
            .read_line(&mut answer)
            .context("waiting for the answer")?;
        if answer.is_empty() {
            bail!("connection closed");
        }
        Ok(answer.trim().to_string())
    }

    /// The client's local address.
    ///
    /// # Errors
    /// If the socket is gone.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.stream.local_addr()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saw_prefix_formats_addresses_as_the_servers_print_peers() {
        let v4: SocketAddr = "10.210.0.10:40000".parse().unwrap();
        let v6: SocketAddr = "[fd00:210::10]:40000".parse().unwrap();
        let line = |peer: SocketAddr| format!("backend-1 saw {peer}: request 0");
        assert!(line(v4).starts_with(&saw_prefix("backend-1", v4.ip())));
        assert!(line(v6).starts_with(&saw_prefix("backend-1", v6.ip())));
        // A different address must not match (10.210.0.1 is a prefix of 10.210.0.10 as text).
        let node: IpAddr = "10.210.0.1".parse().unwrap();
        assert!(!line(v4).starts_with(&saw_prefix("backend-1", node)));
        assert_eq!(saw_prefix("b", node), "b saw 10.210.0.1:");
        assert_eq!(
            saw_prefix("b", "fd00::10".parse().unwrap()),
            "b saw [fd00::10]:"
        );
    }
}
