//! The loader's errors: each says what is wrong and what to do about it, and keeps its cause as
//! its `source`.

use std::path::PathBuf;

use lb_control::ConfigError;

/// What went wrong, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process may not load BPF programs.
    #[error(
        "loading BPF programs needs root or CAP_BPF+CAP_NET_ADMIN (run as root, e.g. with sudo): \
         {source}"
    )]
    Permission {
        /// The kernel's refusal.
        #[source]
        source: aya::EbpfError,
    },
    /// The object's maps could not be created (or its programs not prepared).
    #[error(
        "loading the eBPF object failed: {0} (a kernel older than 5.8 has no BPF ring buffers; \
         before 5.11 maps count against `ulimit -l`)"
    )]
    Object(#[from] aya::EbpfError),
    /// The embedded object does not parse.
    #[error(
        "parsing the embedded eBPF object failed: {source} (rebuild lb-bpf; if LB_BPF_OBJECT is \
         set, it names a broken object)"
    )]
    ObjectParse {
        /// The parser's error.
        #[source]
        source: aya_obj::ParseError,
    },
    /// The verifier (or the kernel) rejected a program.
    #[error("program `{program}` was rejected by the kernel: {source}")]
    Program {
        /// Which program.
        program: &'static str,
        /// aya's error, with the verifier log when there is one.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The loaded object has no map of a table [`lb_api::tables`] declares.
    #[error(
        "the loaded object has no map `{map}`, which lb_api::tables declares: the object is of \
         another build (rebuild lb-bpf; if LB_BPF_OBJECT is set, point it at this build's object)"
    )]
    MissingMap {
        /// Which map.
        map: &'static str,
    },
    /// A map cannot be opened as its type, read or written.
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
    #[error(
        "attaching `{program}` to `{iface}` failed: {source} (`ip link show {iface}` shows what \
         is attached there)"
    )]
    Attach {
        /// Which program.
        program: &'static str,
        /// Which interface.
        iface: String,
        /// aya's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
    /// A map pinned by an earlier loader has another size than the one this load asks for.
    #[error(
        "pinned map `{map}` at {path} has {pinned} entries, this load asks for {requested} \
         (`{knob}`) and resizing is refused (`LoadOptions::resize = Resize::Refuse`): load with \
         `LoadOptions::resize = Resize::Migrate` (the default) to copy its entries into a map \
         of the new size without an outage, load with `{knob} = {pinned}` to keep it, or remove \
         the pins with `KernelDatapath::uninstall(\"{dir}\")` and load again (this flushes \
         conntrack: a controlled outage)"
    )]
    PinnedMapSize {
        /// Which map.
        map: &'static str,
        /// Its pin path.
        path: PathBuf,
        /// The pin directory.
        dir: String,
        /// The size of the pinned map.
        pinned: u32,
        /// The size this load asks for.
        requested: u32,
        /// The setting that sizes it.
        knob: &'static str,
    },
    /// A pinned table would shrink below the entries it holds (nothing was loaded).
    #[error(
        "cannot shrink pinned map `{map}` from {pinned} to {requested} entries (`{knob}`): it \
         holds {entries} live entries; set `{knob}` to at least {entries} (better with room for \
         growth), or shrink after conntrack GC or service removals brought it below {requested}"
    )]
    ResizeBelowEntries {
        /// Which map.
        map: &'static str,
        /// Its pinned size.
        pinned: u32,
        /// The size asked for.
        requested: u32,
        /// The entries it holds.
        entries: u64,
        /// The setting that sizes it.
        knob: &'static str,
    },
    /// Copying a resized table's entries failed (the new programs may already run: load again
    /// with the same sizes to finish, or with the old ones to go back).
    #[error(
        "migrating the entries of pinned map `{map}` into its resized map failed: {source} \
         (load again with the same `LoadOptions` to retry; the old pin stays until the copy is \
         complete)"
    )]
    Migrate {
        /// Which map.
        map: &'static str,
        /// The kernel's refusal.
        #[source]
        source: std::io::Error,
    },
    /// The table sizes are invalid (nothing was loaded).
    #[error(transparent)]
    Sizes(#[from] lb_control::SizeError),
    /// Pinning, reading or removing a pin failed.
    #[error(
        "pin {path}: {source} (pins live on bpffs: is the directory below a bpffs mount such as \
         /sys/fs/bpf, and writable by this process?)"
    )]
    Pin {
        /// The path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The pin directory is below /sys/fs/bpf, where no bpffs is mounted, and mounting one failed.
    #[error(
        "bpffs is not mounted at /sys/fs/bpf and mounting it failed: {source} (mount it with \
         `mount -t bpf bpf /sys/fs/bpf`, which needs CAP_SYS_ADMIN)"
    )]
    BpffsMount {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A background task's thread could not be started.
    #[error("starting the {task} task failed: {source} (the process is out of threads or memory)")]
    Task {
        /// Which task.
        task: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The possible CPUs (the size of a per-CPU value) cannot be read.
    #[error(
        "reading the possible CPUs from /sys/devices/system/cpu/possible failed: {source} (is \
         sysfs mounted?)"
    )]
    Cpus {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A drop-event record in the ring does not decode as this build's [`DropEvent`](lb_api::events::DropEvent).
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
