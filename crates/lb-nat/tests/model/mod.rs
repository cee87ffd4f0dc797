//! A reference model of SNAT allocation over a table of NAT pairs: the netfilter-style design
//! the race and pressure scenarios (DESIGN.md incident 3) are written against, allocating
//! through the same schedule the datapath runs ([`claim_port`]).
//!
//! The datapath does not run this table: it claims ports in the conntrack table (the reverse
//! entry keyed by the reply tuple, inserted where absent). The model keeps the two halves of a
//! pair as separate entries so that the scenarios can check what the datapath's atomicity
//! argument rests on: a port is owned by whoever inserted its reply mapping first, and a pair
//! is never left half-present.

use core::cell::Cell;

use lb_api::counters::{attempts_bucket, ATTEMPT_BUCKETS};
use lb_api::flow::FlowTuple;
use lb_nat::collision::RandomSource;
use lb_nat::snat::{claim_port, may_take_over, Allocation, Claim, SnatConfig, SnatError};

mod sharded;
pub use sharded::ShardedNatTable;

/// Which half of a NAT pair a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum NatDir {
    /// Keyed by the original tuple (pod → destination); the value holds the translated source.
    Forward = 0,
    /// Keyed by the reply tuple (destination → NAT address:port); the value holds the pod's
    /// original source. Owning this key is owning the port.
    Reverse = 1,
}

/// A NAT table key: a tuple and the half it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NatKey {
    /// The tuple.
    pub tuple: FlowTuple,
    /// Which half.
    pub dir: NatDir,
}

/// A NAT table value: the address and port to rewrite to, and whether the flow is closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NatValue {
    /// Forward: the NAT source address. Reverse: the pod's original address.
    pub addr: [u8; 16],
    /// Forward: the NAT source port. Reverse: the pod's original port.
    pub port: u16,
    /// The flow is in TIME_WAIT: its mapping may be taken over by a new allocation.
    pub time_wait: bool,
    /// With `time_wait`: the sequence number just past the flow's last byte (and FIN) in the
    /// original direction. A new SYN must be past it to take the mapping over.
    pub seq_end: u32,
}

/// Why an insert was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatInsertError {
    /// The key is present; its current value.
    Exists(NatValue),
    /// The table is full.
    Full,
}

/// A NAT table shared by concurrent allocators ([`ShardedNatTable`]). Every method is atomic
/// with respect to the others on the same key.
pub trait NatTable {
    /// Inserts `value` under `key` only if the key is absent (`BPF_NOEXIST`).
    ///
    /// # Errors
    /// [`NatInsertError::Exists`] with the present value, or [`NatInsertError::Full`].
    fn insert_if_absent(&self, key: &NatKey, value: &NatValue) -> Result<(), NatInsertError>;
    /// Replaces the value under `key` with `new` only if it is exactly `old`; whether it did.
    fn compare_and_swap(&self, key: &NatKey, old: &NatValue, new: &NatValue) -> bool;
    /// Removes `key` only if its value is exactly `value`; whether it did.
    fn remove_if(&self, key: &NatKey, value: &NatValue) -> bool;
    /// The value under `key`.
    fn get(&self, key: &NatKey) -> Option<NatValue>;
}

/// The two keys of a flow's NAT pair when translated to `nat_addr:port`.
#[inline(always)]
#[must_use]
pub fn nat_keys(orig: &FlowTuple, nat_addr: [u8; 16], port: u16) -> (NatKey, NatKey) {
    let fwd = NatKey {
        tuple: *orig,
        dir: NatDir::Forward,
    };
    let reply = FlowTuple {
        src: orig.dst,
        src_port: orig.dst_port,
        dst: nat_addr,
        dst_port: port,
        proto: orig.proto,
        family: orig.family,
    };
    (
        fwd,
        NatKey {
            tuple: reply,
            dir: NatDir::Reverse,
        },
    )
}

/// Allocation counters: an attempts histogram, failures and take-overs. Plain integers: the
/// caller keeps one per CPU or thread and sums them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnatCounters {
    /// Successful allocations by attempts needed (bucket `i` counts `2^i ..= 2^(i+1)-1`).
    pub attempts: [u64; ATTEMPT_BUCKETS],
    /// Allocations that found no port.
    pub failures: u64,
    /// Allocations that failed because the table was full.
    pub table_full: u64,
    /// TIME_WAIT mappings taken over.
    pub take_overs: u64,
}

impl SnatCounters {
    /// Records one allocation's outcome.
    pub fn record(&mut self, r: &Result<Allocation, SnatError>) {
        match r {
            Ok(a) => {
                if let Some(c) = self.attempts.get_mut(attempts_bucket(a.attempts)) {
                    *c += 1;
                }
                if a.took_over {
                    self.take_overs += 1;
                }
            }
            Err(SnatError::TableFull) => self.table_full += 1,
            Err(_) => self.failures += 1,
        }
    }
}

/// Allocates a source port on `nat_addr` for the flow `orig` in `table` and publishes its NAT
/// pair, by [`claim_port`].
///
/// Reserving is the reverse insert itself ([`NatTable::insert_if_absent`]); the forward mapping
/// is inserted after it. If another allocator published a forward mapping for the same flow
/// first, ours is withdrawn and theirs returned (`existing`). `syn_seq`: the sequence number of
/// the flow's first packet when it is a TCP SYN, which may then take over a TIME_WAIT mapping
/// ([`may_take_over`]); `None` for anything else.
///
/// # Errors
/// [`SnatError`] when no port could be reserved; the table then holds nothing of this flow.
pub fn allocate<T, R>(
    table: &T,
    rng: &mut R,
    cfg: &SnatConfig,
    orig: &FlowTuple,
    nat_addr: [u8; 16],
    syn_seq: Option<u32>,
) -> Result<Allocation, SnatError>
where
    T: NatTable + ?Sized,
    R: RandomSource + ?Sized,
{
    // A flow that already has its pair keeps it (a retransmitted first packet).
    if let Some(f) = table.get(&NatKey {
        tuple: *orig,
        dir: NatDir::Forward,
    }) {
        return Ok(Allocation {
            port: f.port,
            attempts: 0,
            took_over: false,
            existing: true,
        });
    }
    let back = NatValue {
        addr: orig.src,
        port: orig.src_port,
        ..NatValue::default()
    };
    // The first taken port of the take-over window whose mapping may be taken over, and that
    // mapping as it was seen.
    let noted: Cell<Option<(u16, NatValue)>> = Cell::new(None);
    let a = claim_port(
        cfg,
        rng,
        orig.src_port,
        |_, c| {
            let (_, rev) = nat_keys(orig, nat_addr, c.port);
            match table.insert_if_absent(&rev, &back) {
                Ok(()) => Claim::Reserved,
                Err(NatInsertError::Full) => Claim::Full,
                Err(NatInsertError::Exists(old)) => {
                    if c.may_take_over
                        && noted.get().is_none()
                        && may_take_over(old.time_wait, old.seq_end, syn_seq)
                    {
                        noted.set(Some((c.port, old)));
                    }
                    Claim::Taken
                }
            }
        },
        |_| {
            let (port, old) = noted.get()?;
            let (_, rev) = nat_keys(orig, nat_addr, port);
            // Atomic: only if the mapping is still the one seen in TIME_WAIT (another
            // allocator may have taken it over meanwhile).
            if !table.compare_and_swap(&rev, &old, &back) {
                return None;
            }
            // The old flow's forward half now names a port it no longer owns: remove it (only
            // if it still names this port).
            let old_flow = FlowTuple {
                src: old.addr,
                src_port: old.port,
                ..*orig
            };
            let (old_fwd, _) = nat_keys(&old_flow, nat_addr, port);
            if let Some(v) = table.get(&old_fwd) {
                if v.addr == nat_addr && v.port == port {
                    let _ = table.remove_if(&old_fwd, &v);
                }
            }
            Some(port)
        },
    )?;
    publish(table, orig, &back, nat_addr, a)
}

/// Publishes the forward half of the pair reserved by `a`, or withdraws the reverse half if
/// the flow already has a forward mapping.
fn publish<T: NatTable + ?Sized>(
    table: &T,
    orig: &FlowTuple,
    back: &NatValue,
    nat_addr: [u8; 16],
    a: Allocation,
) -> Result<Allocation, SnatError> {
    let (fwd, rev) = nat_keys(orig, nat_addr, a.port);
    let out = NatValue {
        addr: nat_addr,
        port: a.port,
        ..NatValue::default()
    };
    match table.insert_if_absent(&fwd, &out) {
        Ok(()) => Ok(a),
        Err(NatInsertError::Exists(theirs)) => {
            let _ = table.remove_if(&rev, back);
            Ok(Allocation {
                port: theirs.port,
                took_over: false,
                existing: true,
                ..a
            })
        }
        Err(NatInsertError::Full) => {
            let _ = table.remove_if(&rev, back);
            Err(SnatError::TableFull)
        }
    }
}

/// Marks a flow's NAT pair as TIME_WAIT (its port may then be taken over by a SYN past
/// `seq_end`, the sequence number after the flow's last byte and FIN from the original side),
/// or not. Whether both halves were updated.
pub fn set_time_wait<T: NatTable + ?Sized>(
    table: &T,
    orig: &FlowTuple,
    time_wait: bool,
    seq_end: u32,
) -> bool {
    let fkey = NatKey {
        tuple: *orig,
        dir: NatDir::Forward,
    };
    let Some(f) = table.get(&fkey) else {
        return false;
    };
    let (_, rkey) = nat_keys(orig, f.addr, f.port);
    let nf = NatValue {
        time_wait,
        seq_end,
        ..f
    };
    let ok_f = table.compare_and_swap(&fkey, &f, &nf);
    let ok_r = match table.get(&rkey) {
        Some(r) if r.addr == orig.src && r.port == orig.src_port => table.compare_and_swap(
            &rkey,
            &r,
            &NatValue {
                time_wait,
                seq_end,
                ..r
            },
        ),
        _ => false,
    };
    ok_f && ok_r
}
