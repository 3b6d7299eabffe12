//! Ctrl-C and SIGTERM become a flag the supervision loops poll, so shutdown
//! runs in order on the main thread instead of inside a signal handler.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

static RECEIVED: AtomicI32 = AtomicI32::new(0);
static COUNT: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    // Only atomic operations: async-signal-safe.
    RECEIVED.store(signal, Ordering::SeqCst);
    COUNT.fetch_add(1, Ordering::SeqCst);
}

pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// The signal that asked us to stop, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// How many stop signals arrived (a second Ctrl-C cuts a drain short).
pub fn count() -> usize {
    COUNT.load(Ordering::SeqCst)
}

pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        libc::SIGKILL => "SIGKILL",
        libc::SIGQUIT => "SIGQUIT",
        _ => "signal",
    }
}
