//! Newline-delimited JSON framing with a frame-size limit.
//!
//! One [`LineDecoder`] serves both sides: the server feeds it through tokio's
//! `FramedRead`, the worker through the blocking [`FrameReader`]. JSON encoders
//! escape newlines inside strings, so a bare `\n` always ends a frame.

use std::io::Read;

use bytes::{Buf, BytesMut};
use serde::Serialize;
use tokio_util::codec::Decoder;

/// The largest frame either side accepts, newline excluded. Larger payloads go
/// through a file and are sent by reference.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer sent (or we tried to send) more than the limit without a newline.
    #[error("frame of {size} bytes exceeds the {limit}-byte limit")]
    TooLong {
        /// The size seen so far.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The frame is not valid JSON for the expected message type.
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    /// The underlying channel failed.
    #[error("channel error: {0}")]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream into lines of at most `limit` bytes.
#[derive(Debug)]
pub struct LineDecoder {
    limit: usize,
    /// How far the current buffer has been searched for `\n`, so a long frame
    /// arriving in many small reads is scanned once, not once per read.
    scanned: usize,
}

impl LineDecoder {
    /// A decoder that rejects frames longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit, scanned: 0 }
    }
}

impl Default for LineDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME_BYTES)
    }
}

impl Decoder for LineDecoder {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        match buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(offset) => {
                let end = self.scanned + offset;
                self.scanned = 0;
                if end > self.limit {
                    return Err(FrameError::TooLong {
                        size: end,
                        limit: self.limit,
                    });
                }
                let line = buf.split_to(end);
                buf.advance(1);
                Ok(Some(line))
            }
            None => {
                self.scanned = buf.len();
                if buf.len() > self.limit {
                    return Err(FrameError::TooLong {
                        size: buf.len(),
                        limit: self.limit,
                    });
                }
                Ok(None)
            }
        }
    }
}

/// Encodes `message` as one frame: compact JSON and a newline.
pub fn encode_line<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = serde_json::to_vec(message)?;
    if out.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLong {
            size: out.len(),
            limit: MAX_FRAME_BYTES,
        });
    }
    out.push(b'\n');
    Ok(out)
}

/// Blocking frame reader for the worker side.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    decoder: LineDecoder,
}

impl<R: Read> FrameReader<R> {
    /// Reads frames from `inner` with the default limit.
    pub fn new(inner: R) -> Self {
        Self::with_limit(inner, MAX_FRAME_BYTES)
    }

    /// Reads frames from `inner`, rejecting any longer than `limit`.
    pub fn with_limit(inner: R, limit: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(8 * 1024),
            decoder: LineDecoder::new(limit),
        }
    }

    /// What it reads from.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The next frame, or `None` at a clean end of stream.
    pub fn next_frame(&mut self) -> Result<Option<BytesMut>, FrameError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = match self.inner.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(FrameError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "stream ended inside a frame",
                )));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame decoded as `T`.
    pub fn next_message<T: serde::de::DeserializeOwned>(
        &mut self,
    ) -> Result<Option<T>, FrameError> {
        match self.next_frame()? {
            Some(frame) => Ok(Some(serde_json::from_slice(&frame)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::ControlRequest;

    /// A reader that hands out its data a few bytes at a time, as a pipe may.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(self.data.len()).min(out.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn partial_lines_are_joined_across_reads() {
        let data = b"{\"type\":\"cancel\",\"slot\":1,\"id\":\"p\"}\n{\"type\":\"shutdown\"}\n";
        for step in [1, 2, 3, 7, 100] {
            let mut reader = FrameReader::new(Trickle { data, step });
            let first: ControlRequest = reader.next_message().unwrap().unwrap();
            assert_eq!(
                first,
                ControlRequest::Cancel {
                    slot: 1,
                    id: "p".into()
                }
            );
            let second: ControlRequest = reader.next_message().unwrap().unwrap();
            assert_eq!(second, ControlRequest::Shutdown);
            assert!(reader.next_frame().unwrap().is_none(), "step {step}");
        }
    }

    #[test]
    fn a_frame_at_the_limit_is_accepted_and_one_past_it_rejected() {
        let limit = 16;
        let ok = format!("{}\n", "a".repeat(limit));
        let mut reader = FrameReader::with_limit(ok.as_bytes(), limit);
        assert_eq!(reader.next_frame().unwrap().unwrap().len(), limit);

        let too_long = format!("{}\n", "a".repeat(limit + 1));
        let mut reader = FrameReader::with_limit(too_long.as_bytes(), limit);
        assert!(matches!(
            reader.next_frame(),
            Err(FrameError::TooLong { limit: 16, .. })
        ));
    }

    #[test]
    fn an_endless_line_is_rejected_without_waiting_for_its_end() {
        let mut decoder = LineDecoder::new(8);
        let mut buf = BytesMut::from(&b"0123456789"[..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn a_stream_cut_inside_a_frame_is_an_error() {
        let mut reader = FrameReader::new(&b"{\"type\":\"shut"[..]);
        assert!(matches!(reader.next_frame(), Err(FrameError::Io(_))));
    }

    #[test]
    fn encoded_frames_are_one_line() {
        let line = encode_line(&serde_json::json!({"text": "a\nb"})).unwrap();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(line.last(), Some(&b'\n'));
    }

    #[test]
    fn encoding_past_the_limit_fails() {
        let big = "x".repeat(MAX_FRAME_BYTES);
        assert!(matches!(encode_line(&big), Err(FrameError::TooLong { .. })));
    }

    mod properties {
        //! Property tests: arbitrary bytes in arbitrary pieces never panic the
        //! decoder, never yield a frame over the limit, and yield exactly the
        //! lines a plain split on `\n` gives; encoded messages come back whole.

        use super::*;
        use crate::ipc::{ControlResponse, LogSource};
        use proptest::prelude::*;

        /// What the decoder must do with `data` under `limit`: the complete
        /// lines in order, then an error at the first line (complete or not)
        /// longer than the limit.
        fn expected(data: &[u8], limit: usize) -> (Vec<Vec<u8>>, bool) {
            let mut lines = Vec::new();
            let mut parts = data.split(|&b| b == b'\n').peekable();
            while let Some(part) = parts.next() {
                if part.len() > limit {
                    return (lines, true);
                }
                if parts.peek().is_some() {
                    lines.push(part.to_vec());
                }
            }
            (lines, false)
        }

        /// Feeds `data` to a decoder in pieces of the given sizes, as
        /// `FramedRead` does, until an error.
        fn decode_in_pieces(data: &[u8], pieces: &[usize], limit: usize) -> (Vec<Vec<u8>>, bool) {
            let mut decoder = LineDecoder::new(limit);
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            let mut rest = data;
            let mut sizes = pieces.iter().cycle();
            loop {
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Some(frame)) => {
                            assert!(frame.len() <= limit, "a frame over the limit");
                            assert!(!frame.contains(&b'\n'), "a frame with a newline");
                            frames.push(frame.to_vec());
                        }
                        Ok(None) => break,
                        Err(FrameError::TooLong { size, .. }) => {
                            assert!(size > limit);
                            return (frames, true);
                        }
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
                if rest.is_empty() {
                    return (frames, false);
                }
                let n = (*sizes.next().unwrap()).clamp(1, rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
        }

        /// Bytes with many newlines, so lines of every length up to past the
        /// limit occur.
        fn line_bytes() -> impl Strategy<Value = Vec<u8>> {
            prop::collection::vec(prop_oneof![3 => any::<u8>(), 1 => Just(b'\n')], 0..200)
        }

        proptest! {
            #[test]
            fn the_decoder_yields_exactly_the_lines_within_the_limit(
                data in line_bytes(),
                pieces in prop::collection::vec(1usize..40, 1..8),
                limit in 0usize..48,
            ) {
                prop_assert_eq!(decode_in_pieces(&data, &pieces, limit), expected(&data, limit));
            }

            #[test]
            fn the_blocking_reader_agrees_with_the_decoder(
                data in line_bytes(),
                step in 1usize..40,
                limit in 0usize..48,
            ) {
                let (lines, too_long) = expected(&data, limit);
                let mut reader = FrameReader::with_limit(Trickle { data: &data, step }, limit);
                let mut got = Vec::new();
                let outcome = loop {
                    match reader.next_frame() {
                        Ok(Some(frame)) => got.push(frame.to_vec()),
                        Ok(None) => break "end",
                        Err(FrameError::TooLong { .. }) => break "too long",
                        Err(FrameError::Io(_)) => break "cut",
                        Err(e) => panic!("unexpected error {e}"),
                    }
                };
                prop_assert_eq!(got, lines);
                let cut = !data.is_empty() && !data.ends_with(b"\n");
                let want = if too_long { "too long" } else if cut { "cut" } else { "end" };
                prop_assert_eq!(outcome, want);
            }

            #[test]
            fn encoded_messages_come_back_whole_however_they_are_cut(
                texts in prop::collection::vec(any::<String>(), 0..6),
                step in 1usize..64,
            ) {
                let messages: Vec<ControlResponse> = texts
                    .into_iter()
                    .map(|data| ControlResponse::Log { source: LogSource::Stdout, data })
                    .collect();
                let wire: Vec<u8> = messages
                    .iter()
                    .flat_map(|m| encode_line(m).unwrap())
                    .collect();
                let mut reader = FrameReader::new(Trickle { data: &wire, step });
                let mut back = Vec::new();
                while let Some(message) = reader.next_message::<ControlResponse>().unwrap() {
                    back.push(message);
                }
                prop_assert_eq!(back, messages);
            }
        }
    }
}
