//! One prediction's state and the rules for how it may change.
//!
//! The service owns each prediction as a [`PredictionHandle`]: a `watch` channel
//! whose value is the [`Prediction`]. Every change goes through a method here
//! and is visible at once to every subscriber (the synchronous reply today;
//! webhooks and streams subscribe the same way), so no one keeps a second copy.
//! A prediction moves `starting -> processing -> succeeded | failed | canceled`
//! and never leaves a terminal state.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::logs::append_capped;

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
    /// The run was cancelled.
    Canceled,
}

/// A JSON value's text, shared: cloning it (as every snapshot of a
/// prediction does) never copies it, however large it is.
#[derive(Debug, Clone)]
pub struct JsonText(Arc<Text>);

/// Where a [`JsonText`]'s text is. Every variant holds text known to be one
/// JSON value.
#[derive(Debug)]
enum Text {
    /// Checked by parsing.
    Raw(Box<RawValue>),
    /// Written by this server in a way that can only make JSON (so it was
    /// not parsed again).
    Written(Box<str>),
    /// A checked range of a read-only memory map (boxed: the common variants
    /// stay two words).
    Mapped(Box<MappedText>),
}

/// A range of a read-only memory map that holds JSON text, checked or
/// written as JSON: of private anonymous memory, or of a memory file sealed
/// against writes and resizing.
#[derive(Debug)]
struct MappedText {
    /// `None` only while being dropped.
    map: Option<memmap2::Mmap>,
    start: usize,
    len: usize,
}

impl MappedText {
    fn get(&self) -> &str {
        let map = self.map.as_ref().expect("mapped until dropped");
        let bytes = &map[self.start..self.start + self.len];
        // SAFETY: `JsonText::checked` found this range to be UTF-8, or the
        // caller of `JsonText::written_map` promised it is; and the map is
        // read-only and either anonymous and private or of a sealed file
        // (`JsonText::take_attached`): nothing can change it since.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

impl Drop for MappedText {
    fn drop(&mut self) {
        // Unmapping tens of megabytes takes milliseconds: not on the
        // runtime's thread.
        if let (Some(map), Ok(runtime)) = (self.map.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn_blocking(move || drop(map));
        }
    }
}

impl JsonText {
    /// The JSON text.
    pub fn get(&self) -> &str {
        match &*self.0 {
            Text::Raw(raw) => raw.get(),
            Text::Written(text) => text,
            Text::Mapped(mapped) => mapped.get(),
        }
    }

    /// An owned copy of the text (a copy of its bytes; it is not parsed again
    /// unless it was never parsed).
    pub fn to_raw(&self) -> Box<RawValue> {
        match &*self.0 {
            Text::Raw(raw) => Box::clone(raw),
            _ => RawValue::from_string(self.get().to_owned()).expect("the text is JSON"),
        }
    }

    /// Text this server wrote so that it is JSON by construction (pieces of
    /// serialised JSON with JSON strings spliced in): kept without being
    /// parsed again, which costs milliseconds at tens of megabytes.
    pub fn written(text: String) -> Self {
        debug_assert!(
            serde_json::from_str::<&RawValue>(&text).is_ok(),
            "written text is JSON"
        );
        Self(Arc::new(Text::Written(text.into_boxed_str())))
    }

    /// Like [`JsonText::written`], for text this server built in a private
    /// anonymous map (its first `len` bytes), made read-only.
    ///
    /// # Safety
    /// Those bytes must be UTF-8: the text is read without checking again.
    pub unsafe fn written_map(map: memmap2::Mmap, len: usize) -> Self {
        debug_assert!(
            std::str::from_utf8(&map[..len])
                .is_ok_and(|text| serde_json::from_str::<&RawValue>(text).is_ok()),
            "written text is JSON"
        );
        Self::mapped(map, 0, len)
    }

    /// The JSON value in `file`, a memory file the worker attached to its
    /// message, checked and kept in a read-only map of the file itself: the
    /// pages the worker wrote are served as they are, with nothing copied and
    /// no fresh memory faulted in. From the worker's message to the reply's
    /// first byte, a 20 MiB output takes about 5 ms this way, against 15-20
    /// ms read from a spill file ([`JsonText::read_file`]). A file without
    /// the seals ([`crate::ipc::is_sealed`]) could change or shrink under
    /// the map, so it is read into memory of its own instead.
    pub fn take_attached(file: std::fs::File) -> Result<Self, String> {
        use std::os::fd::AsFd;
        let len = file_len(&file)?;
        if len == 0 || !crate::ipc::is_sealed(file.as_fd()) {
            return Self::read_file(&file);
        }
        // SAFETY: the file is sealed against writes and resizing, so the
        // map's bytes stay as checked and it never ends short of them.
        let map = unsafe { memmap2::MmapOptions::new().len(len).populate().map(&file) }
            .map_err(|e| e.to_string())?;
        Self::checked(map, len)
    }

    /// The JSON value in `file` (a large output the worker spilled to disk),
    /// checked. The text goes into a fresh anonymous memory map, faulted in
    /// whole when made, rather than onto the heap, where a buffer of tens of
    /// megabytes is faulted in a page at a time as it is filled: 19-20 ms
    /// from the worker's message to the reply's first byte for a 20 MiB
    /// output, against 25-35 ms. The file itself is not mapped: the caller
    /// unlinks it once read, so its pages never need writing back to disk.
    pub fn read_file(file: &std::fs::File) -> Result<Self, String> {
        use std::os::unix::fs::FileExt;
        let len = file_len(file)?;
        // A map cannot be empty; an empty file is refused below all the same.
        let mut map = memmap2::MmapOptions::new()
            .len(len.max(1))
            .populate()
            .map_anon()
            .map_err(|e| e.to_string())?;
        file.read_exact_at(&mut map[..len], 0)
            .map_err(|e| e.to_string())?;
        let map = map.make_read_only().map_err(|e| e.to_string())?;
        Self::checked(map, len)
    }

    /// The first `len` bytes of `map`, checked to be one JSON value. One
    /// string with nothing escaped (most large outputs) is checked with a
    /// fast scan, which checks its UTF-8 too when it is ASCII. Otherwise
    /// parsing a borrowed raw value checks the JSON and its UTF-8, and tells
    /// where the value is (surrounding whitespace left out).
    fn checked(map: memmap2::Mmap, len: usize) -> Result<Self, String> {
        let (start, len) = if crate::json::is_plain_ascii_string(&map[..len]) {
            (0, len)
        } else {
            let text = std::str::from_utf8(&map[..len]).map_err(|e| format!("not JSON: {e}"))?;
            if crate::json::is_plain_string(text) {
                (0, len)
            } else {
                let raw: &RawValue =
                    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
                (
                    raw.get().as_ptr() as usize - map.as_ptr() as usize,
                    raw.get().len(),
                )
            }
        };
        Ok(Self::mapped(map, start, len))
    }

    /// The text in `len` bytes of `map` from `start`, which hold JSON text.
    fn mapped(map: memmap2::Mmap, start: usize, len: usize) -> Self {
        Self(Arc::new(Text::Mapped(Box::new(MappedText {
            map: Some(map),
            start,
            len,
        }))))
    }
}

/// The length of `file`, as a memory size.
fn file_len(file: &std::fs::File) -> Result<usize, String> {
    usize::try_from(file.metadata().map_err(|e| e.to_string())?.len()).map_err(|e| e.to_string())
}

impl From<Box<RawValue>> for JsonText {
    fn from(value: Box<RawValue>) -> Self {
        Self(Arc::new(Text::Raw(value)))
    }
}

impl JsonText {
    /// A JSON object's compact text, as [`JsonText::from`] a value writes it.
    pub fn from_map(map: &serde_json::Map<String, serde_json::Value>) -> Self {
        RawValue::from_string(crate::json::map_to_string(map))
            .expect("a serialised object is JSON")
            .into()
    }
}

impl From<&serde_json::Map<String, serde_json::Value>> for JsonText {
    fn from(map: &serde_json::Map<String, serde_json::Value>) -> Self {
        Self::from_map(map)
    }
}

impl From<&serde_json::Value> for JsonText {
    /// The value's compact JSON text, written by [`crate::json`] (fast for
    /// large strings), as serde_json writes it.
    fn from(value: &serde_json::Value) -> Self {
        RawValue::from_string(crate::json::value_to_string(value))
            .expect("a serialised value is JSON")
            .into()
    }
}

impl AsRef<[u8]> for JsonText {
    fn as_ref(&self) -> &[u8] {
        self.get().as_bytes()
    }
}

impl Serialize for JsonText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &*self.0 {
            Text::Raw(raw) => raw.serialize(serializer),
            // serde_json writes raw text only through a `RawValue`: borrow
            // one (which parses the text; replies and streams, the paths
            // large values take, use `get` and skip this).
            _ => serde_json::from_str::<&RawValue>(self.get())
                .map_err(serde::ser::Error::custom)?
                .serialize(serializer),
        }
    }
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

    /// Applies one custom metric record to `metrics` ([`crate::metrics::apply`]);
    /// `Ok(false)` (and no change) once terminal. `predict_time` is reserved,
    /// so no record can touch it.
    pub fn record_metric(
        &mut self,
        name: &str,
        value: serde_json::Value,
        mode: crate::metrics::MetricMode,
    ) -> Result<bool, crate::metrics::MetricError> {
        if self.status.is_terminal() {
            return Ok(false);
        }
        crate::metrics::apply(&mut self.metrics, name, value, mode)?;
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
                // A stream that failed or was cancelled midway keeps the
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
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(10))?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("status", &self.status)?;
        map.serialize_entry("input", &self.input)?;
        match &self.output {
            // While a stream runs, its output is the chunks so far.
            None if !self.status.is_terminal() && !self.outputs.is_empty() => {
                map.serialize_entry("output", &self.outputs)?
            }
            output => map.serialize_entry("output", output)?,
        }
        map.serialize_entry("logs", &self.logs)?;
        map.serialize_entry("error", &self.error)?;
        map.serialize_entry("metrics", &self.metrics)?;
        map.serialize_entry("created_at", &timestamp(&self.created_at))?;
        map.serialize_entry("started_at", &self.started_at.as_ref().map(timestamp))?;
        map.serialize_entry("completed_at", &self.completed_at.as_ref().map(timestamp))?;
        map.end()
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

/// One event of a prediction's stream, as server-sent events carry it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    /// `start`, `output`, `log`, `metric` or `completed`.
    pub name: &'static str,
    /// The event's JSON text.
    pub data: String,
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
const EVENT_OVERHEAD: usize = 96;

/// The names events are published under, as a finished stream's history
/// keeps them ([`Ended`]).
const EVENT_NAMES: [&str; 5] = ["start", "output", "log", "metric", "completed"];

/// A finished stream's history, kept for readers who attach afterwards in
/// under half the memory of its events: their text back to back, and where
/// each ends with the index of its name in [`EVENT_NAMES`]. Made back into
/// events for each such reader.
#[derive(Debug)]
struct Ended {
    text: String,
    ends: Vec<(u32, u8)>,
}

impl Ended {
    /// Packs `events`; `None` when one has a name not in [`EVENT_NAMES`] or
    /// the text would not fit its offsets.
    fn pack(events: &VecDeque<Arc<StreamEvent>>) -> Option<Self> {
        let len: usize = events.iter().map(|e| e.data.len()).sum();
        u32::try_from(len).ok()?;
        let mut ended = Self {
            text: String::with_capacity(len),
            ends: Vec::with_capacity(events.len()),
        };
        for event in events {
            let name = EVENT_NAMES.iter().position(|n| *n == event.name)?;
            ended.text.push_str(&event.data);
            ended.ends.push((ended.text.len() as u32, name as u8));
        }
        Some(ended)
    }

    /// The events, oldest first.
    fn events(&self) -> Vec<Arc<StreamEvent>> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&(end, name)| {
                let data = self.text[start..end as usize].to_string();
                start = end as usize;
                Arc::new(StreamEvent {
                    name: EVENT_NAMES[usize::from(name)],
                    data,
                })
            })
            .collect()
    }

    /// About how many bytes it holds.
    fn size(&self) -> usize {
        self.text.len() + self.ends.len() * std::mem::size_of::<(u32, u8)>()
    }
}

/// The stream of a prediction whose run is marked `@streaming`.
#[derive(Debug)]
struct StreamState {
    history: VecDeque<Arc<StreamEvent>>,
    /// The history once `completed` is published, packed (`history` is then
    /// empty), unless it could not be.
    ended: Option<Ended>,
    /// 0 keeps no history: readers see live events only.
    capacity: usize,
    /// Events dropped from the front of a full history.
    dropped: u64,
    /// `None` once `completed` is published: a finished stream only replays
    /// its history, and the channel's buffer (a slot per event a reader may
    /// fall behind, allocated whole) is not kept with it.
    live: Option<broadcast::Sender<Arc<StreamEvent>>>,
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
    stream: Option<Arc<Mutex<StreamState>>>,
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
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        Self {
            stream: Some(Arc::new(Mutex::new(StreamState {
                history: VecDeque::with_capacity(history.min(LIVE_BUFFER)),
                capacity: history,
                dropped: 0,
                ended: None,
                live: Some(live),
            }))),
            ..Self::new(prediction)
        }
    }

    /// Whether this prediction keeps a stream.
    pub fn has_stream(&self) -> bool {
        self.stream.is_some()
    }

    /// Records one stream event and sends it to every reader. `completed`
    /// is the last: after it, the live channel is closed (readers still get
    /// every event sent before) and the history is packed.
    pub fn publish(&self, name: &'static str, data: String) {
        let Some(stream) = &self.stream else {
            return;
        };
        let event = Arc::new(StreamEvent { name, data });
        let mut stream = stream.lock().unwrap_or_else(|e| e.into_inner());
        if stream.capacity > 0 {
            if stream.history.len() == stream.capacity {
                stream.history.pop_front();
                stream.dropped += 1;
            }
            stream.history.push_back(Arc::clone(&event));
        }
        if let Some(live) = &stream.live {
            let _ = live.send(event);
        }
        if name == "completed" {
            stream.live = None;
            match Ended::pack(&stream.history) {
                Some(ended) => {
                    stream.ended = Some(ended);
                    stream.history = VecDeque::new();
                }
                None => stream.history.shrink_to_fit(),
            }
        }
    }

    /// Attaches a reader: the history so far and the live events after it,
    /// with nothing missed or repeated in between.
    pub fn subscribe_stream(&self) -> Option<StreamSubscription> {
        let stream = self.stream.as_ref()?;
        let stream = stream.lock().unwrap_or_else(|e| e.into_inner());
        Some(StreamSubscription {
            history: match &stream.ended {
                Some(ended) => ended.events(),
                None => stream.history.iter().cloned().collect(),
            },
            dropped: stream.dropped,
            live: match &stream.live {
                Some(live) => live.subscribe(),
                // Finished: a receiver that is already closed.
                None => broadcast::channel(1).1,
            },
        })
    }

    /// Asks for the prediction to be cancelled; harmless once it has finished.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Completes once a cancel has been asked for.
    pub async fn cancelled(&self) {
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
        let kept = self.stream.as_ref().map_or(0, |stream| {
            let stream = stream.lock().unwrap_or_else(|e| e.into_inner());
            let live: usize = stream
                .history
                .iter()
                .map(|e| e.data.len() + EVENT_OVERHEAD)
                .sum();
            live + stream.ended.as_ref().map_or(0, Ended::size)
        });
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
        use crate::metrics::MetricMode;
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

    #[test]
    fn text_written_or_mapped_reads_and_serialises_as_parsed_text() {
        let parsed = JsonText::from(raw(r#"{"a":[1,"\u00e9"]}"#));
        let written = JsonText::written(parsed.get().to_owned());
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, format!(" \n{}\n", parsed.get()).as_bytes()).unwrap();
        let mapped = JsonText::read_file(&file).unwrap();
        drop(file);
        for text in [&written, &mapped] {
            assert_eq!(text.get(), parsed.get(), "whitespace around is left out");
            assert_eq!(text.to_raw().get(), parsed.get());
            assert_eq!(
                serde_json::to_string(text).unwrap(),
                serde_json::to_string(&parsed).unwrap()
            );
        }
        let mut p = Prediction::new("p".into(), &serde_json::json!({}), None);
        p.push_output(mapped.clone());
        p.finish(Outcome::Succeeded {
            predict_time: 0.1,
            is_stream: false,
        });
        assert_eq!(p.to_json().as_bytes(), serde_json::to_vec(&p).unwrap());
    }

    #[test]
    fn a_file_that_is_not_one_json_value_is_refused() {
        for bad in ["", "{", "1 2", "\"\u{0}\"", "[1,]"] {
            let mut file = tempfile::tempfile().unwrap();
            std::io::Write::write_all(&mut file, bad.as_bytes()).unwrap();
            assert!(JsonText::read_file(&file).is_err(), "{bad:?}");
        }
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, b"\"\xff\"").unwrap();
        assert!(JsonText::read_file(&file).is_err(), "not UTF-8");
    }

    /// A memory file holding `text`, sealed as the worker seals one or not.
    fn memory_file(text: &[u8], sealed: bool) -> std::fs::File {
        let mut file = crate::ipc::memory_file().unwrap();
        std::io::Write::write_all(&mut file, text).unwrap();
        if sealed {
            crate::ipc::seal(&file).unwrap();
        }
        file
    }

    #[test]
    fn an_attached_output_is_kept_in_a_map_of_its_sealed_file() {
        let text = format!("\"{}\"", "x".repeat(1 << 20));
        let file = memory_file(text.as_bytes(), true);
        let kept = JsonText::take_attached(file).unwrap();
        assert!(kept.get() == text);
        let nested = memory_file(b" [1, {\"a\": \"\\u00e9\"}]\n", true);
        assert_eq!(
            JsonText::take_attached(nested).unwrap().get(),
            r#"[1, {"a": "\u00e9"}]"#
        );
        for bad in [&b""[..], b"{", b"\"\xff\"", b"\"a\" 1"] {
            assert!(
                JsonText::take_attached(memory_file(bad, true)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_attached_output_without_its_seals_is_copied() {
        use std::os::unix::fs::FileExt;
        let file = memory_file(b"\"abc\"", false);
        let writer = file.try_clone().unwrap();
        let kept = JsonText::take_attached(file).unwrap();
        // The sender can still write to the file: the text kept is a copy.
        writer.write_all_at(b"zzz", 1).unwrap();
        assert_eq!(kept.get(), "\"abc\"");
    }

    #[test]
    fn stream_readers_get_history_then_live_events() {
        let handle = PredictionHandle::with_stream(
            Prediction::new("p".into(), &serde_json::json!({}), None),
            2,
        );
        handle.publish("output", "1".into());
        let early = handle.subscribe_stream().unwrap();
        assert_eq!(early.history.len(), 1);
        assert_eq!(early.dropped, 0);
        handle.publish("output", "2".into());
        handle.publish("output", "3".into());
        let late = handle.subscribe_stream().unwrap();
        assert_eq!(
            late.dropped, 1,
            "the first event was dropped from a history of 2"
        );
        assert_eq!(
            late.history
                .iter()
                .map(|e| e.data.as_str())
                .collect::<Vec<_>>(),
            ["2", "3"]
        );
        let mut live = early.live;
        assert_eq!(live.try_recv().unwrap().data, "2");
        assert_eq!(live.try_recv().unwrap().data, "3");
    }

    #[test]
    fn a_completed_stream_replays_its_history_and_closes_its_channel() {
        let handle = PredictionHandle::with_stream(
            Prediction::new("p".into(), &serde_json::json!({}), None),
            8,
        );
        let reader = handle.subscribe_stream().unwrap();
        let before = handle.size();
        handle.publish("output", "1".into());
        // What the history keeps counts towards what the registry keeps.
        assert_eq!(handle.size(), before + 1 + EVENT_OVERHEAD);
        let live = handle.size() + 2 + EVENT_OVERHEAD;
        handle.publish("completed", "{}".into());
        assert!(handle.size() < live, "a finished history is packed");
        // A reader attached before gets every event, then the end.
        let mut live = reader.live;
        assert_eq!(live.try_recv().unwrap().data, "1");
        assert_eq!(live.try_recv().unwrap().name, "completed");
        assert_eq!(live.try_recv(), Err(broadcast::error::TryRecvError::Closed));
        // One attached after replays the history, and its channel is closed.
        let late = handle.subscribe_stream().unwrap();
        let events: Vec<_> = late
            .history
            .iter()
            .map(|e| (e.name, e.data.as_str()))
            .collect();
        assert_eq!(events, [("output", "1"), ("completed", "{}")]);
        let mut live = late.live;
        assert_eq!(live.try_recv(), Err(broadcast::error::TryRecvError::Closed));
    }

    #[test]
    fn a_packed_history_unpacks_to_the_same_events() {
        let events: VecDeque<_> = [
            ("start", "{\"id\":\"é\"}"),
            ("log", ""),
            ("output", "{\"chunk\":\"ü\",\"index\":0}"),
            ("metric", "{}"),
            ("completed", "{}"),
        ]
        .into_iter()
        .map(|(name, data)| {
            Arc::new(StreamEvent {
                name,
                data: data.into(),
            })
        })
        .collect();
        let packed = Ended::pack(&events).unwrap();
        assert_eq!(packed.events(), Vec::from(events));
        let unknown = VecDeque::from([Arc::new(StreamEvent {
            name: "other",
            data: String::new(),
        })]);
        assert!(Ended::pack(&unknown).is_none(), "only known names pack");
    }

    #[test]
    fn a_zero_history_keeps_nothing_and_is_never_truncated() {
        let handle = PredictionHandle::with_stream(
            Prediction::new("p".into(), &serde_json::json!({}), None),
            0,
        );
        handle.publish("output", "1".into());
        let reader = handle.subscribe_stream().unwrap();
        assert!(reader.history.is_empty() && reader.dropped == 0);
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
