//! A ztunnel stand-in end to end, in throwaway namespaces: the pod's rules installed by
//! `meshcap ambient pod` (iptables), the pod handed over by meshcap's ZDS agent side, and a
//! stand-in written for this test from the ZDS messages that, like ztunnel, receives the pod's
//! network namespace, opens 15001, 15006 and 15008 inside it and marks its upstream sockets
//! 0x539 (inbound ones also transparent, from the peer's own address).
//!
//! Proves with real TCP: the app's outbound connection arrives at the stand-in and its marked
//! upstream connection goes out without looping back; a peer's inbound connection arrives at
//! it and its spoofed connection to the app is answered through the connection mark and table
//! 100; 15008 is reached directly; the kubelet's probe from the node (the node's rule and probe
//! set) reaches the app from 169.254.7.127, bypassing ztunnel. IPv4 and IPv6. Needs root.

mod ambient_common;
mod common;

use meshcap::ambient::zds::agent::Agent;
use meshcap::ambient::zds::messages::{Request, WorkloadInfo};
use meshcap::ambient::zds::ztunnel::StandIn;
use meshcap::ambient::{ZTUNNEL_MARK, ipset};
use netns_test_harness::probe::{Role, Servers};
use netns_test_harness::{Netns, User, require_root};
use nix::sys::socket::{getsockopt, sockopt};
use socket2::{Domain, SockAddr, Socket, Type};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const APP: User = User::new(1000, 1000);
const PROBE_V6: &str = "2001:db8:7127::1";

// --- the stand-in ------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Listener {
    Outbound,
    Inbound,
    Hbone,
}

/// ztunnel's listeners in one pod, until dropped.
struct Proxy {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Opens the listeners inside `netns` (each on its own thread, which stays in the pod's
    /// namespace for its upstream sockets too), ready when this returns.
    fn start(netns: &File) -> Proxy {
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

fn listen(addr: SocketAddr) -> std::net::TcpListener {
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
fn upstream(dst: SocketAddr, spoof: Option<IpAddr>) -> std::io::Result<TcpStream> {
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

/// The stand-in's ZDS side: the snapshot, then a proxy per added pod, until the agent goes.
fn ztunnel(socket: std::path::PathBuf) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let standin = StandIn::connect(&socket, Duration::from_secs(120)).unwrap();
        assert!(standin.snapshot().unwrap().is_empty());
        let mut proxies: BTreeMap<String, Proxy> = BTreeMap::new();
        let mut log = Vec::new();
        while let Ok(received) = standin.receive() {
            match received.request {
                Request::Add(add) => {
                    let netns = received.netns.expect("an add carries the namespace");
                    proxies.insert(add.uid.clone(), Proxy::start(&netns));
                    log.push(format!("add {}", add.uid));
                }
                Request::Del(del) => {
                    proxies.remove(&del.uid);
                    log.push(format!("del {}", del.uid));
                }
                other => log.push(format!("{other:?}")),
            }
            standin.ack("").unwrap();
        }
        log
    })
}

// --- the pod -----------------------------------------------------------------------------

/// The app: answers `app LOCAL from PEER`, so that the source it sees shows.
fn app(pod: &Netns, stop: Arc<AtomicBool>) -> Vec<JoinHandle<()>> {
    ["0.0.0.0:8080", "[::]:8080"]
        .into_iter()
        .map(|addr| {
            let addr: SocketAddr = addr.parse().unwrap();
            let listener = pod.run(move || listen(addr));
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((mut s, peer)) => {
                            let _ = s.set_nonblocking(false);
                            let local = s.local_addr().unwrap();
                            let _ = write!(s, "app {local} from {}", peer.ip());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        })
        .collect()
}

/// Connects from `ns` (as `user`, else root) and returns everything the other end said.
fn fetch(ns: &Netns, user: Option<User>, dst: &str) -> String {
    let dst: SocketAddr = dst.parse().unwrap();
    let answer = move || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&dst, WAIT)?;
        stream.set_read_timeout(Some(WAIT))?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    };
    let result = match user {
        Some(user) => ns.run_as(user, answer),
        None => ns.run(answer),
    };
    result.unwrap_or_else(|e| format!("error: {e}"))
}

/// A directory removed when dropped, also when the test fails.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn meshcap(args: &[&str]) {
    let out = ambient_common::meshcap(args);
    assert!(
        out.status.success(),
        "meshcap {args:?}: {}",
        common::text(&out)
    );
}

#[test]
fn traffic_flows_through_the_standin_and_probes_bypass_it() {
    let test = "traffic_flows_through_the_standin_and_probes_bypass_it";
    if !require_root(test) {
        return;
    }
    let (pod, node) = (Netns::new("ambsp"), Netns::new("ambsn"));
    pod.link_named(
        &node,
        "eth0",
        "veth",
        &["192.0.2.1/24", "2001:db8:100::1/64"],
        &["192.0.2.2/24", "2001:db8:100::2/64"],
    );
    pod.ip_batch(&[
        "route add default via 192.0.2.2".to_owned(),
        "-6 route add default via 2001:db8:100::2".to_owned(),
    ]);
    node.ip_batch(&[
        "addr add 198.51.100.10/32 dev lo".to_owned(),
        "addr add 2001:db8:1::10/128 dev lo".to_owned(),
    ]);
    let mut servers = Servers::new();
    for addr in ["0.0.0.0:80", "[::]:80"] {
        servers.tcp(&node, addr.parse().unwrap(), Role::Server, false);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let app_threads = app(&pod, stop.clone());

    let path = pod.path();
    let pod_path = path.to_str().unwrap();
    // IPv6's probe address from the documentation range (IPv4's is Istio's default).
    let v6 = ["--ambient-ipv6", "--host-probe-snat-ipv6", PROBE_V6];
    let mut args = vec!["ambient", "pod", "--network-namespace", pod_path];
    args.extend(v6);
    meshcap(&args);
    let host = |extra: &[&str]| {
        let mut argv = vec![common::MESHCAP, "ambient", "host"];
        argv.extend(v6);
        argv.extend(extra);
        node.exec_ok(&argv);
    };
    host(&[]);

    let dir = TempDir(std::env::temp_dir().join(format!("meshcap-standin-{}", std::process::id())));
    let socket = dir.0.join("ztunnel.sock");
    let agent = Agent::listen(&socket, WAIT).unwrap();
    let ztunnel = ztunnel(socket.clone());
    assert!(agent.wait_connected(WAIT));
    let info = WorkloadInfo {
        name: "productpage".into(),
        namespace: "default".into(),
        service_account: "bookinfo".into(),
    };
    // Returns once the stand-in has its listeners up in the pod and has acknowledged.
    agent
        .add("pod-1", info, File::open(&path).unwrap())
        .unwrap();

    let mut rows = Vec::new();
    let mut check = |what: &str, got: String, want: &str| {
        rows.push(format!("{what:<44} -> {got}"));
        assert!(
            got.starts_with(want),
            "{what}: {got:?} does not start with {want:?}\n{}",
            rows.join("\n")
        );
    };
    // Outbound: to ztunnel, and ztunnel's marked connection goes out (no loop).
    check(
        "app -> 198.51.100.10:80",
        fetch(&pod, Some(APP), "198.51.100.10:80"),
        "ztunnel-outbound 198.51.100.10:80 | direct server 198.51.100.10:80",
    );
    check(
        "app -> [2001:db8:1::10]:80",
        fetch(&pod, Some(APP), "[2001:db8:1::10]:80"),
        "ztunnel-outbound [2001:db8:1::10]:80 | direct server [2001:db8:1::10]:80",
    );
    // Inbound: to ztunnel, which reaches the app from the peer's own address.
    check(
        "peer -> 192.0.2.1:8080",
        fetch(&node, None, "192.0.2.1:8080"),
        "ztunnel-inbound 192.0.2.1:8080 | app 192.0.2.1:8080 from 192.0.2.2",
    );
    check(
        "peer -> [2001:db8:100::1]:8080",
        fetch(&node, None, "[2001:db8:100::1]:8080"),
        "ztunnel-inbound [2001:db8:100::1]:8080 | app [2001:db8:100::1]:8080 from 2001:db8:100::2",
    );
    check(
        "peer -> 192.0.2.1:15008",
        fetch(&node, None, "192.0.2.1:15008"),
        "ztunnel-hbone 192.0.2.1:15008",
    );
    // The kubelet's probe from the node: through ztunnel until the pod is in the probe set...
    let addresses: [(&str, IpAddr); 2] = [
        ("istio-inpod-probes-v4", "192.0.2.1".parse().unwrap()),
        ("istio-inpod-probes-v6", "2001:db8:100::1".parse().unwrap()),
    ];
    node.run(move || {
        for (set, addr) in addresses {
            ipset::add(set, addr, Some("pod-1")).unwrap();
        }
    });
    // ...then SNATed to the probe address and let through to the app.
    check(
        "kubelet -> 192.0.2.1:8080",
        fetch(&node, None, "192.0.2.1:8080"),
        "app 192.0.2.1:8080 from 169.254.7.127",
    );
    check(
        "kubelet -> [2001:db8:100::1]:8080",
        fetch(&node, None, "[2001:db8:100::1]:8080"),
        &format!("app [2001:db8:100::1]:8080 from {PROBE_V6}"),
    );

    // DEL: ztunnel lets the pod go; the rules, routes and the node's rule are removed.
    agent.del("pod-1").unwrap();
    drop(agent);
    assert_eq!(ztunnel.join().unwrap(), ["add pod-1", "del pod-1"]);
    meshcap(&[
        "ambient",
        "pod",
        "--cleanup",
        "--network-namespace",
        pod_path,
    ]);
    host(&["--cleanup"]);
    stop.store(true, Ordering::SeqCst);
    for t in app_threads {
        t.join().unwrap();
    }
    assert!(!pod.dump_rulesets().contains("ISTIO_"));
    eprintln!("{}", rows.join("\n"));
}
