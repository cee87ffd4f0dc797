//! Engine against kernel, one packet at a time: the same frame, configuration and time go
//! through the userspace engine and through a kernel program with `BPF_PROG_TEST_RUN`; output
//! bytes, verdicts, conntrack contents (timestamps included, via `fixed_now_ns`), counters and
//! drop events must be identical after every packet.

use lb_api::abi::{CtEntry, CtKey, DatapathConfig};
use lb_api::counters::CounterSnapshot;
use lb_api::events::DropEvent;
use lb_api::Verdict;
use lb_bpf::{KernelDatapath, Program, TestSkb};
use lb_conntrack::ManualClock;
use lb_control::{NodeSpec, ServiceSpec};
use lb_datapath::engine::{Engine, GsoType, SkbMeta};
use zerocopy::IntoBytes;

/// Conntrack capacity of the engine (the kernel map holds 65536).
pub const ENGINE_CT_CAPACITY: usize = 4096;

/// Both worlds, configured alike.
pub struct EngineAndKernel {
    /// The userspace engine.
    pub engine: Engine<ManualClock>,
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
}

/// What both worlds did with one packet (they agreed on all of it).
pub struct Outcome {
    /// The verdict.
    pub verdict: Verdict,
    /// The frame as it left.
    pub frame: Vec<u8>,
    /// Counters before the packet.
    pub before: CounterSnapshot,
    /// Counters after it.
    pub after: CounterSnapshot,
}

impl EngineAndKernel {
    /// Loads the programs, empties the kernel's conntrack map and counters, and installs
    /// `services` in both worlds. `cfg.fixed_now_ns` is replaced by each packet's time.
    pub fn new(program: Program, cfg: DatapathConfig, services: &[ServiceSpec]) -> Self {
        let mut dp = KernelDatapath::load().unwrap_or_else(|e| panic!("load: {e}"));
        dp.flush_conntrack().unwrap();
        dp.reset_counters().unwrap();
        let mut engine = Engine::with_clock(ENGINE_CT_CAPACITY, cfg, ManualClock::new(0));
        for s in services {
            dp.upsert_service(s).unwrap();
            engine.upsert_service(s).unwrap();
        }
        Self {
            engine,
            dp,
            program,
            cfg,
            compared: 0,
            skb: TestSkb::default(),
        }
    }

    /// Sets this node's identity (addresses, peers, tunnel parameters) in both worlds, and
    /// checks that both then hold the same configuration.
    pub fn set_node(&mut self, node: &NodeSpec) {
        // From the same starting point in both worlds.
        self.engine.set_config(self.cfg);
        self.dp.set_config(&self.cfg).unwrap();
        self.engine
            .set_node(node)
            .unwrap_or_else(|e| panic!("engine set_node: {e}"));
        self.dp
            .set_node(node)
            .unwrap_or_else(|e| panic!("kernel set_node: {e}"));
        let cfg = *self.engine.config();
        assert_eq!(
            self.dp.config().unwrap(),
            cfg,
            "the node's configuration differs between the worlds"
        );
        self.cfg = cfg;
    }

    /// The engine's conntrack entries, sorted by key bytes like the kernel's dump.
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

    /// Sends `frame` at `now_ns` through both worlds and asserts that they agree; `what` names
    /// the packet in failure messages.
    pub fn send(&mut self, what: &str, frame: &[u8], now_ns: u64) -> Outcome {
        // Events of earlier activity (none expected) must not be blamed on this packet.
        let _ = (self.engine.drain_drop_events(), self.dp.drain_drop_events());
        let cfg = DatapathConfig {
            fixed_now_ns: now_ns,
            ..self.cfg
        };
        self.engine.set_config(cfg);
        self.dp.set_config(&cfg).unwrap();
        let name = self.program.name();
        let kernel = self
            .dp
            .test_run_skb(self.program, frame, 1, &self.skb)
            .unwrap_or_else(|e| {
                panic!("{what} ({name}): {e}: {:?}", std::error::Error::source(&e))
            });
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
        assert_eq!(kernel.verdict, verdict, "{what} ({name}): verdict");
        assert_eq!(kernel.data, user, "{what} ({name}): output bytes");
        assert_eq!(
            self.dp.conntrack_entries().unwrap(),
            self.engine_conntrack(),
            "{what} ({name}): conntrack"
        );
        let after = *self.engine.counters();
        assert_eq!(
            self.dp.counters().unwrap(),
            after,
            "{what} ({name}): counters"
        );
        // One drop event per dropped packet; the interface differs (the test runner's loopback
        // in the kernel, none in the engine).
        let user_events = self.engine.drain_drop_events();
        assert_eq!(
            user_events.len(),
            usize::from(verdict == Verdict::Drop),
            "{what}: engine drop events {user_events:?}"
        );
        let kernel_events: Vec<DropEvent> = self
            .dp
            .drain_drop_events()
            .unwrap()
            .into_iter()
            .map(|e| DropEvent { ifindex: 0, ..e })
            .collect();
        assert_eq!(kernel_events, user_events, "{what} ({name}): drop events");
        self.compared += 1;
        Outcome {
            verdict,
            frame: user,
            before,
            after,
        }
    }
}
