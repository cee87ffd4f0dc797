//! The counters: the per-CPU counter table, summed over CPUs into a [`CounterSnapshot`].

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use lb_api::counters::{CounterSnapshot, COUNTER_SLOTS};
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
