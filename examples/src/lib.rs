//! What a CNI author copies: [`scenario`], a ClusterIP-style service on a node with the datapath
//! attached (XDP towards the client, TC towards the backends) and real traffic through it; the
//! `lb-demo` program runs it and prints what happened.
//!
//! The namespace topology it runs in comes from the test harness ([`lb_testbed`]), as do the
//! forwarding-mode clusters the demo's `--modes` part uses.
//!
//! ```no_run
//! use lb_testbed::netns::NodeChecksums;
//! # fn main() -> anyhow::Result<()> {
//! let report = lb_examples::scenario::run_kernel("doc", 10, NodeChecksums::Offload)?;
//! println!("{} answers, counters {:?}", report.answers.len(), report.counters);
//! # Ok(()) }
//! ```

pub mod agent;
pub mod scenario;
