//! The predictions the server knows by id: every running one, and a bounded
//! number of finished ones, so a repeated idempotent `PUT` returns the same
//! prediction instead of running it again.
//!
//! Finished predictions are bounded in count, in age, and in the bytes they
//! hold (input, output, logs): a model that fills every prediction's logs to
//! the cap must not make the server keep a thousand of them.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::prediction::PredictionHandle;

/// Finished predictions kept at most.
const KEEP_FINISHED: usize = 1000;
/// How long a finished prediction is kept.
const KEEP_FOR: Duration = Duration::from_secs(10 * 60);
/// The most bytes finished predictions hold together; the newest one is kept
/// whatever its size.
const KEEP_BYTES: usize = 256 * 1024 * 1024;

#[derive(Default)]
pub(crate) struct Registry {
    by_id: HashMap<String, PredictionHandle>,
    /// Finished ids, oldest first, with when they finished and their size.
    finished: VecDeque<(Instant, String, usize)>,
    /// The sum of the sizes in `finished`.
    finished_bytes: usize,
}

impl Registry {
    pub(crate) fn get(&self, id: &str) -> Option<PredictionHandle> {
        self.by_id.get(id).cloned()
    }

    pub(crate) fn insert(&mut self, id: String, handle: PredictionHandle) {
        self.by_id.insert(id, handle);
    }

    /// Every prediction not yet finished.
    pub(crate) fn unfinished(&self) -> Vec<PredictionHandle> {
        self.by_id
            .values()
            .filter(|h| !h.snapshot().status.is_terminal())
            .cloned()
            .collect()
    }

    /// Marks `id` finished; it stays findable for a while.
    pub(crate) fn finished(&mut self, id: &str) {
        let now = Instant::now();
        let size = self.by_id.get(id).map_or(0, PredictionHandle::size);
        self.finished.push_back((now, id.to_string(), size));
        self.finished_bytes += size;
        while let Some((at, _, _)) = self.finished.front() {
            let within = self.finished.len() <= KEEP_FINISHED
                && now.duration_since(*at) < KEEP_FOR
                && (self.finished_bytes <= KEEP_BYTES || self.finished.len() == 1);
            if within {
                break;
            }
            let (_, old, size) = self.finished.pop_front().expect("front exists");
            self.finished_bytes -= size;
            self.by_id.remove(&old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prediction::Prediction;

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
}
