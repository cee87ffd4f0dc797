//! The test harness of lb-dataplane: what its tests, the demo and the benchmarks share, and no
//! part of what a CNI author copies (that is `examples/`).
//!
//! - [`gate`]: whether a privileged test may run (root), loud skips, none under CI;
//! - [`harness`]: the userspace engine against the kernel programs, one packet at a time
//!   (`BPF_PROG_TEST_RUN`): output bytes, verdict, counters, conntrack and drop events compared;
//! - [`testbed`]: one node in network namespaces (the single-node demo and e2e tests);
//! - [`cluster`]: two or three nodes on a LAN, for the forwarding modes (SNAT, DSR, tunnel,
//!   hybrid), and [`modes`], the datapath deployed on them;
//! - [`netns`] and [`traffic`]: the namespace lifecycle and the servers/clients both share;
//! - [`matrix`], [`capture`] and [`replay`]: what the mode tests check and observe, and the
//!   replay of captured real traffic through the engine.
//!
//! ```no_run
//! use lb_testbed::testbed::Testbed;
//! # fn main() -> anyhow::Result<()> {
//! let bed = Testbed::create("doc")?; // removed again when `bed` is dropped
//! let servers = bed.start_backends(std::time::Duration::from_secs(30))?;
//! # drop(servers); Ok(()) }
//! ```

pub mod capture;
pub mod cluster;
pub mod gate;
pub mod harness;
pub mod matrix;
pub mod modes;
pub mod netns;
pub mod replay;
pub mod testbed;
pub mod traffic;
