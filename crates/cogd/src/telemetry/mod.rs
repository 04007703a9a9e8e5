//! What the server tells its operators: its own logs, the Prometheus metrics
//! served at `GET /metrics` ([`Metrics`]), and, when an OTLP endpoint is
//! configured, a trace of each prediction.
//!
//! Logs are JSON lines on stderr by default (`LOG_FORMAT=console` for people),
//! filtered by `COG_LOG_LEVEL` (a level, as Cog's CLI passes it, or a filter)
//! or `RUST_LOG`, and written in batches
//! (`writer.rs`: info lines wait up to 10 ms, warnings and errors go at
//! once). The service handles each prediction inside a `prediction` span
//! whose `prediction_id` field the JSON lines carry as a top-level key
//! (`json.rs` flattens span fields into each line), so every line logged
//! while a prediction is handled names it. That span is made only where
//! something reads it (traces on, or console logs); JSON lines get the id
//! from a thread-local set around the prediction's work instead
//! (`context.rs`), at a fraction of a span's cost. Each line the model prints
//! is logged too, at info, under [`SETUP_OUTPUT`] or [`RUN_OUTPUT`] (with its
//! prediction's id), with `source` saying `stdout` or `stderr`.
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

use tracing::{Level, Span};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use context::{Entered, Logged};
pub use metrics::{Metrics, SlotCounts, METRICS_CONTENT_TYPE};
pub use traces::TraceError;

use crate::ipc::LogSource;

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

/// [`init`] for a command people read in a terminal, `cogd predict`:
/// warnings only by default, in console form (the environment still wins),
/// and never the model's output, which the command shows as it is.
pub fn init_for_terminal() -> Telemetry {
    init_with("warn", true)
}

fn init_with(default_level: &str, terminal: bool) -> Telemetry {
    let mut directive = std::env::var("COG_LOG_LEVEL")
        .map(|level| filter_directive(&level, !terminal))
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default_level.to_string());
    if terminal {
        directive.push_str(&format!(",{SETUP_OUTPUT}=off,{RUN_OUTPUT}=off"));
    }
    let default_console = terminal;
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

/// Where each line the model prints during setup is logged, at info: it
/// stays visible whatever level `COG_LOG_LEVEL` names, as Cog's setup output
/// does. No module of the server is under `cogd::model`, so a filter on it
/// selects the model's lines alone.
pub const SETUP_OUTPUT: &str = "cogd::model::setup";

/// Where each line a run prints is logged, at info, with its prediction.
pub const RUN_OUTPUT: &str = "cogd::model::prediction";

/// Logs each line of `data`, which the model wrote to `source`, at info:
/// under [`RUN_OUTPUT`] with the id of the prediction whose run wrote it, or
/// under [`SETUP_OUTPUT`] when `prediction_id` is `None`. The worker sends
/// output a line at a time (a longer line in pieces, an unfinished last line
/// when the run ends), so each piece is logged as a line of its own; the
/// prediction's `logs` keep the text as it was written.
pub fn log_model_output(prediction_id: Option<&str>, source: LogSource, data: &str) {
    let source = match source {
        LogSource::Stdout => "stdout",
        LogSource::Stderr => "stderr",
    };
    let lines = data.strip_suffix('\n').unwrap_or(data).split('\n');
    match prediction_id {
        Some(id) if tracing::enabled!(target: RUN_OUTPUT, Level::INFO) => {
            for line in lines {
                tracing::info!(target: RUN_OUTPUT, prediction_id = id, source, "{line}");
            }
        }
        None if tracing::enabled!(target: SETUP_OUTPUT, Level::INFO) => {
            for line in lines {
                tracing::info!(target: SETUP_OUTPUT, source, "{line}");
            }
        }
        _ => {}
    }
}

/// The filter `COG_LOG_LEVEL` asks for. A level (`debug`, `info`, `warn`,
/// `warning`, as Cog's CLI passes it, or `error`), with `keep_setup`, keeps
/// the model's setup output at info; anything else is a filter as `RUST_LOG`
/// takes it.
fn filter_directive(cog_log_level: &str, keep_setup: bool) -> String {
    let level = match cog_log_level.trim().to_ascii_lowercase().as_str() {
        "warning" => "warn".to_string(),
        level @ ("trace" | "debug" | "info" | "warn" | "error") => level.to_string(),
        _ => return cog_log_level.to_string(),
    };
    if keep_setup {
        format!("{level},{SETUP_OUTPUT}=info")
    } else {
        level
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cog_log_level_is_a_level_that_keeps_setup_output() {
        for (given, level) in [
            ("warning", "warn"),
            ("WARNING", "warn"),
            ("warn", "warn"),
            ("error", "error"),
            ("info", "info"),
            ("debug", "debug"),
        ] {
            assert_eq!(
                filter_directive(given, true),
                format!("{level},cogd::model::setup=info"),
                "{given}"
            );
            assert_eq!(filter_directive(given, false), level);
            assert!(EnvFilter::try_new(filter_directive(given, true)).is_ok());
        }
        assert_eq!(filter_directive("info,cogd=debug", true), "info,cogd=debug");
    }
}
