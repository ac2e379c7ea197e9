//! Socket plumbing: listeners (optionally IP_TRANSPARENT), the original destination of an
//! accepted connection, and upstream sockets bound the way each path needs.

use crate::plan::{self, Family};
use socket2::SockRef;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use tokio::net::{TcpListener, TcpSocket};

/// How a captured connection reached the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capture {
    /// NAT REDIRECT: the socket's local address is the listener's; conntrack knows the original.
    Redirect,
    /// TPROXY: no NAT; the socket's local address is the original destination.
    Tproxy,
}

impl Capture {
    pub fn as_str(self) -> &'static str {
        match self {
            Capture::Redirect => "redirect",
            Capture::Tproxy => "tproxy",
        }
    }
}

/// Sets IP_TRANSPARENT (IPV6_TRANSPARENT on an IPv6 socket). Needs CAP_NET_ADMIN.
pub fn set_transparent<F: AsFd>(fd: &F, v6: bool) -> io::Result<()> {
    let socket = SockRef::from(fd);
    if v6 {
        socket.set_ip_transparent_v6(true)
    } else {
        socket.set_ip_transparent_v4(true)
    }
}

/// Binds a listener on `addr` (IPv6 ones are v6-only, the IPv4 listener covers IPv4), with
/// IP_TRANSPARENT when `transparent`.
pub fn listen(addr: SocketAddr, transparent: bool, backlog: u32) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let s = TcpSocket::new_v6()?;
            SockRef::from(&s).set_only_v6(true)?;
            s
        }
    };
    socket.set_reuseaddr(true)?;
    if transparent {
        set_transparent(&socket, addr.is_ipv6())?;
    }
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The destination the client meant, read from conntrack (SO_ORIGINAL_DST /
/// IP6T_SO_ORIGINAL_DST) on an accepted socket of family `v6`. For a connection that was not
/// NATed this is its own local address. The validation reads its probe's destination with it too.
pub fn original_dst<S: AsFd>(stream: &S, v6: bool) -> io::Result<SocketAddr> {
    let socket = SockRef::from(stream);
    let addr = if v6 {
        socket.original_dst_v6()?
    } else {
        socket.original_dst_v4()?
    };
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "original destination of an unknown address family",
        )
    })
}

/// Whether `ip` is an address of this network namespace (loopback, unspecified, or assigned to
/// an interface): a UDP bind to it succeeds exactly then (unless net.ipv4.ip_nonlocal_bind is
/// set, in which case everything looks local and the loop guard errs on the side of refusing).
pub fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// How the upstream socket's source is chosen.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// Whatever the kernel picks (outbound).
    Any,
    /// A fixed local address (inbound REDIRECT: 127.0.0.6 / ::6).
    Bind(IpAddr),
    /// A non-local address through IP_TRANSPARENT, with SO_MARK (inbound TPROXY: the client's own
    /// address, so that the app sees the real peer).
    Transparent { ip: IpAddr, mark: u32 },
}

/// A socket for connecting to `dst` from `source`; the caller connects it.
pub fn upstream_socket(dst: SocketAddr, source: Source) -> io::Result<TcpSocket> {
    let socket = if dst.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    match source {
        Source::Any => {}
        Source::Bind(ip) => socket.bind(SocketAddr::new(ip, 0))?,
        Source::Transparent { ip, mark } => {
            set_transparent(&socket, dst.is_ipv6())?;
            if mark != 0 {
                SockRef::from(&socket).set_mark(mark)?;
            }
            socket.bind(SocketAddr::new(ip, 0))?;
        }
    }
    socket.set_nodelay(true)?;
    Ok(socket)
}

/// The passthrough source for `dst`'s family: the one the rules exempt.
pub fn passthrough_source(dst: &SocketAddr) -> IpAddr {
    plan::passthrough_source(if dst.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    #[test]
    fn loopback_and_unspecified_are_local_documentation_ranges_are_not() {
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(is_local("0.0.0.0".parse().unwrap()));
        assert!(is_local("::".parse().unwrap()));
        assert!(!is_local("192.0.2.123".parse().unwrap()));
        assert!(!is_local("2001:db8::77".parse().unwrap()));
    }

    #[tokio::test]
    async fn unnatted_connection_has_no_other_original_destination() {
        // Without a NAT entry conntrack either has no entry (ENOENT) or reports the address the
        // client dialled, which is the listener itself.
        let l = listen("127.0.0.1:0".parse().unwrap(), false, 16).unwrap();
        let addr = l.local_addr().unwrap();
        let c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        match original_dst(&s, false) {
            Ok(dst) => assert_eq!(dst, addr),
            Err(e) => assert_eq!(e.raw_os_error(), Some(nix::libc::ENOENT), "{e}"),
        }
        drop(c);
    }
}
