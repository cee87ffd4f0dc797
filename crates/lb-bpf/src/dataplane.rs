//! The kernel datapath as a [`Dataplane`]: the same calls, signatures and errors as the
//! userspace engine's, over the programs' maps.

use lb_api::abi::{CtEntry, CtKey, DatapathConfig};
use lb_api::counters::CounterSnapshot;
use lb_api::events::DropEvent;
use lb_control::{Dataplane, DataplaneError, NodeSpec, ServiceSpec};

use crate::{Error, KernelDatapath};

/// A refused spec stays a [`DataplaneError::Config`] (the engine's error for the same spec);
/// anything else is the kernel's [`Error`], kept as the source.
impl From<Error> for DataplaneError {
    fn from(e: Error) -> Self {
        match e {
            Error::Config(c) => DataplaneError::Config(c),
            other => DataplaneError::Datapath(Box::new(other)),
        }
    }
}

impl Dataplane for KernelDatapath {
    fn set_config(&mut self, cfg: &DatapathConfig) -> Result<(), DataplaneError> {
        Ok(KernelDatapath::set_config(self, cfg)?)
    }

    fn config(&mut self) -> Result<DatapathConfig, DataplaneError> {
        Ok(KernelDatapath::config(self)?)
    }

    fn set_node(&mut self, node: &NodeSpec) -> Result<(), DataplaneError> {
        Ok(KernelDatapath::set_node(self, node)?)
    }

    fn upsert_service(&mut self, spec: &ServiceSpec) -> Result<(), DataplaneError> {
        Ok(KernelDatapath::upsert_service(self, spec)?)
    }

    fn remove_service(&mut self, spec: &ServiceSpec) -> Result<(), DataplaneError> {
        KernelDatapath::remove_service(self, spec)?;
        Ok(())
    }

    fn flush_backend_flows(
        &mut self,
        backend: std::net::SocketAddr,
        proto: lb_api::flow::L4Proto,
    ) -> Result<u64, DataplaneError> {
        Ok(KernelDatapath::flush_backend_flows(self, backend, proto)?)
    }

    fn counters(&self) -> Result<CounterSnapshot, DataplaneError> {
        Ok(KernelDatapath::counters(self)?)
    }

    fn reset_counters(&mut self) -> Result<(), DataplaneError> {
        Ok(KernelDatapath::reset_counters(self)?)
    }

    fn drain_drop_events(&mut self) -> Result<Vec<DropEvent>, DataplaneError> {
        Ok(KernelDatapath::drain_drop_events(self)?)
    }

    fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtEntry)>, DataplaneError> {
        Ok(KernelDatapath::conntrack_entries(self)?)
    }

    fn flush_conntrack(&mut self) -> Result<(), DataplaneError> {
        Ok(KernelDatapath::flush_conntrack(self)?)
    }

    fn affinity_entries(
        &self,
    ) -> Result<Vec<(lb_api::abi::AffinityKey, lb_api::abi::AffinityValue)>, DataplaneError> {
        Ok(KernelDatapath::affinity_entries(self)?)
    }
}
