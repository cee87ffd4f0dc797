//! The main scenario, shared by the demo and the end-to-end test: a ClusterIP-style service with
//! two backends, real TCP connections from the client to the VIP, the datapath on the node.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use aya::programs::{TcAttachType, XdpMode};
use lb_api::abi::{CtEntry, CtKey};
use lb_api::counters::CounterSnapshot;
use lb_api::flow::L4Proto;
use lb_bpf::KernelDatapath;
use lb_control::{default_config, Dataplane, DataplaneError, ServiceSpec};

use lb_testbed::netns::NodeChecksums;
use lb_testbed::testbed::{Testbed, BACKENDS, BACKEND_PORT, VIP, VIP_PORT};
use lb_testbed::traffic::{bulk_echo, Bulk, BULK_PORT};

/// Bytes a bulk transfer sends each way (and gets back).
pub use lb_testbed::traffic::BULK_BYTES;

/// The service of the scenario.
#[must_use]
pub fn service() -> ServiceSpec {
    ServiceSpec {
        id: 1,
        frontend: SocketAddr::from((VIP, VIP_PORT)),
        proto: L4Proto::Tcp,
        backends: BACKENDS
            .iter()
            .map(|b| SocketAddr::from((*b, BACKEND_PORT)).into())
            .collect(),
        ..Default::default()
    }
}

/// The UDP service of the scenario: same VIP and port, UDP, same backends.
#[must_use]
pub fn udp_service() -> ServiceSpec {
    ServiceSpec {
        id: 2,
        proto: L4Proto::Udp,
        ..service()
    }
}

/// The bulk-transfer service: the VIP's [`BULK_PORT`] to the backends' echo.
#[must_use]
pub fn bulk_service() -> ServiceSpec {
    ServiceSpec {
        id: 3,
        frontend: SocketAddr::from((VIP, BULK_PORT)),
        backends: BACKENDS
            .iter()
            .map(|b| SocketAddr::from((*b, BULK_PORT)).into())
            .collect(),
        ..service()
    }
}

/// Programs `dp` for the scenario: the configuration (flow hash seed `hash_seed`) and the three
/// services. Written against [`Dataplane`] only, as a CNI's control plane is: the kernel run
/// ([`run_kernel`]) and the demo's userspace run program their datapaths with this one function.
///
/// # Errors
/// The first call `dp` refuses.
pub fn program(dp: &mut dyn Dataplane, hash_seed: u32) -> Result<(), DataplaneError> {
    dp.set_config(&default_config(hash_seed))?;
    for spec in [service(), udp_service(), bulk_service()] {
        dp.upsert_service(&spec)?;
    }
    Ok(())
}

/// What happened.
#[derive(Debug)]
pub struct Report {
    /// Each request's answer (`backend-N saw <client>`) or error.
    pub answers: Vec<Result<String>>,
    /// Each UDP datagram's answer (`backend-N saw <client>: datagram i`) or error.
    pub udp_answers: Vec<Result<String>>,
    /// Conntrack entries after the requests.
    pub conntrack: Vec<(CtKey, CtEntry)>,
    /// Datapath counters.
    pub counters: CounterSnapshot,
    /// Connections each backend served.
    pub served: Vec<usize>,
    /// The XDP mode the node's program runs in.
    pub xdp_mode: &'static str,
    /// [`BULK_BYTES`] each way through the VIP (translated), compared byte for byte.
    pub bulk_vip: Result<Bulk>,
    /// The same to backend-1's own address (plain routing through the node, untranslated): the
    /// baseline in the same run.
    pub bulk_routed: Result<Bulk>,
}

/// Attaches the datapath on the node: XDP on the client-facing interface (service translation),
/// TC ingress on the backend-facing interfaces (reverse translation of replies).
///
/// # Errors
/// If a program cannot be attached.
pub fn attach(dp: &mut KernelDatapath, bed: &Testbed) -> Result<&'static str> {
    Testbed::within(&bed.node, || -> Result<&'static str> {
        let mode = match dp.attach_xdp("n0", XdpMode::Driver) {
            Ok(()) => "native (driver)",
            Err(_) => {
                dp.attach_xdp("n0", XdpMode::Skb)
                    .context("attaching XDP to n0")?;
                "generic (skb)"
            }
        };
        for nif in ["n1", "n2"] {
            dp.attach_tc(nif, TcAttachType::Ingress)
                .with_context(|| format!("attaching TC to {nif}"))?;
        }
        Ok(mode)
    })?
}

/// Builds the testbed, loads and attaches the datapath, sends `requests` real TCP requests to the
/// VIP, and reports. Everything it created is removed when it returns, whatever happened.
///
/// # Errors
/// If the testbed or the datapath cannot be set up (the requests' own failures are in the report).
pub fn run_kernel(tag: &str, requests: usize, checksums: NodeChecksums) -> Result<Report> {
    let bed = Testbed::create(tag)?;
    if checksums == NodeChecksums::Software {
        bed.complete_checksums_in_software()?;
    }
    let mut dp = KernelDatapath::load().context("loading the eBPF programs")?;
    program(&mut dp, std::process::id())?;
    let xdp_mode = attach(&mut dp, &bed)?;
    let servers = bed.start_backends(Duration::from_secs(60))?;
    let answers = bed.requests(
        SocketAddr::from((VIP, VIP_PORT)),
        requests,
        Duration::from_secs(3),
    )?;
    let udp_answers = bed.udp_requests(
        SocketAddr::from((VIP, VIP_PORT)),
        requests,
        Duration::from_secs(2),
    )?;
    let observed: &dyn Dataplane = &dp;
    let (conntrack, counters) = (observed.conntrack_entries()?, observed.counters()?);
    let bulk = |to: SocketAddr| bulk_echo(&bed.client, to, BULK_BYTES, Duration::from_secs(30));
    let bulk_vip = bulk(SocketAddr::from((VIP, BULK_PORT)));
    let bulk_routed = bulk(SocketAddr::from((BACKENDS[0], BULK_PORT)));
    let served = servers.stop();
    Ok(Report {
        answers,
        udp_answers,
        conntrack,
        counters,
        served,
        xdp_mode,
        bulk_vip,
        bulk_routed,
    })
}
