//! The programs in the object: their names, hooks and return codes.

use lb_api::Verdict;

/// The program variants in the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Program {
    /// The pipeline at XDP (its first stage, which tail-calls the new-flow stage).
    Xdp,
    /// The pipeline at TC (clsact; its first stage).
    Tc,
    /// Parse-only XDP baseline for benchmarks.
    XdpParseOnly,
    /// The XDP pipeline's new-flow stage, reached by tail call from [`Program::Xdp`]. Run on
    /// its own it reads the per-CPU scratch area as the last packet's first stage left it.
    XdpNewFlow,
    /// The TC pipeline's new-flow stage, reached by tail call from [`Program::Tc`].
    TcNewFlow,
    /// Pass-only XDP program for the peer of a veth that runs [`Program::Xdp`], so that the
    /// peer takes the frames the pipeline sends back with `XDP_TX`
    /// ([`KernelDatapath::attach_xdp_tx_peer`](crate::KernelDatapath::attach_xdp_tx_peer)).
    XdpTxPeer,
    /// The conntrack GC's delete step (an XDP program run with `BPF_PROG_TEST_RUN`, never
    /// attached): see [`crate::conntrack_gc`].
    CtSweep,
}

impl Program {
    /// Every variant: each is loaded through the verifier by [`KernelDatapath::load`](crate::KernelDatapath::load).
    pub const ALL: [Program; 7] = [
        Program::Xdp,
        Program::Tc,
        Program::XdpParseOnly,
        Program::XdpNewFlow,
        Program::TcNewFlow,
        Program::XdpTxPeer,
        Program::CtSweep,
    ];

    /// Whether the program is an XDP program (else a TC classifier).
    #[must_use]
    pub const fn is_xdp(self) -> bool {
        matches!(
            self,
            Program::Xdp
                | Program::XdpParseOnly
                | Program::XdpNewFlow
                | Program::XdpTxPeer
                | Program::CtSweep
        )
    }

    /// The program's name in the object.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Program::Xdp => "lb_xdp",
            Program::Tc => "lb_tc",
            Program::XdpParseOnly => "lb_xdp_parse_only",
            Program::XdpNewFlow => "lb_xdp_new_flow",
            Program::TcNewFlow => "lb_tc_new_flow",
            Program::XdpTxPeer => "lb_xdp_tx_peer",
            Program::CtSweep => "lb_ct_sweep",
        }
    }

    /// The datapath verdict a program's return code stands for.
    #[must_use]
    pub const fn verdict(self, return_value: u32) -> Option<Verdict> {
        if self.is_xdp() {
            match return_value {
                1 => Some(Verdict::Drop), // XDP_DROP
                2 => Some(Verdict::Pass), // XDP_PASS
                3 => Some(Verdict::Tx),   // XDP_TX
                _ => None,
            }
        } else {
            match return_value {
                0 => Some(Verdict::Pass), // TC_ACT_OK
                2 => Some(Verdict::Drop), // TC_ACT_SHOT
                // TC_ACT_REDIRECT: the ICMP error back out of the device it came in on.
                7 => Some(Verdict::Tx),
                _ => None,
            }
        }
    }
}

/// `program` in the loaded object as its aya type ([`aya::programs::Xdp`] or
/// [`aya::programs::SchedClassifier`]).
///
/// # Errors
/// [`Error::Program`](crate::Error::Program) if the object lacks it or it is of another type.
pub(crate) fn typed<'a, T>(
    ebpf: &'a mut aya::Ebpf,
    program: Program,
) -> Result<&'a mut T, crate::Error>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let name = program.name();
    let to_error = |source| crate::Error::Program {
        program: name,
        source,
    };
    let prog = ebpf
        .program_mut(name)
        .ok_or(aya::programs::ProgramError::UnexpectedProgramType)
        .map_err(to_error)?;
    prog.try_into().map_err(to_error)
}
