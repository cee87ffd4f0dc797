//! The aya backend of lb-dataplane: loads the eBPF programs built from the shared logic crates,
//! attaches them, programs their maps with the same control-plane API as the userspace engine,
//! reads conntrack and counters, and runs packets through them with `BPF_PROG_TEST_RUN`.
//!
//! ```no_run
//! use lb_bpf::{KernelDatapath, Program};
//! use lb_api::flow::L4Proto;
//! use lb_control::ServiceSpec;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Every program passes the kernel's verifier here (needs root / CAP_BPF).
//! let mut dp = KernelDatapath::load()?;
//! dp.set_config(&lb_control::default_config(0))?;
//! dp.upsert_service(&ServiceSpec {
//!     id: 1,
//!     frontend: "10.96.0.10:80".parse()?,
//!     proto: L4Proto::Tcp,
//!     backends: vec!["10.1.0.2:8080".parse()?, "10.1.0.3:8080".parse()?],
//!     ..Default::default()
//! })?;
//! dp.attach_xdp("eth0", aya::programs::XdpMode::Skb)?;
//! let gc = dp.spawn_conntrack_gc(lb_conntrack::GcConfig::default())?;
//! println!("{} conntrack entries", dp.conntrack_entries()?.len());
//! for ev in dp.drain_drop_events()? {
//!     println!("dropped ({}): {:?}", ev.reason.name(), ev.tuple());
//! }
//! println!("GC: {:?}", gc.status().last_report);
//! # Ok(()) }
//! ```
//!
//! Running it, a CNI also starts conntrack GC as a task
//! ([`KernelDatapath::spawn_conntrack_gc`], a thread sweeping at the adaptive interval; see
//! [`conntrack_gc`]) and reads drop events ([`KernelDatapath::drain_drop_events`]: one
//! [`DropEvent`](lb_api::events::DropEvent) per dropped packet with its reason and flow, from the
//! programs' ring buffer; the userspace engine has the same call).
//!
//! The tables' sizes are set at load ([`LoadOptions`] with an [`lb_control::TableSizes`];
//! [`KernelDatapath::load`] uses the production defaults), and a full table refuses a service
//! with [`lb_control::ConfigError::TableFull`] naming it, as the engine does.
//!
//! One file per concern: [`Program`] (the programs in the object), [`Error`], loading and pinning
//! (`load.rs`), attaching (`attach.rs`), the tables (`tables.rs`: configuration, services,
//! conntrack reads; which tables exist is declared once in [`lb_api::tables`]), drop events,
//! counters, conntrack GC ([`conntrack_gc`]) and `BPF_PROG_TEST_RUN` runs ([`TestRunOutput`]).

mod attach;
pub mod conntrack_gc;
mod counters;
mod dataplane;
mod error;
mod events;
mod load;
mod program;
mod raw_map;
mod resize;
mod tables;
mod test_run;

use aya::Ebpf;
use std::path::PathBuf;

pub use error::Error;
pub use load::LoadOptions;
pub use program::Program;
pub use resize::{MigrationReport, Resize, TableMigration};
pub use test_run::{TestRunOutput, TestSkb};

/// The compiled eBPF object (all programs and maps), embedded at build time.
pub static PROGRAMS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-programs.o"));

/// The kernel datapath: the loaded object with all its programs and maps.
pub struct KernelDatapath {
    ebpf: Ebpf,
    /// Where maps and links are pinned (`None`: nothing pinned, everything goes with the process).
    pin_dir: Option<PathBuf>,
    /// The sizes its maps were created with (or, pinned, were found with).
    sizes: lb_control::TableSizes,
    /// What this load's migration of resized pinned tables did.
    migration: Option<MigrationReport>,
}

impl std::fmt::Debug for KernelDatapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelDatapath").finish_non_exhaustive()
    }
}
