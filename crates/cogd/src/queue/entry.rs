//! One queue entry: the request JSON in its `value` field, in the format
//! Cog's Redis worker read (`id`, `input`, `webhook`,
//! `webhook_events_filter`, `output_file_prefix`, `cancel_key`,
//! `traceparent`, `response_queue`), plus an optional `deadline`.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::service::NewPrediction;
use crate::webhook::{Subscription, WebhookEvent};

/// A request read from an entry.
#[derive(Debug, Clone)]
pub struct Request {
    /// The prediction's id: the request's, else the entry's own id (the
    /// same on every delivery, so a redelivered entry keeps its id).
    pub id: String,
    /// The input object.
    pub input: Map<String, Value>,
    /// The request's `context`, passed to the run.
    pub context: Map<String, Value>,
    /// Where webhooks go.
    pub webhook: Option<Subscription>,
    /// Upload file outputs here.
    pub output_file_prefix: Option<String>,
    /// A Redis key whose existence cancels the run.
    pub cancel_key: Option<String>,
    /// A Redis key set to the prediction's JSON after each change.
    pub response_queue: Option<String>,
    /// The W3C trace context the prediction's trace continues.
    pub trace_headers: Vec<(String, String)>,
    /// Past this, the prediction fails without running.
    pub deadline: Option<DateTime<Utc>>,
}

/// An entry that cannot be run: why, and whatever of the request could
/// still be read, so the failure reaches its webhook or response key.
#[derive(Debug)]
pub struct Refused {
    /// What is wrong, for people.
    pub error: String,
    /// The request as far as it could be read (`None`: nothing could).
    pub request: Option<Box<Request>>,
}

impl Request {
    /// The prediction to create for this request.
    pub fn to_new_prediction(&self) -> NewPrediction {
        NewPrediction {
            id: Some(self.id.clone()),
            input: self.input.clone(),
            context: self.context.clone(),
            created_at: None,
            // Webhooks of queue predictions are sent by the queue, which
            // holds `completed` until the prediction is marked done.
            webhook: None,
            trace_headers: self.trace_headers.clone(),
            output_file_prefix: self.output_file_prefix.clone(),
        }
    }
}

/// Reads the request in an entry's `value` (`None`: the entry has no such
/// field, or it is not text). `entry_id` is the id given to a request
/// without one.
pub fn parse(entry_id: &str, value: Option<&[u8]>) -> Result<Request, Refused> {
    let refuse = |error: String| Refused {
        error,
        request: None,
    };
    let value = value.ok_or_else(|| refuse("the entry has no `value` field".into()))?;
    let value: Value = serde_json::from_slice(value)
        .map_err(|e| refuse(format!("the entry's `value` is not JSON: {e}")))?;
    let Value::Object(mut body) = value else {
        return Err(refuse("the entry's `value` is not a JSON object".into()));
    };
    let mut problems = Vec::new();
    let mut text = |body: &mut Map<String, Value>, name: &str| match body.remove(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            problems.push(format!("`{name}` must be a string"));
            None
        }
    };
    let id = text(&mut body, "id").unwrap_or_else(|| entry_id.to_string());
    let webhook = text(&mut body, "webhook");
    let output_file_prefix = text(&mut body, "output_file_prefix");
    let cancel_key = text(&mut body, "cancel_key");
    let response_queue = text(&mut body, "response_queue");
    let traceparent = text(&mut body, "traceparent");
    let tracestate = text(&mut body, "tracestate");
    let deadline = text(&mut body, "deadline");
    let mut object = |body: &mut Map<String, Value>, name: &str| match body.remove(name) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => {
            problems.push(format!("`{name}` must be an object"));
            Map::new()
        }
    };
    let input = object(&mut body, "input");
    let context = object(&mut body, "context");
    let events = match body.remove("webhook_events_filter") {
        None | Some(Value::Null) => WebhookEvent::all(),
        Some(Value::Array(names)) => names
            .iter()
            .map(|n| n.as_str().and_then(WebhookEvent::parse))
            .collect::<Option<_>>()
            .unwrap_or_else(|| {
                problems.push(
                    "`webhook_events_filter` entries must be start, output, logs or completed"
                        .into(),
                );
                WebhookEvent::all()
            }),
        Some(_) => {
            problems.push("`webhook_events_filter` must be a list".into());
            WebhookEvent::all()
        }
    };
    let deadline = deadline.and_then(|text| match DateTime::parse_from_rfc3339(&text) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(_) => {
            problems.push(format!(
                "`deadline` must be an RFC 3339 timestamp, not {text:?}"
            ));
            None
        }
    });
    for (name, url) in [
        ("webhook", &webhook),
        ("output_file_prefix", &output_file_prefix),
    ] {
        if let Some(url) = url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                problems.push(format!("`{name}` must be an http:// or https:// URL"));
            }
        }
    }
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        problems.push(format!(
            "`id` must be 1 to 128 characters of A-Z a-z 0-9 _ . -, not {id:?}"
        ));
    }
    let trace_headers = [("traceparent", traceparent), ("tracestate", tracestate)]
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_string(), value?)))
        .collect::<Vec<_>>();
    let request = Request {
        id,
        input,
        context,
        webhook: webhook
            .filter(|url| url.starts_with("http://") || url.starts_with("https://"))
            .map(|url| Subscription {
                url,
                events,
                trace_headers: trace_headers.clone(),
            }),
        output_file_prefix,
        cancel_key,
        response_queue,
        trace_headers,
        deadline,
    };
    if problems.is_empty() {
        Ok(request)
    } else {
        Err(Refused {
            error: format!("invalid queue entry: {}", problems.join("; ")),
            request: Some(Box::new(request)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cog_worker_request_parses() {
        let value = br#"{"id":"p1","input":{"s":"x"},"webhook":"http://h/w",
            "webhook_events_filter":["completed"],"output_file_prefix":"http://u/",
            "cancel_key":"c1","response_queue":"r1","traceparent":"00-a-b-01",
            "deadline":"2030-01-01T00:00:00Z"}"#;
        let r = parse("1-0", Some(value)).unwrap();
        assert_eq!(r.id, "p1");
        assert_eq!(r.input["s"], "x");
        let hook = r.webhook.unwrap();
        assert_eq!(hook.url, "http://h/w");
        assert_eq!(hook.events.len(), 1);
        assert_eq!(r.cancel_key.as_deref(), Some("c1"));
        assert_eq!(r.response_queue.as_deref(), Some("r1"));
        assert_eq!(
            r.trace_headers,
            vec![("traceparent".into(), "00-a-b-01".into())]
        );
        assert!(r.deadline.is_some());
    }

    #[test]
    fn a_request_without_an_id_takes_the_entry_id() {
        let r = parse("1700000000000-3", Some(br#"{"input":{}}"#)).unwrap();
        assert_eq!(r.id, "1700000000000-3");
    }

    #[test]
    fn unreadable_entries_are_refused_without_a_request() {
        for value in [None, Some(&b"not json"[..]), Some(&b"[1]"[..])] {
            let refused = parse("1-0", value).unwrap_err();
            assert!(refused.request.is_none(), "{}", refused.error);
        }
    }

    #[test]
    fn a_bad_field_is_refused_with_what_could_be_read() {
        let refused = parse(
            "1-0",
            Some(br#"{"id":"p","input":[1],"response_queue":"r","deadline":"soon"}"#),
        )
        .unwrap_err();
        assert!(refused.error.contains("`input` must be an object"));
        assert!(refused.error.contains("`deadline`"));
        let request = refused.request.unwrap();
        assert_eq!(request.response_queue.as_deref(), Some("r"));
        assert_eq!(request.id, "p");
    }
}
