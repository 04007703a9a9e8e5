//! Scale-out: many replicas consuming one Redis Streams consumer group
//! (`cogd serve --queue-url redis://…`, `docs/scale-out.md`).
//!
//! The consumer talks to the [`Service`] only as the HTTP API does: it
//! creates predictions, follows their handles and cancels them, and it takes
//! entries only while a slot is free (`XREADGROUP … COUNT free`), so a busy
//! replica never hoards work and HTTP predictions share the same slots.
//!
//! Each entry is claimed while it runs: the claim is renewed every third of
//! the lease, and entries whose replica stopped renewing (it died) are
//! reclaimed by the others once idle past the lease. Delivery is at least
//! once; the effect is once: a completion marker per prediction id, set
//! (`SET NX`) before `completed` is sent and the entry acknowledged, so a
//! reclaimed entry whose run finished is acknowledged without running again,
//! and of two runs of one entry only the first to finish reports. An entry
//! delivered more than `COG_QUEUE_MAX_DELIVERIES` times goes to
//! `<stream>:dead`.

mod entry;
mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};
use redis::streams::StreamId;
use redis::RedisError;
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

use crate::config::QueueConfig;
use crate::prediction::{JsonText, Outcome, Prediction, PredictionHandle, Status};
use crate::service::{Admission, AdmissionError, Health, Service};
use entry::{Refused, Request};
use store::Store;

/// The longest one blocking read waits, so a stop is noticed this quickly.
const READ_BLOCK: Duration = Duration::from_secs(1);
/// How often cancel keys are checked.
const CANCEL_POLL: Duration = Duration::from_millis(100);
/// Backoff while Redis is unreachable.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long an acknowledgement waits for the `completed` webhook.
const WEBHOOK_WAIT: Duration = Duration::from_secs(120);
/// How long the backlog query at scrape time may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);

/// The queue consumer of one replica; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    shared: Arc<Shared>,
}

struct Shared {
    service: Service,
    config: QueueConfig,
    store: Store,
    /// Whether Redis answered the latest command.
    reachable: AtomicBool,
    /// Whether an outage is being reported (logged once per outage).
    outage: AtomicBool,
    /// Entries being run or reported, by entry id.
    in_flight: Mutex<HashMap<String, Flight>>,
    /// Entries read and not yet admitted, so the free slots they will take
    /// are not counted twice.
    admitting: AtomicUsize,
    admitted: Notify,
    /// Set when the server stops: no more entries are taken.
    stopping: watch::Sender<bool>,
    /// Entry tasks alive, so the stop can wait for acknowledgements.
    tasks: watch::Sender<usize>,
    /// Predictions that failed in a row, for `COG_QUEUE_MAX_FAILURES`.
    failures: AtomicUsize,
    /// Stops the whole server (`COG_QUEUE_MAX_FAILURES`).
    shutdown: watch::Sender<bool>,
    metrics: QueueMetrics,
}

/// One entry this replica holds.
struct Flight {
    handle: Option<PredictionHandle>,
    cancel_key: Option<String>,
    /// Its cancel key was found: the cancel is the client's.
    canceled_by_key: bool,
    /// Another replica reclaimed it: this run reports nothing.
    lost: bool,
}

impl Queue {
    /// Starts consuming `config`'s stream into `service`; `shutdown` stops
    /// the server (after `COG_QUEUE_MAX_FAILURES` failures in a row).
    pub fn start(
        service: Service,
        config: QueueConfig,
        shutdown: watch::Sender<bool>,
    ) -> Result<Self, String> {
        let store = Store::new(&config, READ_BLOCK)
            .map_err(|e| format!("cannot use the queue URL: {e}"))?;
        let shared = Arc::new(Shared {
            service,
            store,
            reachable: AtomicBool::new(false),
            outage: AtomicBool::new(false),
            in_flight: Mutex::new(HashMap::new()),
            admitting: AtomicUsize::new(0),
            admitted: Notify::new(),
            stopping: watch::Sender::new(false),
            tasks: watch::Sender::new(0),
            failures: AtomicUsize::new(0),
            shutdown,
            metrics: QueueMetrics::new(),
            config,
        });
        tracing::info!(
            stream = %shared.config.stream,
            group = %shared.config.group,
            consumer = %shared.config.consumer,
            "consuming the queue"
        );
        tokio::spawn(Arc::clone(&shared).pull());
        tokio::spawn(Arc::clone(&shared).renew_leases());
        tokio::spawn(Arc::clone(&shared).watch_cancel_keys());
        Ok(Self { shared })
    }

    /// Whether the queue is reachable (`/readyz` is not ready while it is not).
    pub fn reachable(&self) -> bool {
        self.shared.reachable.load(Ordering::SeqCst)
    }

    /// Stops taking entries; those running go on.
    pub fn stop_taking(&self) {
        self.shared.stopping.send_replace(true);
    }

    /// Waits, for up to `timeout`, until every entry taken is acknowledged
    /// or left for another replica (runs canceled by the stop are not
    /// acknowledged: another replica runs them).
    pub async fn finish(&self, timeout: Duration) {
        let mut tasks = self.shared.tasks.subscribe();
        if tokio::time::timeout(timeout, tasks.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!(
                entries = *tasks.borrow(),
                "stopping with queue entries not yet acknowledged; another replica will take them"
            );
        }
    }

    /// The queue's metrics in the Prometheus text format, with the group's
    /// lag and pending count asked of Redis now.
    pub async fn render_metrics(&self) -> String {
        let shared = &self.shared;
        let metrics = &shared.metrics;
        match tokio::time::timeout(SCRAPE_TIMEOUT, shared.store.backlog()).await {
            Ok(Ok(backlog)) => {
                metrics.lag.set(
                    backlog
                        .lag
                        .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
                );
                metrics
                    .pending
                    .set(i64::try_from(backlog.pending).unwrap_or(i64::MAX));
            }
            _ => {
                metrics.lag.set(-1);
                metrics.pending.set(-1);
            }
        }
        metrics.up.set(i64::from(self.reachable()));
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&metrics.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flight>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Records that Redis answered.
    fn reached(&self) {
        if !self.reachable.swap(true, Ordering::SeqCst) {
            self.outage.store(false, Ordering::SeqCst);
            tracing::info!(stream = %self.config.stream, "the queue is reachable");
        }
    }

    /// Records that Redis did not answer.
    fn unreachable(&self, error: &RedisError) {
        self.reachable.store(false, Ordering::SeqCst);
        if !self.outage.swap(true, Ordering::SeqCst) {
            tracing::error!(%error, "the queue is unreachable; retrying");
        } else {
            tracing::debug!(%error, "the queue is still unreachable");
        }
    }

    /// Waits for a slot that no entry read is about to take; returns how many.
    async fn capacity(&self) -> usize {
        loop {
            let admitted = self.admitted.notified();
            tokio::pin!(admitted);
            admitted.as_mut().enable();
            let free = self.service.wait_for_free_slot().await;
            let free = free.saturating_sub(self.admitting.load(Ordering::SeqCst));
            if free > 0 {
                return free;
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), admitted).await;
        }
    }

    /// The loop that takes entries while slots are free.
    async fn pull(self: Arc<Self>) {
        let mut stop = self.stopping.subscribe();
        let mut backoff = BACKOFF_MIN;
        let mut have_group = false;
        let reclaim_every = (self.config.lease / 3).max(Duration::from_millis(100));
        let mut next_reclaim = Instant::now();
        let mut cursor = "0-0".to_string();
        loop {
            if self.stopping() {
                return;
            }
            if !have_group {
                match self.store.ensure_group().await {
                    Ok(()) => {
                        self.reached();
                        have_group = true;
                    }
                    Err(error) => {
                        self.unreachable(&error);
                        wait_out(&mut backoff, &mut stop).await;
                        continue;
                    }
                }
            }
            match self.service.settled().await {
                Health::Ready | Health::Busy => {}
                Health::Starting => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Health::SetupFailed | Health::Defunct => {
                    tracing::error!("the model cannot run: no more queue entries are taken");
                    return;
                }
            }
            let free = tokio::select! {
                free = self.capacity() => free,
                _ = stop.wait_for(|stop| *stop) => return,
            };
            if Instant::now() >= next_reclaim {
                match self.reclaim(&mut cursor, free).await {
                    Ok(taken) => {
                        next_reclaim = Instant::now() + reclaim_every;
                        if taken > 0 {
                            continue;
                        }
                    }
                    Err(error) => {
                        self.unreachable(&error);
                        wait_out(&mut backoff, &mut stop).await;
                        continue;
                    }
                }
            }
            let block = next_reclaim
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), READ_BLOCK);
            match self.store.read(free, block).await {
                Ok(entries) => {
                    self.reached();
                    backoff = BACKOFF_MIN;
                    for entry in entries {
                        self.metrics.read.inc();
                        self.take(entry, None);
                    }
                }
                Err(error) => {
                    if store::is_no_group(&error) {
                        tracing::warn!(
                            "the queue's group is gone (Redis restarted empty?); creating it again"
                        );
                        have_group = false;
                        continue;
                    }
                    self.unreachable(&error);
                    wait_out(&mut backoff, &mut stop).await;
                }
            }
        }
    }

    /// Reclaims up to `free` entries idle past the lease; returns how many
    /// were taken to run.
    async fn reclaim(
        self: &Arc<Self>,
        cursor: &mut String,
        free: usize,
    ) -> redis::RedisResult<usize> {
        let (claimed, next) = self.store.reclaim(self.config.lease, cursor, free).await?;
        *cursor = next;
        self.reached();
        let mut taken = 0;
        for (entry, deliveries) in claimed {
            self.metrics.reclaimed.inc();
            tracing::info!(entry_id = %entry.id, deliveries, "reclaimed a queue entry idle past its lease");
            if !self.lock().contains_key(&entry.id) {
                taken += 1;
                self.take(entry, Some(deliveries));
            }
        }
        Ok(taken)
    }

    /// Starts the task that runs one entry. `deliveries` is set for an entry
    /// reclaimed from another consumer.
    fn take(self: &Arc<Self>, entry: StreamId, deliveries: Option<u64>) {
        self.admitting.fetch_add(1, Ordering::SeqCst);
        self.tasks.send_modify(|n| *n += 1);
        self.lock().insert(
            entry.id.clone(),
            Flight {
                handle: None,
                cancel_key: None,
                canceled_by_key: false,
                lost: false,
            },
        );
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            let mut admitting = Admitting(Some(&shared));
            shared.run_entry(&entry, deliveries, &mut admitting).await;
            drop(admitting);
            shared.lock().remove(&entry.id);
            shared.tasks.send_modify(|n| *n -= 1);
        });
    }

    /// Runs one entry to its end: dead-lettered, acknowledged, or left for
    /// another replica.
    async fn run_entry(
        &self,
        entry: &StreamId,
        deliveries: Option<u64>,
        admitting: &mut Admitting<'_>,
    ) {
        let value = entry.map.get("value").and_then(|v| match v {
            redis::Value::BulkString(bytes) => Some(bytes.as_slice()),
            redis::Value::SimpleString(text) => Some(text.as_bytes()),
            _ => None,
        });
        let parsed = entry::parse(&entry.id, value);
        if let Some(deliveries) = deliveries {
            if deliveries > self.config.max_deliveries {
                let error = format!(
                    "delivered {deliveries} times without completing (the replicas that took it stopped or lost it)"
                );
                self.dead_letter(entry, &error, deliveries).await;
                return;
            }
            let id = match &parsed {
                Ok(request) => Some(&request.id),
                Err(refused) => refused.request.as_ref().map(|r| &r.id),
            };
            if let Some(id) = id {
                if self.retry(|| self.store.is_done(id)).await == Some(true) {
                    tracing::info!(entry_id = %entry.id, prediction_id = %id, "a reclaimed entry had completed: acknowledged");
                    self.acknowledge(&entry.id).await;
                    return;
                }
            }
        }
        let request = match parsed {
            Ok(request) => request,
            Err(Refused {
                error,
                request: Some(request),
            }) => {
                admitting.done();
                self.fail_unrun(&entry.id, &request, error).await;
                return;
            }
            Err(Refused {
                error,
                request: None,
            }) => {
                tracing::warn!(entry_id = %entry.id, %error, "an unreadable queue entry goes to the dead letters");
                self.dead_letter(entry, &error, deliveries.unwrap_or(1))
                    .await;
                return;
            }
        };
        if let Some(flight) = self.lock().get_mut(&entry.id) {
            flight.cancel_key = request.cancel_key.clone();
        }
        if let Some(deadline) = request.deadline {
            if chrono::Utc::now() > deadline {
                admitting.done();
                let error = format!(
                    "the prediction's deadline ({}) passed before it could start",
                    deadline.to_rfc3339()
                );
                self.fail_unrun(&entry.id, &request, error).await;
                return;
            }
        }
        let handle = loop {
            match self.service.create(request.to_new_prediction()) {
                Ok(Admission::Created(handle) | Admission::Existing(handle)) => break handle,
                Err(AdmissionError::Invalid(errors)) => {
                    admitting.done();
                    let problems: Vec<String> = errors
                        .iter()
                        .map(|e| format!("{}: {}", e.field, e.msg))
                        .collect();
                    let error = format!("invalid input: {}", problems.join("; "));
                    self.fail_unrun(&entry.id, &request, error).await;
                    return;
                }
                Err(AdmissionError::Evicted { .. }) => {
                    // It ran here and finished long ago.
                    self.acknowledge(&entry.id).await;
                    return;
                }
                Err(AdmissionError::NotReady(Health::SetupFailed | Health::Defunct)) => {
                    // This replica cannot run it: left for another.
                    return;
                }
                Err(_) => {
                    // A slot went to an HTTP prediction meanwhile: wait for
                    // the next one, holding the entry (its lease is renewed).
                    if self.stopping() {
                        return;
                    }
                    let _ = tokio::time::timeout(
                        Duration::from_millis(200),
                        self.service.wait_for_free_slot(),
                    )
                    .await;
                }
            }
        };
        admitting.done();
        if let Some(flight) = self.lock().get_mut(&entry.id) {
            flight.handle = Some(handle.clone());
        }
        self.follow(&entry.id, &request, handle).await;
    }

    /// Reports a prediction that never ran: failed with `error`.
    async fn fail_unrun(&self, entry_id: &str, request: &Request, error: String) {
        tracing::warn!(entry_id, prediction_id = %request.id, %error, "a queue entry failed without running");
        let prediction =
            Prediction::new(request.id.clone(), JsonText::from_map(&request.input), None);
        let handle = PredictionHandle::new(prediction);
        let follow = self.follow(entry_id, request, handle.clone());
        let fail = async {
            tokio::task::yield_now().await;
            handle.update(|p| p.finish(Outcome::Failed(error)));
        };
        tokio::join!(follow, fail);
    }

    /// Follows a prediction of `entry_id` to its end: its states to the
    /// response key, then the marker, `completed`, and the acknowledgement.
    async fn follow(&self, entry_id: &str, request: &Request, handle: PredictionHandle) {
        let (gate, gated) = oneshot::channel();
        let webhook = request.webhook.clone().map(|subscription| {
            self.service.webhook_sender().spawn_gated(
                &handle,
                handle.snapshot(),
                subscription,
                Some(gated),
            )
        });
        let mut updates = handle.subscribe();
        let last = loop {
            let state = updates.borrow_and_update().clone();
            if state.status.is_terminal() {
                break state;
            }
            if let Some(key) = &request.response_queue {
                if let Err(error) = self.store.set(key, &state.to_json()).await {
                    tracing::debug!(%error, "cannot set the response key");
                }
            }
            if updates.changed().await.is_err() {
                break handle.snapshot();
            }
        };
        let (by_key, lost) = self
            .lock()
            .get(entry_id)
            .map_or((false, false), |f| (f.canceled_by_key, f.lost));
        if lost {
            tracing::warn!(entry_id, prediction_id = %last.id, "another replica took this entry over; its run here reports nothing");
            return;
        }
        if last.status == Status::Canceled && !by_key && self.stopping() {
            // Canceled by the stop: another replica runs it.
            tracing::info!(entry_id, prediction_id = %last.id, "left unacknowledged for another replica");
            return;
        }
        let json = last.to_json();
        let Some(first) = self.retry(|| self.store.mark_done(&last.id, &json)).await else {
            return;
        };
        if first {
            let _ = gate.send(true);
            if let Some(key) = &request.response_queue {
                self.retry(|| self.store.set(key, &json)).await;
            }
            if let Some(webhook) = webhook {
                let _ = tokio::time::timeout(WEBHOOK_WAIT, webhook).await;
            }
            self.count_outcome(last.status);
        } else {
            tracing::info!(entry_id, prediction_id = %last.id, "the prediction had already completed elsewhere: not reported again");
        }
        self.acknowledge(entry_id).await;
    }

    /// Counts failures in a row, and stops the server past the limit.
    fn count_outcome(&self, status: Status) {
        if status != Status::Failed {
            self.failures.store(0, Ordering::SeqCst);
            return;
        }
        let failed = self.failures.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(max) = self.config.max_failures {
            if failed >= max {
                tracing::error!(failed, "too many failed predictions in a row: stopping");
                self.shutdown.send_replace(true);
            }
        }
    }

    async fn acknowledge(&self, entry_id: &str) {
        if self.retry(|| self.store.ack(entry_id)).await.is_some() {
            self.metrics.acked.inc();
        }
    }

    async fn dead_letter(&self, entry: &StreamId, error: &str, deliveries: u64) {
        tracing::warn!(entry_id = %entry.id, %error, "queue entry dead-lettered");
        if self
            .retry(|| self.store.dead_letter(entry, error, deliveries))
            .await
            .is_some()
        {
            self.metrics.dead_lettered.inc();
        }
    }

    /// Runs a Redis command until it succeeds, with backoff; `None` if the
    /// server stopped meanwhile and gave up waiting.
    async fn retry<T, F, Fut>(&self, mut command: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let mut backoff = BACKOFF_MIN;
        let mut stop = self.shutdown.subscribe();
        let mut stopped_at: Option<Instant> = None;
        loop {
            match command().await {
                Ok(value) => {
                    self.reached();
                    return Some(value);
                }
                Err(error) => {
                    self.unreachable(&error);
                    if *stop.borrow_and_update() {
                        let since = *stopped_at.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_secs(10) {
                            return None;
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Renews the claims of the entries this replica holds, every third of
    /// the lease; a run whose entry another replica took over is canceled.
    async fn renew_leases(self: Arc<Self>) {
        let every = (self.config.lease / 3).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let ids: Vec<String> = self.lock().keys().cloned().collect();
            if ids.is_empty() {
                if self.stopping() && *self.tasks.borrow() == 0 {
                    return;
                }
                continue;
            }
            match self.store.renew(&ids).await {
                Ok(lost) => {
                    self.reached();
                    let mut flights = self.lock();
                    for id in lost {
                        if let Some(flight) = flights.get_mut(&id) {
                            if !flight.lost {
                                tracing::warn!(entry_id = %id, "lost the claim on a queue entry; cancelling its run here");
                                flight.lost = true;
                                if let Some(handle) = &flight.handle {
                                    handle.cancel();
                                }
                            }
                        }
                    }
                }
                Err(error) => self.unreachable(&error),
            }
        }
    }

    /// Cancels the runs whose cancel key exists, checked for all in one
    /// round trip every [`CANCEL_POLL`].
    async fn watch_cancel_keys(self: Arc<Self>) {
        let mut tick = tokio::time::interval(CANCEL_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let watched: Vec<(String, String)> = self
                .lock()
                .iter()
                .filter(|(_, f)| !f.canceled_by_key && f.handle.is_some())
                .filter_map(|(id, f)| Some((id.clone(), f.cancel_key.clone()?)))
                .collect();
            if watched.is_empty() {
                if self.stopping() && *self.tasks.borrow() == 0 {
                    return;
                }
                continue;
            }
            let keys: Vec<String> = watched.iter().map(|(_, key)| key.clone()).collect();
            let Ok(exist) = self.store.exist(&keys).await else {
                continue;
            };
            let mut flights = self.lock();
            for ((id, _), exists) in watched.iter().zip(exist) {
                if !exists {
                    continue;
                }
                if let Some(flight) = flights.get_mut(id) {
                    flight.canceled_by_key = true;
                    if let Some(handle) = &flight.handle {
                        tracing::info!(entry_id = %id, "cancel key found: cancelling");
                        handle.cancel();
                    }
                }
            }
        }
    }
}

/// Counts an entry read and not yet admitted, until `done` or dropped.
struct Admitting<'a>(Option<&'a Shared>);

impl Admitting<'_> {
    fn done(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.admitting.fetch_sub(1, Ordering::SeqCst);
            shared.admitted.notify_waiters();
        }
    }
}

impl Drop for Admitting<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

/// Sleeps out a backoff (cut short by a stop) and doubles it.
async fn wait_out(backoff: &mut Duration, stop: &mut watch::Receiver<bool>) {
    let _ = tokio::time::timeout(*backoff, stop.wait_for(|stop| *stop)).await;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

/// The queue's counters, and the gauges sampled at scrape.
struct QueueMetrics {
    registry: Registry,
    read: IntCounter,
    acked: IntCounter,
    reclaimed: IntCounter,
    dead_lettered: IntCounter,
    lag: IntGauge,
    pending: IntGauge,
    up: IntGauge,
}

impl QueueMetrics {
    fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let counter = IntCounter::new(name, help).expect("a valid metric");
            registry
                .register(Box::new(counter.clone()))
                .expect("registered once");
            counter
        };
        let gauge = |name: &str, help: &str| {
            let gauge = IntGauge::new(name, help).expect("a valid metric");
            registry
                .register(Box::new(gauge.clone()))
                .expect("registered once");
            gauge
        };
        Self {
            read: counter(
                "cogd_queue_entries_read_total",
                "Queue entries read (new deliveries).",
            ),
            acked: counter(
                "cogd_queue_entries_acked_total",
                "Queue entries acknowledged.",
            ),
            reclaimed: counter(
                "cogd_queue_entries_reclaimed_total",
                "Queue entries reclaimed from a consumer that held them past the lease.",
            ),
            dead_lettered: counter(
                "cogd_queue_entries_dead_lettered_total",
                "Queue entries moved to the dead-letter stream.",
            ),
            lag: gauge(
                "cogd_queue_group_lag",
                "Entries of the stream not yet delivered to the group (-1: unknown).",
            ),
            pending: gauge(
                "cogd_queue_group_pending",
                "Entries delivered to the group and not yet acknowledged (-1: unknown).",
            ),
            up: gauge("cogd_queue_up", "1 while the queue is reachable."),
            registry,
        }
    }
}
