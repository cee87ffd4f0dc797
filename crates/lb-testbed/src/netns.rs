//! Network namespaces owned by a test or example: created with unique names, removed when their
//! [`Namespaces`] guard drops, on Ctrl-C/SIGTERM (see [`remove_on_signal`]), and — for runs killed
//! too hard to clean up — by the next [`Namespaces::create`] with the same prefix.
//!
//! Every topology of this crate ([`crate::testbed`], [`crate::cluster`]) is built from these
//! pieces, so the cleanup rules live in one place.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

/// Names of live namespaces of this process, for the signal handler.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Runs `ip <args>` (iproute2), failing with its stderr.
///
/// # Errors
/// If `ip` is missing or the command fails.
pub fn ip(args: &[&str]) -> Result<()> {
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

/// Runs `cmd` inside namespace `ns` (`ip netns exec`).
///
/// # Errors
/// If the command fails.
pub fn in_ns(ns: &str, cmd: &[&str]) -> Result<()> {
    let mut args = vec!["netns", "exec", ns];
    args.extend_from_slice(cmd);
    ip(&args)
}

/// Runs `cmd` inside namespace `ns` and returns its stdout.
///
/// # Errors
/// If the command cannot start or fails.
pub fn in_ns_output(ns: &str, cmd: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .context("running `ip netns exec` (package iproute2)")?;
    if !out.status.success() {
        bail!(
            "`{}` in {ns} failed: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn delete(name: &str) {
    let _ = Command::new("ip").args(["netns", "del", name]).output();
    if let Ok(mut l) = LIVE.lock() {
        l.retain(|n| n != name);
    }
}

/// Removes namespaces named `<prefix>...-<pid>` whose process is gone (a run killed before it
/// could clean up). Namespaces of live processes — concurrent tests — are left alone.
fn remove_leftovers(prefix: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(prefix) {
                let pid = name.rsplit('-').next().and_then(|p| p.parse::<i32>().ok());
                // SAFETY: kill with signal 0 only checks whether the process exists.
                let alive = pid.is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
                if !alive {
                    delete(name);
                }
            }
        }
    }
}

/// A set of namespaces named `<prefix><tag>-<role>-<pid>`; dropping it removes them.
#[derive(Debug)]
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// Creates one namespace per role. `tag` distinguishes concurrent users (tests) in one process;
    /// the pid lets a later run recognise leftovers of a dead one.
    ///
    /// # Errors
    /// If a namespace cannot be created (not root, iproute2 missing); those already created are
    /// removed again.
    pub fn create(prefix: &str, tag: &str, roles: &[&str]) -> Result<Self> {
        remove_leftovers(prefix);
        let pid = std::process::id();
        let mut set = Namespaces { names: Vec::new() };
        for role in roles {
            let name = format!("{prefix}{tag}-{role}-{pid}");
            // Registered before creation so a signal during `ip netns add` still cleans up.
            LIVE.lock().map(|mut l| l.push(name.clone())).ok();
            set.names.push(name.clone());
            ip(&["netns", "add", &name])?;
        }
        Ok(set)
    }

    /// The namespace created for `role`.
    ///
    /// # Panics
    /// If `role` was not passed to [`Namespaces::create`] (a programming error in the topology).
    #[must_use]
    pub fn name(&self, role: &str) -> String {
        let pid = std::process::id();
        let suffix = format!("-{role}-{pid}");
        self.names
            .iter()
            .find(|n| n.ends_with(&suffix))
            .cloned()
            .unwrap_or_else(|| panic!("no namespace for role {role}"))
    }

    /// Every namespace of the set.
    #[must_use]
    pub fn all(&self) -> &[String] {
        &self.names
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.names {
            delete(ns);
        }
    }
}

/// Makes Ctrl-C and SIGTERM remove every live namespace of this process before it exits.
///
/// # Errors
/// If a handler is already installed.
pub fn remove_on_signal() -> Result<()> {
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: removing the network namespaces");
        if let Ok(l) = LIVE.lock() {
            for ns in l.iter() {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
        }
        std::process::exit(130);
    })
    .context("installing the signal handler")
}

/// Runs `f` on this thread with the thread switched into namespace `ns`, then switches back.
/// Sockets created inside `f` stay in `ns`.
///
/// # Errors
/// If the namespace cannot be entered or left.
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

/// How a test node's own devices transmit checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeChecksums {
    /// The kernel's default (transmit checksum offload on): a partial checksum passes between
    /// veths as it is, and the receiver trusts it.
    Offload,
    /// Completed in software on the node's devices ([`software_checksums`]): a wrong partial
    /// seed reaches the receiver as a wrong checksum.
    Software,
}

/// Makes `dev` in `ns` complete transmit checksums in software (`ethtool -K dev tx off`), as a
/// NIC without checksum offload, a tunnel device or a bridge to a physical port does: a packet
/// whose checksum is still partial (`CHECKSUM_PARTIAL`) leaves with the checksum its seed
/// implies. Between veths with the kernel's default offload, a partial checksum reaches the
/// receiver unchecked, so a wrong seed would go unnoticed; tests apply this to a node's own
/// devices (never to a sender's) so that it cannot.
///
/// # Errors
/// If ethtool is missing or fails.
pub fn software_checksums(ns: &str, dev: &str) -> Result<()> {
    in_ns(ns, &["ethtool", "-K", dev, "tx", "off"]).context("ethtool (package ethtool)")
}
