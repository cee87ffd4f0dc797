//! Backend selection.

use lb_api::flow::FlowTuple;

/// The backend slot for a new flow: its seeded flow hash modulo the number of slots, or `None`
/// when the service has no backend.
///
/// The choice depends only on the tuple and the seed, so a flow picked up mid-stream (after a
/// restart, or on another node with the same backends) lands on the same backend.
#[inline(always)]
#[must_use]
pub fn select_slot(tuple: &FlowTuple, seed: u32, backend_count: u32) -> Option<u32> {
    if backend_count == 0 {
        return None;
    }
    Some(tuple.hash(seed) % backend_count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_service_has_no_slot_and_slots_stay_in_range() {
        let t = FlowTuple::default();
        assert_eq!(select_slot(&t, 1, 0), None);
        for n in 1..20 {
            assert!(select_slot(&t, 1, n).unwrap() < n);
        }
    }
}
