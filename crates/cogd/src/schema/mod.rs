//! The model's schema at the HTTP edge: input validation from the one
//! OpenAPI document the worker sends in `ready`.
//!
//! The worker builds the document from the run method's type hints
//! (`python/cogd/schema.py`); the supervisor keeps it and serves it as
//! `/openapi.json`. [`LiveSchema`] follows the worker's state and, each time
//! it becomes ready, compiles that document's `Input` schema (`TrainingInput`
//! for a worker that runs the training function) into an
//! [`InputValidator`], once. The service asks it to check every request's
//! input before a slot is taken ([`LiveSchema::check`]): a bad input costs a
//! 422 and never a run. A model whose document has no `Input` schema (or one
//! that cannot be compiled) is served without validation, with a log line
//! saying so, rather than not at all.
//!
//! It knows documents and the worker's state, not HTTP: the API maps
//! [`InputError`]s to the 422 body.

mod openapi;
mod validate;

use std::sync::{Arc, RwLock};

use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::ipc::Mode;
use crate::supervisor::WorkerState;
pub use validate::{CompileError, InputError, InputValidator, PathSegment, REDACTED};

/// The component of the document that describes the input of the runs a
/// worker in `mode` serves: `Input` for predictions, `TrainingInput` for
/// trainings (Cog's names; one document may hold both).
pub fn input_component(mode: Mode) -> &'static str {
    match mode {
        Mode::Predict => "Input",
        Mode::Train => "TrainingInput",
    }
}

/// The validator of whichever worker is ready now; cheap to clone.
#[derive(Clone)]
pub struct LiveSchema {
    inner: Arc<Live>,
}

/// What compiling a document gave: a validator, or nothing to validate with.
type Compiled = Option<InputValidator>;

struct Live {
    /// The current worker's compiled schema: `None` while no worker is ready
    /// (and so nothing is admitted), set when one becomes ready. Behind an
    /// `Arc` so a request holds it without holding the lock.
    current: RwLock<Option<Arc<Compiled>>>,
    /// The component validated: [`input_component`] of the worker's mode.
    component: &'static str,
    /// Reads the document the ready worker sent (`Supervisor::schema`).
    document: Box<dyn Fn() -> Value + Send + Sync>,
}

impl LiveSchema {
    /// Follows `states` (the supervisor's worker state) and compiles the
    /// `component` of the document `document` returns each time the worker
    /// becomes ready.
    ///
    /// Needs a tokio runtime to follow the state; without one it compiles on
    /// the first check instead.
    pub fn follow(
        states: watch::Receiver<WorkerState>,
        component: &'static str,
        document: impl Fn() -> Value + Send + Sync + 'static,
    ) -> Self {
        let live = Self {
            inner: Arc::new(Live {
                current: RwLock::new(None),
                component,
                document: Box::new(document),
            }),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(live.clone().watch(states));
        }
        live
    }

    /// Recompiles on every transition to ready (a restarted worker may bring
    /// a new model), forgets the validator when the worker stops being ready.
    async fn watch(self, mut states: watch::Receiver<WorkerState>) {
        loop {
            let ready = *states.borrow_and_update() == WorkerState::Ready;
            let compiled =
                ready.then(|| Arc::new(compile((self.inner.document)(), self.inner.component)));
            *self
                .inner
                .current
                .write()
                .unwrap_or_else(|e| e.into_inner()) = compiled;
            if states.changed().await.is_err() {
                return;
            }
        }
    }

    /// The compiled schema; compiled here if the watcher has not caught up
    /// with a worker that just became ready.
    fn compiled(&self) -> Arc<Compiled> {
        if let Some(compiled) = &*self.inner.current.read().unwrap_or_else(|e| e.into_inner()) {
            return Arc::clone(compiled);
        }
        let compiled = Arc::new(compile((self.inner.document)(), self.inner.component));
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&compiled));
        compiled
    }

    /// The inputs that are files (none when there is no schema).
    pub fn file_inputs(&self) -> Vec<String> {
        match &*self.compiled() {
            Some(validator) => validator.file_inputs().to_vec(),
            None => Vec::new(),
        }
    }

    /// Checks a prediction's `input` (call only while the worker is ready)
    /// and fills in defaults. Returns the input as the prediction shows it
    /// when that differs (secrets redacted); `None` when it is shown as it
    /// is, so an input of many megabytes is not copied for nothing.
    pub fn check(
        &self,
        input: &mut Map<String, Value>,
    ) -> Result<Option<Map<String, Value>>, Vec<InputError>> {
        match &*self.compiled() {
            Some(validator) => {
                validator.check(input)?;
                Ok(validator.has_secrets().then(|| validator.redacted(input)))
            }
            None => Ok(None),
        }
    }
}

/// Compiles `document`'s input schema `component`, or says (once per worker)
/// why there is nothing to validate with.
fn compile(document: Value, component: &str) -> Compiled {
    let started = std::time::Instant::now();
    match InputValidator::compile(&document, component) {
        Ok(Some(validator)) => {
            tracing::debug!(elapsed = ?started.elapsed(), "compiled the input schema");
            Some(validator)
        }
        Ok(None) => {
            tracing::warn!(
                component,
                "the model's schema has no input schema: inputs are not validated"
            );
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "the model's input schema cannot be used: inputs are not validated");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn document() -> Value {
        json!({"components": {"schemas": {"Input": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "x-order": 0},
                "token": {"type": "string", "x-cog-secret": true, "x-order": 1, "default": "t"},
            }
        }}}})
    }

    #[tokio::test]
    async fn it_compiles_when_the_worker_becomes_ready_and_forgets_when_it_stops() {
        let (states, receiver) = watch::channel(WorkerState::Starting);
        let live = LiveSchema::follow(receiver, "Input", document);
        tokio::task::yield_now().await;
        assert!(live.inner.current.read().unwrap().is_none());

        states.send_replace(WorkerState::Ready);
        let compiled = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                if live.inner.current.read().unwrap().is_some() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(compiled.is_ok(), "never compiled");

        let mut input = json!({"name": "x"}).as_object().unwrap().clone();
        let shown = live
            .check(&mut input)
            .unwrap()
            .expect("a secret is redacted");
        assert_eq!(input["token"], "t", "the default reaches the run");
        assert_eq!(
            shown["token"], REDACTED,
            "a secret default is not shown either"
        );

        states.send_replace(WorkerState::Defunct);
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while live.inner.current.read().unwrap().is_some() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the validator of a dead worker is dropped");
    }

    #[test]
    fn without_a_runtime_it_compiles_on_first_use() {
        let (_states, receiver) = watch::channel(WorkerState::Ready);
        let live = LiveSchema::follow(receiver, "Input", document);
        let mut input = Map::new();
        let errors = live.check(&mut input).unwrap_err();
        assert_eq!(errors[0].field, "name");
    }

    #[test]
    fn a_training_worker_validates_the_training_input() {
        let (_states, receiver) = watch::channel(WorkerState::Ready);
        let live = LiveSchema::follow(receiver, input_component(Mode::Train), || {
            json!({"components": {"schemas": {
                "Input": {"type": "object", "properties": {"name": {"type": "string"}}},
                "TrainingInput": {"type": "object", "required": ["steps"],
                    "properties": {"steps": {"type": "integer"}}},
            }}})
        });
        let mut input = json!({"name": "x"}).as_object().unwrap().clone();
        let fields: Vec<_> = live
            .check(&mut input)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert!(fields.contains(&"steps".to_string()), "{fields:?}");
        let mut input = json!({"steps": 3}).as_object().unwrap().clone();
        assert!(live.check(&mut input).is_ok());
    }

    #[test]
    fn a_document_without_input_passes_everything() {
        let (_states, receiver) = watch::channel(WorkerState::Ready);
        let live = LiveSchema::follow(receiver, "Input", || Value::Null);
        let mut input = json!({"anything": [1, 2]}).as_object().unwrap().clone();
        assert_eq!(live.check(&mut input).unwrap(), None, "shown as it is");
    }
}
