//! Start-up: turns a [`Config`] into running threads. It builds the TLS configuration,
//! binds every listener before any thread starts (so a bad address or a busy port fails
//! the start with a clear message), starts one worker per core and the controller thread,
//! and announces the bound addresses on one line of standard error.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{self, Config, Secret, TlsMode};
use crate::control::broadcast::{self, Request, WorkerLink};
use crate::control::controller::{Controller, Options};
use crate::control::panel::{self, Answer, Ask};
use crate::control::state::StateFile;
use crate::control::status::ServerFacts;
use crate::net::listen;
use crate::net::tls;
use crate::runtime::doorbell::Doorbell;
use crate::tunnel;
use crate::worker::{self, ConnectionLimit, Driver, Settings, WorkerSpec};

/// Bound on the controller's last collection of counters at shutdown.
const EXIT_COLLECT: Duration = Duration::from_secs(3);

/// A secret as given: the value itself, or the trimmed contents of its file, which must
/// not be empty (`flag` names the file's flag in the error).
fn read_secret(secret: Option<&Secret>, flag: &str) -> Result<Option<String>, String> {
    match secret {
        None => Ok(None),
        Some(Secret::Value(s)) => Ok(Some(s.clone())),
        Some(Secret::File(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
            let value = text.trim().to_string();
            if value.is_empty() {
                return Err(format!("{flag} {}: the file is empty", path.display()));
            }
            Ok(Some(value))
        }
    }
}

/// Threads for name resolution of destinations, shared by all workers.
const RESOLVER_THREADS: usize = 2;

/// A started server: its bound addresses and its threads.
pub struct Running {
    /// The TCP data address, when there is one (not with `-bind-unix` alone).
    pub data_addr: Option<SocketAddr>,
    pub controller_addr: SocketAddr,
    workers: Vec<JoinHandle<()>>,
    /// One per worker: rung to stop accepting and drain.
    shutdown: Vec<Arc<Doorbell>>,
    /// How many workers have drained (and wait for their counters to be collected).
    drained: Arc<AtomicUsize>,
    /// One per worker: rung once their counters are collected, to let them end.
    exit: Vec<Arc<Doorbell>>,
    /// To the controller thread: the last collection of counters at shutdown.
    controller: panel::ControllerLink,
    grace: Duration,
    /// The certificate files, to reload on SIGHUP and when they change.
    cert_files: Option<tls::CertFiles>,
    /// How often to look at the certificate files; zero for only on SIGHUP.
    cert_check: Duration,
    /// Every worker, to hand a reloaded certificate to.
    links: Vec<WorkerLink>,
    /// Shared with the controller: a reload updates the certificate's expiry there.
    facts: Arc<ServerFacts>,
}

impl Running {
    /// Serves until SIGTERM or SIGINT, reloading the certificate on SIGHUP or when its
    /// files change; then drains: workers stop accepting, open tunnels get the grace
    /// period to finish, and the exit status is 0. A second signal during the drain ends
    /// it at once with status 1. Returns the exit status.
    pub fn serve_until_signal(mut self) -> i32 {
        let poll =
            (self.cert_files.is_some() && !self.cert_check.is_zero()).then_some(self.cert_check);
        let signal = loop {
            match wait_signal(poll) {
                Some(libc::SIGHUP) => self.reload_certificate(true),
                Some(signal) => break signal,
                None => self.reload_certificate(false),
            }
        };
        log::warn!(
            "signal {signal}: no longer accepting; open tunnels have {:?} to finish (a second signal exits at once)",
            self.grace
        );
        for bell in &self.shutdown {
            bell.ring();
        }
        // The workers give up on open connections at the grace period; allow them a moment
        // beyond it to close.
        let deadline = Instant::now() + self.grace + Duration::from_secs(2);
        let mut collected = false;
        while Instant::now() < deadline {
            if self.workers.iter().all(|w| w.is_finished()) {
                return 0;
            }
            if !collected && self.drained.load(Ordering::Acquire) == self.workers.len() {
                // Every tunnel is closed and every worker still answers: what they
                // counted goes to the billing ledger (and the state file) before they end.
                collected = true;
                if let Answer::Failed(why) = self.controller.ask_within(Ask::Collect, EXIT_COLLECT)
                {
                    log::error!("the last counts could not be kept for billing: {why}");
                }
                for bell in &self.exit {
                    bell.ring();
                }
            }
            if let Some(signal) = wait_signal(Some(Duration::from_millis(50))) {
                log::warn!("signal {signal} while draining: exiting now");
                return 1;
            }
        }
        0
    }
}

impl Running {
    /// Loads the certificate files again if they changed (or always, with `force`) and
    /// hands the new configuration to every worker. A broken pair keeps the old one.
    fn reload_certificate(&mut self, force: bool) {
        let Some(files) = &mut self.cert_files else {
            if force {
                log::warn!("SIGHUP: no certificate files to reload");
            }
            return;
        };
        match files.reload(force) {
            None => {}
            Some(Ok(config)) => {
                broadcast::ask_all(&self.links, Request::Tls(config));
                self.facts.set_certificate_expiry(files.not_after());
                log::warn!(
                    "certificate reloaded: new handshakes use it, open tunnels are untouched"
                );
            }
            Some(Err(e)) => log::error!("certificate reload failed, keeping the old one: {e}"),
        }
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread and every thread it starts
/// later, so that only [`wait_signal`] receives them.
fn block_signals() {
    let set = handled_signals();
    // SAFETY: pthread_sigmask on this thread with a set we own.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// SIGINT, SIGTERM and SIGHUP.
fn handled_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a value we own; an all-zero sigset_t is valid input
    // to sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Waits for SIGINT, SIGTERM or SIGHUP (blocked by [`block_signals`]), at most `timeout`
/// if given.
fn wait_signal(timeout: Option<Duration>) -> Option<i32> {
    let set = handled_signals();
    // SAFETY: sigwaitinfo/sigtimedwait read the set and a timespec we own.
    unsafe {
        loop {
            let signal = match timeout {
                None => libc::sigwaitinfo(&set, std::ptr::null_mut()),
                Some(t) => {
                    let spec = libc::timespec {
                        tv_sec: t.as_secs() as libc::time_t,
                        tv_nsec: t.subsec_nanos() as libc::c_long,
                    };
                    libc::sigtimedwait(&set, std::ptr::null_mut(), &spec)
                }
            };
            if signal > 0 {
                return Some(signal);
            }
            let err = std::io::Error::last_os_error().raw_os_error();
            if err == Some(libc::EAGAIN) {
                return None;
            }
            // EINTR: another signal interrupted the wait; wait again.
        }
    }
}

/// Gives the calling thread (the controller) a higher scheduling priority than the
/// workers, so a route change is not kept waiting behind relaying threads that have work
/// for every time slice. Without the privilege this quietly does nothing.
fn raise_priority() {
    // SAFETY: gettid and setpriority on this thread only.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, -10) != 0 {
            log::debug!(
                "controller thread priority unchanged: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// The default connection cap: what the open-file limit allows, two descriptors per
/// plain tunnel, with some kept back for the controller and the process itself.
fn default_max_conns() -> usize {
    // SAFETY: getrlimit on a stack struct we own.
    let limit = unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        limit.rlim_cur
    };
    (limit.saturating_sub(256) / 2).clamp(64, 1 << 24) as usize
}

/// Starts the server. Every error names the file, address or flag involved.
pub fn start(config: Config) -> Result<Running, String> {
    let mut cert_files = None;
    let mut certificate_expiry = None;
    let tls_config = match &config.tls {
        TlsMode::Files { cert, key } => {
            let (files, tls_config) = tls::CertFiles::load(cert, key)?;
            certificate_expiry = files.not_after();
            cert_files = Some(files);
            Some(tls_config)
        }
        TlsMode::SelfSigned { name } => {
            log::warn!(
                "no -cert/-key given: listening TLS with a self-signed certificate for {name:?}; clients must skip verification"
            );
            let (tls_config, expiry) = tls::self_signed_with_expiry(name)?;
            certificate_expiry = expiry;
            Some(tls_config)
        }
        TlsMode::Plain => None,
    };

    let controller_addr =
        config::listen_addr(&config.controller).map_err(|e| format!("-c: {e}"))?;
    let (listeners, data_addr) = if config.bind.is_empty() {
        ((0..config.workers).map(|_| None).collect::<Vec<_>>(), None)
    } else {
        let addr = config::listen_addr(&config.bind).map_err(|e| format!("-b: {e}"))?;
        let listeners = listen::bind_data_listeners(addr, config.workers, config.fast_open)
            .map_err(|e| format!("-b {}: {e}", config.bind))?;
        let addr = listeners[0]
            .local_addr()
            .map_err(|e| format!("-b {}: {e}", config.bind))?;
        (listeners.into_iter().map(Some).collect(), Some(addr))
    };
    let unix_listener = match &config.bind_unix {
        Some(path) => Some(listen::bind_unix(path).map_err(|e| format!("-bind-unix {path}: {e}"))?),
        None => None,
    };
    let controller_listener = listen::bind_socket(controller_addr, false)
        .map_err(|e| format!("-c {}: {e}", config.controller))?;
    let controller_addr = controller_listener
        .local_addr()
        .map_err(|e| format!("-c {}: {e}", config.controller))?;

    let secret = read_secret(config.secret.as_ref(), "-secret-file")?;
    if secret.is_none() && !controller_addr.ip().is_loopback() {
        log::warn!(
            "the controller listens on {controller_addr}, beyond this host, without a secret: anyone who can reach it can add users; set -secret or -secret-file"
        );
    }
    let panel_token = read_secret(
        config.panel.as_ref().and_then(|p| p.token.as_ref()),
        "-panel-token-file",
    )?;
    let (state, initial_users) = match &config.state {
        Some(path) => {
            let (state, users) = StateFile::open(path)?;
            (Some(state), users)
        }
        None => (None, Vec::new()),
    };
    let settings = Settings {
        tunnel: tunnel::Settings {
            mux_default: config.mux,
            idle_timeout: config.timeout,
            head_timeout: config.head_timeout,
            fallback: config.fallback.as_deref().map(Arc::from),
            proxy_protocol: config.proxy_protocol,
        },
        grace: config.grace,
        driver: if config.io_uring {
            Driver::IoUring
        } else {
            Driver::Epoll
        },
    };
    let max_conns = if config.max_conns == 0 {
        default_max_conns()
    } else {
        config.max_conns
    };
    let limit = Arc::new(ConnectionLimit::new(max_conns));
    block_signals();
    let cpus = worker::allowed_cpus();
    let blocking_pool = monoio::blocking::DefaultThreadPool::new(RESOLVER_THREADS);
    let mut links = Vec::with_capacity(config.workers);
    let mut workers = Vec::with_capacity(config.workers);
    let mut shutdown = Vec::with_capacity(config.workers);
    let mut exit = Vec::with_capacity(config.workers);
    let drained = Arc::new(AtomicUsize::new(0));
    let mut inboxes = Vec::with_capacity(config.workers);
    for _ in 0..config.workers {
        let (link, inbox) = broadcast::worker_link();
        links.push(link);
        inboxes.push(inbox);
    }
    let mode = match &config.tls {
        TlsMode::Files { .. } => "tls",
        TlsMode::SelfSigned { .. } => "tls-self-signed",
        TlsMode::Plain => "plain",
    };
    let facts = Arc::new(ServerFacts {
        driver: match (config.io_uring, monoio::utils::detect_uring()) {
            (true, true) => "io_uring",
            (true, false) => "epoll(io_uring-unavailable)",
            (false, _) => "epoll",
        }
        .to_string(),
        workers: config.workers,
        mode,
        started: std::time::SystemTime::now(),
        certificate_expiry: Default::default(),
    });
    facts.set_certificate_expiry(certificate_expiry);
    // The controller queues the restored users to every worker before any worker starts,
    // so they route from the first connection.
    let users = initial_users.len();
    // Other threads ask the controller through this: the panel sync, and shutdown's last
    // collection of the counters.
    let (controller_link, inbox) = panel::link();
    let panel = config.panel.as_ref().map(|panel_config| {
        let health = Arc::new(panel::Health::default());
        let link = controller_link.clone();
        let sync = panel::SyncLoop::new(panel_config, panel_token, link, Arc::clone(&health));
        (sync, health)
    });
    let (panel_sync, panel_health) = panel.unzip();
    let controller = Controller::new(
        links.clone(),
        Options {
            secret,
            state,
            initial_users,
            per_user_metrics: config.metrics_per_user,
            facts: Some(Arc::clone(&facts)),
            inbox: Some(inbox),
            panel_health,
        },
    );
    for (index, (listener, inbox)) in listeners.into_iter().zip(inboxes).enumerate() {
        let bell = Arc::new(Doorbell::default());
        shutdown.push(Arc::clone(&bell));
        let exit_bell = Arc::new(Doorbell::default());
        exit.push(Arc::clone(&exit_bell));
        let spec = WorkerSpec {
            index,
            cpu: (!cpus.is_empty()).then(|| cpus[index % cpus.len()]),
            listener,
            unix_listener: match &unix_listener {
                Some(l) => Some(l.try_clone().map_err(|e| format!("-bind-unix: {e}"))?),
                None => None,
            },
            inbox,
            tls: tls_config.as_ref().map(Arc::clone),
            settings: settings.clone(),
            blocking_pool: blocking_pool.clone(),
            shutdown: bell,
            drained: Arc::clone(&drained),
            exit: exit_bell,
            limit: Arc::clone(&limit),
        };
        workers.push(worker::spawn(spec).map_err(|e| format!("starting worker {index}: {e}"))?);
    }
    let head_timeout = config.head_timeout;
    let controller_conns = config.controller_conns;
    std::thread::Builder::new()
        .name("controller".into())
        .spawn(move || {
            raise_priority();
            if let Err(e) = crate::control::controller::run(
                controller_listener,
                controller,
                head_timeout,
                controller_conns,
            ) {
                log::error!("internal: controller: {e}");
                std::process::exit(1);
            }
        })
        .map_err(|e| format!("starting the controller: {e}"))?;
    if let Some(sync) = panel_sync {
        sync.spawn()
            .map_err(|e| format!("starting the panel sync: {e}"))?;
    }

    let data = match (&data_addr, &config.bind_unix) {
        (Some(addr), Some(path)) => format!("{addr} data_unix={path}"),
        (Some(addr), None) => addr.to_string(),
        (None, Some(path)) => format!("none data_unix={path}"),
        (None, None) => "none".to_string(),
    };
    let panel = match &config.panel {
        Some(p) => format!(
            " panel={} panel_kind={}",
            p.url,
            match p.kind {
                config::PanelKind::Mtt => "mtt",
                config::PanelKind::UniProxy => "uniproxy",
            }
        ),
        None => String::new(),
    };
    crate::logging::ready_line(
        config.log_format,
        &format!(
            "mtt-mu-server ready: data={data} controller={controller_addr} workers={} mode={mode} mux_default={} timeout={:?} max_conns={max_conns} users={users} driver={}{panel}",
            config.workers, config.mux, config.timeout, facts.driver
        ),
    );
    Ok(Running {
        data_addr,
        controller_addr,
        workers,
        shutdown,
        drained,
        exit,
        controller: controller_link,
        grace: config.grace,
        cert_files,
        cert_check: config.cert_check,
        links,
        facts,
    })
}
