//! Every error the HTTP API answers with, and the one place each becomes a
//! status code and a JSON body `{"detail": …}`.

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
    /// A content type other than JSON.
    #[error("unsupported content type {0:?}: send application/json")]
    UnsupportedMediaType(String),
    /// Admission refused the prediction.
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    /// The client asked for an event stream from a model that does not stream.
    #[error("this model's run is not marked @streaming: it cannot answer with text/event-stream")]
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
    /// No prediction has this id.
    #[error("no prediction with id {0:?}")]
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let too_many = match &self {
            Self::Admission(AdmissionError::QueueFull) => {
                Some("every slot is busy and the queue is full: try again later".to_string())
            }
            e @ Self::TooManyStreams { .. } => Some(e.to_string()),
            _ => None,
        };
        if let Self::Admission(e @ AdmissionError::Evicted { .. }) = &self {
            return evicted(e);
        }
        if let Some(detail) = too_many {
            // Retry-After tells well-behaved clients when to come back.
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(axum::http::header::RETRY_AFTER, "1")],
                Json(json!({ "detail": detail })),
            )
                .into_response();
        }
        let (status, detail) = match self {
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
                json!("every slot is busy: try again when a prediction finishes"),
            ),
            Self::Admission(AdmissionError::QueueFull) | Self::TooManyStreams { .. } => {
                unreachable!("answered above with its Retry-After header")
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
            e @ Self::NotStreaming => (StatusCode::NOT_ACCEPTABLE, json!(e.to_string())),
            e @ (Self::NotFound(_) | Self::TrainingNotServed) => {
                (StatusCode::NOT_FOUND, json!(e.to_string()))
            }
            e @ Self::TrainingStream => (StatusCode::NOT_ACCEPTABLE, json!(e.to_string())),
            Self::Admission(AdmissionError::NotReady(health)) => {
                let why = match health {
                    Health::Starting => "the model is not ready yet: setup is still running",
                    Health::SetupFailed => {
                        "the model cannot run: setup failed (see setup.logs in /health-check)"
                    }
                    Health::Defunct => "the model cannot run: its worker process died",
                    Health::Ready | Health::Busy => "the model is not ready",
                };
                (StatusCode::SERVICE_UNAVAILABLE, json!(why))
            }
        };
        (status, Json(json!({ "detail": detail }))).into_response()
    }
}

/// 410 for a prediction that ran and was evicted from memory: the detail
/// says so, and the id, status and completion time that are left are beside
/// it, so a client that repeats a `PUT` learns how its prediction ended.
fn evicted(error: &AdmissionError) -> Response {
    let AdmissionError::Evicted { id, tombstone } = error else {
        unreachable!("only called for an evicted prediction")
    };
    let body = json!({
        "detail": error.to_string(),
        "id": id,
        "status": tombstone.status,
        "completed_at": tombstone.completed_at.as_ref().map(crate::prediction::timestamp),
    });
    (StatusCode::GONE, Json(body)).into_response()
}
