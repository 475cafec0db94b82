//! Spawning connection and stream tasks so that a panic ends only the task that panicked.
//!
//! monoio re-raises a task's panic on the worker thread, which would take every other
//! connection of that worker down with it. Input from the network must never panic (and
//! the codecs are fuzzed for it), but if a bug slips through, this is the second line.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Spawns `future` on the current worker, containing any panic it raises.
pub fn spawn_contained<F: Future<Output = ()> + 'static>(future: F) {
    monoio::spawn(ContainPanic(Box::pin(future)));
}

/// Runs a future, turning a panic into its end.
struct ContainPanic<F>(Pin<Box<F>>);

impl<F: Future<Output = ()>> Future for ContainPanic<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                log::error!("internal: a task panicked; it was closed and the worker goes on");
                Poll::Ready(())
            }
        }
    }
}
