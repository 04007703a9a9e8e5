//! Message types of both channels, as serde enums tagged by `"type"`.
//!
//! Unknown `type`s and unknown fields are rejected on decode: a peer speaking a
//! different protocol must fail loudly, not half-work.
//!
//! Batches (version 7). A `@cog.batch` model says so in `ready` (`batch`:
//! its `max_size` and `max_wait_ms`). The server then sends a slot
//! `{"type":"batch","size":B}` followed by B ordinary `predict` frames (each
//! with its own input, attached file, output directory and context): the B
//! predictions of one call of the model. The worker answers with one final
//! message per member, `done`, `failed` or `cancelled`, each naming its
//! member's `id`, in the members' order; each `done` carries that member's
//! output and the batch call's `predict_time`. `log` and `metric` messages
//! sent while the call runs belong to every member. A `cancel` naming any
//! member stops the whole call (the server sends one only when no member
//! still wants its output); then every member ends `cancelled`. A model that
//! is not batched never gets a `batch` frame; a batched one given a lone
//! `predict` runs it as a batch of one.
//!
//! One hand-written piece, kept for a measured gain: a slot frame's `type`
//! is read from the frame's head (`tag_at_head`) rather than parsed out by
//! serde first, which scanned each frame (an inline output chunk, up to
//! 6 MiB) twice; serde still parses and checks the whole frame once.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::value::{Carrier, INPUT_KEYS, OUTPUT_KEYS};
pub use crate::custom_metrics::MetricMode;

/// The protocol version both sides must agree on; the worker reports its own in
/// the first message of every slot socket.
pub const PROTOCOL_VERSION: u32 = 7;

/// Whether the worker serves `predict:` or `train:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Serve the model's predictor.
    Predict,
    /// Serve the model's training function.
    Train,
}

/// Which of the run's output streams a log line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// File descriptor 1 (Python `sys.stdout`, C `stdout`, child processes).
    Stdout,
    /// File descriptor 2.
    Stderr,
}

/// Server -> worker, on the control channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    /// The first message: what to load and where the slot sockets go.
    Init {
        /// The protocol version the server speaks.
        protocol_version: u32,
        /// `FILE.py:NAME`, relative to the model directory (the worker's cwd).
        predictor_ref: String,
        /// Predict or train.
        mode: Mode,
        /// `FILE.py:NAME` of the other mode's function, when one is
        /// configured: the schema document describes it too.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        other_ref: Option<String>,
        /// A slot count that wins over the model's own (`COG_MAX_CONCURRENCY`).
        slots_override: Option<usize>,
        /// A slot count for models that declare none (`cog.yaml`).
        slots_default: Option<usize>,
        /// Where the worker creates `slot-N.sock`, one listening socket per
        /// slot, before it says `ready`; the server then connects to each.
        socket_dir: PathBuf,
    },
    /// Cancel the run of prediction `id` in `slot`: now if it runs, else
    /// as soon as it starts (the cancel can overtake the run, which comes on
    /// the slot socket).
    Cancel {
        /// The slot index.
        slot: usize,
        /// The prediction id.
        id: String,
    },
    /// Run the model's user healthcheck and answer with `healthcheck_result`.
    Healthcheck {
        /// Echoed back in the result.
        id: u64,
    },
    /// Finish and exit.
    Shutdown,
}

/// Worker -> server, on the control channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlResponse {
    /// Setup succeeded; the slot sockets are listening.
    Ready {
        /// The number of slots, and so of `slot-N.sock` sockets.
        slots: usize,
        /// The model's OpenAPI document, or `null` when the worker has none.
        schema: serde_json::Value,
        /// Versions of the worker's runtime, for `/health-check`.
        #[serde(default)]
        versions: serde_json::Map<String, serde_json::Value>,
        /// Whether the run is marked `@streaming` (clients may ask for SSE).
        #[serde(default)]
        streaming: bool,
        /// Whether the model defines its own `healthcheck()`.
        #[serde(default)]
        healthcheck: bool,
        /// The model's `@cog.batch` settings; `None` when it is not batched.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch: Option<BatchSettings>,
    },
    /// Output written while no run was active (during setup: the setup logs).
    Log {
        /// stdout or stderr.
        source: LogSource,
        /// The text, usually one line with its newline.
        data: String,
    },
    /// A diagnostic from the worker itself, for the server's own log.
    WorkerLog {
        /// The worker module that logged.
        target: String,
        /// `error`, `warn`, `info`, `debug`, `trace`.
        level: String,
        /// The message.
        message: String,
    },
    /// A slot finished its run and is free.
    Idle {
        /// The slot index.
        slot: usize,
    },
    /// A cancel request reached the slot's run (`"type": "cancelled"` on the
    /// wire, the protocol's word).
    #[serde(rename = "cancelled")]
    Canceled {
        /// The slot index.
        slot: usize,
    },
    /// A slot broke (its socket or its thread) and takes no more work.
    Failed {
        /// The slot index.
        slot: usize,
        /// Why.
        error: String,
    },
    /// The worker cannot go on (before `ready`: setup failed) and is exiting.
    Fatal {
        /// Why, for the operator and for `setup.logs`.
        reason: String,
    },
    /// Log lines were dropped because they came faster than they could be sent.
    DroppedLogs {
        /// How many lines.
        count: u64,
        /// Over how long.
        interval_millis: u64,
    },
    /// The answer to a `healthcheck`.
    HealthcheckResult {
        /// The request's id.
        id: u64,
        /// What the model's `healthcheck()` said.
        status: HealthcheckStatus,
        /// Why it is unhealthy: it returned false, raised, or is still running.
        error: Option<String>,
    },
    /// The worker received `shutdown` and is exiting.
    ShuttingDown,
}

/// What a `@cog.batch` model declares: how many predictions one call takes
/// at most, and how long the first of a batch waits for others.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSettings {
    /// The most predictions in one call (at least 1).
    pub max_size: usize,
    /// How long after the first prediction arrived a batch starts even if
    /// it is not full, in milliseconds (0: at once).
    pub max_wait_ms: f64,
}

/// What the model's own `healthcheck()` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthcheckStatus {
    /// It returned without raising, anything but False.
    Healthy,
    /// It returned False, raised, or has not returned yet.
    Unhealthy,
}

/// Server -> worker, on a slot socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    deny_unknown_fields,
    try_from = "PredictFrame"
)]
pub enum SlotRequest {
    /// Run one prediction in this slot.
    Predict {
        /// The prediction id.
        id: String,
        /// How the input object's JSON travels: inline (`input`), written
        /// into the frame as it is and read out of it without being parsed
        /// into values; or, too large for one frame, in a sealed memory file
        /// attached to this frame (`input_attached`) or, where the server
        /// cannot make memory files, in a file it names (`input_file`).
        /// `None` (or `input: null`) is the empty object.
        #[serde(flatten, serialize_with = "super::value::write_optional_input")]
        input: Option<Carrier>,
        /// A directory owned by this prediction for files it writes.
        output_dir: PathBuf,
        /// The request's `context`, visible to the run.
        #[serde(default)]
        context: serde_json::Map<String, serde_json::Value>,
    },
    /// The next `size` `predict` frames on this slot are one batch: the
    /// model is called once for all of them.
    Batch {
        /// How many `predict` frames follow (at least 1).
        size: usize,
    },
}

/// How a [`SlotRequest`] is read: as a plain struct, so its input can stay
/// raw JSON text, which serde cannot keep through the buffering that
/// `"type"`-tagged enums need; its three input keys then become one
/// [`Carrier`] (`input: null` is no input, as it has always been).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    input: Option<Box<RawValue>>,
    #[serde(default)]
    input_file: Option<PathBuf>,
    #[serde(default)]
    input_attached: bool,
    #[serde(default)]
    output_dir: Option<PathBuf>,
    #[serde(default)]
    context: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    size: Option<usize>,
}

impl TryFrom<PredictFrame> for SlotRequest {
    type Error = String;

    fn try_from(frame: PredictFrame) -> Result<Self, String> {
        if frame.kind == "batch" {
            return match frame {
                PredictFrame {
                    size: Some(size),
                    id: None,
                    input: None,
                    input_file: None,
                    input_attached: false,
                    output_dir: None,
                    context: None,
                    ..
                } if size > 0 => Ok(Self::Batch { size }),
                _ => Err("a batch frame has a `size` of at least 1 and nothing else".into()),
            };
        }
        if frame.kind != "predict" {
            return Err(format!("unknown slot request type {:?}", frame.kind));
        }
        if frame.size.is_some() {
            return Err("unknown field `size` in a predict frame".into());
        }
        let (Some(id), Some(output_dir)) = (frame.id, frame.output_dir) else {
            return Err("a predict frame has an `id` and an `output_dir`".into());
        };
        Ok(Self::Predict {
            id,
            input: INPUT_KEYS.read(frame.input, frame.input_file, frame.input_attached)?,
            output_dir,
            context: frame.context.unwrap_or_default(),
        })
    }
}

/// A file a run returned (a `Path`, a `File`, or one inside a list, an
/// object or a stream chunk). The output value holds `null` where the file
/// goes; the server reads the file, turns it into a URL (a `data:` URI, or
/// where it uploaded it) and puts that at `pointer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOutput {
    /// Where the file's URL goes in the output value (RFC 6901: `""` is the
    /// whole value, `/2/image` the field `image` of its third item).
    pub pointer: String,
    /// The file, as an absolute path. The server resolves symlinks before it
    /// reads it, and removes it after sending when it is in the prediction's
    /// directory.
    pub path: PathBuf,
    /// The name it is uploaded under (the file's own name, as Cog does).
    pub filename: String,
    /// Its media type, the upload's `Content-Type` and the `data:` URI's type.
    pub mime_type: String,
}

/// Worker -> server, on a slot socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SlotResponse {
    /// The first message on every slot socket.
    ProtocolVersion {
        /// The version the worker speaks.
        version: u32,
    },
    /// A line the run wrote to stdout or stderr.
    Log {
        /// stdout or stderr.
        source: LogSource,
        /// The text, usually one line with its newline.
        data: String,
    },
    /// One chunk of a streaming run, sent the moment it was yielded.
    #[serde(skip_deserializing)]
    Output {
        /// How the chunk's JSON travels: inline (`output`), passed through
        /// without re-parsing; or, too large for one frame, in a sealed
        /// memory file attached to this frame (`output_attached`) or in a
        /// file in the prediction's directory (`output_file`).
        #[serde(flatten, serialize_with = "super::value::write_output")]
        output: Carrier,
        /// The chunk's position.
        index: u64,
        /// The files this value refers to: each goes where its pointer says.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        files: Vec<FileOutput>,
    },
    /// A custom metric the run recorded, sent the moment it was recorded.
    /// The worker has already checked it against the run's metrics; the
    /// server applies it the same way ([`crate::custom_metrics::apply`]).
    Metric {
        /// The metric name (dots nest).
        name: String,
        /// The value recorded (`null` with `replace` deletes the metric).
        value: serde_json::Value,
        /// How the value combines with the metric's current one.
        mode: MetricMode,
    },
    /// The run finished successfully.
    #[serde(skip_deserializing)]
    Done {
        /// The prediction id.
        id: String,
        /// Seconds spent in the model's code.
        predict_time: f64,
        /// Whether the outputs were a stream of chunks (a generator) or one value.
        is_stream: bool,
        /// How a plain run's output travels, under the same keys as a
        /// chunk's; `None` for a stream (its chunks came as `output` messages).
        #[serde(flatten, serialize_with = "super::value::write_optional_output")]
        output: Option<Carrier>,
        /// The files a plain run's output refers to.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        files: Vec<FileOutput>,
    },
    /// The run raised.
    Failed {
        /// The prediction id.
        id: String,
        /// The exception's type and message.
        error: String,
    },
    /// The run was canceled (`"type": "cancelled"` on the wire, the
    /// protocol's word).
    #[serde(rename = "cancelled")]
    Canceled {
        /// The prediction id.
        id: String,
    },
}

impl SlotResponse {
    /// Decodes one frame. Use this, not `serde_json::from_slice`: `output`
    /// and `done` keep their value as raw JSON text, which serde cannot do
    /// through the buffering that `"type"`-tagged enums need, so those two
    /// are read on their own path, as plain structs whose value keys become
    /// one [`Carrier`] (the derived decoding skips them).
    pub fn from_frame(frame: &[u8]) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Tag<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct OutputFrame {
            #[serde(rename = "type")]
            _kind: serde::de::IgnoredAny,
            #[serde(default, deserialize_with = "present")]
            output: Option<Box<RawValue>>,
            #[serde(default)]
            output_file: Option<PathBuf>,
            #[serde(default)]
            output_attached: bool,
            index: u64,
            #[serde(default)]
            files: Vec<FileOutput>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct DoneFrame {
            #[serde(rename = "type")]
            _kind: serde::de::IgnoredAny,
            id: String,
            predict_time: f64,
            is_stream: bool,
            #[serde(default, deserialize_with = "present")]
            output: Option<Box<RawValue>>,
            #[serde(default)]
            output_file: Option<PathBuf>,
            #[serde(default)]
            output_attached: bool,
            #[serde(default)]
            files: Vec<FileOutput>,
        }
        // The worker writes the tag first, so it is read from the frame's
        // head; parsing a `Tag` would scan the whole frame (a chunk of up to
        // 6 MiB) once more before the variant's own parse.
        let kind = match tag_at_head(frame) {
            Some(kind) => std::borrow::Cow::Borrowed(kind),
            None => serde_json::from_slice::<Tag<'_>>(frame)?.kind,
        };
        match kind.as_ref() {
            "output" => {
                let OutputFrame {
                    output,
                    output_file,
                    output_attached,
                    index,
                    files,
                    ..
                } = serde_json::from_slice(frame)?;
                let output = OUTPUT_KEYS
                    .read(output, output_file, output_attached)
                    .map_err(serde::de::Error::custom)?
                    .ok_or_else(|| serde::de::Error::custom("an `output` frame carries a value"))?;
                Ok(Self::Output {
                    output,
                    index,
                    files,
                })
            }
            "done" => {
                let DoneFrame {
                    id,
                    predict_time,
                    is_stream,
                    output,
                    output_file,
                    output_attached,
                    files,
                    ..
                } = serde_json::from_slice(frame)?;
                Ok(Self::Done {
                    id,
                    predict_time,
                    is_stream,
                    output: OUTPUT_KEYS
                        .read(output, output_file, output_attached)
                        .map_err(serde::de::Error::custom)?,
                    files,
                })
            }
            _ => serde_json::from_slice(frame),
        }
    }
}

/// The `type` of a frame that starts `{"type":"<name>"` (as every frame the
/// worker writes does), when the name has nothing escaped; `None` leaves the
/// frame to be parsed for it. Whatever it says, the variant's own parse then
/// checks the whole frame.
fn tag_at_head(frame: &[u8]) -> Option<&str> {
    let rest = frame.strip_prefix(br#"{"type":""#)?;
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    if rest[end] != b'"' {
        return None;
    }
    std::str::from_utf8(&rest[..end]).ok()
}

/// A field that is there, even as `null`, is `Some`: an output may be JSON `null`.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(deserializer).map(Some)
}

/// RawValue has no PartialEq; the encoded form is the identity that matters.
macro_rules! eq_by_encoding {
    ($($message:ty),*) => {$(
        impl PartialEq for $message {
            fn eq(&self, other: &Self) -> bool {
                serde_json::to_string(self).ok() == serde_json::to_string(other).ok()
            }
        }
    )*};
}

eq_by_encoding!(SlotRequest, SlotResponse);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip<T>(value: &T)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let text = serde_json::to_string(value).unwrap();
        let back: T = serde_json::from_str(&text).unwrap();
        assert_eq!(&back, value, "{text}");
    }

    #[test]
    fn every_control_request_round_trips() {
        round_trip(&ControlRequest::Init {
            protocol_version: PROTOCOL_VERSION,
            predictor_ref: "predict.py:Predictor".into(),
            mode: Mode::Predict,
            other_ref: Some("train.py:train".into()),
            slots_override: Some(4),
            slots_default: None,
            socket_dir: "/tmp/cogd-x".into(),
        });
        round_trip(&ControlRequest::Cancel {
            slot: 3,
            id: "p1".into(),
        });
        round_trip(&ControlRequest::Healthcheck { id: 7 });
        round_trip(&ControlRequest::Shutdown);
    }

    #[test]
    fn every_control_response_round_trips() {
        let mut versions = serde_json::Map::new();
        versions.insert("python".into(), json!("3.11.7"));
        round_trip(&ControlResponse::Ready {
            slots: 1,
            schema: json!({"openapi": "3.0.2"}),
            versions,
            streaming: true,
            healthcheck: true,
            batch: Some(BatchSettings {
                max_size: 16,
                max_wait_ms: 2.5,
            }),
        });
        round_trip(&ControlResponse::Log {
            source: LogSource::Stderr,
            data: "line\n".into(),
        });
        round_trip(&ControlResponse::WorkerLog {
            target: "cogd::worker".into(),
            level: "info".into(),
            message: "hi".into(),
        });
        round_trip(&ControlResponse::Idle { slot: 0 });
        round_trip(&ControlResponse::Canceled { slot: 0 });
        round_trip(&ControlResponse::Failed {
            slot: 0,
            error: "broken".into(),
        });
        round_trip(&ControlResponse::Fatal {
            reason: "setup".into(),
        });
        round_trip(&ControlResponse::DroppedLogs {
            count: 2,
            interval_millis: 1000,
        });
        round_trip(&ControlResponse::HealthcheckResult {
            id: 1,
            status: HealthcheckStatus::Healthy,
            error: None,
        });
        round_trip(&ControlResponse::HealthcheckResult {
            id: 2,
            status: HealthcheckStatus::Unhealthy,
            error: Some("user-defined healthcheck returned False".into()),
        });
        round_trip(&ControlResponse::ShuttingDown);
    }

    fn slot_round_trip(value: &SlotResponse) {
        let text = serde_json::to_string(value).unwrap();
        let back = SlotResponse::from_frame(text.as_bytes()).unwrap();
        assert_eq!(&back, value, "{text}");
    }

    #[test]
    fn every_slot_message_round_trips() {
        round_trip(&SlotRequest::Predict {
            id: "p1".into(),
            input: Some(Carrier::Inline(
                RawValue::from_string(r#"{"name":"world"}"#.into()).unwrap(),
            )),
            output_dir: "/tmp/out".into(),
            context: serde_json::Map::new(),
        });
        round_trip(&SlotRequest::Predict {
            id: "p2".into(),
            input: Some(Carrier::Attached(())),
            output_dir: "/tmp/out".into(),
            context: serde_json::Map::new(),
        });
        assert!(serde_json::from_str::<SlotRequest>(
            r#"{"type":"predict","id":"p","input":{},"input_attached":true,"output_dir":"/o"}"#
        )
        .is_err());
        slot_round_trip(&SlotResponse::ProtocolVersion { version: 1 });
        slot_round_trip(&SlotResponse::Log {
            source: LogSource::Stdout,
            data: "x\n".into(),
        });
        slot_round_trip(&SlotResponse::Output {
            output: Carrier::Inline(RawValue::from_string("{\"a\":[1,2]}".into()).unwrap()),
            index: 4,
            files: Vec::new(),
        });
        slot_round_trip(&SlotResponse::Output {
            output: Carrier::Inline(
                RawValue::from_string("[null,{\"image\":null}]".into()).unwrap(),
            ),
            index: 0,
            files: vec![
                FileOutput {
                    pointer: "/0".into(),
                    path: "/tmp/out/a.png".into(),
                    filename: "a.png".into(),
                    mime_type: "image/png".into(),
                },
                FileOutput {
                    pointer: "/1/image".into(),
                    path: "/tmp/elsewhere/b.txt".into(),
                    filename: "b.txt".into(),
                    mime_type: "text/plain".into(),
                },
            ],
        });
        slot_round_trip(&SlotResponse::Output {
            output: Carrier::File("/tmp/out/output-7.json".into()),
            index: 7,
            files: Vec::new(),
        });
        for mode in [MetricMode::Replace, MetricMode::Incr, MetricMode::Append] {
            slot_round_trip(&SlotResponse::Metric {
                name: "timing.inference".into(),
                value: json!(1.5),
                mode,
            });
        }
        slot_round_trip(&SlotResponse::Done {
            id: "p1".into(),
            predict_time: 0.25,
            is_stream: false,
            output: Some(Carrier::Inline(
                RawValue::from_string("\"hello\"".into()).unwrap(),
            )),
            files: Vec::new(),
        });
        slot_round_trip(&SlotResponse::Done {
            id: "p2".into(),
            predict_time: 0.5,
            is_stream: true,
            output: None,
            files: Vec::new(),
        });
        slot_round_trip(&SlotResponse::Done {
            id: "p3".into(),
            predict_time: 0.5,
            is_stream: false,
            output: Some(Carrier::File("/tmp/out/output.json".into())),
            files: vec![FileOutput {
                pointer: String::new(),
                path: "/tmp/out/x.bin".into(),
                filename: "x.bin".into(),
                mime_type: "application/octet-stream".into(),
            }],
        });
        slot_round_trip(&SlotResponse::Done {
            id: "p4".into(),
            predict_time: 0.5,
            is_stream: false,
            output: Some(Carrier::Attached(())),
            files: Vec::new(),
        });
        slot_round_trip(&SlotResponse::Failed {
            id: "p1".into(),
            error: "ValueError: boom".into(),
        });
        slot_round_trip(&SlotResponse::Canceled { id: "p1".into() });
    }

    #[test]
    fn a_frame_whose_tag_is_not_at_its_head_decodes_the_same() {
        let head_first = br#"{"type":"output","output":[1],"index":2}"#;
        for frame in [
            &br#"{"index":2,"output":[1],"type":"output"}"#[..],
            br#" {"type":"output","output":[1],"index":2}"#,
            br#"{"type":"output","output":[1],"index":2}"#,
        ] {
            assert_eq!(
                SlotResponse::from_frame(frame).unwrap(),
                SlotResponse::from_frame(head_first).unwrap(),
                "{}",
                String::from_utf8_lossy(frame)
            );
        }
        // The head names the variant; the frame is still checked whole.
        for bad in [
            &br#"{"type":"output","output":[1],"index":2,"type":"done"}"#[..],
            br#"{"type":"output","output":[1],"index":2}x"#,
            br#"{"type":"done","output":[1],"index":2}"#,
        ] {
            assert!(
                SlotResponse::from_frame(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_batch_frame_says_its_size_and_nothing_else() {
        let text = serde_json::to_string(&SlotRequest::Batch { size: 3 }).unwrap();
        assert_eq!(text, r#"{"type":"batch","size":3}"#);
        let back: SlotRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, SlotRequest::Batch { size: 3 });
        for bad in [
            r#"{"type":"batch","size":0}"#,
            r#"{"type":"batch"}"#,
            r#"{"type":"batch","size":2,"id":"p"}"#,
            r#"{"type":"predict","id":"p","output_dir":"/o","size":2}"#,
            r#"{"type":"predict","output_dir":"/o"}"#,
            r#"{"type":"predict","id":"p"}"#,
        ] {
            assert!(serde_json::from_str::<SlotRequest>(bad).is_err(), "{bad}");
        }
        let ready = serde_json::to_string(&ControlResponse::Ready {
            slots: 1,
            schema: serde_json::Value::Null,
            versions: serde_json::Map::new(),
            streaming: false,
            healthcheck: false,
            batch: Some(BatchSettings {
                max_size: 8,
                max_wait_ms: 0.0,
            }),
        })
        .unwrap();
        assert!(
            ready.ends_with(r#""batch":{"max_size":8,"max_wait_ms":0.0}}"#),
            "{ready}"
        );
    }

    #[test]
    fn wire_format_is_a_type_tagged_object() {
        let text = serde_json::to_string(&ControlRequest::Cancel {
            slot: 2,
            id: "p".into(),
        })
        .unwrap();
        assert_eq!(text, r#"{"type":"cancel","slot":2,"id":"p"}"#);
        let text = serde_json::to_string(&ControlResponse::ShuttingDown).unwrap();
        assert_eq!(text, r#"{"type":"shutting_down"}"#);
    }

    #[test]
    fn metric_and_healthcheck_messages_have_their_documented_shape() {
        let text = serde_json::to_string(&SlotResponse::Metric {
            name: "tokens".into(),
            value: json!(3),
            mode: MetricMode::Incr,
        })
        .unwrap();
        assert_eq!(
            text,
            r#"{"type":"metric","name":"tokens","value":3,"mode":"increment"}"#
        );
        let text = serde_json::to_string(&ControlResponse::HealthcheckResult {
            id: 4,
            status: HealthcheckStatus::Unhealthy,
            error: Some("boom".into()),
        })
        .unwrap();
        assert_eq!(
            text,
            r#"{"type":"healthcheck_result","id":4,"status":"unhealthy","error":"boom"}"#
        );
        assert!(SlotResponse::from_frame(
            br#"{"type":"metric","name":"a","value":1,"mode":"decr"}"#
        )
        .is_err());
    }

    #[test]
    fn an_output_travels_exactly_one_way() {
        assert!(SlotResponse::from_frame(br#"{"type":"output","index":0}"#).is_err());
        assert!(SlotResponse::from_frame(
            br#"{"type":"output","output":1,"output_file":"/x","index":0}"#
        )
        .is_err());
        assert!(SlotResponse::from_frame(
            br#"{"type":"output","output":1,"output_attached":true,"index":0}"#
        )
        .is_err());
        assert!(SlotResponse::from_frame(
            br#"{"type":"done","id":"p","predict_time":0,"is_stream":false,"output_file":"/x","output_attached":true}"#
        )
        .is_err());
        assert!(matches!(
            SlotResponse::from_frame(br#"{"type":"output","output_attached":true,"index":3}"#),
            Ok(SlotResponse::Output {
                output: Carrier::Attached(()),
                index: 3,
                ..
            })
        ));
        let text = serde_json::to_string(&SlotResponse::Output {
            output: Carrier::Inline(RawValue::from_string("null".into()).unwrap()),
            index: 0,
            files: vec![FileOutput {
                pointer: String::new(),
                path: "/o/a.png".into(),
                filename: "a.png".into(),
                mime_type: "image/png".into(),
            }],
        })
        .unwrap();
        assert_eq!(
            text,
            r#"{"type":"output","output":null,"index":0,"files":[{"pointer":"","path":"/o/a.png","filename":"a.png","mime_type":"image/png"}]}"#
        );
    }

    #[test]
    fn unknown_type_is_rejected() {
        let err = serde_json::from_str::<ControlResponse>(r#"{"type":"explode"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
        assert!(SlotResponse::from_frame(br#"{"type":"nope","id":"x"}"#).is_err());
        assert!(
            SlotResponse::from_frame(br#"{"type":"output","output":1,"index":0,"x":1}"#).is_err()
        );
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err = serde_json::from_str::<ControlRequest>(r#"{"type":"cancel","slot":1,"x":2}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    mod properties {
        //! Property tests: whatever a worker sends, decoding never panics,
        //! and every message that can be sent decodes to itself.

        use super::*;
        use crate::arbitrary::{hostile_bytes, json_object_with_keys, json_value};
        use proptest::prelude::*;

        /// Every `type` and field name of the worker's messages.
        const NAMES: &[&str] = &[
            "type",
            "protocol_version",
            "version",
            "log",
            "source",
            "data",
            "output",
            "output_file",
            "output_attached",
            "files",
            "index",
            "file_output",
            "filename",
            "kind",
            "mime_type",
            "metric",
            "name",
            "value",
            "mode",
            "done",
            "id",
            "predict_time",
            "is_stream",
            "failed",
            "error",
            "cancelled",
            "ready",
            "slots",
            "schema",
            "versions",
            "streaming",
            "healthcheck",
            "batch",
            "size",
            "max_size",
            "max_wait_ms",
            "worker_log",
            "target",
            "level",
            "message",
            "idle",
            "slot",
            "fatal",
            "reason",
            "dropped_logs",
            "count",
            "interval_millis",
            "healthcheck_result",
            "status",
            "shutting_down",
            "stdout",
            "stderr",
            "replace",
            "increment",
            "append",
        ];

        fn raw_json() -> impl Strategy<Value = Box<RawValue>> {
            json_value().prop_map(|v| RawValue::from_string(v.to_string()).expect("JSON text"))
        }

        /// A value inline, in a file, or attached.
        fn carrier() -> impl Strategy<Value = Carrier> {
            prop_oneof![
                raw_json().prop_map(Carrier::Inline),
                any::<String>().prop_map(|p| Carrier::File(PathBuf::from(p))),
                Just(Carrier::Attached(())),
            ]
        }

        fn files() -> impl Strategy<Value = Vec<FileOutput>> {
            prop::collection::vec(
                (
                    any::<String>(),
                    any::<String>(),
                    any::<String>(),
                    any::<String>(),
                )
                    .prop_map(|(pointer, path, filename, mime_type)| FileOutput {
                        pointer,
                        path: PathBuf::from(path),
                        filename,
                        mime_type,
                    }),
                0..3,
            )
        }

        fn source() -> impl Strategy<Value = LogSource> {
            prop_oneof![Just(LogSource::Stdout), Just(LogSource::Stderr)]
        }

        fn slot_response() -> impl Strategy<Value = SlotResponse> {
            let seconds = any::<f64>().prop_filter("finite", |f| f.is_finite());
            prop_oneof![
                any::<u32>().prop_map(|version| SlotResponse::ProtocolVersion { version }),
                (source(), any::<String>())
                    .prop_map(|(source, data)| SlotResponse::Log { source, data }),
                (carrier(), any::<u64>(), files()).prop_map(|(output, index, files)| {
                    SlotResponse::Output {
                        output,
                        index,
                        files,
                    }
                }),
                (
                    any::<String>(),
                    json_value(),
                    prop_oneof![
                        Just(MetricMode::Replace),
                        Just(MetricMode::Incr),
                        Just(MetricMode::Append)
                    ]
                )
                    .prop_map(|(name, value, mode)| SlotResponse::Metric {
                        name,
                        value,
                        mode
                    }),
                (
                    any::<String>(),
                    seconds,
                    any::<bool>(),
                    prop::option::of(carrier()),
                    files()
                )
                    .prop_map(|(id, predict_time, is_stream, output, files)| {
                        SlotResponse::Done {
                            id,
                            predict_time,
                            is_stream,
                            output,
                            files,
                        }
                    }),
                (any::<String>(), any::<String>())
                    .prop_map(|(id, error)| SlotResponse::Failed { id, error }),
                any::<String>().prop_map(|id| SlotResponse::Canceled { id }),
            ]
        }

        fn control_response() -> impl Strategy<Value = ControlResponse> {
            prop_oneof![
                (
                    any::<usize>(),
                    json_value(),
                    any::<bool>(),
                    any::<bool>(),
                    prop::option::of((1..1000usize, 0.0..1000.0f64))
                )
                    .prop_map(|(slots, schema, streaming, healthcheck, batch)| {
                        ControlResponse::Ready {
                            slots,
                            schema,
                            versions: serde_json::Map::new(),
                            streaming,
                            healthcheck,
                            batch: batch.map(|(max_size, max_wait_ms)| BatchSettings {
                                max_size,
                                max_wait_ms,
                            }),
                        }
                    }),
                (source(), any::<String>())
                    .prop_map(|(source, data)| ControlResponse::Log { source, data }),
                (any::<String>(), any::<String>(), any::<String>()).prop_map(
                    |(target, level, message)| ControlResponse::WorkerLog {
                        target,
                        level,
                        message
                    }
                ),
                any::<usize>().prop_map(|slot| ControlResponse::Idle { slot }),
                any::<usize>().prop_map(|slot| ControlResponse::Canceled { slot }),
                (any::<usize>(), any::<String>())
                    .prop_map(|(slot, error)| ControlResponse::Failed { slot, error }),
                any::<String>().prop_map(|reason| ControlResponse::Fatal { reason }),
                (any::<u64>(), any::<u64>()).prop_map(|(count, interval_millis)| {
                    ControlResponse::DroppedLogs {
                        count,
                        interval_millis,
                    }
                }),
                (
                    any::<u64>(),
                    prop_oneof![
                        Just(HealthcheckStatus::Healthy),
                        Just(HealthcheckStatus::Unhealthy)
                    ],
                    any::<Option<String>>()
                )
                    .prop_map(|(id, status, error)| {
                        ControlResponse::HealthcheckResult { id, status, error }
                    }),
                Just(ControlResponse::ShuttingDown),
            ]
        }

        proptest! {
            #[test]
            fn any_bytes_decode_or_fail_without_panicking(bytes in hostile_bytes()) {
                let _ = SlotResponse::from_frame(&bytes);
                let _ = serde_json::from_slice::<ControlResponse>(&bytes);
                let _ = serde_json::from_slice::<ControlRequest>(&bytes);
                let _ = serde_json::from_slice::<SlotRequest>(&bytes);
            }

            #[test]
            fn objects_with_protocol_names_decode_or_fail_without_panicking(
                value in json_object_with_keys(NAMES),
                tag in prop::sample::select(NAMES),
            ) {
                let mut tagged = value.clone();
                tagged["type"] = tag.into();
                for candidate in [value, tagged] {
                    let bytes = serde_json::to_vec(&candidate).unwrap();
                    if let Ok(message) = SlotResponse::from_frame(&bytes) {
                        // What decodes can be sent again and means the same.
                        let again = serde_json::to_vec(&message).unwrap();
                        prop_assert_eq!(SlotResponse::from_frame(&again).unwrap(), message);
                    }
                    let _ = serde_json::from_slice::<ControlResponse>(&bytes);
                    let _ = serde_json::from_slice::<ControlRequest>(&bytes);
                }
            }

            #[test]
            fn every_slot_response_round_trips(message in slot_response()) {
                let line = crate::ipc::encode_line(&message).unwrap();
                let back = SlotResponse::from_frame(&line[..line.len() - 1]).unwrap();
                prop_assert_eq!(back, message);
            }

            #[test]
            fn every_control_response_round_trips(message in control_response()) {
                let line = crate::ipc::encode_line(&message).unwrap();
                let back: ControlResponse = serde_json::from_slice(&line).unwrap();
                prop_assert_eq!(back, message);
            }

            #[test]
            fn predict_requests_round_trip(
                id in any::<String>(),
                // `null` and no input are one thing on the wire.
                input in prop::option::of(prop_oneof![
                    json_value()
                        .prop_filter("not null", |v| !v.is_null())
                        .prop_map(|v| Carrier::Inline(
                            RawValue::from_string(v.to_string()).expect("JSON text")
                        )),
                    any::<String>().prop_map(|p| Carrier::File(PathBuf::from(p))),
                    Just(Carrier::Attached(())),
                ]),
                output_dir in any::<String>(),
                context in prop::collection::vec((any::<String>(), any::<String>()), 0..4),
            ) {
                let message = SlotRequest::Predict {
                    id,
                    input,
                    output_dir: output_dir.into(),
                    context: context.into_iter().map(|(k, v)| (k, v.into())).collect(),
                };
                let line = crate::ipc::encode_line(&message).unwrap();
                let back: SlotRequest = serde_json::from_slice(&line).unwrap();
                prop_assert_eq!(back, message);
            }
        }
    }
}
