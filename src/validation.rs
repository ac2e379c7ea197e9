//! `--run-validation`, as Istio's istio-validation does it: listen on the capture ports on
//! loopback, dial `127.0.0.6:<probe port>` (`[::6]:<probe port>` for IPv6) as the proxy uid from
//! loopback, and succeed once an accepted connection's original destination is the probe port:
//! the proxy uid's call to its own pod address is sent to the inbound listener, so the rules
//! are in force.
//!
//! Who dials: with Istio's CNI, the injected `istio-validation` container already runs as the
//! proxy's uid (with whatever gid the pod gives it), without capabilities and on a read-only
//! root filesystem; it dials as itself, as Istio's validator does, so the proxy-uid loopback
//! rule decides, whatever the gid. Only root (an installer run with `--run-validation`) takes
//! the proxy's uid and gid, in a child process, to dial. Nothing is written either way.

use crate::plan::{Family, passthrough_source};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Exit status of a failed validation (Istio's).
pub const EXIT_VALIDATION_FAILED: u8 = 126;

/// Hidden subcommand the validation runs as the proxy uid to dial the probe address.
pub const DIAL_SUBCOMMAND: &str = "__validation-dial";

/// What to validate.
#[derive(Clone, Debug)]
pub struct Validation {
    pub capture_ports: Vec<u16>,
    pub probe_port: u16,
    pub ipv6: bool,
    pub timeout: Duration,
    pub proxy_uid: u32,
    pub proxy_gid: u32,
}

/// What `--run-validation` checks for a configuration: the proxy's two capture ports, as the
/// first proxy uid and gid.
impl From<&crate::config::Config> for Validation {
    fn from(config: &crate::config::Config) -> Self {
        let c = &config.capture;
        Validation {
            capture_ports: vec![c.proxy_port, c.inbound_capture_port],
            probe_port: config.run.probe_port,
            ipv6: c.ipv6,
            timeout: config.run.probe_timeout,
            proxy_uid: c.proxy_uids[0],
            proxy_gid: c.proxy_gids[0],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error(
        "no connection to {probe} reached a capture port within {timeout:?}: the rules do not redirect"
    )]
    Timeout {
        probe: SocketAddr,
        timeout: Duration,
    },
}

/// (where the dial comes from, where it goes) per family. The destination is the passthrough
/// address, as in Istio's validation: a loopback address other than the listeners' (`::6` is on
/// lo through the plan's routing step), so only a capture rule can bring the dial to them.
fn families(ipv6: bool) -> Vec<(IpAddr, IpAddr)> {
    let mut out = vec![(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        passthrough_source(Family::V4),
    )];
    if ipv6 {
        out.push((
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            passthrough_source(Family::V6),
        ));
    }
    out
}

/// The original destination of a redirected connection.
fn original_destination(stream: &TcpStream) -> Option<SocketAddr> {
    let v6 = stream.local_addr().ok()?.is_ipv6();
    crate::proxy::original_dst(stream, v6).ok()
}

/// Runs the validation for every family in force; each must see its probe redirected.
pub fn run(v: &Validation) -> Result<(), ValidationError> {
    for (local, probe_ip) in families(v.ipv6) {
        let probe = SocketAddr::new(probe_ip, v.probe_port);
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        for &port in &v.capture_ports {
            let addr = SocketAddr::new(local, port);
            let listener = TcpListener::bind(addr)
                .map_err(|source| ValidationError::Listen { addr, source })?;
            let tx = tx.clone();
            // The listener threads end with the process; validation is the last thing it does.
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    if let Some(orig) = original_destination(&stream) {
                        tracing::debug!(%orig, "validation listener accepted a connection");
                        let _ = tx.send(orig);
                    }
                }
            });
        }
        let deadline = Instant::now() + v.timeout;
        let mut passed = false;
        while !passed && Instant::now() < deadline {
            dial_as(v.proxy_uid, v.proxy_gid, local, probe);
            let wait =
                Duration::from_millis(200).min(deadline.saturating_duration_since(Instant::now()));
            while let Ok(orig) = rx.recv_timeout(wait) {
                if orig.port() == v.probe_port {
                    passed = true;
                    break;
                }
            }
        }
        if !passed {
            return Err(ValidationError::Timeout {
                probe,
                timeout: v.timeout,
            });
        }
        tracing::info!(%probe, "validation passed");
    }
    Ok(())
}

/// Dials once as the proxy: as root, from a child process running as the proxy uid and gid
/// (owner matches see the process's credentials, and changing them would change them for every
/// thread of ours; std also drops the supplementary groups when root sets a uid); as anyone
/// else, from this process as it is (see the module documentation).
fn dial_as(uid: u32, gid: u32, local: IpAddr, probe: SocketAddr) {
    if !nix::unistd::geteuid().is_root() {
        let result = dial(local, probe);
        tracing::debug!(?result, %probe, "validation dial as ourselves");
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let status = Command::new(exe)
        .args([DIAL_SUBCOMMAND, &local.to_string(), &probe.to_string()])
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    tracing::debug!(?status, %probe, "validation dial");
}

/// The hidden subcommand's command line: `__validation-dial LOCAL PROBE`.
#[derive(Debug, clap::Parser)]
#[command(name = DIAL_SUBCOMMAND)]
struct DialArgs {
    /// The loopback address to dial from.
    local: IpAddr,
    /// The probe address to dial.
    probe: SocketAddr,
}

/// The child's side (`args[0]` is the subcommand): one dial; exit 0 when it connected.
pub fn dial_main(args: Vec<std::ffi::OsString>) -> std::process::ExitCode {
    use clap::Parser;
    match DialArgs::try_parse_from(args).map(|a| dial(a.local, a.probe)) {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        _ => std::process::ExitCode::FAILURE,
    }
}

/// Connects from `local` to `probe`, then closes.
fn dial(local: IpAddr, probe: SocketAddr) -> io::Result<()> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(probe),
        socket2::Type::STREAM,
        None,
    )?;
    // Bound to loopback like Istio's client, so the connection leaves through lo.
    socket.bind(&SocketAddr::new(local, 0).into())?;
    socket.connect_timeout(&probe.into(), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Inputs;
    use crate::config::{Config, SystemHost};

    #[test]
    fn built_from_the_configuration() {
        let argv = [
            "meshcap",
            "-p",
            "15101",
            "-z",
            "15106",
            "-u",
            "1000,1001",
            "-g",
            "2000",
            "--iptables-probe-port",
            "15555",
            "--probe-timeout",
            "2m",
            "--ipv6",
            "on",
        ];
        let inputs = Inputs::parse_from(argv, Vec::new()).unwrap();
        let config = Config::from_inputs(&inputs, &SystemHost).unwrap();
        let v = Validation::from(&config);
        assert_eq!(v.capture_ports, [15101, 15106]);
        assert_eq!(v.probe_port, 15555);
        assert!(v.ipv6);
        assert_eq!(v.timeout, Duration::from_secs(120));
        assert_eq!((v.proxy_uid, v.proxy_gid), (1000, 2000));
    }
}
