//! One node of `lb-kernel-bench --modes`: its kernel datapath and the userspace engine, every
//! run compared by [`lb_testbed::harness`]; and the counter and timing arithmetic of the rows.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, ensure, Context, Result};
use lb_api::abi::{CtEntry, CtKey, CtKind, DatapathConfig, CT_F_SNAT, CT_F_SRC_PORT_REWRITTEN};
use lb_api::counters::{Counter, CounterSnapshot, DropReason, COUNTER_SLOTS};
use lb_api::flow::v4_addr;
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

impl Node {
    /// One run of a packet whose output carries a port each world draws at random (a new
    /// flow's SNAT port: `bpf_get_prandom_u32` in the kernel, the engine's own generator): the
    /// verdicts must be Pass and the outputs identical but for the TCP source port and
    /// checksum. Each world's port is then checked by property ([`check_snat_reservations`]).
    /// Returns the kernel's output, the engine's and the kernel's time.
    pub fn once_random_port(&mut self, frame: &[u8]) -> Result<(Vec<u8>, Vec<u8>, u64)> {
        let k = self.pair.dp.test_run(Program::Xdp, frame, 1)?;
        let mut user = frame.to_vec();
        let v = self.pair.engine.process(&mut user);
        ensure!(
            k.verdict == Verdict::Pass && v == Verdict::Pass,
            "node {}: verdicts kernel {:?}, engine {v:?}, expected Pass",
            self.name,
            k.verdict
        );
        ensure!(
            k.data.len() == user.len(),
            "node {}: kernel output {} B, engine's {} B",
            self.name,
            k.data.len(),
            user.len()
        );
        let l4 = tcp_offset(&k.data)?;
        let random = [l4, l4 + 1, l4 + 16, l4 + 17];
        if let Some(i) = (0..user.len()).find(|&i| k.data[i] != user[i] && !random.contains(&i)) {
            bail!(
                "node {}: kernel output differs from the engine's at byte {i}, outside the \
                 source port and TCP checksum",
                self.name
            );
        }
        Ok((
            k.data,
            user,
            u64::try_from(k.duration.as_nanos()).unwrap_or(u64::MAX),
        ))
    }
}

/// Offset of the TCP header in an Ethernet frame without VLAN tags or IPv6 extension headers.
fn tcp_offset(f: &[u8]) -> Result<usize> {
    match (f.get(12..14), f.get(14)) {
        (Some([0x08, 0x00]), Some(v)) => Ok(14 + usize::from(v & 0x0f) * 4),
        (Some([0x86, 0xdd]), _) if f.get(20) == Some(&6) => Ok(54),
        _ => bail!("not IPv4 or IPv6 with TCP right after the header"),
    }
}

fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => v4_addr(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

fn ct_key(src: SocketAddr, dst: SocketAddr, kind: CtKind) -> CtKey {
    CtKey {
        src: addr16(src.ip()),
        dst: addr16(dst.ip()),
        src_port: src.port(),
        dst_port: dst.port(),
        proto: 6,
        family: if src.is_ipv4() { 4 } else { 6 },
        kind: kind as u8,
        ..CtKey::default()
    }
}

/// The SNAT ports of new flows, checked by property in one world's conntrack dump: run `i`
/// sent client `clients[i]` to `vip` and came out as `outs[i]` (node address and a drawn
/// port, to a backend). Each output's port must be reserved: the reverse-NAT entry of the
/// reply tuple exists and restores the service address and the client's address and port,
/// the flow's service entry points at that backend through that node address and port, and
/// no two flows hold the same reply tuple.
pub fn check_snat_reservations(
    world: &str,
    entries: &[(CtKey, CtEntry)],
    clients: &[SocketAddr],
    vip: SocketAddr,
    outs: &[Vec<u8>],
) -> Result<()> {
    let table: HashMap<CtKey, CtEntry> = entries.iter().copied().collect();
    let mut seen = HashSet::new();
    for (client, out) in clients.iter().zip(outs) {
        let v = crate::decode::decode(out)?;
        let ctx = || {
            format!(
                "{world}: the flow of {client}, sent as {} to {}",
                v.src, v.dst
            )
        };
        ensure!(
            seen.insert((v.src, v.dst)),
            "{}: reply tuple held twice",
            ctx()
        );
        let rev = table
            .get(&ct_key(v.dst, v.src, CtKind::ReverseNat))
            .with_context(|| format!("{}: no reverse-NAT entry (port not reserved)", ctx()))?;
        let port_back = if rev.has(CT_F_SRC_PORT_REWRITTEN) {
            rev.rewritten_src_port
        } else {
            v.src.port()
        };
        ensure!(
            rev.has(CT_F_SNAT)
                && rev.nat_addr == addr16(vip.ip())
                && rev.nat_port == vip.port()
                && rev.snat_addr == addr16(client.ip())
                && port_back == client.port(),
            "{}: the reverse-NAT entry does not lead back to {client} from {vip}: {rev:?}",
            ctx()
        );
        let fwd = table
            .get(&ct_key(*client, vip, CtKind::Service))
            .with_context(|| format!("{}: no service entry", ctx()))?;
        let port_out = if fwd.rewritten_src_port != 0 {
            fwd.rewritten_src_port
        } else {
            client.port()
        };
        ensure!(
            fwd.has(CT_F_SNAT)
                && fwd.nat_addr == addr16(v.dst.ip())
                && fwd.nat_port == v.dst.port()
                && fwd.snat_addr == addr16(v.src.ip())
                && port_out == v.src.port(),
            "{}: the service entry does not translate to what was sent: {fwd:?}",
            ctx()
        );
    }
    Ok(())
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
