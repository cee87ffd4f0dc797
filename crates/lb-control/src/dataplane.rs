//! The one interface a control plane programs a datapath through, whichever it is: the
//! userspace engine (`lb_datapath::engine::Engine`) or the kernel's programs and maps
//! (`lb_bpf::KernelDatapath`).

use std::net::SocketAddr;
use std::vec::Vec;

use lb_api::abi::{AffinityKey, AffinityValue, CtEntry, CtKey, DatapathConfig};
use lb_api::counters::CounterSnapshot;
use lb_api::events::DropEvent;
use lb_api::flow::L4Proto;

use crate::{DataplaneError, NodeSpec, ServiceSpec};

/// A datapath as a control plane sees it: its configuration, this node's identity, its
/// services, and what it reports (counters, drop events, conntrack).
///
/// Every implementation writes services with [`upsert_service`](crate::upsert_service) and
/// the node with [`set_node`](crate::set_node) over its [`ServiceStore`](crate::ServiceStore),
/// so the tables hold the same entries whichever datapath runs, and every call fails with the
/// same [`DataplaneError`] (a refused spec is the same [`ConfigError`](crate::ConfigError)
/// everywhere). The trait is object safe: a CNI holds a `Box<dyn Dataplane>` and tests run one
/// sequence through both datapaths.
///
/// ```
/// use lb_control::{default_config, Dataplane, DataplaneError, ServiceSpec};
///
/// /// Programs any datapath with one service.
/// fn program(dp: &mut dyn Dataplane, spec: &ServiceSpec) -> Result<(), DataplaneError> {
///     dp.set_config(&default_config(7))?;
///     dp.upsert_service(spec)
/// }
/// # let _ = program;
/// ```
pub trait Dataplane {
    /// Replaces the datapath configuration (timeouts, hash seed, node fields).
    ///
    /// # Errors
    /// [`DataplaneError::Datapath`] if the datapath refuses the write.
    fn set_config(&mut self, cfg: &DatapathConfig) -> Result<(), DataplaneError>;

    /// The configuration in use. (`&mut self`: the kernel's config map is read through a
    /// mutable map handle.)
    ///
    /// # Errors
    /// [`DataplaneError::Datapath`] if it cannot be read.
    fn config(&mut self) -> Result<DatapathConfig, DataplaneError>;

    /// Sets this node's identity: addresses (SNAT source, tunnel endpoint), peers, tunnel
    /// parameters. The rest of the configuration is kept.
    ///
    /// # Errors
    /// [`DataplaneError::Config`] naming the invalid field (nothing is written then), or
    /// [`DataplaneError::Datapath`].
    fn set_node(&mut self, node: &NodeSpec) -> Result<(), DataplaneError>;

    /// Adds or replaces a service, hitlessly (see [`upsert_service`](crate::upsert_service)).
    ///
    /// # Errors
    /// [`DataplaneError::Config`] naming the invalid field (nothing is written then), or
    /// [`DataplaneError::Datapath`].
    fn upsert_service(&mut self, spec: &ServiceSpec) -> Result<(), DataplaneError>;

    /// Removes a service, its backend slots and its flows (every backend left it; see
    /// [`remove_service`](crate::remove_service)). Removing an absent service is fine.
    ///
    /// # Errors
    /// [`DataplaneError::Datapath`] if the datapath fails.
    fn remove_service(&mut self, spec: &ServiceSpec) -> Result<(), DataplaneError>;

    /// Deletes every flow (of any service) to `backend` over `proto`, both entries of each, and
    /// counts them in `ct_backend_removed` (see [`flush_backend_flows`](crate::flush_backend_flows)):
    /// the number of flows deleted. Service updates do this by themselves for the backends they
    /// drop; this is for a backend gone without one.
    ///
    /// # Errors
    /// [`DataplaneError::Config`] with [`ConfigError::Store`](crate::ConfigError::Store) naming
    /// the table that could not be read or written.
    fn flush_backend_flows(
        &mut self,
        backend: SocketAddr,
        proto: L4Proto,
    ) -> Result<u64, DataplaneError>;

    /// The counters (summed over CPUs in the kernel).
    ///
    /// # Errors
    /// [`DataplaneError::Datapath`] if they cannot be read.
    fn counters(&self) -> Result<CounterSnapshot, DataplaneError>;

    /// Zeroes every counter.
    ///
    /// # Errors
    /// [`DataplaneError::Datapath`] if they cannot be written.
    fn reset_counters(&mut self) -> Result<(), DataplaneError>;

    /// The drop events recorded since the last call, oldest first: one per dropped packet, with
    /// its reason and flow.
    ///
    /// # Errors
    /// [`DataplaneError::Datapath`] if they cannot be read.
    fn drain_drop_events(&mut self) -> Result<Vec<DropEvent>, DataplaneError>;

    /// All conntrack entries, sorted by their key's bytes.
    ///
    /// # Errors
    /// [`DataplaneError::Datapath`] if the table cannot be read.
    fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtEntry)>, DataplaneError>;

    /// Deletes every conntrack entry (established flows lose their translation: an outage).
    ///
    /// # Errors
    /// [`DataplaneError::Datapath`] if the table cannot be read or written.
    fn flush_conntrack(&mut self) -> Result<(), DataplaneError>;
    /// All session-affinity entries (client and service → backend, last used), sorted by
    /// their key's bytes. Expired entries stay until a new flow of their client replaces them
    /// or the table's LRU eviction takes them.
    ///
    /// # Errors
    /// [`DataplaneError::Datapath`] if the table cannot be read.
    fn affinity_entries(&self) -> Result<Vec<(AffinityKey, AffinityValue)>, DataplaneError>;
}
