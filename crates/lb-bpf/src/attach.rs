//! Attaching the pipelines: XDP, TC (clsact), pinned links an agent restart swaps its programs
//! into, and the registry of devices whose packets may carry partial checksums.

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{tc, SchedClassifier, TcAttachType, Xdp, XdpMode};
use lb_api::tables::{TC_STAGES, XDP_PARTIAL, XDP_STAGES};

use crate::{Error, KernelDatapath, Program};

impl KernelDatapath {
    /// Whether the XDP program treats packets received on `iface` as possibly carrying partial
    /// checksums (`CHECKSUM_PARTIAL`, which XDP cannot see): then a TCP/UDP packet whose
    /// checksum field holds its pseudo-header sum is taken for one, and its rewrites move
    /// that sum (for the device or the stack to complete) instead of the checksum. A complete
    /// checksum that happens to equal the sum (1 in 65536) is then taken for a partial one and
    /// left wrong; so this is for devices that do hand up partial checksums, which
    /// [`Self::attach_xdp`] registers by itself.
    ///
    /// # Errors
    /// [`Error::NoSuchInterface`], or [`Error::Map`] if the table cannot be written.
    pub fn set_xdp_partial_checksums(&mut self, iface: &str, on: bool) -> Result<(), Error> {
        let c = std::ffi::CString::new(iface).map_err(|_| Error::NoSuchInterface(iface.into()))?;
        // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            return Err(Error::NoSuchInterface(iface.into()));
        }
        self.set_xdp_partial_checksums_ifindex(ifindex, on)
    }

    /// [`Self::set_xdp_partial_checksums`] by interface index (1, loopback, is the device
    /// `BPF_PROG_TEST_RUN` runs XDP programs on).
    ///
    /// # Errors
    /// [`Error::Map`] if the table cannot be written.
    pub fn set_xdp_partial_checksums_ifindex(
        &mut self,
        ifindex: u32,
        on: bool,
    ) -> Result<(), Error> {
        let mut m: HashMap<&mut MapData, u32, u8> = self.hash(XDP_PARTIAL)?;
        let r = if on {
            m.insert(ifindex, 1, 0)
        } else {
            match m.remove(&ifindex) {
                Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                r => r,
            }
        };
        r.map_err(|source| Error::Map {
            map: XDP_PARTIAL.name,
            source,
        })
    }

    /// Where the link of `kind` on `iface` is pinned, when pinning.
    fn link_pin(&self, kind: &str, iface: &str) -> Result<Option<PathBuf>, Error> {
        let Some(dir) = &self.pin_dir else {
            return Ok(None);
        };
        let links = dir.join("links");
        std::fs::create_dir_all(&links).map_err(|e| Error::Pin {
            path: links.clone(),
            source: e.into(),
        })?;
        Ok(Some(links.join(format!("{kind}-{iface}"))))
    }

    /// Attaches the XDP pipeline to `iface`.
    ///
    /// On a device whose packets may carry partial checksums (a veth or a tun/tap: local
    /// senders behind it use checksum offload, and the kernel keeps the checksum's state in
    /// the skb, where XDP cannot see it), it first registers the device with
    /// [`Self::set_xdp_partial_checksums`], so that the program decides by the checksum field.
    /// A NIC hands up complete checksums only; its packets are not second-guessed.
    ///
    /// # Errors
    /// [`Error::NoSuchInterface`] or [`Error::Attach`].
    pub fn attach_xdp(&mut self, iface: &str, mode: XdpMode) -> Result<(), Error> {
        check_iface(iface)?;
        if hands_up_partial_checksums(iface) {
            self.set_xdp_partial_checksums(iface, true)?;
        }
        self.attach_xdp_program(Program::Xdp, "xdp", iface, mode)?;
        self.pin_stages(XDP_STAGES)
    }

    /// Attaches the pass-only program [`Program::XdpTxPeer`] to `iface`, the peer of a veth
    /// that runs the XDP pipeline ([`Self::attach_xdp`]), in the peer's namespace (call it
    /// from a thread in that namespace).
    ///
    /// The pipeline sends ICMP errors (fragmentation needed, packet too big) back out of the
    /// device a packet came in on with `XDP_TX`. A veth queues such frames for its peer, and
    /// Linux wakes the peer to take them only when the peer runs an XDP program of its own:
    /// without one they stay queued (GRO on the peer does not help while the veth sends with
    /// TSO, the default). A NIC needs nothing. Every packet passes; the peer keeps its
    /// settings.
    ///
    /// # Errors
    /// [`Error::NoSuchInterface`] or [`Error::Attach`].
    pub fn attach_xdp_tx_peer(&mut self, iface: &str, mode: XdpMode) -> Result<(), Error> {
        check_iface(iface)?;
        self.attach_xdp_program(Program::XdpTxPeer, "xdp-tx-peer", iface, mode)
    }

    /// Attaches the XDP `program` to `iface`; when pinning, through the link pinned as `kind`
    /// for `iface` (an earlier loader's link gets this program swapped in atomically).
    fn attach_xdp_program(
        &mut self,
        program: Program,
        kind: &str,
        iface: &str,
        mode: XdpMode,
    ) -> Result<(), Error> {
        let link_pin = self.link_pin(kind, iface)?;
        let name = program.name();
        let x: &mut Xdp = crate::program::typed(&mut self.ebpf, program)?;
        let attach_err = |e: Box<dyn std::error::Error + Send + Sync>| Error::Attach {
            program: name,
            iface: iface.into(),
            source: e,
        };
        let Some(pin) = link_pin else {
            x.attach(iface, mode).map_err(|e| attach_err(e.into()))?;
            return Ok(());
        };
        if pin.exists() {
            // An earlier loader's link: swap our program into it atomically (no packet sees a
            // missing program), and leave the pin in place for the next restart.
            swap_xdp_link(x, &pin).map_err(attach_err)?;
        } else {
            let id = x.attach(iface, mode).map_err(|e| attach_err(e.into()))?;
            let link = x.take_link(id).map_err(|e| attach_err(e.into()))?;
            let fd = FdLink::try_from(link).map_err(|e| attach_err(e.into()))?;
            fd.pin(&pin).map_err(|e| Error::Pin {
                path: pin.clone(),
                source: e.into(),
            })?;
        }
        Ok(())
    }

    /// Attaches the TC pipeline to `iface` in `direction` (adds the clsact qdisc if missing).
    ///
    /// # Errors
    /// [`Error::NoSuchInterface`] or [`Error::Attach`].
    pub fn attach_tc(&mut self, iface: &str, direction: TcAttachType) -> Result<(), Error> {
        check_iface(iface)?;
        let dir_name = match direction {
            TcAttachType::Ingress => "ingress",
            TcAttachType::Egress => "egress",
            TcAttachType::Custom(_) => "custom",
        };
        let link_pin = self.link_pin(&format!("tc-{dir_name}"), iface)?;
        let _ = tc::qdisc_add_clsact(iface); // EEXIST when already there
        let name = Program::Tc.name();
        let c: &mut SchedClassifier = crate::program::typed(&mut self.ebpf, Program::Tc)?;
        let attach_err = |e: Box<dyn std::error::Error + Send + Sync>| Error::Attach {
            program: name,
            iface: iface.into(),
            source: e,
        };
        let Some(pin) = link_pin else {
            c.attach(iface, direction)
                .map_err(|e| attach_err(e.into()))?;
            return Ok(());
        };
        if pin.exists() {
            swap_tc_link(c, &pin).map_err(attach_err)?;
        } else {
            let id = c
                .attach(iface, direction)
                .map_err(|e| attach_err(e.into()))?;
            let link = c.take_link(id).map_err(|e| attach_err(e.into()))?;
            let fd = FdLink::try_from(link).map_err(|e| attach_err(e.into()))?;
            fd.pin(&pin).map_err(|e| Error::Pin {
                path: pin.clone(),
                source: e.into(),
            })?;
        }
        self.pin_stages(TC_STAGES)
    }

    /// Swaps this load's programs into every link pinned under the pin directory's `links/`
    /// (XDP and TC attachments of an earlier loader), each in one `BPF_LINK_UPDATE`; returns
    /// how many. What [`Self::attach_xdp`] and [`Self::attach_tc`] do for one interface, for
    /// all of them at once and without their names: a migration of resized tables switches
    /// every attachment to the new tables before it copies what changed meanwhile.
    pub(crate) fn swap_pinned_links(&mut self) -> Result<usize, Error> {
        let Some(dir) = &self.pin_dir else {
            return Ok(0);
        };
        let Ok(entries) = std::fs::read_dir(dir.join("links")) else {
            return Ok(0);
        };
        let mut swapped = 0;
        for e in entries.flatten() {
            let pin = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let (program, res) = if name.starts_with("xdp-") {
                let x: &mut Xdp = crate::program::typed(&mut self.ebpf, Program::Xdp)?;
                (Program::Xdp, swap_xdp_link(x, &pin))
            } else if name.starts_with("tc-") {
                let c: &mut SchedClassifier = crate::program::typed(&mut self.ebpf, Program::Tc)?;
                (Program::Tc, swap_tc_link(c, &pin))
            } else {
                continue;
            };
            res.map_err(|source| Error::Attach {
                program: program.name(),
                iface: name,
                source,
            })?;
            swapped += 1;
        }
        Ok(swapped)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Replaces the program of the XDP link pinned at `pin` with `x`, atomically.
fn swap_xdp_link(x: &mut Xdp, pin: &Path) -> Result<(), BoxError> {
    let link = PinnedLink::from_pin(pin)?;
    let link = aya::programs::xdp::XdpLink::try_from(FdLink::from(link))?;
    x.attach_to_link(link)?;
    Ok(())
}

/// Replaces the program of the TC link pinned at `pin` with `c`, atomically.
fn swap_tc_link(c: &mut SchedClassifier, pin: &Path) -> Result<(), BoxError> {
    let link = PinnedLink::from_pin(pin)?;
    let link = aya::programs::tc::SchedClassifierLink::try_from(FdLink::from(link))?;
    c.attach_to_link(link)?;
    Ok(())
}

/// Whether `iface`'s driver hands XDP local senders' packets as they are, partial checksums
/// included: a veth, a tun/tap. (NIC drivers hand up complete checksums; virtio-net refuses
/// XDP while the host offloads checksums to the guest.)
fn hands_up_partial_checksums(iface: &str) -> bool {
    matches!(driver_of(iface).as_deref(), Some("veth" | "tun"))
}

/// The driver name of `iface` (`ETHTOOL_GDRVINFO`), in this thread's network namespace.
fn driver_of(iface: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        pad: [u8; 16],
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &raw mut info,
        pad: [0; 16],
    };
    let name = iface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    req.name.get_mut(..name.len())?.copy_from_slice(name);
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `req` is a valid `ifreq` whose data pointer points at a `DrvInfo` that outlives
    // the call; the kernel writes at most `size_of::<DrvInfo>()` bytes there.
    let r = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &raw mut req) };
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    if r != 0 {
        return None;
    }
    let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(info.driver.get(..end)?).into_owned())
}

fn check_iface(iface: &str) -> Result<(), Error> {
    let c = std::ffi::CString::new(iface).map_err(|_| Error::NoSuchInterface(iface.into()))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
        return Err(Error::NoSuchInterface(iface.into()));
    }
    Ok(())
}
