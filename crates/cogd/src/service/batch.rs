//! Dynamic batching: how a `@cog.batch` model's predictions are gathered
//! into batches, run with one call of the model, and each brought to its own
//! end.
//!
//! Admission is as for any model, except that a batched model with K slots
//! has `K × max_size` places (plus the queue): the slot pool counts places,
//! and each admitted prediction holds one until its batch has ended. The
//! prediction's task gets it ready (file inputs fetched, a large input
//! spilled) and joins the [`Batcher`]'s waiting line. The batcher's task
//! takes one of the worker's K slots, then waits until `max_size`
//! predictions wait or `max_wait` has passed since the oldest was ready
//! (0: at once), takes up to `max_size` of them, and hands them to the slot
//! as one batch ([`Supervisor::run_batch`]); so at most K batches run at
//! once. A batch's task passes the call's log lines and metrics to every
//! member and each member's final event to that member alone.
//!
//! A member's own task is an ordinary run ([`Run::execute`]): the same
//! request ([`Run::prepare_request`]) and the same [`RunLoop`] for its
//! events, as a [`Place::Member`]; its batch brings it the call's shared
//! events and its own final one as slot events, `batch_size` as a metric.
//!
//! Each member keeps its own `Prediction`: id, status, timestamps,
//! webhooks, logs (every line the call printed), metrics (`predict_time` is
//! the call's, and `batch_size` is recorded). A member canceled while it
//! waits leaves the line and never runs. One canceled while its batch runs
//! ends `canceled` at once and its output is dropped; the others go on. A
//! member past `COG_PREDICT_TIMEOUT` (counted from when it was ready) fails
//! the same way. The call itself is only stopped when no member is left to
//! want it: the worker is asked to cancel it, and if it does not stop, its
//! slot is given up (the worker replaced once none is left) after
//! `COG_CANCEL_GRACE` when a member left for its deadline, or after
//! `COG_CANCEL_KILL_AFTER` when set; otherwise it keeps its slot until it
//! returns. A member that ended early keeps its place (and its directory)
//! until its batch is over.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::run::{sleep_until, Place, Prepared, Run, RunEnd, RunLoop};
use super::slots::{Admit, SlotPermit, SlotPool};
use crate::config::BatchOverride;
use crate::ipc::{BatchSettings, MetricMode, SlotRequest};
use crate::nudge;
use crate::supervisor::{BatchEvent, SlotEvent, Supervisor};
use crate::telemetry::{self, Metrics, Phase};

/// How batches are formed, once the worker has said its model is batched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Settings {
    /// The most predictions per call.
    pub(super) max_size: usize,
    /// How long after the oldest waiting prediction was ready a batch goes
    /// even if it is not full.
    pub(super) max_wait: Duration,
}

impl Settings {
    /// The model's own settings, with the environment's winning.
    pub(super) fn new(model: BatchSettings, over: BatchOverride) -> Self {
        let model_wait = Duration::from_secs_f64(model.max_wait_ms.max(0.0) / 1000.0);
        Self {
            max_size: over.max_size.unwrap_or(model.max_size).max(1),
            max_wait: over.max_wait.unwrap_or(model_wait),
        }
    }
}

/// Gathers ready predictions into batches and runs them in the worker's
/// slots; one per service, idle unless the model is batched.
pub(super) struct Batcher {
    /// The settings while a batched model's worker is ready.
    settings: Mutex<Option<Settings>>,
    /// Predictions ready to run, oldest first.
    waiting: Mutex<VecDeque<Waiting>>,
    /// Woken when a prediction joins or leaves the line.
    changed: Notify,
    /// The worker's slots (not the places the service admits by): a batch
    /// holds one while it runs. Opened and withdrawn with the worker.
    slots: SlotPool,
    supervisor: Supervisor,
    metrics: Metrics,
    /// The service's grace for a stopped run and its kill policy.
    cancel_grace: Duration,
    cancel_kill_after: Option<Duration>,
    /// Set once the model will never serve again: who joins is failed.
    closed: AtomicBool,
}

/// A prediction in the line.
struct Waiting {
    request: SlotRequest,
    /// A large input's memory file, attached to its `predict` frame.
    attached: Option<OwnedFd>,
    /// When it joined, for `max_wait` and the wait metric.
    ready_at: Instant,
    member: MemberLink,
}

/// The batcher's side of one member.
struct MemberLink {
    events: mpsc::Sender<SlotEvent>,
    /// Why it left early, once it has.
    leave: Arc<Leave>,
}

/// A member that no longer wants its output: canceled, or past its deadline.
#[derive(Default)]
struct Leave {
    gone: CancellationToken,
    /// It left for its deadline: a call no one wants is given up on after
    /// the grace period, as a run past its time limit is.
    deadline: AtomicBool,
}

/// A prediction's place in the batcher's line, then in its batch: what
/// its run loop ([`Place::Member`]) leaves by.
pub(super) struct Member<'a> {
    batcher: &'a Batcher,
    leave: Arc<Leave>,
}

impl Member<'_> {
    /// Leaves the line, or the batch running: the member no longer wants
    /// its output (`deadline`: it is past its time limit).
    pub(super) fn leave(&self, deadline: bool) {
        if deadline {
            self.leave.deadline.store(true, Ordering::SeqCst);
        }
        self.leave.gone.cancel();
        self.batcher.prune();
    }
}

impl Batcher {
    /// A batcher that waits for a batched model's worker.
    pub(super) fn new(
        supervisor: Supervisor,
        metrics: Metrics,
        cancel_grace: Duration,
        cancel_kill_after: Option<Duration>,
    ) -> Arc<Self> {
        let batcher = Arc::new(Self {
            settings: Mutex::new(None),
            waiting: Mutex::new(VecDeque::new()),
            changed: Notify::new(),
            slots: SlotPool::new(usize::MAX),
            supervisor,
            metrics,
            cancel_grace,
            cancel_kill_after,
            closed: AtomicBool::new(false),
        });
        tokio::spawn(Arc::clone(&batcher).form_batches());
        batcher
    }

    /// The settings in force, `None` when the model is not batched.
    pub(super) fn settings(&self) -> Option<Settings> {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ready worker's model: batched (`settings`) with `slots` slots, or
    /// not. Returns how many predictions the service admits at once.
    pub(super) fn open(&self, settings: Option<Settings>, slots: usize) -> usize {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = settings;
        match settings {
            Some(settings) => {
                self.slots.open(slots);
                slots.saturating_mul(settings.max_size)
            }
            None => slots,
        }
    }

    /// The worker went: batches wait for the next one's slots.
    pub(super) fn withdraw(&self) {
        self.slots.withdraw();
    }

    /// No worker will come: what waits fails, and so will who joins.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.slots.close();
        self.changed.notify_one();
    }

    /// Puts a ready prediction in the line; its events come on the returned
    /// channel, as a slot's would, ending with a final event (or closing
    /// when it left the line before any batch took it).
    fn join(
        &self,
        request: SlotRequest,
        attached: Option<OwnedFd>,
        leave: Arc<Leave>,
    ) -> mpsc::Receiver<SlotEvent> {
        let (events, receiver) = mpsc::channel(256);
        if self.closed.load(Ordering::SeqCst) {
            let _ = events.try_send(SlotEvent::Died(STOPPED.into()));
            return receiver;
        }
        let waiting = Waiting {
            request,
            attached,
            ready_at: Instant::now(),
            member: MemberLink { events, leave },
        };
        self.lock_waiting().push_back(waiting);
        self.changed.notify_one();
        receiver
    }

    /// Drops the members that left from the line at once (a batch that
    /// takes one after it left counts it as gone), so each leaves its place
    /// now and not when the next batch forms.
    fn prune(&self) {
        self.lock_waiting()
            .retain(|w| !w.member.leave.gone.is_cancelled());
        self.changed.notify_one();
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiting>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The batcher's task: takes a slot, waits for a batch to fill (or its
    /// time to come), sends it, and again.
    async fn form_batches(self: Arc<Self>) {
        loop {
            let permit = match self.slots.admit() {
                Ok(Admit::Now(permit)) => Some(permit),
                Ok(Admit::Queued(ticket)) => ticket.acquire().await,
                Err(_) => None,
            };
            let Some(permit) = permit else {
                return self.fail_waiting();
            };
            let Some(members) = self.next_batch().await else {
                return self.fail_waiting();
            };
            if !permit.is_current() {
                // The slot's worker went while the batch filled: they wait
                // for the next worker's slots, first in line.
                let mut waiting = self.lock_waiting();
                for member in members.into_iter().rev() {
                    waiting.push_front(member);
                }
                continue;
            }
            tokio::spawn(Arc::clone(&self).run_batch(permit, members));
        }
    }

    /// Waits until a batch is due, and takes it from the line: `max_size`
    /// members waiting, or the oldest waiting for `max_wait`. `None` once
    /// closed.
    async fn next_batch(&self) -> Option<Vec<Waiting>> {
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return None;
            }
            // Registered before looking, so a join in between is not missed.
            let changed = self.changed.notified();
            let settings = self.settings();
            let due = {
                let mut waiting = self.lock_waiting();
                waiting.retain(|w| !w.member.leave.gone.is_cancelled());
                match (settings, waiting.front()) {
                    (Some(settings), Some(oldest)) => {
                        let due_at = oldest.ready_at + settings.max_wait;
                        if waiting.len() >= settings.max_size || Instant::now() >= due_at {
                            let size = settings.max_size.min(waiting.len());
                            return Some(waiting.drain(..size).collect());
                        }
                        Some(due_at)
                    }
                    _ => None,
                }
            };
            match due {
                Some(due_at) => {
                    tokio::select! {
                        () = changed => {}
                        () = nudge::sleep_precisely(due_at) => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// Fails every prediction still in the line: no worker will run it.
    fn fail_waiting(&self) {
        for waiting in self.lock_waiting().drain(..) {
            let _ = waiting
                .member
                .events
                .try_send(SlotEvent::Died(STOPPED.into()));
        }
    }

    /// Runs one batch in `permit`'s slot and brings each member its events.
    async fn run_batch(self: Arc<Self>, permit: SlotPermit, members: Vec<Waiting>) {
        let slot = permit.slot();
        let size = members.len();
        self.metrics
            .observe_batch(size, members[0].ready_at.elapsed());
        let first_id = match &members[0].request {
            SlotRequest::Predict { id, .. } => id.clone(),
            SlotRequest::Batch { .. } => String::new(),
        };
        let mut links = Vec::with_capacity(size);
        let mut requests = Vec::with_capacity(size);
        for waiting in members {
            let _ = waiting.member.events.send(batch_size(size)).await;
            links.push(waiting.member);
            requests.push((waiting.request, waiting.attached));
        }
        let mut events = match self.supervisor.run_batch(slot, requests).await {
            Ok(events) => events,
            Err(e) => {
                for link in &links {
                    let _ = link.events.send(SlotEvent::Failed(e.to_string())).await;
                }
                return;
            }
        };
        let mut ended = vec![false; size];
        let leaves: Vec<_> = links.iter().map(|link| Arc::clone(&link.leave)).collect();
        let all_gone = futures_util::future::join_all(leaves.iter().map(|l| l.gone.cancelled()));
        tokio::pin!(all_gone);
        let mut give_up_at: Option<tokio::time::Instant> = None;
        let mut stopping = false;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    None => break,
                    Some(BatchEvent::Member { index, event }) => {
                        if let Some(link) = links.get(index) {
                            ended[index] = true;
                            let _ = link.events.send(event).await;
                        }
                    }
                    Some(BatchEvent::Shared(SlotEvent::Died(reason))) => {
                        for (link, _) in links.iter().zip(&ended).filter(|(_, ended)| !**ended) {
                            let died = SlotEvent::Died(reason.clone());
                            let _ = link.events.send(died).await;
                        }
                        break;
                    }
                    Some(BatchEvent::Shared(event)) => {
                        for (link, _) in links.iter().zip(&ended).filter(|(_, ended)| !**ended) {
                            if let Some(copy) = shared_copy(&event) {
                                let _ = link.events.send(copy).await;
                            }
                        }
                    }
                },
                _ = &mut all_gone, if !stopping => {
                    // No member wants the call's outputs: stop it.
                    stopping = true;
                    self.supervisor.cancel(slot, &first_id).await;
                    let now = tokio::time::Instant::now();
                    let deadline = leaves
                        .iter()
                        .any(|l| l.deadline.load(Ordering::SeqCst))
                        .then(|| now + self.cancel_grace);
                    let kill = self.cancel_kill_after.map(|after| now + after);
                    give_up_at = [deadline, kill].into_iter().flatten().min();
                }
                () = sleep_until(give_up_at) => {
                    tracing::warn!(slot, "the stopped batch did not end; giving up its slot");
                    permit.poison();
                    if self.slots.healthy() == 0 {
                        self.supervisor
                            .replace("a stopped batch did not end and no slot is left");
                    }
                    return;
                }
            }
        }
        drop(permit);
    }
}

/// Why a prediction whose model stopped serving did not run.
const STOPPED: &str = "the model stopped serving before the prediction could run";

/// A copy of a shared event (a log line or a metric) for one member.
fn shared_copy(event: &SlotEvent) -> Option<SlotEvent> {
    match event {
        SlotEvent::Log { source, data } => Some(SlotEvent::Log {
            source: *source,
            data: data.clone(),
        }),
        SlotEvent::Metric { name, value, mode } => Some(SlotEvent::Metric {
            name: name.clone(),
            value: value.clone(),
            mode: *mode,
        }),
        _ => None,
    }
}

/// The metric that tells a member the size of its batch, sent as the
/// batch starts.
fn batch_size(size: usize) -> SlotEvent {
    SlotEvent::Metric {
        name: "batch_size".into(),
        value: size.into(),
        mode: MetricMode::Replace,
    }
}

impl Run {
    /// [`Run::execute`]'s run for a batched model: the prediction made ready
    /// as any run is, then in the batcher's line and its batch, followed by
    /// the same [`RunLoop`] as a slot's run.
    pub(super) async fn run_in_batch(
        &self,
        batcher: &Batcher,
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
        let leave = Arc::new(Leave::default());
        let events = batcher.join(request, attached, Arc::clone(&leave));
        // Lasts until the member's final event, as a slot's run does.
        let _run_span = telemetry::phase_span(Phase::Run);
        let member = Member { batcher, leave };
        RunLoop::new(self, Place::Member(member), output_dir, started, dir_used)
            .follow(events)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_wins_over_the_model() {
        let model = BatchSettings {
            max_size: 16,
            max_wait_ms: 10.0,
        };
        let own = Settings::new(model, BatchOverride::default());
        assert_eq!(own.max_size, 16);
        assert_eq!(own.max_wait, Duration::from_millis(10));
        let over = Settings::new(
            model,
            BatchOverride {
                max_size: Some(32),
                max_wait: Some(Duration::ZERO),
            },
        );
        assert_eq!(over.max_size, 32);
        assert_eq!(over.max_wait, Duration::ZERO);
    }
}
