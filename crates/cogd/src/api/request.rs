//! Parsing the prediction request envelope, with an answer for every way a
//! body can be wrong.

use axum::http::{header, HeaderMap};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::error::ApiError;
use super::limits::id_problem;
use crate::service::NewPrediction;
use crate::webhook::{Subscription, WebhookEvent};

/// Trace-context headers: the prediction's trace continues them, and its
/// webhooks forward them.
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
            entry(&["body", "id"], "id must be a string", "string_type");
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
    let webhook = url_field(&mut body, "webhook", &mut entry);
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
    let output_file_prefix = url_field(&mut body, "output_file_prefix", &mut entry);
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
    let trace_headers: Vec<(String, String)> = TRACE_HEADERS
        .iter()
        .filter_map(|name| {
            let value = headers.get(*name)?.to_str().ok()?;
            Some((name.to_string(), value.to_string()))
        })
        .collect();
    let webhook = webhook.map(|url| Subscription {
        url,
        events,
        trace_headers: trace_headers.clone(),
    });
    Ok(NewPrediction {
        id,
        input,
        context,
        created_at,
        webhook,
        trace_headers,
        output_file_prefix,
    })
}

/// Takes the optional field `name`, an http:// or https:// URL, from `body`;
/// anything else is reported through `entry`.
fn url_field(
    body: &mut Map<String, Value>,
    name: &str,
    entry: &mut impl FnMut(&[&str], &str, &str),
) -> Option<String> {
    match body.remove(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) if url.starts_with("http://") || url.starts_with("https://") => {
            Some(url)
        }
        Some(_) => {
            entry(
                &["body", name],
                &format!("{name} must be an http:// or https:// URL"),
                "url_parsing",
            );
            None
        }
    }
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
        assert_eq!(p.trace_headers, hook.trace_headers);
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
    fn an_output_file_prefix_must_be_an_http_url() {
        let body = br#"{"output_file_prefix":"https://example.com/up/"}"#;
        let p = parse_prediction(&json_headers(), body, None).unwrap();
        assert_eq!(
            p.output_file_prefix.as_deref(),
            Some("https://example.com/up/")
        );
        let body = br#"{"output_file_prefix":"file:///tmp/"}"#;
        assert!(matches!(
            parse_prediction(&json_headers(), body, None),
            Err(ApiError::Invalid(_))
        ));
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

    mod properties {
        //! Property tests: no body, header or path id makes parsing panic;
        //! what is accepted obeys the envelope's rules; a valid envelope's
        //! parts come back as they were sent.

        use super::*;
        use crate::arbitrary::{hostile_bytes, json_object_with_keys, json_value};
        use proptest::prelude::*;

        const ENVELOPE_KEYS: &[&str] = &[
            "id",
            "input",
            "webhook",
            "webhook_events_filter",
            "created_at",
            "output_file_prefix",
            "context",
        ];

        fn valid_id() -> impl Strategy<Value = String> {
            "[A-Za-z0-9_.-]{1,128}"
        }

        fn content_type() -> impl Strategy<Value = Option<String>> {
            prop::option::of(prop_oneof![
                Just("application/json".to_string()),
                Just("application/json; charset=utf-8".to_string()),
                Just("text/plain".to_string()),
                "[ -~]{0,40}",
            ])
        }

        fn headers(content_type: Option<String>) -> HeaderMap {
            let mut headers = HeaderMap::new();
            if let Some(value) = content_type.and_then(|v| HeaderValue::from_str(&v).ok()) {
                headers.insert(header::CONTENT_TYPE, value);
            }
            headers
        }

        /// What every accepted request must satisfy.
        fn check_accepted(p: &NewPrediction, path_id: Option<&str>) -> Result<(), TestCaseError> {
            if let Some(id) = &p.id {
                prop_assert_eq!(id_problem(id), None);
            }
            if let Some(path) = path_id {
                prop_assert_eq!(p.id.as_deref(), Some(path));
            }
            prop_assert!(p.context.values().all(Value::is_string));
            if let Some(hook) = &p.webhook {
                prop_assert!(hook.url.starts_with("http://") || hook.url.starts_with("https://"));
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn any_body_is_parsed_or_refused_without_panicking(
                body in hostile_bytes(),
                content_type in content_type(),
                path_id in prop::option::of(any::<String>()),
            ) {
                let headers = headers(content_type);
                if let Ok(p) = parse_prediction(&headers, &body, path_id.as_deref()) {
                    check_accepted(&p, path_id.as_deref())?;
                }
            }

            #[test]
            fn envelopes_of_any_shape_are_parsed_or_refused_with_422(
                envelope in json_object_with_keys(ENVELOPE_KEYS),
                path_id in prop::option::of(prop_oneof![valid_id(), any::<String>()]),
            ) {
                let body = serde_json::to_vec(&envelope).unwrap();
                match parse_prediction(&HeaderMap::new(), &body, path_id.as_deref()) {
                    Ok(p) => check_accepted(&p, path_id.as_deref())?,
                    // JSON objects are never "malformed": wrong shapes are 422s.
                    Err(ApiError::Invalid(entries)) => prop_assert!(!entries.is_empty()),
                    Err(other) => prop_assert!(false, "unexpected {other:?}"),
                }
            }

            #[test]
            fn a_path_id_is_accepted_exactly_when_it_is_well_formed(id in any::<String>()) {
                let parsed = parse_prediction(&HeaderMap::new(), b"{}", Some(&id));
                prop_assert_eq!(parsed.is_ok(), id_problem(&id).is_none());
            }

            #[test]
            fn a_valid_envelope_comes_back_as_sent(
                id in prop::option::of(valid_id()),
                input in prop::collection::vec((any::<String>(), json_value()), 0..6),
                context in prop::collection::vec((any::<String>(), any::<String>()), 0..4),
                created_at in prop::option::of(0i64..4_000_000_000),
                webhook in prop::option::of("https?://[a-z0-9.]{1,20}(:[0-9]{1,5})?/[ -~]{0,30}"),
                events in prop::sample::subsequence(
                    vec!["start", "output", "logs", "completed"], 0..=4),
            ) {
                let input: Map<String, Value> = input.into_iter().collect();
                let context: Map<String, Value> =
                    context.into_iter().map(|(k, v)| (k, v.into())).collect();
                let created_at = created_at
                    .map(|s| DateTime::<Utc>::from_timestamp(s, 0).unwrap());
                let mut body = serde_json::json!({"input": input, "context": context});
                if let Some(id) = &id {
                    body["id"] = id.clone().into();
                }
                if let Some(t) = created_at {
                    body["created_at"] = t.to_rfc3339().into();
                }
                if let Some(url) = &webhook {
                    body["webhook"] = url.clone().into();
                    body["webhook_events_filter"] = events.clone().into();
                }
                let p = parse_prediction(
                    &json_headers(),
                    &serde_json::to_vec(&body).unwrap(),
                    None,
                )
                .unwrap();
                prop_assert_eq!(p.id, id);
                prop_assert_eq!(p.input, input);
                prop_assert_eq!(p.context, context);
                prop_assert_eq!(p.created_at, created_at);
                prop_assert_eq!(p.webhook.as_ref().map(|h| h.url.clone()), webhook);
                if let Some(hook) = p.webhook {
                    let want: std::collections::HashSet<_> =
                        events.iter().filter_map(|e| WebhookEvent::parse(e)).collect();
                    prop_assert_eq!(hook.events, want);
                }
            }
        }
    }
}
