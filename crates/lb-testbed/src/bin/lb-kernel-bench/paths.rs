//! The default table of `lb-kernel-bench`: each path's cost per packet, every timed run checked
//! by the counters to have taken the path its row names.
//!
//! Two methods, each checked the same way (the counters of the row's path grow by exactly the
//! number of timed runs, `rx_packets` too, and no other counter moves):
//!
//! - **repeat**: one `BPF_PROG_TEST_RUN` call with `repeat` n, the kernel's mean over the n runs.
//!   The kernel does not restore the packet between the runs, so run k sees what run k-1 wrote.
//!   For a path that translates the packet this needs a packet whose translation takes the same
//!   path again: two services that are each other's only backend (VIP1 → VIP2, VIP2 → VIP1),
//!   with the client's flow established through both. The ACK to VIP1 is translated (a real
//!   DNAT: address rewritten, checksums updated) into the ACK to VIP2, an established flow of
//!   the other service, translated back, and so on; the backend's reply from VIP2 is translated
//!   into a reply from VIP1, the other flow's reply. The output after n runs must be the input
//!   (n even) or its partner (n odd).
//! - **single**: n calls with `repeat` 1, each on a distinct packet, the median of the
//!   kernel's per-call times: for a new flow (every run must create one) and for flows spread
//!   over a full conntrack table (every run must look up another key). A call costs more than
//!   a run inside a repeated call (the timer around one run, caches cooled by the syscall), so
//!   these rows are set against parse-only measured the same way.
//!
//! Each path is measured hot (the table holds only the bench's flows) and with the conntrack
//! table filled from userspace to `--ct-fill` entries (half IPv4, half IPv6 flows, created by
//! their SYNs through the program itself).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{bail, ensure, Context, Result};
use lb_api::abi::DatapathConfig;
use lb_api::counters::{Counter, CounterSnapshot, DropReason};
use lb_api::flow::L4Proto;
use lb_api::wire::testing::{tcp_v4_frame, tcp_v6_frame};
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_bpf::{KernelDatapath, LoadOptions, Program};
use lb_control::{ServiceSpec, TableSizes};

use crate::node::{delta, show, summarize};

/// Options of the default table.
pub struct Opts {
    /// Runs per repeated call.
    pub repeat: u32,
    /// Calls per single-run row.
    pub singles: u32,
    /// Conntrack entries to fill the table with for the "full table" rows.
    pub ct_fill: u32,
    /// Also measure IPv6.
    pub v6: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// Client port of the cycle flow.
const CYCLE_PORT: u16 = 40_000;
/// Flows of the fill per client address (ports `FILL_PORT..FILL_PORT + FILL_PER_CLIENT`).
const FILL_PER_CLIENT: u32 = 40_000;
const FILL_PORT: u16 = 20_000;

impl Family {
    const fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// Address `n` of network `net` (10.net.x.y, fd00:net::x:y).
    fn addr(self, net: u8, n: u32) -> IpAddr {
        match self {
            Family::V4 => {
                let [_, _, x, y] = n.to_be_bytes();
                Ipv4Addr::new(10, net, x, y).into()
            }
            Family::V6 => Ipv6Addr::new(
                0xfd00,
                u16::from(net),
                0,
                0,
                0,
                0,
                (n >> 16) as u16,
                n as u16,
            )
            .into(),
        }
    }

    /// Service address `i`: 1 and 2 the cycle, 3 the new flows', 4 the fill's.
    fn vip(self, i: u32) -> SocketAddr {
        SocketAddr::new(self.addr(96, i), 80)
    }

    /// Client of fill flow `i`.
    fn fill_client(self, i: u32) -> SocketAddr {
        let port = FILL_PORT + (i % FILL_PER_CLIENT) as u16;
        SocketAddr::new(self.addr(8, 1 + i / FILL_PER_CLIENT), port)
    }

    fn fill_backend(self) -> SocketAddr {
        SocketAddr::new(self.addr(2, 2), 8080)
    }

    fn services(self) -> Vec<ServiceSpec> {
        let base = if self == Family::V6 { 10 } else { 0 };
        let svc = |id: u32, frontend: SocketAddr, backends: Vec<SocketAddr>| ServiceSpec {
            id: base + id,
            frontend,
            proto: L4Proto::Tcp,
            backends: backends.into_iter().map(Into::into).collect(),
            ..Default::default()
        };
        vec![
            svc(1, self.vip(1), vec![self.vip(2)]),
            svc(2, self.vip(2), vec![self.vip(1)]),
            svc(
                3,
                self.vip(3),
                (2..10)
                    .map(|i| SocketAddr::new(self.addr(1, i), 8080))
                    .collect(),
            ),
            svc(4, self.vip(4), vec![self.fill_backend()]),
        ]
    }
}

/// A TCP frame without payload.
fn frame(src: SocketAddr, dst: SocketAddr, flags: u8) -> Result<Vec<u8>> {
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

/// One printed row.
struct Row {
    family: Family,
    program: Program,
    path: &'static str,
    table: &'static str,
    single: bool,
    ns: f64,
}

/// The datapath under measurement and the counters' bookkeeping.
struct Bench {
    dp: KernelDatapath,
    opts: Opts,
    rows: Vec<Row>,
}

impl Bench {
    /// Checks that the counters grew from `before` by exactly `n` for each of `counters` and
    /// nothing else.
    fn check(
        &self,
        what: &str,
        before: &CounterSnapshot,
        counters: &[Counter],
        n: u64,
    ) -> Result<()> {
        let got = delta(before, &self.dp.counters()?);
        let mut want: Vec<(usize, u64)> = counters.iter().map(|c| (c.slot() as usize, n)).collect();
        want.sort_unstable();
        ensure!(
            got == want,
            "{what}: the counters grew by [{}], expected [{}]: the timed runs did not all take \
             the path the row names",
            show(&got),
            show(&want)
        );
        Ok(())
    }

    /// A repeated call: `input` at `repeat`, which must count `counters` on every run and end
    /// as `even` or `odd` (the input and its translation).
    #[expect(
        clippy::too_many_arguments,
        reason = "one row's description, named at the call"
    )]
    fn repeated(
        &mut self,
        family: Family,
        program: Program,
        path: &'static str,
        table: &'static str,
        input: &[u8],
        odd: &[u8],
        counters: &[Counter],
    ) -> Result<f64> {
        let what = format!("{} {} {path} ({table})", family.name(), program.name());
        let before = self.dp.counters()?;
        let out = self.dp.test_run(program, input, self.opts.repeat)?;
        let end = if self.opts.repeat.is_multiple_of(2) {
            input
        } else {
            odd
        };
        ensure!(
            out.verdict == Verdict::Pass && out.data == end,
            "{what}: verdict {:?}, output {} B (expected Pass and the {} packet)",
            out.verdict,
            out.data.len(),
            if self.opts.repeat.is_multiple_of(2) {
                "input"
            } else {
                "translated"
            }
        );
        self.check(&what, &before, counters, u64::from(self.opts.repeat))?;
        let ns = out.duration.as_nanos() as f64;
        self.rows.push(Row {
            family,
            program,
            path,
            table,
            single: false,
            ns,
        });
        Ok(ns)
    }

    /// `singles` calls at repeat 1, call `i` on `input(i)`, each counting `counters`; the median.
    fn single(
        &mut self,
        family: Family,
        path: &'static str,
        table: &'static str,
        input: &dyn Fn(u32) -> Result<Vec<u8>>,
        counters: &[Counter],
    ) -> Result<f64> {
        let what = format!("{} {path} ({table}, single runs)", family.name());
        let before = self.dp.counters()?;
        let mut times = Vec::with_capacity(self.opts.singles as usize);
        for i in 0..self.opts.singles {
            let out = self.dp.test_run(Program::Xdp, &input(i)?, 1)?;
            ensure!(
                out.verdict == Verdict::Pass,
                "{what}, call {i}: {:?}",
                out.verdict
            );
            times.push(u64::try_from(out.duration.as_nanos()).unwrap_or(u64::MAX));
        }
        self.check(&what, &before, counters, u64::from(self.opts.singles))?;
        let ns = summarize(times).0 as f64;
        self.rows.push(Row {
            family,
            program: Program::Xdp,
            path,
            table,
            single: true,
            ns,
        });
        Ok(ns)
    }

    /// The parse-only baselines of a family, both methods (their rows are the reference of the
    /// others).
    fn baselines(&mut self, fam: Family) -> Result<()> {
        let f = frame(
            SocketAddr::new(fam.addr(0, 1), CYCLE_PORT),
            fam.vip(1),
            TcpFlags::ACK,
        )?;
        let out = self
            .dp
            .test_run(Program::XdpParseOnly, &f, self.opts.repeat)?;
        ensure!(
            out.verdict == Verdict::Pass && out.data == f,
            "parse-only changed the packet"
        );
        self.rows.push(Row {
            family: fam,
            program: Program::XdpParseOnly,
            path: "parse only (baseline)",
            table: "-",
            single: false,
            ns: out.duration.as_nanos() as f64,
        });
        let mut times = Vec::with_capacity(self.opts.singles as usize);
        for _ in 0..self.opts.singles {
            let out = self.dp.test_run(Program::XdpParseOnly, &f, 1)?;
            times.push(u64::try_from(out.duration.as_nanos()).unwrap_or(u64::MAX));
        }
        self.rows.push(Row {
            family: fam,
            program: Program::XdpParseOnly,
            path: "parse only (baseline)",
            table: "-",
            single: true,
            ns: summarize(times).0 as f64,
        });
        Ok(())
    }

    /// Establishes the cycle flow of `fam` (its SYN through VIP1, then through VIP2, checked).
    fn cycle(&mut self, fam: Family) -> Result<()> {
        let client = SocketAddr::new(fam.addr(0, 1), CYCLE_PORT);
        let before = self.dp.counters()?;
        let syn = frame(client, fam.vip(1), TcpFlags::SYN)?;
        let once = self.dp.test_run(Program::Xdp, &syn, 1)?;
        let want = frame(client, fam.vip(2), TcpFlags::SYN)?;
        ensure!(
            once.data == want,
            "{}: the cycle's SYN to VIP1 did not go to VIP2",
            fam.name()
        );
        let twice = self.dp.test_run(Program::Xdp, &once.data, 1)?;
        ensure!(
            twice.data == syn,
            "{}: the cycle's SYN to VIP2 did not go to VIP1",
            fam.name()
        );
        self.check(
            "the cycle's flows",
            &before,
            &[Counter::RxPackets, Counter::ServiceNewFlow],
            2,
        )
    }

    /// The hot-path rows of `fam` with the table as it is (`table` names it).
    fn hot(&mut self, fam: Family, table: &'static str, tc: bool) -> Result<()> {
        let client = SocketAddr::new(fam.addr(0, 1), CYCLE_PORT);
        let other = frame(client, SocketAddr::new(fam.addr(3, 1), 80), TcpFlags::ACK)?;
        let fwd = [Counter::RxPackets, Counter::ServiceEstablished];
        let back = [Counter::RxPackets, Counter::ReplyTranslated];
        self.repeated(
            fam,
            Program::Xdp,
            "not a service",
            table,
            &other,
            &other,
            &[Counter::RxPackets, Counter::PassNotService],
        )?;
        let ack = frame(client, fam.vip(1), TcpFlags::ACK)?;
        let ack2 = frame(client, fam.vip(2), TcpFlags::ACK)?;
        let reply = frame(fam.vip(2), client, TcpFlags::ACK)?;
        let reply2 = frame(fam.vip(1), client, TcpFlags::ACK)?;
        let programs: &[Program] = if tc {
            &[Program::Xdp, Program::Tc]
        } else {
            &[Program::Xdp]
        };
        for &p in programs {
            self.repeated(fam, p, "established (DNAT)", table, &ack, &ack2, &fwd)?;
            self.repeated(
                fam,
                p,
                "reply (reverse DNAT)",
                table,
                &reply,
                &reply2,
                &back,
            )?;
        }
        // The same flows in single calls: the reference of the random-flow rows.
        self.single(
            fam,
            "established (DNAT), one flow",
            table,
            &|_| Ok(ack.clone()),
            &fwd,
        )?;
        self.single(
            fam,
            "reply (reverse DNAT), one flow",
            table,
            &|_| Ok(reply.clone()),
            &back,
        )?;
        Ok(())
    }

    /// Malformed packets (IPv4 header length 4) dropped: with room in the drop-event ring
    /// (4000 runs on a drained ring: each writes its event), and with the ring full (each event
    /// lost and counted).
    fn drops(&mut self) -> Result<()> {
        let fam = Family::V4;
        let client = SocketAddr::new(fam.addr(0, 1), CYCLE_PORT);
        let mut bad = frame(client, fam.vip(3), TcpFlags::ACK)?;
        bad[14] = 0x44;
        let dropped = [
            Counter::RxPackets.slot() as usize,
            Counter::Dropped.slot() as usize,
            DropReason::BadIpHeaderLength.slot() as usize,
        ];
        let lost = Counter::DropEventsLost.slot() as usize;
        self.dp.drain_drop_events()?;
        for (path, repeat, want_lost) in [
            ("drop, malformed, event written", 4_000, 0),
            (
                "drop, malformed, ring full (event lost)",
                self.opts.repeat.max(4_096),
                1,
            ),
        ] {
            let before = self.dp.counters()?;
            let out = self.dp.test_run(Program::Xdp, &bad, repeat)?;
            ensure!(out.verdict == Verdict::Drop, "{path}: {:?}", out.verdict);
            let got = delta(&before, &self.dp.counters()?);
            let n = u64::from(repeat);
            // Written events until the ring is full, lost ones after: the second call fills it.
            let ok = got.iter().all(|(s, d)| {
                (dropped.contains(s) && *d == n) || (*s == lost && want_lost == 1 && *d <= n)
            }) && dropped.iter().all(|s| got.iter().any(|(g, _)| g == s))
                && (want_lost == 0) == got.iter().all(|(s, _)| *s != lost);
            ensure!(ok, "{path}: the counters grew by [{}]", show(&got));
            self.rows.push(Row {
                family: fam,
                program: Program::Xdp,
                path,
                table: "hot",
                single: false,
                ns: out.duration.as_nanos() as f64,
            });
        }
        self.dp.drain_drop_events()?;
        Ok(())
    }

    /// New flows to the 8-backend service, one client port per call (`first` onwards).
    fn new_flows(&mut self, fam: Family, table: &'static str, first: u32) -> Result<()> {
        let vip = fam.vip(3);
        self.single(
            fam,
            "new flow (service, backend, 2 CT inserts, DNAT)",
            table,
            &|i| {
                let n = first + i;
                let client =
                    SocketAddr::new(fam.addr(0, 2 + n / 60_000), 1024 + (n % 60_000) as u16);
                frame(client, vip, TcpFlags::SYN)
            },
            &[Counter::RxPackets, Counter::ServiceNewFlow],
        )?;
        Ok(())
    }

    /// Creates `flows` established flows of `fam` to the fill service: each flow's SYN, the
    /// backend's SYN-ACK and the client's ACK.
    fn fill(&mut self, fam: Family, flows: u32) -> Result<()> {
        let before = self.dp.counters()?;
        let (vip, be) = (fam.vip(4), fam.fill_backend());
        let syn_ack = TcpFlags::SYN | TcpFlags::ACK;
        for i in 0..flows {
            let c = fam.fill_client(i);
            for f in [
                frame(c, vip, TcpFlags::SYN)?,
                frame(be, c, syn_ack)?,
                frame(c, vip, TcpFlags::ACK)?,
            ] {
                let out = self.dp.test_run(Program::Xdp, &f, 1)?;
                ensure!(
                    out.verdict == Verdict::Pass,
                    "fill flow {i}: {:?}",
                    out.verdict
                );
            }
        }
        let got = delta(&before, &self.dp.counters()?);
        let n = u64::from(flows);
        let mut want: Vec<(usize, u64)> = [
            (Counter::RxPackets, 3 * n),
            (Counter::ServiceNewFlow, n),
            (Counter::ReplyTranslated, n),
            (Counter::ServiceEstablished, n),
        ]
        .iter()
        .map(|(c, n)| (c.slot() as usize, *n))
        .collect();
        want.sort_unstable();
        ensure!(
            got == want,
            "{} fill: counters grew by [{}], expected [{}]",
            fam.name(),
            show(&got),
            show(&want)
        );
        Ok(())
    }

    /// Established packets and replies of flows picked at random among the fill's.
    fn spread(&mut self, fam: Family, flows: u32, table: &'static str) -> Result<()> {
        let pick = |i: u32| xorshift(i.wrapping_mul(2_654_435_761) | 1) % flows;
        let vip = fam.vip(4);
        self.single(
            fam,
            "established (DNAT), random flow",
            table,
            &|i| frame(fam.fill_client(pick(i)), vip, TcpFlags::ACK),
            &[Counter::RxPackets, Counter::ServiceEstablished],
        )?;
        let be = fam.fill_backend();
        self.single(
            fam,
            "reply (reverse DNAT), random flow",
            table,
            &|i| frame(be, fam.fill_client(pick(i)), TcpFlags::ACK),
            &[Counter::RxPackets, Counter::ReplyTranslated],
        )?;
        Ok(())
    }
}

fn xorshift(mut x: u32) -> u32 {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    x
}

/// Measures and prints the table.
///
/// # Errors
/// Loading or a run failing, or a row's runs not all taking its path (with what they did).
pub fn run(cfg: DatapathConfig, opts: Opts) -> Result<()> {
    let families: &[Family] = if opts.v6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    let fill_flows = opts.ct_fill / 2 / families.len() as u32;
    // Room for the fill, the new flows (twice: hot and full) and the cycles, and the kernel's
    // per-CPU spare elements.
    let need = opts.ct_fill + 4 * opts.singles * families.len() as u32 + 4096;
    let sizes = TableSizes {
        conntrack: need.max(TableSizes::default().conntrack),
        ..TableSizes::default()
    };
    let mut dp = KernelDatapath::load_with(&LoadOptions::with_sizes(sizes))
        .context("loading the programs")?;
    dp.flush_conntrack()?;
    dp.set_config(&cfg)?;
    for &fam in families {
        for s in fam.services() {
            dp.upsert_service(&s)?;
        }
    }
    let mut b = Bench {
        dp,
        opts,
        rows: Vec::new(),
    };
    let hot = "hot";
    let full = "full";
    for &fam in families {
        b.baselines(fam)?;
        b.cycle(fam)?;
        b.hot(fam, hot, true)?;
        b.new_flows(fam, hot, 0)?;
    }
    b.drops()?;
    let started = std::time::Instant::now();
    for &fam in families {
        b.fill(fam, fill_flows)?;
    }
    let fill_secs = started.elapsed().as_secs_f64();
    for &fam in families {
        b.hot(fam, full, false)?;
        b.spread(fam, fill_flows, full)?;
        b.new_flows(fam, full, b.opts.singles)?;
    }

    let entries = b.dp.counters()?.0[Counter::ServiceNewFlow.slot() as usize] * 2;
    println!(
        "BPF_PROG_TEST_RUN; repeat: the kernel's mean over {} runs of one call; single: median \
         of {} calls at repeat 1, each on another packet; clock: {}.\n\"hot\": conntrack holds \
         the bench's flows; \"full\": {} entries ({} flows filled from userspace in {fill_secs:.1} \
         s). Every row's counters grew by exactly its runs, on its path only.\n",
        b.opts.repeat,
        b.opts.singles,
        if cfg.fixed_now_ns != 0 {
            "fixed (config)"
        } else {
            "bpf_ktime_get_coarse_ns"
        },
        entries,
        fill_flows as usize * families.len(),
    );
    println!("| family | program | path | conntrack | method | ns/packet | vs parse-only |");
    println!("|---|---|---|---|---|---:|---:|");
    for r in &b.rows {
        let base = b
            .rows
            .iter()
            .find(|x| {
                x.family == r.family && x.program == Program::XdpParseOnly && x.single == r.single
            })
            .map_or(0.0, |x| x.ns);
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {:+.0} |",
            r.family.name(),
            r.program.name(),
            r.path,
            r.table,
            if r.single { "single" } else { "repeat" },
            r.ns,
            r.ns - base
        );
    }
    Ok(())
}
