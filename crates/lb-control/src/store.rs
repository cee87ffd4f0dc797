//! How specs are written into the datapath's tables: the [`ServiceStore`] both datapaths
//! implement, and the one order of writes that never shows a flow an empty slot.

use std::net::IpAddr;
use std::vec::Vec;

use lb_api::abi::{
    BackendAddrKey, BackendKey, BackendValue, DatapathConfig, NodeKey, ServiceKey, ServiceValue,
};
use lb_api::flow::IpFamily;
use lb_nat::HashServiceTable;

use crate::{ConfigError, NodeSpec, ServiceSpec};

/// Where service entries are written: the engine's hash tables or the kernel's maps.
pub trait ServiceStore {
    /// Adds a peer node (tunnel packets are accepted from it).
    fn put_node(&mut self, key: NodeKey) -> Result<(), ConfigError>;
    /// Creates or replaces a service.
    ///
    /// # Errors
    /// [`ConfigError::Store`] when the table refuses the write.
    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), ConfigError>;
    /// Creates or replaces a backend slot.
    ///
    /// # Errors
    /// [`ConfigError::Store`] when the table refuses the write.
    fn put_backend(&mut self, key: BackendKey, value: BackendValue) -> Result<(), ConfigError>;
    /// The service currently stored under `key`.
    fn get_service(&self, key: &ServiceKey) -> Option<ServiceValue>;
    /// Removes a backend slot (absent is fine).
    fn remove_backend(&mut self, key: &BackendKey);
    /// Removes a service (absent is fine).
    fn remove_service(&mut self, key: &ServiceKey);
    /// The backend in a slot (what an update replaces: its backends-by-address entries go
    /// with it).
    fn get_backend(&self, key: &BackendKey) -> Option<BackendValue>;
    /// Creates or replaces a service's backend by address (session affinity finds it there).
    ///
    /// # Errors
    /// [`ConfigError::Store`] or [`ConfigError::TableFull`] when the table refuses the write.
    fn put_backend_by_addr(
        &mut self,
        key: BackendAddrKey,
        value: BackendValue,
    ) -> Result<(), ConfigError>;
    /// Removes a service's backend by address (absent is fine).
    fn remove_backend_by_addr(&mut self, key: &BackendAddrKey);
}

/// The backends-by-address key of `b`, a backend of service `service_id`.
fn addr_key(service_id: u32, b: &BackendValue) -> BackendAddrKey {
    BackendAddrKey {
        service_id,
        port: b.port,
        family: b.family,
        pad: 0,
        addr: b.addr,
    }
}

/// The distinct backends in a service's slots `0..count`, as stored.
fn stored_backends<S: ServiceStore + ?Sized>(
    store: &S,
    service_id: u32,
    count: u32,
) -> std::collections::BTreeMap<u32, BackendValue> {
    (0..count)
        .filter_map(|slot| store.get_backend(&BackendKey { service_id, slot }))
        .map(|b| (b.id, b))
        .collect()
}

/// The 16-byte address field and family of an IP address.
#[must_use]
pub fn addr_bytes(ip: IpAddr) -> ([u8; 16], IpFamily) {
    match ip {
        IpAddr::V4(a) => (lb_api::flow::v4_addr(a.octets()), IpFamily::V4),
        IpAddr::V6(a) => (a.octets(), IpFamily::V6),
    }
}

/// Writes (or rewrites) a service into `store` without a moment where a flow could find an empty
/// slot: new backend slots first, then the service with its new count, then slots past the count
/// are removed.
///
/// # Errors
/// A [`ConfigError`] if the spec is invalid (nothing is written) or the store refuses a write.
pub fn upsert_service<S: ServiceStore + ?Sized>(
    store: &mut S,
    spec: &ServiceSpec,
) -> Result<(), ConfigError> {
    spec.validate()?;
    let key = spec.key();
    let old_count = store.get_service(&key).map_or(0, |v| v.backend_count);
    let old = stored_backends(store, spec.id, old_count);
    let slots = spec.slots();
    // The active backends by address first: an affinity entry finds its backend as soon as a
    // slot may name it, and keeps finding it while the backend stays in the set.
    let mut active = std::collections::BTreeSet::new();
    let mut active_keys = Vec::new();
    for &bi in &slots {
        if !active.insert(bi) {
            continue;
        }
        if let Some(b) = spec.backends.get(bi as usize) {
            let value = backend_value(b, bi);
            active_keys.push(addr_key(spec.id, &value));
            store.put_backend_by_addr(addr_key(spec.id, &value), value)?;
        }
    }
    for (slot, &bi) in slots.iter().enumerate() {
        let Some(b) = spec.backends.get(bi as usize) else {
            continue;
        };
        let value = backend_value(b, bi);
        store.put_backend(
            BackendKey {
                service_id: spec.id,
                slot: slot as u32,
            },
            value,
        )?;
    }
    let count = slots.len() as u32;
    store.put_service(key, spec.value(count))?;
    for slot in count..old_count {
        store.remove_backend(&BackendKey {
            service_id: spec.id,
            slot,
        });
    }
    // Backends that left the set last: no slot names them any more.
    for b in old.values() {
        let k = addr_key(spec.id, b);
        if !active_keys.contains(&k) {
            store.remove_backend_by_addr(&k);
        }
    }
    Ok(())
}

/// What the slot table holds for the spec's backend at position `bi`.
fn backend_value(b: &crate::BackendSpec, bi: u32) -> BackendValue {
    let (addr, family) = addr_bytes(b.addr.ip());
    BackendValue {
        addr,
        port: b.addr.port(),
        family: family as u8,
        state: 0,
        // Stable per backend (its position in the spec), not per slot.
        id: bi + 1,
        node: b.node.map_or([0; 16], |n| addr_bytes(n).0),
    }
}

/// Removes a service and its backend slots.
pub fn remove_service<S: ServiceStore + ?Sized>(store: &mut S, spec: &ServiceSpec) {
    let key = spec.key();
    let count = store.get_service(&key).map_or(0, |v| v.backend_count);
    let old = stored_backends(store, spec.id, count);
    store.remove_service(&key);
    for b in old.values() {
        store.remove_backend_by_addr(&addr_key(spec.id, b));
    }
    for slot in 0..count {
        store.remove_backend(&BackendKey {
            service_id: spec.id,
            slot,
        });
    }
}

impl ServiceStore for HashServiceTable {
    fn put_node(&mut self, key: NodeKey) -> Result<(), ConfigError> {
        self.nodes.insert(key);
        Ok(())
    }
    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), ConfigError> {
        self.services.insert(key, value);
        Ok(())
    }
    fn put_backend(&mut self, key: BackendKey, value: BackendValue) -> Result<(), ConfigError> {
        self.backends.insert(key, value);
        Ok(())
    }
    fn get_service(&self, key: &ServiceKey) -> Option<ServiceValue> {
        self.services.get(key).copied()
    }
    fn remove_backend(&mut self, key: &BackendKey) {
        self.backends.remove(key);
    }
    fn remove_service(&mut self, key: &ServiceKey) {
        self.services.remove(key);
    }
    fn get_backend(&self, key: &BackendKey) -> Option<BackendValue> {
        self.backends.get(key).copied()
    }
    fn put_backend_by_addr(
        &mut self,
        key: BackendAddrKey,
        value: BackendValue,
    ) -> Result<(), ConfigError> {
        self.backends_by_addr.insert(key, value);
        Ok(())
    }
    fn remove_backend_by_addr(&mut self, key: &BackendAddrKey) {
        self.backends_by_addr.remove(key);
    }
}

/// Validates `node`, writes it into `cfg` and its peers into `store`.
///
/// # Errors
/// A [`ConfigError`] naming the invalid field; nothing is written then.
pub fn set_node<S: ServiceStore + ?Sized>(
    store: &mut S,
    cfg: &mut DatapathConfig,
    node: &NodeSpec,
) -> Result<(), ConfigError> {
    node.validate()?;
    node.apply(cfg);
    for k in node.peer_keys() {
        store.put_node(k)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_specs::{be, spec};
    use crate::{BackendState, Selection};
    use lb_api::abi::SVC_F_MAGLEV;
    use std::vec;

    #[test]
    fn shrinking_a_service_removes_trailing_slots() {
        let mut t = HashServiceTable::default();
        upsert_service(
            &mut t,
            &spec(vec![
                "10.1.0.1:8080".parse().unwrap(),
                "10.1.0.2:8080".parse().unwrap(),
            ]),
        )
        .unwrap();
        assert_eq!(t.backends.len(), 2);
        upsert_service(&mut t, &spec(vec!["10.1.0.2:8080".parse().unwrap()])).unwrap();
        assert_eq!(t.backends.len(), 1);
        assert_eq!(t.services.values().next().unwrap().backend_count, 1);
        remove_service(&mut t, &spec(vec![]));
        assert!(t.services.is_empty() && t.backends.is_empty());
    }

    #[test]
    fn bad_specs_are_refused_with_the_field_named() {
        let mut s = spec(vec!["[fd00::1]:80".parse().unwrap()]);
        let e = s.validate().unwrap_err();
        assert!(matches!(e, ConfigError::FamilyMismatch { .. }));
        assert!(e.to_string().contains("backends"), "{e}");
        s.backends = vec!["10.1.0.1:0".parse().unwrap()];
        assert_eq!(
            s.validate(),
            Err(ConfigError::ZeroPort { field: "backends" })
        );
        s.id = 0;
        assert_eq!(s.validate(), Err(ConfigError::ZeroId));
        let mut t = HashServiceTable::default();
        assert!(upsert_service(&mut t, &s).is_err());
        assert!(t.services.is_empty(), "an invalid spec writes nothing");
    }

    #[test]
    fn maglev_service_writes_its_table_into_the_slots() {
        let mut s = spec(vec![be("10.1.0.1:80"), be("10.1.0.2:80")]);
        s.selection = Selection::Maglev { table_size: 251 };
        s.backends[1].state = BackendState::Terminating;
        let mut t = HashServiceTable::default();
        upsert_service(&mut t, &s).unwrap();
        let v = *t.services.values().next().unwrap();
        assert_eq!((v.backend_count, v.flags), (251, SVC_F_MAGLEV));
        assert!(
            t.backends.values().all(|b| b.id == 1),
            "terminating backend owns no entry"
        );
        // Back to random: the table shrinks to the active backends.
        s.selection = Selection::Random;
        upsert_service(&mut t, &s).unwrap();
        assert_eq!(t.backends.len(), 1);
    }
}
