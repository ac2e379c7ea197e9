//! Probes: one connection attempt each, classified by who accepted it and where it was going.
//!
//! A [`Probe`] is a small value: who connects ([`From`]: a user inside the pod, or a peer
//! namespace), the protocol, the destination, and optionally a source address to bind. Its
//! result is an [`Outcome`]: a [`Class`] plus what was seen (the original destination for a
//! captured connection, `app ADDR` / `server ADDR` for a direct one).
//!
//! Listeners ([`Servers`]) answer every connection with a token that names them and what they
//! saw, then close: the capture listeners say `captured-outbound 198.51.100.10:80` (the original
//! destination, read with `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST` under REDIRECT, or the
//! local address of an `IP_TRANSPARENT` socket under TPROXY), the app says
//! `direct app 192.0.2.1:8080`, a peer's server `direct server 198.51.100.10:80`. For UDP the
//! listener names itself and the client adds the source address of the reply, which is the
//! original destination once conntrack has undone the redirection.
//!
//! A table is text, one probe per line: `PROBE -> OUTCOME`, e.g.
//! `pod 1000:1000  tcp  198.51.100.10:80  -> captured-outbound 198.51.100.10:80`;
//! `#` starts a comment. [`render_table`] writes one, [`parse_table`] reads one, and [`compare`]
//! lists the probes whose outcome differs, naming the probe and both outcomes.

use crate::{Netns, User, join};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, connect, getsockopt, listen,
    setsockopt, socket, sockopt,
};
use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a client waits for a connection or an answer before it calls the probe `timeout`.
/// Nothing in the standard matrix is expected to wait for it: refusals come back as RST or ICMP,
/// so it only bounds a probe that went wrong. It covers two SYN retransmissions (1 s, 3 s) and a
/// loaded machine's scheduling delays (1.5 s once let a probe time out under load in CI).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Transport protocol of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Who opens the connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum From {
    /// A process of the pod (the namespace with the rules) running as this user.
    Pod(User),
    /// A peer namespace, by its role name (e.g. `net`), as root.
    Peer(String),
}

impl From {
    /// A pod process with this uid and primary gid.
    pub fn pod(uid: u32, gid: u32) -> From {
        From::Pod(User::new(uid, gid))
    }

    /// The peer namespace named `role`.
    pub fn peer(role: &str) -> From {
        From::Peer(role.to_owned())
    }
}

impl fmt::Display for From {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            From::Pod(user) => write!(f, "pod {user}"),
            From::Peer(role) => write!(f, "peer {role}"),
        }
    }
}

/// One connection attempt.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Probe {
    pub from: From,
    pub proto: Proto,
    pub dst: SocketAddr,
    /// Source address to bind (e.g. the proxy's passthrough source 127.0.0.6); `None`: the
    /// kernel picks.
    pub src: Option<IpAddr>,
}

impl Probe {
    /// A TCP probe; `dst` is `ADDR:PORT` or `[ADDR6]:PORT`. Panics on a malformed address.
    pub fn tcp(from: From, dst: &str) -> Probe {
        Probe::new(from, Proto::Tcp, dst)
    }

    /// A UDP probe (one datagram, one expected answer).
    pub fn udp(from: From, dst: &str) -> Probe {
        Probe::new(from, Proto::Udp, dst)
    }

    fn new(from: From, proto: Proto, dst: &str) -> Probe {
        Probe {
            from,
            proto,
            dst: dst
                .parse()
                .unwrap_or_else(|e| panic!("probe address {dst:?}: {e}")),
            src: None,
        }
    }

    /// The same probe, bound to source address `src`.
    pub fn from_addr(mut self, src: &str) -> Probe {
        self.src = Some(
            src.parse()
                .unwrap_or_else(|e| panic!("source {src:?}: {e}")),
        );
        self
    }

    /// `v4` or `v6`.
    pub fn family(&self) -> &'static str {
        if self.dst.is_ipv4() { "v4" } else { "v6" }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = format!("{} {} {}", self.from, self.proto, self.dst);
        match self.src {
            Some(src) => write!(f, "{text} src {src}"),
            None => f.write_str(&text),
        }
    }
}

impl FromStr for Probe {
    type Err = String;

    /// Parses what [`Probe`]'s `Display` writes: `pod UID:GID[+GROUP] PROTO DST [src ADDR]` or
    /// `peer ROLE PROTO DST [src ADDR]`.
    fn from_str(text: &str) -> Result<Probe, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let bad = || format!("malformed probe {text:?}");
        let (from, rest) = match words.as_slice() {
            ["pod", user, rest @ ..] => {
                let (ids, supplementary) = match user.split_once('+') {
                    Some((ids, g)) => (ids, Some(g.parse().map_err(|_| bad())?)),
                    None => (*user, None),
                };
                let (uid, gid) = ids.split_once(':').ok_or_else(bad)?;
                let user = User {
                    uid: uid.parse().map_err(|_| bad())?,
                    gid: gid.parse().map_err(|_| bad())?,
                    supplementary,
                };
                (From::Pod(user), rest)
            }
            ["peer", role, rest @ ..] => (From::peer(role), rest),
            _ => return Err(bad()),
        };
        let (proto, dst, src) = match rest {
            [proto, dst] => (*proto, *dst, None),
            [proto, dst, "src", src] => (*proto, *dst, Some(*src)),
            _ => return Err(bad()),
        };
        Ok(Probe {
            from,
            proto: match proto {
                "tcp" => Proto::Tcp,
                "udp" => Proto::Udp,
                _ => return Err(bad()),
            },
            dst: dst.parse().map_err(|_| bad())?,
            src: match src {
                Some(s) => Some(s.parse().map_err(|_| bad())?),
                None => None,
            },
        })
    }
}

/// Where a connection went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// Accepted by the outbound capture listener (15001).
    CapturedOutbound,
    /// Accepted by the inbound capture listener (15006).
    CapturedInbound,
    /// Accepted by the DNS capture listener (15053, TCP or UDP).
    CapturedDns,
    /// Accepted by the destination itself (the pod's app or a peer's server).
    Direct,
    /// Actively refused (TCP RST, ICMP unreachable).
    Refused,
    /// No answer within the timeout.
    Timeout,
    /// The client could not even try (e.g. the source address cannot be bound).
    Error,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::CapturedOutbound => "captured-outbound",
            Class::CapturedInbound => "captured-inbound",
            Class::CapturedDns => "captured-dns",
            Class::Direct => "direct",
            Class::Refused => "refused",
            Class::Timeout => "timeout",
            Class::Error => "error",
        }
    }

    const ALL: [Class; 7] = [
        Class::CapturedOutbound,
        Class::CapturedInbound,
        Class::CapturedDns,
        Class::Direct,
        Class::Refused,
        Class::Timeout,
        Class::Error,
    ];
}

/// The result of a probe: its class and what was seen (`198.51.100.10:80`, `app 192.0.2.1:8080`,
/// an errno name), possibly empty.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Outcome {
    pub class: Class,
    pub seen: String,
}

impl Outcome {
    fn new(class: Class, seen: impl Into<String>) -> Outcome {
        Outcome {
            class,
            seen: seen.into(),
        }
    }

    fn errno(e: Errno) -> Outcome {
        match e {
            Errno::ECONNREFUSED | Errno::EHOSTUNREACH | Errno::ENETUNREACH => {
                Outcome::new(Class::Refused, format!("{e:?}"))
            }
            Errno::ETIMEDOUT | Errno::EAGAIN => Outcome::new(Class::Timeout, ""),
            e => Outcome::new(Class::Error, format!("{e:?}")),
        }
    }

    fn io(e: &std::io::Error) -> Outcome {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                Outcome::new(Class::Timeout, "")
            }
            _ => Outcome::errno(Errno::from_raw(e.raw_os_error().unwrap_or(0))),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.seen.is_empty() {
            f.write_str(self.class.name())
        } else {
            write!(f, "{} {}", self.class.name(), self.seen)
        }
    }
}

impl FromStr for Outcome {
    type Err = String;

    fn from_str(text: &str) -> Result<Outcome, String> {
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let (class, seen) = text.split_once(' ').unwrap_or((&text, ""));
        let class = Class::ALL
            .into_iter()
            .find(|c| c.name() == class)
            .ok_or_else(|| format!("unknown outcome class in {text:?}"))?;
        Ok(Outcome::new(class, seen))
    }
}

// --- listeners -------------------------------------------------------------------------------

/// What a listener is, which decides the token it answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A capture listener of this class: answers `CLASS ORIGINAL-DESTINATION`.
    Capture(Class),
    /// The pod's application: answers `direct app LOCAL-ADDRESS`.
    App,
    /// A server in a peer (or a resolver): answers `direct server LOCAL-ADDRESS`.
    Server,
}

/// Listeners running on background threads until dropped.
#[derive(Debug, Default)]
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    pub fn new() -> Servers {
        Servers::default()
    }

    /// Listens on TCP `addr` inside `ns` (`IPV6_V6ONLY` for IPv6; `IP_TRANSPARENT` when
    /// `transparent`, as a TPROXY listener must be) and answers every connection.
    pub fn tcp(&mut self, ns: &Netns, addr: SocketAddr, role: Role, transparent: bool) {
        let fd = ns
            .run(move || tcp_listener(addr, transparent))
            .unwrap_or_else(|e| panic!("listen on tcp {addr} in {}: {e}", ns.name()));
        let listener = TcpListener::from(fd);
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            while let Some(()) = wait_readable(&listener, &stop) {
                let Ok((stream, _)) = listener.accept() else {
                    continue;
                };
                answer_tcp(stream, role);
            }
        }));
    }

    /// Binds UDP `addr` inside `ns` and answers every datagram with the role's token.
    pub fn udp(&mut self, ns: &Netns, addr: SocketAddr, role: Role) {
        self.udp_as(ns, addr, role, None);
    }

    /// Like [`Servers::udp`], with a socket owned by `user` (as netfilter's owner match sees
    /// the answers it sends): a DNS capture listener must be the proxy's, because the
    /// conntrack-zone rules pick its answers by owner.
    pub fn udp_as(&mut self, ns: &Netns, addr: SocketAddr, role: Role, user: Option<User>) {
        let socket = join(ns.thread(user, move || UdpSocket::bind(addr)))
            .unwrap_or_else(|e| panic!("bind udp {addr} in {}: {e}", ns.name()));
        let stop = self.stop.clone();
        let token = match role {
            Role::Capture(class) => class.name().to_owned(),
            Role::App => "direct app".to_owned(),
            Role::Server => "direct server".to_owned(),
        };
        self.threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Some(()) = wait_readable(&socket, &stop) {
                if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(token.as_bytes(), peer);
                }
            }
        }));
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Waits until `fd` is readable; `None` once `stop` is set.
fn wait_readable(fd: &impl AsFd, stop: &AtomicBool) -> Option<()> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        if let Ok(n) = poll(&mut fds, PollTimeout::from(100u16))
            && n > 0
        {
            return Some(());
        }
    }
}

fn family_of(addr: &SocketAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn tcp_listener(addr: SocketAddr, transparent: bool) -> nix::Result<OwnedFd> {
    let fd = socket(
        family_of(&addr),
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    if transparent {
        setsockopt(&fd, sockopt::IpTransparent, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(&fd, Backlog::new(512)?)?;
    Ok(fd)
}

/// The destination the client asked for: `SO_ORIGINAL_DST` when conntrack has a NAT mapping
/// (REDIRECT), else the local address (TPROXY keeps the original destination on the socket).
fn original_destination(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let orig = match local {
        SocketAddr::V4(_) => getsockopt(stream, sockopt::OriginalDst).ok().map(|sin| {
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            ))
        }),
        SocketAddr::V6(_) => getsockopt(stream, sockopt::Ip6tOriginalDst)
            .ok()
            .map(|sin6| {
                SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    0,
                    0,
                ))
            }),
    };
    Some(orig.unwrap_or(local))
}

fn answer_tcp(mut stream: TcpStream, role: Role) {
    let token = match role {
        Role::Capture(class) => match original_destination(&stream) {
            Some(orig) => format!("{} {orig}", class.name()),
            None => format!("{} ?", class.name()),
        },
        Role::App => format!("direct app {}", display_local(&stream)),
        Role::Server => format!("direct server {}", display_local(&stream)),
    };
    let _ = stream.write_all(token.as_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

fn display_local(stream: &TcpStream) -> String {
    stream
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into())
}

// --- clients ---------------------------------------------------------------------------------

/// Runs `probe`'s client on the calling thread, which must already be in the right namespace
/// with the right identity (see [`Netns::thread`]).
pub fn run_client(probe: &Probe, timeout: Duration) -> Outcome {
    match probe.proto {
        Proto::Tcp => tcp_client(probe.dst, probe.src, timeout),
        Proto::Udp => udp_client(probe.dst, probe.src, timeout),
    }
}

fn client_socket(dst: SocketAddr, src: Option<IpAddr>, ty: SockType) -> Result<OwnedFd, Outcome> {
    let fd = socket(
        family_of(&dst),
        ty,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(Outcome::errno)?;
    if let Some(src) = src {
        bind(
            fd.as_raw_fd(),
            &SockaddrStorage::from(SocketAddr::new(src, 0)),
        )
        .map_err(Outcome::errno)?;
    }
    match connect(fd.as_raw_fd(), &SockaddrStorage::from(dst)) {
        Ok(()) | Err(Errno::EINPROGRESS) => Ok(fd),
        Err(e) => Err(Outcome::errno(e)),
    }
}

fn remaining(deadline: Instant) -> PollTimeout {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .as_millis();
    PollTimeout::try_from(left.min(60_000) as i32).unwrap_or(PollTimeout::ZERO)
}

/// Waits for `flags` on `fd` until `deadline`; false on timeout.
fn wait_for(fd: &impl AsFd, flags: PollFlags, deadline: Instant) -> bool {
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), flags)];
        match poll(&mut fds, remaining(deadline)) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(Errno::EINTR) if Instant::now() < deadline => continue,
            Err(_) => return false,
        }
    }
}

fn tcp_client(dst: SocketAddr, src: Option<IpAddr>, timeout: Duration) -> Outcome {
    let deadline = Instant::now() + timeout;
    let fd = match client_socket(dst, src, SockType::Stream) {
        Ok(fd) => fd,
        Err(outcome) => return outcome,
    };
    if !wait_for(&fd, PollFlags::POLLOUT, deadline) {
        return Outcome::new(Class::Timeout, "");
    }
    match getsockopt(&fd, sockopt::SocketError) {
        Ok(0) => {}
        Ok(err) => return Outcome::errno(Errno::from_raw(err)),
        Err(e) => return Outcome::errno(e),
    }
    let mut stream = TcpStream::from(fd);
    let mut token = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        if !wait_for(&stream, PollFlags::POLLIN, deadline) {
            return Outcome::new(Class::Timeout, "connected, no answer");
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => token.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Outcome::io(&e),
        }
    }
    let token = String::from_utf8_lossy(&token);
    token
        .parse()
        .unwrap_or_else(|_| Outcome::new(Class::Error, format!("unexpected answer {token:?}")))
}

fn udp_client(dst: SocketAddr, src: Option<IpAddr>, timeout: Duration) -> Outcome {
    let deadline = Instant::now() + timeout;
    let socket = match client_socket(dst, src, SockType::Datagram) {
        Ok(fd) => UdpSocket::from(fd),
        Err(outcome) => return outcome,
    };
    if let Err(e) = socket.send(b"probe") {
        return Outcome::io(&e);
    }
    let mut buf = [0u8; 512];
    loop {
        if !wait_for(&socket, PollFlags::POLLIN, deadline) {
            return Outcome::new(Class::Timeout, "");
        }
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let token = String::from_utf8_lossy(&buf[..n]);
                return match format!("{token} {from}").parse() {
                    Ok(outcome) => outcome,
                    Err(_) => Outcome::new(Class::Error, format!("unexpected answer {token:?}")),
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Outcome::io(&e),
        }
    }
}

// --- tables ----------------------------------------------------------------------------------

/// Writes `rows` as a table: aligned `PROBE -> OUTCOME` lines, grouped by who connects, each
/// group under a comment naming it.
pub fn render_table(rows: &[(Probe, Outcome)]) -> String {
    let width = rows
        .iter()
        .map(|(p, _)| p.to_string().len())
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    let mut last: Option<&From> = None;
    for (probe, outcome) in rows {
        if last != Some(&probe.from) {
            if last.is_some() {
                text.push('\n');
            }
            text.push_str(&format!("# {}\n", describe_from(&probe.from)));
            last = Some(&probe.from);
        }
        text.push_str(&format!("{:<width$}  -> {outcome}\n", probe.to_string()));
    }
    text
}

fn describe_from(from: &From) -> String {
    match from {
        From::Pod(user) => format!("from a pod process running as uid:gid {user}"),
        From::Peer(role) => format!("from peer namespace {role:?} (root)"),
    }
}

/// Reads a table: (probe, expected outcome) per line; comments and blank lines are skipped.
pub fn parse_table(text: &str) -> Result<Vec<(Probe, Outcome)>, String> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let (probe, outcome) = line
            .split_once("->")
            .ok_or_else(|| format!("line {}: no `->` in {line:?}", i + 1))?;
        let probe: Probe = probe.parse().map_err(|e| format!("line {}: {e}", i + 1))?;
        let outcome: Outcome = outcome
            .parse()
            .map_err(|e| format!("line {}: {e}", i + 1))?;
        rows.push((probe, outcome));
    }
    Ok(rows)
}

/// A probe whose observed outcome is not the expected one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub probe: Probe,
    /// `None`: the probe is not in the expected table.
    pub expected: Option<Outcome>,
    /// `None`: the expected table has a probe that was not run.
    pub observed: Option<Outcome>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |o: &Option<Outcome>, absent: &str| match o {
            Some(o) => o.to_string(),
            None => absent.to_owned(),
        };
        write!(
            f,
            "{}: expected {}, observed {}",
            self.probe,
            show(&self.expected, "(not in the table)"),
            show(&self.observed, "(not probed)")
        )
    }
}

/// The differences between an expected table and observed rows, in the order of `observed`
/// (then expected rows that were not probed).
pub fn compare(expected: &[(Probe, Outcome)], observed: &[(Probe, Outcome)]) -> Vec<Mismatch> {
    let mut out = Vec::new();
    for (probe, seen) in observed {
        let want = expected.iter().find(|(p, _)| p == probe).map(|(_, o)| o);
        if want != Some(seen) {
            out.push(Mismatch {
                probe: probe.clone(),
                expected: want.cloned(),
                observed: Some(seen.clone()),
            });
        }
    }
    for (probe, want) in expected {
        if !observed.iter().any(|(p, _)| p == probe) {
            out.push(Mismatch {
                probe: probe.clone(),
                expected: Some(want.clone()),
                observed: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_and_outcomes_round_trip_through_their_text() {
        let rows = vec![
            (
                Probe::tcp(From::pod(1000, 1000), "198.51.100.10:80"),
                "captured-outbound 198.51.100.10:80".parse().unwrap(),
            ),
            (
                Probe::tcp(From::pod(1337, 1000), "[2001:db8:100::1]:8080").from_addr("::6"),
                "direct app [2001:db8:100::1]:8080".parse().unwrap(),
            ),
            (
                Probe::udp(
                    From::Pod(User {
                        uid: 1000,
                        gid: 1000,
                        supplementary: Some(1337),
                    }),
                    "192.0.2.53:53",
                ),
                "refused ECONNREFUSED".parse().unwrap(),
            ),
            (
                Probe::tcp(From::peer("net"), "192.0.2.1:15008"),
                "timeout".parse().unwrap(),
            ),
        ];
        let text = render_table(&rows);
        assert_eq!(parse_table(&text).unwrap(), rows, "{text}");
        assert!(text.contains("pod 1337:1000 tcp [2001:db8:100::1]:8080 src ::6"));
    }

    #[test]
    fn a_mismatch_names_the_probe_and_both_outcomes() {
        let probe = Probe::tcp(From::peer("net"), "192.0.2.1:8080");
        let want: Outcome = "captured-inbound 192.0.2.1:8080".parse().unwrap();
        let got: Outcome = "direct app 192.0.2.1:8080".parse().unwrap();
        let other = Probe::udp(From::pod(1000, 1000), "192.0.2.53:53");
        let diff = compare(
            &[(probe.clone(), want), (other.clone(), got.clone())],
            &[(probe, got.clone())],
        );
        let text: Vec<String> = diff.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "peer net tcp 192.0.2.1:8080: expected captured-inbound 192.0.2.1:8080, observed direct app 192.0.2.1:8080",
                "pod 1000:1000 udp 192.0.2.53:53: expected direct app 192.0.2.1:8080, observed (not probed)",
            ]
        );
        assert!(compare(&[], &[]).is_empty());
    }

    #[test]
    fn malformed_rows_are_rejected() {
        assert!(parse_table("pod 1000 tcp 1.2.3.4:5 -> direct").is_err());
        assert!(parse_table("pod 1000:1000 tcp 1.2.3.4:5 -> sideways").is_err());
        assert!(parse_table("pod 1000:1000 tcp 1.2.3.4:5 direct").is_err());
        assert!(parse_table("# only a comment\n\n").unwrap().is_empty());
    }
}
