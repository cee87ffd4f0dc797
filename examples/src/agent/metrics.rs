//! `/metrics`: the datapath's counters and drop reasons, conntrack by protocol and state, table
//! fill, GC runs and programming latency, in the Prometheus text format (prometheus-client).

use std::sync::atomic::AtomicU64;

use lb_api::abi::CtKind;
use lb_api::tables::{self, Table};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::pinned::{PinnedError, PinnedMaps};
use super::views::{proto_name, state_name};

/// What the agent itself measures, shared with the metrics server.
#[derive(Debug)]
pub struct AgentStats {
    /// Programming rounds (each a batch of changes written to the maps).
    pub syncs: Counter,
    /// Services (frontends) written or removed per outcome.
    pub programmed: Family<Vec<(String, String)>, Counter>,
    /// Seconds from a change seen to its batch written.
    pub programming_latency: Histogram,
    /// Issues the last translation reported (unsupported or invalid fields).
    pub issues: Gauge,
    /// Drop events streamed to monitors.
    pub drop_events: Counter,
    /// GC sweeps run (from the GC task).
    pub gc_runs: Counter<u64, AtomicU64>,
    /// Entries the GC deleted in total.
    pub gc_deleted: Counter<u64, AtomicU64>,
}

impl Default for AgentStats {
    fn default() -> Self {
        Self {
            syncs: Counter::default(),
            programmed: Family::default(),
            programming_latency: Histogram::new(
                [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0].into_iter(),
            ),
            issues: Gauge::default(),
            drop_events: Counter::default(),
            gc_runs: Counter::default(),
            gc_deleted: Counter::default(),
        }
    }
}

/// The tables whose fill is exported.
const FILLED: [Table; 4] = [
    tables::CONNTRACK,
    tables::SERVICES,
    tables::BACKENDS,
    tables::NODES,
];

/// Encodes every metric, reading the datapath through its pinned maps at `now_ns`.
///
/// # Errors
/// [`PinnedError`] if a map cannot be read.
pub fn render(maps: &PinnedMaps, stats: &AgentStats, now_ns: u64) -> Result<String, PinnedError> {
    let mut reg = Registry::with_prefix("lb");
    let counters = maps.counters()?;
    let packets: Family<Vec<(String, String)>, Counter> = Family::default();
    for c in lb_api::counters::Counter::ALL {
        packets
            .get_or_create(&vec![("counter".into(), c.name().into())])
            .inc_by(counters.get(c));
    }
    reg.register("datapath", "Datapath counters by name", packets);
    let drops: Family<Vec<(String, String)>, Counter> = Family::default();
    for r in lb_api::counters::DropReason::ALL {
        drops
            .get_or_create(&vec![("reason".into(), r.name().into())])
            .inc_by(counters.drops(r));
    }
    reg.register("drops", "Dropped packets by reason", drops);

    let ct: Family<Vec<(String, String)>, Gauge> = Family::default();
    let mut expired = 0i64;
    for (k, e) in maps.conntrack()? {
        if k.kind != CtKind::Service as u8 {
            continue;
        }
        ct.get_or_create(&vec![
            ("proto".into(), proto_name(k.proto).into()),
            ("state".into(), state_name(e.state)),
        ])
        .inc();
        if e.expires_ns < now_ns {
            expired += 1;
        }
    }
    reg.register(
        "conntrack_flows",
        "Conntrack flows by protocol and state",
        ct,
    );
    let exp: Gauge = Gauge::default();
    exp.set(expired);
    reg.register(
        "conntrack_expired_flows",
        "Flows past their expiry, waiting for GC",
        exp,
    );

    let entries: Family<Vec<(String, String)>, Gauge> = Family::default();
    let capacity: Family<Vec<(String, String)>, Gauge> = Family::default();
    for t in FILLED {
        let (n, max) = maps.fill(t)?;
        let l = vec![("table".into(), t.name.into())];
        entries
            .get_or_create(&l)
            .set(i64::try_from(n).unwrap_or(i64::MAX));
        capacity.get_or_create(&l).set(i64::from(max));
    }
    reg.register("table_entries", "Entries in each table", entries);
    reg.register(
        "table_capacity",
        "Size (max_entries) of each table",
        capacity,
    );

    reg.register("agent_syncs", "Programming rounds", stats.syncs.clone());
    reg.register(
        "agent_programmed",
        "Frontends written or removed, by operation and outcome",
        stats.programmed.clone(),
    );
    reg.register(
        "agent_programming_latency_seconds",
        "From a change seen to its batch written",
        stats.programming_latency.clone(),
    );
    reg.register(
        "agent_translation_issues",
        "Fields the last translation could not express",
        stats.issues.clone(),
    );
    reg.register(
        "agent_drop_events",
        "Drop events read from the datapath",
        stats.drop_events.clone(),
    );
    reg.register("gc_runs", "Conntrack GC sweeps", stats.gc_runs.clone());
    reg.register(
        "gc_deleted_entries",
        "Conntrack entries deleted by GC",
        stats.gc_deleted.clone(),
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    Ok(out)
}
