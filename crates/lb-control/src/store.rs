//! How specs are written into the datapath's tables: the [`ServiceStore`] both datapaths
//! implement, and the one order of writes that never shows a flow an empty slot.

use std::net::IpAddr;

use hashbrown::HashSet;
use lb_api::abi::{
    BackendAddrKey, BackendKey, BackendValue, CtEntry, CtKey, DatapathConfig, NodeKey, ServiceKey,
    ServiceValue, SVC_F_SLOT_SET_B,
};
use lb_api::flow::IpFamily;
use lb_nat::HashServiceTable;

use crate::flows::flush_flows;
use crate::{
    ConfigError, NodeSpec, ServiceSpec, MAGLEV_TABLE_SIZES, MAX_BACKENDS_PER_SERVICE,
    MAX_RANDOM_SLOTS,
};
use std::vec;

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
    /// The backend slot stored under `key`.
    fn get_backend(&self, key: &BackendKey) -> Option<BackendValue>;
    /// Removes a backend slot (absent is fine).
    fn remove_backend(&mut self, key: &BackendKey);
    /// Removes a service (absent is fine).
    fn remove_service(&mut self, key: &ServiceKey);

    /// Calls `f` once per conntrack entry (a table without conntrack, such as a bare
    /// [`HashServiceTable`], has none).
    ///
    /// # Errors
    /// [`ConfigError::Store`] naming the conntrack table if it cannot be read.
    fn for_each_flow(&mut self, _f: &mut dyn FnMut(&CtKey, &CtEntry)) -> Result<(), ConfigError> {
        Ok(())
    }
    /// Deletes the conntrack entry under `key`; whether it was there.
    ///
    /// # Errors
    /// [`ConfigError::Store`] naming the conntrack table if it cannot be written.
    fn delete_flow_entry(&mut self, _key: &CtKey) -> Result<bool, ConfigError> {
        Ok(false)
    }
    /// Adds `flows` to [`Counter::CtBackendRemoved`](lb_api::counters::Counter::CtBackendRemoved).
    ///
    /// # Errors
    /// [`ConfigError::Store`] naming the counters table if it cannot be written.
    fn count_backend_flows_removed(&mut self, _flows: u64) -> Result<(), ConfigError> {
        Ok(())
    }
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

/// The backends-by-address keys of the backends packets may select in the set `value` names
/// (its slots `0..backend_count`), as stored.
fn active_addr_keys<S: ServiceStore + ?Sized>(
    store: &S,
    service_id: u32,
    value: &ServiceValue,
) -> HashSet<BackendAddrKey> {
    (0..value.backend_count)
        .filter_map(|slot| store.get_backend(&value.slot_key(slot)))
        .map(|b| addr_key(service_id, &b))
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

/// Writes (or rewrites) a service into `store` so that packets see its new backend set in one
/// step. A service's slots are double-buffered ([`SVC_F_SLOT_SET_B`]); a set holds its
/// `backend_count` slots and, past them, one entry per backend taking no new flows (never
/// selected), so that it names every backend of the service. The new slots are written
/// into the set the service does not read, then the service entry is flipped to that set with
/// one write, then the old set's slots are removed. A packet reads the service entry once and
/// then slots of the set it names: the old set or the new one, never a mix, never an empty slot.
///
/// Backends of the old set that are absent from `spec` (in any state) have left the service:
/// their flows are deleted after the flip ([`flush_flows`]; see `docs/nat.md`, "Removed
/// backends"). Terminating backends stay in `spec` and keep their flows.
///
/// The backend table must have room for both sets of a service during its update.
///
/// # Errors
/// A [`ConfigError`] if the spec is invalid (nothing is written) or the store refuses a write
/// ([`ConfigError::TableFull`] naming the table): the slots written so far are removed again and
/// the old set stays in force, whole. [`ConfigError::Store`] naming the conntrack table if,
/// after the flip (the new set is in force), the flows of a backend that left could not be
/// deleted.
pub fn upsert_service<S: ServiceStore + ?Sized>(
    store: &mut S,
    spec: &ServiceSpec,
) -> Result<(), ConfigError> {
    spec.validate()?;
    let key = spec.key();
    let old = store.get_service(&key);
    let old_active = old
        .as_ref()
        .map(|o| active_addr_keys(store, spec.id, o))
        .unwrap_or_default();
    let slots = spec.slots();
    let count = slots.len() as u32;
    let mut value = spec.value(count);
    // A new service starts in set A; an existing one moves to the set it does not read.
    if let Some(old) = &old {
        value.flags |= (old.flags & SVC_F_SLOT_SET_B) ^ SVC_F_SLOT_SET_B;
    }
    // With session affinity, the active backends by address first: an affinity entry finds its
    // backend as soon as a slot may name it, and keeps finding it while the backend stays in
    // the set. Those this update adds are taken back if it fails, so that no affinity entry
    // can lead a packet to a backend outside the set in force. Services without affinity
    // write none (50,000 services of two backends would otherwise take 100,000 entries).
    let mut active = HashSet::new();
    let mut added = vec::Vec::new();
    let sticky = value.affinity_timeout_s != 0;
    for &bi in slots.iter().filter(|_| sticky) {
        let Some(b) = spec.backends.get(bi as usize) else {
            continue;
        };
        let k = addr_key(spec.id, &backend_value(b, bi));
        if !active.insert(k) {
            continue;
        }
        if let Err(e) = store.put_backend_by_addr(k, backend_value(b, bi)) {
            undo_addr_keys(store, &added);
            return Err(e);
        }
        if !old_active.contains(&k) {
            added.push(k);
        }
    }
    // The slots, then the backends that take no new flows (terminating, weight 0, not local
    // under a Local policy) past `count`, where no packet selects them: the set then names every
    // backend of the service, so that the next update knows which ones left.
    let mut listed = vec![false; spec.backends.len()];
    for &bi in &slots {
        if let Some(l) = listed.get_mut(bi as usize) {
            *l = true;
        }
    }
    let parked = (0..spec.backends.len() as u32)
        .filter(|&bi| !listed.get(bi as usize).copied().unwrap_or(true));
    for (slot, bi) in slots.iter().copied().chain(parked).enumerate() {
        let Some(b) = spec.backends.get(bi as usize) else {
            continue;
        };
        if let Err(e) = store.put_backend(value.slot_key(slot as u32), backend_value(b, bi)) {
            remove_slots(store, &value, slot as u32);
            undo_addr_keys(store, &added);
            return Err(e);
        }
    }
    let written = (slots.len() + listed.iter().filter(|l| !**l).count()) as u32;
    if let Err(e) = store.put_service(key, value) {
        remove_slots(store, &value, written);
        undo_addr_keys(store, &added);
        return Err(e);
    }
    // Backends that left the active set: no slot in force names them any more.
    for k in old_active.iter().filter(|k| !active.contains(*k)) {
        store.remove_backend_by_addr(k);
    }
    let Some(old) = old else {
        return Ok(());
    };
    let live = backend_set(spec);
    if retire_slots(store, &old, &live) {
        flush_flows(store, &|_, e| {
            e.service_id == spec.id && !live.contains(&(e.nat_addr, e.nat_port))
        })?;
    }
    Ok(())
}

/// Takes back the backends-by-address entries a failed update added.
fn undo_addr_keys<S: ServiceStore + ?Sized>(store: &mut S, added: &[BackendAddrKey]) {
    for k in added {
        store.remove_backend_by_addr(k);
    }
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

/// The (address, port) of every backend of `spec`, in any state.
fn backend_set(spec: &ServiceSpec) -> HashSet<([u8; 16], u16)> {
    spec.backends
        .iter()
        .map(|b| (addr_bytes(b.addr.ip()).0, b.addr.port()))
        .collect()
}

/// Removes slots `0..count` of the set `value` names.
fn remove_slots<S: ServiceStore + ?Sized>(store: &mut S, value: &ServiceValue, count: u32) {
    for slot in 0..count {
        store.remove_backend(&value.slot_key(slot));
    }
}

/// Removes the slots of the set `old` (a service entry no longer in use) names: its
/// `backend_count` slots and the entries past them (its backends taking no new flows, and any
/// an update interrupted before its flip left).
/// Whether one of them held a backend not in `live`.
fn retire_slots<S: ServiceStore + ?Sized>(
    store: &mut S,
    old: &ServiceValue,
    live: &HashSet<([u8; 16], u16)>,
) -> bool {
    let mut left = false;
    let bound = MAX_SLOTS.max(old.backend_count);
    for slot in 0..bound {
        let k = old.slot_key(slot);
        match store.get_backend(&k) {
            Some(b) => {
                left |= !live.contains(&(b.addr, b.port));
                store.remove_backend(&k);
            }
            None if slot >= old.backend_count => break,
            None => {}
        }
    }
    left
}

/// Most entries one service has in a set: the largest Maglev table or random selection's
/// limit, plus every backend parked past them.
const MAX_SLOTS: u32 = {
    let m = MAGLEV_TABLE_SIZES[MAGLEV_TABLE_SIZES.len() - 1];
    let slots = if m > MAX_RANDOM_SLOTS {
        m
    } else {
        MAX_RANDOM_SLOTS
    };
    slots + MAX_BACKENDS_PER_SERVICE as u32
};

/// Removes a service, its backend slots (both sets) and its flows (every backend has left it).
/// The number of flows deleted.
///
/// # Errors
/// [`ConfigError::Store`] if the conntrack table cannot be read or written (the service and its
/// slots are gone by then).
pub fn remove_service<S: ServiceStore + ?Sized>(
    store: &mut S,
    spec: &ServiceSpec,
) -> Result<u64, ConfigError> {
    let key = spec.key();
    let Some(old) = store.get_service(&key) else {
        return Ok(0);
    };
    let old_active = active_addr_keys(store, spec.id, &old);
    store.remove_service(&key);
    for k in &old_active {
        store.remove_backend_by_addr(k);
    }
    let none = HashSet::new();
    retire_slots(store, &old, &none);
    // An update interrupted before its flip may have left slots in the other set.
    let other = ServiceValue {
        flags: old.flags ^ SVC_F_SLOT_SET_B,
        backend_count: 0,
        ..old
    };
    retire_slots(store, &other, &none);
    flush_flows(store, &|_, e| e.service_id == spec.id)
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
    fn get_backend(&self, key: &BackendKey) -> Option<BackendValue> {
        self.backends.get(key).copied()
    }
    fn remove_backend(&mut self, key: &BackendKey) {
        self.backends.remove(key);
    }
    fn remove_service(&mut self, key: &ServiceKey) {
        self.services.remove(key);
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
        remove_service(&mut t, &spec(vec![])).unwrap();
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
            (0..251).all(|i| t.backends[&v.slot_key(i)].id == 1),
            "terminating backend owns no slot"
        );
        assert_eq!(t.backends[&v.slot_key(251)].id, 2, "it is parked past them");
        assert_eq!(t.backends.len(), 252);
        // Back to random: the table shrinks to the active backends.
        s.selection = Selection::Random;
        upsert_service(&mut t, &s).unwrap();
        assert_eq!(t.backends.len(), 2, "one slot, one parked backend");
    }

    /// A service table whose backend table holds at most `cap` slots, as a full kernel map.
    struct Capped {
        t: HashServiceTable,
        cap: usize,
    }

    impl ServiceStore for Capped {
        fn put_node(&mut self, key: NodeKey) -> Result<(), ConfigError> {
            self.t.put_node(key)
        }
        fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), ConfigError> {
            self.t.put_service(key, value)
        }
        fn put_backend(&mut self, key: BackendKey, value: BackendValue) -> Result<(), ConfigError> {
            if !self.t.backends.contains_key(&key) && self.t.backends.len() >= self.cap {
                return Err(ConfigError::TableFull {
                    table: "LB_BACKENDS",
                    capacity: self.cap as u32,
                    knob: "TableSizes::backends",
                });
            }
            self.t.put_backend(key, value)
        }
        fn get_service(&self, key: &ServiceKey) -> Option<ServiceValue> {
            self.t.get_service(key)
        }
        fn get_backend(&self, key: &BackendKey) -> Option<BackendValue> {
            self.t.get_backend(key)
        }
        fn remove_backend(&mut self, key: &BackendKey) {
            self.t.remove_backend(key);
        }
        fn remove_service(&mut self, key: &ServiceKey) {
            self.t.remove_service(key);
        }
        fn put_backend_by_addr(
            &mut self,
            key: BackendAddrKey,
            value: BackendValue,
        ) -> Result<(), ConfigError> {
            self.t.put_backend_by_addr(key, value)
        }
        fn remove_backend_by_addr(&mut self, key: &BackendAddrKey) {
            self.t.remove_backend_by_addr(key);
        }
    }

    #[test]
    fn an_update_writes_the_other_slot_set_then_flips_the_service_to_it() {
        let mut t = HashServiceTable::default();
        let a = spec(vec![be("10.1.0.1:80"), be("10.1.0.2:80")]);
        upsert_service(&mut t, &a).unwrap();
        let v = *t.services.values().next().unwrap();
        assert_eq!(
            v.flags & SVC_F_SLOT_SET_B,
            0,
            "a new service starts in set A"
        );
        let b = spec(vec![be("10.1.0.3:80")]);
        upsert_service(&mut t, &b).unwrap();
        let v = *t.services.values().next().unwrap();
        assert_ne!(v.flags & SVC_F_SLOT_SET_B, 0);
        // Only the new set's slot is left, under a set-B key.
        let keys: Vec<BackendKey> = t.backends.keys().copied().collect();
        assert_eq!(keys, vec![v.slot_key(0)]);
        assert_eq!(v.slot_key(0).slot, BackendKey::SLOT_SET_B);
        upsert_service(&mut t, &a).unwrap();
        let v = *t.services.values().next().unwrap();
        assert_eq!((v.flags & SVC_F_SLOT_SET_B, t.backends.len()), (0, 2));
        remove_service(&mut t, &a).unwrap();
        assert!(t.services.is_empty() && t.backends.is_empty());
    }

    #[test]
    fn a_full_backend_table_midway_leaves_the_old_set_whole_and_names_the_table() {
        let mut s = spec(vec![be("10.1.0.1:80"), be("10.1.0.2:80")]);
        s.selection = Selection::Maglev { table_size: 251 };
        let mut c = Capped {
            t: HashServiceTable::default(),
            cap: 400,
        };
        upsert_service(&mut c, &s).unwrap();
        let before = c.t.clone();
        // The new set needs 251 slots beside the old 251: the table refuses the 150th.
        s.backends = vec![be("10.1.0.3:80"), be("10.1.0.4:80")];
        let e = upsert_service(&mut c, &s).unwrap_err();
        assert_eq!(
            e,
            ConfigError::TableFull {
                table: "LB_BACKENDS",
                capacity: 400,
                knob: "TableSizes::backends"
            }
        );
        assert_eq!(
            c.t.services, before.services,
            "the service still reads the old set"
        );
        assert_eq!(
            c.t.backends, before.backends,
            "no slot of the new set is left"
        );
        // With room for both sets the same update goes through.
        c.cap = 502;
        upsert_service(&mut c, &s).unwrap();
        assert_eq!(c.t.backends.len(), 251);
        let new: Vec<[u8; 16]> = ["10.1.0.3", "10.1.0.4"]
            .iter()
            .map(|a| addr_bytes(a.parse().unwrap()).0)
            .collect();
        assert!(c.t.backends.values().all(|b| new.contains(&b.addr)));
    }
}
