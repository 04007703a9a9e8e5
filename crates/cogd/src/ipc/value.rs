//! How a JSON value travels on a slot socket ([`Carrier`]), and an output
//! value as the server receives it ([`OutputValue`]).
//!
//! A value travels one of three ways: inline in its frame; in a sealed
//! memory file attached to the frame ([`super::attach`]), when it is too
//! large for one; or in a spill file the frame names, where memory files
//! cannot be made. On the wire a carrier is not an object of its own but
//! one of three keys of the frame that holds it (for an output: `output`,
//! `output_file` or `output_attached: true`; for a run's input: `input`,
//! `input_file` or `input_attached: true`); [`CarrierKeys`] names them,
//! and this module writes and reads them, so a frame can never say two
//! ways at once.

use std::path::PathBuf;

use serde::ser::{SerializeMap, Serializer};
use serde_json::value::RawValue;

use super::FileOutput;

/// How a JSON value travels. `A` is what stands for an attached file: `()`
/// in a frame (the file goes beside the frame's bytes, not in them), the
/// open file itself on either side of the socket.
#[derive(Debug, Clone)]
pub enum Carrier<A = ()> {
    /// In the frame, as JSON text passed through without being parsed.
    Inline(Box<RawValue>),
    /// In a memory file attached to the frame (sealed, unless the sender is
    /// broken: [`super::is_sealed`]).
    Attached(A),
    /// In this file, in the prediction's directory.
    File(PathBuf),
}

impl<A> Carrier<A> {
    /// The carrier as its frame names it, and the file to attach to that
    /// frame, if any.
    pub fn detach(self) -> (Carrier, Option<A>) {
        match self {
            Self::Inline(value) => (Carrier::Inline(value), None),
            Self::Attached(file) => (Carrier::Attached(()), Some(file)),
            Self::File(path) => (Carrier::File(path), None),
        }
    }
}

impl Carrier {
    /// The carrier with its attached file, which `take` takes from the
    /// socket the frame came on; `None` when the frame says a file is
    /// attached and none came. `take` is called only then, so a file is
    /// never taken for a frame that has none.
    pub fn attach<F>(self, take: impl FnOnce() -> Option<F>) -> Option<Carrier<F>> {
        Some(match self {
            Self::Inline(value) => Carrier::Inline(value),
            Self::Attached(()) => Carrier::Attached(take()?),
            Self::File(path) => Carrier::File(path),
        })
    }
}

/// The three keys a carrier may take in its frame; exactly one is there
/// (or, where the value is optional, none).
#[derive(Debug, Clone, Copy)]
pub(super) struct CarrierKeys {
    /// The value inline.
    pub inline: &'static str,
    /// The path of its spill file.
    pub file: &'static str,
    /// `true` when it is attached.
    pub attached: &'static str,
}

/// An output's keys, in `output` and `done` frames.
pub(super) const OUTPUT_KEYS: CarrierKeys = CarrierKeys {
    inline: "output",
    file: "output_file",
    attached: "output_attached",
};

/// A run's input's keys, in `predict` frames.
pub(super) const INPUT_KEYS: CarrierKeys = CarrierKeys {
    inline: "input",
    file: "input_file",
    attached: "input_attached",
};

impl CarrierKeys {
    /// Writes `carrier` as its one key into the frame's object (`map`).
    fn write<M: SerializeMap>(self, carrier: &Carrier, map: &mut M) -> Result<(), M::Error> {
        match carrier {
            Carrier::Inline(value) => map.serialize_entry(self.inline, value),
            Carrier::Attached(()) => map.serialize_entry(self.attached, &true),
            Carrier::File(path) => map.serialize_entry(self.file, path),
        }
    }

    /// Reads a carrier from the three keys as a frame gave them (`inline`
    /// is `Some` when its key is there, even as `null`); `None` when none
    /// is there. Two or more are refused.
    pub fn read(
        self,
        inline: Option<Box<RawValue>>,
        file: Option<PathBuf>,
        attached: bool,
    ) -> Result<Option<Carrier>, String> {
        match (inline, file, attached) {
            (None, None, false) => Ok(None),
            (Some(value), None, false) => Ok(Some(Carrier::Inline(value))),
            (None, Some(path), false) => Ok(Some(Carrier::File(path))),
            (None, None, true) => Ok(Some(Carrier::Attached(()))),
            _ => Err(format!(
                "a value travels one way only: `{}`, `{}` or `{}`",
                self.inline, self.file, self.attached
            )),
        }
    }

    /// Writes an optional carrier as a map of its one key, or of none.
    fn write_optional<S: Serializer>(
        self,
        carrier: Option<&Carrier>,
        out: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = out.serialize_map(Some(usize::from(carrier.is_some())))?;
        if let Some(carrier) = carrier {
            self.write(carrier, &mut map)?;
        }
        map.end()
    }
}

/// `serialize_with` for a flattened output carrier: its one key.
pub(super) fn write_output<S: Serializer>(carrier: &Carrier, out: S) -> Result<S::Ok, S::Error> {
    OUTPUT_KEYS.write_optional(Some(carrier), out)
}

/// `serialize_with` for a flattened optional output carrier: its one key,
/// or none.
pub(super) fn write_optional_output<S: Serializer>(
    carrier: &Option<Carrier>,
    out: S,
) -> Result<S::Ok, S::Error> {
    OUTPUT_KEYS.write_optional(carrier.as_ref(), out)
}

/// `serialize_with` for a flattened optional input carrier: its one key,
/// or none.
pub(super) fn write_optional_input<S: Serializer>(
    carrier: &Option<Carrier>,
    out: S,
) -> Result<S::Ok, S::Error> {
    INPUT_KEYS.write_optional(carrier.as_ref(), out)
}

/// An output value as the server received it: its JSON, however it
/// travelled, and the files it refers to, which the server still has to
/// send ([`crate::files::outputs::OutputSender`]).
#[derive(Debug)]
pub struct OutputValue {
    /// The JSON, with `null` where files go.
    pub json: Carrier<std::fs::File>,
    /// The files, each with where it goes in the value.
    pub files: Vec<FileOutput>,
}

impl OutputValue {
    /// True when the value came with files (written into the prediction's
    /// directory by the worker, or to be sent from anywhere) or was spilled
    /// to a file there.
    pub fn uses_dir(&self) -> bool {
        !self.files.is_empty() || matches!(self.json, Carrier::File(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::{SlotRequest, SlotResponse};

    fn inline(text: &str) -> Carrier {
        Carrier::Inline(RawValue::from_string(text.into()).unwrap())
    }

    /// `message` is written as `text` exactly, and `text` decodes to it.
    fn on_the_wire(message: SlotResponse, text: &str) {
        assert_eq!(serde_json::to_string(&message).unwrap(), text);
        let back = SlotResponse::from_frame(text.as_bytes()).unwrap();
        assert_eq!(back, message, "{text}");
    }

    #[test]
    fn each_carrier_of_a_chunk_travels_under_its_own_key() {
        let chunk = |output| SlotResponse::Output {
            output,
            index: 2,
            files: Vec::new(),
        };
        on_the_wire(
            chunk(inline(r#"{"a":[1,null]}"#)),
            r#"{"type":"output","output":{"a":[1,null]},"index":2}"#,
        );
        on_the_wire(
            chunk(inline("null")),
            r#"{"type":"output","output":null,"index":2}"#,
        );
        on_the_wire(
            chunk(Carrier::Attached(())),
            r#"{"type":"output","output_attached":true,"index":2}"#,
        );
        on_the_wire(
            chunk(Carrier::File("/tmp/p/output-2.json".into())),
            r#"{"type":"output","output_file":"/tmp/p/output-2.json","index":2}"#,
        );
    }

    #[test]
    fn each_carrier_of_a_result_travels_under_its_own_key() {
        let done = |output| SlotResponse::Done {
            id: "p".into(),
            predict_time: 0.5,
            is_stream: false,
            output,
            files: Vec::new(),
        };
        on_the_wire(
            done(Some(inline(r#""hi""#))),
            r#"{"type":"done","id":"p","predict_time":0.5,"is_stream":false,"output":"hi"}"#,
        );
        on_the_wire(
            done(Some(Carrier::Attached(()))),
            r#"{"type":"done","id":"p","predict_time":0.5,"is_stream":false,"output_attached":true}"#,
        );
        on_the_wire(
            done(Some(Carrier::File("/tmp/p/output.json".into()))),
            r#"{"type":"done","id":"p","predict_time":0.5,"is_stream":false,"output_file":"/tmp/p/output.json"}"#,
        );
        on_the_wire(
            done(None),
            r#"{"type":"done","id":"p","predict_time":0.5,"is_stream":false}"#,
        );
    }

    #[test]
    fn a_frame_that_says_two_ways_or_none_is_refused() {
        for frame in [
            &br#"{"type":"output","output":1,"output_file":"/x","index":0}"#[..],
            br#"{"type":"output","output":null,"output_attached":true,"index":0}"#,
            br#"{"type":"output","output_file":"/x","output_attached":true,"index":0}"#,
            br#"{"type":"output","index":0}"#,
            br#"{"type":"done","id":"p","predict_time":0,"is_stream":false,"output":1,"output_file":"/x"}"#,
            br#"{"type":"done","id":"p","predict_time":0,"is_stream":false,"output_file":"/x","output_attached":true}"#,
        ] {
            let error = SlotResponse::from_frame(frame).unwrap_err();
            assert!(
                error.to_string().contains("output"),
                "{}: {error}",
                String::from_utf8_lossy(frame)
            );
        }
        // A flag that is off says nothing.
        assert!(matches!(
            SlotResponse::from_frame(
                br#"{"type":"output","output":1,"output_attached":false,"index":0}"#
            ),
            Ok(SlotResponse::Output {
                output: Carrier::Inline(_),
                ..
            })
        ));
    }

    /// `message` is written as `text` exactly, and `text` decodes to it.
    fn request_on_the_wire(message: SlotRequest, text: &str) {
        assert_eq!(serde_json::to_string(&message).unwrap(), text);
        let back: SlotRequest = serde_json::from_str(text).unwrap();
        assert_eq!(back, message, "{text}");
    }

    #[test]
    fn each_carrier_of_an_input_travels_under_its_own_key() {
        let predict = |input| SlotRequest::Predict {
            id: "p".into(),
            input,
            output_dir: "/tmp/p".into(),
            context: serde_json::Map::new(),
        };
        request_on_the_wire(
            predict(Some(inline(r#"{"text":"hi","n":[1,2]}"#))),
            r#"{"type":"predict","id":"p","input":{"text":"hi","n":[1,2]},"output_dir":"/tmp/p","context":{}}"#,
        );
        request_on_the_wire(
            predict(Some(Carrier::Attached(()))),
            r#"{"type":"predict","id":"p","input_attached":true,"output_dir":"/tmp/p","context":{}}"#,
        );
        request_on_the_wire(
            predict(Some(Carrier::File("/tmp/p/input.json".into()))),
            r#"{"type":"predict","id":"p","input_file":"/tmp/p/input.json","output_dir":"/tmp/p","context":{}}"#,
        );
        request_on_the_wire(
            predict(None),
            r#"{"type":"predict","id":"p","output_dir":"/tmp/p","context":{}}"#,
        );
        // `null`, a flag that is off, and no input at all say the same.
        for text in [
            r#"{"type":"predict","id":"p","input":null,"output_dir":"/tmp/p"}"#,
            r#"{"type":"predict","id":"p","input_attached":false,"output_dir":"/tmp/p"}"#,
        ] {
            let request: SlotRequest = serde_json::from_str(text).unwrap();
            assert_eq!(request, predict(None), "{text}");
        }
    }

    #[test]
    fn an_input_that_travels_two_ways_is_refused() {
        for frame in [
            r#"{"type":"predict","id":"p","input":{},"input_file":"/x","output_dir":"/o"}"#,
            r#"{"type":"predict","id":"p","input":{},"input_attached":true,"output_dir":"/o"}"#,
            r#"{"type":"predict","id":"p","input_file":"/x","input_attached":true,"output_dir":"/o"}"#,
            r#"{"type":"predict","id":"p","input":{},"input_file":"/x","input_attached":true,"output_dir":"/o"}"#,
        ] {
            let error = serde_json::from_str::<SlotRequest>(frame).unwrap_err();
            assert!(
                error.to_string().contains("one way only"),
                "{frame}: {error}"
            );
        }
    }

    #[test]
    fn a_file_is_taken_only_for_a_carrier_that_says_it_is_attached() {
        let taken = |carrier: Carrier| {
            let mut asked = false;
            let attached = carrier.attach(|| {
                asked = true;
                Some("file")
            });
            (
                attached.map(|c| matches!(c, Carrier::Attached("file"))),
                asked,
            )
        };
        assert_eq!(taken(inline("1")), (Some(false), false));
        assert_eq!(taken(Carrier::File("/x".into())), (Some(false), false));
        assert_eq!(taken(Carrier::Attached(())), (Some(true), true));
        assert!(Carrier::Attached(()).attach(|| None::<()>).is_none());
        let (carrier, file) = Carrier::Attached("file").detach();
        assert!(matches!(
            (carrier, file),
            (Carrier::Attached(()), Some("file"))
        ));
        let (carrier, file) = Carrier::<&str>::File("/x".into()).detach();
        assert!(matches!((carrier, file), (Carrier::File(_), None)));
    }
}
