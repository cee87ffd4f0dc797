//! A service: its frontend, its backends, how new flows pick one, and what the datapath's service
//! and backend-slot tables hold for it.

use std::vec::Vec;

use lb_api::abi::{ForwardingMode, ServiceKey, ServiceValue, SVC_F_LOCAL, SVC_F_MAGLEV};
use lb_api::flow::L4Proto;
use std::net::SocketAddr;

use crate::maglev::{maglev_table, MaglevBackend, MAGLEV_TABLE_SIZES};
use crate::{addr_bytes, BackendSpec, ConfigError};

/// Most backends one service may have.
pub const MAX_BACKENDS_PER_SERVICE: usize = 1024;

/// Most backend slots a random-selection service may use (weights are expanded into slots).
pub const MAX_RANDOM_SLOTS: u32 = 4096;

/// Default session-affinity timeout (kube-proxy's `sessionAffinityConfig.clientIP.timeoutSeconds`).
pub const AFFINITY_DEFAULT_TIMEOUT_S: u32 = 10_800;
/// Longest session-affinity timeout Kubernetes accepts.
pub const AFFINITY_MAX_TIMEOUT_S: u32 = 86_400;

/// How a new flow picks its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Selection {
    /// Flow hash modulo the slots (weights expand into slots). Cheapest; on a backend change
    /// most flows of a hash-picked (not yet tracked) mapping move.
    #[default]
    Random,
    /// Maglev consistent hashing over a table of `table_size` entries (a prime from
    /// [`MAGLEV_TABLE_SIZES`]): about 1/N of flows move when
    /// one of N backends goes.
    Maglev {
        /// Entries in the table (and slots in the backend table).
        table_size: u32,
    },
}

/// Kubernetes `sessionAffinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionAffinity {
    /// Each flow picks its backend independently.
    #[default]
    None,
    /// Flows from one client address stick to one backend for `timeout_s` seconds
    /// (1..=86400, default 10800).
    ClientIp {
        /// Stickiness timeout in seconds.
        timeout_s: u32,
    },
}

/// Kubernetes `externalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrafficPolicy {
    /// Any backend of the cluster.
    #[default]
    Cluster,
    /// Only backends on this node (keeps the client address, no second hop).
    Local,
}

/// A service: one frontend and the backends its flows are spread over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Identifier chosen by the caller, unique per service, non-zero.
    pub id: u32,
    /// Address and port clients connect to (ClusterIP, NodePort, external IP).
    pub frontend: SocketAddr,
    /// Transport protocol.
    pub proto: L4Proto,
    /// Backends. `"ip:port".parse()` gives an active backend of weight 1.
    pub backends: Vec<BackendSpec>,
    /// Backend selection algorithm.
    pub selection: Selection,
    /// Session affinity.
    pub affinity: SessionAffinity,
    /// External traffic policy.
    pub external_traffic_policy: TrafficPolicy,
    /// How packets reach backends on other nodes. Default SNAT.
    pub mode: ForwardingMode,
}

impl Default for ServiceSpec {
    /// An invalid placeholder (id 0, frontend `0.0.0.0:0`, TCP, no backends) to fill with
    /// `..Default::default()`.
    fn default() -> Self {
        Self {
            id: 0,
            frontend: SocketAddr::from(([0, 0, 0, 0], 0)),
            proto: L4Proto::Tcp,
            backends: Vec::new(),
            selection: Selection::Random,
            affinity: SessionAffinity::None,
            external_traffic_policy: TrafficPolicy::Cluster,
            mode: ForwardingMode::Snat,
        }
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
            if b.addr.is_ipv4() != self.frontend.is_ipv4() {
                return Err(ConfigError::FamilyMismatch {
                    frontend: self.frontend,
                    backend: b.addr,
                });
            }
            if b.addr.port() == 0 {
                return Err(ConfigError::ZeroPort { field: "backends" });
            }
            if let Some(node) = b.node {
                if node.is_unspecified() || node.is_multicast() {
                    return Err(ConfigError::BadNodeAddress {
                        field: "backends[].node",
                        addr: node,
                    });
                }
            }
        }
        if !self.backends.is_empty() && self.backends.iter().all(|b| b.weight == 0) {
            return Err(ConfigError::ZeroWeightsOnly {
                count: self.backends.len(),
            });
        }
        match self.selection {
            Selection::Random => {
                let slots = self.random_slot_weights().1;
                if slots > u64::from(MAX_RANDOM_SLOTS) {
                    return Err(ConfigError::TooManySlots {
                        slots,
                        max: MAX_RANDOM_SLOTS,
                    });
                }
            }
            Selection::Maglev { table_size } => {
                if !MAGLEV_TABLE_SIZES.contains(&table_size) {
                    return Err(ConfigError::MaglevTableSize {
                        size: table_size,
                        allowed: MAGLEV_TABLE_SIZES,
                    });
                }
            }
        }
        if let SessionAffinity::ClientIp { timeout_s } = self.affinity {
            if timeout_s == 0 || timeout_s > AFFINITY_MAX_TIMEOUT_S {
                return Err(ConfigError::AffinityTimeout {
                    timeout_s,
                    max: AFFINITY_MAX_TIMEOUT_S,
                });
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

    /// For random selection: the greatest common divisor of the weights of backends taking new
    /// flows, and the number of slots they expand to (each backend gets `weight / gcd` slots).
    /// Whether backend `b` gets slots: an active one the policy allows, or, when there is none,
    /// a serving-terminating one the policy allows (kube-proxy's terminating fallback).
    fn gets_slots(&self, b: &BackendSpec) -> bool {
        let policy = self.external_traffic_policy;
        b.takes_new_flows(policy)
            || (b.takes_fallback_flows(policy)
                && !self.backends.iter().any(|a| a.takes_new_flows(policy)))
    }

    fn random_slot_weights(&self) -> (u16, u64) {
        let g = self
            .backends
            .iter()
            .filter(|b| self.gets_slots(b))
            .fold(0u16, |g, b| gcd(g, b.weight));
        let slots = self
            .backends
            .iter()
            .filter(|b| self.gets_slots(b))
            .map(|b| u64::from(b.weight / g.max(1)))
            .sum();
        (g.max(1), slots)
    }

    /// The backend slot array the datapath selects from: indexes into [`Self::backends`].
    ///
    /// Only backends taking new flows appear (active, weight > 0, node-local under
    /// `externalTrafficPolicy: Local`; when no such backend exists, the serving-terminating
    /// ones that qualify otherwise); terminating backends keep their established flows
    /// through conntrack. Random selection repeats a backend `weight / gcd` times; Maglev fills
    /// its table. Call [`Self::validate`] first.
    #[must_use]
    pub fn slots(&self) -> Vec<u32> {
        match self.selection {
            Selection::Random => {
                let (g, _) = self.random_slot_weights();
                let mut v = Vec::new();
                for (i, b) in self.backends.iter().enumerate() {
                    if self.gets_slots(b) {
                        v.extend(core::iter::repeat_n(i as u32, usize::from(b.weight / g)));
                    }
                }
                v
            }
            Selection::Maglev { table_size } => {
                let mb: Vec<MaglevBackend> = self
                    .backends
                    .iter()
                    .map(|b| {
                        let w = if self.gets_slots(b) { b.weight } else { 0 };
                        MaglevBackend::from_addr(b.addr, w)
                    })
                    .collect();
                maglev_table(&mb, table_size)
            }
        }
    }

    /// The service table value for this spec with `slot_count` slots.
    #[must_use]
    pub fn value(&self, slot_count: u32) -> ServiceValue {
        let mut flags = 0;
        if matches!(self.selection, Selection::Maglev { .. }) {
            flags |= SVC_F_MAGLEV;
        }
        if self.external_traffic_policy == TrafficPolicy::Local {
            flags |= SVC_F_LOCAL;
        }
        flags |= (self.mode as u32) << ServiceValue::MODE_SHIFT;
        ServiceValue {
            id: self.id,
            backend_count: slot_count,
            flags,
            affinity_timeout_s: match self.affinity {
                SessionAffinity::None => 0,
                SessionAffinity::ClientIp { timeout_s } => timeout_s,
            },
        }
    }
}

const fn gcd(mut a: u16, mut b: u16) -> u16 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

/// Checks a set of services together: each valid, and no frontend (address, port, protocol)
/// claimed by two services.
///
/// # Errors
/// The first [`ConfigError`] found.
pub fn validate_services(specs: &[ServiceSpec]) -> Result<(), ConfigError> {
    let mut seen: hashbrown::HashMap<ServiceKey, u32> = hashbrown::HashMap::new();
    for s in specs {
        s.validate()?;
        if let Some(first) = seen.insert(s.key(), s.id) {
            return Err(ConfigError::OverlappingFrontends {
                frontend: s.frontend,
                proto: s.proto,
                first,
                second: s.id,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_specs::{be, spec};
    use crate::{upsert_service, BackendState, PortRange};
    use lb_nat::HashServiceTable;
    use std::string::ToString;
    use std::vec;

    #[test]
    fn terminating_and_zero_weight_backends_get_no_slots_and_weights_expand() {
        let mut s = spec(vec![
            be("10.1.0.1:80"),
            be("10.1.0.2:80"),
            be("10.1.0.3:80"),
        ]);
        s.backends[0].weight = 2;
        s.backends[1].weight = 4;
        s.backends[2].state = BackendState::Terminating;
        // gcd 2: one slot for backend 0, two for backend 1, none for the terminating one.
        assert_eq!(s.slots(), vec![0, 1, 1]);
        let mut t = HashServiceTable::default();
        upsert_service(&mut t, &s).unwrap();
        let v = *t.services.values().next().unwrap();
        assert_eq!(v.backend_count, 3);
        assert!((0..3).all(|i| t.backends[&v.slot_key(i)].id != 3));
        // The terminating backend is parked past the slots, where no packet selects it.
        assert_eq!(t.backends[&v.slot_key(3)].id, 3);
        s.backends[1].weight = 0;
        assert_eq!(s.slots(), vec![0]);
    }

    #[test]
    fn local_policy_keeps_only_node_local_backends() {
        let mut s = spec(vec![be("10.1.0.1:80"), be("10.1.0.2:80")]);
        s.backends[0].node = Some("10.250.0.2".parse().unwrap());
        s.external_traffic_policy = TrafficPolicy::Local;
        assert_eq!(s.slots(), vec![1]);
        assert_eq!(s.value(1).flags, SVC_F_LOCAL);
        s.external_traffic_policy = TrafficPolicy::Cluster;
        assert_eq!(s.slots(), vec![0, 1]);
    }

    #[test]
    fn affinity_weights_ranges_and_frontends_are_validated() {
        let mut s = spec(vec![be("10.1.0.1:80")]);
        s.affinity = SessionAffinity::ClientIp {
            timeout_s: AFFINITY_DEFAULT_TIMEOUT_S,
        };
        s.validate().unwrap();
        assert_eq!(s.value(1).affinity_timeout_s, 10_800);
        for bad in [0, AFFINITY_MAX_TIMEOUT_S + 1] {
            s.affinity = SessionAffinity::ClientIp { timeout_s: bad };
            let e = s.validate().unwrap_err();
            assert_eq!(
                e,
                ConfigError::AffinityTimeout {
                    timeout_s: bad,
                    max: 86_400
                }
            );
            assert!(e.to_string().contains("affinity.timeout_s"), "{e}");
        }
        s.affinity = SessionAffinity::None;

        s.backends[0].weight = 0;
        let e = s.validate().unwrap_err();
        assert_eq!(e, ConfigError::ZeroWeightsOnly { count: 1 });
        assert!(e.to_string().contains("weight"), "{e}");
        s.backends[0].weight = 1;

        s.selection = Selection::Maglev { table_size: 1000 };
        assert!(matches!(
            s.validate(),
            Err(ConfigError::MaglevTableSize { size: 1000, .. })
        ));
        s.selection = Selection::Random;
        s.backends = vec![be("10.1.0.1:80"), be("10.1.0.2:80")];
        s.backends[0].weight = 4097;
        assert!(matches!(
            s.validate(),
            Err(ConfigError::TooManySlots { .. })
        ));
        s.backends[0].weight = 1;

        let e = PortRange {
            min: 30_000,
            max: 29_999,
        }
        .validate("source_port_range")
        .unwrap_err();
        assert!(e.to_string().contains("source_port_range"), "{e}");
        assert!(PortRange { min: 0, max: 10 }.validate("r").is_err());
        PortRange {
            min: 20_000,
            max: 29_999,
        }
        .validate("r")
        .unwrap();

        let mut other = s.clone();
        other.id = 8;
        let e = validate_services(&[s.clone(), other.clone()]).unwrap_err();
        assert!(matches!(
            e,
            ConfigError::OverlappingFrontends {
                first: 7,
                second: 8,
                ..
            }
        ));
        assert!(e.to_string().contains("frontend"), "{e}");
        other.frontend = "10.96.0.11:80".parse().unwrap();
        validate_services(&[s.clone(), other.clone()]).unwrap();
        // Same address and port, other protocol: distinct frontends.
        other.frontend = s.frontend;
        other.proto = L4Proto::Udp;
        validate_services(&[s, other]).unwrap();
    }
}
