//! The netfilter netlink socket of the current namespace, and its failures as backend errors
//! naming what was being done and, for the errnos people meet, why.

use super::socket::NetlinkSocket;
use crate::backend::firewall::BackendError;
use nix::libc;

/// A failure of `what`, with the kernel's (or the socket's) errno `code` explained.
pub fn kernel_error(what: impl Into<String>, code: i32) -> BackendError {
    let text = std::io::Error::from_raw_os_error(code).to_string();
    let reason = match code {
        libc::EPERM => format!("{text} (CAP_NET_ADMIN is needed)"),
        libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT => {
            format!("{text} (is nf_tables available in this kernel?)")
        }
        _ => text,
    };
    BackendError::Netlink {
        what: what.into(),
        reason,
    }
}

/// A failed socket operation of `what`.
pub fn netlink_error(what: impl Into<String>, e: &std::io::Error) -> BackendError {
    kernel_error(what, e.raw_os_error().unwrap_or(0))
}

/// A netfilter netlink socket in the current namespace.
pub fn open() -> Result<NetlinkSocket, BackendError> {
    NetlinkSocket::open(netlink_sys::protocols::NETLINK_NETFILTER)
        .map_err(|e| netlink_error("opening a netfilter netlink socket", &e))
}
