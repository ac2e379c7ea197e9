//! Meshcap's lock of a network namespace: an abstract unix socket bound inside the namespace.
//! Abstract socket names are per network namespace, and the kernel releases the name when the
//! socket closes (also when the process dies) and forgets it with the namespace, so nothing is
//! left in the file system. A leaf: the session holds the lock for its lifetime, and the backends
//! take it for themselves when they run outside a session.

use super::firewall::BackendError;
use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// Meshcap's lock of the current thread's network namespace, held until dropped.
pub struct NamespaceLock {
    /// `None` when a session of this thread holds the lock already.
    _socket: Option<OwnedFd>,
}

/// The abstract socket name of the lock (the leading NUL is added by the address type).
const LOCK_NAME: &[u8] = b"meshcap/netns-lock";

/// How often a waiting session tries the lock again.
const LOCK_POLL: Duration = Duration::from_millis(20);

thread_local! {
    /// Whether a session holds the lock of the namespace this thread works in: the backends
    /// lock for themselves only outside a session.
    static SESSION_HOLDS_LOCK: Cell<bool> = const { Cell::new(false) };
}

/// Serializes meshcap runs in the current thread's network namespace for the life of the guard.
///
/// iptables-restore checks `-N` against the state it read, so two runs that read before either
/// writes would both append their rules (iptables-nft does not take the xtables lock at all).
/// Runs in different namespaces never wait for each other. Inside a session the session's lock
/// is the one that counts, and this returns at once.
pub fn namespace_lock() -> Result<NamespaceLock, BackendError> {
    if SESSION_HOLDS_LOCK.get() {
        return Ok(NamespaceLock { _socket: None });
    }
    wait_for(None)
}

/// Takes the lock, trying again until `wait` has passed (`None`: as long as it takes).
pub(super) fn wait_for(wait: Option<Duration>) -> Result<NamespaceLock, BackendError> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, bind, socket};
    let failure = |e: nix::errno::Errno| BackendError::Spawn {
        program: "meshcap's namespace lock (abstract unix socket)".into(),
        reason: e.to_string(),
    };
    let addr = UnixAddr::new_abstract(LOCK_NAME).map_err(failure)?;
    let start = Instant::now();
    loop {
        // Close-on-exec: iptables-restore and other children must not keep the lock.
        let socket = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(failure)?;
        match bind(std::os::fd::AsRawFd::as_raw_fd(&socket), &addr) {
            Ok(()) => {
                return Ok(NamespaceLock {
                    _socket: Some(socket),
                });
            }
            Err(nix::errno::Errno::EADDRINUSE) => {}
            Err(e) => return Err(failure(e)),
        }
        if let Some(bound) = wait
            && start.elapsed() >= bound
        {
            return Err(BackendError::Busy {
                what: "meshcap's lock of the namespace (another meshcap run works in it)".into(),
                waited: bound,
            });
        }
        std::thread::sleep(LOCK_POLL);
    }
}

/// Marks the lock as held by a session on this thread until the guard drops (the session's
/// closure ends), so that the backends the session calls do not try to take it again.
pub(super) fn held_by_session() -> HeldBySession {
    HeldBySession(SESSION_HOLDS_LOCK.replace(true))
}

/// Puts [`SESSION_HOLDS_LOCK`] back to what it was when dropped.
pub(super) struct HeldBySession(bool);

impl Drop for HeldBySession {
    fn drop(&mut self) {
        SESSION_HOLDS_LOCK.set(self.0);
    }
}
