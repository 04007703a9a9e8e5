//! The predictions the server knows by id: every running one, and a bounded
//! number of finished ones, so a repeated idempotent `PUT` returns the same
//! prediction instead of running it again.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::prediction::PredictionHandle;

/// Finished predictions kept at most.
const KEEP_FINISHED: usize = 1000;
/// How long a finished prediction is kept.
const KEEP_FOR: Duration = Duration::from_secs(10 * 60);

#[derive(Default)]
pub(crate) struct Registry {
    by_id: HashMap<String, PredictionHandle>,
    /// Finished ids, oldest first, with when they finished.
    finished: VecDeque<(Instant, String)>,
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
        self.finished.push_back((now, id.to_string()));
        while let Some((at, _)) = self.finished.front() {
            if self.finished.len() <= KEEP_FINISHED && now.duration_since(*at) < KEEP_FOR {
                break;
            }
            let (_, old) = self.finished.pop_front().expect("front exists");
            self.by_id.remove(&old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prediction::Prediction;

    fn handle(id: &str) -> PredictionHandle {
        PredictionHandle::new(Prediction::new(id.into(), serde_json::json!({}), None))
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
}
