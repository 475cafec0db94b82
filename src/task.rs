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

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::Duration;

    #[test]
    fn a_panicking_task_does_not_stop_its_neighbours() {
        let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let finished = Rc::new(Cell::new(0));
        runtime.block_on({
            let finished = Rc::clone(&finished);
            async move {
                for i in 0..10 {
                    let finished = Rc::clone(&finished);
                    super::spawn_contained(async move {
                        monoio::time::sleep(Duration::from_millis(10)).await;
                        if i % 3 == 0 {
                            panic!("connection {i} hit a bug");
                        }
                        finished.set(finished.get() + 1);
                    });
                }
                monoio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        assert_eq!(finished.get(), 6);
    }
}
