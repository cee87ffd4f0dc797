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

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::{in_ns, ip, software_checksums, Namespaces};
use crate::traffic::BackendSite;
pub use crate::traffic::{Backends, Conversation, BACKEND_PORT};

/// The service's virtual IP.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The service port.
pub const VIP_PORT: u16 = 80;
/// The client's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 2);
/// Backend addresses (port [`BACKEND_PORT`]).
pub const BACKENDS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 200, 2, 2), Ipv4Addr::new(10, 200, 3, 2)];
/// Prefix of every namespace the testbed creates.
pub const PREFIX: &str = "lbtb-";

/// A topology of namespaces; dropping it removes them.
#[derive(Debug)]
pub struct Testbed {
    /// Client namespace.
    pub client: String,
    /// Node namespace (runs the datapath).
    pub node: String,
    /// Backend namespaces.
    pub backends: Vec<String>,
    /// Owns the namespaces: removes them when the testbed drops.
    _namespaces: Namespaces,
}

impl Testbed {
    /// Creates the namespaces, links, addresses and routes. `tag` distinguishes concurrent users
    /// (tests) in one process.
    ///
    /// # Errors
    /// When a namespace or link cannot be created (not root, iproute2 missing); whatever was
    /// created is removed again.
    pub fn create(tag: &str) -> Result<Self> {
        let ns = Namespaces::create(PREFIX, tag, &["c", "n", "b1", "b2"])?;
        let bed = Testbed {
            client: ns.name("c"),
            node: ns.name("n"),
            backends: vec![ns.name("b1"), ns.name("b2")],
            _namespaces: ns,
        };
        // From here on, `bed` removes what exists if a step fails.
        bed.wire()
            .with_context(|| format!("building the testbed {tag}"))?;
        Ok(bed)
    }

    /// Makes the node's own devices (`n0`, `n1`, `n2`) complete transmit checksums in software
    /// ([`software_checksums`]): what leaves the node towards a client or a backend then
    /// carries the checksum its partial seed implies, so a wrong seed fails the connection.
    /// The senders (client, backends) keep the kernel's defaults.
    ///
    /// # Errors
    /// If ethtool is missing or fails.
    pub fn complete_checksums_in_software(&self) -> Result<()> {
        for dev in ["n0", "n1", "n2"] {
            software_checksums(&self.node, dev)?;
        }
        Ok(())
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
        }
        in_ns(n, &["ip", "link", "set", "n0", "up"])?;
        in_ns(n, &["ip", "link", "set", "lo", "up"])?;
        in_ns(c, &["ip", "link", "set", "c0", "up"])?;
        in_ns(c, &["ip", "link", "set", "lo", "up"])?;
        in_ns(c, &["ip", "route", "add", "default", "via", "10.200.1.1"])?;
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
        crate::netns::remove_on_signal()
    }

    /// Runs `f` on this thread with the thread switched into namespace `ns`, then switches back.
    ///
    /// # Errors
    /// If the namespace cannot be entered.
    pub fn within<T>(ns: &str, f: impl FnOnce() -> T) -> Result<T> {
        crate::netns::within(ns, f)
    }

    /// Starts a TCP and a UDP server (and the HTTP responder of [`crate::traffic`]) in each
    /// backend namespace, answering with `backend-N saw <client address>`. Servers stop when the
    /// returned handle is dropped, or after `lifetime` at the latest.
    ///
    /// # Errors
    /// If a server cannot bind.
    pub fn start_backends(&self, lifetime: Duration) -> Result<Backends> {
        let sites: Vec<BackendSite> = self
            .backends
            .iter()
            .zip(BACKENDS)
            .enumerate()
            .map(|(i, (ns, addr))| BackendSite {
                ns: ns.clone(),
                name: format!("backend-{}", i + 1),
                addrs: vec![IpAddr::V4(addr)],
            })
            .collect();
        crate::traffic::start_backends(&sites, lifetime)
    }

    /// Opens a long-lived connection from the client namespace to `target`.
    ///
    /// # Errors
    /// If the namespace cannot be entered or the connection fails within `timeout`.
    pub fn connect(&self, target: SocketAddr, timeout: Duration) -> Result<Conversation> {
        Conversation::open(&self.client, target, 0, timeout)
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
                .map(|i| crate::traffic::udp_request(target, 0, i, timeout))
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
            (0..count)
                .map(|i| crate::traffic::request(target, 0, i, timeout))
                .collect()
        })
    }
}
