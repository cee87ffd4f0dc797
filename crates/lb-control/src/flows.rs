//! Flows to backends that left: found in conntrack and deleted, both halves, the same way in
//! either datapath (through its [`ServiceStore`]).
//!
//! A flow's service entry (client → service) names its backend (`nat_addr`, `nat_port`) and its
//! service (`service_id`); its reverse-NAT entry, which is also the flow's SNAT port
//! reservation, is its partner ([`partner_key`]). Deleting both ends the flow here: the
//! client's next packet finds no entry and is a new flow to a live backend (a UDP datagram is
//! simply served; a TCP segment of the old connection reaches a backend that has no such
//! connection and answers with a reset).

use std::net::SocketAddr;
use std::vec::Vec;

use lb_api::abi::{CtEntry, CtKey, CtKind};
use lb_api::flow::L4Proto;
use lb_conntrack::partner_key;

use crate::{addr_bytes, ConfigError, ServiceStore};

/// Deletes every flow whose service entry `doomed` selects (entries this node recorded for
/// flows another node translated are never selected), both of its entries, and counts the flows
/// in [`Counter::CtBackendRemoved`](lb_api::counters::Counter::CtBackendRemoved). The number of
/// flows deleted.
///
/// The table is read first, then the selected entries are deleted: a flow started by a packet
/// that read the service entry just before an update's flip, and recorded after this scan went
/// past it, is missed (it expires as any flow does).
///
/// # Errors
/// [`ConfigError::Store`] if the conntrack table cannot be read or written, or the counter
/// cannot be written.
pub fn flush_flows<S: ServiceStore + ?Sized>(
    store: &mut S,
    doomed: &dyn Fn(&CtKey, &CtEntry) -> bool,
) -> Result<u64, ConfigError> {
    let mut keys: Vec<CtKey> = Vec::new();
    store.for_each_flow(&mut |k, e| {
        if k.kind == CtKind::Service as u8 && !e.is_backend_side() && doomed(k, e) {
            keys.push(*k);
            if let Some(p) = partner_key(k, e) {
                keys.push(p);
            }
        }
    })?;
    let mut flows = 0;
    for k in &keys {
        if store.delete_flow_entry(k)? && k.kind == CtKind::Service as u8 {
            flows += 1;
        }
    }
    if flows > 0 {
        store.count_backend_flows_removed(flows)?;
    }
    Ok(flows)
}

/// Deletes every flow (of any service) to `backend` over `proto`, as [`flush_flows`] does: for
/// a backend that is gone though no service update said so (its pod was deleted, its node
/// failed). The number of flows deleted.
///
/// ```
/// use lb_control::{flush_backend_flows, upsert_service, ServiceSpec};
/// use lb_api::flow::L4Proto;
/// use lb_nat::HashServiceTable;
///
/// // A bare service table has no conntrack: nothing to delete.
/// let mut t = HashServiceTable::default();
/// let backend = "10.1.0.1:8080".parse().unwrap();
/// assert_eq!(flush_backend_flows(&mut t, backend, L4Proto::Udp), Ok(0));
/// ```
///
/// # Errors
/// As [`flush_flows`].
pub fn flush_backend_flows<S: ServiceStore + ?Sized>(
    store: &mut S,
    backend: SocketAddr,
    proto: L4Proto,
) -> Result<u64, ConfigError> {
    let addr = addr_bytes(backend.ip()).0;
    let port = backend.port();
    flush_flows(store, &|_, e| {
        e.proto == proto as u8 && e.nat_addr == addr && e.nat_port == port
    })
}
