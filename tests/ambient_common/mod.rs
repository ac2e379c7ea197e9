//! What the ambient tests share: meshcap run with none of the agent's variables from the
//! test's own environment (they would change the rules), the node agent started and stopped
//! in a throwaway node namespace, a pod and its node, the ztunnel stand-in.
#![allow(dead_code)]

pub mod standin;

use std::ffi::OsStr;
use std::process::{Command, Output};

/// The agent's environment variables `meshcap ambient` reads.
pub const AGENT_VARIABLES: [&str; 4] = [
    "HOST_PROBE_SNAT_IP",
    "HOST_PROBE_SNAT_IPV6",
    "AMBIENT_DNS_CAPTURE",
    "AMBIENT_IPV6",
];

/// `meshcap ARGS` (logging at info), whatever its exit status.
pub fn meshcap<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_meshcap"));
    command.args(args).env("MESHCAP_LOG", "info");
    for var in AGENT_VARIABLES {
        command.env_remove(var);
    }
    command.output().unwrap()
}

use netns_test_harness::probe::{Role, Servers};
use netns_test_harness::{Netns, User};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long any one exchange may take before a test calls it failed.
pub const WAIT: Duration = Duration::from_secs(10);
/// The app's user.
pub const APP: User = User::new(1000, 1000);
/// IPv6's probe SNAT address in these tests (a documentation address; IPv4's is Istio's).
pub const PROBE_V6: &str = "2001:db8:7127::1";

/// A directory under the temporary directory, removed when dropped (also when a test fails).
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Each call its own directory: the tests of one binary run in parallel in one process, so
    /// the process id alone would give two of them the same sockets and state.
    pub fn new(tag: &str) -> TempDir {
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let name = format!("meshcap-{tag}-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A pod and its node: `pod` (192.0.2.1, 2001:db8:100::1; the app on 8080 answers
/// `app LOCAL from PEER`) linked to `node` (192.0.2.2, 2001:db8:100::2; servers on port 80 of
/// 198.51.100.10 and 2001:db8:1::10 answer `direct server LOCAL`).
pub struct Topology {
    // Dropped first: the listener threads stop before their namespaces go.
    _servers: Servers,
    stop: Arc<AtomicBool>,
    app: Vec<JoinHandle<()>>,
    pub pod: Netns,
    pub node: Netns,
}

impl Topology {
    pub fn new(tag: &str) -> Topology {
        let (pod, node) = (
            Netns::new(&format!("{tag}p")),
            Netns::new(&format!("{tag}n")),
        );
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
        let app = ["0.0.0.0:8080", "[::]:8080"]
            .into_iter()
            .map(|addr| {
                let addr: SocketAddr = addr.parse().unwrap();
                let listener = pod.run(move || standin::listen(addr));
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
            .collect();
        Topology {
            _servers: servers,
            stop,
            app,
            pod,
            node,
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.app.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects from `ns` (as `user`, else root) and returns everything the other end said.
pub fn fetch(ns: &Netns, user: Option<User>, dst: &str) -> String {
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

/// Whether the agent in `node` has `addr` in its IPv4 probe set.
pub fn in_probe_set(node: &Netns, addr: std::net::IpAddr) -> bool {
    node.run(move || meshcap::ambient::ipset::contains("istio-inpod-probes-v4", addr).unwrap())
}

/// Where an agent of a test keeps its sockets and state (all under a [`TempDir`]).
pub struct AgentPaths {
    pub zds: PathBuf,
    pub control: PathBuf,
    pub state: PathBuf,
}

impl AgentPaths {
    pub fn in_dir(dir: &std::path::Path) -> AgentPaths {
        AgentPaths {
            zds: dir.join("ztunnel.sock"),
            control: dir.join("ambient.sock"),
            state: dir.join("state"),
        }
    }
}

/// `meshcap ambient agent` in `node` with these paths (ack timeout 3 s) and `extra` flags,
/// once its control socket is there (it is bound last).
pub fn start_agent(
    node: &Netns,
    paths: &AgentPaths,
    extra: &[&str],
) -> netns_test_harness::Process {
    spawn_agent(node, paths, extra, &[])
}

/// [`start_agent`], but in the test's own mount namespace rather than the private one `ip netns
/// exec` makes, as a DaemonSet with the host's mounts (HostToContainer) runs it: it then sees
/// the pods' namespaces a runtime bind-mounts after it started (containerd's, under its state
/// directory; this machine's `/` is not a shared mount, so nothing propagates).
pub fn start_node_agent(
    node: &Netns,
    paths: &AgentPaths,
    extra: &[&str],
) -> netns_test_harness::Process {
    let mounts = format!("--mount=/proc/{}/ns/mnt", std::process::id());
    spawn_agent(node, paths, extra, &["nsenter", &mounts, "--"])
}

fn spawn_agent(
    node: &Netns,
    paths: &AgentPaths,
    extra: &[&str],
    prefix: &[&str],
) -> netns_test_harness::Process {
    let mut args = prefix.to_vec();
    args.extend([
        env!("CARGO_BIN_EXE_meshcap"),
        "ambient",
        "agent",
        "--zds-socket",
        paths.zds.to_str().unwrap(),
        "--control-socket",
        paths.control.to_str().unwrap(),
        "--state-dir",
        paths.state.to_str().unwrap(),
        "--ack-timeout",
        "3",
    ]);
    args.extend(extra);
    let agent = node.spawn(&args, None);
    for _ in 0..500 {
        if paths.control.exists() {
            return agent;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = agent.stop();
    panic!(
        "the agent did not start: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stops the agent with SIGTERM; it must exit 0.
pub fn stop_agent(agent: netns_test_harness::Process) {
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let out = agent.wait();
    assert!(
        out.status.success(),
        "agent: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
