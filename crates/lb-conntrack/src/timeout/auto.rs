//! Where `auto` knobs read the kernel's values from.

/// Where `auto` knobs read the kernel's values from.
pub trait AutoSource {
    /// The value of `/proc/sys/net/netfilter/<sysctl>` in seconds, if it can be read.
    fn read_secs(&self, sysctl: &str) -> Option<u64>;
}

/// An [`AutoSource`] that never has a value: every `auto` knob uses its fallback.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAutoSource;

impl AutoSource for NoAutoSource {
    fn read_secs(&self, _sysctl: &str) -> Option<u64> {
        None
    }
}

/// An [`AutoSource`] reading `<root>/sys/net/netfilter/<sysctl>`: `/proc` on a host, a fixture
/// directory in tests.
#[cfg(feature = "std")]
#[derive(Debug, Clone)]
pub struct ProcSysctl {
    root: std::path::PathBuf,
}

#[cfg(feature = "std")]
impl ProcSysctl {
    /// The running kernel's values (`/proc`).
    #[must_use]
    pub fn system() -> Self {
        Self::at("/proc")
    }

    /// Values under another proc root (tests, a host's /proc mounted elsewhere).
    pub fn at(root: impl Into<std::path::PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

#[cfg(feature = "std")]
impl AutoSource for ProcSysctl {
    fn read_secs(&self, sysctl: &str) -> Option<u64> {
        let path = self.root.join("sys/net/netfilter").join(sysctl);
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }
}
