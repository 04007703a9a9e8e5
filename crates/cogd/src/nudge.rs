//! Scheduling nudges: the few places where cogd steps aside for another
//! task, thread or process, or hands memory back, for speed alone.
//!
//! None of them changes what happens, only when: remove one and every test
//! still passes, but a `make bench` figure gets worse. Each function names
//! the scenario (see `bench/README.md`) that shows what it is worth; measure
//! with that scenario before changing or removing one. They are gathered here
//! so that the code that calls them reads as what it does, and so that
//! whoever tunes the server for another machine finds them all in one place.
//!
//! Not here: `yield_now` in tests, which orders the steps of a test rather
//! than speeding anything up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// Whether this process may run on more than one CPU (its affinity and
/// cgroup quota included). A nudge that keeps a thread busy while another
/// one works is worth it only then: on one CPU it would keep the other from
/// running.
pub(crate) fn several_cpus() -> bool {
    static SEVERAL: OnceLock<bool> = OnceLock::new();
    *SEVERAL.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
}

/// How long a run's task keeps the runtime awake for the worker's first event.
pub(crate) const WATCH_FOR_FIRST_EVENT: Duration = Duration::from_micros(200);

/// Returns once the first event of a run just sent to the worker is there to
/// receive (or its channel has closed), or after [`WATCH_FOR_FIRST_EVENT`].
/// Until then the task yields in a loop (a short busy wait), so the runtime
/// polls its sockets without sleeping: parked in `epoll_wait`, it would be
/// woken by the reply, and on a virtual machine whose idle CPUs halt that
/// wake-up takes about as long as the worker's whole answer to a small
/// prediction. Never on one CPU ([`several_cpus`]).
///
/// Justified by `make bench`'s `yields_1000` (the first `output` event by
/// SSE) and `sequential` (p50), on a machine with two cores; it costs up to
/// [`WATCH_FOR_FIRST_EVENT`] of the server's CPU per prediction.
pub(crate) async fn watch_for_first_event<T>(events: &mpsc::Receiver<T>) {
    if !several_cpus() {
        return;
    }
    let until = Instant::now() + WATCH_FOR_FIRST_EVENT;
    while events.is_empty() && !events.is_closed() && Instant::now() < until {
        tokio::task::yield_now().await;
    }
}

/// Lets the tasks waiting for a prediction that has just ended (the client's
/// reply above all) run before the records that follow its end (registry,
/// metrics, the log line), which are not their business.
///
/// Justified by `make bench`'s `sequential` (p50 and p99): the next request
/// of a client that sends one as soon as it has its reply comes sooner.
pub(crate) async fn let_waiters_answer_first() {
    tokio::task::yield_now().await;
}

/// Lets the run task a stream request just created take its slot and send
/// the run to the worker before the stream reply's head is written: the
/// model starts sooner, and the head goes out with the `start` event in one
/// write.
///
/// Justified by `make bench`'s `yields_1000` (the first `output` event by
/// SSE).
pub(crate) async fn let_the_run_start() {
    tokio::task::yield_now().await;
}

/// Called by a slot's reader once everything it has read has been handed on:
/// lets the run act on it (send the first chunk of a stream to its readers)
/// before the reader reads more. A model that yields faster than that would
/// otherwise keep the reader reading, and its first chunk waiting, for a
/// whole scheduling budget.
///
/// Justified by `make bench`'s `yields_1000` (the first `output` event by
/// SSE), without a loss in `yields_100k` (chunks/s).
pub(crate) async fn let_the_run_act() {
    tokio::task::yield_now().await;
}

/// Gives up the worker thread's CPU once, so that whoever waits for what was
/// just sent (the server, then the client reading the stream) runs now.
/// Called in the worker after a run's first chunk only: a generator that goes
/// on yielding keeps its CPU busy, and on a machine with few cores the reader
/// of that first chunk would otherwise wait for the model's time slice to end.
///
/// Justified by `make bench`'s `yields_1000` (the first `output` event by
/// SSE). Only after the first chunk: giving way after every one costs most of
/// `yields_100k`'s chunks/s.
pub(crate) fn give_way() {
    // SAFETY: sched_yield takes no arguments and cannot fail on Linux.
    unsafe {
        libc::sched_yield();
    }
}

/// How late tokio's timer may fire: it counts in whole milliseconds and
/// rounds a deadline up to the next one.
pub(crate) const TIMER_SLACK: Duration = Duration::from_micros(1200);

/// Sleeps until `at`, within tens of microseconds where the machine has
/// several CPUs: on tokio's timer until [`TIMER_SLACK`] before it, then
/// yielding in a loop (a short busy wait). The batcher waits for a batch's
/// `max_wait` with it, so a lone request's batch goes at `max_wait`, not up
/// to a millisecond and a half later. Never on one CPU ([`several_cpus`]).
///
/// Justified by `make bench`'s `batching` (`lone_added_wait_ms`: with
/// `max_wait_ms=2`, a lone request waited 3.3 ms more than unbatched on the
/// timer alone); it costs up to [`TIMER_SLACK`] of one CPU per batch that
/// waits for its time.
pub(crate) async fn sleep_precisely(at: Instant) {
    if !several_cpus() {
        return tokio::time::sleep_until(at.into()).await;
    }
    if let Some(coarse) = at.checked_sub(TIMER_SLACK) {
        if coarse > Instant::now() {
            tokio::time::sleep_until(coarse.into()).await;
        }
    }
    while Instant::now() < at {
        tokio::task::yield_now().await;
    }
}

/// How many finished predictions between two [`release_free_memory`] calls.
const TRIM_EVERY: u64 = 1000;

/// Counts finished predictions and every [`TRIM_EVERY`] of them hands the
/// memory the allocator holds free back to the system.
#[derive(Debug, Default)]
pub(crate) struct MemoryTrim {
    /// Predictions finished so far.
    finished: AtomicU64,
}

impl MemoryTrim {
    /// Counts one finished prediction; every [`TRIM_EVERY`]th, calls
    /// [`release_free_memory`] on the blocking pool.
    pub(crate) fn finished_one(&self) {
        if self.finished.fetch_add(1, Ordering::Relaxed) % TRIM_EVERY == TRIM_EVERY - 1 {
            tokio::task::spawn_blocking(release_free_memory);
        }
    }
}

/// Hands memory the allocator holds free back to the system
/// (`malloc_trim`). Predictions come and go (and the registry keeps the last
/// thousand), so the heap ends up with free pages between live ones that the
/// allocator would otherwise keep. Costs well under a millisecond, on the
/// blocking pool.
///
/// Justified by `make bench`'s `sequential` (the parent's RSS after its
/// 10,000 predictions).
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::SlotEvent;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_event_is_watched_for_then_left_to_the_run_loop() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        // Sent from elsewhere while the task watches.
        let sender = tokio::spawn(async move {
            tx.send(SlotEvent::Canceled).await.unwrap();
            tx
        });
        watch_for_first_event(&rx).await;
        // Whether it came within the window or not, nothing was taken.
        assert!(matches!(rx.recv().await, Some(SlotEvent::Canceled)));
        // Nothing comes: the watch gives up after its window, never waits on.
        let tx = sender.await.unwrap();
        let watched = Instant::now();
        watch_for_first_event(&rx).await;
        let waited = watched.elapsed();
        if several_cpus() {
            assert!(waited >= WATCH_FOR_FIRST_EVENT, "{waited:?}");
        }
        assert!(rx.is_empty());
        // A closed channel is left to the loop, which ends the run.
        drop(tx);
        watch_for_first_event(&rx).await;
        assert!(rx.recv().await.is_none());
    }
}
