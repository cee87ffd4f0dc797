//! `cargo xtask <task>`: the project's commands. `setup` installs what is missing and is run
//! implicitly by the others, so `cargo xtask demo` and `cargo xtask test` work on a fresh machine.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod stack;

/// Versions from ../shared/TOOLCHAIN.md.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Debian packages: LLVM 22 for bpf-linker; iproute2 and ethtool for the namespace tests and demo.
/// tshark is the independent decoder of our Geneve/DSR/ICMP output (the kernel has no geneve);
/// scapy crafts the malformed frames of the malformed-link test.
/// wrk is the load generator of the per-mode connection-rate and latency benchmark.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "iproute2",
    "ethtool",
    "procps",
    "tshark",
    "python3-scapy",
    "wrk",
    // promtool, which checks lb-agent's /metrics (examples/tests/agent.rs).
    "prometheus",
];
/// Logic crates that must build for the BPF target.
const LOGIC_CRATES: &[&str] = &[
    "lb-api",
    "lb-conntrack",
    "lb-nat",
    "lb-encap",
    "lb-datapath",
];

#[derive(Parser)]
#[command(about = "lb-dataplane project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing (llvm-22-dev, nightly rust-src, bpf-linker, test tools); idempotent.
    Setup,
    /// Run the whole test suite (unit, property, differential, verifier, network-namespace tests)
    /// and a short smoke run of every benchmark.
    Test,
    /// Load-balance real traffic between network namespaces and show what happened.
    Demo {
        /// Run the scenario through the userspace engine even when privileged.
        #[arg(long)]
        userspace: bool,
        /// Run lb-agent on the testbed from manifests instead, with lbctl and the metrics page.
        #[arg(long)]
        agent: bool,
    },
    /// Benchmarks: criterion (userspace), BPF_PROG_TEST_RUN ns/packet (kernel: the default
    /// table, then the forwarding modes' table of `lb-kernel-bench --modes`), and per-mode
    /// connection rate and latency of real TCP through the two-node cluster (wrk).
    Bench {
        /// Only the kernel (BPF_PROG_TEST_RUN) figures.
        #[arg(long)]
        kernel_only: bool,
        /// Only the per-mode figures through the two-node cluster.
        #[arg(long)]
        modes_only: bool,
    },
    /// The kernel programs' stack frames and deepest call chains (the verifier allows 512 bytes
    /// per chain), from the disassembly of the programs object.
    Stack {
        /// Read this programs object instead of building lb-bpf's.
        #[arg(long)]
        object: Option<PathBuf>,
    },
    /// Scale figures of the kernel datapath (`lb-scale`): load and programming time for 1k / 10k
    /// / 50k services x 2 / 10 / 100 backends (random and Maglev), memory per table, ns per
    /// established packet at 1 and 50k services, conntrack GC over 1M entries.
    Scale {
        /// Tiny sizes: checks that the command works (`cargo xtask test` runs this).
        #[arg(long)]
        smoke: bool,
    },
    /// Fuzz cargo-fuzz targets in turn, each from its committed seed corpus
    /// (fuzz/corpus/<target>), and print each target's executions.
    Fuzz {
        /// Seconds per target (unless `--minutes` is given).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Minutes per target (overrides `--seconds`).
        #[arg(long)]
        minutes: Option<u64>,
        /// Every target, in turn (the default when no `--target` is given).
        #[arg(long, conflicts_with = "target")]
        all: bool,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.task {
        Task::Setup => setup().map(|_| ()),
        Task::Test => test(),
        Task::Demo { userspace, agent } => {
            if agent {
                demo_agent()
            } else {
                demo(userspace)
            }
        }
        Task::Bench {
            kernel_only,
            modes_only,
        } => bench(kernel_only, modes_only),
        Task::Scale { smoke } => scale(smoke),
        Task::Fuzz {
            seconds,
            minutes,
            all: _,
            target,
        } => fuzz(minutes.map_or(seconds, |m| m * 60), target.as_deref()),
        Task::Stack { object } => stack::stack(object),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn say(msg: &str) {
    eprintln!("\x1b[1mxtask:\x1b[0m {msg}");
}

fn run(cmd: &mut Command) -> Result<()> {
    say(&format!("$ {}", show(cmd)));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn apt_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

/// Installs what is missing; returns what it did.
fn setup() -> Result<Vec<String>> {
    let mut did = Vec::new();

    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !apt_installed(p))
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!(
                "missing Debian packages: {}. Install them with: sudo apt-get update && sudo apt-get install -y {}",
                missing.join(" "),
                missing.join(" ")
            );
        }
        run(Command::new("apt-get")
            .args(["update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive"))
        .context("apt-get update failed: is the Debian package mirror reachable?")?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        did.push(format!("installed Debian packages {}", missing.join(", ")));
    }

    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup not found: install Rust with rustup first")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        did.push("installed the nightly toolchain".into());
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
        did.push("added rust-src to nightly".into());
    }

    let linker = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        say(&format!(
            "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 2 minutes)"
        ));
        let path = format!(
            "{LLVM_PREFIX}/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
            ])
            .args(["--features", "llvm-22", "--force"])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("PATH", path))?;
        did.push(format!("installed bpf-linker {BPF_LINKER_VERSION}"));
    }

    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        say("warning: /sys/kernel/btf/vmlinux is missing: this kernel has no BTF; the programs do not need it, but tools that inspect them may");
    }
    if did.is_empty() {
        say(
            "setup: everything is installed (Debian packages, nightly rust-src, bpf-linker 0.13.0)",
        );
    } else {
        say(&format!("setup: {}", did.join("; ")));
    }
    Ok(did)
}

fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root_dir());
    c
}

fn test() -> Result<()> {
    let started = Instant::now();
    if in_ci() && !is_root() {
        bail!("CI=true but not running as root: the kernel and network-namespace tests would be skipped, which CI does not allow");
    }
    if !is_root() {
        say("not root: privileged tests (verifier, BPF_PROG_TEST_RUN, namespaces) will report SKIPPED; run `sudo -E cargo xtask test` for the whole suite");
    }
    setup()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))
        .context("code is not formatted: run `cargo fmt --all`")?;
    // The logic crates are what the kernel runs: they must build for the BPF target as they are.
    let mut bpf = cargo();
    bpf.args([
        "+nightly",
        "build",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
    ]);
    for c in LOGIC_CRATES {
        bpf.args(["-p", c]);
    }
    run(&mut bpf)?;
    // clippy enforces the crates' deny(panic/unwrap/indexing) lints: a panic path would be a
    // verifier failure in the kernel.
    run(cargo().args([
        "clippy",
        "--workspace",
        "--lib",
        "--bins",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .args(["test", "--workspace"])
        .env("RUST_BACKTRACE", "1"))?;
    run(cargo().args(["check", "--manifest-path", "fuzz/Cargo.toml", "--bins"]))?;
    bench_smoke()?;
    if is_root() {
        // The scale command at tiny sizes, so that the figures' command keeps working.
        run(cargo().args([
            "run",
            "--quiet",
            "-p",
            "lb-testbed",
            "--bin",
            "lb-scale",
            "--",
            "--smoke",
        ]))?;
    }
    say(&format!(
        "all tests passed in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn demo(userspace: bool) -> Result<()> {
    if !is_root() && !userspace {
        say("not root: the kernel demo needs root (BPF, network namespaces); running the same scenario through the userspace engine instead");
        say("for the real thing: sudo -E cargo xtask demo");
    }
    if is_root() {
        setup()?;
    }
    let mut c = cargo();
    c.args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "lb-examples",
        "--bin",
        "lb-demo",
        "--",
    ]);
    if userspace || !is_root() {
        c.arg("--userspace");
    }
    run(&mut c)
}

/// A short run of every benchmark binary, so that a broken benchmark fails the test run: the
/// criterion benches in criterion's test mode (each benchmark run once, in the test profile), the
/// kernel bench's two tables with tiny counts (every row still checked by its counters) and the
/// cluster bench for one second per wrk run. Figures from these runs mean nothing.
fn bench_smoke() -> Result<()> {
    let started = Instant::now();
    run(cargo().args([
        "test",
        "--workspace",
        "--bench",
        "*",
        "--exclude",
        "xtask",
        "--exclude",
        "lb-examples",
        "--exclude",
        "lb-testbed",
    ]))?;
    if !is_root() {
        say("not root: skipping the smoke runs of the kernel and cluster benchmarks");
        return Ok(());
    }
    let kernel: [&[&str]; 2] = [
        &["--repeat", "1000", "--singles", "100", "--ct-fill", "20000"],
        &["--modes", "--runs", "20", "--repeat", "1000"],
    ];
    for args in kernel {
        run(cargo()
            .args([
                "run",
                "--quiet",
                "-p",
                "lb-testbed",
                "--bin",
                "lb-kernel-bench",
                "--",
            ])
            .args(args))?;
    }
    run(cargo().args([
        "run",
        "--quiet",
        "-p",
        "lb-testbed",
        "--bin",
        "lb-mode-bench",
        "--",
        "--seconds",
        "1",
        "--close-seconds",
        "1",
        "--modes",
        "snat",
    ]))?;
    say(&format!(
        "benchmark smoke runs passed in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// `demo --agent`: builds lb-agent, lbctl and the demo driver, then runs the driver.
fn demo_agent() -> Result<()> {
    if !is_root() {
        bail!(
            "the agent demo needs root (BPF, network namespaces): sudo -E cargo xtask demo --agent"
        );
    }
    setup()?;
    run(cargo().args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "lb-examples",
        "--bins",
    ]))?;
    run(&mut std::process::Command::new(
        "target/release/lb-agent-demo",
    ))
}

fn bench(kernel_only: bool, modes_only: bool) -> Result<()> {
    setup()?;
    if !kernel_only && !modes_only {
        run(cargo().args([
            "bench",
            "--workspace",
            "--exclude",
            "xtask",
            "--exclude",
            "lb-examples",
            "--exclude",
            "lb-testbed",
        ]))?;
    }
    if !is_root() {
        say("not root: skipping the BPF_PROG_TEST_RUN and per-mode figures (sudo -E cargo xtask bench --kernel-only / --modes-only)");
        return Ok(());
    }
    if !modes_only {
        // The default table, then every forwarding mode's paths (single checked runs).
        for extra in [&[][..], &["--", "--modes"][..]] {
            run(cargo()
                .args([
                    "run",
                    "--quiet",
                    "--release",
                    "-p",
                    "lb-testbed",
                    "--bin",
                    "lb-kernel-bench",
                ])
                .args(extra))?;
        }
    }
    if !kernel_only {
        run(cargo().args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "lb-testbed",
            "--bin",
            "lb-mode-bench",
        ]))?;
    }
    Ok(())
}

fn scale(smoke: bool) -> Result<()> {
    if !is_root() {
        bail!(
            "the scale figures need root (BPF maps, BPF_PROG_TEST_RUN): sudo -E cargo xtask scale"
        );
    }
    setup()?;
    let mut c = cargo();
    c.args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "lb-testbed",
        "--bin",
        "lb-scale",
    ]);
    if smoke {
        c.args(["--", "--smoke"]);
    }
    run(&mut c)
}

fn fuzz(seconds: u64, only: Option<&str>) -> Result<()> {
    setup()?;
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_none() {
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let list = output(
        cargo()
            .args(["+nightly", "fuzz", "list"])
            .current_dir(root_dir()),
    )
    .unwrap_or_default();
    let targets: Vec<&str> = list
        .lines()
        .filter(|t| only.is_none_or(|o| o == *t))
        .collect();
    if targets.is_empty() {
        bail!(
            "no fuzz target matches (available: {})",
            list.replace('\n', " ")
        );
    }
    let mut executions = Vec::new();
    for t in &targets {
        // The committed seeds stay as they are: new inputs go to a scratch corpus beside them
        // (fuzz/corpus is small and reviewed; what a campaign finds is not committed).
        let seeds = root_dir().join("fuzz/corpus").join(t);
        let found = root_dir().join("fuzz/target/corpus").join(t);
        std::fs::create_dir_all(&seeds)?;
        std::fs::create_dir_all(&found)?;
        let log = root_dir().join("fuzz/target").join(format!("{t}.log"));
        let status = cargo()
            .args(["+nightly", "fuzz", "run", t])
            .arg(&found)
            .arg(&seeds)
            .args(["--", &format!("-max_total_time={seconds}"), "-max_len=2048"])
            .stderr(std::fs::File::create(&log)?)
            .status()?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        // libFuzzer's last status line: "#<executions> DONE ..." (or the last "#<n> ..." line).
        let runs = text
            .lines()
            .rev()
            .filter_map(|l| l.strip_prefix('#'))
            .find_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        println!(
            "fuzz {t}: {runs} executions in {seconds} s ({})",
            log.display()
        );
        if !status.success() {
            bail!("fuzz target {t} failed: see {}", log.display());
        }
        executions.push((t.to_string(), runs));
    }
    println!("target executions seconds");
    for (t, runs) in executions {
        println!("{t} {runs} {seconds}");
    }
    Ok(())
}
