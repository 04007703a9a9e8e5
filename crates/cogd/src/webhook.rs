//! Webhook delivery: one task per prediction that subscribes to the
//! prediction's state and POSTs it to the client's URL.
//!
//! `start` is sent first, with the prediction as it was accepted; `output` and
//! `logs` follow the state as it changes, coalesced so that at most one is sent
//! per throttle interval and the latest state is always the one sent;
//! `completed` is sent as soon as the prediction ends and retried until the
//! receiver takes it, under the one retry policy of outbound requests
//! ([`retry::WEBHOOKS`]: 8 attempts; `start` gets 2, `output`/`logs` 1). The task owns nothing but its
//! subscription, so a slow or dead receiver delays no run, no other prediction
//! and no slot.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::outbound::retry::{self, Failure, RetryPolicy};
use crate::outbound::{redact, AddressPolicy, ClientConfig, OutboundClient};
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
/// The longest one webhook request may take, reply included.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// `start`: sent once more if the first attempt fails.
const START: RetryPolicy = retry::WEBHOOKS.with_attempts(2);
/// `output` and `logs`: not retried, as the next one carries their state.
const PROGRESS: RetryPolicy = retry::WEBHOOKS.with_attempts(1);

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
        let client = OutboundClient::new(
            policy,
            ClientConfig {
                user_agent,
                max_in_flight: MAX_DELIVERIES,
                timeout: Some(DELIVERY_TIMEOUT),
            },
        );
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
        drop(self.spawn_gated(handle, accepted, subscription, None));
    }

    /// As [`WebhookSender::spawn`], but `completed` waits for `gate`: sent
    /// when it says `true`, never when it says `false` or is dropped (the
    /// creator decides whether this delivery is the one that reports the
    /// end, as a queue consumer does after marking the prediction done).
    /// The task ends when the delivery has ended, `completed` included.
    pub fn spawn_gated(
        &self,
        handle: &PredictionHandle,
        accepted: Prediction,
        subscription: Subscription,
        gate: Option<tokio::sync::oneshot::Receiver<bool>>,
    ) -> tokio::task::JoinHandle<()> {
        let sender = self.clone();
        let mut updates = handle.subscribe();
        updates.mark_unchanged();
        let pending = Pending::new(&self.pending);
        tokio::spawn(async move {
            sender.deliver(accepted, updates, subscription, gate).await;
            drop(pending);
        })
    }

    async fn deliver(
        &self,
        accepted: Prediction,
        mut updates: watch::Receiver<Prediction>,
        subscription: Subscription,
        gate: Option<tokio::sync::oneshot::Receiver<bool>>,
    ) {
        let wants = |event| subscription.events.contains(&event);
        if wants(WebhookEvent::Start) {
            self.send(&subscription, &accepted, START).await;
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
                let open = match gate {
                    Some(gate) => gate.await.unwrap_or(false),
                    None => true,
                };
                if open && wants(WebhookEvent::Completed) {
                    self.send(&subscription, &state, retry::WEBHOOKS).await;
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
            self.send(&subscription, &state, PROGRESS).await;
        }
    }

    /// POSTs `prediction`, retried under `policy`.
    async fn send(
        &self,
        subscription: &Subscription,
        prediction: &Prediction,
        policy: RetryPolicy,
    ) {
        let shown = shown(&subscription.url);
        let Ok(url) = reqwest::Url::parse(&subscription.url) else {
            tracing::warn!(prediction_id = %prediction.id, url = %shown, "webhook URL does not parse");
            return;
        };
        // Written once, shared by every attempt.
        let body = bytes::Bytes::from(prediction.to_json());
        let mut attempts = policy.start();
        loop {
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
            let failure = match sent {
                Ok(response) if response.status().is_success() => {
                    self.metrics.webhook_delivered();
                    return;
                }
                Ok(response) => Failure::of_reply(&response),
                Err(error) => Failure::of_error(&error),
            };
            self.metrics.webhook_failed();
            let attempt = attempts.number();
            tracing::warn!(prediction_id = %prediction.id, url = %shown, reason = %failure.reason, attempt, "webhook failed");
            if !failure.retried {
                return;
            }
            if !attempts.wait_to_retry(&failure).await {
                break;
            }
        }
        tracing::error!(prediction_id = %prediction.id, url = %shown, attempts = policy.attempts, "giving up on a webhook");
    }
}

/// A webhook URL as logs may show it: without credentials or query.
fn shown(url: &str) -> String {
    reqwest::Url::parse(url).map_or_else(|_| "the webhook URL".into(), |u| redact(&u))
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
