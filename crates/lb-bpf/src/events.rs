//! Drop events: the programs' ring buffer, drained into [`DropEvent`]s.

use std::mem::size_of;

use aya::maps::{MapData, RingBuf};
use lb_api::events::DropEvent;
use lb_api::tables::DROP_EVENTS;
use zerocopy::TryFromBytes;

use crate::{Error, KernelDatapath};

impl KernelDatapath {
    /// The drop events the programs recorded since the last call, oldest first: one per dropped
    /// packet, with its reason, its flow as far as it was parsed, the time (the datapath's
    /// clock) and the interface. The same call exists on the userspace engine
    /// (`lb_datapath::engine::Engine::drain_drop_events`).
    ///
    /// The ring holds 4095 events; when it is full the programs lose new events, counted as
    /// `Counter::DropEventsLost` (drops are always counted). Drain at least as often as that many
    /// drops can happen. The ring is not pinned: across a loader restart, events recorded by the
    /// old programs before the swap are lost with the old ring.
    ///
    /// # Errors
    /// [`Error::Map`] if the ring cannot be mapped; [`Error::DropEventLayout`] if a record does not
    /// decode (a program of another build writing into this ring).
    pub fn drain_drop_events(&mut self) -> Result<Vec<DropEvent>, Error> {
        // A record takes an 8-byte header and the event (56 B, a multiple of 8): one more than
        // fits the ring, so one call empties a full ring.
        let max_per_call = self.sizes.drop_events_bytes as usize / (8 + size_of::<DropEvent>()) + 1;
        let map_err = |source| Error::Map {
            map: DROP_EVENTS.name,
            source,
        };
        let mut ring: RingBuf<&mut MapData> =
            RingBuf::try_from(self.map(DROP_EVENTS)?).map_err(map_err)?;
        let mut events = Vec::new();
        for _ in 0..max_per_call {
            let Some(item) = ring.next() else {
                break;
            };
            let ev = DropEvent::try_read_from_bytes(&item).map_err(|_| Error::DropEventLayout {
                len: item.len(),
                reason_code: item
                    .get(8..12)
                    .and_then(|b| b.try_into().ok())
                    .map_or(u32::MAX, u32::from_ne_bytes),
            })?;
            events.push(ev);
        }
        Ok(events)
    }
}
