//! File outputs and large outputs: the server's half of sending what a run
//! returned. The service calls [`OutputSender::finish`] for each output value
//! (a plain run's, or each stream chunk as it comes) before the prediction
//! shows it.
//!
//! The worker never reads or encodes a file the run returned: it sends the
//! value with `null` where each file goes, plus a list of the files and where
//! they go (`FileOutput`). Here each file is resolved (symlinks followed, so
//! the path read is the real one; it must be a regular file), then either
//! inlined as a `data:<mime>;base64,…` URI, encoded straight from disk into
//! the final JSON text, or, with an upload base URL (`--upload-url`, or the
//! request's `output_file_prefix`), sent with `PUT BASE/<filename>`, the body
//! streamed from disk, each attempt bounded in time, and retried under the
//! one retry policy of outbound requests ([`retry::UPLOADS`]); the
//! value is then the reply's `Location` (query string dropped) or the PUT URL.
//! A file inside the prediction's directory is removed once it is sent.
//!
//! A value too large for one protocol frame arrives as a sealed memory file
//! attached to its message, checked and kept in a read-only map of that file
//! ([`JsonText::take_attached`]); or, from a worker that cannot make memory
//! files, as a file of JSON in the prediction's directory, unlinked, read
//! once into memory of its own and checked there ([`JsonText::read_file`]).
//! Either is never parsed again: a value this module builds (files spliced
//! in) is JSON by construction.
//!
//! Inline files are encoded with `base64_simd` rather than the `base64`
//! crate the rest of the server uses, kept for a measured gain: a 20 MiB
//! file took about 15 ms with `base64` and takes about 3 ms with it,
//! written straight into the output text.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::try_join_all;

use super::sanitize;
use crate::ipc::{Carrier, FileOutput, OutputValue};
use crate::outbound::retry::{self, Failure};
use crate::outbound::{redact, AddressPolicy, ClientConfig, OutboundClient};
use crate::prediction::JsonText;

/// Files of one output uploaded at the same time.
const PARALLEL_UPLOADS: usize = 4;
/// Uploads in flight across the server; past it, uploads wait.
const MAX_UPLOADS: usize = 32;
/// Bytes read from disk at a time while uploading: each read is a trip to
/// the blocking pool, and the file's own reads go at most this far at once.
/// Against 256 KiB, a 20 MiB upload took 1-4 ms less (14.3-16.0 ms
/// against 17.1-18.6, medians of 30).
const UPLOAD_CHUNK: usize = 2 * 1024 * 1024;
/// Bytes read from disk at a time while encoding; a multiple of 3, so each
/// piece encodes to base64 without padding.
const ENCODE_CHUNK: usize = 3 * 256 * 1024;

/// Why an output could not be sent. Each names the file (and the URL, with
/// credentials and query left out) so the prediction's error says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The spilled JSON of a large output could not be read.
    #[error("cannot read the output from {path}: {reason}")]
    Spill {
        /// The spill file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An output file could not be read.
    #[error("cannot read output file {path}: {reason}")]
    Read {
        /// The file, as the run gave it.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The upload failed, for good or after every retry.
    #[error("cannot upload output file {filename} to {url}: {reason}")]
    Upload {
        /// The file's upload name.
        filename: String,
        /// The PUT URL, redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// The upload base URL is not an http(s) URL.
    #[error("cannot upload output file {filename}: {url} is not an http(s) URL")]
    BadBase {
        /// The file's upload name.
        filename: String,
        /// The base URL, redacted where it parses.
        url: String,
    },
    /// The worker sent a value that does not fit its file list.
    #[error("the worker sent an output that does not fit its files: {0}")]
    Malformed(String),
}

/// Sends file outputs; one per server, cheap to clone.
#[derive(Debug, Clone)]
pub struct OutputSender {
    client: OutboundClient,
    /// `--upload-url`: where files go when the request names no prefix.
    upload_url: Option<String>,
    /// The longest one upload attempt may take, reply included
    /// (`COG_UPLOAD_TIMEOUT`): a receiver that takes the body and never
    /// answers must not hold the prediction, and its slot, forever.
    upload_timeout: Duration,
}

/// What one prediction's outputs need to be sent.
#[derive(Debug, Clone, Copy)]
pub struct OutputTarget<'a> {
    /// The prediction's directory: spill files and files the run wrote there
    /// are removed once sent, and spill files must be inside it.
    pub dir: &'a Path,
    /// The request's `output_file_prefix`, which wins over `--upload-url`.
    pub prefix: Option<&'a str>,
}

/// One file, resolved: where it really is and how big.
struct Resolved<'a> {
    file: &'a FileOutput,
    real: PathBuf,
    len: u64,
}

impl OutputSender {
    /// A sender that uploads to `upload_url` when set, else inlines files;
    /// each upload attempt gives up after `upload_timeout`, and reaches only
    /// what `policy` allows.
    pub fn new(
        upload_url: Option<String>,
        user_agent: &str,
        upload_timeout: Duration,
        policy: &AddressPolicy,
    ) -> Self {
        let client = OutboundClient::new(
            policy,
            ClientConfig {
                user_agent,
                max_in_flight: MAX_UPLOADS,
                // Each attempt has its own: `upload_timeout`.
                timeout: None,
            },
        );
        Self {
            client,
            upload_url,
            upload_timeout,
        }
    }

    /// The output's final JSON: its files sent and their URLs in place.
    pub async fn finish(
        &self,
        output: OutputValue,
        target: OutputTarget<'_>,
    ) -> Result<JsonText, OutputError> {
        let OutputValue { json, files } = output;
        let text = match json {
            Carrier::Inline(value) => JsonText::from(value),
            Carrier::Attached(file) => take_attached(file).await?,
            Carrier::File(path) => read_spilled(path, target.dir.to_path_buf()).await?,
        };
        if files.is_empty() {
            return Ok(text);
        }
        let text = text.get();
        let base = target.prefix.or(self.upload_url.as_deref());
        let dir = tokio::fs::canonicalize(target.dir)
            .await
            .unwrap_or_else(|_| target.dir.to_path_buf());
        let mut resolved = Vec::with_capacity(files.len());
        for file in &files {
            resolved.push(resolve(file).await?);
        }
        let (text, markers) = place_markers(text, &files)?;
        let result = match base {
            Some(base) => {
                // A few at a time; each URL goes to its file's place, so the
                // order the uploads finish in does not matter.
                let mut urls = Vec::with_capacity(resolved.len());
                for batch in resolved.chunks(PARALLEL_UPLOADS) {
                    urls.extend(try_join_all(batch.iter().map(|r| self.upload(base, r))).await?);
                }
                let quoted: Vec<String> = urls
                    .iter()
                    .map(|u| serde_json::to_string(u).expect("a string is JSON"))
                    .collect();
                // Serialised JSON with JSON strings (the URLs) in place of
                // its markers: JSON by construction, so not parsed again.
                JsonText::written(splice(&text, &markers, |i, out| out.push_str(&quoted[i]))?)
            }
            None => {
                let extra: u64 = resolved
                    .iter()
                    .map(|r| data_uri_prefix(&r.file.mime_type).len() as u64 + 1 + b64_len(r.len))
                    .sum();
                splice_with_capacity(text, &markers, extra, &resolved).await?
            }
        };
        for r in &resolved {
            if r.real.starts_with(&dir) {
                let _ = tokio::fs::remove_file(&r.real).await;
            }
        }
        Ok(result)
    }

    /// PUTs one file to `base`/its name; returns the URL it can be found at.
    async fn upload(&self, base: &str, r: &Resolved<'_>) -> Result<String, OutputError> {
        let filename = upload_name(&r.file.pointer, &r.file.filename);
        let url = put_url(base, &filename).ok_or_else(|| OutputError::BadBase {
            filename: filename.clone(),
            url: reqwest::Url::parse(base)
                .map(|u| redact(&u))
                .unwrap_or_else(|_| "the upload URL".into()),
        })?;
        let failed = |reason: String| OutputError::Upload {
            filename: filename.clone(),
            url: redact(&url),
            reason,
        };
        let mut attempts = retry::UPLOADS.start();
        loop {
            let file = tokio::fs::File::open(&r.real)
                .await
                .map_err(|e| OutputError::Read {
                    path: r.file.path.clone(),
                    reason: e.to_string(),
                })?;
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                file,
                UPLOAD_CHUNK,
            ));
            let permit = self.client.permit().await;
            let request = self
                .client
                .request(reqwest::Method::PUT, url.clone())
                .map_err(|refused| failed(refused.to_string()))?;
            let sent = request
                .header(reqwest::header::CONTENT_TYPE, &r.file.mime_type)
                .header(reqwest::header::CONTENT_LENGTH, r.len)
                .body(body)
                .timeout(self.upload_timeout)
                .send()
                .await;
            let failure = match sent {
                Ok(reply) if reply.status().is_success() => return Ok(location(&url, &reply)),
                Ok(reply) => Failure::of_reply(&reply),
                Err(e) => Failure::of_error(&e),
            };
            drop(permit);
            let attempt = attempts.number();
            if !failure.retried {
                return Err(failed(failure.reason));
            }
            if attempts.is_last() {
                return Err(failed(format!(
                    "{} (after {attempt} attempts)",
                    failure.reason
                )));
            }
            tracing::warn!(file = %filename, url = %redact(&url), reason = %failure.reason, attempt, "upload failed; retrying");
            attempts.wait_to_retry(&failure).await;
        }
    }
}

/// A large output's JSON from the memory file attached to its message
/// ([`JsonText::take_attached`]). On a blocking thread: checking tens of
/// megabytes takes milliseconds.
async fn take_attached(file: std::fs::File) -> Result<JsonText, OutputError> {
    let failed = |reason: String| OutputError::Spill {
        path: "the attached memory file".into(),
        reason,
    };
    tokio::task::spawn_blocking(move || JsonText::take_attached(file).map_err(failed))
        .await
        .map_err(|e| OutputError::Malformed(format!("the spill task failed: {e}")))?
}

/// A large output's JSON from its spill file (which must be in the
/// prediction's directory), read and checked ([`JsonText::read_file`]); the
/// file is unlinked. On a blocking thread: tens of megabytes take
/// milliseconds.
async fn read_spilled(path: PathBuf, dir: PathBuf) -> Result<JsonText, OutputError> {
    let failed = |path: &Path, reason: String| OutputError::Spill {
        path: path.to_path_buf(),
        reason,
    };
    tokio::task::spawn_blocking(move || {
        let real = std::fs::canonicalize(&path).map_err(|e| failed(&path, e.to_string()))?;
        let dir = std::fs::canonicalize(dir).map_err(|e| failed(&path, e.to_string()))?;
        if !real.starts_with(&dir) {
            return Err(failed(
                &path,
                "it is not in the prediction's directory".into(),
            ));
        }
        let file = std::fs::File::open(&real).map_err(|e| failed(&path, e.to_string()))?;
        // Unlinked at once: its pages are dropped, never written back.
        let _ = std::fs::remove_file(&real);
        JsonText::read_file(&file).map_err(|reason| failed(&path, reason))
    })
    .await
    .map_err(|e| OutputError::Malformed(format!("the spill task failed: {e}")))?
}

/// Why a file under /proc or /sys is refused.
const PSEUDO_FILE: &str = "it is under /proc or /sys, whose files read differently for each \
     process (/proc/self here would be the server): copy it to a regular file first";

/// Whether `path` is a kernel pseudo-file. Its content depends on the process
/// that reads it, so the server can never read it as the run would have; no
/// model means to return one, and resolving `/proc/self` against the worker
/// would still leave `/proc/<server's pid>` and `/proc/thread-self` open.
fn is_pseudo_file(path: &Path) -> bool {
    path.starts_with("/proc") || path.starts_with("/sys")
}

/// Follows symlinks to the real file, which must be a regular one (never a
/// device, a directory or a file under /proc or /sys).
async fn resolve(file: &FileOutput) -> Result<Resolved<'_>, OutputError> {
    let failed = |reason: String| OutputError::Read {
        path: file.path.clone(),
        reason,
    };
    if is_pseudo_file(&file.path) {
        return Err(failed(PSEUDO_FILE.into()));
    }
    let real = tokio::fs::canonicalize(&file.path)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if is_pseudo_file(&real) {
        return Err(failed(PSEUDO_FILE.into()));
    }
    let meta = tokio::fs::metadata(&real)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !meta.is_file() {
        return Err(failed(format!("{} is not a regular file", real.display())));
    }
    Ok(Resolved {
        file,
        real,
        len: meta.len(),
    })
}

/// The value serialised with a unique marker string where each file goes,
/// and those markers (as they appear in the text) in file order.
fn place_markers(text: &str, files: &[FileOutput]) -> Result<(String, Vec<String>), OutputError> {
    let mut value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| OutputError::Malformed(e.to_string()))?;
    // A NUL, which JSON text always escapes, plus a fresh id: no string the
    // run returned can look like a marker.
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut markers = Vec::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let marker = format!("\u{0}cogd-file-{token}-{i}");
        let slot = value.pointer_mut(&file.pointer).ok_or_else(|| {
            OutputError::Malformed(format!("no place {:?} in the value", file.pointer))
        })?;
        *slot = serde_json::Value::String(marker.clone());
        markers.push(serde_json::to_string(&marker).expect("a string is JSON"));
    }
    let text = serde_json::to_string(&value).map_err(|e| OutputError::Malformed(e.to_string()))?;
    Ok((text, markers))
}

/// `text` with each marker replaced by what `write` appends for it.
fn splice(
    text: &str,
    markers: &[String],
    mut write: impl FnMut(usize, &mut String),
) -> Result<String, OutputError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    for (i, at) in marker_positions(text, markers)? {
        out.push_str(&text[rest..at]);
        write(i, &mut out);
        rest = at + markers[i].len();
    }
    out.push_str(&text[rest..]);
    Ok(out)
}

/// Like [`splice`] for inline files: the text is allocated once, at its
/// final size, and each file is base64-encoded straight from disk into it,
/// on a blocking thread (the reads are plain `read`s, and encoding tens of
/// megabytes would hold up the runtime's thread).
async fn splice_with_capacity(
    text: String,
    markers: &[String],
    extra: u64,
    resolved: &[Resolved<'_>],
) -> Result<JsonText, OutputError> {
    // The markers go; what replaces them is `extra` bytes long. An exact
    // capacity means the text is never moved, nor its spare room trimmed.
    let kept = text.len() - markers.iter().map(String::len).sum::<usize>();
    let size = usize::try_from(kept as u64 + extra).map_err(|_| OutputError::Read {
        path: resolved[0].file.path.clone(),
        reason: "too large to inline; use --upload-url".into(),
    })?;
    // What the blocking thread needs, owned: where each marker is and how
    // long, and the file that replaces it.
    let places: Vec<(usize, usize, PathBuf, PathBuf, String)> = marker_positions(&text, markers)?
        .into_iter()
        .map(|(i, at)| {
            let r = &resolved[i];
            let prefix = data_uri_prefix(&r.file.mime_type);
            (
                at,
                markers[i].len(),
                r.real.clone(),
                r.file.path.clone(),
                prefix,
            )
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut out = Built::with_capacity(size);
        let mut rest = 0;
        let mut last = PathBuf::new();
        for (at, len, real, path, prefix) in places {
            out.push_str(&text[rest..at]);
            out.push_str(&prefix);
            encode_file(&real, &mut out).map_err(|e| OutputError::Read {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            out.push_str("\"");
            rest = at + len;
            last = path;
        }
        out.push_str(&text[rest..]);
        out.finish().map_err(|e| OutputError::Read {
            path: last,
            reason: format!("cannot keep the encoded output: {e}"),
        })
    })
    .await
    .map_err(|e| OutputError::Malformed(format!("the encoding task failed: {e}")))?
}

/// Where each marker is in `text`, in text order, with its file's index.
fn marker_positions(text: &str, markers: &[String]) -> Result<Vec<(usize, usize)>, OutputError> {
    let mut found = Vec::with_capacity(markers.len());
    for (i, marker) in markers.iter().enumerate() {
        let at = text
            .find(marker.as_str())
            .ok_or_else(|| OutputError::Malformed("a file's place was lost".into()))?;
        found.push((i, at));
    }
    found.sort_by_key(|&(_, at)| at);
    Ok(found)
}

/// `"data:<mime>;base64,` as JSON text: the opening quote and the URI's head.
fn data_uri_prefix(mime: &str) -> String {
    let quoted = serde_json::to_string(&format!("data:{mime};base64,")).expect("a string is JSON");
    quoted[..quoted.len() - 1].to_string()
}

/// The length of `n` bytes in padded base64.
fn b64_len(n: u64) -> u64 {
    n.div_ceil(3) * 4
}

/// Appends the base64 of the file at `path` to `out`, reading it in pieces
/// (so the file is never held whole beside its encoding). `base64_simd`
/// encodes with the CPU's vector instructions when it has them, several
/// times faster than `base64`, which matters at tens of megabytes.
fn encode_file(path: &Path, out: &mut Built) -> std::io::Result<()> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; ENCODE_CHUNK];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        out.push_base64(&buf[..filled]);
        if filled < buf.len() {
            return Ok(());
        }
    }
}

/// Below this size, an output's text with its files inlined is built on the
/// heap; from it, in its own memory map ([`Built`]).
const MAP_TEXT_BYTES: usize = 1024 * 1024;

/// An output's text with its files inlined, as it is built: serialised JSON
/// with JSON strings (data URIs) in place of its markers, so JSON by
/// construction, never parsed again. A large one goes into a private
/// anonymous map faulted in whole when made: filling a heap buffer of tens
/// of megabytes faults it in a page at a time, which took most of the 24 ms
/// that encoding a 20 MiB file took.
enum Built {
    /// On the heap.
    Heap(String),
    /// In the first `len` bytes of a map, which holds only `str`s and base64
    /// (so UTF-8).
    Map {
        /// The map, as large as the text is expected to be.
        map: memmap2::MmapMut,
        /// How much of it is written.
        len: usize,
    },
}

impl Built {
    /// Room for `size` bytes: in a map when that is large and a map can be
    /// made, else on the heap.
    fn with_capacity(size: usize) -> Self {
        if size >= MAP_TEXT_BYTES {
            if let Ok(map) = memmap2::MmapOptions::new().len(size).populate().map_anon() {
                return Self::Map { map, len: 0 };
            }
        }
        Self::Heap(String::with_capacity(size))
    }

    /// The map's room for `n` more bytes; `None` once the text is on the
    /// heap, where it moves when it outgrows its map (a file that grew while
    /// it was read).
    fn room(&mut self, n: usize) -> Option<&mut [u8]> {
        let fits = match self {
            Self::Map { map, len } => *len + n <= map.len(),
            Self::Heap(_) => return None,
        };
        if !fits {
            let text = self.text().to_owned();
            *self = Self::Heap(text);
            return None;
        }
        let Self::Map { map, len } = self else {
            unreachable!("matched above")
        };
        let at = *len;
        *len += n;
        Some(&mut map[at..at + n])
    }

    /// The text so far.
    fn text(&self) -> &str {
        match self {
            Self::Heap(text) => text,
            Self::Map { map, len } => {
                std::str::from_utf8(&map[..*len]).expect("a map holds strs and base64")
            }
        }
    }

    fn push_str(&mut self, text: &str) {
        match self.room(text.len()) {
            Some(room) => room.copy_from_slice(text.as_bytes()),
            None => self.heap().push_str(text),
        }
    }

    /// Appends the base64 of `bytes` (padded).
    fn push_base64(&mut self, bytes: &[u8]) {
        use base64_simd::AsOut;
        match self.room(base64_simd::STANDARD.encoded_length(bytes.len())) {
            Some(room) => {
                let _ = base64_simd::STANDARD.encode(bytes, room.as_out());
            }
            None => base64_simd::STANDARD.encode_append(bytes, self.heap()),
        }
    }

    fn heap(&mut self) -> &mut String {
        match self {
            Self::Heap(text) => text,
            Self::Map { .. } => unreachable!("`room` moves a full map's text to the heap"),
        }
    }

    /// The text, kept. Err only when a map cannot be made read-only.
    fn finish(self) -> std::io::Result<JsonText> {
        match self {
            Self::Heap(text) => Ok(JsonText::written(text)),
            Self::Map { map, len } => {
                let map = map.make_read_only()?;
                // SAFETY: the map holds only `str`s and base64, so UTF-8.
                Ok(unsafe { JsonText::written_map(map, len) })
            }
        }
    }
}

/// The name a file is uploaded under: `output.<index>.<ext>` for an item of
/// a list output (so two items with the same name never overwrite each
/// other), else its own name; made safe for a URL path either way.
fn upload_name(pointer: &str, filename: &str) -> String {
    let name = sanitize(filename);
    let name = if name.is_empty() { "file".into() } else { name };
    let list_index = pointer
        .strip_prefix('/')
        .filter(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()));
    match list_index {
        Some(index) => match Path::new(&name).extension().and_then(|e| e.to_str()) {
            Some(ext) => format!("output.{index}.{ext}"),
            None => format!("output.{index}"),
        },
        None => name,
    }
}

/// `base` with `filename` appended to its path (its query, if any, kept).
fn put_url(base: &str, filename: &str) -> Option<reqwest::Url> {
    let mut url = reqwest::Url::parse(base).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    url.path_segments_mut().ok()?.pop_if_empty().push(filename);
    Some(url)
}

/// Where an uploaded file can be found: the reply's `Location` (resolved
/// against the PUT URL when relative), else the PUT URL; without query or
/// fragment either way, as signing parameters must not leak into outputs.
fn location(put: &reqwest::Url, reply: &reqwest::Response) -> String {
    let mut url = reply
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| put.join(v).ok())
        .unwrap_or_else(|| put.clone());
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn file(pointer: &str, path: &Path, mime: &str) -> FileOutput {
        FileOutput {
            pointer: pointer.into(),
            path: path.to_path_buf(),
            filename: path.file_name().unwrap().to_string_lossy().into_owned(),
            mime_type: mime.into(),
        }
    }

    fn inline(text: &str, files: Vec<FileOutput>) -> OutputValue {
        OutputValue {
            json: Carrier::Inline(serde_json::value::RawValue::from_string(text.into()).unwrap()),
            files,
        }
    }

    #[tokio::test]
    async fn files_become_data_uris_in_place_and_files_in_the_directory_go() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        let b = elsewhere.path().join("b.bin");
        std::fs::write(&a, b"hello").unwrap();
        std::fs::write(&b, [0u8, 1, 2, 3]).unwrap();
        let sender = OutputSender::new(
            None,
            "test",
            Duration::from_secs(30),
            &AddressPolicy::new(false, None),
        );
        let value = inline(
            r#"[null,{"file":null,"n":1},"\u0000cogd"]"#,
            vec![
                file("/0", &a, "text/plain"),
                file("/1/file", &b, "application/octet-stream"),
            ],
        );
        let target = OutputTarget {
            dir: dir.path(),
            prefix: None,
        };
        let out = sender.finish(value, target).await.unwrap();
        let got: serde_json::Value = serde_json::from_str(out.get()).unwrap();
        assert_eq!(
            got,
            serde_json::json!([
                "data:text/plain;base64,aGVsbG8=",
                {"file": "data:application/octet-stream;base64,AAECAw==", "n": 1},
                "\u{0}cogd"
            ])
        );
        assert!(
            !a.exists(),
            "a file in the prediction's directory is removed"
        );
        assert!(b.exists(), "a file elsewhere is the run's own");
    }

    #[tokio::test]
    async fn symlinks_are_followed_and_only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.txt");
        std::fs::write(&real, b"x").unwrap();
        let link = dir.path().join("link.txt");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let link_file = file("", &link, "text/plain");
        let resolved = resolve(&link_file).await.unwrap();
        assert_eq!(resolved.real, std::fs::canonicalize(&real).unwrap());
        let device = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &device).unwrap();
        let device_file = file("", &device, "x");
        let err = resolve(&device_file).await.err().unwrap();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[tokio::test]
    async fn a_spill_file_must_be_in_the_prediction_directory() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let outside = other.path().join("output.json");
        std::fs::write(&outside, b"1").unwrap();
        let spilled = |path: &Path| read_spilled(path.to_path_buf(), dir.path().to_path_buf());
        assert!(spilled(&outside).await.is_err());
        let inside = dir.path().join("output.json");
        for text in [&b"\"big\"\n"[..], b"\"big\""] {
            std::fs::write(&inside, text).unwrap();
            assert_eq!(spilled(&inside).await.unwrap().get(), "\"big\"");
            assert!(!inside.exists());
        }
        std::fs::write(&inside, b"\"big").unwrap();
        let error = spilled(&inside).await.unwrap_err().to_string();
        assert!(error.contains("not JSON: EOF while parsing"), "{error}");
        assert!(!inside.exists());
    }

    #[test]
    fn put_urls_append_the_name_and_locations_lose_their_query() {
        let url = put_url("http://h:1/up", "a.png").unwrap();
        assert_eq!(url.as_str(), "http://h:1/up/a.png");
        let url = put_url("http://h:1/up/?sig=1", "a b.png").unwrap();
        assert_eq!(url.as_str(), "http://h:1/up/a%20b.png?sig=1");
        assert!(put_url("ftp://h/x", "a").is_none());
        assert_eq!(upload_name("", "../x y.png"), "_x_y.png");
        assert_eq!(upload_name("", ".."), "file");
        assert_eq!(upload_name("/image", "cat.png"), "cat.png");
        // Items of a list output are named by their place in it.
        assert_eq!(upload_name("/0", "cat.png"), "output.0.png");
        assert_eq!(upload_name("/12", "weights"), "output.12");
        assert_eq!(upload_name("/1/image", "cat.png"), "cat.png");
    }

    #[test]
    fn base64_lengths_are_exact() {
        for n in 0..10u64 {
            let data = vec![7u8; n as usize];
            let text = base64::engine::general_purpose::STANDARD.encode(&data);
            assert_eq!(text.len() as u64, b64_len(n));
        }
    }

    #[test]
    fn encoding_from_disk_matches_encoding_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(ENCODE_CHUNK * 2 + 5)).map(|i| i as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
        let exact = encoded.len() + 2;
        // On the heap, in a map of the exact size, and in a map too small
        // (a file that grew after its size was taken).
        for size in [0, exact, exact.max(MAP_TEXT_BYTES), MAP_TEXT_BYTES] {
            let mut out = Built::with_capacity(size);
            assert_eq!(matches!(out, Built::Map { .. }), size >= MAP_TEXT_BYTES);
            out.push_str("\"");
            encode_file(&path, &mut out).unwrap();
            out.push_str("\"");
            let text = out.finish().unwrap();
            assert!(text.get() == format!("\"{encoded}\""), "size {size}");
        }
    }
}
