//! A run's output on its way out of the worker: its JSON text in the pieces
//! the handler made it in, and how it travels ([`Carrier`]): inline in its
//! message, or, past [`SPILL_OUTPUT_BYTES`], in a sealed memory file attached
//! to the message (a file in the run's directory where memory files cannot
//! be made). A spilled output is written there straight from the pieces:
//! a memory file never touches a disk, and the server serves the output
//! from its pages without copying them (writing a 20 MiB spill to a file on
//! ext4 took 5 ms at best here, but 20-140 ms whenever the file system was
//! catching up on blocks freed by earlier spills; a memory file takes about
//! 10 ms every time, and saves the server the 10-15 ms of reading a file
//! into memory of its own).
//!
//! The handler writes the JSON of the value itself, except its long strings:
//! those come separately, one between each two pieces of text, and are
//! escaped here ([`crate::json::write_str`]) only as the output is written,
//! straight from the handler's memory into the message or the spill file.
//! Python's `json` module takes about 50 ms to escape a 20 MiB string; this
//! takes a few, and makes no copy of the string on the way.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use serde_json::value::RawValue;

use crate::ipc::Carrier;

use super::SPILL_OUTPUT_BYTES;

/// A string the handler owns (a Python `str`, borrowed as UTF-8).
pub type LongString = Box<dyn AsRef<str> + Send>;

/// An output's JSON text: `pieces[0]`, then `strings[0]` as a JSON string,
/// then `pieces[1]`, and so on; one piece more than strings.
pub struct OutputJson {
    pieces: Vec<String>,
    strings: Vec<LongString>,
}

impl std::fmt::Debug for OutputJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputJson")
            .field("pieces", &self.pieces)
            .field("strings", &self.strings.len())
            .finish()
    }
}

impl OutputJson {
    /// Text that is all JSON already.
    pub fn text(text: String) -> Self {
        Self {
            pieces: vec![text],
            strings: Vec::new(),
        }
    }

    /// The text in pieces with a string between each two; an error when
    /// there is not exactly one piece more than strings.
    pub fn from_pieces(pieces: Vec<String>, strings: Vec<LongString>) -> Result<Self, String> {
        if pieces.len() != strings.len() + 1 {
            return Err(format!(
                "an output in {} pieces cannot hold {} strings",
                pieces.len(),
                strings.len()
            ));
        }
        Ok(Self { pieces, strings })
    }

    /// The shortest the text can be: each string with nothing to escape.
    fn min_len(&self) -> usize {
        let pieces: usize = self.pieces.iter().map(String::len).sum();
        let strings: usize = self
            .strings
            .iter()
            .map(|s| s.as_ref().as_ref().len() + 2)
            .sum();
        pieces + strings
    }

    /// Writes the whole text to `out`.
    fn write_to<W: Write + ?Sized>(&self, out: &mut W) -> io::Result<()> {
        let mut strings = self.strings.iter();
        for (i, piece) in self.pieces.iter().enumerate() {
            if i > 0 {
                let string = strings.next().expect("one string between two pieces");
                crate::json::write_str(out, string.as_ref().as_ref())?;
            }
            out.write_all(piece.as_bytes())?;
        }
        Ok(())
    }

    /// The whole text as one string.
    fn into_string(self) -> String {
        if self.strings.is_empty() {
            return self.pieces.into_iter().next().unwrap_or_default();
        }
        let mut out = Vec::with_capacity(self.min_len());
        self.write_to(&mut out)
            .expect("writing to a Vec cannot fail");
        String::from_utf8(out).expect("pieces and strings are UTF-8")
    }
}

/// The output inline, checked to be JSON: it goes into a frame the server
/// parses whole, so text that is not JSON would break the slot; it fails the
/// run instead.
pub(super) fn inline(output: OutputJson) -> io::Result<Box<RawValue>> {
    RawValue::from_string(output.into_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not JSON: {e}")))
}

/// The output inline (see [`inline`]); or, past [`SPILL_OUTPUT_BYTES`],
/// spilled ([`crate::ipc::spill`], into `name` in `dir` where memory files
/// cannot be made). A spilled output is not parsed here: the server checks
/// it as it takes it, and fails the prediction if it is not JSON.
pub(super) fn spill(output: OutputJson, dir: &Path, name: &str) -> io::Result<Carrier<OwnedFd>> {
    if output.min_len() <= SPILL_OUTPUT_BYTES {
        let text = output.into_string();
        if text.len() <= SPILL_OUTPUT_BYTES {
            return inline(OutputJson::text(text)).map(Carrier::Inline);
        }
        return crate::ipc::spill(dir, name, |file| file.write_all(text.as_bytes()));
    }
    crate::ipc::spill(dir, name, |file| output.write_to(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(pieces: &[&str], strings: &[&str]) -> OutputJson {
        OutputJson::from_pieces(
            pieces.iter().map(|p| p.to_string()).collect(),
            strings
                .iter()
                .map(|s| Box::new(s.to_string()) as LongString)
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn strings_go_between_the_pieces_escaped() {
        let out = inline(pieces(&["{\"a\":", ",\"b\":[", "]}"], &["x\"y", "é\n"])).unwrap();
        assert_eq!(out.get(), r#"{"a":"x\"y","b":["é\n"]}"#);
        assert!(OutputJson::from_pieces(vec!["1".into()], vec![Box::new("s")]).is_err());
    }

    #[test]
    fn an_inline_output_that_is_not_json_fails() {
        assert!(inline(OutputJson::text("{".into())).is_err());
    }

    /// The text of a spilled output, and the seals of its memory file.
    fn spilled(carrier: Carrier<OwnedFd>) -> (String, rustix::fs::SealFlags) {
        let Carrier::Attached(fd) = carrier else {
            panic!("not attached: {carrier:?}");
        };
        let seals = rustix::fs::fcntl_get_seals(&fd).unwrap();
        let file = std::fs::File::from(fd);
        let mut bytes = vec![0; file.metadata().unwrap().len() as usize];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, 0).unwrap();
        (String::from_utf8(bytes).unwrap(), seals)
    }

    #[test]
    fn a_large_output_is_spilled_whole_and_sealed_and_a_small_one_stays_inline() {
        let dir = tempfile::tempdir().unwrap();
        let small = spill(pieces(&["[", "]"], &["hi"]), dir.path(), "small.json").unwrap();
        assert!(matches!(&small, Carrier::Inline(v) if v.get() == r#"["hi"]"#));
        let long = "\u{0}é".repeat(SPILL_OUTPUT_BYTES / 3);
        let big = spill(pieces(&["[", "]"], &[&long]), dir.path(), "big.json").unwrap();
        let (text, seals) = spilled(big);
        assert!(text == serde_json::to_string(&[&long]).unwrap());
        let all = crate::ipc::SEALS | rustix::fs::SealFlags::SEAL;
        assert!(seals.contains(all), "seals {seals:?}");
        // Short before escaping, too long after: spilled as well.
        let quotes = "\"".repeat(SPILL_OUTPUT_BYTES / 2 + 1);
        let (text, _) =
            spilled(spill(pieces(&["", ""], &[&quotes]), dir.path(), "q.json").unwrap());
        assert!(text == serde_json::to_string(&quotes).unwrap());
        // Nothing went to disk.
        assert!(!dir.path().join("big.json").exists());
        assert!(!dir.path().join("q.json").exists());
    }

    #[test]
    fn a_sealed_spill_cannot_be_changed() {
        let dir = tempfile::tempdir().unwrap();
        let long = "x".repeat(SPILL_OUTPUT_BYTES + 1);
        let Carrier::Attached(fd) = spill(pieces(&["", ""], &[&long]), dir.path(), "o").unwrap()
        else {
            panic!("not attached");
        };
        let file = std::fs::File::from(fd);
        assert!((&file).write_all(b"y").is_err());
        assert!(file.set_len(1).is_err());
        assert!(file.set_len(1 << 30).is_err());
    }
}
