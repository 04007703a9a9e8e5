//! What the server tells its operators: its own logs, the Prometheus metrics
//! served at `GET /metrics` ([`Metrics`]), and, when an OTLP endpoint is
//! configured, a trace of each prediction.
//!
//! Logs are JSON lines on stderr by default (`LOG_FORMAT=console` for people),
//! filtered by `COG_LOG_LEVEL` or `RUST_LOG`, and written in batches
//! (`writer.rs`: info lines wait up to 10 ms, warnings and errors go at
//! once). The service handles each prediction inside a `prediction` span
//! whose `prediction_id` field the JSON lines carry as a top-level key
//! (`json.rs` flattens span fields into each line), so every line logged
//! while a prediction is handled names it. That span is made only where
//! something reads it (traces on, or console logs); JSON lines get the id
//! from a thread-local set around the prediction's work instead
//! (`context.rs`), at a fraction of a span's cost.
//!
//! Traces (`traces.rs`) are off unless `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; then the `prediction` span and
//! its [`Phase`] children are exported, continuing the caller's `traceparent`.
//! Off, nothing is built: no exporter, no layer, and [`phase_span`] returns
//! the disabled span.

mod context;
mod json;
mod metrics;
mod traces;
mod writer;

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Span;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use context::{Entered, Logged};
pub use metrics::{Metrics, SlotCounts, METRICS_CONTENT_TYPE};
pub use traces::TraceError;

/// The part of telemetry that must be stopped: the trace exporter, which
/// sends the spans it still holds when stopped.
#[derive(Debug, Default)]
#[must_use = "call shutdown() so buffered spans are exported before exit"]
pub struct Telemetry {
    traces: Option<traces::Exporter>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter. Call it from
    /// outside the async runtime, which must still exist (the exporter sends
    /// on it).
    pub fn shutdown(mut self) {
        if let Some(exporter) = self.traces.take() {
            exporter.shutdown();
        }
    }
}

impl Drop for Telemetry {
    /// Writes the log lines still gathered.
    fn drop(&mut self) {
        writer::flush();
    }
}

/// Installs the global subscriber (later calls install nothing). Call it
/// inside the tokio runtime the server will run on: the trace exporter, when
/// configured, sends on that runtime.
pub fn init() -> Telemetry {
    init_with("info", false)
}

/// [`init`] with other defaults, for commands people read in a terminal
/// (`cogd predict`: warnings only, in console form). The environment still wins.
pub fn init_with(default_level: &str, default_console: bool) -> Telemetry {
    let directive = std::env::var("COG_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default_level.to_string());
    let filter = EnvFilter::try_new(directive.to_ascii_lowercase())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let console = std::env::var("LOG_FORMAT")
        .map(|f| f.eq_ignore_ascii_case("console"))
        .unwrap_or(default_console);
    let stderr = writer::Stderr::gathering();
    let logs = if console {
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_writer(stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(json::FlatJson)
            .with_writer(stderr)
            .boxed()
    };
    let settings = traces::configured();
    // JSON lines take the prediction's id from the context; console lines
    // show it from the span, and traces export the span.
    PREDICTION_SPANS.store(console || settings.is_some(), Ordering::Relaxed);
    let (trace_layer, exporter, trace_error) = match &settings {
        None => (None, None, None),
        Some(_) => match traces::start() {
            Ok((layer, exporter)) => (Some(layer), Some(exporter), None),
            Err(error) => (None, None, Some(error)),
        },
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(trace_layer)
        .try_init()
        .is_ok();
    if let Some(error) = trace_error {
        tracing::error!(%error, "cannot export traces; running without them");
    }
    writer::flush_before_panics();
    if !installed {
        // Another subscriber was first (a second init): spans would not
        // reach this exporter.
        return Telemetry::default();
    }
    if exporter.is_some() {
        traces::mark_enabled();
        tracing::info!("exporting traces over OTLP/HTTP");
        if let Some(protocol) = settings.and_then(|s| s.other_protocol) {
            tracing::warn!(%protocol, "this OTLP protocol is not supported; using http/protobuf");
        }
    }
    Telemetry { traces: exporter }
}

/// The steps of a prediction that get a child span of its `prediction` span
/// in traces. Outside traces they are not recorded at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Checking the input against the model's schema.
    Validate,
    /// Fetching file inputs before the run.
    Download,
    /// The run in the worker, from dispatch to its final event.
    Run,
    /// Making file outputs final (upload, or inline as data URIs).
    Upload,
}

/// A child span for `phase` of the current prediction, or the disabled span
/// when traces are off. The span lasts until it is dropped: hold it for the
/// length of the step (it need not be entered).
pub fn phase_span(phase: Phase) -> Span {
    if !traces::enabled() {
        return Span::none();
    }
    match phase {
        Phase::Validate => tracing::info_span!("validate"),
        Phase::Download => tracing::info_span!("download"),
        Phase::Run => tracing::info_span!("run"),
        Phase::Upload => tracing::info_span!("upload"),
    }
}

/// Whether predictions get a `prediction` span (see [`prediction_span`]):
/// until [`init`] says otherwise, they do.
static PREDICTION_SPANS: AtomicBool = AtomicBool::new(true);

/// The span one prediction is handled in, from admission to its terminal
/// state; `prediction_id` is recorded once known (see
/// [`record_prediction_id`]). With traces on, `trace_headers` (the W3C
/// `traceparent`/`tracestate` of the creating request) make it a child of the
/// caller's span. With traces off and JSON logs, nothing reads it: it is the
/// disabled span, and the id reaches log lines through [`Entered`] and
/// [`Logged`].
pub fn prediction_span(trace_headers: &[(String, String)]) -> Span {
    if !PREDICTION_SPANS.load(Ordering::Relaxed) {
        return Span::none();
    }
    let span = tracing::info_span!("prediction", prediction_id = tracing::field::Empty);
    if traces::enabled() {
        traces::continue_trace(&span, trace_headers);
    }
    span
}

/// Names the prediction `span` is about.
pub fn record_prediction_id(span: &Span, id: &str) {
    span.record("prediction_id", id);
}

/// Records how the prediction of `span` ended, for its trace.
pub fn record_outcome(span: &Span, status: crate::prediction::Status, error: Option<&str>) {
    if traces::enabled() {
        traces::record_outcome(span, status, error);
    }
}
