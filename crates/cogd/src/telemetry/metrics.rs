//! The operator metrics served at `GET /metrics`, in the Prometheus text
//! exposition format (0.0.4). Not to be confused with a prediction's custom
//! metrics (`crate::custom_metrics`), which belong to the prediction.
//!
//! Counters and histograms are atomics, updated where things happen: the
//! service (predictions, run and queue times), the webhook sender, the
//! supervisor (restarts, setup). Each counter is resolved to its label once,
//! at start, so an update is an atomic add and never a map lookup or a lock.
//! The slot gauges cost nothing per prediction: they are read from the slot
//! pool when scraped.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::prediction::Status;

/// The `Content-Type` of what [`Metrics::render`] returns.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets of run times, in seconds: model runs take from milliseconds to
/// many minutes.
const RUN_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0,
];
/// Buckets of waits for a slot, in seconds: usually none at all, with a queue
/// up to some runs' worth.
const WAIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Buckets of batch sizes (`@cog.batch` models): powers of two up to 256.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Buckets of the wait before a batch starts, in seconds: up to its
/// `max_wait_ms` (often a few milliseconds), more when every slot is busy.
const BATCH_WAIT_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
];

/// The slots as the pool sees them when scraped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotCounts {
    /// Slots that can run predictions (not poisoned).
    pub total: usize,
    /// Of those, the ones running a prediction now.
    pub busy: usize,
}

/// The server's metrics; one per server, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    succeeded: IntCounter,
    failed: IntCounter,
    canceled: IntCounter,
    run_seconds: Histogram,
    queue_wait_seconds: Histogram,
    batch_size: Histogram,
    batch_wait_seconds: Histogram,
    slots: IntGauge,
    slots_busy: IntGauge,
    webhook_deliveries: IntCounter,
    webhook_failures: IntCounter,
    worker_restarts: IntCounter,
    setup_seconds: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero.
    pub fn new() -> Self {
        let registry = Registry::new();
        let predictions = IntCounterVec::new(
            Opts::new(
                "cogd_predictions_total",
                "Predictions that reached a final status, by that status.",
            ),
            &["status"],
        )
        .expect("the metric is well-formed");
        let run_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "cogd_prediction_run_seconds",
                "Seconds from a prediction getting a slot to its final status (file inputs, the \
                 run in the worker, outputs).",
            )
            .buckets(RUN_BUCKETS.to_vec()),
        )
        .expect("the metric is well-formed");
        let queue_wait_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "cogd_prediction_queue_wait_seconds",
                "Seconds from a prediction's admission to it getting a slot (0 unless it queued).",
            )
            .buckets(WAIT_BUCKETS.to_vec()),
        )
        .expect("the metric is well-formed");
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                .expect("the metric is well-formed")
        };
        let batch_size = histogram(
            "cogd_batch_size",
            "Predictions in each batch a @cog.batch model was called with.",
            BATCH_SIZE_BUCKETS,
        );
        let batch_wait_seconds = histogram(
            "cogd_batch_wait_seconds",
            "Seconds from the first prediction of a batch being ready to run to the batch \
             starting (@cog.batch models).",
            BATCH_WAIT_BUCKETS,
        );
        let gauge =
            |name: &str, help: &str| IntGauge::new(name, help).expect("the metric is well-formed");
        let counter = |name: &str, help: &str| {
            IntCounter::new(name, help).expect("the metric is well-formed")
        };
        let inner = Inner {
            succeeded: predictions.with_label_values(&["succeeded"]),
            failed: predictions.with_label_values(&["failed"]),
            canceled: predictions.with_label_values(&["canceled"]),
            run_seconds,
            queue_wait_seconds,
            batch_size,
            batch_wait_seconds,
            slots: gauge("cogd_slots", "Slots the model can run predictions in."),
            slots_busy: gauge("cogd_slots_busy", "Slots running a prediction now."),
            webhook_deliveries: counter(
                "cogd_webhook_deliveries_total",
                "Webhook requests the receiver accepted (2xx).",
            ),
            webhook_failures: counter(
                "cogd_webhook_failures_total",
                "Webhook requests that failed (no answer or an error status), retries included.",
            ),
            worker_restarts: counter(
                "cogd_worker_restarts_total",
                "Times the worker died after setup and was started again.",
            ),
            setup_seconds: Gauge::new(
                "cogd_setup_duration_seconds",
                "Seconds the latest setup of the model took, until ready or failed.",
            )
            .expect("the metric is well-formed"),
            registry,
        };
        let build_info = IntGauge::with_opts(
            Opts::new("cogd_build_info", "Always 1; the cogd version is a label.")
                .const_label("version", crate::VERSION),
        )
        .expect("the metric is well-formed");
        build_info.set(1);
        let collectors: [Box<dyn prometheus::core::Collector>; 12] = [
            Box::new(predictions),
            Box::new(inner.run_seconds.clone()),
            Box::new(inner.queue_wait_seconds.clone()),
            Box::new(inner.batch_size.clone()),
            Box::new(inner.batch_wait_seconds.clone()),
            Box::new(inner.slots.clone()),
            Box::new(inner.slots_busy.clone()),
            Box::new(inner.webhook_deliveries.clone()),
            Box::new(inner.webhook_failures.clone()),
            Box::new(inner.worker_restarts.clone()),
            Box::new(inner.setup_seconds.clone()),
            Box::new(build_info),
        ];
        for collector in collectors {
            inner
                .registry
                .register(collector)
                .expect("each metric is registered once");
        }
        Self {
            inner: Arc::new(inner),
        }
    }

    /// A prediction reached `status` (a terminal one; others are ignored).
    pub fn prediction_finished(&self, status: Status) {
        match status {
            Status::Succeeded => self.inner.succeeded.inc(),
            Status::Failed => self.inner.failed.inc(),
            Status::Canceled => self.inner.canceled.inc(),
            Status::Starting | Status::Processing => {}
        }
    }

    /// A prediction held a slot for `time`.
    pub fn observe_run(&self, time: Duration) {
        self.inner.run_seconds.observe(time.as_secs_f64());
    }

    /// A prediction waited `time` for its slot.
    pub fn observe_queue_wait(&self, time: Duration) {
        self.inner.queue_wait_seconds.observe(time.as_secs_f64());
    }

    /// A `@cog.batch` model was called with `size` predictions, the first of
    /// which had been ready to run for `wait`.
    pub fn observe_batch(&self, size: usize, wait: Duration) {
        self.inner.batch_size.observe(size as f64);
        self.inner.batch_wait_seconds.observe(wait.as_secs_f64());
    }

    /// A webhook receiver accepted a request.
    pub fn webhook_delivered(&self) {
        self.inner.webhook_deliveries.inc();
    }

    /// A webhook request failed.
    pub fn webhook_failed(&self) {
        self.inner.webhook_failures.inc();
    }

    /// The worker died and is being started again.
    pub fn worker_restarted(&self) {
        self.inner.worker_restarts.inc();
    }

    /// A setup finished (either way) after `time`.
    pub fn setup_finished(&self, time: Duration) {
        self.inner.setup_seconds.set(time.as_secs_f64());
    }

    /// Every metric in the text exposition format, with the slot gauges set
    /// from `slots`.
    pub fn render(&self, slots: SlotCounts) -> String {
        self.inner.slots.set(gauge_value(slots.total));
        self.inner.slots_busy.set(gauge_value(slots.busy));
        let mut text = Vec::new();
        // Writing to a Vec cannot fail, and every family has its help text.
        if let Err(error) = TextEncoder::new().encode(&self.inner.registry.gather(), &mut text) {
            tracing::error!(%error, "cannot encode the metrics");
        }
        String::from_utf8(text).unwrap_or_default()
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name` (with its labels, as written) in `text`.
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn batches_are_counted_by_size_and_wait() {
        let metrics = Metrics::new();
        metrics.observe_batch(3, Duration::from_millis(4));
        metrics.observe_batch(16, Duration::ZERO);
        let text = metrics.render(SlotCounts { total: 1, busy: 0 });
        let at = |name| sample(&text, name);
        assert_eq!(at("cogd_batch_size_count"), Some(2.0));
        assert_eq!(at("cogd_batch_size_sum"), Some(19.0));
        assert_eq!(at(r#"cogd_batch_size_bucket{le="4"}"#), Some(1.0));
        assert_eq!(
            at(r#"cogd_batch_wait_seconds_bucket{le="0.005"}"#),
            Some(2.0)
        );
        assert_eq!(
            at(r#"cogd_batch_wait_seconds_bucket{le="0.002"}"#),
            Some(1.0)
        );
    }

    #[test]
    fn counters_move_by_status_and_gauges_follow_the_slots() {
        let metrics = Metrics::new();
        metrics.prediction_finished(Status::Succeeded);
        metrics.prediction_finished(Status::Succeeded);
        metrics.prediction_finished(Status::Canceled);
        metrics.prediction_finished(Status::Processing);
        metrics.observe_run(Duration::from_millis(30));
        metrics.observe_queue_wait(Duration::ZERO);
        metrics.webhook_failed();
        let text = metrics.render(SlotCounts { total: 4, busy: 1 });
        let at = |name| sample(&text, name);
        assert_eq!(
            at(r#"cogd_predictions_total{status="succeeded"}"#),
            Some(2.0)
        );
        assert_eq!(
            at(r#"cogd_predictions_total{status="canceled"}"#),
            Some(1.0)
        );
        assert_eq!(at(r#"cogd_predictions_total{status="failed"}"#), Some(0.0));
        assert_eq!(at("cogd_prediction_run_seconds_count"), Some(1.0));
        assert_eq!(
            at(r#"cogd_prediction_run_seconds_bucket{le="0.025"}"#),
            Some(0.0)
        );
        assert_eq!(
            at(r#"cogd_prediction_run_seconds_bucket{le="0.05"}"#),
            Some(1.0)
        );
        assert_eq!(at("cogd_prediction_queue_wait_seconds_count"), Some(1.0));
        assert_eq!(at("cogd_slots"), Some(4.0));
        assert_eq!(at("cogd_slots_busy"), Some(1.0));
        assert_eq!(at("cogd_webhook_failures_total"), Some(1.0));
        assert_eq!(at("cogd_webhook_deliveries_total"), Some(0.0));
        assert_eq!(at("cogd_worker_restarts_total"), Some(0.0));
        assert!(text.contains("# TYPE cogd_predictions_total counter"));
    }
}
