//! The control-plane API a CNI programs against: typed service specs, their validation, and how
//! they are written into service/backend tables. The userspace engine and the kernel loader both
//! implement [`ServiceStore`], so one piece of code decides what the tables contain.

use std::net::{IpAddr, SocketAddr};
use std::vec::Vec;

use lb_api::abi::{BackendKey, BackendValue, ServiceKey, ServiceValue};
use lb_api::flow::{IpFamily, L4Proto};

/// Most backends one service may have (slots in the backend table).
pub const MAX_BACKENDS_PER_SERVICE: usize = 1024;

/// A service: one frontend and the backends its flows are spread over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Identifier chosen by the caller, unique per service, non-zero.
    pub id: u32,
    /// Address and port clients connect to (ClusterIP, NodePort, external IP).
    pub frontend: SocketAddr,
    /// Transport protocol.
    pub proto: L4Proto,
    /// Backends (pod address and target port), in slot order.
    pub backends: Vec<SocketAddr>,
}

/// A service definition the datapath cannot take: which field, and what rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `id` is zero.
    #[error("service id must be non-zero (field `id`); choose a unique id per service")]
    ZeroId,
    /// The protocol has no ports to load-balance on.
    #[error("protocol {0:?} cannot be load-balanced (field `proto`): use Tcp or Udp")]
    UnsupportedProto(L4Proto),
    /// A backend's address family differs from the frontend's.
    #[error(
        "backend {backend} is not of the frontend {frontend}'s address family (field `backends`): \
             use a NAT64-free set of backends of one family"
    )]
    FamilyMismatch {
        /// The frontend.
        frontend: SocketAddr,
        /// The offending backend.
        backend: SocketAddr,
    },
    /// Port zero on the frontend or a backend.
    #[error("port 0 is not a valid {field} port: give the port the service listens on")]
    ZeroPort {
        /// `frontend` or `backends`.
        field: &'static str,
    },
    /// Too many backends.
    #[error("{count} backends exceed the limit of {max} per service (field `backends`)")]
    TooManyBackends {
        /// Backends given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The store (kernel map or table) refused a write.
    #[error("writing the {table} table failed: {reason}")]
    Store {
        /// Which table.
        table: &'static str,
        /// What the store said.
        reason: std::string::String,
    },
}

/// Where service entries are written: the engine's hash tables or the kernel's maps.
pub trait ServiceStore {
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
}

/// The 16-byte address field and family of an IP address.
#[must_use]
pub fn addr_bytes(ip: IpAddr) -> ([u8; 16], IpFamily) {
    match ip {
        IpAddr::V4(a) => (lb_api::flow::v4_addr(a.octets()), IpFamily::V4),
        IpAddr::V6(a) => (a.octets(), IpFamily::V6),
    }
}

impl ServiceSpec {
    /// Checks the spec against the datapath's rules.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        if !matches!(self.proto, L4Proto::Tcp | L4Proto::Udp) {
            return Err(ConfigError::UnsupportedProto(self.proto));
        }
        if self.frontend.port() == 0 {
            return Err(ConfigError::ZeroPort { field: "frontend" });
        }
        if self.backends.len() > MAX_BACKENDS_PER_SERVICE {
            return Err(ConfigError::TooManyBackends {
                count: self.backends.len(),
                max: MAX_BACKENDS_PER_SERVICE,
            });
        }
        for b in &self.backends {
            if b.is_ipv4() != self.frontend.is_ipv4() {
                return Err(ConfigError::FamilyMismatch {
                    frontend: self.frontend,
                    backend: *b,
                });
            }
            if b.port() == 0 {
                return Err(ConfigError::ZeroPort { field: "backends" });
            }
        }
        Ok(())
    }

    /// The service table key of the frontend.
    #[must_use]
    pub fn key(&self) -> ServiceKey {
        let (addr, family) = addr_bytes(self.frontend.ip());
        ServiceKey {
            addr,
            port: self.frontend.port(),
            proto: self.proto as u8,
            family: family as u8,
        }
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
    for (slot, b) in spec.backends.iter().enumerate() {
        let (addr, family) = addr_bytes(b.ip());
        let value = BackendValue {
            addr,
            port: b.port(),
            family: family as u8,
            state: 0,
            id: slot as u32 + 1,
        };
        store.put_backend(
            BackendKey {
                service_id: spec.id,
                slot: slot as u32,
            },
            value,
        )?;
    }
    let count = spec.backends.len() as u32;
    store.put_service(
        key,
        ServiceValue {
            id: spec.id,
            backend_count: count,
            flags: 0,
            affinity_timeout_s: 0,
        },
    )?;
    for slot in count..old_count {
        store.remove_backend(&BackendKey {
            service_id: spec.id,
            slot,
        });
    }
    Ok(())
}

/// Removes a service and its backend slots.
pub fn remove_service<S: ServiceStore + ?Sized>(store: &mut S, spec: &ServiceSpec) {
    let key = spec.key();
    let count = store.get_service(&key).map_or(0, |v| v.backend_count);
    store.remove_service(&key);
    for slot in 0..count {
        store.remove_backend(&BackendKey {
            service_id: spec.id,
            slot,
        });
    }
}

impl ServiceStore for crate::HashServiceTable {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HashServiceTable;
    use std::string::ToString;
    use std::vec;

    fn spec(backends: Vec<SocketAddr>) -> ServiceSpec {
        ServiceSpec {
            id: 7,
            frontend: "10.96.0.10:80".parse().unwrap(),
            proto: L4Proto::Tcp,
            backends,
        }
    }

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
}
