//! Pinned catalog versions: which versions readers are reading right now.
//!
//! A reader holds a [`Pin`] on the version it read for as long as it reads that version's files.
//! The file GC deletes a file that a compaction replaced in version `v` only once no pin is
//! older than `v` (and a grace period has passed, for readers that have not pinned yet).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The registry of pinned versions, shared by readers and the file GC.
#[derive(Debug, Clone, Default)]
pub struct Pins {
    counts: Arc<Mutex<BTreeMap<u64, usize>>>,
}

impl Pins {
    /// Pins `version` until the returned guard is dropped.
    pub fn pin(&self, version: u64) -> Pin {
        *self
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(version)
            .or_insert(0) += 1;
        Pin {
            pins: self.clone(),
            version,
        }
    }

    /// The oldest pinned version, if any reader holds one.
    pub fn oldest(&self) -> Option<u64> {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .next()
            .copied()
    }
}

/// A reader's hold on a catalog version; released on drop.
#[derive(Debug)]
pub struct Pin {
    pins: Pins,
    version: u64,
}

impl Pin {
    /// The pinned version.
    pub fn version(&self) -> u64 {
        self.version
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut counts = self
            .pins
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.version) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.version);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_follows_live_pins() {
        let pins = Pins::default();
        assert_eq!(pins.oldest(), None);
        let a = pins.pin(7);
        let b = pins.pin(3);
        let c = pins.pin(3);
        assert_eq!(pins.oldest(), Some(3));
        drop(b);
        assert_eq!(pins.oldest(), Some(3));
        drop(c);
        assert_eq!(pins.oldest(), Some(7));
        assert_eq!(a.version(), 7);
        drop(a);
        assert_eq!(pins.oldest(), None);
    }
}
