//! The counters: the per-CPU counter table, summed over CPUs into a [`CounterSnapshot`].

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use lb_api::counters::{Counter, CounterSnapshot, COUNTER_SLOTS};
use lb_api::tables::COUNTERS;

use crate::{Error, KernelDatapath};

impl KernelDatapath {
    /// The counters, summed over CPUs.
    ///
    /// # Errors
    /// [`Error::Map`] if the map cannot be read.
    pub fn counters(&self) -> Result<CounterSnapshot, Error> {
        let map_err = |source| Error::Map {
            map: COUNTERS.name,
            source,
        };
        let a: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map_ro(COUNTERS)?).map_err(map_err)?;
        let mut snap = CounterSnapshot::default();
        for slot in 0..COUNTER_SLOTS {
            let per_cpu = a.get(&slot, 0).map_err(map_err)?;
            if let Some(v) = snap.0.get_mut(slot as usize) {
                *v = per_cpu.iter().sum();
            }
        }
        Ok(snap)
    }

    /// Adds `n` to `counter` (in the first CPU's slot; readers sum over CPUs): for what the
    /// control plane counts, such as flows it deleted. Only the control plane writes such a
    /// counter, so the read and write of its slot race with no packet.
    ///
    /// # Errors
    /// [`Error::Map`] if the map cannot be read or written.
    pub fn add_to_counter(&mut self, counter: Counter, n: u64) -> Result<(), Error> {
        let map_err = |source| Error::Map {
            map: COUNTERS.name,
            source,
        };
        let mut a: PerCpuArray<&mut MapData, u64> =
            PerCpuArray::try_from(self.map(COUNTERS)?).map_err(map_err)?;
        let slot = counter.slot();
        let mut values: Vec<u64> = a.get(&slot, 0).map_err(map_err)?.iter().copied().collect();
        if let Some(first) = values.first_mut() {
            *first = first.saturating_add(n);
        }
        let values = PerCpuValues::try_from(values).map_err(|source| Error::Cpus { source })?;
        a.set(slot, values, 0).map_err(map_err)
    }

    /// Zeroes every counter.
    ///
    /// # Errors
    /// [`Error::Cpus`] if the possible CPUs cannot be read; [`Error::Map`] if the map cannot be
    /// written.
    pub fn reset_counters(&mut self) -> Result<(), Error> {
        let ncpus = aya::util::nr_cpus().map_err(|(_, source)| Error::Cpus { source })?;
        let map_err = |source| Error::Map {
            map: COUNTERS.name,
            source,
        };
        let mut a: PerCpuArray<&mut MapData, u64> =
            PerCpuArray::try_from(self.map(COUNTERS)?).map_err(map_err)?;
        for slot in 0..COUNTER_SLOTS {
            let zeros = PerCpuValues::try_from(vec![0u64; ncpus])
                .map_err(|source| Error::Cpus { source })?;
            a.set(slot, zeros, 0).map_err(map_err)?;
        }
        Ok(())
    }
}
