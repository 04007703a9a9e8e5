//! The service: admits predictions, and answers what the API asks about the
//! model's health. Each admitted prediction is run by its own task
//! ([`run`]), which owns it until its terminal state.
//!
//! Admission is where the rules live: not ready -> refused; an id already known
//! -> that prediction, never a second run; no free slot -> a place in the
//! admission queue if there is one, else busy. A slot is a
//! [`SlotPermit`](slots::SlotPermit) value; the run task drops it *before* it
//! publishes the prediction's terminal state, so a client that sends its next
//! request the moment it has a reply always finds the slot free.
//!
//! Cancellation: a cancel request fires the prediction's token. A queued
//! prediction then ends without running; a running one is canceled in the
//! worker. A run that has not stopped after the grace period (stuck in a
//! native call, or swallowing the cancel) has its prediction end without it,
//! and keeps its slot until it returns: no caller can cost the model its
//! worker. Only a run past its time limit, or a cancel with a kill policy
//! (`COG_CANCEL_KILL_AFTER`), has its slot given up (and the worker
//! replaced when no slot is left). How a run stops is [`run`]'s business.
//!
//! Health: the model's state comes from the worker and the slots; while it
//! serves, [`Service::check_health`] also asks the worker (one check at a
//! time, with a deadline), which runs the model's own `healthcheck()` when it
//! defines one, and reports `UNHEALTHY` when the check fails or the worker
//! does not answer, without changing the state admission goes by.

mod batch;
mod registry;
mod run;
mod slots;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tracing::Instrument;

use crate::files::outputs::OutputSender;
use crate::files::Fetcher;
use crate::ipc::Mode;
use crate::nudge::MemoryTrim;
use crate::prediction::{Prediction, PredictionHandle};
use crate::schema::{InputError, LiveSchema};
use crate::supervisor::{SetupRecord, Supervisor, WorkerState};
use crate::telemetry::{self, Metrics, Phase, SlotCounts};
use crate::webhook::{Subscription, WebhookSender};
use registry::Registry;
pub use registry::Tombstone;
use run::Run;
use slots::{Refusal, SlotPool};

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

/// What `/health-check` reports: the model's health, and whether its own
/// `healthcheck()` failed. A failed check changes only what is reported
/// (`UNHEALTHY`); admission goes by the health, so predictions are still
/// accepted.
#[derive(Debug, Clone)]
pub struct HealthReport {
    /// The model's health.
    pub health: Health,
    /// Why the model's `healthcheck()` failed, when it did.
    pub user_healthcheck_error: Option<String>,
}

impl HealthReport {
    /// The status to report: `UNHEALTHY` when the model's check failed.
    pub fn status(&self) -> &'static str {
        if self.user_healthcheck_error.is_some() {
            return "UNHEALTHY";
        }
        match self.health {
            Health::Starting => "STARTING",
            Health::Ready => "READY",
            Health::Busy => "BUSY",
            Health::SetupFailed => "SETUP_FAILED",
            Health::Defunct => "DEFUNCT",
        }
    }
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
    /// Where to send webhooks, if anywhere.
    pub webhook: Option<Subscription>,
    /// The W3C trace context (`traceparent`, `tracestate`) of the creating
    /// request, which the prediction's trace continues.
    pub trace_headers: Vec<(String, String)>,
    /// The request's `output_file_prefix`: upload file outputs here (wins
    /// over `--upload-url`).
    pub output_file_prefix: Option<String>,
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
    /// Every slot is busy (and there is no queue).
    #[error("every slot is busy")]
    Busy,
    /// Every slot is busy and the admission queue is full.
    #[error("every slot is busy and the queue is full")]
    QueueFull,
    /// The input does not match the model's schema: every problem found.
    #[error("the input is invalid")]
    Invalid(Vec<InputError>),
    /// A prediction with this id finished and was evicted from memory; it is
    /// not run again.
    #[error(
        "prediction {id:?} already ran ({}) and its result is no longer kept: \
         it is not run again",
        tombstone.status.as_str()
    )]
    Evicted {
        /// The id.
        id: String,
        /// What is left of it.
        tombstone: Tombstone,
    },
}

/// How the service runs predictions.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Each prediction gets a directory here, removed when it ends.
    pub predictions_dir: PathBuf,
    /// Predictions that may wait for a slot.
    pub queue_size: usize,
    /// How long a run asked to stop has to end before its prediction ends
    /// without it (the run keeps its slot until it returns).
    pub cancel_grace: Duration,
    /// How long after a cancel a run that has not ended is given up on, its
    /// slot with it (`None`: never).
    pub cancel_kill_after: Option<Duration>,
    /// Stream events kept per prediction for readers who attach late.
    pub stream_history: usize,
    /// How long the model's `healthcheck()` may take (`COG_HEALTHCHECK_TIMEOUT`).
    pub healthcheck_timeout: Duration,
    /// A run still going after this long is stopped and fails.
    pub predict_timeout: Option<Duration>,
    /// What wins over a `@cog.batch` model's own batch settings.
    pub batch_override: crate::config::BatchOverride,
}

/// What the service uses to reach outside: webhook delivery and file downloads.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Sends webhooks.
    pub webhooks: WebhookSender,
    /// Fetches file inputs.
    pub fetcher: Fetcher,
    /// Sends file outputs (inline, or uploaded).
    pub outputs: OutputSender,
}

/// The service; cheap to clone.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    supervisor: Supervisor,
    /// The slots predictions are admitted to; for a `@cog.batch` model,
    /// places in batches (`batch.rs`).
    slots: SlotPool,
    /// Forms a batched model's batches; idle for other models.
    batcher: Arc<batch::Batcher>,
    registry: Mutex<Registry>,
    outbound: Outbound,
    config: ServiceConfig,
    /// Predictions admitted and not yet finished, so shutdown can wait for them.
    unfinished: watch::Sender<usize>,
    /// Hands freed memory back to the system as predictions finish.
    memory_trim: MemoryTrim,
    /// Validates inputs against the ready worker's schema, before a slot is taken.
    schema: LiveSchema,
    /// The operator metrics: predictions by status, run and queue times.
    metrics: Metrics,
    /// Bumped each time a ready worker's slots are opened, so
    /// [`Service::settled`] can wait for it.
    opened: Arc<watch::Sender<u64>>,
}

impl Service {
    /// A service running predictions on `supervisor`'s worker. Slots open when
    /// the worker is ready.
    pub fn new(
        supervisor: Supervisor,
        outbound: Outbound,
        config: ServiceConfig,
        metrics: Metrics,
    ) -> Self {
        let slots = SlotPool::new(config.queue_size);
        let batcher = batch::Batcher::new(
            supervisor.clone(),
            metrics.clone(),
            config.cancel_grace,
            config.cancel_kill_after,
        );
        let mut state = supervisor.subscribe_state();
        let pool = slots.clone();
        let batches = Arc::clone(&batcher);
        let batch_override = config.batch_override;
        let ready = supervisor.clone();
        let opened = Arc::new(watch::Sender::new(0u64));
        let announce = Arc::clone(&opened);
        // Each worker (the first, and any restarted one) brings its own
        // slots, and takes them along when it goes: predictions waiting for
        // one wait on for the next worker's.
        tokio::spawn(async move {
            let mut open = false;
            loop {
                let now = *state.borrow_and_update();
                match now {
                    WorkerState::Ready if !open => {
                        let settings = ready
                            .batch()
                            .map(|model| batch::Settings::new(model, batch_override));
                        pool.open(batches.open(settings, ready.slots()));
                        announce.send_modify(|n| *n += 1);
                        open = true;
                    }
                    WorkerState::Starting if open => {
                        pool.withdraw();
                        batches.withdraw();
                        open = false;
                    }
                    // No worker will come: the waiting are told.
                    WorkerState::SetupFailed | WorkerState::Defunct => {
                        pool.close();
                        batches.close();
                        return;
                    }
                    WorkerState::Ready | WorkerState::Starting => {}
                }
                if state.changed().await.is_err() {
                    return;
                }
            }
        });
        let component = crate::schema::input_component(supervisor.mode());
        let schema = LiveSchema::follow(supervisor.subscribe_state(), component, {
            let supervisor = supervisor.clone();
            move || supervisor.schema()
        });
        Self {
            inner: Arc::new(Inner {
                supervisor,
                slots,
                batcher,
                registry: Mutex::new(Registry::default()),
                outbound,
                config,
                unfinished: watch::Sender::new(0),
                memory_trim: MemoryTrim::default(),
                opened,
                schema,
                metrics,
            }),
        }
    }

    /// What this service runs: predictions, or trainings (the model's
    /// training function). Runs of the other kind are not served.
    pub fn mode(&self) -> Mode {
        self.inner.supervisor.mode()
    }

    /// The model's health now.
    pub fn health(&self) -> Health {
        match self.inner.supervisor.state() {
            WorkerState::Starting => Health::Starting,
            // Until the pool has opened its slots the model is not ready yet.
            WorkerState::Ready if self.inner.slots.healthy() == 0 => Health::Starting,
            WorkerState::Ready if self.inner.slots.all_busy() => Health::Busy,
            WorkerState::Ready => Health::Ready,
            WorkerState::SetupFailed => Health::SetupFailed,
            WorkerState::Defunct => Health::Defunct,
        }
    }

    /// Waits while the model is starting (setup running, or slots not yet
    /// opened) and returns the health it settles in.
    pub async fn settled(&self) -> Health {
        let mut opened = self.inner.opened.subscribe();
        let mut state = self.inner.supervisor.subscribe_state();
        loop {
            let health = self.health();
            if health != Health::Starting {
                return health;
            }
            tokio::select! {
                changed = opened.changed() => if changed.is_err() { return self.health() },
                changed = state.changed() => if changed.is_err() { return self.health() },
            }
        }
    }

    /// The model's health for `/health-check`: [`Service::health`], and when
    /// the model is ready or busy, whether the worker answers, and its own
    /// `healthcheck()` (when it defines one) says it is healthy. Concurrent
    /// callers share one check.
    pub async fn check_health(&self) -> HealthReport {
        let supervisor = &self.inner.supervisor;
        let serving = |health| matches!(health, Health::Ready | Health::Busy);
        if serving(self.health()) {
            let checked = supervisor
                .healthcheck(self.inner.config.healthcheck_timeout)
                .await;
            // The state may have moved while the check ran; report it as it is now.
            let health = self.health();
            return HealthReport {
                health,
                user_healthcheck_error: checked.err().filter(|_| serving(health)),
            };
        }
        HealthReport {
            health: self.health(),
            user_healthcheck_error: None,
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

    /// The operator metrics in the Prometheus text format, slots as they are now.
    pub fn render_metrics(&self) -> String {
        let slots = &self.inner.slots;
        self.inner.metrics.render(SlotCounts {
            total: slots.healthy(),
            busy: slots.busy(),
        })
    }

    /// Admits a prediction and starts it, or returns the existing one with the
    /// same id. The prediction is handled in its own span and log context
    /// (see `telemetry`), from here to its terminal state.
    pub fn create(&self, request: NewPrediction) -> Result<Admission, AdmissionError> {
        let span = telemetry::prediction_span(&request.trace_headers);
        let _entered = span.enter();
        // Once known, the id names every line logged for the prediction.
        let log_as = |id: &str| {
            let id: Arc<str> = Arc::from(id);
            (telemetry::Entered::new(&id), id)
        };
        let logged = request.id.as_deref().map(log_as);
        if let Some(id) = &request.id {
            telemetry::record_prediction_id(&span, id);
        }
        let mut registry = self.inner.lock_registry();
        if let Some(id) = request.id.as_deref() {
            if let Some(existing) = registry.get(id) {
                return Ok(Admission::Existing(existing));
            }
            if let Some(tombstone) = registry.evicted(id) {
                let id = id.to_string();
                return Err(AdmissionError::Evicted { id, tombstone });
            }
        }
        match self.health() {
            Health::Ready | Health::Busy => {}
            other => return Err(AdmissionError::NotReady(other)),
        }
        let mut input = request.input;
        let redacted = telemetry::phase_span(Phase::Validate)
            .in_scope(|| self.inner.schema.check(&mut input))
            .map_err(AdmissionError::Invalid)?;
        let admit = self.inner.slots.admit().map_err(|refusal| match refusal {
            Refusal::Busy => AdmissionError::Busy,
            Refusal::QueueFull => AdmissionError::QueueFull,
        })?;
        let id = request.id.unwrap_or_else(|| {
            let id = generate_id();
            telemetry::record_prediction_id(&span, &id);
            id
        });
        let (_logged, logged_id) = logged.unwrap_or_else(|| log_as(&id));
        let prediction = Prediction::new(
            id.clone(),
            redacted.as_ref().unwrap_or(&input),
            request.created_at,
        );
        // Without a secret to redact, the input shown is the input run: its
        // text, written once, serves both.
        let input_text = redacted.is_none().then(|| prediction.input.clone());
        let handle = if self.inner.supervisor.streaming() {
            PredictionHandle::with_stream(prediction, self.inner.config.stream_history)
        } else {
            PredictionHandle::new(prediction)
        };
        registry.insert(id.clone(), handle.clone());
        self.inner.unfinished.send_modify(|n| *n += 1);
        drop(registry);
        if let Some(subscription) = request.webhook {
            self.inner
                .outbound
                .webhooks
                .spawn(&handle, handle.snapshot(), subscription);
        }
        let run = Run {
            inner: Arc::clone(&self.inner),
            handle: handle.clone(),
            id,
            input,
            input_text,
            file_inputs: self.inner.schema.file_inputs(),
            context: request.context,
            admitted: Instant::now(),
            output_file_prefix: request.output_file_prefix,
        };
        tracing::debug!("prediction accepted");
        let run = telemetry::Logged::new(logged_id, run.execute(admit));
        tokio::spawn(run.instrument(span.clone()));
        Ok(Admission::Created(handle))
    }

    /// Slots free now: predictions created now would run at once. For a
    /// `@cog.batch` model, places in batches: `max_size` per worker slot,
    /// less those taken (a member that left its batch early keeps its place
    /// until the batch ends).
    pub fn free_slots(&self) -> usize {
        self.inner.slots.free()
    }

    /// Waits until a slot is free and returns how many are (a consumer of an
    /// outside queue takes only as much work as this).
    pub async fn wait_for_free_slot(&self) -> usize {
        self.inner.slots.wait_for_free().await
    }

    /// The webhook sender this service delivers with, for predictions whose
    /// webhooks are sent by their creator (see [`WebhookSender::spawn_gated`]).
    pub fn webhook_sender(&self) -> &WebhookSender {
        &self.inner.outbound.webhooks
    }

    /// Whether the model's run streams (clients may follow it with SSE).
    pub fn streaming(&self) -> bool {
        self.inner.supervisor.streaming()
    }

    /// Lets the predictions in flight finish, for up to `grace`; then cancels
    /// what is left and waits for the cancels to land. Called on shutdown,
    /// after the server has stopped taking requests.
    pub async fn drain(&self, grace: Duration) {
        let mut unfinished = self.inner.unfinished.subscribe();
        let done = |n: &usize| *n == 0;
        if tokio::time::timeout(grace, unfinished.wait_for(done))
            .await
            .is_ok()
        {
            return;
        }
        let left = self.inner.lock_registry().unfinished();
        tracing::warn!(
            count = left.len(),
            "canceling predictions still running at shutdown"
        );
        for handle in &left {
            handle.cancel();
        }
        let settle = self.inner.config.cancel_grace + Duration::from_secs(1);
        let _ = tokio::time::timeout(settle, unfinished.wait_for(done)).await;
    }

    /// Waits for webhook deliveries still in progress, for up to `timeout`.
    pub async fn flush_webhooks(&self, timeout: Duration) {
        self.inner.outbound.webhooks.flush(timeout).await;
    }

    /// The prediction with this id, running or recently finished.
    pub fn get(&self, id: &str) -> Option<PredictionHandle> {
        self.inner.lock_registry().get(id)
    }

    /// What is left of a finished prediction evicted from memory.
    pub fn evicted(&self, id: &str) -> Option<Tombstone> {
        self.inner.lock_registry().evicted(id)
    }

    /// Asks the prediction with this id to stop; false if it is unknown.
    pub fn cancel(&self, id: &str) -> bool {
        match self.get(id) {
            Some(handle) => {
                handle.cancel();
                true
            }
            None => false,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_model_healthcheck_reports_unhealthy_whatever_the_health() {
        let report = |health, error: Option<&str>| HealthReport {
            health,
            user_healthcheck_error: error.map(String::from),
        };
        assert_eq!(report(Health::Busy, None).status(), "BUSY");
        assert_eq!(report(Health::Ready, Some("no")).status(), "UNHEALTHY");
        assert_eq!(report(Health::Busy, Some("no")).status(), "UNHEALTHY");
        // The reported names are the ones the health enum serialises to.
        for health in [
            Health::Starting,
            Health::Ready,
            Health::Busy,
            Health::SetupFailed,
            Health::Defunct,
        ] {
            assert_eq!(
                serde_json::to_value(health).unwrap(),
                report(health, None).status()
            );
        }
    }

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
}
