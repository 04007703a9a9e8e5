//! A prediction's stream of events, for readers of server-sent events: the
//! kinds of event and the one way each one's data is written
//! ([`StreamEvent`]), the history kept for readers who attach late (packed
//! once the stream ends), and the subscriptions that replay it and follow on.
//!
//! The wire form is Cog's: the event's name is its kind (`start`, `output`,
//! `log`, `metric`, `completed`), its data one line of JSON:
//!
//! | event | data |
//! |---|---|
//! | `start`, `completed` | the whole prediction, as its envelope |
//! | `output` | `{"chunk": CHUNK, "index": N}` |
//! | `log` | `{"source": "stdout" or "stderr", "data": TEXT}` |
//! | `metric` | `{"name": NAME, "value": VALUE, "mode": MODE}` |

use std::collections::VecDeque;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

use super::{JsonText, Prediction};
use crate::custom_metrics::MetricMode;
use crate::ipc::LogSource;

/// What a stream event reports; its name is the SSE event's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The prediction started running: its envelope.
    Start,
    /// One chunk of a streaming run, with its index.
    Output,
    /// Text the run wrote.
    Log,
    /// A custom metric the run recorded.
    Metric,
    /// The prediction reached its terminal state: its envelope. Always the
    /// last event.
    Completed,
}

impl EventKind {
    /// The name the event is sent under.
    pub fn name(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Output => "output",
            Self::Log => "log",
            Self::Metric => "metric",
            Self::Completed => "completed",
        }
    }
}

/// One event of a prediction's stream, as server-sent events carry it. Made
/// only by its constructors, one per kind, which write its data.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    kind: EventKind,
    /// The event's JSON text.
    data: String,
}

/// A `log` event's data.
#[derive(Serialize)]
struct LogData<'a> {
    source: LogSource,
    data: &'a str,
}

/// A `metric` event's data.
#[derive(Serialize)]
struct MetricData<'a> {
    name: &'a str,
    value: &'a serde_json::Value,
    mode: MetricMode,
}

impl StreamEvent {
    /// `start`: the prediction, as it is once it has started.
    pub fn start(prediction: &Prediction) -> Self {
        Self::new(EventKind::Start, prediction.to_json())
    }

    /// `output`: the chunk numbered `index`, its text as it is.
    pub fn output(chunk: &JsonText, index: u64) -> Self {
        let data = format!(r#"{{"chunk":{},"index":{index}}}"#, chunk.get());
        Self::new(EventKind::Output, data)
    }

    /// `log`: text the run wrote to `source`.
    pub fn log(source: LogSource, data: &str) -> Self {
        Self::new(EventKind::Log, to_json(&LogData { source, data }))
    }

    /// `metric`: a custom metric record, as the run made it.
    pub fn metric(name: &str, value: &serde_json::Value, mode: MetricMode) -> Self {
        Self::new(
            EventKind::Metric,
            to_json(&MetricData { name, value, mode }),
        )
    }

    /// `completed`: the prediction in its terminal state.
    pub fn completed(prediction: &Prediction) -> Self {
        Self::new(EventKind::Completed, prediction.to_json())
    }

    fn new(kind: EventKind, data: String) -> Self {
        Self { kind, data }
    }

    /// What the event reports.
    pub fn kind(&self) -> EventKind {
        self.kind
    }

    /// The name it is sent under.
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// Its data: one JSON value's text.
    pub fn data(&self) -> &str {
        &self.data
    }

    /// Whether it is the stream's last event (`completed`).
    pub fn is_last(&self) -> bool {
        self.kind == EventKind::Completed
    }
}

/// `data`'s compact JSON text.
fn to_json<T: Serialize>(data: &T) -> String {
    serde_json::to_string(data).expect("stream event data is JSON")
}

/// A new reader's view of a prediction's stream: what it missed, then live.
#[derive(Debug)]
pub struct StreamSubscription {
    /// The events kept so far, oldest first.
    pub history: Vec<Arc<StreamEvent>>,
    /// How many older events were dropped from the history: a reader who
    /// attaches when this is not 0 cannot be given the whole stream.
    pub dropped: u64,
    /// Every event from now on.
    pub live: broadcast::Receiver<Arc<StreamEvent>>,
}

/// How many live events a reader may fall behind before it is dropped.
const LIVE_BUFFER: usize = 1024;

/// About what a kept stream event costs beside its text: its place in the
/// history, its `Arc` and the two allocations.
pub(super) const EVENT_OVERHEAD: usize = 96;

/// A finished stream's history, kept for readers who attach afterwards in
/// under half the memory of its events: their text back to back, and where
/// each ends with its kind. Made back into events for each such reader.
#[derive(Debug)]
struct PackedHistory {
    text: String,
    ends: Vec<(u32, EventKind)>,
}

impl PackedHistory {
    /// Packs `events`; `None` when the text would not fit its offsets.
    fn pack(events: &VecDeque<Arc<StreamEvent>>) -> Option<Self> {
        let len: usize = events.iter().map(|e| e.data.len()).sum();
        u32::try_from(len).ok()?;
        let mut packed = Self {
            text: String::with_capacity(len),
            ends: Vec::with_capacity(events.len()),
        };
        for event in events {
            packed.text.push_str(&event.data);
            packed.ends.push((packed.text.len() as u32, event.kind));
        }
        Some(packed)
    }

    /// The events, oldest first.
    fn events(&self) -> Vec<Arc<StreamEvent>> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&(end, kind)| {
                let data = self.text[start..end as usize].to_string();
                start = end as usize;
                Arc::new(StreamEvent::new(kind, data))
            })
            .collect()
    }

    /// About how many bytes it holds.
    fn size(&self) -> usize {
        self.text.len() + self.ends.len() * std::mem::size_of::<(u32, EventKind)>()
    }
}

/// The stream of a prediction whose run is marked `@streaming`: the history
/// kept for late readers and the channel live readers follow.
#[derive(Debug)]
pub(super) struct EventStream {
    history: VecDeque<Arc<StreamEvent>>,
    /// The history once `completed` is published, packed (`history` is then
    /// empty), unless it could not be.
    packed: Option<PackedHistory>,
    /// 0 keeps no history: readers see live events only.
    capacity: usize,
    /// Events dropped from the front of a full history.
    dropped: u64,
    /// `None` once `completed` is published: a finished stream only replays
    /// its history, and the channel's buffer (a slot per event a reader may
    /// fall behind, allocated whole) is not kept with it.
    live: Option<broadcast::Sender<Arc<StreamEvent>>>,
}

impl EventStream {
    /// A stream that replays its last `history` events to readers who
    /// attach late.
    pub(super) fn new(history: usize) -> Self {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        Self {
            history: VecDeque::with_capacity(history.min(LIVE_BUFFER)),
            capacity: history,
            dropped: 0,
            packed: None,
            live: Some(live),
        }
    }

    /// Records `event` and sends it to every reader. `completed` is the
    /// last: after it, the live channel is closed (readers still get every
    /// event sent before) and the history is packed.
    pub(super) fn publish(&mut self, event: StreamEvent) {
        let event = Arc::new(event);
        if self.capacity > 0 {
            if self.history.len() == self.capacity {
                self.history.pop_front();
                self.dropped += 1;
            }
            self.history.push_back(Arc::clone(&event));
        }
        let last = event.is_last();
        if let Some(live) = &self.live {
            let _ = live.send(event);
        }
        if last {
            self.live = None;
            match PackedHistory::pack(&self.history) {
                Some(packed) => {
                    self.packed = Some(packed);
                    self.history = VecDeque::new();
                }
                None => self.history.shrink_to_fit(),
            }
        }
    }

    /// Attaches a reader: the history so far and the live events after it.
    pub(super) fn subscribe(&self) -> StreamSubscription {
        StreamSubscription {
            history: match &self.packed {
                Some(packed) => packed.events(),
                None => self.history.iter().cloned().collect(),
            },
            dropped: self.dropped,
            live: match &self.live {
                Some(live) => live.subscribe(),
                // Finished: a receiver that is already closed.
                None => broadcast::channel(1).1,
            },
        }
    }

    /// About how many bytes the kept events hold.
    pub(super) fn size(&self) -> usize {
        let live: usize = self
            .history
            .iter()
            .map(|e| e.data.len() + EVENT_OVERHEAD)
            .sum();
        live + self.packed.as_ref().map_or(0, PackedHistory::size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prediction::{Outcome, PredictionHandle, Status};
    use serde_json::json;

    fn prediction() -> Prediction {
        Prediction::new("p".into(), &json!({}), None)
    }

    /// An `output` event whose chunk is `text`.
    fn output(text: &str, index: u64) -> StreamEvent {
        let chunk = JsonText::from(serde_json::value::RawValue::from_string(text.into()).unwrap());
        StreamEvent::output(&chunk, index)
    }

    #[test]
    fn each_kind_of_event_has_its_wire_form() {
        let mut p = Prediction::new("p1".into(), &json!({"n": 1}), None);
        p.start();
        let started = StreamEvent::start(&p);
        assert_eq!((started.name(), started.data()), ("start", &*p.to_json()));
        assert_eq!(started.kind(), EventKind::Start);
        p.finish(Outcome::Canceled);
        let completed = StreamEvent::completed(&p);
        assert_eq!(
            (completed.name(), completed.data()),
            ("completed", &*p.to_json())
        );
        assert!(completed.is_last() && !started.is_last());
        let chunk = output(r#"{"text": "é"}"#, 7);
        assert_eq!(
            (chunk.name(), chunk.data()),
            ("output", r#"{"chunk":{"text": "é"},"index":7}"#),
            "a chunk's text is sent as it is"
        );
        let log = StreamEvent::log(LogSource::Stderr, "a \"quote\"\tand\u{1}é\n");
        assert_eq!(
            (log.name(), log.data()),
            (
                "log",
                r#"{"source":"stderr","data":"a \"quote\"\tand\u0001é\n"}"#
            )
        );
        let metric = StreamEvent::metric("timing.step", &json!([1, 2.5]), MetricMode::Incr);
        assert_eq!(
            (metric.name(), metric.data()),
            (
                "metric",
                r#"{"name":"timing.step","value":[1,2.5],"mode":"increment"}"#
            )
        );
        let kinds = [
            EventKind::Start,
            EventKind::Output,
            EventKind::Log,
            EventKind::Metric,
            EventKind::Completed,
        ];
        let names: Vec<_> = kinds.iter().map(|k| k.name()).collect();
        assert_eq!(names, ["start", "output", "log", "metric", "completed"]);
    }

    #[test]
    fn log_and_metric_data_are_what_a_json_object_of_their_fields_writes() {
        for text in ["", "plain\n", "\u{0}\u{7f}\u{2028}\"\\/", "日本語\r\n"] {
            for source in [LogSource::Stdout, LogSource::Stderr] {
                assert_eq!(
                    StreamEvent::log(source, text).data(),
                    json!({"source": source, "data": text}).to_string()
                );
            }
        }
        for (value, mode) in [
            (json!(null), MetricMode::Replace),
            (json!(-1e300), MetricMode::Incr),
            (json!({"b": [true], "a": "x"}), MetricMode::Append),
        ] {
            assert_eq!(
                StreamEvent::metric("n.m", &value, mode).data(),
                json!({"name": "n.m", "value": value, "mode": mode}).to_string()
            );
        }
    }

    #[test]
    fn stream_readers_get_history_then_live_events() {
        let handle = PredictionHandle::with_stream(prediction(), 2);
        handle.publish(output("1", 0));
        let early = handle.subscribe_stream().unwrap();
        assert_eq!(early.history.len(), 1);
        assert_eq!(early.dropped, 0);
        handle.publish(output("2", 1));
        handle.publish(output("3", 2));
        let late = handle.subscribe_stream().unwrap();
        assert_eq!(
            late.dropped, 1,
            "the first event was dropped from a history of 2"
        );
        assert_eq!(
            late.history.iter().map(|e| e.data()).collect::<Vec<_>>(),
            [r#"{"chunk":2,"index":1}"#, r#"{"chunk":3,"index":2}"#]
        );
        let mut live = early.live;
        assert_eq!(*live.try_recv().unwrap(), output("2", 1));
        assert_eq!(*live.try_recv().unwrap(), output("3", 2));
    }

    #[test]
    fn a_completed_stream_replays_its_history_and_closes_its_channel() {
        let handle = PredictionHandle::with_stream(prediction(), 8);
        let reader = handle.subscribe_stream().unwrap();
        let before = handle.size();
        let first = output("1", 0);
        let first_len = first.data().len();
        handle.publish(first.clone());
        // What the history keeps counts towards what the registry keeps.
        assert_eq!(handle.size(), before + first_len + EVENT_OVERHEAD);
        let completed = StreamEvent::completed(&handle.snapshot());
        let live = handle.size() + completed.data().len() + EVENT_OVERHEAD;
        handle.publish(completed.clone());
        assert!(handle.size() < live, "a finished history is packed");
        // A reader attached before gets every event, then the end.
        let mut live = reader.live;
        assert_eq!(*live.try_recv().unwrap(), first);
        assert_eq!(live.try_recv().unwrap().name(), "completed");
        assert_eq!(live.try_recv(), Err(broadcast::error::TryRecvError::Closed));
        // One attached after replays the history, and its channel is closed.
        let late = handle.subscribe_stream().unwrap();
        let events: Vec<_> = late.history.iter().map(|e| (**e).clone()).collect();
        assert_eq!(events, [first, completed]);
        let mut live = late.live;
        assert_eq!(live.try_recv(), Err(broadcast::error::TryRecvError::Closed));
    }

    #[test]
    fn a_packed_history_unpacks_to_the_same_events() {
        let mut p = Prediction::new("é".into(), &json!({}), None);
        let start = StreamEvent::start(&p);
        p.finish(Outcome::Failed("boom".into()));
        let events: VecDeque<_> = [
            start,
            StreamEvent::log(LogSource::Stdout, ""),
            output(r#"{"chunk":"ü"}"#, 0),
            StreamEvent::metric("m", &json!({}), MetricMode::Replace),
            StreamEvent::completed(&p),
        ]
        .into_iter()
        .map(Arc::new)
        .collect();
        let packed = PackedHistory::pack(&events).unwrap();
        assert_eq!(packed.events(), Vec::from(events));
        assert_eq!(p.status, Status::Failed);
    }

    #[test]
    fn a_zero_history_keeps_nothing_and_is_never_truncated() {
        let handle = PredictionHandle::with_stream(prediction(), 0);
        handle.publish(output("1", 0));
        let reader = handle.subscribe_stream().unwrap();
        assert!(reader.history.is_empty() && reader.dropped == 0);
    }
}
