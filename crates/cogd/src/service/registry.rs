//! The predictions the server knows by id: every running one, and a bounded
//! number of finished ones, so a repeated idempotent `PUT` returns the same
//! prediction instead of running it again.
//!
//! Finished predictions are bounded in count, in age, and in the bytes they
//! hold (input, output, logs): a model that fills every prediction's logs to
//! the cap must not make the server keep a thousand of them. A finished
//! prediction without a stream is kept as its final state alone, without the
//! channels that followed it while it ran: they are most of a small
//! prediction's memory, and the thousand kept are most of the heap of a
//! server that runs small predictions.
//!
//! A finished prediction evicted by the count or byte bound before its time
//! is up leaves a [`Tombstone`] (its id, status and completion time) for the
//! rest of [`KEEP_FOR`]: a repeated `PUT` of its id must never run the model
//! a second time, and is answered with the tombstone instead (410 Gone).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::prediction::{Prediction, PredictionHandle, Status};

/// Finished predictions kept at most.
const KEEP_FINISHED: usize = 1000;
/// How long a finished prediction is kept.
const KEEP_FOR: Duration = Duration::from_secs(10 * 60);
/// The most bytes finished predictions hold together; the newest one is kept
/// whatever its size.
const KEEP_BYTES: usize = 256 * 1024 * 1024;

/// Tombstones kept at most (about 100 bytes each); past it the oldest go,
/// as a tombstone is a guard and not a record.
const KEEP_TOMBSTONES: usize = 100_000;

/// What is left of a finished prediction evicted before its time was up.
#[derive(Debug, Clone)]
pub struct Tombstone {
    /// How it ended.
    pub status: Status,
    /// When it ended.
    pub completed_at: Option<DateTime<Utc>>,
}

/// One prediction as the registry keeps it.
enum Kept {
    /// Running, or finished with a stream that readers attaching late replay.
    Live(PredictionHandle),
    /// Finished, with no stream: its final state is all there is to show.
    Finished(Box<Prediction>),
}

#[derive(Default)]
pub(crate) struct Registry {
    /// Every kept prediction by id; the id's text is shared with `finished`.
    by_id: HashMap<Arc<str>, Kept>,
    /// Finished ids, oldest first, with when they finished and their size.
    finished: VecDeque<(Instant, Arc<str>, usize)>,
    /// The sum of the sizes in `finished`.
    finished_bytes: usize,
    /// Evicted predictions by id, until their time is up.
    tombstones: HashMap<Arc<str>, Tombstone>,
    /// Tombstone ids, oldest first, with when their prediction finished.
    tombstone_order: VecDeque<(Instant, Arc<str>)>,
}

impl Registry {
    /// The prediction with this id. A finished one kept as its final state
    /// comes back in a new handle, already terminal: waiting on it returns at
    /// once, and canceling it does nothing, as for any finished prediction.
    pub(crate) fn get(&self, id: &str) -> Option<PredictionHandle> {
        match self.by_id.get(id)? {
            Kept::Live(handle) => Some(handle.clone()),
            Kept::Finished(prediction) => Some(PredictionHandle::new((**prediction).clone())),
        }
    }

    /// What is left of `id` if it finished and was evicted before its time.
    pub(crate) fn evicted(&self, id: &str) -> Option<Tombstone> {
        self.tombstones.get(id).cloned()
    }

    pub(crate) fn insert(&mut self, id: String, handle: PredictionHandle) {
        self.by_id.insert(id.into(), Kept::Live(handle));
    }

    /// Every prediction not yet finished.
    pub(crate) fn unfinished(&self) -> Vec<PredictionHandle> {
        self.by_id
            .values()
            .filter_map(|kept| match kept {
                Kept::Live(handle) if !handle.snapshot().status.is_terminal() => {
                    Some(handle.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// Marks `id` finished; it stays findable for a while.
    pub(crate) fn finished(&mut self, id: &str) {
        let now = Instant::now();
        let Some((id, Kept::Live(handle))) = self.by_id.get_key_value(id) else {
            return;
        };
        let id = Arc::clone(id);
        let size = handle.size();
        if !handle.has_stream() {
            let last = Kept::Finished(Box::new(handle.snapshot()));
            self.by_id.insert(Arc::clone(&id), last);
        }
        self.finished.push_back((now, id, size));
        self.finished_bytes += size;
        while let Some((at, _, _)) = self.finished.front() {
            let within = self.finished.len() <= KEEP_FINISHED
                && now.duration_since(*at) < KEEP_FOR
                && (self.finished_bytes <= KEEP_BYTES || self.finished.len() == 1);
            if within {
                break;
            }
            let (at, old, size) = self.finished.pop_front().expect("front exists");
            self.finished_bytes -= size;
            let last = self.by_id.remove(&old);
            if now.duration_since(at) < KEEP_FOR {
                if let Some(last) = last {
                    self.bury(at, old, last);
                }
            }
        }
        self.expire_tombstones(now);
    }

    /// Leaves a tombstone for `id`, which finished `at` and was evicted.
    fn bury(&mut self, at: Instant, id: Arc<str>, last: Kept) {
        let (status, completed_at) = match last {
            Kept::Live(handle) => {
                let last = handle.snapshot();
                (last.status, last.completed_at)
            }
            Kept::Finished(last) => (last.status, last.completed_at),
        };
        let tombstone = Tombstone {
            status,
            completed_at,
        };
        self.tombstones.insert(Arc::clone(&id), tombstone);
        self.tombstone_order.push_back((at, id));
    }

    /// Drops the tombstones whose time is up, and the oldest past the bound.
    fn expire_tombstones(&mut self, now: Instant) {
        while let Some((at, _)) = self.tombstone_order.front() {
            if now.duration_since(*at) < KEEP_FOR && self.tombstone_order.len() <= KEEP_TOMBSTONES {
                break;
            }
            let (_, id) = self.tombstone_order.pop_front().expect("front exists");
            self.tombstones.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prediction::{JsonText, Outcome, StreamEvent};

    fn handle(id: &str) -> PredictionHandle {
        PredictionHandle::new(Prediction::new(id.into(), &serde_json::json!({}), None))
    }

    #[test]
    fn finished_predictions_are_kept_up_to_the_bound() {
        let mut registry = Registry::default();
        for i in 0..KEEP_FINISHED + 5 {
            let id = format!("p{i}");
            registry.insert(id.clone(), handle(&id));
            registry.finished(&id);
        }
        assert!(registry.get("p0").is_none());
        assert!(registry.get("p4").is_none());
        assert!(registry.get("p5").is_some());
        assert_eq!(registry.by_id.len(), KEEP_FINISHED);
        // The evicted leave tombstones; the kept do not need one.
        let tombstone = registry.evicted("p0").expect("a tombstone");
        assert_eq!(tombstone.status, Status::Starting);
        assert!(registry.evicted("p5").is_none());
        assert_eq!(registry.tombstones.len(), 5);
    }

    #[test]
    fn finished_predictions_are_kept_up_to_a_total_size() {
        let mut registry = Registry::default();
        // Four of these are just over the bound.
        let big = serde_json::json!("x".repeat(KEEP_BYTES / 4));
        for i in 0..5 {
            let id = format!("p{i}");
            let prediction = Prediction::new(id.clone(), &big, None);
            registry.insert(id.clone(), PredictionHandle::new(prediction));
            registry.finished(&id);
        }
        assert!(registry.get("p1").is_none());
        assert!(registry.get("p2").is_some() && registry.get("p4").is_some());
        assert!(registry.finished_bytes <= KEEP_BYTES);
    }

    #[test]
    fn a_finished_prediction_is_kept_as_its_final_state() {
        let mut registry = Registry::default();
        let running = handle("plain");
        registry.insert("plain".into(), running.clone());
        running.update(|p| {
            p.logs.push_str("hello\n");
            p.finish(Outcome::Succeeded {
                predict_time: 0.5,
                is_stream: false,
            })
        });
        registry.finished("plain");
        assert!(matches!(registry.by_id["plain"], Kept::Finished(_)));
        let found = registry.get("plain").expect("kept").snapshot();
        assert_eq!(found.to_json(), running.snapshot().to_json());
        assert_eq!(found.status, Status::Succeeded);
        assert!(registry.unfinished().is_empty());
    }

    #[test]
    fn a_finished_stream_stays_live_for_late_readers() {
        let mut registry = Registry::default();
        let prediction = Prediction::new("streamed".into(), &serde_json::json!({}), None);
        let streamed = PredictionHandle::with_stream(prediction, 8);
        registry.insert("streamed".into(), streamed.clone());
        let chunk = JsonText::from(&serde_json::json!("a"));
        streamed.publish(StreamEvent::output(&chunk, 0));
        streamed.update(|p| p.finish(Outcome::Canceled));
        registry.finished("streamed");
        let found = registry.get("streamed").expect("kept");
        let replay = found.subscribe_stream().expect("the stream is kept");
        assert_eq!(replay.history.len(), 1);
    }
}
