//! Hitless restart: the datapath's maps and links are pinned; the agent (loader) exits and a new
//! one takes over the pinned links and maps. A TCP connection opened before the restart keeps
//! working during and after it, and services need not be re-added.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use lb_api::abi::CtKind;
use lb_bpf::{Error, KernelDatapath};
use lb_control::default_config;
use lb_examples::scenario;
use lb_testbed::testbed::{Testbed, VIP, VIP_PORT};

struct Uninstall(PathBuf);
impl Drop for Uninstall {
    fn drop(&mut self) {
        let _ = KernelDatapath::uninstall(&self.0);
    }
}

use lb_testbed::gate::privileged_test as privileged;

#[test]
fn connections_survive_a_loader_restart() {
    if !privileged("connections_survive_a_loader_restart") {
        return;
    }
    let dir = PathBuf::from(format!(
        "/sys/fs/bpf/lb-test-restart-{}",
        std::process::id()
    ));
    let _cleanup = Uninstall(dir.clone());
    let bed = Testbed::create("rst").unwrap();

    let mut dp1 = KernelDatapath::load_pinned(&dir).unwrap();
    dp1.set_config(&default_config(11)).unwrap();
    dp1.upsert_service(&scenario::service()).unwrap();
    scenario::attach(&mut dp1, &bed).unwrap();
    let servers = bed.start_backends(Duration::from_secs(60)).unwrap();
    let vip = SocketAddr::from((VIP, VIP_PORT));

    let mut conv = bed.connect(vip, Duration::from_secs(3)).unwrap();
    let before = conv.ask("before restart").unwrap();
    let backend = before.split(" saw ").next().unwrap().to_string();
    let port = conv.local_addr().unwrap().port();
    let created = |dp: &KernelDatapath| {
        dp.conntrack_entries()
            .unwrap()
            .into_iter()
            .find(|(k, _)| k.kind == CtKind::Service as u8 && k.src_port == port)
            .map(|(_, e)| e.created_ns)
            .expect("the connection's service entry")
    };
    let created_before = created(&dp1);

    // The agent exits. Pinned links keep the programs attached; pinned maps keep the flows.
    drop(dp1);
    let during = conv.ask("while the agent is down").unwrap();
    assert!(
        during.starts_with(&backend),
        "same backend while down: {during}"
    );
    // New flows too: their stage (a tail call into the new-flow program) outlives the agent.
    let answers = bed.requests(vip, 3, Duration::from_secs(3)).unwrap();
    assert!(
        answers.iter().all(Result::is_ok),
        "new connections while the agent is down: {answers:?}"
    );

    // A new agent loads new programs, reuses the maps and swaps the programs into the links.
    let mut dp2 = KernelDatapath::load_pinned(&dir).unwrap();
    scenario::attach(&mut dp2, &bed).unwrap();
    let after = conv.ask("after restart").unwrap();
    assert!(
        after.starts_with(&backend),
        "same backend after restart: {after} (before: {before})"
    );
    assert_eq!(
        created(&dp2),
        created_before,
        "the flow's conntrack entry carried over"
    );

    // The service carried over too: new connections work without re-adding it.
    let answers = bed.requests(vip, 6, Duration::from_secs(3)).unwrap();
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    drop(conv);
    let _ = servers.stop();
}

#[test]
fn an_incompatible_pinned_map_is_refused_with_the_fix() {
    if !privileged("an_incompatible_pinned_map_is_refused_with_the_fix") {
        return;
    }
    let dir = PathBuf::from(format!(
        "/sys/fs/bpf/lb-test-incompat-{}",
        std::process::id()
    ));
    let _cleanup = Uninstall(dir.clone());
    drop(KernelDatapath::load_pinned(&dir).unwrap());
    // Put a map of another shape where the conntrack map should be (as an older build would have).
    let maps = dir.join("maps");
    std::fs::remove_file(maps.join("LB_CT")).unwrap();
    std::fs::rename(maps.join("LB_COUNTERS"), maps.join("LB_CT")).unwrap();
    match KernelDatapath::load_pinned(&dir) {
        Err(e @ Error::IncompatiblePinnedMap { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("LB_CT") && msg.contains("uninstall"), "{msg}");
        }
        other => panic!("expected IncompatiblePinnedMap, got {other:?}"),
    }
    KernelDatapath::uninstall(&dir).unwrap();
    assert!(!dir.exists(), "uninstall removes the pin directory");
}
