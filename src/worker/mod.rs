//! Worker threads: one OS thread per worker, pinned to a core, each running its own monoio
//! runtime (io_uring, or epoll where io_uring is forbidden) with its own SO_REUSEPORT
//! listener on the data address, its own view of the routes (handles to the controller's
//! immutable shards), and nothing shared with other workers on the data path.
//!
//! A worker answers the controller (route changes, counters, kicks) from a task woken by its
//! doorbell, and, while its relays are busy, at each relay's budget yield
//! ([`crate::runtime::task::on_yield`]): a change then waits for at most one relay's 256 KiB, not
//! for the request task's turn behind all of them. It answers one request a turn: a large
//! route change comes as many slices, and its tunnels run between them.
//!
//! Also here: binding the listeners (refusing to start when another process already holds
//! the port, which SO_REUSEPORT would otherwise allow silently) and containing a panic in
//! one connection's task so the worker's other connections go on.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io;
use std::net::TcpListener as StdListener;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use monoio::net::TcpListener;

use crate::control::broadcast::{self, Reply, Request, WorkerInbox};
use crate::control::registry::{Refusal, StatsTable};
use crate::control::routes::RouteView;
use crate::net::transport::DataListener;
use crate::runtime::doorbell::Doorbell;
use crate::tunnel::{self, Context};

/// How a worker runs, fixed at start-up.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// What the worker's connections need (lent to them in their [`Context`]).
    pub tunnel: tunnel::Settings,
    /// After a shutdown signal, how long open connections may finish.
    pub grace: Duration,
    /// The I/O driver of the worker runtimes (`-driver`).
    pub driver: Driver,
}

/// Which kernel interface the workers use for I/O. io_uring is the default: measured on
/// the machines this was built on (BENCHMARKS.md), epoll cost a little less CPU per byte,
/// but beside heavy traffic a route change took 15 ms instead of under 1 ms, and a new
/// tunnel 6 ms instead of 1.5: a busy epoll worker rarely returns to its event loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Driver {
    Epoll,
    IoUring,
}

/// The process-wide cap on concurrent data-port connections, shared by all workers: one
/// atomic add per accepted connection, nothing per byte.
pub(crate) struct ConnectionLimit {
    /// Connections open now.
    open: AtomicUsize,
    /// Most allowed at once.
    max: usize,
}

impl ConnectionLimit {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            open: AtomicUsize::new(0),
            max,
        }
    }

    /// A place for one more connection, or `None` when all are taken.
    pub(crate) fn acquire(self: &Arc<Self>) -> Option<Permit> {
        let previous = self.open.fetch_add(1, Ordering::Relaxed);
        if previous >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Permit(Arc::clone(self)))
    }
}

/// One connection's place under the [`ConnectionLimit`]; freed when dropped.
pub(crate) struct Permit(Arc<ConnectionLimit>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connections one worker has open, so that draining knows when it is done.
#[derive(Default)]
struct Active {
    count: Cell<usize>,
    /// The draining accept loop, waiting for `count` to reach zero.
    waiter: RefCell<Option<Waker>>,
}

/// Counts one connection in [`Active`] while it lives.
struct ActiveGuard(Rc<Active>);

impl ActiveGuard {
    fn new(active: &Rc<Active>) -> Self {
        active.count.set(active.count.get() + 1);
        Self(Rc::clone(active))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let count = self.0.count.get() - 1;
        self.0.count.set(count);
        if count == 0 {
            if let Some(waker) = self.0.waiter.borrow_mut().take() {
                waker.wake();
            }
        }
    }
}

/// What a worker does for the controller: everything it changes is in its connections'
/// [`Context`], which only this thread touches.
trait Answer {
    fn can_answer(&self) -> bool;
    fn answer(&self, request: &Request) -> Reply;
}

impl Answer for Context {
    /// Whether nothing [`Answer::answer`] borrows is borrowed now.
    fn can_answer(&self) -> bool {
        self.routes.try_borrow_mut().is_ok()
            && self.tls.try_borrow_mut().is_ok()
            && !self.stats.in_use()
    }

    /// Answers one request from the controller.
    fn answer(&self, request: &Request) -> Reply {
        match request {
            Request::Routes(update) => {
                let started = std::time::Instant::now();
                let cpu = thread_cpu_time();
                self.routes.borrow_mut().install(update);
                // Open tunnels of these users take their new limits (or lose them).
                for route in update.upserted() {
                    self.stats.attach(route.path(), route.policy());
                }
                // This worker's tunnels waited that long (BENCHMARKS.md measures it so); the
                // thread's CPU time tells the step's own cost from time the kernel gave
                // to other threads meanwhile.
                log::debug!(
                    "route update step: {update:?} in {:?} ({:?} of CPU)",
                    started.elapsed(),
                    thread_cpu_time().saturating_sub(cpu)
                );
                Reply::Applied
            }
            Request::Stats { paths, reset } => {
                Reply::Stats(self.stats.collect(paths.as_deref(), *reset))
            }
            Request::Kick(paths) => Reply::Kicked(self.stats.kick(paths)),
            Request::Metrics => Reply::Metrics(self.stats.metrics.snapshot()),
            Request::Tls(config) => {
                *self.tls.borrow_mut() = Some(Arc::clone(config));
                Reply::Applied
            }
        }
    }
}

/// What a worker thread is started with.
pub(crate) struct WorkerSpec {
    pub index: usize,
    /// The core to pin to, if pinning is possible.
    pub cpu: Option<usize>,
    /// This worker's own SO_REUSEPORT listener on `-b`, if there is one.
    pub listener: Option<StdListener>,
    /// The unix-socket listener (`-bind-unix`), shared by all workers, if there is one.
    pub unix_listener: Option<std::os::unix::net::UnixListener>,
    pub inbox: WorkerInbox,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub settings: Settings,
    /// Runs blocking work (name resolution) off the worker threads; shared by all.
    pub blocking_pool: monoio::blocking::DefaultThreadPool,
    /// Rung once to stop accepting and drain.
    pub shutdown: Arc<Doorbell>,
    /// Counts the workers that have drained; start-up collects their counters then.
    pub drained: Arc<AtomicUsize>,
    /// Rung once the counters are collected: the worker may end (its thread, and with it
    /// the counters, go).
    pub exit: Arc<Doorbell>,
    /// The process-wide connection cap.
    pub limit: Arc<ConnectionLimit>,
}

/// Starts a worker thread. It runs until the process exits.
pub(crate) fn spawn(spec: WorkerSpec) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("worker-{}", spec.index))
        .spawn(move || {
            if let Some(cpu) = spec.cpu {
                pin_to_cpu(cpu);
            }
            let index = spec.index;
            let failed = |e: io::Error| -> ! {
                log::error!("internal: worker {index}: runtime: {e}");
                std::process::exit(1);
            };
            let pool = Box::new(spec.blocking_pool.clone());
            match spec.settings.driver {
                // io_uring where the kernel allows it, else epoll (FusionDriver decides).
                Driver::IoUring => monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .attach_thread_pool(pool)
                    .build()
                    .unwrap_or_else(|e| failed(e))
                    .block_on(run(spec)),
                Driver::Epoll => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .enable_timer()
                    .attach_thread_pool(pool)
                    .build()
                    .unwrap_or_else(|e| failed(e))
                    .block_on(run(spec)),
            }
        })
}

async fn run(spec: WorkerSpec) {
    let mut listeners = Vec::new();
    if let Some(listener) = spec.listener {
        match TcpListener::from_std(listener) {
            Ok(listener) => listeners.push(DataListener::Tcp(listener)),
            Err(e) => {
                log::error!("internal: worker {}: listener: {e}", spec.index);
                std::process::exit(1);
            }
        }
    }
    if let Some(listener) = spec.unix_listener {
        match monoio::net::UnixListener::from_std(listener) {
            Ok(listener) => listeners.push(DataListener::Unix(listener)),
            Err(e) => {
                log::error!("internal: worker {}: unix listener: {e}", spec.index);
                std::process::exit(1);
            }
        }
    }
    let grace = spec.settings.grace;
    let worker = Rc::new(Context {
        routes: RefCell::new(RouteView::new()),
        tls: RefCell::new(spec.tls),
        settings: spec.settings.tunnel,
        stats: StatsTable::default(),
    });
    // Routes loaded from the state file are queued already: apply them before accepting.
    let index = spec.index;
    broadcast::drain(&spec.inbox, index, &mut |request| worker.answer(request));
    let inbox = Rc::new(spec.inbox);
    let answering = Rc::clone(&worker);
    let requests = Rc::clone(&inbox);
    monoio::spawn(async move {
        broadcast::serve_requests(&requests, index, |request| answering.answer(request)).await
    });
    // A busy worker answers at its relays' yields too, sooner than the task above.
    let answering = Rc::clone(&worker);
    let requests = Rc::clone(&inbox);
    crate::runtime::task::on_yield(Rc::new(move || {
        // The hook runs inside a relay's poll: should anything there hold what answering
        // needs, leave the requests to the task above rather than panic on a borrow.
        if !requests.requests.is_empty() && answering.can_answer() {
            // One request per yield: a large change comes in slices, and the relay that
            // yielded waits for one slice only.
            broadcast::answer_one(&requests, index, &mut |request| answering.answer(request));
        }
    }));
    // Busy relays yield through this (see task::Budget).
    monoio::spawn(crate::runtime::task::yield_pump());
    // Idle plain tunnels are found by one sweep per worker, not a timer per tunnel.
    let sweeping = Rc::clone(&worker);
    monoio::spawn(async move {
        let timeout = sweeping.settings.idle_timeout;
        let every = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        loop {
            monoio::time::sleep(every).await;
            sweeping.stats.sweep(monoio::time::Instant::now(), timeout);
        }
    });
    let active = Rc::new(Active::default());
    {
        let mut stop = pin!(spec.shutdown.wait());
        // One accept in flight per listener, polled together.
        let mut accepts: Vec<_> = listeners.iter().map(|l| Box::pin(l.accept())).collect();
        loop {
            let accepted = poll_fn(|cx| {
                if stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                for (i, accept) in accepts.iter_mut().enumerate() {
                    if let Poll::Ready(result) = accept.as_mut().poll(cx) {
                        return Poll::Ready(Some((i, result)));
                    }
                }
                Poll::Pending
            })
            .await;
            let accepted = accepted.map(|(i, result)| {
                accepts[i] = Box::pin(listeners[i].accept());
                result
            });
            match accepted {
                None => break,
                Some(Ok((stream, peer))) => {
                    let Some(permit) = spec.limit.acquire() else {
                        // Over the cap: closing at once is the cheapest refusal.
                        worker.stats.metrics.refuse(Refusal::OverCapacity);
                        log::debug!("client {peer}: refused, connection limit reached");
                        continue;
                    };
                    let guard = ActiveGuard::new(&active);
                    let worker = Rc::clone(&worker);
                    // The connection's future is made inside the task: made outside and
                    // moved in, it would take room twice in the task (once as the moved
                    // value, once as the awaited one), 5 KiB more per open tunnel.
                    crate::runtime::task::spawn_contained(async move {
                        crate::tunnel::connection::handle(stream, peer, worker).await;
                        drop((guard, permit));
                    });
                }
                Some(Err(e)) => {
                    // Out of file descriptors, usually: back off rather than spin.
                    log::error!("internal: worker {}: accept: {e}", spec.index);
                    monoio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    // Draining: no more accepts; open connections get the grace period to finish.
    drop(listeners);
    let drained = poll_fn(|cx| {
        if active.count.get() == 0 {
            Poll::Ready(())
        } else {
            *active.waiter.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    });
    if monoio::time::timeout(grace, drained).await.is_err() {
        log::warn!(
            "worker {}: grace period over, closing {} open connections",
            spec.index,
            active.count.get()
        );
    }
    // The counters live on this thread: keep answering the controller until start-up has
    // collected them for billing (bounded, should nobody ring).
    spec.drained.fetch_add(1, Ordering::Release);
    let _ = monoio::time::timeout(EXIT_WAIT, spec.exit.wait()).await;
}

/// Longest a drained worker waits for its counters to be collected before it ends anyway.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `now` is.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET bounds-checks against its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            log::debug!("could not pin a worker to cpu {cpu}");
        }
    }
}

/// The CPUs this process may run on, in order.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: as above; sched_getaffinity writes at most size_of::<cpu_set_t>() bytes.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}
