//! Shared pieces of the example programs: a network-namespace testbed with a client, a node that
//! runs the datapath, and backend "pods" with real TCP servers.
//!
//! ```no_run
//! use lb_examples::testbed::Testbed;
//! # fn main() -> anyhow::Result<()> {
//! let bed = Testbed::create("doc")?; // removed again when `bed` is dropped
//! let servers = bed.start_backends(std::time::Duration::from_secs(30))?;
//! # drop(servers); Ok(()) }
//! ```

pub mod scenario;
pub mod testbed;
