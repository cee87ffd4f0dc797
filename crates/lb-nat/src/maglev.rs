//! Maglev consistent hashing (Eisenbud et al., NSDI 2016).
//!
//! A Maglev table has a prime number `M` of entries, each naming a backend. Each backend walks its
//! own permutation of `0..M` (an offset and a skip derived from its identity) and claims the next
//! free entry on its turn; a backend of weight `w` takes `w` turns for every turn of a backend of
//! weight 1. Removing one of `N` backends re-fills only (about) its own `M/N` entries, so only
//! about `1/N` of flows move, and every backend owns `M/N ± 1` entries (balance).
//!
//! Generation (`lb_control::maglev_table`) runs in the control plane. Lookup ([`maglev_lookup`])
//! is `entry[hash % M]`: in the datapath the table *is* the service's backend slot array (slot `i`
//! holds the backend of entry `i`, `backend_count = M`), so [`select_slot`](crate::select_slot)
//! over those slots is exactly a Maglev lookup and the kernel needs no extra code or map.

/// The backend index of `hash` in a Maglev table, or `None` for an empty table. `no_std`,
/// constant time, no loop.
#[inline(always)]
#[must_use]
pub fn maglev_lookup(table: &[u32], hash: u32) -> Option<u32> {
    let m = table.len();
    if m == 0 {
        return None;
    }
    table.get(hash as usize % m).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_the_entry_at_the_hash_modulo_the_size() {
        let table = [4, 0, 2, 1, 3];
        assert_eq!(maglev_lookup(&table, 7), Some(2));
        assert_eq!(maglev_lookup(&table, 5), Some(4));
        assert_eq!(
            maglev_lookup(&table, u32::MAX),
            Some(table[u32::MAX as usize % 5])
        );
        assert_eq!(maglev_lookup(&[], 5), None);
    }

    #[test]
    fn lookup_is_the_slot_selection_of_the_datapath() {
        let table: [u32; 7] = [3, 1, 4, 1, 5, 9, 2];
        let tuple = lb_api::flow::FlowTuple::default();
        let slot = crate::select_slot(&tuple, 3, table.len() as u32).unwrap();
        assert_eq!(
            maglev_lookup(&table, tuple.hash(3)),
            Some(table[slot as usize])
        );
    }
}
