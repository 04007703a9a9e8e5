//! Slots as permits: a [`SlotPermit`] is the right to run in one slot, and
//! dropping it frees the slot. No other code marks slots busy or free.

use std::sync::{Arc, Mutex};

/// The free slots.
#[derive(Debug, Clone)]
pub(crate) struct SlotPool {
    free: Arc<Mutex<Vec<usize>>>,
}

impl SlotPool {
    /// A pool of `count` free slots.
    pub(crate) fn new(count: usize) -> Self {
        Self {
            // Reversed so that slot 0 is taken first.
            free: Arc::new(Mutex::new((0..count).rev().collect())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a free slot, or `None` when all are busy.
    pub(crate) fn try_acquire(&self) -> Option<SlotPermit> {
        let slot = self.lock().pop()?;
        Some(SlotPermit {
            pool: self.clone(),
            slot,
        })
    }

    /// True when no slot is free.
    pub(crate) fn all_busy(&self) -> bool {
        self.lock().is_empty()
    }
}

/// The right to use one slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct SlotPermit {
    pool: SlotPool,
    slot: usize,
}

impl SlotPermit {
    /// The slot's index.
    pub(crate) fn slot(&self) -> usize {
        self.slot
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        self.pool.lock().push(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_a_permit_frees_its_slot() {
        let pool = SlotPool::new(2);
        let a = pool.try_acquire().unwrap();
        let b = pool.try_acquire().unwrap();
        assert_ne!(a.slot(), b.slot());
        assert!(pool.all_busy());
        assert!(pool.try_acquire().is_none());
        let freed = a.slot();
        drop(a);
        assert!(!pool.all_busy());
        assert_eq!(pool.try_acquire().unwrap().slot(), freed);
    }
}
