//! One prediction's state and the rules for how it may change.
//!
//! The service owns each prediction as a [`PredictionHandle`]: a `watch` channel
//! whose value is the [`Prediction`]. Every change goes through a method here
//! and is visible at once to every subscriber (the synchronous reply today;
//! webhooks and streams subscribe the same way), so no one keeps a second copy.
//! A prediction moves `starting -> processing -> succeeded | failed | canceled`
//! and never leaves a terminal state.
//!
//! Here: the state machine ([`Prediction`], [`Status`], [`Outcome`]), the
//! response envelope it is written as, and [`PredictionHandle`]. The shared
//! JSON text of inputs and outputs ([`JsonText`]) is in `text.rs`; the
//! events of a `@streaming` model's stream ([`StreamEvent`]), its history
//! and its readers, in `stream.rs`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::ser::Serializer;
use serde::Serialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::logs::append_capped;

mod stream;
mod text;

use stream::EventStream;
pub use stream::{EventKind, StreamEvent, StreamSubscription};
pub use text::JsonText;

/// Where a prediction is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Accepted, not yet running.
    Starting,
    /// Running in a slot.
    Processing,
    /// Finished with an output.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Stopped by a cancel.
    Canceled,
}

impl Status {
    /// True for the three states a prediction never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Canceled)
    }

    /// The status as the API names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }
}

/// How a run ended, as the worker (or its death) reported it.
#[derive(Debug)]
pub enum Outcome {
    /// The run returned; `is_stream` says whether outputs were chunks.
    Succeeded {
        /// Seconds spent in the model's code.
        predict_time: f64,
        /// Whether the outputs are chunks of a stream.
        is_stream: bool,
    },
    /// The run raised or could not be run.
    Failed(String),
    /// The run was canceled.
    Canceled,
}

/// The state of one prediction, serialised as Cog's response envelope.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// The prediction id.
    pub id: String,
    /// The input as given (after defaults, once validation applies them),
    /// as JSON text: written once, shared by every snapshot and reply.
    pub input: JsonText,
    /// Where it is.
    pub status: Status,
    /// Outputs received so far: a stream's chunks, or a plain run's one value
    /// (added just before it finishes). Empty once finished: they are in
    /// `output` then.
    pub outputs: Vec<JsonText>,
    /// The final output, set when the prediction succeeds.
    pub output: Option<JsonText>,
    /// Everything the run wrote, in order.
    pub logs: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Custom metrics as the run recorded them, and `predict_time` once finished.
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When it started running.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal state.
    pub completed_at: Option<DateTime<Utc>>,
}

impl Prediction {
    /// A new prediction in `starting`.
    pub fn new(id: String, input: impl Into<JsonText>, created_at: Option<DateTime<Utc>>) -> Self {
        Self {
            id,
            input: input.into(),
            status: Status::Starting,
            outputs: Vec::new(),
            output: None,
            logs: String::new(),
            error: None,
            metrics: serde_json::Map::new(),
            created_at: created_at.unwrap_or_else(Utc::now),
            started_at: None,
            completed_at: None,
        }
    }

    /// `starting -> processing`; ignored in any other state.
    pub fn start(&mut self) {
        if self.status == Status::Starting {
            self.status = Status::Processing;
            self.started_at = Some(Utc::now());
        }
    }

    /// Appends run output; ignored once terminal. Past [`crate::logs::MAX_LOG_BYTES`]
    /// the logs end with a marker and further output is dropped, so a
    /// model that never stops printing cannot exhaust the server's memory.
    /// Returns what was added (for stream readers), `None` when nothing was.
    pub fn append_log<'a>(&mut self, data: &'a str) -> Option<Cow<'a, str>> {
        if self.status.is_terminal() {
            return None;
        }
        append_capped(&mut self.logs, data)
    }

    /// Applies one custom metric record to `metrics` ([`crate::custom_metrics::apply`]);
    /// `Ok(false)` (and no change) once terminal. `predict_time` is reserved,
    /// so no record can touch it.
    pub fn record_metric(
        &mut self,
        name: &str,
        value: serde_json::Value,
        mode: crate::custom_metrics::MetricMode,
    ) -> Result<bool, crate::custom_metrics::MetricError> {
        if self.status.is_terminal() {
            return Ok(false);
        }
        crate::custom_metrics::apply(&mut self.metrics, name, value, mode)?;
        Ok(true)
    }

    /// Records one output (or chunk); ignored once terminal.
    pub fn push_output(&mut self, output: impl Into<JsonText>) {
        if !self.status.is_terminal() {
            self.outputs.push(output.into());
        }
    }

    /// Moves to the terminal state `outcome` names; false (and no change) if the
    /// prediction had already finished.
    pub fn finish(&mut self, outcome: Outcome) -> bool {
        if self.status.is_terminal() {
            return false;
        }
        let now = Utc::now();
        let started = *self.started_at.get_or_insert(now);
        let elapsed = (now - started).to_std().unwrap_or_default().as_secs_f64();
        match outcome {
            Outcome::Succeeded {
                predict_time,
                is_stream,
            } => {
                self.status = Status::Succeeded;
                self.output = Some(final_output(&mut self.outputs, is_stream));
                self.metrics
                    .insert("predict_time".into(), predict_time.into());
            }
            stopped => {
                (self.status, self.error) = match stopped {
                    Outcome::Failed(error) => (Status::Failed, Some(error)),
                    _ => (Status::Canceled, None),
                };
                // A stream that failed or was canceled midway keeps the
                // chunks it produced.
                if !self.outputs.is_empty() {
                    self.output = Some(final_output(&mut self.outputs, true));
                }
                self.metrics.insert("predict_time".into(), elapsed.into());
            }
        }
        self.completed_at = Some(now);
        true
    }
}

/// A plain run's output is its one value; a stream's is the list of its chunks.
fn final_output(outputs: &mut Vec<JsonText>, is_stream: bool) -> JsonText {
    if !is_stream && outputs.len() <= 1 {
        return outputs.pop().unwrap_or_else(|| {
            RawValue::from_string("null".into())
                .expect("null is JSON")
                .into()
        });
    }
    let list = JsonText::written(list_text(outputs));
    // The chunks are in the list now; a finished prediction is kept a while.
    *outputs = Vec::new();
    list
}

/// The JSON list of `items`, their texts joined as they are: what
/// serialising them writes, with no chunk parsed again.
fn list_text(items: &[JsonText]) -> String {
    let len = items.iter().map(|item| item.get().len() + 1).sum::<usize>() + 1;
    let mut text = String::with_capacity(len);
    text.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(item.get());
    }
    text.push(']');
    text
}

/// A time as the envelope writes it: RFC 3339 with microseconds.
pub(crate) fn timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

impl Serialize for Prediction {
    /// Serialises as the envelope's text: the text
    /// [`Prediction::envelope_pieces`] writes, the one writer of the
    /// envelope (every reply, webhook and stream event is written from its
    /// pieces).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = self.to_json();
        serde_json::from_str::<&RawValue>(&text)
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

impl Prediction {
    /// The envelope's JSON (the same text as serialising it) in five
    /// pieces: what comes before the input, the input, what comes between
    /// it and the output, the output, and what comes after. The input and
    /// output pieces share the stored text's memory, so a reply carrying a
    /// huge input or output never copies it.
    pub fn envelope_pieces(&self) -> [bytes::Bytes; 5] {
        fn json<T: Serialize + ?Sized>(value: &T) -> String {
            serde_json::to_string(value).expect("the envelope's fields are JSON")
        }
        let head = format!(
            r#"{{"id":{},"status":{},"input":"#,
            json(&self.id),
            json(&self.status),
        );
        let input = bytes::Bytes::from_owner(self.input.clone());
        let output = match &self.output {
            None if !self.status.is_terminal() && !self.outputs.is_empty() => {
                bytes::Bytes::from(list_text(&self.outputs))
            }
            None => bytes::Bytes::from_static(b"null"),
            Some(output) => bytes::Bytes::from_owner(output.clone()),
        };
        let tail = format!(
            r#","logs":{},"error":{},"metrics":{},"created_at":{},"started_at":{},"completed_at":{}}}"#,
            json(&self.logs),
            json(&self.error),
            json(&self.metrics),
            json(&timestamp(&self.created_at)),
            json(&self.started_at.as_ref().map(timestamp)),
            json(&self.completed_at.as_ref().map(timestamp)),
        );
        [
            head.into(),
            input,
            bytes::Bytes::from_static(br#","output":"#),
            output,
            tail.into(),
        ]
    }
}

impl Prediction {
    /// The envelope's JSON text (the same text as serialising it), joined
    /// from [`Prediction::envelope_pieces`]: the input and output are copied
    /// as they are, never parsed or escaped again.
    pub fn to_json(&self) -> String {
        let pieces = self.envelope_pieces();
        let mut text = String::with_capacity(pieces.iter().map(bytes::Bytes::len).sum());
        for piece in &pieces {
            text.push_str(std::str::from_utf8(piece).expect("every piece is JSON text"));
        }
        text
    }
}

/// The shared, observable home of one prediction.
#[derive(Debug, Clone)]
pub struct PredictionHandle {
    state: watch::Sender<Prediction>,
    /// Woken once, when the prediction becomes terminal: a client waiting for
    /// the result is not woken by each log line before that.
    terminal: Arc<Notify>,
    /// Fired by a cancel request; the run task acts on it.
    cancel: CancellationToken,
    /// Events for stream readers, when the model streams.
    stream: Option<Arc<Mutex<EventStream>>>,
}

/// The stream's lock, taken even when one who held it panicked.
fn lock(stream: &Mutex<EventStream>) -> std::sync::MutexGuard<'_, EventStream> {
    stream.lock().unwrap_or_else(|e| e.into_inner())
}

impl PredictionHandle {
    /// Wraps a new prediction.
    pub fn new(prediction: Prediction) -> Self {
        Self {
            state: watch::Sender::new(prediction),
            terminal: Arc::new(Notify::new()),
            cancel: CancellationToken::new(),
            stream: None,
        }
    }

    /// Wraps a new prediction that keeps a stream of events for SSE readers,
    /// with the last `history` of them replayed to readers who attach late.
    pub fn with_stream(prediction: Prediction, history: usize) -> Self {
        Self {
            stream: Some(Arc::new(Mutex::new(EventStream::new(history)))),
            ..Self::new(prediction)
        }
    }

    /// Whether this prediction keeps a stream.
    pub fn has_stream(&self) -> bool {
        self.stream.is_some()
    }

    /// Records one stream event and sends it to every reader; nothing
    /// without a stream. `completed` is the last: after it, the live channel
    /// is closed (readers still get every event sent before) and the history
    /// is packed.
    pub fn publish(&self, event: StreamEvent) {
        if let Some(stream) = &self.stream {
            lock(stream).publish(event);
        }
    }

    /// Attaches a reader: the history so far and the live events after it,
    /// with nothing missed or repeated in between.
    pub fn subscribe_stream(&self) -> Option<StreamSubscription> {
        Some(lock(self.stream.as_ref()?).subscribe())
    }

    /// Asks for the prediction to be canceled; harmless once it has finished.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Completes once a cancel has been asked for.
    pub async fn canceled(&self) {
        self.cancel.cancelled().await
    }

    /// Whether a cancel has been asked for.
    pub fn is_cancel_requested(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Applies `change` and wakes subscribers if it reports a change.
    pub fn update(&self, change: impl FnOnce(&mut Prediction) -> bool) {
        let mut ended = false;
        self.state.send_if_modified(|p| {
            let was_terminal = p.status.is_terminal();
            let changed = change(p);
            ended = !was_terminal && p.status.is_terminal();
            changed
        });
        if ended {
            self.terminal.notify_waiters();
        }
    }

    /// About how many bytes the prediction holds: its input, outputs and
    /// logs, as JSON, and the events its stream keeps for late readers.
    pub fn size(&self) -> usize {
        let kept = self.stream.as_ref().map_or(0, |stream| lock(stream).size());
        let state = self.state.borrow();
        let outputs: usize = state.outputs.iter().map(|o| o.get().len()).sum();
        let output = state.output.as_ref().map_or(0, |o| o.get().len());
        state.input.get().len() + outputs + output + state.logs.len() + kept
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> Prediction {
        self.state.borrow().clone()
    }

    /// Follows every change from now on.
    pub fn subscribe(&self) -> watch::Receiver<Prediction> {
        self.state.subscribe()
    }

    /// Waits until the prediction is terminal and returns that state.
    pub async fn finished(&self) -> Prediction {
        let terminal = self.terminal.notified();
        tokio::pin!(terminal);
        // Registered before the check, so the change cannot slip in between.
        terminal.as_mut().enable();
        {
            let state = self.state.borrow();
            if state.status.is_terminal() {
                return state.clone();
            }
        }
        terminal.await;
        self.snapshot()
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::{LOGS_TRUNCATED, MAX_LOG_BYTES};

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.into()).unwrap()
    }

    #[test]
    fn a_prediction_runs_then_succeeds_with_its_output() {
        let mut p = Prediction::new("p".into(), &serde_json::json!({}), None);
        assert_eq!(p.status, Status::Starting);
        p.start();
        assert_eq!(p.status, Status::Processing);
        p.append_log("hi\n");
        p.push_output(raw("\"hello\""));
        assert!(p.finish(Outcome::Succeeded {
            predict_time: 0.5,
            is_stream: false
        }));
        assert_eq!(p.status, Status::Succeeded);
        assert_eq!(p.output.as_ref().unwrap().get(), "\"hello\"");
        assert_eq!(p.metrics["predict_time"], 0.5);
        assert!(p.completed_at.unwrap() >= p.started_at.unwrap());
    }

    #[test]
    fn a_terminal_state_never_changes() {
        let mut p = Prediction::new("p".into(), &serde_json::json!({}), None);
        p.start();
        assert!(p.finish(Outcome::Failed("ValueError: boom".into())));
        assert!(!p.finish(Outcome::Succeeded {
            predict_time: 1.0,
            is_stream: false
        }));
        assert!(!p.finish(Outcome::Canceled));
        p.append_log("late\n");
        p.push_output(raw("1"));
        p.start();
        assert_eq!(p.status, Status::Failed);
        assert_eq!(p.error.as_deref(), Some("ValueError: boom"));
        assert!(p.output.is_none(), "a failed plain run has no output");
        assert_eq!(p.logs, "");
        assert!(p.outputs.is_empty());
    }

    #[test]
    fn logs_stop_at_the_cap_with_a_marker() {
        let mut p = Prediction::new("p".into(), &serde_json::json!({}), None);
        p.start();
        let line = "é".repeat(1000) + "\n";
        while !p.logs.ends_with(LOGS_TRUNCATED) {
            p.append_log(&line);
        }
        assert!(p.logs.len() <= MAX_LOG_BYTES + LOGS_TRUNCATED.len());
        let before = p.logs.len();
        assert_eq!(p.append_log("more\n"), None);
        assert_eq!(p.logs.len(), before, "nothing is added after the marker");
    }

    #[test]
    fn output_that_prints_the_marker_text_is_not_cut() {
        let mut p = Prediction::new("p".into(), &serde_json::json!({}), None);
        p.start();
        assert!(p.append_log(LOGS_TRUNCATED).is_some());
        assert_eq!(p.append_log("after\n").as_deref(), Some("after\n"));
        assert!(p.logs.ends_with("after\n"));
    }

    #[test]
    fn custom_metrics_sit_beside_predict_time_and_stop_changing_once_terminal() {
        use crate::custom_metrics::MetricMode;
        let mut p = Prediction::new("p".into(), &serde_json::json!({}), None);
        p.start();
        assert!(p
            .record_metric(
                "timing.inference",
                serde_json::json!(0.5),
                MetricMode::Replace
            )
            .unwrap());
        assert!(p
            .record_metric("tokens", serde_json::json!(2), MetricMode::Incr)
            .unwrap());
        assert!(p
            .record_metric("predict_time", serde_json::json!(9), MetricMode::Replace)
            .is_err());
        p.finish(Outcome::Succeeded {
            predict_time: 0.25,
            is_stream: false,
        });
        assert!(!p
            .record_metric("tokens", serde_json::json!(1), MetricMode::Incr)
            .unwrap());
        assert_eq!(
            serde_json::to_value(&p).unwrap()["metrics"],
            serde_json::json!({"timing": {"inference": 0.5}, "tokens": 2, "predict_time": 0.25})
        );
    }

    #[test]
    fn a_stream_output_is_the_list_of_its_chunks() {
        let mut p = Prediction::new("p".into(), &serde_json::json!({}), None);
        p.start();
        for chunk in ["\"a\"", "\"b\"", "{\"c\":1}"] {
            p.push_output(raw(chunk));
        }
        p.finish(Outcome::Succeeded {
            predict_time: 0.1,
            is_stream: true,
        });
        assert!(
            p.outputs.is_empty(),
            "the chunks are kept in the list alone"
        );
        assert_eq!(p.output.unwrap().get(), r#"["a","b",{"c":1}]"#);
    }

    #[test]
    fn a_stream_that_fails_midway_keeps_its_chunks() {
        let mut p = Prediction::new("p".into(), &serde_json::json!({}), None);
        p.start();
        p.push_output(raw("\"a\""));
        p.finish(Outcome::Failed("RuntimeError: midway".into()));
        assert_eq!(p.output.unwrap().get(), r#"["a"]"#);
    }

    #[test]
    fn a_plain_run_without_output_succeeds_with_null() {
        let mut p = Prediction::new("p".into(), &serde_json::json!({}), None);
        p.finish(Outcome::Succeeded {
            predict_time: 0.0,
            is_stream: false,
        });
        assert_eq!(p.output.unwrap().get(), "null");
    }

    #[test]
    fn the_envelope_has_every_documented_field() {
        let mut p = Prediction::new("p1".into(), &serde_json::json!({"name": "x"}), None);
        p.start();
        p.push_output(raw("\"hello\""));
        p.finish(Outcome::Succeeded {
            predict_time: 0.25,
            is_stream: false,
        });
        let v = serde_json::to_value(&p).unwrap();
        for key in [
            "id",
            "status",
            "input",
            "output",
            "logs",
            "error",
            "metrics",
            "created_at",
            "started_at",
            "completed_at",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["status"], "succeeded");
        assert_eq!(v["output"], "hello");
        assert!(v["created_at"].as_str().unwrap().ends_with("+00:00"));
    }

    #[test]
    fn the_envelope_in_pieces_is_the_envelope() {
        let mut p = Prediction::new("p1".into(), &serde_json::json!({"name": "x"}), None);
        let whole = |p: &Prediction| {
            let pieces = p.envelope_pieces();
            assert_eq!(
                pieces.concat(),
                serde_json::to_vec(p).unwrap(),
                "{:?}",
                String::from_utf8_lossy(&pieces.concat())
            );
            assert_eq!(p.to_json().as_bytes(), pieces.concat());
            assert_eq!(
                pieces.concat(),
                serde_json::to_vec(&FieldByField(p)).unwrap(),
                "the pieces write what serialising each field in turn writes"
            );
        };
        whole(&p);
        p.start();
        p.append_log("a \"line\"\n");
        p.push_output(raw("\"chunk\""));
        whole(&p);
        p.finish(Outcome::Succeeded {
            predict_time: 0.5,
            is_stream: false,
        });
        whole(&p);
        let big = p.output.clone().unwrap();
        let pieces = p.envelope_pieces();
        assert_eq!(
            pieces[3].as_ptr(),
            big.get().as_ptr(),
            "the output is not copied"
        );
        assert_eq!(
            pieces[1].as_ptr(),
            p.input.get().as_ptr(),
            "the input is not copied"
        );
    }

    /// The envelope written another way, one field after the other by
    /// serde: what the pieces are checked against.
    struct FieldByField<'a>(&'a Prediction);

    impl Serialize for FieldByField<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let p = self.0;
            let mut map = serializer.serialize_map(Some(10))?;
            map.serialize_entry("id", &p.id)?;
            map.serialize_entry("status", &p.status)?;
            map.serialize_entry("input", &p.input)?;
            match &p.output {
                None if !p.status.is_terminal() && !p.outputs.is_empty() => {
                    map.serialize_entry("output", &p.outputs)?
                }
                output => map.serialize_entry("output", output)?,
            }
            map.serialize_entry("logs", &p.logs)?;
            map.serialize_entry("error", &p.error)?;
            map.serialize_entry("metrics", &p.metrics)?;
            map.serialize_entry("created_at", &timestamp(&p.created_at))?;
            map.serialize_entry("started_at", &p.started_at.as_ref().map(timestamp))?;
            map.serialize_entry("completed_at", &p.completed_at.as_ref().map(timestamp))?;
            map.end()
        }
    }

    #[test]
    fn the_envelope_text_is_pinned_byte_for_byte() {
        let created = "2024-05-06T07:08:09.123456Z".parse().unwrap();
        let mut p = Prediction::new("p1".into(), &serde_json::json!({"s": "é"}), Some(created));
        p.start();
        p.started_at = Some(created);
        p.append_log("a\n\"b\"\n");
        p.push_output(raw("\"x\""));
        p.push_output(raw("[1]"));
        assert_eq!(
            p.to_json(),
            r#"{"id":"p1","status":"processing","input":{"s":"é"},"output":["x",[1]],"logs":"a\n\"b\"\n","error":null,"metrics":{},"created_at":"2024-05-06T07:08:09.123456+00:00","started_at":"2024-05-06T07:08:09.123456+00:00","completed_at":null}"#
        );
        p.finish(Outcome::Failed("boom".into()));
        p.completed_at = Some(created);
        p.metrics.insert("predict_time".into(), 0.5.into());
        assert_eq!(
            p.to_json(),
            r#"{"id":"p1","status":"failed","input":{"s":"é"},"output":["x",[1]],"logs":"a\n\"b\"\n","error":"boom","metrics":{"predict_time":0.5},"created_at":"2024-05-06T07:08:09.123456+00:00","started_at":"2024-05-06T07:08:09.123456+00:00","completed_at":"2024-05-06T07:08:09.123456+00:00"}"#
        );
    }

    #[tokio::test]
    async fn subscribers_see_the_terminal_state() {
        let handle =
            PredictionHandle::new(Prediction::new("p".into(), &serde_json::json!({}), None));
        let waiter = {
            let handle = handle.clone();
            tokio::spawn(async move { handle.finished().await })
        };
        handle.update(|p| {
            p.start();
            true
        });
        handle.update(|p| p.finish(Outcome::Canceled));
        assert_eq!(waiter.await.unwrap().status, Status::Canceled);
    }
}
