//! Slots as permits: a [`SlotPermit`] is the right to run in one slot, and
//! dropping it frees the slot. No other code marks slots busy or free.
//!
//! A tokio `Semaphore` counts free slots; it is fair, so predictions waiting in
//! the admission queue get slots in the order they arrived, and a newcomer can
//! never overtake them. A free list says *which* slot a permit holds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

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
    /// Which worker the slots belong to; a permit of an earlier worker is
    /// dropped without giving its slot back.
    generation: AtomicUsize,
    /// Predictions waiting in the queue now.
    waiting: AtomicUsize,
    /// How many may wait.
    queue_size: usize,
    /// Woken each time a slot may have become free (a permit given back,
    /// or a worker's slots opened), for [`SlotPool::wait_for_free`].
    freed: Notify,
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
                generation: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                queue_size,
                freed: Notify::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.inner.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes slots `0..count` of a ready worker the pool's slots, replacing
    /// those of any earlier worker (a restart brings back poisoned slots too).
    pub(crate) fn open(&self, count: usize) {
        let mut free = self.lock();
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        // Permits of the earlier worker still free go; held ones are dropped
        // without return (see `SlotPermit::drop`).
        let stale = free.len();
        self.inner.semaphore.forget_permits(stale);
        free.clear();
        // Reversed so that slot 0 is taken first.
        free.extend((0..count).rev());
        self.inner.healthy.store(count, Ordering::SeqCst);
        self.inner.semaphore.add_permits(count);
        drop(free);
        self.inner.freed.notify_waiters();
    }

    /// Takes the slots away from a worker that is gone: none is free until
    /// the next worker's are opened, and permits still held are stale.
    pub(crate) fn withdraw(&self) {
        self.open(0);
    }

    /// Takes the slots away for good: predictions waiting for one are told
    /// ([`QueueTicket::acquire`] returns `None`).
    pub(crate) fn close(&self) {
        self.withdraw();
        self.inner.semaphore.close();
    }

    /// A free slot, else a place in the queue, else a refusal.
    pub(crate) fn admit(&self) -> Result<Admit, Refusal> {
        if let Ok(permit) = Arc::clone(&self.inner.semaphore).try_acquire_owned() {
            if let Some(permit) = self.permit(permit) {
                return Ok(Admit::Now(permit));
            }
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

    /// Pairs a semaphore permit with a free slot. `None` only for a permit
    /// left over from a worker that has been replaced, which is dropped.
    fn permit(&self, permit: OwnedSemaphorePermit) -> Option<SlotPermit> {
        let mut free = self.lock();
        let Some(slot) = free.pop() else {
            permit.forget();
            return None;
        };
        Some(SlotPermit {
            pool: self.clone(),
            slot,
            generation: self.inner.generation.load(Ordering::SeqCst),
            permit: Some(permit),
        })
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

    /// Slots free now (a prediction admitted now would run at once).
    pub(crate) fn free(&self) -> usize {
        self.inner.semaphore.available_permits()
    }

    /// Waits until at least one slot is free and returns how many are.
    pub(crate) async fn wait_for_free(&self) -> usize {
        loop {
            let freed = self.inner.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a slot freed in between wakes it.
            freed.as_mut().enable();
            let free = self.free();
            if free > 0 {
                return free;
            }
            freed.await;
        }
    }

    /// Usable slots running a prediction now.
    pub(crate) fn busy(&self) -> usize {
        self.healthy()
            .saturating_sub(self.inner.semaphore.available_permits())
    }
}

/// A place in the admission queue.
#[derive(Debug)]
pub(crate) struct QueueTicket {
    pool: SlotPool,
}

impl QueueTicket {
    /// Waits for this ticket's turn and returns its slot; `None` when the
    /// pool has closed.
    pub(crate) async fn acquire(self) -> Option<SlotPermit> {
        loop {
            let permit = Arc::clone(&self.pool.inner.semaphore)
                .acquire_owned()
                .await
                .ok()?;
            if let Some(permit) = self.pool.permit(permit) {
                return Some(permit);
            }
        }
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
    /// The worker this slot belongs to.
    generation: usize,
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
        if self.is_current() {
            self.pool.inner.healthy.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// False once the worker this slot belonged to has gone.
    pub(crate) fn is_current(&self) -> bool {
        self.generation == self.pool.inner.generation.load(Ordering::SeqCst)
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            let mut free = self.pool.lock();
            if self.is_current() {
                // The index goes back before the permit, so whoever gets the
                // permit finds a free slot.
                free.push(self.slot);
                drop(free);
                drop(permit);
                self.pool.inner.freed.notify_waiters();
            } else {
                // A slot of a worker that is gone: the new worker's slots
                // were counted afresh.
                permit.forget();
            }
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

    #[tokio::test]
    async fn a_waiter_for_a_free_slot_wakes_when_one_is_given_back() {
        let pool = SlotPool::new(0);
        let waiting = tokio::spawn({
            let pool = pool.clone();
            async move { pool.wait_for_free().await }
        });
        tokio::task::yield_now().await;
        pool.open(1);
        assert_eq!(waiting.await.unwrap(), 1);
        let held = now(pool.admit());
        assert_eq!(pool.free(), 0);
        let waiting = tokio::spawn({
            let pool = pool.clone();
            async move { pool.wait_for_free().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(held);
        assert_eq!(waiting.await.unwrap(), 1);
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
        assert_eq!(pool.busy(), 2);
        let freed = a.slot();
        drop(a);
        assert!(!pool.all_busy());
        assert_eq!(pool.busy(), 1);
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
    fn a_new_worker_replaces_the_slots_of_the_old_one() {
        let pool = SlotPool::new(0);
        pool.open(2);
        let held = now(pool.admit());
        pool.open(2);
        // The old worker's permit goes without adding a third slot.
        drop(held);
        let a = now(pool.admit());
        let b = now(pool.admit());
        assert_ne!(a.slot(), b.slot());
        assert_eq!(pool.admit().unwrap_err(), Refusal::Busy);
    }

    #[tokio::test]
    async fn the_queue_waits_through_a_withdrawal_for_the_next_worker() {
        let pool = SlotPool::new(1);
        pool.open(1);
        let running = now(pool.admit());
        let Ok(Admit::Queued(waiting)) = pool.admit() else {
            panic!("expected a queue place")
        };
        let waiting = tokio::spawn(waiting.acquire());
        // The worker dies under the running prediction: its slot is not
        // handed to the one waiting.
        pool.withdraw();
        assert!(!running.is_current());
        drop(running);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(pool.healthy(), 0);
        // The next worker's slot goes to it.
        pool.open(1);
        let permit = waiting.await.unwrap().expect("a slot of the new worker");
        assert!(permit.is_current());
        assert!(pool.all_busy());
    }

    #[tokio::test]
    async fn a_closed_pool_tells_the_waiting() {
        let pool = SlotPool::new(1);
        pool.open(1);
        let _running = now(pool.admit());
        let Ok(Admit::Queued(waiting)) = pool.admit() else {
            panic!("expected a queue place")
        };
        pool.close();
        assert!(waiting.acquire().await.is_none());
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
