//! `TCP_NODELAY` on the broker connections rskafka opens.
//!
//! rskafka 0.6 writes each request in two writes, the 4-byte length and then
//! the body, on a socket without `TCP_NODELAY`, and has no option to set it.
//! Nagle's algorithm then holds the body until the broker acknowledges the
//! length, and the broker's kernel delays that acknowledgement (up to 40 ms
//! on Linux) once the connection is busy: measured against Kafka 4.4 at 200
//! orders/s, a produce request to `orders` took 10-27 ms on average, against
//! 0.3-0.7 ms at 100/s (docs/perf.md). A socket option is the whole fix, so
//! a task sets it on every TCP socket of the process once a second. That is
//! idempotent and harmless for the others (tokio-postgres sets it already,
//! actix on the sockets it accepts), and a connection rskafka opens lives at
//! most a second without it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Sets `TCP_NODELAY` on every TCP socket of this process now and then
/// once a second, until `cancel`.
pub async fn keep_set(cancel: CancellationToken) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        let set = set_on_tcp_sockets();
        if set > 0 {
            tracing::debug!(sockets = set, "TCP_NODELAY set");
        }
    }
}

/// Sets `TCP_NODELAY` on the process's TCP sockets that lack it; returns
/// how many it changed.
pub fn set_on_tcp_sockets() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&fd| is_tcp(fd) && int_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY) == Some(0))
        .filter(|&fd| {
            let on: libc::c_int = 1;
            // SAFETY: setsockopt reads `on` for the given length. An fd that
            // was closed or reused since the listing makes the call fail or
            // set the option on another TCP socket, both harmless.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&on as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                ) == 0
            }
        })
        .count()
}

/// A stream socket of the IPv4 or IPv6 family (not a Unix socket, pipe or
/// file).
fn is_tcp(fd: i32) -> bool {
    int_option(fd, libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && matches!(
            int_option(fd, libc::SOL_SOCKET, libc::SO_DOMAIN),
            Some(libc::AF_INET | libc::AF_INET6)
        )
}

/// An integer socket option; `None` when `fd` is not a socket (or is gone).
fn int_option(fd: i32, level: i32, name: i32) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut length = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `length` bytes into `value`.
    let result = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut length,
        )
    };
    (result == 0).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_the_option_on_tcp_sockets_and_leaves_others_alone() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let (unix, _) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsRawFd;
        let nodelay = |fd| int_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY);
        assert_eq!(nodelay(client.as_raw_fd()), Some(0));

        assert!(set_on_tcp_sockets() >= 2);
        assert_eq!(nodelay(client.as_raw_fd()), Some(1));
        assert_eq!(nodelay(accepted.as_raw_fd()), Some(1));
        assert!(!is_tcp(unix.as_raw_fd()));
        // Nothing left to change for these.
        assert!(client.nodelay().unwrap());
    }
}
