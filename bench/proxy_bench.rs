//! Benchmark of `meshcap proxy` on the inbound path (peer namespace -> pod's app through the
//! REDIRECT capture and the proxy), against the same path with no rules and no proxy ("direct")
//! and with socat as the proxy, all in one run. Needs root and socat.
//!
//!     cargo bench --bench proxy_bench            # full: 1 GiB transfers, 20 000 round trips
//!     cargo bench --bench proxy_bench -- quick   # 128 MiB, 2 000 round trips
//!
//! Measures: throughput of one 1 GiB upload, p50/p99 of 64-byte request/response round trips on
//! one connection, and the proxy's resident memory (default engine) idle after the uploads, with
//! 1000 idle connections, and at its peak.
//! The servers are this binary re-run with a role (`sink`, `echo`, `hold`) as uid 1000.

use netns_test_harness::{ISTIO_DEFAULT_ARGS, Netns, Process};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const MESHCAP: &str = env!("CARGO_BIN_EXE_meshcap");
const POD: &str = "192.0.2.1";
const PEER: &str = "192.0.2.2";
const SINK: u16 = 9080;
const ECHO: u16 = 9081;
const HOLD: u16 = 9082;
const MSG: usize = 64;

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

// ---- server roles (run as separate processes) ----

fn role_sink(port: u16) {
    let l = TcpListener::bind(sa("0.0.0.0", port)).unwrap();
    for s in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut s = s;
            let mut buf = vec![0u8; 256 * 1024];
            let mut total: u64 = 0;
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n as u64,
                }
            }
            let _ = s.write_all(&total.to_be_bytes());
        });
    }
}

fn role_echo(port: u16) {
    let l = TcpListener::bind(sa("0.0.0.0", port)).unwrap();
    for s in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut s = s;
            let _ = s.set_nodelay(true);
            let mut buf = [0u8; MSG];
            while s.read_exact(&mut buf).is_ok() {
                if s.write_all(&buf).is_err() {
                    break;
                }
            }
        });
    }
}

fn role_hold(port: u16) {
    let l = TcpListener::bind(sa("0.0.0.0", port)).unwrap();
    let mut held = Vec::new();
    for s in l.incoming().flatten() {
        held.push(s);
    }
}

// ---- client side (runs in the peer namespace) ----

fn throughput(bytes: u64) -> f64 {
    let mut s = TcpStream::connect(sa(POD, SINK)).expect("connect sink");
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).expect("upload");
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut ack = [0u8; 8];
    s.read_exact(&mut ack).expect("ack");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(u64::from_be_bytes(ack), bytes, "the sink got every byte");
    bytes as f64 * 8.0 / secs / 1e9
}

fn latency(rounds: usize) -> (f64, f64) {
    let mut s = TcpStream::connect(sa(POD, ECHO)).expect("connect echo");
    s.set_nodelay(true).unwrap();
    let msg = [7u8; MSG];
    let mut back = [0u8; MSG];
    // Warm-up.
    for _ in 0..rounds / 10 {
        s.write_all(&msg).unwrap();
        s.read_exact(&mut back).unwrap();
    }
    let mut us: Vec<f64> = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        s.write_all(&msg).unwrap();
        s.read_exact(&mut back).unwrap();
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    us.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (us[rounds / 2], us[rounds * 99 / 100])
}

/// A `/proc/PID/status` memory line in KiB: `VmRSS` (resident now) or `VmHWM` (peak).
fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The machine's CPU time so far, from /proc/stat's `cpu` line, in clock ticks: (busy, steal).
/// Busy is user + nice + system + irq + softirq; steal is time the hypervisor ran something
/// else while a CPU of ours wanted to run.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    (f[0] + f[1] + f[2] + f[5] + f[6], f[7])
}

/// One path's best upload of the run, with the machine's CPU cost of it.
#[derive(Clone, Copy)]
struct Transfer {
    gbps: f64,
    /// CPU time (all CPUs, all processes: sender, proxy, receiver, softirq) per GiB moved.
    cpu_s_per_gib: f64,
    /// Busy CPUs during the transfer, on average.
    cpus_busy: f64,
    /// Share of the transfer's CPU time the hypervisor took away (steal).
    steal: f64,
}

/// Best of two uploads: the machine is shared by client, proxy and server.
fn best_transfer(peer: &Netns, bytes: u64) -> Transfer {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    let one = || {
        let (busy0, steal0) = cpu_ticks();
        let start = Instant::now();
        let gbps = peer.run(move || throughput(bytes));
        let secs = start.elapsed().as_secs_f64();
        let (busy1, steal1) = cpu_ticks();
        let busy = (busy1 - busy0) as f64 / hz;
        let stolen = (steal1 - steal0) as f64 / hz;
        Transfer {
            gbps,
            cpu_s_per_gib: busy / (bytes as f64 / (1u64 << 30) as f64),
            cpus_busy: busy / secs,
            steal: stolen / (busy + stolen).max(1e-9),
        }
    };
    let (a, b) = (one(), one());
    if a.gbps >= b.gbps { a } else { b }
}

struct Result {
    name: &'static str,
    transfer: Transfer,
    p50: f64,
    p99: f64,
}

fn report(name: &'static str, transfer: Transfer, (p50, p99): (f64, f64)) -> Result {
    let t = transfer;
    eprintln!(
        "{name:>16}: {:6.2} Gbit/s  {:.2} CPU-s/GiB  {:.2} CPUs busy  steal {:.0}%  \
         p50 {p50:7.1} us  p99 {p99:7.1} us",
        t.gbps,
        t.cpu_s_per_gib,
        t.cpus_busy,
        t.steal * 100.0
    );
    Result {
        name,
        transfer,
        p50,
        p99,
    }
}

fn measure(name: &'static str, peer: &Netns, bytes: u64, rounds: usize) -> Result {
    let transfer = best_transfer(peer, bytes);
    report(name, transfer, peer.run(move || latency(rounds)))
}

fn wait_port(ns: &Netns, addr: SocketAddr) {
    ns.run(move || {
        for _ in 0..200 {
            if TcpStream::connect(addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("{addr} never answered");
    })
}

fn start_proxy(pod: &Netns, engine: &str) -> Process {
    let extra = std::env::var("PROXY_BENCH_ARGS").unwrap_or_default();
    let mut argv = vec![MESHCAP, "proxy", "--engine", engine];
    argv.extend(extra.split_whitespace());
    let p = pod.spawn(&argv, Some((1337, 1337)));
    pod.run(|| {
        for _ in 0..200 {
            if let Ok(mut s) = TcpStream::connect(sa("127.0.0.1", 15021)) {
                let _ = s.write_all(b"GET /healthz/ready HTTP/1.1\r\n\r\n");
                let mut r = String::new();
                let _ = s.read_to_string(&mut r);
                if r.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("proxy not ready");
    });
    p
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
}

fn main() {
    raise_fd_limit();
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("sink") => return role_sink(SINK),
        Some("echo") => return role_echo(ECHO),
        Some("hold") => return role_hold(HOLD),
        _ => {}
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("proxy_bench: needs root (network namespaces); skipped");
        return;
    }
    let quick = args.iter().any(|a| a == "quick");
    let (bytes, rounds) = if quick {
        (128 << 20, 2_000)
    } else {
        (1 << 30, 20_000)
    };
    let pod = Netns::new("benchpod");
    let peer = Netns::new("benchpeer");
    pod.link(&peer, &[&format!("{POD}/24")], &[&format!("{PEER}/24")]);
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();
    let _servers: Vec<Process> = ["sink", "echo", "hold"]
        .iter()
        .map(|role| pod.spawn(&[exe, role], Some((1000, 1000))))
        .collect();
    for port in [SINK, ECHO, HOLD] {
        wait_port(&peer, sa(POD, port));
    }
    eprintln!(
        "proxy_bench: {} MiB transfers, {rounds} round trips of {MSG} bytes, {} CPUs",
        bytes >> 20,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let mut results = vec![measure("direct", &peer, bytes, rounds)];

    let mut argv = vec![MESHCAP];
    argv.extend(ISTIO_DEFAULT_ARGS);
    argv.extend(["--ipv6", "off", "--force-iptables-binary", "nft"]);
    let out = pod.exec(&argv);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut memory = None;
    for engine in ["splice", "copy"] {
        let proxy = start_proxy(&pod, engine);
        results.push(measure(
            if engine == "splice" {
                "meshcap splice"
            } else {
                "meshcap copy"
            },
            &peer,
            bytes,
            rounds,
        ));
        // Memory of the default engine: after its uploads (buffers grown to 1 MiB and freed with
        // their connections), then with 1000 idle connections, and the peak over the run.
        if engine == "copy" {
            let pid = proxy.pid();
            let idle = status_kib(pid, "VmRSS");
            let conns: Vec<TcpStream> = peer.run(|| {
                (0..1000)
                    .map(|_| TcpStream::connect(sa(POD, HOLD)).expect("idle connection"))
                    .collect()
            });
            std::thread::sleep(Duration::from_millis(500));
            let loaded = status_kib(pid, "VmRSS");
            drop(conns);
            memory = Some((idle, loaded, status_kib(pid, "VmHWM")));
        }
        proxy.stop();
    }

    // socat as the proxy: same capture, fixed target (socat cannot read the original destination).
    let socat = pod.spawn(
        &[
            "socat",
            "TCP-LISTEN:15006,fork,reuseaddr",
            &format!("TCP:{POD}:{SINK},bind=127.0.0.6"),
        ],
        Some((1337, 1337)),
    );
    wait_port(&pod, sa("127.0.0.1", 15006));
    let transfer = best_transfer(&peer, bytes);
    socat.stop();
    let socat_echo = pod.spawn(
        &[
            "socat",
            "TCP-LISTEN:15006,fork,reuseaddr,nodelay",
            &format!("TCP:{POD}:{ECHO},bind=127.0.0.6,nodelay"),
        ],
        Some((1337, 1337)),
    );
    wait_port(&pod, sa("127.0.0.1", 15006));
    let latency = peer.run(move || latency(rounds));
    socat_echo.stop();
    results.push(report("socat", transfer, latency));

    let direct = &results[0];
    let socat = results.last().unwrap();
    println!(
        "\n| path | Gbit/s | vs direct | vs socat | CPU-s/GiB | CPUs busy | p50 us | p99 us | \
         added p50 us |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        let t = r.transfer;
        println!(
            "| {} | {:.2} | {:.0}% | {:.2}x | {:.2} | {:.2} | {:.1} | {:.1} | {:+.1} |",
            r.name,
            t.gbps,
            100.0 * t.gbps / direct.transfer.gbps,
            t.gbps / socat.transfer.gbps,
            t.cpu_s_per_gib,
            t.cpus_busy,
            r.p50,
            r.p99,
            r.p50 - direct.p50
        );
    }
    if let Some((idle, loaded, peak)) = memory {
        println!(
            "\nmeshcap proxy (copy) RSS: idle after the uploads {idle} KiB; with 1000 idle \
             connections {loaded} KiB (+{} KiB, {:.1} KiB per connection); peak {peak} KiB",
            loaded.saturating_sub(idle),
            loaded.saturating_sub(idle) as f64 / 1000.0
        );
    }

    // The same numbers as one JSON line, read by the benchmark report (bench/report).
    let rows: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let t = r.transfer;
            serde_json::json!({
                "name": r.name, "gbps": t.gbps, "p50_us": r.p50, "p99_us": r.p99,
                "cpu_s_per_gib": t.cpu_s_per_gib, "cpus_busy": t.cpus_busy, "steal": t.steal,
            })
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "bench": "proxy",
            "bytes": bytes,
            "rounds": rounds,
            "results": rows,
            "rss_idle_kib": memory.map(|m| m.0),
            "rss_1000_idle_conns_kib": memory.map(|m| m.1),
            "rss_peak_kib": memory.map(|m| m.2),
        })
    );
}
