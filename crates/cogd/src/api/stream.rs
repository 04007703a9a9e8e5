//! `Accept: text/event-stream`: a prediction as server-sent events.
//!
//! The stream is a subscriber of the prediction like any other: it replays the
//! events the prediction kept, then follows live ones, and ends after
//! `completed`. A reader that falls too far behind is sent `error` and dropped,
//! so it can never slow the run or other readers. Both `error` events are
//! worded as Cog's runtime words them, with the number of events the reader
//! will not see: `{"error": "SSE stream replay truncated; events were
//! dropped", "skipped": N}` for a late reader whose history was cut, `{"error":
//! "SSE stream lagged; events were dropped", "skipped": N}` for one that fell
//! behind.
//!
//! Each open stream holds a place of the [`StreamLimit`] (`COG_MAX_STREAMS`);
//! the place goes back when the stream ends or its client goes away, since
//! either way the stream, and the permit it carries, is dropped.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::OwnedSemaphorePermit;

use super::error::ApiError;
use super::limits::StreamLimit;
use crate::prediction::{PredictionHandle, StreamEvent};
use crate::service::{Admission, NewPrediction, Service};

/// True when the client asked for server-sent events: `Accept` names
/// `text/event-stream` with a weight above zero (`;q=0` means "not this").
pub(super) fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(accepts_event_stream)
}

/// Whether one media range of `Accept` is `text/event-stream`, not refused.
fn accepts_event_stream(range: &str) -> bool {
    let mut parts = range.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"))
    {
        return false;
    }
    let weight = parts
        .filter_map(|p| p.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
        .map_or(Some(1.0), |(_, q)| q.trim().parse::<f32>().ok());
    weight.is_some_and(|q| q > 0.0)
}

/// Creates (or re-attaches to) the prediction and answers with its stream.
/// The stream's place is taken first, so a refused stream (429) never starts
/// a prediction.
pub(super) fn respond(
    service: &Service,
    limit: &StreamLimit,
    request: NewPrediction,
) -> Result<Response, ApiError> {
    if !service.streaming() {
        return Err(ApiError::NotStreaming);
    }
    let permit = limit.acquire()?;
    let handle = match service.create(request)? {
        Admission::Created(handle) | Admission::Existing(handle) => handle,
    };
    Ok(Sse::new(events(handle, permit))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Where a reader's stream is: failing with an `error` event, replaying
/// history, following live events, or done.
enum ReaderState {
    Fail(Result<Event, Infallible>),
    Replay(
        VecDeque<Arc<StreamEvent>>,
        broadcast::Receiver<Arc<StreamEvent>>,
    ),
    Live(broadcast::Receiver<Arc<StreamEvent>>),
    Done,
}

fn sse(event: &StreamEvent) -> Result<Event, Infallible> {
    Ok(Event::default().event(event.name()).data(event.data()))
}

/// The `error` event of a reader who will not see `skipped` events.
fn error(message: &str, skipped: u64) -> Result<Event, Infallible> {
    let data = serde_json::json!({ "error": message, "skipped": skipped }).to_string();
    Ok(Event::default().event("error").data(data))
}

/// The stream's events; `permit` lives as long as the stream does.
fn events(
    handle: PredictionHandle,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let start = match handle.subscribe_stream() {
        None => ReaderState::Done,
        Some(sub) if sub.dropped > 0 => ReaderState::Fail(error(
            "SSE stream replay truncated; events were dropped",
            sub.dropped,
        )),
        Some(sub) => ReaderState::Replay(sub.history.into(), sub.live),
    };
    let events = stream::unfold((start, handle), |(reader, handle)| async move {
        match reader {
            ReaderState::Done => None,
            ReaderState::Fail(event) => Some((event, (ReaderState::Done, handle))),
            ReaderState::Replay(mut history, live) => match history.pop_front() {
                Some(event) => {
                    let next = if event.is_last() {
                        ReaderState::Done
                    } else {
                        ReaderState::Replay(history, live)
                    };
                    Some((sse(&event), (next, handle)))
                }
                None => {
                    let state = handle.snapshot();
                    if state.status.is_terminal() {
                        // Finished with no `completed` kept (live-only history).
                        let event = StreamEvent::completed(&state);
                        return Some((sse(&event), (ReaderState::Done, handle)));
                    }
                    next_live(live, handle).await
                }
            },
            ReaderState::Live(live) => next_live(live, handle).await,
        }
    });
    futures_util::StreamExt::map(events, move |event| {
        let _held = &permit;
        event
    })
}

type Step = (Result<Event, Infallible>, (ReaderState, PredictionHandle));

async fn next_live(
    mut live: broadcast::Receiver<Arc<StreamEvent>>,
    handle: PredictionHandle,
) -> Option<Step> {
    match live.recv().await {
        Ok(event) => {
            let next = if event.is_last() {
                ReaderState::Done
            } else {
                ReaderState::Live(live)
            };
            Some((sse(&event), (next, handle)))
        }
        Err(RecvError::Lagged(missed)) => Some((
            error("SSE stream lagged; events were dropped", missed),
            (ReaderState::Done, handle),
        )),
        Err(RecvError::Closed) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::accepts_event_stream;

    #[test]
    fn a_zero_weight_refuses_the_event_stream() {
        for range in [
            "text/event-stream",
            "Text/Event-Stream",
            " text/event-stream;q=0.5",
        ] {
            assert!(accepts_event_stream(range), "{range}");
        }
        for range in [
            "text/event-stream;q=0",
            "text/event-stream; q=0.0",
            "*/*",
            "text/plain",
        ] {
            assert!(!accepts_event_stream(range), "{range}");
        }
    }
}
