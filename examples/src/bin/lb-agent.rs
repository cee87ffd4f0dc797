//! `lb-agent`: runs lb-dataplane on a node. Reads its configuration (TOML), loads the datapath
//! or adopts the pinned one of a previous agent (conntrack and services carry over; nothing is
//! flushed), attaches it, and keeps it equal to the services of a manifest directory, batched
//! at most once per `sources.min_sync_period`. Runs conntrack GC, streams drop events to
//! `lbctl monitor`, and serves `/metrics` and `/healthz`. SIGINT/SIGTERM stop it gracefully:
//! the pinned programs keep forwarding until the next agent takes over.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aya::programs::{tc::TcAttachType, XdpMode};
use clap::Parser;
use lb_bpf::conntrack_gc::ConntrackGcTask;
use lb_bpf::{KernelDatapath, LoadOptions};
use lb_conntrack::{Clock, ProcSysctl};
use lb_examples::agent::config::{AgentConfig, Hook, Plan};
use lb_examples::agent::metrics::{render, AgentStats};
use lb_examples::agent::monitor::DropView;
use lb_examples::agent::pinned::PinnedMaps;
use lb_examples::agent::sync::{read_manifest_dir, Reconciler};
use lb_k8s::{Objects, Options};

#[derive(Parser)]
#[command(about = "Run lb-dataplane on this node, programmed from manifests")]
struct Cli {
    /// The configuration file (see examples/agent/lb-agent.toml).
    #[arg(long, short, default_value = "/etc/lb-agent/lb-agent.toml")]
    config: PathBuf,
}

/// Subscribers of the drop-event stream (`lbctl monitor`).
type Subscribers = Arc<Mutex<Vec<SyncSender<String>>>>;

fn main() -> Result<()> {
    let cli = Cli::parse();
    let cfg = AgentConfig::read(&cli.config).map_err(chain)?;
    let plan = cfg.plan(&ProcSysctl::system()).map_err(chain)?;
    for w in &plan.warnings {
        eprintln!("lb-agent: warning: {w}");
    }
    if plan.kubernetes {
        bail!(
            "sources.kubernetes = true: the Kubernetes API source is not built into this agent \
             yet; use `sources.manifests`"
        );
    }
    let Some(manifests) = plan.manifests.clone() else {
        bail!("set `sources.manifests` in {}", cli.config.display());
    };
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, Ordering::SeqCst)).context("installing SIGTERM")?;

    let opts = Options {
        node_name: plan.node_name.clone(),
        service_proxy_name: plan.service_proxy_name.clone(),
        nodeport_addresses: plan.nodeport_addresses.clone(),
        forwarding_mode: plan.forwarding_mode,
    };
    // The first read before anything is loaded: its Node object completes the configuration,
    // written in one go (the node fields of a running datapath are never zero in between).
    let (first, mut fingerprint) = read_manifest_dir(&manifests).map_err(chain)?;
    let node = plan.node_from(lb_k8s::node_spec(&first.nodes, &plan.node_name).as_ref());
    let mut dcfg = plan.datapath;
    if node.address_v4.is_some() || node.address_v6.is_some() {
        node.validate().context("this node's addresses")?;
        node.apply(&mut dcfg);
    }

    let mut dp = KernelDatapath::load_with(&LoadOptions {
        sizes: plan.sizes,
        pin_dir: Some(plan.pin_dir.clone()),
        memory_limit: plan.memory_limit,
        // A restart with other table sizes migrates the live entries into tables of the
        // new sizes (`lb_bpf::Resize::Migrate`), without an outage.
        ..LoadOptions::default()
    })
    .context("loading the datapath")?;
    let maps = PinnedMaps::new(&plan.pin_dir);
    let existing = maps.services().context("reading the pinned services")?;
    eprintln!(
        "lb-agent: datapath loaded, {} services adopted from {}",
        existing.len(),
        plan.pin_dir.display()
    );
    dp.set_config(&dcfg)
        .context("writing the datapath configuration")?;
    attach(&mut dp, &plan)?;
    let mut rec = Reconciler::adopt(&existing);
    let gc = Arc::new(
        dp.spawn_conntrack_gc(plan.gc)
            .context("starting conntrack GC")?,
    );
    let stats = Arc::new(AgentStats::new().context("building the metrics")?);
    let subscribers: Subscribers = Arc::default();
    let server = match plan.metrics {
        Some(addr) => Some(serve(
            addr,
            &plan,
            stats.clone(),
            gc.clone(),
            subscribers.clone(),
        )?),
        None => None,
    };

    let complete = |api: Option<&lb_control::NodeSpec>| plan.node_from(api);
    let mut pending: Option<(Objects, Instant)> = Some((first, Instant::now()));
    let mut last_sync: Option<Instant> = None;
    let mut last_poll = Instant::now();
    let mut gc_seen = (0u64, 0u64);
    while !stop.load(Ordering::SeqCst) {
        let events = dp.drain_drop_events().context("reading drop events")?;
        if !events.is_empty() {
            stats.drop_events.inc_by(events.len() as u64);
            let mut subs = subscribers.lock().unwrap_or_else(|p| p.into_inner());
            for e in &events {
                let line = serde_json::to_string(&DropView::from(e))?;
                // A subscriber that is gone or too slow is dropped, never waited for.
                subs.retain(|s| s.try_send(line.clone()).is_ok());
            }
        }
        if last_poll.elapsed() >= plan.poll_interval {
            last_poll = Instant::now();
            match read_manifest_dir(&manifests) {
                Ok((objects, fp)) if fp != fingerprint => {
                    fingerprint = fp;
                    let since = pending.take().map_or_else(Instant::now, |p| p.1);
                    pending = Some((objects, since));
                }
                Ok(_) => {}
                // The previous state stays programmed.
                Err(e) => eprintln!("lb-agent: {}", chain(e)),
            }
        }
        let due = last_sync.is_none_or(|t| t.elapsed() >= plan.min_sync_period);
        if due {
            if let Some((objects, seen)) = pending.take() {
                let report = rec
                    .sync(&mut dp, &objects, &opts, &complete, true)
                    .context("programming the datapath")?;
                last_sync = Some(Instant::now());
                stats.syncs.inc();
                stats
                    .programming_latency
                    .observe(seen.elapsed().as_secs_f64());
                stats.issues.set(report.issues.len() as i64);
                let count = |op: &str, ok: &str, n: usize| {
                    stats
                        .programmed
                        .with_label_values(&[op, ok])
                        .inc_by(n as u64);
                };
                count("upsert", "ok", report.upserted);
                count("remove", "ok", report.removed);
                count("upsert", "refused", report.failed.len());
                eprintln!(
                    "lb-agent: synced: {} written, {} removed, {} unchanged, {} refused, {} issues",
                    report.upserted,
                    report.removed,
                    report.unchanged,
                    report.failed.len(),
                    report.issues.len()
                );
                for f in &report.failed {
                    eprintln!("lb-agent: refused: {f}");
                }
                for i in &report.issues {
                    eprintln!("lb-agent: {}", chain(i.clone()));
                }
            }
        }
        let st = gc.status();
        stats
            .gc_runs
            .inc_by(st.stats.runs.saturating_sub(gc_seen.0));
        stats
            .gc_deleted
            .inc_by(st.stats.total_deleted.saturating_sub(gc_seen.1));
        gc_seen = (st.stats.runs, st.stats.total_deleted);
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("lb-agent: stopping; the pinned datapath keeps forwarding");
    if let Some((server, thread)) = server {
        server.unblock();
        let _ = thread.join();
    }
    subscribers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    if let Ok(gc) = Arc::try_unwrap(gc) {
        gc.stop();
    }
    drop(dp);
    Ok(())
}

/// An error with its causes, on one line.
fn chain(e: impl std::error::Error + Send + Sync + 'static) -> anyhow::Error {
    anyhow::Error::new(e)
}

fn attach(dp: &mut KernelDatapath, plan: &Plan) -> Result<()> {
    for a in &plan.attach {
        let mut run = || -> Result<()> {
            match a.hook {
                Hook::Xdp => {
                    if dp.attach_xdp(&a.interface, XdpMode::Driver).is_err() {
                        dp.attach_xdp(&a.interface, XdpMode::Skb)?;
                    }
                }
                Hook::XdpGeneric => dp.attach_xdp(&a.interface, XdpMode::Skb)?,
                Hook::TcIngress => dp.attach_tc(&a.interface, TcAttachType::Ingress)?,
                Hook::TcEgress => dp.attach_tc(&a.interface, TcAttachType::Egress)?,
            }
            Ok(())
        };
        let res = match &a.netns {
            Some(ns) => lb_testbed::netns::within(ns, run).and_then(|r| r),
            None => run(),
        };
        res.with_context(|| format!("attaching {:?} to {}", a.hook, a.interface))?;
    }
    Ok(())
}

type Server = (Arc<tiny_http::Server>, std::thread::JoinHandle<()>);

/// Serves `/metrics`, `/healthz`, `/v1/drops` (the drop stream) and `POST /gc`.
fn serve(
    addr: std::net::SocketAddr,
    plan: &Plan,
    stats: Arc<AgentStats>,
    gc: Arc<ConntrackGcTask>,
    subscribers: Subscribers,
) -> Result<Server> {
    let server = Arc::new(
        tiny_http::Server::http(addr)
            .map_err(|e| anyhow::anyhow!("listening on {addr} (metrics.listen): {e}"))?,
    );
    let maps = PinnedMaps::new(&plan.pin_dir);
    let s = server.clone();
    let thread = std::thread::spawn(move || {
        for req in s.incoming_requests() {
            let text = |code: u16, body: String, ctype: &str| {
                tiny_http::Response::from_string(body)
                    .with_status_code(code)
                    .with_header(
                        tiny_http::Header::from_bytes("Content-Type", ctype)
                            .unwrap_or_else(|()| unreachable_header()),
                    )
            };
            let url = req.url().to_owned();
            let method = req.method().clone();
            let res = match (method, url.as_str()) {
                (tiny_http::Method::Get, "/metrics") => {
                    let now = lb_conntrack::MonotonicClock.now_ns();
                    match render(&maps, &stats, now) {
                        Ok(body) => {
                            req.respond(text(200, body, "text/plain; version=0.0.4; charset=utf-8"))
                        }
                        Err(e) => req.respond(text(500, format!("{e}\n"), "text/plain")),
                    }
                }
                (tiny_http::Method::Get, "/healthz") => match maps.config() {
                    Ok(_) => req.respond(text(200, "ok\n".into(), "text/plain")),
                    Err(e) => req.respond(text(503, format!("{e}\n"), "text/plain")),
                },
                (tiny_http::Method::Post, "/gc") => {
                    let before = gc.status().sweeps;
                    gc.sweep_now();
                    req.respond(text(
                        200,
                        format!("conntrack GC sweep requested (sweeps so far: {before})\n"),
                        "text/plain",
                    ))
                }
                (tiny_http::Method::Get, "/v1/drops") => {
                    let (tx, rx) = sync_channel(4096);
                    subscribers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(tx);
                    // Streams until the client goes or the agent stops: its own thread. tiny_http
                    // writes the head (chunked, no body); each line is one chunk, flushed at once.
                    std::thread::spawn(move || {
                        let version = req.http_version().clone();
                        let head = tiny_http::Response::new(
                            200.into(),
                            vec![],
                            std::io::empty(),
                            None,
                            None,
                        );
                        let mut w = req.into_writer();
                        if head.raw_print(&mut w, version, &[], true, None).is_err() {
                            return;
                        }
                        let _ = w.flush();
                        let mut enc = chunked_transfer::Encoder::with_flush_after_write(w);
                        loop {
                            let line = match rx.recv_timeout(Duration::from_secs(1)) {
                                Ok(line) => format!("{line}\n"),
                                // A newline now and then finds a client that went away.
                                Err(RecvTimeoutError::Timeout) => "\n".into(),
                                Err(RecvTimeoutError::Disconnected) => break,
                            };
                            // The encoder hands each chunk on; the connection's buffer is flushed here.
                            if enc.write_all(line.as_bytes()).is_err()
                                || enc.get_mut().flush().is_err()
                            {
                                break;
                            }
                        }
                    });
                    Ok(())
                }
                _ => req.respond(text(404, "not found\n".into(), "text/plain")),
            };
            if let Err(e) = res {
                eprintln!("lb-agent: answering {url}: {e}");
            }
        }
    });
    Ok((server, thread))
}

fn unreachable_header() -> tiny_http::Header {
    tiny_http::Header {
        field: "Content-Type".parse().expect("a valid header name"),
        value: "text/plain".parse().expect("a valid header value"),
    }
}
