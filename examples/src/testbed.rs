//! A client, a node and two backends, each in a network namespace of its own, wired with veth pairs:
//!
//! ```text
//!  client 10.200.1.2 ──c0─n0── node 10.200.1.1 ──n1─b0── backend-1 10.200.2.2:8080
//!                                   10.200.2.1 ──n2─b0── backend-2 10.200.3.2:8080
//!                                   10.200.3.1
//! ```
//!
//! The service VIP 10.96.0.10:80 is routed to the node by the client's default route. Every address
//! is inside namespaces this module creates; nothing else is ever a target. Namespaces are removed
//! when the [`Testbed`] is dropped, on Ctrl-C/SIGTERM (see [`Testbed::remove_on_signal`]), and
//! leftovers of an earlier run killed hard are removed by the next [`Testbed::create`].

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The service's virtual IP.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The service port.
pub const VIP_PORT: u16 = 80;
/// The client's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 2);
/// Backend addresses (port [`BACKEND_PORT`]).
pub const BACKENDS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 200, 2, 2), Ipv4Addr::new(10, 200, 3, 2)];
/// The port the backends listen on.
pub const BACKEND_PORT: u16 = 8080;
/// Prefix of every namespace the testbed creates.
pub const PREFIX: &str = "lbtb-";

/// Names of live testbed namespaces, for the signal handler.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A topology of namespaces; dropping it removes them.
#[derive(Debug)]
pub struct Testbed {
    /// Client namespace.
    pub client: String,
    /// Node namespace (runs the datapath).
    pub node: String,
    /// Backend namespaces.
    pub backends: Vec<String>,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (package iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn in_ns(ns: &str, cmd: &[&str]) -> Result<()> {
    let mut args = vec!["netns", "exec", ns];
    args.extend_from_slice(cmd);
    ip(&args)
}

fn delete_ns(name: &str) {
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

/// Removes namespaces left by a run that was killed before it could clean up.
fn remove_leftovers() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(PREFIX) {
                // Only ours: the pid in the name is not alive any more.
                let pid = name.rsplit('-').next().and_then(|p| p.parse::<i32>().ok());
                // SAFETY: kill with signal 0 only checks whether the process exists.
                let alive = pid.is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
                if !alive {
                    delete_ns(name);
                }
            }
        }
    }
}

impl Testbed {
    /// Creates the namespaces, links, addresses and routes. `tag` distinguishes concurrent users
    /// (tests) in one process.
    ///
    /// # Errors
    /// When a namespace or link cannot be created (not root, iproute2 missing); whatever was
    /// created is removed again.
    pub fn create(tag: &str) -> Result<Self> {
        remove_leftovers();
        let pid = std::process::id();
        let name = |role: &str| format!("{PREFIX}{tag}-{role}-{pid}");
        let bed = Testbed {
            client: name("c"),
            node: name("n"),
            backends: vec![name("b1"), name("b2")],
        };
        for ns in bed.all() {
            ip(&["netns", "add", &ns])?;
            LIVE.lock().map(|mut l| l.push(ns.clone())).ok();
        }
        // From here on, `bed` removes what exists if a step fails.
        bed.wire()
            .with_context(|| format!("building the testbed {tag}"))?;
        Ok(bed)
    }

    fn all(&self) -> Vec<String> {
        let mut v = vec![self.client.clone(), self.node.clone()];
        v.extend(self.backends.iter().cloned());
        v
    }

    fn wire(&self) -> Result<()> {
        let (c, n) = (self.client.as_str(), self.node.as_str());
        ip(&[
            "-n", n, "link", "add", "n0", "type", "veth", "peer", "name", "c0", "netns", c,
        ])?;
        in_ns(n, &["ip", "addr", "add", "10.200.1.1/24", "dev", "n0"])?;
        in_ns(c, &["ip", "addr", "add", "10.200.1.2/24", "dev", "c0"])?;
        for (i, b) in self.backends.iter().enumerate() {
            let nif = format!("n{}", i + 1);
            let net = i + 2;
            ip(&[
                "-n", n, "link", "add", &nif, "type", "veth", "peer", "name", "b0", "netns", b,
            ])?;
            in_ns(
                n,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.200.{net}.1/24"),
                    "dev",
                    &nif,
                ],
            )?;
            in_ns(
                b,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.200.{net}.2/24"),
                    "dev",
                    "b0",
                ],
            )?;
            in_ns(n, &["ip", "link", "set", &nif, "up"])?;
            in_ns(b, &["ip", "link", "set", "b0", "up"])?;
            in_ns(b, &["ip", "link", "set", "lo", "up"])?;
            in_ns(
                b,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.200.{net}.1"),
                ],
            )?;
            // Full checksums on the wire: XDP sees packets before the stack completes partial
            // (offloaded) checksums, and the incremental updates need complete ones.
            in_ns(b, &["ethtool", "-K", "b0", "tx", "off"])?;
        }
        in_ns(n, &["ip", "link", "set", "n0", "up"])?;
        in_ns(n, &["ip", "link", "set", "lo", "up"])?;
        in_ns(c, &["ip", "link", "set", "c0", "up"])?;
        in_ns(c, &["ip", "link", "set", "lo", "up"])?;
        in_ns(c, &["ip", "route", "add", "default", "via", "10.200.1.1"])?;
        in_ns(c, &["ethtool", "-K", "c0", "tx", "off"])?;
        in_ns(n, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        in_ns(n, &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"])?;
        in_ns(n, &["sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"])?;
        Ok(())
    }

    /// Makes Ctrl-C and SIGTERM remove every live testbed before the process exits.
    ///
    /// # Errors
    /// If a handler is already installed.
    pub fn remove_on_signal() -> Result<()> {
        ctrlc::set_handler(|| {
            eprintln!("\ninterrupted: removing the testbed namespaces");
            if let Ok(l) = LIVE.lock() {
                for ns in l.iter() {
                    delete_ns(ns);
                }
            }
            std::process::exit(130);
        })
        .context("installing the signal handler")
    }

    /// Runs `f` on this thread with the thread switched into namespace `ns`, then switches back.
    ///
    /// # Errors
    /// If the namespace cannot be entered.
    pub fn within<T>(ns: &str, f: impl FnOnce() -> T) -> Result<T> {
        let orig = File::open("/proc/thread-self/ns/net")
            .context("opening this thread's network namespace")?;
        let target = File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("opening namespace {ns}"))?;
        // SAFETY: both are open namespace file descriptors; setns only changes this thread's
        // network namespace.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns into {ns}: {}", std::io::Error::last_os_error());
        }
        let r = f();
        // SAFETY: as above, returning to the namespace the thread came from.
        if unsafe { libc::setns(orig.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns back from {ns}: {}", std::io::Error::last_os_error());
        }
        Ok(r)
    }

    /// Starts a TCP server in each backend namespace, answering every connection with
    /// `backend-N saw <client address>`. Servers stop when the returned handle is dropped, or after
    /// `lifetime` at the latest.
    ///
    /// # Errors
    /// If a server cannot bind.
    pub fn start_backends(&self, lifetime: Duration) -> Result<Backends> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut udp_threads = Vec::new();
        for (i, ns) in self.backends.iter().enumerate() {
            let addr = SocketAddrV4::new(BACKENDS[i], BACKEND_PORT);
            let listener = Self::within(ns, || TcpListener::bind(addr))?
                .with_context(|| format!("binding {addr}"))?;
            listener.set_nonblocking(true)?;
            let udp = Self::within(ns, || UdpSocket::bind(addr))?
                .with_context(|| format!("binding udp {addr}"))?;
            udp.set_read_timeout(Some(Duration::from_millis(100)))?;
            let (ustop, uname) = (Arc::clone(&stop), format!("backend-{}", i + 1));
            udp_threads.push(std::thread::spawn(move || {
                serve_udp(&udp, &uname, &ustop, lifetime)
            }));
            let stop = Arc::clone(&stop);
            let name = format!("backend-{}", i + 1);
            threads.push(std::thread::spawn(move || {
                serve(&listener, &name, &stop, lifetime)
            }));
        }
        Ok(Backends {
            stop,
            threads,
            udp_threads,
        })
    }

    /// Opens a long-lived connection from the client namespace to `target`.
    ///
    /// # Errors
    /// If the namespace cannot be entered or the connection fails within `timeout`.
    pub fn connect(&self, target: SocketAddr, timeout: Duration) -> Result<Conversation> {
        let stream = Self::within(&self.client, || {
            TcpStream::connect_timeout(&target, timeout)
        })?
        .with_context(|| format!("connect to {target}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Conversation { stream, reader })
    }

    /// Sends `count` UDP datagrams to `target` from the client namespace, each from a socket of
    /// its own (so each is a flow of its own), and returns each answer (or the error), waiting at
    /// most `timeout` for each.
    ///
    /// # Errors
    /// If the client namespace cannot be entered.
    pub fn udp_requests(
        &self,
        target: SocketAddr,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Result<String>>> {
        Self::within(&self.client, || {
            (0..count)
                .map(|i| udp_request(target, i, timeout))
                .collect()
        })
    }

    /// Connects from the client namespace to `target` `count` times, sending a line and returning
    /// each answer (or the error). Each connection is bounded by `timeout`.
    ///
    /// # Errors
    /// If the client namespace cannot be entered.
    pub fn requests(
        &self,
        target: SocketAddr,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Result<String>>> {
        Self::within(&self.client, || {
            (0..count).map(|i| request(target, i, timeout)).collect()
        })
    }
}

fn udp_request(target: SocketAddr, i: usize, timeout: Duration) -> Result<String> {
    let sock = UdpSocket::bind("0.0.0.0:0").context("binding a client UDP socket")?;
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

fn request(target: SocketAddr, i: usize, timeout: Duration) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&target, timeout)
        .with_context(|| format!("connect to {target}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
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

fn serve(listener: &TcpListener, name: &str, stop: &Arc<AtomicBool>, lifetime: Duration) -> usize {
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
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// A long-lived TCP connection from the client namespace, one line out, one line back.
#[derive(Debug)]
pub struct Conversation {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conversation {
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

/// Running backend servers.
#[derive(Debug)]
pub struct Backends {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<usize>>,
    udp_threads: Vec<JoinHandle<usize>>,
}

impl Backends {
    /// Stops the servers; returns how many connections each served.
    #[must_use]
    pub fn stop(mut self) -> Vec<usize> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.udp_threads.drain(..) {
            let _ = t.join();
        }
        self.threads
            .drain(..)
            .map(|t| t.join().unwrap_or(0))
            .collect()
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..).chain(self.udp_threads.drain(..)) {
            let _ = t.join();
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for ns in self.all() {
            delete_ns(&ns);
            if let Ok(mut l) = LIVE.lock() {
                l.retain(|n| n != &ns);
            }
        }
    }
}
