//! Writing JSON text fast where it can be large.
//!
//! serde_json escapes a string one byte at a time. The values that make
//! requests and replies large (a run that returns a 20 MiB string, an 8 MiB
//! text input) are mostly text with nothing to escape, so [`write_str`] skips
//! whole blocks (32 bytes with SSE2, else eight) to the next byte that needs
//! an escape, and writes the runs in between as they are. [`write_value`] and
//! [`write_map`] write a `serde_json` value on top of it, byte for byte as
//! `serde_json::to_writer` does (compact, the same escapes), so text written
//! here and text written by serde_json are interchangeable.
//!
//! The worker escapes the long strings of a run's output with it (see
//! `worker::OutputJson`), the service the input it sends to the worker, and
//! the prediction its input for the response envelope.
//!
//! Hand-written where serde_json would do, and kept for a measured gain: a
//! 20 MiB string took about 24 ms to escape with serde_json, 4.3-8 ms eight
//! bytes at a time, and 1.5-2.7 ms 32 bytes at a time with SSE2. Property
//! tests check its output against serde_json's, byte for byte.

use std::io::{self, Write};

use serde_json::{Map, Value};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Whether any of the eight bytes in `word` is one JSON escapes: `"`, `\`, or
/// a control character (below 0x20). Exact as a yes/no answer (the classic
/// "has a byte less than n" and "has a zero byte" tricks, both exact for the
/// whole word).
#[inline]
fn needs_escape(word: u64) -> bool {
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    let quote = word ^ (ONES * u64::from(b'"'));
    let quote = quote.wrapping_sub(ONES) & !quote & HIGH;
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let backslash = backslash.wrapping_sub(ONES) & !backslash & HIGH;
    (control | quote | backslash) != 0
}

/// The escape serde_json writes for `byte`, if it needs one.
#[inline]
fn escape(byte: u8) -> Option<&'static [u8]> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Every `\u00XX` escape of a control character, built once.
    static CONTROL: [[u8; 6]; 32] = {
        let mut table = [[0u8; 6]; 32];
        let mut i = 0;
        while i < 32 {
            table[i] = [b'\\', b'u', b'0', b'0', HEX[i >> 4], HEX[i & 0xf]];
            i += 1;
        }
        table
    };
    Some(match byte {
        b'"' => b"\\\"",
        b'\\' => b"\\\\",
        0x08 => b"\\b",
        0x0c => b"\\f",
        b'\n' => b"\\n",
        b'\r' => b"\\r",
        b'\t' => b"\\t",
        0..=0x1f => &CONTROL[usize::from(byte)],
        _ => return None,
    })
}

/// Writes `text` as a JSON string (quotes included), exactly as serde_json
/// would, but skipping whole blocks of bytes over what needs no escape.
pub fn write_str<W: Write + ?Sized>(out: &mut W, text: &str) -> io::Result<()> {
    let bytes = text.as_bytes();
    out.write_all(b"\"")?;
    // `bytes[start..at]` is the run not yet written.
    let mut start = 0;
    let mut at = 0;
    loop {
        at += clean_prefix::<false>(&bytes[at..]);
        let Some(&byte) = bytes.get(at) else {
            break;
        };
        let escaped = escape(byte).expect("the clean prefix ends at a byte to escape");
        out.write_all(&bytes[start..at])?;
        out.write_all(escaped)?;
        at += 1;
        start = at;
    }
    out.write_all(&bytes[start..])?;
    out.write_all(b"\"")
}

/// True when `text` is a JSON string with nothing escaped in it: a quote,
/// then no quote, backslash or control character, then a quote. Found with
/// the same block scan as [`write_str`], a few times faster than parsing
/// (a large output is most often one such string).
pub fn is_plain_string(text: &str) -> bool {
    plain_string::<false>(text.as_bytes())
}

/// Like [`is_plain_string`], for bytes not yet known to be UTF-8, and true
/// only when the string is ASCII as well: such bytes are UTF-8, so one scan
/// checks both. On a 20 MiB string this saves the 2 ms of a UTF-8 check.
pub fn is_plain_ascii_string(bytes: &[u8]) -> bool {
    plain_string::<true>(bytes)
}

/// A quote, bytes that need no escape (and, with `ASCII`, are ASCII), a quote.
fn plain_string<const ASCII: bool>(bytes: &[u8]) -> bool {
    bytes.len() >= 2
        && bytes[0] == b'"'
        && bytes[bytes.len() - 1] == b'"'
        && clean_prefix::<ASCII>(&bytes[1..bytes.len() - 1]) == bytes.len() - 2
}

/// How many bytes at the start of `bytes` need no escape (and, with
/// `ASCII`, are ASCII): 32 at a time with vector compares where the CPU has
/// them, then eight at a time, then one.
#[inline]
fn clean_prefix<const ASCII: bool>(bytes: &[u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    let mut at = clean_blocks::<ASCII>(bytes);
    #[cfg(not(target_arch = "x86_64"))]
    let mut at = 0;
    while let Some(word) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        if needs_escape(word) || (ASCII && word & HIGH != 0) {
            break;
        }
        at += 8;
    }
    while bytes
        .get(at)
        .is_some_and(|&b| escape(b).is_none() && (!ASCII || b.is_ascii()))
    {
        at += 1;
    }
    at
}

/// The length of the leading 32-byte blocks of `bytes` in which no byte needs
/// an escape (and, with `ASCII`, every byte is ASCII), found with SSE2 (part
/// of every x86_64 CPU): 16 bytes per compare, about three times the speed
/// of eight-byte words on a 20 MiB string.
#[cfg(target_arch = "x86_64")]
#[inline]
fn clean_blocks<const ASCII: bool>(bytes: &[u8]) -> usize {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    let mut at = 0;
    // SAFETY: SSE2 is in the x86_64 baseline, so these intrinsics are always
    // available; each load reads 16 bytes that are inside `bytes` (the loop
    // stops 32 bytes before its end), and unaligned loads allow any address.
    unsafe {
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let control_max = _mm_set1_epi8(0x1f);
        // A lane is set where the byte is `"`, `\` or at most 0x1f (the
        // unsigned max of a byte and 0x1f is 0x1f only then); with `ASCII`,
        // also where its high bit is (the byte itself, which the mask reads).
        let dirty = |v: __m128i| {
            let escaped = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                _mm_cmpeq_epi8(_mm_max_epu8(v, control_max), control_max),
            );
            if ASCII {
                _mm_or_si128(escaped, v)
            } else {
                escaped
            }
        };
        while at + 32 <= bytes.len() {
            let first = _mm_loadu_si128(bytes.as_ptr().add(at).cast::<__m128i>());
            let second = _mm_loadu_si128(bytes.as_ptr().add(at + 16).cast::<__m128i>());
            if _mm_movemask_epi8(_mm_or_si128(dirty(first), dirty(second))) != 0 {
                break;
            }
            at += 32;
        }
    }
    at
}

/// Writes `value` as compact JSON, byte for byte what `serde_json::to_writer`
/// writes.
pub fn write_value<W: Write + ?Sized>(out: &mut W, value: &Value) -> io::Result<()> {
    match value {
        Value::String(text) => write_str(out, text),
        Value::Array(items) => {
            out.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                write_value(out, item)?;
            }
            out.write_all(b"]")
        }
        Value::Object(map) => write_map(out, map),
        // Numbers, booleans and null are short: serde_json's own text.
        scalar => serde_json::to_writer(&mut *out, scalar).map_err(io::Error::other),
    }
}

/// Writes `map` as a compact JSON object, as [`write_value`] does.
pub fn write_map<W: Write + ?Sized>(out: &mut W, map: &Map<String, Value>) -> io::Result<()> {
    out.write_all(b"{")?;
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        write_str(out, key)?;
        out.write_all(b":")?;
        write_value(out, value)?;
    }
    out.write_all(b"}")
}

/// `map` as compact JSON text (see [`write_map`]).
pub fn map_to_string(map: &Map<String, Value>) -> String {
    finish(|out| write_map(out, map))
}

/// `value` as compact JSON text (see [`write_value`]).
pub fn value_to_string(value: &Value) -> String {
    finish(|out| write_value(out, value))
}

/// The text `write` writes, in a buffer allocated once at its exact size:
/// it is written twice, first only counted (a scan, no copy), so a text of
/// many megabytes is never moved while it grows.
fn finish(write: impl Fn(&mut dyn Write) -> io::Result<()>) -> String {
    let mut count = Count(0);
    write(&mut count).expect("counting cannot fail");
    let mut out = Vec::with_capacity(count.0);
    write(&mut out).expect("writing to a Vec cannot fail");
    String::from_utf8(out).expect("JSON written from a str is UTF-8")
}

/// A writer that only counts the bytes written to it.
struct Count(usize);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn escaped(text: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, text).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_byte_is_escaped_as_serde_json_escapes_it() {
        for b in 0u8..=0x7f {
            let text = format!("abcdefgh{}ijklmnop", b as char);
            assert_eq!(
                escaped(&text),
                serde_json::to_string(&text).unwrap(),
                "byte {b:#x}"
            );
        }
        for text in [
            "",
            "é",
            "日本語\n\"quoted\"\\",
            "\u{7f}\u{0}\u{1f}",
            "abcdefg\"",
        ] {
            assert_eq!(escaped(text), serde_json::to_string(text).unwrap());
        }
    }

    #[test]
    fn a_long_string_with_escapes_at_every_offset_matches_serde_json() {
        let mut text = "x".repeat(100);
        for at in (0..100).step_by(7) {
            text.replace_range(at..at + 1, "\"");
        }
        text.push_str("ü\u{1}");
        assert_eq!(escaped(&text), serde_json::to_string(&text).unwrap());
    }

    #[test]
    fn a_byte_to_escape_is_found_at_any_place_in_a_block() {
        // 70 bytes: two whole 32-byte blocks and a tail, with one byte that
        // needs an escape (or a byte near one that does not) at each place.
        for at in 0..70 {
            for special in ['"', '\\', '\n', '\u{0}', '\u{1f}', ' ', '\u{7f}', 'é'] {
                let mut text: String = "y".repeat(70);
                text.replace_range(at..at + 1, &special.to_string());
                assert_eq!(
                    escaped(&text),
                    serde_json::to_string(&text).unwrap(),
                    "{special:?} at {at}"
                );
            }
        }
    }

    #[test]
    fn a_plain_ascii_string_is_told_by_its_bytes_at_any_place_in_a_block() {
        for at in 0..70 {
            for special in [
                '"', '\\', '\n', '\u{0}', '\u{1f}', ' ', '\u{7f}', 'é', '\u{80}',
            ] {
                let mut text: String = "y".repeat(70);
                text.replace_range(at..at + 1, &special.to_string());
                let quoted = format!("\"{text}\"");
                assert_eq!(
                    is_plain_ascii_string(quoted.as_bytes()),
                    is_plain_string(&quoted) && quoted.is_ascii(),
                    "{special:?} at {at}"
                );
            }
        }
        assert!(is_plain_ascii_string(b"\"\""));
        assert!(!is_plain_ascii_string(b"\"\xff\""), "not UTF-8");
        assert!(!is_plain_ascii_string(b"\"a"));
    }

    #[test]
    fn plain_strings_are_told_from_other_json_and_from_non_json() {
        let long = "y".repeat(100);
        for plain in ["\"\"", "\"é日本\"", &format!("\"{long}\"")] {
            assert!(is_plain_string(plain), "{plain}");
        }
        for other in [
            "",
            "\"",
            "x\"\"",
            "\"a\\nb\"",
            "\"a\"b\"",
            "\"a\nb\"",
            &format!("\"{long}\\\"{long}\""),
            "1",
            "[\"a\"]",
        ] {
            assert!(!is_plain_string(other), "{other:?}");
        }
    }

    #[test]
    fn values_are_written_as_serde_json_writes_them() {
        let value = serde_json::json!({
            "b": [1, -2, 3.5, 1e300, true, null, "s\t"],
            "a": {"nested": {"é": "\u{0}"}},
            "n": 18446744073709551615u64,
        });
        let mut out = Vec::new();
        write_value(&mut out, &value).unwrap();
        assert_eq!(out, serde_json::to_vec(&value).unwrap());
        let Value::Object(map) = value else {
            unreachable!()
        };
        assert_eq!(map_to_string(&map), serde_json::to_string(&map).unwrap());
        let value = Value::Object(map);
        let text = value_to_string(&value);
        assert_eq!(text, serde_json::to_string(&value).unwrap());
        assert_eq!(text.capacity(), text.len(), "allocated at its size");
    }

    proptest! {
        #[test]
        fn any_string_is_escaped_as_serde_json_escapes_it(text in any::<String>()) {
            prop_assert_eq!(escaped(&text), serde_json::to_string(&text).unwrap());
        }

        #[test]
        fn any_value_is_written_as_serde_json_writes_it(value in crate::arbitrary::json_value()) {
            let mut out = Vec::new();
            write_value(&mut out, &value).unwrap();
            prop_assert_eq!(out, serde_json::to_vec(&value).unwrap());
        }
    }
}
