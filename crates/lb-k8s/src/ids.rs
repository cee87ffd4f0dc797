//! Stable service ids: one per frontend, kept across translations (backend slots and conntrack
//! entries refer to it), and seeded from a running datapath's table at an agent's restart.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use lb_api::flow::L4Proto;

/// A frontend: address, port and protocol; what a service table key holds.
pub type FrontendKey = (SocketAddr, u8);

/// The key of a frontend address and protocol.
#[must_use]
pub fn frontend_key(addr: SocketAddr, proto: L4Proto) -> FrontendKey {
    (addr, proto as u8)
}

/// Hands out non-zero service ids, the same id for a frontend as long as it exists.
///
/// ```
/// use lb_api::flow::L4Proto;
/// use lb_k8s::{frontend_key, IdAllocator};
///
/// let mut ids = IdAllocator::default();
/// let a = frontend_key("10.96.0.10:80".parse().unwrap(), L4Proto::Tcp);
/// let id = ids.id(a);
/// assert_eq!(ids.id(a), id);
/// // A restarted agent seeds the ids the datapath already uses.
/// let mut again = IdAllocator::default();
/// again.seed(a, id);
/// assert_eq!(again.id(a), id);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdAllocator {
    by_key: BTreeMap<FrontendKey, u32>,
    used: BTreeSet<u32>,
}

impl IdAllocator {
    /// Records that `key` already has `id` (read from the datapath's service table).
    pub fn seed(&mut self, key: FrontendKey, id: u32) {
        if id != 0 && !self.used.contains(&id) {
            self.by_key.insert(key, id);
            self.used.insert(id);
        }
    }

    /// The id of `key`: its existing one, or the lowest free one.
    pub fn id(&mut self, key: FrontendKey) -> u32 {
        if let Some(&id) = self.by_key.get(&key) {
            return id;
        }
        // Ids are dense from 1; the first gap is free. Bounded by the number of ids in use.
        let mut id = 1u32;
        for &u in &self.used {
            if u != id {
                break;
            }
            id = id.saturating_add(1);
        }
        self.by_key.insert(key, id);
        self.used.insert(id);
        id
    }

    /// Forgets every frontend `keep` returns false for (their ids become free).
    pub fn retain(&mut self, mut keep: impl FnMut(&FrontendKey) -> bool) {
        let used = &mut self.used;
        self.by_key.retain(|k, id| {
            let k_ = keep(k);
            if !k_ {
                used.remove(id);
            }
            k_
        });
    }

    /// The frontends with an id.
    pub fn keys(&self) -> impl Iterator<Item = (&FrontendKey, &u32)> {
        self.by_key.iter()
    }
}
