//! Service and backend tables.

use lb_api::abi::{BackendKey, BackendValue, NodeKey, ServiceKey, ServiceValue};

/// Read access to services and their backend slots: kernel hash maps or userspace tables.
pub trait ServiceTable {
    /// The service listening on `key`.
    fn service(&self, key: &ServiceKey) -> Option<ServiceValue>;
    /// The backend in a service's slot.
    fn backend(&self, key: &BackendKey) -> Option<BackendValue>;
    /// Whether `key` is a configured peer node (tunnel packets are accepted only from those).
    fn is_peer_node(&self, key: &NodeKey) -> bool;
}

#[cfg(feature = "std")]
mod hash {
    use super::ServiceTable;
    use hashbrown::HashMap;
    use lb_api::abi::{BackendKey, BackendValue, NodeKey, ServiceKey, ServiceValue};

    /// Userspace service and backend tables.
    #[derive(Debug, Clone, Default)]
    pub struct HashServiceTable {
        /// Services by frontend.
        pub services: HashMap<ServiceKey, ServiceValue>,
        /// Backends by service slot.
        pub backends: HashMap<BackendKey, BackendValue>,
        /// Peer nodes.
        pub nodes: hashbrown::HashSet<NodeKey>,
    }

    impl ServiceTable for HashServiceTable {
        fn service(&self, key: &ServiceKey) -> Option<ServiceValue> {
            self.services.get(key).copied()
        }

        fn backend(&self, key: &BackendKey) -> Option<BackendValue> {
            self.backends.get(key).copied()
        }

        fn is_peer_node(&self, key: &NodeKey) -> bool {
            self.nodes.contains(key)
        }
    }
}

#[cfg(feature = "std")]
pub use hash::HashServiceTable;
