//! A ztunnel stand-in for the ambient tests: like ztunnel, it receives a pod's network
//! namespace over ZDS, opens 15001, 15006 and 15008 inside it and marks its upstream sockets
//! 0x539 (inbound ones also transparent, from the peer's own address). Each connection is
//! answered with `ztunnel-outbound DST | …`, `ztunnel-inbound DST | …` (then what the upstream
//! said) or `ztunnel-hbone LOCAL`, so a client sees that it went through the stand-in.

use meshcap::ambient::ZTUNNEL_MARK;
use meshcap::ambient::zds::messages::Request;
use meshcap::ambient::zds::ztunnel::StandIn;
use nix::sys::socket::{getsockopt, sockopt};
use socket2::{Domain, SockAddr, Socket, Type};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long an upstream connection may take.
const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
enum Listener {
    Outbound,
    Inbound,
    Hbone,
}

/// ztunnel's listeners in one pod, until dropped.
pub struct Proxy {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Opens the listeners inside `netns` (each on its own thread, which stays in the pod's
    /// namespace for its upstream sockets too), ready when this returns.
    pub fn start(netns: &File) -> Proxy {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (port, kind) in [
            (15001, Listener::Outbound),
            (15006, Listener::Inbound),
            (15008, Listener::Hbone),
        ] {
            for ip in [
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            ] {
                let (ns, stop) = (netns.try_clone().unwrap(), stop.clone());
                let (ready, is_ready) = std::sync::mpsc::channel();
                threads.push(std::thread::spawn(move || {
                    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                    let listener = listen(SocketAddr::new(ip, port));
                    ready.send(()).unwrap();
                    while !stop.load(Ordering::SeqCst) {
                        match listener.accept() {
                            Ok((stream, _)) => serve(stream, kind),
                            Err(_) => std::thread::sleep(Duration::from_millis(10)),
                        }
                    }
                }));
                is_ready.recv().unwrap();
            }
        }
        Proxy { stop, threads }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub fn listen(addr: SocketAddr) -> std::net::TcpListener {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    if addr.is_ipv6() {
        socket.set_only_v6(true).unwrap();
    }
    socket.bind(&SockAddr::from(addr)).unwrap();
    socket.listen(16).unwrap();
    socket.set_nonblocking(true).unwrap();
    socket.into()
}

/// Where the client was going (REDIRECT's original destination).
fn original_destination(stream: &TcpStream) -> SocketAddr {
    match stream.local_addr().unwrap() {
        SocketAddr::V4(_) => {
            let sin = getsockopt(stream, sockopt::OriginalDst).unwrap();
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            ))
        }
        SocketAddr::V6(_) => {
            let sin6 = getsockopt(stream, sockopt::Ip6tOriginalDst).unwrap();
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                0,
                0,
            ))
        }
    }
}

/// One of ztunnel's upstream connections: marked, and from `spoof` when given.
pub fn upstream(dst: SocketAddr, spoof: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
    socket.set_mark(ZTUNNEL_MARK)?;
    if let Some(src) = spoof {
        match src {
            IpAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
            IpAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
        }
        socket.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
    }
    socket.connect_timeout(&SockAddr::from(dst), WAIT)?;
    socket.set_read_timeout(Some(WAIT))?;
    Ok(socket.into())
}

/// Answers one connection: says which listener took it, then relays the upstream's answer.
fn serve(mut client: TcpStream, kind: Listener) {
    let _ = client.set_nonblocking(false);
    let (tag, upstream) = match kind {
        Listener::Hbone => {
            let local = client.local_addr().unwrap();
            let _ = write!(client, "ztunnel-hbone {local}");
            return;
        }
        Listener::Outbound => {
            let dst = original_destination(&client);
            (format!("ztunnel-outbound {dst}"), upstream(dst, None))
        }
        Listener::Inbound => {
            let dst = original_destination(&client);
            let peer = client.peer_addr().unwrap().ip();
            (format!("ztunnel-inbound {dst}"), upstream(dst, Some(peer)))
        }
    };
    let answer = upstream.and_then(|mut up| {
        let mut text = String::new();
        up.read_to_string(&mut text)?;
        Ok(text)
    });
    let _ = match answer {
        Ok(text) => write!(client, "{tag} | {text}"),
        Err(e) => write!(client, "{tag} | upstream failed: {e}"),
    };
}

/// A stand-in ztunnel on its own thread: connects to the agent's ZDS socket (again after the
/// agent restarts), takes each snapshot and every add and del, and keeps one [`Proxy`] per pod.
pub struct Ztunnel {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Ztunnel {
    pub fn start(socket: PathBuf) -> Ztunnel {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, log) = (stop.clone(), log.clone());
            std::thread::spawn(move || {
                let mut proxies: BTreeMap<String, Proxy> = BTreeMap::new();
                while !stop.load(Ordering::SeqCst) {
                    match StandIn::connect(&socket, Duration::from_millis(100)) {
                        Ok(standin) => session(&standin, &mut proxies, &stop, &log),
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })
        };
        Ztunnel {
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// What it was told so far: `snapshot [UID…]`, `add UID`, `del UID`.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log has `n` entries (up to 10 s).
    pub fn wait_for(&self, n: usize) -> Vec<String> {
        for _ in 0..500 {
            if self.log().len() >= n {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.log()
    }
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection to the agent, until it closes: the snapshot (pods not in it are dropped),
/// then adds and dels, each acknowledged.
fn session(
    standin: &StandIn,
    proxies: &mut BTreeMap<String, Proxy>,
    stop: &AtomicBool,
    log: &Mutex<Vec<String>>,
) {
    let mut snapshot: Option<Vec<String>> = Some(Vec::new());
    while !stop.load(Ordering::SeqCst) {
        let received = match standin.receive() {
            Ok(received) => received,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        match received.request {
            Request::Add(add) => {
                if let Some(netns) = &received.netns
                    && !proxies.contains_key(&add.uid)
                {
                    proxies.insert(add.uid.clone(), Proxy::start(netns));
                }
                match &mut snapshot {
                    Some(uids) => uids.push(add.uid),
                    None => log.lock().unwrap().push(format!("add {}", add.uid)),
                }
            }
            Request::Del(del) => {
                proxies.remove(&del.uid);
                log.lock().unwrap().push(format!("del {}", del.uid));
            }
            Request::SnapshotSent(_) => {
                let uids = snapshot.take().unwrap_or_default();
                proxies.retain(|uid, _| uids.contains(uid));
                log.lock().unwrap().push(format!("snapshot {uids:?}"));
            }
            Request::Keep(keep) => log.lock().unwrap().push(format!("keep {}", keep.uid)),
        }
        if standin.ack("").is_err() {
            return;
        }
    }
}
