//! The `mtt-mu-server` binary: Go-style flags, logging (set up by [`mtt_mu_server::logging`]),
//! start, exit codes.
//!
//! Exit status: 0 after `-h` and after a graceful shutdown (SIGTERM or SIGINT); 2 for a
//! bad flag or value (as Go's `flag` package); 1 when the server cannot start (bad
//! certificate, address in use), with a message naming the file or address, or when a
//! second signal cuts the drain short.

use mtt_mu_server::config::{self, ArgsError};
use mtt_mu_server::server;

/// Lets the process open as many sockets as its hard limit allows.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a stack struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let program = args
        .first()
        .and_then(|p| std::path::Path::new(p).file_name())
        .and_then(|name| name.to_str())
        .unwrap_or("mtt-mu-server")
        .to_string();
    let config = match config::parse_args(&program, args.get(1..).unwrap_or_default()) {
        Ok(config) => config,
        Err(ArgsError::Help(text)) => {
            print!("{text}");
            std::process::exit(0);
        }
        Err(ArgsError::Usage(text)) => {
            eprint!("{text}");
            std::process::exit(2);
        }
    };
    mtt_mu_server::logging::install(config.verbose, config.log_format);
    raise_fd_limit();
    match server::start(config) {
        Ok(running) => std::process::exit(running.serve_until_signal()),
        Err(e) => {
            eprintln!("{program}: {e}");
            std::process::exit(1);
        }
    }
}
