//! Specs the unit tests of this crate build services from.

use std::vec::Vec;

use lb_api::flow::L4Proto;

use crate::{BackendSpec, ServiceSpec};

/// Service 7 at 10.96.0.10:80/tcp with `backends`.
pub(crate) fn spec(backends: Vec<BackendSpec>) -> ServiceSpec {
    ServiceSpec {
        id: 7,
        frontend: "10.96.0.10:80".parse().unwrap(),
        proto: L4Proto::Tcp,
        backends,
        ..Default::default()
    }
}

/// A backend from `addr:port`.
pub(crate) fn be(s: &str) -> BackendSpec {
    s.parse().unwrap()
}
