//! The userspace packet: a caller's buffer with headroom before the frame.

use super::AdjustHead;
use lb_api::wire::PacketAccess;

/// [`PacketAccess`] + [`AdjustHead`] over a caller's buffer with headroom before the frame.
#[derive(Debug)]
pub struct HeadroomPacket<'a> {
    buf: &'a mut [u8],
    start: usize,
    end: usize,
    /// See [`PacketAccess::partial_by_field`].
    partial_by_field: bool,
}

impl<'a> HeadroomPacket<'a> {
    /// A frame of `len` bytes stored at `buf[headroom..headroom + len]`. `None` if it does not fit.
    pub fn new(buf: &'a mut [u8], headroom: usize, len: usize) -> Option<Self> {
        let end = headroom.checked_add(len)?;
        if end > buf.len() {
            return None;
        }
        Some(Self {
            buf,
            start: headroom,
            end,
            partial_by_field: false,
        })
    }

    /// The packet as XDP sees it on a device that hands up local senders' packets as they are
    /// (a veth): its checksum may be partial, and only its field tells
    /// ([`PacketAccess::partial_by_field`]).
    #[must_use]
    pub fn on_virtual_device(mut self, virtual_device: bool) -> Self {
        self.partial_by_field = virtual_device;
        self
    }

    /// The frame's bytes.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or(&[])
    }
}

impl PacketAccess for HeadroomPacket<'_> {
    fn len(&self) -> usize {
        self.end - self.start
    }

    fn load<T: zerocopy::FromBytes + zerocopy::KnownLayout + zerocopy::Immutable + Copy>(
        &self,
        offset: usize,
    ) -> Option<T> {
        let a = self.start.checked_add(offset)?;
        let b = a.checked_add(core::mem::size_of::<T>())?;
        if b > self.end {
            return None;
        }
        T::read_from_bytes(self.buf.get(a..b)?).ok()
    }

    fn store<T: zerocopy::IntoBytes + zerocopy::Immutable>(
        &mut self,
        offset: usize,
        value: &T,
    ) -> Option<()> {
        let a = self.start.checked_add(offset)?;
        let b = a.checked_add(core::mem::size_of::<T>())?;
        if b > self.end {
            return None;
        }
        self.buf.get_mut(a..b)?.copy_from_slice(value.as_bytes());
        Some(())
    }

    fn partial_by_field(&self) -> bool {
        self.partial_by_field
    }

    const MAY_HIDE_PARTIAL: bool = true;
}

impl AdjustHead for HeadroomPacket<'_> {
    fn adjust_head(&mut self, delta: i32) -> Option<()> {
        let start = if delta < 0 {
            self.start.checked_sub(delta.unsigned_abs() as usize)?
        } else {
            self.start.checked_add(delta as usize)?
        };
        if start > self.end {
            return None;
        }
        self.start = start;
        Some(())
    }

    fn adjust_tail(&mut self, delta: i32) -> Option<()> {
        let end = if delta < 0 {
            self.end.checked_sub(delta.unsigned_abs() as usize)?
        } else {
            self.end.checked_add(delta as usize)?
        };
        if end < self.start || end > self.buf.len() {
            return None;
        }
        self.end = end;
        Some(())
    }
}
