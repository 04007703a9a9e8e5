//! Slots as permits: a [`SlotPermit`] is the right to run in one slot, and
//! dropping it frees the slot. No other code marks slots busy or free.
//!
//! A tokio `Semaphore` counts free slots; it is fair, so predictions waiting in
//! the admission queue get slots in the order they arrived, and a newcomer can
//! never overtake them. A free list says *which* slot a permit holds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots, free and busy, and the queue of predictions waiting for one.
#[derive(Debug, Clone)]
pub(crate) struct SlotPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    /// One permit per free slot.
    semaphore: Arc<Semaphore>,
    /// Which slots are free.
    free: Mutex<Vec<usize>>,
    /// Slots that exist and are not poisoned.
    healthy: AtomicUsize,
    /// Predictions waiting in the queue now.
    waiting: AtomicUsize,
    /// How many may wait.
    queue_size: usize,
}

/// The answer to a request for a slot.
#[derive(Debug)]
pub(crate) enum Admit {
    /// A slot was free.
    Now(SlotPermit),
    /// No slot is free; this place in the queue will get one.
    Queued(QueueTicket),
}

/// Why no slot and no place in the queue was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Every slot is busy and there is no queue.
    Busy,
    /// Every slot is busy and the queue is full.
    QueueFull,
}

impl SlotPool {
    /// A pool with no slots yet and a queue of `queue_size`.
    pub(crate) fn new(queue_size: usize) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                semaphore: Arc::new(Semaphore::new(0)),
                free: Mutex::new(Vec::new()),
                healthy: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                queue_size,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.inner.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds slots `0..count`, once the worker has them.
    pub(crate) fn open(&self, count: usize) {
        // Reversed so that slot 0 is taken first.
        self.lock().extend((0..count).rev());
        self.inner.healthy.fetch_add(count, Ordering::SeqCst);
        self.inner.semaphore.add_permits(count);
    }

    /// A free slot, else a place in the queue, else a refusal.
    pub(crate) fn admit(&self) -> Result<Admit, Refusal> {
        if let Ok(permit) = Arc::clone(&self.inner.semaphore).try_acquire_owned() {
            return Ok(Admit::Now(self.permit(permit)));
        }
        if self.inner.queue_size == 0 {
            return Err(Refusal::Busy);
        }
        let queued = self
            .inner
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.inner.queue_size).then_some(n + 1)
            });
        match queued {
            Ok(_) => Ok(Admit::Queued(QueueTicket { pool: self.clone() })),
            Err(_) => Err(Refusal::QueueFull),
        }
    }

    fn permit(&self, permit: OwnedSemaphorePermit) -> SlotPermit {
        let slot = self
            .lock()
            .pop()
            .expect("a semaphore permit always has a free slot");
        SlotPermit {
            pool: self.clone(),
            slot,
            permit: Some(permit),
        }
    }

    /// True when slots exist and none is free.
    pub(crate) fn all_busy(&self) -> bool {
        self.inner.healthy.load(Ordering::SeqCst) > 0
            && self.inner.semaphore.available_permits() == 0
    }

    /// Slots still usable.
    pub(crate) fn healthy(&self) -> usize {
        self.inner.healthy.load(Ordering::SeqCst)
    }
}

/// A place in the admission queue.
#[derive(Debug)]
pub(crate) struct QueueTicket {
    pool: SlotPool,
}

impl QueueTicket {
    /// Waits for this ticket's turn and returns its slot.
    pub(crate) async fn acquire(self) -> Option<SlotPermit> {
        let permit = Arc::clone(&self.pool.inner.semaphore)
            .acquire_owned()
            .await
            .ok()?;
        Some(self.pool.permit(permit))
    }
}

impl Drop for QueueTicket {
    fn drop(&mut self) {
        self.pool.inner.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The right to use one slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct SlotPermit {
    pool: SlotPool,
    slot: usize,
    permit: Option<OwnedSemaphorePermit>,
}

impl SlotPermit {
    /// The slot's index.
    pub(crate) fn slot(&self) -> usize {
        self.slot
    }

    /// Gives the slot up for good: a run in it would not stop.
    pub(crate) fn poison(mut self) {
        if let Some(permit) = self.permit.take() {
            permit.forget();
        }
        self.pool.inner.healthy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            // The index goes back before the permit, so whoever gets the permit
            // finds a free slot.
            self.pool.lock().push(self.slot);
            drop(permit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(admit: Result<Admit, Refusal>) -> SlotPermit {
        match admit {
            Ok(Admit::Now(permit)) => permit,
            other => panic!("expected a free slot, got {other:?}"),
        }
    }

    #[test]
    fn dropping_a_permit_frees_its_slot() {
        let pool = SlotPool::new(0);
        pool.open(2);
        let a = now(pool.admit());
        let b = now(pool.admit());
        assert_ne!(a.slot(), b.slot());
        assert!(pool.all_busy());
        assert_eq!(pool.admit().unwrap_err(), Refusal::Busy);
        let freed = a.slot();
        drop(a);
        assert!(!pool.all_busy());
        assert_eq!(now(pool.admit()).slot(), freed);
    }

    #[tokio::test]
    async fn the_queue_serves_in_order_and_refuses_past_its_size() {
        let pool = SlotPool::new(2);
        pool.open(1);
        let running = now(pool.admit());
        let Ok(Admit::Queued(first)) = pool.admit() else {
            panic!("expected a queue place")
        };
        let Ok(Admit::Queued(second)) = pool.admit() else {
            panic!("expected a queue place")
        };
        assert_eq!(pool.admit().unwrap_err(), Refusal::QueueFull);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, ticket) in [("first", first), ("second", second)] {
            let order = Arc::clone(&order);
            tasks.push(tokio::spawn(async move {
                let permit = ticket.acquire().await.unwrap();
                order.lock().unwrap().push(name);
                drop(permit);
            }));
            tokio::task::yield_now().await;
        }
        drop(running);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["first", "second"]);
    }

    #[test]
    fn a_poisoned_slot_never_comes_back() {
        let pool = SlotPool::new(0);
        pool.open(1);
        now(pool.admit()).poison();
        assert_eq!(pool.healthy(), 0);
        assert_eq!(pool.admit().unwrap_err(), Refusal::Busy);
    }
}
