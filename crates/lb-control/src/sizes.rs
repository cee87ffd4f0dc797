//! How large the datapath's tables are: [`TableSizes`], one number per sizable table of the
//! registry ([`lb_api::tables`]), its validation ([`SizeError`] names the table, the value, the
//! limit and the setting), a memory estimate per table, and a size-by-memory-fraction mode.
//!
//! The kernel loader (`lb_bpf::LoadOptions`) creates its maps with these sizes and the userspace
//! engine (`lb_datapath::engine::Engine::with_sizes`) limits its tables to them, so both refuse
//! the same programming with the same [`ConfigError::TableFull`](crate::ConfigError::TableFull).
//!
//! ```
//! use lb_control::{SizeError, TableSizes};
//!
//! let sizes = TableSizes::default();
//! assert_eq!(sizes.conntrack, 768 * 1024); // 393,216 flows: each flow takes two entries
//! sizes.validate(None).unwrap();
//! // The estimate of what the kernel preallocates for it.
//! assert!(sizes.memory_bytes() > 100 << 20);
//!
//! // Zero, or a ring that is no power-of-two multiple of the page size, is refused by name.
//! let bad = TableSizes { drop_events_bytes: 100_000, ..sizes };
//! let e = bad.validate(None).unwrap_err();
//! assert!(matches!(e, SizeError::NotPowerOfTwoPages { table: "LB_EVENTS", .. }));
//! assert!(e.to_string().contains("TableSizes::drop_events_bytes"), "{e}");
//! ```

use std::string::String;
use std::vec::Vec;

use lb_api::tables::{self, MapKind, Table};

/// The page size the ring buffer's size must be a power-of-two multiple of (x86-64, arm64 with
/// 4 KiB pages; the kernel checks its own page size at load).
pub const PAGE_SIZE: u32 = 4096;

/// The size of each sizable kernel table, in entries (bytes for the drop-event ring). The
/// [`Default`] is for production (at least Cilium's defaults): the sizes the registry declares
/// ([`Table::default_max_entries`], compiled into the object); [`TableSizes::small`] is for tests
/// that load many datapaths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TableSizes {
    /// Conntrack entries ([`tables::CONNTRACK`], `LB_CT`). A load-balanced flow takes two: its
    /// service entry and its reverse-NAT entry, so this holds `conntrack / 2` flows.
    pub conntrack: u32,
    /// Services, one entry per frontend and protocol ([`tables::SERVICES`], `LB_SERVICES`).
    pub services: u32,
    /// Backend slots of all services ([`tables::BACKENDS`], `LB_BACKENDS`): a random-selection
    /// service takes one per active backend (more with weights), a Maglev service its table size
    /// (16,381 by default).
    pub backends: u32,
    /// Peer nodes ([`tables::NODES`], `LB_NODES`).
    pub nodes: u32,
    /// XDP devices with partial checksums ([`tables::XDP_PARTIAL`], `LB_XDP_PARTIAL`).
    pub xdp_partial: u32,
    /// The drop-event ring's size in bytes ([`tables::DROP_EVENTS`], `LB_EVENTS`): a
    /// power-of-two multiple of the page size; 64 bytes per event.
    pub drop_events_bytes: u32,
    /// Session-affinity entries, one per client address and service with
    /// `SessionAffinity::ClientIp` ([`tables::AFFINITY`], `LB_AFFINITY`, an LRU hash: when
    /// full, the least recently used entries are evicted).
    pub affinity: u32,
    /// Active backends of the services with session affinity, by address
    /// ([`tables::BACKENDS_BY_ADDR`], `LB_BE_BY_ADDR`): one per backend and such service (not
    /// per slot); services without affinity take none.
    pub backends_by_addr: u32,
}

impl Default for TableSizes {
    /// Production sizes, the registry's ([`Table::default_max_entries`]): conntrack 768Ki
    /// entries (Cilium's 512Ki TCP + 256Ki other), services 64Ki (Cilium's), backend slots for
    /// 64 Maglev services of 16,381 slots, 16Ki nodes, a 256 KiB drop-event ring.
    fn default() -> Self {
        Self {
            conntrack: tables::CONNTRACK.default_max_entries,
            services: tables::SERVICES.default_max_entries,
            backends: tables::BACKENDS.default_max_entries,
            nodes: tables::NODES.default_max_entries,
            xdp_partial: tables::XDP_PARTIAL.default_max_entries,
            drop_events_bytes: tables::DROP_EVENTS.default_max_entries,
            affinity: tables::AFFINITY.default_max_entries,
            backends_by_addr: tables::BACKENDS_BY_ADDR.default_max_entries,
        }
    }
}

/// Why a [`TableSizes`] is refused: which table, the value, the limit, and the setting to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SizeError {
    /// A size below the least the table works with.
    #[error(
        "table {table}: {value} is below the minimum of {min} (set `{knob}` to at least {min})"
    )]
    TooSmall {
        /// The map's name.
        table: &'static str,
        /// The size given.
        value: u32,
        /// The least accepted.
        min: u32,
        /// The setting.
        knob: &'static str,
    },
    /// A ring buffer whose size is not a power-of-two multiple of the page size.
    #[error(
        "table {table}: {value} bytes is not a power-of-two multiple of the {page} B page, as \
         the kernel requires of a ring buffer (set `{knob}` to e.g. {suggested})"
    )]
    NotPowerOfTwoPages {
        /// The map's name.
        table: &'static str,
        /// The size given.
        value: u32,
        /// The page size.
        page: u32,
        /// The next valid size.
        suggested: u32,
        /// The setting.
        knob: &'static str,
    },
    /// The tables together would take more memory than the node allows them.
    #[error(
        "the tables need about {needed} B, over the {limit} B allowed; the largest is {table} \
         with {entries} entries ({table_bytes} B): lower `{knob}` or allow more memory"
    )]
    OverMemory {
        /// Estimated bytes of all tables.
        needed: u64,
        /// The limit.
        limit: u64,
        /// The largest table's map name.
        table: &'static str,
        /// Its size.
        entries: u32,
        /// Its estimated bytes.
        table_bytes: u64,
        /// Its setting.
        knob: &'static str,
    },
    /// The machine's memory could not be read (size-by-memory-fraction mode).
    #[error("reading MemTotal from /proc/meminfo failed: {reason} (give the memory explicitly)")]
    MemInfo {
        /// What failed.
        reason: String,
    },
    /// A memory fraction outside (0, 1].
    #[error("memory fraction {fraction} is outside (0, 1] (Cilium's bpf-map-dynamic-size-ratio is typically 0.0025)")]
    Fraction {
        /// The fraction given.
        fraction: f64,
    },
}

/// Bytes the kernel adds to each preallocated hash-map element (`struct htab_elem`: list node,
/// hash, padding) before the key and value, each rounded up to 8 bytes.
const HTAB_ELEM_OVERHEAD: u64 = 48;
/// Bytes per hash bucket (`struct bucket`: list head and lock); buckets are a power of two.
const HTAB_BUCKET: u64 = 16;

/// Shares of a memory budget in [`TableSizes::by_memory_fraction`], in percent, as Cilium's
/// dynamic sizing splits its ratio over conntrack, NAT and load-balancer maps.
const FRACTION_SHARES: [(&str, u64); 3] = [("conntrack", 70), ("backends", 20), ("services", 10)];

/// Bytes a drop event takes in the ring: its 56-byte record and the ring's 8-byte header.
pub const DROP_EVENT_SLOT_BYTES: u32 = 64;

impl TableSizes {
    /// How many drop events the ring holds (the engine keeps as many in its queue).
    #[must_use]
    pub const fn drop_event_capacity(&self) -> usize {
        (self.drop_events_bytes / DROP_EVENT_SLOT_BYTES) as usize
    }

    /// Small sizes for tests that load many datapaths (about 21 MiB of kernel memory instead
    /// of about 290): conntrack 64Ki entries, 4Ki services, 64Ki backend slots (four Maglev
    /// tables of 16,381), 1Ki nodes; the default ring.
    #[must_use]
    pub const fn small() -> Self {
        Self {
            conntrack: 64 * 1024,
            services: 4 * 1024,
            backends: 64 * 1024,
            nodes: 1024,
            xdp_partial: tables::XDP_PARTIAL.default_max_entries,
            drop_events_bytes: tables::DROP_EVENTS.default_max_entries,
            affinity: 4 * 1024,
            backends_by_addr: 4 * 1024,
        }
    }

    /// The configured size of `table` and the setting that sets it; `None` for a table whose
    /// size is fixed by the datapath (configuration, counters, scratch, stage arrays).
    #[must_use]
    pub fn of(&self, table: &Table) -> Option<(u32, &'static str)> {
        let (v, knob) = match table.name {
            n if n == tables::CONNTRACK.name => (self.conntrack, "TableSizes::conntrack"),
            n if n == tables::SERVICES.name => (self.services, "TableSizes::services"),
            n if n == tables::BACKENDS.name => (self.backends, "TableSizes::backends"),
            n if n == tables::NODES.name => (self.nodes, "TableSizes::nodes"),
            n if n == tables::XDP_PARTIAL.name => (self.xdp_partial, "TableSizes::xdp_partial"),
            n if n == tables::DROP_EVENTS.name => {
                (self.drop_events_bytes, "TableSizes::drop_events_bytes")
            }
            n if n == tables::AFFINITY.name => (self.affinity, "TableSizes::affinity"),
            n if n == tables::BACKENDS_BY_ADDR.name => {
                (self.backends_by_addr, "TableSizes::backends_by_addr")
            }
            _ => return None,
        };
        Some((v, knob))
    }

    /// Every sizable table of the registry with its size and setting, in registry order.
    #[must_use]
    pub fn entries(&self) -> Vec<(Table, u32, &'static str)> {
        tables::ALL
            .iter()
            .filter_map(|t| self.of(t).map(|(v, k)| (*t, v, k)))
            .collect()
    }

    /// Checks every size: at least the least the datapath works with (conntrack: one flow's two
    /// entries; every other table: one entry), the ring a power-of-two multiple of
    /// [`PAGE_SIZE`], and, with `memory_limit`, the estimate of all tables
    /// ([`memory_bytes`](Self::memory_bytes)) within it.
    ///
    /// # Errors
    /// The first [`SizeError`] found, naming the table and the setting.
    pub fn validate(&self, memory_limit: Option<u64>) -> Result<(), SizeError> {
        for (t, value, knob) in self.entries() {
            if t.kind == MapKind::RingBuf {
                if value < PAGE_SIZE
                    || !(value / PAGE_SIZE).is_power_of_two()
                    || value % PAGE_SIZE != 0
                {
                    return Err(SizeError::NotPowerOfTwoPages {
                        table: t.name,
                        value,
                        page: PAGE_SIZE,
                        suggested: value.max(PAGE_SIZE).next_power_of_two(),
                        knob,
                    });
                }
                continue;
            }
            let min = if t.name == tables::CONNTRACK.name {
                2
            } else {
                1
            };
            if value < min {
                return Err(SizeError::TooSmall {
                    table: t.name,
                    value,
                    min,
                    knob,
                });
            }
        }
        if let Some(limit) = memory_limit {
            let needed = self.memory_bytes();
            if needed > limit {
                let (t, entries, knob) = self
                    .entries()
                    .into_iter()
                    .max_by_key(|(t, v, _)| table_memory_bytes(t, *v))
                    .unwrap_or((tables::CONNTRACK, self.conntrack, "TableSizes::conntrack"));
                return Err(SizeError::OverMemory {
                    needed,
                    limit,
                    table: t.name,
                    entries,
                    table_bytes: table_memory_bytes(&t, entries),
                    knob,
                });
            }
        }
        Ok(())
    }

    /// The estimated kernel memory of all sized tables, in bytes ([`table_memory_bytes`]).
    #[must_use]
    pub fn memory_bytes(&self) -> u64 {
        self.entries()
            .iter()
            .map(|(t, v, _)| table_memory_bytes(t, *v))
            .sum()
    }

    /// Sizes from a share of the machine's memory, like Cilium's `bpf-map-dynamic-size-ratio`:
    /// `fraction` of `total_bytes` split over conntrack (70 %), backend slots (20 %) and
    /// services (10 %) by their per-entry cost; no table below its [`Default`] size. The other
    /// tables keep their defaults.
    ///
    /// # Errors
    /// [`SizeError::Fraction`] for a fraction outside (0, 1].
    pub fn by_memory_fraction(total_bytes: u64, fraction: f64) -> Result<Self, SizeError> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(SizeError::Fraction { fraction });
        }
        let mut s = Self::default();
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a budget in bytes: precision to the byte does not matter, and it is positive"
        )]
        let budget = (total_bytes as f64 * fraction) as u64;
        for (name, share) in FRACTION_SHARES {
            let (table, field) = match name {
                "conntrack" => (tables::CONNTRACK, &mut s.conntrack),
                "backends" => (tables::BACKENDS, &mut s.backends),
                _ => (tables::SERVICES, &mut s.services),
            };
            let per_entry = entry_bytes(&table) + HTAB_BUCKET;
            let n = u32::try_from(budget * share / 100 / per_entry).unwrap_or(u32::MAX);
            *field = n.max(*field);
        }
        Ok(s)
    }

    /// Sizes from a share of this machine's memory (`MemTotal` in /proc/meminfo); see
    /// [`by_memory_fraction`](Self::by_memory_fraction).
    ///
    /// # Errors
    /// [`SizeError::MemInfo`] if /proc/meminfo cannot be read, [`SizeError::Fraction`].
    pub fn by_memory_fraction_of_this_node(fraction: f64) -> Result<Self, SizeError> {
        Self::by_memory_fraction(total_memory()?, fraction)
    }

    /// A Markdown table of every sized table's entries and estimated memory (what
    /// `docs/performance.md` shows for the defaults).
    #[must_use]
    pub fn memory_table_markdown(&self) -> String {
        use core::fmt::Write as _;
        let mut s = String::from(
            "| table | setting | entries | bytes per entry | memory (MiB) |\n|---|---|---:|---:|---:|\n",
        );
        for (t, v, knob) in self.entries() {
            let per = if t.kind == MapKind::RingBuf {
                1
            } else {
                entry_bytes(&t)
            };
            let _ = writeln!(
                s,
                "| `{}` | `{knob}` | {v} | {per} | {:.1} |",
                t.name,
                mib(table_memory_bytes(&t, v))
            );
        }
        let _ = writeln!(s, "| total | | | | {:.1} |", mib(self.memory_bytes()));
        s
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "a figure for people, to a tenth of a MiB"
)]
fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Bytes of one preallocated element of `table` (hash maps: element header, key and value each
/// rounded up to 8 bytes; arrays: the value).
fn entry_bytes(table: &Table) -> u64 {
    let r8 = |n: u32| u64::from(n).div_ceil(8) * 8;
    let value = r8(table.value_size.unwrap_or(0));
    match table.kind {
        MapKind::Hash | MapKind::LruHash => HTAB_ELEM_OVERHEAD + r8(table.key_size) + value,
        _ => value,
    }
}

/// The estimated kernel memory of `table` with `entries` entries: preallocated elements
/// (header + key + value, each rounded to 8 bytes) and the bucket array for a hash map; the
/// bytes of a ring buffer. An estimate: the kernel adds per-CPU spare elements and page
/// rounding.
#[must_use]
pub fn table_memory_bytes(table: &Table, entries: u32) -> u64 {
    match table.kind {
        MapKind::RingBuf => u64::from(entries),
        MapKind::Hash | MapKind::LruHash => {
            u64::from(entries) * entry_bytes(table)
                + u64::from(entries).next_power_of_two() * HTAB_BUCKET
        }
        _ => u64::from(entries) * entry_bytes(table),
    }
}

/// This machine's memory (`MemTotal` in /proc/meminfo), in bytes.
///
/// # Errors
/// [`SizeError::MemInfo`] if it cannot be read.
pub fn total_memory() -> Result<u64, SizeError> {
    let text = std::fs::read_to_string("/proc/meminfo").map_err(|e| SizeError::MemInfo {
        reason: e.to_string(),
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| SizeError::MemInfo {
            reason: "no `MemTotal: N kB` line".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maglev::MAGLEV_DEFAULT_TABLE_SIZE;

    #[test]
    fn defaults_are_at_least_ciliums_and_valid() {
        let d = TableSizes::default();
        d.validate(None).unwrap();
        // The engine's drop-event queue at the defaults is the ring's 64-byte slots.
        assert_eq!(d.drop_event_capacity(), 4096);
        assert!(d.conntrack >= 768 * 1024);
        assert!(d.services >= 64 * 1024);
        assert!(d.backends >= 64 * 16_381);
        TableSizes::small().validate(None).unwrap();
        assert_eq!(d.backends, 64 * MAGLEV_DEFAULT_TABLE_SIZE);
        // Every sizable registry table is covered, and only those.
        let names: Vec<_> = d.entries().iter().map(|e| e.0.name).collect();
        assert_eq!(
            names,
            [
                "LB_CT",
                "LB_SERVICES",
                "LB_BACKENDS",
                "LB_NODES",
                "LB_XDP_PARTIAL",
                "LB_EVENTS",
                "LB_AFFINITY",
                "LB_BE_BY_ADDR"
            ]
        );
    }

    #[test]
    fn invalid_sizes_name_table_value_and_setting() {
        let d = TableSizes::default();
        let e = TableSizes { services: 0, ..d }.validate(None).unwrap_err();
        assert_eq!(
            e,
            SizeError::TooSmall {
                table: "LB_SERVICES",
                value: 0,
                min: 1,
                knob: "TableSizes::services"
            }
        );
        assert!(e.to_string().contains("TableSizes::services"), "{e}");
        let e = TableSizes { conntrack: 1, ..d }.validate(None).unwrap_err();
        assert!(
            matches!(
                e,
                SizeError::TooSmall {
                    table: "LB_CT",
                    min: 2,
                    ..
                }
            ),
            "{e}"
        );
        for bad in [0, 1000, 3 * PAGE_SIZE, PAGE_SIZE + 1] {
            let e = TableSizes {
                drop_events_bytes: bad,
                ..d
            }
            .validate(None)
            .unwrap_err();
            assert!(
                matches!(e, SizeError::NotPowerOfTwoPages { table: "LB_EVENTS", suggested, .. } if suggested >= bad && (suggested / PAGE_SIZE).is_power_of_two()),
                "{bad}: {e}"
            );
        }
        TableSizes {
            drop_events_bytes: PAGE_SIZE,
            ..d
        }
        .validate(None)
        .unwrap();
    }

    #[test]
    fn over_memory_names_the_largest_table() {
        let d = TableSizes::default();
        let e = d.validate(Some(64 << 20)).unwrap_err();
        let SizeError::OverMemory {
            needed,
            limit,
            table,
            knob,
            ..
        } = e.clone()
        else {
            panic!("{e}");
        };
        assert_eq!((needed, limit), (d.memory_bytes(), 64 << 20));
        assert_eq!((table, knob), ("LB_CT", "TableSizes::conntrack"));
        assert!(
            e.to_string().contains("lower `TableSizes::conntrack`"),
            "{e}"
        );
        d.validate(Some(d.memory_bytes())).unwrap();
    }

    #[test]
    fn memory_estimate_counts_elements_and_buckets() {
        // CtKey 56 B + CtEntry 104 B + 48 B header = 208 B, and 16 B per bucket.
        assert_eq!(
            table_memory_bytes(&tables::CONNTRACK, 1024),
            1024 * 208 + 1024 * 16
        );
        assert_eq!(table_memory_bytes(&tables::DROP_EVENTS, 8192), 8192);
    }

    #[test]
    fn memory_fraction_grows_tables_never_below_the_defaults() {
        let d = TableSizes::default();
        assert_eq!(TableSizes::by_memory_fraction(1 << 30, 0.0025).unwrap(), d);
        let big = TableSizes::by_memory_fraction(512 << 30, 0.01).unwrap();
        assert!(
            big.conntrack > d.conntrack && big.backends > d.backends,
            "{big:?}"
        );
        big.validate(Some((512u64 << 30) / 50)).unwrap();
        assert!(matches!(
            TableSizes::by_memory_fraction(1 << 30, 0.0),
            Err(SizeError::Fraction { .. })
        ));
        assert!(total_memory().unwrap() > 0);
        TableSizes::by_memory_fraction_of_this_node(0.01).unwrap();
    }

    /// Prints the memory table of `docs/performance.md` and checks the file shows it:
    /// `cargo test -p lb-control --lib sizes -- --nocapture`.
    #[test]
    fn docs_show_the_memory_at_the_defaults() {
        let table = TableSizes::default().memory_table_markdown();
        std::println!("{table}");
        let doc = include_str!("../../../docs/performance.md");
        assert!(
            doc.contains(&table),
            "docs/performance.md does not show the table printed above: paste it in"
        );
    }
}
