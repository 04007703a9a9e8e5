//! Outbound HTTP: the one way the server makes requests of its own (file
//! inputs, webhooks, file uploads), so that a request's URLs cannot turn the
//! server against itself or its network, cannot make it open connections
//! and files without bound, and fail and retry the same way wherever they
//! are made.
//!
//! - [`client`]: the one client builder ([`OutboundClient`]): the guard,
//!   redirects, timeouts, user agent, a cap on requests in flight and the
//!   bounds of the connection pool; and how a URL or an error is shown.
//! - [`guard`]: which addresses may be reached ([`AddressPolicy`]), checked
//!   where names resolve and before each redirect.
//! - [`retry`]: the one retry policy of webhooks and uploads: which failures
//!   are retried, the backoff, `Retry-After`.
//!
//! Downloads of file inputs (`files`) use the client; they are not retried.
//! This module knows nothing of predictions: its callers (`files`,
//! `files::outputs`, `webhook`) say what to send and where.

pub mod client;
pub mod guard;
pub mod retry;

pub use client::{redact, without_url, ClientConfig, OutboundClient};
pub use guard::{is_refused, AddressPolicy, Refused};
pub use retry::{Attempts, Failure, RetryPolicy};
