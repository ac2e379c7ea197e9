//! End to end on a real kernel: a pod namespace holding meshcap's rules (installed by the real
//! binary), `meshcap proxy` as the proxy uid, an HTTP app as another uid, and a peer namespace
//! (192.0.2.2) with a client and an upstream server.
//!
//! The app and the upstream are this test binary itself: started with `MESHCAP_E2E_APP=<addrs>`
//! in its environment, it serves bench/proxy_app.rs's paths before the test harness starts (see
//! [`APP_HOOK`]), so no other program or language is needed.

#[path = "../bench/proxy_app.rs"]
mod app;
mod common;

use common::{MESHCAP, NO_ENV, istio_args, meshcap_in, ok};
use netns_test_harness::{Netns, Process, require_root};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const POD: &str = "192.0.2.1";
const PEER: &str = "192.0.2.2";
const APP_PORT: u16 = 9080;
const UPSTREAM_PORT: u16 = 8080;
/// The app's uid: anything but the proxy's.
const APP_UID: u32 = 1000;

/// Runs the app instead of the tests when `MESHCAP_E2E_APP` is set (comma-separated addresses).
#[used]
#[unsafe(link_section = ".init_array")]
static APP_HOOK: extern "C" fn() = app_hook;

extern "C" fn app_hook() {
    if let Ok(spec) = std::env::var("MESHCAP_E2E_APP") {
        let addrs: Vec<SocketAddr> = spec
            .split(',')
            .map(|a| a.parse().expect("MESHCAP_E2E_APP: socket addresses"))
            .collect();
        app::serve(&addrs);
    }
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Retries `f` until it returns Some, for up to ~10 s.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// How the proxy process is started.
enum ProxyUser {
    /// uid/gid 1337, no capabilities (REDIRECT), exactly `setpriv --reuid 1337 --regid 1337
    /// --clear-groups meshcap proxy`.
    Proxy,
    /// uid 0, gid 1337: what Istio's injector does for TPROXY pods (runAsUser 0, runAsGroup 1337).
    RootGid1337,
    /// uid/gid 1337 with CAP_NET_ADMIN as an ambient capability (IP_TRANSPARENT, SO_MARK).
    ProxyWithNetAdmin,
}

struct Pod {
    pod: Netns,
    peer: Netns,
    proxy: Option<Process>,
    _app: Process,
    _upstream: Process,
}

impl Pod {
    /// Sets up both namespaces, meshcap's rules in `mode` and the app and upstream; the proxy is
    /// started by [`Pod::start_proxy`].
    fn new(tag: &str, mode: &str) -> Pod {
        Pod::with_flags(tag, mode, &[])
    }

    /// As [`Pod::new`], with extra installer flags.
    fn with_flags(tag: &str, mode: &str, flags: &[&str]) -> Pod {
        let pod = Netns::new(&format!("pod{tag}"));
        let peer = Netns::new(&format!("peer{tag}"));
        pod.link(&peer, &[&format!("{POD}/24")], &[&format!("{PEER}/24")]);

        let mut args = istio_args(&[
            "-m",
            mode,
            "--ipv6",
            "off",
            "--force-iptables-binary",
            "nft",
        ]);
        args.extend(flags);
        ok(&meshcap_in(&pod, &args, NO_ENV));
        if mode == "TPROXY" {
            // The installer's routing steps are in place (fwmark rule, local route in table 133).
            let rules = pod.exec_ok(&["ip", "-4", "rule", "show"]);
            assert!(rules.contains("fwmark 0x539 lookup 133"), "{rules}");
        }

        let exe = std::env::current_exe().unwrap();
        let exe = exe.to_str().unwrap();
        let app_env = format!("MESHCAP_E2E_APP=0.0.0.0:{APP_PORT}");
        let app = pod.spawn(&["env", &app_env, exe], Some((APP_UID, APP_UID)));
        let up_env = format!("MESHCAP_E2E_APP={PEER}:{UPSTREAM_PORT}");
        let upstream = peer.spawn(&["env", &up_env, exe], None);
        // Both answer (root's own connections are never captured).
        pod.run(|| {
            eventually("the app", || {
                TcpStream::connect(sa("127.0.0.1", APP_PORT)).ok()
            })
        });
        peer.run(|| {
            eventually("the upstream", || {
                TcpStream::connect(sa(PEER, UPSTREAM_PORT)).ok()
            })
        });
        Pod {
            pod,
            peer,
            proxy: None,
            _app: app,
            _upstream: upstream,
        }
    }

    fn start_proxy(&mut self, user: ProxyUser, extra: &[&str]) {
        self.start_proxy_env(user, &[], extra);
    }

    /// Starts the proxy with `env` (`NAME=value`) in its environment and waits until it is ready.
    fn start_proxy_env(&mut self, user: ProxyUser, env: &[&str], extra: &[&str]) {
        let mut argv: Vec<&str> = match user {
            ProxyUser::Proxy | ProxyUser::RootGid1337 => vec![],
            ProxyUser::ProxyWithNetAdmin => vec![
                "setpriv",
                "--reuid",
                "1337",
                "--regid",
                "1337",
                "--clear-groups",
                "--inh-caps",
                "+net_admin",
                "--ambient-caps",
                "+net_admin",
            ],
        };
        if !env.is_empty() {
            argv.push("env");
            argv.extend(env);
        }
        argv.extend([MESHCAP, "proxy"]);
        argv.extend(extra);
        let creds = match user {
            ProxyUser::Proxy => Some((1337, 1337)),
            ProxyUser::RootGid1337 => Some((0, 1337)),
            ProxyUser::ProxyWithNetAdmin => None,
        };
        let proxy = self.pod.spawn(&argv, creds);
        self.proxy = Some(proxy);
        let ready = self.pod.run(|| {
            eventually("readiness", || {
                match app::get(sa("127.0.0.1", 15021), "/healthz/ready") {
                    Ok((200, body)) => Some(body),
                    _ => None,
                }
            })
        });
        assert_eq!(ready, "ready\n");
    }

    /// GET from the peer namespace.
    fn peer_get(&self, addr: SocketAddr, path: &str) -> (u16, String) {
        let path = path.to_owned();
        self.peer
            .run(move || app::get(addr, &path))
            .unwrap_or_else(|e| panic!("GET {addr}: {e}"))
    }

    fn metrics(&self) -> String {
        let (code, body) = self
            .pod
            .run(|| app::get(sa("127.0.0.1", 15090), "/stats/prometheus"))
            .expect("stats endpoint");
        assert_eq!(code, 200, "{body}");
        body
    }

    /// Waits until no connection is open (the last one's close is counted after the client saw
    /// its response), then returns the metrics.
    fn settled_metrics(&self) -> String {
        eventually("connections to close", || {
            let m = self.metrics();
            (value(&m, "meshcap_connections_active{direction=\"inbound\"}") == 0
                && value(&m, "meshcap_connections_active{direction=\"outbound\"}") == 0)
                .then_some(m)
        })
    }

    fn stop_proxy(&mut self) -> String {
        let out = self.proxy.take().expect("proxy").stop();
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// The value of one series in Prometheus text.
fn value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

/// The address the app reported as its peer (`peer=<addr> local=<addr>`).
fn seen_peer(body: &str) -> SocketAddr {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("peer="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no peer in {body:?}"))
}

/// Inbound and outbound through the proxy; checks the counters and that nothing went round twice.
fn inbound_and_outbound(pod: &Pod, want_peer_ip: &str) {
    // peer -> app: captured to 15006, handed to the app.
    let (code, body) = pod.peer_get(sa(POD, APP_PORT), "/whoami");
    assert_eq!(code, 200, "{body}");
    assert_eq!(seen_peer(&body).ip().to_string(), want_peer_ip, "{body}");
    assert!(body.contains(&format!("local={POD}:{APP_PORT}")), "{body}");

    // peer -> app -> upstream: the app's call is captured to 15001 and forwarded.
    let (code, body) = pod.peer_get(sa(POD, APP_PORT), &format!("/fetch/{PEER}:{UPSTREAM_PORT}"));
    assert_eq!(code, 200, "{body}");
    let upstream_saw = body
        .strip_prefix("upstream: ")
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(seen_peer(upstream_saw).ip().to_string(), POD, "{body}");
    assert!(
        upstream_saw.contains(&format!("local={PEER}:{UPSTREAM_PORT}")),
        "{body}"
    );

    // Exactly two inbound and one outbound connection: had the proxy's own connections been
    // captured again, they would have come back to its listeners and been counted (or refused).
    let m = pod.settled_metrics();
    assert_eq!(
        value(&m, "meshcap_connections_total{direction=\"inbound\"}"),
        2,
        "{m}"
    );
    assert_eq!(
        value(&m, "meshcap_connections_total{direction=\"outbound\"}"),
        1,
        "{m}"
    );
    for dir in ["inbound", "outbound"] {
        assert_eq!(
            value(
                &m,
                &format!("meshcap_connect_errors_total{{direction=\"{dir}\"}}")
            ),
            0,
            "{m}"
        );
        for reason in ["loop", "limit", "no_destination"] {
            let s = format!(
                "meshcap_connections_refused_total{{direction=\"{dir}\",reason=\"{reason}\"}}"
            );
            assert_eq!(value(&m, &s), 0, "{m}");
        }
        // Bytes moved both ways.
        for flow in ["rx", "tx"] {
            let s = format!("meshcap_bytes_total{{direction=\"{dir}\",flow=\"{flow}\"}}");
            assert!(value(&m, &s) > 0, "{s} in\n{m}");
        }
    }
    // The outbound response is the upstream's whole answer, which the app forwarded inbound:
    // inbound tx holds both responses, so it exceeds outbound tx.
    assert!(
        value(&m, "meshcap_bytes_total{direction=\"inbound\",flow=\"tx\"}")
            > value(
                &m,
                "meshcap_bytes_total{direction=\"outbound\",flow=\"tx\"}"
            ),
        "{m}"
    );
}

#[test]
fn redirect_inbound_from_127_0_0_6_and_outbound_through_15001() {
    if !require_root("redirect_inbound_from_127_0_0_6_and_outbound_through_15001") {
        return;
    }
    let mut pod = Pod::new("rd", "REDIRECT");
    // Without the proxy the captured connection has nowhere to go: the capture is real.
    let refused = pod.peer.run(|| app::get(sa(POD, APP_PORT), "/whoami"));
    assert!(
        refused.is_err(),
        "app reachable without the proxy: {refused:?}"
    );

    pod.start_proxy(ProxyUser::Proxy, &["--engine", "splice"]);
    inbound_and_outbound(&pod, "127.0.0.6");
    let log = pod.stop_proxy();
    assert!(log.contains("inbound listener on 0.0.0.0:15006"), "{log}");
    // At the default level (info) there is no line per connection.
    assert!(!log.contains("connection closed"), "{log}");
}

#[test]
fn redirect_with_the_copy_engine_logs_one_debug_line_per_connection() {
    if !require_root("redirect_with_the_copy_engine_logs_one_debug_line_per_connection") {
        return;
    }
    let mut pod = Pod::new("cp", "REDIRECT");
    pod.start_proxy_env(
        ProxyUser::Proxy,
        &["MESHCAP_LOG=debug", "NO_COLOR=1"],
        &["--engine", "copy"],
    );
    let (code, body) = pod.peer_get(sa(POD, APP_PORT), "/whoami");
    assert_eq!(
        (code, seen_peer(&body).ip().to_string()),
        (200, "127.0.0.6".into()),
        "{body}"
    );
    pod.settled_metrics();
    let log = pod.stop_proxy();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection closed"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("direction=\"inbound\""), "{log}");
    assert!(lines[0].contains("mode=\"redirect\""), "{log}");
    assert!(
        lines[0].contains(&format!("original_dst={POD}:{APP_PORT}")),
        "{log}"
    );
}

#[test]
fn loop_guard_refuses_connections_to_the_proxys_own_listeners() {
    if !require_root("loop_guard_refuses_connections_to_the_proxys_own_listeners") {
        return;
    }
    let mut pod = Pod::new("lp", "REDIRECT");
    pod.start_proxy(ProxyUser::Proxy, &[]);
    // Inbound: the peer dials the pod's 15006; REDIRECTed to 15006 with 15006 as original port.
    let got = pod.peer.run(|| {
        let mut s = TcpStream::connect(sa(POD, 15006))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).map(|_| buf)
    });
    // Closed without a byte (or reset).
    if let Ok(buf) = &got {
        assert!(buf.is_empty(), "{buf:?}");
    }
    // Outbound: the app dials its own 127.0.0.1:15001 (not captured: the listener itself).
    let (code, body) = pod.peer_get(sa(POD, APP_PORT), "/fetch/127.0.0.1:15001");
    assert_eq!(code, 502, "{body}");
    let m = pod.settled_metrics();
    let refused = |dir: &str| {
        value(
            &m,
            &format!("meshcap_connections_refused_total{{direction=\"{dir}\",reason=\"loop\"}}"),
        )
    };
    assert_eq!((refused("inbound"), refused("outbound")), (1, 1), "{m}");
    // The /fetch request itself was forwarded normally.
    assert_eq!(
        value(&m, "meshcap_connect_errors_total{direction=\"inbound\"}"),
        0,
        "{m}"
    );
    let log = pod.stop_proxy();
    assert_eq!(log.matches("own listener (loop)").count(), 2, "{log}");
}

/// An accepted connection gets its buffers or pipes only when a byte arrives. Counted in pipes
/// with the splice engine (each direction that moved a byte has one): idle connections hold
/// none.
#[test]
fn idle_connections_hold_no_pipes() {
    if !require_root("idle_connections_hold_no_pipes") {
        return;
    }
    const IDLE: usize = 20;
    let mut pod = Pod::new("idle", "REDIRECT");
    pod.start_proxy(ProxyUser::Proxy, &["--engine", "splice"]);
    let pid = pod.proxy.as_ref().unwrap().pid();
    let pipes = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("pipe:"))
            .count()
    };
    // The proxy's own: its standard output and error, piped by the harness.
    let own = pipes();
    let idle: Vec<TcpStream> = pod.peer.run(|| {
        (0..IDLE)
            .map(|_| TcpStream::connect(sa(POD, APP_PORT)).expect("idle connection"))
            .collect()
    });
    eventually("the idle connections to reach the app", || {
        (value(
            &pod.metrics(),
            "meshcap_connections_active{direction=\"inbound\"}",
        ) == IDLE as u64)
            .then_some(())
    });
    // Time for anything an accept would still set up.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(pipes() - own, 0, "idle connections hold pipes");
    // One byte is enough for that direction's pipe (two descriptors) to appear.
    let mut first = &idle[0];
    first.write_all(b"G").unwrap();
    eventually("a pipe for the connection that sent a byte", || {
        (pipes() - own == 2).then_some(())
    });
    drop(idle);
    let (code, _) = pod.peer_get(sa(POD, APP_PORT), "/whoami");
    assert_eq!(code, 200);
}

#[test]
fn sigterm_drains_an_open_connection_to_completion() {
    if !require_root("sigterm_drains_an_open_connection_to_completion") {
        return;
    }
    let mut pod = Pod::new("dr", "REDIRECT");
    pod.start_proxy(ProxyUser::Proxy, &["--drain-timeout", "30s"]);
    let (to_client, from_test) = std::sync::mpsc::channel::<()>();
    // A request whose body the client sends only after SIGTERM.
    let client = {
        let peer_path = pod.peer.path();
        std::thread::spawn(move || {
            let f = std::fs::File::open(peer_path).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut s = TcpStream::connect(sa(POD, APP_PORT)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
                .unwrap();
            from_test.recv().unwrap();
            s.write_all(b"hello").unwrap();
            app::read_response(&mut s)
        })
    };
    eventually("the open connection", || {
        (value(
            &pod.metrics(),
            "meshcap_connections_active{direction=\"inbound\"}",
        ) == 1)
            .then_some(())
    });
    pod.proxy
        .as_ref()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGTERM);
    // Draining: not ready any more, and new connections are no longer accepted.
    pod.pod.run(|| {
        eventually("readiness to turn 503", || {
            matches!(
                app::get(sa("127.0.0.1", 15021), "/healthz/ready"),
                Ok((503, _)) | Err(_)
            )
            .then_some(())
        })
    });
    pod.peer.run(|| {
        eventually(
            "the listener to close",
            || match TcpStream::connect_timeout(&sa(POD, APP_PORT), Duration::from_secs(2)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
                _ => None,
            },
        )
    });
    // The open connection still completes.
    to_client.send(()).unwrap();
    let (code, body) = client.join().unwrap().expect("response after SIGTERM");
    assert_eq!((code, body.as_str()), (200, "hello"));
    let out = pod.proxy.take().unwrap().wait();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {log}", out.status);
    assert!(log.contains("drained"), "{log}");
}

fn tproxy(tag: &str, user: ProxyUser, extra_rule: bool) {
    tproxy_with(tag, user, extra_rule, &[]);
}

fn tproxy_with(tag: &str, user: ProxyUser, extra_rule: bool, backend: &[&str]) {
    // --tproxy-return-marked: a connection the proxy marks with the TPROXY mark (its transparent
    // passthrough to the app) is not sent back to the inbound listener.
    let mut flags: Vec<&str> = backend.to_vec();
    if extra_rule {
        flags.push("--tproxy-return-marked");
    }
    let mut pod = Pod::with_flags(tag, "TPROXY", &flags);
    pod.start_proxy(user, &["--mode", "tproxy"]);
    inbound_and_outbound(&pod, PEER);
    let log = pod.stop_proxy();
    assert!(log.contains("0.0.0.0:15006 (transparent)"), "{log}");
}

#[test]
fn tproxy_as_istio_runs_it_uid_0_gid_1337_app_sees_the_peer() {
    if require_root("tproxy_as_istio_runs_it_uid_0_gid_1337_app_sees_the_peer") {
        tproxy("tpi", ProxyUser::RootGid1337, false);
    }
}

#[test]
fn tproxy_as_uid_1337_with_net_admin_and_the_mark_return_rule() {
    if require_root("tproxy_as_uid_1337_with_net_admin_and_the_mark_return_rule") {
        tproxy("tpu", ProxyUser::ProxyWithNetAdmin, true);
    }
}

/// The finding this suite documents: with Istio's rules unchanged, a uid-1337 proxy's transparent
/// passthrough (source = the peer, SO_MARK 1337, out via lo) is caught by
/// `ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 ... --uid-owner 1337 -j ISTIO_IN_REDIRECT` and never
/// reaches the app. Istio avoids it by running Envoy as uid 0 in TPROXY mode (see above).
#[test]
fn tproxy_as_uid_1337_without_the_mark_return_rule_never_reaches_the_app() {
    if !require_root("tproxy_as_uid_1337_without_the_mark_return_rule_never_reaches_the_app") {
        return;
    }
    let mut pod = Pod::new("tpn", "TPROXY");
    pod.start_proxy(
        ProxyUser::ProxyWithNetAdmin,
        &["--mode", "tproxy", "--connect-timeout", "1s"],
    );
    let got = pod.peer.run(|| app::get(sa(POD, APP_PORT), "/whoami"));
    assert!(!matches!(got, Ok((200, _))), "{got:?}");
    let m = pod.settled_metrics();
    // The passthrough's SYN was REDIRECTed to 127.0.0.1:15006 with the peer's source address and
    // dropped there; the proxy's connect timed out.
    assert_eq!(
        value(&m, "meshcap_connect_errors_total{direction=\"inbound\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        value(&m, "meshcap_bytes_total{direction=\"inbound\",flow=\"tx\"}"),
        0,
        "{m}"
    );
}

/// The same data path with the rules installed by the nftables backend (netlink): REDIRECT.
#[test]
fn nftables_redirect_inbound_from_127_0_0_6_and_outbound_through_15001() {
    if !require_root("nftables_redirect_inbound_from_127_0_0_6_and_outbound_through_15001") {
        return;
    }
    let mut pod = Pod::with_flags("nrd", "REDIRECT", &["--backend", "nftables"]);
    assert!(
        pod.pod
            .exec_ok(&["nft", "list", "tables"])
            .contains("istio-proxy-nat"),
        "the nftables backend installed the rules"
    );
    pod.start_proxy(ProxyUser::Proxy, &[]);
    inbound_and_outbound(&pod, "127.0.0.6");
    pod.stop_proxy();
}

/// TPROXY through the nftables backend, both ways of running the proxy.
#[test]
fn nftables_tproxy_app_sees_the_peer() {
    if !require_root("nftables_tproxy_app_sees_the_peer") {
        return;
    }
    tproxy_with(
        "ntpi",
        ProxyUser::RootGid1337,
        false,
        &["--backend", "nftables"],
    );
    tproxy_with(
        "ntpu",
        ProxyUser::ProxyWithNetAdmin,
        true,
        &["--backend", "nftables"],
    );
}
