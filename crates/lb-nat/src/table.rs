//! Service and backend tables, and the session-affinity state beside them.

use lb_api::abi::{
    AffinityKey, AffinityValue, BackendAddrKey, BackendKey, BackendValue, NodeKey, ServiceKey,
    ServiceValue,
};

/// Read access to services and their backend slots: kernel hash maps or userspace tables.
pub trait ServiceTable {
    /// The service listening on `key`.
    fn service(&self, key: &ServiceKey) -> Option<ServiceValue>;
    /// The backend in a service's slot.
    fn backend(&self, key: &BackendKey) -> Option<BackendValue>;
    /// Whether `key` is a configured peer node (tunnel packets are accepted only from those).
    fn is_peer_node(&self, key: &NodeKey) -> bool;
    /// A service's active backend by its address and port (`None`: not in the service's set).
    fn backend_by_addr(&self, key: &BackendAddrKey) -> Option<BackendValue>;
    /// The backend a client was last sent to for a service with session affinity.
    fn affinity(&self, key: &AffinityKey) -> Option<AffinityValue>;
    /// Records (or refreshes) a client's affinity entry. The kernel's table is an LRU hash:
    /// when full, it evicts its least recently used entries to make room.
    fn set_affinity(&mut self, key: &AffinityKey, value: &AffinityValue);
}

#[cfg(feature = "std")]
mod hash {
    use super::ServiceTable;
    use hashbrown::HashMap;
    use lb_api::abi::{
        AffinityKey, AffinityValue, BackendAddrKey, BackendKey, BackendValue, NodeKey, ServiceKey,
        ServiceValue,
    };

    /// Userspace service and backend tables, and the session-affinity entries.
    #[derive(Debug, Clone, Default)]
    pub struct HashServiceTable {
        /// Services by frontend.
        pub services: HashMap<ServiceKey, ServiceValue>,
        /// Backends by service slot.
        pub backends: HashMap<BackendKey, BackendValue>,
        /// Peer nodes.
        pub nodes: hashbrown::HashSet<NodeKey>,
        /// Each service's active backends by address and port.
        pub backends_by_addr: HashMap<BackendAddrKey, BackendValue>,
        /// Session-affinity entries.
        pub affinity: HashMap<AffinityKey, AffinityValue>,
        /// The most affinity entries kept (0: no limit). When full, a new entry evicts the
        /// least recently used one (the oldest `last_used_ns`), as the kernel's LRU hash
        /// evicts (the kernel's eviction is approximate and works in batches: which entry goes
        /// first may differ, that an entry goes does not).
        pub affinity_capacity: usize,
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

        fn backend_by_addr(&self, key: &BackendAddrKey) -> Option<BackendValue> {
            self.backends_by_addr.get(key).copied()
        }

        fn affinity(&self, key: &AffinityKey) -> Option<AffinityValue> {
            self.affinity.get(key).copied()
        }

        fn set_affinity(&mut self, key: &AffinityKey, value: &AffinityValue) {
            let full = self.affinity_capacity != 0 && self.affinity.len() >= self.affinity_capacity;
            if full && !self.affinity.contains_key(key) {
                let oldest = self
                    .affinity
                    .iter()
                    .min_by_key(|(_, v)| v.last_used_ns)
                    .map(|(k, _)| *k);
                if let Some(k) = oldest {
                    self.affinity.remove(&k);
                }
            }
            self.affinity.insert(*key, *value);
        }
    }
}

#[cfg(feature = "std")]
pub use hash::HashServiceTable;
