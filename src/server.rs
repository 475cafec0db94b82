//! Start-up: turns a [`Config`] into running threads. It builds the TLS configuration,
//! binds every listener before any thread starts (so a bad address or a busy port fails
//! the start with a clear message), starts one worker per core and the controller thread,
//! and announces the bound addresses on one line of standard error.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::{self, Config, TlsMode};
use crate::routes;
use crate::tls;
use crate::worker::{self, Settings, WorkerSpec};

/// Threads for name resolution of destinations, shared by all workers.
const RESOLVER_THREADS: usize = 2;

/// A started server: its bound addresses and its threads.
pub struct Running {
    pub data_addr: SocketAddr,
    pub controller_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    /// Blocks until every thread has ended, which in normal operation is never.
    pub fn wait(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Starts the server. Every error names the file, address or flag involved.
pub fn start(config: Config) -> Result<Running, String> {
    let tls_config = match &config.tls {
        TlsMode::Files { cert, key } => Some(tls::from_files(cert, key)?),
        TlsMode::SelfSigned { name } => {
            log::warn!(
                "no -cert/-key given: listening TLS with a self-signed certificate for {name:?}; clients must skip verification"
            );
            Some(tls::self_signed(name)?)
        }
        TlsMode::Plain => None,
    };

    let data_addr = config::listen_addr(&config.bind).map_err(|e| format!("-b: {e}"))?;
    let controller_addr =
        config::listen_addr(&config.controller).map_err(|e| format!("-c: {e}"))?;
    let listeners = worker::bind_data_listeners(data_addr, config.workers)
        .map_err(|e| format!("-b {}: {e}", config.bind))?;
    let data_addr = listeners[0]
        .local_addr()
        .map_err(|e| format!("-b {}: {e}", config.bind))?;
    let controller_listener = worker::bind_socket(controller_addr, false)
        .map_err(|e| format!("-c {}: {e}", config.controller))?;
    let controller_addr = controller_listener
        .local_addr()
        .map_err(|e| format!("-c {}: {e}", config.controller))?;

    let settings = Settings {
        mux_default: config.mux,
        idle_timeout: config.timeout,
    };
    let cpus = worker::allowed_cpus();
    let blocking_pool = monoio::blocking::DefaultThreadPool::new(RESOLVER_THREADS);
    let mut links = Vec::with_capacity(config.workers);
    let mut threads = Vec::with_capacity(config.workers + 1);
    for (index, listener) in listeners.into_iter().enumerate() {
        let (link, inbox) = routes::worker_link();
        links.push(link);
        let spec = WorkerSpec {
            index,
            cpu: (!cpus.is_empty()).then(|| cpus[index % cpus.len()]),
            listener,
            inbox,
            tls: tls_config.as_ref().map(Arc::clone),
            settings: settings.clone(),
            blocking_pool: blocking_pool.clone(),
        };
        threads.push(worker::spawn(spec).map_err(|e| format!("starting worker {index}: {e}"))?);
    }
    let controller = std::thread::Builder::new()
        .name("controller".into())
        .spawn(move || {
            if let Err(e) = crate::controller::run(controller_listener, links) {
                log::error!("internal: controller: {e}");
                std::process::exit(1);
            }
        })
        .map_err(|e| format!("starting the controller: {e}"))?;
    threads.push(controller);

    let mode = match &config.tls {
        TlsMode::Files { .. } => "tls",
        TlsMode::SelfSigned { .. } => "tls-self-signed",
        TlsMode::Plain => "plain",
    };
    eprintln!(
        "mtt-mu-server ready: data={data_addr} controller={controller_addr} workers={} mode={mode} mux_default={} timeout={:?}",
        config.workers, config.mux, config.timeout
    );
    Ok(Running {
        data_addr,
        controller_addr,
        threads,
    })
}
