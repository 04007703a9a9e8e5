//! The health check of the worker for `/health-check`: whether it answers
//! at all (a stopped or wedged worker does not), and the model's own
//! `healthcheck()` when it defines one, run in the worker.
//!
//! A check goes out as `healthcheck {id}` on the control channel and comes
//! back as `healthcheck_result {id, status, error}`. At most one is in flight:
//! a request that arrives while one runs waits for that one's result instead
//! of starting another, so a burst of probes costs the model one call. The
//! check runs in a task of its own with a deadline, so no HTTP request drives
//! it and a client that goes away changes nothing; an answer that comes after
//! the deadline is dropped (the worker itself refuses to start a check while
//! an earlier one is still running, so stuck checks never pile up there).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::{Inner, Supervisor};
use crate::ipc::{ControlRequest, HealthcheckStatus};

/// What a check found: healthy, or why not, readably.
pub type UserHealth = Result<(), String>;

/// The checks of one worker.
#[derive(Default)]
pub(super) struct Healthchecks {
    /// Numbers the checks, so a late answer is never taken for a newer one's.
    next_id: AtomicU64,
    /// The check in flight, as the channel its result will be published on;
    /// every request that arrives while it runs waits on the same channel.
    in_flight: Mutex<Option<watch::Receiver<Option<UserHealth>>>>,
    /// The id of the check in flight and where the worker's answer goes.
    waiting: Mutex<Option<(u64, oneshot::Sender<UserHealth>)>>,
}

impl Healthchecks {
    /// Takes the worker's answer to check `id`; one that is no longer awaited
    /// (it came after the deadline) is dropped.
    pub(super) fn answer(&self, id: u64, status: HealthcheckStatus, error: Option<String>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        match waiting.take() {
            Some((expected, reply)) if expected == id => {
                let result = match status {
                    HealthcheckStatus::Healthy => Ok(()),
                    HealthcheckStatus::Unhealthy => Err(failed(
                        error
                            .as_deref()
                            .unwrap_or("user-defined healthcheck failed"),
                    )),
                };
                let _ = reply.send(result);
            }
            other => {
                *waiting = other;
                tracing::debug!(id, "dropping a healthcheck answer that came too late");
            }
        }
    }
}

/// A failed check's report, worded as Cog's runtime words it (clients
/// match on the prefix).
fn failed(reason: &str) -> String {
    format!("Healthcheck failed: {reason}")
}

/// Why a check that did not answer in time failed: the timeout as Cog
/// writes it (`5.0 seconds`, `0.5 seconds`).
fn timed_out(timeout: Duration) -> String {
    format!(
        "user-defined healthcheck timed out after {:?} seconds",
        timeout.as_secs_f64()
    )
}

impl Supervisor {
    /// Asks the worker for its health (it runs the model's `healthcheck()`
    /// when there is one, [`Supervisor::has_healthcheck`]; else it answers
    /// at once), or joins the check already in flight, and returns what it
    /// found. A check that has not answered within `timeout` of its start
    /// counts as unhealthy. Only for a ready worker.
    pub async fn healthcheck(&self, timeout: Duration) -> UserHealth {
        let mut result = {
            let mut in_flight = self
                .inner
                .healthchecks
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match &*in_flight {
                Some(result) => result.clone(),
                None => {
                    let (publish, result) = watch::channel(None);
                    *in_flight = Some(result.clone());
                    tokio::spawn(Arc::clone(&self.inner).run_healthcheck(publish, timeout));
                    result
                }
            }
        };
        let outcome = match result.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            Err(_) => None,
        };
        outcome.unwrap_or_else(|| Err(failed("the healthcheck was abandoned")))
    }
}

impl Inner {
    /// One check, from request to published result.
    async fn run_healthcheck(
        self: Arc<Self>,
        publish: watch::Sender<Option<UserHealth>>,
        timeout: Duration,
    ) {
        let checks = &self.healthchecks;
        let id = checks.next_id.fetch_add(1, Ordering::SeqCst);
        let (reply, answer) = oneshot::channel();
        *checks.waiting.lock().unwrap_or_else(|e| e.into_inner()) = Some((id, reply));
        self.send_control(&ControlRequest::Healthcheck { id }).await;
        let mut exit = self.exit.subscribe();
        let outcome = tokio::select! {
            answer = tokio::time::timeout(timeout, answer) => match answer {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Err(failed("the healthcheck's answer was lost")),
                Err(_) if self.has_healthcheck.load(Ordering::SeqCst) => {
                    Err(failed(&timed_out(timeout)))
                }
                Err(_) => Err(failed(&format!(
                    "the worker did not answer the health check within {:?} seconds",
                    timeout.as_secs_f64()
                ))),
            },
            _ = exit.wait_for(Option::is_some) => {
                Err(failed("the worker exited during the healthcheck"))
            }
        };
        checks
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_if(|(waiting, _)| *waiting == id);
        // The next request starts a fresh check; those waiting get this one's result.
        *checks.in_flight.lock().unwrap_or_else(|e| e.into_inner()) = None;
        publish.send_replace(Some(outcome));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_goes_to_the_check_that_waits_for_it_and_late_ones_are_dropped() {
        let checks = Healthchecks::default();
        let (reply, mut answer) = oneshot::channel();
        *checks.waiting.lock().unwrap() = Some((7, reply));
        checks.answer(6, HealthcheckStatus::Healthy, None);
        assert!(answer.try_recv().is_err(), "an answer to another check");
        assert!(checks.waiting.lock().unwrap().is_some());
        checks.answer(
            7,
            HealthcheckStatus::Unhealthy,
            Some("user-defined healthcheck returned False".into()),
        );
        assert_eq!(
            answer.try_recv().unwrap(),
            Err("Healthcheck failed: user-defined healthcheck returned False".to_string())
        );
        assert!(checks.waiting.lock().unwrap().is_none());
        // Nothing waits any more: a late answer is dropped quietly.
        checks.answer(7, HealthcheckStatus::Healthy, None);
    }

    #[test]
    fn a_timeout_is_written_as_cog_writes_it() {
        assert_eq!(
            timed_out(Duration::from_secs(5)),
            "user-defined healthcheck timed out after 5.0 seconds"
        );
        assert_eq!(
            timed_out(Duration::from_millis(500)),
            "user-defined healthcheck timed out after 0.5 seconds"
        );
    }
}
