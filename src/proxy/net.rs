//! Socket plumbing: listeners (optionally IP_TRANSPARENT), the original destination of an
//! accepted connection, and upstream sockets bound the way each path needs.

use crate::plan::{self, Family};
use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

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

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Sets IP_TRANSPARENT (IPV6_TRANSPARENT on an IPv6 socket). Needs CAP_NET_ADMIN.
pub fn set_transparent<F: AsFd>(fd: &F, v6: bool) -> io::Result<()> {
    if !v6 {
        return setsockopt(fd, sockopt::IpTransparent, &true).map_err(errno);
    }
    let one: nix::libc::c_int = 1;
    use std::os::fd::AsRawFd;
    // SAFETY: a valid fd, a c_int option value of the right size.
    let rc = unsafe {
        nix::libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            nix::libc::SOL_IPV6,
            nix::libc::IPV6_TRANSPARENT,
            (&one as *const nix::libc::c_int).cast(),
            std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Binds a listener on `addr` (IPv6 ones are v6-only, the IPv4 listener covers IPv4), with
/// IP_TRANSPARENT when `transparent`.
pub fn listen(addr: SocketAddr, transparent: bool, backlog: u32) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let s = TcpSocket::new_v6()?;
            setsockopt(&s, sockopt::Ipv6V6Only, &true).map_err(errno)?;
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
/// IP6T_SO_ORIGINAL_DST). For a connection that was not NATed this is its own local address.
pub fn original_dst(stream: &TcpStream, v6: bool) -> io::Result<SocketAddr> {
    if v6 {
        let sa = getsockopt(stream, sockopt::Ip6tOriginalDst).map_err(errno)?;
        Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(sa.sin6_addr.s6_addr),
            u16::from_be(sa.sin6_port),
            u32::from_be(sa.sin6_flowinfo),
            sa.sin6_scope_id,
        )))
    } else {
        let sa = getsockopt(stream, sockopt::OriginalDst).map_err(errno)?;
        Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
            u16::from_be(sa.sin_port),
        )))
    }
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
                setsockopt(&socket, sockopt::Mark, &mark).map_err(errno)?;
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
