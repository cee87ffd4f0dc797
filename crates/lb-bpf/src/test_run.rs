//! Running packets through the programs with `BPF_PROG_TEST_RUN`, and the verifier's figures.

use std::time::Duration;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use lb_api::Verdict;

use crate::{Error, KernelDatapath, Program};

/// The skb metadata a TC program's `BPF_PROG_TEST_RUN` is given (the `__sk_buff` fields the
/// kernel takes from the caller, as far as the datapath reads them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TestSkb {
    /// `gso_size`: the packet is a GSO packet of segments of this many payload bytes. The test
    /// runner sets no GSO type with it, so the kernel resizes no such packet
    /// (`bpf_skb_adjust_room` refuses it).
    pub gso_size: u16,
}

impl TestSkb {
    /// Size of the kernel's `struct __sk_buff` (Linux 6.x).
    const SK_BUFF_LEN: usize = 192;
    /// Offset of `gso_size` in `struct __sk_buff`.
    const GSO_SIZE_OFFSET: usize = 176;

    /// The `__sk_buff` image: zero but for the fields set (the kernel refuses others).
    fn sk_buff(&self) -> [u8; Self::SK_BUFF_LEN] {
        let mut b = [0u8; Self::SK_BUFF_LEN];
        b[Self::GSO_SIZE_OFFSET..Self::GSO_SIZE_OFFSET + 4]
            .copy_from_slice(&u32::from(self.gso_size).to_ne_bytes());
        b
    }
}

/// Result of running a packet through a program with `BPF_PROG_TEST_RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's verdict.
    pub verdict: Verdict,
    /// The packet as the program left it.
    pub data: Vec<u8>,
    /// Average time per run, as measured by the kernel.
    pub duration: Duration,
}

impl KernelDatapath {
    /// How many instructions the verifier walked to accept `program` (`verified_insns` of
    /// `BPF_OBJ_GET_INFO_BY_FD`, kernel 5.16 and later): its share of the kernel's limit of a
    /// million per program. `None` when the kernel does not report it.
    ///
    /// # Errors
    /// [`Error::Program`] if the program's information cannot be read.
    pub fn verified_instructions(&self, program: Program) -> Result<Option<u32>, Error> {
        let name = program.name();
        let prog = self.ebpf.program(name).ok_or(Error::Program {
            program: name,
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?;
        let info = prog.info().map_err(|source| Error::Program {
            program: name,
            source,
        })?;
        Ok(info.verified_instruction_count())
    }

    /// Runs `frame` through `program` `repeat` times with `BPF_PROG_TEST_RUN` (maps are shared
    /// with the live datapath, so a run changes conntrack like a real packet would).
    ///
    /// # Errors
    /// [`Error::Program`] if the kernel refuses the run.
    pub fn test_run(
        &self,
        program: Program,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutput, Error> {
        self.test_run_skb(program, frame, repeat, &TestSkb::default())
    }

    /// [`Self::test_run`] of a TC program with the skb metadata `skb` (passed to the kernel as
    /// the run's `__sk_buff` context; ignored for XDP programs and when all default).
    ///
    /// # Errors
    /// [`Error::Program`] if the kernel refuses the run.
    pub fn test_run_skb(
        &self,
        program: Program,
        frame: &[u8],
        repeat: u32,
        skb: &TestSkb,
    ) -> Result<TestRunOutput, Error> {
        let name = program.name();
        let prog = self.ebpf.program(name).ok_or(Error::Program {
            program: name,
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?;
        let mut out = vec![0u8; frame.len() + 256];
        let ctx = skb.sk_buff();
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: (!program.is_xdp() && *skb != TestSkb::default()).then_some(&ctx[..]),
            repeat,
            ..Default::default()
        };
        let res = if program.is_xdp() {
            let x: &Xdp = prog.try_into().map_err(|source| Error::Program {
                program: name,
                source,
            })?;
            x.test_run(opts)
        } else {
            let c: &SchedClassifier = prog.try_into().map_err(|source| Error::Program {
                program: name,
                source,
            })?;
            c.test_run(opts)
        }
        .map_err(|source| Error::Program {
            program: name,
            source,
        })?;
        out.truncate(res.data_size_out as usize);
        let verdict = program
            .verdict(res.return_value)
            .ok_or(Error::UnknownVerdict {
                program: name,
                code: res.return_value,
            })?;
        Ok(TestRunOutput {
            verdict,
            data: out,
            duration: res.duration,
        })
    }
}
