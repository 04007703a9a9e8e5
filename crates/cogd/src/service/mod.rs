//! The service: admits predictions, owns them while they run, and answers what
//! the API asks about the model's health.
//!
//! Admission is where the rules live: not ready -> refused; an id already known
//! -> that prediction, never a second run; no free slot -> busy. A slot is a
//! [`SlotPermit`] value; the run task drops it *before* it publishes the
//! prediction's terminal state, so a client that sends its next request the
//! moment it has a reply always finds the slot free.

mod registry;
mod slots;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use crate::ipc::SlotRequest;
use crate::prediction::{Outcome, Prediction, PredictionHandle};
use crate::supervisor::{SetupRecord, SlotEvent, Supervisor, WorkerState};
use registry::Registry;
use slots::{SlotPermit, SlotPool};

/// The model's health, as `/health-check` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    /// Setup is running.
    Starting,
    /// Ready, with a free slot.
    Ready,
    /// Ready, every slot busy.
    Busy,
    /// Setup failed; nothing will run.
    SetupFailed,
    /// The worker died; nothing will run.
    Defunct,
}

/// A request to create a prediction, as the API parsed it.
#[derive(Debug, Clone, Default)]
pub struct NewPrediction {
    /// The client's id, or `None` to generate one.
    pub id: Option<String>,
    /// The input object.
    pub input: serde_json::Map<String, serde_json::Value>,
    /// The request's `context`, passed to the run.
    pub context: serde_json::Map<String, serde_json::Value>,
    /// The client's `created_at`, kept when given.
    pub created_at: Option<DateTime<Utc>>,
}

/// The result of admission.
#[derive(Debug)]
pub enum Admission {
    /// A new prediction that is now running.
    Created(PredictionHandle),
    /// A prediction with the same id already exists; this is it.
    Existing(PredictionHandle),
}

/// Why a prediction was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdmissionError {
    /// The model cannot take work in this state.
    #[error("the model is not ready ({0:?})")]
    NotReady(Health),
    /// Every slot is busy.
    #[error("every slot is busy")]
    Busy,
}

/// The service; cheap to clone.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    supervisor: Supervisor,
    slots: SlotPool,
    registry: Mutex<Registry>,
    /// Each prediction gets a directory here, removed when it ends.
    predictions_dir: PathBuf,
}

impl Service {
    /// A service running predictions on `supervisor`'s worker.
    pub fn new(supervisor: Supervisor, predictions_dir: PathBuf) -> Self {
        let slots = SlotPool::new(supervisor.slots());
        Self {
            inner: Arc::new(Inner {
                supervisor,
                slots,
                registry: Mutex::new(Registry::default()),
                predictions_dir,
            }),
        }
    }

    /// The model's health now.
    pub fn health(&self) -> Health {
        match self.inner.supervisor.state() {
            WorkerState::Starting => Health::Starting,
            WorkerState::Ready if self.inner.slots.all_busy() => Health::Busy,
            WorkerState::Ready => Health::Ready,
            WorkerState::SetupFailed => Health::SetupFailed,
            WorkerState::Defunct => Health::Defunct,
        }
    }

    /// Setup's record for the health check.
    pub fn setup_record(&self) -> SetupRecord {
        self.inner.supervisor.setup_record()
    }

    /// Versions for the health check.
    pub fn versions(&self) -> serde_json::Map<String, serde_json::Value> {
        self.inner.supervisor.versions()
    }

    /// The model's schema, `null` when unknown.
    pub fn schema(&self) -> serde_json::Value {
        self.inner.supervisor.schema()
    }

    /// Admits a prediction and starts it, or returns the existing one with the
    /// same id.
    pub fn create(&self, request: NewPrediction) -> Result<Admission, AdmissionError> {
        let mut registry = self.inner.lock_registry();
        if let Some(existing) = request.id.as_deref().and_then(|id| registry.get(id)) {
            return Ok(Admission::Existing(existing));
        }
        match self.health() {
            Health::Ready | Health::Busy => {}
            other => return Err(AdmissionError::NotReady(other)),
        }
        let permit = self.inner.slots.try_acquire().ok_or(AdmissionError::Busy)?;
        let id = request.id.unwrap_or_else(generate_id);
        let handle = PredictionHandle::new(Prediction::new(
            id.clone(),
            serde_json::Value::Object(request.input.clone()),
            request.created_at,
        ));
        registry.insert(id.clone(), handle.clone());
        drop(registry);
        let run = Run {
            inner: Arc::clone(&self.inner),
            handle: handle.clone(),
            id,
            input: request.input,
            context: request.context,
        };
        tokio::spawn(run.execute(permit));
        Ok(Admission::Created(handle))
    }
}

impl Inner {
    fn lock_registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A prediction id when the client gives none: 26 lowercase letters and digits.
fn generate_id() -> String {
    let uuid = uuid::Uuid::new_v4().as_u128();
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut n = uuid;
    (0..26)
        .map(|_| {
            let c = ALPHABET[(n % 36) as usize] as char;
            n /= 36;
            c
        })
        .collect()
}

/// The name of a prediction's directory: its id when that is a safe file
/// name, else a fresh one (client ids are not trusted as paths).
fn directory_name(id: &str) -> String {
    let safe = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if safe {
        id.to_string()
    } else {
        generate_id()
    }
}

/// One admitted prediction on its way through a slot.
struct Run {
    inner: Arc<Inner>,
    handle: PredictionHandle,
    id: String,
    input: serde_json::Map<String, serde_json::Value>,
    context: serde_json::Map<String, serde_json::Value>,
}

impl Run {
    async fn execute(self, permit: SlotPermit) {
        let dir = self.inner.predictions_dir.join(directory_name(&self.id));
        let outcome = match tokio::fs::create_dir_all(&dir).await {
            Ok(()) => {
                self.handle.update(|p| {
                    p.start();
                    true
                });
                self.run_in_slot(permit.slot(), dir.clone()).await
            }
            Err(e) => Outcome::Failed(format!("cannot create the prediction's directory: {e}")),
        };
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(prediction_id = %self.id, error = %e, "cannot remove the prediction's directory");
            }
        }
        // Free the slot before anyone can see the result.
        drop(permit);
        self.handle.update(|p| p.finish(outcome));
        self.inner.lock_registry().finished(&self.id);
        tracing::debug!(prediction_id = %self.id, "prediction finished");
    }

    async fn run_in_slot(&self, slot: usize, output_dir: PathBuf) -> Outcome {
        let request = SlotRequest::Predict {
            id: self.id.clone(),
            input: Some(serde_json::Value::Object(self.input.clone())),
            input_file: None,
            output_dir,
            context: self.context.clone(),
        };
        let mut events = match self.inner.supervisor.run(slot, &request).await {
            Ok(events) => events,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        while let Some(event) = events.recv().await {
            match event {
                SlotEvent::Log { data, .. } => self.handle.update(|p| {
                    p.append_log(&data);
                    true
                }),
                SlotEvent::Output { output, .. } => self.handle.update(|p| {
                    p.push_output(output);
                    true
                }),
                SlotEvent::Done {
                    predict_time,
                    is_stream,
                } => {
                    return Outcome::Succeeded {
                        predict_time,
                        is_stream,
                    }
                }
                SlotEvent::Failed(error) => return Outcome::Failed(error),
                SlotEvent::Cancelled => return Outcome::Canceled,
                SlotEvent::Died(reason) => return Outcome::Failed(reason),
            }
        }
        Outcome::Failed("the worker stopped reporting on this prediction".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_distinct_and_url_safe() {
        let a = generate_id();
        let b = generate_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 26);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    }

    #[test]
    fn client_ids_never_become_paths_outside_the_directory() {
        assert_eq!(directory_name("abc-123_x"), "abc-123_x");
        for hostile in ["../etc", "a/b", "..", ".", "", "x\0y"] {
            let name = directory_name(hostile);
            assert!(!name.contains('/') && name != ".." && name != "." && !name.is_empty());
        }
    }
}
