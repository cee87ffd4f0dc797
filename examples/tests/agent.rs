//! lb-agent end to end, with real parts: the agent (the real binary) programs the namespace
//! testbed's node from a manifest directory while wrk (Debian's) keeps opening connections;
//! services are added, changed and removed; the agent is killed and restarted mid-load; lbctl's
//! output is checked against the pinned maps, `/metrics` with `promtool check metrics`, and the
//! drop capture with tshark.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lb_bpf::KernelDatapath;
use lb_examples::agent::pinned::PinnedMaps;
use lb_examples::agent::views;
use lb_testbed::gate::privileged_test as privileged;
use lb_testbed::testbed::{Testbed, BACKENDS, VIP};
use lb_testbed::traffic::{BACKEND_PORT, HTTP_PORT};

/// Removes the pins, the manifest directory and the agent on every exit path.
struct Cleanup {
    pins: PathBuf,
    dir: PathBuf,
    agent: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        let _ = KernelDatapath::uninstall(&self.pins);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn service(name: &str, ip: &str, backends: &[std::net::Ipv4Addr]) -> String {
    let eps: String = backends
        .iter()
        .map(|b| {
            format!(
                "- addresses: [\"{b}\"]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: lb-node\n"
            )
        })
        .collect();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {ip}
  clusterIPs: [{ip}]
  ports:
  - {{name: tcp, port: 80, protocol: TCP, targetPort: {BACKEND_PORT}}}
  - {{name: http, port: {HTTP_PORT}, protocol: TCP, targetPort: http}}
  type: ClusterIP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-abcde
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports:
- {{name: tcp, port: {BACKEND_PORT}, protocol: TCP}}
- {{name: http, port: {HTTP_PORT}, protocol: TCP}}
endpoints:
{eps}"
    )
}

fn lbctl(pins: &Path, agent: SocketAddr, args: &[&str]) -> String {
    // Bounded: `monitor` waits for events, which a broken datapath might never send.
    let out = Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_lbctl"))
        .arg("--pin-dir")
        .arg(pins)
        .arg("--agent")
        .arg(agent.to_string())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lbctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Waits (bounded) until lbctl's service list satisfies `ok`.
fn wait_services(
    pins: &Path,
    agent: SocketAddr,
    what: &str,
    ok: impl Fn(&[serde_json::Value]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_lbctl"))
            .arg("--pin-dir")
            .arg(pins)
            .args([
                "--agent",
                &agent.to_string(),
                "-o",
                "json",
                "service",
                "list",
            ])
            .output()
            .unwrap();
        if out.status.success() {
            let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
            if ok(&v) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends one TCP SYN to `to` with IP options (four no-operation/end bytes) from a socket of
/// this thread's namespace, waits a second, and closes the socket.
fn syn_with_ip_options(to: std::net::SocketAddrV4) {
    // SAFETY: plain socket calls on a descriptor this function owns and closes; the option
    // and address buffers outlive the calls that read them.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        assert!(fd >= 0, "socket");
        let opts: [u8; 4] = [1, 1, 1, 0];
        let r = libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            opts.as_ptr().cast(),
            opts.len() as libc::socklen_t,
        );
        assert_eq!(r, 0, "IP_OPTIONS");
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: to.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*to.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        libc::connect(
            fd,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        std::thread::sleep(Duration::from_secs(1));
        libc::close(fd);
    }
}

fn backends_of(v: &[serde_json::Value], frontend: &str) -> Option<usize> {
    v.iter()
        .find(|s| s["frontend"] == frontend)
        .map(|s| s["backends"].as_array().map_or(0, Vec::len))
}

fn start_agent(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// wrk in the client namespace, a new connection per request: (requests, failure lines).
fn wrk(
    bed: &Testbed,
    dir: &Path,
    target: SocketAddr,
    secs: u32,
) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    let ns = bed.client.clone();
    let script = dir.join("close.lua");
    std::fs::write(&script, "wrk.headers[\"Connection\"] = \"close\"\n").unwrap();
    std::thread::spawn(move || {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "wrk", "-t1", "-c4"])
            .arg(format!("-d{secs}s"))
            .args(["--timeout", "3s", "-s"])
            .arg(&script)
            .arg(format!("http://{target}/"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "wrk: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let requests = text
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let failures = text
            .lines()
            .filter(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
            .map(str::to_owned)
            .collect();
        (requests, failures)
    })
}

#[test]
fn the_agent_follows_manifests_and_restarts_under_load_without_failures() {
    if !privileged("the_agent_follows_manifests_and_restarts_under_load_without_failures") {
        return;
    }
    let id = std::process::id();
    let mut guard = Cleanup {
        pins: PathBuf::from(format!("/sys/fs/bpf/lb-test-agent-{id}")),
        dir: std::env::temp_dir().join(format!("lb-agent-test-{id}")),
        agent: None,
    };
    let manifests = guard.dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let bed = Testbed::create("agt").unwrap();
    let servers = bed.start_backends(Duration::from_secs(180)).unwrap();
    let port = free_port();
    let agent_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let config = guard.dir.join("lb-agent.toml");
    std::fs::write(
        &config,
        format!(
            "[datapath]\npin_dir = \"{}\"\n[tables]\nconntrack = 262144\nservices = 256\nbackends = 4096\nnodes = 64\n\
             [[attach]]\ninterface = \"n0\"\nhook = \"xdp\"\nnetns = \"{node}\"\n\
             [[attach]]\ninterface = \"n1\"\nhook = \"tc-ingress\"\nnetns = \"{node}\"\n\
             [[attach]]\ninterface = \"n2\"\nhook = \"tc-ingress\"\nnetns = \"{node}\"\n\
             [node]\nname = \"lb-node\"\n[metrics]\nlisten = \"{agent_addr}\"\n\
             [sources]\nmanifests = \"{}\"\npoll_interval = \"1s\"\nmin_sync_period = \"1s\"\n",
            guard.pins.display(),
            manifests.display(),
            node = bed.node,
        ),
    )
    .unwrap();
    let web = manifests.join("web.yaml");
    std::fs::write(&web, service("web", &VIP.to_string(), &BACKENDS)).unwrap();
    guard.agent = Some(start_agent(&config));
    let pins = guard.pins.clone();
    let vip = format!("{VIP}:80");
    wait_services(&pins, agent_addr, "web with two backends", |v| {
        backends_of(v, &vip) == Some(2)
    });

    // Real traffic through it; then lbctl's flows are the maps' flows.
    let answers = bed
        .requests(SocketAddr::from((VIP, 80)), 6, Duration::from_secs(3))
        .unwrap();
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let mut conv = bed
        .connect(SocketAddr::from((VIP, 80)), Duration::from_secs(3))
        .unwrap();
    let first = conv.ask("before").unwrap();
    let backend = first.split(" saw ").next().unwrap().to_string();
    let listed: Vec<serde_json::Value> = serde_json::from_str(&lbctl(
        &pins,
        agent_addr,
        &["-o", "json", "ct", "list", "--addr", &VIP.to_string()],
    ))
    .unwrap();
    let maps = PinnedMaps::new(&pins);
    let from_maps: Vec<_> = views::flows(&maps.conntrack().unwrap(), 0)
        .into_iter()
        .filter(|f| f.service.ip() == std::net::IpAddr::from(VIP))
        .collect();
    assert!(listed.len() >= 7, "{listed:?}");
    assert_eq!(listed.len(), from_maps.len(), "lbctl shows the maps' flows");
    for (l, m) in listed.iter().zip(&from_maps) {
        assert_eq!(l["client"], m.client.to_string());
        assert_eq!(l["backend"], m.backend.to_string());
        assert_eq!(l["halves"], "both", "one flow, both halves");
    }
    let table = lbctl(
        &pins,
        agent_addr,
        &["ct", "list", "--proto", "tcp", "--state", "established"],
    );
    assert!(
        table.starts_with("PROTO") && table.contains(&vip),
        "{table}"
    );
    let counters = lbctl(&pins, agent_addr, &["-o", "json", "counters"]);
    let counters: Vec<serde_json::Value> = serde_json::from_str(&counters).unwrap();
    let snap = maps.counters().unwrap();
    for c in &counters {
        if c["kind"] == "counter" {
            let name = c["name"].as_str().unwrap();
            let counter = lb_api::counters::Counter::ALL
                .into_iter()
                .find(|k| k.name() == name)
                .unwrap();
            // The datapath keeps counting between the two reads: never less.
            assert!(snap.get(counter) <= c["value"].as_u64().unwrap() + 1_000_000);
        }
    }

    // Under load: add a service, change web's endpoints, kill and restart the agent.
    let load = wrk(&bed, &guard.dir, SocketAddr::from((VIP, HTTP_PORT)), 12);
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(
        manifests.join("empty.yaml"),
        service("empty", "10.96.0.11", &[]),
    )
    .unwrap();
    wait_services(&pins, agent_addr, "the empty service", |v| {
        backends_of(v, "10.96.0.11:80") == Some(0)
    });
    let mut agent = guard.agent.take().unwrap();
    agent.kill().unwrap();
    agent.wait().unwrap();
    let during = conv.ask("while the agent is down").unwrap();
    assert!(during.starts_with(&backend), "{during}");
    guard.agent = Some(start_agent(&config));
    std::fs::write(&web, service("web", &VIP.to_string(), &BACKENDS[..1])).unwrap();
    wait_services(&pins, agent_addr, "web with one backend", |v| {
        backends_of(v, &vip) == Some(1) && backends_of(v, "10.96.0.11:80") == Some(0)
    });
    let (requests, failures) = load.join().unwrap();
    assert!(requests > 0);
    assert!(failures.is_empty(), "{failures:?} in {requests} requests");
    eprintln!("agent restart under load: {requests} connections, 0 failed");
    let after = conv.ask("after restart").unwrap();
    assert!(
        after.starts_with(&backend) || after.contains("saw"),
        "{after}"
    );

    // Drops: the empty service has no backend; the capture decodes in tshark.
    let pcap = guard.dir.join("drops.pcap");
    let mon = {
        let pins = pins.clone();
        let pcap = pcap.clone();
        std::thread::spawn(move || {
            lbctl(
                &pins,
                agent_addr,
                &[
                    "monitor",
                    "--type",
                    "drop",
                    "--count",
                    "1",
                    "--pcap",
                    pcap.to_str().unwrap(),
                ],
            )
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    // A plain SYN to the empty service is rejected (a reset back, as kube-proxy does); one
    // carrying IP options gets no reset and is dropped as `no_backend`, which the monitor shows.
    Testbed::within(&bed.client, || {
        syn_with_ip_options("10.96.0.11:80".parse().unwrap())
    })
    .unwrap();
    let shown = mon.join().unwrap();
    assert!(
        shown.contains("10.96.0.11") && shown.starts_with("drop"),
        "{shown}"
    );
    let tshark = Command::new("tshark")
        .args([
            "-r",
            pcap.to_str().unwrap(),
            "-T",
            "fields",
            "-e",
            "ip.dst",
            "-e",
            "tcp.dstport",
        ])
        .output()
        .unwrap();
    let decoded = String::from_utf8_lossy(&tshark.stdout);
    assert!(
        decoded.contains("10.96.0.11\t80"),
        "tshark: {decoded} {}",
        String::from_utf8_lossy(&tshark.stderr)
    );

    // /metrics passes promtool; /healthz answers.
    let metrics = ureq::get(&format!("http://{agent_addr}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    for needle in [
        "lb_drops_total{reason=\"no_backend\"} 1",
        "lb_conntrack_flows{",
        "lb_table_entries{table=\"LB_CT\"}",
        "lb_gc_runs_total",
        "lb_agent_programming_latency_seconds_bucket",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }
    let file = guard.dir.join("metrics.txt");
    std::fs::write(&file, &metrics).unwrap();
    let check = Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", file.display()))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool: {} {}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let health = ureq::get(&format!("http://{agent_addr}/healthz"))
        .call()
        .unwrap();
    assert_eq!(health.status(), 200);
    let gc = lbctl(&pins, agent_addr, &["gc"]);
    assert!(gc.contains("sweep requested"), "{gc}");

    // Removing the manifest removes the service; SIGTERM stops the agent cleanly.
    std::fs::remove_file(manifests.join("empty.yaml")).unwrap();
    wait_services(&pins, agent_addr, "empty removed", |v| {
        backends_of(v, "10.96.0.11:80").is_none()
    });
    let agent = guard.agent.take().unwrap();
    eprintln!("stopping the agent");
    // SAFETY: kill(2) on the child's pid, which we own and have not reaped.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let out = agent.wait_with_output().unwrap();
    assert!(out.status.success(), "graceful stop: {:?}", out.status);
    eprintln!("agent stopped");
    drop(conv);
    let _ = servers.stop();
}
