//! Parsing the prediction request envelope, with an answer for every way a
//! body can be wrong.

use axum::http::{header, HeaderMap};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::error::ApiError;
use super::limits::id_problem;
use crate::service::NewPrediction;
use crate::webhook::{Subscription, WebhookEvent};

/// Trace-context headers forwarded from the creating request to webhooks.
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Accepts a JSON content type, or none at all (as many scripts send).
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("");
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(text.to_string()))
    }
}

/// Parses a create request; `path_id` is the id of `PUT /predictions/{id}`.
/// An id (in the path or the body) must pass [`id_problem`], else 422.
pub fn parse_prediction(
    headers: &HeaderMap,
    body: &[u8],
    path_id: Option<&str>,
) -> Result<NewPrediction, ApiError> {
    if let Some(problem) = path_id.and_then(id_problem) {
        return Err(ApiError::invalid(&["path", "id"], problem, "value_error"));
    }
    check_content_type(headers)?;
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::MalformedJson(format!("the request body is not valid JSON: {e}"))
        })?
    };
    let Value::Object(mut body) = value else {
        return Err(ApiError::invalid(
            &["body"],
            "the request body must be a JSON object",
            "dict_type",
        ));
    };
    let mut errors = Vec::new();
    let mut entry = |loc: &[&str], msg: &str, kind: &str| {
        if let ApiError::Invalid(mut e) = ApiError::invalid(loc, msg, kind) {
            errors.append(&mut e);
        }
    };

    let input = match body.remove("input") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(input)) => input,
        Some(_) => {
            entry(
                &["body", "input"],
                "input must be a JSON object",
                "dict_type",
            );
            Map::new()
        }
    };
    let id = match body.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => match id_problem(&id) {
            None => Some(id),
            Some(problem) => {
                entry(&["body", "id"], &problem, "value_error");
                None
            }
        },
        Some(_) => {
            entry(
                &["body", "id"],
                "id must be a string",
                "string_type",
            );
            None
        }
    };
    let context = match body.remove("context") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(context)) if context.values().all(Value::is_string) => context,
        Some(_) => {
            entry(
                &["body", "context"],
                "context must be an object of strings",
                "dict_type",
            );
            Map::new()
        }
    };
    let created_at = match body.remove("created_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match DateTime::parse_from_rfc3339(&s) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                entry(
                    &["body", "created_at"],
                    "created_at must be an RFC 3339 timestamp",
                    "datetime_parsing",
                );
                None
            }
        },
        Some(_) => {
            entry(
                &["body", "created_at"],
                "created_at must be an RFC 3339 timestamp",
                "datetime_type",
            );
            None
        }
    };
    let webhook = match body.remove("webhook") {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) if url.starts_with("http://") || url.starts_with("https://") => {
            Some(url)
        }
        Some(_) => {
            entry(
                &["body", "webhook"],
                "webhook must be an http:// or https:// URL",
                "url_parsing",
            );
            None
        }
    };
    let events = match body.remove("webhook_events_filter") {
        None | Some(Value::Null) => WebhookEvent::all(),
        Some(Value::Array(names)) => {
            let parsed: Option<std::collections::HashSet<_>> = names
                .iter()
                .map(|n| n.as_str().and_then(WebhookEvent::parse))
                .collect();
            parsed.unwrap_or_else(|| {
                entry(
                    &["body", "webhook_events_filter"],
                    "webhook_events_filter entries must be start, output, logs or completed",
                    "enum",
                );
                WebhookEvent::all()
            })
        }
        Some(_) => {
            entry(
                &["body", "webhook_events_filter"],
                "webhook_events_filter must be a list",
                "list_type",
            );
            WebhookEvent::all()
        }
    };
    let id = match (path_id, id) {
        (Some(path), Some(body_id)) if path != body_id => {
            entry(
                &["body", "id"],
                &format!("the body's id {body_id:?} differs from the id in the URL {path:?}"),
                "value_error",
            );
            None
        }
        (Some(path), _) => Some(path.to_string()),
        (None, id) => id,
    };
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let webhook = webhook.map(|url| Subscription {
        url,
        events,
        trace_headers: TRACE_HEADERS
            .iter()
            .filter_map(|name| {
                let value = headers.get(*name)?.to_str().ok()?;
                Some((name.to_string(), value.to_string()))
            })
            .collect(),
    });
    Ok(NewPrediction {
        id,
        input,
        context,
        created_at,
        webhook,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h
    }

    #[test]
    fn a_full_envelope_parses() {
        let body = br#"{"id":"abc","input":{"name":"x"},"context":{"k":"v"},"created_at":"2024-01-01T00:00:00Z","webhook":"http://x"}"#;
        let p = parse_prediction(&json_headers(), body, None).unwrap();
        assert_eq!(p.id.as_deref(), Some("abc"));
        assert_eq!(p.input["name"], "x");
        assert_eq!(p.context["k"], "v");
        assert!(p.created_at.is_some());
    }

    #[test]
    fn a_webhook_takes_its_filter_and_the_trace_context() {
        let mut headers = json_headers();
        headers.insert("traceparent", HeaderValue::from_static("00-abc-def-01"));
        let body =
            br#"{"webhook":"http://127.0.0.1:9/hook","webhook_events_filter":["completed"]}"#;
        let p = parse_prediction(&headers, body, None).unwrap();
        let hook = p.webhook.unwrap();
        assert_eq!(hook.url, "http://127.0.0.1:9/hook");
        assert_eq!(hook.events.len(), 1);
        assert!(hook.events.contains(&WebhookEvent::Completed));
        assert_eq!(
            hook.trace_headers,
            vec![("traceparent".into(), "00-abc-def-01".into())]
        );
    }

    #[test]
    fn bad_webhook_settings_are_reported() {
        let Err(ApiError::Invalid(errors)) = parse_prediction(
            &json_headers(),
            br#"{"webhook":"ftp://x","webhook_events_filter":["sometimes"]}"#,
            None,
        ) else {
            panic!("expected 422");
        };
        assert_eq!(errors.len(), 2);
    }

    #[test]
    fn an_empty_body_means_empty_input() {
        let p = parse_prediction(&HeaderMap::new(), b"", None).unwrap();
        assert!(p.input.is_empty() && p.id.is_none());
    }

    #[test]
    fn malformed_json_is_a_400() {
        assert!(matches!(
            parse_prediction(&json_headers(), b"{nope", None),
            Err(ApiError::MalformedJson(_))
        ));
    }

    #[test]
    fn non_object_input_and_bad_id_are_both_reported() {
        let Err(ApiError::Invalid(errors)) =
            parse_prediction(&json_headers(), br#"{"input":[1],"id":5}"#, None)
        else {
            panic!("expected 422");
        };
        assert_eq!(errors.len(), 2);
    }

    #[test]
    fn a_put_body_id_must_match_the_path() {
        assert!(parse_prediction(&json_headers(), br#"{"id":"a"}"#, Some("b")).is_err());
        let p = parse_prediction(&json_headers(), br#"{"id":"b"}"#, Some("b")).unwrap();
        assert_eq!(p.id.as_deref(), Some("b"));
        let p = parse_prediction(&json_headers(), b"{}", Some("b")).unwrap();
        assert_eq!(p.id.as_deref(), Some("b"));
    }

    #[test]
    fn other_content_types_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(matches!(
            parse_prediction(&h, b"{}", None),
            Err(ApiError::UnsupportedMediaType(_))
        ));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(parse_prediction(&h, b"{}", None).is_ok());
    }
}
