//! The aya backend of lb-dataplane: loads the eBPF programs built from the shared logic crates,
//! attaches them, programs their maps with the same control-plane API as the userspace engine,
//! reads conntrack and counters, and runs packets through them with `BPF_PROG_TEST_RUN`.
//!
//! Running it, a CNI also starts conntrack GC as a task
//! ([`KernelDatapath::spawn_conntrack_gc`], a thread sweeping at the adaptive interval; see
//! [`conntrack_gc`]) and reads drop events ([`KernelDatapath::drain_drop_events`]: one
//! [`DropEvent`] per dropped packet with its reason and flow, from the programs' ring buffer; the
//! userspace engine has the same call).
//!
//! ```no_run
//! use lb_bpf::{KernelDatapath, Program};
//! use lb_api::flow::L4Proto;
//! use lb_nat::control::ServiceSpec;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Every program passes the kernel's verifier here (needs root / CAP_BPF).
//! let mut dp = KernelDatapath::load()?;
//! dp.set_config(&lb_datapath::engine::default_config(0))?;
//! dp.upsert_service(&ServiceSpec {
//!     id: 1,
//!     frontend: "10.96.0.10:80".parse()?,
//!     proto: L4Proto::Tcp,
//!     backends: vec!["10.1.0.2:8080".parse()?, "10.1.0.3:8080".parse()?],
//!     ..Default::default()
//! })?;
//! dp.attach_xdp("eth0", aya::programs::XdpMode::Skb)?;
//! let gc = dp.spawn_conntrack_gc(lb_conntrack::GcConfig::default())?;
//! println!("{} conntrack entries", dp.conntrack_entries()?.len());
//! for ev in dp.drain_drop_events()? {
//!     println!("dropped ({}): {:?}", ev.reason.name(), ev.tuple());
//! }
//! println!("GC: {:?}", gc.status().last_report);
//! # Ok(()) }
//! ```

pub mod conntrack_gc;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{tc, SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use lb_api::abi::{
    BackendKey, BackendValue, CtEntry, CtKey, DatapathConfig, NodeKey, ServiceKey, ServiceValue,
};
use lb_api::counters::{CounterSnapshot, COUNTER_SLOTS};
use lb_api::events::DropEvent;
use lb_api::Verdict;
use lb_nat::control::{self, ConfigError, ServiceSpec, ServiceStore};
use zerocopy::TryFromBytes;

/// The compiled eBPF object (all programs and maps), embedded at build time.
pub static PROGRAMS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-programs.o"));

/// Names of the maps in the object.
pub mod maps {
    /// Conntrack entries.
    pub const CONNTRACK: &str = "LB_CT";
    /// Services by frontend.
    pub const SERVICES: &str = "LB_SERVICES";
    /// Backend slots.
    pub const BACKENDS: &str = "LB_BACKENDS";
    /// Datapath configuration.
    pub const CONFIG: &str = "LB_CONFIG";
    /// Per-CPU counters.
    pub const COUNTERS: &str = "LB_COUNTERS";
    /// Peer nodes (tunnel packets are accepted from these only).
    pub const NODES: &str = "LB_NODES";
    /// Per-CPU per-packet working state of the pipeline (not pinned).
    pub const SCRATCH: &str = "LB_SCRATCH";
    /// Drop events, a ring buffer (not pinned: see [`KernelDatapath::drain_drop_events`]).
    pub const DROP_EVENTS: &str = "LB_EVENTS";
    /// Per-CPU reason of the packet being dropped, read when its event is written (not pinned).
    pub const DROP_REASON: &str = "LB_DROP_REASON";
    /// The XDP pipeline's stage array: the new-flow stage `lb_xdp_tail_calls` into.
    pub const XDP_STAGES: &str = "LB_XDP_STAGES";
    /// The TC pipeline's stage array.
    pub const TC_STAGES: &str = "LB_TC_STAGES";
    /// XDP devices whose packets may carry partial checksums (veths), by interface index.
    pub const XDP_PARTIAL: &str = "LB_XDP_PARTIAL";
}

/// The program variants in the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Program {
    /// The pipeline at XDP (its first stage, which tail-calls the new-flow stage).
    Xdp,
    /// The pipeline at TC (clsact; its first stage).
    Tc,
    /// Parse-only XDP baseline for benchmarks.
    XdpParseOnly,
    /// The XDP pipeline's new-flow stage, reached by tail call from [`Program::Xdp`]. Run on
    /// its own it reads the per-CPU scratch area as the last packet's first stage left it.
    XdpNewFlow,
    /// The TC pipeline's new-flow stage, reached by tail call from [`Program::Tc`].
    TcNewFlow,
}

impl Program {
    /// Every variant: each is loaded through the verifier by [`KernelDatapath::load`].
    pub const ALL: [Program; 5] = [
        Program::Xdp,
        Program::Tc,
        Program::XdpParseOnly,
        Program::XdpNewFlow,
        Program::TcNewFlow,
    ];

    /// Whether the program is an XDP program (else a TC classifier).
    #[must_use]
    pub const fn is_xdp(self) -> bool {
        matches!(
            self,
            Program::Xdp | Program::XdpParseOnly | Program::XdpNewFlow
        )
    }

    /// The program's name in the object.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Program::Xdp => "lb_xdp",
            Program::Tc => "lb_tc",
            Program::XdpParseOnly => "lb_xdp_parse_only",
            Program::XdpNewFlow => "lb_xdp_new_flow",
            Program::TcNewFlow => "lb_tc_new_flow",
        }
    }

    /// The datapath verdict a program's return code stands for.
    #[must_use]
    pub const fn verdict(self, return_value: u32) -> Option<Verdict> {
        if self.is_xdp() {
            match return_value {
                1 => Some(Verdict::Drop), // XDP_DROP
                2 => Some(Verdict::Pass), // XDP_PASS
                3 => Some(Verdict::Tx),   // XDP_TX
                _ => None,
            }
        } else {
            match return_value {
                0 => Some(Verdict::Pass), // TC_ACT_OK
                2 => Some(Verdict::Drop), // TC_ACT_SHOT
                // TC_ACT_REDIRECT: the ICMP error back out of the device it came in on.
                7 => Some(Verdict::Tx),
                _ => None,
            }
        }
    }
}

/// What went wrong, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process may not load BPF programs.
    #[error("loading BPF programs needs root or CAP_BPF+CAP_NET_ADMIN (run as root, e.g. with sudo): {0}")]
    Permission(String),
    /// The object could not be parsed or its maps created.
    #[error("loading the eBPF object failed: {0}")]
    Object(#[from] aya::EbpfError),
    /// The verifier (or the kernel) rejected a program.
    #[error("program `{program}` was rejected by the kernel: {source}")]
    Program {
        /// Which program.
        program: &'static str,
        /// aya's error, with the verifier log when there is one.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map is missing from the object or has another type than expected.
    #[error("map `{map}`: {source}")]
    Map {
        /// Which map.
        map: &'static str,
        /// aya's error.
        #[source]
        source: aya::maps::MapError,
    },
    /// The interface does not exist.
    #[error("interface `{0}` does not exist (check the name with `ip link`)")]
    NoSuchInterface(String),
    /// Attaching failed.
    #[error("attaching `{program}` to `{iface}` failed: {reason}")]
    Attach {
        /// Which program.
        program: &'static str,
        /// Which interface.
        iface: String,
        /// Why.
        reason: String,
    },
    /// A service definition was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A map pinned by an earlier loader has another shape than this build's map: the ABI changed
    /// between versions, and reusing it would corrupt both.
    #[error(
        "pinned map `{map}` at {path} is incompatible: it has {found}, this build needs {expected}. \
         Remove it with `KernelDatapath::uninstall(\"{dir}\")` (this flushes conntrack: a controlled outage)"
    )]
    IncompatiblePinnedMap {
        /// Which map.
        map: String,
        /// Its pin path.
        path: PathBuf,
        /// The pin directory.
        dir: String,
        /// The shape this build needs.
        expected: String,
        /// The shape that is pinned.
        found: String,
    },
    /// Pinning or reading the pin directory failed.
    #[error("pin directory {path}: {reason} (is bpffs mounted at /sys/fs/bpf? `mount -t bpf bpf /sys/fs/bpf`)")]
    Pin {
        /// The path.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A background task's thread could not be started.
    #[error("starting the {task} task failed: {reason} (the process is out of threads or memory)")]
    Task {
        /// Which task.
        task: &'static str,
        /// The OS error.
        reason: String,
    },
    /// A drop-event record in the ring does not decode as this build's [`DropEvent`].
    #[error(
        "drop event of {len} B with reason code {reason_code} does not decode as this build's \
         DropEvent (56 B, a known reason): a program of another lb-bpf build writes into this \
         ring; reload the datapath with this build"
    )]
    DropEventLayout {
        /// Size of the record.
        len: usize,
        /// Its reason code (bytes 8..12), `u32::MAX` if the record is too short to have one.
        reason_code: u32,
    },
    /// The kernel returned a code no verdict maps to.
    #[error("program `{program}` returned {code}, which is no datapath verdict")]
    UnknownVerdict {
        /// Which program.
        program: &'static str,
        /// The return code.
        code: u32,
    },
}

/// The skb metadata a TC program's `BPF_PROG_TEST_RUN` is given (the `__sk_buff` fields the
/// kernel takes from the caller, as far as the datapath reads them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TestSkb {
    /// `gso_size`: the packet is a GSO packet of segments of this many payload bytes. The test
    /// runner sets no GSO type with it, so the kernel resizes no such packet
    /// (`bpf_skb_adjust_room` refuses it).
    pub gso_size: u16,
}

impl TestSkb {
    /// Size of the kernel's `struct __sk_buff` (Linux 6.x).
    const SK_BUFF_LEN: usize = 192;
    /// Offset of `gso_size` in `struct __sk_buff`.
    const GSO_SIZE_OFFSET: usize = 176;

    /// The `__sk_buff` image: zero but for the fields set (the kernel refuses others).
    fn sk_buff(&self) -> [u8; Self::SK_BUFF_LEN] {
        let mut b = [0u8; Self::SK_BUFF_LEN];
        b[Self::GSO_SIZE_OFFSET..Self::GSO_SIZE_OFFSET + 4]
            .copy_from_slice(&u32::from(self.gso_size).to_ne_bytes());
        b
    }
}

/// Result of running a packet through a program with `BPF_PROG_TEST_RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's verdict.
    pub verdict: Verdict,
    /// The packet as the program left it.
    pub data: Vec<u8>,
    /// Average time per run, as measured by the kernel.
    pub duration: Duration,
}

/// The kernel datapath: the loaded object with all its programs and maps.
pub struct KernelDatapath {
    ebpf: Ebpf,
    /// Where maps and links are pinned (`None`: nothing pinned, everything goes with the process).
    pin_dir: Option<PathBuf>,
}

impl std::fmt::Debug for KernelDatapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelDatapath").finish_non_exhaustive()
    }
}

fn is_permission(e: &aya::EbpfError) -> bool {
    let s = e.to_string();
    s.contains("Operation not permitted") || s.contains("EPERM") || s.contains("Permission denied")
}

impl KernelDatapath {
    /// Loads the object and every program variant into the kernel (each passes the verifier).
    ///
    /// # Errors
    /// [`Error::Permission`] without privileges; [`Error::Program`] with the verifier log when a
    /// program is rejected.
    pub fn load() -> Result<Self, Error> {
        Self::load_with(None)
    }

    /// Loads like [`load`](Self::load), with every map pinned under `dir/maps/`. When an earlier
    /// loader pinned them there (an agent restart), the existing maps are reused after a check
    /// that their shapes match this build's: services, backends and live conntrack entries carry
    /// over, so established connections keep working.
    ///
    /// # Errors
    /// [`Error::IncompatiblePinnedMap`] naming the map and the fix; the errors of [`load`](Self::load).
    pub fn load_pinned(dir: impl AsRef<Path>) -> Result<Self, Error> {
        Self::load_with(Some(dir.as_ref()))
    }

    fn load_with(dir: Option<&Path>) -> Result<Self, Error> {
        let mut pins = Vec::new();
        if let Some(dir) = dir {
            ensure_bpffs(dir)?;
            let maps_dir = dir.join("maps");
            std::fs::create_dir_all(&maps_dir).map_err(|e| Error::Pin {
                path: maps_dir.clone(),
                reason: e.to_string(),
            })?;
            let obj = aya_obj::Object::parse(PROGRAMS_OBJECT).map_err(|e| Error::Pin {
                path: maps_dir.clone(),
                reason: format!("parsing our own object: {e}"),
            })?;
            // Scratch maps hold per-packet state only, the event ring transient records: pinning
            // them would tie restarts to their layout for nothing. The stage arrays name this
            // load's programs: they are pinned when the programs are attached (`pin_stages`),
            // never reused.
            let mut names: Vec<&String> = obj
                .maps
                .keys()
                .filter(|n| {
                    !n.starts_with('.')
                        && n.as_str() != maps::SCRATCH
                        && n.as_str() != maps::DROP_EVENTS
                        && n.as_str() != maps::DROP_REASON
                        && n.as_str() != maps::XDP_STAGES
                        && n.as_str() != maps::TC_STAGES
                })
                .collect();
            names.sort();
            for name in names {
                let Some(m) = obj.maps.get(name) else {
                    continue;
                };
                let path = maps_dir.join(name);
                check_pinned_shape(dir, name, &path, m)?;
                pins.push((name.clone(), path));
            }
        }
        let mut loader = EbpfLoader::new();
        for (name, path) in &pins {
            loader.map_pin_path(name.as_str(), path.as_path());
        }
        let mut ebpf = loader.load(PROGRAMS_OBJECT).map_err(|e| {
            if is_permission(&e) {
                Error::Permission(e.to_string())
            } else {
                Error::Object(e)
            }
        })?;
        for p in Program::ALL {
            let name = p.name();
            let prog = ebpf.program_mut(name).ok_or_else(|| Error::Program {
                program: name,
                source: aya::programs::ProgramError::UnexpectedProgramType,
            })?;
            let res = if p.is_xdp() {
                let x: &mut Xdp = prog.try_into().map_err(|source| Error::Program {
                    program: name,
                    source,
                })?;
                x.load()
            } else {
                let c: &mut SchedClassifier = prog.try_into().map_err(|source| Error::Program {
                    program: name,
                    source,
                })?;
                c.load()
            };
            res.map_err(|source| Error::Program {
                program: name,
                source,
            })?;
        }
        for (stages, program) in [
            (maps::XDP_STAGES, Program::XdpNewFlow),
            (maps::TC_STAGES, Program::TcNewFlow),
        ] {
            set_stage(&mut ebpf, stages, program)?;
        }
        Ok(Self {
            ebpf,
            pin_dir: dir.map(Path::to_path_buf),
        })
    }

    /// Removes everything a pinned datapath left in `dir`: its links (detaching the programs from
    /// their interfaces) and its maps (conntrack is flushed: established flows through the
    /// datapath break, a controlled outage). Absent pins are fine.
    ///
    /// # Errors
    /// [`Error::Pin`] if a pin exists but cannot be removed.
    pub fn uninstall(dir: impl AsRef<Path>) -> Result<(), Error> {
        let dir = dir.as_ref();
        for sub in ["links", "maps"] {
            let d = dir.join(sub);
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                std::fs::remove_file(e.path()).map_err(|err| Error::Pin {
                    path: e.path(),
                    reason: err.to_string(),
                })?;
            }
            std::fs::remove_dir(&d).map_err(|err| Error::Pin {
                path: d.clone(),
                reason: err.to_string(),
            })?;
        }
        let _ = std::fs::remove_dir(dir);
        Ok(())
    }

    /// Where the link of `kind` on `iface` is pinned, when pinning.
    fn link_pin(&self, kind: &str, iface: &str) -> Result<Option<PathBuf>, Error> {
        let Some(dir) = &self.pin_dir else {
            return Ok(None);
        };
        let links = dir.join("links");
        std::fs::create_dir_all(&links).map_err(|e| Error::Pin {
            path: links.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some(links.join(format!("{kind}-{iface}"))))
    }

    /// Pins stage array `name` (pinned mode, once its first stage is attached): a program array
    /// is emptied when no process or pin holds it any more, so without the pin a pinned link's
    /// program would lose its new-flow stage when the loader exits. An earlier loader's array
    /// (its programs are no longer attached: ours took over the links) is replaced.
    fn pin_stages(&self, name: &'static str) -> Result<(), Error> {
        let Some(dir) = &self.pin_dir else {
            return Ok(());
        };
        let path = dir.join("maps").join(name);
        let pin_err = |reason: String| Error::Pin {
            path: path.clone(),
            reason,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(pin_err(e.to_string())),
        }
        let map = self.ebpf.map(name).ok_or(Error::Map {
            map: name,
            source: aya::maps::MapError::InvalidName { name: name.into() },
        })?;
        let array = aya::maps::ProgramArray::try_from(map)
            .map_err(|source| Error::Map { map: name, source })?;
        array.pin(&path).map_err(|e| pin_err(e.to_string()))
    }

    fn map(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, Error> {
        self.ebpf.map_mut(name).ok_or(Error::Map {
            map: name,
            source: aya::maps::MapError::InvalidName { name: name.into() },
        })
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, Error> {
        HashMap::try_from(self.map(name)?).map_err(|source| Error::Map { map: name, source })
    }

    fn hash_ro<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<HashMap<&MapData, K, V>, Error> {
        let m = self.ebpf.map(name).ok_or(Error::Map {
            map: name,
            source: aya::maps::MapError::InvalidName { name: name.into() },
        })?;
        HashMap::try_from(m).map_err(|source| Error::Map { map: name, source })
    }

    /// Writes the datapath configuration.
    ///
    /// # Errors
    /// [`Error::Map`] if the kernel refuses the write.
    pub fn set_config(&mut self, cfg: &DatapathConfig) -> Result<(), Error> {
        let mut a: Array<&mut MapData, DatapathConfig> = Array::try_from(self.map(maps::CONFIG)?)
            .map_err(|source| Error::Map {
            map: maps::CONFIG,
            source,
        })?;
        a.set(0, *cfg, 0).map_err(|source| Error::Map {
            map: maps::CONFIG,
            source,
        })
    }

    /// Sets this node's identity: its addresses (SNAT source, tunnel endpoint), its peers and
    /// the tunnel's parameters. The rest of the configuration in the kernel (timeouts, seeds)
    /// is kept.
    ///
    /// # Errors
    /// [`Error::Config`] naming the invalid field (nothing is written then), or a refused map
    /// write.
    pub fn set_node(&mut self, node: &control::NodeSpec) -> Result<(), Error> {
        node.validate()?;
        let mut cfg = self.config()?;
        control::set_node(self, &mut cfg, node)?;
        self.set_config(&cfg)
    }

    /// The datapath configuration in the kernel.
    ///
    /// # Errors
    /// [`Error::Map`] if the map cannot be read.
    pub fn config(&mut self) -> Result<DatapathConfig, Error> {
        let a: Array<&mut MapData, DatapathConfig> = Array::try_from(self.map(maps::CONFIG)?)
            .map_err(|source| Error::Map {
                map: maps::CONFIG,
                source,
            })?;
        a.get(&0, 0).map_err(|source| Error::Map {
            map: maps::CONFIG,
            source,
        })
    }

    /// Adds or replaces a service (same rules and write order as the userspace engine).
    ///
    /// # Errors
    /// [`Error::Config`] naming the invalid field, or a refused map write.
    pub fn upsert_service(&mut self, spec: &ServiceSpec) -> Result<(), Error> {
        control::upsert_service(self, spec).map_err(Error::from)
    }

    /// Removes a service.
    pub fn remove_service(&mut self, spec: &ServiceSpec) {
        control::remove_service(self, spec);
    }

    /// All conntrack entries, sorted by key bytes.
    ///
    /// # Errors
    /// [`Error::Map`] if the map cannot be read.
    pub fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtEntry)>, Error> {
        let m: HashMap<&MapData, CtKey, CtEntry> = self.hash_ro(maps::CONNTRACK)?;
        let mut v = m
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| Error::Map {
                map: maps::CONNTRACK,
                source,
            })?;
        v.sort_by(|a, b| {
            zerocopy::IntoBytes::as_bytes(&a.0).cmp(zerocopy::IntoBytes::as_bytes(&b.0))
        });
        Ok(v)
    }

    /// Deletes every conntrack entry.
    ///
    /// # Errors
    /// [`Error::Map`] if the map cannot be read or written.
    pub fn flush_conntrack(&mut self) -> Result<(), Error> {
        let keys: Vec<CtKey> = self
            .conntrack_entries()?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let mut m: HashMap<&mut MapData, CtKey, CtEntry> = self.hash(maps::CONNTRACK)?;
        for k in keys {
            let _ = m.remove(&k);
        }
        Ok(())
    }

    /// The drop events the programs recorded since the last call, oldest first: one per dropped
    /// packet, with its reason, its flow as far as it was parsed, the time (the datapath's
    /// clock) and the interface. The same call exists on the userspace engine
    /// (`lb_datapath::engine::Engine::drain_drop_events`).
    ///
    /// The ring holds 4095 events; when it is full the programs lose new events, counted as
    /// `Counter::DropEventsLost` (drops are always counted). Drain at least as often as that many
    /// drops can happen. The ring is not pinned: across a loader restart, events recorded by the
    /// old programs before the swap are lost with the old ring.
    ///
    /// # Errors
    /// [`Error::Map`] if the ring cannot be mapped; [`Error::DropEventLayout`] if a record does not
    /// decode (a program of another build writing into this ring).
    pub fn drain_drop_events(&mut self) -> Result<Vec<DropEvent>, Error> {
        // 256 KiB of 64-byte slots: one more than fits, so one call empties a full ring.
        const MAX_PER_CALL: usize = 4097;
        let map_err = |source| Error::Map {
            map: maps::DROP_EVENTS,
            source,
        };
        let mut ring: RingBuf<&mut MapData> =
            RingBuf::try_from(self.map(maps::DROP_EVENTS)?).map_err(map_err)?;
        let mut events = Vec::new();
        for _ in 0..MAX_PER_CALL {
            let Some(item) = ring.next() else {
                break;
            };
            let ev = DropEvent::try_read_from_bytes(&item).map_err(|_| Error::DropEventLayout {
                len: item.len(),
                reason_code: item
                    .get(8..12)
                    .and_then(|b| b.try_into().ok())
                    .map_or(u32::MAX, u32::from_ne_bytes),
            })?;
            events.push(ev);
        }
        Ok(events)
    }

    /// The counters, summed over CPUs.
    ///
    /// # Errors
    /// [`Error::Map`] if the map cannot be read.
    pub fn counters(&self) -> Result<CounterSnapshot, Error> {
        let m = self.ebpf.map(maps::COUNTERS).ok_or(Error::Map {
            map: maps::COUNTERS,
            source: aya::maps::MapError::InvalidName {
                name: maps::COUNTERS.into(),
            },
        })?;
        let a: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(m).map_err(|source| Error::Map {
                map: maps::COUNTERS,
                source,
            })?;
        let mut snap = CounterSnapshot::default();
        for slot in 0..COUNTER_SLOTS {
            let per_cpu = a.get(&slot, 0).map_err(|source| Error::Map {
                map: maps::COUNTERS,
                source,
            })?;
            if let Some(v) = snap.0.get_mut(slot as usize) {
                *v = per_cpu.iter().sum();
            }
        }
        Ok(snap)
    }

    /// Zeroes every counter.
    ///
    /// # Errors
    /// [`Error::Map`] if the map cannot be written.
    pub fn reset_counters(&mut self) -> Result<(), Error> {
        let ncpus = aya::util::nr_cpus().map_err(|(_, e)| Error::Map {
            map: maps::COUNTERS,
            source: aya::maps::MapError::InvalidName {
                name: e.to_string(),
            },
        })?;
        let mut a: PerCpuArray<&mut MapData, u64> =
            PerCpuArray::try_from(self.map(maps::COUNTERS)?).map_err(|source| Error::Map {
                map: maps::COUNTERS,
                source,
            })?;
        for slot in 0..COUNTER_SLOTS {
            let zeros =
                aya::maps::PerCpuValues::try_from(vec![0u64; ncpus]).map_err(|e| Error::Map {
                    map: maps::COUNTERS,
                    source: aya::maps::MapError::InvalidName {
                        name: e.to_string(),
                    },
                })?;
            a.set(slot, zeros, 0).map_err(|source| Error::Map {
                map: maps::COUNTERS,
                source,
            })?;
        }
        Ok(())
    }

    /// How many instructions the verifier walked to accept `program` (`verified_insns` of
    /// `BPF_OBJ_GET_INFO_BY_FD`, kernel 5.16 and later): its share of the kernel's limit of a
    /// million per program. `None` when the kernel does not report it.
    ///
    /// # Errors
    /// [`Error::Program`] if the program's information cannot be read.
    pub fn verified_instructions(&self, program: Program) -> Result<Option<u32>, Error> {
        let name = program.name();
        let prog = self.ebpf.program(name).ok_or(Error::Program {
            program: name,
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?;
        let info = prog.info().map_err(|source| Error::Program {
            program: name,
            source,
        })?;
        Ok(info.verified_instruction_count())
    }

    /// Runs `frame` through `program` `repeat` times with `BPF_PROG_TEST_RUN` (maps are shared
    /// with the live datapath, so a run changes conntrack like a real packet would).
    ///
    /// # Errors
    /// [`Error::Program`] if the kernel refuses the run.
    pub fn test_run(
        &self,
        program: Program,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutput, Error> {
        self.test_run_skb(program, frame, repeat, &TestSkb::default())
    }

    /// [`Self::test_run`] of a TC program with the skb metadata `skb` (passed to the kernel as
    /// the run's `__sk_buff` context; ignored for XDP programs and when all default).
    ///
    /// # Errors
    /// [`Error::Program`] if the kernel refuses the run.
    pub fn test_run_skb(
        &self,
        program: Program,
        frame: &[u8],
        repeat: u32,
        skb: &TestSkb,
    ) -> Result<TestRunOutput, Error> {
        let name = program.name();
        let prog = self.ebpf.program(name).ok_or(Error::Program {
            program: name,
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?;
        let mut out = vec![0u8; frame.len() + 256];
        let ctx = skb.sk_buff();
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: (!program.is_xdp() && *skb != TestSkb::default()).then_some(&ctx[..]),
            repeat,
            ..Default::default()
        };
        let res = if program.is_xdp() {
            let x: &Xdp = prog.try_into().map_err(|source| Error::Program {
                program: name,
                source,
            })?;
            x.test_run(opts)
        } else {
            let c: &SchedClassifier = prog.try_into().map_err(|source| Error::Program {
                program: name,
                source,
            })?;
            c.test_run(opts)
        }
        .map_err(|source| Error::Program {
            program: name,
            source,
        })?;
        out.truncate(res.data_size_out as usize);
        let verdict = program
            .verdict(res.return_value)
            .ok_or(Error::UnknownVerdict {
                program: name,
                code: res.return_value,
            })?;
        Ok(TestRunOutput {
            verdict,
            data: out,
            duration: res.duration,
        })
    }

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
        let mut m: HashMap<&mut MapData, u32, u8> = self.hash(maps::XDP_PARTIAL)?;
        let r = if on {
            m.insert(ifindex, 1, 0)
        } else {
            match m.remove(&ifindex) {
                Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                r => r,
            }
        };
        r.map_err(|source| Error::Map {
            map: maps::XDP_PARTIAL,
            source,
        })
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
        let link_pin = self.link_pin("xdp", iface)?;
        let name = Program::Xdp.name();
        let x: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(Error::Program {
                program: name,
                source: aya::programs::ProgramError::UnexpectedProgramType,
            })?
            .try_into()
            .map_err(|source| Error::Program {
                program: name,
                source,
            })?;
        let attach_err = |e: &dyn std::fmt::Display| Error::Attach {
            program: name,
            iface: iface.into(),
            reason: e.to_string(),
        };
        let Some(pin) = link_pin else {
            x.attach(iface, mode).map_err(|e| attach_err(&e))?;
            return Ok(());
        };
        if pin.exists() {
            // An earlier loader's link: swap our program into it atomically (no packet sees a
            // missing program), and leave the pin in place for the next restart.
            let link = PinnedLink::from_pin(&pin).map_err(|e| attach_err(&e))?;
            let link = aya::programs::xdp::XdpLink::try_from(FdLink::from(link))
                .map_err(|e| attach_err(&e))?;
            x.attach_to_link(link).map_err(|e| attach_err(&e))?;
        } else {
            let id = x.attach(iface, mode).map_err(|e| attach_err(&e))?;
            let link = x.take_link(id).map_err(|e| attach_err(&e))?;
            let fd = FdLink::try_from(link).map_err(|e| attach_err(&e))?;
            fd.pin(&pin).map_err(|e| Error::Pin {
                path: pin.clone(),
                reason: e.to_string(),
            })?;
        }
        self.pin_stages(maps::XDP_STAGES)
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
        let c: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(Error::Program {
                program: name,
                source: aya::programs::ProgramError::UnexpectedProgramType,
            })?
            .try_into()
            .map_err(|source| Error::Program {
                program: name,
                source,
            })?;
        let attach_err = |e: &dyn std::fmt::Display| Error::Attach {
            program: name,
            iface: iface.into(),
            reason: e.to_string(),
        };
        let Some(pin) = link_pin else {
            c.attach(iface, direction).map_err(|e| attach_err(&e))?;
            return Ok(());
        };
        if pin.exists() {
            let link = PinnedLink::from_pin(&pin).map_err(|e| attach_err(&e))?;
            let link = aya::programs::tc::SchedClassifierLink::try_from(FdLink::from(link))
                .map_err(|e| attach_err(&e))?;
            c.attach_to_link(link).map_err(|e| attach_err(&e))?;
        } else {
            let id = c.attach(iface, direction).map_err(|e| attach_err(&e))?;
            let link = c.take_link(id).map_err(|e| attach_err(&e))?;
            let fd = FdLink::try_from(link).map_err(|e| attach_err(&e))?;
            fd.pin(&pin).map_err(|e| Error::Pin {
                path: pin.clone(),
                reason: e.to_string(),
            })?;
        }
        self.pin_stages(maps::TC_STAGES)
    }
}

/// Puts the loaded `program` into slot 0 of the program array `stages`, where its first stage
/// tail-calls it.
fn set_stage(ebpf: &mut Ebpf, stages: &'static str, program: Program) -> Result<(), Error> {
    let name = program.name();
    let fd = ebpf
        .program(name)
        .ok_or(Error::Program {
            program: name,
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?
        .fd()
        .and_then(|fd| fd.try_clone().map_err(aya::programs::ProgramError::from))
        .map_err(|source| Error::Program {
            program: name,
            source,
        })?;
    let map = ebpf.map_mut(stages).ok_or(Error::Map {
        map: stages,
        source: aya::maps::MapError::InvalidName {
            name: stages.into(),
        },
    })?;
    let mut array = aya::maps::ProgramArray::try_from(map).map_err(|source| Error::Map {
        map: stages,
        source,
    })?;
    array.set(0, &fd, 0).map_err(|source| Error::Map {
        map: stages,
        source,
    })
}

/// Mounts bpffs at /sys/fs/bpf when `dir` is below it and nothing is mounted there yet (as BPF
/// agents do on hosts whose init system does not).
fn ensure_bpffs(dir: &Path) -> Result<(), Error> {
    const BPFFS: &str = "/sys/fs/bpf";
    if !dir.starts_with(BPFFS) {
        return Ok(());
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(BPFFS))
    {
        return Ok(());
    }
    let c = |s: &str| {
        std::ffi::CString::new(s).map_err(|e| Error::Pin {
            path: BPFFS.into(),
            reason: e.to_string(),
        })
    };
    let (src, target, fstype) = (c("bpf")?, c(BPFFS)?, c("bpf")?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; a null data
    // pointer is allowed for bpffs.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::Pin {
            path: BPFFS.into(),
            reason: format!(
                "bpffs is not mounted and mounting it failed: {}",
                std::io::Error::last_os_error()
            ),
        });
    }
    Ok(())
}

/// Refuses a pinned map whose type, key, value or size differs from what this build's object
/// declares for it.
fn check_pinned_shape(dir: &Path, name: &str, path: &Path, m: &aya_obj::Map) -> Result<(), Error> {
    if !path.exists() {
        return Ok(());
    }
    let info = aya::maps::MapInfo::from_pin(path).map_err(|e| Error::Pin {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let found_type = info.map_type().map_or(u32::MAX, |t| t as u32);
    let expected = (m.map_type(), m.key_size(), m.value_size(), m.max_entries());
    let found = (
        found_type,
        info.key_size(),
        info.value_size(),
        info.max_entries(),
    );
    if expected != found {
        let show = |(t, k, v, n): (u32, u32, u32, u32)| {
            format!("type {t}, key {k} B, value {v} B, {n} entries")
        };
        return Err(Error::IncompatiblePinnedMap {
            map: name.into(),
            path: path.into(),
            dir: dir.display().to_string(),
            expected: show(expected),
            found: show(found),
        });
    }
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

impl ServiceStore for KernelDatapath {
    fn put_node(&mut self, key: NodeKey) -> Result<(), ConfigError> {
        let mut m: HashMap<&mut MapData, NodeKey, u32> =
            self.hash(maps::NODES).map_err(|e| store_err("nodes", &e))?;
        m.insert(key, 1, 0).map_err(|e| store_err("nodes", &e))
    }
    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), ConfigError> {
        let mut m: HashMap<&mut MapData, ServiceKey, ServiceValue> = self
            .hash(maps::SERVICES)
            .map_err(|e| store_err("services", &e))?;
        m.insert(key, value, 0)
            .map_err(|e| store_err("services", &e))
    }
    fn put_backend(&mut self, key: BackendKey, value: BackendValue) -> Result<(), ConfigError> {
        let mut m: HashMap<&mut MapData, BackendKey, BackendValue> = self
            .hash(maps::BACKENDS)
            .map_err(|e| store_err("backends", &e))?;
        m.insert(key, value, 0)
            .map_err(|e| store_err("backends", &e))
    }
    fn get_service(&self, key: &ServiceKey) -> Option<ServiceValue> {
        let m: HashMap<&MapData, ServiceKey, ServiceValue> = self.hash_ro(maps::SERVICES).ok()?;
        m.get(key, 0).ok()
    }
    fn remove_backend(&mut self, key: &BackendKey) {
        if let Ok(mut m) = self.hash::<BackendKey, BackendValue>(maps::BACKENDS) {
            let _ = m.remove(key);
        }
    }
    fn remove_service(&mut self, key: &ServiceKey) {
        if let Ok(mut m) = self.hash::<ServiceKey, ServiceValue>(maps::SERVICES) {
            let _ = m.remove(key);
        }
    }
}

fn store_err(table: &'static str, e: &dyn std::fmt::Display) -> ConfigError {
    ConfigError::Store {
        table,
        reason: e.to_string(),
    }
}
