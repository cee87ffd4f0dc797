//! Presets, parsing, validation and warnings of the timeout policy.

use super::*;
use std::{format, prelude::rust_2021::*, vec};
use CtState::*;

fn secs(t: &Timeouts, s: CtState) -> u64 {
    t.of(s as u8) / NS
}

#[test]
fn netfilter_preset_matches_the_kernel_defaults() {
    let t = TimeoutPolicy::netfilter().to_timeouts();
    let want = [
        (SynSent, 120),
        (SynRecv, 60),
        (Established, 432_000),
        (FinWait, 120),
        (CloseWait, 60),
        (LastAck, 30),
        (TimeWait, 120),
        (Close, 10),
        (SynSent2, 120),
        (UdpUnreplied, 30),
        (UdpAssured, 120),
        (Icmp, 30),
        (Generic, 600),
    ];
    for (s, v) in want {
        assert_eq!(secs(&t, s), v, "{s:?}");
    }
}

#[test]
fn calico_and_cilium_presets() {
    let c = TimeoutPolicy::calico().check(&NoAutoSource).unwrap();
    let t = c.timeouts;
    assert_eq!(
        [
            SynSent,
            Established,
            TimeWait,
            Close,
            UdpUnreplied,
            Generic,
            Icmp
        ]
        .map(|s| secs(&t, s)),
        [20, 3600, 30, 40, 60, 600, 5]
    );
    let w: Vec<_> = c.warnings().copied().collect();
    assert!(w.contains(&TimeoutWarning::AutoFallback {
        knob: Knob::TcpFinsSeen,
        secs: 30
    }));
    assert!(w.contains(&TimeoutWarning::FinsSeenBelowTimeWait { secs: 30 }));
    let t = TimeoutPolicy::cilium().to_timeouts();
    assert_eq!(
        [
            SynSent,
            Established,
            FinWait,
            Close,
            UdpAssured,
            Generic,
            Icmp
        ]
        .map(|s| secs(&t, s)),
        [60, 21_600, 10, 10, 60, 60, 60]
    );
}

#[test]
fn parses_durations() {
    assert_eq!("30s".parse(), Ok(Timeout::secs(30)));
    assert_eq!(" 2m ".parse(), Ok(Timeout::secs(120)));
    assert_eq!("1H".parse(), Ok(Timeout::secs(3600)));
    assert_eq!("auto".parse(), Ok(Timeout::Auto));
    assert_eq!("AUTO".parse(), Ok(Timeout::Auto));
    assert_eq!("".parse::<Timeout>(), Err(ParseTimeoutError::Empty));
    assert_eq!("30".parse::<Timeout>(), Err(ParseTimeoutError::MissingUnit));
    assert_eq!(
        "30d".parse::<Timeout>(),
        Err(ParseTimeoutError::UnknownUnit)
    );
    assert_eq!(
        "30ms".parse::<Timeout>(),
        Err(ParseTimeoutError::UnknownUnit)
    );
    assert_eq!("s".parse::<Timeout>(), Err(ParseTimeoutError::NotANumber));
    assert_eq!("-5s".parse::<Timeout>(), Err(ParseTimeoutError::NotANumber));
    assert_eq!(
        "1.5m".parse::<Timeout>(),
        Err(ParseTimeoutError::NotANumber)
    );
    assert_eq!("9000h".parse::<Timeout>(), Err(ParseTimeoutError::Overflow));
    assert_eq!(
        "99999999999999999999999s".parse::<Timeout>(),
        Err(ParseTimeoutError::Overflow)
    );
}

#[test]
fn errors_say_what_and_how() {
    let mut p = TimeoutPolicy::cilium();
    let e = p.set_str("TCPFinsSeen", "30").unwrap_err();
    assert_eq!(
        e,
        TimeoutError::Parse {
            knob: Knob::TcpFinsSeen,
            error: ParseTimeoutError::MissingUnit
        }
    );
    let msg = e.to_string();
    assert!(msg.starts_with("TCPFinsSeen: "), "{msg}");
    assert!(msg.contains("\"30s\""), "{msg}");
    assert_eq!(
        p.set_str("TCPFinSeen", "30s").unwrap_err(),
        TimeoutError::UnknownKnob
    );
    p.set_str("tcpestablished", "0s").unwrap();
    let e = p.check(&NoAutoSource).unwrap_err();
    assert_eq!(
        e,
        TimeoutError::Zero {
            knob: Knob::TcpEstablished
        }
    );
    assert!(e.to_string().contains("at least 1s"));
}

#[test]
fn short_fins_seen_is_accepted_with_a_warning() {
    let p = TimeoutPolicy::netfilter().with(Knob::TcpFinsSeen, Timeout::secs(10));
    let c = p.check(&NoAutoSource).unwrap();
    assert_eq!(secs(&c.timeouts, TimeWait), 10);
    assert_eq!(
        secs(&c.timeouts, CloseWait),
        10,
        "set() takes over refined states"
    );
    let w: Vec<_> = c.warnings().copied().collect();
    assert_eq!(w, vec![TimeoutWarning::FinsSeenBelowTimeWait { secs: 10 }]);
    assert!(w[0].to_string().contains("TIME_WAIT"));
    let ok = TimeoutPolicy::netfilter().check(&NoAutoSource).unwrap();
    assert_eq!(ok.warnings().count(), 0);
}

#[test]
fn auto_reads_an_injected_proc_root() {
    let dir = std::env::temp_dir().join(format!("lb-ct-proc-{}", std::process::id()));
    let nf = dir.join("sys/net/netfilter");
    std::fs::create_dir_all(&nf).unwrap();
    std::fs::write(nf.join("nf_conntrack_tcp_timeout_time_wait"), "75\n").unwrap();
    std::fs::write(nf.join("nf_conntrack_icmp_timeout"), "garbage").unwrap();
    let p = TimeoutPolicy::calico().with(Knob::Icmp, Timeout::Auto);
    let c = p.check(&ProcSysctl::at(&dir)).unwrap();
    assert_eq!(secs(&c.timeouts, TimeWait), 75);
    assert_eq!(
        secs(&c.timeouts, Icmp),
        30,
        "unreadable → kernel default fallback"
    );
    let w: Vec<_> = c.warnings().copied().collect();
    assert_eq!(
        w,
        vec![
            TimeoutWarning::AutoFallback {
                knob: Knob::Icmp,
                secs: 30
            },
            TimeoutWarning::EstablishedBelowKeepalive { secs: 3600 }
        ]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn knobs_cover_every_state() {
    for v in 0..CT_STATES as u8 {
        let s = CtState::from_u8(v).unwrap();
        let k = Knob::of_state(s);
        assert_eq!(Knob::ALL[k.index()], k);
        assert_eq!(k.name().parse::<Knob>().unwrap(), k);
    }
}
