//! Limits on what one request may ask of the server: the size of its head
//! (URI and headers), the shape of a prediction id, and the number of event
//! streams open at once. Each refusal is a JSON answer from [`ApiError`].
//!
//! The head limits sit below those of the HTTP layer itself (a URI of 64 KiB,
//! about 400 KiB of head, 100 headers), so a request between the two gets a
//! JSON 414 or 431 from here; past the HTTP layer's own limits it answers the
//! same status with an empty body and closes the connection.

use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// The longest request target (path and query) accepted, in bytes.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The most header bytes (names and values) one request may carry.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The longest prediction id accepted.
pub const MAX_ID_BYTES: usize = 128;

/// Refuses a request whose URI (414) or headers (431) are over the limits,
/// before any handler or the token check sees it.
pub(super) async fn check_head(request: Request, next: Next) -> Response {
    let uri = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if uri > MAX_URI_BYTES {
        return ApiError::UriTooLong {
            size: uri,
            limit: MAX_URI_BYTES,
        }
        .into_response();
    }
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers > MAX_HEADER_BYTES {
        return ApiError::HeadersTooLarge {
            size: headers,
            limit: MAX_HEADER_BYTES,
        }
        .into_response();
    }
    next.run(request).await
}

/// Why a prediction id is refused, or `None` when it is fine: 1 to
/// [`MAX_ID_BYTES`] characters of `A-Z a-z 0-9 _ . -`, which covers the ids
/// Cog clients make (Replicate's base-32 ids, UUIDs, slugs) and keeps ids safe
/// in URLs, logs and file names.
pub fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("the prediction id is empty".into());
    }
    if id.len() > MAX_ID_BYTES {
        return Some(format!(
            "the prediction id is {} bytes long; at most {MAX_ID_BYTES} are allowed",
            id.len()
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Some(
            "the prediction id may hold only letters, digits, '_', '.' and '-'".to_string(),
        );
    }
    None
}

/// The cap on event streams open at once (`COG_MAX_STREAMS`): a semaphore
/// whose permits are held by the streams themselves, so a stream that ends, or
/// whose client goes away, frees its place when its body is dropped.
#[derive(Clone, Debug)]
pub struct StreamLimit {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl StreamLimit {
    /// At most `limit` streams at once.
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// A place for one more stream, or 429 when every place is taken.
    pub(super) fn acquire(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyStreams { limit: self.limit })
    }

    /// How many streams are open now.
    pub fn open(&self) -> usize {
        self.limit - self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_the_usual_shapes_are_accepted() {
        for id in [
            "ufawqhfynnddngldkgtslldrkq",
            "0b8f6c4e-3f1a-4c2e-9d7b-2a1e5f6c7d8e",
            "my_run.v2",
            &"a".repeat(MAX_ID_BYTES),
        ] {
            assert_eq!(id_problem(id), None, "{id}");
        }
    }

    #[test]
    fn empty_long_and_odd_ids_are_refused_with_a_reason() {
        assert!(id_problem("").unwrap().contains("empty"));
        assert!(id_problem(&"a".repeat(MAX_ID_BYTES + 1))
            .unwrap()
            .contains("at most 128"));
        for odd in ["a b", "a/b", "ü", "a\0b", "x?y", "%41"] {
            assert!(id_problem(odd).unwrap().contains("only letters"), "{odd}");
        }
    }

    #[test]
    fn a_stream_place_is_freed_when_its_permit_drops() {
        let limit = StreamLimit::new(1);
        let first = limit.acquire().unwrap();
        assert_eq!(limit.open(), 1);
        assert!(matches!(
            limit.acquire(),
            Err(ApiError::TooManyStreams { limit: 1 })
        ));
        drop(first);
        assert_eq!(limit.open(), 0);
        assert!(limit.acquire().is_ok());
    }
}
