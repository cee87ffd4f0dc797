//! What `lb-kernel-bench --modes` measures: the address families, the forwarding modes, their
//! services on both nodes and the frames sent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{bail, Result};
use lb_api::flow::L4Proto;
use lb_api::wire::testing::{tcp_v4_frame, tcp_v6_frame};
use lb_control::{BackendSpec, ForwardingMode, ServiceSpec};

/// Backends per service.
const BACKENDS: u8 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// How a service reaches its backends: `Local` is a backend on node A itself (plain DNAT), the
/// others a backend on node B in that forwarding mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Local,
    Snat,
    Dsr,
    Tunnel,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Local, Mode::Snat, Mode::Dsr, Mode::Tunnel];

    pub const fn index(self) -> u8 {
        self as u8
    }

    pub const fn name(self) -> &'static str {
        match self {
            Mode::Local => "local backend (DNAT)",
            Mode::Snat => "SNAT",
            Mode::Dsr => "DSR",
            Mode::Tunnel => "VXLAN tunnel",
        }
    }

    /// Whether the backend's node receives the flow with a carrier and creates its own entries.
    pub const fn carried(self) -> bool {
        matches!(self, Mode::Dsr | Mode::Tunnel)
    }
}

impl Family {
    pub const fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub fn client(self) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::new(10, 0, 0, 1).into(),
            Family::V6 => Ipv6Addr::new(0xfd00, 0xc, 0, 0, 0, 0, 0, 1).into(),
        }
    }

    /// Node A (`b` false) or node B.
    pub fn node(self, b: bool) -> IpAddr {
        let last = if b { 2 } else { 1 };
        match self {
            Family::V4 => Ipv4Addr::new(10, 250, 0, last).into(),
            Family::V6 => Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, u16::from(last)).into(),
        }
    }

    pub fn vip(self, m: Mode) -> SocketAddr {
        let ip: IpAddr = match self {
            Family::V4 => Ipv4Addr::new(10, 96, 0, 10 + m.index()).into(),
            Family::V6 => {
                Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10 + u16::from(m.index())).into()
            }
        };
        SocketAddr::new(ip, 80)
    }

    pub fn backends(self, m: Mode) -> Vec<SocketAddr> {
        (0..BACKENDS)
            .map(|i| {
                let ip: IpAddr = match self {
                    Family::V4 => Ipv4Addr::new(10, 1, m.index(), 2 + i).into(),
                    Family::V6 => Ipv6Addr::new(
                        0xfd00,
                        1,
                        u16::from(m.index()),
                        0,
                        0,
                        0,
                        0,
                        2 + u16::from(i),
                    )
                    .into(),
                };
                SocketAddr::new(ip, 8080)
            })
            .collect()
    }

    pub fn service(self, m: Mode) -> ServiceSpec {
        let node = (m != Mode::Local).then(|| self.node(true));
        ServiceSpec {
            id: 1 + u32::from(m.index()) + if self == Family::V6 { 10 } else { 0 },
            frontend: self.vip(m),
            proto: L4Proto::Tcp,
            backends: self
                .backends(m)
                .into_iter()
                .map(|addr| BackendSpec {
                    node,
                    ..BackendSpec::from(addr)
                })
                .collect(),
            mode: match m {
                Mode::Local | Mode::Snat => ForwardingMode::Snat,
                Mode::Dsr => ForwardingMode::Dsr,
                Mode::Tunnel => ForwardingMode::Tunnel,
            },
            ..Default::default()
        }
    }
}

/// A TCP frame without payload from `src` to `dst`.
pub fn frame(src: SocketAddr, dst: SocketAddr, flags: u8) -> Result<Vec<u8>> {
    Ok(match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            tcp_v4_frame(s.octets(), src.port(), d.octets(), dst.port(), flags, b"")
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            tcp_v6_frame(s.octets(), src.port(), d.octets(), dst.port(), flags, b"")
        }
        _ => bail!("{src} and {dst} are of different families"),
    })
}
