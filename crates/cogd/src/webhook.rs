//! Webhook delivery: one task per prediction that subscribes to the
//! prediction's state and POSTs it to the client's URL.
//!
//! `start` is sent first, with the prediction as it was accepted; `output` and
//! `logs` follow the state as it changes, coalesced so that at most one is sent
//! per throttle interval and the latest state is always the one sent;
//! `completed` is sent as soon as the prediction ends and retried with backoff
//! until the receiver takes it (bounded). The task owns nothing but its
//! subscription, so a slow or dead receiver delays no run, no other prediction
//! and no slot.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::files::{redact, without_url};
use crate::outbound::{is_refused, AddressPolicy, OutboundClient};
use crate::prediction::{Prediction, PredictionHandle};
use crate::telemetry::Metrics;

/// The events a client may ask for in `webhook_events_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookEvent {
    /// The prediction was accepted.
    Start,
    /// A new output (or chunk).
    Output,
    /// New log lines.
    Logs,
    /// The prediction finished.
    Completed,
}

impl WebhookEvent {
    /// Parses one filter entry.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "start" => Some(Self::Start),
            "output" => Some(Self::Output),
            "logs" => Some(Self::Logs),
            "completed" => Some(Self::Completed),
            _ => None,
        }
    }

    /// Every event: the default filter.
    pub fn all() -> HashSet<Self> {
        [Self::Start, Self::Output, Self::Logs, Self::Completed]
            .into_iter()
            .collect()
    }
}

/// Where one prediction's webhooks go.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The receiver's URL.
    pub url: String,
    /// The events to send.
    pub events: HashSet<WebhookEvent>,
    /// Headers to forward from the creating request (W3C trace context).
    pub trace_headers: Vec<(String, String)>,
}

/// Sends webhooks; one per server, cheap to clone.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    client: OutboundClient,
    /// `WEBHOOK_AUTH_TOKEN`, sent as a bearer token.
    token: Option<String>,
    /// The least time between two `output`/`logs` webhooks of one prediction.
    throttle: Duration,
    /// Delivery tasks still running, so shutdown can wait for them.
    pending: Arc<watch::Sender<usize>>,
    /// Counts deliveries and failed attempts.
    metrics: Metrics,
}

/// Counts one delivery task while it lives.
struct Pending(Arc<watch::Sender<usize>>);

impl Pending {
    fn new(count: &Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(Arc::clone(count))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Webhook requests in flight across the server; past it, deliveries wait
/// (holding no connection), so receivers that never answer cannot use up
/// the server's file descriptors.
const MAX_DELIVERIES: usize = 64;
/// Attempts at delivering `completed` before giving up.
const COMPLETED_ATTEMPTS: u32 = 8;
/// The first pause between attempts; it doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest pause, also the cap on a receiver's `Retry-After`.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl WebhookSender {
    /// A sender with its own connection pool (kept-alive connections) that
    /// reaches only what `policy` allows.
    pub fn new(
        token: Option<String>,
        throttle: Duration,
        user_agent: &str,
        metrics: Metrics,
        policy: &AddressPolicy,
    ) -> Self {
        let client = OutboundClient::new(policy, MAX_DELIVERIES, |builder| {
            builder
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(30))
                .user_agent(user_agent)
        });
        Self {
            client,
            token: token.filter(|t| !t.is_empty()),
            throttle,
            pending: Arc::new(watch::Sender::new(0)),
            metrics,
        }
    }

    /// Waits until every delivery has finished (or `timeout` has passed), so
    /// a stopping server does not drop `completed` webhooks.
    pub async fn flush(&self, timeout: Duration) {
        let mut pending = self.pending.subscribe();
        if tokio::time::timeout(timeout, pending.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!(
                pending = *pending.borrow(),
                "stopping with webhook deliveries still in progress"
            );
        }
    }

    /// Starts delivering `handle`'s webhooks in the background. `accepted` is
    /// the prediction as it was accepted: the body of `start`.
    pub fn spawn(
        &self,
        handle: &PredictionHandle,
        accepted: Prediction,
        subscription: Subscription,
    ) {
        let sender = self.clone();
        let mut updates = handle.subscribe();
        updates.mark_unchanged();
        let pending = Pending::new(&self.pending);
        tokio::spawn(async move {
            sender.deliver(accepted, updates, subscription).await;
            drop(pending);
        });
    }

    async fn deliver(
        &self,
        accepted: Prediction,
        mut updates: watch::Receiver<Prediction>,
        subscription: Subscription,
    ) {
        let wants = |event| subscription.events.contains(&event);
        if wants(WebhookEvent::Start) {
            self.send(&subscription, &accepted, 2).await;
        }
        let mut sent_logs = accepted.logs.len();
        let mut sent_outputs = accepted.outputs.len();
        let mut next_allowed = Instant::now();
        loop {
            if updates.changed().await.is_err() {
                return;
            }
            // Coalesce: wait out the throttle, unless the prediction finishes.
            let now = Instant::now();
            if now < next_allowed && !updates.borrow().status.is_terminal() {
                let finished = tokio::time::timeout(
                    next_allowed - now,
                    updates.wait_for(|p| p.status.is_terminal()),
                )
                .await;
                if matches!(finished, Ok(Err(_))) {
                    return;
                }
            }
            let state = updates.borrow_and_update().clone();
            if state.status.is_terminal() {
                if wants(WebhookEvent::Completed) {
                    self.send(&subscription, &state, COMPLETED_ATTEMPTS).await;
                }
                return;
            }
            let event = if state.outputs.len() != sent_outputs {
                WebhookEvent::Output
            } else if state.logs.len() != sent_logs {
                WebhookEvent::Logs
            } else {
                continue;
            };
            let wanted = wants(event)
                || (event == WebhookEvent::Output
                    && state.logs.len() != sent_logs
                    && wants(WebhookEvent::Logs));
            if !wanted {
                continue;
            }
            sent_outputs = state.outputs.len();
            sent_logs = state.logs.len();
            next_allowed = Instant::now() + self.throttle;
            self.send(&subscription, &state, 1).await;
        }
    }

    /// POSTs `prediction`, retrying up to `attempts` times in all.
    async fn send(&self, subscription: &Subscription, prediction: &Prediction, attempts: u32) {
        let mut backoff = FIRST_BACKOFF;
        let shown = shown(&subscription.url);
        let Ok(url) = reqwest::Url::parse(&subscription.url) else {
            tracing::warn!(prediction_id = %prediction.id, url = %shown, "webhook URL does not parse");
            return;
        };
        // Written once, shared by every attempt.
        let body = bytes::Bytes::from(prediction.to_json());
        for attempt in 1..=attempts {
            let mut request = match self.client.request(reqwest::Method::POST, url.clone()) {
                Ok(request) => request,
                Err(refused) => {
                    tracing::warn!(prediction_id = %prediction.id, url = %shown, reason = %refused, "webhook refused by the address policy");
                    return;
                }
            };
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            for (name, value) in &subscription.trace_headers {
                request = request.header(name, value);
            }
            let permit = self.client.permit().await;
            let sent = request.send().await;
            drop(permit);
            let wait = match sent {
                Ok(response) if response.status().is_success() => {
                    self.metrics.webhook_delivered();
                    return;
                }
                Ok(response) => {
                    self.metrics.webhook_failed();
                    let status = response.status();
                    let retryable = status.is_server_error()
                        || status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::REQUEST_TIMEOUT;
                    tracing::warn!(prediction_id = %prediction.id, url = %shown, %status, attempt, "webhook refused");
                    if !retryable {
                        return;
                    }
                    retry_after(&response).unwrap_or(backoff)
                }
                Err(error) => {
                    self.metrics.webhook_failed();
                    tracing::warn!(prediction_id = %prediction.id, url = %shown, error = %without_url(&error), attempt, "webhook failed");
                    if is_refused(&error) {
                        return;
                    }
                    backoff
                }
            };
            if attempt < attempts {
                tokio::time::sleep(wait.min(MAX_BACKOFF)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        tracing::error!(prediction_id = %prediction.id, url = %shown, attempts, "giving up on a webhook");
    }
}

/// A webhook URL as logs may show it: without credentials or query.
fn shown(url: &str) -> String {
    reqwest::Url::parse(url).map_or_else(|_| "the webhook URL".into(), |u| redact(&u))
}

/// A `Retry-After` in seconds, as 429 and 503 answers may carry.
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?;
    let seconds: f64 = value.to_str().ok()?.trim().parse().ok()?;
    (seconds >= 0.0 && seconds.is_finite()).then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_names_parse() {
        assert_eq!(WebhookEvent::parse("start"), Some(WebhookEvent::Start));
        assert_eq!(
            WebhookEvent::parse("completed"),
            Some(WebhookEvent::Completed)
        );
        assert_eq!(WebhookEvent::parse("finished"), None);
        assert_eq!(WebhookEvent::all().len(), 4);
    }
}
