//! [`JsonText`]: the text of one JSON value, shared. A prediction's input and
//! outputs are kept this way, so snapshots and replies never copy what may
//! be tens of megabytes, and nothing parses it again.

use serde::ser::Serializer;
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::Arc;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prediction::{Outcome, Prediction};

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.into()).unwrap()
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
}
