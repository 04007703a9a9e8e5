//! The HTTP API of SPEC §3: routes, and the mapping of service results to
//! answers. Handlers parse, call one service method, and map the result; the
//! rules live in the service.
//!
//! Predictions and trainings are one kind of run under two names: the same
//! handlers serve `/predictions…` and `/trainings…`, parametrised by the
//! [`Mode`] the route belongs to. A server runs one mode (its worker loaded
//! either the predictor or the training function). A training server also
//! takes its trainings at `/predictions…`, as Cog's does (checked against the
//! training input); a prediction server answers `/trainings…` with 404.

mod error;
mod limits;
mod playground;
mod request;
mod stream;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;

pub use error::ApiError;
pub use limits::StreamLimit;

use crate::ipc::Mode;
use crate::service::{Admission, AdmissionError, Health, Service};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The prediction service.
    pub service: Service,
    /// Set to true to stop the server gracefully.
    pub shutdown: watch::Sender<bool>,
    /// `COG_API_TOKEN`: when set, every route but the health check needs it.
    pub api_token: Option<std::sync::Arc<str>>,
    /// `COG_MAX_STREAMS`: the places for event streams open at once.
    pub streams: StreamLimit,
    /// `COG_PLAYGROUND`: whether browsers get the playground page at `/`.
    pub playground: bool,
    /// The Redis Streams queue this replica consumes, if any: not ready
    /// while it is unreachable; its metrics join `/metrics`.
    pub queue: Option<crate::queue::Queue>,
}

/// The router with every route of the API; request bodies larger than
/// `body_limit` bytes are refused with 413, and heads over the limits of
/// [`limits`] with 414 or 431 before anything else looks at them.
pub fn router(state: AppState, body_limit: usize) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/health-check", get(health_check))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .merge(run_routes(Mode::Predict))
        .merge(run_routes(Mode::Train))
        .route("/shutdown", post(shutdown))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .layer(axum::middleware::from_fn(limits::check_head))
        .with_state(state)
}

/// With `COG_API_TOKEN` set, refuses requests without `Authorization: Bearer
/// <token>` (401), except the health check that probes need.
async fn require_token(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = &state.api_token {
        // The playground page holds no secret: it asks for the token and
        // sends it with every API call it makes.
        let open = matches!(request.uri().path(), "/health-check" | "/livez" | "/readyz")
            || (state.playground && playground::is_page_request(&request));
        let given = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .unwrap_or("");
        if !open && !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

/// The token of an `Authorization: Bearer <token>` value; the scheme's name
/// is case-insensitive, as every HTTP authentication scheme's is.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// Compares in time that depends on the lengths alone (`subtle`), so
/// timing says nothing about the token's bytes.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// Kubernetes liveness: 200 while the server process answers at all.
async fn livez() -> Json<serde_json::Value> {
    Json(json!({"status": "alive"}))
}

/// Kubernetes readiness: 200 while the model takes work (ready, even if
/// busy), 503 otherwise; unlike `/health-check`, the status code says it.
async fn readyz(State(state): State<AppState>) -> Response {
    let health = state.service.health();
    let status = match health {
        Health::Ready | Health::Busy => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    if state.queue.as_ref().is_some_and(|q| !q.reachable()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": health, "queue": "unreachable" })),
        )
            .into_response();
    }
    (status, Json(json!({ "status": health }))).into_response()
}

/// The playground page for a browser (when on), else the discovery document.
async fn root(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.playground {
        return discovery(&state).into_response();
    }
    if playground::wanted(&headers) {
        return playground::page();
    }
    playground::varies_by_accept(discovery(&state))
}

/// The discovery document: the routes this server serves (`predictions_*`,
/// and `trainings_*` when it runs the training function).
fn discovery(state: &AppState) -> Json<serde_json::Value> {
    let mut body = json!({
        "cog_version": crate::VERSION,
        "openapi_url": "/openapi.json",
        "shutdown_url": "/shutdown",
        "healthcheck_url": "/health-check",
    });
    for mode in [Mode::Predict, Mode::Train] {
        if serves(state, mode) {
            let (collection, noun) = names(mode);
            body[format!("{collection}_url")] = format!("/{collection}").into();
            body[format!("{collection}_idempotent_url")] =
                format!("/{collection}/{{{noun}_id}}").into();
            body[format!("{collection}_cancel_url")] =
                format!("/{collection}/{{{noun}_id}}/cancel").into();
        }
    }
    Json(body)
}

/// The URL collection and the noun of a mode's runs.
fn names(mode: Mode) -> (&'static str, &'static str) {
    match mode {
        Mode::Predict => ("predictions", "prediction"),
        Mode::Train => ("trainings", "training"),
    }
}

/// The create, idempotent create, poll and cancel routes of one mode's runs.
fn run_routes(mode: Mode) -> Router<AppState> {
    let (collection, _) = names(mode);
    Router::new()
        .route(
            &format!("/{collection}"),
            post(
                move |State(state): State<AppState>,
                      headers: HeaderMap,
                      body: Result<Bytes, BytesRejection>| async move {
                    create(&state, mode, &headers, body, None).await
                },
            ),
        )
        .route(
            &format!("/{collection}/{{id}}"),
            put(
                move |State(state): State<AppState>,
                      Path(id): Path<String>,
                      headers: HeaderMap,
                      body: Result<Bytes, BytesRejection>| async move {
                    create(&state, mode, &headers, body, Some(&id)).await
                },
            )
            .get(
                move |State(state): State<AppState>, Path(id): Path<String>| async move {
                    get_run(&state, mode, id)
                },
            ),
        )
        .route(
            &format!("/{collection}/{{id}}/cancel"),
            post(
                move |State(state): State<AppState>, Path(id): Path<String>| async move {
                    cancel_run(&state, mode, id)
                },
            ),
        )
}

/// Whether the routes of `mode` run here: a server's own mode's do, and a
/// training server's `/predictions…` too (they run the training).
fn serves(state: &AppState, mode: Mode) -> bool {
    let running = state.service.mode();
    running == mode || running == Mode::Train
}

/// Refuses the routes of the mode this server does not run.
fn served(state: &AppState, mode: Mode) -> Result<(), ApiError> {
    if serves(state, mode) {
        Ok(())
    } else {
        Err(ApiError::TrainingNotServed)
    }
}

async fn health_check(State(state): State<AppState>) -> Json<serde_json::Value> {
    let service = &state.service;
    let report = service.check_health().await;
    let mut version = service.versions();
    version.insert("cogd".into(), crate::VERSION.into());
    version.insert("cog".into(), crate::VERSION.into());
    let mut body = json!({
        "status": report.status(),
        "setup": service.setup_record(),
        "version": version,
    });
    if let Some(error) = report.user_healthcheck_error {
        body["user_healthcheck_error"] = error.into();
    }
    Json(body)
}

async fn openapi(State(state): State<AppState>) -> Response {
    match state.service.schema() {
        serde_json::Value::Null => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"detail": "the model's schema is not available"})),
        )
            .into_response(),
        schema => Json(schema).into_response(),
    }
}

/// Creates (or finds, by id) a prediction or training and answers as the
/// client asked: an event stream, 202 at once, or the finished run.
async fn create(
    state: &AppState,
    mode: Mode,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    path_id: Option<&str>,
) -> Result<Response, ApiError> {
    served(state, mode)?;
    let body = body.map_err(ApiError::from_body)?;
    let admitted = if body.len() > ADMIT_OFF_THREAD_BYTES {
        // Parsing, checking and storing a large input takes milliseconds of
        // CPU: on the blocking pool, so the runtime's thread goes on serving
        // every other request and stream meanwhile.
        let (state, headers) = (state.clone(), headers.clone());
        let path_id = path_id.map(str::to_owned);
        tokio::task::spawn_blocking(move || admit(&state, &headers, &body, path_id.as_deref()))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?
    } else {
        admit(state, headers, &body, path_id)?
    };
    match admitted {
        Admitted::Stream(response) => {
            // Before the reply's head is written.
            crate::nudge::let_the_run_start().await;
            Ok(response)
        }
        Admitted::Run(admission) => respond(admission, headers).await,
    }
}

/// Request bodies over this many bytes are admitted on the blocking pool.
const ADMIT_OFF_THREAD_BYTES: usize = 256 * 1024;

/// A request once admitted: an event stream to answer with, or a run to
/// answer for as the client asked.
enum Admitted {
    Stream(Response),
    Run(Admission),
}

/// Parses the request and admits its prediction (all of it synchronous).
fn admit(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
    path_id: Option<&str>,
) -> Result<Admitted, ApiError> {
    let request = request::parse_prediction(headers, body, path_id)?;
    if stream::wanted(headers) {
        // Cog's trainings answer only with JSON.
        if state.service.mode() == Mode::Train {
            return Err(ApiError::TrainingStream);
        }
        return stream::respond(&state.service, &state.streams, request).map(Admitted::Stream);
    }
    Ok(Admitted::Run(state.service.create(request)?))
}

/// True when the client asked not to wait (`Prefer: respond-async`).
fn respond_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

/// Answers at once (202) for `respond-async`, else waits for the prediction
/// to finish; a client that leaves before then cancels what it created.
async fn respond(admission: Admission, headers: &HeaderMap) -> Result<Response, ApiError> {
    let (handle, created) = match admission {
        Admission::Created(handle) => (handle, true),
        Admission::Existing(handle) => (handle, false),
    };
    if respond_async(headers) {
        return Ok(prediction_response(
            StatusCode::ACCEPTED,
            &handle.snapshot(),
        ));
    }
    let mut guard = CancelOnDrop(created.then(|| handle.clone()));
    let prediction = handle.finished().await;
    guard.0 = None;
    Ok(prediction_response(StatusCode::OK, &prediction))
}

/// A prediction as a JSON reply. The body is sent in pieces, the output
/// straight from where the prediction keeps it, so an output of hundreds of
/// megabytes (a large file inlined as a `data:` URI) is never copied.
fn prediction_response(status: StatusCode, prediction: &crate::prediction::Prediction) -> Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    let pieces = prediction.envelope_pieces();
    let length: usize = pieces.iter().map(Bytes::len).sum();
    let body = axum::body::Body::from_stream(futures_util::stream::iter(
        pieces.map(Ok::<_, std::convert::Infallible>),
    ));
    (
        status,
        [
            (CONTENT_TYPE, "application/json".to_string()),
            (CONTENT_LENGTH, length.to_string()),
        ],
        body,
    )
        .into_response()
}

/// Cancels a synchronous prediction whose client went away: axum drops the
/// handler's future when the connection closes, and with it this guard.
struct CancelOnDrop(Option<crate::prediction::PredictionHandle>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            tracing::info!(prediction_id = %handle.snapshot().id, "client disconnected; cancelling");
            handle.cancel();
        }
    }
}

fn get_run(state: &AppState, mode: Mode, id: String) -> Result<Response, ApiError> {
    served(state, mode)?;
    let Some(handle) = state.service.get(&id) else {
        return Err(match state.service.evicted(&id) {
            Some(tombstone) => AdmissionError::Evicted { id, tombstone }.into(),
            None => ApiError::NotFound(id),
        });
    };
    Ok(prediction_response(StatusCode::OK, &handle.snapshot()))
}

fn cancel_run(
    state: &AppState,
    mode: Mode,
    id: String,
) -> Result<Json<serde_json::Value>, ApiError> {
    served(state, mode)?;
    if state.service.cancel(&id) {
        Ok(Json(json!({})))
    } else {
        Err(ApiError::NotFound(id))
    }
}

/// The operator metrics for Prometheus (behind `COG_API_TOKEN` when set, like
/// every route but the probes: scrapers can send a bearer token).
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::telemetry::METRICS_CONTENT_TYPE,
        )],
        match &state.queue {
            Some(queue) => state.service.render_metrics() + &queue.render_metrics().await,
            None => state.service.render_metrics(),
        },
    )
        .into_response()
}

async fn shutdown(State(state): State<AppState>) -> Json<serde_json::Value> {
    tracing::info!("shutdown requested over HTTP");
    state.shutdown.send_replace(true);
    Json(json!({}))
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, constant_time_eq};

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer t", "bearer t", "BEARER t", "bEaReR  t"] {
            assert_eq!(bearer_token(value), Some("t"), "{value}");
        }
        assert_eq!(bearer_token("Basic t"), None);
        assert_eq!(bearer_token("Bearert"), None);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cre", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret!", b"s3cret"));
        assert!(!constant_time_eq(b"", b"s3cret"));
        assert!(!constant_time_eq(b"S3cret", b"s3cret"));
    }
}
