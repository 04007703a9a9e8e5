//! Every error the HTTP API answers with, and the one place each becomes a
//! status code and a JSON body.
//!
//! The body says the message twice, `{"error": msg, "detail": msg}`: Cog's
//! runtime answers with `error`, older Cog (FastAPI) with `detail`, and clients
//! of both generations read their own key. A 422 is `{"detail": [...]}`, its
//! list of problems in the shape FastAPI clients parse, as both generations
//! answer it. Where clients and scripts match on the text, it is Cog's runtime's
//! own: `Prediction not found`, `At capacity - all prediction slots busy`,
//! `Setup has not finished yet. …`, the 406 for an event stream from a model
//! that does not stream; and like Cog's, the 409 and 503 that refuse a
//! prediction say `"status": "failed"`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::service::{AdmissionError, Health};

/// An error answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON.
    #[error("{0}")]
    MalformedJson(String),
    /// The body is JSON of the wrong shape: pydantic-style entries.
    #[error("invalid request")]
    Invalid(Vec<serde_json::Value>),
    /// A content type other than JSON (the type sent, for the log).
    #[error("Expected request with `Content-Type: application/json`")]
    UnsupportedMediaType(String),
    /// Admission refused the prediction.
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    /// The client asked for an event stream from a model that does not stream.
    #[error(
        "This model does not support streaming responses. \
         Add @cog.streaming to predict() to enable SSE."
    )]
    NotStreaming,
    /// The body could not be read: too large, or the connection failed.
    #[error("{message}")]
    Body {
        /// The answer's status: 413 for a body over the limit.
        status: StatusCode,
        /// What went wrong.
        message: String,
    },
    /// `COG_API_TOKEN` is set and the request does not carry it.
    #[error("this server needs Authorization: Bearer <token>")]
    Unauthorized,
    /// No prediction has this id (the id, for the log).
    #[error("Prediction not found")]
    NotFound(String),
    /// `/trainings…` on a server that runs the model's predictor.
    #[error(
        "this server runs the model's predictor, not its training function: \
         start it with `cogd serve --train` (or `--x-mode train`) to serve /trainings"
    )]
    TrainingNotServed,
    /// A training asked for an event stream: trainings answer with JSON only.
    #[error("trainings cannot answer with text/event-stream")]
    TrainingStream,
    /// The request target is longer than the server accepts.
    #[error("the request URI is {size} bytes long; at most {limit} are accepted")]
    UriTooLong {
        /// Its length.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The request's headers are larger than the server accepts.
    #[error("the request headers take {size} bytes; at most {limit} are accepted")]
    HeadersTooLarge {
        /// Their size (names and values).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Every place for an event stream is taken (`COG_MAX_STREAMS`).
    #[error("{limit} event streams are open, as many as this server allows (COG_MAX_STREAMS): try again later")]
    TooManyStreams {
        /// The limit.
        limit: usize,
    },
}

impl ApiError {
    /// Maps axum's failure to read a body to a JSON answer.
    pub fn from_body(rejection: axum::extract::rejection::BytesRejection) -> Self {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "the request body is larger than the server accepts (COG_MAX_BODY_BYTES)".to_string()
        } else {
            format!("cannot read the request body: {}", rejection.body_text())
        };
        Self::Body { status, message }
    }

    /// One validation entry in the shape FastAPI clients parse.
    pub fn invalid(loc: &[&str], msg: impl Into<String>, kind: &str) -> Self {
        Self::Invalid(vec![json!({"loc": loc, "msg": msg.into(), "type": kind})])
    }
}

/// What Cog's runtime answers while setup runs.
const SETUP_RUNNING: &str =
    "Setup has not finished yet. Wait until it has finished, or GET /health-check for status.";

impl ApiError {
    /// The status and what the body says: a message, or (422) the list of
    /// problems.
    fn status_and_detail(self) -> (StatusCode, serde_json::Value) {
        match self {
            Self::MalformedJson(msg) => (StatusCode::BAD_REQUEST, json!(msg)),
            Self::Invalid(entries) => (StatusCode::UNPROCESSABLE_ENTITY, json!(entries)),
            // Every problem with the input, each at ["body", "input", FIELD, ...].
            Self::Admission(AdmissionError::Invalid(errors)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, json!(errors))
            }
            e @ Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, json!(e.to_string()))
            }
            Self::Admission(AdmissionError::Busy) => (
                StatusCode::CONFLICT,
                json!("At capacity - all prediction slots busy"),
            ),
            Self::Admission(AdmissionError::QueueFull) => (
                StatusCode::TOO_MANY_REQUESTS,
                json!("every slot is busy and the queue is full: try again later"),
            ),
            e @ Self::TooManyStreams { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, json!(e.to_string()))
            }
            Self::Admission(AdmissionError::Evicted { .. }) => {
                unreachable!("answered above with what is left of it")
            }
            e @ Self::UriTooLong { .. } => (StatusCode::URI_TOO_LONG, json!(e.to_string())),
            e @ Self::HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                json!(e.to_string()),
            ),
            Self::Body { status, message } => (status, json!(message)),
            e @ Self::Unauthorized => (StatusCode::UNAUTHORIZED, json!(e.to_string())),
            e @ (Self::NotStreaming | Self::TrainingStream) => {
                (StatusCode::NOT_ACCEPTABLE, json!(e.to_string()))
            }
            e @ (Self::NotFound(_) | Self::TrainingNotServed) => {
                (StatusCode::NOT_FOUND, json!(e.to_string()))
            }
            Self::Admission(AdmissionError::NotReady(health)) => {
                let why = match health {
                    Health::Starting => SETUP_RUNNING,
                    Health::SetupFailed => {
                        "the model cannot run: setup failed (see setup.logs in /health-check)"
                    }
                    Health::Defunct => "the model cannot run: its worker process died",
                    Health::Ready | Health::Busy => "the model is not ready",
                };
                (StatusCode::SERVICE_UNAVAILABLE, json!(why))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Admission(e @ AdmissionError::Evicted { .. }) = &self {
            return evicted(e);
        }
        let (status, detail) = self.status_and_detail();
        let mut body = match detail {
            // A 422's list, as both Cog generations answer it.
            entries @ serde_json::Value::Array(_) => json!({ "detail": entries }),
            message => json!({ "error": message, "detail": message }),
        };
        // Cog's runtime marks the predictions it refuses as failed.
        if status == StatusCode::CONFLICT || status == StatusCode::SERVICE_UNAVAILABLE {
            body["status"] = json!("failed");
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            // Retry-After tells well-behaved clients when to come back.
            let retry = [(axum::http::header::RETRY_AFTER, "1")];
            return (status, retry, Json(body)).into_response();
        }
        (status, Json(body)).into_response()
    }
}

/// 410 for a prediction that ran and was evicted from memory: the detail
/// says so, and the id, status and completion time that are left are beside
/// it, so a client that repeats a `PUT` learns how its prediction ended.
fn evicted(error: &AdmissionError) -> Response {
    let AdmissionError::Evicted { id, tombstone } = error else {
        unreachable!("only called for an evicted prediction")
    };
    let message = error.to_string();
    let body = json!({
        "error": message,
        "detail": message,
        "id": id,
        "status": tombstone.status,
        "completed_at": tombstone.completed_at.as_ref().map(crate::prediction::timestamp),
    });
    (StatusCode::GONE, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(error: ApiError) -> (StatusCode, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_message_is_said_under_error_and_detail_alike() {
        let (status, body) = body_of(ApiError::NotFound("p1".into())).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body,
            json!({"error": "Prediction not found", "detail": "Prediction not found"})
        );
        let (status, body) = body_of(ApiError::Admission(AdmissionError::Busy)).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body["error"], "At capacity - all prediction slots busy");
        assert_eq!(body["detail"], body["error"]);
        assert_eq!(body["status"], "failed");
    }

    #[tokio::test]
    async fn a_422_keeps_its_list_under_detail_alone_as_cog_does() {
        let entries = vec![
            json!({"loc": ["body", "input", "steps"], "msg": "not an integer", "type": "int_type"}),
        ];
        let (status, body) = body_of(ApiError::Invalid(entries.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body, json!({ "detail": entries }));
    }
}
