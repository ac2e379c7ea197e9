//! The agent's listening socket files (control and ZDS). A file left by an agent that died is
//! replaced; one that a running process still listens on is refused: replacing it would leave
//! that process unreachable, and its exit would then delete the new agent's file.

use socket2::{Domain, SockAddr, Socket, Type};
use std::io;
use std::path::Path;

/// Makes `path` free for a socket of `kind` to bind: creates its directory and removes a stale
/// file there. `AddrInUse` when something accepts connections on it.
pub fn claim(path: &Path, kind: Type) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Non-blocking: a listener with a full backlog answers EAGAIN instead of making us wait.
    let probe = Socket::new(Domain::UNIX, kind.nonblocking().cloexec(), None)?;
    match probe.connect(&SockAddr::unix(path)?) {
        Ok(()) => Err(in_use()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(in_use()),
        // Nobody listens (or it is no socket): stale.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        Err(e) => Err(e),
    }
}

fn in_use() -> io::Error {
    io::Error::new(
        io::ErrorKind::AddrInUse,
        "a running process listens on it (another agent?)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_live_socket_is_refused_a_stale_one_replaced() {
        let dir = std::env::temp_dir().join(format!("meshcap-claim-{}", std::process::id()));
        let path = dir.join("sub").join("agent.sock");
        claim(&path, Type::STREAM).unwrap();
        assert!(dir.join("sub").is_dir());
        let live = UnixListener::bind(&path).unwrap();
        let err = claim(&path, Type::STREAM).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert!(path.exists());
        drop(live);
        claim(&path, Type::STREAM).unwrap();
        assert!(!path.exists());
        UnixListener::bind(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
