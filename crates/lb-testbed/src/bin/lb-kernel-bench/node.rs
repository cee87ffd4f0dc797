//! One node of `lb-kernel-bench --modes`: its kernel datapath and the userspace engine, every
//! run compared by [`lb_testbed::harness`]; and the counter and timing arithmetic of the rows.

use anyhow::{ensure, Context, Result};
use lb_api::abi::DatapathConfig;
use lb_api::counters::{Counter, CounterSnapshot, DropReason, COUNTER_SLOTS};
use lb_api::Verdict;
use lb_bpf::{KernelDatapath, Program};
use lb_conntrack::MonotonicClock;
use lb_control::{NodeSpec, ServiceSpec};
use lb_datapath::engine::Engine;
use lb_testbed::harness::{Checks, EngineAndKernel};

/// Conntrack capacity of the engine: room for a row's flows (`modes::MAX_RUNS` flows of two
/// entries each; the kernel map is loaded at its default size).
const CT_CAPACITY: usize = 65_536;

/// One node: its kernel datapath and the userspace engine with the same configuration, compared
/// run by run ([`EngineAndKernel`]: verdict and output bytes; the counters per row).
pub struct Node {
    pub name: &'static str,
    pub pair: EngineAndKernel<MonotonicClock>,
    spec: NodeSpec,
    services: Vec<ServiceSpec>,
}

impl Node {
    pub fn load(
        name: &'static str,
        cfg: DatapathConfig,
        spec: NodeSpec,
        services: Vec<ServiceSpec>,
    ) -> Result<Self> {
        let mut pair =
            EngineAndKernel::with_clock(Program::Xdp, cfg, MonotonicClock, CT_CAPACITY, &services)
                .context("loading the programs")?;
        pair.set_node(&spec)?;
        pair.checks = Checks::Output;
        Ok(Self {
            name,
            pair,
            spec,
            services,
        })
    }

    /// The kernel side.
    pub fn dp(&self) -> &KernelDatapath {
        &self.pair.dp
    }

    /// Empties conntrack in both worlds.
    pub fn reset(&mut self) -> Result<()> {
        self.pair.dp.flush_conntrack()?;
        ensure!(
            self.pair.dp.conntrack_entries()?.is_empty(),
            "conntrack flush"
        );
        let mut e = Engine::with_clock(CT_CAPACITY, *self.pair.config(), MonotonicClock);
        e.set_node(&self.spec)?;
        for s in &self.services {
            e.upsert_service(s)?;
        }
        self.pair.engine = e;
        Ok(())
    }

    /// One run of `frame` through the XDP program and through the engine: the verdict must be
    /// Pass and both outputs byte-identical. Returns the output and the kernel's time.
    pub fn once(&mut self, frame: &[u8]) -> Result<(Vec<u8>, u64)> {
        let out = self
            .pair
            .send(frame, None)
            .with_context(|| format!("node {}", self.name))?;
        ensure!(
            out.verdict == Verdict::Pass,
            "node {}: verdict {:?}, expected Pass (drop events: {:?})",
            self.name,
            out.verdict,
            self.pair.dp.drain_drop_events()?
        );
        Ok((out.frame, out.kernel_ns))
    }
}

/// Counter slots that grew between two snapshots.
pub fn delta(before: &CounterSnapshot, after: &CounterSnapshot) -> Vec<(usize, u64)> {
    (0..COUNTER_SLOTS as usize)
        .filter_map(|i| {
            let d = after.0[i].wrapping_sub(before.0[i]);
            (d != 0).then_some((i, d))
        })
        .collect()
}

fn slot_name(slot: usize) -> String {
    Counter::ALL
        .iter()
        .find(|c| c.slot() as usize == slot)
        .map(|c| c.name())
        .or_else(|| {
            DropReason::ALL
                .iter()
                .find(|r| r.slot() as usize == slot)
                .map(|r| r.name())
        })
        .map_or_else(|| format!("slot {slot}"), str::to_string)
}

pub fn show(d: &[(usize, u64)]) -> String {
    d.iter()
        .map(|(s, n)| format!("{}={n}", slot_name(*s)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Median and mean of single-run times.
pub fn summarize(mut ns: Vec<u64>) -> (u64, f64) {
    ns.sort_unstable();
    let mean = ns.iter().sum::<u64>() as f64 / ns.len().max(1) as f64;
    (ns.get(ns.len() / 2).copied().unwrap_or(0), mean)
}
