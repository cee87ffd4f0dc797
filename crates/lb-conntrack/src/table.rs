//! The conntrack table abstraction and its userspace implementation.

use lb_api::abi::{CtEntry, CtKey};

/// How an insert treats an existing entry under the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertMode {
    /// Fail with [`InsertError::Exists`] if the key is present (`BPF_NOEXIST`): the atomic
    /// "reserve" step of an allocation.
    NoExist,
    /// Create or overwrite (`BPF_ANY`).
    Any,
}

/// Why an insert was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// An entry with this key exists (with [`InsertMode::NoExist`]).
    Exists,
    /// The table is at capacity.
    Full,
    /// Another error code from the kernel map.
    Other(i32),
}

/// A conntrack table: the kernel's hash map or a userspace table.
///
/// Methods take `&mut self` so that userspace tables need no interior mutability; the kernel
/// implementation is a zero-sized handle on a global map.
pub trait ConntrackTable {
    /// The entry under `key`, for in-place update.
    fn get_mut(&mut self, key: &CtKey) -> Option<&mut CtEntry>;
    /// Inserts `entry` under `key`.
    ///
    /// # Errors
    /// [`InsertError`] when the key exists (with [`InsertMode::NoExist`]) or the table is full.
    fn insert(&mut self, key: &CtKey, entry: &CtEntry, mode: InsertMode)
        -> Result<(), InsertError>;
    /// Removes the entry under `key`; whether one was there.
    fn remove(&mut self, key: &CtKey) -> bool;
}

#[cfg(feature = "std")]
mod hash {
    use super::{ConntrackTable, InsertError, InsertMode};
    use hashbrown::HashMap;
    use lb_api::abi::{CtEntry, CtKey};

    /// Userspace conntrack table: a hashbrown map allocated once at its capacity, refusing inserts
    /// beyond it (like a preallocated kernel hash map), so no packet allocates.
    #[derive(Debug, Clone)]
    pub struct HashConntrackTable {
        map: HashMap<CtKey, CtEntry>,
        capacity: usize,
    }

    impl HashConntrackTable {
        /// A table holding at most `capacity` entries.
        #[must_use]
        pub fn with_capacity(capacity: usize) -> Self {
            Self {
                map: HashMap::with_capacity(capacity),
                capacity,
            }
        }

        /// Maximum number of entries.
        #[must_use]
        pub fn capacity(&self) -> usize {
            self.capacity
        }

        /// Number of entries.
        #[must_use]
        pub fn len(&self) -> usize {
            self.map.len()
        }

        /// Whether the table is empty.
        #[must_use]
        pub fn is_empty(&self) -> bool {
            self.map.is_empty()
        }

        /// All entries, in no particular order.
        pub fn iter(&self) -> impl Iterator<Item = (&CtKey, &CtEntry)> {
            self.map.iter()
        }

        /// The entry under `key`.
        #[must_use]
        pub fn get(&self, key: &CtKey) -> Option<&CtEntry> {
            self.map.get(key)
        }
    }

    impl ConntrackTable for HashConntrackTable {
        fn get_mut(&mut self, key: &CtKey) -> Option<&mut CtEntry> {
            self.map.get_mut(key)
        }

        fn insert(
            &mut self,
            key: &CtKey,
            entry: &CtEntry,
            mode: InsertMode,
        ) -> Result<(), InsertError> {
            if let Some(e) = self.map.get_mut(key) {
                return match mode {
                    InsertMode::NoExist => Err(InsertError::Exists),
                    InsertMode::Any => {
                        *e = *entry;
                        Ok(())
                    }
                };
            }
            if self.map.len() >= self.capacity {
                return Err(InsertError::Full);
            }
            self.map.insert(*key, *entry);
            Ok(())
        }

        fn remove(&mut self, key: &CtKey) -> bool {
            self.map.remove(key).is_some()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn key(p: u16) -> CtKey {
            CtKey {
                src_port: p,
                proto: 6,
                family: 4,
                ..Default::default()
            }
        }

        #[test]
        fn capacity_is_enforced_and_noexist_is_honoured() {
            let mut t = HashConntrackTable::with_capacity(2);
            let e = CtEntry::default();
            t.insert(&key(1), &e, InsertMode::NoExist).unwrap();
            assert_eq!(
                t.insert(&key(1), &e, InsertMode::NoExist),
                Err(InsertError::Exists)
            );
            t.insert(&key(1), &e, InsertMode::Any).unwrap();
            t.insert(&key(2), &e, InsertMode::NoExist).unwrap();
            assert_eq!(
                t.insert(&key(3), &e, InsertMode::Any),
                Err(InsertError::Full)
            );
            assert!(t.remove(&key(2)));
            t.insert(&key(3), &e, InsertMode::Any).unwrap();
            assert_eq!(t.len(), 2);
        }
    }
}

#[cfg(feature = "std")]
pub use hash::HashConntrackTable;
