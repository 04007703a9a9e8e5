//! Optional trace export: when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and `OTEL_SDK_DISABLED` is not true,
//! nor `OTEL_TRACES_EXPORTER=none`), tracing spans are turned into
//! OpenTelemetry spans (`tracing-opentelemetry`) and sent in batches over
//! OTLP/HTTP with protobuf bodies. The other standard variables
//! (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_BSP_*`, ...) are read by the OpenTelemetry SDK itself.
//!
//! The batch processor runs on a thread of its own and is not async; its
//! requests are sent by the server's `reqwest` on the tokio runtime that was
//! current at start ([`OnRuntime`]), so no second HTTP stack is built.
//!
//! Whether export is on is decided once, at start, and read with one relaxed
//! atomic load: with it off, no span beyond the `prediction` span exists.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Status as SpanStatus, TracerProvider as _};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;

use crate::prediction::Status;

/// Set once export has started.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// How long stopping may take to send what is buffered.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why traces cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// There is no tokio runtime to send on.
    #[error("trace export needs the server's async runtime, and there is none")]
    NoRuntime,
    /// The OTLP exporter refused its configuration.
    #[error("invalid OTLP exporter configuration: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client for OTLP: {0}")]
    Client(#[from] reqwest::Error),
}

/// What the environment asks for, when it asks for export at all.
pub(super) struct Settings {
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` (or the traces one) when it names a
    /// protocol other than `http/protobuf`, the one spoken here.
    pub(super) other_protocol: Option<String>,
}

/// Whether the environment turns export on.
pub(super) fn configured() -> Option<Settings> {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let is = |name: &str, value: &str| {
        std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
    };
    if !(set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        || is("OTEL_SDK_DISABLED", "true")
        || is("OTEL_TRACES_EXPORTER", "none")
    {
        return None;
    }
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .ok()
        .filter(|p| !p.trim().eq_ignore_ascii_case("http/protobuf"));
    Some(Settings {
        other_protocol: protocol,
    })
}

/// The running exporter, to flush and stop at exit.
#[derive(Debug)]
pub(super) struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Sends what is buffered (for up to [`SHUTDOWN_TIMEOUT`]) and stops.
    pub(super) fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(error) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(%error, "could not send every span before exit");
        }
    }
}

/// Starts the exporter and returns the layer that feeds it.
pub(super) fn start<S>() -> Result<
    (
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>,
        Exporter,
    ),
    TraceError,
>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| TraceError::NoRuntime)?;
    let client = reqwest::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .user_agent(format!("cogd/{}", crate::VERSION))
        .build()?;
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(OnRuntime { client, runtime })
        .build()?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("cogd");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("cogd"))
        .with_threads(false)
        .with_location(false);
    Ok((layer, Exporter { provider }))
}

/// Turns [`enabled`] on; called once the layer is installed.
pub(super) fn mark_enabled() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether spans are being exported.
pub(super) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Makes `span` a child of the span the W3C trace context in `headers`
/// names; without a valid `traceparent`, `span` starts a new trace.
pub(super) fn continue_trace(span: &Span, headers: &[(String, String)]) {
    if headers.is_empty() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderPairs(headers));
    // Fails only for a span that is already closed or disabled.
    let _ = span.set_parent(parent);
}

/// Marks the prediction span with how the prediction ended.
pub(super) fn record_outcome(span: &Span, status: Status, error: Option<&str>) {
    span.set_attribute("cog.prediction.status", status.as_str());
    match status {
        Status::Failed => span.set_status(SpanStatus::error(error.unwrap_or("failed").to_string())),
        Status::Succeeded => span.set_status(SpanStatus::Ok),
        _ => {}
    }
}

/// Trace-context headers as the propagator reads them (names lowercase).
struct HeaderPairs<'a>(&'a [(String, String)]);

impl Extractor for HeaderPairs<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))
            .map(|(_, value)| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }
}

/// The exporter's HTTP client: requests go through `reqwest` on the server's
/// runtime, since the batch processor's own thread has no reactor.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let (status, headers, body) = self
            .runtime
            .spawn(async move {
                let response = client.execute(request).await?;
                let status = response.status();
                let headers = response.headers().clone();
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, headers, body))
            })
            .await??;
        let mut response = http::Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::SpanData;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// Keeps the spans it is given.
    #[derive(Debug, Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl opentelemetry_sdk::trace::SpanExporter for Collect {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    #[test]
    fn a_prediction_span_continues_the_callers_trace_and_parents_its_phases() {
        let exporter = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let caller = "00f067aa0ba902b7";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("prediction");
            continue_trace(
                &span,
                &[("traceparent".into(), format!("00-{trace_id}-{caller}-01"))],
            );
            span.in_scope(|| drop(tracing::info_span!("run")));
            record_outcome(&span, Status::Failed, Some("boom"));
            assert_eq!(
                span.context().span().span_context().trace_id().to_string(),
                trace_id
            );
        });
        let spans = exporter.0.lock().unwrap().clone();
        let named = |name: &str| spans.iter().find(|s| s.name == name).unwrap();
        let (prediction, run) = (named("prediction"), named("run"));
        assert_eq!(prediction.span_context.trace_id().to_string(), trace_id);
        assert_eq!(prediction.parent_span_id.to_string(), caller);
        assert_eq!(run.parent_span_id, prediction.span_context.span_id());
        assert_eq!(
            run.span_context.trace_id(),
            prediction.span_context.trace_id()
        );
        assert_eq!(prediction.status, SpanStatus::error("boom"));
    }
}
