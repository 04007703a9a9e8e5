//! The prediction a log line is about, when no span carries it.
//!
//! A `tracing` span per prediction costs a busy server about a tenth of its
//! CPU per small prediction: it is created, entered and left on every poll of
//! the run, and closed, through every layer. The JSON log lines only need
//! the prediction's id, so while traces are off and logs are JSON, the id
//! travels here instead: a thread-local set by [`Entered`] for synchronous
//! code and by [`Logged`] around each poll of a run's future. The JSON
//! formatter adds it to every line as `prediction_id`, unless the line has
//! its own.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

thread_local! {
    static CURRENT: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
}

/// Lines logged on this thread are about `id` until this is dropped.
#[must_use = "the id applies only while this is kept"]
pub struct Entered {
    previous: Option<Arc<str>>,
}

impl Entered {
    /// Lines logged on this thread from now on are about `id`.
    pub fn new(id: &Arc<str>) -> Self {
        Self {
            previous: CURRENT.with(|current| current.replace(Some(Arc::clone(id)))),
        }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|current| *current.borrow_mut() = previous);
    }
}

pin_project_lite::pin_project! {
    /// A future whose log lines are about one prediction.
    pub struct Logged<F> {
        id: Arc<str>,
        #[pin]
        future: F,
    }
}

impl<F> Logged<F> {
    /// `future`, with the lines it logs about `id`.
    pub fn new(id: Arc<str>, future: F) -> Self {
        Self { id, future }
    }
}

impl<F: Future> Future for Logged<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = Entered::new(this.id);
        this.future.poll(cx)
    }
}

/// Calls `f` with the prediction the current line is about, if any.
pub(super) fn with_current<R>(f: impl FnOnce(Option<&str>) -> R) -> R {
    CURRENT.with(|current| f(current.borrow().as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current() -> Option<String> {
        with_current(|id| id.map(String::from))
    }

    #[test]
    fn entered_ids_nest_and_unwind() {
        assert_eq!(current(), None);
        let outer = Entered::new(&Arc::from("outer"));
        assert_eq!(current().as_deref(), Some("outer"));
        {
            let _inner = Entered::new(&Arc::from("inner"));
            assert_eq!(current().as_deref(), Some("inner"));
        }
        assert_eq!(current().as_deref(), Some("outer"));
        drop(outer);
        assert_eq!(current(), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_logged_future_has_its_id_only_while_it_is_polled() {
        let (tell, told) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(Logged::new(Arc::from("run"), async move {
            assert_eq!(current().as_deref(), Some("run"));
            told.await.unwrap();
            // Still its own after a wait, however other tasks ran meanwhile.
            current()
        }));
        tokio::task::yield_now().await;
        assert_eq!(current(), None, "another task's id does not leak");
        tell.send(()).unwrap();
        assert_eq!(task.await.unwrap().as_deref(), Some("run"));
    }
}
