//! The data plane: `meshcap proxy`, a transparent L4 proxy for the captured connections.
//!
//! It plays the part of Envoy's two virtual listeners for plain TCP:
//!
//! * outbound (15001): a connection the app opened, REDIRECTed by `ISTIO_REDIRECT`, is forwarded
//!   to its original destination (SO_ORIGINAL_DST). The proxy runs as the proxy uid (1337), so its
//!   own connection passes `-m owner --uid-owner 1337 -j RETURN` and is not captured again.
//! * inbound (15006): a connection from a peer, captured by `ISTIO_IN_REDIRECT` (REDIRECT) or
//!   `ISTIO_TPROXY` (TPROXY), is handed to the app at its original destination. Under REDIRECT the
//!   proxy connects from 127.0.0.6 (`::6`), which `-o lo -s 127.0.0.6/32 -j RETURN` exempts, like
//!   Envoy's inbound passthrough cluster. Under TPROXY it connects from the peer's own address
//!   (IP_TRANSPARENT, SO_MARK = the TPROXY mark, like Envoy's original_src filter), so the app sees
//!   the real peer; replies come back to the proxy through the CONNMARK rules and the fwmark route.
//!
//! The capture mode of an inbound connection is read off the accepted socket: under TPROXY its
//! local address is the original destination (a port other than the listener's); under REDIRECT
//! the local port is the listener's and conntrack holds the original. `--mode` can force either.
//!
//! A connection whose original destination is one of the proxy's own data listeners (their port on
//! a local address) is refused: forwarding it would connect the proxy to itself.
//!
//! SIGTERM (or SIGINT) drains: readiness turns 503, the listeners close, open connections get up
//! to `--drain-timeout` to finish, then the process exits.

mod admin;
mod metrics;
mod net;
mod pump;

pub use metrics::{Direction, Metrics};
pub use net::original_dst;
pub use pump::Engine;

use admin::AdminState;
use anyhow::Context;
use clap::Parser;
use net::{Capture, Source};
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// How inbound connections are expected to arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Per connection, from the accepted socket; the inbound listener is made transparent when
    /// the process may (CAP_NET_ADMIN), so TPROXY works when it is granted.
    Auto,
    /// NAT REDIRECT only (Istio's default): no capability needed.
    Redirect,
    /// TPROXY: the inbound listener must be transparent (fails to start without CAP_NET_ADMIN).
    Tproxy,
}

/// Whether to listen on IPv6 too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6Arg {
    /// Listen on [::] when the namespace has IPv6; carry on with IPv4 alone when it has not.
    Auto,
    /// Listen on [::]; fail when that is impossible.
    On,
    /// IPv4 only.
    Off,
}

/// `meshcap proxy`: the sidecar's transparent L4 proxy.
#[derive(Debug, Parser)]
#[command(
    name = "meshcap proxy",
    bin_name = "meshcap proxy",
    about = "Transparent L4 proxy for the connections meshcap's rules capture",
    long_about = None,
)]
pub struct ProxyArgs {
    /// Outbound listener port (the installer's -p / ISTIO_REDIRECT target).
    #[arg(short = 'p', long = "proxy-port", default_value_t = 15001)]
    pub outbound_port: u16,

    /// Inbound capture port (the installer's -z / ISTIO_IN_REDIRECT and TPROXY target).
    #[arg(short = 'z', long = "inbound-capture-port", default_value_t = 15006)]
    pub inbound_port: u16,

    /// Inbound capture mode.
    #[arg(
        short = 'm',
        long = "mode",
        value_enum,
        default_value = "auto",
        ignore_case = true
    )]
    pub mode: ModeArg,

    /// Mark set (SO_MARK) on TPROXY passthrough connections (the installer's -t).
    #[arg(short = 't', long = "tproxy-mark", default_value_t = 1337)]
    pub tproxy_mark: u32,

    /// IPv6 listeners.
    #[arg(long = "ipv6", value_enum, default_value = "auto")]
    pub ipv6: Ipv6Arg,

    /// Upstream connect timeout (e.g. 10s, 500ms).
    #[arg(long = "connect-timeout", default_value = "10s", value_parser = crate::duration::parse)]
    pub connect_timeout: Duration,

    /// Close a connection after this long without a byte either way (Envoy's TCP default: 1h).
    #[arg(long = "idle-timeout", default_value = "1h", value_parser = crate::duration::parse)]
    pub idle_timeout: Duration,

    /// On SIGTERM, how long open connections may take to finish.
    #[arg(long = "drain-timeout", default_value = "5s", value_parser = crate::duration::parse)]
    pub drain_timeout: Duration,

    /// Most connections open at once (both directions); more are closed at accept.
    #[arg(long = "max-connections", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Largest per-direction buffer (copy) or pipe (splice), bytes. Each starts at 64 KiB and
    /// doubles whenever one read fills it.
    #[arg(long = "buffer-size", default_value_t = 1048576, value_parser = clap::value_parser!(u32).range(4096..=1048576))]
    pub buffer_size: u32,

    /// How bytes are moved.
    #[arg(long = "engine", value_enum, default_value = "copy")]
    pub engine: Engine,

    /// Readiness endpoint address (GET /healthz/ready).
    #[arg(long = "ready-address", default_value = "0.0.0.0:15021")]
    pub ready_address: SocketAddr,

    /// Prometheus endpoint address (GET /stats/prometheus).
    #[arg(long = "stats-address", default_value = "0.0.0.0:15090")]
    pub stats_address: SocketAddr,

    /// Worker threads (0: one per CPU).
    #[arg(long = "concurrency", default_value_t = 0)]
    pub concurrency: usize,
}

/// Entry point of `meshcap proxy ARGS…` (`args` starts with "proxy").
pub fn main(args: Vec<OsString>) -> ExitCode {
    let args = match ProxyArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    raise_fd_limit();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("meshcap-proxy");
    if args.concurrency > 0 {
        builder.worker_threads(args.concurrency);
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meshcap proxy: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(args));
    // Connections still open after the drain timeout are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshcap proxy: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Two descriptors per proxied connection (four with splice's pipes): lift the soft limit on
/// open files to the hard one, as servers do; the limit itself stays the container's to set.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!("cannot raise the open files limit from {soft} to {hard}: {e}");
    }
}

/// Per-listener facts a connection handler needs.
struct ListenerInfo {
    direction: Direction,
    port: u16,
    v6: bool,
}

/// What every handler shares.
struct Shared {
    args: ProxyArgs,
    metrics: Arc<Metrics>,
    limit: Arc<Semaphore>,
}

/// Binds the data listeners for one port: IPv4 always, IPv6 as `--ipv6` says.
fn bind_data(
    port: u16,
    transparent: bool,
    ipv6: Ipv6Arg,
) -> anyhow::Result<Vec<(TcpListener, bool)>> {
    let mut out = Vec::new();
    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    out.push((
        net::listen(v4, transparent, 4096).with_context(|| format!("listening on {v4}"))?,
        false,
    ));
    if ipv6 != Ipv6Arg::Off {
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
        match net::listen(v6, transparent, 4096) {
            Ok(l) => out.push((l, true)),
            Err(e) if ipv6 == Ipv6Arg::Auto && ipv6_absent(&e) => {
                tracing::info!("no IPv6 in this namespace ({e}); listening on IPv4 only on {port}");
            }
            Err(e) => return Err(e).with_context(|| format!("listening on {v6}")),
        }
    }
    Ok(out)
}

/// Errors meaning "this namespace/kernel has no IPv6", as opposed to a real failure.
fn ipv6_absent(e: &std::io::Error) -> bool {
    use nix::libc::{EADDRNOTAVAIL, EAFNOSUPPORT, EPROTONOSUPPORT};
    matches!(
        e.raw_os_error(),
        Some(EAFNOSUPPORT | EADDRNOTAVAIL | EPROTONOSUPPORT)
    )
}

async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(AdminState {
        metrics: metrics.clone(),
        listening: false.into(),
        draining: false.into(),
    });

    // Admin endpoints first, so a probe never finds the port closed while we start.
    let mut admin_addrs = vec![args.ready_address];
    if args.stats_address != args.ready_address {
        admin_addrs.push(args.stats_address);
    }
    let mut admin_tasks = Vec::new();
    for addr in admin_addrs {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("admin listener on {addr}"))?;
        admin_tasks.push(tokio::spawn(admin::serve(l, state.clone())));
    }

    // The inbound listener is transparent when TPROXY is possible.
    let inbound_transparent = match args.mode {
        ModeArg::Redirect => false,
        ModeArg::Tproxy => true,
        ModeArg::Auto => {
            let probe = tokio::net::TcpSocket::new_v4()?;
            match net::set_transparent(&probe, false) {
                Ok(()) => true,
                Err(e) => {
                    tracing::info!(
                        "inbound listener not transparent ({e}): REDIRECT capture only; \
                         TPROXY needs CAP_NET_ADMIN"
                    );
                    false
                }
            }
        }
    };
    let outbound = bind_data(args.outbound_port, false, args.ipv6)?;
    let inbound = bind_data(args.inbound_port, inbound_transparent, args.ipv6)
        .context("inbound listener (TPROXY needs CAP_NET_ADMIN for IP_TRANSPARENT)")?;

    let shared = Arc::new(Shared {
        limit: Arc::new(Semaphore::new(args.max_connections as usize)),
        metrics,
        args,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accept_tasks = Vec::new();
    for (listeners, direction, port) in [
        (outbound, Direction::Outbound, shared.args.outbound_port),
        (inbound, Direction::Inbound, shared.args.inbound_port),
    ] {
        for (listener, v6) in listeners {
            tracing::info!(
                "{} listener on {}{}",
                direction.as_str(),
                listener.local_addr()?,
                if direction == Direction::Inbound && inbound_transparent {
                    " (transparent)"
                } else {
                    ""
                }
            );
            let info = ListenerInfo {
                direction,
                port,
                v6,
            };
            accept_tasks.push(tokio::spawn(accept_loop(
                listener,
                info,
                shared.clone(),
                stop_rx.clone(),
            )));
        }
    }
    state.listening.store(true, Ordering::SeqCst);
    tracing::info!(
        "ready: engine {:?}, max {} connections",
        shared.args.engine,
        shared.args.max_connections
    );

    wait_for_termination().await?;
    tracing::info!(
        "draining: {} open connection(s), up to {:?}",
        shared.metrics.active(),
        shared.args.drain_timeout
    );
    state.draining.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    for t in accept_tasks {
        let _ = t.await;
    }
    // Every open connection holds a permit: all permits back means all connections done.
    let all = shared.args.max_connections;
    match tokio::time::timeout(shared.args.drain_timeout, shared.limit.acquire_many(all)).await {
        Ok(_) => tracing::info!("drained"),
        Err(_) => tracing::warn!(
            "drain timeout: closing {} connection(s)",
            shared.metrics.active()
        ),
    }
    for t in admin_tasks {
        t.abort();
    }
    Ok(())
}

async fn wait_for_termination() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    info: ListenerInfo,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let info = Arc::new(info);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = shared.limit.clone().try_acquire_owned() else {
                        shared.metrics.refused(info.direction, metrics::Refusal::Limit);
                        tracing::warn!(
                            "{} connection from {peer} refused: {} connections open (--max-connections)",
                            info.direction.as_str(),
                            shared.args.max_connections
                        );
                        continue;
                    };
                    let (shared, info) = (shared.clone(), info.clone());
                    tokio::spawn(async move {
                        shared.metrics.opened(info.direction);
                        handle(stream, peer, &info, &shared).await;
                        shared.metrics.closed(info.direction);
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of fds or similar: back off instead of spinning.
                    tracing::warn!("{} accept: {e}", info.direction.as_str());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// Where an accepted connection goes and how it got here.
fn destination(
    stream: &TcpStream,
    local: SocketAddr,
    info: &ListenerInfo,
    mode: ModeArg,
) -> std::io::Result<(SocketAddr, Capture)> {
    let capture = match (info.direction, mode) {
        (Direction::Outbound, _) => Capture::Redirect,
        (Direction::Inbound, ModeArg::Redirect) => Capture::Redirect,
        (Direction::Inbound, ModeArg::Tproxy) => Capture::Tproxy,
        (Direction::Inbound, ModeArg::Auto) if local.port() != info.port => Capture::Tproxy,
        (Direction::Inbound, ModeArg::Auto) => Capture::Redirect,
    };
    match capture {
        Capture::Tproxy => Ok((local, capture)),
        Capture::Redirect => match net::original_dst(stream, info.v6) {
            Ok(dst) => Ok((dst, capture)),
            // No conntrack entry: nothing was NATed, so the destination is the socket itself.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => Ok((local, capture)),
            Err(e) => Err(e),
        },
    }
}

/// Whether `dst` is one of this proxy's own data listeners.
fn is_own_listener(dst: SocketAddr, args: &ProxyArgs) -> bool {
    (dst.port() == args.outbound_port || dst.port() == args.inbound_port) && net::is_local(dst.ip())
}

async fn handle(downstream: TcpStream, peer: SocketAddr, info: &ListenerInfo, shared: &Shared) {
    let args = &shared.args;
    let dir = info.direction.as_str();
    let started = Instant::now();
    let local = match downstream.local_addr() {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(direction = dir, client = %peer, "closed before handling: {e}");
            return;
        }
    };
    let (dst, capture) = match destination(&downstream, local, info, args.mode) {
        Ok(d) => d,
        Err(e) => {
            shared
                .metrics
                .refused(info.direction, metrics::Refusal::NoDestination);
            tracing::warn!(direction = dir, client = %peer, "no original destination: {e}");
            return;
        }
    };
    if is_own_listener(dst, args) {
        shared
            .metrics
            .refused(info.direction, metrics::Refusal::Loop);
        tracing::warn!(
            direction = dir,
            client = %peer,
            original_dst = %dst,
            "refused: the original destination is this proxy's own listener (loop)"
        );
        return;
    }
    let source = match (info.direction, capture) {
        (Direction::Outbound, _) => Source::Any,
        (Direction::Inbound, Capture::Redirect) => Source::Bind(net::passthrough_source(&dst)),
        (Direction::Inbound, Capture::Tproxy) => Source::Transparent {
            ip: peer.ip(),
            mark: args.tproxy_mark,
        },
    };
    let connected = async {
        let socket = net::upstream_socket(dst, source)?;
        match tokio::time::timeout(args.connect_timeout, socket.connect(dst)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timeout",
            )),
        }
    };
    let upstream = match connected.await {
        Ok(u) => u,
        Err(e) => {
            shared.metrics.connect_error(info.direction);
            tracing::debug!(
                direction = dir,
                mode = capture.as_str(),
                client = %peer,
                original_dst = %dst,
                "connect failed: {e}"
            );
            return;
        }
    };
    let _ = downstream.set_nodelay(true);
    let upstream_src = upstream.local_addr().ok();
    let outcome = pump::pump(
        &downstream,
        &upstream,
        args.engine,
        args.buffer_size as usize,
        args.idle_timeout,
        &shared.metrics,
        info.direction,
    )
    .await;
    if outcome.idle_timeout {
        shared.metrics.idle_timeout(info.direction);
    }
    let end = if outcome.idle_timeout {
        "idle timeout".to_owned()
    } else if let Some(e) = &outcome.error {
        format!("error: {e}")
    } else {
        "closed".to_owned()
    };
    tracing::debug!(
        direction = dir,
        mode = capture.as_str(),
        client = %peer,
        original_dst = %dst,
        upstream_src = ?upstream_src,
        rx = outcome.rx,
        tx = outcome.tx,
        ms = started.elapsed().as_millis() as u64,
        "connection {end}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_flags_take_gos_grammar_like_the_installer() {
        let a = ProxyArgs::try_parse_from([
            "proxy",
            "--idle-timeout",
            "1m30s",
            "--connect-timeout",
            "1.5s",
            "--drain-timeout",
            "250ms",
        ])
        .unwrap();
        assert_eq!(a.idle_timeout, Duration::from_secs(90));
        assert_eq!(a.connect_timeout, Duration::from_millis(1500));
        assert_eq!(a.drain_timeout, Duration::from_millis(250));
        let a = ProxyArgs::try_parse_from(["proxy"]).unwrap();
        assert_eq!(
            (a.connect_timeout, a.idle_timeout, a.drain_timeout),
            (
                Duration::from_secs(10),
                Duration::from_secs(3600),
                Duration::from_secs(5)
            )
        );
    }

    #[test]
    fn defaults_match_the_installer() {
        let a = ProxyArgs::try_parse_from(["proxy"]).unwrap();
        assert_eq!(
            (a.outbound_port, a.inbound_port, a.tproxy_mark),
            (15001, 15006, 1337)
        );
        assert_eq!(a.mode, ModeArg::Auto);
        assert_eq!(a.ready_address.port(), 15021);
        assert_eq!(a.stats_address.port(), 15090);
        let a = ProxyArgs::try_parse_from(["proxy", "-m", "TPROXY", "-p", "1", "-z", "2"]).unwrap();
        assert_eq!(
            (a.mode, a.outbound_port, a.inbound_port),
            (ModeArg::Tproxy, 1, 2)
        );
        assert!(ProxyArgs::try_parse_from(["proxy", "--max-connections", "0"]).is_err());
    }

    #[test]
    fn loop_guard_matches_own_ports_on_local_addresses_only() {
        let a = ProxyArgs::try_parse_from(["proxy"]).unwrap();
        assert!(is_own_listener("127.0.0.1:15001".parse().unwrap(), &a));
        assert!(is_own_listener("[::1]:15006".parse().unwrap(), &a));
        assert!(is_own_listener("0.0.0.0:15006".parse().unwrap(), &a));
        assert!(!is_own_listener("127.0.0.1:9080".parse().unwrap(), &a));
        // A remote host's 15001 is just a port.
        assert!(!is_own_listener("192.0.2.200:15001".parse().unwrap(), &a));
    }
}
