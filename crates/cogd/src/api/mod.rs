//! The HTTP API of SPEC §3: routes, and the mapping of service results to
//! answers. Handlers parse, call one service method, and map the result; the
//! rules live in the service.

mod error;
mod request;
mod stream;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;

pub use error::ApiError;

use crate::service::{Admission, Service};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The prediction service.
    pub service: Service,
    /// Set to true to stop the server gracefully.
    pub shutdown: watch::Sender<bool>,
}

/// The router with every route of the API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/health-check", get(health_check))
        .route("/openapi.json", get(openapi))
        .route("/predictions", post(create_prediction))
        .route(
            "/predictions/{id}",
            put(create_prediction_idempotent).get(get_prediction),
        )
        .route("/predictions/{id}/cancel", post(cancel_prediction))
        .route("/shutdown", post(shutdown))
        .with_state(state)
}

async fn root() -> Json<serde_json::Value> {
    Json(json!({
        "cog_version": crate::VERSION,
        "openapi_url": "/openapi.json",
        "shutdown_url": "/shutdown",
        "healthcheck_url": "/health-check",
        "predictions_url": "/predictions",
        "predictions_idempotent_url": "/predictions/{prediction_id}",
        "predictions_cancel_url": "/predictions/{prediction_id}/cancel",
    }))
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

async fn create_prediction(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request = request::parse_prediction(&headers, &body, None)?;
    if stream::wanted(&headers) {
        return stream::respond(&state.service, request);
    }
    respond(state.service.create(request)?, &headers).await
}

async fn create_prediction_idempotent(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request = request::parse_prediction(&headers, &body, Some(&id))?;
    if stream::wanted(&headers) {
        return stream::respond(&state.service, request);
    }
    respond(state.service.create(request)?, &headers).await
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
        return Ok((StatusCode::ACCEPTED, Json(handle.snapshot())).into_response());
    }
    let mut guard = CancelOnDrop(created.then(|| handle.clone()));
    let prediction = handle.finished().await;
    guard.0 = None;
    Ok(Json(prediction).into_response())
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

async fn get_prediction(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let handle = state.service.get(&id).ok_or(ApiError::NotFound(id))?;
    Ok(Json(handle.snapshot()).into_response())
}

async fn cancel_prediction(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if state.service.cancel(&id) {
        Ok(Json(json!({})))
    } else {
        Err(ApiError::NotFound(id))
    }
}

async fn shutdown(State(state): State<AppState>) -> Json<serde_json::Value> {
    tracing::info!("shutdown requested over HTTP");
    state.shutdown.send_replace(true);
    Json(json!({}))
}
