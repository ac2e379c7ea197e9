//! `meshcap ambient agent` (the node agent, until SIGTERM) and `meshcap ambient enroll|unenroll`
//! (its control socket's client, what the CNI plugin will do at ADD and DEL).

use super::control::{self, Request};
use super::flags::{NodeFlags, key_value};
use super::node::{Node, PodRef};
use clap::Args;
use nix::sys::signal::{SigSet, Signal};
use std::net::IpAddr;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where the agent keeps its list of enrolled pods by default: beside its control socket, on the
/// node's /var/run (a tmpfs: gone at reboot, as the pods are).
pub const DEFAULT_STATE_DIR: &str = "/var/run/meshcap/ambient";

#[derive(Args, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    pub node: NodeFlags,

    /// Where ztunnel connects (its INPOD_UDS).
    #[arg(long, default_value = super::zds::DEFAULT_SOCKET)]
    pub zds_socket: PathBuf,

    /// Where the CNI plugin asks for enrolments.
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,

    /// Where the list of enrolled pods is kept across restarts.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// After a restart, apply the rules of the pods taken back again.
    #[arg(long)]
    pub reconcile: bool,

    /// How long to wait for each of ztunnel's acks, in seconds.
    #[arg(long, default_value_t = 5)]
    pub ack_timeout: u64,
}

#[derive(Args, Debug)]
pub struct EnrollArgs {
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,
    #[arg(long)]
    pub uid: String,
    #[arg(long)]
    pub name: String,
    /// The pod's Kubernetes namespace.
    #[arg(long)]
    pub pod_namespace: String,
    #[arg(long, default_value = "")]
    pub service_account: String,
    /// The pod's network namespace.
    #[arg(long)]
    pub network_namespace: PathBuf,
    /// A pod address (repeatable).
    #[arg(long = "ip")]
    pub ips: Vec<IpAddr>,
    /// A pod annotation (repeatable).
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = key_value)]
    pub annotations: Vec<(String, String)>,
}

#[derive(Args, Debug)]
pub struct UnenrollArgs {
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,
    #[arg(long)]
    pub uid: String,
}

/// Runs the agent until SIGTERM or SIGINT. Enrolled pods keep their rules when it stops.
pub fn agent(args: &AgentArgs) -> ExitCode {
    // Blocked before any thread starts, so that every thread inherits the mask and the
    // signals wait for the main thread's sigwait.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        eprintln!("meshcap ambient agent: blocking signals: {e}");
        return ExitCode::from(1);
    }
    let node = match Node::start(
        args.node.settings(),
        &args.zds_socket,
        &args.state_dir,
        Duration::from_secs(args.ack_timeout),
        args.reconcile,
    ) {
        Ok(node) => node,
        Err(e) => {
            eprintln!("meshcap ambient agent: {e}");
            return ExitCode::from(1);
        }
    };
    let listener = match bind(&args.control_socket) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "meshcap ambient agent: {}: {e}",
                args.control_socket.display()
            );
            return ExitCode::from(1);
        }
    };
    tracing::info!(
        "agent ready: control {}, ztunnel {}",
        args.control_socket.display(),
        args.zds_socket.display()
    );
    let stop = AtomicBool::new(false);
    let served = std::thread::scope(|scope| {
        let server = scope.spawn(|| control::serve(&listener, &node, &stop));
        let signal = signals.wait();
        tracing::info!("stopping on {signal:?}");
        stop.store(true, Ordering::SeqCst);
        server.join()
    });
    let _ = std::fs::remove_file(&args.control_socket);
    match served {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("meshcap ambient agent: control socket: {e}");
            ExitCode::from(1)
        }
        Err(_) => ExitCode::from(1),
    }
}

fn bind(path: &std::path::Path) -> std::io::Result<UnixListener> {
    super::socket_file::claim(path, socket2::Type::STREAM)?;
    UnixListener::bind(path)
}

/// Sends a request; exit 0 done, 2 the pod's own input is at fault, 1 anything else.
fn ask(socket: &std::path::Path, request: &Request) -> ExitCode {
    match control::call(socket, request, Duration::from_secs(60)) {
        Ok(response) => match response.error {
            None => ExitCode::SUCCESS,
            Some(error) => {
                eprintln!("meshcap ambient: {error}");
                ExitCode::from(if response.invalid { 2 } else { 1 })
            }
        },
        Err(e) => {
            eprintln!("meshcap ambient: agent at {}: {e}", socket.display());
            ExitCode::from(1)
        }
    }
}

pub fn enroll(args: &EnrollArgs) -> ExitCode {
    let pod = PodRef {
        uid: args.uid.clone(),
        name: args.name.clone(),
        namespace: args.pod_namespace.clone(),
        service_account: args.service_account.clone(),
        netns: args.network_namespace.clone(),
        ips: args.ips.clone(),
        annotations: args.annotations.clone(),
    };
    ask(&args.control_socket, &Request::Add { pod })
}

pub fn unenroll(args: &UnenrollArgs) -> ExitCode {
    ask(
        &args.control_socket,
        &Request::Del {
            uid: args.uid.clone(),
        },
    )
}
