//! Data-path cost against list length: microseconds per new TCP connection through a pod
//! namespace whose rules exclude N ports and N CIDRs, the probed connection matching the LAST
//! entry of the list it walks.
//!
//! Two namespaces joined by a veth: the pod (203.0.113.1) and a peer (203.0.113.2).
//! * outbound: a client in the pod, as the app's uid (1000), connects to the peer. In
//!   ISTIO_OUTPUT it passes the loopback and proxy-uid rules, then walks the N excluded CIDRs;
//!   the last one is 203.0.113.2/32, so the connection goes direct (were it captured it would be
//!   refused: nothing listens on 15001).
//! * inbound: a client in the peer connects to the pod's port 9080, the last of the N excluded
//!   ports, so ISTIO_INBOUND walks them all and returns.
//!
//! Only the first packet of a connection walks the nat rules (conntrack remembers the verdict),
//! so the cost shows per connection: connect(), then close with SO_LINGER 0 (a reset, so no
//! TIME_WAIT piles up). Each (series, N, direction) gets its own fresh namespaces; the rule sets
//! of one (N, direction) exist side by side and are measured round-robin. Each client makes
//! `warm-up + rounds × per_round` connections (fewer than the even ephemeral ports of the widened
//! port range, so no 4-tuple repeats while conntrack still remembers it).

use crate::Settings;
use crate::stats::{self, Summary};
use netns_test_harness::{Netns, User};
use socket2::{Domain, Socket, Type};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const LENGTHS: [usize; 5] = [1, 10, 100, 1000, 10000];
const POD: &str = "203.0.113.1";
const PEER: &str = "203.0.113.2";
const PORT: u16 = 9080;
const APP: User = User::new(1000, 1000);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    NoRules,
    NatBaseline,
    IptNft,
    IptLegacy,
    Nftables,
}

impl Series {
    pub const ALL: [Series; 5] = [
        Series::NoRules,
        Series::NatBaseline,
        Series::IptNft,
        Series::IptLegacy,
        Series::Nftables,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Series::NoRules => "no rules",
            Series::NatBaseline => "NAT baseline (one never-matching REDIRECT)",
            Series::IptNft => "meshcap iptables-nft",
            Series::IptLegacy => "meshcap iptables-legacy",
            Series::Nftables => "meshcap nftables (sets)",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Series::NoRules => "no rules",
            Series::NatBaseline => "NAT baseline",
            Series::IptNft => "iptables-nft",
            Series::IptLegacy => "iptables-legacy",
            Series::Nftables => "meshcap nftables",
        }
    }

    /// How the pod's rules are installed, as the report prints it.
    pub fn install(self) -> &'static str {
        match self {
            Series::NoRules => "nothing",
            Series::NatBaseline => {
                "`nft -f`: table ip natbase, nat chains on prerouting and output, each with one \
                 rule `ip daddr 198.51.100.99 tcp dport 9 redirect to :15001` (never matches)"
            }
            Series::IptNft => "`meshcap ARGS --force-iptables-binary nft`",
            Series::IptLegacy => "`meshcap ARGS --force-iptables-binary legacy`",
            Series::Nftables => "`meshcap ARGS --backend nftables`",
        }
    }

    pub fn uses_lists(self) -> bool {
        !matches!(self, Series::NoRules | Series::NatBaseline)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Outbound, Direction::Inbound];
    pub fn label(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound (walks the N excluded CIDRs)",
            Direction::Inbound => "inbound (walks the N excluded ports)",
        }
    }
    pub fn short(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Point {
    pub series: Series,
    pub direction: Direction,
    pub n: usize,
    /// Microseconds per connection (per round: round time / connections), median over rounds.
    pub summary: Option<Summary>,
    /// Per round (index, µs per connection).
    pub samples: Vec<(usize, f64)>,
    pub note: Option<String>,
}

pub struct Datapath {
    pub points: Vec<Point>,
    pub rounds: usize,
    pub per_round: usize,
    pub warmup: usize,
}

impl Datapath {
    pub fn median(&self, series: Series, direction: Direction, n: usize) -> Option<f64> {
        self.points
            .iter()
            .find(|p| p.series == series && p.direction == direction && p.n == n)
            .and_then(|p| p.summary)
            .map(|s| s.median)
    }

    /// Paired ratio a/b (same rounds, see [`stats::paired`]).
    pub fn ratio(&self, a: Series, b: Series, d: Direction, n: usize) -> Option<Summary> {
        let pa = self.get(a, d, n).filter(|p| p.summary.is_some())?;
        let pb = self.get(b, d, n).filter(|p| p.summary.is_some())?;
        stats::paired(&pa.samples, &pb.samples)
    }

    pub fn get(&self, series: Series, direction: Direction, n: usize) -> Option<&Point> {
        self.points
            .iter()
            .find(|p| p.series == series && p.direction == direction && p.n == n)
    }
}

const NAT_BASELINE: &str = "table ip natbase {
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        ip daddr 198.51.100.99 tcp dport 9 redirect to :15001
    }
    chain output {
        type nat hook output priority -100; policy accept;
        ip daddr 198.51.100.99 tcp dport 9 redirect to :15001
    }
}
";

/// Installs a series' rules for N entries into the pod.
fn install(series: Series, pod: &Netns, meshcap: &str, n: usize) -> Result<(), String> {
    let args = stats::meshcap_args(
        &stats::ports(n, Some(PORT)),
        &stats::cidrs(n, Some(&format!("{PEER}/32"))),
    );
    let mut argv: Vec<String> = vec![meshcap.to_owned()];
    argv.extend(args);
    let out = match series {
        Series::NoRules => return Ok(()),
        Series::NatBaseline => pod.exec_with_input(&["nft", "-f", "-"], NAT_BASELINE),
        Series::IptNft | Series::IptLegacy | Series::Nftables => {
            argv.extend(
                match series {
                    Series::IptNft => ["--force-iptables-binary", "nft"],
                    Series::IptLegacy => ["--force-iptables-binary", "legacy"],
                    _ => ["--backend", "nftables"],
                }
                .map(String::from),
            );
            let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
            pod.exec(&refs)
        }
    };
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "installing the rules failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A listener that accepts and drops connections on its own thread inside `ns`, until dropped.
struct Server {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    ns_thread: Option<std::thread::JoinHandle<()>>,
    client_ns: String,
}

impl Server {
    fn start(ns: &Netns, bind: SocketAddr, reach: SocketAddr, client: &Netns) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let handle = ns.thread(None, move || {
            let l = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
            l.set_reuse_address(true).expect("reuseaddr");
            l.bind(&bind.into()).expect("bind");
            l.listen(4096).expect("listen");
            tx.send(()).expect("ready");
            while !flag.load(Ordering::Relaxed) {
                if let Ok((s, _)) = l.accept() {
                    drop(s);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("server ready");
        Server {
            stop,
            addr: reach,
            ns_thread: Some(handle),
            client_ns: client.name().to_owned(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept() with one last connection from the client's namespace.
        let addr = self.addr;
        let path = std::path::PathBuf::from("/var/run/netns").join(&self.client_ns);
        let _ = std::thread::spawn(move || {
            use std::os::fd::AsFd;
            let f = std::fs::File::open(path).ok()?;
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()
        })
        .join();
        if let Some(h) = self.ns_thread.take() {
            let _ = h.join();
        }
    }
}

/// One connection: connect, then close with a reset. Err if it does not connect.
fn connect_once(addr: &socket2::SockAddr) -> std::io::Result<()> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.connect(addr)?;
    s.set_linger(Some(Duration::ZERO))?;
    drop(s);
    Ok(())
}

/// Microseconds per connection of each round, after a discarded warm-up.
fn measure(
    addr: SocketAddr,
    warmup: usize,
    rounds: usize,
    per_round: usize,
) -> Result<Vec<f64>, String> {
    let addr = socket2::SockAddr::from(addr);
    for _ in 0..warmup {
        connect_once(&addr).map_err(|e| format!("connect {addr:?}: {e}"))?;
    }
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per_round {
            connect_once(&addr).map_err(|e| format!("connect {addr:?}: {e}"))?;
        }
        out.push(t.elapsed().as_secs_f64() * 1e6 / per_round as f64);
    }
    Ok(out)
}

/// One rule set's pod and peer for a (N, direction), with its listener running.
struct Setup {
    series: Series,
    // Field order is drop order: the server (which connects once to wake its accept) first.
    _server: Server,
    client: Netns,
    _other: Netns,
    to: SocketAddr,
}

fn setup(
    series: Series,
    direction: Direction,
    n: usize,
    settings: &Settings,
) -> Result<Setup, String> {
    let pod = Netns::new("dppod");
    let peer = Netns::new("dppeer");
    pod.link_named(
        &peer,
        "eth0",
        "eth0",
        &[&format!("{POD}/24")],
        &[&format!("{PEER}/24")],
    );
    for ns in [&pod, &peer] {
        // A wide ephemeral range: the run never reuses a 4-tuple conntrack may still remember.
        ns.sysctl(&["net.ipv4.ip_local_port_range=1024 65535"]);
    }
    install(series, &pod, &settings.meshcap, n)?;
    let any = |ip: &str| SocketAddr::new(ip.parse().unwrap(), PORT);
    Ok(match direction {
        Direction::Outbound => Setup {
            series,
            _server: Server::start(&peer, any("0.0.0.0"), any(PEER), &pod),
            client: pod,
            _other: peer,
            to: any(PEER),
        },
        Direction::Inbound => Setup {
            series,
            _server: Server::start(&pod, any("0.0.0.0"), any(POD), &peer),
            client: peer,
            _other: pod,
            to: any(POD),
        },
    })
}

/// Every rule set of one (N, direction) side by side, measured round-robin: round r of each
/// rule set runs before round r+1 of any, so a busy moment of the machine hits them all alike.
fn group(
    direction: Direction,
    n: usize,
    settings: &Settings,
    shape: (usize, usize, usize),
) -> Vec<Point> {
    let (warmup, rounds, per_round) = shape;
    let mut points = Vec::new();
    let mut setups = Vec::new();
    for series in Series::ALL {
        match setup(series, direction, n, settings) {
            Ok(s) => setups.push(s),
            Err(e) => {
                eprintln!(
                    "datapath: {} N={n} {}: {e}",
                    series.short(),
                    direction.short()
                );
                points.push(Point {
                    series,
                    direction,
                    n,
                    summary: None,
                    samples: Vec::new(),
                    note: Some(e),
                });
            }
        }
    }
    let mut samples: Vec<Vec<(usize, f64)>> = vec![Vec::new(); setups.len()];
    let mut failed: Vec<Option<String>> = vec![None; setups.len()];
    for round in 0..=rounds {
        for (i, s) in setups.iter().enumerate() {
            if failed[i].is_some() {
                continue;
            }
            let to = s.to;
            // Round 0 is the warm-up, discarded.
            let count = if round == 0 { warmup } else { per_round };
            match s.client.run_as(APP, move || measure(to, 0, 1, count)) {
                Ok(us) if round > 0 => samples[i].extend(us.into_iter().map(|v| (round, v))),
                Ok(_) => {}
                Err(e) => failed[i] = Some(e),
            }
        }
    }
    for (i, s) in setups.iter().enumerate() {
        let summary = if failed[i].is_some() {
            None
        } else {
            Summary::of(&samples[i].iter().map(|(_, v)| *v).collect::<Vec<_>>())
        };
        match (&summary, &failed[i]) {
            (Some(m), _) => eprintln!(
                "datapath: N={n:>5} {:<9} {:<18} {:7.1} µs/conn ({:.1} – {:.1}, n={})",
                direction.short(),
                s.series.short(),
                m.median,
                m.min,
                m.max,
                m.n
            ),
            (None, e) => eprintln!(
                "datapath: {} N={n} {}: {}",
                s.series.short(),
                direction.short(),
                e.as_deref().unwrap_or("no sample")
            ),
        }
        points.push(Point {
            series: s.series,
            direction,
            n,
            summary,
            samples: samples[i].clone(),
            note: failed[i].clone(),
        });
    }
    drop(setups);
    points
}

pub fn run(settings: &Settings) -> Datapath {
    let (warmup, rounds, per_round) = if settings.quick {
        (200, 7, 500)
    } else {
        (1000, settings.samples.max(5) + 6, 1000)
    };
    assert!(
        warmup + rounds * per_round < 30_000,
        "more connections than even ports"
    );
    let mut points = Vec::new();
    for &n in &LENGTHS {
        if settings.quick && n > 1000 {
            continue;
        }
        for direction in Direction::ALL {
            points.extend(group(direction, n, settings, (warmup, rounds, per_round)));
        }
    }
    Datapath {
        points,
        rounds,
        per_round,
        warmup,
    }
}
