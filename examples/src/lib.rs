//! Shared pieces of the example programs: network-namespace topologies with a client, nodes that
//! run the datapath, and backend "pods" with real TCP, UDP and HTTP servers.
//!
//! - [`testbed`]: one node (the single-node demo and e2e tests);
//! - [`cluster`]: two nodes on a LAN, for the forwarding modes (SNAT, DSR, tunnel, hybrid);
//! - [`netns`] and [`traffic`]: the namespace lifecycle and the servers/clients both share;
//! - [`matrix`], [`capture`] and [`differential`]: what the mode tests check and observe.
//!
//! ```no_run
//! use lb_examples::testbed::Testbed;
//! # fn main() -> anyhow::Result<()> {
//! let bed = Testbed::create("doc")?; // removed again when `bed` is dropped
//! let servers = bed.start_backends(std::time::Duration::from_secs(30))?;
//! # drop(servers); Ok(()) }
//! ```

pub mod capture;
pub mod cluster;
pub mod differential;
pub mod matrix;
pub mod modes;
pub mod netns;
pub mod scenario;
pub mod testbed;
pub mod traffic;
