//! The service: admits predictions, owns them while they run, and answers what
//! the API asks about the model's health.
//!
//! Admission is where the rules live: not ready -> refused; an id already known
//! -> that prediction, never a second run; no free slot -> a place in the
//! admission queue if there is one, else busy. A slot is a [`SlotPermit`]
//! value; the run task drops it *before* it publishes the prediction's
//! terminal state, so a client that sends its next request the moment it has a
//! reply always finds the slot free.
//!
//! Cancellation: a cancel request fires the prediction's token. A queued
//! prediction then ends without running; a running one is cancelled in the
//! worker. A run that has not stopped after the grace period (stuck in a
//! native call, or swallowing the cancel) has its prediction end without it,
//! and keeps its slot until it returns: no caller can cost the model its
//! worker. Only a run past its time limit, or a cancel with a kill policy
//! (`COG_CANCEL_KILL_AFTER`), has its slot given up (and the worker
//! replaced when no slot is left).
//!
//! Health: the model's state comes from the worker and the slots; while it
//! serves, [`Service::check_health`] also asks the worker (one check at a
//! time, with a deadline), which runs the model's own `healthcheck()` when it
//! defines one, and reports `UNHEALTHY` when the check fails or the worker
//! does not answer, without changing the state admission goes by.

mod registry;
mod slots;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tracing::Instrument;

use crate::files::outputs::{OutputSender, OutputTarget};
use crate::files::Fetcher;
use crate::ipc::{Mode, SlotRequest, Spill};
use crate::prediction::{JsonText, Outcome, Prediction, PredictionHandle};
use crate::schema::{InputError, LiveSchema};
use crate::supervisor::{OutputValue, SetupRecord, SlotEvent, Supervisor, WorkerState};
use crate::telemetry::{self, Metrics, Phase, SlotCounts};
use crate::webhook::{Subscription, WebhookSender};
use registry::Registry;
pub use registry::Tombstone;
use slots::{Admit, Refusal, SlotPermit, SlotPool};

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
    slots: SlotPool,
    registry: Mutex<Registry>,
    outbound: Outbound,
    config: ServiceConfig,
    /// Predictions admitted and not yet finished, so shutdown can wait for them.
    unfinished: watch::Sender<usize>,
    /// Predictions finished so far, for [`TRIM_EVERY`].
    finished_count: AtomicU64,
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
        let mut state = supervisor.subscribe_state();
        let pool = slots.clone();
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
                        pool.open(ready.slots());
                        announce.send_modify(|n| *n += 1);
                        open = true;
                    }
                    WorkerState::Starting if open => {
                        pool.withdraw();
                        open = false;
                    }
                    // No worker will come: the waiting are told.
                    WorkerState::SetupFailed | WorkerState::Defunct => {
                        pool.close();
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
                registry: Mutex::new(Registry::default()),
                outbound,
                config,
                unfinished: watch::Sender::new(0),
                finished_count: AtomicU64::new(0),
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

    /// Slots free now: predictions created now would run at once.
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
            "cancelling predictions still running at shutdown"
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

/// Inputs larger than this (as JSON) reach the worker through a file.
const SPILL_INPUT_BYTES: usize = 6 * 1024 * 1024;

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

/// Removes a run's directory, if the run made one. The check is one cheap
/// `stat` on the runtime thread; only a directory that exists costs a trip to
/// the blocking pool.
async fn remove_run_dir(id: &str, dir: PathBuf) {
    if matches!(std::fs::symlink_metadata(&dir), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
    {
        return;
    }
    let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    if let Err(e) = removed {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(prediction_id = %id, error = %e, "cannot remove the prediction's directory");
        }
    }
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
    /// `input` as JSON text, when the prediction shows it as it is (no
    /// secret redacted): the prediction's own text, shared.
    input_text: Option<JsonText>,
    /// The inputs that are files, to fetch before the run.
    file_inputs: Vec<String>,
    context: serde_json::Map<String, serde_json::Value>,
    /// When it was admitted, for the queue wait.
    admitted: Instant,
    /// The request's `output_file_prefix`.
    output_file_prefix: Option<String>,
}

/// How a run in a slot ended.
struct Ended {
    /// The prediction's end; `None` when it was reported already, while the
    /// run still held its slot ([`Run::outlast`]).
    outcome: Option<Outcome>,
    /// A run asked to stop that was given up on: its slot cannot be used
    /// again.
    stuck: bool,
    /// False only when the run is known to have left nothing in its
    /// directory: it succeeded, and neither side put a file there (no
    /// fetched input, no input or output spilled to a file rather than a
    /// memory file, no file output).
    dir_used: bool,
}

impl Run {
    async fn execute(self, admit: Admit) {
        let permit = match admit {
            Admit::Now(permit) => Ok(permit),
            Admit::Queued(ticket) => tokio::select! {
                permit = ticket.acquire() => permit.ok_or_else(|| Outcome::Failed(
                    "the model stopped serving before the prediction could run".into(),
                )),
                // Cancelled while it waited for a slot: it never runs.
                () = self.handle.cancelled() => Err(Outcome::Canceled),
            },
        };
        let permit = match permit {
            Ok(permit) => permit,
            Err(outcome) => return self.finish(outcome, None).await,
        };
        let started = Instant::now();
        self.inner
            .metrics
            .observe_queue_wait(started - self.admitted);
        let dir = self
            .inner
            .config
            .predictions_dir
            .join(directory_name(&self.id));
        // The directory is made only when the run needs it (downloaded or
        // inputs spilled to a file, file outputs): most predictions never
        // touch disk.
        self.handle.update(|p| {
            p.start();
            true
        });
        self.publish_state("start");
        let ended = self.run_in_slot(&permit, dir.clone(), started).await;
        if ended.dir_used {
            remove_run_dir(&self.id, dir).await;
        }
        // Free the slot before anyone can see the result.
        if ended.stuck {
            permit.poison();
            if self.inner.slots.healthy() == 0 {
                self.inner
                    .supervisor
                    .replace("a stopped run did not end and no slot is left");
            }
        } else {
            drop(permit);
        }
        if let Some(outcome) = ended.outcome {
            self.finish(outcome, Some(started)).await;
        }
    }

    /// Publishes the whole prediction as a stream event.
    fn publish_state(&self, name: &'static str) {
        if self.handle.has_stream() {
            let state = self.handle.snapshot().to_json();
            self.handle.publish(name, state);
        }
    }

    /// Moves the prediction to its terminal state, then records it (metrics,
    /// its log line); `started` is when it got its slot (`None`: it never did).
    async fn finish(&self, outcome: Outcome, started: Option<Instant>) {
        let mut ended = None;
        self.handle.update(|p| {
            let changed = p.finish(outcome);
            ended = Some((p.status, p.error.clone()));
            changed
        });
        self.publish_state("completed");
        // A client waiting for the result answers first: the records below
        // are not its business and need not delay it. (Until the registry
        // hears, it keeps the whole handle, already terminal.)
        tokio::task::yield_now().await;
        self.inner.lock_registry().finished(&self.id);
        let (status, error) = ended.expect("update runs its closure");
        let metrics = &self.inner.metrics;
        metrics.prediction_finished(status);
        let run_seconds = started.map(|started| {
            let time = started.elapsed();
            metrics.observe_run(time);
            time.as_secs_f64()
        });
        telemetry::record_outcome(&tracing::Span::current(), status, error.as_deref());
        // The one line per prediction at info: a server under load logs
        // nothing else per request.
        tracing::info!(
            status = status.as_str(),
            run_seconds,
            queue_seconds = (started.unwrap_or_else(Instant::now) - self.admitted).as_secs_f64(),
            error = error.as_deref(),
            "prediction finished"
        );
        // Last: a server that is stopping waits for this count, and its
        // predictions' records come before it stops.
        self.inner.unfinished.send_modify(|n| *n -= 1);
        if self.inner.finished_count.fetch_add(1, Ordering::Relaxed) % TRIM_EVERY == TRIM_EVERY - 1
        {
            tokio::task::spawn_blocking(release_free_memory);
        }
    }

    async fn run_in_slot(
        &self,
        permit: &SlotPermit,
        output_dir: PathBuf,
        started: Instant,
    ) -> Ended {
        let ended = |outcome| Ended {
            outcome: Some(outcome),
            stuck: false,
            dir_used: true,
        };
        let slot = permit.slot();
        // Whether anything may have gone into the run's directory; the
        // directory is looked for (a `stat`) only then.
        let mut dir_used = !self.file_inputs.is_empty();
        // File inputs are fetched into a copy of the input, their URLs
        // replaced by local paths.
        let mut localized = None;
        if !self.file_inputs.is_empty() {
            let mut input = self.input.clone();
            let inputs_dir = output_dir.join("inputs");
            let download = telemetry::phase_span(Phase::Download);
            let fetch =
                self.inner
                    .outbound
                    .fetcher
                    .localize(&mut input, &self.file_inputs, &inputs_dir);
            let fetched = tokio::select! {
                fetched = fetch => fetched,
                () = self.handle.cancelled() => return ended(Outcome::Canceled),
            };
            drop(download);
            if let Err(error) = fetched {
                return ended(Outcome::Failed(error));
            }
            localized = Some(input);
        }
        if self.handle.is_cancel_requested() {
            return ended(Outcome::Canceled);
        }
        // A large input travels as a file: frames stay
        // small. Its text is the prediction's own when nothing changed it.
        let text = match (&localized, &self.input_text) {
            (None, Some(text)) => text.clone(),
            (localized, _) => JsonText::from_map(localized.as_ref().unwrap_or(&self.input)),
        };
        let mut attached = None;
        let (input, input_file, input_attached) = if text.get().len() > SPILL_INPUT_BYTES {
            let dir = output_dir.clone();
            // One write of the shared text, off the runtime's threads: into a
            // sealed memory file, which never touches a disk (as a large
            // output comes back), or `input.json` where none can be made.
            let spilled = tokio::task::spawn_blocking(move || {
                crate::ipc::spill(&dir, "input.json", |out| {
                    out.write_all(text.get().as_bytes())
                })
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            match spilled {
                Ok(Spill::Attached(file)) => {
                    attached = Some(file);
                    (None, None, true)
                }
                Ok(Spill::File(path)) => {
                    dir_used = true;
                    (None, Some(path), false)
                }
                Err(e) => return ended(Outcome::Failed(format!("cannot write the input: {e}"))),
            }
        } else {
            (Some(text.to_raw()), None, false)
        };
        let request = SlotRequest::Predict {
            id: self.id.clone(),
            input,
            input_file,
            input_attached,
            output_dir: output_dir.clone(),
            context: self.context.clone(),
        };
        if !permit.is_current() {
            // Its slot's worker went away while the inputs were fetched.
            return ended(Outcome::Failed(
                "the worker stopped before the prediction reached it".into(),
            ));
        }
        // Lasts until the run's final event: every return below ends it.
        let _run_span = telemetry::phase_span(Phase::Run);
        let mut events = match self.inner.supervisor.run(slot, &request, attached).await {
            Ok(events) => events,
            Err(e) => return ended(Outcome::Failed(e.to_string())),
        };
        // Set once the run has been asked to stop (by a cancel, the time
        // limit, or an output that could not be sent).
        let mut stop: Option<Stop> = None;
        let time_limit = self.inner.config.predict_timeout;
        let timeout_at = time_limit.map(|limit| tokio::time::Instant::now() + limit);
        // Why a cancelled run ends: canceled by a client, or failed by time.
        let mut stopped = Outcome::Canceled;
        // Set when a chunk's files could not be sent: the run is being stopped
        // and fails whatever it does next.
        let mut unsent = false;
        // The first event is often only microseconds away: watched for
        // without sleeping, then received below with the rest.
        watch_for_first_event(&events).await;
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                () = self.handle.cancelled(), if stop.is_none() => {
                    stop = Some(self.ask_to_stop(slot, timeout_at).await);
                    continue;
                }
                () = sleep_until(timeout_at), if stop.is_none() => {
                    let limit = time_limit.unwrap_or_default().as_secs_f64();
                    stopped = Outcome::Failed(format!(
                        "the prediction took longer than {limit} s (COG_PREDICT_TIMEOUT) and was stopped"
                    ));
                    // Past its deadline: given up on when its grace is over.
                    let mut asked = self.ask_to_stop(slot, None).await;
                    asked.give_up_at = Some(asked.report_at);
                    stop = Some(asked);
                    continue;
                }
                () = sleep_until(stop.as_ref().map(|stop| stop.report_at)) => {
                    let give_up_at = stop.and_then(|stop| stop.give_up_at);
                    return self.outlast(slot, &mut events, stopped, give_up_at, started).await;
                }
            };
            let Some(event) = event else {
                return ended(Outcome::Failed(
                    "the worker stopped reporting on this prediction".into(),
                ));
            };
            match event {
                SlotEvent::Log { source, data } => {
                    // Stream readers get what the logs kept: nothing past the cap.
                    let stream = self.handle.has_stream();
                    let mut kept = None;
                    self.handle.update(|p| match p.append_log(&data) {
                        Some(added) => {
                            kept = stream.then(|| added.into_owned());
                            true
                        }
                        None => false,
                    });
                    if let Some(data) = kept {
                        let event = serde_json::json!({"source": source, "data": data});
                        self.handle.publish("log", event.to_string());
                    }
                }
                SlotEvent::Metric { name, value, mode } => {
                    let event = self.handle.has_stream().then(|| {
                        serde_json::json!({"name": name, "value": value, "mode": mode}).to_string()
                    });
                    let mut refused = None;
                    self.handle
                        .update(|p| match p.record_metric(&name, value, mode) {
                            Ok(changed) => changed,
                            Err(e) => {
                                refused = Some(e);
                                false
                            }
                        });
                    match (refused, event) {
                        // The worker checks each record with the same code, so
                        // this is a bug, not a user error; the run goes on.
                        (Some(error), _) => {
                            tracing::warn!(prediction_id = %self.id, %error, "ignoring a metric the worker should have refused")
                        }
                        (None, Some(event)) => self.handle.publish("metric", event),
                        (None, None) => {}
                    }
                }
                SlotEvent::Output { output, index } => {
                    if stop.is_some() {
                        // Being stopped: what it yields now is not sent.
                        continue;
                    }
                    dir_used |= output.uses_dir();
                    // Each chunk's files are sent as it comes, before it is shown.
                    let output = tokio::select! {
                        sent = self.send_output(output, &output_dir) => sent,
                        // Back to the loop, which acts on the cancel or the time limit.
                        () = self.handle.cancelled(), if stop.is_none() => continue,
                        () = sleep_until(timeout_at), if stop.is_none() => continue,
                    };
                    let output = match output {
                        Ok(output) => output,
                        Err(error) => {
                            // The run cannot succeed: stop it, and fail.
                            if stop.is_none() {
                                unsent = true;
                                stopped = Outcome::Failed(error);
                                stop = Some(self.ask_to_stop(slot, timeout_at).await);
                            }
                            continue;
                        }
                    };
                    if self.handle.has_stream() {
                        let event = format!(r#"{{"chunk":{},"index":{index}}}"#, output.get());
                        self.handle.publish("output", event);
                    }
                    self.handle.update(|p| {
                        p.push_output(output);
                        true
                    })
                }
                SlotEvent::Done {
                    predict_time,
                    is_stream,
                    output,
                } => {
                    if unsent {
                        // A chunk could not be sent: the run cannot succeed.
                        return ended(stopped);
                    }
                    if let Some(output) = output {
                        dir_used |= output.uses_dir();
                        let sent = tokio::select! {
                            sent = self.send_output(output, &output_dir) => sent,
                            () = self.handle.cancelled(), if stop.is_none() => {
                                return ended(Outcome::Canceled)
                            }
                            () = sleep_until(timeout_at), if stop.is_none() => {
                                let limit = time_limit.unwrap_or_default().as_secs_f64();
                                return ended(Outcome::Failed(format!(
                                    "the prediction took longer than {limit} s (COG_PREDICT_TIMEOUT) while its files were sent"
                                )));
                            }
                            // Stopped while its files were being sent.
                            () = sleep_until(stop.as_ref().map(|stop| stop.report_at)) => {
                                return ended(stopped)
                            }
                        };
                        match sent {
                            Ok(output) => self.handle.update(|p| {
                                p.push_output(output);
                                false
                            }),
                            Err(error) => return ended(Outcome::Failed(error)),
                        }
                    }
                    return Ended {
                        dir_used,
                        ..ended(Outcome::Succeeded {
                            predict_time,
                            is_stream,
                        })
                    };
                }
                SlotEvent::Failed(error) => return ended(Outcome::Failed(error)),
                SlotEvent::Cancelled => return ended(stopped),
                SlotEvent::Died(reason) if stop.is_some() => {
                    tracing::debug!(prediction_id = %self.id, %reason, "the worker died after a cancel");
                    return ended(stopped);
                }
                SlotEvent::Died(reason) => return ended(Outcome::Failed(reason)),
            }
        }
    }
}

/// A run that has been asked to stop.
struct Stop {
    /// When its prediction ends without waiting for it
    /// (`COG_CANCEL_GRACE` after it was asked).
    report_at: tokio::time::Instant,
    /// When its slot is given up, if it has not returned by then
    /// (`COG_CANCEL_KILL_AFTER`, or the time limit); `None`: never.
    give_up_at: Option<tokio::time::Instant>,
}

impl Run {
    /// Asks the worker to stop the run in `slot`. It is given up on at
    /// `COG_CANCEL_KILL_AFTER` from now or at `timeout_at`, whichever
    /// comes first.
    async fn ask_to_stop(&self, slot: usize, timeout_at: Option<tokio::time::Instant>) -> Stop {
        self.inner.supervisor.cancel(slot, &self.id).await;
        let now = tokio::time::Instant::now();
        let kill_at = self.inner.config.cancel_kill_after.map(|after| now + after);
        Stop {
            report_at: now + self.inner.config.cancel_grace,
            give_up_at: [kill_at, timeout_at].into_iter().flatten().min(),
        }
    }

    /// A run asked to stop that is still going after its grace period (stuck
    /// in a native call, or swallowing the cancel): unless it is to be given
    /// up on already, its prediction ends now for its clients, and the run
    /// keeps its slot until it returns, so the worker (and its setup) is not
    /// lost for it. At `give_up_at` the slot is given up instead.
    async fn outlast(
        &self,
        slot: usize,
        events: &mut tokio::sync::mpsc::Receiver<SlotEvent>,
        outcome: Outcome,
        give_up_at: Option<tokio::time::Instant>,
        started: Instant,
    ) -> Ended {
        let ended = |outcome, stuck| Ended {
            outcome,
            stuck,
            dir_used: true,
        };
        if give_up_at.is_some_and(|at| at <= tokio::time::Instant::now()) {
            tracing::warn!(slot, "the stopped run did not end; giving up its slot");
            return ended(Some(outcome), true);
        }
        tracing::warn!(
            slot,
            "the stopped run goes on; it keeps its slot until it returns"
        );
        self.finish(outcome, Some(started)).await;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) if !event.is_final() => {}
                    _ => {
                        tracing::info!(slot, "the stopped run has returned; its slot is free");
                        return ended(None, false);
                    }
                },
                () = sleep_until(give_up_at) => {
                    tracing::warn!(slot, "the stopped run did not end; giving up its slot");
                    return ended(None, true);
                }
            }
        }
    }

    /// An output with its files sent: inline, or uploaded to the request's
    /// prefix or `--upload-url`.
    async fn send_output(
        &self,
        output: OutputValue,
        dir: &std::path::Path,
    ) -> Result<JsonText, String> {
        let target = OutputTarget {
            dir,
            prefix: self.output_file_prefix.as_deref(),
        };
        // Sending files (inline or uploaded) is a step of its own in traces.
        let upload = if output.files.is_empty() {
            tracing::Span::none()
        } else {
            telemetry::phase_span(Phase::Upload)
        };
        self.inner
            .outbound
            .outputs
            .finish(output, target)
            .instrument(upload)
            .await
            .map_err(|e| e.to_string())
    }
}

/// How long a run's task keeps the runtime awake for the worker's first event.
const WATCH_FOR_FIRST_EVENT: Duration = Duration::from_micros(200);

/// Returns once the worker's first event on this run is there to receive
/// (or its channel has closed), or after [`WATCH_FOR_FIRST_EVENT`]. Until
/// then the task yields in a loop, so the runtime polls its sockets without
/// sleeping: parked in `epoll_wait`, it would be woken by the reply, and on
/// a virtual machine whose idle CPUs halt that wake-up took about as long
/// as the worker's whole answer to a small prediction. With two cores and
/// a streaming model, the first chunk reached the client 0.05-0.1 ms
/// sooner (0.35 against 0.45 ms, medians of six rounds), for up to 0.2 ms
/// of the server's CPU per prediction. Never on one CPU, where the loop
/// would only keep the worker from running.
async fn watch_for_first_event(events: &tokio::sync::mpsc::Receiver<SlotEvent>) {
    if !several_cpus() {
        return;
    }
    let until = Instant::now() + WATCH_FOR_FIRST_EVENT;
    while events.is_empty() && !events.is_closed() && Instant::now() < until {
        tokio::task::yield_now().await;
    }
}

/// Whether this process may run on more than one CPU (its affinity and
/// cgroup quota included).
fn several_cpus() -> bool {
    static SEVERAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SEVERAL.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
}

/// How many finished predictions between two [`release_free_memory`] calls.
const TRIM_EVERY: u64 = 1000;

/// Hands memory the allocator holds free back to the system. Predictions
/// come and go (and the registry keeps the last thousand), so the heap ends
/// up with free pages between live ones that the allocator would otherwise
/// keep: about 3 MiB, a fifth of the server's resident memory, after 10,000
/// small predictions. Costs well under a millisecond, on the blocking pool.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_event_is_watched_for_then_left_to_the_run_loop() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        // Sent from elsewhere while the task watches.
        let sender = tokio::spawn(async move {
            tx.send(SlotEvent::Cancelled).await.unwrap();
            tx
        });
        watch_for_first_event(&rx).await;
        // Whether it came within the window or not, nothing was taken.
        assert!(matches!(rx.recv().await, Some(SlotEvent::Cancelled)));
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

    #[test]
    fn client_ids_never_become_paths_outside_the_directory() {
        assert_eq!(directory_name("abc-123_x"), "abc-123_x");
        for hostile in ["../etc", "a/b", "..", ".", "", "x\0y"] {
            let name = directory_name(hostile);
            assert!(!name.contains('/') && name != ".." && name != "." && !name.is_empty());
        }
    }
}
