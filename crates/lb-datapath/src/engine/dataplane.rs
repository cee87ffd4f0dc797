//! The engine as a [`Dataplane`]: what a control plane written against the trait sees of it.

use std::vec::Vec;

use lb_api::abi::{AffinityKey, AffinityValue, CtEntry, CtKey, DatapathConfig};
use lb_api::counters::CounterSnapshot;
use lb_api::events::DropEvent;
use lb_conntrack::{Clock, ConntrackTable};
use lb_control::{Dataplane, DataplaneError, NodeSpec, ServiceSpec};

use super::Engine;

/// The engine's calls, none of which fails but by refusing a spec.
impl<C: Clock> Dataplane for Engine<C> {
    fn set_config(&mut self, cfg: &DatapathConfig) -> Result<(), DataplaneError> {
        Engine::set_config(self, *cfg);
        Ok(())
    }

    fn config(&mut self) -> Result<DatapathConfig, DataplaneError> {
        Ok(*Engine::config(self))
    }

    fn set_node(&mut self, node: &NodeSpec) -> Result<(), DataplaneError> {
        Ok(Engine::set_node(self, node)?)
    }

    fn upsert_service(&mut self, spec: &ServiceSpec) -> Result<(), DataplaneError> {
        Ok(Engine::upsert_service(self, spec)?)
    }

    fn remove_service(&mut self, spec: &ServiceSpec) -> Result<(), DataplaneError> {
        Engine::remove_service(self, spec);
        Ok(())
    }

    fn flush_backend_flows(
        &mut self,
        backend: std::net::SocketAddr,
        proto: lb_api::flow::L4Proto,
    ) -> Result<u64, DataplaneError> {
        Ok(Engine::flush_backend_flows(self, backend, proto))
    }

    fn counters(&self) -> Result<CounterSnapshot, DataplaneError> {
        Ok(*Engine::counters(self))
    }

    fn reset_counters(&mut self) -> Result<(), DataplaneError> {
        self.tables.counters = CounterSnapshot::default();
        Ok(())
    }

    fn drain_drop_events(&mut self) -> Result<Vec<DropEvent>, DataplaneError> {
        Ok(Engine::drain_drop_events(self))
    }

    /// Sorted by key bytes, as the kernel datapath's.
    fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtEntry)>, DataplaneError> {
        let mut v: Vec<(CtKey, CtEntry)> = self.tables.ct.iter().map(|(k, e)| (*k, *e)).collect();
        v.sort_by(|a, b| {
            lb_api::__zerocopy::IntoBytes::as_bytes(&a.0)
                .cmp(lb_api::__zerocopy::IntoBytes::as_bytes(&b.0))
        });
        Ok(v)
    }

    fn flush_conntrack(&mut self) -> Result<(), DataplaneError> {
        let keys: Vec<CtKey> = self.tables.ct.iter().map(|(k, _)| *k).collect();
        for k in &keys {
            self.tables.ct.remove(k);
        }
        Ok(())
    }

    /// Sorted by key bytes, as the kernel datapath's.
    fn affinity_entries(&self) -> Result<Vec<(AffinityKey, AffinityValue)>, DataplaneError> {
        let mut v: Vec<(AffinityKey, AffinityValue)> = self
            .tables
            .services
            .affinity
            .iter()
            .map(|(k, e)| (*k, *e))
            .collect();
        v.sort_by(|a, b| {
            lb_api::__zerocopy::IntoBytes::as_bytes(&a.0)
                .cmp(lb_api::__zerocopy::IntoBytes::as_bytes(&b.0))
        });
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_api::counters::{Counter, DropReason};
    use lb_api::flow::L4Proto;
    use lb_api::wire::{testing::tcp_v4_frame, TcpFlags};
    use lb_api::Verdict;
    use lb_conntrack::ManualClock;
    use lb_control::{default_config, ConfigError};
    use std::vec;

    /// Through `&mut dyn Dataplane` only: what a control plane sees after traffic.
    fn observe(dp: &mut dyn Dataplane) -> (usize, u64, usize) {
        let entries = dp.conntrack_entries().unwrap().len();
        let drops = dp.counters().unwrap().drops(DropReason::NoBackend);
        let events = dp.drain_drop_events().unwrap().len();
        (entries, drops, events)
    }

    #[test]
    fn the_engine_is_programmed_and_read_through_the_trait() {
        let mut e = Engine::with_clock(64, default_config(0), ManualClock::new(1));
        let dp: &mut dyn Dataplane = &mut e;
        dp.set_config(&default_config(3)).unwrap();
        assert_eq!(dp.config().unwrap().hash_seed, 3);
        let mut spec = ServiceSpec {
            id: 1,
            frontend: "10.96.0.10:80".parse().unwrap(),
            proto: L4Proto::Tcp,
            backends: vec!["10.1.0.2:8080".parse().unwrap()],
            ..Default::default()
        };
        dp.upsert_service(&spec).unwrap();
        spec.id = 0;
        let err = dp.upsert_service(&spec).unwrap_err();
        assert_eq!(err.config(), Some(&ConfigError::ZeroId));
        spec.id = 1;

        let syn = |port| tcp_v4_frame([10, 0, 0, 1], port, [10, 96, 0, 10], 80, TcpFlags::SYN, b"");
        assert_eq!(e.process(&mut syn(40_000)), Verdict::Pass);
        assert_eq!(observe(&mut e), (2, 0, 0));

        // Removing the service ends its flow (both entries), counted.
        let dp: &mut dyn Dataplane = &mut e;
        dp.remove_service(&spec).unwrap();
        assert_eq!(dp.counters().unwrap().get(Counter::CtBackendRemoved), 1);
        spec.backends.clear();
        dp.upsert_service(&spec).unwrap();
        // Without backends: a SYN gets a reset, a reset is dropped.
        assert_eq!(e.process(&mut syn(40_001)), Verdict::Tx);
        assert_eq!(e.counters().get(Counter::RejectNoEndpoints), 1);
        let mut rst = tcp_v4_frame(
            [10, 0, 0, 1],
            40_002,
            [10, 96, 0, 10],
            80,
            TcpFlags::RST,
            b"",
        );
        assert_eq!(e.process(&mut rst), Verdict::Drop);
        assert_eq!(observe(&mut e), (0, 1, 1));

        let dp: &mut dyn Dataplane = &mut e;
        dp.flush_conntrack().unwrap();
        dp.reset_counters().unwrap();
        assert_eq!(observe(dp), (0, 0, 0));
        assert_eq!(e.counters().get(Counter::DropEventsLost), 0);
    }

    /// A table at its size refuses a new entry with the error the kernel's full map gives,
    /// naming the table, its capacity and the setting; replacing an entry still works.
    #[test]
    fn full_tables_are_refused_by_name() {
        // Room for a service's two slot sets during an update: 2 + 3, not 3 + 4.
        let sizes = lb_control::TableSizes {
            services: 1,
            backends: 5,
            ..lb_control::TableSizes::small()
        };
        let mut e = Engine::with_sizes(&sizes, default_config(1), ManualClock::new(1));
        let dp: &mut dyn Dataplane = &mut e;
        let spec = |id: u32, n: u8| ServiceSpec {
            id,
            frontend: std::format!("10.96.0.{id}:80").parse().unwrap(),
            proto: L4Proto::Tcp,
            backends: (1..=n)
                .map(|i| std::format!("10.1.0.{i}:8080").parse().unwrap())
                .collect(),
            ..Default::default()
        };
        dp.upsert_service(&spec(1, 2)).unwrap();
        dp.upsert_service(&spec(1, 3)).unwrap();
        let err = dp.upsert_service(&spec(2, 0)).unwrap_err();
        let full = ConfigError::TableFull {
            table: "LB_SERVICES",
            capacity: 1,
            knob: "TableSizes::services",
        };
        assert_eq!(err.config(), Some(&full));
        let err = dp.upsert_service(&spec(1, 4)).unwrap_err();
        assert!(
            matches!(
                err.config(),
                Some(ConfigError::TableFull {
                    table: "LB_BACKENDS",
                    capacity: 5,
                    ..
                })
            ),
            "{err}"
        );
        assert!(
            std::format!("{err}").contains("TableSizes::backends"),
            "{err}"
        );
    }
}
