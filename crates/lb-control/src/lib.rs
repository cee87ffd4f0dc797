//! The control-plane API of lb-dataplane, what a CNI programs against: typed service, backend
//! and node specs ([`ServiceSpec`], [`BackendSpec`], [`NodeSpec`]), their validation
//! ([`ConfigError`] names the field and the rule), how they are written into the datapath's
//! tables ([`ServiceStore`], [`upsert_service`]), Maglev tables ([`maglev_table`]), the
//! configuration to start from ([`default_config`]), and the [`Dataplane`] trait that the
//! userspace engine and the kernel loader both implement.
//!
//! ```
//! use lb_api::flow::L4Proto;
//! use lb_control::{upsert_service, BackendState, Selection, ServiceSpec, ServiceStore};
//! use lb_nat::HashServiceTable;
//!
//! let mut spec = ServiceSpec {
//!     id: 1,
//!     frontend: "10.96.0.10:80".parse().unwrap(),
//!     proto: L4Proto::Tcp,
//!     backends: vec!["10.1.0.2:8080".parse().unwrap(), "10.1.0.3:8080".parse().unwrap()],
//!     ..Default::default()
//! };
//! spec.validate().unwrap();
//! // A terminating backend keeps its flows but gets no new ones: no slot.
//! spec.backends[1].state = BackendState::Terminating;
//! assert_eq!(spec.slots(), vec![0]);
//!
//! // The tables the datapath reads (here the userspace ones; the kernel's maps alike).
//! let mut tables = HashServiceTable::default();
//! spec.selection = Selection::Maglev { table_size: 251 };
//! upsert_service(&mut tables, &spec).unwrap();
//! assert_eq!(tables.get_service(&spec.key()).unwrap().backend_count, 251);
//!
//! // An invalid spec names its field, and nothing is written.
//! spec.id = 0;
//! let e = upsert_service(&mut tables, &spec).unwrap_err();
//! assert!(e.to_string().contains("field `id`"), "{e}");
//! ```
//!
//! A datapath is programmed through [`Dataplane`]: `lb_datapath::engine::Engine` (userspace)
//! and `lb_bpf::KernelDatapath` (the eBPF programs' maps) implement it with one signature and
//! one error type ([`DataplaneError`]), so the same code drives either.

mod backend;
mod config;
mod dataplane;
mod error;
mod flows;
mod maglev;
mod node;
mod service;
mod sizes;
mod store;
#[cfg(test)]
mod test_specs;

pub use backend::{BackendSpec, BackendState};
pub use config::default_config;
pub use dataplane::Dataplane;
pub use error::{ConfigError, DataplaneError};
pub use flows::{flush_backend_flows, flush_flows};
pub use lb_api::abi::{ForwardingMode, SVC_F_LOCAL, SVC_F_MAGLEV};
pub use maglev::{maglev_table, MaglevBackend, MAGLEV_DEFAULT_TABLE_SIZE, MAGLEV_TABLE_SIZES};
pub use node::{NodeSpec, PortRange};
pub use service::{
    validate_services, Selection, ServiceSpec, SessionAffinity, TrafficPolicy,
    AFFINITY_DEFAULT_TIMEOUT_S, AFFINITY_MAX_TIMEOUT_S, MAX_BACKENDS_PER_SERVICE, MAX_RANDOM_SLOTS,
};
pub use sizes::{
    table_memory_bytes, total_memory, SizeError, TableSizes, DROP_EVENT_SLOT_BYTES, PAGE_SIZE,
};
pub use store::{addr_bytes, remove_service, set_node, upsert_service, ServiceStore};
