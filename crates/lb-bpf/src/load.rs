//! Loading the object (every program through the verifier), pinning its tables and reusing an
//! earlier loader's pins, and removing them.

use std::path::{Path, PathBuf};

use aya::maps::ProgramArray;
use aya::programs::{SchedClassifier, Xdp};
use aya::{Ebpf, EbpfLoader};
use lb_api::tables::{self, MapKind, Pinning, Table, TC_STAGES, XDP_STAGES};
use lb_control::TableSizes;

use crate::resize::{Pending, Resize};
use crate::{Error, KernelDatapath, Program, PROGRAMS_OBJECT};

/// How to load the datapath: the tables' sizes and where to pin them.
///
/// ```no_run
/// use lb_bpf::{KernelDatapath, LoadOptions};
/// use lb_control::TableSizes;
///
/// # fn main() -> Result<(), lb_bpf::Error> {
/// // Production sizes (the default), pinned so that a restart keeps conntrack and services.
/// let dp = KernelDatapath::load_with(&LoadOptions {
///     pin_dir: Some("/sys/fs/bpf/lb".into()),
///     ..LoadOptions::default()
/// })?;
/// assert_eq!(dp.table_sizes().conntrack, 768 * 1024);
/// // A small datapath for a test.
/// let small = KernelDatapath::load_with(&LoadOptions::with_sizes(TableSizes::small()))?;
/// # let _ = small; Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// The tables' sizes ([`TableSizes::default`]: production sizes).
    pub sizes: TableSizes,
    /// Pin the reusable tables under `pin_dir/maps/` and reuse an earlier loader's pins there
    /// (see [`KernelDatapath::load_pinned`]); `None`: nothing pinned.
    pub pin_dir: Option<PathBuf>,
    /// The memory the tables may take, in bytes ([`TableSizes::validate`]); `None`: no limit.
    pub memory_limit: Option<u64>,
    /// What to do with a pinned table of another size than `sizes` gives: migrate its entries
    /// into a table of the new size without an outage (the default), or refuse.
    pub resize: Resize,
}

impl LoadOptions {
    /// Unpinned, with `sizes`.
    #[must_use]
    pub fn with_sizes(sizes: TableSizes) -> Self {
        Self {
            sizes,
            ..Self::default()
        }
    }
}

impl KernelDatapath {
    /// Loads the object and every program variant into the kernel (each passes the verifier),
    /// with the production table sizes ([`TableSizes::default`]), nothing pinned.
    ///
    /// # Errors
    /// [`Error::Permission`] without privileges; [`Error::Program`] with the verifier log when a
    /// program is rejected.
    pub fn load() -> Result<Self, Error> {
        Self::load_with(&LoadOptions::default())
    }

    /// Loads like [`load`](Self::load), with every map pinned under `dir/maps/`. When an earlier
    /// loader pinned them there (an agent restart), the existing maps are reused after a check
    /// that their shapes match this build's: services, backends and live conntrack entries carry
    /// over, so established connections keep working.
    ///
    /// # Errors
    /// [`Error::IncompatiblePinnedMap`] naming the map and the fix; the errors of [`load`](Self::load).
    pub fn load_pinned(dir: impl AsRef<Path>) -> Result<Self, Error> {
        Self::load_with(&LoadOptions {
            pin_dir: Some(dir.as_ref().to_path_buf()),
            ..LoadOptions::default()
        })
    }

    /// Loads with `opts`: every sizable table ([`TableSizes::of`]) is created with its size
    /// (aya's `EbpfLoader::map_max_entries`), and pinned when `opts.pin_dir` is set.
    ///
    /// A pinned table of another size is migrated ([`Resize::Migrate`], see [`Resize`] and
    /// [`KernelDatapath::migration`]): created at the new size, filled with the old one's
    /// entries, swapped in for it in every pinned link's programs, re-pinned in its place.
    ///
    /// # Errors
    /// [`Error::Sizes`] for invalid sizes (nothing is loaded); [`Error::PinnedMapSize`] when a
    /// pinned table has another size than asked for and `opts.resize` is [`Resize::Refuse`];
    /// [`Error::ResizeBelowEntries`] when it would shrink below its entries;
    /// [`Error::Migrate`] if copying fails; the errors of [`load`](Self::load) and
    /// [`load_pinned`](Self::load_pinned).
    pub fn load_with(opts: &LoadOptions) -> Result<Self, Error> {
        opts.sizes.validate(opts.memory_limit)?;
        let dir = opts.pin_dir.as_deref();
        let (pins, pending) = match dir {
            Some(dir) => reusable_pins(dir, &opts.sizes, opts.resize)?,
            None => (Vec::new(), Vec::new()),
        };
        let mut loader = EbpfLoader::new();
        for (table, size, _) in opts.sizes.entries() {
            loader.map_max_entries(table.name, size);
        }
        for (table, path) in &pins {
            loader.map_pin_path(table.name, path.as_path());
        }
        let mut ebpf = loader.load(PROGRAMS_OBJECT).map_err(|source| {
            if is_permission(&source) {
                Error::Permission { source }
            } else {
                Error::Object(source)
            }
        })?;
        for p in Program::ALL {
            let res = if p.is_xdp() {
                crate::program::typed::<Xdp>(&mut ebpf, p)?.load()
            } else {
                crate::program::typed::<SchedClassifier>(&mut ebpf, p)?.load()
            };
            res.map_err(|source| Error::Program {
                program: p.name(),
                source,
            })?;
        }
        for (stages, program) in [
            (XDP_STAGES, Program::XdpNewFlow),
            (TC_STAGES, Program::TcNewFlow),
        ] {
            set_stage(&mut ebpf, stages, program)?;
        }
        let mut dp = Self {
            ebpf,
            pin_dir: dir.map(Path::to_path_buf),
            sizes: opts.sizes,
            migration: None,
        };
        if !pending.is_empty() {
            dp.migration = Some(dp.migrate(pending)?);
        }
        Ok(dp)
    }

    /// The sizes the tables were created with.
    #[must_use]
    pub fn table_sizes(&self) -> &TableSizes {
        &self.sizes
    }

    /// The kernel's `max_entries` of the loaded map of `table` (bytes for the ring buffer),
    /// read back from the kernel.
    ///
    /// # Errors
    /// [`Error::Map`] if the kernel's map information cannot be read.
    pub fn max_entries(&self, table: Table) -> Result<u32, Error> {
        let data = match self.map_ro(table)? {
            aya::maps::Map::HashMap(d)
            | aya::maps::Map::LruHashMap(d)
            | aya::maps::Map::Array(d)
            | aya::maps::Map::PerCpuArray(d)
            | aya::maps::Map::RingBuf(d)
            | aya::maps::Map::ProgramArray(d) => d,
            _ => return Err(crate::tables::missing(table)),
        };
        let info = data.info().map_err(|source| Error::Map {
            map: table.name,
            source,
        })?;
        Ok(info.max_entries())
    }

    /// The memory the kernel charges for the loaded map of `table`, in bytes: the `memlock`
    /// line of its file descriptor's `/proc/self/fdinfo` (what counted against `ulimit -l`
    /// before Linux 5.11, and the kernel's own estimate of the map's memory since).
    ///
    /// # Errors
    /// [`Error::MissingMap`], or [`Error::Map`] if the fdinfo file cannot be read or has no
    /// `memlock` line.
    pub fn kernel_memory_bytes(&self, table: Table) -> Result<u64, Error> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let data = match self.map_ro(table)? {
            aya::maps::Map::HashMap(d)
            | aya::maps::Map::LruHashMap(d)
            | aya::maps::Map::Array(d)
            | aya::maps::Map::PerCpuArray(d)
            | aya::maps::Map::RingBuf(d)
            | aya::maps::Map::ProgramArray(d) => d,
            _ => return Err(crate::tables::missing(table)),
        };
        let path = format!("/proc/self/fdinfo/{}", data.fd().as_fd().as_raw_fd());
        let map_err = |io_error| Error::Map {
            map: table.name,
            source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "read /proc/self/fdinfo (memlock)",
                io_error,
            }),
        };
        let text = std::fs::read_to_string(&path).map_err(map_err)?;
        text.lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                map_err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{path} has no memlock line"),
                ))
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
                    source: err.into(),
                })?;
            }
            std::fs::remove_dir(&d).map_err(|err| Error::Pin {
                path: d.clone(),
                source: err.into(),
            })?;
        }
        let _ = std::fs::remove_dir(dir);
        Ok(())
    }

    /// Pins stage array `stages` (pinned mode, once its first stage is attached): a program
    /// array is emptied when no process or pin holds it any more, so without the pin a pinned
    /// link's program would lose its new-flow stage when the loader exits. An earlier loader's
    /// array (its programs are no longer attached: ours took over the links) is replaced.
    pub(crate) fn pin_stages(&self, stages: Table) -> Result<(), Error> {
        debug_assert_eq!(stages.pinning, Pinning::PerLoad);
        let Some(dir) = &self.pin_dir else {
            return Ok(());
        };
        let path = dir.join("maps").join(stages.name);
        let pin_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Pin {
            path: path.clone(),
            source,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(pin_err(e.into())),
        }
        let array = ProgramArray::try_from(self.map_ro(stages)?).map_err(|source| Error::Map {
            map: stages.name,
            source,
        })?;
        array.pin(&path).map_err(|e| pin_err(e.into()))
    }
}

/// The tables to reuse from `dir/maps/` or pin there ([`Pinning::Reused`]), each with its pin
/// path, after a check that any pin already there has this build's shape; and the pinned
/// tables of another size to migrate (`resize`), which are loaded unpinned.
#[expect(
    clippy::type_complexity,
    reason = "a private pair of lists, named by the doc"
)]
fn reusable_pins(
    dir: &Path,
    sizes: &TableSizes,
    resize: Resize,
) -> Result<(Vec<(Table, PathBuf)>, Vec<Pending>), Error> {
    ensure_bpffs(dir)?;
    let maps_dir = dir.join("maps");
    std::fs::create_dir_all(&maps_dir).map_err(|e| Error::Pin {
        path: maps_dir.clone(),
        source: e.into(),
    })?;
    let obj =
        aya_obj::Object::parse(PROGRAMS_OBJECT).map_err(|source| Error::ObjectParse { source })?;
    let (mut pins, mut pending) = (Vec::new(), Vec::new());
    // Only state that must outlive a restart is reused: per-packet scratch and the event ring
    // would tie restarts to their layout for nothing, and the stage arrays name this load's
    // programs (`pin_stages` pins them once they are attached).
    for table in tables::ALL
        .into_iter()
        .filter(|t| t.pinning == Pinning::Reused)
    {
        let m = obj
            .maps
            .get(table.name)
            .ok_or(Error::MissingMap { map: table.name })?;
        let path = maps_dir.join(table.name);
        match check_pinned_shape(dir, table, sizes, &path, m, resize)? {
            Some((from, to, knob)) => pending.push(Pending::open(table, path, from, to, knob)?),
            None => pins.push((table, path)),
        }
    }
    Ok((pins, pending))
}

fn is_permission(e: &aya::EbpfError) -> bool {
    let s = e.to_string();
    s.contains("Operation not permitted") || s.contains("EPERM") || s.contains("Permission denied")
}

/// Puts the loaded `program` into slot 0 of the program array `stages`, where its first stage
/// tail-calls it.
fn set_stage(ebpf: &mut Ebpf, stages: Table, program: Program) -> Result<(), Error> {
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
    let map_err = |source| Error::Map {
        map: stages.name,
        source,
    };
    let map = ebpf
        .map_mut(stages.name)
        .ok_or(Error::MissingMap { map: stages.name })?;
    let mut array = ProgramArray::try_from(map).map_err(map_err)?;
    array.set(0, &fd, 0).map_err(map_err)
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
    let (src, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
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
        return Err(Error::BpffsMount {
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Refuses a pinned map whose type, key or value differs from what this build's object declares
/// for it. One whose size differs from the one this load asks for (`sizes`) is to be migrated
/// (`Some((pinned, requested, knob))`) when `resize` says so and it is a hash map, else refused.
fn check_pinned_shape(
    dir: &Path,
    table: Table,
    sizes: &TableSizes,
    path: &Path,
    m: &aya_obj::Map,
    resize: Resize,
) -> Result<Option<(u32, u32, &'static str)>, Error> {
    let name = table.name;
    if !path.exists() {
        return Ok(None);
    }
    let info = aya::maps::MapInfo::from_pin(path).map_err(|e| Error::Pin {
        path: path.into(),
        source: e.into(),
    })?;
    let found_type = info.map_type().map_or(u32::MAX, |t| t as u32);
    let requested = sizes.of(&table).map_or(m.max_entries(), |(n, _)| n);
    let same_kind = (m.map_type(), m.key_size(), m.value_size())
        == (found_type, info.key_size(), info.value_size());
    if let (true, Some((_, knob))) = (same_kind, sizes.of(&table)) {
        if info.max_entries() != requested {
            // Hash tables hold keyed entries that fit any size; arrays and rings would need
            // their own rules (none is sizable and reused today).
            if resize == Resize::Migrate && table.kind == MapKind::Hash {
                return Ok(Some((info.max_entries(), requested, knob)));
            }
            return Err(Error::PinnedMapSize {
                map: name,
                path: path.into(),
                dir: dir.display().to_string(),
                pinned: info.max_entries(),
                requested,
                knob,
            });
        }
    }
    let expected = (m.map_type(), m.key_size(), m.value_size(), requested);
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
    Ok(None)
}
