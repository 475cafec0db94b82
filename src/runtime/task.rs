//! Spawning connection and stream tasks so that a panic ends only the task that panicked,
//! and the budget that makes a busy relay let its worker's other tasks run.
//!
//! monoio re-raises a task's panic on the worker thread, which would take every other
//! connection of that worker down with it. Input from the network must never panic (and
//! the codecs are fuzzed for it), but if a bug slips through, this is the second line.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Spawns `future` on the current worker, containing any panic it raises.
pub(crate) fn spawn_contained<F: Future<Output = ()> + 'static>(future: F) {
    monoio::spawn(ContainPanic(Box::pin(future)));
}

/// How many bytes a relay loop moves before it lets the worker's other tasks run.
/// With epoll, a read or write on a busy socket completes at once, so a relaying task
/// would otherwise never return to the event loop: new connections, route changes and
/// every other tunnel on that worker would wait for it (measured: new tunnels took 39 ms
/// to open beside one busy download).
const RELAY_BUDGET: usize = 256 * 1024;

/// A relay loop's allowance before it yields.
pub(crate) struct Budget(Cell<usize>);

impl Default for Budget {
    fn default() -> Self {
        Self(Cell::new(RELAY_BUDGET))
    }
}

impl Budget {
    /// Counts `bytes` moved; once the budget is spent, yields to the worker's other tasks
    /// (and to the event loop) before going on.
    pub(crate) async fn spend(&self, bytes: usize) {
        let left = self.0.get().saturating_sub(bytes.max(1));
        if left > 0 {
            self.0.set(left);
            return;
        }
        self.0.set(RELAY_BUDGET);
        yield_now().await;
    }
}

thread_local! {
    /// Tasks that yielded, to be woken by the pump once the tasks queued before it ran.
    static YIELDED: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
    /// The worker's yield pump, while it waits to be woken; `None` once a yielder has
    /// woken it (it is queued and will wake every yielder so far) or when no pump runs.
    static PUMP: RefCell<Option<Waker>> = const { RefCell::new(None) };
    /// Whether a yield pump runs on this thread at all.
    static PUMPED: Cell<bool> = const { Cell::new(false) };
    /// What the worker does at every yield (answer the controller, see [`on_yield`]).
    static ON_YIELD: RefCell<Option<Rc<dyn Fn()>>> = const { RefCell::new(None) };
}

/// Runs `hook` at every yield of a busy task on this thread, before it goes to the back
/// of the queue. The worker answers the controller's queued requests there: a route change
/// then waits for at most one budget of one relay (about 0.2 ms), not for its doorbell
/// task to come round behind every busy relay of the worker (0.5 to 1 ms with four).
/// The hook runs inside the yielding task's poll, so it must not await, and may only
/// touch state that no task holds borrowed across an await (clippy's
/// `await_holding_refcell_ref`, denied in CI, keeps that so for `RefCell`s).
pub(crate) fn on_yield(hook: Rc<dyn Fn()>) {
    ON_YIELD.with(|slot| *slot.borrow_mut() = Some(hook));
}

/// Puts the current task at the back of the worker's queue. (monoio runs a task that
/// wakes itself again at once, ahead of the others; so the yielder is woken by the
/// worker's [`yield_pump`] task instead, which is queued behind everyone else.)
pub(crate) async fn yield_now() {
    yield_to_others(true).await
}

/// Puts the current task at the back of the worker's queue, as [`yield_now`], without
/// running the yield hook: for the worker's request task between two requests (the hook
/// would answer the next one at once, before anyone else ran).
pub(crate) async fn step_aside() {
    yield_to_others(false).await
}

async fn yield_to_others(run_hook: bool) {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        // Cloned out first: the hook may itself be the reason for a yield elsewhere.
        if let Some(hook) = ON_YIELD
            .with(|slot| slot.borrow().clone())
            .filter(|_| run_hook)
        {
            hook();
        }
        if !PUMPED.get() {
            // No pump on this thread (the controller, tests): just go round again.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        YIELDED.with(|list| list.borrow_mut().push(cx.waker().clone()));
        // The first yielder of a round wakes the pump; later ones find it already
        // queued, and it wakes them all. (Before this, a later yielder woke itself and
        // ran on at once: under epoll one busy relay of two never yielded, and route
        // changes waited for it to fill its socket, 6 to 10 ms.)
        if let Some(pump) = PUMP.with(|pump| pump.borrow_mut().take()) {
            pump.wake();
        }
        Poll::Pending
    })
    .await
}

/// The worker's task that wakes yielded tasks; spawn one per worker runtime.
pub(crate) async fn yield_pump() {
    /// The pump goes only with its runtime: forget it and the tasks that waited for it
    /// (they go with the runtime too; waking them now would schedule onto a runtime that
    /// is being dropped), so that a later runtime on this thread starts clean.
    struct Stopped;
    impl Drop for Stopped {
        fn drop(&mut self) {
            // `try_with`: the pump may be dropped while the thread's locals are.
            let _ = PUMPED.try_with(|pumped| pumped.set(false));
            let _ = PUMP.try_with(|pump| pump.borrow_mut().take());
            let _ = YIELDED.try_with(|list| list.borrow_mut().clear());
        }
    }
    PUMPED.set(true);
    let _stopped = Stopped;
    poll_fn(|cx| {
        let woken = YIELDED.with(|list| std::mem::take(&mut *list.borrow_mut()));
        for waker in woken {
            waker.wake();
        }
        PUMP.with(|pump| *pump.borrow_mut() = Some(cx.waker().clone()));
        Poll::<()>::Pending
    })
    .await
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

#[cfg(test)]
mod budget_tests {
    use std::cell::Cell;
    use std::future::Future;
    use std::rc::Rc;

    /// Runs `body` on an epoll runtime whose yield pump has started, as on a worker.
    fn run_with_pump(body: impl Future<Output = ()>) {
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        runtime.block_on(async move {
            monoio::spawn(super::yield_pump());
            // Let the pump start, as it does long before a worker relays anything.
            monoio::spawn(async {}).await;
            body.await
        });
    }

    #[test]
    fn a_busy_loop_with_a_budget_lets_its_neighbours_run() {
        let neighbour_ran_at = Rc::new(Cell::new(None));
        run_with_pump({
            let neighbour_ran_at = Rc::clone(&neighbour_ran_at);
            async move {
                let progress = Rc::new(Cell::new(0usize));
                let seen = Rc::clone(&progress);
                let flag = Rc::clone(&neighbour_ran_at);
                monoio::spawn(async move { flag.set(Some(seen.get())) });
                // A "relay" whose every operation completes at once: without the budget
                // it would finish all 4 MiB before the neighbour ran.
                let budget = super::Budget::default();
                for _ in 0..1024 {
                    progress.set(progress.get() + 4096);
                    budget.spend(4096).await;
                }
            }
        });
        let at = neighbour_ran_at.get().expect("the neighbour never ran");
        assert!(at <= 256 * 1024, "the neighbour waited for {at} bytes");
    }

    #[test]
    fn the_yield_hook_runs_at_every_yield_before_the_task_steps_aside() {
        let progress = Rc::new(Cell::new(0usize));
        let seen = Rc::new(std::cell::RefCell::new(Vec::new()));
        run_with_pump({
            let (progress, seen) = (Rc::clone(&progress), Rc::clone(&seen));
            async move {
                let at = Rc::clone(&progress);
                super::on_yield(Rc::new(move || seen.borrow_mut().push(at.get())));
                let budget = super::Budget::default();
                for _ in 0..1024 {
                    progress.set(progress.get() + 4096);
                    budget.spend(4096).await;
                }
            }
        });
        super::ON_YIELD.with(|slot| slot.borrow_mut().take());
        let want: Vec<usize> = (1..=16).map(|i| i * 256 * 1024).collect();
        assert_eq!(*seen.borrow(), want);
    }

    #[test]
    fn two_busy_loops_both_yield() {
        let seen_by_neighbour = Rc::new(Cell::new(None));
        run_with_pump({
            let seen_by_neighbour = Rc::clone(&seen_by_neighbour);
            async move {
                let progress = [Rc::new(Cell::new(0usize)), Rc::new(Cell::new(0usize))];
                let relays: Vec<_> = progress
                    .iter()
                    .map(|mine| {
                        let mine = Rc::clone(mine);
                        monoio::spawn(async move {
                            let budget = super::Budget::default();
                            for _ in 0..1024 {
                                mine.set(mine.get() + 4096);
                                budget.spend(4096).await;
                            }
                        })
                    })
                    .collect();
                // Both relays start and spend their first budget before this runs.
                let seen = progress.clone();
                monoio::spawn(async move {
                    seen_by_neighbour.set(Some((seen[0].get(), seen[1].get())));
                });
                for relay in relays {
                    relay.await;
                }
            }
        });
        // The second loop to yield in a round finds the pump already woken; it must
        // still wait its turn instead of going round again at once.
        let (a, b) = seen_by_neighbour.get().expect("the neighbour never ran");
        assert!(
            a <= 512 * 1024 && b <= 512 * 1024,
            "the neighbour waited for {a} and {b} bytes"
        );
    }
}
