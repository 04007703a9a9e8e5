//! The one client builder: every client the server makes requests with
//! (downloads, webhooks, uploads) is an [`OutboundClient`] built here, with
//! the address guard, the redirect rules, the connect timeout, the user
//! agent and the pool bounds in one place; what differs between them is
//! said in their [`ClientConfig`].

use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::guard::{redirect_policy, AddressPolicy, GuardedResolver, Refused};

/// Idle connections kept per host.
pub const POOL_IDLE_PER_HOST: usize = 8;
/// How long an idle connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait for a connection to be made, for every client.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one client's requests need beyond what every client has.
#[derive(Debug, Clone, Copy)]
pub struct ClientConfig<'a> {
    /// The `User-Agent` sent (`COG_USER_AGENT`, or `cogd/<version>`).
    pub user_agent: &'a str,
    /// Requests in flight at once; past it, requests wait for a place.
    pub max_in_flight: usize,
    /// The longest a whole request may take, reply body included; `None`
    /// where each request sets its own (uploads).
    pub timeout: Option<Duration>,
}

/// An HTTP client that reaches only what the [`AddressPolicy`] allows and
/// bounds its requests in flight; cheap to clone.
#[derive(Debug, Clone)]
pub struct OutboundClient {
    /// For URLs on any port but the listen port.
    any_port: reqwest::Client,
    /// For URLs on the listen port: its resolver refuses the server's own
    /// addresses, so a name that resolves to the server is never connected to.
    listen_port: reqwest::Client,
    policy: AddressPolicy,
    /// One permit per request in flight: past the cap, requests wait for
    /// one to finish rather than open more connections (and descriptors).
    in_flight: Arc<Semaphore>,
}

impl OutboundClient {
    /// A client guarded by `policy`, keeping at most [`POOL_IDLE_PER_HOST`]
    /// idle connections per host for at most [`POOL_IDLE_TIMEOUT`].
    pub fn new(policy: &AddressPolicy, config: ClientConfig<'_>) -> Self {
        let build = |guards_self: bool| {
            let mut builder = reqwest::Client::builder()
                .dns_resolver(Arc::new(GuardedResolver::new(policy, guards_self)))
                .redirect(redirect_policy(policy, guards_self))
                .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .connect_timeout(CONNECT_TIMEOUT)
                .user_agent(config.user_agent);
            if let Some(timeout) = config.timeout {
                builder = builder.timeout(timeout);
            }
            if policy.block_private {
                builder = builder.no_proxy();
            }
            builder
                .build()
                .expect("the HTTP client configuration is valid")
        };
        Self {
            any_port: build(false),
            listen_port: build(true),
            policy: policy.clone(),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
        }
    }

    /// A request of `url`, or why it is refused.
    pub fn request(
        &self,
        method: reqwest::Method,
        url: Url,
    ) -> Result<reqwest::RequestBuilder, Refused> {
        let on_listen_port = url.port_or_known_default() == self.policy.listen_port;
        self.policy.check_url(&url, on_listen_port)?;
        let client = if on_listen_port {
            &self.listen_port
        } else {
            &self.any_port
        };
        Ok(client.request(method, url))
    }

    /// A place among the requests in flight; hold it until the response
    /// (and its body) is done with.
    pub async fn permit(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.in_flight)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }
}

/// The URL as it may appear in errors and logs: no credentials, no query.
pub fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// A reqwest error without the URL it carries (which may hold secrets).
pub fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_redirect() {
        "redirect not followed"
    } else {
        "transfer failed"
    };
    let mut source = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(e) = source {
        detail = e.to_string();
        source = e.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} ({detail})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_errors_lose_credentials_and_query() {
        let url = Url::parse("https://user:pw@example.com/a.png?token=s3cret#x").unwrap();
        assert_eq!(redact(&url), "https://example.com/a.png");
    }
}
