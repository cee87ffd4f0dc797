//! The agent's configuration file: the sample parses into the datapath's types, `auto`
//! timeouts read the kernel's values, and every mistake names its key and the fix.

use lb_api::abi::CtState;
use lb_conntrack::{NoAutoSource, ProcSysctl};
use lb_control::ForwardingMode;
use lb_examples::agent::config::{AgentConfig, ConfigFileError, Hook};

const SAMPLE: &str = include_str!("../agent/lb-agent.toml");

fn err(text: &str) -> String {
    let e = AgentConfig::from_toml("t.toml", text)
        .and_then(|c| c.plan(&NoAutoSource))
        .unwrap_err();
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

#[test]
fn the_sample_configuration_becomes_the_datapaths_types() {
    let dir = std::env::temp_dir().join(format!("lb-agent-cfg-{}", std::process::id()));
    let net = dir.join("sys/net/netfilter");
    std::fs::create_dir_all(&net).unwrap();
    std::fs::write(net.join("nf_conntrack_tcp_timeout_time_wait"), "90\n").unwrap();
    let cfg = AgentConfig::from_toml("lb-agent.toml", SAMPLE).unwrap();
    let plan = cfg.plan(&ProcSysctl::at(&dir)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let t = &plan.datapath.timeouts;
    assert_eq!(t.of(CtState::Established as u8), 3_600_000_000_000);
    assert_eq!(
        t.of(CtState::TimeWait as u8),
        90_000_000_000,
        "auto read the kernel's"
    );
    assert_eq!(t.of(CtState::UdpAssured as u8), 30_000_000_000);
    assert_eq!(plan.datapath.hash_seed, 24301);
    assert_eq!(
        (plan.datapath.src_port_min, plan.datapath.src_port_max),
        (20000, 29999)
    );
    assert_eq!(plan.datapath.node_v4, [10, 250, 0, 1]);
    assert_eq!((plan.sizes.conntrack, plan.sizes.services), (65536, 4096));
    assert_eq!(plan.memory_limit, Some(268_435_456));
    assert_eq!(plan.attach.len(), 2);
    assert_eq!(
        (plan.attach[0].interface.as_str(), plan.attach[0].hook),
        ("eth0", Hook::Xdp)
    );
    assert_eq!(plan.attach[1].hook, Hook::TcIngress);
    assert_eq!(plan.node_name, "node-a");
    assert_eq!(plan.forwarding_mode, ForwardingMode::Snat);
    assert_eq!(plan.gc.min_interval, std::time::Duration::from_secs(10));
    assert_eq!(plan.metrics, Some("127.0.0.1:9967".parse().unwrap()));
    assert_eq!(plan.min_sync_period, std::time::Duration::from_secs(1));
    // The Node object's address yields to the configured one; peers join.
    let api = lb_control::NodeSpec {
        address_v4: Some("10.9.9.9".parse().unwrap()),
        address_v6: Some("fd00::9".parse().unwrap()),
        peers: vec!["10.250.0.3".parse().unwrap()],
        ..Default::default()
    };
    let n = plan.node_from(Some(&api));
    assert_eq!(n.address_v4, Some("10.250.0.1".parse().unwrap()));
    assert_eq!(n.address_v6, Some("fd00::9".parse().unwrap()));
    assert_eq!(n.peers.len(), 2);
}

#[test]
fn mistakes_name_the_key_and_the_fix() {
    let base = "[node]\nname = \"n\"\n";
    let cases: &[(&str, &[&str])] = &[
        (
            "[tables]\nconntrak = 1\n",
            &["conntrak", "line 6", "expected one of"],
        ),
        (
            "[tables]\nconntrack = \"big\"\n",
            &["conntrack", "expected u32"],
        ),
        (
            "[tables]\nconntrack = 1\n",
            &["LB_CT", "TableSizes::conntrack"],
        ),
        (
            "[tables]\ndrop_events_bytes = 5000\n",
            &["LB_EVENTS", "drop_events_bytes"],
        ),
        (
            "[timeouts]\nTCPEstablished = \"forever\"\n",
            &["timeouts.TCPEstablished", "30s"],
        ),
        (
            "[timeouts]\nTCPEstablishd = \"1h\"\n",
            &["timeouts.TCPEstablishd", "unknown knob"],
        ),
        (
            "[timeouts]\npreset = \"bsd\"\n",
            &["timeouts.preset", "calico"],
        ),
        (
            "[datapath]\nforwarding_mode = \"nat\"\n",
            &["datapath.forwarding_mode", "dsr"],
        ),
        (
            "[datapath]\nsource_port_rewrite = \"30000-20000\"\n",
            &["datapath.source_port_rewrite", "min <= max"],
        ),
        (
            "[datapath]\nsource_port_tries = 99\n",
            &["source_port_tries", "1..=32"],
        ),
        (
            "[[attach]]\ninterface = \"eth0\"\nhook = \"tcx\"\n",
            &["attach[0].hook", "tc-ingress"],
        ),
        (
            "[[attach]]\ninterface = \"eth0\"\nhook = \"tc-ingress\"\nxdp_mode = \"native\"\n",
            &["attach[0].xdp_mode", "remove"],
        ),
        (
            "[[attach]]\ninterface = \"an-interface-name-too-long\"\nhook = \"xdp\"\n",
            &["attach[0].interface", "15 bytes"],
        ),
        ("[gc]\nmin_interval = \"1d\"\n", &["gc.min_interval", "10s"]),
        (
            "[gc]\nmin_interval = \"13h\"\n",
            &["gc.min_interval", "max_interval"],
        ),
        (
            "[metrics]\nlisten = \"localhost\"\n",
            &["metrics.listen", "127.0.0.1:9967"],
        ),
        (
            "[sources]\nmanifests = \"/m\"\nmin_sync_period = \"fast\"\n",
            &["sources.min_sync_period"],
        ),
    ];
    for (text, words) in cases {
        let sources = if text.contains("[sources]") {
            ""
        } else {
            "[sources]\nmanifests = \"/m\"\n"
        };
        let msg = err(&format!("{base}{sources}{text}"));
        for w in *words {
            assert!(msg.contains(w), "{text:?}: {msg:?} lacks {w:?}");
        }
    }
    // Node addresses go through the node's own rules.
    let msg =
        err("[sources]\nkubernetes = true\n[node]\nname = \"n\"\naddress_v4 = \"127.0.0.1\"\n");
    assert!(msg.contains("[node]") && msg.contains("address"), "{msg}");
    let msg = err("[node]\nname = \"n\"\n");
    assert!(
        msg.contains("sources") && msg.contains("kubernetes = true"),
        "{msg}"
    );
    assert!(matches!(
        AgentConfig::read(std::path::Path::new("/nonexistent/lb.toml")),
        Err(ConfigFileError::Read { .. })
    ));
}
