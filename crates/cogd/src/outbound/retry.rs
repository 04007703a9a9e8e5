//! The one retry policy of the server's own requests, shared by webhooks
//! and uploads: which failures are retried, how long to wait before the
//! next attempt, and how a receiver's `Retry-After` is read.
//!
//! Retried: a reply of 408, 429 or any 5xx, and a request that failed on
//! the way (no connection, a timeout, a connection that dropped); never an
//! address the guard refused, a redirect not followed, or a request that
//! could not be built, which fail the same way each time. The wait doubles
//! from [`RetryPolicy::first_delay`] after each failure, up to
//! [`RetryPolicy::max_delay`]; a receiver's `Retry-After` (seconds or an
//! HTTP date) takes its place, capped the same. The first attempt is made at
//! once; [`Attempts`] counts them and waits between them.
//!
//! Two uses, two bounds ([`WEBHOOKS`], [`UPLOADS`]): a webhook is delivered
//! in the background, so it waits long for its receiver to come back; an
//! upload holds its prediction (and its slot), so it waits little.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

use super::client::without_url;
use super::guard::is_refused;

/// How many attempts a request gets, and the bounds of the waits between
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The wait after the first failure; it doubles after each one.
    pub first_delay: Duration,
    /// The longest wait, also the cap on a receiver's `Retry-After`.
    pub max_delay: Duration,
}

/// Webhooks (`completed`'s attempts; the other events take fewer with
/// [`RetryPolicy::with_attempts`]): delivered in the background, so a
/// receiver that is down gets about half a minute to come back.
pub const WEBHOOKS: RetryPolicy = RetryPolicy {
    attempts: 8,
    first_delay: Duration::from_millis(250),
    max_delay: Duration::from_secs(30),
};

/// Uploads of file outputs: the prediction and its slot wait for them, so
/// the waits are short (about 1.5 s in all across five attempts).
pub const UPLOADS: RetryPolicy = RetryPolicy {
    attempts: 5,
    first_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(5),
};

impl RetryPolicy {
    /// The same waits with `attempts` attempts in all.
    pub const fn with_attempts(self, attempts: u32) -> Self {
        Self { attempts, ..self }
    }

    /// The wait after attempt `failed` (1 for the first) failed, without a
    /// `Retry-After`: `first_delay` doubled `failed - 1` times, at most
    /// `max_delay`.
    pub fn backoff(&self, failed: u32) -> Duration {
        let doublings = failed.saturating_sub(1).min(31);
        self.first_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }

    /// The wait after attempt `failed` failed: the receiver's `Retry-After`
    /// when it gave one, else the backoff; at most `max_delay` either way.
    pub fn pause(&self, failed: u32, retry_after: Option<Duration>) -> Duration {
        retry_after
            .unwrap_or_else(|| self.backoff(failed))
            .min(self.max_delay)
    }

    /// The attempts of one request, the first about to be made.
    pub fn start(&self) -> Attempts {
        Attempts {
            policy: *self,
            made: 1,
        }
    }
}

/// One request's attempts under a [`RetryPolicy`].
#[derive(Debug)]
pub struct Attempts {
    policy: RetryPolicy,
    /// The number of the attempt being made (1 for the first).
    made: u32,
}

impl Attempts {
    /// The number of the attempt being made, 1 for the first.
    pub fn number(&self) -> u32 {
        self.made
    }

    /// Whether the attempt being made is the last the policy allows.
    pub fn is_last(&self) -> bool {
        self.made >= self.policy.attempts
    }

    /// After the attempt being made failed with `failure`: whether another
    /// is to be made, having waited for it. `false` when the failure is not
    /// worth retrying or this was the last attempt.
    pub async fn wait_to_retry(&mut self, failure: &Failure) -> bool {
        if !failure.retried || self.is_last() {
            return false;
        }
        tokio::time::sleep(self.policy.pause(self.made, failure.retry_after)).await;
        self.made += 1;
        true
    }
}

/// Why one attempt failed, and whether (and when) to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong, fit for logs and errors (no URL, no credentials).
    pub reason: String,
    /// Whether another attempt may succeed.
    pub retried: bool,
    /// The receiver's `Retry-After`, when it gave one.
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A reply whose status is not a success.
    pub fn of_reply(reply: &reqwest::Response) -> Self {
        let status = reply.status();
        Self {
            reason: format!("HTTP {status}"),
            retried: retries_status(status),
            retry_after: retry_after(reply.headers(), SystemTime::now()),
        }
    }

    /// A request that failed on the way.
    pub fn of_error(error: &reqwest::Error) -> Self {
        Self {
            reason: without_url(error),
            retried: retries_error(error),
            retry_after: None,
        }
    }
}

/// Whether a reply with `status` is worth another attempt: the receiver
/// timed out waiting (408), asks to slow down (429), or failed (5xx).
pub fn retries_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// Whether a request that failed on the way is worth another attempt:
/// everything but an address the guard refused, a redirect not followed
/// and a request that could not be built, which would fail again the same
/// way.
pub fn retries_error(error: &reqwest::Error) -> bool {
    !(is_refused(error) || error.is_redirect() || error.is_builder())
}

/// A reply's `Retry-After` as a wait from `now`: delay-seconds (a fraction
/// accepted) or an HTTP date (a date past is no wait). `None` when there is
/// none or it does not parse.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds >= 0.0 && seconds.is_finite()).then(|| Duration::from_secs_f64(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::{AddressPolicy, ClientConfig, OutboundClient};

    fn headers(retry_after: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, retry_after.parse().unwrap());
        headers
    }

    #[test]
    fn retry_after_reads_seconds() {
        let now = SystemTime::now();
        assert_eq!(
            retry_after(&headers("3"), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&headers(" 0.5 "), now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(retry_after(&headers("0"), now), Some(Duration::ZERO));
        for bad in ["-1", "soon", "inf", "NaN", ""] {
            assert_eq!(retry_after(&headers(bad), now), None, "{bad:?}");
        }
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn retry_after_reads_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            retry_after(&headers("Sun, 06 Nov 1994 08:50:07 GMT"), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after(&headers("Sun, 06 Nov 1994 08:49:00 GMT"), now),
            Some(Duration::ZERO),
            "a date past is no wait"
        );
        assert_eq!(
            retry_after(&headers("Sunday, 06-Nov-94 08:49:47 GMT"), now),
            Some(Duration::from_secs(10)),
            "the obsolete RFC 850 form"
        );
    }

    #[test]
    fn failed_and_throttled_replies_are_retried_refusals_are_not() {
        for status in [408, 429, 500, 502, 503, 504, 599] {
            assert!(
                retries_status(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
        for status in [200, 301, 400, 401, 403, 404, 409, 410, 413, 422] {
            assert!(
                !retries_status(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
    }

    #[test]
    fn the_backoff_doubles_up_to_its_bound() {
        let policy = RetryPolicy {
            attempts: 40,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        };
        let waits: Vec<u64> = (1..=8)
            .map(|n| policy.backoff(n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(policy.backoff(40), Duration::from_secs(5), "no overflow");
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(5));
        assert_eq!(
            policy.pause(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(5),
            "Retry-After is capped"
        );
        assert_eq!(
            policy.pause(6, Some(Duration::from_millis(10))),
            Duration::from_millis(10),
            "Retry-After wins over the backoff"
        );
        for policy in [WEBHOOKS, UPLOADS] {
            assert!(policy.first_delay <= policy.max_delay);
            assert!((1..=policy.attempts).all(|n| policy.backoff(n) <= policy.max_delay));
        }
    }

    fn failure(retried: bool) -> Failure {
        Failure {
            reason: "HTTP 503".into(),
            retried,
            retry_after: Some(Duration::ZERO),
        }
    }

    #[tokio::test]
    async fn attempts_stop_at_the_bound_or_at_a_failure_for_good() {
        let mut attempts = UPLOADS.with_attempts(3).start();
        assert_eq!(attempts.number(), 1);
        assert!(attempts.wait_to_retry(&failure(true)).await);
        assert!(attempts.wait_to_retry(&failure(true)).await);
        assert_eq!(attempts.number(), 3);
        assert!(attempts.is_last());
        assert!(
            !attempts.wait_to_retry(&failure(true)).await,
            "three in all"
        );
        let mut attempts = UPLOADS.start();
        assert!(!attempts.wait_to_retry(&failure(false)).await);
        assert_eq!(attempts.number(), 1);
    }

    #[tokio::test]
    async fn attempts_wait_the_backoff_between_them() {
        let policy = RetryPolicy {
            attempts: 3,
            first_delay: Duration::from_millis(20),
            max_delay: Duration::from_secs(1),
        };
        let mut attempts = policy.start();
        let started = std::time::Instant::now();
        let mut no_hint = failure(true);
        no_hint.retry_after = None;
        assert!(attempts.wait_to_retry(&no_hint).await);
        assert!(attempts.wait_to_retry(&no_hint).await);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(60), "waited {waited:?}");
        // A hint of a second would be waited in full (the cap): not after
        // the last attempt.
        let mut hint = failure(true);
        hint.retry_after = Some(Duration::from_secs(5));
        assert!(!attempts.wait_to_retry(&hint).await);
        let last = started.elapsed() - waited;
        assert!(
            last < Duration::from_millis(500),
            "waited {last:?} after the last"
        );
    }

    fn client(block_private: bool) -> OutboundClient {
        OutboundClient::new(
            &AddressPolicy::new(block_private, None),
            ClientConfig {
                user_agent: "test",
                max_in_flight: 1,
                timeout: Some(Duration::from_secs(5)),
            },
        )
    }

    async fn error_of(client: &OutboundClient, url: &str, header: &str) -> Failure {
        let url = reqwest::Url::parse(url).unwrap();
        let error = client
            .request(reqwest::Method::GET, url)
            .unwrap()
            .header(header, "x")
            .send()
            .await
            .unwrap_err();
        Failure::of_error(&error)
    }

    #[tokio::test]
    async fn errors_on_the_way_are_retried_refusals_and_bad_requests_are_not() {
        // A port nothing listens on: the connection is refused, which a
        // receiver that is restarting may answer.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let closed = format!("http://127.0.0.1:{port}/");
        let failure = error_of(&client(false), &closed, "x-ok").await;
        assert!(failure.retried, "{failure:?}");
        assert!(failure.reason.starts_with("cannot connect"), "{failure:?}");
        // A name that resolves only to loopback, refused by the guard.
        let failure = error_of(
            &client(true),
            &closed.replace("127.0.0.1", "localhost"),
            "x-ok",
        )
        .await;
        assert!(!failure.retried, "{failure:?}");
        // A header name that is no header name: the request cannot be built.
        let failure = error_of(&client(false), &closed, "bad header").await;
        assert!(!failure.retried, "{failure:?}");
    }
}
