//! File inputs: `Path`/`File` inputs given as `http(s)://` URLs are downloaded,
//! and `data:` URIs decoded, into the prediction's directory before the run,
//! so the run sees a local path. The directory goes when the prediction ends.
//!
//! Downloads are streamed to disk (never held whole in memory), run in
//! parallel (8 at a time per prediction, 64 across the server), follow
//! redirects, reach only the addresses the [`AddressPolicy`] allows, and
//! are bounded in time and size. Any other
//! scheme (`file://`, `ftp://`, a bare path) is refused: a client must not be
//! able to make the model read the server's own files. A failure names the
//! input and the URL, with credentials and query string left out.
//!
//! File outputs, the other direction, are in [`outputs`].

pub mod data_uri;
pub mod outputs;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{stream, StreamExt, TryStreamExt};
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use crate::outbound::{redact, without_url, AddressPolicy, ClientConfig, OutboundClient};
use data_uri::DataUri;

/// Files of one prediction downloaded at the same time.
const PARALLEL_DOWNLOADS: usize = 8;
/// Downloads in flight across the server; past it, downloads wait.
const MAX_DOWNLOADS: usize = 64;

/// Downloads and decodes file inputs; one per server, cheap to clone.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: OutboundClient,
    /// The largest file accepted.
    max_bytes: u64,
}

/// One file input value to fetch: where it sits in the input, and its URL.
struct Job {
    field: String,
    index: Option<usize>,
    url: String,
}

impl Fetcher {
    /// A fetcher whose downloads give up after `timeout` and `max_bytes`,
    /// and reach only what `policy` allows.
    pub fn new(
        timeout: Duration,
        max_bytes: u64,
        user_agent: &str,
        policy: &AddressPolicy,
    ) -> Self {
        let client = OutboundClient::new(
            policy,
            ClientConfig {
                user_agent,
                max_in_flight: MAX_DOWNLOADS,
                timeout: Some(timeout),
            },
        );
        Self { client, max_bytes }
    }

    /// Replaces every URL among `fields` of `input` (strings, or lists of
    /// strings) with the path of a local copy under `dir`.
    pub async fn localize(
        &self,
        input: &mut Map<String, Value>,
        fields: &[String],
        dir: &Path,
    ) -> Result<(), String> {
        let mut jobs = Vec::new();
        for field in fields {
            match input.get(field) {
                Some(Value::String(url)) => jobs.push(Job {
                    field: field.clone(),
                    index: None,
                    url: url.clone(),
                }),
                Some(Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Value::String(url) = item {
                            jobs.push(Job {
                                field: field.clone(),
                                index: Some(i),
                                url: url.clone(),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        if jobs.is_empty() {
            return Ok(());
        }
        // A few at a time, each in its own place: a request with thousands
        // of URLs opens no more connections and files than this at once.
        // (The futures are made first: a stream of a closure's futures that
        // borrow would not be `Send` for every lifetime.)
        let fetches: Vec<_> = jobs
            .iter()
            .enumerate()
            .map(|(n, job)| self.fetch_job(job, dir.join(format!("input-{n}"))))
            .collect();
        let fetched: Vec<PathBuf> = stream::iter(fetches)
            .buffered(PARALLEL_DOWNLOADS)
            .try_collect()
            .await?;
        for (job, path) in jobs.iter().zip(fetched) {
            let local = Value::String(path.to_string_lossy().into_owned());
            match (job.index, input.get_mut(&job.field)) {
                (None, Some(value)) => *value = local,
                (Some(i), Some(Value::Array(items))) => items[i] = local,
                _ => {}
            }
        }
        Ok(())
    }

    /// Fetches one job's URL into the directory `target` (one per file:
    /// names from URLs cannot collide or escape); errors name the input.
    async fn fetch_job(&self, job: &Job, target: PathBuf) -> Result<PathBuf, String> {
        self.fetch(&job.url, &target).await.map_err(|e| {
            let which = match job.index {
                Some(i) => format!("{}[{i}]", job.field),
                None => job.field.clone(),
            };
            format!("input {which:?}: {e}")
        })
    }

    /// Fetches one URL into the directory `target`; returns the file's path.
    async fn fetch(&self, url: &str, target: &Path) -> Result<PathBuf, String> {
        tokio::fs::create_dir_all(target)
            .await
            .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
        if url.starts_with("data:") {
            return write_data_uri(url, target).await;
        }
        let parsed = reqwest::Url::parse(url).map_err(|_| {
            "expected an http(s):// URL or a data: URI, got something else".to_string()
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "the {}: scheme is not accepted: send an http(s):// URL or a data: URI",
                parsed.scheme()
            ));
        }
        let shown = redact(&parsed);
        let _permit = self.client.permit().await;
        let mut response = self
            .client
            .request(reqwest::Method::GET, parsed.clone())
            .map_err(|e| format!("cannot download {shown}: {e}"))?
            .send()
            .await
            .map_err(|e| format!("cannot download {shown}: {}", without_url(&e)))?;
        if !response.status().is_success() {
            return Err(format!(
                "cannot download {shown}: HTTP {}",
                response.status()
            ));
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes)
        {
            return Err(format!(
                "cannot download {shown}: larger than the {} byte limit",
                self.max_bytes
            ));
        }
        let name = file_name(
            &parsed,
            response.headers().get(reqwest::header::CONTENT_TYPE),
        );
        let path = target.join(name);
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let mut written: u64 = 0;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("cannot download {shown}: {}", without_url(&e)))?
        {
            written += chunk.len() as u64;
            if written > self.max_bytes {
                return Err(format!(
                    "cannot download {shown}: larger than the {} byte limit",
                    self.max_bytes
                ));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        file.flush()
            .await
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }
}

/// A safe file name: the URL's last path segment, else one from the type.
fn file_name(url: &reqwest::Url, content_type: Option<&reqwest::header::HeaderValue>) -> String {
    let from_url = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .map(sanitize)
        .filter(|n| !n.is_empty());
    from_url.unwrap_or_else(|| {
        let mime = content_type.and_then(|v| v.to_str().ok()).unwrap_or("");
        format!("input{}", extension(mime))
    })
}

/// Keeps letters, digits, `.`, `-` and `_`; no leading dots; at most 128 bytes.
pub(crate) fn sanitize(name: &str) -> String {
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(name).collect();
    let kept: String = String::from_utf8_lossy(&decoded)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    kept.trim_start_matches('.').chars().take(128).collect()
}

/// Common media types and the file extension each is written with.
const MEDIA_TYPES: &[(&str, &str)] = &[
    ("image/png", ".png"),
    ("image/jpeg", ".jpg"),
    ("image/gif", ".gif"),
    ("image/webp", ".webp"),
    ("audio/wav", ".wav"),
    ("audio/x-wav", ".wav"),
    ("audio/mpeg", ".mp3"),
    ("video/mp4", ".mp4"),
    ("text/plain", ".txt"),
    ("application/json", ".json"),
    ("application/pdf", ".pdf"),
    ("application/zip", ".zip"),
];

/// A file extension for common media types (`""` for others).
pub(crate) fn extension(mime: &str) -> &'static str {
    let essence = mime.split(';').next().unwrap_or("").trim();
    MEDIA_TYPES
        .iter()
        .find(|(m, _)| *m == essence)
        .map_or("", |(_, ext)| ext)
}

/// The media type of a file, from its extension; `application/octet-stream`
/// when the extension is not a common one.
pub(crate) fn media_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| format!(".{}", e.to_ascii_lowercase()))
        .unwrap_or_default();
    let ext = if ext == ".jpeg" { ".jpg" } else { ext.as_str() };
    MEDIA_TYPES
        .iter()
        .find(|(_, e)| *e == ext)
        .map_or("application/octet-stream", |(m, _)| m)
}

/// Decodes a `data:` URI to a file in `target`, named for its media type.
async fn write_data_uri(uri: &str, target: &Path) -> Result<PathBuf, String> {
    let data = DataUri::decode(uri)?;
    let path = target.join(format!("input{}", extension(&data.media_type)));
    tokio::fs::write(&path, data.bytes)
        .await
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_urls_cannot_escape_or_hide() {
        assert_eq!(sanitize("cat.png"), "cat.png");
        assert_eq!(sanitize("..%2F..%2Fetc%2Fpasswd"), "_.._etc_passwd");
        assert_eq!(sanitize(".hidden"), "hidden");
        assert_eq!(sanitize("a b%20c"), "a_b_c");
    }

    #[tokio::test]
    async fn data_uris_decode_to_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_data_uri("data:text/plain;base64,aGVsbG8=", dir.path())
            .await
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        assert_eq!(path.extension().unwrap(), "txt");
        let path = write_data_uri("data:,a%20b", &dir.path().join("x")).await;
        assert!(path.is_err(), "the target directory must exist");
        let plain = write_data_uri("data:,a%20b", dir.path()).await.unwrap();
        assert_eq!(std::fs::read(plain).unwrap(), b"a b");
    }

    #[tokio::test]
    async fn other_schemes_are_refused() {
        let policy = AddressPolicy::new(false, None);
        let fetcher = Fetcher::new(Duration::from_secs(1), 1024, "test", &policy);
        let dir = tempfile::tempdir().unwrap();
        for url in ["file:///etc/passwd", "ftp://example.com/x", "/etc/passwd"] {
            let err = fetcher.fetch(url, dir.path()).await.unwrap_err();
            assert!(err.contains("http"), "{url}: {err}");
        }
    }
}
