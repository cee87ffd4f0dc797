//! Resizing pinned tables without an outage: when a pinned table ([`Pinning::Reused`]) has
//! another size than the load asks for, the loader creates the table at the new size, copies
//! the live entries into it, swaps its programs into the pinned links in one step per link
//! (`BPF_LINK_UPDATE`: each packet sees either the old programs and maps or the new ones), copies
//! what the old programs changed meanwhile, and re-pins the new table in the old one's place.
//!
//! The copy runs in three passes, like a live migration's pre-copy:
//! 1. every entry, while traffic flows as before;
//! 2. with the old programs' new-flow stage paused (slot 0 of the pinned stage arrays emptied:
//!    a packet of no tracked flow is dropped and counted as `new_flow_stage_missing`; a TCP
//!    client retransmits its SYN a second later), what the old programs created, changed or
//!    deleted since pass 1; then the programs of this load are swapped into every pinned link;
//! 3. what the old programs changed during pass 2 (state changes and timestamps of existing
//!    flows), where the new programs have not written since.
//!
//! So no flow the old programs created is missing from the new tables when the new programs
//! see its next packet; the price is that new flows wait for pass 2 (one read of both tables:
//! milliseconds for thousands of entries, about a second for a million). Passes compare values
//! by 64-bit fingerprints, not copies, to keep the loader's memory at 16 bytes per entry.

//! Shrinking below the entries a table holds is refused ([`Error::ResizeBelowEntries`]), as is
//! any resize with [`Resize::Refuse`] ([`Error::PinnedMapSize`]).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::os::fd::{AsFd as _, BorrowedFd};
use std::path::PathBuf;

use aya::maps::{Map, MapData};
use lb_api::tables::{Pinning, Table, TC_STAGES, XDP_STAGES};

use crate::raw_map::{self, Entries, BPF_ANY, BPF_EXIST, BPF_NOEXIST};
use crate::{Error, KernelDatapath};

/// What the loader does when a pinned table has another size than [`LoadOptions::sizes`]
/// asks for.
///
/// [`LoadOptions::sizes`]: crate::LoadOptions::sizes
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resize {
    /// Create the table at the new size, copy its live entries, swap the programs into the
    /// pinned links and re-pin it (established connections keep working).
    #[default]
    Migrate,
    /// Refuse with [`Error::PinnedMapSize`], loading nothing.
    Refuse,
}

/// How one table was migrated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMigration {
    /// The map's name.
    pub table: &'static str,
    /// Its pinned size.
    pub from: u32,
    /// Its new size.
    pub to: u32,
    /// Entries copied before the swap (pass 1).
    pub copied: u64,
    /// Entries the old programs created between pass 1 and the swap, copied after it.
    pub created_meanwhile: u64,
    /// Entries the old programs changed between pass 1 and the swap, written after it.
    pub changed_meanwhile: u64,
    /// Entries deleted from the old table between pass 1 and the swap, deleted after it.
    pub deleted_meanwhile: u64,
    /// Entries of the old table in the new one after pass 2.
    pub entries_after: u64,
}

/// What a load that resized pinned tables did ([`KernelDatapath::migration`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MigrationReport {
    /// Each resized table.
    pub tables: Vec<TableMigration>,
    /// Pinned links (XDP and TC attachments) whose program was swapped for this load's.
    pub links_swapped: usize,
}

/// A pinned table to migrate: found by the pin check, copied once the new maps exist.
#[derive(Debug)]
pub(crate) struct Pending {
    pub table: Table,
    pub path: PathBuf,
    pub old: MapData,
    pub from: u32,
    pub to: u32,
}

impl Pending {
    /// Opens the pinned table at `path` for migration after checking that its entries fit
    /// into `to`.
    pub fn open(
        table: Table,
        path: PathBuf,
        from: u32,
        to: u32,
        knob: &'static str,
    ) -> Result<Self, Error> {
        let old = MapData::from_pin(&path).map_err(|e| Error::Pin {
            path: path.clone(),
            source: e.into(),
        })?;
        let pending = Self {
            table,
            path,
            old,
            from,
            to,
        };
        if to < from {
            let entries = pending.read_old()?.len() as u64;
            if entries > u64::from(to) {
                return Err(Error::ResizeBelowEntries {
                    map: table.name,
                    pinned: from,
                    requested: to,
                    entries,
                    knob,
                });
            }
        }
        Ok(pending)
    }

    fn sizes(&self) -> (usize, usize) {
        (
            self.table.key_size as usize,
            self.table.value_size.unwrap_or(0) as usize,
        )
    }

    fn read_old(&self) -> Result<Entries, Error> {
        let (k, v) = self.sizes();
        raw_map::read_all(self.old.fd().as_fd(), k, v).map_err(|e| self.io_err(e))
    }

    fn io_err(&self, source: std::io::Error) -> Error {
        Error::Migrate {
            map: self.table.name,
            source,
        }
    }
}

/// A 64-bit fingerprint of a key or a value (pass 2 compares values by them, so that pass 1
/// keeps 16 bytes per entry, not the entries).
fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn fingerprints(e: &Entries) -> HashMap<u64, u64> {
    (0..e.len())
        .filter_map(|i| e.get(i))
        .map(|(k, v)| (fingerprint(k), fingerprint(v)))
        .collect()
}

impl KernelDatapath {
    /// What this load's migration of resized pinned tables did; `None` when nothing was
    /// resized.
    #[must_use]
    pub fn migration(&self) -> Option<&MigrationReport> {
        self.migration.as_ref()
    }

    fn map_fd(&self, table: Table) -> Result<BorrowedFd<'_>, Error> {
        match self.map_ro(table)? {
            Map::HashMap(d) => Ok(d.fd().as_fd()),
            _ => Err(crate::tables::missing(table)),
        }
    }

    /// Migrates `pending` into this load's maps (see the module documentation).
    pub(crate) fn migrate(&mut self, pending: Vec<Pending>) -> Result<MigrationReport, Error> {
        let mut report = MigrationReport::default();
        let mut migrations: Vec<TableMigration> = pending
            .iter()
            .map(|p| TableMigration {
                table: p.table.name,
                from: p.from,
                to: p.to,
                copied: 0,
                created_meanwhile: 0,
                changed_meanwhile: 0,
                deleted_meanwhile: 0,
                entries_after: 0,
            })
            .collect();
        // Pass 1: everything, into the empty new tables, while traffic flows as before.
        let mut seen = Vec::with_capacity(pending.len());
        for (p, m) in pending.iter().zip(&mut migrations) {
            debug_assert_eq!(p.table.pinning, Pinning::Reused);
            let old = p.read_old()?;
            let (copied, err) = raw_map::write_batch(self.map_fd(p.table)?, &old, BPF_ANY);
            if let Some(e) = err {
                return Err(p.io_err(e));
            }
            m.copied = copied as u64;
            seen.push(fingerprints(&old));
        }
        // Pass 2, with the old programs' new-flow stage paused: they update existing entries
        // only, so what this pass reads is complete but for those updates.
        let paused = self.pause_old_new_flows()?;
        let swapped = (|| {
            for ((p, m), before) in pending.iter().zip(&mut migrations).zip(&mut seen) {
                *before = self.catch_up(p, before, m)?;
            }
            // The switch: every pinned link runs this load's programs (and maps) from here.
            self.swap_pinned_links()
        })();
        report.links_swapped = match swapped {
            Ok(n) => n,
            Err(e) => {
                paused.resume();
                return Err(e);
            }
        };
        // Pass 3: the updates the old programs made during pass 2, where the new ones have not
        // written since.
        for ((p, m), before) in pending.iter().zip(&mut migrations).zip(&seen) {
            self.catch_up(p, before, m)?;
            m.entries_after = self.count_kept(p)?;
            self.repin(p)?;
        }
        if report.links_swapped > 0 {
            self.pin_stages(XDP_STAGES)?;
            self.pin_stages(TC_STAGES)?;
        }
        report.tables = migrations;
        Ok(report)
    }

    /// Empties slot 0 of the pinned stage arrays (an earlier loader's, which its attached
    /// programs tail-call for a packet of no tracked flow): until the swap, such packets are
    /// dropped and counted as `new_flow_stage_missing`, and the old tables get no new entries.
    fn pause_old_new_flows(&self) -> Result<Paused, Error> {
        let mut paused = Paused(Vec::new());
        let Some(dir) = &self.pin_dir else {
            return Ok(paused);
        };
        for stages in [XDP_STAGES, TC_STAGES] {
            let path = dir.join("maps").join(stages.name);
            let Ok(array) = MapData::from_pin(&path) else {
                continue; // nothing attached through this hook
            };
            let stage_err = |source: std::io::Error| Error::Migrate {
                map: stages.name,
                source,
            };
            let fd = array.fd().as_fd();
            let mut id = [0u8; 4];
            if !raw_map::lookup(fd, &0u32.to_ne_bytes(), &mut id).map_err(stage_err)? {
                continue;
            }
            let program = raw_map::program_by_id(u32::from_ne_bytes(id)).map_err(stage_err)?;
            if let Err(e) = raw_map::delete(fd, &0u32.to_ne_bytes()) {
                paused.resume();
                return Err(stage_err(e));
            }
            paused.0.push((array, program));
        }
        Ok(paused)
    }

    /// How many of the old table's entries the new one holds.
    fn count_kept(&self, p: &Pending) -> Result<u64, Error> {
        let new_fd = self.map_fd(p.table)?;
        let old_now = p.read_old()?;
        let mut value = vec![0u8; p.sizes().1];
        let mut kept = 0;
        for i in 0..old_now.len() {
            if let Some((key, _)) = old_now.get(i) {
                if raw_map::lookup(new_fd, key, &mut value).map_err(|e| p.io_err(e))? {
                    kept += 1;
                }
            }
        }
        Ok(kept)
    }

    /// Brings over what changed in the old table since `before` (the fingerprints of its
    /// entries at the last pass), leaving alone what the new programs changed since; returns
    /// the fingerprints of the old table now.
    fn catch_up(
        &self,
        p: &Pending,
        before: &HashMap<u64, u64>,
        m: &mut TableMigration,
    ) -> Result<HashMap<u64, u64>, Error> {
        let (k, v) = p.sizes();
        let new_fd = self.map_fd(p.table)?;
        let old_now = p.read_old()?;
        let new_now = fingerprints(&raw_map::read_all(new_fd, k, v).map_err(|e| p.io_err(e))?);
        let mut now = HashMap::with_capacity(old_now.len());
        let mut value = vec![0u8; v];
        for i in 0..old_now.len() {
            let Some((key, val)) = old_now.get(i) else {
                break;
            };
            let (kf, vf) = (fingerprint(key), fingerprint(val));
            now.insert(kf, vf);
            match (before.get(&kf), new_now.get(&kf)) {
                // Created in the old table since.
                (None, None) => match raw_map::update(new_fd, key, val, BPF_NOEXIST) {
                    Ok(()) => m.created_meanwhile += 1,
                    // The new programs created it first: theirs is newer.
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(p.io_err(e)),
                },
                // Changed in the old table only.
                (Some(b), Some(n)) if *b != vf && n == b => {
                    // Re-read just before the write: the new programs may have written since.
                    let current =
                        raw_map::lookup(new_fd, key, &mut value).map_err(|e| p.io_err(e))?;
                    if current && fingerprint(&value) == *b {
                        raw_map::update(new_fd, key, val, BPF_EXIST).map_err(|e| p.io_err(e))?;
                        m.changed_meanwhile += 1;
                    }
                }
                _ => {}
            }
        }
        // Deleted from the old table since, untouched in the new one.
        let new_entries = raw_map::read_all(new_fd, k, v).map_err(|e| p.io_err(e))?;
        for i in 0..new_entries.len() {
            let Some((key, val)) = new_entries.get(i) else {
                break;
            };
            let kf = fingerprint(key);
            if !now.contains_key(&kf)
                && before.get(&kf) == Some(&fingerprint(val))
                && raw_map::delete(new_fd, key).map_err(|e| p.io_err(e))?
            {
                m.deleted_meanwhile += 1;
            }
        }
        Ok(now)
    }

    /// Puts this load's map of `p.table` where the old one was pinned.
    fn repin(&self, p: &Pending) -> Result<(), Error> {
        let pin_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Pin {
            path: p.path.clone(),
            source,
        };
        std::fs::remove_file(&p.path).map_err(|e| pin_err(e.into()))?;
        let data = match self.map_ro(p.table)? {
            Map::HashMap(d) => d,
            _ => return Err(crate::tables::missing(p.table)),
        };
        data.pin(&p.path).map_err(|e| pin_err(e.into()))
    }
}

/// The old stage arrays whose new-flow slot [`KernelDatapath::migrate`] emptied, with the
/// program that was there.
struct Paused(Vec<(MapData, std::os::fd::OwnedFd)>);

impl Paused {
    /// Puts the new-flow stages back (the migration failed before the swap).
    fn resume(&self) {
        for (array, program) in &self.0 {
            let fd = u32::try_from(std::os::fd::AsRawFd::as_raw_fd(program)).unwrap_or(u32::MAX);
            let _ = raw_map::update(
                array.fd().as_fd(),
                &0u32.to_ne_bytes(),
                &fd.to_ne_bytes(),
                BPF_ANY,
            );
        }
    }
}
