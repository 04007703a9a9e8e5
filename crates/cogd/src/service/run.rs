//! One admitted prediction's run, from its slot to its terminal state: the
//! task [`super::Service::create`] spawns for each prediction.
//!
//! [`Run::execute`] waits for a slot (a queued prediction canceled meanwhile
//! never runs), fetches the file inputs, sends the run to the worker, and
//! hands the slot's events to a [`RunLoop`]. The run loop is a small state
//! machine: a run is *running* until something asks it to stop, then
//! *stopping* until it ends or its grace period is over. Each slot event has
//! its handler (`on_log`, `on_metric`, `on_output`, `on_done`, ...); every
//! reason to stop ([`StopReason`]: a cancel, which is also how shutdown stops
//! what is left, the time limit, an output that could not be sent) goes
//! through one [`RunLoop::stop`], which asks the worker and starts the grace
//! period; every output goes through one [`RunLoop::send`], which a cancel or
//! the time limit interrupts as it would the run.
//!
//! A `@cog.batch` model's prediction takes the same steps, but holds a
//! place in a batch rather than a slot: [`Run::prepare_request`] gets it
//! ready, the batcher (`batch.rs`) runs it with others, and the same
//! [`RunLoop`] follows the events its batch brings it, as a [`Place::Member`]
//! that a stop takes out of its batch at once.
//!
//! A run still going when its grace period is over ([`RunLoop::outlast`])
//! has its prediction end without it and keeps its slot until it returns,
//! unless it is to be given up on (the time limit, `COG_CANCEL_KILL_AFTER`):
//! then its slot is poisoned and, when no slot is left, the worker replaced.
//! The slot is freed (or poisoned) before the prediction's terminal state is
//! published.

use std::ops::ControlFlow::{self, Break, Continue};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::Instrument;

use super::batch::Member;
use super::slots::{Admit, SlotPermit};
use super::Inner;
use crate::files::outputs::OutputTarget;
use crate::ipc::{Carrier, LogSource, MetricMode, OutputValue, SlotRequest};
use crate::nudge;
use crate::prediction::{JsonText, Outcome, Prediction, PredictionHandle, StreamEvent};
use crate::supervisor::SlotEvent;
use crate::telemetry::{self, Phase};

/// Inputs larger than this (as JSON) reach the worker through a file.
const SPILL_INPUT_BYTES: usize = 6 * 1024 * 1024;

/// One admitted prediction on its way through a slot.
pub(super) struct Run {
    pub(super) inner: Arc<Inner>,
    pub(super) handle: PredictionHandle,
    pub(super) id: String,
    pub(super) input: serde_json::Map<String, serde_json::Value>,
    /// `input` as JSON text, when the prediction shows it as it is (no
    /// secret redacted): the prediction's own text, shared.
    pub(super) input_text: Option<JsonText>,
    /// The inputs that are files, to fetch before the run.
    pub(super) file_inputs: Vec<String>,
    pub(super) context: serde_json::Map<String, serde_json::Value>,
    /// When it was admitted, for the queue wait.
    pub(super) admitted: Instant,
    /// The request's `output_file_prefix`.
    pub(super) output_file_prefix: Option<String>,
}

/// A run's request for the worker, as [`Run::prepare_request`] made it.
pub(super) struct Prepared {
    /// The `predict` frame.
    pub(super) request: SlotRequest,
    /// The memory file the input travels in, to attach to the frame.
    pub(super) attached: Option<OwnedFd>,
    /// Whether anything may have gone into the run's directory (fetched
    /// inputs, an input spilled to a file); the directory is looked for (a
    /// `stat`) only then.
    pub(super) dir_used: bool,
}

/// How a run in a slot ended, and what that leaves to do with its slot and
/// its directory.
pub(super) struct RunEnd {
    /// The prediction's end; `None` when it was reported already, while the
    /// run still held its slot ([`RunLoop::outlast`]).
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

impl RunEnd {
    /// The run ended as `outcome` says, its slot free to use again; its
    /// directory is looked for.
    pub(super) fn new(outcome: Outcome) -> Self {
        Self {
            outcome: Some(outcome),
            stuck: false,
            dir_used: true,
        }
    }
}

impl Run {
    /// Waits for the slot `admit` promises (for a batched model, a place in
    /// a batch), runs the prediction in it, frees the slot and then moves the
    /// prediction to its terminal state.
    pub(super) async fn execute(self, admit: Admit) {
        let permit = match admit {
            Admit::Now(permit) => Ok(permit),
            Admit::Queued(ticket) => tokio::select! {
                permit = ticket.acquire() => permit.ok_or_else(|| Outcome::Failed(
                    "the model stopped serving before the prediction could run".into(),
                )),
                // Canceled while it waited for a slot: it never runs.
                () = self.handle.canceled() => Err(Outcome::Canceled),
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
        self.publish_state(StreamEvent::start);
        // The settings of the worker whose slots (or places) were opened.
        let end = if self.inner.batcher.settings().is_some() {
            let batcher = Arc::clone(&self.inner.batcher);
            Box::pin(self.run_in_batch(&batcher, dir.clone(), started)).await
        } else {
            self.run_in_slot(&permit, dir.clone(), started).await
        };
        if end.dir_used {
            remove_run_dir(&self.id, dir).await;
        }
        // Free the slot before anyone can see the result.
        if end.stuck {
            permit.poison();
            if self.inner.slots.healthy() == 0 {
                self.inner
                    .supervisor
                    .replace("a stopped run did not end and no slot is left");
            }
        } else {
            drop(permit);
        }
        if let Some(outcome) = end.outcome {
            self.finish(outcome, Some(started)).await;
        }
    }

    /// Publishes the whole prediction as a stream event.
    fn publish_state(&self, event: fn(&Prediction) -> StreamEvent) {
        if self.handle.has_stream() {
            self.handle.publish(event(&self.handle.snapshot()));
        }
    }

    /// Moves the prediction to its terminal state, then records it (metrics,
    /// its log line); `started` is when it got its slot (`None`: it never did).
    pub(super) async fn finish(&self, outcome: Outcome, started: Option<Instant>) {
        let mut ended = None;
        self.handle.update(|p| {
            let changed = p.finish(outcome);
            ended = Some((p.status, p.error.clone()));
            changed
        });
        self.publish_state(StreamEvent::completed);
        // The records below wait for the client's answer. (Until the
        // registry hears, it keeps the whole handle, already terminal.)
        nudge::let_waiters_answer_first().await;
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
        self.inner.memory_trim.finished_one();
    }

    /// Prepares the run, sends it to the worker in `permit`'s slot and
    /// follows it to its end.
    async fn run_in_slot(
        &self,
        permit: &SlotPermit,
        output_dir: PathBuf,
        started: Instant,
    ) -> RunEnd {
        let Prepared {
            request,
            attached,
            dir_used,
        } = match self.prepare_request(&output_dir).await {
            Ok(prepared) => prepared,
            Err(outcome) => return RunEnd::new(outcome),
        };
        if !permit.is_current() {
            // Its slot's worker went away while the inputs were fetched.
            return RunEnd::new(Outcome::Failed(
                "the worker stopped before the prediction reached it".into(),
            ));
        }
        let slot = permit.slot();
        // Lasts until the run's final event: every return below ends it.
        let _run_span = telemetry::phase_span(Phase::Run);
        let events = match self.inner.supervisor.run(slot, &request, attached).await {
            Ok(events) => events,
            Err(e) => return RunEnd::new(Outcome::Failed(e.to_string())),
        };
        RunLoop::new(self, Place::Slot(slot), output_dir, started, dir_used)
            .follow(events)
            .await
    }

    /// The request for the worker: the input with its files fetched (a
    /// cancel meanwhile ends the prediction), and a large input spilled to a
    /// file, attached to the request or in the run's directory. Shared by a
    /// slot's run and a batch member's.
    pub(super) async fn prepare_request(&self, output_dir: &Path) -> Result<Prepared, Outcome> {
        let localized = self.localize(output_dir).await?;
        if self.handle.is_cancel_requested() {
            return Err(Outcome::Canceled);
        }
        // A large input travels as a file: frames stay
        // small. Its text is the prediction's own when nothing changed it.
        let text = match (&localized, &self.input_text) {
            (None, Some(text)) => text.clone(),
            (localized, _) => JsonText::from_map(localized.as_ref().unwrap_or(&self.input)),
        };
        let input = if text.get().len() > SPILL_INPUT_BYTES {
            let dir = output_dir.to_path_buf();
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
            spilled.map_err(|e| Outcome::Failed(format!("cannot write the input: {e}")))?
        } else {
            Carrier::Inline(text.to_raw())
        };
        // Fetched inputs and a spilled input file are in the run's directory.
        let dir_used = !self.file_inputs.is_empty() || matches!(input, Carrier::File(_));
        let (input, attached) = input.detach();
        let request = SlotRequest::Predict {
            id: self.id.clone(),
            input: Some(input),
            output_dir: output_dir.to_path_buf(),
            context: self.context.clone(),
        };
        Ok(Prepared {
            request,
            attached,
            dir_used,
        })
    }

    /// The input with its file inputs fetched into `inputs/` of the run's
    /// directory, their URLs replaced by local paths; `None` when it has no
    /// file inputs.
    async fn localize(
        &self,
        output_dir: &Path,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, Outcome> {
        if self.file_inputs.is_empty() {
            return Ok(None);
        }
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
            () = self.handle.canceled() => return Err(Outcome::Canceled),
        };
        drop(download);
        fetched.map_err(Outcome::Failed)?;
        Ok(Some(input))
    }

    /// An output with its files sent: inline, or uploaded to the request's
    /// prefix or `--upload-url`.
    async fn send_output(&self, output: OutputValue, dir: &Path) -> Result<JsonText, String> {
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

/// Why a run is asked to stop before it ends by itself.
#[derive(Debug)]
enum StopReason {
    /// Its prediction was canceled: by a client, or by a server that is
    /// shutting down (`Service::drain`).
    Canceled,
    /// It ran past its time limit (`COG_PREDICT_TIMEOUT`).
    TimedOut,
    /// One of its outputs could not be sent (this error): it cannot succeed.
    OutputUnsent(String),
}

/// A run asked to stop, and how long it is waited for.
struct Stopping {
    /// Why it was asked; says how its prediction ends.
    why: StopReason,
    /// When its prediction ends without waiting for it
    /// (`COG_CANCEL_GRACE` after it was asked).
    report_at: tokio::time::Instant,
    /// When its slot is given up, if it has not returned by then
    /// (`COG_CANCEL_KILL_AFTER`, or the time limit); `None`: never.
    give_up_at: Option<tokio::time::Instant>,
}

/// What interrupts a run, or the sending of its output.
enum Interrupt {
    /// A reason to stop a run not yet asked to.
    Stop(StopReason),
    /// A run asked to stop has had its grace period.
    GraceOver,
}

/// What can interrupt a run as things stand: while it runs, a cancel or its
/// time limit; once it has been asked to stop, the end of its grace period.
struct Interrupts<'a> {
    handle: &'a PredictionHandle,
    running: bool,
    deadline: Option<tokio::time::Instant>,
    grace_over_at: Option<tokio::time::Instant>,
}

impl Interrupts<'_> {
    /// Waits for the first interruption.
    async fn wait(self) -> Interrupt {
        tokio::select! {
            () = self.handle.canceled(), if self.running => Interrupt::Stop(StopReason::Canceled),
            () = sleep_until(self.deadline), if self.running => Interrupt::Stop(StopReason::TimedOut),
            () = sleep_until(self.grace_over_at) => Interrupt::GraceOver,
        }
    }
}

/// The sending of an output's files.
enum Sent {
    /// Sent: the output as the prediction shows it.
    Ready(JsonText),
    /// Sending failed with this error.
    Failed(String),
    /// Given up: something interrupted it.
    Interrupted(Interrupt),
}

/// Where a run runs, which says how it is stopped.
pub(super) enum Place<'a> {
    /// Alone in this worker slot: a stop asks the worker to cancel it, and
    /// waits for it for the grace period.
    Slot(usize),
    /// A member of a batch (`batch.rs`): a stop takes it out of its batch,
    /// and its prediction ends at once; the call goes on for the others.
    Member(Member<'a>),
}

/// A run in its place (a slot, or a batch), from the moment the worker (or
/// the batcher) has it to its end: a state machine driven by the slot's
/// events and by what stops a run.
pub(super) struct RunLoop<'a> {
    run: &'a Run,
    place: Place<'a>,
    /// The run's directory, where its output files are.
    output_dir: PathBuf,
    /// When it got its slot.
    started: Instant,
    /// When it passes its time limit (`COG_PREDICT_TIMEOUT`).
    deadline: Option<tokio::time::Instant>,
    /// `None` while it runs; set once it has been asked to stop.
    stopping: Option<Stopping>,
    /// Whether anything may have gone into the run's directory.
    dir_used: bool,
}

impl<'a> RunLoop<'a> {
    /// A run the worker (or the batcher) has now, in `place`; its time limit
    /// counts from now.
    pub(super) fn new(
        run: &'a Run,
        place: Place<'a>,
        output_dir: PathBuf,
        started: Instant,
        dir_used: bool,
    ) -> Self {
        let time_limit = run.inner.config.predict_timeout;
        Self {
            run,
            place,
            output_dir,
            started,
            deadline: time_limit.map(|limit| tokio::time::Instant::now() + limit),
            stopping: None,
            dir_used,
        }
    }

    /// Follows the run's `events` to its end.
    pub(super) async fn follow(mut self, mut events: mpsc::Receiver<SlotEvent>) -> RunEnd {
        if let Place::Slot(_) = self.place {
            // The first event is often only microseconds away: watched for
            // without sleeping, then received below with the rest. (A batch
            // member's first event waits for its batch to form.)
            nudge::watch_for_first_event(&events).await;
        }
        loop {
            let interrupts = self.interrupts();
            let flow = tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.on_event(event).await,
                    None => Break(RunEnd::new(Outcome::Failed(
                        "the worker stopped reporting on this prediction".into(),
                    ))),
                },
                why = interrupts.wait() => match why {
                    Interrupt::Stop(why) => {
                        self.stop(why).await;
                        match self.place {
                            Place::Slot(_) => Continue(()),
                            // Out of its batch: it ends now.
                            Place::Member(_) => Break(self.outlast(&mut events).await),
                        }
                    }
                    Interrupt::GraceOver => Break(self.outlast(&mut events).await),
                },
            };
            if let Break(end) = flow {
                return end;
            }
        }
    }

    /// What can interrupt the run now.
    fn interrupts(&self) -> Interrupts<'a> {
        let run: &'a Run = self.run;
        Interrupts {
            handle: &run.handle,
            running: self.stopping.is_none(),
            deadline: self.deadline,
            grace_over_at: self.stopping.as_ref().map(|stopping| stopping.report_at),
        }
    }

    /// Asks the worker to stop the run, and starts its grace period. It is
    /// given up on at `COG_CANCEL_KILL_AFTER` from now or at its time limit,
    /// whichever comes first; past its time limit, when its grace is over.
    /// A batch member leaves its batch instead, with no grace: its batch
    /// stops the call once no member wants it.
    async fn stop(&mut self, why: StopReason) {
        let config = &self.run.inner.config;
        let now = tokio::time::Instant::now();
        let (report_at, give_up_at) = match &self.place {
            Place::Slot(slot) => {
                self.run.inner.supervisor.cancel(*slot, &self.run.id).await;
                let report_at = now + config.cancel_grace;
                let give_up_at = match why {
                    StopReason::TimedOut => Some(report_at),
                    StopReason::Canceled | StopReason::OutputUnsent(_) => {
                        let kill_at = config.cancel_kill_after.map(|after| now + after);
                        [kill_at, self.deadline].into_iter().flatten().min()
                    }
                };
                (report_at, give_up_at)
            }
            Place::Member(member) => {
                member.leave(matches!(why, StopReason::TimedOut));
                (now, None)
            }
        };
        self.stopping = Some(Stopping {
            why,
            report_at,
            give_up_at,
        });
    }

    /// How the prediction ends for a run stopped for `why`.
    fn stopped_by(&self, why: StopReason) -> Outcome {
        match why {
            StopReason::Canceled => Outcome::Canceled,
            StopReason::TimedOut => self.timed_out("and was stopped"),
            StopReason::OutputUnsent(error) => Outcome::Failed(error),
        }
    }

    /// How the prediction ends for a run that stopped early: as it was asked
    /// to stop, or canceled, as the worker reported, when it was not.
    fn stopped(&mut self) -> Outcome {
        match self.stopping.take() {
            Some(stopping) => self.stopped_by(stopping.why),
            None => Outcome::Canceled,
        }
    }

    /// The failure of a run past its time limit, `what` it was doing then.
    fn timed_out(&self, what: &str) -> Outcome {
        let limit = self.run.inner.config.predict_timeout;
        let limit = limit.unwrap_or_default().as_secs_f64();
        Outcome::Failed(format!(
            "the prediction took longer than {limit} s (COG_PREDICT_TIMEOUT) {what}"
        ))
    }

    /// Acts on one event of the run.
    async fn on_event(&mut self, event: SlotEvent) -> ControlFlow<RunEnd> {
        match event {
            SlotEvent::Log { source, data } => self.on_log(source, &data),
            SlotEvent::Metric { name, value, mode } => self.on_metric(&name, value, mode),
            SlotEvent::Output { output, index } => self.on_output(output, index).await,
            // The final events.
            SlotEvent::Done {
                predict_time,
                is_stream,
                output,
            } => return Break(self.on_done(predict_time, is_stream, output).await),
            SlotEvent::Failed(error) => return Break(RunEnd::new(Outcome::Failed(error))),
            SlotEvent::Canceled => return Break(RunEnd::new(self.stopped())),
            SlotEvent::Died(reason) => return Break(self.on_died(reason)),
        }
        Continue(())
    }

    /// A line the run wrote: into the logs, and to stream readers.
    fn on_log(&self, source: LogSource, data: &str) {
        let handle = &self.run.handle;
        // Stream readers get what the logs kept: nothing past the cap.
        let stream = handle.has_stream();
        let mut kept = None;
        handle.update(|p| match p.append_log(data) {
            Some(added) => {
                kept = stream.then(|| added.into_owned());
                true
            }
            None => false,
        });
        if let Some(data) = kept {
            handle.publish(StreamEvent::log(source, &data));
        }
    }

    /// A custom metric the run recorded: into the prediction, and to stream
    /// readers.
    fn on_metric(&self, name: &str, value: serde_json::Value, mode: MetricMode) {
        let handle = &self.run.handle;
        let event = handle
            .has_stream()
            .then(|| StreamEvent::metric(name, &value, mode));
        let mut refused = None;
        handle.update(|p| match p.record_metric(name, value, mode) {
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
                tracing::warn!(prediction_id = %self.run.id, %error, "ignoring a metric the worker should have refused")
            }
            (None, Some(event)) => handle.publish(event),
            (None, None) => {}
        }
    }

    /// A stream chunk: its files sent, then shown. One that cannot be sent
    /// stops the run, which then fails.
    async fn on_output(&mut self, output: OutputValue, index: u64) {
        if self.stopping.is_some() {
            // Being stopped: what it yields now is not sent.
            return;
        }
        // Each chunk's files are sent as it comes, before it is shown.
        let output = match self.send(output).await {
            Sent::Ready(output) => output,
            // Back to the loop, which acts on the cancel or the time limit.
            Sent::Interrupted(_) => return,
            Sent::Failed(error) => return self.stop(StopReason::OutputUnsent(error)).await,
        };
        let handle = &self.run.handle;
        if handle.has_stream() {
            handle.publish(StreamEvent::output(&output, index));
        }
        handle.update(|p| {
            p.push_output(output);
            true
        })
    }

    /// The run returned: its output's files sent, it succeeds, unless a
    /// chunk could not be sent, or a cancel or the time limit comes while
    /// the files are being sent.
    async fn on_done(
        &mut self,
        predict_time: f64,
        is_stream: bool,
        output: Option<OutputValue>,
    ) -> RunEnd {
        if let Some(Stopping {
            why: StopReason::OutputUnsent(_),
            ..
        }) = self.stopping
        {
            // A chunk could not be sent: the run cannot succeed.
            return RunEnd::new(self.stopped());
        }
        if let Some(output) = output {
            let output = match self.send(output).await {
                Sent::Ready(output) => output,
                Sent::Failed(error) => return RunEnd::new(Outcome::Failed(error)),
                Sent::Interrupted(Interrupt::Stop(StopReason::TimedOut)) => {
                    return RunEnd::new(self.timed_out("while its files were sent"));
                }
                Sent::Interrupted(Interrupt::Stop(why)) => {
                    return RunEnd::new(self.stopped_by(why))
                }
                // Stopped while its files were being sent.
                Sent::Interrupted(Interrupt::GraceOver) => return RunEnd::new(self.stopped()),
            };
            self.run.handle.update(|p| {
                p.push_output(output);
                false
            });
        }
        RunEnd {
            dir_used: self.dir_used,
            ..RunEnd::new(Outcome::Succeeded {
                predict_time,
                is_stream,
            })
        }
    }

    /// The worker (or the slot) died under the run: it fails, unless it was
    /// being stopped, when it ends as it was asked to.
    fn on_died(&mut self, reason: String) -> RunEnd {
        if self.stopping.is_some() {
            tracing::debug!(prediction_id = %self.run.id, %reason, "the worker died after a cancel");
            return RunEnd::new(self.stopped());
        }
        RunEnd::new(Outcome::Failed(reason))
    }

    /// Sends an output's files (inline, or uploaded to the request's prefix
    /// or `--upload-url`), unless what would interrupt the run comes first.
    async fn send(&mut self, output: OutputValue) -> Sent {
        self.dir_used |= output.uses_dir();
        let interrupts = self.interrupts();
        tokio::select! {
            sent = self.run.send_output(output, &self.output_dir) => match sent {
                Ok(output) => Sent::Ready(output),
                Err(error) => Sent::Failed(error),
            },
            why = interrupts.wait() => Sent::Interrupted(why),
        }
    }

    /// A run asked to stop that is still going after its grace period (stuck
    /// in a native call, or swallowing the cancel): unless it is to be given
    /// up on already, its prediction ends now for its clients, and the run
    /// keeps its slot until it returns, so the worker (and its setup) is not
    /// lost for it. At `give_up_at` the slot is given up instead.
    ///
    /// A batch member that left its batch is outlasted the same way: it
    /// keeps its place (and its directory) until its batch has ended.
    async fn outlast(&mut self, events: &mut mpsc::Receiver<SlotEvent>) -> RunEnd {
        let slot = match self.place {
            Place::Slot(slot) => Some(slot),
            Place::Member(_) => None,
        };
        let give_up_at = self.stopping.as_ref().and_then(|s| s.give_up_at);
        let outcome = self.stopped();
        let end = |outcome, stuck| RunEnd {
            outcome,
            stuck,
            dir_used: true,
        };
        if give_up_at.is_some_and(|at| at <= tokio::time::Instant::now()) {
            tracing::warn!(slot, "the stopped run did not end; giving up its slot");
            return end(Some(outcome), true);
        }
        if slot.is_some() {
            tracing::warn!(
                slot,
                "the stopped run goes on; it keeps its slot until it returns"
            );
        }
        self.run.finish(outcome, Some(self.started)).await;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) if !event.is_final() => {}
                    _ => {
                        if slot.is_some() {
                            tracing::info!(slot, "the stopped run has returned; its slot is free");
                        }
                        return end(None, false);
                    }
                },
                () = sleep_until(give_up_at) => {
                    tracing::warn!(slot, "the stopped run did not end; giving up its slot");
                    return end(None, true);
                }
            }
        }
    }
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
        super::generate_id()
    }
}

/// Sleeps until `deadline`, or forever when there is none.
pub(super) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prediction::Prediction;
    use std::time::Duration;

    /// The first interruption, which must come within seconds.
    async fn first(interrupts: Interrupts<'_>) -> Interrupt {
        tokio::time::timeout(Duration::from_secs(5), interrupts.wait())
            .await
            .expect("interrupted")
    }

    #[tokio::test]
    async fn a_run_is_interrupted_by_a_cancel_or_its_deadline_then_only_by_its_grace() {
        let handle =
            PredictionHandle::new(Prediction::new("p".into(), &serde_json::json!({}), None));
        let now = tokio::time::Instant::now();
        let soon = Some(now + Duration::from_millis(20));
        let interrupts = |running, deadline, grace_over_at| Interrupts {
            handle: &handle,
            running,
            deadline,
            grace_over_at,
        };
        // Running: nothing interrupts it before its deadline, which does.
        let nothing = tokio::time::timeout(
            Duration::from_millis(20),
            interrupts(true, None, None).wait(),
        );
        assert!(nothing.await.is_err());
        let why = first(interrupts(true, soon, None)).await;
        assert!(matches!(why, Interrupt::Stop(StopReason::TimedOut)));
        // A cancel interrupts it at once.
        handle.cancel();
        let far = Some(now + Duration::from_secs(60));
        let why = first(interrupts(true, far, None)).await;
        assert!(matches!(why, Interrupt::Stop(StopReason::Canceled)));
        // Stopping: the cancel and the deadline are behind it; only the end
        // of its grace period interrupts it.
        let why = first(interrupts(false, Some(now), soon)).await;
        assert!(matches!(why, Interrupt::GraceOver));
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
