//! `/metrics`: the datapath's counters and drop reasons, conntrack by protocol and state, table
//! fill, GC runs and programming latency, in the Prometheus text format (the `prometheus`
//! crate's encoder: the format `promtool check metrics` lints, unlike OpenMetrics' counters).

use lb_api::abi::CtKind;
use lb_api::tables::{self, Table};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use super::pinned::{PinnedError, PinnedMaps};
use super::views::{proto_name, state_name};

/// What the agent itself measures, shared with the metrics server.
#[derive(Debug, Clone)]
pub struct AgentStats {
    /// Programming rounds (each a batch of changes written to the maps).
    pub syncs: IntCounter,
    /// Frontends written or removed, by operation and outcome.
    pub programmed: IntCounterVec,
    /// Seconds from a change seen to its batch written.
    pub programming_latency: Histogram,
    /// Issues the last translation reported (unsupported or invalid fields).
    pub issues: IntGauge,
    /// Drop events read from the datapath.
    pub drop_events: IntCounter,
    /// GC sweeps run (from the GC task).
    pub gc_runs: IntCounter,
    /// Entries the GC deleted in total.
    pub gc_deleted: IntCounter,
}

/// A metric's options.
fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl AgentStats {
    /// The agent's metrics, zero.
    ///
    /// # Errors
    /// [`MetricsError::Registry`] if a metric is refused (an invalid name: a bug).
    pub fn new() -> Result<Self, MetricsError> {
        let e = MetricsError::Registry;
        let counter = |n: &str, h: &str| IntCounter::with_opts(opts(n, h)).map_err(e);
        Ok(Self {
            syncs: counter("agent_syncs_total", "Programming rounds")?,
            programmed: IntCounterVec::new(
                opts(
                    "agent_programmed_total",
                    "Frontends written or removed, by operation and outcome",
                ),
                &["op", "outcome"],
            )
            .map_err(e)?,
            programming_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "agent_programming_latency_seconds",
                    "From a change seen to its batch written",
                )
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0]),
            )
            .map_err(e)?,
            issues: IntGauge::with_opts(opts(
                "agent_translation_issues",
                "Fields the last translation could not express",
            ))
            .map_err(e)?,
            drop_events: counter(
                "agent_drop_events_total",
                "Drop events read from the datapath",
            )?,
            gc_runs: counter("gc_runs_total", "Conntrack GC sweeps")?,
            gc_deleted: counter(
                "gc_deleted_entries_total",
                "Conntrack entries deleted by GC",
            )?,
        })
    }
}

/// The tables whose fill is exported.
const FILLED: [Table; 4] = [
    tables::CONNTRACK,
    tables::SERVICES,
    tables::BACKENDS,
    tables::NODES,
];

/// Why the metrics cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A map cannot be read.
    #[error(transparent)]
    Pinned(#[from] PinnedError),
    /// The registry refused a metric (a name defined twice: a bug).
    #[error("building the metrics failed")]
    Registry(#[source] prometheus::Error),
}

/// Encodes every metric, reading the datapath through its pinned maps at `now_ns`.
///
/// # Errors
/// [`MetricsError`] if a map cannot be read.
pub fn render(maps: &PinnedMaps, stats: &AgentStats, now_ns: u64) -> Result<String, MetricsError> {
    let reg = Registry::new_custom(Some("lb".into()), None).map_err(MetricsError::Registry)?;
    let add =
        |c: Box<dyn prometheus::core::Collector>| reg.register(c).map_err(MetricsError::Registry);
    let counters = maps.counters()?;
    let packets = IntCounterVec::new(
        opts("datapath_total", "Datapath counters by name"),
        &["counter"],
    )
    .map_err(MetricsError::Registry)?;
    for c in lb_api::counters::Counter::ALL {
        packets
            .with_label_values(&[c.name()])
            .inc_by(counters.get(c));
    }
    add(Box::new(packets))?;
    let drops = IntCounterVec::new(
        opts("drops_total", "Dropped packets by reason"),
        &["reason"],
    )
    .map_err(MetricsError::Registry)?;
    for r in lb_api::counters::DropReason::ALL {
        drops
            .with_label_values(&[r.name()])
            .inc_by(counters.drops(r));
    }
    add(Box::new(drops))?;

    let ct = IntGaugeVec::new(
        opts("conntrack_flows", "Conntrack flows by protocol and state"),
        &["proto", "state"],
    )
    .map_err(MetricsError::Registry)?;
    let expired = IntGauge::with_opts(opts(
        "conntrack_expired_flows",
        "Flows past their expiry, waiting for GC",
    ))
    .map_err(MetricsError::Registry)?;
    for (k, e) in maps.conntrack()? {
        if k.kind != CtKind::Service as u8 {
            continue;
        }
        ct.with_label_values(&[proto_name(k.proto), &state_name(e.state)])
            .inc();
        if e.expires_ns < now_ns {
            expired.inc();
        }
    }
    add(Box::new(ct))?;
    add(Box::new(expired))?;

    let entries = IntGaugeVec::new(opts("table_entries", "Entries in each table"), &["table"])
        .map_err(MetricsError::Registry)?;
    let capacity = IntGaugeVec::new(
        opts("table_capacity", "Size (max_entries) of each table"),
        &["table"],
    )
    .map_err(MetricsError::Registry)?;
    for t in FILLED {
        let (n, max) = maps.fill(t)?;
        entries
            .with_label_values(&[t.name])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
        capacity.with_label_values(&[t.name]).set(i64::from(max));
    }
    add(Box::new(entries))?;
    add(Box::new(capacity))?;
    add(Box::new(stats.syncs.clone()))?;
    add(Box::new(stats.programmed.clone()))?;
    add(Box::new(stats.programming_latency.clone()))?;
    add(Box::new(stats.issues.clone()))?;
    add(Box::new(stats.drop_events.clone()))?;
    add(Box::new(stats.gc_runs.clone()))?;
    add(Box::new(stats.gc_deleted.clone()))?;
    TextEncoder::new()
        .encode_to_string(&reg.gather())
        .map_err(MetricsError::Registry)
}
