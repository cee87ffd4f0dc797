//! `cargo xtask demo --agent`: lb-agent on the namespace testbed's node, programmed from
//! manifests, with lbctl and the metrics page showing what it does. Everything it creates
//! (namespaces, pins, files, the agent) is removed when it ends, whatever happened.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lb_bpf::KernelDatapath;
use lb_testbed::testbed::{Testbed, BACKENDS, VIP};
use lb_testbed::traffic::BACKEND_PORT;

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

/// A Service and its EndpointSlice, as `kubectl get -o yaml` would print them.
fn manifest(name: &str, ip: &str, backends: &[std::net::Ipv4Addr]) -> String {
    let eps: String = backends
        .iter()
        .map(|b| {
            format!(
                "- addresses: [\"{b}\"]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: demo-node\n"
            )
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n  type: ClusterIP\n  ports:\n  \
         - {{name: tcp, port: 80, protocol: TCP, targetPort: tcp}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata:\n  name: {name}-x1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         addressType: IPv4\nports:\n- {{name: tcp, port: {BACKEND_PORT}, protocol: TCP}}\nendpoints:\n{eps}"
    )
}

fn lbctl(bin: &Path, pins: &Path, agent: SocketAddr, args: &[&str]) -> Result<String> {
    let out = Command::new(bin.join("lbctl"))
        .arg("--pin-dir")
        .arg(pins)
        .args(["--agent", &agent.to_string()])
        .args(args)
        .output()
        .context("running lbctl")?;
    if !out.status.success() {
        bail!("lbctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn main() -> Result<()> {
    let bin = std::env::current_exe()?
        .parent()
        .context("the binaries' directory")?
        .to_path_buf();
    let id = std::process::id();
    let mut guard = Cleanup {
        pins: PathBuf::from(format!("/sys/fs/bpf/lb-agent-demo-{id}")),
        dir: std::env::temp_dir().join(format!("lb-agent-demo-{id}")),
        agent: None,
    };
    let manifests = guard.dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let bed = Testbed::create("agdemo")?;
    let servers = bed.start_backends(Duration::from_secs(120))?;
    let agent: SocketAddr = ([127, 0, 0, 1], 9967).into();
    let config = guard.dir.join("lb-agent.toml");
    let node = &bed.node;
    std::fs::write(
        &config,
        format!(
            "[datapath]\npin_dir = \"{pins}\"\n[tables]\nconntrack = 65536\nservices = 256\nbackends = 4096\nnodes = 64\n\
             [[attach]]\ninterface = \"n0\"\nhook = \"xdp\"\nnetns = \"{node}\"\n\
             [[attach]]\ninterface = \"n1\"\nhook = \"tc-ingress\"\nnetns = \"{node}\"\n\
             [[attach]]\ninterface = \"n2\"\nhook = \"tc-ingress\"\nnetns = \"{node}\"\n\
             [node]\nname = \"demo-node\"\n[metrics]\nlisten = \"{agent}\"\n\
             [sources]\nmanifests = \"{m}\"\npoll_interval = \"1s\"\nmin_sync_period = \"1s\"\n",
            pins = guard.pins.display(),
            m = manifests.display(),
        ),
    )?;
    std::fs::write(
        manifests.join("web.yaml"),
        manifest("web", &VIP.to_string(), &BACKENDS),
    )?;
    std::fs::write(
        manifests.join("empty.yaml"),
        manifest("empty", "10.96.0.11", &[]),
    )?;
    println!(
        "== lb-agent --config {} (manifests in {}) ==",
        config.display(),
        manifests.display()
    );
    guard.agent = Some(
        Command::new(bin.join("lb-agent"))
            .arg("--config")
            .arg(&config)
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting lb-agent (build it: cargo build -p lb-examples --bins)")?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = lbctl(&bin, &guard.pins, agent, &["service", "list"]) {
            if s.contains(&format!("{VIP}:80")) && s.contains("10.96.0.11:80") {
                println!("\n$ lbctl service list\n{s}");
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("the agent did not program the services within 30 s");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    for (i, a) in bed
        .requests(SocketAddr::from((VIP, 80)), 6, Duration::from_secs(3))?
        .into_iter()
        .enumerate()
    {
        println!(
            "request {i} -> {VIP}:80: {}",
            a.unwrap_or_else(|e| format!("failed: {e}"))
        );
    }
    println!(
        "\n$ lbctl ct list --state time_wait\n{}",
        lbctl(
            &bin,
            &guard.pins,
            agent,
            &["ct", "list", "--state", "time_wait"]
        )?
    );
    let pins = guard.pins.clone();
    let bin2 = bin.clone();
    let monitor = std::thread::spawn(move || {
        lbctl(
            &bin2,
            &pins,
            agent,
            &["monitor", "--type", "drop", "--count", "1"],
        )
    });
    std::thread::sleep(Duration::from_millis(1500));
    let _ = bed.requests("10.96.0.11:80".parse()?, 1, Duration::from_secs(1))?;
    let shown = monitor
        .join()
        .map_err(|_| anyhow::anyhow!("the monitor thread panicked"))??;
    println!("$ lbctl monitor --type drop   (a request to 10.96.0.11:80, which has no endpoints)\n{shown}");
    let metrics = ureq::get(&format!("http://{agent}/metrics"))
        .call()?
        .body_mut()
        .read_to_string()?;
    println!("$ curl {agent}/metrics   (excerpt)");
    for l in metrics.lines().filter(|l| {
        !l.starts_with('#')
            && (l.starts_with("lb_drops_total") && !l.ends_with(" 0")
                || l.starts_with("lb_conntrack_flows")
                || l.starts_with("lb_table_entries")
                || l.starts_with("lb_agent_syncs_total"))
    }) {
        println!("{l}");
    }
    if let Some(a) = guard.agent.take() {
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        unsafe { libc::kill(a.id() as i32, libc::SIGTERM) };
        let out = a.wait_with_output()?;
        println!(
            "\nlb-agent stopped ({}); pins, namespaces and files removed.",
            out.status
        );
    }
    let _ = servers.stop();
    Ok(())
}
