//! Binding listeners: the data port's SO_REUSEPORT listeners (one per worker, refusing to
//! start when another process already holds the port, which SO_REUSEPORT would otherwise
//! allow silently), TCP Fast Open, the unix-socket data listener, and the controller's
//! socket. Plain `std` sockets: each worker turns its own into a monoio listener.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::FromRawFd;

/// Listen backlog of each worker's socket.
const BACKLOG: i32 = 4096;

/// Binds `count` listeners on `addr` with SO_REUSEPORT, one per worker. Fails if another
/// socket (another copy of this server, say) already listens there. With port 0 the first
/// listener picks the port and the others join it.
pub(crate) fn bind_data_listeners(
    addr: SocketAddr,
    count: usize,
    fast_open: bool,
) -> io::Result<Vec<StdListener>> {
    if addr.port() != 0 {
        // Without SO_REUSEPORT this bind fails if anyone listens on the port, whether or not
        // they set SO_REUSEPORT themselves.
        match bind_socket(addr, false) {
            Ok(probe) => drop(probe),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{addr} is already in use by another process (is another copy of the server running?)"),
                ))
            }
            Err(e) => return Err(e),
        }
    }
    let first = bind_socket(addr, true)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(bind_socket(addr, true)?);
    }
    if fast_open {
        for listener in &listeners {
            enable_fast_open(listener)?;
        }
    }
    Ok(listeners)
}

/// TCP Fast Open on a listening socket, with a queue of pending fast opens.
fn enable_fast_open(listener: &StdListener) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let queue: libc::c_int = 1024;
    // SAFETY: setsockopt on a descriptor the listener owns, with a c_int we own.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            &queue as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Binds the unix-socket data listener at `path`, or in the abstract namespace for
/// `@name`. A stale socket file left by a crash is replaced; one that a live server
/// still answers on is not.
pub(crate) fn bind_unix(path: &str) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = UnixAddr::from_abstract_name(name.as_bytes())?;
        let listener = UnixListener::bind_addr(&addr)?;
        listener.set_nonblocking(true)?;
        return Ok(listener);
    }
    match UnixListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{path} is in use by a running server"),
                ));
            }
            std::fs::remove_file(path)?;
        }
        other => {
            let listener = other?;
            set_socket_mode(path)?;
            listener.set_nonblocking(true)?;
            return Ok(listener);
        }
    }
    let listener = UnixListener::bind(path)?;
    set_socket_mode(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Lets a local reverse proxy running as another user (nginx's www-data) connect.
fn set_socket_mode(path: &str) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
}

/// A listening socket; `[::]` accepts IPv4 too, and falls back to `0.0.0.0` where IPv6 is
/// off.
pub(crate) fn bind_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<StdListener> {
    match bind_raw(addr, reuse_port) {
        Err(e)
            if addr.ip().is_unspecified()
                && addr.is_ipv6()
                && e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
        {
            bind_raw(
                SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port()),
                reuse_port,
            )
        }
        other => other,
    }
}

fn bind_raw(addr: SocketAddr, reuse_port: bool) -> io::Result<StdListener> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket syscalls on a descriptor we own; the sockaddr structs are fully
    // initialised and their sizes passed exactly. On error the descriptor is closed by
    // the StdListener that owns it from the start.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let listener = StdListener::from_raw_fd(fd);
        let on: libc::c_int = 1;
        let off: libc::c_int = 0;
        let set = |level, name, value: &libc::c_int| {
            if libc::setsockopt(
                fd,
                level,
                name,
                value as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) != 0
            {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        set(libc::SOL_SOCKET, libc::SO_REUSEADDR, &on)?;
        if reuse_port {
            set(libc::SOL_SOCKET, libc::SO_REUSEPORT, &on)?;
        }
        let rc = match addr {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                libc::bind(
                    fd,
                    &sin as *const libc::sockaddr_in as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
            SocketAddr::V6(v6) => {
                if v6.ip().is_unspecified() {
                    set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &off)?;
                }
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: v6.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.ip().octets(),
                    },
                    sin6_scope_id: v6.scope_id(),
                };
                libc::bind(
                    fd,
                    &sin6 as *const libc::sockaddr_in6 as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::listen(fd, BACKLOG) != 0 {
            return Err(io::Error::last_os_error());
        }
        listener.set_nonblocking(true)?;
        Ok(listener)
    }
}
