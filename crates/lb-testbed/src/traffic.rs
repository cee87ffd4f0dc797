//! Real traffic between namespaces: the backend "pods"' servers and the client's requests.
//!
//! Every backend answers with which backend it is and which client address it saw
//! (`backend-N saw <addr>:<port>: ...`), so a test reads from the answer alone whether the client
//! address survived the path. Three servers per backend address:
//! - TCP on [`BACKEND_PORT`]: one answer line per request line;
//! - UDP on [`BACKEND_PORT`]: one answer datagram per datagram;
//! - HTTP/1.1 on [`HTTP_PORT`]: a minimal responder for the load generator (keep-alive unless the
//!   request says `Connection: close`);
//! - TCP echo on [`BULK_PORT`]: every byte back ([`bulk_echo`] streams megabytes through it, so
//!   segmentation offload and GRO carry real traffic).
//!
//! Every server stops when its [`Backends`] handle drops or its lifetime ends; every read is
//! bounded by a timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::within;

mod clients;
pub use clients::{
    connect, http_get, request, saw_prefix, udp_exchange, udp_request, Conversation,
};

/// The port the backends' line (TCP) and datagram (UDP) servers listen on.
pub const BACKEND_PORT: u16 = 8080;
/// The port the backends' HTTP/1.1 responder listens on.
pub const HTTP_PORT: u16 = 8081;
/// The port the backends' TCP echo (bulk transfers) listens on.
pub const BULK_PORT: u16 = 8082;
/// Bytes a bulk transfer of the scenarios sends each way (and gets back).
pub const BULK_BYTES: usize = 8 << 20;

/// Where one backend runs: its namespace, its name in answers, and its addresses.
#[derive(Debug, Clone)]
pub struct BackendSite {
    /// The backend's namespace.
    pub ns: String,
    /// The name it answers with (`backend-1`).
    pub name: String,
    /// Addresses to serve on (one socket per address and protocol, so the peer address is
    /// reported in its own family).
    pub addrs: Vec<IpAddr>,
}

/// Starts the TCP, UDP and HTTP servers of every site; they stop when the returned handle is
/// dropped, or after `lifetime` at the latest.
///
/// # Errors
/// If a server cannot bind (the address is not configured in the site's namespace).
pub fn start_backends(sites: &[BackendSite], lifetime: Duration) -> Result<Backends> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tcp = Vec::new();
    let mut other = Vec::new();
    for (i, site) in sites.iter().enumerate() {
        for ip in &site.addrs {
            let addr = SocketAddr::new(*ip, BACKEND_PORT);
            let http = SocketAddr::new(*ip, HTTP_PORT);
            let bulk = SocketAddr::new(*ip, BULK_PORT);
            let (listener, udp, http_listener, bulk_listener) = within(&site.ns, || {
                Ok::<_, std::io::Error>((
                    TcpListener::bind(addr)?,
                    UdpSocket::bind(addr)?,
                    TcpListener::bind(http)?,
                    TcpListener::bind(bulk)?,
                ))
            })?
            .with_context(|| format!("binding {addr}, {http} and {bulk} in {}", site.ns))?;
            listener.set_nonblocking(true)?;
            udp.set_read_timeout(Some(Duration::from_millis(100)))?;
            let name = site.name.clone();
            let (s1, s2, s3) = (Arc::clone(&stop), Arc::clone(&stop), Arc::clone(&stop));
            let (n1, n2, n3) = (name.clone(), name.clone(), name);
            tcp.push((
                i,
                std::thread::spawn(move || serve_lines(&listener, &n1, &s1, lifetime)),
            ));
            other.push(std::thread::spawn(move || {
                serve_udp(&udp, &n2, &s2, lifetime);
            }));
            other.push(std::thread::spawn(move || {
                serve_http(&http_listener, &n3, &s3, lifetime)
            }));
            let s4 = Arc::clone(&stop);
            other.push(std::thread::spawn(move || {
                serve_echo(&bulk_listener, &s4, lifetime)
            }));
        }
    }
    Ok(Backends {
        stop,
        sites: sites.len(),
        tcp,
        other,
    })
}

fn serve_lines(
    listener: &TcpListener,
    name: &str,
    stop: &Arc<AtomicBool>,
    lifetime: Duration,
) -> usize {
    let deadline = Instant::now() + lifetime;
    let mut served = 0;
    let mut conns = Vec::new();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match listener.accept() {
            Ok((s, peer)) => {
                served += 1;
                let (name, stop) = (name.to_string(), Arc::clone(stop));
                conns.push(std::thread::spawn(move || {
                    converse(s, peer, &name, &stop, deadline)
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    for c in conns {
        let _ = c.join();
    }
    served
}

/// Answers each UDP datagram with `<name> saw <peer>: <payload>` until `stop` or the deadline.
fn serve_udp(sock: &UdpSocket, name: &str, stop: &AtomicBool, lifetime: Duration) -> usize {
    let deadline = Instant::now() + lifetime;
    let mut served = 0;
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let payload = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
            let _ = sock.send_to(
                format!("{name} saw {peer}: {}", payload.trim()).as_bytes(),
                peer,
            );
            served += 1;
        }
    }
    served
}

/// Answers each line of a connection with `<name> saw <peer>: <line>` until EOF, `stop` or the
/// deadline (reads wake up every 200 ms to check).
fn converse(s: TcpStream, peer: SocketAddr, name: &str, stop: &AtomicBool, deadline: Instant) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match r.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if w.write_all(format!("{name} saw {peer}: {}\n", line.trim()).as_bytes())
                    .is_err()
                {
                    return;
                }
                line.clear();
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Waits up to `ms` for `listener` to have a connection to accept. A blocking accept would not
/// notice `stop`, and polling with sleeps would cap the connection rate the benchmark measures.
fn accept_ready(listener: &TcpListener, ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

/// The TCP echo for bulk transfers: one thread per connection, each sending back what it reads
/// until EOF, `stop` or the deadline.
fn serve_echo(listener: &TcpListener, stop: &Arc<AtomicBool>, lifetime: Duration) {
    let deadline = Instant::now() + lifetime;
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if !accept_ready(listener, 100) {
            continue;
        }
        if let Ok((mut s, _)) = listener.accept() {
            let stop = Arc::clone(stop);
            conns.push(std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if s.write_all(buf.get(..n).unwrap_or_default()).is_err() {
                                break;
                            }
                        }
                        Err(e) if is_timeout(&e) => continue,
                        Err(_) => break,
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
            }));
        }
    }
    for c in conns {
        let _ = c.join();
    }
}

/// A finished bulk transfer ([`bulk_echo`]).
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    /// Bytes sent, and as many received back, each compared with what was sent.
    pub bytes: usize,
    /// From connect to the last byte back.
    pub elapsed: Duration,
}

impl Bulk {
    /// Goodput in Mbit/s, both directions together.
    #[must_use]
    pub fn mbit_per_s(&self) -> f64 {
        (2 * self.bytes * 8) as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
}

/// The byte at position `i` of a bulk stream: no period a misplaced segment could hide in.
fn bulk_byte(i: usize) -> u8 {
    let x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8 ^ (i >> 16) as u8
}

/// Streams `bytes` bytes from namespace `ns` to the TCP echo at `target` ([`BULK_PORT`]) while
/// reading them back, and compares every byte it reads with what it sent: the byte stream end
/// to end, through whatever translates it on the way. Large writes, so the sender's stack
/// hands TSO/GSO packets to its device and receivers' GRO merges them.
///
/// # Errors
/// If the connection fails, a byte differs (its offset is named) or the transfer does not
/// finish within `timeout`.
pub fn bulk_echo(ns: &str, target: SocketAddr, bytes: usize, timeout: Duration) -> Result<Bulk> {
    let started = Instant::now();
    let s = within(ns, || TcpStream::connect_timeout(&target, timeout))?
        .with_context(|| format!("bulk: connect to {target} from {ns}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut w = s.try_clone()?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut chunk = vec![0u8; 256 * 1024];
        let mut sent = 0;
        while sent < bytes {
            let n = chunk.len().min(bytes - sent);
            for (k, b) in chunk.iter_mut().take(n).enumerate() {
                *b = bulk_byte(sent + k);
            }
            w.write_all(chunk.get(..n).unwrap_or_default())?;
            sent += n;
        }
        w.shutdown(std::net::Shutdown::Write)
    });
    let mut r = s;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < bytes {
        if started.elapsed() > timeout {
            bail!("bulk to {target}: {got} of {bytes} bytes back after {timeout:?}");
        }
        let n = r
            .read(&mut buf)
            .with_context(|| format!("bulk to {target}: reading after {got} bytes"))?;
        if n == 0 {
            bail!("bulk to {target}: the echo closed after {got} of {bytes} bytes");
        }
        for (k, b) in buf.iter().take(n).enumerate() {
            if *b != bulk_byte(got + k) {
                bail!("bulk to {target}: byte {} differs", got + k);
            }
        }
        got += n;
    }
    let elapsed = started.elapsed();
    match writer.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("bulk to {target}: sending: {e}"),
        Err(_) => bail!("bulk to {target}: the sender panicked"),
    }
    Ok(Bulk { bytes, elapsed })
}

/// The HTTP/1.1 responder: one thread per connection, finished threads reaped as it goes so a
/// long connection-rate run does not accumulate handles.
fn serve_http(listener: &TcpListener, name: &str, stop: &Arc<AtomicBool>, lifetime: Duration) {
    let deadline = Instant::now() + lifetime;
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if !accept_ready(listener, 100) {
            continue;
        }
        if let Ok((s, peer)) = listener.accept() {
            let (name, stop) = (name.to_string(), Arc::clone(stop));
            conns.push(std::thread::spawn(move || {
                http_connection(s, peer, &name, &stop, deadline)
            }));
            if conns.len() > 256 {
                conns.retain(|c| !c.is_finished());
            }
        }
    }
    for c in conns {
        let _ = c.join();
    }
}

/// Serves requests of one HTTP/1.1 connection: reads a request head (at most 8 KiB; bodies are
/// not expected), answers `200 OK` with `<name> saw <peer>`, and closes after a
/// `Connection: close` request, EOF, `stop` or the deadline.
fn http_connection(
    mut s: TcpStream,
    peer: SocketAddr,
    name: &str,
    stop: &AtomicBool,
    deadline: Instant,
) {
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let body = format!("{name} saw {peer}\n");
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let n = match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(_) => return,
        };
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        // Pipelined requests: answer every complete head in the buffer.
        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let req = String::from_utf8_lossy(head.get(..end).unwrap_or_default()).to_lowercase();
            head.drain(..end + 4);
            let close = req.contains("\r\nconnection: close") || req.contains(" http/1.0");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
                body.len(),
                if close { "Connection: close\r\n" } else { "" }
            );
            if s.write_all(resp.as_bytes()).is_err() || close {
                return;
            }
        }
        if head.len() > 8192 {
            let _ = s.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
        }
    }
}

/// Running backend servers.
#[derive(Debug)]
pub struct Backends {
    stop: Arc<AtomicBool>,
    sites: usize,
    tcp: Vec<(usize, JoinHandle<usize>)>,
    other: Vec<JoinHandle<()>>,
}

impl Backends {
    /// Stops the servers; returns how many line (TCP) connections each backend served, in the
    /// order of the sites.
    #[must_use]
    pub fn stop(mut self) -> Vec<usize> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.other.drain(..) {
            let _ = t.join();
        }
        let mut served = vec![0; self.sites];
        for (i, t) in self.tcp.drain(..) {
            if let Some(n) = served.get_mut(i) {
                *n += t.join().unwrap_or(0);
            }
        }
        served
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.other.drain(..) {
            let _ = t.join();
        }
        for (_, t) in self.tcp.drain(..) {
            let _ = t.join();
        }
    }
}
