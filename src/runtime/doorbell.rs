//! A cross-thread wake-up for a task on a worker's runtime: the controller rings it after
//! sending a route change, the main thread after a shutdown signal. No polling tick.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::{Poll, Waker};

/// Wakes a task on a worker's runtime from another thread. The sender pushes its message
/// on a channel first and rings second; the task drains the channel after every wake-up,
/// so no message is missed and nothing polls.
#[derive(Default)]
pub struct Doorbell {
    /// Set by `ring`, cleared by the waiting task when it wakes.
    rung: AtomicBool,
    /// The waiting task's waker. Only the controller and one task per worker touch it,
    /// once per route change, so a mutex costs nothing that matters.
    waker: Mutex<Option<Waker>>,
}

impl Doorbell {
    pub fn ring(&self) {
        self.rung.store(true, Ordering::Release);
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Waits until the bell has rung since the last wait returned.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.rung.swap(false, Ordering::Acquire) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            // A ring between the first check and storing the waker would find no waker:
            // check again now that it is stored.
            if self.rung.swap(false, Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_ring_before_the_wait_is_not_lost() {
        let bell = Arc::new(Doorbell::default());
        bell.ring();
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        runtime.block_on(bell.wait());
    }

    #[test]
    fn a_ring_from_another_thread_wakes_the_waiter() {
        let bell = Arc::new(Doorbell::default());
        let ringer = Arc::clone(&bell);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            ringer.ring();
        });
        let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        runtime.block_on(bell.wait());
        thread.join().unwrap();
    }
}
