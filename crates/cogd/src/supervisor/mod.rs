//! The supervisor: starts the Python worker, speaks the control channel and the
//! slot sockets to it, and turns what it says into worker state and slot events.
//!
//! It owns the child process. [`Supervisor::run`] hands a prediction to a slot
//! and returns the stream of that run's [`SlotEvent`]s; the service decides what
//! they mean for the prediction. When the child dies, every run in flight gets a
//! final [`SlotEvent::Died`] at once, so no request waits on a dead worker.
//! [`Supervisor::healthcheck`] runs the model's own `healthcheck()` in the
//! worker, one check at a time however many ask (`healthcheck.rs`).
//! [`Supervisor::run_batch`] hands a `@cog.batch` model's slot several
//! predictions for one call and returns [`BatchEvent`]s: the call's logs and
//! metrics for every member, then each member's own final event.

mod healthcheck;
mod process;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::process::ChildStdin;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::FramedRead;

use crate::ipc::{
    encode_line, BatchSettings, Carrier, ControlRequest, ControlResponse, FileReceiver, FrameError,
    LineDecoder, LogSource, MetricMode, Mode, OutputValue, SlotRequest, SlotResponse,
    PROTOCOL_VERSION,
};
use crate::telemetry::Metrics;
use healthcheck::Healthchecks;

/// How the worker is started.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The Python interpreter that has `cogd` installed.
    pub python: PathBuf,
    /// The model directory: the worker's working directory.
    pub model_dir: PathBuf,
    /// `FILE.py:NAME`.
    pub predictor_ref: String,
    /// Predict or train.
    pub mode: Mode,
    /// `FILE.py:NAME` of the other mode's function, described in the schema.
    pub other_ref: Option<String>,
    /// A slot count that wins over the model's own (`COG_MAX_CONCURRENCY`).
    pub slots_override: Option<usize>,
    /// A slot count for models that declare none (`cog.yaml`).
    pub slots_default: Option<usize>,
    /// Give up on setup after this long.
    pub setup_timeout: Option<Duration>,
    /// Where the worker creates the slot sockets.
    pub socket_dir: PathBuf,
    /// Restarts allowed within `restart_window` before giving up (DEFUNCT).
    pub max_restarts: usize,
    /// The window `max_restarts` counts in.
    pub restart_window: Duration,
}

/// The worker's lifecycle as the health check reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Started, setup not finished.
    Starting,
    /// Setup finished; the slots take work.
    Ready,
    /// Setup raised, timed out, or the worker could not start.
    SetupFailed,
    /// The worker died after setup.
    Defunct,
}

/// Setup's part of `/health-check`.
#[derive(Debug, Clone, Serialize)]
pub struct SetupRecord {
    /// When the worker was started.
    #[serde(serialize_with = "serialize_time")]
    pub started_at: DateTime<Utc>,
    /// When setup finished, either way.
    #[serde(serialize_with = "serialize_opt_time")]
    pub completed_at: Option<DateTime<Utc>>,
    /// `starting`, `succeeded` or `failed`.
    pub status: &'static str,
    /// Everything setup wrote, and why it failed.
    pub logs: String,
}

fn serialize_time<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Micros, false))
}

fn serialize_opt_time<S: serde::Serializer>(
    t: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize_time(t, s),
        None => s.serialize_none(),
    }
}

/// What a slot reports about the run it holds.
#[derive(Debug)]
pub enum SlotEvent {
    /// A line the run wrote.
    Log {
        /// stdout or stderr.
        source: LogSource,
        /// The text.
        data: String,
    },
    /// A custom metric the run recorded (already checked by the worker).
    Metric {
        /// The metric name (dots nest).
        name: String,
        /// The value recorded.
        value: serde_json::Value,
        /// How it combines with the metric's current value.
        mode: MetricMode,
    },
    /// A stream chunk.
    Output {
        /// The value.
        output: OutputValue,
        /// Its index.
        index: u64,
    },
    /// The run returned.
    Done {
        /// Seconds in model code.
        predict_time: f64,
        /// Whether the outputs are stream chunks.
        is_stream: bool,
        /// A plain run's output.
        output: Option<OutputValue>,
    },
    /// The run raised.
    Failed(String),
    /// The run was canceled.
    Canceled,
    /// The worker (or this slot) died under the run.
    Died(String),
}

/// A slot frame said a file was attached to it, and none came.
struct MissingFile;

/// What a slot frame means for the run in its slot: `None` for a frame that
/// means nothing to the run (the protocol version). An output's attached
/// file is taken with `take_file`, and only for a frame that says it has one.
fn slot_event(
    message: SlotResponse,
    take_file: impl FnOnce() -> Option<std::fs::File>,
) -> Option<Result<SlotEvent, MissingFile>> {
    let output_value = |carrier: Carrier, files| {
        let json = carrier.attach(take_file).ok_or(MissingFile)?;
        Ok(OutputValue { json, files })
    };
    Some(match message {
        SlotResponse::ProtocolVersion { .. } => return None,
        SlotResponse::Metric { name, value, mode } => Ok(SlotEvent::Metric { name, value, mode }),
        SlotResponse::Log { source, data } => Ok(SlotEvent::Log { source, data }),
        SlotResponse::Output {
            output,
            index,
            files,
        } => output_value(output, files).map(|output| SlotEvent::Output { output, index }),
        SlotResponse::Done {
            predict_time,
            is_stream,
            output,
            files,
            ..
        } => output
            .map(|output| output_value(output, files))
            .transpose()
            .map(|output| SlotEvent::Done {
                predict_time,
                is_stream,
                output,
            }),
        SlotResponse::Failed { error, .. } => Ok(SlotEvent::Failed(error)),
        SlotResponse::Canceled { .. } => Ok(SlotEvent::Canceled),
    })
}

/// What a slot reports about the batch it holds ([`Supervisor::run_batch`]).
#[derive(Debug)]
pub enum BatchEvent {
    /// An event of the whole call, for every member: a log line or a metric;
    /// or [`SlotEvent::Died`], which ends every member still running.
    Shared(SlotEvent),
    /// The final event (done, failed, canceled) of the member at `index`,
    /// its position in the batch.
    Member {
        /// The member's position.
        index: usize,
        /// Its final event.
        event: SlotEvent,
    },
}

impl SlotEvent {
    /// True for the events that end a run.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Done { .. } | Self::Failed(_) | Self::Canceled | Self::Died(_)
        )
    }
}

/// Why a run could not be handed to the worker.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The slot is not connected (the worker is not ready or has died).
    #[error("slot {0} is not connected to a worker")]
    NotConnected(usize),
    /// Writing the request failed.
    #[error("cannot send the prediction to the worker: {0}")]
    Io(#[from] std::io::Error),
    /// The request does not fit in a frame.
    #[error("cannot encode the prediction: {0}")]
    Encode(#[from] crate::ipc::FrameError),
}

/// Handle to the worker; cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    config: WorkerConfig,
    state: watch::Sender<WorkerState>,
    setup: Mutex<SetupRecord>,
    /// Bumped each time the setup logs grow, so a reader (`cogd predict`)
    /// can show them as they come instead of polling the record.
    setup_logs: watch::Sender<u64>,
    /// The schema and runtime versions the worker sent in `ready`.
    ready_info: Mutex<(
        serde_json::Value,
        serde_json::Map<String, serde_json::Value>,
    )>,
    /// The worker's stdin: the control channel towards it.
    control: tokio::sync::Mutex<Option<ChildStdin>>,
    /// One per slot, connected once the worker is ready; replaced as a whole
    /// when a restarted worker is ready, so a reader of the old worker never
    /// touches the new one's slots.
    slots: std::sync::RwLock<Arc<Vec<Slot>>>,
    /// When the worker was restarted, within the current window.
    restarts: Mutex<std::collections::VecDeque<std::time::Instant>>,
    /// Why the worker exited, once it has.
    exit: watch::Sender<Option<String>>,
    /// True once the control channel has been read to its end, so what the
    /// worker said before exiting (a fatal reason, setup output) is recorded
    /// before its exit is acted on.
    control_done: watch::Sender<bool>,
    /// The worker's pid while it runs (0 before and after), to kill it.
    pid: AtomicI32,
    /// Whether the model's run is marked `@streaming`.
    streaming: std::sync::atomic::AtomicBool,
    /// Whether the model defines its own `healthcheck()`.
    has_healthcheck: std::sync::atomic::AtomicBool,
    /// The model's `@cog.batch` settings, as its worker said in `ready`.
    batch: Mutex<Option<BatchSettings>>,
    /// The user healthcheck in flight and the answers the worker owes.
    healthchecks: Healthchecks,
    /// Set when the server asked the worker to stop, so its exit is no failure.
    stopping: std::sync::atomic::AtomicBool,
    /// Set when the server killed the worker to replace it
    /// ([`Supervisor::replace`]), so its exit is no crash.
    replacing: std::sync::atomic::AtomicBool,
    /// Counts restarts and times setups.
    metrics: Metrics,
}

struct Slot {
    writer: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    /// The run the slot holds; `None` while the slot is idle.
    run: Mutex<Option<SlotRun>>,
}

/// The run a slot holds.
#[derive(Clone)]
struct SlotRun {
    /// Where its events go.
    route: Route,
    /// Its prediction (a batch's first member), named in the server's log
    /// with each line it prints.
    prediction_id: Arc<str>,
}

/// Where a slot's run's events go.
#[derive(Clone)]
enum Route {
    /// One prediction's: all of them.
    Single(mpsc::Sender<SlotEvent>),
    /// A batch's: shared events, and each member's final one.
    Batch {
        events: mpsc::Sender<BatchEvent>,
        /// The members' ids, in order: a final message names its member.
        ids: Arc<[String]>,
        /// The members whose final event has not come yet.
        pending: usize,
    },
}

impl SlotRun {
    /// Sends an event that is not a member's final one.
    async fn send(self, event: SlotEvent) {
        match self.route {
            Route::Single(events) => {
                let _ = events.send(event).await;
            }
            Route::Batch { events, .. } => {
                let _ = events.send(BatchEvent::Shared(event)).await;
            }
        }
    }
}

impl Supervisor {
    /// Starts the worker in the background; watch [`Supervisor::state`].
    pub fn start(config: WorkerConfig, metrics: Metrics) -> Self {
        let inner = Arc::new(Inner {
            config,
            state: watch::Sender::new(WorkerState::Starting),
            setup: Mutex::new(SetupRecord {
                started_at: Utc::now(),
                completed_at: None,
                status: "starting",
                logs: String::new(),
            }),
            setup_logs: watch::Sender::new(0),
            ready_info: Mutex::new((serde_json::Value::Null, serde_json::Map::new())),
            control: tokio::sync::Mutex::new(None),
            slots: std::sync::RwLock::new(Arc::new(Vec::new())),
            restarts: Mutex::new(std::collections::VecDeque::new()),
            exit: watch::Sender::new(None),
            control_done: watch::Sender::new(false),
            pid: AtomicI32::new(0),
            streaming: false.into(),
            has_healthcheck: false.into(),
            batch: Mutex::new(None),
            healthchecks: Healthchecks::default(),
            stopping: false.into(),
            replacing: false.into(),
            metrics,
        });
        let task = Arc::clone(&inner);
        tokio::spawn(async move {
            if let Err(reason) = task.clone().launch().await {
                task.setup_failed(&reason);
                task.kill();
            }
        });
        Self { inner }
    }

    /// The number of slots (0 until the worker is ready).
    pub fn slots(&self) -> usize {
        self.inner.slots().len()
    }

    /// What the worker runs: the predictor or the training function.
    pub fn mode(&self) -> Mode {
        self.inner.config.mode
    }

    /// The worker's current state.
    pub fn state(&self) -> WorkerState {
        *self.inner.state.borrow()
    }

    /// Follows the worker's state.
    pub fn subscribe_state(&self) -> watch::Receiver<WorkerState> {
        self.inner.state.subscribe()
    }

    /// Setup's record for the health check.
    pub fn setup_record(&self) -> SetupRecord {
        self.inner.lock_setup().clone()
    }

    /// Changes each time setup's logs grow; read them with
    /// [`Supervisor::setup_record`].
    pub fn subscribe_setup_logs(&self) -> watch::Receiver<u64> {
        self.inner.setup_logs.subscribe()
    }

    /// The model's schema (`null` until ready or when the worker has none).
    pub fn schema(&self) -> serde_json::Value {
        self.inner.lock_ready().0.clone()
    }

    /// Whether the model's run is marked `@streaming` (known once ready).
    pub fn streaming(&self) -> bool {
        self.inner.streaming.load(Ordering::SeqCst)
    }

    /// Whether the model defines its own `healthcheck()` (known once ready).
    pub fn has_healthcheck(&self) -> bool {
        self.inner.has_healthcheck.load(Ordering::SeqCst)
    }

    /// The model's `@cog.batch` settings (known once ready); `None` when its
    /// run is not batched.
    pub fn batch(&self) -> Option<BatchSettings> {
        *self.inner.batch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker's runtime versions.
    pub fn versions(&self) -> serde_json::Map<String, serde_json::Value> {
        self.inner.lock_ready().1.clone()
    }

    /// Hands `request` to `slot`, with `attached` (a large input's memory
    /// file) attached to it; the returned channel yields the run's events and
    /// ends with a final one ([`SlotEvent::is_final`]).
    pub async fn run(
        &self,
        slot: usize,
        request: &SlotRequest,
        attached: Option<std::os::fd::OwnedFd>,
    ) -> Result<mpsc::Receiver<SlotEvent>, DispatchError> {
        let frame = encode_line(request)?;
        let (tx, rx) = mpsc::channel(256);
        let run = SlotRun {
            route: Route::Single(tx),
            prediction_id: Arc::from(predict_id(request)),
        };
        self.dispatch(slot, run, vec![(frame, attached)]).await?;
        Ok(rx)
    }

    /// Hands a batch to `slot`: the `predict` requests in `members`, each
    /// with its large input's memory file, for one call of the model. The
    /// returned channel yields the call's shared events and each member's
    /// final event, and ends when every member has had one (or with a
    /// shared [`SlotEvent::Died`]).
    pub async fn run_batch(
        &self,
        slot: usize,
        members: Vec<(SlotRequest, Option<std::os::fd::OwnedFd>)>,
    ) -> Result<mpsc::Receiver<BatchEvent>, DispatchError> {
        let mut frames = Vec::with_capacity(members.len() + 1);
        frames.push((
            encode_line(&SlotRequest::Batch {
                size: members.len(),
            })?,
            None,
        ));
        let mut ids = Vec::with_capacity(members.len());
        for (request, attached) in members {
            ids.push(predict_id(&request).to_string());
            frames.push((encode_line(&request)?, attached));
        }
        let (tx, rx) = mpsc::channel(256);
        let run = SlotRun {
            prediction_id: Arc::from(ids.first().map_or("", String::as_str)),
            route: Route::Batch {
                events: tx,
                pending: ids.len(),
                ids: ids.into(),
            },
        };
        self.dispatch(slot, run, frames).await?;
        Ok(rx)
    }

    /// Makes `run` the slot's run and writes its frames, each with its file.
    async fn dispatch(
        &self,
        slot: usize,
        run: SlotRun,
        frames: Vec<(Vec<u8>, Option<std::os::fd::OwnedFd>)>,
    ) -> Result<(), DispatchError> {
        let slots = self.inner.slots();
        let Some(slot_ref) = slots.get(slot) else {
            return Err(DispatchError::NotConnected(slot));
        };
        let mut writer = slot_ref.writer.lock().await;
        let Some(socket) = writer.as_mut() else {
            return Err(DispatchError::NotConnected(slot));
        };
        *slot_ref.run.lock().unwrap_or_else(|e| e.into_inner()) = Some(run);
        for (frame, attached) in &frames {
            let written = match attached {
                Some(file) => {
                    use std::os::fd::AsFd;
                    crate::ipc::write_with_file(socket, frame, file.as_fd()).await
                }
                None => socket.write_all(frame).await,
            };
            if let Err(e) = written {
                slot_ref
                    .run
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Asks the worker to cancel the run of prediction `id` in `slot`. A
    /// cancel that reaches the worker before the run does (they travel on
    /// different channels) is kept for it.
    pub async fn cancel(&self, slot: usize, id: &str) {
        self.inner
            .send_control(&ControlRequest::Cancel {
                slot,
                id: id.to_string(),
            })
            .await;
    }

    /// Kills the worker at once and starts a new one, e.g. when a stopped
    /// run will not end. The server chose it, so it is no crash: it does not
    /// count against the restart budget.
    pub fn replace(&self, why: &str) {
        tracing::warn!(reason = why, "replacing the worker");
        self.inner.replacing.store(true, Ordering::SeqCst);
        self.inner.kill();
    }

    /// Asks the worker to exit and waits up to `grace` before killing it.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.send_control(&ControlRequest::Shutdown).await;
        let mut exit = self.inner.exit.subscribe();
        if tokio::time::timeout(grace, exit.wait_for(Option::is_some))
            .await
            .is_err()
        {
            self.inner.kill();
            let _ = exit.wait_for(Option::is_some).await;
        }
    }
}

/// The error of a run whose worker died.
fn died(reason: &str) -> String {
    format!("the worker process died: {reason}")
}

/// The prediction id of a `predict` request.
fn predict_id(request: &SlotRequest) -> &str {
    match request {
        SlotRequest::Predict { id, .. } => id,
        SlotRequest::Batch { .. } => "",
    }
}

/// Delivers the final event of the run in `slot`, if one is running: to
/// every member still running, for a batch.
async fn end_run(slot: &Slot, event: SlotEvent) {
    let run = slot.run.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(run) = run {
        run.send(event).await;
    }
}

/// Delivers the final event the worker sent for prediction `id` in `slot`:
/// the run's, or, in a batch, that member's (the batch ends with its last
/// member's).
async fn end_member(slot: &Slot, id: &str, event: SlotEvent) {
    let member = {
        let mut held = slot.run.lock().unwrap_or_else(|e| e.into_inner());
        match held.as_mut().map(|run| &mut run.route) {
            Some(Route::Batch {
                events,
                ids,
                pending,
            }) => {
                // The worker answers in the members' order; the id says whose.
                let done = ids.len() - *pending;
                let index = ids[done..]
                    .iter()
                    .position(|member| member == id)
                    .map_or(done, |at| done + at);
                let events = events.clone();
                *pending = pending.saturating_sub(1);
                if *pending == 0 {
                    held.take();
                }
                Some((events, index))
            }
            _ => None,
        }
    };
    match member {
        Some((events, index)) => {
            let _ = events.send(BatchEvent::Member { index, event }).await;
        }
        None => end_run(slot, event).await,
    }
}

impl Inner {
    fn slots(&self) -> Arc<Vec<Slot>> {
        Arc::clone(&self.slots.read().unwrap_or_else(|e| e.into_inner()))
    }

    async fn send_control(&self, request: &ControlRequest) {
        if let Some(stdin) = self.control.lock().await.as_mut() {
            if let Ok(frame) = encode_line(request) {
                let _ = stdin.write_all(&frame).await;
            }
        }
    }

    fn lock_setup(&self) -> std::sync::MutexGuard<'_, SetupRecord> {
        self.setup.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_ready(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        (
            serde_json::Value,
            serde_json::Map<String, serde_json::Value>,
        ),
    > {
        self.ready_info.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the process and sends `init`. An error is a setup failure.
    async fn launch(self: Arc<Self>) -> Result<(), String> {
        let config = &self.config;
        let mut child = process::spawn(config)?;
        self.pid
            .store(child.id().map_or(0, |p| p as i32), Ordering::SeqCst);
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let init = encode_line(&ControlRequest::Init {
            protocol_version: PROTOCOL_VERSION,
            predictor_ref: config.predictor_ref.clone(),
            mode: config.mode,
            other_ref: config.other_ref.clone(),
            slots_override: config.slots_override,
            slots_default: config.slots_default,
            socket_dir: config.socket_dir.clone(),
        })
        .map_err(|e| e.to_string())?;
        stdin
            .write_all(&init)
            .await
            .map_err(|e| format!("cannot send init to the worker: {e}"))?;
        *self.control.lock().await = Some(stdin);

        let waiter = Arc::clone(&self);
        tokio::spawn(async move {
            let status = child.wait().await;
            waiter.pid.store(0, Ordering::SeqCst);
            // A grandchild holding the pipe open must not delay this forever.
            let mut control_done = waiter.control_done.subscribe();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), control_done.wait_for(|done| *done))
                    .await;
            waiter.on_exit(process::describe_exit(status));
        });
        tokio::spawn(Arc::clone(&self).read_control(stdout));
        if let Some(timeout) = config.setup_timeout {
            let timer = Arc::clone(&self);
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                let starting = *timer.state.borrow() == WorkerState::Starting;
                if starting {
                    timer.setup_failed(&format!(
                        "setup did not finish within {} s (COG_SETUP_TIMEOUT)",
                        timeout.as_secs_f64()
                    ));
                    timer.kill();
                }
            });
        }
        Ok(())
    }

    /// Connects to the `count` slot sockets the worker created before `ready`
    /// and checks that each speaks our protocol version.
    async fn connect_slots(self: &Arc<Self>, count: usize) -> Result<(), String> {
        let mut slots = Vec::with_capacity(count);
        let mut readers = Vec::with_capacity(count);
        for index in 0..count {
            let path = self.config.socket_dir.join(format!("slot-{index}.sock"));
            let stream = UnixStream::connect(&path)
                .await
                .map_err(|e| format!("cannot connect to slot socket {}: {e}", path.display()))?;
            let (read, write) = stream.into_split();
            let mut frames = FramedRead::new(FileReceiver::new(read), LineDecoder::default());
            let first = frames
                .next()
                .await
                .ok_or_else(|| format!("slot {index} closed before saying its protocol version"))?
                .map_err(|e| format!("slot {index}: {e}"))?;
            match SlotResponse::from_frame(&first) {
                Ok(SlotResponse::ProtocolVersion { version }) if version == PROTOCOL_VERSION => {}
                Ok(SlotResponse::ProtocolVersion { version }) => {
                    return Err(format!(
                        "protocol version mismatch: the server speaks {PROTOCOL_VERSION}, the \
                         worker speaks {version}; reinstall cogd so both come from one build"
                    ))
                }
                _ => {
                    return Err(format!(
                        "slot {index}: the worker did not start with its protocol version \
                         (server protocol {PROTOCOL_VERSION}); reinstall cogd"
                    ))
                }
            }
            slots.push(Slot {
                writer: tokio::sync::Mutex::new(Some(write)),
                run: Mutex::new(None),
            });
            readers.push(frames);
        }
        let slots = Arc::new(slots);
        *self.slots.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&slots);
        for (index, frames) in readers.into_iter().enumerate() {
            tokio::spawn(Arc::clone(self).read_slot(Arc::clone(&slots), index, frames));
        }
        Ok(())
    }

    async fn read_control(self: Arc<Self>, stdout: tokio::process::ChildStdout) {
        self.read_control_messages(stdout).await;
        self.control_done.send_replace(true);
    }

    async fn read_control_messages(self: &Arc<Self>, stdout: tokio::process::ChildStdout) {
        let mut frames = FramedRead::new(stdout, LineDecoder::default());
        while let Some(frame) = frames.next().await {
            let message = match frame
                .map_err(|e| e.to_string())
                .and_then(|f| serde_json::from_slice(&f).map_err(|e| e.to_string()))
            {
                Ok(message) => message,
                Err(e) => {
                    tracing::error!(error = %e, "malformed message on the worker control channel; stopping the worker");
                    self.kill();
                    return;
                }
            };
            match message {
                ControlResponse::Ready {
                    slots,
                    schema,
                    versions,
                    streaming,
                    healthcheck,
                    batch,
                } => {
                    self.streaming.store(streaming, Ordering::SeqCst);
                    *self.batch.lock().unwrap_or_else(|e| e.into_inner()) = batch;
                    self.has_healthcheck.store(healthcheck, Ordering::SeqCst);
                    if let Err(reason) = self.connect_slots(slots).await {
                        self.setup_failed(&reason);
                        self.kill();
                        continue;
                    }
                    *self.lock_ready() = (schema, versions);
                    {
                        let mut setup = self.lock_setup();
                        setup.completed_at = Some(Utc::now());
                        setup.status = "succeeded";
                        self.record_setup_time(&setup);
                    }
                    self.state.send_if_modified(|s| {
                        let starting = *s == WorkerState::Starting;
                        if starting {
                            *s = WorkerState::Ready;
                        }
                        starting
                    });
                    tracing::info!(slots, "setup succeeded; the model is ready");
                }
                ControlResponse::Log { source, data } => {
                    crate::telemetry::log_model_output(None, source, &data);
                    // Capped like a prediction's logs: setup may print forever.
                    crate::logs::append_capped(&mut self.lock_setup().logs, &data);
                    self.setup_logs.send_modify(|n| *n += 1);
                }
                ControlResponse::WorkerLog {
                    target,
                    level,
                    message,
                } => match level.as_str() {
                    "error" => tracing::error!(worker_target = %target, "{message}"),
                    "warn" => tracing::warn!(worker_target = %target, "{message}"),
                    "debug" | "trace" => tracing::debug!(worker_target = %target, "{message}"),
                    _ => tracing::info!(worker_target = %target, "{message}"),
                },
                ControlResponse::Fatal { reason } => {
                    let starting = *self.state.borrow() == WorkerState::Starting;
                    if starting {
                        self.setup_failed(&reason);
                    } else {
                        tracing::error!(%reason, "the worker reported a fatal error");
                    }
                }
                ControlResponse::Failed { slot, error } => {
                    tracing::error!(slot, %error, "a worker slot broke");
                    self.end_run(
                        slot,
                        SlotEvent::Died(format!("worker slot {slot} broke: {error}")),
                    )
                    .await;
                }
                ControlResponse::DroppedLogs {
                    count,
                    interval_millis,
                } => tracing::warn!(count, interval_millis, "the worker dropped log lines"),
                ControlResponse::HealthcheckResult { id, status, error } => {
                    self.healthchecks.answer(id, status, error)
                }
                ControlResponse::Idle { .. }
                | ControlResponse::Canceled { .. }
                | ControlResponse::ShuttingDown => {}
            }
        }
    }

    async fn read_slot(
        self: Arc<Self>,
        slots: Arc<Vec<Slot>>,
        index: usize,
        mut frames: FramedRead<FileReceiver<tokio::net::unix::OwnedReadHalf>, LineDecoder>,
    ) {
        while let Some(frame) = frames.next().await {
            if let Err(FrameError::Io(e)) = &frame {
                // The connection broke (a worker that died with output still
                // unread resets it): reported below as the worker's death.
                tracing::debug!(slot = index, error = %e, "a slot socket failed");
                break;
            }
            let message = match frame
                .map_err(|e| e.to_string())
                .and_then(|f| SlotResponse::from_frame(&f).map_err(|e| e.to_string()))
            {
                Ok(message) => message,
                Err(e) => {
                    tracing::error!(slot = index, error = %e, "malformed message on a slot socket");
                    end_run(
                        &slots[index],
                        SlotEvent::Died(format!(
                            "worker slot {index} sent a malformed message: {e}"
                        )),
                    )
                    .await;
                    break;
                }
            };
            // A final message names its prediction: in a batch, its member.
            let member = match &message {
                SlotResponse::Done { id, .. }
                | SlotResponse::Failed { id, .. }
                | SlotResponse::Canceled { id } => Some(id.clone()),
                _ => None,
            };
            // Taken only for a frame that says a file is attached to it, so
            // the next frame's file is never mistaken for this one's.
            let take_file = || frames.get_mut().take_file().map(std::fs::File::from);
            let event = match slot_event(message, take_file) {
                Some(Ok(event)) => event,
                None => continue,
                Some(Err(MissingFile)) => {
                    tracing::error!(
                        slot = index,
                        "a slot message said it carried a file, and none came"
                    );
                    end_run(
                        &slots[index],
                        SlotEvent::Died(format!(
                            "worker slot {index} sent an output without its file"
                        )),
                    )
                    .await;
                    break;
                }
            };
            if let Some(id) = member {
                end_member(&slots[index], &id, event).await;
            } else {
                let run = slots[index]
                    .run
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if let Some(run) = run {
                    if let SlotEvent::Log { source, data } = &event {
                        crate::telemetry::log_model_output(
                            Some(&*run.prediction_id),
                            *source,
                            data,
                        );
                    }
                    run.send(event).await;
                }
                if frames.read_buffer().is_empty() {
                    // Everything read so far has been handed on.
                    crate::nudge::let_the_run_act().await;
                }
            }
        }
        // The socket closed: the worker is dying. Wait briefly for its exit so
        // the run's error can say how it died.
        slots[index].writer.lock().await.take();
        let mut exit = self.exit.subscribe();
        let reason = tokio::time::timeout(Duration::from_secs(2), exit.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|r| r.clone()))
            .map(|reason| died(&reason))
            .unwrap_or_else(|| format!("the connection to worker slot {index} closed"));
        end_run(&slots[index], SlotEvent::Died(reason)).await;
    }

    /// Delivers the final event of the run in `slot` of the current worker.
    async fn end_run(&self, slot: usize, event: SlotEvent) {
        if let Some(slot) = self.slots().get(slot) {
            end_run(slot, event).await;
        }
    }

    fn setup_failed(&self, reason: &str) {
        {
            let mut setup = self.lock_setup();
            if setup.status == "starting" {
                setup.status = "failed";
                setup.completed_at = Some(Utc::now());
                self.record_setup_time(&setup);
            }
            if !setup.logs.contains(reason) {
                if !setup.logs.is_empty() && !setup.logs.ends_with('\n') {
                    setup.logs.push('\n');
                }
                setup.logs.push_str(reason);
                setup.logs.push('\n');
            }
        }
        self.setup_logs.send_modify(|n| *n += 1);
        tracing::error!(%reason, "setup failed");
        self.state.send_replace(WorkerState::SetupFailed);
    }

    /// Reports how long the setup in `record` took, once it has finished.
    fn record_setup_time(&self, record: &SetupRecord) {
        if let Some(completed) = record.completed_at {
            let time = (completed - record.started_at).to_std().unwrap_or_default();
            self.metrics.setup_finished(time);
        }
    }

    fn on_exit(self: Arc<Self>, reason: String) {
        let stopping = self.stopping.load(Ordering::SeqCst);
        // Copied out: a watch borrow held across `send_replace` would deadlock.
        let state = *self.state.borrow();
        let replacing = self.replacing.swap(false, Ordering::SeqCst);
        let mut restart = None;
        match state {
            WorkerState::Starting => {
                self.setup_failed(&format!("the worker exited during setup: {reason}"))
            }
            WorkerState::Ready if !stopping && replacing => {
                tracing::info!(%reason, "the worker was stopped; starting a new one");
                self.metrics.worker_restarted();
                self.state.send_replace(WorkerState::Starting);
                restart = Some(Duration::ZERO);
            }
            WorkerState::Ready if !stopping => match self.restart_delay() {
                Some(delay) => {
                    tracing::error!(%reason, "the worker died; restarting it");
                    self.metrics.worker_restarted();
                    self.state.send_replace(WorkerState::Starting);
                    restart = Some(delay);
                }
                None => {
                    tracing::error!(
                        %reason,
                        max_restarts = self.config.max_restarts,
                        "the worker died too often; the model is defunct"
                    );
                    self.state.send_replace(WorkerState::Defunct);
                }
            },
            _ => tracing::info!(%reason, "the worker exited"),
        }
        self.exit.send_replace(Some(reason.clone()));
        let message = died(&reason);
        let slots = self.slots();
        for index in 0..slots.len() {
            let slots = Arc::clone(&slots);
            let message = message.clone();
            tokio::spawn(async move { end_run(&slots[index], SlotEvent::Died(message)).await });
        }
        if let Some(delay) = restart {
            tokio::spawn(self.restart(delay));
        }
    }

    /// How long to wait before the next restart after a crash, or `None`
    /// when the restarts within the window are used up.
    fn restart_delay(&self) -> Option<Duration> {
        let mut restarts = self.restarts.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        while restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.config.restart_window)
        {
            restarts.pop_front();
        }
        if restarts.len() >= self.config.max_restarts {
            return None;
        }
        // Back off: 0.1 s, then doubling for each recent restart, at most 5 s.
        let delay = Duration::from_millis(100) * 2u32.pow(restarts.len().min(6) as u32);
        restarts.push_back(now);
        Some(delay.min(Duration::from_secs(5)))
    }

    /// Starts a new worker after `delay` and runs its setup again.
    async fn restart(self: Arc<Self>, delay: Duration) {
        tokio::time::sleep(delay).await;
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        *self.lock_setup() = SetupRecord {
            started_at: Utc::now(),
            completed_at: None,
            status: "starting",
            logs: String::new(),
        };
        self.control_done.send_replace(false);
        self.exit.send_replace(None);
        *self.control.lock().await = None;
        if let Err(reason) = Arc::clone(&self).launch().await {
            self.setup_failed(&reason);
            self.kill();
        }
    }

    fn kill(&self) {
        let pid = self.pid.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: sending a signal to our own child, which has not been reaped
            // (the waiter resets `pid` to 0 once it has).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
