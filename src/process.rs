//! What the process does for itself at start and stop, whatever components it runs: the
//! open-file limit, termination signals, the check that nobody serves its port, and failing
//! with a clear message.

/// Fails when something already listens on the address kiln is to serve.
///
/// The cores bind with SO_REUSEPORT, which the kernel lets a second kiln (of the same user)
/// share without an error: pushes would then be split between two servers. So the address
/// is first bound by a socket with SO_REUSEADDR alone, which any listening socket on it
/// refuses (EADDRINUSE) while connections in TIME_WAIT do not. A kiln killed a moment ago
/// keeps its listening sockets for a few milliseconds after it is reaped (io_uring releases
/// them asynchronously), so EADDRINUSE is retried for up to `PORT_PROBE_WAIT`.
pub fn probe_port(address: &str, port: u16) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    const PORT_PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
    let host = address.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<std::net::SocketAddr> = (if host.is_empty() { "0.0.0.0" } else { host }, port)
        .to_socket_addrs()
        .map_err(|e| format!("-server.http-listen-address={address}: {e}"))?
        .collect();
    let deadline = std::time::Instant::now() + PORT_PROBE_WAIT;
    for addr in addrs {
        loop {
            match bind_probe(addr) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    return Err(format!(
                        "{addr} is already served by another process; every core binds it with SO_REUSEPORT, which would silently share it"
                    ));
                }
                Err(e) => return Err(format!("cannot listen on {addr}: {e}")),
            }
        }
    }
    Ok(())
}

fn bind_probe(addr: std::net::SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // As the cores bind: `::` covers IPv4 too unless the system says otherwise.
        let _ = s.set_only_v6(false);
    }
    s.bind(&addr.into())
}

/// Raises the soft limit on open files to the hard limit, as Go's runtime does for
/// Pyroscope: every connection is a descriptor. Logged once; returns the limit in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on a valid, initialised `rlimit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open-file limit");
            return 1024;
        }
        let soft = lim.rlim_cur;
        // An unlimited hard limit is still capped by the kernel's fs.nr_open.
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok());
        let target = nr_open.map_or(lim.rlim_max, |n: u64| lim.rlim_max.min(n));
        if soft < target {
            let raised = libc::rlimit { rlim_cur: target, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                tracing::info!(from = soft, to = target, "raised the open-file limit to the hard limit");
                return target;
            }
            tracing::warn!(soft, hard = lim.rlim_max, error = %std::io::Error::last_os_error(), "cannot raise the open-file limit");
            return soft;
        }
        tracing::info!(limit = soft, "open-file limit (already the hard limit)");
        soft
    }
}

pub fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a local, initialised signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

pub fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` is an initialised signal set blocked in every thread.
    unsafe {
        libc::sigwait(set, &mut sig);
    }
    sig
}

pub fn fail(msg: String) -> ! {
    tracing::error!("{msg}");
    eprintln!("kiln: {msg}");
    std::process::exit(1);
}
