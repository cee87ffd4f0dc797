//! Engine against kernel, one packet at a time: the same frame, configuration, time and skb
//! metadata go through the userspace engine ([`Engine::process`], or [`Engine::process_tc`] for
//! the TC program) and through a kernel program with `BPF_PROG_TEST_RUN`
//! ([`KernelDatapath::test_run_skb`]); output bytes, verdicts, conntrack contents (timestamps
//! included, via `fixed_now_ns`), session-affinity contents, counters and drop events must be
//! identical after every packet.
//!
//! The differential suites of `lb-bpf` run their fixture tables through it, and the kernel
//! benchmark checks every timed run with it ([`Checks::Output`]: a conntrack dump per run would
//! cost more than the run).
//!
//! ```no_run
//! use lb_api::flow::L4Proto;
//! use lb_api::wire::{testing::tcp_v4_frame, TcpFlags};
//! use lb_bpf::Program;
//! use lb_control::default_config;
//! use lb_control::ServiceSpec;
//! use lb_testbed::harness::EngineAndKernel;
//! # fn main() -> anyhow::Result<()> {
//! let service = ServiceSpec {
//!     id: 1,
//!     frontend: "10.96.0.10:80".parse()?,
//!     proto: L4Proto::Tcp,
//!     backends: vec!["10.1.0.2:8080".parse()?],
//!     ..Default::default()
//! };
//! let mut pair = EngineAndKernel::new(Program::Xdp, default_config(7), &[service])?;
//! let syn = tcp_v4_frame([10, 0, 0, 1], 40000, [10, 96, 0, 10], 80, TcpFlags::SYN, b"");
//! let out = pair.send(&syn, Some(1_000_000_000))?; // a `Difference` if the worlds disagree
//! assert_ne!(out.frame, syn);
//! # Ok(()) }
//! ```

use std::fmt;

use lb_api::abi::{CtEntry, CtKey, DatapathConfig};
use lb_api::counters::CounterSnapshot;
use lb_api::events::DropEvent;
use lb_api::Verdict;
use lb_bpf::{KernelDatapath, Program, TestSkb};
use lb_conntrack::{Clock, ManualClock};
use lb_control::{Dataplane, NodeSpec, ServiceSpec};
use lb_datapath::engine::{Engine, GsoType, SkbMeta};
use zerocopy::IntoBytes;

/// Conntrack capacity of the engine: room for every fixture's flows (the kernel's map is loaded
/// at its default size, `lb_api::tables::CONNTRACK`; neither fills in a differential test).
pub const ENGINE_CT_CAPACITY: usize = 4096;

/// What is compared after each packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checks {
    /// Verdict, output bytes, conntrack contents, counters and drop events.
    #[default]
    Everything,
    /// Verdict and output bytes only: for many runs in a row (a benchmark), where a conntrack
    /// dump per packet would dominate; counters can be compared over the whole series.
    Output,
}

/// Both worlds, configured alike.
pub struct EngineAndKernel<C: Clock = ManualClock> {
    /// The userspace engine.
    pub engine: Engine<C>,
    /// The loaded kernel programs and maps.
    pub dp: KernelDatapath,
    /// The kernel program packets go through.
    pub program: Program,
    cfg: DatapathConfig,
    /// Packets compared so far.
    pub compared: usize,
    /// At TC, the skb metadata of the next packets (the kernel's test runner gets it as the
    /// run's context, the engine as [`SkbMeta`]).
    pub skb: TestSkb,
    /// What [`send`](Self::send) compares.
    pub checks: Checks,
}

/// What both worlds did with one packet (they agreed on all of it that was compared).
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The verdict.
    pub verdict: Verdict,
    /// The frame as it left.
    pub frame: Vec<u8>,
    /// The engine's counters before the packet.
    pub before: CounterSnapshot,
    /// The engine's counters after it.
    pub after: CounterSnapshot,
    /// The drop events of the packet (the engine's; the kernel's are the same but for the
    /// interface). Empty under [`Checks::Output`].
    pub drop_events: Vec<DropEvent>,
    /// The kernel's time for the run, as its test runner measured it.
    pub kernel_ns: u64,
}

/// How the worlds disagreed about a packet, or why the kernel did not run it.
#[derive(Debug)]
pub enum Difference {
    /// The kernel's test runner refused the packet or failed (the engine did not run it).
    KernelRun(lb_bpf::Error),
    /// The worlds differ in `what` (verdict, output bytes, conntrack, counters, drop events).
    Differs {
        /// What differs.
        what: &'static str,
        /// The kernel's side, as text.
        kernel: String,
        /// The engine's side, as text.
        engine: String,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KernelRun(e) => write!(f, "the kernel's test run failed: {e}"),
            Self::Differs {
                what,
                kernel,
                engine,
            } => write!(f, "{what} differ\n  kernel: {kernel}\n  engine: {engine}"),
        }
    }
}

impl std::error::Error for Difference {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::KernelRun(e) => Some(e),
            Self::Differs { .. } => None,
        }
    }
}

/// `Err(Differs)` unless `kernel == engine`.
fn same<T: PartialEq + fmt::Debug>(
    what: &'static str,
    kernel: &T,
    engine: &T,
) -> Result<(), Difference> {
    if kernel == engine {
        return Ok(());
    }
    Err(Difference::Differs {
        what,
        kernel: format!("{kernel:?}"),
        engine: format!("{engine:?}"),
    })
}

/// Frames in hex, where they first differ.
fn bytes_differ(kernel: &[u8], engine: &[u8]) -> Difference {
    let at = kernel
        .iter()
        .zip(engine)
        .position(|(a, b)| a != b)
        .unwrap_or(kernel.len().min(engine.len()));
    let hex = |b: &[u8]| -> String {
        let s: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!("{s} ({} bytes, first difference at byte {at})", b.len())
    };
    Difference::Differs {
        what: "output bytes",
        kernel: hex(kernel),
        engine: hex(engine),
    }
}

impl EngineAndKernel<ManualClock> {
    /// Loads the programs, empties the kernel's conntrack map and counters, and installs
    /// `services` in both worlds; the engine's clock is a [`ManualClock`], and each packet's time
    /// is given to [`send`](Self::send).
    ///
    /// # Errors
    /// If the programs cannot be loaded or a service cannot be installed.
    pub fn new(
        program: Program,
        cfg: DatapathConfig,
        services: &[ServiceSpec],
    ) -> anyhow::Result<Self> {
        Self::with_clock(
            program,
            cfg,
            ManualClock::new(0),
            ENGINE_CT_CAPACITY,
            services,
        )
    }
}

impl<C: Clock> EngineAndKernel<C> {
    /// [`new`](EngineAndKernel::new) with the engine on `clock` (the kernel's is
    /// `bpf_ktime_get_coarse_ns` unless a packet's time is given) and a conntrack table of
    /// `ct_capacity` entries.
    ///
    /// # Errors
    /// If the programs cannot be loaded or a service cannot be installed.
    pub fn with_clock(
        program: Program,
        cfg: DatapathConfig,
        clock: C,
        ct_capacity: usize,
        services: &[ServiceSpec],
    ) -> anyhow::Result<Self> {
        let mut dp = KernelDatapath::load()?;
        dp.flush_conntrack()?;
        dp.reset_counters()?;
        dp.set_config(&cfg)?;
        let mut engine = Engine::with_clock(ct_capacity, cfg, clock);
        for s in services {
            dp.upsert_service(s)?;
            engine.upsert_service(s)?;
        }
        Ok(Self {
            engine,
            dp,
            program,
            cfg,
            compared: 0,
            skb: TestSkb::default(),
            checks: Checks::Everything,
        })
    }

    /// [`with_clock`](Self::with_clock) with every table sized by `sizes` in both worlds (the
    /// kernel's maps loaded at those sizes, the engine's tables bounded alike): for tests that
    /// fill tables to make inserts fail.
    ///
    /// # Errors
    /// If the programs cannot be loaded or a service cannot be installed.
    pub fn with_sizes(
        program: Program,
        cfg: DatapathConfig,
        clock: C,
        sizes: &lb_control::TableSizes,
        services: &[ServiceSpec],
    ) -> anyhow::Result<Self> {
        let mut dp = KernelDatapath::load_with(&lb_bpf::LoadOptions::with_sizes(*sizes))?;
        dp.reset_counters()?;
        dp.set_config(&cfg)?;
        let mut engine = Engine::with_sizes(sizes, cfg, clock);
        for s in services {
            dp.upsert_service(s)?;
            engine.upsert_service(s)?;
        }
        Ok(Self {
            engine,
            dp,
            program,
            cfg,
            compared: 0,
            skb: TestSkb::default(),
            checks: Checks::Everything,
        })
    }

    /// Sets this node's identity (addresses, peers, tunnel parameters) in both worlds, from the
    /// configuration they were created with.
    ///
    /// # Errors
    /// If either world refuses it, or they then hold different configurations.
    pub fn set_node(&mut self, node: &NodeSpec) -> anyhow::Result<()> {
        self.engine.set_config(self.cfg);
        self.dp.set_config(&self.cfg)?;
        self.engine.set_node(node)?;
        self.dp.set_node(node)?;
        let cfg = *self.engine.config();
        same("configurations", &self.dp.config()?, &cfg)?;
        self.cfg = cfg;
        Ok(())
    }

    /// The configuration both worlds run with (before a packet's time).
    #[must_use]
    pub fn config(&self) -> &DatapathConfig {
        &self.cfg
    }

    /// The engine's conntrack entries, sorted by key bytes like the kernel's dump.
    #[must_use]
    pub fn engine_conntrack(&self) -> Vec<(CtKey, CtEntry)> {
        let mut v: Vec<_> = self
            .engine
            .conntrack()
            .iter()
            .map(|(k, e)| (*k, *e))
            .collect();
        v.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        v
    }

    /// Sends `frame` through both worlds, the kernel first (a packet its test runner refuses
    /// reaches neither), and compares them ([`checks`](Self::checks)). With `now_ns`, both run
    /// at that time (`fixed_now_ns`); without, each on its own clock.
    ///
    /// # Errors
    /// The first [`Difference`].
    pub fn send(&mut self, frame: &[u8], now_ns: Option<u64>) -> Result<Outcome, Difference> {
        let everything = self.checks == Checks::Everything;
        if everything {
            // Events of earlier activity (none expected) must not be blamed on this packet.
            let _ = (self.engine.drain_drop_events(), self.dp.drain_drop_events());
        }
        if let Some(now) = now_ns {
            let cfg = DatapathConfig {
                fixed_now_ns: now,
                ..self.cfg
            };
            self.engine.set_config(cfg);
            self.dp.set_config(&cfg).map_err(Difference::KernelRun)?;
        }
        let kernel = self
            .dp
            .test_run_skb(self.program, frame, 1, &self.skb)
            .map_err(Difference::KernelRun)?;
        let before = *self.engine.counters();
        let mut user = frame.to_vec();
        // The engine runs the packet as the program's hook has it: at TC with the skb's
        // metadata, room made by the kernel's skb helpers (the test runner gives a GSO size no
        // GSO type).
        let verdict = match self.program {
            Program::Tc => {
                let meta = SkbMeta {
                    gso_size: self.skb.gso_size,
                    gso_type: GsoType::Unknown,
                    ..SkbMeta::default()
                };
                self.engine.process_tc(&mut user, meta)
            }
            _ => self.engine.process(&mut user),
        };
        same("verdicts", &kernel.verdict, &verdict)?;
        if kernel.data != user {
            return Err(bytes_differ(&kernel.data, &user));
        }
        let after = *self.engine.counters();
        let mut drop_events = Vec::new();
        if everything {
            let kernel_ct = self.dp.conntrack_entries().map_err(Difference::KernelRun)?;
            same("conntrack contents", &kernel_ct, &self.engine_conntrack())?;
            let kernel_affinity = self.dp.affinity_entries().map_err(Difference::KernelRun)?;
            // The engine's read cannot fail.
            let engine_affinity = Dataplane::affinity_entries(&self.engine).unwrap_or_default();
            same("affinity contents", &kernel_affinity, &engine_affinity)?;
            let kernel_counters = self.dp.counters().map_err(Difference::KernelRun)?;
            same("counters", &kernel_counters, &after)?;
            // One drop event per dropped packet; the interface differs (the test runner's
            // loopback in the kernel, none in the engine).
            drop_events = self.engine.drain_drop_events();
            same(
                "drop events per dropped packet",
                &usize::from(verdict == Verdict::Drop),
                &drop_events.len(),
            )?;
            let kernel_events: Vec<DropEvent> = self
                .dp
                .drain_drop_events()
                .map_err(Difference::KernelRun)?
                .into_iter()
                .map(|e| DropEvent { ifindex: 0, ..e })
                .collect();
            same("drop events", &kernel_events, &drop_events)?;
        }
        self.compared += 1;
        Ok(Outcome {
            verdict,
            frame: user,
            before,
            after,
            drop_events,
            kernel_ns: u64::try_from(kernel.duration.as_nanos()).unwrap_or(u64::MAX),
        })
    }

    /// [`send`](Self::send) for tests: panics on a difference, naming the packet `what` and the
    /// program.
    ///
    /// # Panics
    /// If the worlds disagree or the kernel's test run fails.
    #[track_caller]
    pub fn expect_same(&mut self, what: &str, frame: &[u8], now_ns: u64) -> Outcome {
        let name = self.program.name();
        self.send(frame, Some(now_ns))
            .unwrap_or_else(|e| panic!("{what} ({name}): {e}"))
    }
}
